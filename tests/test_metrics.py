from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tripletkit.metrics import (
    average_precision,
    average_precision_from_ranks,
    matching_average_precision,
    negatives_first_ap_auc,
    roc_auc,
)
from tripletkit.testing import hpatches_reference as ref


def test_hand_computed_ap():
    # ranks of positives 1 and 3 of 3 entries, p = 2:
    # recall 0 → ½ with precision 1 → 1, then ½ → 1 with precision ½ → ⅔: ½·1 + ½·(½ + ⅔)/2 = 0.7916…
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1])) == pytest.approx(
        0.5 + 0.5 * (0.5 + 2 / 3) / 2
    )
    # a missed positive (numpos) halves the reachable recall
    assert average_precision(np.array([0.9]), np.array([1]), numpos=2) == pytest.approx(0.5)
    # no positive at all: recall stays 0
    assert average_precision(np.array([0.3, 0.2]), np.array([0, 0])) == 0.0
    # the first entry a negative: precision falls to 1e-10/1 before the positive at rank 2
    assert average_precision(np.array([0.9, 0.8]), np.array([0, 1])) == pytest.approx((1e-10 + 0.5) / 2)


def test_hand_computed_auc_and_ties():
    assert roc_auc(np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 0, 1, 0])) == 1.0
    # the benchmark does not merge tied scores into one ROC step: input order (reference) or negatives first
    # (pessimistic) decides, all or nothing
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0]), ties="pessimistic") == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 1.0
    with pytest.raises(ValueError, match="ties must be"):
        roc_auc(np.array([1.0]), np.array([1]), ties="random")
    with pytest.raises(ValueError, match="numpos=1 is smaller than the 2 positives"):
        average_precision(np.array([1.0, 2.0]), np.array([1, 1]), numpos=1)


def test_auc_equals_sklearn_without_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.normal(size=300)
        labels = rng.random(300) < 0.3
        assert roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


scores_st = hnp.arrays(np.float64, st.integers(1, 40), elements=st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]))


@given(data=st.data(), scores=scores_st)
def test_ap_and_auc_equal_the_literal_reference(data, scores):
    labels = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    extra = data.draw(st.integers(0, 3))
    numpos = int(labels.sum()) + extra
    assert average_precision(scores, labels, numpos=numpos) == pytest.approx(ref.ap(scores, labels, numpos), abs=1e-12)
    assert roc_auc(scores, labels) == pytest.approx(ref.auc(scores, labels), abs=1e-12)


dist_st = hnp.arrays(np.float64, st.integers(0, 30), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0, np.inf]))


@given(neg=dist_st, pos=dist_st.filter(len), data=st.data())
def test_verification_ap_auc_from_sorted_parts_equal_the_literal_reference(neg, pos, data):
    # the benchmark's lists: [negatives, positives] scored by −distance, AP on every negative and the first k
    # positives; ties between a negative and a positive (repeated values) and infinite distances included
    k = data.draw(st.integers(1, len(pos)))
    scores = -np.concatenate([neg, pos])
    labels = np.concatenate([np.zeros(len(neg), bool), np.ones(len(pos), bool)])
    for ties in ("reference", "pessimistic"):
        ap, auc = negatives_first_ap_auc(neg, pos, k, ties)
        assert ap == pytest.approx(ref.ap(scores[: len(neg) + k], labels[: len(neg) + k]), abs=1e-12)
        assert auc == pytest.approx(ref.auc(scores, labels), abs=1e-12)


def test_verification_ap_auc_rejects_nan_and_a_bad_count():
    with pytest.raises(ValueError, match="NaN"):
        negatives_first_ap_auc(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="ap_positives=3"):
        negatives_first_ap_auc(np.array([1.0]), np.array([1.0, 2.0]), 3)


@given(data=st.data(), n=st.integers(1, 30))
def test_ap_from_ranks_equals_sorting(data, n):
    labels = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    scores = -np.arange(n, dtype=float)  # already in rank order
    missing = data.draw(st.integers(0, 3))
    ranks = np.flatnonzero(labels) + 1
    padded = np.concatenate([ranks, np.zeros(missing)])  # 0 = not retrieved
    numpos = len(ranks) + missing
    got = average_precision_from_ranks(padded[None, :], numpos)[0] if len(padded) else 0.0
    assert got == pytest.approx(average_precision(scores, labels, numpos=max(numpos, 0)), abs=1e-12)


def test_matching_ap_ties():
    d = np.array([[0.0, 0.0], [0.5, 1.0]])  # row 0 ties its true match with a wrong one; row 1 is wrong
    ap_ref, sr_ref = matching_average_precision(d)
    ap_pes, sr_pes = matching_average_precision(d, ties="pessimistic")
    assert sr_ref == 0.5 and sr_pes == 0.0 and ap_ref > ap_pes
    assert matching_average_precision(np.eye(3) * -1 + 1) == (1.0, 1.0)
