"""Stepped-batch training (registered as ``stepped_batch`` in ``SCHEDULERS``).

The study behind tripletkit found that batch-hard training from scratch with large S×K batches collapses every
embedding to one point (the loss then sits at its *collapse value*: the margin α for the hinge, ln 2 for the soft
margin with α = 0), and that the risk disappears once the loss is below that value: the collapsed state then costs
more than the current one. *Stepped batch hard* therefore starts small and grows the batch (S, K) only while the
training loss stays below the collapse value.

Example::

    >>> from tripletkit import BatchHardLoss
    >>> from tripletkit.schedulers import SteppedBatchScheduler
    >>> loss_fn = BatchHardLoss(margin_fn="softplus")
    >>> sched = SteppedBatchScheduler([(16, 2), (16, 4), (32, 4)], margin_fn=loss_fn, patience=3, smoothing=0.0)
    >>> round(sched.threshold, 4)
    0.6931
    >>> [sched.step(0.5) for _ in range(3)], (sched.S, sched.K)
    ([False, False, True], (16, 4))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .margins import MARGINS
from .registry import Registry

__all__ = ["SCHEDULERS", "SteppedBatchScheduler", "StageChange", "STUDY_STAGES"]

SCHEDULERS: Registry[Any] = Registry(
    "scheduler", check=lambda s: callable(getattr(s, "step", None)), expected="object with a step(loss) method"
)
logger = logging.getLogger("tripletkit.schedulers")

STUDY_STAGES: tuple[tuple[int, int], ...] = ((16, 2), (16, 4), (32, 4), (64, 4), (64, 8), (128, 8))
"""The study's schedule: batch sizes 32 → 64 → 128 → 256 → 512 → 1024, K growing 2 → 8."""


@dataclass(frozen=True)
class StageChange:
    """One stage change: what a training loop reacts to (e.g. by rebuilding its sampler)."""

    step: int
    from_stage: int
    to_stage: int
    S: int
    K: int
    batch_size: int
    smoothed_loss: float
    threshold: float
    reason: str  # "advance" or "back"


def _collapse_value(source: object) -> float:
    if hasattr(source, "collapse_value") and not isinstance(source, (str, dict)):
        return float(source.collapse_value)  # type: ignore[attr-defined]  # a margin function or a tripletkit loss
    return float(MARGINS.build(source).collapse_value)  # type: ignore[arg-type]  # a name or a config; else TypeError


