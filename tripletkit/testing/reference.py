"""Brute-force float64 NumPy references, written from the papers' definitions, loop by loop.

Nothing here imports tripletkit. Hermans et al. 2017 ("In Defense of the Triplet Loss"), eqs. 5 and 6; the soft
margin of sec. 3.1; the anchor swap on batch-hard mining (p*'s own nearest negative); Balntas et al. 2016's swap for given triplets.
"""

from __future__ import annotations

import math

import numpy as np


def distance(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if kind == "euclidean":
        return math.sqrt(float(np.sum((x - y) ** 2)))
    if kind == "sqeuclidean":
        return float(np.sum((x - y) ** 2))
    if kind == "cosine":
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        if nx < 1e-12 or ny < 1e-12:  # the documented zero-vector convention
            return 1.0
        return min(max(1.0 - float(np.dot(x, y)) / (nx * ny), 0.0), 2.0)
    raise ValueError(kind)


def distance_matrix(x: np.ndarray, kind: str) -> np.ndarray:
    n = len(x)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = 0.0 if i == j else distance(x[i], x[j], kind)
    return out


def margin_value(gap: float, margin_fn: str, margin: float, temperature: float = 1.0) -> float:
    t = gap + margin
    if margin_fn == "hinge":
        return max(t, 0.0)
    if margin_fn == "softplus":
        # τ·ln(1 + e^(t/τ)), written so that it cannot overflow
        u = t / temperature
        return temperature * (max(u, 0.0) + math.log1p(math.exp(-abs(u))))
    raise ValueError(margin_fn)


def _reduce(values: list[float], reduction: str) -> float:
    total = float(sum(values))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / len(values) if values else 0.0
    if reduction == "mean_active":
        active = [v for v in values if v > 0]
        return total / len(active) if active else 0.0
    raise ValueError(reduction)


def batch_hard(
    x, labels, *, margin_fn="hinge", margin=0.2, kind="euclidean", reduction="mean", swap=False, temperature=1.0
):
    """Returns (loss, per_anchor) with per_anchor[a] = None for anchors left out."""
    x = np.asarray(x, dtype=np.float64)
    labels = list(labels)
    n = len(labels)
    d = distance_matrix(x, kind)
    per_anchor: list[float | None] = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            per_anchor.append(None)
            continue
        d_ap = max(d[a, p] for p in pos)
        d_an = min(d[a, q] for q in neg)
        if swap:
            # the hardest positive (any of the tied ones gives the same d_ap; take the first)
            p_star = next(p for p in pos if d[a, p] == d_ap)
            d_an = min(d_an, min(d[p_star, q] for q in neg))
        per_anchor.append(margin_value(d_ap - d_an, margin_fn, margin, temperature))
    values = [v for v in per_anchor if v is not None]
    return _reduce(values, reduction), per_anchor


def batch_all(x, labels, *, margin_fn="hinge", margin=0.2, kind="euclidean", reduction="mean", temperature=1.0):
    """Returns (loss, number of valid triplets, number with loss > 0)."""
    x = np.asarray(x, dtype=np.float64)
    labels = list(labels)
    n = len(labels)
    d = distance_matrix(x, kind)
    values = []
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for q in range(n):
                if labels[q] == labels[a]:
                    continue
                values.append(margin_value(d[a, p] - d[a, q], margin_fn, margin, temperature))
    return _reduce(values, reduction), len(values), sum(v > 0 for v in values)


def batch_all_margins(x, labels, *, margin=0.2, kind="euclidean"):
    """m + d(a, p) − d(a, n) for every valid triplet (where the hinge has its kink at 0)."""
    x = np.asarray(x, dtype=np.float64)
    labels = list(labels)
    n = len(labels)
    d = distance_matrix(x, kind)
    return [
        margin + d[a, p] - d[a, q]
        for a in range(n)
        for p in range(n)
        if p != a and labels[p] == labels[a]
        for q in range(n)
        if labels[q] != labels[a]
    ]


def given_triplets(x, triplets, *, margin_fn="hinge", margin=0.2, kind="euclidean", reduction="mean", swap=False):
    x = np.asarray(x, dtype=np.float64)
    values = []
    for a, p, q in triplets:
        d_an = distance(x[a], x[q], kind)
        if swap:
            d_an = min(d_an, distance(x[p], x[q], kind))
        values.append(margin_value(distance(x[a], x[p], kind) - d_an, margin_fn, margin))
    return _reduce(values, reduction)


def class_triplet_count(labels) -> int:
    """Σ_c n_c (n_c − 1)(N − n_c)."""
    labels = list(labels)
    n = len(labels)
    return sum(labels.count(c) * (labels.count(c) - 1) * (n - labels.count(c)) for c in set(labels))


def semihard(x, labels, *, margin=1.0, kind="euclidean"):
    """FaceNet's semi-hard loss as TensorFlow Addons defines it, loop by loop: for every anchor-positive pair
    (p ≠ a), the nearest negative strictly farther than the positive, else the farthest negative; the hinge
    [m + d(a, p) − d(a, n)]₊ averaged over the pairs whose anchor has a negative (0 when there is none)."""
    n = len(labels)
    values = []
    for a in range(n):
        negs = [distance(x[a], x[k], kind) for k in range(n) if labels[k] != labels[a]]
        if not negs:
            continue
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = distance(x[a], x[p], kind)
            farther = [d for d in negs if d > d_ap]
            d_an = min(farther) if farther else max(negs)
            values.append(max(0.0, margin + d_ap - d_an))
    return sum(values) / len(values) if values else 0.0
