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

Every function validates its inputs like the modules (``validate=True``: shapes, dtypes, lengths, finite values, the
margin in the computation's dtype, index ranges, and a finite result; the value checks read from the device, so
``validate=False`` turns them off for compiled and XLA code, as in the modules).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import (
    check_embeddings,
    check_finite_result,
    check_loss_inputs,
    check_margin_dtype,
    check_reference_set,
    check_triplet_indices,
    compute_dtype,
    outside_autocast,
)
from .distances import _range_scale, _squared_euclidean_scaled
from .miners import (
    Triplets,
    class_members,
    mine_batch_hard,
    mine_batch_hard_ref,
    random_triplets,
    ref_members,
    semihard_triplets,
    semihard_triplets_ref,
)
from .reductions import reduce_losses
from .types import DistanceLike, MarginLike

__all__ = [
    "triplet_margin_loss",
    "batch_hard_triplet_loss",
    "random_triplet_loss",
    "batch_all_triplet_loss",
    "batch_semihard_triplet_loss",
    "hardnet_loss",
    "BatchAllStats",
]


def _check(
    embeddings: Tensor,
    labels: Tensor,
    margin_fn: MarginLike,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    ref_self_index: Tensor | None = None,
    min_rows: int = 2,
) -> Tensor:
    embeddings, labels = check_loss_inputs(embeddings, labels, min_rows=1 if ref is not None else min_rows)
    check_margin_dtype(margin_fn.margin, compute_dtype(embeddings).dtype)
    if ref is not None:
        check_reference_set(embeddings, ref, ref_labels, ref_self_index, name="ref")
    return labels


