"""Ranking metrics with the HPatches benchmark's conventions, vectorised.

Definitions (the reference python benchmark's, ``hpatches-benchmark/python/utils/metrics.py``, restated):

1. ``numpos`` (optional, ≥ the positives present) appends ``numpos − p`` positives with score −∞; p becomes numpos.
2. Entries are ordered by descending score; ``ties="reference"`` keeps input order among equal scores (a stable sort,
   as the benchmark), ``ties="pessimistic"`` puts negatives before positives among equal scores.
3. Entries with score −∞ are never retrieved: the curve stops at the last finite score.
4. ``tp``, ``fp``: cumulative counts along that order, each with a leading 0.
5. ``recall = tp / max(p, 1e-10)``, ``precision = max(tp, 1e-10) / max(tp + fp, 1e-10)`` (so the curve starts at
   precision 1), ``tpr = tp / p``, ``fpr = fp / n`` (each denominator floored at 1e-10).
6. AP = trapezoidal area of precision over recall; ROC-AUC = trapezoidal area of tpr over fpr.

Note that this AP is the benchmark's trapezoidal "mAP", not TREC's non-interpolated AP; with ``ties="reference"``
the numbers equal the benchmark's (and published ones) to rounding.

Example::

    >>> import numpy as np
    >>> round(average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])), 4)
    0.7917
    >>> average_precision(np.array([0.5, 0.5]), np.array([1, 0]))   # the positive comes first: reference order
    1.0
    >>> round(average_precision(np.array([0.5, 0.5]), np.array([1, 0]), ties="pessimistic"), 4)
    0.25
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "TIES",
    "precision_recall",
    "average_precision",
    "roc_curve",
    "roc_auc",
    "average_precision_from_ranks",
    "negatives_first_ap_auc",
    "matching_average_precision",
]

TIES = ("reference", "pessimistic")
_SMALL = 1e-10
_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009  numpy < 2.0 has only trapz


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be 'reference' or 'pessimistic', got {ties!r}")


def _tp_fp(scores: np.ndarray, labels: np.ndarray, numpos: int | None, ties: str):
    _check_ties(ties)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.shape[0]} vs {labels.shape[0]}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    p = int(labels.sum())
    n = labels.size - p
    if numpos is not None:
        if numpos < p:
            raise ValueError(f"numpos={numpos} is smaller than the {p} positives in labels")
        extra = numpos - p
        scores = np.concatenate([scores, np.full(extra, -np.inf)])
        labels = np.concatenate([labels, np.ones(extra, dtype=bool)])
        p = numpos
    if ties == "reference":
        order = np.argsort(-scores, kind="stable")
    else:
        # primary key: descending score; secondary: negatives (label 0) first
        order = np.lexsort((labels.astype(np.int8), -scores))
    finite = np.flatnonzero(scores[order] > -np.inf)
    stop = int(finite[-1]) + 1 if finite.size else 0
    ranked = labels[order[:stop]]
    tp = np.concatenate([[0], np.cumsum(ranked)]).astype(np.float64)
    fp = np.concatenate([[0], np.cumsum(~ranked)]).astype(np.float64)
    return tp, fp, p, n


def precision_recall(
    scores: np.ndarray, labels: np.ndarray, numpos: int | None = None, ties: str = "reference"
) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) curves with the benchmark's conventions (see the module docstring)."""
    tp, fp, p, _ = _tp_fp(scores, labels, numpos, ties)
    recall = tp / max(p, _SMALL)
    precision = np.maximum(tp, _SMALL) / np.maximum(tp + fp, _SMALL)
    return precision, recall


def average_precision(
    scores: np.ndarray, labels: np.ndarray, numpos: int | None = None, ties: str = "reference"
) -> float:
    """Trapezoidal area under the precision-recall curve (the benchmark's "AP")."""
    precision, recall = precision_recall(scores, labels, numpos, ties)
    return float(_trapezoid(precision, recall))


def roc_curve(scores: np.ndarray, labels: np.ndarray, ties: str = "reference") -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) with the benchmark's conventions."""
    tp, fp, p, n = _tp_fp(scores, labels, None, ties)
    return fp / max(n, _SMALL), tp / max(p, _SMALL)


def roc_auc(scores: np.ndarray, labels: np.ndarray, ties: str = "reference") -> float:
    """Trapezoidal area under the ROC curve."""
    fpr, tpr = roc_curve(scores, labels, ties)
    return float(_trapezoid(tpr, fpr))


