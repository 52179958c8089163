"""When a validation metric has stopped improving: the rule that ends a "train until convergence" run.

The study trained its baseline "until convergence"; a fixed step budget either stops early or wastes time, and the
last value of a noisy validation curve is a poor judge. `Plateau` is the usual early-stopping rule made explicit:

* a value *improves* when it beats the best so far by more than ``min_delta`` (absolute) and ``rel_delta`` times
  the best (relative), in the direction of ``mode`` (``"max"`` for an mAP, ``"min"`` for a loss);
* the run has *plateaued* once ``patience`` evaluations in a row brought no improvement and, with ``min_steps``, the
  best is at least ``min_steps`` steps older than the last evaluation (``step`` as given to `update`). Evaluations
  spaced by a number of *samples* come every few steps once the batch is large: four of them are 117 steps at batch
  1024 against 936 at batch 128, too short a patience for the large stage (docs/study.md);
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
        min_steps: steps from the best evaluation to the last one that a plateau needs as well (≥ 0; 0: off).
            Measured between evaluations, so an uninterrupted run and a resumed one stop at the same evaluation.
    """

    def __init__(
        self,
        patience: int,
        *,
        mode: str = "max",
        min_delta: float = 0.0,
        rel_delta: float = 0.0,
        warmup: int = 0,
        min_steps: int = 0,
    ) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer ≥ 1, got {patience!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        for name, v in (("min_delta", min_delta), ("rel_delta", rel_delta)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
        for name, n in (("warmup", warmup), ("min_steps", min_steps)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{name} must be an integer ≥ 0, got {n!r}")
        self.patience, self.mode, self.warmup, self.min_steps = patience, mode, warmup, min_steps
        self.min_delta, self.rel_delta = float(min_delta), float(rel_delta)
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_step: int | None = None  # where the last evaluation was taken
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
        self.last_step = step
        return self.plateaued

    @property
    def plateaued(self) -> bool:
        if self.since_best < self.patience:
            return False
        if self.min_steps == 0:
            return True
        if self.last_step is None or self.best_step is None:
            # a state from before last_step was kept: `load_state_dict` says how to give it
            raise ValueError(
                "Plateau with min_steps needs the last evaluation's step: pass last_step to load_state_dict"
            )
        return self.last_step - self.best_step >= self.min_steps

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "evaluations": self.evaluations,
            "since_best": self.since_best,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict, *, last_step: int | None = None) -> None:
        """Restore `state_dict()`. A state saved before ``last_step`` was kept lacks it: ``last_step`` then gives the
        step of its last evaluation (a run's evaluation log has it); a state that has one must agree with it."""
        missing = {"best", "best_step", "evaluations", "since_best"} - set(state)
        if missing:
            raise ValueError(f"Plateau state lacks {sorted(missing)}")
        self.best = None if state["best"] is None else float(state["best"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.evaluations, self.since_best = int(state["evaluations"]), int(state["since_best"])
        saved = state.get("last_step")
        if saved is not None and last_step is not None and int(saved) != int(last_step):
            raise ValueError(f"Plateau state's last step {saved} disagrees with the given last_step {last_step}")
        given = saved if saved is not None else last_step
        self.last_step = None if given is None else int(given)