@outside_autocast
def triplet_margin_loss(
    embeddings: Tensor,
    triplets: Triplets,
    *,
    distance: DistanceLike,
    margin_fn: MarginLike,
    reduction: str = "mean",
    swap: bool = False,
    ref: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Loss of explicit index triplets into ``embeddings``; rows with ``valid = False`` are left out.

    With ``ref`` (a reference set, PML's ``ref_emb``), anchors index ``embeddings`` and positives and negatives
    index ``ref``; ``swap`` then compares ``d(ref_p, ref_n)``.

    ``swap=True`` uses ``min(d(a, n), d(p, n))`` as the negative distance (Balntas et al. 2016). Triplets whose
    ``swap`` field is set (batch-hard with swap) already say which pair to use, and ``swap`` is then ignored.
    Distances are recomputed from the row differences, so they are exact near zero and the backward pass costs
    O(T·D), whatever produced the indices.
    """
    if validate:
        check_embeddings(embeddings, min_rows=1)
        check_margin_dtype(margin_fn.margin, compute_dtype(embeddings).dtype)
        if ref is not None:
            check_embeddings(ref, name="ref", min_rows=1)
        other = embeddings.shape[0] if ref is None else ref.shape[0]
        check_triplet_indices(triplets.anchor, triplets.positive, triplets.negative, embeddings.shape[0], other)
        if triplets.valid.shape != triplets.anchor.shape or triplets.valid.dtype != torch.bool:
            raise ValueError("triplets.valid must be a bool tensor as long as the triplets")
    x = compute_dtype(embeddings)
    r = x if ref is None else compute_dtype(ref)
    xa = x.index_select(0, triplets.anchor)
    xp = r.index_select(0, triplets.positive)
    xn = r.index_select(0, triplets.negative)
    d_ap = distance.paired(xa, xp)
    d_an = distance.paired(xa, xn)
    if triplets.swap is not None:
        d_an = torch.where(triplets.swap, distance.paired(xp, xn), d_an)
    elif swap:
        d_an = torch.minimum(d_an, distance.paired(xp, xn))
    loss = reduce_losses(margin_fn(d_ap - d_an), triplets.valid, reduction)
    return check_finite_result(loss) if validate else loss


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
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    ref_self_index: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017), one term per anchor with a positive and a negative.

    With ``ref``/``ref_labels`` (PML's ``ref_emb``/``ref_labels``) the positives and negatives come from the reference
    set; ``ref_self_index[i]`` is the reference row that is anchor i's own copy (never its positive; -1 for none).
    ``swap`` is not defined there.

    Mining runs without gradient on an O(N²) ranking matrix; the loss then recomputes the 2N chosen distances from
    the embeddings, which is what the max/min's gradient touches anyway. ``swap`` is the anchor swap on batch-hard mining (not HardNet's cross-distance loss, see ``hardnet_loss``): the
    negative distance is ``min(min_n d(a, n), min_n d(p*, n))`` for the hardest positive ``p*``.
    ``max_class_size``: the largest class in the batch (``K`` for S×K batches), see [`mine_batch_hard()`][tripletkit.functional.miners.mine_batch_hard].
    """
    if validate:
        labels = _check(embeddings, labels, margin_fn, ref, ref_labels, ref_self_index)
    x = compute_dtype(embeddings)
    if ref is not None:
        if ref_labels is None:
            raise ValueError("ref_labels are required with ref")
        if swap:
            raise ValueError("swap is not defined against a reference set")
        r = compute_dtype(ref)
        mined = mine_batch_hard_ref(
            x.detach(), labels, r.detach(), ref_labels, distance=distance, self_index=ref_self_index
        )
        loss = triplet_margin_loss(
            x, mined, distance=distance, margin_fn=margin_fn, reduction=reduction, ref=r, validate=False
        )
    else:
        triplets = mine_batch_hard(x.detach(), labels, distance=distance, swap=swap, max_class_size=max_class_size)
        loss = triplet_margin_loss(
            x, triplets, distance=distance, margin_fn=margin_fn, reduction=reduction, validate=False
        )
    return check_finite_result(loss) if validate else loss


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
    validate: bool = True,
) -> Tensor:
    """One uniformly random valid triplet per anchor (the random-triplet baseline)."""
    if validate:
        labels = _check(embeddings, labels, margin_fn)
    triplets = random_triplets(labels, generator=generator)
    return triplet_margin_loss(
        embeddings, triplets, distance=distance, margin_fn=margin_fn, reduction=reduction, swap=swap, validate=validate
    )


class BatchAllStats(dict):
    """``num_triplets`` (valid), ``num_active`` (loss > 0; only counted for ``mean_active`` or on request)."""


class _BatchAllSum(torch.autograd.Function):
    """Σ h(d_ap + m − d_an) over all valid triplets, streamed over anchor blocks, with an O(N²) backward.

    The gradient with respect to the distance matrix is accumulated in the forward pass,
    ``G[a, p] = Σ_n h'(t_apn)`` and ``G[a, n] = −Σ_p h'(t_apn)``, so no per-triplet tensor is ever kept. The
    distance matrix itself is computed without an autograd graph; the backward maps ``G`` to the embeddings with the
    distance's own ``matrix_vjp`` (two N×N buffers and one GEMM) or, for a distance without one (or against a
    reference set), by recomputing the matrix under autograd.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        ref: Tensor | None,
        distance: DistanceLike,
        members: Tensor,
        pos_valid: Tensor,
        own: Tensor | None,
        margin_fn: MarginLike,
        count_active: bool,
        block_rows: int,
    ) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        with torch.no_grad():
            dist = distance.matrix(x) if ref is None else distance.matrix(x, ref)
        # -inf positives and +inf negatives make every invalid t = -inf, where h and h' are both exactly 0.
        d_ap = dist.gather(1, members).add_(margin_fn.margin).masked_fill_(~pos_valid, float("-inf"))
        grad = torch.zeros_like(dist)
        total = dist.new_zeros(())
        active = torch.zeros((), dtype=torch.int64, device=dist.device)
        for r0 in range(0, n, block_rows):
            r1 = min(n, r0 + block_rows)
            if own is None:  # own class (self included) is no negative
                d_an = dist[r0:r1].scatter(1, members[r0:r1], float("inf"))
            else:
                d_an = dist[r0:r1].masked_fill(own[r0:r1], float("inf"))
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
        ctx.has_ref = ref is not None
        ctx.save_for_backward(x, dist, grad, *(() if ref is None else (ref,)))
        ctx.mark_non_differentiable(active)
        return total, active

    @staticmethod
    def backward(ctx, grad_total: Tensor, grad_active: Tensor):  # type: ignore[override]
        x, dist, grad, *rest = ctx.saved_tensors
        nones = (None,) * 7
        if ctx.has_ref:
            (ref,) = rest
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                ref_leaf = ref.detach().requires_grad_(ctx.needs_input_grad[1])
                inputs = (leaf, ref_leaf) if ctx.needs_input_grad[1] else (leaf,)
                grads = torch.autograd.grad(ctx.distance.matrix(leaf, ref_leaf), inputs, grad)
            grad_ref = grads[1] * grad_total if ctx.needs_input_grad[1] else None
            return grads[0] * grad_total, grad_ref, *nones
        vjp = getattr(ctx.distance, "matrix_vjp", None)
        grad_x = vjp(x, dist, grad) if vjp is not None else None
        if grad_x is None:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                (grad_x,) = torch.autograd.grad(ctx.distance.matrix(leaf), leaf, grad)
        return grad_x * grad_total, None, *nones


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
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    ref_self_index: Tensor | None = None,
    validate: bool = True,
) -> Tensor | tuple[Tensor, BatchAllStats]:
    """Batch-all triplet loss over every valid (a, p, n), in O(N²) memory.

    With ``ref``/``ref_labels`` (PML's ``ref_emb``) anchors are the rows of ``embeddings`` and positives and
    negatives the rows of the reference set; ``ref_self_index[i]`` (a reference row, -1 for none) is anchor i's own
    copy, never its positive. ``max_class_size`` then bounds the members of a label in the reference set.

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
    if validate:
        labels = _check(embeddings, labels, margin_fn, ref, ref_labels, ref_self_index)
    x = compute_dtype(embeddings)
    r = None if ref is None else compute_dtype(ref)
    own = None
    if r is None:
        m = x.shape[0]
        cm = class_members(labels, max_class_size)
    else:
        if ref_labels is None:
            raise ValueError("ref_labels are required with ref")
        m = r.shape[0]
        cm = ref_members(labels, ref_labels, self_index=ref_self_index, max_class_size=max_class_size)
        own = labels[:, None] == ref_labels[None, :]
    num_triplets = (cm.positive.sum(1) * (m - cm.class_size)).sum()
    k = cm.members.shape[1]
    block_rows = max(1, block_elements // (k * m))
    total, active = _BatchAllSum.apply(
        x, r, distance, cm.members, cm.positive, own, margin_fn, reduction == "mean_active" or return_stats, block_rows
    )
    if reduction == "sum":
        loss = total
    elif reduction == "mean":
        loss = total / num_triplets.clamp_min(1).to(total.dtype)
    else:
        loss = total / active.clamp_min(1).to(total.dtype)
    if validate:
        check_finite_result(loss)
    if return_stats:
        return loss, BatchAllStats(num_triplets=num_triplets, num_active=active)
    return loss


@outside_autocast
def batch_semihard_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    *,
    distance: DistanceLike,
    margin_fn: MarginLike,
    reduction: str = "mean",
    max_class_size: int | None = None,
    ref: Tensor | None = None,
    ref_labels: Tensor | None = None,
    ref_self_index: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """FaceNet's in-batch semi-hard loss as TensorFlow Addons defines it (``triplet_semihard_loss``).

    ``L = 1/|P| Σ_{(a,p) ∈ P} h(d(a, p) − d(a, n*(a, p)))`` over the anchor-positive pairs ``P`` (``p ≠ a``, same
    label) whose anchor has a negative, where ``n*`` is the nearest negative strictly farther than ``p``
    (``d(a, n) > d(a, p)``), or the farthest negative when none is farther (see
    [`semihard_triplets()`][tripletkit.functional.miners.semihard_triplets]). The mining sees no gradient; the loss
    recomputes the chosen distances from the rows (exact near zero).
    """
    if reduction == "none":
        raise ValueError(
            "reduction='none' is not available for the semi-hard loss (one value per anchor-positive pair)"
        )
    if validate:
        labels = _check(embeddings, labels, margin_fn, ref, ref_labels, ref_self_index)
    x = compute_dtype(embeddings)
    with torch.no_grad():
        if ref is None:
            mined = semihard_triplets(distance.matrix(x.detach()), labels, max_class_size=max_class_size)
            r = None
        else:
            if ref_labels is None:
                raise ValueError("ref_labels are required with ref")
            r = compute_dtype(ref)
            mined = semihard_triplets_ref(
                distance.matrix(x.detach(), r.detach()),
                labels,
                ref_labels,
                self_index=ref_self_index,
                max_class_size=max_class_size,
            )
    loss = triplet_margin_loss(
        x, mined, distance=distance, margin_fn=margin_fn, reduction=reduction, ref=r, validate=False
    )
    return check_finite_result(loss) if validate else loss


def _hardnet_distance(x: Tensor, y: Tensor, eps: float, s: Tensor) -> Tensor:
    """``sqrt(||x − y||² + eps)`` row by row, from the differences (HardNet's distance, exact near zero), computed at
    the scale ``s`` where squares neither overflow nor underflow."""
    diff = x * s - y * s
    return torch.sqrt((diff * diff).sum(-1) + eps * s * s) / s


@outside_autocast
def hardnet_loss(
    anchors: Tensor,
    positives: Tensor,
    *,
    margin_fn: MarginLike,
    anchor_swap: bool = True,
    eps: float = 1e-6,
    duplicate_threshold: float = 0.008,
    exclusion_penalty: float = 10.0,
    reduction: str = "mean",
    validate: bool = True,
) -> Tensor:
    """HardNet's loss (Mishchuk et al. 2017; ``loss_HardNet(..., batch_reduce="min", loss_type="triplet_margin")``).

    The batch is N matching pairs ``(a_i, p_i)``. With ``D_ij = sqrt(||a_i − p_j||² + eps)``:

    * positive distance ``D_ii``;
    * negatives are the *cross* distances only: ``D_ij`` (other positives, a row of D) and, with ``anchor_swap``,
      ``D_ji`` (other anchors against ``p_i``, a column of D); never ``d(a_i, a_j)`` or ``d(p_i, p_j)``;
    * a candidate below ``duplicate_threshold`` is taken for a duplicate patch and pushed away by
      ``exclusion_penalty``, and so is the diagonal (HardNet adds 10 to both; with descriptors of norm 1 every
      distance is ≤ 2, so that excludes them; ``float("inf")`` excludes them whatever the scale);
    * ``loss_i = h(D_ii − min_neg_i)``, mean over all N pairs (``h`` is the hinge ``[m + gap]₊``, HardNet's
      ``clamp(margin + pos − min_neg, 0)``, or the soft margin).

    Mining runs without gradient on the (N, N) matrix (one GEMM); the chosen distances are recomputed from the rows.
    HardNet adds 1e-8 to every distance after the root; it cancels in ``D_ii − min_neg`` and is left out.
    """
    if validate:
        check_embeddings(anchors, name="anchors", min_rows=1)
        check_embeddings(positives, name="positives", min_rows=1)
        if anchors.shape != positives.shape:
            raise ValueError(
                f"anchors and positives must have the same shape, got {tuple(anchors.shape)} and "
                f"{tuple(positives.shape)}"
            )
        check_margin_dtype(margin_fn.margin, compute_dtype(anchors).dtype)
    a = compute_dtype(anchors)
    p = compute_dtype(positives)
    n = a.shape[0]
    idx = torch.arange(n, device=a.device)
    with torch.no_grad():
        d2s, scale = _squared_euclidean_scaled(a.detach(), p.detach())
        cand = d2s.add_(eps * scale * scale).sqrt_().div_(scale)
        penalty = (cand < duplicate_threshold) | (idx[:, None] == idx[None, :])
        cand = torch.where(penalty, cand + exclusion_penalty, cand)
        row_val, row_idx = cand.min(1)  # nearest other positive p_j of anchor a_i
        neg_a, neg_p = idx, row_idx
        if anchor_swap:
            col_val, col_idx = cand.min(0)  # nearest other anchor a_j of positive p_i
            use_col = col_val < row_val
            neg_a = torch.where(use_col, col_idx, idx)
            neg_p = torch.where(use_col, idx, row_idx)
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        pen = torch.where(penalty[neg_a, neg_p], torch.full_like(zero, exclusion_penalty), zero)
    s = _range_scale(a, p)
    pos = _hardnet_distance(a, p, eps, s)
    neg = _hardnet_distance(a.index_select(0, neg_a), p.index_select(0, neg_p), eps, s) + pen
    loss = reduce_losses(margin_fn(pos - neg), torch.ones(n, dtype=torch.bool, device=a.device), reduction)
    return check_finite_result(loss) if validate else loss
