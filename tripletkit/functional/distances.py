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
"""

from __future__ import annotations

import torch
from torch import Tensor

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
]


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf/NaN) where ``x <= 0``."""
    positive = x > 0
    # The inner where keeps sqrt's backward away from 0: the outer where alone would still give 0 * inf = NaN.
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


_COSINE_EPS = 1e-12


def _unit(x: Tensor) -> Tensor:
    # Unlike F.normalize (x / max(||x||, eps)), vectors under eps become exactly 0 instead of a scaled-up stub,
    # so the cosine distance is scale-invariant down to eps and well defined below it.
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.where(norm >= _COSINE_EPS, x / norm.clamp_min(_COSINE_EPS), torch.zeros_like(x))


def _shift(x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    # Translation leaves Euclidean distances unchanged; detaching the shift keeps the backward cheap and exact.
    if y is None:
        center = x.detach().mean(0, keepdim=True)
        xc = x - center
        return xc, xc
    center = torch.cat([x.detach(), y.detach()]).mean(0, keepdim=True)
    return x - center, y - center


def squared_euclidean_matrix(x: Tensor, y: Tensor | None = None) -> Tensor:
    """(N, M) matrix of squared Euclidean distances; ``y=None`` means ``y = x`` (then the diagonal is exactly 0)."""
    xc, yc = _shift(x, y)
    sx = (xc * xc).sum(1)
    sy = sx if y is None else (yc * yc).sum(1)
    d2 = torch.addmm(sx[:, None] + sy[None, :], xc, yc.T, alpha=-2.0)
    d2 = d2.clamp_min(0.0)
    if y is None:
        d2 = d2.fill_diagonal_(0.0)
    return d2


def euclidean_matrix(x: Tensor, y: Tensor | None = None) -> Tensor:
    """(N, M) matrix of Euclidean distances with a finite (zero) gradient where two points coincide."""
    return safe_sqrt(squared_euclidean_matrix(x, y))


def cosine_matrix(x: Tensor, y: Tensor | None = None) -> Tensor:
    """(N, M) matrix of cosine distances ``1 - cos``, clamped to [0, 2]."""
    xn = _unit(x)
    yn = xn if y is None else _unit(y)
    d = torch.addmm(torch.ones((), dtype=xn.dtype, device=xn.device), xn, yn.T, alpha=-1.0).clamp(0.0, 2.0)
    if y is None:
        d = d.fill_diagonal_(0.0)
    return d


def squared_euclidean_paired(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ``||x_i - y_i||²`` for (N, D) inputs, computed from the difference (exact near zero)."""
    diff = x - y
    return (diff * diff).sum(-1)


def euclidean_paired(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ``||x_i - y_i||`` with gradient 0 where ``x_i == y_i``."""
    return safe_sqrt(squared_euclidean_paired(x, y))


def cosine_paired(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ``1 - cos(x_i, y_i)``, clamped to [0, 2]."""
    return (1.0 - (_unit(x) * _unit(y)).sum(-1)).clamp(0.0, 2.0)


def squared_euclidean_ranking(x: Tensor) -> tuple[Tensor, Tensor]:
    """A cheap matrix ``R`` and row offsets ``o`` with ``R[i, j] + o[i] = ||x_i - x_j||²`` (approximately).

    Within a row, ``R`` orders the candidates exactly as the distance does, so miners can take arg-max/arg-min on
    it and skip the row-constant term, the clamp and the square root. Not differentiable (call under no_grad).
    """
    xc, _ = _shift(x, None)
    sq = (xc * xc).sum(1)
    ranking = torch.addmm(sq[None, :].expand(x.shape[0], -1), xc, xc.T, alpha=-2.0)
    return ranking, sq


def squared_euclidean_ranking_factors(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(L, R, o) with ``(L @ R.T)[i, j] + o[i] = ||x_i - x_j||²``: ``L = [x̃, 1]``, ``R = [-2x̃, ||x̃||²]`` for the
    mean-centred ``x̃``. Folding the column term into the GEMM saves a pass over the N×N result."""
    xc, _ = _shift(x, None)
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
