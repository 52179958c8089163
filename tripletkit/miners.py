"""Registered miners (``MINERS``): ``batch_hard``, ``random``, ``batch_all``, ``offline``.

Miners are thin, configurable callables over [`tripletkit.functional.miners`][tripletkit.functional.miners]; each returns
[`Triplets`][tripletkit.functional.miners.Triplets] (anchor, positive, negative, valid[, swap]).

* ``batch_hard`` (Hermans et al. 2017): per anchor, the furthest positive and the nearest negative in the batch.
* ``random``: per anchor, a uniformly random positive and negative (the random-triplet baseline).
* ``semihard``: per anchor-positive pair, the nearest negative farther than the positive (FaceNet, TFA).

``batch_hard``, ``batch_all``, ``semihard`` and ``random`` also mine against a reference set (``supports_ref``).
* ``batch_all``: every valid triplet, listed explicitly (O(#triplets) memory: for inspection; the batch-all loss
  never lists them).
* ``offline``: hard or semi-hard triplets mined from a whole dataset's descriptor bank, chunked.

Example::

    >>> import torch
    >>> from tripletkit import MINERS
    >>> miner = MINERS.build("batch_hard")
    >>> x = torch.tensor([[0.0], [1.0], [5.0], [5.5]])
    >>> t = miner(x, torch.tensor([0, 0, 1, 1]))
    >>> t.positive.tolist(), t.negative.tolist()
    ([1, 0, 3, 2], [2, 2, 1, 1])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._validation import (
    _static,
    check_choice,
    check_class_size,
    check_embeddings,
    check_labels,
    check_margin,
    check_reference_set,
    compute_dtype,
    outside_autocast,
)
from .distances import DISTANCES, Distance
from .functional import miners as F
from .functional.losses import batch_all_triplet_loss, batch_hard_triplet_loss
from .functional.miners import Triplets, mine_batch_hard
from .registry import Registry

__all__ = [
    "MINERS",
    "Miner",
    "BatchHardMiner",
    "RandomMiner",
    "SemiHardMiner",
    "BatchAllMiner",
    "OfflineMiner",
    "Triplets",
]

MINERS: Registry[Miner] = Registry("miner", check=callable, expected="callable miner(embeddings, labels) -> Triplets")


class Miner:
    """Base class. ``per_anchor`` miners return exactly one (possibly invalid) triplet per input row.

    Two optional capabilities let [`TripletLoss`][tripletkit.losses.triplet.TripletLoss] use a miner without knowing its type (a plain
    callable ``miner(embeddings, labels) -> Triplets`` works too; it has neither):

    * ``fused_loss(embeddings, labels, *, distance, margin_fn, reduction, swap)``: the loss computed without listing
      the triplets (batch hard: mining and scoring in one pass; batch all: the streamed sum), or None when this
      miner has no such path for these settings;
    * ``check_loss_options(*, reduction, swap)``: raises ``ValueError`` for loss settings the miner cannot serve.

    A miner with ``supports_ref = True`` also mines against a reference set:
    ``miner(embeddings, labels, ref_embeddings, ref_labels, ref_self_index=None)`` returns triplets whose anchors
    index ``embeddings`` and whose positives and negatives index the reference set (its ``fused_loss`` then takes
    ``ref``, ``ref_labels`` and ``ref_self_index`` keywords).
    """

    per_anchor = True
    supports_ref = False

    @outside_autocast
    def __call__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Triplets:
        raise NotImplementedError

    def fused_loss(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        distance: Distance,
        margin_fn: Any,
        reduction: str,
        swap: bool,
        **ref: Any,
    ) -> Tensor | None:
        return None

    def check_loss_options(self, *, reduction: str, swap: bool) -> None:
        return None

    def _check(self, embeddings: Tensor, labels: Tensor, min_rows: int = 2) -> tuple[Tensor, Tensor]:
        # traced (torch.compile, XLA): no finiteness check, which would read to the host; a loss's validate=
        # decides there
        check_embeddings(embeddings, values=not _static(embeddings), min_rows=min_rows)
        return embeddings, check_labels(labels, embeddings.shape[0], device=embeddings.device)

    def _check_ref(
        self, embeddings: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Query and reference set, checked and in the computation's dtype."""
        embeddings, labels = self._check(embeddings, labels, min_rows=1)
        ref, ref_labels, _ = check_reference_set(embeddings, ref, ref_labels, values=not _static(ref))
        return compute_dtype(embeddings), labels, compute_dtype(ref), ref_labels

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _SeededMiner(Miner):
    def __init__(self, seed: int | None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None  # torch's global RNG: follows torch.manual_seed
        if device.type == "xla":  # XLA has no torch.Generator: draw on the CPU (a host-to-device copy, no sync)
            device = torch.device("cpu")
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def state_dict(self) -> dict[str, Any]:
        return {str(d): g.get_state() for d, g in self._generators.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for d, s in state.items():
            device = torch.device(d)
            self._generator(device)
            if device in self._generators:
                self._generators[device].set_state(s)


@MINERS.register("batch_hard")
class BatchHardMiner(Miner):
    """Furthest positive and nearest negative per anchor; ``swap`` adds the anchor swap (the hardest positive's own nearest negative;
    HardNet's loss is ``HardNetLoss``)."""

    def __init__(
        self, distance: str | dict | Distance = "euclidean", swap: bool = False, max_class_size: int | None = None
    ) -> None:
        self.distance = DISTANCES.build(distance)
        self.swap = bool(swap)
        self.max_class_size = check_class_size(max_class_size)

    supports_ref = True

    @torch.no_grad()
    @outside_autocast
    def __call__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Triplets:
        if ref_embeddings is not None:
            x, labels, ref, ref_labels = self._check_ref(embeddings, labels, ref_embeddings, ref_labels)
            if self.swap:
                raise ValueError("swap is not defined against a reference set")
            return F.mine_batch_hard_ref(x, labels, ref, ref_labels, distance=self.distance, self_index=ref_self_index)
        embeddings, labels = self._check(embeddings, labels)
        x = compute_dtype(embeddings)
        return mine_batch_hard(x, labels, distance=self.distance, swap=self.swap, max_class_size=self.max_class_size)

    def fused_loss(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        distance: Distance,
        margin_fn: Any,
        reduction: str,
        swap: bool,
        **ref: Any,
    ) -> Tensor | None:
        if distance != self.distance:
            return None  # mined with one distance, scored with another: the general path
        if ref and (swap or self.swap):
            raise ValueError("swap is not defined against a reference set")
        return batch_hard_triplet_loss(
            embeddings,
            labels,
            distance=distance,
            margin_fn=margin_fn,
            reduction=reduction,
            swap=swap or self.swap,
            max_class_size=None if ref else self.max_class_size,
            validate=False,  # the loss that asks has validated its inputs
            **ref,
        )

    def __repr__(self) -> str:
        return f"BatchHardMiner(distance={self.distance!r}, swap={self.swap}, max_class_size={self.max_class_size})"


@MINERS.register("random")
class RandomMiner(_SeededMiner):
    """One uniformly random positive and negative per anchor. ``seed`` makes it reproducible (own generator)."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)

    supports_ref = True

    @outside_autocast
    def __call__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Triplets:
        if ref_embeddings is not None:
            _, labels, _, ref_labels = self._check_ref(embeddings, labels, ref_embeddings, ref_labels)
            return F.random_triplets_ref(
                labels, ref_labels, self_index=ref_self_index, generator=self._generator(labels.device)
            )
        embeddings, labels = self._check(embeddings, labels)
        return F.random_triplets(labels, generator=self._generator(labels.device))

    def __repr__(self) -> str:
        return f"RandomMiner(seed={self.seed})"


@MINERS.register("semihard")
class SemiHardMiner(Miner):
    """FaceNet's in-batch semi-hard negatives (TensorFlow Addons' ``triplet_semihard_loss``; PML's
    ``TripletMarginMiner("semihard")`` keeps every negative in the band instead of the nearest one).

    For every anchor-positive pair, the nearest negative farther than the positive, else the farthest negative
    ([`semihard_triplets()`][tripletkit.functional.miners.semihard_triplets]). ``TripletLoss(miner="semihard", margin=1.0)`` with
    the default ``reduction="mean"`` is TFA's loss: the hinge over all pairs divided by their number. One triplet
    per *pair*, so ``reduction="none"`` is not offered.

    Args:
        distance: the distance that ranks the negatives (``"euclidean"``; TFA's ``"squared-L2"`` is
            ``"sqeuclidean"``, its ``"angular"`` is ``"cosine"``).
        max_class_size: ``K`` for S×K batches: static shapes for ``torch.compile``/XLA.
    """

    per_anchor = False
    supports_ref = True

    def __init__(self, distance: str | dict | Distance = "euclidean", max_class_size: int | None = None) -> None:
        self.distance = DISTANCES.build(distance)
        self.max_class_size = check_class_size(max_class_size)

    @torch.no_grad()
    @outside_autocast
    def __call__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Triplets:
        if ref_embeddings is not None:
            x, labels, ref, ref_labels = self._check_ref(embeddings, labels, ref_embeddings, ref_labels)
            return F.semihard_triplets_ref(self.distance.matrix(x, ref), labels, ref_labels, self_index=ref_self_index)
        embeddings, labels = self._check(embeddings, labels)
        x = compute_dtype(embeddings)
        return F.semihard_triplets(self.distance.matrix(x), labels, max_class_size=self.max_class_size)

    def check_loss_options(self, *, reduction: str, swap: bool) -> None:
        if reduction == "none":
            raise ValueError(
                "reduction='none' is not available with the semihard miner (one value per anchor-positive pair)"
            )

    def __repr__(self) -> str:
        return f"SemiHardMiner(distance={self.distance!r}, max_class_size={self.max_class_size})"


@MINERS.register("batch_all")
class BatchAllMiner(Miner):
    """Every valid triplet, explicitly: ``Σ_c n_c(n_c − 1)(N − n_c)`` rows. For inspection, not for training."""

    per_anchor = False
    supports_ref = True

    def __init__(self, max_class_size: int | None = None) -> None:
        self.max_class_size = check_class_size(max_class_size)

    @outside_autocast
    def __call__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        ref_self_index: Tensor | None = None,
    ) -> Triplets:
        if ref_embeddings is not None:
            _, labels, _, ref_labels = self._check_ref(embeddings, labels, ref_embeddings, ref_labels)
            return F.batch_all_triplets_ref(labels, ref_labels, self_index=ref_self_index)
        embeddings, labels = self._check(embeddings, labels)
        blocks = list(F.iter_batch_all_triplets(labels))
        if not blocks:
            empty = torch.zeros(0, dtype=torch.long, device=labels.device)
            return Triplets(empty, empty, empty, empty.bool())
        return Triplets(*(torch.cat(parts) for parts in zip(*(b[:4] for b in blocks))))

    def fused_loss(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        distance: Distance,
        margin_fn: Any,
        reduction: str,
        swap: bool,
        **ref: Any,
    ) -> Tensor | None:
        loss = batch_all_triplet_loss(
            embeddings,
            labels,
            distance=distance,
            margin_fn=margin_fn,
            reduction=reduction,
            max_class_size=None if ref else self.max_class_size,
            validate=False,  # the loss that asks has validated its inputs
            **ref,
        )
        assert isinstance(loss, Tensor)  # without return_stats the loss alone
        return loss

    def check_loss_options(self, *, reduction: str, swap: bool) -> None:
        if reduction == "none":
            raise ValueError("reduction='none' is not available with the batch_all miner (one value per triplet)")
        if swap:
            raise ValueError("swap is not defined for the batch_all miner")

    def __repr__(self) -> str:
        return f"BatchAllMiner(max_class_size={self.max_class_size})"


@MINERS.register("offline")
class OfflineMiner(_SeededMiner):
    """Hard triplets mined from a whole bank of descriptors (the study's offline hard mining), chunked.

    ``miner(bank, labels, anchors=None)`` returns one triplet per anchor with indices into the bank; rerun it each
    epoch on fresh descriptors. See [`tripletkit.functional.miners.mine_offline()`][tripletkit.functional.miners.mine_offline] for the exact rules.
    """

    per_anchor = False

    def __init__(
        self,
        distance: str | dict | Distance = "euclidean",
        positive: str = "hardest",
        negative: str = "hardest",
        margin: float = 0.2,
        chunk_size: int = 2048,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.distance = DISTANCES.build(distance)
        self.positive = check_choice(positive, ("hardest", "random"), "positive")
        self.negative = check_choice(negative, ("hardest", "semihard"), "negative")
        self.margin = check_margin(margin)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.chunk_size = chunk_size

    @torch.no_grad()
    @outside_autocast
    def __call__(self, bank: Tensor, labels: Tensor, anchors: Tensor | None = None) -> Triplets:  # type: ignore[override]
        check_embeddings(bank, name="bank")
        labels = check_labels(labels, bank.shape[0], device=bank.device)
        x = compute_dtype(bank)
        return F.mine_offline(
            x,
            labels,
            distance_matrix=self.distance.matrix,
            anchors=anchors,
            positive=self.positive,
            negative=self.negative,
            margin=self.margin,
            chunk_size=self.chunk_size,
            generator=self._generator(bank.device),
        )

    def check_loss_options(self, *, reduction: str, swap: bool) -> None:
        raise ValueError(f"{self!r} mines a bank, not a batch: mine first and pass triplets=... to forward")

    def __repr__(self) -> str:
        return (
            f"OfflineMiner(distance={self.distance!r}, positive={self.positive!r}, negative={self.negative!r}, "
            f"margin={self.margin}, chunk_size={self.chunk_size})"
        )
