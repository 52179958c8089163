"""Pairwise and paired distances, accurate near zero and with finite gradients everywhere.

Definitions (``x_i``, ``y_j`` rows of the inputs):

* ``sqeuclidean``: ``||x_i - y_j||²``
* ``euclidean``: ``||x_i - y_j||``; the gradient at coinciding points is 0 (not NaN)
* ``cosine``: ``1 - <x_i, y_j> / (||x_i|| ||y_j||)``, in [0, 2]; a vector of norm below 1e-12 counts as the zero
  vector, which is orthogonal to everything (distance 1, 0 only on the diagonal of a matrix).

Why the matrix form is accurate near zero: ``||x||² + ||y||² - 2<x, y>`` cancels catastrophically when the points
are far from the origin and close to each other (``torch.cdist``'s matmul path returns 0.0 for a true distance of
0.01 at norm ≈ 1000). All rows are first shifted by their (detached) mean, which leaves every Euclidean distance
unchanged but brings the norms down to the spread of the batch, so the cancellation costs ``eps · spread²`` instead
of ``eps · norm²``. The paired forms use the direct difference and are exact to rounding.

Identical rows are at distance exactly 0 in every matrix (not the ~5e-4 that the matrix form's rounding can leave
between two equal one-hot rows in float32). Candidates are rows with equal 64-bit fingerprints of their bits, which
are then compared exactly: O((N + M)·D) work when no two rows are equal (a static N×M mask under ``torch.compile``;
on XLA, where float bits cannot be read as integers on the device, equal projections on two random directions
together with a value inside the matrix form's rounding bound).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import _static

__all__ = [
    "safe_sqrt",
    "squared_euclidean_matrix",
    "euclidean_matrix",
    "cosine_matrix",
    "squared_euclidean_paired",
    "euclidean_paired",
    "cosine_paired",
    "squared_euclidean_ranking",
    "cosine_ranking",
    "squared_euclidean_ranking_factors",
    "cosine_ranking_factors",
    "squared_euclidean_matrix_vjp",
    "euclidean_matrix_vjp",
    "cosine_matrix_vjp",
]


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf/NaN) where ``x <= 0``."""
    positive = x > 0
    # The inner where keeps sqrt's backward away from 0: the outer where alone would still give 0 * inf = NaN.
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


_COSINE_EPS = 1e-12


# Rows are computed at a scale where squares neither overflow nor underflow: |x| within 2^±40 in float32 (2^±400 in
# float64) is left as it is (the results are bit for bit those of the plain formulas); a batch outside is divided by
# its largest magnitude first and the distance scaled back, so finite inputs give correct finite distances (or inf,
# only where the distance itself is beyond the dtype).
_SAFE_EXPONENT = {torch.float64: 400}


def _range_scale(*tensors: Tensor) -> Tensor:
    """A detached scalar ``s`` with ``s · max|t|`` inside the safe range; exactly 1 when it already is."""
    ref = tensors[0]
    e = _SAFE_EXPONENT.get(ref.dtype, 40)
    # max(), not amax(): torch-xla reads amax's empty dim list as "reduce nothing"
    amax = torch.stack([t.detach().abs().max() for t in tensors]).max()
    normal = ((amax <= 2.0**e) & (amax >= 2.0**-e)) | (amax == 0)
    return torch.where(normal, torch.ones_like(amax), 1.0 / amax.clamp_min(torch.finfo(ref.dtype).tiny))


