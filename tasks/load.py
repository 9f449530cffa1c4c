"""Load: typed frames into the run's DuckDB copy (raw and history tables), and what the
stages share to record and reuse their history rows.  The SQL models on top are dbt's
(``tasks/transform.py``)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from tasks.warehouse import SQL_DIR, connect

# The history tables' DDL: one file per table; the Python stages write them, dbt reads
# them as sources (sql/models/sources.yml).  A new history table: add its file here.
HISTORY_DDL = SQL_DIR / "history"


def ensure_history_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the history tables that do not exist yet (``sql/history/*.sql``)."""
    for ddl in sorted(HISTORY_DDL.glob("*.sql")):
        con.execute(ddl.read_text())


def replace_table(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    """Create or replace table ``name`` with the rows and columns of ``frame``."""
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
    """Record (replacing any earlier row) stage ``stage`` of run ``run_id`` in ``run_stages``: its input
    fingerprint and the run it reused output from (None: computed)."""
    con.execute("DELETE FROM run_stages WHERE run_id = ? AND stage = ?", [run_id, stage])
    con.execute("INSERT INTO run_stages VALUES (?, ?, ?, ?)", [run_id, stage, fp, reused_from])


def query(db: Path, sql: str, params: list | None = None) -> pl.DataFrame:
    """Rows of ``sql`` with ``params`` as a polars frame, on a fresh (read-write) connection to ``db``."""
    with connect(db, read_only=False) as con:
        return con.execute(sql, params or []).pl()

