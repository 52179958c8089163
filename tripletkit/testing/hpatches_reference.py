"""A literal, slow re-statement of the HPatches python benchmark's evaluation (docs Appendix A), loop by loop.

Independent of tripletkit.metrics and of examples/hpatches/evaluate.py: its own PR/ROC code, per-pair and
per-query Python loops, full stable sorts. Used to check the fast implementation and as the speed baseline in bench/.
"""

from __future__ import annotations

import math

import numpy as np

LEVELS = ("e", "h", "t")
POOL_SIZES = (100, 500, 1000, 5000, 10000, 15000, 20000)


def _curve(scores, labels, numpos=None):
    scores = list(map(float, scores))
    labels = list(map(int, labels))
    p = sum(labels)
    n = len(labels) - p
    if numpos is not None:
        scores += [-math.inf] * (numpos - p)
        labels += [1] * (numpos - p)
        p = numpos
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    order = [i for i in order if scores[i] > -math.inf]
    tp, fp = [0], [0]
    for i in order:
        tp.append(tp[-1] + labels[i])
        fp.append(fp[-1] + (1 - labels[i]))
    return np.array(tp, float), np.array(fp, float), p, n


def _trapz(y, x):
    return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


def ap(scores, labels, numpos=None):
    tp, fp, p, _ = _curve(scores, labels, numpos)
    recall = tp / max(p, 1e-10)
    precision = np.maximum(tp, 1e-10) / np.maximum(tp + fp, 1e-10)
    return _trapz(precision, recall)


def auc(scores, labels):
    tp, fp, p, n = _curve(scores, labels)
    return _trapz(tp / max(p, 1e-10), fp / max(n, 1e-10))


def _t(image_id, level):
    return "ref" if image_id == 0 else f"{level}{image_id}"


def _d(u, v):
    return float(np.sqrt(np.sum((np.asarray(u, np.float64) - np.asarray(v, np.float64)) ** 2)))


def verification(desc, pairs):
    """pairs: dict kind -> list of (s1, t1, i1, s2, t2, i2)."""
    out = {}
    for level in LEVELS:
        dist = {
            k: [_d(desc[a][_t(b, level)][c], desc[d][_t(e, level)][f]) for a, b, c, d, e, f in rows]
            for k, rows in pairs.items()
        }
        n_pos = len(dist["pos"])
        n_imb = n_pos + int(n_pos * 0.2)
        for kind in ("intra", "inter"):
            neg = dist[f"neg_{kind}"]
            scores = [-x for x in neg + dist["pos"]]
            labels = [0] * len(neg) + [1] * n_pos
            out[(level, kind)] = (ap(scores[:n_imb], labels[:n_imb]), auc(scores, labels))
    return out, float(np.mean([v[0] for v in out.values()]))


def matching(desc, sequences):
    aps = []
    for seq in sequences:
        ref = desc[seq]["ref"]
        for level in LEVELS:
            for i in range(1, 6):
                tgt = desc[seq][f"{level}{i}"]
                nn, nn_d = [], []
                for r in range(len(ref)):
                    ds = [_d(ref[r], tgt[c]) for c in range(len(tgt))]
                    j = int(np.argmin(ds))  # the first index on ties
                    nn.append(j)
                    nn_d.append(ds[j])
                correct = [int(j == r) for r, j in enumerate(nn)]
                aps.append(ap([-x for x in nn_d], correct, numpos=len(ref)))
    return float(np.mean(aps))


def retrieval(desc, queries, distractors, pool_sizes=POOL_SIZES):
    """queries, distractors: lists of (sequence, index)."""
    aps = []
    for qs, qi in queries:
        q = desc[qs]["ref"][qi]
        others = [(s, i) for s, i in distractors if s != qs]
        for level in LEVELS:
            pos = [_d(q, desc[qs][f"{level}{k}"][qi]) for k in range(1, 6)]
            dis = [_d(q, desc[s]["ref"][i]) for s, i in others]
            full = pos + dis
            labels = [1] * 5 + [0] * len(dis)
            for k in pool_sizes:
                aps.append(ap([-x for x in full[:k]], labels[:k]))
    return float(np.mean(aps))


# --------------------------------------------------------------------------------------------------------------
# The same definitions at the reference benchmark's speed: its algorithmic structure (a per-pair distance loop for
# verification, one cdist per image pair for matching, one full stable sort per query × level × pool size for
# retrieval, numpy PR curves), used as the speed baseline in bench/. Not used for correctness checks.


