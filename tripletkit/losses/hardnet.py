"""HardNet's loss (Mishchuk, Mishkin, Radenović and Matas 2017, "Working hard to know your neighbor's margins")."""

from __future__ import annotations

import math

from torch import Tensor

from .._validation import check_embeddings, check_margin, check_margin_dtype, compute_dtype
from ..functional.losses import hardnet_loss
from ..margins import MarginFunction
from .base import TripletLossBase

__all__ = ["HardNetLoss"]


class HardNetLoss(TripletLossBase):
    r"""Hardest-in-batch loss over N matching pairs, with cross distances as the only negatives.

    .. math::
        L = \frac{1}{N} \sum_{i} h\Big(D_{ii} - \min\big(\min_{j \ne i} D_{ij},\ \min_{j \ne i} D_{ji}\big)\Big),
        \qquad D_{ij} = \sqrt{\lVert a_i - p_j \rVert^2 + \varepsilon}

    Exact definition, row by row (the defaults are HardNet's ``loss_HardNet(anchor, positive, anchor_swap=True,
    margin=1.0, batch_reduce="min", loss_type="triplet_margin")``, ``code/Losses.py`` of DagnyT/hardnet):

    * **distance**: ``sqrt(d² + eps)`` with ``eps = 1e-6`` (HardNet's ``distance_matrix_vector``), plain Euclidean
      otherwise; never zero, so the gradient is finite everywhere. HardNet's extra ``+ 1e-8`` after the root cancels
      in the difference and is left out.
    * **batch**: ``anchors[i]`` and ``positives[i]`` are a matching pair (two views of one patch); there are no
      labels, and pair i's negatives are the *other pairs'* descriptors only.
    * **negatives**: the cross distances ``D_ij = d(a_i, p_j)`` (row i of D) and, with ``anchor_swap``,
      ``D_ji = d(a_j, p_i)`` (column i); same-side distances ``d(a_i, a_j)`` and ``d(p_i, p_j)`` are never used.
      This is what distinguishes it from [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss]'s ``swap``
      on the 2N descriptors labelled by pair, which also sees the same-side distances.
    * **duplicates**: a candidate with ``D_ij < duplicate_threshold`` (0.008) is taken for the same patch seen
      twice and gets ``exclusion_penalty`` (10) added, as does the diagonal ``D_ii``. For descriptors of norm 1
      (every distance ≤ 2) that excludes them; ``exclusion_penalty=float("inf")`` excludes them at any scale, and an
      anchor whose candidates are all excluded then has loss 0 (hinge) or ``h(−inf) = 0``.
    * **denominator**: ``"mean"`` divides by N (every pair counts), ``"sum"`` by 1, ``"mean_active"`` by the pairs
      with loss > 0, ``"none"`` gives the N per-pair losses.
    * **soft margin**: ``margin_fn="softplus"`` gives ``ln(1 + exp(m + gap))`` (not in HardNet; stable for any gap).
    * **N = 1**: the only candidate is the diagonal plus the penalty.

    Args:
        margin: ``m``, default 1.0 (HardNet's).
        anchor_swap: also take the column minimum (HardNet's ``anchor_swap``, on in its training script).
        margin_fn: ``"hinge"`` (HardNet's ``triplet_margin``) or ``"softplus"``.
        eps: added under the square root.
        duplicate_threshold: candidates closer than this are treated as duplicates.
        exclusion_penalty: added to duplicates and to the diagonal.
        reduction: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
        validate: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].

    Example::

        >>> import torch
        >>> from tripletkit import HardNetLoss
        >>> a = torch.nn.functional.normalize(torch.randn(8, 128), dim=1)
        >>> p = torch.nn.functional.normalize(a + 0.1 * torch.randn(8, 128), dim=1)
        >>> loss = HardNetLoss()(a, p)
    """

    def __init__(
        self,
        margin: float | None = None,
        anchor_swap: bool = True,
        margin_fn: str | dict | MarginFunction = "hinge",
        eps: float = 1e-6,
        duplicate_threshold: float = 0.008,
        exclusion_penalty: float = 10.0,
        reduction: str = "mean",
        validate: bool = True,
    ) -> None:
        if margin is None and margin_fn == "hinge":
            margin = 1.0
        super().__init__(margin, margin_fn, "euclidean", reduction, validate)
        self.anchor_swap = bool(anchor_swap)
        self.eps = check_margin(eps, name="eps")
        self.duplicate_threshold = check_margin(duplicate_threshold, name="duplicate_threshold")
        if isinstance(exclusion_penalty, bool) or not isinstance(exclusion_penalty, (int, float)):
            raise TypeError(f"exclusion_penalty must be a real number, got {type(exclusion_penalty).__name__}")
        if math.isnan(exclusion_penalty) or exclusion_penalty < 0:
            raise ValueError(f"exclusion_penalty must be >= 0 (inf allowed), got {exclusion_penalty}")
        self.exclusion_penalty = float(exclusion_penalty)

    def forward(self, anchors: Tensor, positives: Tensor) -> Tensor:
        """``anchors``, ``positives``: (N, D) floating point, row i of each a matching pair. Returns a scalar (or
        (N,) with ``reduction="none"``)."""
        check_embeddings(anchors, name="anchors", min_rows=1, values=self.validate)
        check_embeddings(positives, name="positives", min_rows=1, values=self.validate)
        if anchors.shape != positives.shape:
            raise ValueError(
                f"anchors and positives must have the same shape, got {tuple(anchors.shape)} and "
                f"{tuple(positives.shape)}"
            )
        check_margin_dtype(self.margin_fn.margin, compute_dtype(anchors).dtype)
        return self._finish(
            hardnet_loss(
                anchors,
                positives.to(anchors.device),
                margin_fn=self.margin_fn,
                anchor_swap=self.anchor_swap,
                eps=self.eps,
                duplicate_threshold=self.duplicate_threshold,
                exclusion_penalty=self.exclusion_penalty,
                reduction=self.reduction,
                validate=False,
            )
        )

    def extra_repr(self) -> str:
        return (
            f"margin_fn={self.margin_fn!r}, anchor_swap={self.anchor_swap}, eps={self.eps}, "
            f"duplicate_threshold={self.duplicate_threshold}, exclusion_penalty={self.exclusion_penalty}, "
            f"reduction={self.reduction!r}"
        )