@SCHEDULERS.register("stepped_batch")
class SteppedBatchScheduler:
    """Advance through (S, K) stages while the smoothed training loss stays below the collapse threshold.

    Args:
        stages: ``[(S, K), ...]`` in order; the run starts at the first. Each S ≥ 1, K ≥ 2.
        threshold: the loss under which the batch may grow. Default: the collapse value of ``margin_fn``.
        margin_fn: where the default threshold comes from: a margin name or config (``"hinge"``,
            ``{"name": "hinge", "margin": 0.3}``), a [`MarginFunction`][tripletkit.margins.MarginFunction], or a tripletkit
            loss (anything with ``collapse_value``).
        patience: consecutive steps the smoothed loss must stay below the threshold before advancing.
        smoothing: EMA factor β of the smoothed loss ``s ← β·s + (1 − β)·loss`` (bias-corrected as Adam does, and
            restarted at every stage change, since a new batch size shifts the loss). 0 disables smoothing.
        guard: go back one stage when, after a step up, the smoothed loss has stayed at or above the threshold
            (plus ``hysteresis``) for ``guard_patience`` steps (default ``patience``).
        hysteresis: the guard's band: it counts only steps whose smoothed loss is ≥ threshold + hysteresis, and a
            step inside the band restarts its count. A new stage whose loss hovers just above the threshold then
            stays and trains, instead of flapping back and forth (advancing still needs the loss below the
            threshold itself).
        on_change: callbacks called with each [`StageChange`][tripletkit.schedulers.StageChange].
        sync_distributed: average each loss over the replicas (``torch.distributed`` all-reduce) before judging it,
            so that in a DDP run every replica holds the same state and changes stage at the same step. Without an
            initialised process group (or with world size 1) it changes nothing.

    Rules, exactly: the scheduler never advances at a step whose smoothed loss is ≥ the threshold; it always advances
    once the smoothed loss has been below the threshold for ``patience`` consecutive steps (unless at the last
    stage). Each change is logged on ``logging.getLogger("tripletkit.schedulers")``, appended to ``events`` and
    passed to the callbacks; ``step`` returns True when the stage changed.
    """

    def __init__(
        self,
        stages: Sequence[tuple[int, int]] = STUDY_STAGES,
        threshold: float | None = None,
        *,
        margin_fn: object | None = None,
        patience: int = 100,
        smoothing: float = 0.9,
        guard: bool = False,
        guard_patience: int | None = None,
        hysteresis: float = 0.0,
        on_change: Sequence[Callable[[StageChange], None]] = (),
        sync_distributed: bool = False,
    ) -> None:
        self.sync_distributed = bool(sync_distributed)
        self.stages = self._check_stages(stages)
        if threshold is None:
            if margin_fn is None:
                raise ValueError("give a threshold, or the margin_fn (or loss) whose collapse value is the threshold")
            threshold = _collapse_value(margin_fn)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int, got {patience!r}")
        if not (0.0 <= float(smoothing) < 1.0):
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
        self.patience = patience
        self.smoothing = float(smoothing)
        self.guard = bool(guard)
        if guard_patience is not None and (
            isinstance(guard_patience, bool) or not isinstance(guard_patience, int) or guard_patience < 1
        ):  # no silent int(): 2.7 is an error, not 2
            raise ValueError(f"guard_patience must be a positive int, got {guard_patience!r}")
        self.guard_patience = patience if guard_patience is None else guard_patience
        if isinstance(hysteresis, bool) or not isinstance(hysteresis, (int, float)) or not 0 <= hysteresis < math.inf:
            raise ValueError(f"hysteresis must be a finite number >= 0, got {hysteresis!r}")
        self.hysteresis = float(hysteresis)
        self.callbacks = list(on_change)
        self.stage = 0
        self.steps = 0
        self.events: list[StageChange] = []
        self._ema = 0.0
        self._ema_steps = 0
        self._below = 0
        self._above = 0
        self._advanced_into = False  # the current stage was reached by a step up (the guard watches it)

    @classmethod
    def study(cls, margin_fn: object = "hinge", **kwargs: Any) -> SteppedBatchScheduler:
        """The study's schedule ([`STUDY_STAGES`][tripletkit.schedulers.STUDY_STAGES]) with the collapse value of ``margin_fn`` as threshold."""
        return cls(STUDY_STAGES, margin_fn=margin_fn, **kwargs)

    @staticmethod
    def _check_stages(stages: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        out = []
        for i, stage in enumerate(stages):
            try:
                S, K = stage
            except (TypeError, ValueError):
                raise ValueError(f"stage {i} must be an (S, K) pair, got {stage!r}") from None
            if isinstance(S, bool) or isinstance(K, bool) or not isinstance(S, int) or not isinstance(K, int):
                raise TypeError(f"stage {i}: S and K must be ints, got {stage!r}")
            if S < 1 or K < 2:
                raise ValueError(f"stage {i}: need S >= 1 and K >= 2, got S={S}, K={K}")
            out.append((S, K))
        if not out:
            raise ValueError("stages is empty")
        return out

    # ------------------------------------------------------------------ state
    @property
    def S(self) -> int:
        return self.stages[self.stage][0]

    @property
    def K(self) -> int:
        return self.stages[self.stage][1]

    @property
    def batch_size(self) -> int:
        return self.S * self.K

    @property
    def is_last_stage(self) -> bool:
        return self.stage == len(self.stages) - 1

    @property
    def smoothed_loss(self) -> float:
        """The bias-corrected EMA of the losses seen in this stage (NaN before the first step of a stage)."""
        if self._ema_steps == 0:
            return math.nan
        if self.smoothing == 0.0:
            return self._ema
        return self._ema / (1.0 - self.smoothing**self._ema_steps)

    # ------------------------------------------------------------------ stepping
    def step(self, loss: float | torch.Tensor) -> bool:
        """Feed one training loss; returns True when the stage changed (``events[-1]`` says how)."""
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
            if not self.sync_distributed:
                loss = float(loss.detach())
        if self.sync_distributed:
            from .distributed import all_reduce_mean

            loss = all_reduce_mean(loss)
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"loss is not finite ({loss}): the scheduler cannot judge collapse from it")
        self.steps += 1
        self._ema = self.smoothing * self._ema + (1.0 - self.smoothing) * loss
        self._ema_steps += 1
        smoothed = self.smoothed_loss
        if smoothed < self.threshold:
            self._below += 1
            self._above = 0
        elif smoothed >= self.threshold + self.hysteresis:
            self._below = 0
            self._above += 1
        else:  # inside the guard's band: neither advance nor count towards going back
            self._below = 0
            self._above = 0
        if self._below >= self.patience and not self.is_last_stage:
            self._change(self.stage + 1, "advance", smoothed)
            return True
        if self.guard and self._advanced_into and self._above >= self.guard_patience and self.stage > 0:
            self._change(self.stage - 1, "back", smoothed)
            return True
        return False

    def _change(self, to_stage: int, reason: str, smoothed: float) -> None:
        S, K = self.stages[to_stage]
        event = StageChange(
            step=self.steps,
            from_stage=self.stage,
            to_stage=to_stage,
            S=S,
            K=K,
            batch_size=S * K,
            smoothed_loss=smoothed,
            threshold=self.threshold,
            reason=reason,
        )
        self.stage = to_stage
        self._advanced_into = reason == "advance"
        self._ema, self._ema_steps, self._below, self._above = 0.0, 0, 0, 0
        self.events.append(event)
        logger.info(
            "stepped batch: %s to stage %d/%d (S=%d, K=%d, batch %d) at step %d, smoothed loss %.4f vs threshold %.4f",
            "advanced" if reason == "advance" else "went back",
            to_stage + 1,
            len(self.stages),
            S,
            K,
            S * K,
            self.steps,
            smoothed,
            self.threshold,
        )
        for callback in self.callbacks:
            callback(event)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "stages": [list(s) for s in self.stages],
            "threshold": self.threshold,
            "stage": self.stage,
            "steps": self.steps,
            "ema": self._ema,
            "ema_steps": self._ema_steps,
            "below": self._below,
            "above": self._above,
            "advanced_into": self._advanced_into,
            "events": [asdict(e) for e in self.events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """All or nothing: every field is checked before any is applied; a bad state raises ``ValueError``."""
        if not isinstance(state, dict):
            raise ValueError(f"scheduler state must be a dict, got {type(state).__name__}")
        missing = {
            "stages",
            "threshold",
            "stage",
            "steps",
            "ema",
            "ema_steps",
            "below",
            "above",
            "advanced_into",
            "events",
        } - set(state)
        if missing:
            raise ValueError(f"scheduler state lacks {sorted(missing)}")
        try:
            stages = [tuple(s) for s in state["stages"]]
        except TypeError:
            raise ValueError(f"scheduler state has malformed stages {state['stages']!r}") from None
        if stages != self.stages:
            raise ValueError(f"state has stages {stages}, this scheduler has {self.stages}")
        if state["threshold"] != self.threshold:
            raise ValueError(f"state has threshold {state['threshold']}, this scheduler has {self.threshold}")

        def count(name: str, upper: int | None = None) -> int:
            value = state[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 0
                or (upper is not None and value >= upper)
            ):
                bound = f" and < {upper}" if upper is not None else ""
                raise ValueError(f"scheduler state field {name!r} must be an int >= 0{bound}, got {value!r}")
            return value

        stage = count("stage", len(self.stages))
        steps, ema_steps, below, above = count("steps"), count("ema_steps"), count("below"), count("above")
        ema = state["ema"]
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not math.isfinite(ema):
            raise ValueError(f"scheduler state field 'ema' must be a finite number, got {ema!r}")
        try:
            events = [StageChange(**e) for e in state["events"]]
        except TypeError as e:
            raise ValueError(f"scheduler state has malformed events: {e}") from None
        self.stage, self.steps, self._ema, self._ema_steps = stage, steps, float(ema), ema_steps
        self._below, self._above = below, above
        self._advanced_into = bool(state["advanced_into"])
        self.events = events

    def __repr__(self) -> str:
        return (
            f"SteppedBatchScheduler(stage {self.stage + 1}/{len(self.stages)}: S={self.S}, K={self.K}; "
            f"threshold={self.threshold:.4g}, patience={self.patience}, smoothing={self.smoothing}, guard={self.guard})"
        )
