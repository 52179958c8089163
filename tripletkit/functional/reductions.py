"""Reductions of per-triplet (or per-anchor) losses, with static shapes and no NaN on empty batches.

* ``mean``: sum over valid rows / number of valid rows (Hermans et al.: anchors with a positive and a negative).
* ``mean_active``: sum / number of valid rows whose loss is > 0 (PML's ``AvgNonZeroReducer``).
* ``sum``: sum over valid rows.
* ``none``: the per-row losses, 0 on invalid rows.

A denominator of 0 (no valid or no active row) gives a loss of exactly 0 that still carries a (zero) gradient to
the embeddings, so a training step on such a batch is a no-op instead of a NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["REDUCTIONS", "reduce_losses"]

REDUCTIONS = ("mean", "mean_active", "sum", "none")


def reduce_losses(losses: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """Reduce (T,) ``losses`` over the rows where ``valid`` is True."""
    losses = torch.where(valid, losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / valid.sum().clamp_min(1).to(losses.dtype)
    if reduction == "mean_active":
        return total / (losses > 0).sum().clamp_min(1).to(losses.dtype)
    raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
