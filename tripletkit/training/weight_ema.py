"""An exponential moving average of a model's weights (Polyak averaging), kept beside the training.

With Adam at a constant rate the weights of a descriptor keep moving around a good region: its validation mAP
jumps by as much as 0.01 between evaluations 30 steps apart (docs/study.md). The average of the recent weights sits
nearer the middle of that region, and evaluating and selecting it removes part of the noise that selecting one
evaluation of the raw weights keeps. `WeightEMA` holds a copy of the model whose every floating-point parameter and
buffer (BatchNorm's running statistics included) follows, after each `update`::

    average ← d · average + (1 − d) · weights        d = decay, or min(decay, (1 + n) / (10 + n)) with warmup

where ``n`` is the number of updates made before this one. The warm-up keeps the average from being dominated by
the starting weights when a run is short (the first update copies them: ``d = 1/10``, then ``2/11``, …). Integer
buffers (BatchNorm's ``num_batches_tracked``) are copied, not averaged.

The averaged model (``.module``, in eval mode, without gradients) is what a loop evaluates, selects and saves; the
training never reads it, so the trajectory of the raw weights is the same with and without the average.
``state_dict()`` / ``load_state_dict()`` carry it across a resume (tensors and an integer: a checkpoint that loads
with ``weights_only=True``).

Why not ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: its first update copies the model
and then applies one fixed decay (no warm-up), and with ``use_buffers=True`` it passes integer buffers through the
float formula, so BatchNorm's ``num_batches_tracked`` drifts from the model's (3 against 5 after five forward passes
and three updates, torch 2.9); without ``use_buffers`` the running statistics are not averaged at all.

Example::

    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> _ = torch.nn.init.constant_(model.weight, 1.0)
    >>> ema = WeightEMA(model, decay=0.5, warmup=False)
    >>> _ = torch.nn.init.constant_(model.weight, 3.0)   # an optimiser step
    >>> ema.update(model)
    >>> float(ema.module.weight)   # 0.5 · 1 + 0.5 · 3
    2.0
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """The moving average of ``model``'s weights in a model of its own (``.module``).

    Args:
        model: the model being trained (the plain module, not a DDP or compiled wrapper). The average starts as a
            copy of it, on the same device.
        decay: the weight of the old average at each update, in [0, 1); ``1 / (1 − decay)`` updates is the average's
            horizon (0.99: about the last 100 steps).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` for the ``n``-th update, so that a short run is not an
            average of its starting weights.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0.0 <= decay < 1.0):
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.updates = 0

    def decay_at(self, n: int) -> float:
        """The decay of the update made after ``n`` others."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[Any, Any]]]:
        mine, theirs = self.module.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
        if mine.keys() != theirs.keys():
            raise ValueError(
                f"the model's weights differ from the average's (missing {sorted(mine.keys() - theirs.keys())[:5]}, "
                f"unexpected {sorted(theirs.keys() - mine.keys())[:5]})"
            )
        avg, new, copied = [], [], []
        for name, a in mine.items():
            b = theirs[name]
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(
                    f"{name}: {b.dtype} {tuple(b.shape)} in the model, {a.dtype} {tuple(a.shape)} in the average"
                )
            if a.is_floating_point():
                avg.append(a.detach())
                new.append(b.detach())
            else:
                copied.append((a, b))
        return avg, new, copied

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimiser step)."""
        d = self.decay_at(self.updates)
        avg, new, copied = self._pairs(model)
        # one fused kernel over every tensor (a torch-xla step keeps it in its graph)
        torch._foreach_lerp_(avg, new, 1.0 - d)
        for a, b in copied:
            a.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"module", "updates", "decay"} - set(state)
        if missing:
            raise ValueError(f"WeightEMA state lacks {sorted(missing)}")
        if float(state["decay"]) != self.decay:  # a resume averages as the run it continues did
            raise ValueError(f"WeightEMA state has decay {state['decay']}, this average {self.decay}")
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
