"""The ranking stage (Prefect): every saved query against the gallery, in mapped query shards,
under the results contract of ``tasks/rank.py`` (pure: the law, the ordering, the rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import distributed, retrieval
from tasks.compliance_text import REFUSALS
from tasks.distributed import ShardConfig
from tasks.load import append_run_rows, fingerprint, record_stage
from tasks.rank import RANK_FORMAT, Ranked, build_results, order_candidates, photo_verdicts
from tasks.retrieval import RetrievalConfig
from tasks.warehouse import connect


def array_digest(a: np.ndarray | None) -> str:
    """sha256 of an array's dtype, shape and bytes ("" for None): a cache key part."""
    import hashlib

    if a is None:
        return ""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def shard_key(_context, p: dict) -> str:
    """Prefect cache key of ``rank_shard``: its inputs' content (format, model, the index's
    content-keyed folder and file names, the query vectors, the extra candidates, settings)."""
    from dataclasses import asdict

    return "rank-shard-" + fingerprint(f"rank v{RANK_FORMAT}", p["model"].fingerprint,
                                       [Path(f).parent.name + "/" + Path(f).name for f in p["index"]],
                                       array_digest(p["txt"]), array_digest(p["extra"]), asdict(p["config"]))


@task(name="rank-shard", retries=1, retry_delay_seconds=2, cache_key_fn=shard_key, persist_result=True)
def rank_shard(txt: np.ndarray, index: list[str], model, k: int, config: RetrievalConfig = RetrievalConfig(),
               extra: np.ndarray | None = None, run_id: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One shard of queries: first stage over the index on disk, head on the candidates.

    ``txt`` [queries, 384] text vectors; ``index``: the gallery index's Parquet files.
    ``extra`` [queries, e]: more candidates per query (the photos whose descriptions match
    best), scored by the head beside the first stage's.  ``k`` is unused (every candidate
    is returned: the law may pass over some).  Returns (candidate rows [queries, n] in the
    head's order, the head's scores, the first stage's candidates best first, ``run_id``:
    the run that computed them).  Streams the index twice, a block at a time: once to pick
    candidates, once to fetch their vectors.  Cached by Prefect on ``shard_key`` (when the
    flow persists results: runners on this machine), so a later run with the same inputs
    gets the arrays back without reading the index.
    """
    files = [Path(f) for f in index]

    def blocks(precision):
        return retrieval.parquet_blocks(files, "text_space", config.block_rows, precision)

    cand, _ = retrieval.first_stage(retrieval.query_text_vectors(txt, model.bridge), blocks(config.precision),
                                    config.candidates, config.precision)
    pool = cand if extra is None or extra.size == 0 else np.hstack([cand, extra])
    idx, top = retrieval.rerank(model, lambda rows: retrieval.gather_rows(blocks("fp32"), rows), txt, pool,
                                pool.shape[1])
    return idx, top, cand, run_id


def first_stage_key(_context, p: dict) -> str:
    """Prefect cache key of ``first_stage_figures``: model, index files, query vectors, candidates, cut-offs."""
    return "first-stage-" + fingerprint(f"rank v{RANK_FORMAT}", p["model"].fingerprint,
                                        [Path(f).parent.name + "/" + Path(f).name for f in p["index"]],
                                        array_digest(p["txt"]), array_digest(p["cand"]), list(p["at"]),
                                        p["n_photos"], p["block_rows"])


@task(name="first-stage-figures", cache_key_fn=first_stage_key, persist_result=True)
def first_stage_figures(model, index: list[str], txt: np.ndarray, cand: np.ndarray, at: list[int], n_photos: int,
                        block_rows: int) -> list[dict]:
    """How much of each head's full top-10 (all gallery photos scored) the first stage's
    candidates ``cand`` [queries, C] keep, at each cut-off in ``at`` (``retrieval.first_stage_recall``);
    scores the whole gallery once per head, so Prefect caches it like the shards."""
    from models.features import HEADS

    return retrieval.first_stage_recall(
        model, lambda: retrieval.parquet_blocks([Path(f) for f in index], "text_space", block_rows), txt, cand,
        HEADS, at, n_photos=n_photos)


def rank_queries(tr, db: Path, run_id: str, images, texts, model, top_k: int, index_root: Path,
                 results_dir: Path | None,
                 config: RetrievalConfig = RetrievalConfig(), shards: ShardConfig = ShardConfig()) -> pl.DataFrame:
    """Every saved query against the gallery under the results contract; blocked queries
    are never scored.

    Runs in the flow: builds (or reuses) the gallery index, maps ``rank_shard`` over query
    shards on ``tr``, fuses the head's scores with the description channel (each saved
    query's own description left out), applies the law, writes search_results and
    withheld_results, and records how much of each head's full top-10 the first stage
    kept (model_metrics, protocol 'first_stage').

    Reuse is Prefect's: the shards and the first-stage figures are cached on their inputs'
    content (``shard_key``, ``first_stage_key``) with results persisted in the warehouse, so
    a run with the same model, index and queries gets them back without reading the index;
    the law and the descriptions are applied again every run (cheap, and they are what a
    changed verdict changes).  ``run_stages`` records which run computed the shards.  Nothing
    is cached when ``results_dir`` (where Prefect persists them) is None, or on a cluster on
    other machines (its workers cannot write the warehouse).
    """
    from dataclasses import asdict

    from prefect import unmapped

    from tasks.descriptions import description_scores, gallery_descriptions, top_description_candidates
    from tasks.distributed import shard_bounds

    log = get_run_logger()
    with connect(db) as con:
        q = con.execute("""
            SELECT q.query_id, q.query_text, coalesce(f.flagged, true) AS blocked,
                   CASE WHEN f.rule IN (SELECT unnest(?::varchar[])) THEN f.reason END AS refusal
            FROM stg_test_queries q
            LEFT JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            ORDER BY q.query_id""", [list(REFUSALS), run_id]).pl()
        photos = photo_verdicts(con, run_id)
        gallery = photos["image"].to_list()
        descs, desc_rows = gallery_descriptions(con, run_id, gallery, lambda t: texts.vectors[texts.rows(t)])
    blocked = q["blocked"].to_list()
    k = min(top_k, len(gallery))
    fp = fingerprint(f"rank v{RANK_FORMAT}", model.fingerprint, model.head, images.encoder, texts.encoder, k,
                     asdict(config), q.rows(), photos.rows(), desc_rows.rows())
    if results_dir is not None and distributed.on_this_machine(tr):
        shard_task = rank_shard.with_options(result_storage=results_dir)
        figures_task = first_stage_figures.with_options(result_storage=results_dir)
    else:
        shard_task = rank_shard.with_options(cache_policy=NO_CACHE, persist_result=False)
        figures_task = first_stage_figures.with_options(cache_policy=NO_CACHE, persist_result=False)
    computed_in: set[str] = set()
    allowed = [i for i, b in enumerate(blocked) if not b]
    metrics: list[dict] = []
    ranked: dict[int, Ranked] = {}
    if allowed and gallery:
        img = images.features[images.rows("test", gallery)]
        txt = texts.vectors[texts.rows([q["query_text"][i] for i in allowed])]
        own = [q["query_id"][i] for i in allowed]  # a saved query is its photo's description: left out
        dmax, dmean = description_scores(txt, descs, own)
        extra = top_description_candidates(dmax, config.candidates) if len(descs.ids) else None
        key = retrieval.index_key(model.fingerprint, images.encoder, photos["sha256"].to_list())
        files = retrieval.build_index(index_root / key, model.bridge, img, gallery, photos["sha256"].to_list())
        retrieval.prune_indexes(index_root, index_root / key)
        bounds = shard_bounds(len(allowed), shards.queries_per_shard, shards.min_shards)
        futures = tr.map(shard_task, {
            "txt": [txt[a:b] for a, b in bounds],
            "index": unmapped([str(f) for f in files]),
            "model": unmapped(model), "k": unmapped(k), "config": unmapped(config),
            "extra": [None if extra is None else extra[a:b] for a, b in bounds], "run_id": unmapped(run_id)})
        parts = [f.result() for f in futures]
        computed_in = {p[3] for p in parts}
        idx = [row for p in parts for row in p[0]]
        top = [row for p in parts for row in p[1]]
        for j, i in enumerate(allowed):
            ranked[i] = order_candidates(model, idx[j], top[j], dmax[j, idx[j]], dmean[j, idx[j]])
        cand = np.concatenate([p[2] for p in parts])
        at = sorted({c for c in (10, 20, 50) if c < cand.shape[1]} | {cand.shape[1]})
        metrics = figures_task(model, [str(f) for f in files], txt, cand, at, len(gallery), config.block_rows)
        kept = next(m["value"] for m in metrics
                    if m["head"] == model.head and m["metric"] == f"recall_of_full_top10_at_{cand.shape[1]}")
        metrics += [{"head": model.head, "metric": "recall_of_full_top10_at_C", "value": kept},
                    {"head": model.head, "metric": "candidates_C", "value": float(config.candidates)},
                    {"head": model.head, "metric": "gallery_photos", "value": float(len(gallery))}]
        log.info("ranked %d queries in %d shards: first stage top-%d of %d photos keeps %.3f of the %s head's "
                 "full top-10; %d descriptions of %d photos fused", len(allowed), len(bounds), cand.shape[1],
                 len(gallery), kept, model.head, len(descs.ids), int((descs.counts() > 0).sum()))
    results, withheld = build_results(run_id, q["query_id"].to_list(), q["query_text"].to_list(), blocked, gallery,
                                      photos["restricted"].to_numpy(), photos["reason"].to_list(), ranked, k,
                                      q["refusal"].to_list())
    with connect(db) as con:
        append_run_rows(con, "search_results", run_id, results)
        append_run_rows(con, "withheld_results", run_id, withheld)
        # Reused (for the audit) when every shard came from Prefect's cache, computed by one earlier
        # run whose results had the same inputs (k, the law and the descriptions included).
        origin = next(iter(computed_in)) if len(computed_in) == 1 and run_id not in computed_in else None
        if origin is not None and not con.execute(
                "SELECT 1 FROM run_stages WHERE run_id = ? AND stage = 'rank' AND fingerprint = ?", [origin, fp]).fetchone():
            origin = None
        record_stage(con, run_id, "rank", fp, origin)
        con.execute("DELETE FROM model_metrics WHERE run_id = ? AND protocol = 'first_stage'", [run_id])
        if metrics:
            con.register("_m", pl.DataFrame(metrics).with_columns(
                pl.lit(run_id).alias("run_id"), pl.lit("relevance").alias("component"),
                pl.lit("first_stage").alias("protocol")))
            con.execute("INSERT INTO model_metrics BY NAME SELECT * FROM _m")
            con.unregister("_m")
    log.info("results: %d queries (%d blocked), %d rows, %d photos withheld in %d queries",
             q.height, sum(blocked), results.height, withheld.height, withheld["query_id"].n_unique())
    return results
