"""Registered distances (``DISTANCES``): ``euclidean``, ``sqeuclidean``, ``cosine``.

Each is a small stateless object with three views of the same distance, used by the losses and miners:

* ``matrix(x, y=None)``: the (N, M) matrix, differentiable, accurate near zero (see
  [`tripletkit.functional.distances`][tripletkit.functional.distances]);
* ``paired(x, y)``: row-wise distances from the differences, exact near zero;
* ``ranking(x)``: a cheap no-gradient matrix that orders each row like the distance, for mining.

Example::

    >>> import torch
    >>> from tripletkit import DISTANCES
    >>> d = DISTANCES.build("euclidean")
    >>> d.matrix(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[0., 5.],
            [5., 0.]])
"""

from __future__ import annotations

from torch import Tensor

from .functional import distances as F
from .registry import Registry

__all__ = ["DISTANCES", "Distance", "EuclideanDistance", "SquaredEuclideanDistance", "CosineDistance"]

DISTANCES: Registry[Distance] = Registry(
    "distance",
    check=lambda d: all(callable(getattr(d, m, None)) for m in ("matrix", "paired", "ranking")),
    expected="object with matrix, paired and ranking methods",
)


class Distance:
    """Base class; subclasses implement ``matrix``, ``paired`` and ``ranking``."""

    def matrix(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def ranking(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.matrix(x).detach()
        return m, m.new_zeros(m.shape[0])

    def ranking_factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """Optional (L, R, o) with ``ranking = L @ R.T`` (lets miners work in cache-sized row blocks)."""
        return None

    def matrix_vjp(self, x: Tensor, dist: Tensor, grad: Tensor) -> Tensor | None:
        """Optional: the gradient of ``Σ grad ⊙ matrix(x)`` with respect to ``x``, given ``dist = matrix(x)``.

        Lets the batch-all loss skip the autograd graph of the N×N matrix. None means "use autograd".
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


@DISTANCES.register("euclidean")
class EuclideanDistance(Distance):
    """``||x − y||`` (plain, not squared); gradient 0 where two points coincide."""

    def matrix(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return F.euclidean_matrix(x, y)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        return F.euclidean_paired(x, y)

    def ranking(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.squared_euclidean_ranking(x)

    def matrix_vjp(self, x: Tensor, dist: Tensor, grad: Tensor) -> Tensor:
        return F.euclidean_matrix_vjp(x, dist, grad)

    def ranking_factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return F.squared_euclidean_ranking_factors(x)


@DISTANCES.register("sqeuclidean")
class SquaredEuclideanDistance(Distance):
    """``||x − y||²``."""

    def matrix(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return F.squared_euclidean_matrix(x, y)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        return F.squared_euclidean_paired(x, y)

    def ranking(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.squared_euclidean_ranking(x)

    def matrix_vjp(self, x: Tensor, dist: Tensor, grad: Tensor) -> Tensor:
        return F.squared_euclidean_matrix_vjp(x, dist, grad)

    def ranking_factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return F.squared_euclidean_ranking_factors(x)


@DISTANCES.register("cosine")
class CosineDistance(Distance):
    """``1 − cos(x, y)`` in [0, 2]; a zero vector is at distance 1 from everything but itself."""

    def matrix(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return F.cosine_matrix(x, y)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cosine_paired(x, y)

    def ranking(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.cosine_ranking(x)

    def matrix_vjp(self, x: Tensor, dist: Tensor, grad: Tensor) -> Tensor:
        return F.cosine_matrix_vjp(x, dist, grad)

    def ranking_factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return F.cosine_ranking_factors(x)
