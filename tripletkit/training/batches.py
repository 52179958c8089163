"""Stepped-batch S×K index batches for any training loop: a sampler and a scheduler that follow each other."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..samplers import SymmetricSampler
from ..schedulers import STUDY_STAGES, StageChange, SteppedBatchScheduler

__all__ = ["SteppedBatches"]


class SteppedBatches:
    """An endless iterator of S×K index batches whose shape follows the stepped-batch schedule.

    It owns a [`SymmetricSampler`][tripletkit.samplers.SymmetricSampler] (which classes and samples each batch holds) and a
    [`SteppedBatchScheduler`][tripletkit.schedulers.SteppedBatchScheduler] (when the batch grows). The training loop draws a batch, computes the
    loss and hands it back with `step()`; on a stage change the next batch has the new (S, K). Epochs restart by
    themselves: ``next()`` never raises ``StopIteration``.

    Args:
        labels: one integer label per dataset index (tensor, array or list): a ``Dataset``'s targets.
        stages: ``[(S, K), ...]``; the run starts at the first. One stage is a fixed S×K batch (no growth).
        margin_fn: the loss (or margin function / name) whose collapse value is the threshold; or give
            ``threshold``.
        threshold: as in [`SteppedBatchScheduler`][tripletkit.schedulers.SteppedBatchScheduler].
        patience: as in [`SteppedBatchScheduler`][tripletkit.schedulers.SteppedBatchScheduler].
        smoothing: as in [`SteppedBatchScheduler`][tripletkit.schedulers.SteppedBatchScheduler].
        guard: as in [`SteppedBatchScheduler`][tripletkit.schedulers.SteppedBatchScheduler], but on by default.
        guard_patience: as in [`SteppedBatchScheduler`][tripletkit.schedulers.SteppedBatchScheduler].
        hysteresis: as in [`SteppedBatchScheduler`][tripletkit.schedulers.SteppedBatchScheduler].
        judge_every: hand the losses to the scheduler every n steps instead of every step. `step()` then keeps
            the loss tensors on their device and reads all n with one device-to-host transfer (one all-reduce under
            DDP), which keeps the step of a torch-xla or CUDA loop free of host syncs. The scheduler sees the same
            losses in the same order; a stage change takes effect up to n − 1 steps later than with ``judge_every=1``.
        seed: the sampler's seed. Every batch is a function of ``(seed, epoch, batch index)``.
        small_classes: the sampler's policy for classes with fewer than K samples (``"skip"`` or ``"replace"``).
        groups: the sampler's groups (e.g. each patch's image sequence): batches then draw their classes from one
            group at a time, in runs of the first stage's S (see [`SymmetricSampler`][tripletkit.samplers.SymmetricSampler]).
        rank: this replica; default: from the initialised ``torch.distributed`` process group (else 0).
        world_size: the replicas; default: from the process group (else 1).
            Under DDP each replica draws its own shard and the scheduler judges the replicas' *mean* loss, so all
            replicas change stage at the same step.
        on_change: callbacks called with each [`StageChange`][tripletkit.schedulers.StageChange].
        reduce: under DDP, all-reduce the losses given to `step()` before judging them. ``False`` when the loop
            hands over the replicas' mean already (e.g. read from a
            [`LossBuffer`][tripletkit.training.loss_buffer.LossBuffer] with ``reduce=True``), so that it is not
            reduced a second time.

    ``state_dict()`` holds the sampler position (epoch, batch index), the scheduler and the losses not yet judged;
    the sampler has no other random state, so ``load_state_dict`` continues with exactly the batch an uninterrupted
    run would draw next.

    Example::

        >>> import torch
        >>> labels = torch.arange(50).repeat_interleave(4)
        >>> batches = SteppedBatches(labels, [(8, 2), (8, 4)], margin_fn="hinge", patience=2, smoothing=0.0)
        >>> len(next(batches)), batches.step(0.1), batches.step(0.1), len(next(batches))
        (16, None, StageChange(step=2, from_stage=0, to_stage=1, S=8, K=4, batch_size=32, smoothed_loss=0.1, threshold=0.2, reason='advance'), 32)
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | Tensor,
        stages: Sequence[tuple[int, int]] = STUDY_STAGES,
        *,
        margin_fn: object | None = None,
        threshold: float | None = None,
        patience: int = 100,
        smoothing: float = 0.9,
        guard: bool = True,
        guard_patience: int | None = None,
        hysteresis: float = 0.0,
        judge_every: int = 1,
        seed: int = 0,
        small_classes: str = "skip",
        groups: Sequence[int] | np.ndarray | Tensor | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        on_change: Sequence[Callable[[StageChange], None]] = (),
        reduce: bool = True,
    ) -> None:
        if isinstance(judge_every, bool) or not isinstance(judge_every, int) or judge_every < 1:
            raise ValueError(f"judge_every must be a positive int, got {judge_every!r}")
        self.world_size = distributed.world_size() if world_size is None else world_size
        self.rank = distributed.rank() if rank is None else rank
        if threshold is None and margin_fn is None and len(stages) == 1:
            threshold = 0.0  # a fixed S×K never changes: the threshold is never used
        # the losses are averaged here, once per judge_every steps, not once per step in the scheduler
        self.scheduler = SteppedBatchScheduler(
            stages,
            threshold,
            margin_fn=margin_fn,
            patience=patience,
            smoothing=smoothing,
            guard=guard,
            guard_patience=guard_patience,
            hysteresis=hysteresis,
            on_change=on_change,
        )
        S, K = self.scheduler.stages[0]
        self.sampler = SymmetricSampler(
            labels,
            S,
            K,
            seed=seed,
            small_classes=small_classes,
            rank=self.rank,
            world_size=self.world_size,
            groups=groups,
        )
        for i, (s, k) in enumerate(self.scheduler.stages):
            usable = len(self.sampler.usable_classes(k))
            if s > usable:
                raise ValueError(
                    f"stage {i} ({s}x{k}) needs {s} classes with at least {k} samples; the labels have {usable}"
                )
        self.judge_every = judge_every
        self.reduce = reduce
        self._pending: list[Tensor | float] = []
        self.steps = 0

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        # a fresh sampler iterator per batch: it starts from the sampler's saved position, so nothing but the state
        # dict decides the next batch (a checkpoint taken between any two batches resumes exactly)
        for _ in range(2):
            for batch in self.sampler:
                return batch
        raise RuntimeError(f"the sampler yields no batch at S={self.S}, K={self.K}")  # pragma: no cover

    def next_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """The next batch as an int64 index tensor (on ``device``)."""
        return torch.tensor(next(self), dtype=torch.int64, device=device)

    # ------------------------------------------------------------------ feedback
    def step(self, loss: float | Tensor) -> StageChange | None:
        """Feed this step's (local) loss. Returns the stage change it caused, or None.

        With ``judge_every = n`` the losses are collected and judged at every n-th call; the change (if any) is
        returned there.
        """
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
            loss = loss.detach().reshape(())
        self._pending.append(loss)
        self.steps += 1
        if len(self._pending) < self.judge_every:
            return None
        values = self._collect()
        change = None
        for value in values:
            if self.scheduler.step(value):
                change = self.scheduler.events[-1]
                self.sampler.set_batch_shape(change.S, change.K)
        return change

    def _collect(self) -> list[float]:
        pending, self._pending = self._pending, []
        reduce = self.reduce and distributed.is_distributed()
        if not reduce and all(not isinstance(p, Tensor) for p in pending):
            return [float(p) for p in pending]
        tensors = [p if isinstance(p, Tensor) else torch.tensor(float(p), dtype=torch.float64) for p in pending]
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        device = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device)
        stacked = torch.stack([t.to(device, dtype) for t in tensors])
        if reduce:
            stacked = distributed.all_reduce_mean_tensor(stacked)
        return stacked.cpu().tolist()  # the one device-to-host transfer per judge_every steps

    @property
    def unjudged(self) -> int:
        """How many losses `step()` holds until the next judgement (fewer than ``judge_every``)."""
        return len(self._pending)

    # ------------------------------------------------------------------ shape
    @property
    def S(self) -> int:
        return self.scheduler.S

    @property
    def K(self) -> int:
        return self.scheduler.K

    @property
    def batch_size(self) -> int:
        """This replica's batch size (the global one is ``batch_size × world_size``)."""
        return self.scheduler.batch_size

    @property
    def stage(self) -> int:
        return self.scheduler.stage

    @property
    def events(self) -> list[StageChange]:
        return self.scheduler.events

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        pending = [float(p) for p in self._pending]  # a checkpoint is a sync point anyway
        return {
            "sampler": self.sampler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pending": pending,
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """All or nothing: a state that does not fit changes nothing and raises ``ValueError``."""
        if not isinstance(state, dict) or not {"sampler", "scheduler", "pending", "steps"} <= set(state):
            raise ValueError("not a SteppedBatches state dict (needs sampler, scheduler, pending, steps)")
        pending = state["pending"]
        if not isinstance(pending, list) or len(pending) >= self.judge_every:
            raise ValueError(f"state holds {len(pending)} unjudged losses; judge_every is {self.judge_every}")
        scheduler = SteppedBatchScheduler(self.scheduler.stages, self.scheduler.threshold)
        scheduler.load_state_dict(state["scheduler"])  # validates before anything of ours changes
        S, K = self.scheduler.stages[scheduler.stage]
        sampler_state = dict(state["sampler"])
        if (sampler_state.get("S"), sampler_state.get("K")) != (S, K):
            raise ValueError(
                f"sampler state has S×K {sampler_state.get('S')}x{sampler_state.get('K')}, the scheduler's stage is {S}x{K}"
            )
        self.sampler.load_state_dict(sampler_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self._pending = [float(p) for p in pending]
        self.steps = int(state["steps"])

    def __repr__(self) -> str:
        return (
            f"SteppedBatches(stage {self.stage + 1}/{len(self.scheduler.stages)}: S={self.S}, K={self.K}; "
            f"threshold={self.scheduler.threshold:.4g}, judge_every={self.judge_every}, rank={self.rank}, "
            f"world_size={self.world_size})"
        )
