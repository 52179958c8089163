"""The loss benchmark cases: one factory per (implementation, loss, margin), shared by the timing suite and the
memory probe so that both measure exactly the same call (forward + backward)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from tripletkit import BatchAllLoss, BatchHardLoss, BatchSemiHardLoss, CrossBatchMemory, HardNetLoss, TripletLoss
from tripletkit.functional import squared_euclidean_matrix
from tripletkit.testing.naive import naive_batch_all, naive_batch_hard, naive_hardnet, naive_semihard
from tripletkit.testing.peers import have_pml, import_oml

__all__ = ["D", "K", "MARGINS", "XBM_MEMORY", "have_oml", "have_pml", "make_case", "make_inputs", "step", "threads"]

D = 128
K = 8
MARGINS = {"hinge": 0.2, "softplus": 0.0}


def threads() -> int:
    return int(os.environ.get("TRIPLETKIT_BENCH_THREADS", "1"))


def have_oml() -> bool:
    return import_oml() is not None


# the cross-batch memory rows: a queue of this many rows (or 2N for larger batches), filled before timing
XBM_MEMORY = 2048


def make_inputs(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g).to(dtype)
    labels = torch.arange(n // K).repeat_interleave(K)
    return x, labels


def _pml_case(loss: str, margin_fn: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    # The configuration that equals Hermans' definitions (../shared/docs/peer-libraries.md).
    from pytorch_metric_learning import distances, losses, miners, reducers

    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    loss_fn = losses.TripletMarginLoss(
        margin=MARGINS[margin_fn], distance=dist, reducer=reducers.MeanReducer(), smooth_loss=margin_fn == "softplus"
    )
    if loss == "batch_hard":
        miner = miners.BatchHardMiner(distance=dist)
        return lambda x, y: loss_fn(x, y, miner(x, y))
    if loss == "batch_all":
        return lambda x, y: loss_fn(x, y)
    if loss == "xbm":
        from pytorch_metric_learning.losses import CrossBatchMemory as PMLCrossBatchMemory

        xbm = PMLCrossBatchMemory(loss_fn, D, memory_size=XBM_MEMORY, miner=miners.BatchHardMiner(distance=dist))
        return _prefilled(lambda x, y: xbm(x, y))
    if loss == "random":
        # PML's random triplets: TripletMarginLoss(triplets_per_anchor=1) samples one triplet per anchor
        rnd = losses.TripletMarginLoss(
            margin=MARGINS[margin_fn],
            distance=dist,
            reducer=reducers.MeanReducer(),
            smooth_loss=margin_fn == "softplus",
            triplets_per_anchor=1,
        )
        return lambda x, y: rnd(x, y)
    raise ValueError(loss)


def _oml_case(loss: str, margin_fn: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    # OML's TripletLossWithMiner: plain Euclidean (cdist), mean over the mined triplets; margin None = soft margin
    oml = import_oml()
    assert oml is not None
    margin = MARGINS[margin_fn] if margin_fn == "hinge" else None
    miner = {"batch_hard": oml["HardTripletsMiner"], "batch_all": oml["AllTripletsMiner"]}[loss]()
    fn = oml["TripletLossWithMiner"](margin=margin, miner=miner)
    return lambda x, y: fn(x, y)


def _prefilled(fn: Callable) -> Callable:
    # a full queue before timing, for ours and PML alike: the rows then cost what they cost in training
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(XBM_MEMORY // 256):
            fn(torch.randn(256, D, generator=g), torch.arange(32).repeat_interleave(8) + 1000)
    return fn


def _pairs(fn: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    # HardNet's batch is N/2 matching pairs: rows 2i and 2i+1 of the same inputs
    return lambda x, y: fn(x[0::2], x[1::2])


def make_case(impl: str, loss: str, margin_fn: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """A callable (x, labels) -> loss for ``impl`` in ours / naive / pml / oml, or the floor."""
    m = MARGINS[margin_fn]
    if impl == "floor":

        def floor(x: torch.Tensor, y: torch.Tensor) -> None:
            with torch.no_grad():
                squared_euclidean_matrix(x)

        return floor
    if impl == "ours":
        fn = {
            "batch_hard": BatchHardLoss(margin=m, margin_fn=margin_fn),
            "batch_all": BatchAllLoss(margin=m, margin_fn=margin_fn),
            "random": TripletLoss(margin=m, margin_fn=margin_fn, miner={"name": "random", "seed": 0}),
            "semihard": BatchSemiHardLoss(margin=m, margin_fn=margin_fn),
            "hardnet": _pairs(HardNetLoss(margin=1.0 if margin_fn == "hinge" else 0.0, margin_fn=margin_fn)),
        }.get(loss)
        if loss == "xbm":
            return _prefilled(CrossBatchMemory(BatchHardLoss(margin=m, margin_fn=margin_fn), D, memory_size=XBM_MEMORY))
        if fn is None:
            raise ValueError(loss)
        return fn
    if impl == "naive":
        if loss == "batch_hard":
            return lambda x, y: naive_batch_hard(x, y, margin=m, margin_fn=margin_fn)
        if loss == "batch_all":
            return lambda x, y: naive_batch_all(x, y, margin=m, margin_fn=margin_fn)
        if loss == "semihard":
            return lambda x, y: naive_semihard(x, y, margin=m, margin_fn=margin_fn)
        if loss == "hardnet":
            return _pairs(
                lambda a, p: naive_hardnet(a, p, margin=1.0 if margin_fn == "hinge" else 0.0, margin_fn=margin_fn)
            )
        raise ValueError(f"no naive reference for {loss}")
    if impl == "pml":
        return _pml_case(loss, margin_fn)
    if impl == "oml":
        return _oml_case(loss, margin_fn)
    raise ValueError(impl)


def step(fn: Callable, x: torch.Tensor, y: torch.Tensor) -> None:
    """Forward + backward from fresh leaf embeddings (the floor has no backward)."""
    leaf = x.detach().requires_grad_(True)
    out = fn(leaf, y)
    if out is not None:
        out.backward()
