"""The ingest stage (Prefect): read and validate the data folder (``tasks/ingest.py``), then load
the typed rows into the run's warehouse copy."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.ingest import IngestResult, KnownPhotos, PhotoCheck, SourceFileError, ingest


def _transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, not a missing or malformed file (that needs a person)."""
    try:
        state.result()
    except SourceFileError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


def known_photos(db: Path | None) -> KnownPhotos:
    """The photo checks in ``db``'s raw_photos (the previous run's), by (split, image)."""
    if db is None or not Path(db).exists():
        return {}
    from tasks.warehouse import connect

    with connect(db) as con:
        cols = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'raw_photos'").fetchall()}
        if not set(PhotoCheck.__dataclass_fields__) <= cols:  # an older layout: check everything once
            return {}
        rows = con.execute("SELECT * FROM raw_photos WHERE stat_key IS NOT NULL").pl()
    fields = PhotoCheck.__dataclass_fields__
    return {(r["split"], r["image"]): PhotoCheck(**{k: r[k] for k in fields}) for r in rows.iter_rows(named=True)}


# Bump when what ingest returns changes for the same files and code (the key also hashes the code).
INGEST_FORMAT = 1
# The modules whose code decides what ingest returns: their bytes are part of the cache key.
INGEST_CODE = ("ingest.py", "ingest_base.py", "ingest_photos.py", "ingest_rows.py", "ingest_sources.py")


def ingest_key(_context, parameters: dict) -> str:
    """Prefect cache key of ``ingest_task``: the ingest code, every source file's bytes (sha256)
    and every entry of the photo folders with its stat key (size, mtime, ctime, inode; symlinks
    with their target), so any edited, added, removed or touched file makes a new key.  Cheap:
    the source files are hashed, the photos only listed."""
    import hashlib

    from tasks.ingest import SOURCES
    from tasks.ingest_base import resolve_inside
    from tasks.ingest_photos import PHOTO_DIRS, stat_key

    data_dir = Path(parameters["data_dir"])
    root = data_dir.resolve()

    def inside(path: Path) -> Path | None:  # never read outside the data folder, as ingest itself
        try:
            return resolve_inside(root, path)
        except Exception:  # noqa: BLE001  (outside, a loop, missing: ingest reports it; the key just differs)
            return None

    h = hashlib.sha256(f"ingest v{INGEST_FORMAT}".encode())
    for name in INGEST_CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    for spec in SOURCES:
        real = inside(data_dir / spec.file)
        try:
            digest = hashlib.sha256(real.read_bytes()).hexdigest() if real is not None and real.is_file() else "-"
        except OSError:
            digest = "unreadable"
        h.update(f"{spec.file}|{os.path.islink(data_dir / spec.file)}|{digest}".encode())
    for folder in sorted(PHOTO_DIRS.values()):
        d = inside(data_dir / folder)
        entries = sorted(os.scandir(d), key=lambda e: e.name) if d is not None and d.is_dir() else []
        h.update(folder.encode() + (str(d).encode() if d is not None else b"-"))
        for e in entries:
            try:
                link = os.readlink(e.path) if e.is_symlink() else ""
                h.update(f"{e.name}|{link}|{stat_key(e.stat())}".encode())
            except OSError:
                h.update(f"{e.name}|unreadable".encode())
    return "ingest-" + h.hexdigest()[:32]


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_key_fn=ingest_key,
      persist_result=True)
def ingest_task(data_dir: Path, db: Path | None = None) -> IngestResult:
    """Read and validate the data folder; photos unchanged since the run in ``db`` are not re-read.

    Cached by Prefect on ``ingest_key`` (the flow persists the result in the warehouse): when no
    source file, photo file or ingest code changed, a run gets the previous result back without
    parsing anything.  What ingest found is logged by ``load_task``, which always runs."""
    known = known_photos(db)
    result = ingest(data_dir, known)
    reused = sum(1 for (split, image, key) in result.photos.select("split", "image", "stat_key").iter_rows()
                 if key is not None and (p := known.get((split, image))) is not None and p.stat_key == key)
    get_run_logger().info("photos: %d checked, %d unchanged since the last run (not re-read)",
                          result.photos.height - reused, reused)
    return result


def log_ingest(result: IngestResult) -> None:
    """What ingest read, loaded and quarantined, per source, into the run's log."""
    log = get_run_logger()
    for note in result.notes:
        log.warning("%s", note)
    for row in result.ledger.iter_rows(named=True):
        log.info("%-22s read %6d  loaded %6d  quarantined %5d", row["source"], row["rows_read"],
                 row["rows_loaded"], row["rows_quarantined"])
    if result.row_notes.height:
        log.info("normalized or repaired on the way in (table ingest_notes): %s", ", ".join(
            f"{n} x{c}" for n, c in result.row_notes.group_by("note").len().sort("len", descending=True)
            .head(5).iter_rows()))
    for row in result.quarantine.head(20).iter_rows(named=True):
        log.warning("quarantined %s line %s: %s", row["source"], row["line_no"], row["reason"])
    if result.quarantine.height > 20:
        log.warning("... and %d more quarantined rows (table quarantine, exports/quarantine.parquet)",
                    result.quarantine.height - 20)


@task(name="load-raw", cache_policy=NO_CACHE)
def load_task(db: Path, run_id: str, result: IngestResult, data_dir: str, top_k: int) -> pl.DataFrame:
    """Raw tables replaced, this run's ledger, quarantine and ingest notes appended (and logged)."""
    from datetime import datetime, timezone

    from tasks.load import append_run_rows, ensure_history_tables, replace_table
    from tasks.warehouse import connect

    log_ingest(result)
    with connect(db) as con:
        ensure_history_tables(con)
        for name, frame in result.tables.items():
            replace_table(con, name, frame)
        replace_table(con, "raw_photos", result.photos)
        append_run_rows(con, "quarantine", run_id, result.quarantine.with_columns(pl.lit(run_id).alias("run_id")))
        ledger = result.ledger.with_columns(pl.lit(run_id).alias("run_id"))
        append_run_rows(con, "ingest_ledger", run_id, ledger)
        append_run_rows(con, "ingest_notes", run_id, result.row_notes.with_columns(pl.lit(run_id).alias("run_id")))
        con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        con.execute("INSERT INTO runs (run_id, started_at, data_dir, top_k) VALUES (?, ?, ?, ?)",
                    [run_id, datetime.now(timezone.utc).replace(tzinfo=None), data_dir, top_k])
    return ledger
