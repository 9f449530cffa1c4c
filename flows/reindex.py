"""The nightly reindex: ingest -> targets -> compliance -> embeddings -> heads -> results.

    python -m flows.reindex [--data-dir DIR] [--warehouse DIR] [--top-k K] [--head auto]

Runs on Prefect's ephemeral server by default, or on a running server when
PREFECT_API_URL is set.  The warehouse is published atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import tasks  # noqa: F401  (torchvision shim first)
from prefect import flow, get_run_logger
from pydantic import Field

from tasks import compliance, embed, evaluate, export, ingest, load, rank, train
from tasks.config import default_data_dir, default_warehouse_dir
from tasks.warehouse import Warehouse, open_work_copy, publish, reindex_lock

Head = Literal["auto", "bridge", "lgbm", "mlp"]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


@flow(name="nightly-reindex", log_prints=True)
def reindex(
    data_dir: Annotated[Path, Field(description="Folder with the five source files, train_images/ and test_images/.")]
    = default_data_dir(),
    warehouse_dir: Annotated[Path, Field(description="Where the DuckDB file, Parquet exports, caches and reports live.")]
    = default_warehouse_dir(),
    top_k: Annotated[int, Field(ge=1, le=1000, description="Photos per saved query in search_results.")] = 10,
    head: Annotated[Head, Field(description="Head that scores results; 'auto' picks the best on training folds.")]
    = "auto",
    wait_for_lock_seconds: Annotated[float, Field(ge=0, description="If another reindex is running: wait this long, then refuse.")]
    = 0.0,
) -> dict:
    log = get_run_logger()
    started = time.monotonic()
    run_id = new_run_id()
    wh = Warehouse(Path(warehouse_dir))
    with reindex_lock(wh, wait_for_lock_seconds):
        db = open_work_copy(wh, run_id)
        log.info("run %s: data %s -> warehouse %s", run_id, data_dir, wh.root)

        ingested = ingest.ingest_task(Path(data_dir))
        ledger = ingest.load_task(db, run_id, ingested, str(data_dir), top_k)
        load.build_models_task(db, run_id, load.STAGING_MODELS)
        flags = compliance.flag_texts_task(db, run_id)
        load.build_models_task(db, run_id, load.MART_MODELS)

        images = embed.embed_images_task(db, Path(data_dir), wh.embeddings_dir, wh.models_dir / "onnx")
        texts = embed.embed_texts_task(db, wh.embeddings_dir)

        guard = compliance.photo_guard_task(db, run_id, images)
        model = train.train_heads_task(db, run_id, images, texts, wh.models_dir, head)
        evaluate.evaluate_retrieval_task(db, run_id, images, texts, model)
        results = rank.rank_task(db, run_id, images, texts, model, top_k)
        summary = export.finish_run_task(db, run_id, wh, ledger, flags, images, texts, model, guard, results,
                                         time.monotonic() - started)
        publish(wh, run_id)
    print(export.format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.reindex", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--warehouse", type=Path, default=default_warehouse_dir())
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--head", choices=["auto", "bridge", "lgbm", "mlp"], default="auto")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a running reindex")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    try:
        summary = reindex(data_dir=a.data_dir, warehouse_dir=a.warehouse, top_k=a.top_k, head=a.head,
                          wait_for_lock_seconds=a.wait)
    except (ingest.SourceFileError, tasks.warehouse.WarehouseBusy) as exc:
        print(f"reindex stopped: {exc}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
