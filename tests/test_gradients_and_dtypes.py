"""Gradients (gradcheck in float64, against autograd through a dense reference), dtypes, and torch.compile."""

from __future__ import annotations

import itertools

import pytest
import torch

from tripletkit import BatchAllLoss, BatchHardLoss, BatchSemiHardLoss, HardNetLoss, TripletLoss
from tripletkit.testing.naive import naive_batch_all, naive_batch_hard

MARGIN_FNS = ["hinge", "softplus"]
DISTANCES = ["euclidean", "sqeuclidean", "cosine"]
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])


def _losses():
    for margin_fn, distance in itertools.product(MARGIN_FNS, DISTANCES):
        yield pytest.param(BatchHardLoss(margin_fn=margin_fn, distance=distance), id=f"bh-{margin_fn}-{distance}")
        yield pytest.param(
            BatchHardLoss(margin_fn=margin_fn, distance=distance, swap=True), id=f"bh-swap-{margin_fn}-{distance}"
        )
        for reduction in ("mean", "mean_active"):
            yield pytest.param(
                BatchAllLoss(margin_fn=margin_fn, distance=distance, reduction=reduction),
                id=f"ba-{reduction}-{margin_fn}-{distance}",
            )
        yield pytest.param(
            TripletLoss(margin_fn=margin_fn, distance=distance, miner={"name": "random", "seed": 3}),
            id=f"rand-{margin_fn}-{distance}",
        )


@pytest.mark.parametrize("loss_fn", list(_losses()))
def test_gradcheck_float64(loss_fn):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(LABELS), 5, generator=g, dtype=torch.float64, requires_grad=True)
    if isinstance(loss_fn, TripletLoss):
        # the random miner must draw the same triplets on every call gradcheck makes
        mined = loss_fn.miner(x.detach(), LABELS)
        fn = lambda e: loss_fn(e, LABELS, triplets=mined)  # noqa: E731
    else:
        fn = lambda e: loss_fn(e, LABELS)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("margin_fn,distance", list(itertools.product(MARGIN_FNS, DISTANCES)))
def test_gradients_equal_dense_autograd_reference(margin_fn, distance):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(6).repeat_interleave(4)
    x = torch.randn(24, 8, generator=g, dtype=torch.float64)
    m = 0.2 if margin_fn == "hinge" else 0.0
    for ours, naive in (
        (BatchHardLoss(margin=m, margin_fn=margin_fn, distance=distance), naive_batch_hard),
        (BatchAllLoss(margin=m, margin_fn=margin_fn, distance=distance), naive_batch_all),
    ):
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        la = ours(a, labels)
        lb = naive(b, labels, margin=m, margin_fn=margin_fn, kind=distance)
        la.backward()
        lb.backward()
        # the naive Euclidean has Hermans' sqrt(d² + 1e-12) fudge: agreement to ~1e-9, not to rounding
        torch.testing.assert_close(la, lb, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)


def test_finite_gradient_at_coinciding_points():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 2.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for loss_fn in (BatchHardLoss(), BatchAllLoss(), BatchHardLoss(swap=True), TripletLoss(miner="batch_hard")):
        x.grad = None
        loss_fn(x, labels).backward()
        assert torch.isfinite(x.grad).all(), loss_fn


# Tolerances measured on these inputs, as kornia's dtype tables: (dtype, rtol vs the float64 value)
DTYPE_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE))
@pytest.mark.parametrize("loss_cls", [BatchHardLoss, BatchAllLoss])
@pytest.mark.parametrize("margin_fn", MARGIN_FNS)
def test_dtype_table(dtype, loss_cls, margin_fn):
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(8).repeat_interleave(4)
    x = torch.randn(32, 16, generator=g).to(dtype).requires_grad_(True)
    loss = loss_cls(margin_fn=margin_fn)(x, labels)
    # half precision is computed in float32: the value must equal the float64 loss of the *rounded* inputs
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    exact = loss_cls(margin_fn=margin_fn)(x.detach().double(), labels)
    torch.testing.assert_close(loss.double(), exact, rtol=DTYPE_TOLERANCE[dtype], atol=1e-6)
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("loss_fn", list(_losses()))
def test_inside_a_callers_autocast_region_the_loss_is_float32(loss_fn):
    """A model's forward and its loss are often wrapped in one torch.autocast block: the loss must still compute its
    distances in float32 (the value of the float32 computation on the same inputs), not fail or drop to bf16."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 16, generator=g).requires_grad_(True)
    labels = torch.arange(16).repeat_interleave(4)
    if hasattr(loss_fn, "miner") and hasattr(loss_fn.miner, "_generators"):
        loss_fn.miner._generators.clear()
    plain = loss_fn(x, labels)
    if hasattr(loss_fn, "miner") and hasattr(loss_fn.miner, "_generators"):
        loss_fn.miner._generators.clear()  # the random miner draws the same triplets again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss_fn(x, labels)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=1e-6, atol=1e-6)
    inside.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "loss_fn",
    [
        BatchHardLoss(validate=False),
        BatchHardLoss(validate=False, max_class_size=4),
        BatchAllLoss(max_class_size=4, validate=False),
        BatchHardLoss(margin_fn="softplus", swap=True, validate=False),
        BatchSemiHardLoss(max_class_size=4, validate=False),
    ],
    ids=["batch_hard_dense", "batch_hard_blocked", "batch_all", "batch_hard_soft_swap", "batch_semihard"],
)
def test_compile_parity_without_graph_breaks(loss_fn):
    # fullgraph=True fails on any data-dependent shape, .item() or Python branch on a tensor value;
    # aot_eager traces forward and backward without needing a C++ toolchain.
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    labels = torch.arange(4).repeat_interleave(4)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(16, 8, generator=g)
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        la, lb = loss_fn(a, labels), compiled(b, labels)
        la.backward()
        lb.backward()
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)


def test_hardnet_compile_parity_without_graph_breaks():
    loss_fn = HardNetLoss(validate=False)
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        a, p = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
        a1, p1 = a.clone().requires_grad_(True), p.clone().requires_grad_(True)
        a2, p2 = a.clone().requires_grad_(True), p.clone().requires_grad_(True)
        la, lb = loss_fn(a1, p1), compiled(a2, p2)
        la.backward()
        lb.backward()
        torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a2.grad, a1.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-5, atol=1e-6)
