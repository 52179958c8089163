"""Triplet losses as pure functions: embeddings + labels (or mined triplets) → scalar.

Notation: ``d`` is the chosen distance (plain Euclidean by default, never squared or normalised unless asked),
``h`` the margin function with margin ``m`` (``h(gap) = [m + gap]₊`` or ``ln(1 + exp(m + gap))``).

* [`triplet_margin_loss()`][tripletkit.functional.losses.triplet_margin_loss]: ``h(d(a, p) − d(a, n))`` for given index triplets.
* [`batch_hard_triplet_loss()`][tripletkit.functional.losses.batch_hard_triplet_loss]: Hermans et al. 2017, eq. 5:
  ``L_BH = 1/|A| Σ_{a ∈ A} h( max_{p ∈ P(a)} d(a, p) − min_{n ∈ N(a)} d(a, n) )``, where ``A`` are the anchors that
  have at least one positive and one negative (others are left out of the sum and the denominator).
* [`batch_all_triplet_loss()`][tripletkit.functional.losses.batch_all_triplet_loss]: Hermans et al. 2017, eq. 6: ``Σ_{(a,p,n) valid} h(d(a, p) − d(a, n))`` divided by
  the number of valid triplets (``mean``) or of triplets with positive loss (``mean_active``).

Half-precision embeddings are computed in float32; the result is float32 (float64 for float64 input).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import compute_dtype, outside_autocast
from .miners import Triplets, class_members, mine_batch_hard, random_triplets
from .reductions import reduce_losses
from .types import DistanceLike, MarginLike

__all__ = [
    "triplet_margin_loss",
    "batch_hard_triplet_loss",
    "random_triplet_loss",
    "batch_all_triplet_loss",
    "BatchAllStats",
]


@outside_autocast
def triplet_margin_loss(
    embeddings: Tensor,
    triplets: Triplets,
    *,
    distance: DistanceLike,
    margin_fn: MarginLike,
    reduction: str = "mean",
    swap: bool = False,
) -> Tensor:
    """Loss of explicit index triplets into ``embeddings``; rows with ``valid = False`` are left out.

    ``swap=True`` uses ``min(d(a, n), d(p, n))`` as the negative distance (Balntas et al. 2016). Triplets whose
    ``swap`` field is set (batch-hard with swap) already say which pair to use, and ``swap`` is then ignored.
    Distances are recomputed from the row differences, so they are exact near zero and the backward pass costs
    O(T·D), whatever produced the indices.
    """
    x = compute_dtype(embeddings)
    xa = x.index_select(0, triplets.anchor)
    xp = x.index_select(0, triplets.positive)
    xn = x.index_select(0, triplets.negative)
    d_ap = distance.paired(xa, xp)
    d_an = distance.paired(xa, xn)
    if triplets.swap is not None:
        d_an = torch.where(triplets.swap, distance.paired(xp, xn), d_an)
    elif swap:
        d_an = torch.minimum(d_an, distance.paired(xp, xn))
    return reduce_losses(margin_fn(d_ap - d_an), triplets.valid, reduction)


@outside_autocast
def batch_hard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    distance: DistanceLike,
    margin_fn: MarginLike,
    reduction: str = "mean",
    swap: bool = False,
    max_class_size: int | None = None,
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017), one term per anchor with a positive and a negative.

    Mining runs without gradient on an O(N²) ranking matrix; the loss then recomputes the 2N chosen distances from
    the embeddings, which is what the max/min's gradient touches anyway. ``swap`` is HardNet's anchor swap: the
    negative distance is ``min(min_n d(a, n), min_n d(p*, n))`` for the hardest positive ``p*``.
    ``max_class_size``: the largest class in the batch (``K`` for S×K batches), see [`mine_batch_hard()`][tripletkit.functional.miners.mine_batch_hard].
    """
    x = compute_dtype(embeddings)
    triplets = mine_batch_hard(x.detach(), labels, distance=distance, swap=swap, max_class_size=max_class_size)
    return triplet_margin_loss(x, triplets, distance=distance, margin_fn=margin_fn, reduction=reduction)


