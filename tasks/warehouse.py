"""The warehouse folder: one DuckDB file, Parquet exports, caches, and how a run touches them.

Crash safety comes from never writing the published file in place: a run works on a
private copy (``.work/<run_id>.duckdb``) and publishes it with one atomic ``os.replace``.
A reader (an analyst's ``duckdb`` CLI, the search command) therefore sees either the
previous run or the new one, never half of one.  A kill leaves at most a stale work copy,
which the next run deletes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import PROJECT_ROOT

DB_NAME = "with_sense.duckdb"
SQL_DIR = PROJECT_ROOT / "sql"


class WarehouseBusy(RuntimeError):
    """Another reindex holds the warehouse lock."""


@dataclass(frozen=True)
class Warehouse:
    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def work_dir(self) -> Path:
        return self.root / ".work"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def work_db_path(self, run_id: str) -> Path:
        return self.work_dir / f"{run_id}.duckdb"

    def ensure(self) -> None:
        for d in (self.root, self.work_dir, self.exports_dir, self.embeddings_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)


@contextmanager
def reindex_lock(wh: Warehouse, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the warehouse's writer lock; refuse (or wait up to ``wait_seconds``) if held.

    An OS file lock (flock) is released by the kernel when its process dies, so a killed
    run never leaves the warehouse locked.
    """
    wh.ensure()
    lock_path = wh.root / ".reindex.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise WarehouseBusy(
                        f"another reindex is running on {wh.root} ({holder}); "
                        "this run did not start and changed nothing"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def open_work_copy(wh: Warehouse, run_id: str) -> Path:
    """Start this run's private copy of the warehouse from the published one (if any)."""
    wh.ensure()
    for stale in wh.work_dir.glob("*.duckdb*"):
        stale.unlink()
    work = wh.work_db_path(run_id)
    if wh.db_path.exists():
        shutil.copyfile(wh.db_path, work)
    return work


def publish(wh: Warehouse, run_id: str) -> Path:
    """Atomically make this run's copy the published warehouse."""
    work = wh.work_db_path(run_id)
    with duckdb.connect(str(work)) as con:
        con.execute("CHECKPOINT")
    fsync_file(work)
    os.replace(work, wh.db_path)
    fsync_dir(wh.root)
    return wh.db_path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_parquet(table: pa.Table, path: Path) -> Path:
    """Write a Parquet file so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    fsync_file(tmp)
    os.replace(tmp, path)
    return path


def atomic_write_bytes(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    fsync_file(tmp)
    os.replace(tmp, path)
    return path


def connect(db_path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(db_path), read_only=read_only)


def read_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` (``name`` like ``marts/relevance_targets``)."""
    return (SQL_DIR / f"{name}.sql").read_text()


def build_model(con: duckdb.DuckDBPyConnection, name: str, params: dict | None = None) -> None:
    """Materialise one SQL model as a table named after its file."""
    table = name.split("/")[-1]
    con.execute(f"CREATE OR REPLACE TABLE {table} AS\n{read_sql(name)}", params or {})
