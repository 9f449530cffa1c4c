"""Results: the query -> top-k table, with the law applied row by row.

- A query that describes a child gets one row: no photo, the disclaimer.
- A photo the guard restricts keeps its rank (so positions stay honest) but is not
  shown: ``shown`` is false, ``image`` is kept for the audit, and the disclaimer stands
  in its place (``display`` is what a user sees).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from tasks.config import DISCLAIMER

RESULT_SCHEMA = {
    "run_id": pl.String,
    "query_id": pl.String,
    "query_text": pl.String,
    "rank": pl.Int32,
    "image": pl.String,
    "score": pl.Float32,
    "shown": pl.Boolean,
    "disclaimer": pl.String,
    "display": pl.String,
    "blocked_reason": pl.String,
}


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best photos per query, best first (ties: lower index)."""
    k = min(k, scores.shape[1])
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(scores, idx, axis=1)


def build_results(
    run_id: str,
    query_ids: list[str],
    query_texts: list[str],
    query_blocked: list[bool],
    gallery: list[str],
    photo_restricted: np.ndarray,
    scores: np.ndarray,
    k: int,
) -> pl.DataFrame:
    """``scores`` [queries, gallery]; rows for blocked queries are never ranked."""
    idx, top = top_k(scores, k) if len(gallery) else (np.zeros((len(query_ids), 0), int), None)
    rows = []
    for q, (qid, text, blocked) in enumerate(zip(query_ids, query_texts, query_blocked)):
        if blocked:
            rows.append((run_id, qid, text, None, None, None, False, DISCLAIMER, DISCLAIMER,
                         "query describes a child"))
            continue
        for r in range(idx.shape[1]):
            g = int(idx[q, r])
            hidden = bool(photo_restricted[g])
            rows.append((run_id, qid, text, r + 1, gallery[g], float(top[q, r]), not hidden,
                         DISCLAIMER if hidden else None, DISCLAIMER if hidden else gallery[g],
                         "photo shows a child" if hidden else None))
    return pl.DataFrame(rows, schema=RESULT_SCHEMA, orient="row")


# ---------------------------------------------------------------- Prefect task

from pathlib import Path  # noqa: E402

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.load import append_run_rows  # noqa: E402
from tasks.warehouse import connect  # noqa: E402


@task(name="rank", cache_policy=NO_CACHE)
def rank_task(db: Path, run_id: str, images, texts, model, top_k: int) -> pl.DataFrame:
    """Every saved query against the gallery; blocked queries are never scored."""
    with connect(db) as con:
        q = con.execute("""
            SELECT q.query_id, q.query_text, coalesce(f.flagged, true) AS blocked
            FROM stg_test_queries q
            LEFT JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            ORDER BY q.query_id""", [run_id]).pl()
        photos = con.execute("""
            SELECT g.image, coalesce(p.restricted, true) AS restricted
            FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
            ORDER BY g.image""", [run_id]).pl()
    blocked = q["blocked"].to_list()
    gallery = photos["image"].to_list()
    scores = np.full((q.height, len(gallery)), np.nan, dtype=np.float32)
    allowed = [i for i, b in enumerate(blocked) if not b]
    if allowed and gallery:
        img = images.features[images.rows("test", gallery)]
        txt = texts.vectors[texts.rows([q["query_text"][i] for i in allowed])]
        scores[allowed] = model.score_matrix(img, txt)
    results = build_results(run_id, q["query_id"].to_list(), q["query_text"].to_list(), blocked, gallery,
                            photos["restricted"].to_numpy(), scores, top_k)
    with connect(db) as con:
        append_run_rows(con, "search_results", run_id, results)
    get_run_logger().info("results: %d queries (%d blocked), %d rows, %d photos hidden",
                          q.height, sum(blocked), results.height, int((~results["shown"]).sum()) - sum(blocked))
    return results
