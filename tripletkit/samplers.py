"""Symmetric S×K batch sampling (registered as ``symmetric`` in ``SAMPLERS``).

Batch-hard and batch-all need every batch to hold positives and negatives. Random batches from a dataset with
thousands of classes (HPatches: one class per patch track) rarely do, so the study behind tripletkit built *symmetric*
batches: S distinct classes × K samples each, ordered class-major (``[c₁]*K + [c₂]*K + …``), which guarantees
``K²(K − 1)(S − 1)`` valid triplets and lets masks be precomputed from (S, K).

Example::

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import torch
    >>> labels = torch.arange(100).repeat_interleave(5)           # 100 classes × 5 samples
    >>> sampler = SymmetricSampler(labels, S=8, K=4, seed=0)
    >>> loader = DataLoader(TensorDataset(torch.randn(500, 3), labels), batch_sampler=sampler)
    >>> x, y = next(iter(loader))
    >>> y.view(8, 4)[:, 0].unique().numel(), bool((y.view(8, 4) == y.view(8, 4)[:, :1]).all())
    (8, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .registry import Registry

__all__ = ["SAMPLERS", "SymmetricSampler"]

SAMPLERS: Registry[Any] = Registry("sampler", check=lambda s: hasattr(s, "__iter__"), expected="iterable batch sampler")

_POLICIES = ("skip", "replace")


def _labels_array(labels: object, name: str = "labels") -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr.astype(np.int64, copy=False)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@SAMPLERS.register("symmetric")
class SymmetricSampler(Sampler[list[int]]):
    """A ``batch_sampler`` of S distinct classes × K samples, class-major.

    Args:
        labels: the dataset's labels (1-D integers: tensor, array or list), one per dataset index.
        S: classes per batch.
        K: samples per class (≥ 2: a class needs a positive).
        seed: everything random derives from ``(seed, epoch, batch)``: the same seed gives the same batches, on every
            rank and after a resume.
        small_classes: what to do with a class that has fewer than K samples (but at least 2): ``"skip"`` (default:
            it is not drawn at this K) or ``"replace"`` (its samples are all used once, the rest of the K slots are
            drawn from it with replacement, so indices repeat inside that class's slots). A class with a single
            sample can never yield a positive and is never drawn.
        rank: sharding for distributed runs (with ``world_size`` W): rank r takes batches r, r + W, r + 2W, … of the common
            sequence, so shards are disjoint; every rank gets the same number of batches (the tail that does not
            divide evenly is dropped).
        world_size: the number of replicas W (1: no sharding).
        groups: optional, one group id per dataset index (integers, like ``labels``), e.g. the image sequence a patch
            comes from. A class's members must all be in one group. With groups, each batch draws its classes from
            one group: every epoch, each group's classes are shuffled and cut into runs of ``group_run`` classes,
            the runs of all groups are shuffled together, and a batch takes the next S usable classes without
            crossing the end of a run. A run with fewer than S usable classes (a group's last) is completed with
            other usable classes of its group, drawn at random, or of other groups once its group has no more. A
            batch's negatives then come from its own group (HPatches: the same scene, the distractors that matching
            faces) instead of mostly from other groups. Without groups the order is one shuffle of all classes.
        group_run: classes per run (default: the S given here). Runs are fixed for the epoch: after a change of S
            a run longer than S gives several batches, a shorter one is completed as above.

    Epochs: each epoch shuffles the usable classes and visits every one of them once, S at a time; the last batch is
    completed with other randomly chosen classes so that every batch has exactly S distinct classes. Within a class
    the K samples are drawn without replacement, afresh at every visit.

    S and K may change at any time (`set_batch_shape()`, driven by the stepped-batch scheduler): the next batch
    uses them, and the epoch still visits every remaining class. With a multi-worker DataLoader the change shows after
    the batches already prefetched. ``len()`` is the number of batches this rank gets at the current S.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        S: int,
        K: int,
        *,
        seed: int = 0,
        small_classes: str = "skip",
        rank: int = 0,
        world_size: int = 1,
        groups: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        group_run: int | None = None,
    ) -> None:
        self.labels = _labels_array(labels)
        if small_classes not in _POLICIES:
            raise ValueError(f"small_classes must be one of {', '.join(map(repr, _POLICIES))}, got {small_classes!r}")
        self.small_classes = small_classes
        self.seed = _check_int(seed, "seed", 0)
        self.world_size = _check_int(world_size, "world_size", 1)
        self.rank = _check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size ({self.world_size}), got {self.rank}")
        classes, inverse, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        self.classes = classes
        self.class_sizes = counts
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self._members = [order[bounds[i] : bounds[i + 1]] for i in range(len(classes))]
        self.class_groups = None if groups is None else self._class_groups(groups, inverse, order, bounds)
        self.group_run = _check_int(S if group_run is None else group_run, "group_run", 1)
        self.epoch = 0
        self._position = 0  # classes of the current epoch's queue already consumed
        self._batch_index = 0  # batches generated in the current epoch (all ranks)
        self.S, self.K = 0, 0
        self.set_batch_shape(S, K)

    # ------------------------------------------------------------------ configuration
    def usable_classes(self, K: int | None = None) -> np.ndarray:
        """Indices (into ``self.classes``) of the classes that can be drawn at K (default: the current K)."""
        k = self.K if K is None else K
        minimum = k if self.small_classes == "skip" else 2
        return np.flatnonzero(self.class_sizes >= minimum)

    def set_batch_shape(self, S: int, K: int) -> None:
        """Change S and K; takes effect from the next batch."""
        S = _check_int(S, "S", 1)
        K = _check_int(K, "K", 2)
        usable = len(self.usable_classes(K))
        if S > usable:
            raise ValueError(
                f"S={S} is larger than the number of usable classes at K={K} ({usable} of {len(self.classes)}; "
                f"small_classes={self.small_classes!r})"
            )
        self.S, self.K = S, K

    def _class_groups(
        self,
        groups: Sequence[int] | np.ndarray | torch.Tensor,
        inverse: np.ndarray,
        order: np.ndarray,
        bounds: np.ndarray,
    ) -> np.ndarray:
        g = _labels_array(groups, "groups")
        if len(g) != len(self.labels):
            raise ValueError(f"groups has {len(g)} entries, labels has {len(self.labels)}")
        first = g[order[bounds[:-1]]]  # each class's first member's group
        mixed = np.flatnonzero(g != first[inverse])
        if len(mixed):
            i = int(mixed[0])
            raise ValueError(
                f"class {self.labels[i]} spans groups {first[inverse[i]]} and {g[i]} (index {i}): a class must lie in one group"
            )
        return first

    @property
    def batch_size(self) -> int:
        return self.S * self.K

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (as ``DistributedSampler.set_epoch``); the next iteration begins it afresh."""
        self.epoch = _check_int(epoch, "epoch", 0)
        self._position = 0
        self._batch_index = 0

    # ------------------------------------------------------------------ iteration
    def _queue(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's class order and the end of each run in it (without groups: one run, the whole order)."""
        cached = getattr(self, "_queue_cache", None)
        if cached is None or cached[0] != (self.seed, self.epoch):
            rng = np.random.default_rng([self.seed, self.epoch])
            if self.class_groups is None:
                queue = rng.permutation(len(self.classes))
                ends = np.array([len(queue)])
            else:
                runs: list[np.ndarray] = []
                for g in np.unique(self.class_groups):
                    members = rng.permutation(np.flatnonzero(self.class_groups == g))
                    runs.extend(np.split(members, np.arange(self.group_run, len(members), self.group_run)))
                runs = [runs[i] for i in rng.permutation(len(runs))]
                queue = np.concatenate(runs)
                ends = np.cumsum([len(r) for r in runs])
            self._queue_cache = ((self.seed, self.epoch), (queue, ends))
        return self._queue_cache[1]

    def _usable_mask(self) -> np.ndarray:
        return self.class_sizes >= (self.K if self.small_classes == "skip" else 2)

    def __len__(self) -> int:
        self._queue()  # the runs of the current epoch
        saved = self._position
        try:
            self._position = 0
            batches = self._remaining_batches()
        finally:
            self._position = saved
        return batches // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        queue, ends = self._queue()
        while True:
            if self._position >= len(queue):
                break
            batch_index = self._batch_index
            usable = self._usable_mask()
            # take the next S usable classes from the queue, never past the end of the current run
            chosen: list[int] = []
            pos = self._position
            run_end = int(ends[np.searchsorted(ends, pos, side="right")])
            while pos < run_end and len(chosen) < self.S:
                c = int(queue[pos])
                pos += 1
                if usable[c]:
                    chosen.append(c)
            if not chosen:
                self._position = pos
                continue
            rng = np.random.default_rng([self.seed, self.epoch, batch_index, 1])
            if len(chosen) < self.S:
                chosen.extend(self._complete(chosen, usable, rng))
            self._position = pos
            self._batch_index = batch_index + 1
            last_full = (self._last_batch_count() // self.world_size) * self.world_size
            if batch_index >= last_full and self.world_size > 1:
                break  # the uneven tail: dropped so every rank takes the same number of steps
            if batch_index % self.world_size != self.rank:
                continue
            yield self._draw(chosen, rng)
        # an epoch that ran to the end starts the next one from scratch
        self.epoch += 1
        self._position = 0
        self._batch_index = 0

    def _complete(self, chosen: list[int], usable: np.ndarray, rng: np.random.Generator) -> list[int]:
        # a short batch (the epoch's last, or a group's last run) is completed with other usable classes, so it
        # still has S distinct ones: with groups, first from the batch's own group
        need = self.S - len(chosen)
        pool = np.setdiff1d(np.flatnonzero(usable), chosen)
        if self.class_groups is None:
            return [int(c) for c in rng.choice(pool, need, replace=False)]
        own = pool[self.class_groups[pool] == self.class_groups[chosen[0]]]
        picked = [int(c) for c in rng.choice(own, min(need, len(own)), replace=False)]
        if len(picked) < need:
            rest = np.setdiff1d(pool, own)
            picked += [int(c) for c in rng.choice(rest, need - len(picked), replace=False)]
        return picked

    def _last_batch_count(self) -> int:
        # batches in the whole epoch if S and K stay as they are from here on
        return self._batch_index + self._remaining_batches()

    def _remaining_batches(self) -> int:
        queue, ends = self._queue()
        upto = np.concatenate([[0], np.cumsum(self._usable_mask()[queue])])  # usable classes before each position
        starts = np.maximum(np.concatenate([[0], ends[:-1]]), self._position)
        left = np.where(ends > self._position, upto[ends] - upto[np.minimum(starts, ends)], 0)
        return int((-(-left // self.S)).sum())

    def _draw(self, chosen: list[int], rng: np.random.Generator) -> list[int]:
        batch: list[int] = []
        for c in chosen:
            members = self._members[c]
            if len(members) >= self.K:
                picked = rng.choice(members, self.K, replace=False)
            else:  # small_classes == "replace": every member once, then with replacement
                extra = rng.choice(members, self.K - len(members), replace=True)
                picked = rng.permutation(np.concatenate([members, extra]))
            batch.extend(int(i) for i in picked)
        return batch

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue mid-epoch with the same batches."""
        return {
            "epoch": self.epoch,
            "position": self._position,
            "batch_index": self._batch_index,
            "S": self.S,
            "K": self.K,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """All or nothing: every field is checked before any is applied; a bad state raises ``ValueError``."""
        if not isinstance(state, dict):
            raise ValueError(f"sampler state must be a dict, got {type(state).__name__}")
        missing = {"epoch", "position", "batch_index", "S", "K"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}")
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        for name in ("epoch", "position", "batch_index"):
            value = state[name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"sampler state field {name!r} must be an int >= 0, got {value!r}")
        if state["position"] > len(self.classes):
            raise ValueError(f"sampler state position {state['position']} is past the {len(self.classes)} classes")
        self.set_batch_shape(state["S"], state["K"])  # validates S and K; raises before anything changes
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._batch_index = int(state["batch_index"])

    def __repr__(self) -> str:
        return (
            f"SymmetricSampler(S={self.S}, K={self.K}, classes={len(self.classes)}, usable={len(self.usable_classes())}, "
            f"small_classes={self.small_classes!r}, rank={self.rank}, world_size={self.world_size}, seed={self.seed}"
            + (
                ""
                if self.class_groups is None
                else f", groups={len(np.unique(self.class_groups))}, group_run={self.group_run}"
            )
            + ")"
        )
