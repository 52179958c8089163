"""Cross-check with pytorch-metric-learning configured to the same definitions (skipped when it is absent).

Configuration from ../shared/docs/peer-libraries.md ("PML configuration that equals Hermans et al.'s definitions"):
LpDistance(normalize_embeddings=False, p=2, power=1) and MeanReducer (or the default AvgNonZeroReducer for the mean
over active triplets). Compared in float64, on S×K batches with K ≥ 2 (where PML and Hermans agree on edge cases).
"""

from __future__ import annotations

import pytest
import torch

from tripletkit import BatchAllLoss, BatchHardLoss

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, losses, miners, reducers  # noqa: E402


def _pml_distance():
    return distances.LpDistance(normalize_embeddings=False, p=2, power=1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("s,k", [(4, 2), (8, 4), (16, 8)])
def test_batch_hard_equals_pml(seed, s, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(s * k, 16, generator=g, dtype=torch.float64)
    labels = torch.arange(s).repeat_interleave(k)
    miner = miners.BatchHardMiner(distance=_pml_distance())
    idx = miner(x, labels)
    for margin_fn, margin, smooth in (("hinge", 0.2, False), ("softplus", 0.0, True)):
        ref = losses.TripletMarginLoss(
            margin=margin, distance=_pml_distance(), reducer=reducers.MeanReducer(), smooth_loss=smooth
        )
        want = ref(x, labels, idx)
        got = BatchHardLoss(margin=margin, margin_fn=margin_fn)(x, labels)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("reduction", ["mean", "mean_active"])
def test_batch_all_equals_pml(seed, reduction):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g, dtype=torch.float64) * 0.3
    labels = torch.arange(8).repeat_interleave(4)
    reducer = reducers.MeanReducer() if reduction == "mean" else reducers.AvgNonZeroReducer()
    for margin_fn, margin, smooth in (("hinge", 0.2, False), ("softplus", 0.0, True)):
        want = losses.TripletMarginLoss(margin=margin, distance=_pml_distance(), reducer=reducer, smooth_loss=smooth)(
            x, labels
        )
        got = BatchAllLoss(margin=margin, margin_fn=margin_fn, reduction=reduction)(x, labels)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
