"""The in-batch semi-hard miner (FaceNet; TensorFlow Addons' triplet_semihard_loss) against a loop-by-loop reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given

from tripletkit import MINERS, SemiHardMiner, TripletLoss
from tripletkit.testing import reference as ref

from .strategies import generic_batches


def _decided(x, labels, kind):
    """No negative sits within 1e-9 of a positive's distance: the reference's choice is then not a rounding matter."""
    d = ref.distance_matrix(x, kind)
    lab = np.asarray(labels)
    for a in range(len(lab)):
        pos, neg = d[a][(lab == lab[a]) & (np.arange(len(lab)) != a)], d[a][lab != lab[a]]
        if len(pos) and len(neg) and np.abs(pos[:, None] - neg[None, :]).min() < 1e-9:
            return False
    return True


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@given(batch=generic_batches(max_n=14))
def test_semihard_loss_equals_the_reference(batch, distance):
    x, labels = batch
    assume(_decided(x, labels, distance))
    got = TripletLoss(margin=1.0, miner={"name": "semihard", "distance": distance}, distance=distance)(
        torch.tensor(x), torch.tensor(labels)
    )
    want = ref.semihard(x, labels, margin=1.0, kind=distance)
    assert abs(float(got) - want) <= 1e-9 * (1 + abs(want)), (float(got), want)


def test_semihard_picks_the_nearest_farther_negative_else_the_farthest():
    # class 0 at -0.2 and 1; class 1 at 0.5, 1.5 and 3
    x = torch.tensor([[-0.2], [1.0], [0.5], [1.5], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1])
    t = MINERS.build("semihard")(x, labels)
    rows = {(int(a), int(p)): int(n) for a, p, n, v in zip(t.anchor, t.positive, t.negative, t.valid) if v}
    assert rows[(0, 1)] == 3  # d_ap = 1.2; negatives at 0.7, 1.7, 3.2: the nearest farther one is 1.7
    assert rows[(1, 0)] == 4  # d_ap = 1.2; negatives at 0.5, 0.5, 2.0: 2.0
    assert rows[(2, 4)] == 0  # d_ap = 2.5; negatives at 0.7 and 0.5: none farther, so the farthest (0.7)
    assert len(rows) == 2 + 6  # every ordered pair of the same class, self excluded


def test_pairs_of_a_one_class_batch_are_left_out_and_give_zero():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = TripletLoss(miner="semihard")(x, torch.zeros(4, dtype=torch.long))
    assert float(loss) == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_semihard_options():
    with pytest.raises(ValueError, match="reduction='none'"):
        TripletLoss(miner="semihard", reduction="none")
    assert "max_class_size=4" in repr(SemiHardMiner(max_class_size=4))
    with pytest.raises(ValueError, match="max_class_size=2"):
        TripletLoss(miner={"name": "semihard", "max_class_size": 2})(
            torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 1])
        )
    with pytest.raises(ValueError, match="max_class_size"):
        SemiHardMiner(max_class_size=0)


def test_semihard_compiles_with_a_static_class_size():
    x, labels = torch.randn(16, 4), torch.arange(4).repeat_interleave(4)
    loss_fn = TripletLoss(miner={"name": "semihard", "max_class_size": 4}, validate=False)
    compiled = torch.compile(loss_fn, fullgraph=True, dynamic=False)
    assert torch.allclose(compiled(x, labels), loss_fn(x, labels), rtol=1e-5, atol=1e-6)


@given(batch=generic_batches(max_n=12))
def test_the_benchmarks_naive_semihard_equals_the_reference(batch):
    from tripletkit.testing.naive import naive_semihard

    x, labels = batch
    assume(_decided(x, labels, "euclidean"))
    got = naive_semihard(torch.tensor(x), torch.tensor(labels), margin=1.0)
    want = ref.semihard(x, labels, margin=1.0)
    assert abs(float(got) - want) <= 1e-6 * (1 + abs(want)), (float(got), want)
