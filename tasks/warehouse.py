"""The warehouse folder: one DuckDB file, Parquet exports, caches, and how a run touches them.

Crash safety comes from never writing the published file in place: a run works on a
private copy (``.work/<run_id>.duckdb``) and publishes it with one atomic ``os.replace``.
A reader (an analyst's ``duckdb`` CLI, the search command) therefore sees either the
previous run or the new one, never half of one.  The run's Parquet exports are staged
next to the copy and moved into ``exports/`` only after the database is published, so
a killed run never overwrites the previous run's exports.  A kill leaves at most a stale
work copy and staged exports, which the next run deletes (or, if the kill fell between
publishing the database and moving the exports, moves into place).

One writer at a time: an OS file lock (flock) on ``.reindex.lock``.  When the run talks
to a Prefect server and a global concurrency limit named ``with-sense-reindex`` exists
there, a slot of it is held too (see docs/robustness.md for why the flock stays the
guarantee).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tasks.atomic import fsync_file
from tasks.config import PROJECT_ROOT

DB_NAME = "with_sense.duckdb"
SQL_DIR = PROJECT_ROOT / "sql"


class WarehouseBusy(RuntimeError):
    """Another reindex holds the warehouse lock."""


@dataclass(frozen=True)
class Warehouse:
    """The warehouse folder: the published database and the folders beside it."""

    root: Path

    @property
    def db_path(self) -> Path:
        """The published DuckDB file, ``<root>/with_sense.duckdb``."""
        return self.root / DB_NAME

    @property
    def work_dir(self) -> Path:
        """``<root>/.work``: runs' working copies of the database."""
        return self.root / ".work"

    @property
    def exports_dir(self) -> Path:
        """``<root>/exports``: the published runs' Parquet exports."""
        return self.root / "exports"

    @property
    def embeddings_dir(self) -> Path:
        """``<root>/embeddings``: the embedding cache."""
        return self.root / "embeddings"

    @property
    def results_dir(self) -> Path:
        """``<root>/results``: Prefect's persisted task results, by cache key (``result_storage``)."""
        return self.root / "results"

    @property
    def models_dir(self) -> Path:
        """``<root>/models``: fitted models."""
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        """``<root>/reports``: one folder of reports per run."""
        return self.root / "reports"

    def work_db_path(self, run_id: str) -> Path:
        """Run ``run_id``'s working copy of the database in ``work_dir``."""
        return self.work_dir / f"{run_id}.duckdb"

    def ensure(self) -> None:
        """Create the root, work, exports, embeddings and models folders if missing."""
        for d in (self.root, self.work_dir, self.exports_dir, self.embeddings_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)


