"""Bad input is a clear TypeError/ValueError naming the problem, never a NaN or a wrong number."""

from __future__ import annotations

import pytest
import torch

from tripletkit import BatchAllLoss, BatchHardLoss, OfflineMiner, TripletLoss, UnknownNameError

LOSSES = [BatchHardLoss(), BatchAllLoss(), TripletLoss()]
X = torch.randn(6, 3)
Y = torch.tensor([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("loss_fn", LOSSES, ids=lambda f: type(f).__name__)
class TestBadInput:
    def test_mismatched_lengths(self, loss_fn):
        with pytest.raises(ValueError, match="labels has length 5 but the embeddings have 6 rows"):
            loss_fn(X, Y[:5])

    def test_float_labels(self, loss_fn):
        with pytest.raises(TypeError, match="labels must have an integer dtype"):
            loss_fn(X, Y.float())

    def test_bool_labels(self, loss_fn):
        with pytest.raises(TypeError, match="integer dtype"):
            loss_fn(X, Y > 0)

    def test_2d_labels(self, loss_fn):
        with pytest.raises(ValueError, match="labels must be 1-D"):
            loss_fn(X, Y[:, None])

    def test_list_labels(self, loss_fn):
        with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
            loss_fn(X, [0, 0, 1, 1, 2, 2])

    @pytest.mark.parametrize("bad,what", [(float("nan"), "1 NaN"), (float("inf"), "1 inf")])
    def test_non_finite_embeddings(self, loss_fn, bad, what):
        x = X.clone()
        x[2, 1] = bad
        with pytest.raises(ValueError, match=f"embeddings contains non-finite values .*{what}"):
            loss_fn(x, Y)

    def test_integer_embeddings(self, loss_fn):
        with pytest.raises(TypeError, match="embeddings must be a floating-point tensor"):
            loss_fn(torch.ones(6, 3, dtype=torch.int64), Y)

    def test_1d_embeddings(self, loss_fn):
        with pytest.raises(ValueError, match=r"embeddings must have shape \(N, D\)"):
            loss_fn(torch.randn(6), Y)

    def test_single_sample(self, loss_fn):
        with pytest.raises(ValueError, match="at least 2 are needed"):
            loss_fn(torch.randn(1, 3), Y[:1])

    def test_empty_batch(self, loss_fn):
        with pytest.raises(ValueError, match="0 row"):
            loss_fn(torch.randn(0, 3), Y[:0])


@pytest.mark.parametrize("cls", [BatchHardLoss, BatchAllLoss, TripletLoss])
def test_init_validation(cls):
    with pytest.raises(UnknownNameError, match="unknown margin function 'hinj'.*hinge, softplus.*did you mean 'hinge'"):
        cls(margin_fn="hinj")
    with pytest.raises(UnknownNameError, match="unknown distance 'l2'; valid names: cosine, euclidean, sqeuclidean"):
        cls(distance="l2")
    with pytest.raises(ValueError, match="margin must be >= 0"):
        cls(margin=-0.1)
    with pytest.raises(ValueError, match="margin must be finite"):
        cls(margin=float("nan"))
    with pytest.raises(TypeError, match="margin must be a real number"):
        cls(margin="0.2")
    with pytest.raises(ValueError, match="reduction must be one of"):
        cls(reduction="avg")


def test_batch_all_rejects_none_reduction():
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'mean_active', 'sum'"):
        BatchAllLoss(reduction="none")


@pytest.mark.parametrize("cls", [BatchAllLoss, BatchHardLoss])
def test_max_class_size(cls):
    with pytest.raises(ValueError, match="max_class_size=2 but a class in this batch has 3 members"):
        cls(max_class_size=2)(torch.randn(6, 3), torch.tensor([0, 0, 0, 1, 1, 2]))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="max_class_size must be a positive int or None"):
            cls(max_class_size=bad)


def test_triplet_loss_validation():
    with pytest.raises(ValueError, match="labels are required unless triplets are given"):
        TripletLoss()(X)
    with pytest.raises(ValueError, match=r"triplet negative indices must lie in \[0, 6\)"):
        TripletLoss()(X, triplets=(torch.tensor([0]), torch.tensor([1]), torch.tensor([6])))
    with pytest.raises(ValueError, match="differ in length"):
        TripletLoss()(X, triplets=(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(TypeError, match="1-D int32/int64"):
        TripletLoss()(X, triplets=(torch.tensor([0.0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="mines a bank, not a batch"):
        TripletLoss(miner="offline")
    with pytest.raises(ValueError, match="not available with the batch_all miner"):
        TripletLoss(miner="batch_all", reduction="none")
    with pytest.raises(
        UnknownNameError, match="unknown miner 'hard'; valid names: batch_all, batch_hard, offline, random"
    ):
        TripletLoss(miner="hard")


def test_offline_miner_validation():
    with pytest.raises(ValueError, match="negative must be one of 'hardest', 'semihard'"):
        OfflineMiner(negative="easy")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        OfflineMiner(chunk_size=0)
    with pytest.raises(ValueError, match="bank contains non-finite values"):
        OfflineMiner()(torch.full((4, 2), float("nan")), torch.tensor([0, 0, 1, 1]))