def _tp_fp_numpy(scores, labels, numpos=None):
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    p = int(labels.sum())
    n = len(labels) - p
    if numpos is not None:
        scores = np.hstack((scores, np.repeat(-np.inf, numpos - p)))
        labels = np.hstack((labels, np.ones(numpos - p)))
        p = numpos
    order = np.argsort(-scores, kind="mergesort", axis=0)
    stop = int(np.max(np.where(scores[order] > -np.inf)))
    ranked = labels[order[: stop + 1]]
    tp = np.hstack((0, np.cumsum(ranked == 1)))
    fp = np.hstack((0, np.cumsum(ranked == 0)))
    return tp, fp, p, n


def _ap_numpy(scores, labels, numpos=None):
    tp, fp, p, _ = _tp_fp_numpy(scores, labels, numpos)
    recall = tp / float(max(p, 1e-10))
    precision = np.maximum(tp, 1e-10) / np.maximum(tp + fp, 1e-10)
    return float(np.trapezoid(precision, recall))


def _auc_numpy(scores, labels):
    tp, fp, p, n = _tp_fp_numpy(scores, labels)
    return float(np.trapezoid(tp / float(max(p, 1e-10)), fp / float(max(n, 1e-10))))


def verification_at_reference_speed(desc, pairs):
    """Per pair, the three levels' distances (one scipy call each, into an (N, 1) array); per level and negative
    kind, the balanced ROC and the imbalanced PR, each with its own stable sort. Returns the mean AP."""
    from scipy.spatial import distance

    types = {i: {level: _t(i, level) for level in LEVELS} for i in range(6)}
    dist = {}
    for kind, rows in pairs.items():  # rows: the task file as pandas gives it (an object array), row by row
        d = {level: np.empty((len(rows), 1)) for level in LEVELS}
        for r, p in enumerate(rows):
            t1, t2 = types[p[1]], types[p[4]]
            for level in LEVELS:
                d[level][r] = distance.euclidean(desc[p[0]][t1[level]][p[2]], desc[p[3]][t2[level]][p[5]])
        dist[kind] = d
    aps = []
    for level in LEVELS:
        d_pos = dist["pos"][level]
        labels = np.vstack((np.zeros_like(d_pos), np.ones_like(d_pos))).reshape(-1)
        n_imb = len(d_pos) + int(len(d_pos) * 0.2)
        for kind in ("intra", "inter"):
            scores = -np.vstack((dist[f"neg_{kind}"][level], d_pos)).reshape(-1)
            _auc_numpy(scores, labels)  # the benchmark computes and stores the balanced ROC as well
            aps.append(_ap_numpy(scores[:n_imb], labels[:n_imb]))
    return float(np.mean(aps))


def matching_at_reference_speed(desc, sequences):
    from scipy.spatial import distance

    aps = []
    for seq in sequences:
        ref = desc[seq]["ref"]
        gt = np.arange(ref.shape[0])
        for level in LEVELS:
            for i in range(1, 6):
                d = distance.cdist(ref, desc[seq][f"{level}{i}"], "euclidean")
                nn = np.argmin(d, axis=1)
                aps.append(_ap_numpy(-d[gt, nn], nn == gt, numpos=len(gt)))
    return float(np.mean(aps))


def retrieval_at_reference_speed(desc, queries, distractors, pool_sizes=POOL_SIZES):
    from scipy.spatial import distance

    q_desc = np.stack([desc[s]["ref"][i] for s, i in queries])
    d_desc = np.stack([desc[s]["ref"][i] for s, i in distractors])
    d_seq = np.array([s for s, _ in distractors], dtype=object)
    full = distance.cdist(q_desc, d_desc, "euclidean")
    aps = []
    for qi, (qs, idx) in enumerate(queries):
        row = full[qi][d_seq != qs]
        for level in LEVELS:
            # one 1 × 1 cdist per positive, as the benchmark's get_query_intra_dists
            pos = np.array(
                [distance.cdist(q_desc[qi : qi + 1], desc[qs][f"{level}{k}"][idx][None, :])[0, 0] for k in range(1, 6)]
            )
            scores = np.hstack((pos, row))
            labels = np.hstack((np.ones(5), np.zeros(len(row))))
            for k in pool_sizes:
                aps.append(_ap_numpy(-scores[:k], labels[:k]))
    return float(np.mean(aps))
