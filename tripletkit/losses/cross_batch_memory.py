"""Cross-batch memory (Wang, Zhang, Huang and Scott 2020, "Cross-Batch Memory for Embedding Learning", XBM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_embeddings, check_labels, compute_dtype

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory(nn.Module):
    """Mines each batch against a queue of the last ``memory_size`` embeddings, with PML's semantics.

    ``xbm = CrossBatchMemory(BatchHardLoss(margin=0.2), embedding_size=128, memory_size=4096)``, then
    ``loss = xbm(embeddings, labels)`` in the training loop:

    1. the batch's embeddings (detached) and labels are enqueued first, overwriting the oldest rows once the queue
       is full (a ring buffer);
    2. the loss runs with the batch as anchors and the memory's filled rows (the current batch included) as the
       reference set (``ref_embeddings``/``ref_labels``);
    3. each anchor's own enqueued copy is never its positive (``ref_self_index``); it is no negative either (same
       label);
    4. gradients reach the current batch only: the memory holds detached copies.

    Until the queue has been filled once, only its filled rows take part. The wrapped loss is any loss that takes a
    reference set: [`BatchHardLoss`][tripletkit.losses.batch_hard.BatchHardLoss] (PML's
    ``CrossBatchMemory(TripletMarginLoss(...), miner=BatchHardMiner())``),
    [`BatchAllLoss`][tripletkit.losses.batch_all.BatchAllLoss] (PML's ``CrossBatchMemory(TripletMarginLoss(...))``
    with no miner), [`BatchSemiHardLoss`][tripletkit.losses.batch_semihard.BatchSemiHardLoss] or
    [`TripletLoss`][tripletkit.losses.triplet.TripletLoss] with a miner that ``supports_ref``.

    The queue, the labels and the write position are buffers, so ``state_dict()`` carries the memory into a
    checkpoint ([`TrainingCheckpoint`][tripletkit.training.checkpoint.TrainingCheckpoint]); ``load_state_dict``
    checks every field before it changes anything. Memory rows are stored in float32 (float64 for float64
    embeddings). Eager only: the filled count is read to the host each call.

    Args:
        loss: the loss to wrap (called as ``loss(embeddings, labels, ref_embeddings=..., ref_labels=...,
            ref_self_index=...)``).
        embedding_size: D.
        memory_size: rows in the queue; a batch may not be larger.
    """

    embedding_memory: Tensor
    label_memory: Tensor
    queue_idx: Tensor
    filled: Tensor

    def __init__(self, loss: Any, embedding_size: int, memory_size: int = 1024) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be a callable loss module, got {type(loss).__name__}")
        for name, value in (("embedding_size", embedding_size), ("memory_size", memory_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.loss = loss
        self.embedding_size = embedding_size
        self.memory_size = memory_size
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_size))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("queue_idx", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))

    def reset(self) -> None:
        """Empty the queue."""
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_idx.zero_()
        self.filled.zero_()

    @property
    def num_filled(self) -> int:
        """Rows of the queue that hold embeddings."""
        return self.memory_size if bool(self.filled) else int(self.queue_idx)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        check_embeddings(embeddings, min_rows=1, values=getattr(self.loss, "validate", True))
        labels = check_labels(labels, embeddings.shape[0], device=embeddings.device)
        n = embeddings.shape[0]
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings have {embeddings.shape[1]} dimensions, the memory {self.embedding_size}")
        if n > self.memory_size:
            raise ValueError(f"a batch of {n} rows does not fit a memory of {self.memory_size}")
        stored = compute_dtype(embeddings).dtype
        if self.embedding_memory.device != embeddings.device or self.embedding_memory.dtype != stored:
            self.embedding_memory = self.embedding_memory.to(embeddings.device, stored)
            self.label_memory = self.label_memory.to(embeddings.device)
            self.queue_idx = self.queue_idx.to(embeddings.device)
            self.filled = self.filled.to(embeddings.device)
        start = int(self.queue_idx)
        rows = (torch.arange(n, device=embeddings.device) + start) % self.memory_size
        self.embedding_memory[rows] = embeddings.detach().to(stored)
        self.label_memory[rows] = labels.long()
        end = (start + n) % self.memory_size
        if end <= start:
            self.filled.fill_(True)
        self.queue_idx.fill_(end)
        count = self.num_filled
        return self.loss(
            embeddings,
            labels,
            ref_embeddings=self.embedding_memory[:count],
            ref_labels=self.label_memory[:count],
            ref_self_index=rows,
        )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Checks the memory's shape, dtypes and write position before anything is loaded (all or nothing)."""
        prefix_free = {k: v for k, v in state_dict.items() if not k.startswith("loss.")}
        want = {
            "embedding_memory": (self.memory_size, self.embedding_size),
            "label_memory": (self.memory_size,),
            "queue_idx": (),
            "filled": (),
        }
        for key, shape in want.items():
            value = prefix_free.get(key)
            if not isinstance(value, Tensor):
                raise ValueError(f"CrossBatchMemory state: {key!r} is missing or not a tensor")
            if tuple(value.shape) != shape:
                raise ValueError(f"CrossBatchMemory state: {key!r} has shape {tuple(value.shape)}, expected {shape}")
        if not prefix_free["embedding_memory"].is_floating_point():
            raise ValueError("CrossBatchMemory state: 'embedding_memory' must be floating point")
        if prefix_free["label_memory"].dtype != torch.long or prefix_free["queue_idx"].dtype != torch.long:
            raise ValueError("CrossBatchMemory state: 'label_memory' and 'queue_idx' must be int64")
        if prefix_free["filled"].dtype != torch.bool:
            raise ValueError("CrossBatchMemory state: 'filled' must be bool")
        q = int(prefix_free["queue_idx"])
        if not 0 <= q < self.memory_size:
            raise ValueError(f"CrossBatchMemory state: queue_idx {q} outside [0, {self.memory_size})")
        if not torch.isfinite(prefix_free["embedding_memory"]).all():
            raise ValueError("CrossBatchMemory state: 'embedding_memory' holds non-finite values")
        self.embedding_memory = self.embedding_memory.to(dtype=prefix_free["embedding_memory"].dtype)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, memory_size={self.memory_size}"
