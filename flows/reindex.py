"""The nightly reindex: ingest -> targets -> compliance -> embeddings -> heads -> results.

    python -m flows.reindex [--data-dir DIR] [--warehouse DIR] [--top-k K] [--head auto]
                            [--runner local|dask|NAME|tcp://scheduler:8786]

Runs on Prefect's ephemeral server by default, or on a running server when
PREFECT_API_URL is set.  The warehouse is published atomically at the end.

Incremental: every run is a full flow run with every task, but each task does only the
work its changed inputs need.  Photos whose file is unchanged are not re-read (ingest);
only new content hashes are decoded, embedded and looked at for faces (embed: the last
stage that opens a photo file, apart from a report thumbnail made once); the photo guard
and the heads are refitted only when their training inputs changed (content-keyed fitted
files); evaluation and ranking are Prefect tasks cached on their inputs' content, with
results persisted in the warehouse; table run_stages says which run computed what.
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
from pydantic import AfterValidator, Field

from tasks import (compliance_stage, distributed, embed, evaluate_stage, export, ingest, ingest_stage, rank_stage,
                   report_stage, train_stage, transform_stage)
from tasks.config import DATA_DIR_HELP, WAREHOUSE_HELP, OptionalPath, resolve_data_dir, resolve_warehouse_dir
from tasks.warehouse import Warehouse, open_work_copy, publish, reindex_lock, result_storage

Head = Literal["auto", "bridge", "lgbm", "mlp"]


class Lap:
    """Each call records the seconds since the previous one under a stage name."""

    def __init__(self, into: dict[str, float]):
        self.into, self.last = into, time.monotonic()

    def __call__(self, stage: str) -> None:
        now = time.monotonic()
        self.into[stage] = round(now - self.last, 3)
        self.last = now


def new_run_id() -> str:
    """A new run id: the current UTC time as ``YYYYMMDDTHHMMSSffffffZ`` (sorts in time order)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


