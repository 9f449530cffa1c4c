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
    out = {f"recall_at_{k}": float((rank <= k).mean()) for k in (1, 5, 10)}
    out["mrr"] = float((1.0 / rank).mean())
    out["n_queries"] = float(len(rank))
    return out


def retrieval_metrics(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    return rank_metrics(retrieval_ranks(scores, correct))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of each distinct value's last copy
    return ((last - counts + 1 + last) / 2.0)[inverse.reshape(-1)]


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    label = label.astype(bool)
    if label.all() or (~label).all() or np.isnan(score).any():
        return float("nan")  # NaN scores: no ranking to measure (as scipy's rankdata propagates NaN)
    ranks = average_ranks(score)
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


# ---------------------------------------------------------------- Prefect task

# Bump when the figures change for the same inputs, so earlier runs' figures are not copied.
EVALUATE_FORMAT = 1

from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.warehouse import connect  # noqa: E402


@task(name="evaluate-retrieval", cache_policy=NO_CACHE)
def evaluate_retrieval_task(db: Path, run_id: str, images, texts, model) -> dict[str, dict[str, float]]:
    """All test queries over all gallery photos, compliance filter off: the model alone."""
    from tasks.load import copy_run_rows, earlier_run_with, fingerprint, record_stage
    from tasks.train import HEADS

    with connect(db) as con:
        q = con.execute("SELECT query_text, written_for_image FROM stg_test_queries ORDER BY query_id").pl()
        photos = con.execute("SELECT image, sha256 FROM gallery ORDER BY image").pl()
        gallery = photos["image"].to_list()
        # Same model, same photos, same queries: an earlier run's figures are this run's.
        fp = fingerprint(f"evaluate v{EVALUATE_FORMAT}", model.fingerprint, images.encoder, texts.encoder, list(HEADS),
                         q.rows(), photos.rows())
        if (found := earlier_run_with(con, "evaluate", fp, run_id)) is not None:
            prev, origin = found
            where = "protocol = 'test_queries_filter_off'"
            copy_run_rows(con, "model_metrics", prev, run_id, where)
            record_stage(con, run_id, "evaluate", fp, origin)
            rows = con.execute(f"SELECT head, metric, value FROM model_metrics WHERE run_id = ? AND {where}",
                               [run_id]).fetchall()
            out: dict[str, dict[str, float]] = {}
            for h, m, v in rows:
                out.setdefault(h, {})[m] = v
            get_run_logger().info("retrieval (filter off): inputs unchanged since run %s (%s): figures reused",
                                  prev, fp)
            return out
    pos = {g: i for i, g in enumerate(gallery)}
    keep = [i for i, w in enumerate(q["written_for_image"]) if w in pos]
    img = images.features[images.rows("test", gallery)]
    txt = texts.vectors[texts.rows([q["query_text"][i] for i in keep])]
    correct = np.array([pos[q["written_for_image"][i]] for i in keep], dtype=np.int64)
    out = {h: retrieval_metrics(model.score_matrix(img, txt, h), correct) for h in HEADS}
    rows = [{"run_id": run_id, "component": "relevance", "head": h, "protocol": "test_queries_filter_off",
             "metric": m, "value": v} for h, ms in out.items() for m, v in ms.items()]
    with connect(db) as con:
        con.execute("DELETE FROM model_metrics WHERE run_id = ? AND protocol = 'test_queries_filter_off'", [run_id])
        con.register("_m", pl.DataFrame(rows))
        con.execute("INSERT INTO model_metrics BY NAME SELECT * FROM _m")
        con.unregister("_m")
        record_stage(con, run_id, "evaluate", fp, None)
    get_run_logger().info("retrieval (filter off): %s", {h: round(m["recall_at_1"], 3) for h, m in out.items()})
    return out
