from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tripletkit import BatchHardLoss, CollapseError, CollapseMonitor, CollapseWarning, embedding_stats


def _train(lr: float, structured: bool, monitor: CollapseMonitor, seed: int = 0, steps: int = 150):
    torch.manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(20)
    x = 0.5 * torch.randn(200, 16)
    if structured:
        x = x + 2 * torch.randn(10, 16)[labels]
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = BatchHardLoss(margin=0.2)
    monitor.update(model(x).detach(), labels)
    for step in range(steps):
        loss = loss_fn(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            monitor.update(model(x).detach(), labels, loss)
    return loss


@pytest.mark.parametrize("seed", range(3))
def test_forced_collapse_is_flagged_and_healthy_training_is_not(seed):
    # No structure to learn + batch-hard + a huge Adam step: the model maps everything to one point (the study's
    # failure mode), and the loss sits at the margin.
    collapsed = CollapseMonitor("hinge", action="none")
    loss = _train(1.0, structured=False, monitor=collapsed, seed=seed)
    assert collapsed.collapsed and collapsed.history[-1].mean_distance < 1e-3
    assert abs(loss.item() - 0.2) < 5e-3
    healthy = CollapseMonitor("hinge", action="none")
    _train(1e-3, structured=True, monitor=healthy, seed=seed)
    assert not any(s.collapsed for s in healthy.history)
    assert healthy.history[-1].relative_distance > 0.5


def test_actions():
    labels = torch.arange(4).repeat_interleave(4)
    same = torch.ones(16, 8)
    warn = CollapseMonitor(BatchHardLoss(), reference_distance=1.0)
    with pytest.warns(CollapseWarning, match="embeddings collapsed at update 0"):
        warn.update(same, labels)
    with pytest.raises(CollapseError, match="100% of anchors sit at the collapse value 0.2"):
        CollapseMonitor("hinge", action="raise", reference_distance=1.0).update(same, labels)
    with pytest.raises(ValueError, match="action must be"):
        CollapseMonitor(action="shout")


def test_stats_equal_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    got = embedding_stats(torch.tensor(x))
    pairs = [np.linalg.norm(x[i] - x[j]) for i, j in itertools.combinations(range(12), 2)]
    assert got["mean_distance"] == pytest.approx(np.mean(pairs), rel=1e-9)
    assert got["spread"] == pytest.approx(x.std(0, ddof=1).mean(), rel=1e-9)
    sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = sv / sv.sum()
    assert got["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_effective_rank_extremes():
    line = torch.linspace(0, 1, 20)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    assert embedding_stats(line)["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert embedding_stats(torch.ones(5, 3))["effective_rank"] == 0.0
    iso = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0))
    assert embedding_stats(iso)["effective_rank"] > 3.9


def test_at_collapse_fraction_for_soft_margin():
    labels = torch.arange(4).repeat_interleave(4)
    stats = embedding_stats(torch.zeros(16, 4), labels, margin_fn=BatchHardLoss(margin_fn="softplus").margin_fn)
    assert stats["at_collapse_fraction"] == 1.0
    spread = torch.arange(4.0).repeat_interleave(4)[:, None] * 10 * torch.ones(16, 4)
    assert embedding_stats(spread, labels)["at_collapse_fraction"] == 0.0


def test_the_monitor_scores_anchors_with_the_losses_distance():
    from tripletkit import BatchHardLoss

    # every point on one ray: all cosine distances are 0 (each anchor sits at the collapse value), while the
    # Euclidean ones still separate the classes
    labels = torch.arange(4).repeat_interleave(3)
    emb = (1.0 + torch.arange(12, dtype=torch.float64))[:, None] * torch.ones(1, 5, dtype=torch.float64)
    cosine = CollapseMonitor(BatchHardLoss(distance="cosine"), action="none").update(emb, labels)
    euclid = CollapseMonitor(BatchHardLoss(), action="none").update(emb, labels)
    assert cosine.at_collapse_fraction == 1.0 and cosine.collapsed
    assert euclid.at_collapse_fraction < 0.5