@flow(name="nightly-reindex", log_prints=True)
def reindex(
    # None ("empty" in the run form) is resolved when the run starts (tasks/config.py), never
    # at import: `prefect deploy` imports this module and would freeze its own paths.
    data_dir: Annotated[OptionalPath, Field(description=DATA_DIR_HELP)] = None,
    warehouse_dir: Annotated[OptionalPath, Field(description=WAREHOUSE_HELP)] = None,
    top_k: Annotated[int, Field(ge=1, le=1000, description="Photos per saved query in search_results.")] = 10,
    head: Annotated[Head, Field(description="Head that scores results; 'auto' picks the best on training folds.")]
    = "auto",
    wait_for_lock_seconds: Annotated[float, Field(ge=0, description="If another reindex is running: wait this long, then refuse.")]
    = 0.0,
    runner: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$", description="Where the mapped shard tasks run: local, dask (a local cluster) or the name of a scheduler configured in WITH_SENSE_DASK_SCHEDULERS (never an address)."),
                      AfterValidator(distributed.check_runner_name)]
    = "local",
) -> dict:
    """Rebuild the search warehouse from the data folder and publish it atomically.

    Prefect's run form reads parameter descriptions from this Args section (not from
    the Annotated fields above), so keep the two in step.

    Args:
        data_dir: Folder with the five source files, train_images/ and test_images/. Empty: $WITH_SENSE_DATA_DIR of the process that runs the flow (the worker), else <checkout>/data/with_sense; resolved when the run starts and logged on its first line.
        warehouse_dir: Where the DuckDB file, Parquet exports, caches and reports live. Empty: $WITH_SENSE_WAREHOUSE of the process that runs the flow (the worker), else <checkout>/warehouse; resolved when the run starts and logged on its first line.
        top_k: Photos per saved query in search_results.
        head: Head that scores results; 'auto' picks the best on training folds.
        wait_for_lock_seconds: If another reindex is running: wait this long, then refuse.
        runner: Where the mapped shard tasks run: local, dask (a local cluster) or the name of a scheduler configured in WITH_SENSE_DASK_SCHEDULERS (never an address).
    """
    log = get_run_logger()
    started = time.monotonic()
    run_id = new_run_id()
    given = {"data_dir": data_dir, "warehouse_dir": warehouse_dir}
    data_dir, wh = resolve_data_dir(data_dir), Warehouse(resolve_warehouse_dir(warehouse_dir))
    with reindex_lock(wh, wait_for_lock_seconds), distributed.open_runner(runner) as tr:
        db = open_work_copy(wh, run_id)
        log.info("run %s: data %s -> warehouse %s (%s)", run_id, data_dir, wh.root,
                 ", ".join(f"{k} {'given' if v not in (None, '') else 'from the environment or default'}"
                           for k, v in given.items()))

        # Seconds per stage, for the run summary (runs.summary_json) and the speed benchmark.
        stages: dict[str, float] = {}
        lap = Lap(stages)
        # Cached by Prefect on the files' content (tasks/ingest_stage.py ingest_key), kept in the warehouse.
        ingested = ingest_stage.ingest_task.with_options(result_storage=result_storage(wh))(data_dir, db)
        ledger = ingest_stage.load_task(db, run_id, ingested, str(data_dir), top_k)
        lap("ingest")
        # dbt (sql/): models and their data tests in graph-selected steps; a failing test stops the run.
        dbt_steps = [transform_stage.build_staging_task(db, run_id, wh)]
        flags = compliance_stage.flag_texts_task(db, run_id)
        dbt_steps.append(transform_stage.build_marts_task(db, run_id, wh))
        lap("sql_and_text_flags")

        # The networks are built (ONNX export, int8 calibration) in their own task, once per
        # warehouse; mapped shards then fill the embedding caches (both views and faces from one decode)
        # and later stages read every photo from them (only the report reads a photo again: once, for
        # the first thumbnail of a photo it shows).
        embed.build_encoders_task(db, data_dir, wh.models_dir / "onnx")
        lap("build_encoders")
        sharded = distributed.fill_image_cache(tr, db, data_dir, wh.embeddings_dir, wh.models_dir / "onnx")
        images = embed.embed_images_task(db, wh.embeddings_dir, wh.models_dir / "onnx", sharded)
        lap("embed_images")
        texts = embed.embed_texts_task(db, wh.embeddings_dir, wh.models_dir / "onnx")
        lap("embed_texts")

        guard = compliance_stage.photo_guard_task(db, run_id, images, wh.embeddings_dir, wh.models_dir)
        lap("photo_guard")
        model = train_stage.train_heads_task(db, run_id, images, texts, wh.models_dir, head)
        lap("relevance_heads")
        evaluate_stage.evaluate_stage(db, run_id, wh, images, texts, model)
        lap("evaluate")
        results = rank_stage.rank_queries(tr, db, run_id, images, texts, model, top_k, wh.root / "index",
                                    result_storage(wh))
        lap("rank")
        dbt_steps.append(transform_stage.test_task(db, run_id, wh))
        lap("dbt_test")
        summary = export.finish_run_task(db, run_id, wh, ledger, flags, images, texts, model, guard, results,
                                         time.monotonic() - started, stages)
        report_stage.report_task(db, run_id, wh, data_dir, images, texts, model, summary)
        transform_stage.docs_task(db, run_id, wh, dbt_steps)
        publish(wh, run_id)
    print(export.format_summary(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line entry point of ``python -m flows.reindex``.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).

    Returns:
        The exit code: 0 after a run, 2 when a source file is unusable or the warehouse is busy
        (the message goes to stderr).
    """
    p = argparse.ArgumentParser(prog="python -m flows.reindex", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=None,
                   help="default: $WITH_SENSE_DATA_DIR, else <checkout>/data/with_sense")
    p.add_argument("--warehouse", type=Path, default=None,
                   help="default: $WITH_SENSE_WAREHOUSE, else <checkout>/warehouse")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--head", choices=["auto", "bridge", "lgbm", "mlp"], default="auto")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a running reindex")
    p.add_argument("--runner", type=distributed.check_runner, default="local",
                   help="where shard tasks run: local | dask (local cluster, 2 workers) | a name in "
                        "WITH_SENSE_DASK_SCHEDULERS | tcp://scheduler:8786 (the shell only; the run form takes names)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args(argv)
    try:
        # Whole-file problems first: one clear message, before Prefect or the warehouse is touched.
        ingest.preflight(resolve_data_dir(a.data_dir))
        # The lock is taken here too, so a busy warehouse is refused before Prefect starts.
        with reindex_lock(Warehouse(resolve_warehouse_dir(a.warehouse)), a.wait):
            summary = reindex(data_dir=a.data_dir, warehouse_dir=a.warehouse, top_k=a.top_k, head=a.head,
                              wait_for_lock_seconds=a.wait, runner=a.runner)
    except (ingest.SourceFileError, tasks.warehouse.WarehouseBusy) as exc:
        print(f"reindex stopped: {exc}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
