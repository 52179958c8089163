"""The two strategy interfaces the functional losses take: a distance and a margin function."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["DistanceLike", "MarginLike"]


@runtime_checkable
class DistanceLike(Protocol):
    """What a distance provides (see [`tripletkit.distances`][tripletkit.distances] for the built-in ones)."""

    def matrix(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(N, M) distances, differentiable."""
        ...

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        """(N,) row-wise distances, differentiable and exact near zero."""
        ...

    def ranking(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, o): ``R[i, j] + o[i]`` is a monotone increasing function of ``d(x_i, x_j)``; no gradient."""
        ...

    def ranking_factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """Optional (L, R, o) with ``ranking = L @ R.T``; None when the distance has no such form."""
        ...


@runtime_checkable
class MarginLike(Protocol):
    """A margin function ``h(gap) = activation(gap + margin)``."""

    margin: float

    def activation(self, t: Tensor) -> Tensor: ...

    def activation_grad(self, t: Tensor) -> Tensor: ...

    def __call__(self, gap: Tensor) -> Tensor: ...