def average_precision_from_ranks(ranks: np.ndarray, numpos: int | np.ndarray) -> np.ndarray:
    """AP from the 1-based ranks of the retrieved positives, batched: exactly [`average_precision()`][tripletkit.metrics.average_precision]'s value.

    With the positives at ranks ``r_1 < r_2 < …`` (each row of ``ranks``, sorted or not; entries ≤ 0 mean "not
    retrieved"), recall steps by ``1/p`` at each ``r_j`` while precision moves from ``max(j−1, ε)/max(r_j−1, ε)`` to
    ``j/r_j``; segments between positives have constant recall and add nothing, so

        AP = 1/p · Σ_j ( max(j−1, ε)/max(r_j−1, ε) + j/r_j ) / 2.

    This makes an AP cost O(#positives) once the ranks are known, instead of a sort of the whole list.
    """
    ranks = np.sort(np.asarray(ranks, dtype=np.float64), axis=-1)
    retrieved = ranks > 0
    # unretrieved (≤ 0) entries sort first: count them and shift so that j counts retrieved positives only
    missing = (~retrieved).sum(-1, keepdims=True)
    j = np.arange(1, ranks.shape[-1] + 1, dtype=np.float64) - missing
    before = np.maximum(j - 1, _SMALL) / np.maximum(ranks - 1, _SMALL)
    after = j / np.where(retrieved, ranks, 1.0)
    terms = np.where(retrieved, (before + after) / 2, 0.0)
    return terms.sum(-1) / np.maximum(np.asarray(numpos, dtype=np.float64), _SMALL)


def negatives_first_ap_auc(
    neg_dist: np.ndarray, pos_dist: np.ndarray, ap_positives: int | None = None, ties: str = "reference"
) -> tuple[float, float]:
    """HPatches verification's two numbers from distances, without sorting the concatenated lists.

    The benchmark scores the list ``[negatives…, positives…]`` by −distance: AP over all negatives followed by the
    first ``ap_positives`` positives (default: all), ROC-AUC over all of both. Negatives come first, so the
    reference order (stable) and the pessimistic one agree on ties: a negative at the same distance ranks ahead of
    a positive. Hence, with the negatives' distances sorted once,

    * the k-th nearest of the AP's positives has rank ``k + #{negatives ≤ its distance}`` (then
      [`average_precision_from_ranks()`][tripletkit.metrics.average_precision_from_ranks]);
    * a negative adds ``#{positives < its distance} / (n·p)`` to the AUC (the ROC's horizontal steps);

    and an infinite distance (score −∞) is never retrieved, as in [`average_precision()`][tripletkit.metrics.average_precision].
    Equal to [`average_precision()`][tripletkit.metrics.average_precision] and [`roc_auc()`][tripletkit.metrics.roc_auc] on the
    concatenated lists to rounding (a few ulps), at three sorts of the parts instead of two stable argsorts of the
    whole lists.
    """
    _check_ties(ties)
    neg = np.asarray(neg_dist, dtype=np.float64).reshape(-1)
    pos = np.asarray(pos_dist, dtype=np.float64).reshape(-1)
    if np.isnan(neg).any() or np.isnan(pos).any():
        raise ValueError("distances contain NaN")
    k = len(pos) if ap_positives is None else ap_positives
    if not 0 <= k <= len(pos):
        raise ValueError(f"ap_positives={k} is not in 0..{len(pos)}")
    neg_sorted = np.sort(neg)
    sub = np.sort(pos[:k])
    finite = sub < np.inf
    ranks = np.where(finite, np.arange(1, k + 1) + np.searchsorted(neg_sorted, sub, side="right"), 0)
    ap = float(average_precision_from_ranks(ranks, k)) if k else 0.0
    pos_sorted = np.sort(pos)
    neg_finite = neg_sorted[neg_sorted < np.inf]
    before = np.searchsorted(pos_sorted, neg_finite, side="left").sum(dtype=np.float64)
    auc = float(before / max(len(neg), _SMALL) / max(len(pos), _SMALL))
    return ap, auc


def matching_average_precision(dist: np.ndarray, ties: str = "reference") -> tuple[float, float]:
    """HPatches image matching for one image pair: (AP, success rate).

    ``dist[i, j]`` = distance of reference patch i to target patch j; patch i's true match is j = i. Each reference
    patch takes its nearest neighbour (``reference``: the first index among equal distances, as ``argmin``;
    ``pessimistic``: a tie with a wrong patch counts as wrong); AP over the N matches scored by −distance with
    ``numpos = N`` (a wrong match is a missed positive).
    """
    _check_ties(ties)
    dist = np.asarray(dist, dtype=np.float64)
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != n:
        raise ValueError(f"matching needs a square distance matrix, got shape {dist.shape}")
    nn = np.argmin(dist, axis=1)
    nn_dist = dist[np.arange(n), nn]
    return matching_from_neighbours(nn, nn_dist, (dist == nn_dist[:, None]).sum(1) == 1, ties)


def matching_from_neighbours(
    nn: np.ndarray, nn_dist: np.ndarray, unique: np.ndarray, ties: str = "reference"
) -> tuple[float, float]:
    """[`matching_average_precision()`][tripletkit.metrics.matching_average_precision] from each reference patch's nearest neighbour: its index ``nn[i]``, its
    distance, and whether that minimum is unique (used by ``pessimistic``). For callers that find the neighbours
    without a full distance matrix."""
    _check_ties(ties)
    n = len(nn)
    correct = np.asarray(nn) == np.arange(n)
    if ties == "pessimistic":
        correct &= np.asarray(unique, dtype=bool)
    ap = average_precision(-np.asarray(nn_dist, dtype=np.float64), correct, numpos=n, ties=ties)
    return ap, float(correct.mean())
