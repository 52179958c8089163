from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given

from tripletkit import DISTANCES, MARGINS
from tripletkit.functional.distances import _range_scale
from tripletkit.testing import reference as ref

from .strategies import batches


@pytest.mark.parametrize("kind", ["euclidean", "sqeuclidean", "cosine"])
@given(batch=batches(max_n=8))
def test_matrix_and_paired_equal_reference(batch, kind):
    x, _ = batch
    d = DISTANCES.build(kind)
    t = torch.tensor(x)
    want = ref.distance_matrix(x, kind)
    got = d.matrix(t).numpy()
    # Gram form: exact to rounding in d², so sqrt can amplify to ~sqrt(eps)·spread at coinciding points
    assert np.allclose(got, want, rtol=1e-9, atol=1e-7)
    assert np.array_equal(np.diag(got), np.zeros(len(x)))
    n = len(x)
    other = np.roll(x, 1, axis=0)
    paired = d.paired(t, torch.tensor(other)).numpy()
    assert np.allclose(paired, [ref.distance(x[i], other[i], kind) for i in range(n)], rtol=1e-12, atol=1e-14)
    r, o = d.ranking(t)
    # off the diagonal (miners never rank an anchor against itself), the ranking plus its row offset is a
    # monotone transform of the distance: s²·d² for the batch-wide range scale s (1 unless the squares would leave
    # the dtype's range, as for a batch of 1e-283s)
    if kind == "cosine":
        transformed = want
    else:
        s = float(_range_scale(t))
        scaled = np.array([[ref.distance(a * s, b * s, "sqeuclidean") for b in x] for a in x])
        transformed = scaled
    off = ~np.eye(n, dtype=bool)
    assert np.allclose((r + o[:, None]).numpy()[off], transformed[off], rtol=1e-9, atol=1e-9)


def test_rectangular_matrix():
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for kind in ("euclidean", "sqeuclidean", "cosine"):
        got = DISTANCES.build(kind).matrix(x, y)
        want = [[ref.distance(a, b, kind) for b in y.numpy()] for a in x.numpy()]
        assert got.shape == (4, 5)
        assert np.allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_matrix_accurate_far_from_the_origin_in_float32():
    # cdist's matmul path returns 0 for a true distance of 0.01 at norm ~1000·sqrt(128)
    base = torch.full((1, 128), 1000.0)
    # 32 rows, so that cdist takes its matmul path (N > 25)
    x = torch.cat([base.repeat(31, 1), base + torch.full((1, 128), 0.01 / math.sqrt(128))]).float()
    want = float(torch.linalg.vector_norm(x[0].double() - x[-1].double()))
    got = float(DISTANCES.build("euclidean").matrix(x)[0, -1])
    assert abs(got - want) < 1e-4 * want
    assert float(torch.cdist(x, x)[0, -1]) != pytest.approx(want, rel=1e-2)  # what the peer path gives


