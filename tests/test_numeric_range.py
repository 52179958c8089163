"""Finite inputs give correct finite results or a ValueError (never a silent inf/NaN or a wrong number), and the
functional core validates its inputs like the modules (issue: "Nothing lost, nothing trusted")."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tripletkit import (
    DISTANCES,
    MARGINS,
    BatchAllLoss,
    BatchHardLoss,
    BatchSemiHardLoss,
    HardNetLoss,
    OfflineMiner,
    SteppedBatchScheduler,
    TripletLoss,
)
from tripletkit.functional import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    random_triplet_loss,
    triplet_margin_loss,
)
from tripletkit.functional.losses import batch_semihard_triplet_loss, hardnet_loss
from tripletkit.functional.miners import Triplets


def _batch(seed=0, n=16, dim=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), torch.arange(n // 4).repeat_interleave(4)


# Each loss at scale s must equal s × (its value at scale 1 with margin m) when the margin scales with it
# (Euclidean: every distance scales by s); cosine must not change at all.
SCALED = [
    ("batch_hard", lambda m: BatchHardLoss(margin=m)),
    ("batch_hard_swap", lambda m: BatchHardLoss(margin=m, swap=True)),
    ("batch_all", lambda m: BatchAllLoss(margin=m)),
    ("semihard", lambda m: BatchSemiHardLoss(margin=m)),
    ("random", lambda m: TripletLoss(margin=m, miner={"name": "random", "seed": 0})),
]


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-20, 1e-30])
@pytest.mark.parametrize("name,make", SCALED, ids=[n for n, _ in SCALED])
def test_euclidean_losses_are_right_far_outside_the_square_range(name, make, scale):
    # float32 squares overflow above ~1.8e19 and underflow below ~1e-19: the old code gave 0, inf or NaN here
    x, y = _batch()
    want = float(make(0.2)(x, y))
    got = make(0.2 * scale)(x.float() * scale, y)
    assert torch.isfinite(got)
    assert float(got) / scale == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-6])
def test_cosine_is_scale_invariant_also_when_norms_overflow(scale):
    x, y = _batch(1)
    want = float(BatchHardLoss(distance="cosine")(x, y))
    got = float(BatchHardLoss(distance="cosine")(x.float() * scale, y))
    assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_hardnet_is_right_far_outside_the_square_range(scale):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(12, 8, generator=g, dtype=torch.float64)
    p = a + 0.3 * torch.randn(12, 8, generator=g, dtype=torch.float64)
    # eps, threshold and penalty scale with the data (s² for eps): then the loss scales by s
    want = float(HardNetLoss(margin=1.0)(a, p))
    got = HardNetLoss(
        margin=scale, eps=1e-6 * scale * scale, duplicate_threshold=0.008 * scale, exclusion_penalty=10 * scale
    )(a.float() * scale, p.float() * scale)
    assert float(got) / scale == pytest.approx(want, rel=1e-4)


def test_distances_themselves_are_right_or_inf_only_beyond_the_dtype():
    x = torch.tensor([[3e20, 0.0], [0.0, 4e20], [3e20, 1e20]])
    d = DISTANCES.build("euclidean")
    torch.testing.assert_close(d.matrix(x)[0, 1], torch.tensor(5e20), rtol=1e-6, atol=0)
    torch.testing.assert_close(d.paired(x[:1], x[1:2]), torch.tensor([5e20]), rtol=1e-6, atol=0)
    # the squared distance 2.5e41 does not exist in float32: inf, and the loss refuses it (below)
    assert torch.isinf(DISTANCES.build("sqeuclidean").matrix(x)[0, 1])
    tiny = torch.tensor([[3e-30, 0.0], [0.0, 4e-30]])
    torch.testing.assert_close(d.matrix(tiny)[0, 1], torch.tensor(5e-30), rtol=1e-6, atol=0)


def test_unrepresentable_results_and_margins_are_value_errors():
    x, y = _batch()
    with pytest.raises(ValueError, match="not finite"):
        BatchHardLoss(distance="sqeuclidean")(x.float() * 1e20, y)
    with pytest.raises(ValueError, match="not finite"):
        BatchAllLoss(distance="sqeuclidean")(x.float() * 1e20, y)
    # 1e39 is finite in float64 but not in float32, the dtype a float32 (or half) batch computes in
    for loss in (BatchHardLoss(margin=1e39), BatchAllLoss(margin=1e39), BatchSemiHardLoss(margin=1e39)):
        with pytest.raises(ValueError, match="margin 1e\\+39 is not finite in torch.float32"):
            loss(x.float(), y)
        assert torch.isfinite(loss(x, y))  # fine in float64
    with pytest.raises(ValueError, match="not finite in torch.float32"):
        HardNetLoss(margin=1e39)(x.float(), x.float())
    with pytest.raises(ValueError, match="not finite in torch.float32"):
        TripletLoss(margin=1e39)(x.bfloat16(), triplets=(torch.tensor([0]), torch.tensor([1]), torch.tensor([4])))


FUNCTIONAL = {
    "batch_hard": lambda x, y, **k: batch_hard_triplet_loss(x, y, **k),
    "batch_all": lambda x, y, **k: batch_all_triplet_loss(x, y, **k),
    "random": lambda x, y, **k: random_triplet_loss(x, y, **k),
    "semihard": lambda x, y, **k: batch_semihard_triplet_loss(x, y, **k),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_functional_core_validates_like_the_modules(name):
    fn = FUNCTIONAL[name]
    kw = dict(distance=DISTANCES.build("euclidean"), margin_fn=MARGINS.build("hinge"))
    x, y = _batch()
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite values \\(1 NaN, 0 inf\\)"):
        fn(bad, y, **kw)
    with pytest.raises(ValueError, match="labels has length 15 but the embeddings have 16 rows"):
        fn(x, y[:15], **kw)
    with pytest.raises(TypeError, match="integer dtype"):
        fn(x, y.float(), **kw)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        fn(x[0], y, **kw)
    with pytest.raises(ValueError, match="not finite in torch.float32"):
        fn(x.float(), y, distance=kw["distance"], margin_fn=MARGINS.build("hinge", margin=1e39))
    # validate=False: the checks (and their host syncs) are off, as the modules' validate=False
    out = fn(bad, y, validate=False, **kw)
    assert isinstance(out, torch.Tensor)


def test_functional_triplets_and_hardnet_validate():
    x, _ = _batch()
    kw = dict(distance=DISTANCES.build("euclidean"), margin_fn=MARGINS.build("hinge"))
    t = Triplets(torch.tensor([0, 1]), torch.tensor([1, 16]), torch.tensor([4, 5]), torch.tensor([True, True]))
    with pytest.raises(ValueError, match="positive indices must lie in \\[0, 16\\)"):
        triplet_margin_loss(x, t, **kw)
    t = Triplets(torch.tensor([0, -1]), torch.tensor([1, 2]), torch.tensor([4, 5]), torch.tensor([True, True]))
    with pytest.raises(ValueError, match="anchor indices must lie"):
        triplet_margin_loss(x, t, **kw)
    t = Triplets(torch.tensor([0.0]), torch.tensor([1]), torch.tensor([4]), torch.tensor([True]))
    with pytest.raises(TypeError, match="int32/int64"):
        triplet_margin_loss(x, t, **kw)
    with pytest.raises(ValueError, match="same shape"):
        hardnet_loss(x, x[:3], margin_fn=MARGINS.build("hinge", margin=1.0))
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        hardnet_loss(bad, x, margin_fn=MARGINS.build("hinge", margin=1.0))


def test_no_silent_coercions():
    with pytest.raises(ValueError, match="guard_patience must be a positive int, got 2.7"):
        SteppedBatchScheduler([(4, 2), (4, 4)], margin_fn=BatchHardLoss(), guard_patience=2.7)
    x, y = _batch()
    with pytest.raises(TypeError, match="anchors must be an integer index tensor"):
        OfflineMiner()(x, y, anchors=torch.tensor([0.0, 3.7]))


@given(st.integers(0, 2**31 - 1), st.sampled_from([1e-25, 1e-12, 1.0, 1e12, 1e25]))
def test_scale_equivariance_property(seed, scale):
    # d(s·x, s·y) = s·d(x, y) for every Euclidean matrix and paired distance, in float32, over 50 decades
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    want = torch.cdist(x, x)
    for kind, power in (("euclidean", 1), ("sqeuclidean", 2)):
        d = DISTANCES.build(kind)
        if power == 2 and not 1e-18 < scale < 1e18:
            continue  # the squares themselves are beyond float32 (inf above, 0 below)
        got = d.matrix((x * scale).float()).double() / scale**power
        torch.testing.assert_close(got, want**power, rtol=2e-3, atol=1e-6 * float(want.max()) ** power)
        gp = d.paired((x[:3] * scale).float(), (x[3:] * scale).float()).double() / scale**power
        torch.testing.assert_close(gp, ((x[:3] - x[3:]) ** 2).sum(1) ** (power / 2), rtol=1e-5, atol=0)


@given(st.integers(0, 2**31 - 1))
def test_swap_with_tied_hardest_positives_follows_the_tie_rule_in_every_dtype(seed):
    # grid embeddings: exact ties between hardest positives are common, and the swap's value depends on which one
    # is chosen; the documented rule (smallest index) must hold in float32 as in float64 (the reference)
    from tripletkit.testing import reference as ref

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (12, 3), generator=g).double()
    labels = torch.randint(0, 3, (12,), generator=g)
    want, _ = ref.batch_hard(x.numpy(), labels.tolist(), margin=0.2, swap=True)
    for dtype in (torch.float64, torch.float32):
        got = float(BatchHardLoss(margin=0.2, swap=True)(x.to(dtype), labels))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6), dtype


def test_swap_tie_case_by_hand_in_every_dtype():
    # anchor 0 at the origin; positives 1 and 2 tie at distance 5; 2 has a nearer negative (3) than 1 (4): the rule
    # picks positive 1, whose own nearest negative is farther (the Hypothesis case above found the dtype dependence)
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [4.0, 3.0], [4.0, 6.5], [-3.0, 11.0], [40.0, 40.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    from tripletkit.testing import reference as ref

    want, _ = ref.batch_hard(x.double().numpy(), labels.tolist(), margin=0.2, swap=True)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        got = float(BatchHardLoss(margin=0.2, swap=True)(x.to(dtype), labels))
        assert got == pytest.approx(want, rel=1e-5), dtype


def test_float16_gradient_beyond_its_range_is_a_value_error_not_inf():
    # cosine: the gradient of a row grows like 1/‖x‖; at ‖x‖ ≈ 1e-6 it is far beyond float16's 65504
    x = torch.randn(8, 4).half()
    x[0] = torch.tensor([1e-6, 0.0, 0.0, 0.0]).half()
    leaf = x.clone().requires_grad_(True)
    loss = BatchHardLoss(distance="cosine")(leaf, torch.arange(4).repeat_interleave(2))
    with pytest.raises(ValueError, match="beyond float16's range"):
        loss.backward()
    # an ordinary float16 batch keeps a finite float16 gradient
    ok = torch.randn(8, 4).half().requires_grad_(True)
    BatchHardLoss(distance="cosine")(ok, torch.arange(4).repeat_interleave(2)).backward()
    assert ok.grad.dtype == torch.float16 and torch.isfinite(ok.grad).all()
