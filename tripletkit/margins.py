"""Registered margin functions (``MARGINS``): ``hinge`` and ``softplus`` (the soft margin).

A margin function maps a triplet's gap ``gap = d(a, p) − d(a, n)`` to its loss:

* ``hinge``: ``h(gap) = [m + gap]₊``, default ``m = 0.2``; collapse value ``m``.
* ``softplus``: ``h(gap) = ln(1 + exp(m + gap))``, default ``m = 0`` (Hermans et al.'s soft margin); collapse value
  ``ln(1 + e^m)`` (ln 2 at m = 0). Finite with a finite gradient for every finite gap. ``temperature=τ`` gives
  ``τ·ln(1 + exp((m + gap)/τ))``, collapse value ``τ·ln(1 + e^(m/τ))``.

The *collapse value* (``h(0)``) is what the loss settles at when all embeddings coincide; the stepped-batch scheduler
and the collapse monitor read it from here instead of hard-coding it.

Example::

    >>> import torch
    >>> from tripletkit import MARGINS
    >>> MARGINS.build("softplus").collapse_value
    0.6931471805599453
    >>> MARGINS.build("hinge", margin=0.5)(torch.tensor([-1.0, 0.0, 1.0]))
    tensor([0.0000, 0.5000, 1.5000])
"""

from __future__ import annotations

from torch import Tensor

from ._validation import check_margin, check_positive
from .functional import margins as F
from .registry import Registry

__all__ = ["MARGINS", "MarginFunction", "HingeMargin", "SoftplusMargin"]

MARGINS: Registry[MarginFunction] = Registry(
    "margin function",
    check=lambda m: (
        callable(m) and all(hasattr(m, a) for a in ("margin", "collapse_value", "activation", "activation_grad"))
    ),
    expected="MarginFunction-like object (margin, collapse_value, activation, activation_grad)",
)


class MarginFunction:
    """Base class: ``h(gap) = activation(gap + margin)``."""

    default_margin = 0.0

    def __init__(self, margin: float | None = None) -> None:
        self.margin = check_margin(self.default_margin if margin is None else margin)

    def activation(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def activation_grad(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def collapse_value(self) -> float:
        """The loss of a triplet whose positive and negative are equally far (``gap = 0``)."""
        raise NotImplementedError

    def __call__(self, gap: Tensor) -> Tensor:
        return self.activation(gap + self.margin)

    def _params(self) -> dict[str, float]:
        """What defines the function beside its type (equality, hash and repr)."""
        return {"margin": self.margin}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self._params().items())})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._params() == other._params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), *self._params().items()))


@MARGINS.register("hinge")
class HingeMargin(MarginFunction):
    """``[m + gap]₊``; default margin 0.2."""

    default_margin = 0.2

    def activation(self, t: Tensor) -> Tensor:
        return F.hinge(t)

    def activation_grad(self, t: Tensor) -> Tensor:
        return F.hinge_grad(t)

    @property
    def collapse_value(self) -> float:
        return F.hinge_collapse_value(self.margin)


@MARGINS.register("softplus")
class SoftplusMargin(MarginFunction):
    """``τ·ln(1 + exp((m + gap)/τ))``, computed stably; default margin 0 and temperature τ = 1 (the soft margin).

    Why a temperature: the soft margin never drops a triplet, and when distances are bounded (an L2-normalised
    embedding: ``gap`` in [−2, 2]) even the easiest triplet keeps ``sigmoid(−2) ≈ 0.12`` of a hard one's gradient
    weight. A temperature τ < 1 scales that to ``sigmoid(−2/τ)`` (2e-9 at τ = 0.1) while staying smooth; as τ → 0
    the function tends to the hinge ``[m + gap]₊``. The collapse value is ``τ·ln(1 + e^(m/τ))`` (τ·ln 2 at m = 0).

    Args:
        margin: m (≥ 0).
        temperature: τ (finite, > 0).
    """

    default_margin = 0.0

    def __init__(self, margin: float | None = None, temperature: float = 1.0) -> None:
        super().__init__(margin)
        self.temperature = check_positive(temperature, name="temperature")

    def _params(self) -> dict[str, float]:
        # τ = 1 keeps the repr of the plain soft margin
        return {"margin": self.margin} | ({} if self.temperature == 1.0 else {"temperature": self.temperature})

    def activation(self, t: Tensor) -> Tensor:
        return F.softplus(t, self.temperature)

    def activation_grad(self, t: Tensor) -> Tensor:
        return F.softplus_grad(t, self.temperature)

    @property
    def collapse_value(self) -> float:
        return F.softplus_collapse_value(self.margin, self.temperature)
