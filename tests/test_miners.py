from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tripletkit import BatchAllMiner, BatchHardMiner, OfflineMiner, RandomMiner
from tripletkit.functional import euclidean_matrix, mine_offline
from tripletkit.testing import reference as ref

from .strategies import batches, generic_batches


def _has_pos_neg(labels, a):
    return any(labels[p] == labels[a] for p in range(len(labels)) if p != a) and any(
        other != labels[a] for other in labels
    )


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@given(batch=batches())
def test_batch_hard_picks_furthest_positive_and_nearest_negative(batch, distance):
    x, labels = batch
    t = BatchHardMiner(distance=distance)(torch.tensor(x), torch.tensor(labels))
    d = ref.distance_matrix(x, distance)
    for a in range(len(labels)):
        assert bool(t.valid[a]) == _has_pos_neg(labels, a)
        if not t.valid[a]:
            continue
        p, n = int(t.positive[a]), int(t.negative[a])
        assert p != a and labels[p] == labels[a] and labels[n] != labels[a]
        pos = [d[a, j] for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        neg = [d[a, j] for j in range(len(labels)) if labels[j] != labels[a]]
        assert d[a, p] >= max(pos) - 1e-9 and d[a, n] <= min(neg) + 1e-9


@given(batch=batches(), seed=st.integers(0, 1000))
def test_random_miner_gives_valid_triplets(batch, seed):
    x, labels = batch
    t = RandomMiner(seed=seed)(torch.tensor(x), torch.tensor(labels))
    for a in range(len(labels)):
        assert bool(t.valid[a]) == _has_pos_neg(labels, a)
        if t.valid[a]:
            p, n = int(t.positive[a]), int(t.negative[a])
            assert p != a and labels[p] == labels[a] and labels[n] != labels[a]


def test_random_miner_is_uniform_and_seeded():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    x = torch.zeros(7, 2)
    miner = RandomMiner(seed=0)
    counts = np.zeros(7)
    for _ in range(3000):
        counts[int(miner(x, labels).positive[0])] += 1
    # anchor 0 has positives 1, 2, 3: each ≈ 1000 draws (binomial sd ≈ 26)
    assert counts[0] == 0 and counts[4:].sum() == 0
    assert np.all(np.abs(counts[1:4] - 1000) < 130)
    a, b = RandomMiner(seed=5)(x, labels), RandomMiner(seed=5)(x, labels)
    assert torch.equal(a.positive, b.positive) and torch.equal(a.negative, b.negative)


@given(batch=batches(max_n=9))
def test_batch_all_miner_lists_exactly_the_valid_triplets(batch):
    x, labels = batch
    t = BatchAllMiner()(torch.tensor(x), torch.tensor(labels))
    got = sorted(zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist()))
    n = len(labels)
    want = sorted(
        (a, p, q)
        for a in range(n)
        for p in range(n)
        for q in range(n)
        if p != a and labels[p] == labels[a] and labels[q] != labels[a]
    )
    assert got == want and len(got) == ref.class_triplet_count(labels)


def _brute_offline(x, labels, anchors, positive_choice, negative, margin):
    d = ref.distance_matrix(x, "euclidean")
    out = []
    for i, a in enumerate(anchors):
        pos = [j for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[a]]
        if not pos or not neg:
            out.append(None)
            continue
        p = positive_choice[i] if positive_choice is not None else max(pos, key=lambda j: (d[a, j], -j))
        d_ap = d[a, p]
        hardest = min(neg, key=lambda j: (d[a, j], j))
        if negative == "semihard":
            band = [j for j in neg if d_ap < d[a, j] < d_ap + margin]
            n = min(band, key=lambda j: (d[a, j], j)) if band else hardest
        else:
            n = hardest
        out.append((p, n, d_ap, d[a, n]))
    return out, d


@pytest.mark.parametrize("negative", ["hardest", "semihard"])
@pytest.mark.parametrize("positive", ["hardest", "random"])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@given(batch=generic_batches(min_n=3, max_n=20))
def test_offline_miner_equals_brute_force(batch, negative, positive, chunk_size):
    x, labels = batch
    bank = torch.tensor(x)
    anchors = torch.arange(len(labels)).flip(0)[: max(1, len(labels) - 2)]
    t = OfflineMiner(positive=positive, negative=negative, margin=1.0, chunk_size=chunk_size, seed=0)(
        bank, torch.tensor(labels), anchors
    )
    choice = t.positive.tolist() if positive == "random" else None
    want, d = _brute_offline(x, labels, anchors.tolist(), choice, negative, 1.0)
    assert torch.equal(t.anchor, anchors)
    for i, w in enumerate(want):
        assert bool(t.valid[i]) == (w is not None)
        if w is None:
            continue
        a, p, n = int(t.anchor[i]), int(t.positive[i]), int(t.negative[i])
        assert p != a and labels[p] == labels[a] and labels[n] != labels[a]
        # compare distances, not indices: equal distances are equally good answers
        assert abs(d[a, p] - w[2]) < 1e-9 and abs(d[a, n] - w[3]) < 1e-9


def test_offline_miner_never_builds_the_whole_matrix():
    shapes = []

    def spy(x, y):
        shapes.append((x.shape[0], y.shape[0]))
        return euclidean_matrix(x, y)

    bank = torch.randn(1000, 8)
    labels = torch.arange(100).repeat_interleave(10)
    t = mine_offline(bank, labels, distance_matrix=spy, chunk_size=128, negative="semihard")
    assert max(a * b for a, b in shapes) <= 128 * 128
    assert bool(t.valid.all())
    # spot-check one anchor against the dense answer
    d = torch.cdist(bank[:1].double(), bank.double())[0]
    same = labels == labels[0]
    same[0] = False
    assert abs(float(d[t.positive[0]]) - float(d[same].max())) < 1e-5
