"""A generated matrix of bad inputs over the public API: every case raises ValueError or TypeError whose message
names the offending argument (never a raw IndexError, a NaN or a silently wrong number)."""

from __future__ import annotations

import itertools

import pytest
import torch

from tripletkit import (
    BatchAllLoss,
    BatchHardLoss,
    BatchSemiHardLoss,
    CrossBatchMemory,
    HardNetLoss,
    TripletLoss,
)

LABELLED = {
    "batch_hard": lambda: BatchHardLoss(),
    "batch_all": lambda: BatchAllLoss(),
    "batch_semihard": lambda: BatchSemiHardLoss(),
    "triplet_random": lambda: TripletLoss(miner={"name": "random", "seed": 0}),
    "triplet_semihard": lambda: TripletLoss(miner="semihard"),
    "xbm": lambda: CrossBatchMemory(BatchHardLoss(), embedding_size=4, memory_size=32),
}

GOOD_X = torch.randn(8, 4)
GOOD_Y = torch.arange(4).repeat_interleave(2)


def _nan():
    x = GOOD_X.clone()
    x[2, 1] = float("nan")
    return x


def _inf():
    x = GOOD_X.clone()
    x[0, 0] = float("inf")
    return x


EMBEDDINGS = {
    "list": ([[0.0] * 4] * 8, TypeError, "embeddings must be a torch.Tensor"),
    "int tensor": (torch.zeros(8, 4, dtype=torch.long), TypeError, "embeddings must be a floating-point"),
    "1-D": (torch.zeros(8), ValueError, r"embeddings must have shape \(N, D\)"),
    "3-D": (torch.zeros(8, 4, 1), ValueError, r"embeddings must have shape \(N, D\)"),
    "no columns": (torch.zeros(8, 0), ValueError, "embeddings has no dimensions"),
    "NaN": (_nan(), ValueError, r"embeddings contains non-finite values \(1 NaN, 0 inf\)"),
    "inf": (_inf(), ValueError, r"embeddings contains non-finite values \(0 NaN, 1 inf\)"),
}

LABELS = {
    "list": ([0, 0, 1, 1, 2, 2, 3, 3], TypeError, "labels must be a torch.Tensor"),
    "float": (GOOD_Y.float(), TypeError, "labels must have an integer dtype"),
    "2-D": (GOOD_Y[:, None], ValueError, "labels must be 1-D"),
    "short": (GOOD_Y[:7], ValueError, "labels has length 7 but the embeddings have 8 rows"),
    "long": (torch.arange(9), ValueError, "labels has length 9 but the embeddings have 8 rows"),
}


@pytest.mark.parametrize("loss,case", list(itertools.product(LABELLED, EMBEDDINGS)))
def test_bad_embeddings(loss, case):
    x, err, msg = EMBEDDINGS[case]
    with pytest.raises(err, match=msg):
        LABELLED[loss]()(x, GOOD_Y)


@pytest.mark.parametrize("loss,case", list(itertools.product(LABELLED, LABELS)))
def test_bad_labels(loss, case):
    y, err, msg = LABELS[case]
    with pytest.raises(err, match=msg):
        LABELLED[loss]()(GOOD_X, y)


