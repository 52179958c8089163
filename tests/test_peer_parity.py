"""The new pieces against their peers' own code (float64, random batches, 1e-7 relative):

* ``ref_embeddings`` and ``CrossBatchMemory`` against pytorch-metric-learning's ``ref_emb`` and its
  ``CrossBatchMemory`` (installed);
* ``BatchSemiHardLoss`` against TensorFlow Addons' NumPy reference of ``triplet_semihard_loss`` (rewritten here
  from its test file's logic; TensorFlow itself is not installed);
* batch-hard and batch-all against OML (installed with --no-deps, see ``tripletkit.testing.peers``);
* identical rows at distance exactly 0 (OML's and omoindrot's duplicate-row cases).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tripletkit import (
    BatchAllLoss,
    BatchHardLoss,
    BatchSemiHardLoss,
    CrossBatchMemory,
    TrainingCheckpoint,
    TripletLoss,
)
from tripletkit.testing import reference as ref
from tripletkit.testing.peers import have_pml, import_oml

needs_pml = pytest.mark.skipif(not have_pml(), reason="pytorch-metric-learning is not installed")


def _batch(seed, n=24, dim=8, classes=6, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (n,), generator=g)
    return x, labels


# ---------------------------------------------------------------- TFA semi-hard


def tfa_semihard_np(labels, x, margin, squared):
    """TFA's ``triplet_semihard_loss_np`` logic: for every positive pair, the negatives sorted; the first one farther
    than the positive, else the last (farthest); hinge; divided by the number of positive pairs."""
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = np.sum((x[i] - x[j]) ** 2)
    if not squared:
        d = np.sqrt(d)
    total, pairs = 0.0, 0
    for i in range(n):
        for j in range(n):
            if labels[i] == labels[j] and i != j:
                pairs += 1
                negs = sorted(d[i, k] for k in range(n) if labels[k] != labels[i])
                chosen = negs[0]
                for v in negs:
                    chosen = v
                    if v > d[i, j]:
                        break
                total += max(0.0, margin - chosen + d[i, j])
    return total / pairs


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("squared", [True, False])
def test_semihard_equals_tfa_reference(seed, squared):
    rng = np.random.default_rng(seed)
    x = rng.random((10, 6))  # TFA's test: 10 points in [0, 1)^6, 4 classes
    labels = rng.integers(0, 4, 10)
    labels[:2] = [0, 1]  # at least two classes, so every anchor has a negative (TFA's own draws always had)
    if not any(np.sum(labels == c) > 1 for c in set(labels)):
        labels[2] = labels[3]
    want = tfa_semihard_np(labels, x, 1.0, squared)
    loss = BatchSemiHardLoss(margin=1.0, distance="sqeuclidean" if squared else "euclidean")
    got = float(loss(torch.from_numpy(x), torch.from_numpy(labels)))
    assert got == pytest.approx(want, rel=1e-7, abs=1e-12)
    # the TripletLoss + semihard miner route gives the same number
    alt = TripletLoss(
        margin=1.0,
        distance="sqeuclidean" if squared else "euclidean",
        miner={"name": "semihard", "distance": "sqeuclidean" if squared else "euclidean"},
    )
    assert float(alt(torch.from_numpy(x), torch.from_numpy(labels))) == pytest.approx(want, rel=1e-7, abs=1e-12)


@given(st.integers(0, 2**31 - 1), st.integers(3, 14), st.integers(2, 5))
def test_semihard_properties(seed, n, classes):
    x, labels = _batch(seed, n=n, dim=3, classes=classes)
    loss = BatchSemiHardLoss(margin=0.3)
    got = float(loss(x, labels))
    want = ref.semihard(x.numpy(), labels.tolist(), margin=0.3)
    assert got == pytest.approx(want[0] if isinstance(want, tuple) else want, rel=1e-7, abs=1e-12)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert float(loss(x[perm], labels[perm])) == pytest.approx(got, rel=1e-9, abs=1e-12)
    # the semi-hard negative is never nearer than the hardest one: the loss is at most batch-all's per-pair worst case,
    # i.e. at most the mean over pairs of h(d(a, p) − min_n d(a, n))
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    has_neg = (~same).any(1)
    pairs = same & ~torch.eye(n, dtype=torch.bool) & has_neg[:, None]
    hardest_neg = d.masked_fill(same, float("inf")).min(1).values
    bound = torch.relu(0.3 + d - hardest_neg[:, None])[pairs]
    assert 0.0 <= got <= (float(bound.mean()) if pairs.any() else 0.0) + 1e-9


def test_semihard_edge_cases_and_gradient():
    x = torch.tensor([[0.0], [1.0], [1.5], [4.0]], dtype=torch.float64, requires_grad=True)
    loss = BatchSemiHardLoss(margin=1.0)(x, torch.tensor([0, 0, 1, 1]))
    assert float(loss.detach()) == pytest.approx(0.75)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # one class: every pair's anchor lacks a negative; left out: 0, not TFA's m + d(a, p), not NaN
    one = BatchSemiHardLoss(margin=1.0)(x.detach(), torch.zeros(4, dtype=torch.long))
    assert float(one) == 0.0
    # no pair at all (all singletons): 0 (TFA divides by 0)
    assert float(BatchSemiHardLoss()(x.detach(), torch.arange(4))) == 0.0
    with pytest.raises(ValueError, match="reduction"):
        BatchSemiHardLoss(reduction="none")
    assert torch.autograd.gradcheck(
        lambda e: BatchSemiHardLoss(margin_fn="softplus")(e, torch.tensor([0, 0, 1, 1, 2, 2])),
        (torch.randn(6, 3, dtype=torch.float64, requires_grad=True),),
    )


# ---------------------------------------------------------------- PML ref_emb and CrossBatchMemory


def _pml():
    from pytorch_metric_learning import distances, losses, miners, reducers

    return distances, losses, miners, reducers


@needs_pml
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("margin_fn", ["hinge", "softplus"])
def test_batch_hard_ref_equals_pml(seed, margin_fn):
    distances, losses, miners, reducers = _pml()
    x, labels = _batch(seed, n=12)
    r, ref_labels = _batch(seed + 100, n=30)
    m = 0.2 if margin_fn == "hinge" else 0.0
    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    idx = miners.BatchHardMiner(distance=dist)(x, labels, r, ref_labels)
    pml = losses.TripletMarginLoss(margin=m, distance=dist, reducer=reducers.MeanReducer(), smooth_loss=m == 0.0)
    want = pml(x, labels, idx, r, ref_labels)
    x1, r1 = x.clone().requires_grad_(), r.clone().requires_grad_()
    got = BatchHardLoss(margin=m, margin_fn=margin_fn)(x1, labels, ref_embeddings=r1, ref_labels=ref_labels)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    via_triplet = TripletLoss(margin=m, margin_fn=margin_fn, miner="batch_hard")(
        x, labels, ref_embeddings=r, ref_labels=ref_labels
    )
    torch.testing.assert_close(via_triplet, want, rtol=1e-7, atol=1e-12)
    # gradients to both sets, as PML's (it does not detach the reference set)
    x2, r2 = x.clone().requires_grad_(), r.clone().requires_grad_()
    pml(x2, labels, idx, r2, ref_labels).backward()
    got.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-7, atol=1e-12)


@needs_pml
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("reduction", ["mean", "mean_active"])
def test_batch_all_ref_equals_pml(seed, reduction):
    distances, losses, _, reducers = _pml()
    x, labels = _batch(seed, n=10, scale=0.3)
    r, ref_labels = _batch(seed + 50, n=26, scale=0.3)
    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    reducer = reducers.MeanReducer() if reduction == "mean" else reducers.AvgNonZeroReducer()
    for margin_fn, m in (("hinge", 0.2), ("softplus", 0.0)):
        pml = losses.TripletMarginLoss(margin=m, distance=dist, reducer=reducer, smooth_loss=m == 0.0)
        x1, r1 = x.clone().requires_grad_(), r.clone().requires_grad_()
        x2, r2 = x.clone().requires_grad_(), r.clone().requires_grad_()
        want = pml(x2, labels, ref_emb=r2, ref_labels=ref_labels)
        got = BatchAllLoss(margin=m, margin_fn=margin_fn, reduction=reduction)(
            x1, labels, ref_embeddings=r1, ref_labels=ref_labels
        )
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
        want.backward()
        got.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-7, atol=1e-12)


def test_ref_semantics_against_brute_force():
    x, labels = _batch(3, n=9, classes=4)
    r, ref_labels = _batch(4, n=15, classes=4)
    self_index = torch.tensor([2, -1, 5, -1, -1, 0, -1, 14, -1])
    want = 0.0
    count = 0
    d = torch.cdist(x, r)
    for a in range(9):
        pos = [j for j in range(15) if ref_labels[j] == labels[a] and j != self_index[a]]
        neg = [j for j in range(15) if ref_labels[j] != labels[a]]
        if pos and neg:
            want += max(0.2 + max(float(d[a, j]) for j in pos) - min(float(d[a, j]) for j in neg), 0.0)
            count += 1
    got = BatchHardLoss(margin=0.2)(x, labels, ref_embeddings=r, ref_labels=ref_labels, ref_self_index=self_index)
    assert float(got) == pytest.approx(want / count, rel=1e-9)
    # an anchor whose label is absent from the reference set is left out (no positive): here, a label-9 anchor
    lab2 = labels.clone()
    lab2[0] = 9
    got2 = BatchHardLoss(margin=0.2, reduction="none")(x, lab2, ref_embeddings=r, ref_labels=ref_labels)
    assert float(got2[0]) == 0.0


def test_ref_exceptions():
    x, labels = _batch(0, n=6)
    r, rl = _batch(1, n=8)
    with pytest.raises(ValueError, match="ref_labels are required"):
        BatchHardLoss()(x, labels, ref_embeddings=r)
    with pytest.raises(ValueError, match="ref_labels has length 7 but ref_embeddings have 8 rows"):
        BatchHardLoss()(x, labels, ref_embeddings=r, ref_labels=rl[:7])
    with pytest.raises(ValueError, match="dimensions"):
        BatchAllLoss()(x, labels, ref_embeddings=r[:, :3], ref_labels=rl)
    with pytest.raises(ValueError, match="swap"):
        BatchHardLoss(swap=True)(x, labels, ref_embeddings=r, ref_labels=rl)
    with pytest.raises(ValueError, match="ref_self_index must lie"):
        BatchHardLoss()(x, labels, ref_embeddings=r, ref_labels=rl, ref_self_index=torch.full((6,), 8))
    with pytest.raises(ValueError, match="need ref_embeddings"):
        BatchHardLoss()(x, labels, ref_labels=rl)
    with pytest.raises(ValueError, match="cannot mine against a reference set"):
        TripletLoss(miner=lambda e, y: None)(x, labels, ref_embeddings=r, ref_labels=rl)


@needs_pml
@pytest.mark.parametrize("kind", ["batch_all", "batch_hard"])
@pytest.mark.parametrize("seed", range(2))
def test_cross_batch_memory_equals_pml(kind, seed):
    distances, losses, miners, reducers = _pml()
    from pytorch_metric_learning.losses import CrossBatchMemory as PMLXBM

    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    pml_loss = losses.TripletMarginLoss(margin=0.2, distance=dist, reducer=reducers.MeanReducer())
    miner = miners.BatchHardMiner(distance=dist) if kind == "batch_hard" else None
    theirs = PMLXBM(pml_loss, embedding_size=6, memory_size=40, miner=miner)
    ours = CrossBatchMemory(
        BatchHardLoss(margin=0.2) if kind == "batch_hard" else BatchAllLoss(margin=0.2), 6, memory_size=40
    )
    g = torch.Generator().manual_seed(seed)
    for step in range(9):  # 9 batches of 12 wrap the 40-row queue twice
        x = torch.randn(12, 6, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 5, (12,), generator=g)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = theirs(x2, labels)
        got = ours(x1, labels)
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12, msg=f"step {step}")
        want.backward()
        got.backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-12, msg=f"step {step}")
        assert ours.num_filled == (40 if theirs.has_been_filled else theirs.queue_idx)
        torch.testing.assert_close(ours.embedding_memory, theirs.embedding_memory)


def test_cross_batch_memory_semantics_state_and_checkpoint(tmp_path):
    xbm = CrossBatchMemory(BatchHardLoss(margin=0.2), embedding_size=4, memory_size=10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, generator=g, dtype=torch.float64)
    # the only positive of each anchor is its own enqueued copy: never used, every anchor left out
    assert float(xbm(x, torch.arange(4))) == 0.0
    assert xbm.num_filled == 4
    y = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = xbm(y, torch.arange(4))  # now the previous batch holds one positive per anchor
    d = torch.cdist(y.detach(), torch.cat([x, y.detach()]))
    want = np.mean(
        [max(0.2 + float(d[a, a]) - min(float(d[a, j]) for j in range(8) if j % 4 != a), 0.0) for a in range(4)]
    )
    assert float(loss.detach()) == pytest.approx(want, rel=1e-9)
    loss.backward()
    assert y.grad is not None and xbm.embedding_memory.grad is None
    with pytest.raises(ValueError, match="does not fit"):
        xbm(torch.randn(11, 4, dtype=torch.float64), torch.zeros(11, dtype=torch.long))
    with pytest.raises(ValueError, match="dimensions"):
        xbm(torch.randn(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.long))
    # state: round trip into a fresh memory through a checkpoint, and all-or-nothing loading
    state = {k: v.clone() for k, v in xbm.state_dict().items()}
    fresh = CrossBatchMemory(BatchHardLoss(margin=0.2), embedding_size=4, memory_size=10)
    ckpt = TrainingCheckpoint(tmp_path / "c.pt", model=torch.nn.Linear(1, 1), stateful={"xbm": xbm})
    ckpt.save(step=1)
    TrainingCheckpoint(tmp_path / "c.pt", model=torch.nn.Linear(1, 1), stateful={"xbm": fresh}).restore()
    for k, v in state.items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
    bad = dict(state, queue_idx=torch.tensor(99))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="queue_idx 99"):
        fresh.load_state_dict(bad)
    bad = dict(state, label_memory=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="label_memory"):
        fresh.load_state_dict(bad)
    for k, v in before.items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
    with pytest.raises(TypeError):
        CrossBatchMemory(3, 4)
    with pytest.raises(ValueError, match="memory_size"):
        CrossBatchMemory(BatchHardLoss(), 4, memory_size=0)


# ---------------------------------------------------------------- OML


@pytest.fixture(scope="module")
def oml():
    mod = import_oml()
    if mod is None:
        pytest.skip("open-metric-learning is not installed")
    return mod


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("margin", [0.2, None])
def test_batch_hard_and_all_equal_oml(oml, seed, margin):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(8).repeat_interleave(4)
    margin_fn = "hinge" if margin else "softplus"
    m = margin if margin else 0.0
    hard = oml["TripletLossWithMiner"](margin=margin, miner=oml["HardTripletsMiner"]())
    torch.testing.assert_close(
        BatchHardLoss(margin=m, margin_fn=margin_fn)(x, labels), hard(x, labels), rtol=1e-7, atol=1e-12
    )
    every = oml["TripletLossWithMiner"](margin=margin, miner=oml["AllTripletsMiner"]())
    torch.testing.assert_close(
        BatchAllLoss(margin=m, margin_fn=margin_fn)(x, labels), every(x, labels), rtol=1e-7, atol=1e-12
    )


# ---------------------------------------------------------------- exact zeros


def test_identical_rows_are_at_distance_zero_in_float32():
    # omoindrot's / OML's duplicate-row case: one-hot rows, duplicated; batch-all in float32 equals float64 exactly
    rows = torch.eye(16)[torch.tensor([0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 6, 7])]
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0])
    want = float(BatchAllLoss(margin=0.5)(rows.double(), labels))
    assert float(BatchAllLoss(margin=0.5)(rows, labels)) == pytest.approx(want, rel=1e-6)
    for dist in ("euclidean", "sqeuclidean", "cosine"):
        d = BatchAllLoss(distance=dist).distance.matrix(rows + (1000.0 if dist != "cosine" else 1.0))
        assert float(d[0, 1]) == 0.0 and float(d[2, 3]) == 0.0 and float(d[8, 9]) == 0.0
        assert float(d[0, 2]) > 0.0
        dxy = BatchAllLoss(distance=dist).distance.matrix(rows, rows.flip(0))
        assert float(dxy[0, 11 - 1]) == 0.0  # rows[0] == rows.flip(0)[10] == rows[1]
    # zero vectors keep the cosine convention: distance 1 between two of them
    z = torch.zeros(2, 3)
    assert float(BatchAllLoss(distance="cosine").distance.matrix(z)[0, 1]) == 1.0


@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.sampled_from([1.0, 1e3]))
def test_exact_zeros_property(seed, n, scale):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 5, generator=g) * scale
    idx = torch.randint(0, n, (2 * n,), generator=g)
    x = base[idx]
    same = idx[:, None] == idx[None, :]
    for dist in ("euclidean", "sqeuclidean", "cosine"):
        d = BatchAllLoss(distance=dist).distance.matrix(x)
        assert (d[same] == 0).all()
        assert (d[~same] > 0).all()


# ---------------------------------------------------------------- properties of the reference-set path


@given(st.integers(0, 2**31 - 1), st.integers(2, 14), st.integers(1, 5))
def test_ref_equal_to_the_batch_with_self_excluded_is_the_plain_loss(seed, n, classes):
    # the batch as its own reference set, each anchor's own row excluded, is the in-batch loss (PML's default)
    x, labels = _batch(seed, n=n, dim=3, classes=classes)
    own = torch.arange(n)
    for loss in (
        BatchHardLoss(margin=0.2),
        BatchAllLoss(margin=0.2),
        BatchAllLoss(margin_fn="softplus", reduction="mean_active"),
        BatchSemiHardLoss(margin=0.3),
        TripletLoss(margin=0.2, miner="semihard"),
    ):
        plain = float(loss(x, labels))
        via_ref = float(loss(x, labels, ref_embeddings=x, ref_labels=labels, ref_self_index=own))
        assert via_ref == pytest.approx(plain, rel=1e-9, abs=1e-12), loss


@given(st.integers(0, 2**31 - 1), st.integers(2, 12))
def test_memory_of_one_batch_is_the_plain_loss(seed, n):
    # a memory that holds exactly the current batch: mining against it is mining in the batch
    x, labels = _batch(seed, n=n, dim=3, classes=3)
    for loss in (BatchHardLoss(margin=0.2), BatchAllLoss(margin=0.2)):
        xbm = CrossBatchMemory(loss, embedding_size=3, memory_size=n)
        for _ in range(2):  # the second call overwrites the whole queue with the same batch
            assert float(xbm(x, labels)) == pytest.approx(float(loss(x, labels)), rel=1e-9, abs=1e-12)


@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.integers(1, 20))
def test_random_ref_triplets_are_valid(seed, n, m):
    from tripletkit.functional.miners import random_triplets_ref

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    ref_labels = torch.randint(0, 3, (m,), generator=g)
    self_index = torch.randint(-1, m, (n,), generator=g)
    t = random_triplets_ref(labels, ref_labels, self_index=self_index, generator=g)
    for a in range(n):
        has_pos = any(ref_labels[j] == labels[a] and j != self_index[a] for j in range(m))
        has_neg = any(ref_labels[j] != labels[a] for j in range(m))
        assert bool(t.valid[a]) == (has_pos and has_neg)
        if t.valid[a]:
            assert ref_labels[t.positive[a]] == labels[a] and t.positive[a] != self_index[a]
            assert ref_labels[t.negative[a]] != labels[a]
