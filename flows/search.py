"""Ad-hoc search against the latest published run's gallery and model.

    python -m flows.search "a dog runs on the beach" [more ...] [--queries-file FILE]
                           [--top-k 5] [--warehouse DIR] [--json]

Every query is scored in one process, whatever their number.  The law applies as in the
nightly table: a query describing a child gets only the disclaimer, and a photo the
guard restricts keeps its rank but shows the disclaimer in its place.  The CLI calls
``run_search`` directly (no orchestration overhead); the ``adhoc-search`` flow wraps the
same function for runs from the Prefect UI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import polars as pl

import tasks  # noqa: F401
from prefect import flow
from pydantic import Field

from tasks.compliance_text import QueryVerdict, check_query
from tasks.config import DISCLAIMER, OptionalPath, resolve_warehouse_dir
from tasks.embed import encoder_dir, load_cached
from tasks.rank import top_k
from tasks.train import load_model
from tasks.warehouse import Warehouse, connect


class NoPublishedRun(RuntimeError):
    pass


def run_search(queries: list[str], warehouse_dir: Path, k: int = 5) -> list[dict]:
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
        photos = con.execute("""
            SELECT g.image, g.sha256, coalesce(p.restricted, true) AS restricted
            FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
            ORDER BY g.image""", [run_id]).pl()
    folder = wh.models_dir / fingerprint
    card = json.loads((folder / "card.json").read_text())
    model = load_model(folder)
    head = _run_head(wh, run_id) or model.head
    cached = load_cached(encoder_dir(wh.embeddings_dir, "image", card["image_encoder"]),
                         photos["sha256"].to_list(), ["features"])["features"]
    gallery = [g for g, s in zip(photos["image"], photos["sha256"]) if s in cached]
    restricted = dict(zip(photos["image"], photos["restricted"]))
    img = np.stack([cached[s] for s in photos["sha256"] if s in cached]) if gallery else None

    allowed = [i for i, c in enumerate(checks) if c.searchable]
    out: list[dict] = []
    scores = None
    if allowed and gallery:
        from models.text_encoder import TextEncoder

        txt = TextEncoder(cache_dir=wh.models_dir / "onnx").encode([queries[i] for i in allowed])
        scores = model.score_matrix(img, txt, head)
    row_of = {q: r for r, q in enumerate(allowed)}
    for i, q in enumerate(queries):
        if not checks[i].searchable:
            out.append(_unranked_row(q, checks[i]))
            continue
        if scores is None:
            continue
        idx, top = top_k(scores[row_of[i] : row_of[i] + 1], k)
        for r, (g, s) in enumerate(zip(idx[0], top[0]), start=1):
            name = gallery[int(g)]
            hidden = bool(restricted[name])
            out.append({"query": q, "rank": r, "image": None if hidden else name, "score": round(float(s), 6),
                        "shown": not hidden, "disclaimer": DISCLAIMER if hidden else None,
                        "display": DISCLAIMER if hidden else name})
    return out


def _unranked_row(query: str, check: QueryVerdict) -> dict:
    """The one row of a query that gets no photos: the disclaimer, or why it was refused."""
    if check.action == "disclaimer":
        return {"query": query, "rank": None, "image": None, "score": None, "shown": False,
                "disclaimer": DISCLAIMER, "display": DISCLAIMER}
    return {"query": query, "rank": None, "image": None, "score": None, "shown": False,
            "disclaimer": None, "display": check.message, "refused": check.code}


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
    if not rows:
        return "(no results)"
    frame = pl.DataFrame(rows).select("query", "rank", "display", "score")
    with pl.Config(tbl_rows=len(rows), fmt_str_lengths=80, tbl_hide_dataframe_shape=True):
        return str(frame)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.search", description="Search the latest reindex.")
    p.add_argument("queries", nargs="*")
    p.add_argument("--queries-file", type=Path, help="one query per line")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--warehouse", type=Path, default=None, help="default: $WITH_SENSE_WAREHOUSE, else <checkout>/warehouse")
    p.add_argument("--json", action="store_true", help="one JSON object per result line")
    a = p.parse_args(argv)
    queries = list(a.queries)
    if a.queries_file:
        queries += [ln.strip() for ln in a.queries_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
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
