"""Margin functions: how a triplet's gap ``d(a, p) - d(a, n)`` becomes a loss.

* ``hinge``: ``[m + gap]₊ = max(0, m + gap)`` (Schroff et al. 2015; Hermans et al. 2017 eq. 1).
* ``softplus`` (the *soft margin*, Hermans et al. 2017 sec. 3.1): ``ln(1 + exp(m + gap))``, usually with m = 0.
  With a temperature τ: ``τ·ln(1 + exp((m + gap)/τ))`` (τ = 1 is the soft margin; as τ → 0 it tends to the hinge).
  Computed as ``logaddexp(t, 0) = max(t, 0) + log1p(exp(-|t|))``, which is finite for every finite ``t`` and whose gradient
  (the logistic sigmoid) never overflows; ``log1p(exp(t))`` returns inf and a NaN gradient above t ≈ 88.7 in float32.

The *collapse value* is the loss when every embedding is the same point (``gap = 0``): ``m`` for the hinge,
``ln(1 + e^m)`` for the soft margin (ln 2 ≈ 0.693 at m = 0), ``τ·ln(1 + e^(m/τ))`` with a temperature. A loss
that sits there means the model has collapsed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "hinge",
    "hinge_grad",
    "softplus",
    "softplus_grad",
    "hinge_collapse_value",
    "softplus_collapse_value",
]


def hinge(t: Tensor) -> Tensor:
    """``max(0, t)`` where ``t = m + gap``."""
    return torch.relu(t)  # relu's subgradient at 0 is 0, matching hinge_grad


def hinge_grad(t: Tensor) -> Tensor:
    """d hinge / d t: 1 where ``t > 0``, else 0 (the subgradient 0 at the kink, as autograd's relu)."""
    return (t > 0).to(t.dtype)


def softplus(t: Tensor, temperature: float = 1.0) -> Tensor:
    """Numerically stable ``τ·ln(1 + exp(t/τ))`` (τ = ``temperature``, default 1); ``-inf`` maps to 0."""
    if temperature != 1.0:
        return temperature * softplus(t / temperature)
    # logaddexp(t, 0) = max(t, 0) + log1p(exp(-|t|)) with a sigmoid gradient; exact also for t in (20, 40),
    # where F.softplus's linear threshold would drop exp(-t). Written out as two clamped branches: logaddexp has no
    # XLA lowering, and the clamps keep the unused branch finite (exp never overflows) and give sigmoid(0) = 1/2 at
    # the collapse point t = 0.
    pos, neg = t.clamp_min(0), t.clamp_max(0)
    return torch.where(t > 0, pos + torch.log1p(torch.exp(-pos)), torch.log1p(torch.exp(neg)))


def softplus_grad(t: Tensor, temperature: float = 1.0) -> Tensor:
    """d softplus / d t = sigmoid(t/τ), which is 0 at ``-inf``."""
    return torch.sigmoid(t if temperature == 1.0 else t / temperature)


def hinge_collapse_value(margin: float) -> float:
    return float(margin)


def softplus_collapse_value(margin: float, temperature: float = 1.0) -> float:
    m = margin / temperature
    return temperature * (max(m, 0.0) + math.log1p(math.exp(-abs(m))))