def _unit(x: Tensor) -> Tensor:
    # Unlike F.normalize (x / max(||x||, eps)), vectors under eps become exactly 0 instead of a scaled-up stub,
    # so the cosine distance is scale-invariant down to eps and well defined below it. Rows outside the safe range
    # are divided by their largest entry first (the direction is unchanged; the norm would overflow or underflow).
    e = _SAFE_EXPONENT.get(x.dtype, 40)
    amax = x.detach().abs().amax(-1, keepdim=True)
    outside = (amax > 2.0**e) | ((amax < 2.0**-e) & (amax > 0))
    scale = torch.where(outside, amax, torch.ones_like(amax))
    xs = x / scale
    norm_s = torch.linalg.vector_norm(xs, dim=-1, keepdim=True)
    norm = norm_s * scale
    return torch.where(norm >= _COSINE_EPS, xs / norm_s.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def _shift(x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    # Translation leaves Euclidean distances unchanged; detaching the shift keeps the backward cheap and exact.
    if y is None:
        center = x.detach().mean(0, keepdim=True)
        xc = x - center
        return xc, xc
    center = torch.cat([x.detach(), y.detach()]).mean(0, keepdim=True)
    return x - center, y - center


def _zero_diagonal(d: Tensor) -> Tensor:
    if d.device.type == "xla":  # fill_diagonal_ lowers to as_strided_scatter, a CPU fallback there
        eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
        return d.masked_fill(eye, 0.0)
    return d.fill_diagonal_(0.0)


_FINGERPRINT_SEED = 0x7F4A7C15
_MULTIPLIERS: dict[tuple[int, str], Tensor] = {}


def _fingerprint(x: Tensor) -> Tensor:
    """(N,) int64 hash of each row's bit pattern: equal rows always give equal values (integer sums wrap and are
    exact in any order); distinct rows collide with probability about 2⁻³² per pair."""
    d = x.shape[1]
    bits = x.detach() + 0.0  # -0.0 and 0.0 are equal rows
    if bits.dtype == torch.float64:
        ints = bits.view(torch.int64)
    elif bits.dtype == torch.float32:
        ints = bits.view(torch.int32).to(torch.int64)
    else:
        ints = bits.view(torch.int16).to(torch.int64)
    key = (d, str(x.device))
    if key not in _MULTIPLIERS:
        g = torch.Generator().manual_seed(_FINGERPRINT_SEED)
        odd = torch.randint(-(2**62), 2**62, (d,), generator=g, dtype=torch.int64) * 2 + 1
        _MULTIPLIERS[key] = odd.to(x.device)
    return (ints * _MULTIPLIERS[key]).sum(1)


def _float_fingerprint(x: Tensor) -> Tensor:
    """(N, 2) projections of the rows on two fixed random directions. For XLA, where reinterpreting float bits as
    integers runs on the host: a row-wise reduction applies one order of operations to every row, so equal rows
    give equal projections; distinct rows that project equally must also pass the rounding bound on ``d``."""
    d = x.shape[1]
    key = (d, f"float-{x.device}-{x.dtype}")
    if key not in _MULTIPLIERS:
        g = torch.Generator().manual_seed(_FINGERPRINT_SEED)
        _MULTIPLIERS[key] = torch.rand((d, 2), generator=g, dtype=torch.float64).add_(0.5).to(x.device, x.dtype)
    return x.detach() @ _MULTIPLIERS[key]


def _zero_identical(
    d: Tensor,
    x: Tensor,
    y: Tensor | None,
    usable: tuple[Tensor, Tensor] | None = None,
    bound: Tensor | float | None = None,
) -> Tensor:
    """Entries of ``d`` whose two rows are equal become exactly 0 (in place unless ``d`` needs its graph).

    Eager: rows with equal fingerprints are found by sorting N + M integers, and only those pairs are compared
    exactly, so a batch without duplicates costs O((N + M)·D) and never another pass over ``d``. Traced
    (``torch.compile``, XLA): a static N×M mask from the fingerprints. ``usable``: (N,) and (M,) masks of rows that
    may be set to 0 at all (the cosine distance keeps its zero vectors at distance 1)."""
    if _static(d):
        if d.device.type == "xla":
            px = _float_fingerprint(x)
            py = px if y is None else _float_fingerprint(y)
            same = (px[:, None, 0] == py[None, :, 0]) & (px[:, None, 1] == py[None, :, 1])
            if bound is not None:
                same = same & (d <= bound)
        else:
            fx = _fingerprint(x)
            same = fx[:, None] == (fx if y is None else _fingerprint(y))[None, :]
        if usable is not None:
            same = same & usable[0][:, None] & usable[1][None, :]
        return d.masked_fill(same, 0.0)
    fx = _fingerprint(x)
    fy = fx if y is None else _fingerprint(y)
    n = fx.shape[0]
    keys = fx if y is None else torch.cat([fx, fy])
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    if int(counts.max()) < 2:
        return d
    rows = torch.nonzero(counts[inverse] > 1).flatten()
    left, right = (rows, rows) if y is None else (rows[rows < n], rows[rows >= n])
    i, j = torch.nonzero(inverse[left][:, None] == inverse[right][None, :], as_tuple=True)
    i, j = left[i], right[j] - (0 if y is None else n)
    yy = x if y is None else y
    hit = (x.detach()[i] == yy.detach()[j]).all(1) & ((i != j) if y is None else True)
    if usable is not None:
        hit = hit & usable[0][i] & usable[1][j]
    i, j = i[hit], j[hit]
    if i.numel() == 0:
        return d
    if d.requires_grad:
        d = d.clone()
    d[i, j] = 0.0
    return d


def _needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _squared_euclidean_scaled(x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(s²·D², s)``: the squared distances of the rows scaled by ``s = _range_scale(...)``."""
    s = _range_scale(x) if y is None else _range_scale(x, y)
    xs = x * s
    ys = None if y is None else y * s
    xc, yc = _shift(xs, ys)
    sx = (xc * xc).sum(1, keepdim=True)
    sy = sx if y is None else (yc * yc).sum(1, keepdim=True)
    if not _needs_graph(xc, yc):
        # No graph to keep: one GEMM on [x̃, ||x̃||², 1]·[-2ỹ, 1, ||ỹ||²]ᵀ and in-place fix-ups, so the only N×M
        # buffer is the result.
        ones_x = torch.ones_like(sx)
        ones_y = ones_x if y is None else torch.ones_like(sy)
        d2 = torch.cat([xc, sx, ones_x], 1) @ torch.cat([yc * -2.0, ones_y, sy], 1).T
        d2.clamp_min_(0.0)
    else:
        d2 = torch.addmm(sx + sy.T, xc, yc.T, alpha=-2.0).clamp_min(0.0)
    if y is None:
        d2 = _zero_diagonal(d2)
    bound = None
    if d2.device.type == "xla":  # the float fingerprints' second condition: within the matrix form's rounding
        bound = (sx.detach().max() + sy.detach().max()) * (4.0 * (x.shape[1] + 2) * torch.finfo(d2.dtype).eps)
    return _zero_identical(d2, x, y, bound=bound), s


def squared_euclidean_matrix(x: Tensor, y: Tensor | None = None) -> Tensor:
    """(N, M) matrix of squared Euclidean distances; ``y=None`` means ``y = x`` (then the diagonal is exactly 0)."""
    d2, s = _squared_euclidean_scaled(x, y)
    if d2.requires_grad:
        return d2 / s / s
    return d2.div_(s).div_(s)


def euclidean_matrix(x: Tensor, y: Tensor | None = None) -> Tensor:
    """(N, M) matrix of Euclidean distances with a finite (zero) gradient where two points coincide."""
    d2, s = _squared_euclidean_scaled(x, y)
    if not d2.requires_grad:
        return d2.sqrt_().div_(s)
    return safe_sqrt(d2) / s


def cosine_matrix(x: Tensor, y: Tensor | None = None) -> Tensor:
    """(N, M) matrix of cosine distances ``1 - cos``, clamped to [0, 2]."""
    xn = _unit(x)
    yn = xn if y is None else _unit(y)
    if not _needs_graph(xn, yn):
        d = torch.mm(xn, yn.T).neg_().add_(1.0).clamp_(0.0, 2.0)
    else:
        d = torch.addmm(torch.ones((), dtype=xn.dtype, device=xn.device), xn, yn.T, alpha=-1.0).clamp(0.0, 2.0)
    if y is None:
        d = _zero_diagonal(d)
    nx = torch.linalg.vector_norm(x.detach(), dim=-1) >= _COSINE_EPS
    ny = nx if y is None else torch.linalg.vector_norm(y.detach(), dim=-1) >= _COSINE_EPS
    return _zero_identical(d, x, y, (nx, ny), bound=8.0 * (x.shape[1] + 2) * torch.finfo(d.dtype).eps)


def _pull_back(x: Tensor, weights: Tensor) -> Tensor:
    """``Σ_j W_ij (x_i − x_j)`` for every i, on centred rows so that nothing cancels far from the origin."""
    xc = x - x.mean(0, keepdim=True)
    return weights.sum(1, keepdim=True) * xc - weights @ xc


def squared_euclidean_matrix_vjp(x: Tensor, dist: Tensor, grad: Tensor) -> Tensor:
    """Gradient with respect to ``x`` of ``Σ grad ⊙ squared_euclidean_matrix(x)``, without an autograd graph."""
    s = _range_scale(x)
    return _pull_back(x * s, grad + grad.T).mul_(2.0).div_(s)


def euclidean_matrix_vjp(x: Tensor, dist: Tensor, grad: Tensor) -> Tensor:
    """Same for ``euclidean_matrix`` (``dist`` is its value); 0 where two points coincide, like ``safe_sqrt``."""
    w = grad + grad.T
    w.div_(dist).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    s = _range_scale(x)
    return _pull_back(x * s, w).div_(s)


def cosine_matrix_vjp(x: Tensor, dist: Tensor, grad: Tensor) -> Tensor:
    """Same for ``cosine_matrix``: ``∂/∂x̂_i = −Σ_j (G + Gᵀ)_ij x̂_j``, then through the normalisation."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        unit = _unit(leaf)
        (gx,) = torch.autograd.grad(unit, leaf, -((grad + grad.T) @ unit.detach()))
    return gx


def _squared_paired_scaled(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    s = _range_scale(x, y)
    diff = x * s - y * s
    return (diff * diff).sum(-1), s


def squared_euclidean_paired(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ``||x_i - y_i||²`` for (N, D) inputs, computed from the difference (exact near zero)."""
    d2, s = _squared_paired_scaled(x, y)
    return d2 / s / s


def euclidean_paired(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ``||x_i - y_i||`` with gradient 0 where ``x_i == y_i``."""
    d2, s = _squared_paired_scaled(x, y)
    return safe_sqrt(d2) / s


def cosine_paired(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ``1 - cos(x_i, y_i)``, clamped to [0, 2]."""
    return (1.0 - (_unit(x) * _unit(y)).sum(-1)).clamp(0.0, 2.0)


def squared_euclidean_ranking(x: Tensor) -> tuple[Tensor, Tensor]:
    """A cheap matrix ``R`` and row offsets ``o`` with ``R[i, j] + o[i] = s²·||x_i - x_j||²`` (approximately), where
    ``s`` is 1 unless the batch's squares would leave the dtype's range (then a batch-wide power of scale).

    Within a row, ``R`` orders the candidates exactly as the distance does, so miners can take arg-max/arg-min on
    it and skip the row-constant term, the clamp and the square root. Not differentiable (call under no_grad).
    Computed at the safe scale (the order, within and across rows, is that of the distance).
    """
    xc, _ = _shift(x * _range_scale(x), None)
    sq = (xc * xc).sum(1)
    ranking = torch.addmm(sq[None, :].expand(x.shape[0], -1), xc, xc.T, alpha=-2.0)
    return ranking, sq


def squared_euclidean_ranking_factors(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(L, R, o) with ``(L @ R.T)[i, j] + o[i] = ||x_i - x_j||²``: ``L = [x̃, 1]``, ``R = [-2x̃, ||x̃||²]`` for the
    mean-centred ``x̃``. Folding the column term into the GEMM saves a pass over the N×N result. Computed at the
    safe scale, like ``squared_euclidean_ranking``."""
    xc, _ = _shift(x * _range_scale(x), None)
    sq = (xc * xc).sum(1, keepdim=True)
    left = torch.cat([xc, torch.ones_like(sq)], 1)
    right = torch.cat([xc * -2.0, sq], 1)
    return left, right, sq.squeeze(1)


def cosine_ranking_factors(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(L, R, o) with ``(L @ R.T)[i, j] + o[i] = 1 - cos(x_i, x_j)``."""
    xn = _unit(x)
    return xn, -xn, torch.ones(x.shape[0], dtype=x.dtype, device=x.device)


def cosine_ranking(x: Tensor) -> tuple[Tensor, Tensor]:
    """``R = -cos`` and offsets 1, so ``R + o`` is the cosine distance."""
    xn = _unit(x)
    return torch.mm(xn, xn.T).neg_(), torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
