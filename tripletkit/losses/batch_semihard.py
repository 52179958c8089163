"""In-batch semi-hard triplet loss (Schroff et al. 2015, FaceNet), as TensorFlow Addons defines it."""

from __future__ import annotations

from torch import Tensor

from .._validation import check_class_size
from ..distances import Distance
from ..functional.losses import batch_semihard_triplet_loss
from ..margins import MarginFunction
from .base import TripletLossBase

__all__ = ["BatchSemiHardLoss"]


class BatchSemiHardLoss(TripletLossBase):
    r"""For every anchor-positive pair, the nearest negative farther than the positive.

    .. math::
        L_{SH} = \frac{1}{|P|} \sum_{(a, p) \in P} h\big(d(x_a, x_p) - d(x_a, x_{n^*(a,p)})\big),\quad
        n^*(a, p) = \operatorname{argmin}_{n \in N(a),\ d(x_a, x_n) > d(x_a, x_p)} d(x_a, x_n)

    and, when no negative is farther than ``p``, ``n*`` is the farthest negative (TFA's ``negatives_inside``).

    Exact definition, row by row:

    * **distance**: plain Euclidean by default (TFA's default ``"L2"``); ``"sqeuclidean"`` is TFA's
      ``"squared-L2"`` and ``"cosine"`` its ``"angular"``. Mining ranks the negatives on the distance matrix; the loss
      recomputes the chosen distances from the rows (exact near zero, gradient 0 at coinciding points).
    * **pairs** ``P``: every ``(a, p)`` with ``p ≠ a`` and the same label, one term each (not one per anchor).
    * **anchors without a positive** contribute no pair; **pairs whose anchor has no negative** (a one-class batch)
      are left out of the sum and of ``|P|``. TFA keeps them with a negative distance of 0 (loss ``m + d(a, p)``).
    * **denominator**: ``"mean"`` divides by ``|P|`` (TFA's ``num_positives``); with no pair the loss is 0 with a
      zero gradient, where TFA divides by 0 (NaN, tensorflow/addons#2447). ``"mean_active"`` and ``"sum"`` as in
      [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss]; ``"none"`` is not offered (one value per pair).
    * **soft margin**: ``margin_fn="softplus"`` gives ``ln(1 + exp(m + gap))``, stable for any gap.
    * **ties**: among equally distant candidates the smallest index wins; the value does not depend on it.
    * **cost**: O(N²·K) time in anchor blocks and O(N²) memory with static shapes (``max_class_size=K`` keeps them
      static under ``torch.compile``/XLA); the N×N×N triplet mask that TFA builds is never materialised.
    * **reference set**: ``ref_embeddings``/``ref_labels``/``ref_self_index`` as in
      [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss] (then O(N·M·log M): one sort per anchor row).

    Args:
        margin: ``m``; default 0.2 for the hinge (TFA's default is 1.0: pass ``margin=1.0`` for its loss).
        margin_fn: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        distance: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        validate: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        reduction: ``"mean"``, ``"mean_active"`` or ``"sum"``.
        max_class_size: ``K`` for S×K batches.

    Example::

        >>> import torch
        >>> from tripletkit import BatchSemiHardLoss
        >>> emb = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
        >>> # pairs (0,1): 1+1-1.5; (1,0): [1+1-3]₊; (2,3): none farther, 1+2.5-1.5; (3,2): 1+2.5-3
        >>> float(BatchSemiHardLoss(margin=1.0)(emb, torch.tensor([0, 0, 1, 1])))
        0.75
    """

    reductions = ("mean", "mean_active", "sum")

    def __init__(
        self,
        margin: float | None = None,
        margin_fn: str | dict | MarginFunction = "hinge",
        distance: str | dict | Distance = "euclidean",
        reduction: str = "mean",
        max_class_size: int | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__(margin, margin_fn, distance, reduction, validate)
        self.max_class_size = check_class_size(max_class_size)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Tensor:
        """``embeddings``: (N, D); ``labels``: (N,) integers; a reference set as in ``BatchHardLoss``."""
        embeddings, labels, ref = self._prepare(embeddings, labels, ref_embeddings, ref_labels, ref_self_index)
        return self._finish(
            batch_semihard_triplet_loss(
                embeddings,
                labels,
                distance=self.distance,
                margin_fn=self.margin_fn,
                reduction=self.reduction,
                max_class_size=None if ref else self.max_class_size,
                validate=False,
                **ref,
            )
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_class_size={self.max_class_size}"
