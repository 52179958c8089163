"""The general triplet margin loss: any miner (or given triplets) + margin function + distance + reduction."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import (
    check_embeddings,
    check_finite_result,
    check_margin_dtype,
    check_triplet_indices,
    compute_dtype,
)
from ..distances import Distance
from ..functional.losses import triplet_margin_loss
from ..functional.miners import Triplets
from ..margins import MarginFunction
from ..miners import MINERS, Miner
from .base import TripletLossBase

__all__ = ["TripletLoss"]


class TripletLoss(TripletLossBase):
    r"""``h(d(a, p) − d(a, n))`` over mined or given triplets (Schroff et al. 2015; Hermans et al. 2017).

    .. math:: L = \frac{1}{Z} \sum_{(a,p,n) \in T} h\big(d(x_a, x_p) - d(x_a, x_n)\big)

    * **triplets** ``T``: from ``miner`` (a registered name, a config dict or a [`Miner`][tripletkit.miners.Miner])
      called on ``(embeddings, labels)``, or passed to ``forward`` as ``triplets=(anchor, positive, negative)`` index
      tensors (e.g. from the offline miner). ``miner="batch_hard"`` is [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss] and
      ``miner="batch_all"`` is [`BatchAllLoss`][tripletkit.losses.batch_all.BatchAllLoss] (the streamed path); the default ``"random"`` is the
      random-triplet baseline: one random positive and negative per anchor.
    * **invalid triplets** (an anchor without a positive or negative; given triplets whose labels, when ``labels``
      are passed, are not same/same/different) are left out of the sum and of ``Z``.
    * **denominator** ``Z``: as in [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss] (``mean``: valid triplets; ``mean_active``:
      triplets with loss > 0); 0 (with gradient) when ``T`` is empty.
    * **distance**: computed from the row differences of the chosen pairs (exact near zero).
    * **swap**: ``min(d(a, n), d(p, n))`` as the negative distance (Balntas et al. 2016); with ``batch_hard`` it is
      HardNet's version (see [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss]).
    * **reference set** (``ref_embeddings``, ``ref_labels``, ``ref_self_index``; PML's ``ref_emb``): the miner
      (``batch_hard``, ``batch_all``, ``semihard``, ``random``, or any miner with ``supports_ref``) takes anchors
      from ``embeddings`` and positives and negatives from the reference set, as in
      [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss].
    * **gather_distributed**: mined losses see every replica's batch ([`tripletkit.distributed`][tripletkit.distributed]); given
      triplets index the local batch and are not gathered.

    Example::

        >>> import torch
        >>> from tripletkit import TripletLoss
        >>> emb = torch.randn(8, 4)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = TripletLoss(miner={"name": "random", "seed": 0})(emb, labels)
        >>> given = TripletLoss()(emb, triplets=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    """

    def __init__(
        self,
        margin: float | None = None,
        margin_fn: str | dict | MarginFunction = "hinge",
        distance: str | dict | Distance = "euclidean",
        miner: str | dict | Miner = "random",
        reduction: str = "mean",
        swap: bool = False,
        validate: bool = True,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(margin, margin_fn, distance, reduction, validate, gather_distributed)
        self.miner = MINERS.build(miner)
        self.swap = bool(swap)
        # the loss asks the miner what it can do; it never checks the miner's type
        check = getattr(self.miner, "check_loss_options", None)
        if check is not None:
            check(reduction=self.reduction, swap=self.swap)

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        triplets: Triplets | tuple[Tensor, Tensor, Tensor] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Tensor:
        if triplets is not None:
            if ref_embeddings is not None:
                raise ValueError("given triplets index the embeddings; ref_embeddings is for mined triplets")
            return self._given(embeddings, labels, triplets)
        if labels is None:
            raise ValueError("labels are required unless triplets are given")
        if ref_embeddings is not None and not getattr(self.miner, "supports_ref", False):
            raise ValueError(f"{self.miner!r} cannot mine against a reference set (it has no supports_ref)")
        embeddings, labels, ref = self._prepare(embeddings, labels, ref_embeddings, ref_labels, ref_self_index)
        fused = getattr(self.miner, "fused_loss", None)
        loss = None
        if fused is not None:
            loss = fused(
                embeddings,
                labels,
                distance=self.distance,
                margin_fn=self.margin_fn,
                reduction=self.reduction,
                swap=self.swap,
                **ref,
            )
        if loss is None:
            if ref:
                mined = self.miner(
                    embeddings.detach(), labels, ref["ref"].detach(), ref["ref_labels"], ref["ref_self_index"]
                )
            else:
                mined = self.miner(embeddings.detach(), labels)
            loss = triplet_margin_loss(
                embeddings,
                mined,
                distance=self.distance,
                margin_fn=self.margin_fn,
                reduction=self.reduction,
                swap=self.swap,
                ref=ref.get("ref"),
                validate=False,
            )
        return self._finish(loss)

    def extra_repr(self) -> str:
        return f"miner={self.miner!r}, " + super().extra_repr() + f", swap={self.swap}"

    def _given(self, embeddings: Tensor, labels: Tensor | None, triplets: Triplets | tuple) -> Tensor:
        check_embeddings(embeddings, min_rows=1, values=self.validate)
        n = embeddings.shape[0]
        if isinstance(triplets, Triplets):
            a, p, neg, valid, swap_rows = triplets
        elif isinstance(triplets, (tuple, list)) and len(triplets) == 3:
            (a, p, neg), valid, swap_rows = triplets, None, None
        else:
            raise TypeError("triplets must be a Triplets or a tuple (anchor, positive, negative) of index tensors")
        check_triplet_indices(a, p, neg, n, n, values=self.validate)
        dev = embeddings.device
        a, p, neg = a.to(dev).long(), p.to(dev).long(), neg.to(dev).long()
        if valid is None:
            valid = torch.ones(a.shape, dtype=torch.bool, device=dev)
        if labels is not None:
            labels = self._check_inputs(embeddings, labels)
            valid = valid & (labels[a] == labels[p]) & (a != p) & (labels[a] != labels[neg])
        check_margin_dtype(self.margin_fn.margin, compute_dtype(embeddings).dtype)
        # given triplets index the local batch: never gathered, never scaled for DDP
        loss = triplet_margin_loss(
            embeddings,
            Triplets(a, p, neg, valid.to(dev), swap_rows),
            distance=self.distance,
            margin_fn=self.margin_fn,
            reduction=self.reduction,
            swap=self.swap,
            validate=False,
        )
        return check_finite_result(loss) if self.validate else loss
