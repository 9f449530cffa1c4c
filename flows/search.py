"""Ad-hoc search against the latest published run's gallery, model and descriptions.

    python -m flows.search "a dog runs on the beach" [more ...] [--queries-file FILE]
                           [--top-k 5] [--warehouse DIR] [--json]

Every query is scored in one process, whatever their number, and ranked like the nightly
table (tasks/rank.py): the relevance head fused with the photos' descriptions, then the
law.  A query describing a child gets only the disclaimer; otherwise the rows are the
top-k photos that may be shown, ranked among themselves, and the first row's ``note``
says once, with the disclaimer, that images were withheld.  Each withheld photo (its rank
before the law and the reason) is appended to ``<warehouse>/audit/adhoc_withheld/`` as
Parquet for compliance officers.  Each query is echoed exactly as typed.  The CLI calls
``run_search`` directly (no orchestration overhead); the ``adhoc-search`` flow wraps it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl

import tasks  # noqa: F401
from prefect import flow
from pydantic import Field

from tasks.compliance_text import QueryVerdict, check_query
from tasks.config import DISCLAIMER, OptionalPath, resolve_warehouse_dir
from tasks.descriptions import description_scores, gallery_descriptions
from tasks.embedding_cache import encoder_dir, load_cached, text_sha
from tasks.rank import WITHHELD_NOTE, build_results, order_candidates, photo_verdicts
from models.relevance_model import load_model
from tasks.atomic import atomic_write_parquet
from tasks.warehouse import Warehouse, connect

OUTPUT_KEYS = ("rank", "image", "score", "model_score", "description_score", "channel", "shown", "disclaimer",
               "display", "note")


class NoPublishedRun(RuntimeError):
    """Raised when there is nothing to search: no warehouse, or no finished run in it."""

    pass


def run_search(queries: list[str], warehouse_dir: Path, k: int = 5) -> list[dict]:
    """Rows for each query in order: ``{"query": as typed, **OUTPUT_KEYS}``.

    Raises NoPublishedRun when the warehouse has no finished run.
    """
    queries = list(queries) or [""]  # no query at all is answered like a blank one
    checks = [check_query(q) for q in queries]
    if not any(c.searchable for c in checks):  # nothing to rank: no warehouse needed
        return [_unranked_row(q, c) for q, c in zip(queries, checks)]
    wh = Warehouse(Path(warehouse_dir))
    if not wh.db_path.exists():
        raise NoPublishedRun(f"no warehouse at {wh.db_path}: run `python -m flows.reindex` first")
    with connect(wh.db_path, read_only=True) as con:
        run = con.execute("SELECT run_id, train_fingerprint FROM latest_run").fetchone()
        if run is None:
            raise NoPublishedRun("the warehouse has no finished run yet")
        run_id, fingerprint = run
        folder = wh.models_dir / fingerprint
        card = json.loads((folder / "card.json").read_text())
        photos = photo_verdicts(con, run_id)
        cached = load_cached(encoder_dir(wh.embeddings_dir, "image", card["image_encoder"]),
                             photos["sha256"].to_list(), ["features"])["features"]
        photos = photos.filter(pl.col("sha256").is_in(list(cached)))
        gallery = photos["image"].to_list()
        text_cache = encoder_dir(wh.embeddings_dir, "text", card["text_encoder"])

        def vectors_of(texts: list[str]) -> np.ndarray:
            found = load_cached(text_cache, [text_sha(t) for t in texts], ["embedding"])["embedding"]
            # A description whose vector is not cached scores as a neutral cosine of 0 (never
            # above a real match); the nightly run embeds every description, so this is rare.
            dim = next(iter(found.values())).shape[0] if found else 384
            return np.stack([found.get(text_sha(t), np.zeros(dim, np.float32)) for t in texts])

        descs, _ = gallery_descriptions(con, run_id, gallery, vectors_of)
    model = load_model(folder)
    head = _run_head(wh, run_id) or model.head
    img = np.stack([cached[s] for s in photos["sha256"]]) if gallery else None

    allowed = [i for i, c in enumerate(checks) if c.searchable]
    ranked = {}
    if allowed and gallery:
        from models.text_encoder import TextEncoder

        txt = TextEncoder(cache_dir=wh.models_dir / "onnx").encode([queries[i] for i in allowed])
        scores = model.score_matrix(img, txt, head)
        dmax, dmean = description_scores(txt, descs)  # a typed query is nobody's description
        everything = np.arange(len(gallery))
        for j, i in enumerate(allowed):
            ranked[i] = order_candidates(model, everything, scores[j], dmax[j], dmean[j], head)
    ids = [f"adhoc-{i}" for i in range(len(queries))]
    results, withheld = build_results(run_id, ids, list(queries), [not c.searchable for c in checks], gallery,
                                      photos["restricted"].to_numpy(), photos["reason"].to_list(), ranked, k,
                                      [c.message if c.action == "refuse" else None for c in checks])
    if withheld.height:
        searched = datetime.now(timezone.utc)
        atomic_write_parquet(withheld.with_columns(pl.lit(searched.replace(tzinfo=None)).alias("searched_at"))
                             .to_arrow(), wh.root / "audit" / "adhoc_withheld" /
                             f"part-{searched.strftime('%Y%m%dT%H%M%S%fZ')}.parquet")
    position = {qid: i for i, qid in enumerate(ids)}
    out = []
    for r in results.iter_rows(named=True):
        i = position[r["query_id"]]
        row = {"query": queries[i]}
        row.update({key: r[key] for key in OUTPUT_KEYS})
        if checks[i].action == "refuse":
            row["refused"] = checks[i].code
        for key in ("score", "model_score", "description_score"):
            row[key] = None if row[key] is None else round(float(row[key]), 6)
        out.append(row)
    return out


def _unranked_row(query: str, check: QueryVerdict) -> dict:
    """The one row of a query that gets no photos: the disclaimer, or why it was refused."""
    row = {"query": query, **dict.fromkeys(OUTPUT_KEYS), "shown": False}
    if check.action == "disclaimer":
        return {**row, "disclaimer": DISCLAIMER, "display": DISCLAIMER}
    return {**row, "display": check.message, "refused": check.code}


def _run_head(wh: Warehouse, run_id: str) -> str | None:
    with connect(wh.db_path, read_only=True) as con:
        row = con.execute("SELECT head FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return row[0] if row else None


@flow(name="adhoc-search", log_prints=True)
def adhoc_search(
    queries: Annotated[list[str], Field(description="Scenes to search for, one per item.")],
    warehouse_dir: Annotated[OptionalPath, Field(description="Warehouse of the published reindex. Empty: "
                             "$WITH_SENSE_WAREHOUSE of the worker, else <checkout>/warehouse (resolved at run start).")]
    = None,
    top_k: Annotated[int, Field(ge=1, le=100, description="Photos per query.")] = 5,
) -> list[dict]:
    """Search the latest published reindex for scenes typed in the run form.

    Args:
        queries: Scenes to search for, one per item.
        warehouse_dir: Warehouse of the published reindex. Empty: $WITH_SENSE_WAREHOUSE of the worker, else <checkout>/warehouse (resolved at run start).
        top_k: Photos per query.
    """
    rows = run_search(queries, resolve_warehouse_dir(warehouse_dir), top_k)
    print(format_table(rows))
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a table; then, once, the note that images were withheld (if any were)."""
    if not rows:
        return "(no results)"
    frame = pl.DataFrame(rows, infer_schema_length=None).select("query", "rank", "display", "score", "channel")
    with pl.Config(tbl_rows=len(rows), fmt_str_lengths=80, tbl_hide_dataframe_shape=True):
        table = str(frame)
    noted = [r["query"] for r in rows if r.get("note")]
    if noted:
        table += f"\nNote ({len(noted)} of {len({r['query'] for r in rows})} queries): {WITHHELD_NOTE}"
    return table


def main(argv: list[str] | None = None) -> int:
    """Command line entry point of ``python -m flows.search``.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit code: 0 after printing the results (a table, or one JSON object per line with
        ``--json``); 2 when no run is published.  With no query given, argparse exits
        with status 2.
    """
    p = argparse.ArgumentParser(prog="python -m flows.search", description="Search the latest reindex.")
    p.add_argument("queries", nargs="*")
    p.add_argument("--queries-file", type=Path, help="one query per line")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--warehouse", type=Path, default=None, help="default: $WITH_SENSE_WAREHOUSE, else <checkout>/warehouse")
    p.add_argument("--json", action="store_true", help="one JSON object per result line")
    a = p.parse_args(argv)
    queries = list(a.queries)
    if a.queries_file:
        # Each line is a query exactly as typed (spaces kept); blank lines are skipped.
        queries += [ln for ln in a.queries_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not queries:
        p.error("give at least one query (arguments or --queries-file)")
    if not any(q.strip() for q in queries):
        p.error("empty query: type a scene to search for")
    try:
        rows = run_search(queries, resolve_warehouse_dir(a.warehouse), a.top_k)
    except NoPublishedRun as exc:
        print(f"search: {exc}", file=sys.stderr)
        return 2
    if a.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
