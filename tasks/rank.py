"""Results: the query -> top-k table, with the law applied (the results contract).

For every saved query the product ranks the gallery by the fused score (the relevance
head fused with the photo's descriptions, models/fusion.py), then applies the law:

- A query that describes a child gets one row: no photo, the disclaimer.
- Otherwise the rows are the top-k photos that may be shown, ranked among themselves
  (``rank`` 1..k).  A photo the guard restricts (photo_flags.restricted; no verdict
  counts as restricted) is never shown whatever its score: when it would have ranked
  above the k-th shown photo it is recorded in ``withheld_results`` (its rank before the
  law, ``model_rank``, and the reason) for compliance officers, and the query's first row
  carries ``note`` -- stated once per query -- saying that images were withheld, with the
  disclaimer.  If nothing may be shown, the query gets one disclaimer row.

Ranking is two-stage (tasks/retrieval.py): an exact first stage picks each query's
candidates from the gallery index (plus the photos whose descriptions match it best),
the chosen head reranks only those.  Queries are cut into shards, each a mapped task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from tasks.compliance_text import REFUSALS
from tasks.config import DISCLAIMER

# Bump when what ranking writes changes for the same inputs (order, columns, the law's
# rules), so earlier runs' results are never copied into a run that would rank differently.
# 2: fused with the description channel; shown photos only, withheld ones audited.
RANK_FORMAT = 2
# What a user reads once when a query's results left some photos out.
WITHHELD_NOTE = f"Some images were withheld. {DISCLAIMER}"
NO_VERDICT_REASON = "no photo guard verdict (fail-closed)"
DEFAULT_REASON = "photo guard"

RESULT_SCHEMA = {
    "run_id": pl.String,
    "query_id": pl.String,
    "query_text": pl.String,
    "rank": pl.Int32,               # 1..k among the shown photos; null on a disclaimer-only row
    "image": pl.String,             # the shown photo; null on a disclaimer-only row
    "score": pl.Float32,            # the fused score in (0, 1): what the ranking sorts by
    "model_score": pl.Float32,      # the relevance head's score in [0, 1]
    "description_score": pl.Float32,  # best cosine with the photo's descriptions; null when none
    "channel": pl.String,           # 'model', 'descriptions', or 'model (no descriptions)'
    "model_rank": pl.Int32,         # the photo's rank before the law removed restricted photos
    "shown": pl.Boolean,
    "disclaimer": pl.String,        # the legal text on a disclaimer-only row, else null
    "display": pl.String,           # what the user sees: the photo's name or the disclaimer
    "blocked_reason": pl.String,    # why a query got only the disclaimer
    "note": pl.String,              # on a query's first row when photos were withheld, else null
}

WITHHELD_SCHEMA = {
    "run_id": pl.String,
    "query_id": pl.String,
    "query_text": pl.String,
    "image": pl.String,
    "model_rank": pl.Int32,         # where it would have ranked, law off (1 = first)
    "score": pl.Float32,            # its fused score
    "reason": pl.String,            # photo_flags' reason / deciding signal, else 'photo guard'
}


@dataclass
class Ranked:
    """One query's candidates in the product's order, best first (all arrays [n])."""

    rows: np.ndarray                # gallery rows
    score: np.ndarray               # fused
    model_score: np.ndarray
    description_score: np.ndarray   # NaN where the photo has no description left
    channel: np.ndarray             # str


def order_candidates(model, rows: np.ndarray, model_score: np.ndarray, desc_max: np.ndarray,
                     desc_mean: np.ndarray, head: str | None = None) -> Ranked:
    """Fuse one query's candidates (duplicates dropped) and sort them: fused score
    descending, ties by lower gallery row."""
    rows, first = np.unique(np.asarray(rows, np.int64), return_index=True)
    ms, dx, dm = model_score[first], desc_max[first], desc_mean[first]
    fused = model.fuse(ms, dx, dm, head)
    f = model.fusions.get(head or model.head)
    channel = (f.channel(ms, dx, dm) if f is not None else np.full(len(rows), "model", dtype=object))
    order = np.lexsort((rows, -fused))
    return Ranked(rows[order], fused[order], ms[order], dx[order], channel[order])


def build_results(run_id: str, query_ids: list[str], query_texts: list[str], query_blocked: list[bool],
                  gallery: list[str], photo_restricted: np.ndarray, reasons: list[str], ranked: dict[int, Ranked],
                  k: int, refusals: list[str | None] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(search_results rows, withheld_results rows) under the results contract.

    ``ranked[q]``: query q's candidates in the product's order (absent for blocked queries,
    which are never scored).  ``photo_restricted`` [photos] bool, ``reasons`` [photos] why.
    ``refusals[q]``: a refused query's message (blank, too long, not English) shown instead of
    the disclaimer; None for a query that describes a child or is searchable.
    """
    rows, withheld = [], []
    for q, (qid, text, blocked) in enumerate(zip(query_ids, query_texts, query_blocked)):
        if blocked and refusals and refusals[q]:
            rows.append((run_id, qid, text, None, None, None, None, None, None, None, False, None, refusals[q],
                         refusals[q], None))
            continue
        if blocked or q not in ranked:
            rows.append((run_id, qid, text, None, None, None, None, None, None, None, False, DISCLAIMER, DISCLAIMER,
                         "query describes a child" if blocked else "nothing to rank", None))
            continue
        r = ranked[q]
        mine, held = [], []
        for pos, g in enumerate(r.rows):
            if len(mine) == k:
                break
            g = int(g)
            if photo_restricted[g]:
                held.append((run_id, qid, text, gallery[g], pos + 1, float(r.score[pos]), reasons[g]))
                continue
            ds = None if np.isnan(r.description_score[pos]) else float(r.description_score[pos])
            mine.append([run_id, qid, text, len(mine) + 1, gallery[g], float(r.score[pos]),
                         float(r.model_score[pos]), ds, str(r.channel[pos]), pos + 1, True, None, gallery[g], None,
                         None])
        note = WITHHELD_NOTE if held else None
        if mine:
            mine[0][-1] = note
            rows += [tuple(m) for m in mine]
        else:
            rows.append((run_id, qid, text, None, None, None, None, None, None, None, False, DISCLAIMER, DISCLAIMER,
                         "every photo withheld", note))
        withheld += held
    return (pl.DataFrame(rows, schema=RESULT_SCHEMA, orient="row"),
            pl.DataFrame(withheld, schema=WITHHELD_SCHEMA, orient="row"))


