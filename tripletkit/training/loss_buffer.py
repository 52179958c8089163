"""The last n training losses kept on their device, read back with one transfer.

A loop that reads ``float(loss)`` every step makes a device-to-host transfer (and, on torch-xla, cuts a graph) every
step. `LossBuffer` keeps the losses where they are and hands them to the host when the loop needs them: for the log,
for a [`SteppedBatches`][tripletkit.training.batches.SteppedBatches] with ``judge_every = n``, or for a checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import distributed

__all__ = ["LossBuffer"]


class LossBuffer:
    """Up to ``capacity`` scalar losses on their device; `read()` returns them in order with one transfer.

    Args:
        capacity: how many losses it holds before it must be read. `append` beyond it raises ``ValueError``.
        reduce: under ``torch.distributed``, `read()` returns the replicas' element-wise mean (one all-reduce of
            the whole buffer). Without a process group it changes nothing.

    Why a rolled buffer: ``append`` writes ``cat(buffer[1:], loss)``, an op of one static shape, so on torch-xla it
    becomes part of the step's own graph and the step still compiles once. Writing slot ``i`` instead would bake
    ``i`` into the graph (n graphs), and stacking a list of losses at read time would run one more graph. After the
    step's graph has run the buffer is device data, and `read()` is a plain transfer.

    The values are the losses' own (float32 losses come back exactly). ``len()`` is the number held, known on the
    host without a sync.

    Example::

        >>> buf = LossBuffer(3)
        >>> for v in (0.5, 0.25, 0.125):
        ...     buf.append(torch.tensor(v))
        >>> len(buf), buf.read(), len(buf)
        (3, [0.5, 0.25, 0.125], 0)
    """

    def __init__(self, capacity: int, *, reduce: bool = False) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.reduce = reduce
        self._buf: Tensor | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, loss: Tensor) -> None:
        """Add one scalar loss (detached; no sync)."""
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss must be a tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
        if not loss.is_floating_point():
            raise TypeError(f"loss must be a floating-point tensor, got {loss.dtype}")
        if self._count == self.capacity:
            raise ValueError(f"LossBuffer holds its capacity ({self.capacity}) losses; read() them first")
        if self._buf is None or self._buf.device != loss.device:
            if self._count:
                raise ValueError(f"loss is on {loss.device}, the buffered ones on {self._buf.device}")  # type: ignore[union-attr]
            # made on the host and sent: device data, so the first step's graph is the same as every later one
            self._buf = torch.zeros(self.capacity, dtype=loss.dtype).to(loss.device)
        value = loss.detach().reshape(1).to(self._buf.dtype)
        self._buf = torch.cat([self._buf[1:], value])
        self._count += 1

    def read(self) -> list[float]:
        """The held losses, oldest first (the replicas' mean with ``reduce=True``); the buffer is then empty."""
        if self._count == 0:
            return []
        buf = self._buf
        assert buf is not None
        if self.reduce and distributed.is_distributed():
            buf = distributed.all_reduce_mean_tensor(buf)
        values = buf.cpu().tolist()[self.capacity - self._count :]  # the one device-to-host transfer
        self._count = 0
        return values

    def __repr__(self) -> str:
        return f"LossBuffer(capacity={self.capacity}, held={self._count}, reduce={self.reduce})"
