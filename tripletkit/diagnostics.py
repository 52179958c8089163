"""Collapse diagnostics: is the embedding collapsing to a single point?

A triplet loss whose embeddings have collapsed sits at its collapse value (the margin α for the hinge, ln 2 for the
soft margin), but so can a loss that is merely stuck, and the study behind tripletkit found collapse "not immediately
evident when directly observing the loss". [`CollapseMonitor`][tripletkit.diagnostics.CollapseMonitor] therefore judges from the embeddings themselves.

Statistics ([`embedding_stats()`][tripletkit.diagnostics.embedding_stats]), for a batch of N embeddings:

* ``mean_distance``: mean Euclidean distance over the N(N − 1)/2 pairs;
* ``spread``: mean over dimensions of the per-dimension standard deviation (``min_spread``: the smallest one);
* ``effective_rank``: ``exp(H(p))`` with ``p`` the normalised singular values of the centred embeddings (Roy and
  Vetterli 2007): D for isotropic embeddings, 1 when they lie on a line, 0 when they coincide;
* ``at_collapse_fraction`` (with labels): the fraction of anchors whose batch-hard triplet loss is within ``loss_tol``
  (relative) of the collapse value, i.e. whose hardest positive and hardest negative are equally far.

The monitor says *collapsed* when the mean distance has shrunk below ``relative_tol`` × its reference (the first
batch it saw, or ``reference_distance``), or below ``absolute_tol`` × the loss's gap scale (the margin for the
hinge, 1 for the soft margin: distances that small are invisible to the loss), or when ``at_collapse_fraction`` ≥
``fraction_tol``.

Example::

    >>> import torch
    >>> monitor = CollapseMonitor("hinge", action="none")
    >>> labels = torch.arange(8).repeat_interleave(4)
    >>> monitor.update(torch.randn(32, 16), labels).collapsed
    False
    >>> monitor.update(torch.ones(32, 16) + 1e-6 * torch.randn(32, 16), labels).collapsed
    True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ._validation import check_embeddings, check_labels
from .distances import DISTANCES, Distance
from .functional.miners import mine_batch_hard
from .margins import MARGINS, HingeMargin, MarginFunction

__all__ = ["CollapseMonitor", "CollapseError", "CollapseWarning", "EmbeddingStats", "embedding_stats"]


class CollapseWarning(UserWarning):
    """The embeddings look collapsed."""


class CollapseError(RuntimeError):
    """Raised by a ``CollapseMonitor(action="raise")`` when the embeddings collapse."""


@dataclass
class EmbeddingStats:
    """One verdict of a [`CollapseMonitor`][tripletkit.diagnostics.CollapseMonitor]: the statistics of
    [`embedding_stats()`][tripletkit.diagnostics.embedding_stats], the loss, the distance relative to the reference,
    and whether (and why) the embeddings count as collapsed."""

    step: int
    n: int
    mean_distance: float
    spread: float
    min_spread: float
    effective_rank: float
    mean_norm: float
    at_collapse_fraction: float | None
    loss: float | None
    relative_distance: float
    collapsed: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def embedding_stats(
    embeddings: Tensor,
    labels: Tensor | None = None,
    margin_fn: MarginFunction | None = None,
    loss_tol: float = 0.01,
    distance: str | dict | Distance = "euclidean",
) -> dict[str, Any]:
    """The raw statistics (see the module docstring), as Python floats (``at_collapse_fraction``: None without
    labels).

    ``at_collapse_fraction`` scores each anchor's batch-hard triplet with ``margin_fn`` and ``distance``: the
    loss's own, so that "at the collapse value" means what the loss sees.
    """
    distance = DISTANCES.build(distance)
    check_embeddings(embeddings)
    x = embeddings.detach().double()
    n = x.shape[0]
    centred = x - x.mean(0, keepdim=True)
    dist = torch.cdist(centred, centred)
    mean_distance = float(dist.sum() / (n * (n - 1)))
    std = x.std(0, unbiased=True)
    sv = torch.linalg.svdvals(centred)
    total = float(sv.sum())
    if total <= 0.0:
        effective_rank = 0.0
    else:
        p = sv / total
        p = p[p > 0]
        effective_rank = float(torch.exp(-(p * p.log()).sum()))
    at_collapse = None
    if labels is not None:
        labels = check_labels(labels, n, device=x.device)
        margin_fn = margin_fn or HingeMargin()
        t = mine_batch_hard(x, labels, distance=distance)
        d_ap = distance.paired(x, x[t.positive])
        d_an = distance.paired(x, x[t.negative])
        per_anchor = margin_fn(d_ap - d_an)
        c = margin_fn.collapse_value
        near = (per_anchor - c).abs() <= loss_tol * max(abs(c), 1e-12)
        valid = t.valid
        at_collapse = float((near & valid).sum() / valid.sum()) if bool(valid.any()) else None
    return {
        "mean_distance": mean_distance,
        "spread": float(std.mean()),
        "min_spread": float(std.min()),
        "effective_rank": effective_rank,
        "mean_norm": float(x.norm(dim=1).mean()),
        "at_collapse_fraction": at_collapse,
    }


class CollapseMonitor:
    """Feed it embeddings (and labels, and the loss) every few steps; it says when they collapse.

    Args:
        margin_fn: the loss's margin function (name, config, object) or the loss itself: gives the collapse value
            and the gap scale (and, for a loss, the distance of ``at_collapse_fraction``).
        distance: the distance of ``at_collapse_fraction``; default: the loss's, else Euclidean.
        relative_tol: collapsed if ``mean_distance ≤ relative_tol × reference_distance``.
        absolute_tol: collapsed if ``mean_distance ≤ absolute_tol × gap scale``.
        fraction_tol: collapsed if ``at_collapse_fraction ≥ fraction_tol`` (needs labels).
        loss_tol: relative tolerance for an anchor's loss to count as "at the collapse value".
        reference_distance: the healthy mean distance; default: the first batch's.
        action: ``"warn"`` (a [`CollapseWarning`][tripletkit.diagnostics.CollapseWarning] on each transition into collapse), ``"raise"``
            ([`CollapseError`][tripletkit.diagnostics.CollapseError]) or ``"none"``.

    ``update`` costs an N×N distance matrix and an SVD of an N×D matrix: call it every few hundred steps, not
    every step, on large batches. ``history`` keeps every [`EmbeddingStats`][tripletkit.diagnostics.EmbeddingStats].
    """

    def __init__(
        self,
        margin_fn: object = "hinge",
        *,
        relative_tol: float = 0.05,
        absolute_tol: float = 0.05,
        fraction_tol: float = 0.9,
        loss_tol: float = 0.01,
        reference_distance: float | None = None,
        action: str = "warn",
        distance: str | dict | Distance | None = None,
    ) -> None:
        if distance is None:
            distance = getattr(margin_fn, "distance", "euclidean")  # a tripletkit loss carries its distance
        self.distance: Distance = DISTANCES.build(distance)
        if hasattr(margin_fn, "margin_fn"):
            margin_fn = margin_fn.margin_fn  # a tripletkit loss
        self.margin_fn: MarginFunction = MARGINS.build(margin_fn)  # type: ignore[arg-type]
        for name, value in (("relative_tol", relative_tol), ("absolute_tol", absolute_tol), ("loss_tol", loss_tol)):
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (0 < fraction_tol <= 1):
            raise ValueError(f"fraction_tol must be in (0, 1], got {fraction_tol!r}")
        if action not in ("warn", "raise", "none"):
            raise ValueError(f"action must be 'warn', 'raise' or 'none', got {action!r}")
        if reference_distance is not None and not (reference_distance > 0 and math.isfinite(reference_distance)):
            raise ValueError(f"reference_distance must be a positive number, got {reference_distance!r}")
        self.relative_tol = float(relative_tol)
        self.absolute_tol = float(absolute_tol)
        self.fraction_tol = float(fraction_tol)
        self.loss_tol = float(loss_tol)
        self.reference_distance = reference_distance
        self.action = action
        self.history: list[EmbeddingStats] = []
        self._collapsed = False

    @property
    def gap_scale(self) -> float:
        """The gap size the loss can see: the margin for a hinge with a positive margin, else 1."""
        if isinstance(self.margin_fn, HingeMargin) and self.margin_fn.margin > 0:
            return self.margin_fn.margin
        return 1.0

    @property
    def collapsed(self) -> bool:
        return self._collapsed

    def update(
        self, embeddings: Tensor, labels: Tensor | None = None, loss: float | Tensor | None = None
    ) -> EmbeddingStats:
        raw = embedding_stats(embeddings, labels, self.margin_fn, self.loss_tol, self.distance)
        mean_distance = raw["mean_distance"]
        if self.reference_distance is None and mean_distance > 0:
            self.reference_distance = mean_distance
        reference = self.reference_distance or 0.0
        relative = mean_distance / reference if reference > 0 else 0.0
        reasons = []
        if reference > 0 and mean_distance <= self.relative_tol * reference:
            reasons.append(f"mean distance {mean_distance:.3g} ≤ {self.relative_tol} × reference {reference:.3g}")
        if mean_distance <= self.absolute_tol * self.gap_scale:
            reasons.append(f"mean distance {mean_distance:.3g} ≤ {self.absolute_tol} × gap scale {self.gap_scale:.3g}")
        fraction = raw["at_collapse_fraction"]
        if fraction is not None and fraction >= self.fraction_tol:
            reasons.append(f"{fraction:.0%} of anchors sit at the collapse value {self.margin_fn.collapse_value:.4g}")
        if isinstance(loss, Tensor):
            loss = float(loss.detach())
        stats = EmbeddingStats(
            step=len(self.history),
            n=embeddings.shape[0],
            mean_distance=mean_distance,
            spread=raw["spread"],
            min_spread=raw["min_spread"],
            effective_rank=raw["effective_rank"],
            mean_norm=raw["mean_norm"],
            at_collapse_fraction=fraction,
            loss=None if loss is None else float(loss),
            relative_distance=relative,
            collapsed=bool(reasons),
            reason="; ".join(reasons),
        )
        self.history.append(stats)
        was = self._collapsed
        self._collapsed = stats.collapsed
        if stats.collapsed and not was:
            message = f"embeddings collapsed at update {stats.step}: {stats.reason}"
            if self.action == "raise":
                raise CollapseError(message)
            if self.action == "warn":
                warnings.warn(message, CollapseWarning, stacklevel=2)
        return stats
