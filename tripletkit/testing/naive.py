"""Naive dense references in torch (autograd through an N×N×N triplet tensor). The floor every smart
implementation must beat, and an independent gradient check for the tests. Written from Hermans et al. 2017."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_distance(x: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    diff = x[:, None, :] - x[None, :, :]
    d2 = (diff * diff).sum(-1)
    if kind == "sqeuclidean":
        return d2
    if kind == "euclidean":
        # the 1e-12 fudge of Hermans' code: no NaN gradient at 0, at the price of a tiny bias
        return torch.sqrt(d2 + 1e-12)
    if kind == "cosine":
        xn = F.normalize(x, dim=1)
        return (1 - xn @ xn.T).clamp(0, 2)
    raise ValueError(kind)


def _h(t: torch.Tensor, margin_fn: str) -> torch.Tensor:
    return torch.relu(t) if margin_fn == "hinge" else F.softplus(t)


def naive_batch_hard(x, labels, margin=0.2, margin_fn="hinge", kind="euclidean"):
    d = dense_distance(x, kind)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=x.device)
    pos = same & ~eye
    d_ap = torch.where(pos, d, torch.full_like(d, -float("inf"))).max(1).values
    d_an = torch.where(~same, d, torch.full_like(d, float("inf"))).min(1).values
    valid = pos.any(1) & (~same).any(1)
    loss = torch.where(valid, _h(margin + d_ap - d_an, margin_fn), torch.zeros_like(d_ap))
    return loss.sum() / valid.sum().clamp_min(1)


def naive_batch_all(x, labels, margin=0.2, margin_fn="hinge", kind="euclidean", reduction="mean"):
    d = dense_distance(x, kind)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=x.device)
    pos = same & ~eye
    valid = pos[:, :, None] & ~same[:, None, :]
    t = margin + d[:, :, None] - d[:, None, :]
    loss = torch.where(valid, _h(t, margin_fn), torch.zeros_like(t))
    if reduction == "sum":
        return loss.sum()
    denom = valid.sum() if reduction == "mean" else (loss > 0).sum()
    return loss.sum() / denom.clamp_min(1)


def naive_semihard(x, labels, margin=0.2, margin_fn="hinge", kind="euclidean"):
    """Semi-hard (FaceNet / TFA) over the dense (a, p, n) tensor: per pair, the nearest negative farther than the
    positive, else the farthest negative; the mean over the pairs whose anchor has a negative."""
    d = dense_distance(x, kind)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=x.device)
    pos = same & ~eye
    neg = ~same
    d_ap, d_an = d[:, :, None], d[:, None, :]
    farther = neg[:, None, :] & (d_an > d_ap)
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    semi = torch.where(farther, d_an.expand_as(farther), inf).min(2).values
    farthest = torch.where(neg, d, -inf).max(1).values[:, None].expand_as(semi)
    chosen = torch.where(farther.any(2), semi, farthest)
    valid = pos & neg.any(1)[:, None]
    loss = torch.where(valid, _h(margin + d - chosen, margin_fn), torch.zeros_like(d))
    return loss.sum() / valid.sum().clamp_min(1)


def naive_hardnet(a, p, margin=1.0, margin_fn="hinge", eps=1e-6, threshold=0.008, penalty=10.0):
    """HardNet's loss on the dense (N, N) cross-distance matrix with autograd through all of it (Mishchuk et al.
    2017): row and column minima with the diagonal and near-duplicates pushed away by ``penalty``."""
    diff = a[:, None, :] - p[None, :, :]
    d = torch.sqrt((diff * diff).sum(-1) + eps)
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    cand = d + penalty * eye
    cand = torch.where(cand < threshold, cand + penalty, cand)
    neg = torch.minimum(cand.min(1).values, cand.min(0).values)
    return _h(margin + d.diagonal() - neg, margin_fn).mean()
