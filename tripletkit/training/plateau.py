"""When a validation metric has stopped improving: the rule that ends a "train until convergence" run.

The study trained its baseline "until convergence"; a fixed step budget either stops early or wastes time, and the
last value of a noisy validation curve is a poor judge. `Plateau` is the usual early-stopping rule made explicit:

* a value *improves* when it beats the best so far by more than ``min_delta`` (absolute) and ``rel_delta`` times
  the best (relative), in the direction of ``mode`` (``"max"`` for an mAP, ``"min"`` for a loss);
* the run has *plateaued* once ``patience`` evaluations in a row brought no improvement;
* the first ``warmup`` evaluations never count towards a plateau (a curve's first points are its steepest and
  noisiest);
* NaN or inf is a `ValueError`: a diverged run is not a converged one.

`best` and `best_step` say which checkpoint to keep (choose by validation, never by a test number).
`state_dict()` / `load_state_dict()` carry it across a resume, as plain numbers.

Example::

    >>> p = Plateau(patience=2, min_delta=0.01)
    >>> [p.update(v, step) for step, v in enumerate([0.10, 0.20, 0.205, 0.25, 0.255, 0.24])]
    [False, False, False, False, False, True]
    >>> p.best, p.best_step
    (0.25, 3)
"""

from __future__ import annotations

import math

__all__ = ["Plateau"]


class Plateau:
    """Counts evaluations without improvement; `update` returns True once there have been ``patience`` in a row.

    Args:
        patience: evaluations in a row without improvement that make a plateau (≥ 1).
        mode: ``"max"`` (higher is better) or ``"min"``.
        min_delta: how much (absolute) a value must beat the best by to count as an improvement (≥ 0).
        rel_delta: the same, relative to ``|best|`` (≥ 0); the larger of the two thresholds applies.
        warmup: evaluations at the start that never count towards a plateau (they still set the best).
    """

    def __init__(
        self,
        patience: int,
        *,
        mode: str = "max",
        min_delta: float = 0.0,
        rel_delta: float = 0.0,
        warmup: int = 0,
    ) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer ≥ 1, got {patience!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        for name, v in (("min_delta", min_delta), ("rel_delta", rel_delta)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an integer ≥ 0, got {warmup!r}")
        self.patience, self.mode, self.warmup = patience, mode, warmup
        self.min_delta, self.rel_delta = float(min_delta), float(rel_delta)
        self.best: float | None = None
        self.best_step: int | None = None
        self.evaluations = 0
        self.since_best = 0  # evaluations after the warmup without an improvement

    def improves(self, value: float) -> bool:
        """Whether ``value`` would count as an improvement on the best so far (the first value always does)."""
        if self.best is None:
            return True
        margin = max(self.min_delta, self.rel_delta * abs(self.best))
        return value > self.best + margin if self.mode == "max" else value < self.best - margin

    def update(self, value: float, step: int | None = None) -> bool:
        """Record one evaluation (``step``: where it was taken, default its index); True once plateaued."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"Plateau got a non-finite value {value} at evaluation {self.evaluations}")
        step = self.evaluations if step is None else int(step)
        if self.improves(value):
            self.best, self.best_step, self.since_best = value, step, 0
        elif self.evaluations >= self.warmup:
            self.since_best += 1
        self.evaluations += 1
        return self.plateaued

    @property
    def plateaued(self) -> bool:
        return self.since_best >= self.patience

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "evaluations": self.evaluations,
            "since_best": self.since_best,
        }

    def load_state_dict(self, state: dict) -> None:
        missing = {"best", "best_step", "evaluations", "since_best"} - set(state)
        if missing:
            raise ValueError(f"Plateau state lacks {sorted(missing)}")
        self.best = None if state["best"] is None else float(state["best"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.evaluations, self.since_best = int(state["evaluations"]), int(state["since_best"])