@contextmanager
def reindex_lock(wh: Warehouse, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the warehouse's writer lock; refuse (or wait up to ``wait_seconds``) if held.

    An OS file lock (flock) is released by the kernel when its process dies, so a killed
    run never leaves the warehouse locked.  A run that fails (an exception, not a kill)
    removes its work copy and staged exports on the way out.
    """
    key = wh.root.resolve()
    if _HELD.get(key) == threading.get_ident():
        # Re-entered by the holder (the CLI takes the lock before the flow does, so a
        # refusal is one clear line, not a failed Prefect run): the outer hold decides.
        yield
        return
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
                    waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
                    raise WarehouseBusy(
                        f"another reindex is running on {wh.root} ({holder}); "
                        f"this run did not start{waited} and changed nothing "
                        "(use --wait SECONDS to wait for it)"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        _HELD[key] = threading.get_ident()
        try:
            with prefect_slot(wh, max(0.0, deadline - time.monotonic())):
                try:
                    yield
                except BaseException:
                    discard_work(wh)
                    raise
        finally:
            del _HELD[key]
    finally:
        os.close(fd)


# Warehouses whose lock this process holds -> the thread holding it.
_HELD: dict[Path, int] = {}


# The name of the optional Prefect global concurrency limit an operator may create on a
# Prefect server (``prefect gcl create with-sense-reindex --limit 1``).
PREFECT_LIMIT = "with-sense-reindex"


@contextmanager
def prefect_slot(wh: Warehouse, wait_seconds: float, use_server: bool | None = None,
                 limit: str = PREFECT_LIMIT) -> Iterator[None]:
    """Hold a slot of Prefect's global concurrency limit ``limit``, if there is one to hold.

    Only against a long-running Prefect server (``PREFECT_API_URL`` set): there a dead
    holder's lease expires and the server gives the slot back.  The ephemeral server a
    CLI run starts keeps leases in its own memory, so a killed run's slot would stay
    taken for good and block every later run; there the flock alone decides.
    """
    if use_server is None:
        from prefect.settings import PREFECT_API_URL

        use_server = bool(PREFECT_API_URL.value())
    if not use_server or not _prefect_limit_exists(limit):
        yield
        return
    from prefect.concurrency.sync import concurrency

    with ExitStack() as stack:
        try:
            stack.enter_context(concurrency(limit, occupy=1, timeout_seconds=max(wait_seconds, 1.0), strict=True))
        except TimeoutError:
            raise WarehouseBusy(
                f"another reindex holds the Prefect concurrency limit {limit!r} (warehouse {wh.root}); "
                "this run did not start and changed nothing"
            ) from None
        yield


def _prefect_limit_exists(limit: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(limit)
    except ObjectNotFound:
        return False
    return True


def discard_work(wh: Warehouse) -> None:
    """Remove unpublished work: copies of the database and staged exports."""
    if not wh.work_dir.exists():
        return
    for p in wh.work_dir.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _sweep_temp_files(wh: Warehouse) -> None:
    """Half-written ``.<name>.<random>.<pid>.tmp`` files (``tasks.atomic``) of processes now dead."""
    for folder in (wh.exports_dir, wh.embeddings_dir, wh.models_dir, wh.reports_dir):
        if folder.exists():
            for tmp in folder.rglob(".*.tmp"):
                m = re.fullmatch(r"\..+\.(\d+)\.tmp", tmp.name)
                if m and not _alive(int(m[1])):
                    tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(wh: Warehouse) -> None:
    """Finish or undo what a killed run left behind; called with the writer lock held.

    Staged exports whose run is the published one were cut off between the two steps of
    ``publish``: move them into place.  Anything else in ``.work`` is an unpublished run.
    """
    wh.ensure()
    published = published_run_id(wh)
    for staged in sorted(wh.work_dir.glob("exports-*")):
        if staged.is_dir() and published is not None and staged.name == f"exports-{published}":
            _move_exports(wh, staged)
    discard_work(wh)
    _sweep_temp_files(wh)


def published_run_id(wh: Warehouse) -> str | None:
    """The newest finished run in the published database, if there is one."""
    if not wh.db_path.exists():
        return None
    try:
        with duckdb.connect(str(wh.db_path), read_only=True) as con:
            row = con.execute("SELECT run_id FROM runs WHERE finished_at IS NOT NULL "
                              "ORDER BY run_id DESC LIMIT 1").fetchone()
    except duckdb.Error:
        return None
    return row[0] if row else None


def open_work_copy(wh: Warehouse, run_id: str) -> Path:
    """Start this run's private copy of the warehouse from the published one (if any)."""
    recover(wh)
    work = wh.work_db_path(run_id)
    if wh.db_path.exists():
        shutil.copyfile(wh.db_path, work)
    return work


def staged_exports_dir(wh: Warehouse, run_id: str) -> Path:
    """Where a run writes its Parquet exports until its database is published."""
    return wh.work_dir / f"exports-{run_id}"


def _move_exports(wh: Warehouse, staged: Path) -> None:
    wh.exports_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(staged.glob("*.parquet")):
        os.replace(f, wh.exports_dir / f.name)  # same file system: each file swaps atomically
    fsync_file(wh.exports_dir)
    shutil.rmtree(staged, ignore_errors=True)


def publish(wh: Warehouse, run_id: str) -> Path:
    """Atomically make this run's copy the published warehouse, then its exports."""
    work = wh.work_db_path(run_id)
    with duckdb.connect(str(work)) as con:
        con.execute("CHECKPOINT")
    fsync_file(work)
    os.replace(work, wh.db_path)
    fsync_file(wh.root)
    staged = staged_exports_dir(wh, run_id)
    if staged.is_dir():
        _move_exports(wh, staged)
    return wh.db_path


def result_storage(wh: Warehouse) -> Path:
    """Where Prefect persists cached task results (and their cache records) of runs on ``wh``:
    ``wh.results_dir``, as a path (Prefect makes it a local file system, no block saved on any
    server), so the reuse goes with the warehouse and never crosses to another one."""
    wh.results_dir.mkdir(parents=True, exist_ok=True)
    return wh.results_dir


def connect(db_path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``db_path`` (read-only if asked)."""
    return duckdb.connect(str(db_path), read_only=read_only)
