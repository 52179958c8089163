"""Mining across replicas: gather embeddings and labels from every process, keep the gradient on the local slice.

With ``gather_distributed=True`` a tripletkit loss sees the *global* batch: each replica gathers all replicas'
embeddings (``torch.distributed.all_gather``, which carries no gradient) and puts its own tensor back in its slot,
so the gradient flows into the local embeddings only. Every replica then computes the same global loss value.

**Scaling convention.** DDP averages parameter gradients over the W replicas, and each replica's backward only
reaches its own slice, so the average would be 1/W of the single-process gradient. The losses therefore return the
global loss *value* with its gradient multiplied by W (``L + (W − 1)·(L − L.detach())``): after DDP's averaging the
parameter gradients equal those of one process on the concatenated batch, and the logged loss is the true one.
World size 1 (or no initialised process group) is a no-op.

Local batches may differ in size: the sizes are exchanged first and every tensor is padded to the largest for the
collective, then cut back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "world_size", "rank", "gather_with_grad", "scale_for_ddp"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (N_r, …) from every rank in rank order; the local slice keeps its autograd history."""
    if not is_distributed():
        return x
    w, r = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(sizes, n)
    sizes_int = [int(s) for s in sizes]
    biggest = max(sizes_int)
    padded = x.detach()
    if x.shape[0] < biggest:
        padded = torch.cat([padded, padded.new_zeros((biggest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded.contiguous())
    pieces = [p[:s] for p, s in zip(parts, sizes_int)]
    pieces[r] = x
    return torch.cat(pieces)


def scale_for_ddp(loss: Tensor) -> Tensor:
    """The same value, gradient × world size (see the module docstring)."""
    w = world_size()
    if w == 1:
        return loss
    return loss + (w - 1) * (loss - loss.detach())
