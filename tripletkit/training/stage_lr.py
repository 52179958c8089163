"""The learning rate of a stepped-batch run, set per stage: the study's remedies for a stage that stalls.

A new, larger batch makes the batch-hard loss jump (harder positives, closer negatives), often above the collapse
value, where the optimiser is pulled towards the collapsed state. The study's remedies, as one rule:

* **a lower rate at a stage's start**: ``start_factor × lr``, ramped linearly back to ``lr`` over ``warmup``
  steps of the stage (the first step of a stage uses ``start_factor``; step ``warmup`` and later use 1);
* **a higher rate once the loss is under the margin** ("after the loss has dropped under the margin we find that
  we may increase the learning rate"): ``below_factor × lr`` from the first step at which the scheduler's smoothed
  loss is under its threshold in this stage, for the rest of the stage;
* **a rate per stage**: ``stage_factors[i]`` multiplies the rate of stage ``i``.

So, in stage ``i``, ``n`` steps after the stage began::

    lr = base × stage_factors[i] × ramp(n) × (below_factor if the loss has been under the threshold in this stage else 1)
    ramp(n) = start_factor + (1 − start_factor) × min(n, warmup) / warmup        (1 when warmup = 0)

Call `update(scheduler)` after each step whose loss the scheduler has judged; it sets every parameter group's
``lr`` (each group keeps its own base: the ratio between groups is kept) and returns the factor applied.
``state_dict()`` / ``load_state_dict()`` carry it across a resume as plain numbers.

Example::

    >>> import torch
    >>> from tripletkit.schedulers import SteppedBatchScheduler
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> sched = SteppedBatchScheduler([(8, 2), (8, 4)], threshold=1.0, patience=2, smoothing=0.0)
    >>> rule = StageLR(opt, start_factor=0.5, warmup=2, below_factor=2.0)
    >>> out = []
    >>> for loss in [1.5, 0.5, 0.5, 1.5, 1.5, 1.5]:
    ...     _ = sched.step(loss)
    ...     out.append(round(rule.update(sched), 3))
    >>> out   # stage 0: the base rate, ×2 once under the threshold; stage 1 (from step 3): the ramp 0.5 → 1
    [1.0, 2.0, 0.5, 0.75, 1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["StageLR"]


def _factor(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class StageLR:
    """Per-stage learning rate for a `SteppedBatchScheduler` (or `SteppedBatches`) run.

    Args:
        optimizer: whose parameter groups' ``lr`` is set. Their ``lr`` at construction is the base rate.
        start_factor: the rate at a stage's first step, as a fraction of the stage's rate (> 0).
        warmup: steps over which the rate ramps from ``start_factor`` to 1 (0: no ramp).
        below_factor: the factor once the smoothed loss has been under the threshold in the stage (> 0).
        stage_factors: one factor per stage (default all 1); its length must be the scheduler's number of stages.
        first_stage: apply the start ramp to the run's first stage too (default False: a run starts at the base rate).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        start_factor: float = 1.0,
        warmup: int = 0,
        below_factor: float = 1.0,
        stage_factors: Sequence[float] | None = None,
        first_stage: bool = False,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.start_factor = _factor("start_factor", start_factor)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
        self.warmup = warmup
        self.below_factor = _factor("below_factor", below_factor)
        self.stage_factors = None if stage_factors is None else [_factor("stage_factors", f) for f in stage_factors]
        self.first_stage = bool(first_stage)
        self.base = [float(g["lr"]) for g in optimizer.param_groups]
        self.stage = 0
        self.in_stage = 0  # steps judged in the current stage
        self.below = False  # the smoothed loss has been under the threshold in this stage
        self.factor = 1.0
        self.changes = 0  # stage changes seen (a change back to the same index is a new stage too)

    def _ramp(self) -> float:
        if self.warmup == 0 or (self.changes == 0 and not self.first_stage):
            return 1.0
        n = min(self.in_stage - 1, self.warmup)  # the stage's first step is n = 0
        return self.start_factor + (1.0 - self.start_factor) * n / self.warmup

    def update(self, scheduler: Any) -> float:
        """Set the rate for the next step from ``scheduler``'s stage and smoothed loss; returns the factor."""
        sched = getattr(scheduler, "scheduler", scheduler)  # a SteppedBatches holds its scheduler
        n_stages = len(sched.stages)
        if self.stage_factors is not None and len(self.stage_factors) != n_stages:
            raise ValueError(f"stage_factors has {len(self.stage_factors)} entries, the scheduler {n_stages} stages")
        if len(sched.events) != self.changes:
            self.stage, self.in_stage, self.below = sched.stage, 0, False
            self.changes = len(sched.events)
        self.in_stage += 1
        smoothed = sched.smoothed_loss
        # the step that changed the stage judged the old stage's loss: the new stage's own losses decide `below`
        if self.in_stage > 1 and math.isfinite(smoothed) and smoothed < sched.threshold:
            self.below = True
        stage = 1.0 if self.stage_factors is None else self.stage_factors[self.stage]
        self.factor = stage * self._ramp() * (self.below_factor if self.below else 1.0)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * self.factor
        return self.factor

    def state_dict(self) -> dict[str, Any]:
        return {
            "base": list(self.base),
            "stage": self.stage,
            "in_stage": self.in_stage,
            "below": self.below,
            "factor": self.factor,
            "changes": self.changes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"base", "stage", "in_stage", "below", "factor", "changes"} - set(state)
        if missing:
            raise ValueError(f"StageLR state lacks {sorted(missing)}")
        if len(state["base"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"StageLR state has {len(state['base'])} parameter groups, the optimizer {len(self.optimizer.param_groups)}"
            )
        self.base = [float(b) for b in state["base"]]
        self.stage, self.in_stage = int(state["stage"]), int(state["in_stage"])
        self.below, self.factor, self.changes = bool(state["below"]), float(state["factor"]), int(state["changes"])
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * self.factor
