"""Evaluation: agreement with human judges and retrieval quality, measured as the field does.

- Expert agreement: Kendall tau-c between the score and each individual expert rating
  (each pair expanded to its three ratings, the CLIPScore protocol on Flickr8K-Expert),
  and Spearman against the mean expert rating.
- Crowd agreement: Kendall tau-b against the share of yes votes.
- Retrieval: Recall@1/5/10 and MRR of the photo each query was written for: on the test
  queries over the test photos (reported, never used to choose), and on training folds
  (each held-out caption among the held-out photos; tasks/train.py).
"""

from __future__ import annotations

import numpy as np


def judgment_agreement(score: np.ndarray, expert: np.ndarray, crowd_share: np.ndarray) -> dict[str, float]:
    """``expert`` is [n, 3] with NaN where a pair has no expert rating; ``crowd_share`` NaN likewise."""
    from scipy import stats  # here, not at the top: a run that reuses its heads never needs it

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


def retrieval_ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """``scores`` [queries, gallery]; ``correct[q]`` the gallery index of query q's photo.

    Rank = 1 + photos scored strictly higher; ties count in the query's favour, a
    deterministic choice that the tie-free float scores here almost never meet.
    """
    target = scores[np.arange(len(correct)), correct]
    return 1 + (scores > target[:, None]).sum(1)


def rank_metrics(rank: np.ndarray) -> dict[str, float]:
    """Recall@1/5/10, MRR and ``n_queries`` from the (n,) 1-based ranks of each query's photo."""
    out = {f"recall_at_{k}": float((rank <= k).mean()) for k in (1, 5, 10)}
    out["mrr"] = float((1.0 / rank).mean())
    out["n_queries"] = float(len(rank))
    return out


def retrieval_metrics(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """``rank_metrics`` of ``retrieval_ranks(scores, correct)``: scores (queries, gallery), correct (queries,)
    gallery index."""
    return rank_metrics(retrieval_ranks(scores, correct))


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when one class is absent or a score is NaN."""
    from sklearn.metrics import roc_auc_score

    label = np.asarray(label).astype(bool)
    score = np.asarray(score, np.float64)
    if label.all() or (~label).all() or np.isnan(score).any():
        return float("nan")
    return float(roc_auc_score(label, score))


def threshold_for_recall(score: np.ndarray, label: np.ndarray, recall: float) -> float:
    """The highest threshold whose recall on (score, label) is at least ``recall``."""
    pos = np.sort(score[label.astype(bool)])
    if len(pos) == 0:
        return 0.5
    k = int(np.floor((1.0 - recall) * len(pos)))
    return float(pos[min(k, len(pos) - 1)])


def precision_recall_at(score: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, float]:
    """Flagging figures at ``score >= threshold``.

    Args:
        score: (n,) scores.
        label: (n,) truth, truthy = positive.
        threshold: the decision threshold.

    Returns:
        ``precision``, ``recall`` (0 when there is nothing to divide by), and the counts
        ``flagged``, ``positives``, ``n``, all floats.
    """
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


def fusion_protocols(model_scores: np.ndarray, fuse, descs, queries: np.ndarray, query_ids: list[str],
                     correct: np.ndarray, shown: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """The product's ranking measured three ways (issue 18), each query's photo ranked among
    the whole gallery (the law off: ranking quality, not what is shown):

    1. ``p1_model_alone``: the head's scores ``model_scores`` [Q, photos];
    2. ``p2_product_own_description_left_out``: fused with the photos' descriptions, each
       query's own description (id ``query_ids[q]``) left out;
    3. ``p3_product_no_descriptions``: fused with every description removed (a night of new
       uploads): equals (1) by construction of the fallback.

    Also ``descriptions_only_own_left_out`` (the description channel alone, photos without
    descriptions last) and, when ``shown`` [photos] bool is given, ``p2_product_shown_photos``:
    protocol (2) among the photos the law lets a user see, for queries whose photo is one.
    ``fuse(score, desc_max, desc_mean)`` returns fused scores of the same shape.
    """
    from tasks.descriptions import description_scores

    out = {"p1_model_alone": retrieval_metrics(model_scores, correct)}
    dmax, dmean = description_scores(queries, descs, query_ids)
    fused = fuse(model_scores, dmax, dmean)
    out["p2_product_own_description_left_out"] = retrieval_metrics(fused, correct)
    none_max, none_mean = description_scores(queries, descs.without_all(), query_ids)
    out["p3_product_no_descriptions"] = retrieval_metrics(fuse(model_scores, none_max, none_mean), correct)
    out["descriptions_only_own_left_out"] = retrieval_metrics(np.where(np.isnan(dmax), -np.inf, dmax), correct)
    if shown is not None:
        shown = np.asarray(shown, bool)
        ok = shown[correct]
        if ok.any() and shown.any():
            where = np.cumsum(shown) - 1
            out["p2_product_shown_photos"] = retrieval_metrics(fused[ok][:, shown], where[correct[ok]])
    return out
