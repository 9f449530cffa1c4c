"""Results: the query -> top-k table, with the law applied row by row.

- A query that describes a child gets one row: no photo, the disclaimer.
- A photo the guard restricts keeps its rank (so positions stay honest) but is not
  shown: ``shown`` is false, ``image`` is kept for the audit, and the disclaimer stands
  in its place (``display`` is what a user sees).

Ranking is two-stage (tasks/retrieval.py): an exact first stage picks each query's
candidates from the gallery index, the chosen head reranks only those.  The queries are
cut into shards, each a mapped task (tasks/distributed.py decides where they run).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from tasks.compliance_text import REFUSALS
from tasks.config import DISCLAIMER

# Bump when what ranking writes changes for the same inputs (order, columns, the law's
# rules), so earlier runs' results are never copied into a run that would rank differently.
RANK_FORMAT = 1

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
    idx: np.ndarray,
    top: np.ndarray,
    refusals: list[str | None] | None = None,
) -> pl.DataFrame:
    """``idx``/``top`` [queries, k]: each query's best gallery rows and scores, best first.

    Rows of blocked queries in ``idx`` are never read: a blocked query gets the disclaimer,
    or, when ``refusals`` gives it a message (blank, too long, not English), that message.
    """
    rows = []
    for q, (qid, text, blocked) in enumerate(zip(query_ids, query_texts, query_blocked)):
        if blocked and refusals and refusals[q]:
            rows.append((run_id, qid, text, None, None, None, False, None, refusals[q], refusals[q]))
            continue
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

from tasks import retrieval  # noqa: E402
from tasks.distributed import ShardConfig  # noqa: E402
from tasks.load import append_run_rows, copy_run_rows, earlier_run_with, fingerprint, record_stage  # noqa: E402
from tasks.retrieval import RetrievalConfig  # noqa: E402
from tasks.warehouse import connect  # noqa: E402


@task(name="rank-shard", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def rank_shard(txt: np.ndarray, index: list[str], model, k: int,
               config: RetrievalConfig = RetrievalConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shard of queries: first stage over the index on disk, head on the candidates.

    Returns (top-k gallery rows, their scores, the first stage's candidates best first).
    Streams the index twice, a block at a time: once to pick candidates, once to fetch
    their vectors for the head.
    """
    files = [Path(f) for f in index]

    def blocks(precision):
        return retrieval.parquet_blocks(files, "text_space", config.block_rows, precision)

    cand, _ = retrieval.first_stage(retrieval.query_text_vectors(txt, model.bridge), blocks(config.precision),
                                    config.candidates, config.precision)
    idx, top = retrieval.rerank(model, lambda rows: retrieval.gather_rows(blocks("fp32"), rows), txt, cand, k)
    return idx, top, cand


