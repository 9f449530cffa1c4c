"""Ingest: read the five source files and the photo folders, validate every row and photo.

Every input row ends up in exactly one place: its typed raw table or the quarantine,
with a reason a person understands (the ledger: rows read = loaded + quarantined, per
source file and photo folder).  What was normalized or repaired on the way is noted per
row or photo (``IngestResult.row_notes``, table ``ingest_notes``).  Only a whole file
that is missing or unreadable stops the run (``SourceFileError``), before anything in
the warehouse changes.

Nothing outside the data folder is ever opened: every path is resolved (links followed)
and checked to lie inside the data folder before a byte of it is read.

The parts: ``ingest_sources`` (files -> lines -> rows), ``ingest_rows`` (the five layouts
and field parsers), ``ingest_photos`` (photo checks), ``ingest_base`` (errors, paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from PIL import Image  # noqa: F401  (tests patch Image.open through this module)

from tasks.ingest_base import (MAX_RAW_CHARS, OutsideDataFolder, RowError, SourceFileError,  # noqa: F401
                               clip as _clip, resolve_inside)
from tasks.ingest_photos import (MAX_PHOTO_BYTES, MAX_PIXELS, PHOTO_DIRS, READABLE_FORMATS,  # noqa: F401
                                 KnownPhotos, PhotoCheck, check_photo_name, inspect_photo, not_found,
                                 photo_folder, register_photos, stat_key)
from tasks.ingest_rows import SCHEMAS, SOURCES, SourceSpec, query_image  # noqa: F401
from tasks.ingest_sources import (ParsedSource, check_conflicting_texts, data_start, parse_source,
                                  source_lines)

PHOTO_SCHEMA = {"image": pl.String, "split": pl.String, "path": pl.String, "bytes": pl.Int64,
                "sha256": pl.String, "width": pl.Int32, "height": pl.Int32, "format": pl.String,
                "problem": pl.String, "stat_key": pl.String, "repair": pl.String}
QUARANTINE_SCHEMA = {"source": pl.String, "line_no": pl.Int64, "raw_line": pl.String, "reason": pl.String}
NOTES_SCHEMA = {"source": pl.String, "line_no": pl.Int64, "raw_line": pl.String, "note": pl.String}
LEDGER_SCHEMA = {"source": pl.String, "rows_read": pl.Int64, "rows_loaded": pl.Int64, "rows_quarantined": pl.Int64}


def _refs(spec: SourceSpec, row: dict) -> list[tuple[str, str, str]]:
    """(column, split, photo name) for each photo a row names."""
    out = []
    for col, split in spec.photo_refs.items():
        out.append((col, split, query_image(row[col]) if col == "query_id" else row[col]))
    return out


def check_photo_refs(src: ParsedSource, photos: dict[tuple[str, str], PhotoCheck]) -> None:
    """A row needs its photo loaded; a query_id needs the photo it names to exist."""
    keep = []
    for r in src.rows:
        reason = None
        for col, split, name in _refs(src.spec, r[2]):
            p = photos.get((split, name))
            missing = p is None or p.problem == not_found(name, split)
            if col == "query_id":
                if missing:
                    reason = f"query_id {r[2][col]!r} names image '{name}', not found in {PHOTO_DIRS[split]}/"
            elif missing:
                reason = not_found(name, split)
            elif p.problem:
                reason = f"image '{name}' is quarantined: {p.problem}"
            if reason:
                break
        if reason:
            src.quarantine.append((r[0], r[1], reason))
        else:
            keep.append(r)
    src.rows = keep


@dataclass
class IngestResult:
    """tables: raw table name -> typed rows; photos: one row per photo file (PHOTO_SCHEMA);
    quarantine: one row per rejected line or photo (QUARANTINE_SCHEMA); ledger: per source
    (LEDGER_SCHEMA); row_notes: what was normalized in a line or repaired in a loaded photo
    (NOTES_SCHEMA); notes: file-level remarks for the log."""

    tables: dict[str, pl.DataFrame]
    photos: pl.DataFrame
    quarantine: pl.DataFrame
    ledger: pl.DataFrame
    notes: list[str] = field(default_factory=list)
    row_notes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=NOTES_SCHEMA))


def _check_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise SourceFileError(f"data folder {data_dir} is missing (expected a folder with "
                              f"{', '.join(s.file for s in SOURCES)}, train_images/ and test_images/)")


def preflight(data_dir: Path) -> None:
    """The whole-file checks alone (missing, unreadable, not the expected format), so a
    run that cannot work stops with one clear message before it starts."""
    data_dir = Path(data_dir)
    _check_data_dir(data_dir)
    for spec in SOURCES:
        data_start(data_dir, spec, source_lines(data_dir, spec))
    for folder in PHOTO_DIRS.values():
        photo_folder(data_dir, folder)


def ingest(data_dir: Path, known: KnownPhotos | None = None) -> IngestResult:
    """Read, validate and type everything under ``data_dir``; never reads outside it.

    ``known``: the previous run's photo checks (``known_photos``); unchanged files keep them.
    Raises SourceFileError when a whole file or folder is unusable.
    """
    data_dir = Path(data_dir)
    _check_data_dir(data_dir)
    parsed = [parse_source(data_dir, spec) for spec in SOURCES]
    for p in parsed:
        if p.spec.table in ("raw_train_pairs", "raw_test_queries"):
            check_conflicting_texts(p)

    referenced: dict[str, set[str]] = {}
    for p in parsed:
        for r in p.rows:
            for _, split, name in _refs(p.spec, r[2]):
                referenced.setdefault(split, set()).add(name)
    checks = register_photos(data_dir, referenced, known)
    for split, folder in PHOTO_DIRS.items():
        mine = [c for c in checks if c.split == split]
        if all(c.problem for c in mine):
            raise SourceFileError(f"photo folder {data_dir / folder} has no readable photos ({len(mine)} files"
                                  f"{'; first problem: ' + mine[0].problem if mine else ''})")
    by_name = {(c.split, c.image): c for c in checks}
    for p in parsed:
        check_photo_refs(p, by_name)
    for p in parsed:
        if not p.rows:
            # A file none of whose rows survives is a wrong or broken file, not bad rows.
            first = min(p.quarantine, default=None)
            why = f"; first problem, line {first[0]}: {first[2]}" if first else ""
            raise SourceFileError(f"source file {data_dir / p.spec.file} has no valid rows "
                                  f"({p.rows_read} read{why}); expected {p.spec.expected()}")
    return _result(parsed, checks)


def _result(parsed: list[ParsedSource], checks: list[PhotoCheck]) -> IngestResult:
    tables, q_rows, ledger, notes = {}, [], [], []
    for p in parsed:
        tables[p.spec.table] = pl.DataFrame([r[2] for r in p.rows], schema=SCHEMAS[p.spec.table], orient="row")
        q_rows.extend(
            {"source": p.spec.file, "line_no": ln, "raw_line": raw, "reason": why}
            for ln, raw, why in sorted(p.quarantine)
        )
        ledger.append({"source": p.spec.file, "rows_read": p.rows_read,
                       "rows_loaded": len(p.rows), "rows_quarantined": len(p.quarantine)})
        raw_by_line = {ln: raw for ln, raw, _ in p.rows} | {ln: raw for ln, raw, _ in p.quarantine}
        notes.extend({"source": p.spec.file, "line_no": ln, "raw_line": raw_by_line.get(ln), "note": note}
                     for ln, note in p.row_notes)
    # Photos are rows of their folders: each file is loaded or quarantined.
    for split, folder in PHOTO_DIRS.items():
        mine = [c for c in checks if c.split == split]
        bad = [c for c in mine if c.problem]
        q_rows.extend({"source": f"{folder}/", "line_no": None, "raw_line": c.image, "reason": c.problem} for c in bad)
        notes.extend({"source": f"{folder}/", "line_no": None, "raw_line": c.image, "note": c.repair}
                     for c in mine if c.repair and not c.problem)
        ledger.append({"source": f"{folder}/", "rows_read": len(mine),
                       "rows_loaded": len(mine) - len(bad), "rows_quarantined": len(bad)})
    return IngestResult(
        tables,
        pl.DataFrame([c.__dict__ for c in checks], schema=PHOTO_SCHEMA, orient="row"),
        pl.DataFrame(q_rows, schema=QUARANTINE_SCHEMA, orient="row"),
        pl.DataFrame(ledger, schema=LEDGER_SCHEMA),
        [n for p in parsed for n in p.notes],
        pl.DataFrame(notes, schema=NOTES_SCHEMA, orient="row"),
    )