@outside_autocast
def random_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    distance: DistanceLike,
    margin_fn: MarginLike,
    reduction: str = "mean",
    swap: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One uniformly random valid triplet per anchor (the random-triplet baseline)."""
    triplets = random_triplets(labels, generator=generator)
    return triplet_margin_loss(
        embeddings, triplets, distance=distance, margin_fn=margin_fn, reduction=reduction, swap=swap
    )


class BatchAllStats(dict):
    """``num_triplets`` (valid), ``num_active`` (loss > 0; only counted for ``mean_active`` or on request)."""


class _BatchAllSum(torch.autograd.Function):
    """Σ h(d_ap + m − d_an) over all valid triplets, streamed over anchor blocks, with an O(N²) backward.

    The gradient with respect to the distance matrix is accumulated in the forward pass,
    ``G[a, p] = Σ_n h'(t_apn)`` and ``G[a, n] = −Σ_p h'(t_apn)``, so no per-triplet tensor is ever kept. The
    distance matrix itself is computed without an autograd graph; the backward maps ``G`` to the embeddings with the
    distance's own ``matrix_vjp`` (two N×N buffers and one GEMM) or, for a distance without one, by recomputing the
    matrix under autograd.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        distance: DistanceLike,
        members: Tensor,
        pos_valid: Tensor,
        margin_fn: MarginLike,
        count_active: bool,
        block_rows: int,
    ) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        with torch.no_grad():
            dist = distance.matrix(x)
        # -inf positives and +inf negatives make every invalid t = -inf, where h and h' are both exactly 0.
        d_ap = dist.gather(1, members).add_(margin_fn.margin).masked_fill_(~pos_valid, float("-inf"))
        grad = torch.zeros_like(dist)
        total = dist.new_zeros(())
        active = torch.zeros((), dtype=torch.int64, device=dist.device)
        for r0 in range(0, n, block_rows):
            r1 = min(n, r0 + block_rows)
            d_an = dist[r0:r1].scatter(1, members[r0:r1], float("inf"))  # own class (self included) is no negative
            t = d_ap[r0:r1, :, None] - d_an[:, None, :]
            del d_an
            value = margin_fn.activation(t)
            total += value.sum()
            if count_active:
                active += (value > 0).sum()
            del value
            g = margin_fn.activation_grad(t)
            del t
            grad[r0:r1].scatter_add_(1, members[r0:r1], g.sum(2))
            grad[r0:r1].sub_(g.sum(1))
            del g
        ctx.distance = distance
        ctx.save_for_backward(x, dist, grad)
        ctx.mark_non_differentiable(active)
        return total, active

    @staticmethod
    def backward(ctx, grad_total: Tensor, grad_active: Tensor):  # type: ignore[override]
        x, dist, grad = ctx.saved_tensors
        vjp = getattr(ctx.distance, "matrix_vjp", None)
        grad_x = vjp(x, dist, grad) if vjp is not None else None
        if grad_x is None:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                (grad_x,) = torch.autograd.grad(ctx.distance.matrix(leaf), leaf, grad)
        return grad_x * grad_total, None, None, None, None, None, None


@outside_autocast
def batch_all_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    distance: DistanceLike,
    margin_fn: MarginLike,
    reduction: str = "mean",
    max_class_size: int | None = None,
    block_elements: int = 1 << 22,
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, BatchAllStats]:
    """Batch-all triplet loss over every valid (a, p, n), in O(N²) memory.

    Args:
        reduction: ``mean`` (over all valid triplets), ``mean_active`` (over triplets with loss > 0) or ``sum``.
        max_class_size: the largest class in any batch (``K`` for S×K batches). Giving it keeps every shape static
            (for ``torch.compile`` and XLA); when None it is read from the labels (one host sync). A larger class is
            an error.
        block_elements: triplets evaluated per anchor block (memory knob; 4M ≈ 16 MiB per float32 temporary).
        return_stats: also return [`BatchAllStats`][tripletkit.functional.losses.BatchAllStats].

    Cost: O(N²·K) time, i.e. O(number of triplets), and O(N² + block_elements) memory; no N×N label mask.
    """
    if reduction not in ("mean", "mean_active", "sum"):
        raise ValueError(f"batch-all reduction must be 'mean', 'mean_active' or 'sum', got {reduction!r}")
    x = compute_dtype(embeddings)
    n = x.shape[0]
    cm = class_members(labels, max_class_size)
    num_triplets = (cm.positive.sum(1) * (n - cm.class_size)).sum()
    k = cm.members.shape[1]
    block_rows = max(1, block_elements // (k * n))
    total, active = _BatchAllSum.apply(
        x, distance, cm.members, cm.positive, margin_fn, reduction == "mean_active" or return_stats, block_rows
    )
    if reduction == "sum":
        loss = total
    elif reduction == "mean":
        loss = total / num_triplets.clamp_min(1).to(total.dtype)
    else:
        loss = total / active.clamp_min(1).to(total.dtype)
    if return_stats:
        return loss, BatchAllStats(num_triplets=num_triplets, num_active=active)
    return loss