def rank_queries(tr, db: Path, run_id: str, images, texts, model, top_k: int, index_root: Path,
                 config: RetrievalConfig = RetrievalConfig(), shards: ShardConfig = ShardConfig()) -> pl.DataFrame:
    """Every saved query against the gallery; blocked queries are never scored.

    Runs in the flow: builds (or reuses) the gallery index, maps ``rank_shard`` over
    query shards on ``tr``, writes search_results, and records how much of each head's
    full top-10 the first stage kept (model_metrics, protocol 'first_stage').

    When nothing the results depend on changed since an earlier published run (same
    model and head, same gallery photos and their guard verdicts, same queries and
    verdicts, same k and retrieval settings), that run's results are this run's too.
    """
    from prefect import unmapped

    from tasks.distributed import shard_bounds
    from tasks.train import HEADS

    log = get_run_logger()
    with connect(db) as con:
        q = con.execute("""
            SELECT q.query_id, q.query_text, coalesce(f.flagged, true) AS blocked,
                   CASE WHEN f.rule IN (SELECT unnest(?::varchar[])) THEN f.reason END AS refusal
            FROM stg_test_queries q
            LEFT JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            ORDER BY q.query_id""", [list(REFUSALS), run_id]).pl()
        photos = con.execute("""
            SELECT g.image, g.sha256, coalesce(p.restricted, true) AS restricted
            FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
            ORDER BY g.image""", [run_id]).pl()
    blocked = q["blocked"].to_list()
    gallery = photos["image"].to_list()
    k = min(top_k, len(gallery))
    from dataclasses import asdict

    fp = fingerprint(f"rank v{RANK_FORMAT}", model.fingerprint, model.head, images.encoder, texts.encoder, k,
                     asdict(config), q.rows(), photos.rows())
    with connect(db) as con:
        if (found := earlier_run_with(con, "rank", fp, run_id)) is not None:
            prev, origin = found
            copy_run_rows(con, "search_results", prev, run_id)
            copy_run_rows(con, "model_metrics", prev, run_id, "protocol = 'first_stage'")
            record_stage(con, run_id, "rank", fp, origin)
            results = con.execute("SELECT * FROM search_results WHERE run_id = ? ORDER BY query_id, rank NULLS FIRST",
                                  [run_id]).pl()
            log.info("results: inputs unchanged since run %s (%s): its %d rows reused", prev, fp, results.height)
            return results
    idx = np.zeros((q.height, k), np.int64)
    top = np.zeros((q.height, k), np.float32)
    allowed = [i for i, b in enumerate(blocked) if not b]
    metrics: list[dict] = []
    if allowed and gallery:
        img = images.features[images.rows("test", gallery)]
        txt = texts.vectors[texts.rows([q["query_text"][i] for i in allowed])]
        key = retrieval.index_key(model.fingerprint, images.encoder, photos["sha256"].to_list())
        files = retrieval.build_index(index_root / key, model.bridge, img, gallery, photos["sha256"].to_list())
        retrieval.prune_indexes(index_root, index_root / key)
        bounds = shard_bounds(len(allowed), shards.queries_per_shard, shards.min_shards)
        futures = tr.map(rank_shard, {
            "txt": [txt[a:b] for a, b in bounds],
            "index": unmapped([str(f) for f in files]),
            "model": unmapped(model), "k": unmapped(k), "config": unmapped(config)})
        parts = [f.result() for f in futures]
        idx[allowed] = np.concatenate([p[0] for p in parts])
        top[allowed] = np.concatenate([p[1] for p in parts])
        cand = np.concatenate([p[2] for p in parts])
        at = sorted({c for c in (10, 20, 50) if c < cand.shape[1]} | {cand.shape[1]})
        metrics = retrieval.first_stage_recall(
            model, lambda: retrieval.parquet_blocks(files, "text_space", config.block_rows), txt, cand, HEADS, at,
            n_photos=len(gallery))
        kept = next(m["value"] for m in metrics
                    if m["head"] == model.head and m["metric"] == f"recall_of_full_top10_at_{cand.shape[1]}")
        metrics += [{"head": model.head, "metric": "recall_of_full_top10_at_C", "value": kept},
                    {"head": model.head, "metric": "candidates_C", "value": float(config.candidates)},
                    {"head": model.head, "metric": "gallery_photos", "value": float(len(gallery))}]
        log.info("ranked %d queries in %d shards: first stage top-%d of %d photos keeps %.3f of the %s head's "
                 "full top-10", len(allowed), len(bounds), cand.shape[1], len(gallery), kept, model.head)
    results = build_results(run_id, q["query_id"].to_list(), q["query_text"].to_list(), blocked, gallery,
                            photos["restricted"].to_numpy(), idx, top, q["refusal"].to_list())
    with connect(db) as con:
        append_run_rows(con, "search_results", run_id, results)
        record_stage(con, run_id, "rank", fp, None)
        con.execute("DELETE FROM model_metrics WHERE run_id = ? AND protocol = 'first_stage'", [run_id])
        if metrics:
            con.register("_m", pl.DataFrame(metrics).with_columns(
                pl.lit(run_id).alias("run_id"), pl.lit("relevance").alias("component"),
                pl.lit("first_stage").alias("protocol")))
            con.execute("INSERT INTO model_metrics BY NAME SELECT * FROM _m")
            con.unregister("_m")
    log.info("results: %d queries (%d blocked), %d rows, %d photos hidden",
             q.height, sum(blocked), results.height, int((~results["shown"]).sum()) - sum(blocked))
    return results
