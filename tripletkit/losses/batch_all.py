"""Batch-all triplet loss (Hermans, Beyer and Leibe 2017, eq. 6), streamed in O(N²) memory."""

from __future__ import annotations

from torch import Tensor

from .._validation import check_class_size
from ..distances import Distance
from ..functional.losses import BatchAllStats, batch_all_triplet_loss
from ..margins import MarginFunction
from .base import TripletLossBase

__all__ = ["BatchAllLoss"]


class BatchAllLoss(TripletLossBase):
    r"""Every valid triplet of the batch.

    .. math::
        L_{BA} = \frac{1}{Z} \sum_{a} \sum_{p \in P(a)} \sum_{n \in N(a)} h\big(d(x_a, x_p) - d(x_a, x_n)\big)

    Exact definition, row by row:

    * **distance**: plain Euclidean by default, from the N×N matrix computed on mean-centred embeddings (accurate near
      zero; gradient 0, not NaN, at coinciding points).
    * **triplets**: ``(a, p, n)`` with ``label[p] = label[a]``, ``p ≠ a``, ``label[n] ≠ label[a]``; there are
      ``Σ_c n_c (n_c − 1)(N − n_c)`` of them. Anchors without a positive or a negative contribute no triplet.
    * **denominator** ``Z``: ``reduction="mean"``: the number of valid triplets (PML's ``MeanReducer``);
      ``"mean_active"``: the number of triplets with loss > 0 (PML's default ``AvgNonZeroReducer``, omoindrot);
      ``"sum"``: 1. ``"none"`` is not offered: it would need one value per triplet (O(N³) memory).
    * **no valid (or no active) triplet**: 0 with a (zero) gradient, not NaN.
    * **soft margin**: ``softplus``, stable for any gap.
    * **reference set** (``ref_embeddings``, ``ref_labels``; PML's ``ref_emb``): anchors from ``embeddings``,
      positives and negatives from the reference set, ``ref_self_index`` as in
      [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss]; ``max_class_size`` then bounds a label's rows in
      the reference set.
    * **memory**: triplets are evaluated in anchor blocks of ``block_elements`` and the gradient with respect to the
      distance matrix is accumulated on the way, so peak memory is O(N² + block_elements), never O(N³).

    Args:
        margin: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        margin_fn: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        distance: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        reduction: ``"mean"``, ``"mean_active"`` or ``"sum"``.
        max_class_size: the largest class in any batch (``K`` for S×K batches); keeps all shapes static (no host
            sync) for ``torch.compile``/XLA. Default: read from the labels. A larger class is a ``ValueError``.
        block_elements: triplets per anchor block.
        validate: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        gather_distributed: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].

    Example::

        >>> import torch
        >>> from tripletkit import BatchAllLoss
        >>> emb = torch.tensor([[0.0], [0.1], [0.15], [0.2]])
        >>> loss, stats = BatchAllLoss(margin=0.2)(emb, torch.tensor([0, 0, 1, 1]), return_stats=True)
        >>> int(stats["num_triplets"]), int(stats["num_active"])
        (8, 8)
    """

    reductions = ("mean", "mean_active", "sum")

    def __init__(
        self,
        margin: float | None = None,
        margin_fn: str | dict | MarginFunction = "hinge",
        distance: str | dict | Distance = "euclidean",
        reduction: str = "mean",
        max_class_size: int | None = None,
        block_elements: int = 1 << 22,
        validate: bool = True,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(margin, margin_fn, distance, reduction, validate, gather_distributed)
        self.max_class_size = check_class_size(max_class_size)
        if isinstance(block_elements, bool) or not isinstance(block_elements, int) or block_elements < 1:
            raise ValueError(f"block_elements must be a positive int, got {block_elements!r}")
        self.block_elements = block_elements

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        return_stats: bool = False,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, BatchAllStats]:
        """Scalar loss; with ``return_stats`` also ``{"num_triplets", "num_active"}`` (0-d int64 tensors)."""
        embeddings, labels, ref = self._prepare(embeddings, labels, ref_embeddings, ref_labels, ref_self_index)
        out = batch_all_triplet_loss(
            embeddings,
            labels,
            distance=self.distance,
            margin_fn=self.margin_fn,
            reduction=self.reduction,
            max_class_size=self.max_class_size,
            block_elements=self.block_elements,
            return_stats=return_stats,
            validate=False,
            **ref,
        )
        if isinstance(out, tuple):
            return self._finish(out[0]), out[1]
        return self._finish(out)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_class_size={self.max_class_size}, block_elements={self.block_elements}"