@pytest.mark.parametrize("kind", ["euclidean", "sqeuclidean", "cosine"])
def test_zero_gradient_where_points_coincide(kind):
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    d = DISTANCES.build(kind)
    (d.matrix(x).sum() + d.paired(x, x.flip(0)).sum() + d.paired(x, x).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_softplus_is_stable_for_any_gap():
    soft = MARGINS.build("softplus")
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        gap = torch.tensor(
            [-1e30, -1e4, -100.0, -1.0, 0.0, 1.0, 89.0, 100.0, 1e4, 1e30], dtype=dtype, requires_grad=True
        )
        out = soft(gap)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(gap.grad).all(), dtype
        assert float(out[4]) == pytest.approx(math.log(2), rel=1e-2)
        assert float(out[-2]) == pytest.approx(1e4, rel=1e-2) and float(out[1]) == 0.0


@pytest.mark.parametrize(
    "name,margin,collapse",
    [("hinge", 0.2, 0.2), ("hinge", 1.0, 1.0), ("softplus", 0.0, math.log(2)), ("softplus", 1.0, math.log1p(math.e))],
)
def test_collapse_values(name, margin, collapse):
    fn = MARGINS.build(name, margin=margin)
    assert fn.collapse_value == pytest.approx(collapse, rel=1e-12)
    assert float(fn(torch.zeros((), dtype=torch.float64))) == pytest.approx(collapse, rel=1e-12)


@pytest.mark.parametrize("name", ["hinge", "softplus"])
def test_activation_grad_equals_autograd(name):
    fn = MARGINS.build(name)
    t = torch.linspace(-50, 50, 1001, dtype=torch.float64, requires_grad=True)
    fn.activation(t).sum().backward()
    assert torch.allclose(fn.activation_grad(t.detach()), t.grad, atol=1e-15)
    for value in np.linspace(-5, 5, 11):
        want = ref.margin_value(float(value), name, fn.margin)
        assert float(fn(torch.tensor(value, dtype=torch.float64))) == pytest.approx(want, rel=1e-14, abs=1e-300)


TEMPERATURES = [0.01, 0.1, 0.5, 1.0, 3.0]


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_softplus_temperature_equals_reference(temperature, margin):
    fn = MARGINS.build({"name": "softplus", "temperature": temperature}, margin=margin)
    for value in np.linspace(-3, 3, 25):
        want = ref.margin_value(float(value), "softplus", margin, temperature)
        got = float(fn(torch.tensor(value, dtype=torch.float64)))
        assert got == pytest.approx(want, rel=1e-13, abs=1e-300), (temperature, margin, value)
    # collapse value: τ·ln(1 + e^(m/τ)), written out here independently
    assert fn.collapse_value == pytest.approx(temperature * math.log1p(math.exp(margin / temperature)), rel=1e-12)
    assert float(fn(torch.zeros((), dtype=torch.float64))) == pytest.approx(fn.collapse_value, rel=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_softplus_temperature_grad_and_hinge_limit(temperature):
    fn = MARGINS.build("softplus", temperature=temperature)
    t = torch.linspace(-5, 5, 1001, dtype=torch.float64, requires_grad=True)
    fn.activation(t).sum().backward()
    assert torch.allclose(fn.activation_grad(t.detach()), t.grad, atol=1e-15)
    # an easy triplet's gradient weight is sigmoid(gap/τ): with bounded distances (gap ≥ −2) it vanishes as τ → 0
    assert float(fn.activation_grad(torch.tensor(-2.0, dtype=torch.float64))) == pytest.approx(
        1 / (1 + math.exp(2 / temperature)), rel=1e-12
    )
    # τ·softplus(t/τ) − [t]₊ lies in (0, τ·ln 2], the maximum at t = 0: it tends to the hinge as τ → 0 (the lower
    # bound up to the rounding of τ·(t/τ) for |t| ≤ 5)
    gap = fn.activation(t.detach()) - t.detach().clamp_min(0)
    assert float(gap.min()) > -1e-14 and float(gap.max()) == pytest.approx(temperature * math.log(2), rel=1e-12)


def test_softplus_temperature_is_stable_for_any_gap():
    soft = MARGINS.build("softplus", temperature=0.05)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        gap = torch.tensor([-1e30, -100.0, -1.0, 0.0, 1.0, 100.0, 1e30], dtype=dtype, requires_grad=True)
        out = soft(gap)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(gap.grad).all(), dtype
        assert float(out[1]) == 0.0 and float(out[5]) == pytest.approx(100.0, rel=1e-2)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-0.5, ValueError), (math.nan, ValueError),
                                     (math.inf, ValueError), ("0.1", TypeError), (True, TypeError)])  # fmt: skip
def test_softplus_temperature_refuses_bad_values(bad, err):
    with pytest.raises(err, match="temperature"):
        MARGINS.build("softplus", temperature=bad)


def test_softplus_temperature_is_part_of_the_function():
    plain, same = MARGINS.build("softplus"), MARGINS.build("softplus", temperature=1.0)
    cold = MARGINS.build("softplus", temperature=0.1)
    assert plain == same and hash(plain) == hash(same) and repr(plain) == "SoftplusMargin(margin=0.0)"
    assert cold != plain and repr(cold) == "SoftplusMargin(margin=0.0, temperature=0.1)"
    assert len({plain, same, cold}) == 2
