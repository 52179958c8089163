"""Batch-hard triplet loss (Hermans, Beyer and Leibe 2017, "In Defense of the Triplet Loss", eq. 5)."""

from __future__ import annotations

from torch import Tensor

from .._validation import check_class_size
from ..distances import Distance
from ..functional.losses import batch_hard_triplet_loss
from ..margins import MarginFunction
from .base import TripletLossBase

__all__ = ["BatchHardLoss"]


class BatchHardLoss(TripletLossBase):
    r"""For every anchor, the hardest positive against the hardest negative in the batch.

    .. math::
        L_{BH} = \frac{1}{|A|} \sum_{a \in A} h\Big(\max_{p \in P(a)} d(x_a, x_p) - \min_{n \in N(a)} d(x_a, x_n)\Big)

    with ``h(gap) = [m + gap]₊`` (``margin_fn="hinge"``) or ``ln(1 + exp(m + gap))`` (``"softplus"``).

    Exact definition, row by row:

    * **distance**: ``d`` is the plain Euclidean distance by default (not squared, no normalisation); ``sqeuclidean``
      and ``cosine`` are available. Distances of the chosen pairs are computed from the embedding differences, so the
      loss is exact near zero (the collapse regime) and the gradient at coinciding points is 0, never NaN.
    * **anchors**: ``P(a)`` = other samples with the same label, ``N(a)`` = samples with another label. An anchor with
      no positive (a singleton class) or no negative (a one-class batch) is left out of the sum *and* of ``|A|``.
    * **denominator**: ``reduction="mean"`` divides by ``|A|``; ``"mean_active"`` by the number of anchors with
      loss > 0; ``"sum"`` does not divide; ``"none"`` returns the (N,) per-anchor losses, 0 for left-out anchors.
    * **no valid anchor**: the loss is 0 (not NaN) and still has a gradient (all zeros).
    * **soft margin**: ``softplus`` with the default margin 0 is Hermans' soft margin ``ln(1 + exp(gap))``; it is
      stable for any gap (no inf, no NaN gradient).
    * **swap**: the anchor swap applied to batch-hard mining: the negative distance is
      ``min(min_n d(a, n), min_n d(p*, n))`` where ``p*`` is the hardest positive, i.e. the positive's *own* nearest
      negative, with negatives of every kind (same-side distances included). This is not HardNet's loss, whose
      negatives are cross distances only ([`HardNetLoss`][tripletkit.losses.hardnet.HardNetLoss]), nor PML's
      ``TripletMarginLoss(swap=True)`` with a batch-hard miner, which keeps the anchor's nearest negative ``n*`` and
      uses ``min(d(a, n*), d(p*, n*))``.
    * **reference set** (``ref_embeddings``, ``ref_labels``; PML's ``ref_emb``/``ref_labels``): anchors are the rows
      of ``embeddings``, positives and negatives the rows of the reference set; an anchor without a positive (or a
      negative) there is left out. ``ref_self_index[i]`` names the reference row that is anchor i's own copy, which
      is never its positive (-1: none; [`CrossBatchMemory`][tripletkit.losses.cross_batch_memory.CrossBatchMemory]
      passes it). ``swap`` is not defined against a reference set.
    * **ties**: the smallest index wins; the loss value does not depend on it.
    * **dtypes**: float16/bfloat16 embeddings are computed in float32, also inside a caller's ``torch.autocast`` region (the loss switches autocast off for itself).

    Args:
        margin: ``m``; default 0.2 for the hinge, 0 for the soft margin. Must be finite and ≥ 0.
        margin_fn: ``"hinge"``, ``"softplus"``, a config dict or a [`MarginFunction`][tripletkit.margins.MarginFunction].
        distance: ``"euclidean"``, ``"sqeuclidean"``, ``"cosine"``, a config dict or a distance object.
        reduction: ``"mean"``, ``"mean_active"``, ``"sum"`` or ``"none"``.
        swap: the anchor swap (see above).
        max_class_size: the largest class in any batch (``K`` for S×K batches): keeps shapes static under
            ``torch.compile``/XLA while using the fast mining path. Default: read from the labels in eager mode.
        validate: check for NaN/inf embeddings and for a finite loss (two host syncs per call; skipped under
            ``torch.compile`` and on XLA).
        gather_distributed: mine over the batches of all replicas ([`tripletkit.distributed`][tripletkit.distributed]: the gradient
            reaches the local slice only and is scaled by the world size, so DDP's average equals one process on
            the concatenated batch).

    Example::

        >>> import torch
        >>> from tripletkit import BatchHardLoss
        >>> loss_fn = BatchHardLoss(margin=0.2)
        >>> emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 0.5]], requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> loss = loss_fn(emb, labels)   # hardest pairs: d_ap = 1 or 0.5, d_an ≈ 3
        >>> float(loss.detach())
        0.0
        >>> loss.backward()
    """

    def __init__(
        self,
        margin: float | None = None,
        margin_fn: str | dict | MarginFunction = "hinge",
        distance: str | dict | Distance = "euclidean",
        reduction: str = "mean",
        swap: bool = False,
        max_class_size: int | None = None,
        validate: bool = True,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(margin, margin_fn, distance, reduction, validate, gather_distributed)
        self.swap = bool(swap)
        self.max_class_size = check_class_size(max_class_size)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Tensor:
        """``embeddings``: (N, D) floating point, N ≥ 2 (N ≥ 1 with a reference set); ``labels``: (N,) integers;
        ``ref_embeddings``: (M, D), ``ref_labels``: (M,), ``ref_self_index``: (N,). Returns a scalar (or (N,))."""
        if ref_embeddings is not None and self.swap:
            raise ValueError("swap is not defined against a reference set")
        embeddings, labels, ref = self._prepare(embeddings, labels, ref_embeddings, ref_labels, ref_self_index)
        return self._finish(
            batch_hard_triplet_loss(
                embeddings,
                labels,
                distance=self.distance,
                margin_fn=self.margin_fn,
                reduction=self.reduction,
                swap=self.swap,
                max_class_size=None if ref else self.max_class_size,
                validate=False,
                **ref,
            )
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", swap={self.swap}, max_class_size={self.max_class_size}"
