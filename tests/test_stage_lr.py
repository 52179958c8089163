"""StageLR and the scheduler's hysteresis band, against restatements of their definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.schedulers import SteppedBatchScheduler
from tripletkit.training import StageLR

STAGES = [(4, 2), (4, 4), (8, 4)]


def _opt(lr=0.1, groups=1):
    params = [torch.zeros(1, requires_grad=True) for _ in range(groups)]
    return torch.optim.SGD([{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(params)], lr=lr)


def _brute_factors(losses, threshold, patience, start, warmup, below_factor, stage_factors, first_stage):
    """The rate factor after each loss, restated from the docstring (scheduler with smoothing 0, no guard)."""
    stage, below_count, n, below, changes, out = 0, 0, 0, False, 0, []
    for loss in losses:
        # the scheduler's rule, smoothing 0: advance after `patience` steps in a row under the threshold
        changed = False
        if loss < threshold:
            below_count += 1
        else:
            below_count = 0
        if below_count >= patience and stage < len(STAGES) - 1:
            stage, below_count, changed = stage + 1, 0, True
        if changed:
            n, below, changes = 0, False, changes + 1
        n += 1
        if n > 1 and loss < threshold:  # the loss judged in this stage (the change step judged the old one)
            below = True
        ramp = 1.0
        if warmup and (changes or first_stage):
            ramp = start + (1 - start) * min(n - 1, warmup) / warmup
        sf = 1.0 if stage_factors is None else stage_factors[stage]
        out.append(sf * ramp * (below_factor if below else 1.0))
    return out


@settings(max_examples=150, deadline=None)
@given(
    losses=st.lists(st.sampled_from([0.2, 0.9, 1.5]), min_size=1, max_size=40),
    patience=st.integers(1, 4),
    start=st.sampled_from([0.1, 0.5, 1.0]),
    warmup=st.integers(0, 5),
    below_factor=st.sampled_from([1.0, 2.0, 0.5]),
    stage_factors=st.sampled_from([None, (1.0, 0.5, 0.25)]),
    first_stage=st.booleans(),
)
def test_rate_equals_the_definition(losses, patience, start, warmup, below_factor, stage_factors, first_stage):
    opt = _opt(groups=2)
    sched = SteppedBatchScheduler(STAGES, threshold=1.0, patience=patience, smoothing=0.0)
    rule = StageLR(
        opt,
        start_factor=start,
        warmup=warmup,
        below_factor=below_factor,
        stage_factors=stage_factors,
        first_stage=first_stage,
    )
    got = []
    for loss in losses:
        sched.step(loss)
        got.append(rule.update(sched))
        # every group keeps its own base rate: 0.1 and 0.2 times the factor
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * got[-1])
        assert opt.param_groups[1]["lr"] == pytest.approx(0.2 * got[-1])
    want = _brute_factors(losses, 1.0, patience, start, warmup, below_factor, stage_factors, first_stage)
    assert got == pytest.approx(want)


def test_hand_worked_ramp_after_a_stage_change():
    opt = _opt(lr=1.0)
    sched = SteppedBatchScheduler(STAGES, threshold=1.0, patience=1, smoothing=0.0)
    rule = StageLR(opt, start_factor=0.2, warmup=4)
    sched.step(0.5)  # advances at once
    assert rule.update(sched) == pytest.approx(0.2)
    got = []
    for _ in range(5):
        sched.step(1.5)
        got.append(rule.update(sched))
    assert got == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])


def test_resume_continues_exactly():
    losses = [1.5, 0.5, 0.5, 1.5, 0.5, 1.5, 1.5, 0.5, 0.5, 0.5, 1.5]
    full_opt = _opt()
    full_sched = SteppedBatchScheduler(STAGES, threshold=1.0, patience=2, smoothing=0.0)
    full = StageLR(full_opt, start_factor=0.5, warmup=3, below_factor=3.0)
    want = []
    for loss in losses:
        full_sched.step(loss)
        want.append(full.update(full_sched))
    opt = _opt()
    sched = SteppedBatchScheduler(STAGES, threshold=1.0, patience=2, smoothing=0.0)
    rule = StageLR(opt, start_factor=0.5, warmup=3, below_factor=3.0)
    got = []
    for loss in losses[:5]:
        sched.step(loss)
        got.append(rule.update(sched))
    state, sstate = rule.state_dict(), sched.state_dict()
    opt2 = _opt()
    sched2 = SteppedBatchScheduler(STAGES, threshold=1.0, patience=2, smoothing=0.0)
    sched2.load_state_dict(sstate)
    rule2 = StageLR(opt2, start_factor=0.5, warmup=3, below_factor=3.0)
    rule2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * got[-1])  # the restored rate, before any step
    for loss in losses[5:]:
        sched2.step(loss)
        got.append(rule2.update(sched2))
    assert got == want


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"start_factor": 0.0}, "start_factor"),
        ({"start_factor": math.nan}, "start_factor"),
        ({"below_factor": -1.0}, "below_factor"),
        ({"warmup": -1}, "warmup"),
        ({"warmup": 1.5}, "warmup"),
        ({"stage_factors": [1.0, 0.0]}, "stage_factors"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StageLR(_opt(), **kwargs)


def test_not_an_optimizer_and_wrong_stage_count():
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        StageLR([torch.zeros(1)])  # type: ignore[arg-type]
    rule = StageLR(_opt(), stage_factors=[1.0, 0.5])
    sched = SteppedBatchScheduler(STAGES, threshold=1.0)
    sched.step(2.0)
    with pytest.raises(ValueError, match="stage_factors has 2 entries, the scheduler 3 stages"):
        rule.update(sched)
    with pytest.raises(ValueError, match="lacks"):
        rule.load_state_dict({"base": [0.1]})


def _brute_guard(losses, threshold, patience, guard_patience, hysteresis):
    """Stage after each loss (smoothing 0), restated: advance after `patience` in a row under the threshold; after a
    step up, go back after `guard_patience` in a row at or above threshold + hysteresis (the band resets both)."""
    stage, below, above, advanced, out = 0, 0, 0, False, []
    for loss in losses:
        if loss < threshold:
            below, above = below + 1, 0
        elif loss >= threshold + hysteresis:
            below, above = 0, above + 1
        else:
            below, above = 0, 0
        if below >= patience and stage < len(STAGES) - 1:
            stage, below, above, advanced = stage + 1, 0, 0, True
        elif advanced and above >= guard_patience and stage > 0:
            stage, below, above, advanced = stage - 1, 0, 0, False
        out.append(stage)
    return out


@settings(max_examples=200, deadline=None)
@given(
    losses=st.lists(st.sampled_from([0.5, 1.05, 1.2, 2.0]), min_size=1, max_size=50),
    patience=st.integers(1, 3),
    guard_patience=st.integers(1, 4),
    hysteresis=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_hysteresis_band_equals_the_definition(losses, patience, guard_patience, hysteresis):
    sched = SteppedBatchScheduler(
        STAGES,
        threshold=1.0,
        patience=patience,
        smoothing=0.0,
        guard=True,
        guard_patience=guard_patience,
        hysteresis=hysteresis,
    )
    got = []
    for loss in losses:
        sched.step(loss)
        got.append(sched.stage)
    assert got == _brute_guard(losses, 1.0, patience, guard_patience, hysteresis)


def test_hysteresis_keeps_a_hovering_stage():
    def run(h):
        s = SteppedBatchScheduler(STAGES, threshold=1.0, patience=1, smoothing=0.0, guard=True, hysteresis=h)
        for loss in [0.5] + [1.05] * 10:
            s.step(loss)
        return s.stage

    assert run(0.0) == 0  # without a band, 1.05 ≥ 1 sends it back
    assert run(0.1) == 1  # inside the band it stays and trains


@pytest.mark.parametrize("h", [-0.1, math.inf, math.nan, True])
def test_bad_hysteresis(h):
    with pytest.raises(ValueError, match="hysteresis"):
        SteppedBatchScheduler(STAGES, threshold=1.0, hysteresis=h)
