from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tripletkit import SCHEDULERS, STUDY_STAGES, BatchAllLoss, SteppedBatchScheduler
from tripletkit.margins import HingeMargin

STAGES = [(4, 2), (8, 2), (8, 4), (16, 4)]


def _ema_reference(losses, beta):
    """Bias-corrected EMA of a list, written out."""
    s = 0.0
    for x in losses:
        s = beta * s + (1 - beta) * x
    return s / (1 - beta ** len(losses)) if beta > 0 else losses[-1]


@given(
    losses=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=120),
    patience=st.integers(1, 10),
    smoothing=st.sampled_from([0.0, 0.5, 0.9]),
)
def test_advances_exactly_by_the_rule(losses, patience, smoothing):
    threshold = 1.0
    sched = SteppedBatchScheduler(STAGES, threshold, patience=patience, smoothing=smoothing)
    below = 0
    stage_losses: list[float] = []
    for loss in losses:
        stage_before = sched.stage
        stage_losses.append(loss)
        smoothed = _ema_reference(stage_losses, smoothing)
        changed = sched.step(loss)
        assert math.isclose(
            sched.events[-1].smoothed_loss if changed else sched.smoothed_loss, smoothed, rel_tol=1e-9, abs_tol=1e-12
        )
        below = below + 1 if smoothed < threshold else 0
        if smoothed >= threshold:
            assert not changed  # never while the smoothed loss is at or above the threshold
        expected = below >= patience and stage_before < len(STAGES) - 1
        assert changed == expected  # always after `patience` steps below it
        if changed:
            assert sched.stage == stage_before + 1 and sched.events[-1].reason == "advance"
            below = 0
            stage_losses = []


@given(losses=st.lists(st.floats(0.0, 2.0), min_size=2, max_size=80), cut=st.integers(1, 79))
def test_state_dict_round_trip_mid_stage(losses, cut):
    cut = min(cut, len(losses) - 1)
    a = SteppedBatchScheduler(STAGES, 1.0, patience=3, smoothing=0.5, guard=True)
    for x in losses[:cut]:
        a.step(x)
    b = SteppedBatchScheduler(STAGES, 1.0, patience=3, smoothing=0.5, guard=True)
    b.load_state_dict(a.state_dict())
    assert (b.stage, b.S, b.K, b.steps) == (a.stage, a.S, a.K, a.steps)
    for x in losses[cut:]:
        assert a.step(x) == b.step(x)
        assert (a.stage, a.smoothed_loss) == (b.stage, b.smoothed_loss)
    assert a.events == b.events


def test_threshold_from_the_margin_function():
    assert SteppedBatchScheduler(STAGES, margin_fn="softplus").threshold == pytest.approx(math.log(2))
    assert SteppedBatchScheduler(STAGES, margin_fn={"name": "hinge", "margin": 0.3}).threshold == 0.3
    assert SteppedBatchScheduler(STAGES, margin_fn=HingeMargin(0.5)).threshold == 0.5
    assert SteppedBatchScheduler(STAGES, margin_fn=BatchAllLoss(margin=0.7)).threshold == 0.7
    with pytest.raises(ValueError, match="give a threshold, or the margin_fn"):
        SteppedBatchScheduler(STAGES)


def test_guard_goes_back_a_stage_and_events_are_reported(caplog):
    seen = []
    sched = SteppedBatchScheduler(
        STAGES, 1.0, patience=2, smoothing=0.0, guard=True, guard_patience=3, on_change=[seen.append]
    )
    with caplog.at_level(logging.INFO, logger="tripletkit.schedulers"):
        assert [sched.step(0.5) for _ in range(2)] == [False, True]
        assert (sched.S, sched.K, sched.batch_size) == (8, 2, 16)
        assert [sched.step(1.5) for _ in range(3)] == [False, False, True]
    assert sched.stage == 0 and [e.reason for e in seen] == ["advance", "back"]
    assert "advanced to stage 2/4 (S=8, K=2, batch 16)" in caplog.text and "went back to stage 1/4" in caplog.text
    # at the first stage there is nowhere to go back to
    assert not any(sched.step(1.5) for _ in range(10))


def test_study_preset_and_registry():
    sched = SteppedBatchScheduler.study("softplus")
    assert [s * k for s, k in STUDY_STAGES] == [32, 64, 128, 256, 512, 1024]
    assert [k for _, k in STUDY_STAGES][0] == 2 and [k for _, k in STUDY_STAGES][-1] == 8
    assert sched.batch_size == 32
    assert isinstance(SCHEDULERS.build("stepped_batch", stages=STAGES, threshold=0.2), SteppedBatchScheduler)


def test_errors():
    with pytest.raises(ValueError, match="need S >= 1 and K >= 2"):
        SteppedBatchScheduler([(4, 1)], 0.2)
    with pytest.raises(ValueError, match="stages is empty"):
        SteppedBatchScheduler([], 0.2)
    with pytest.raises(ValueError, match="patience must be a positive int"):
        SteppedBatchScheduler(STAGES, 0.2, patience=0)
    with pytest.raises(ValueError, match="smoothing must be in"):
        SteppedBatchScheduler(STAGES, 0.2, smoothing=1.0)
    sched = SteppedBatchScheduler(STAGES, 0.2)
    with pytest.raises(ValueError, match="loss is not finite"):
        sched.step(float("nan"))
    other = SteppedBatchScheduler(STAGES[:2], 0.2)
    with pytest.raises(ValueError, match="state has stages"):
        other.load_state_dict(sched.state_dict())
