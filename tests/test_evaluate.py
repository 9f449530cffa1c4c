"""The metrics, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

import tasks  # noqa: F401
from tasks.evaluate import judgment_agreement, rank_metrics, retrieval_metrics, retrieval_ranks

NAN = np.nan


def test_expert_tau_c_expands_each_pair_to_its_three_ratings():
    # Expanded: scores (.2 x3, .8 x3, .8 x3) vs ratings (1,3,2 | 2,4,1 | 4,4,4).  Pairs across
    # score levels: against (2,4,1) concordant (1,2)(1,4)(3,4)(2,4) = 4, discordant
    # (3,2)(3,1)(2,1) = 3; against (4,4,4) all 9 concordant.  P = 13, Q = 3.
    # tau-c = 2 (P - Q) / (n^2 (m - 1) / m) with n = 9, m = min(2 levels, 4 levels) = 2  ->  20 / 40.5.
    expert = np.array([[1, 3, 2], [2, 4, 1], [4, 4, 4]], float)
    out = judgment_agreement(np.array([0.2, 0.8, 0.8]), expert, np.full(3, NAN))
    assert out["expert_kendall_tau_c"] == pytest.approx(20 / 40.5)
    assert out["n_expert_pairs"] == 3
    assert "crowd_kendall_tau_b" not in out


def test_spearman_against_the_mean_expert_rating():
    # Means (2, 1, 3) rank (2, 1, 3) against scores ranked (1, 2, 3): sum d^2 = 2,
    # rho = 1 - 6 * 2 / (3 * (9 - 1)) = 0.5.
    expert = np.array([[2, 2, 2], [1, 1, 1], [3, 3, 3]], float)
    out = judgment_agreement(np.array([0.1, 0.5, 0.9]), expert, np.full(3, NAN))
    assert out["expert_spearman"] == pytest.approx(0.5)


def test_crowd_tau_b_with_ties_and_unjudged_pairs_left_out():
    # Scores (1, 2, 3, 4) vs shares (0, 0, 1, .5): C = 4, D = 1 (3 vs 4), one tie in the
    # shares; tau-b = (4 - 1) / sqrt((6 - 0) (6 - 1)) = 3 / sqrt(30).  The fifth pair has
    # no crowd judgment and must not count.
    score = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    out = judgment_agreement(score, np.full((5, 3), NAN), np.array([0.0, 0.0, 1.0, 0.5, NAN]))
    assert out["crowd_kendall_tau_b"] == pytest.approx(3 / np.sqrt(30))
    assert out["n_crowd_pairs"] == 4
    assert "expert_kendall_tau_c" not in out


def test_pairs_with_a_missing_expert_rating_are_left_out():
    expert = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, NAN, 4]])
    with_gap = judgment_agreement(np.array([0.1, 0.2, 0.3, 0.0]), expert, np.full(4, NAN))
    without = judgment_agreement(np.array([0.1, 0.2, 0.3]), expert[:3], np.full(3, NAN))
    assert with_gap["expert_kendall_tau_c"] == without["expert_kendall_tau_c"]
    assert with_gap["n_expert_pairs"] == 3


def test_recall_and_mrr_by_hand():
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],   # correct 0: rank 1
        [0.5, 0.6, 0.7, 0.1],   # correct 0: two higher -> rank 3
        [0.2, 0.4, 0.3, 0.3],   # correct 2: one higher, one tie (in its favour) -> rank 2
    ])
    correct = np.array([0, 0, 2])
    assert retrieval_ranks(scores, correct).tolist() == [1, 3, 2]
    out = retrieval_metrics(scores, correct)
    assert out["recall_at_1"] == pytest.approx(1 / 3)
    assert out["recall_at_5"] == 1.0 and out["recall_at_10"] == 1.0
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert out["n_queries"] == 3


def test_rank_metrics_pool_ranks_from_several_galleries():
    out = rank_metrics(np.array([1, 6, 11, 2]))
    assert out["recall_at_1"] == 0.25 and out["recall_at_5"] == 0.5 and out["recall_at_10"] == 0.75
    assert out["mrr"] == pytest.approx((1 + 1 / 6 + 1 / 11 + 1 / 2) / 4)
