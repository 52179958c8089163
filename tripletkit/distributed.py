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

**XLA (TPU).** A tensor on an XLA device is gathered with ``torch_xla``'s ``xm.all_gather`` (imported lazily), which
needs the same local shape on every replica (static shapes: no size exchange, no host sync); rank and world size come
from ``torch.distributed`` initialised with the ``xla`` backend (``init_process_group("xla", init_method="xla://")``).
The symmetric sampler gives every replica the same S×K, so this holds in training.

[`all_reduce_mean()`][tripletkit.distributed.all_reduce_mean] averages a scalar over the replicas; the stepped-batch scheduler uses it
(``sync_distributed=True``) so that every replica judges the same global loss and changes stage at the same step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "gather_with_grad",
    "scale_for_ddp",
    "all_reduce_mean",
    "all_reduce_mean_tensor",
    "all_gather_objects",
]


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
    if x.device.type == "xla":
        import torch_xla.core.xla_model as xm

        return _insert_local(xm.all_gather(x.detach(), dim=0), x, r, w)
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


def _insert_local(gathered: Tensor, x: Tensor, r: int, w: int) -> Tensor:
    """``gathered`` (W·n, …) with rank ``r``'s block replaced by ``x`` (which carries the gradient)."""
    n = x.shape[0]
    if gathered.shape[0] != w * n:
        raise ValueError(
            f"all_gather returned {gathered.shape[0]} rows for {w} replicas of {n}: on XLA every replica needs the same local batch size"
        )
    return torch.cat([gathered[: r * n], x, gathered[(r + 1) * n :]])


def _collective_device(t: Tensor) -> Tensor:
    """``t`` on a device the process group's backend can reduce: nccl needs CUDA, gloo the CPU, xla its device."""
    backend = dist.get_backend()
    if backend == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    if backend == "gloo" and t.device.type != "cpu":
        return t.cpu()
    if backend == "xla" and t.device.type != "xla":
        import torch_xla

        return t.to(torch_xla.device())
    return t


def all_reduce_mean_tensor(t: Tensor) -> Tensor:
    """The element-wise mean of ``t`` over all replicas, on ``t``'s device (``t`` itself without a process group).

    No host transfer on CUDA or XLA: the training loop decides when to read the result.
    """
    if not is_distributed():
        return t
    out = _collective_device(t.detach().clone())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / dist.get_world_size()).to(t.device)


def all_reduce_mean(value: float | Tensor) -> float:
    """The mean of a scalar over all replicas (the value itself without a process group, or with world size 1)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"all_reduce_mean takes a scalar, got shape {tuple(value.shape)}")
        t = value.detach().float().reshape(1)
    else:
        t = torch.tensor([float(value)])
    return float(all_reduce_mean_tensor(t))


def scale_for_ddp(loss: Tensor) -> Tensor:
    """The same value, gradient × world size (see the module docstring)."""
    w = world_size()
    if w == 1:
        return loss
    return loss + (w - 1) * (loss - loss.detach())


def all_gather_objects(obj: object) -> list:
    """``obj`` from every replica, in rank order (``[obj]`` without a process group).

    The xla backend has no object collectives; there every replica gets ``[obj]`` (its own state only).
    """
    if not is_distributed():
        return [obj]
    if dist.get_backend() == "xla":
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