def photo_verdicts(con, run_id: str) -> pl.DataFrame:
    """Gallery photos in order with sha256, restricted (fail-closed) and the reason to withhold.

    The reason is photo_flags' ``reason`` or ``deciding_signal`` column when the guard
    writes one, else 'photo guard'; a photo without a verdict is restricted.
    """
    cols = {r[0] for r in con.execute("DESCRIBE photo_flags").fetchall()}
    why = next((f"p.{c}" for c in ("reason", "deciding_signal") if c in cols), None)
    reason = f"coalesce(CAST({why} AS VARCHAR), '{DEFAULT_REASON}')" if why else f"'{DEFAULT_REASON}'"
    return con.execute(f"""
        SELECT g.image, g.sha256, coalesce(p.restricted, true) AS restricted,
               CASE WHEN p.image IS NULL THEN '{NO_VERDICT_REASON}' ELSE {reason} END AS reason
        FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
        ORDER BY g.image""", [run_id]).pl()


# ---------------------------------------------------------------- Prefect task

from pathlib import Path  # noqa: E402

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks import distributed, retrieval  # noqa: E402
from tasks.distributed import ShardConfig  # noqa: E402
from tasks.load import append_run_rows, fingerprint, record_stage  # noqa: E402
from tasks.retrieval import RetrievalConfig  # noqa: E402
from tasks.warehouse import connect  # noqa: E402


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
