"""Evaluation: agreement with human judges and retrieval quality, measured as the field does.

- Expert agreement: Kendall tau-c between the score and each individual expert rating
  (each pair expanded to its three ratings, the CLIPScore protocol on Flickr8K-Expert),
  and Spearman against the mean expert rating.
- Crowd agreement: Kendall tau-b against the share of yes votes.
- Retrieval: Recall@1/5/10 and MRR of the photo each query was written for.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def judgment_agreement(score: np.ndarray, expert: np.ndarray, crowd_share: np.ndarray) -> dict[str, float]:
    """``expert`` is [n, 3] with NaN where a pair has no expert rating; ``crowd_share`` NaN likewise."""
    out: dict[str, float] = {}
    has_e = ~np.isnan(expert).any(1)
    if has_e.sum() > 2:
        s = np.repeat(score[has_e], 3)
        r = expert[has_e].reshape(-1)
        out["expert_kendall_tau_c"] = float(stats.kendalltau(s, r, variant="c").statistic)
        out["expert_spearman"] = float(stats.spearmanr(score[has_e], expert[has_e].mean(1)).statistic)
        out["n_expert_pairs"] = float(has_e.sum())
    has_c = ~np.isnan(crowd_share)
    if has_c.sum() > 2:
        out["crowd_kendall_tau_b"] = float(stats.kendalltau(score[has_c], crowd_share[has_c], variant="b").statistic)
        out["n_crowd_pairs"] = float(has_c.sum())
    return out


def retrieval_metrics(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """``scores`` [queries, gallery]; ``correct[q]`` the gallery index of query q's photo."""
    target = scores[np.arange(len(correct)), correct]
    # Rank = 1 + photos scored strictly higher; ties count in the query's favour, a
    # deterministic choice that the tie-free float scores here almost never meet.
    rank = 1 + (scores > target[:, None]).sum(1)
    out = {f"recall_at_{k}": float((rank <= k).mean()) for k in (1, 5, 10)}
    out["mrr"] = float((1.0 / rank).mean())
    out["n_queries"] = float(len(correct))
    return out


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    label = label.astype(bool)
    if label.all() or (~label).all():
        return float("nan")
    ranks = stats.rankdata(score)
    n_pos, n_neg = label.sum(), (~label).sum()
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_for_recall(score: np.ndarray, label: np.ndarray, recall: float) -> float:
    """The highest threshold whose recall on (score, label) is at least ``recall``."""
    pos = np.sort(score[label.astype(bool)])
    if len(pos) == 0:
        return 0.5
    k = int(np.floor((1.0 - recall) * len(pos)))
    return float(pos[min(k, len(pos) - 1)])


def precision_recall_at(score: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, float]:
    label = label.astype(bool)
    pred = score >= threshold
    tp = float((pred & label).sum())
    return {
        "precision": tp / max(float(pred.sum()), 1.0),
        "recall": tp / max(float(label.sum()), 1.0),
        "flagged": float(pred.sum()),
        "positives": float(label.sum()),
        "n": float(len(label)),
    }