CONSTRUCTORS = [
    (lambda: BatchHardLoss(margin=-0.1), ValueError, "margin must be >= 0"),
    (lambda: BatchHardLoss(margin=float("nan")), ValueError, "margin must be finite"),
    (lambda: BatchHardLoss(margin="0.2"), TypeError, "margin must be a real number"),
    (lambda: BatchHardLoss(distance="manhattan"), ValueError, "manhattan"),
    (lambda: BatchHardLoss(distance=5), TypeError, "distance"),
    (lambda: BatchHardLoss(margin_fn="relu"), ValueError, "relu"),
    (lambda: BatchHardLoss(margin_fn=3), TypeError, "margin"),
    (lambda: BatchHardLoss(reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: BatchHardLoss(max_class_size=0), ValueError, "max_class_size must be a positive int"),
    (lambda: BatchHardLoss(max_class_size=2.5), ValueError, "max_class_size must be a positive int"),
    (lambda: BatchAllLoss(reduction="none"), ValueError, "reduction must be one of"),
    (lambda: BatchAllLoss(block_elements=0), ValueError, "block_elements must be a positive int"),
    (lambda: BatchSemiHardLoss(reduction="none"), ValueError, "reduction must be one of"),
    (lambda: TripletLoss(miner="hardest"), ValueError, "hardest"),
    (lambda: TripletLoss(miner={"name": "random", "seed": 1.5}), TypeError, "seed must be an int"),
    (lambda: TripletLoss(miner="batch_all", reduction="none"), ValueError, "reduction='none' is not available"),
    (lambda: HardNetLoss(eps=-1.0), ValueError, "eps must be >= 0"),
    (lambda: HardNetLoss(duplicate_threshold=float("inf")), ValueError, "duplicate_threshold must be finite"),
    (lambda: HardNetLoss(exclusion_penalty=float("nan")), ValueError, "exclusion_penalty"),
    (lambda: CrossBatchMemory(BatchHardLoss(), embedding_size=0), ValueError, "embedding_size must be a positive"),
    (lambda: CrossBatchMemory("batch_hard", embedding_size=4), TypeError, "loss must be a callable"),
]


@pytest.mark.parametrize("i", range(len(CONSTRUCTORS)))
def test_bad_constructor_arguments(i):
    make, err, msg = CONSTRUCTORS[i]
    with pytest.raises(err, match=msg):
        make()


CALLS = [
    (lambda: BatchHardLoss()(GOOD_X[:1], GOOD_Y[:1]), ValueError, "at least 2 are needed"),
    (lambda: BatchHardLoss(margin=1e39)(GOOD_X, GOOD_Y), ValueError, "margin 1e\\+39 is not finite in torch.float32"),
    (lambda: BatchHardLoss(distance="sqeuclidean")(GOOD_X * 1e20, GOOD_Y), ValueError, "the loss is not finite"),
    (lambda: HardNetLoss()(GOOD_X, GOOD_X[:5]), ValueError, "anchors and positives must have the same shape"),
    (lambda: HardNetLoss()(GOOD_X, _nan()), ValueError, "positives contains non-finite"),
    (lambda: TripletLoss()(GOOD_X), ValueError, "labels are required unless triplets are given"),
    (
        lambda: TripletLoss()(GOOD_X, triplets=(torch.tensor([0]), torch.tensor([9]), torch.tensor([1]))),
        ValueError,
        r"triplet positive indices must lie in \[0, 8\)",
    ),
    (
        lambda: TripletLoss()(GOOD_X, triplets=(torch.tensor([0.0]), torch.tensor([1]), torch.tensor([2]))),
        TypeError,
        "triplet anchor indices must be a 1-D int32/int64 tensor",
    ),
    (
        lambda: BatchHardLoss()(GOOD_X, GOOD_Y, ref_embeddings=GOOD_X),
        ValueError,
        "ref_labels are required with ref_embeddings",
    ),
    (
        lambda: BatchAllLoss()(GOOD_X, GOOD_Y, ref_embeddings=GOOD_X[:, :2], ref_labels=GOOD_Y),
        ValueError,
        "ref_embeddings have 2 dimensions but the embeddings have 4",
    ),
    (
        lambda: BatchHardLoss()(GOOD_X, GOOD_Y, ref_embeddings=_nan(), ref_labels=GOOD_Y),
        ValueError,
        "ref_embeddings contains non-finite",
    ),
    (
        lambda: CrossBatchMemory(BatchHardLoss(), embedding_size=4, memory_size=4)(GOOD_X, GOOD_Y),
        ValueError,
        "a batch of 8 rows does not fit a memory of 4",
    ),
]


@pytest.mark.parametrize("i", range(len(CALLS)))
def test_bad_calls(i):
    call, err, msg = CALLS[i]
    with pytest.raises(err, match=msg):
        call()
