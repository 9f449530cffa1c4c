"""Load: typed frames into the run's DuckDB copy, and the SQL models on top of them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from tasks.warehouse import SQL_DIR, build_model, connect, read_sql

HISTORY_TABLES = ["runs", "ingest_ledger", "quarantine", "text_flags", "photo_flags",
                  "model_metrics", "search_results", "run_stages"]
STAGING_MODELS = ["staging/stg_captions", "staging/stg_expert_judgments", "staging/stg_crowd_judgments",
                  "staging/stg_test_queries", "staging/stg_photos"]
# Order matters: each model reads the ones before it (and this run's text_flags).
MART_MODELS = ["marts/gallery", "marts/relevance_targets", "marts/restricted_train_photos",
               "marts/training_exclusions", "marts/training_pairs", "marts/training_photos",
               "marts/bridge_positives"]
# latest_run first: the others read it.
VIEWS = ["latest_run", "latest_search_results", "latest_model_metrics"]


def ensure_history_tables(con: duckdb.DuckDBPyConnection) -> None:
    for name in HISTORY_TABLES:
        con.execute(read_sql(f"history/{name}"))


def replace_table(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    con.register("_frame", frame)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _frame")
    finally:
        con.unregister("_frame")


def append_run_rows(con: duckdb.DuckDBPyConnection, table: str, run_id: str, frame: pl.DataFrame) -> None:
    """This run's rows of a history table; rerunning a stage replaces them, never duplicates."""
    con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
    if frame.height:
        con.register("_frame", frame)
        try:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _frame")
        finally:
            con.unregister("_frame")


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (lists, dicts, strings, numbers)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def earlier_run_with(con: duckdb.DuckDBPyConnection, stage: str, fp: str, run_id: str
                     ) -> tuple[str, str] | None:
    """The newest published run whose ``stage`` had input fingerprint ``fp`` (its output can
    be reused), and the run that computed that output (itself, or the run it reused)."""
    row = con.execute("""
        SELECT s.run_id, coalesce(s.reused_from, s.run_id) FROM run_stages s JOIN runs r USING (run_id)
        WHERE s.stage = ? AND s.fingerprint = ? AND s.run_id <> ? AND r.finished_at IS NOT NULL
        ORDER BY s.run_id DESC LIMIT 1""", [stage, fp, run_id]).fetchone()
    return (row[0], row[1]) if row else None


def record_stage(con: duckdb.DuckDBPyConnection, run_id: str, stage: str, fp: str, reused_from: str | None) -> None:
    con.execute("DELETE FROM run_stages WHERE run_id = ? AND stage = ?", [run_id, stage])
    con.execute("INSERT INTO run_stages VALUES (?, ?, ?, ?)", [run_id, stage, fp, reused_from])


def copy_run_rows(con: duckdb.DuckDBPyConnection, table: str, src_run: str, run_id: str, where: str = "true") -> None:
    """An earlier run's rows of a history table (those matching ``where``) as this run's."""
    con.execute(f"DELETE FROM {table} WHERE run_id = ? AND ({where})", [run_id])
    con.execute(f"INSERT INTO {table} BY NAME SELECT * REPLACE (?::VARCHAR AS run_id) FROM {table} "
                f"WHERE run_id = ? AND ({where})", [run_id, src_run])


def build_models(db: Path, run_id: str, names: list[str]) -> None:
    with connect(db) as con:
        con.execute("SET VARIABLE run_id = ?", [run_id])
        for name in names:
            build_model(con, name)


def create_views(db: Path) -> None:
    with connect(db) as con:
        for name in VIEWS:
            con.execute(f"CREATE OR REPLACE VIEW {name} AS\n{read_sql(f'views/{name}')}")


def query(db: Path, sql: str, params: list | None = None) -> pl.DataFrame:
    with connect(db, read_only=False) as con:
        return con.execute(sql, params or []).pl()


from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402


@task(name="sql-models", cache_policy=NO_CACHE)
def build_models_task(db: Path, run_id: str, names: list[str]) -> list[str]:
    build_models(db, run_id, names)
    return names
