"""Plateau: the stopping rule against hand-worked sequences and a brute-force restatement."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tripletkit.training import Plateau


def _brute(values, patience, mode, min_delta, rel_delta, warmup):
    """The first evaluation index at which the rule says plateau (None if never), restated from the definition."""
    best, since = None, 0
    for i, v in enumerate(values):
        better = best is None or (
            v > best + max(min_delta, rel_delta * abs(best))
            if mode == "max"
            else v < best - max(min_delta, rel_delta * abs(best))
        )
        if better:
            best, since = v, 0
        elif i >= warmup:
            since += 1
        if since >= patience:
            return i
    return None


def test_hand_worked_max_and_min():
    p = Plateau(patience=2)
    assert [p.update(v) for v in (0.1, 0.3, 0.3, 0.2)] == [False, False, False, True]  # equal is no improvement
    assert (p.best, p.best_step, p.evaluations) == (0.3, 1, 4)
    q = Plateau(patience=1, mode="min", min_delta=0.5)
    assert [q.update(v, s) for s, v in ((10, 5.0), (20, 4.4), (30, 4.6))] == [False, False, True]
    assert (q.best, q.best_step) == (4.4, 20)  # 4.6 > 5.0 − 0.5 is not an improvement either


def test_relative_threshold_and_warmup():
    p = Plateau(patience=1, rel_delta=0.1)  # must beat the best by 10 %
    assert p.update(1.0) is False and p.update(1.05) is True
    w = Plateau(patience=1, warmup=3)
    assert [w.update(v) for v in (1.0, 0.5, 0.5, 0.5)] == [False, False, False, True]


@given(
    values=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=40),
    patience=st.integers(1, 5),
    mode=st.sampled_from(["max", "min"]),
    min_delta=st.sampled_from([0.0, 0.1, 1.0]),
    rel_delta=st.sampled_from([0.0, 0.05]),
    warmup=st.integers(0, 4),
)
def test_equals_the_definition(values, patience, mode, min_delta, rel_delta, warmup):
    p = Plateau(patience, mode=mode, min_delta=min_delta, rel_delta=rel_delta, warmup=warmup)
    got = next((i for i, v in enumerate(values) if p.update(v)), None)
    assert got == _brute(values, patience, mode, min_delta, rel_delta, warmup)


def test_resume_continues_exactly():
    values = [0.1, 0.4, 0.35, 0.5, 0.45, 0.44, 0.43]
    whole = Plateau(patience=3)
    want = [whole.update(v) for v in values]
    first = Plateau(patience=3)
    got = [first.update(v) for v in values[:4]]
    second = Plateau(patience=3)
    second.load_state_dict(dict(first.state_dict()))
    got += [second.update(v) for v in values[4:]]
    assert got == want and second.state_dict() == whole.state_dict()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"patience": 0}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"patience": 2, "mode": "best"}, "mode"),
        ({"patience": 2, "min_delta": -0.1}, "min_delta"),
        ({"patience": 2, "rel_delta": math.inf}, "rel_delta"),
        ({"patience": 2, "warmup": -1}, "warmup"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Plateau(**kwargs)


def test_a_diverged_value_is_an_error_and_a_bad_state_is_named():
    p = Plateau(patience=2)
    p.update(0.5)
    with pytest.raises(ValueError, match="non-finite value nan at evaluation 1"):
        p.update(float("nan"))
    with pytest.raises(ValueError, match="lacks"):
        p.load_state_dict({"best": 0.5})


def _brute_steps(evals, patience, min_steps, min_delta):
    """The first index at which ``patience`` evaluations without a gain *and* ``min_steps`` steps from the best to the
    evaluation have passed, restated from the definition on (step, value) pairs."""
    best = best_step = None
    since = 0
    for i, (step, v) in enumerate(evals):
        if best is None or v > best + min_delta:
            best, best_step, since = v, step, 0
        else:
            since += 1
        if since >= patience and step - best_step >= min_steps:
            return i
    return None


def test_min_steps_hand_worked():
    # evaluations every 29 steps (batch 1024, 30,000 patches apart): four are 116 steps, under a 232-step floor
    p = Plateau(patience=4, min_steps=232)
    steps = [29 * i for i in range(1, 11)]
    values = [0.10, 0.20, 0.19, 0.19, 0.19, 0.19, 0.19, 0.19, 0.19, 0.19]
    got = [p.update(v, s) for s, v in zip(steps, values)]
    # the best is at step 58; 58 + 232 = 290 is the 10th evaluation: 8 without a gain, not 4
    assert got == [False] * 9 + [True]
    assert (p.best_step, p.last_step, p.since_best) == (58, 290, 8)


@given(
    gaps=st.lists(st.integers(1, 60), min_size=1, max_size=30),
    values=st.lists(st.floats(0, 1, allow_nan=False), min_size=30, max_size=30),
    patience=st.integers(1, 5),
    min_steps=st.sampled_from([0, 1, 50, 117, 232]),
)
def test_min_steps_equals_the_definition(gaps, values, patience, min_steps):
    steps = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    evals = list(zip(steps, values))
    p = Plateau(patience, min_delta=0.01, min_steps=min_steps)
    got = next((i for i, (s, v) in enumerate(evals) if p.update(v, s)), None)
    assert got == _brute_steps(evals, patience, min_steps, 0.01)


def test_min_steps_resume_and_a_legacy_state():
    evals = [(30, 0.1), (60, 0.2), (90, 0.2), (120, 0.2), (150, 0.2), (180, 0.2)]
    whole = Plateau(patience=2, min_steps=100)
    want = [whole.update(v, s) for s, v in evals]
    assert want == [False] * 4 + [False, True]  # since_best 2 at step 120 but only 60 steps from the best
    first = Plateau(patience=2, min_steps=100)
    for s, v in evals[:4]:
        first.update(v, s)
    legacy = {k: v for k, v in first.state_dict().items() if k != "last_step"}  # saved before last_step was kept
    second = Plateau(patience=2, min_steps=100)
    second.load_state_dict(legacy)
    with pytest.raises(ValueError, match="last_step"):
        _ = second.plateaued
    second.load_state_dict(legacy, last_step=120)
    assert second.plateaued is False  # 60 steps from the best, as the uninterrupted rule said at step 120
    assert [second.update(v, s) for s, v in evals[4:]] == want[4:]
    assert second.state_dict() == whole.state_dict()
    with pytest.raises(ValueError, match="disagrees"):
        second.load_state_dict(first.state_dict(), last_step=121)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_min_steps_bad_values_are_named(bad):
    with pytest.raises(ValueError, match="min_steps"):
        Plateau(2, min_steps=bad)
