"""The loss benchmark cases: one factory per (implementation, loss, margin), shared by the timing suite and the
memory probe so that both measure exactly the same call (forward + backward)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from tripletkit import BatchAllLoss, BatchHardLoss, TripletLoss
from tripletkit.functional import squared_euclidean_matrix
from tripletkit.testing.naive import naive_batch_all, naive_batch_hard, naive_semihard

D = 128
K = 8
MARGINS = {"hinge": 0.2, "softplus": 0.0}


def threads() -> int:
    return int(os.environ.get("TRIPLETKIT_BENCH_THREADS", "1"))


def have_pml() -> bool:
    try:
        import pytorch_metric_learning  # noqa: F401
    except ImportError:
        return False
    return True


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


def make_case(impl: str, loss: str, margin_fn: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """A callable (x, labels) -> loss for ``impl`` in ours / naive / pml, or the floor."""
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
            "semihard": TripletLoss(margin=m, margin_fn=margin_fn, miner="semihard"),
        }[loss]
        return fn
    if impl == "naive":
        if loss == "batch_hard":
            return lambda x, y: naive_batch_hard(x, y, margin=m, margin_fn=margin_fn)
        if loss == "batch_all":
            return lambda x, y: naive_batch_all(x, y, margin=m, margin_fn=margin_fn)
        if loss == "semihard":
            return lambda x, y: naive_semihard(x, y, margin=m, margin_fn=margin_fn)
        raise ValueError("no naive random-triplet reference")
    if impl == "pml":
        return _pml_case(loss, margin_fn)
    raise ValueError(impl)


def step(fn: Callable, x: torch.Tensor, y: torch.Tensor) -> None:
    """Forward + backward from fresh leaf embeddings (the floor has no backward)."""
    leaf = x.detach().requires_grad_(True)
    out = fn(leaf, y)
    if out is not None:
        out.backward()
