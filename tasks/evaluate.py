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


# ---------------------------------------------------------------- Prefect task

# Bump when the figures change for the same inputs, so earlier runs' figures are not copied.
# 2: the description channel's three protocols.
EVALUATE_FORMAT = 2

from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402
from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from models.features import HEADS  # noqa: E402
from tasks.warehouse import connect  # noqa: E402

PROTOCOLS = ("test_queries_filter_off", "p1_model_alone", "p2_product_own_description_left_out",
             "p3_product_no_descriptions", "descriptions_only_own_left_out", "p2_product_shown_photos",
             "description_gallery")


@task(name="evaluate-retrieval", cache_policy=NO_CACHE)
def evaluate_retrieval_task(db: Path, run_id: str, images, texts, model) -> dict[str, dict[str, float]]:
    """Test queries over all gallery photos: the model alone (all 500 queries, as before) and
    the three protocols of the description channel on the allowed queries.  Reported only:
    nothing here is fitted or chosen.  Returns {head: {metric: value}} for the model alone."""
    from tasks.descriptions import gallery_descriptions
    from tasks.load import copy_run_rows, earlier_run_with, fingerprint, record_stage

    where_p = "protocol IN (" + ", ".join(f"'{p}'" for p in PROTOCOLS) + ")"
    with connect(db) as con:
        q = con.execute("""
            SELECT q.query_id, q.query_text, q.described_image, coalesce(f.flagged, true) AS blocked
            FROM stg_test_queries q
            LEFT JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            ORDER BY q.query_id""", [run_id]).pl()
        photos = con.execute("""
            SELECT g.image, g.sha256, coalesce(p.restricted, true) AS restricted
            FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
            ORDER BY g.image""", [run_id]).pl()
        gallery = photos["image"].to_list()
        descs, desc_rows = gallery_descriptions(con, run_id, gallery, lambda t: texts.vectors[texts.rows(t)])
        # Same model, photos, verdicts, queries and descriptions: an earlier run's figures are this run's.
        fp = fingerprint(f"evaluate v{EVALUATE_FORMAT}", model.fingerprint, images.encoder, texts.encoder, list(HEADS),
                         q.rows(), photos.rows(), desc_rows.rows())
        if (found := earlier_run_with(con, "evaluate", fp, run_id)) is not None:
            prev, origin = found
            copy_run_rows(con, "model_metrics", prev, run_id, where_p)
            record_stage(con, run_id, "evaluate", fp, origin)
            rows = con.execute("SELECT head, metric, value FROM model_metrics WHERE run_id = ? "
                               "AND protocol = 'test_queries_filter_off'", [run_id]).fetchall()
            out: dict[str, dict[str, float]] = {}
            for h, m, v in rows:
                out.setdefault(h, {})[m] = v
            get_run_logger().info("retrieval: inputs unchanged since run %s (%s): figures reused", prev, fp)
            return out
    pos = {g: i for i, g in enumerate(gallery)}
    keep = [i for i, w in enumerate(q["described_image"]) if w in pos]
    img = images.features[images.rows("test", gallery)]
    txt = texts.vectors[texts.rows([q["query_text"][i] for i in keep])]
    correct = np.array([pos[q["described_image"][i]] for i in keep], dtype=np.int64)
    scores = {h: model.score_matrix(img, txt, h) for h in HEADS}
    out = {h: retrieval_metrics(s, correct) for h, s in scores.items()}
    rows = [{"head": h, "protocol": "test_queries_filter_off", "metric": m, "value": v}
            for h, ms in out.items() for m, v in ms.items()]
    allowed = np.array([not q["blocked"][i] for i in keep], bool)
    ids = [q["query_id"][i] for i, a in zip(keep, allowed) if a]
    shown = ~photos["restricted"].to_numpy()
    for h, s in scores.items():
        if not allowed.any():
            break
        measured = fusion_protocols(s[allowed], lambda m, a, b, h=h: model.fuse(m, a, b, h), descs, txt[allowed], ids,
                                    correct[allowed], shown)
        rows += [{"head": h, "protocol": p, "metric": m, "value": v} for p, ms in measured.items() for m, v in ms.items()]
    rows += [{"head": "descriptions", "protocol": "description_gallery", "metric": m, "value": float(v)} for m, v in (
        ("photos", descs.n_photos), ("photos_with_descriptions", (descs.counts() > 0).sum()),
        ("allowed_descriptions", len(descs.ids)))]
    frame = pl.DataFrame(rows).with_columns(pl.lit(run_id).alias("run_id"), pl.lit("relevance").alias("component"))
    with connect(db) as con:
        con.execute(f"DELETE FROM model_metrics WHERE run_id = ? AND {where_p}", [run_id])
        con.register("_m", frame)
        con.execute("INSERT INTO model_metrics BY NAME SELECT * FROM _m")
        con.unregister("_m")
        record_stage(con, run_id, "evaluate", fp, None)
    summary = {p: round(r["value"], 3) for p in PROTOCOLS for r in rows
               if r["head"] == model.head and r["protocol"] == p and r["metric"] == "recall_at_1"}
    get_run_logger().info("retrieval R@1, %s head: %s", model.head, summary)
    return out
