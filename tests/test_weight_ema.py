"""WeightEMA: the recurrence against a plain NumPy restatement, buffers, resume, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.training import TrainingCheckpoint, WeightEMA


def _reference(snapshots: list[np.ndarray], start: np.ndarray, decay: float, warmup: bool) -> np.ndarray:
    """average_n = d_n · average_{n-1} + (1 − d_n) · weights_n, d_n = min(decay, (1 + n) / (10 + n)) with warmup."""
    avg = start.astype(np.float64)
    for n, w in enumerate(snapshots):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        avg = d * avg + (1 - d) * w.astype(np.float64)
    return avg


@settings(max_examples=40, deadline=None)
@given(
    decay=st.floats(0.0, 0.999),
    warmup=st.booleans(),
    steps=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_average_follows_the_recurrence(decay, warmup, steps, seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    ema = WeightEMA(model, decay, warmup=warmup)
    snaps: dict[str, list[np.ndarray]] = {k: [] for k in start}
    for _ in range(steps):
        with torch.no_grad():  # an optimiser step: any new weights
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        for k, v in model.state_dict().items():
            snaps[k].append(v.detach().numpy().copy())
        ema.update(model)
    assert ema.updates == steps
    for k, v in ema.module.state_dict().items():
        want = _reference(snaps[k], start[k], decay, warmup)
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-5)


def test_warmup_decay_values_and_first_update_weight():
    ema = WeightEMA(torch.nn.Linear(1, 1), 0.99)
    assert [round(ema.decay_at(n), 6) for n in (0, 1, 2, 90)] == [0.1, round(2 / 11, 6), 0.25, 0.91]
    assert ema.decay_at(10_000) == 0.99
    assert WeightEMA(torch.nn.Linear(1, 1), 0.99, warmup=False).decay_at(0) == 0.99


def test_batchnorm_statistics_are_averaged_and_counters_copied():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema = WeightEMA(model, 0.5, warmup=False)
    before = ema.module[1].running_mean.clone()
    model.train()
    model(torch.randn(16, 4) * 3 + 2)  # moves the running statistics and the counter
    ema.update(model)
    bn, avg = model[1], ema.module[1]
    torch.testing.assert_close(avg.running_mean, 0.5 * before + 0.5 * bn.running_mean)
    assert int(avg.num_batches_tracked) == int(bn.num_batches_tracked) == 1
    assert not avg.training and not any(p.requires_grad for p in ema.module.parameters())


def test_the_trained_model_is_untouched():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = WeightEMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(ema.module.weight, before["weight"])  # the average moved towards the new weights
    assert model.weight.requires_grad


def test_resume_through_a_checkpoint_equals_an_uninterrupted_average(tmp_path):
    def run(steps: int, ema: WeightEMA, model: torch.nn.Module, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g))
            ema.update(model)

    torch.manual_seed(1)
    a = torch.nn.Linear(4, 2)
    b = torch.nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    ema_a, ema_b = WeightEMA(a, 0.8), WeightEMA(b, 0.8)
    run(3, ema_a, a, 0)
    run(4, ema_a, a, 1)
    run(3, ema_b, b, 0)
    TrainingCheckpoint(tmp_path / "c.pt", model=b, stateful={"ema": ema_b}).save(step=3)
    c = torch.nn.Linear(4, 2)
    ema_c = WeightEMA(c, 0.8)
    TrainingCheckpoint(tmp_path / "c.pt", model=c, stateful={"ema": ema_c}).restore()
    run(4, ema_c, c, 1)
    assert ema_c.updates == 7
    for k, v in ema_a.module.state_dict().items():
        assert torch.equal(v, ema_c.module.state_dict()[k])


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan"), True, "0.9"])
def test_bad_decay_is_a_clear_error(decay):
    with pytest.raises(ValueError, match="decay must be a number in"):
        WeightEMA(torch.nn.Linear(1, 1), decay)


def test_bad_model_and_mismatched_states_are_clear_errors():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        WeightEMA(torch.zeros(3), 0.9)  # type: ignore[arg-type]
    ema = WeightEMA(torch.nn.Linear(3, 2), 0.9)
    with pytest.raises(ValueError, match=r"weight: torch.float32 \(3, 3\) in the model"):
        ema.update(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="torch.float64 .* in the model, torch.float32"):
        ema.update(torch.nn.Linear(3, 2).double())
    with pytest.raises(ValueError, match="missing"):
        ema.update(torch.nn.Linear(3, 2, bias=False))
    with pytest.raises(ValueError, match="decay 0.5, this average 0.9"):
        ema.load_state_dict({**ema.state_dict(), "decay": 0.5})
    with pytest.raises(ValueError, match="lacks"):
        ema.load_state_dict({"module": ema.module.state_dict()})
