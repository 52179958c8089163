"""HardNetLoss against a NumPy reference rewritten from the logic of HardNet's ``code/Losses.py``
(``loss_HardNet(..., batch_reduce="min", loss_type="triplet_margin")``): smoke, exceptions, cardinality, value,
gradient (float64 gradcheck and a dense autograd reference), properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tripletkit import LOSSES, BatchHardLoss, HardNetLoss


def hardnet_reference(a, p, *, margin=1.0, anchor_swap=True, soft=False, eps=1e-6, thr=0.008, penalty=10.0):
    """HardNet's rule, loop by loop in float64: D = sqrt(|a|² + |p|² − 2a·p + eps) + 1e-8; the diagonal and every
    entry below ``thr`` get ``penalty`` added; min over the row (and the column with the swap);
    mean of max(0, margin + pos − min_neg)."""
    a = np.asarray(a, np.float64)
    p = np.asarray(p, np.float64)
    n = len(a)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = math.sqrt(a[i] @ a[i] + p[j] @ p[j] - 2 * a[i] @ p[j] + eps) + 1e-8
    cand = d.copy()
    for i in range(n):
        for j in range(n):
            if i == j:
                cand[i, j] += penalty
            if cand[i, j] < thr:
                cand[i, j] += penalty
    total = 0.0
    for i in range(n):
        neg = min(cand[i, j] for j in range(n))
        if anchor_swap:
            neg = min(neg, min(cand[j, i] for j in range(n)))
        t = margin + d[i, i] - neg
        total += (max(t, 0.0) + math.log1p(math.exp(-abs(t)))) if soft else max(t, 0.0)
    return total / n


def _pairs(seed, n=16, dim=32, noise=0.3, normalise=True):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, dim, generator=g, dtype=torch.float64)
    p = a + noise * torch.randn(n, dim, generator=g, dtype=torch.float64)
    if normalise:
        a, p = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(p, dim=1)
    return a, p


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("anchor_swap", [True, False])
@pytest.mark.parametrize("normalise", [True, False])
def test_equals_hardnet_reference(seed, anchor_swap, normalise):
    a, p = _pairs(seed, normalise=normalise)
    want = hardnet_reference(a.numpy(), p.numpy(), anchor_swap=anchor_swap)
    got = HardNetLoss(anchor_swap=anchor_swap)(a, p)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_duplicates_are_pushed_away(seed):
    a, p = _pairs(seed, n=10)
    p[3] = a[5]  # a_5 and p_3 are the same patch: D[5, 3] < 0.008
    p[7] = a[2] + 1e-5
    want = hardnet_reference(a.numpy(), p.numpy())
    assert float(HardNetLoss()(a, p)) == pytest.approx(want, rel=1e-7)
    # without the filter the duplicate is the hardest negative and the loss is larger
    assert float(HardNetLoss(duplicate_threshold=0.0)(a, p)) > want


@pytest.mark.parametrize("seed", range(3))
def test_settable_eps_threshold_penalty_and_soft_margin(seed):
    a, p = _pairs(seed, n=12, normalise=False)
    for kw, ref in (
        ({"eps": 1e-3}, {"eps": 1e-3}),
        ({"duplicate_threshold": 5.0}, {"thr": 5.0}),
        ({"exclusion_penalty": 100.0}, {"penalty": 100.0}),
        ({"margin": 0.5}, {"margin": 0.5}),
        ({"margin_fn": "softplus", "margin": 1.0}, {"soft": True}),
    ):
        want = hardnet_reference(a.numpy(), p.numpy(), **ref)
        assert float(HardNetLoss(**kw)(a, p)) == pytest.approx(want, rel=1e-7), kw


def test_differs_from_batch_hard_swap():
    # the example: BatchHardLoss(swap=True) on the 2N descriptors also sees same-side negatives
    a, p = _pairs(0, n=32, dim=128)
    x = torch.cat([a, p])
    labels = torch.arange(32).repeat(2)
    bh = float(BatchHardLoss(margin=1.0, swap=True)(x, labels))
    hn = float(HardNetLoss()(a, p))
    assert hn == pytest.approx(hardnet_reference(a.numpy(), p.numpy()), rel=1e-7)
    assert bh != pytest.approx(hn, rel=1e-3)


def _dense_torch(a, p, margin=1.0, eps=1e-6, thr=0.008, penalty=10.0):
    diff = a[:, None, :] - p[None, :, :]
    d = torch.sqrt((diff * diff).sum(-1) + eps)
    eye = torch.eye(len(a), dtype=torch.bool)
    cand = d + penalty * eye
    cand = torch.where(cand < thr, cand + penalty, cand)
    neg = torch.minimum(cand.min(1).values, cand.min(0).values)
    return torch.relu(margin + d.diagonal() - neg).mean()


@pytest.mark.parametrize("seed", range(4))
def test_gradient_equals_dense_autograd(seed):
    a, p = _pairs(seed, n=12)
    a1, p1 = a.clone().requires_grad_(), p.clone().requires_grad_()
    HardNetLoss()(a1, p1).backward()
    a2, p2 = a.clone().requires_grad_(), p.clone().requires_grad_()
    _dense_torch(a2, p2).backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-9, atol=1e-12)


def test_gradcheck_float64():
    a, p = _pairs(1, n=6, dim=4)
    loss = HardNetLoss(margin_fn="softplus", margin=1.0)
    assert torch.autograd.gradcheck(lambda x, y: loss(x, y), (a.requires_grad_(), p.requires_grad_()))


def test_smoke_cardinality_dtypes_and_registry():
    a, p = _pairs(0, n=8)
    assert HardNetLoss(reduction="none")(a, p).shape == (8,)
    assert HardNetLoss()(a[:1], p[:1]).shape == ()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = HardNetLoss()(a.to(dtype), p.to(dtype))
        assert out.dtype == torch.float32
        assert float(out) == pytest.approx(float(HardNetLoss()(a, p)), abs=2e-2 if dtype != torch.float32 else 1e-5)
    assert isinstance(LOSSES.build("hardnet"), HardNetLoss)
    assert "anchor_swap=True" in repr(HardNetLoss())
    # one pair: its only candidate is the diagonal + 10
    one = float(HardNetLoss()(a[:1], p[:1]))
    assert one == pytest.approx(hardnet_reference(a[:1].numpy(), p[:1].numpy()), rel=1e-9)
    # infinite penalty: nothing left to compare with, loss 0 and finite gradient
    a1 = a[:1].clone().requires_grad_()
    out = HardNetLoss(exclusion_penalty=float("inf"))(a1, p[:1])
    out.backward()
    assert float(out.detach()) == 0.0 and torch.isfinite(a1.grad).all()


def test_exceptions():
    a, p = _pairs(0, n=4)
    with pytest.raises(ValueError, match="same shape"):
        HardNetLoss()(a, p[:3])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        HardNetLoss()(a[0], p[0])
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        HardNetLoss()(bad, p)
    with pytest.raises(TypeError, match="floating-point"):
        HardNetLoss()(a.long(), p.long())
    with pytest.raises(ValueError, match="exclusion_penalty"):
        HardNetLoss(exclusion_penalty=-1.0)
    with pytest.raises(ValueError, match="eps"):
        HardNetLoss(eps=-1e-6)


@given(st.integers(2, 10), st.integers(1, 6), st.integers(0, 2**31 - 1), st.sampled_from([0.01, 0.3, 2.0]))
def test_properties(n, dim, seed, noise):
    a, p = _pairs(seed, n=n, dim=dim, noise=noise)
    with_swap = float(HardNetLoss()(a, p))
    without = float(HardNetLoss(anchor_swap=False)(a, p))
    assert with_swap >= without - 1e-12  # the swap only adds candidates: the nearest negative can only get nearer
    assert with_swap == pytest.approx(hardnet_reference(a.numpy(), p.numpy()), rel=1e-7, abs=1e-12)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert float(HardNetLoss()(a[perm], p[perm])) == pytest.approx(with_swap, rel=1e-9, abs=1e-12)
    # anchors and positives trade places: row and column minima trade places, the swapped loss is unchanged
    assert float(HardNetLoss()(p, a)) == pytest.approx(with_swap, rel=1e-9, abs=1e-12)
