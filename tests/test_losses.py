"""Losses against the brute-force float64 references, property by property."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tripletkit import BatchAllLoss, BatchHardLoss, TripletLoss
from tripletkit.functional import batch_all_triplet_count
from tripletkit.testing import reference as ref

from .strategies import batches, generic_batches

MARGIN_FNS = ["hinge", "softplus"]
DISTANCES = ["euclidean", "sqeuclidean", "cosine"]
MARGINS = {"hinge": 0.2, "softplus": 0.0}


def _t(x, labels):
    return torch.tensor(x, dtype=torch.float64), torch.tensor(labels, dtype=torch.int64)


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * (1 + abs(b))


# --------------------------------------------------------------------------- equality with the references
@pytest.mark.parametrize("margin_fn,distance", list(itertools.product(MARGIN_FNS, DISTANCES)))
@pytest.mark.parametrize("reduction", ["mean", "mean_active", "sum"])
@given(batch=batches())
def test_batch_hard_equals_reference(batch, margin_fn, distance, reduction):
    x, labels = batch
    m = MARGINS[margin_fn] + (0.1 if margin_fn == "softplus" else 0.0)
    got = BatchHardLoss(margin=m, margin_fn=margin_fn, distance=distance, reduction=reduction)(*_t(x, labels))
    want, _ = ref.batch_hard(x, labels, margin_fn=margin_fn, margin=m, kind=distance, reduction=reduction)
    assert _close(float(got), want), (float(got), want)


@pytest.mark.parametrize("margin_fn,distance", list(itertools.product(MARGIN_FNS, DISTANCES)))
@given(batch=generic_batches())
def test_batch_hard_swap_equals_reference(batch, margin_fn, distance):
    # continuous data: the swap's hardest positive is unique, so the definition has one answer
    x, labels = batch
    got = BatchHardLoss(margin_fn=margin_fn, distance=distance, swap=True)(*_t(x, labels))
    want, _ = ref.batch_hard(x, labels, margin_fn=margin_fn, margin=MARGINS[margin_fn], kind=distance, swap=True)
    assert _close(float(got), want), (float(got), want)


def test_batch_hard_none_reduction_per_anchor():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3))
    labels = [0, 0, 0, 1, 1, 2, 3, 3, 3]  # anchor 5 is a singleton
    got = BatchHardLoss(reduction="none")(*_t(x, labels))
    _, per_anchor = ref.batch_hard(x, labels)
    assert got.shape == (9,)
    for g, w in zip(got.tolist(), per_anchor):
        assert _close(g, 0.0 if w is None else w)


@pytest.mark.parametrize("margin_fn,distance", list(itertools.product(MARGIN_FNS, DISTANCES)))
@pytest.mark.parametrize("reduction", ["mean", "mean_active", "sum"])
@given(batch=batches(max_n=10))
def test_batch_all_equals_reference(batch, margin_fn, distance, reduction):
    x, labels = batch
    m = MARGINS[margin_fn]
    if reduction == "mean_active" and margin_fn == "hinge":
        # the active count jumps at m + gap = 0, where rounding decides (e.g. 1 + 0.2 − 1.2 is 0 in one order of
        # operations and 5.6e-17 in another): both answers are right there, so such batches are left out
        assume(all(abs(t) > 1e-9 for t in ref.batch_all_margins(x, labels, margin=m, kind=distance)))
    loss, stats = BatchAllLoss(margin=m, margin_fn=margin_fn, distance=distance, reduction=reduction)(
        *_t(x, labels), return_stats=True
    )
    want, count, _ = ref.batch_all(x, labels, margin_fn=margin_fn, margin=m, kind=distance, reduction=reduction)
    # the batch-all distance matrix comes from the Gram form: sqrt turns a 1e-16 residue at coinciding points into
    # 1e-8, so the bound is looser than for the paired distances
    assert abs(float(loss) - want) <= 1e-6 * (1 + abs(want)), (float(loss), want)
    assert int(stats["num_triplets"]) == count == ref.class_triplet_count(labels)


@given(batch=generic_batches(max_n=10))
def test_batch_all_active_count_equals_reference(batch):
    x, labels = batch
    _, stats = BatchAllLoss(reduction="mean_active")(*_t(x, labels), return_stats=True)
    _, _, active = ref.batch_all(x, labels)
    assert int(stats["num_active"]) == active


@pytest.mark.parametrize("margin_fn", MARGIN_FNS)
@pytest.mark.parametrize("swap", [False, True])
@given(batch=generic_batches(), data=st.data())
def test_given_triplets_equal_reference(batch, margin_fn, swap, data):
    x, labels = batch
    n = len(labels)
    triplets = data.draw(st.lists(st.tuples(*[st.integers(0, n - 1)] * 3), min_size=1, max_size=12))
    a, p, q = (torch.tensor(c) for c in zip(*triplets))
    got = TripletLoss(margin_fn=margin_fn, swap=swap)(torch.tensor(x), triplets=(a, p, q))
    want = ref.given_triplets(x, triplets, margin_fn=margin_fn, margin=MARGINS[margin_fn], swap=swap)
    assert _close(float(got), want)


def test_given_triplets_with_labels_drop_invalid_rows():
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    triplets = (torch.tensor([0, 0, 0]), torch.tensor([1, 2, 0]), torch.tensor([2, 1, 2]))
    # only (0, 1, 2) is valid: (0, 2, 1) has a positive of another class, (0, 0, 2) uses the anchor as positive
    got = TripletLoss(margin=2.5)(x, labels, triplets=triplets)
    assert _close(float(got), 2.5 + 1.0 - 3.0)


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("loss_cls", [BatchHardLoss, BatchAllLoss])
@pytest.mark.parametrize("margin_fn", MARGIN_FNS)
@given(batch=batches(), data=st.data())
def test_invariances(batch, loss_cls, margin_fn, data):
    x, labels = batch
    loss_fn = loss_cls(margin_fn=margin_fn)
    base = float(loss_fn(*_t(x, labels)))
    assert base >= 0.0
    n = len(labels)
    # permuting the batch
    perm = data.draw(st.permutations(range(n)))
    assert _close(float(loss_fn(*_t(x[perm], [labels[i] for i in perm]))), base, 1e-7)
    # relabelling classes by any injective map
    new_ids = data.draw(st.lists(st.integers(-(10**6), 10**6), min_size=6, max_size=6, unique=True))
    assert _close(float(loss_fn(*_t(x, [new_ids[c] for c in labels]))), base, 1e-7)
    # rotating and translating all embeddings (Euclidean distances are unchanged)
    d = x.shape[1]
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    moved = x @ q + rng.normal(size=(1, d)) * 10
    assert _close(float(loss_fn(*_t(moved, labels))), base, 1e-6)


@given(batch=batches())
def test_cosine_invariant_to_rotation_and_scale(batch):
    x, labels = batch
    loss_fn = BatchHardLoss(distance="cosine")
    base = float(loss_fn(*_t(x, labels)))
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    assert _close(float(loss_fn(*_t(3.7 * x @ q, labels))), base, 1e-7)


@given(batch=batches(max_n=10))
def test_batch_all_triplet_count(batch):
    _, labels = batch
    counts = {c: labels.count(c) for c in set(labels)}
    n = len(labels)
    expected = sum(k * (k - 1) * (n - k) for k in counts.values())
    assert int(batch_all_triplet_count(torch.tensor(labels))) == expected


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize(
    "loss_fn", [BatchHardLoss(), BatchAllLoss(), TripletLoss(), BatchHardLoss(margin_fn="softplus")]
)
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5, 5]], ids=["all-singletons", "one-class"])
def test_no_valid_triplet_gives_zero_with_gradient(loss_fn, labels):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(x, torch.tensor(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("loss_cls", [BatchHardLoss, BatchAllLoss])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("margin_fn", MARGIN_FNS)
def test_identical_embeddings_sit_at_the_collapse_value(loss_cls, distance, margin_fn):
    x = torch.ones(8, 4, requires_grad=True)
    loss_fn = loss_cls(margin_fn=margin_fn, distance=distance, margin=0.3)
    loss = loss_fn(x, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert math.isclose(loss.item(), loss_fn.collapse_value, rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_singleton_anchors_are_left_out_of_the_mean():
    x = torch.tensor([[0.0], [0.5], [10.0]], dtype=torch.float64)
    # anchors 0 and 1 are valid (d_ap = 0.5, d_an = 10 or 9.5); anchor 2 is a singleton
    loss = BatchHardLoss(margin=10.0)(x, torch.tensor([0, 0, 1]))
    assert _close(float(loss), ((10 + 0.5 - 10) + (10 + 0.5 - 9.5)) / 2)


def test_mean_active_divides_by_active_anchors_only():
    x = torch.tensor([[0.0], [0.1], [0.3], [1.0], [1.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1])
    per = BatchHardLoss(margin=0.5, reduction="none")(x, labels)
    active = per > 0
    assert 0 < int(active.sum()) < 5
    got = BatchHardLoss(margin=0.5, reduction="mean_active")(x, labels)
    assert _close(float(got), float(per.sum() / active.sum()))


def test_float32_accuracy_near_collapse():
    # 64 embeddings 1 + 1e-4·randn(128): where cdist's matmul path is off by 5e-3 (peer-libraries.md)
    g = torch.Generator().manual_seed(0)
    x64 = 1 + 1e-4 * torch.randn(64, 128, generator=g, dtype=torch.float64)
    labels = torch.arange(16).repeat_interleave(4)
    for margin_fn in MARGIN_FNS:
        loss_fn = BatchHardLoss(margin_fn=margin_fn)
        exact = float(loss_fn(x64, labels))
        approx = float(loss_fn(x64.float(), labels))
        assert abs(approx - exact) < 1e-4, (margin_fn, approx, exact)
        # and the distances really are tiny: the regime the test is about
        assert exact < loss_fn.collapse_value + 0.01


def test_float32_accuracy_far_from_origin():
    g = torch.Generator().manual_seed(1)
    x64 = 300.0 + 1e-2 * torch.randn(48, 32, generator=g, dtype=torch.float64)
    x32 = x64.float()
    labels = torch.arange(12).repeat_interleave(4)
    for loss_cls in (BatchHardLoss, BatchAllLoss):
        exact = float(loss_cls()(x32.double(), labels))
        approx = float(loss_cls()(x32, labels))
        assert abs(approx - exact) < 1e-4, (loss_cls.__name__, approx, exact)


def test_triplet_loss_passes_the_miners_max_class_size_to_the_mining():
    emb = torch.randn(6, 3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    for miner in ({"name": "batch_hard", "max_class_size": 2}, {"name": "batch_all", "max_class_size": 2}):
        with pytest.raises(ValueError, match="max_class_size=2"):
            TripletLoss(miner=miner)(emb, labels)
        fits = dict(miner, max_class_size=3)
        assert torch.isfinite(TripletLoss(miner=fits)(emb, labels))


def test_a_plain_callable_is_a_miner_and_the_loss_never_checks_its_type():
    emb = torch.randn(8, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    from tripletkit import MINERS

    bh = MINERS.build("batch_hard")
    duck = TripletLoss(miner=lambda e, y: bh(e, y))(emb, labels)  # no fused path: mine, then score
    assert torch.allclose(duck, BatchHardLoss()(emb, labels), rtol=1e-12, atol=0)


def test_reprs_show_the_configuration():
    assert "max_class_size=4" in repr(BatchHardLoss(max_class_size=4)) and "swap=True" in repr(BatchHardLoss(swap=True))
    r = repr(TripletLoss(miner={"name": "batch_hard", "max_class_size": 8}, swap=True))
    assert "BatchHardMiner" in r and "max_class_size=8" in r and "swap=True" in r
    assert "max_class_size=2" in repr(BatchAllLoss(max_class_size=2))


@pytest.mark.parametrize("temperature", [0.05, 0.3])
def test_soft_margin_temperature_equals_brute_force(temperature):
    from tripletkit.testing import reference as ref

    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(24, 6, generator=g, dtype=torch.float64), dim=1)
    y = torch.arange(6).repeat_interleave(4)
    margin_fn = {"name": "softplus", "temperature": temperature}
    want, _ = ref.batch_hard(x.numpy(), y.tolist(), margin_fn="softplus", margin=0.0, temperature=temperature)
    assert float(BatchHardLoss(margin_fn=margin_fn)(x, y)) == pytest.approx(want, rel=1e-12)
    want_all, _, _ = ref.batch_all(x.numpy(), y.tolist(), margin_fn="softplus", margin=0.0, temperature=temperature)
    assert float(BatchAllLoss(margin_fn=margin_fn)(x, y)) == pytest.approx(want_all, rel=1e-12)
    # float64 gradcheck through the fused kernel, which uses the temperature's activation_grad
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: BatchHardLoss(margin_fn=margin_fn)(e, y), (xr,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(lambda e: BatchAllLoss(margin_fn=margin_fn)(e, y), (xr,), eps=1e-6, atol=1e-7)
