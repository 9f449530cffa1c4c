"""Reading the five source files: bytes -> physical lines -> fields -> typed rows or reasons.

The ledger's unit is the physical line, and it is counted exactly once: every line after
the header (trailing blank lines are file formatting) is loaded or quarantined.

How a file becomes lines and fields, and why it is not DuckDB's or polars' CSV reader:

- Lines: ``bytes.splitlines`` (the standard library's universal newlines): LF, CRLF and a
  lone CR each end a line, in any mix, so an old-Mac line end in an LF file is a line end,
  not a control character inside a row.
- Fields: the standard library's ``csv`` reader, one line at a time, ``strict``: a quote
  in the wrong place is that line's error, never glued onto the next lines.
- DuckDB 1.5's ``read_csv`` (with ``store_rejects``) and polars cannot keep the contract
  on broken files: an unterminated quote swallows every following line into one field,
  mixed line ends stop the strict parser, a mid-file byte-order mark stays in the first
  field and NUL bytes pass (``bench/csv_reader_contract.py`` runs these cases).

A byte-order mark at the start of any line (two exports concatenated) is removed and
noted; invisible format characters inside fields are removed by the field parsers and
noted per line here (``ParsedSource.row_notes``).
"""

from __future__ import annotations

import csv
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tasks.ingest_base import (RowError, SourceFileError, clip, describe_characters,
                               format_characters, inside_or_refuse)
from tasks.ingest_rows import SourceSpec

# The longest real row is under 400 bytes; a megabyte "line" is a broken file, not a caption.
MAX_LINE_BYTES = 64 * 2**10
# The largest source file is ~3 MB; a gigabyte is a wrong file, not one to load into memory.
MAX_SOURCE_BYTES = 2**30
UTF8_BOM = b"\xef\xbb\xbf"
# Unicode category Cc, less the tab that separates TSV fields.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@dataclass
class ParsedSource:
    """One source file after reading: rows kept, rows quarantined, and what was noted."""

    spec: SourceSpec
    rows: list[tuple[int, str, dict]]  # (line number, raw line, parsed row)
    quarantine: list[tuple[int, str, str]]  # (line number, raw line, reason)
    rows_read: int
    notes: list[str] = field(default_factory=list)  # file-level remarks for the log
    # (line number, what was normalized in that line), whatever became of the line.
    row_notes: list[tuple[int, str]] = field(default_factory=list)


def read_lines(data_dir: Path, spec: SourceSpec) -> list[bytes]:
    """The file's physical lines without their line ends (LF, CRLF or a lone CR, mixed
    freely) and without the file's leading byte-order mark; raises SourceFileError when
    the file as a whole cannot be used."""
    path = data_dir / spec.file
    real = inside_or_refuse(data_dir, path, "source file", f"expected {spec.expected()}")
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        raise SourceFileError(f"source file {path} is not a regular file (expected {spec.expected()})")
    if st.st_size > MAX_SOURCE_BYTES:
        raise SourceFileError(f"source file {path} is {st.st_size:,} bytes, over the {MAX_SOURCE_BYTES:,}-byte "
                              f"limit (expected {spec.expected()})")
    try:
        data = real.read_bytes()
    except OSError as exc:
        raise SourceFileError(f"source file {path} cannot be read: {exc}") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceFileError(f"source file {path} is UTF-16 or UTF-32 encoded (expected {spec.expected()})")
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    return data.splitlines()


def _fields(text: str, delimiter: str) -> list[str]:
    # strict: a quote in the wrong place is an error, not silently glued into the text.
    return next(csv.reader([text], delimiter=delimiter, strict=True))


def _header_like(raw: bytes, delimiter: str) -> list[str]:
    try:
        got = next(csv.reader([_strip_line_boms(raw)[0].decode("utf-8", errors="replace")], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return []
    return [g.strip().strip('"').strip().lower() for g in got]


def _strip_line_boms(raw_bytes: bytes) -> tuple[bytes, int]:
    n = 0
    while raw_bytes.startswith(UTF8_BOM):
        raw_bytes, n = raw_bytes[len(UTF8_BOM):], n + 1
    return raw_bytes, n


def _parse_line(spec: SourceSpec, raw_bytes: bytes, header: list[str], notes: list[str] | None = None) -> dict:
    """One physical line -> a typed row, or RowError with the reason.  What was
    normalized on the way (a leading byte-order mark, format characters in fields) is
    appended to ``notes``."""
    notes = [] if notes is None else notes
    raw_bytes, boms = _strip_line_boms(raw_bytes)
    if boms:
        notes.append("byte-order mark at the start of the line removed (two exports joined into one file?)")
    if len(raw_bytes) > MAX_LINE_BYTES:
        raise RowError(f"line is {len(raw_bytes):,} bytes, over the {MAX_LINE_BYTES:,}-byte limit for one row")
    if b"\x00" in raw_bytes:
        raise RowError("line contains NUL bytes")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"invalid UTF-8 at byte {exc.start + 1} of the line") from None
    if not text.strip():
        raise RowError("blank line")
    if m := CONTROL.search(text):
        raise RowError(f"line contains the control character U+{ord(m.group()):04X}")
    try:
        fields = _fields(text, spec.delimiter)
    except csv.Error as exc:
        raise RowError(f"malformed quoting ({exc}); a quoted field must end on the same line") from None
    names = spec.header or spec.columns
    for i, value in enumerate(fields):
        if found := format_characters(value):
            what = names[i] if i < len(names) and names[i] else f"field {i + 1}"
            notes.append(f"invisible format characters removed from {what}: {describe_characters(found)}")
    if [f.strip().lower() for f in fields] == header:
        raise RowError("repeated header line")
    if len(fields) != spec.n_fields:
        raise RowError(f"{len(fields)} fields, expected {spec.n_fields} "
                       f"({', '.join(spec.header or spec.columns)})")
    return spec.parse(fields)


def data_start(data_dir: Path, spec: SourceSpec, lines: list[bytes]) -> tuple[int, list[str]]:
    """Index of the first data line, and remarks: a header is skipped, a missing one tolerated."""
    header = [h.lower() for h in (spec.header or spec.columns)]
    if not lines:
        raise SourceFileError(f"source file {data_dir / spec.file} is empty (expected {spec.expected()})")
    if _header_like(lines[0], spec.delimiter) == header:
        if spec.header is None:
            return 1, [f"{spec.file}: line 1 is a header; this file normally has none (skipped)"]
        return 1, []
    if spec.header is None:
        return 0, []
    try:
        _parse_line(spec, lines[0], header)
    except RowError:
        raise SourceFileError(f"source file {data_dir / spec.file} starts with {lines[0][:200]!r}, which is "
                              f"neither the header nor a valid row (expected {spec.expected()})") from None
    return 0, [f"{spec.file}: the header line is missing; line 1 read as data"]


def source_lines(data_dir: Path, spec: SourceSpec) -> list[bytes]:
    """``read_lines`` less trailing blank lines (file formatting, not rows)."""
    lines = read_lines(data_dir, spec)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def parse_source(data_dir: Path, spec: SourceSpec) -> ParsedSource:
    """Every data line of one source file, loaded or quarantined (duplicates resolved)."""
    lines = source_lines(data_dir, spec)
    start, notes = data_start(data_dir, spec, lines)
    header = [h.lower() for h in (spec.header or spec.columns)]
    rows, quarantine, row_notes = [], [], []
    for line_no, raw_bytes in enumerate(lines[start:], start=start + 1):
        raw = clip(raw_bytes.decode("utf-8", errors="replace"))
        noted: list[str] = []
        try:
            rows.append((line_no, raw, _parse_line(spec, raw_bytes, header, noted)))
        except RowError as exc:
            quarantine.append((line_no, raw, str(exc)))
        row_notes.extend((line_no, n) for n in noted)
    parsed = ParsedSource(spec, rows, quarantine, rows_read=len(lines) - start, notes=notes, row_notes=row_notes)
    _resolve_duplicates(parsed)
    return parsed


def _resolve_duplicates(src: ParsedSource) -> None:
    """Exact repeats keep their first line; a key with conflicting values keeps none."""
    by_key: dict[tuple, list[tuple[int, str, dict]]] = {}
    for r in src.rows:
        by_key.setdefault(tuple(r[2][k] for k in src.spec.key), []).append(r)
    keep = []
    for key, group in by_key.items():
        if len(group) == 1:
            keep.append(group[0])
            continue
        distinct = {tuple(sorted(r[2].items())) for r in group}
        lines = ", ".join(str(r[0]) for r in group)
        if len(distinct) == 1:
            keep.append(group[0])
            src.quarantine.extend((r[0], r[1], f"exact duplicate of line {group[0][0]}") for r in group[1:])
        else:
            key_text = ", ".join(f"{k}={v!r}" for k, v in zip(src.spec.key, key))
            src.quarantine.extend(
                (r[0], r[1], f"duplicate key ({key_text}) with conflicting values on lines {lines}") for r in group
            )
    src.rows = sorted(keep, key=lambda r: r[0])


def check_conflicting_texts(src: ParsedSource) -> None:
    """One query_id names one caption: rows that disagree on its text are all quarantined."""
    texts: dict[str, set[str]] = {}
    for _, _, row in src.rows:
        texts.setdefault(row["query_id"], set()).add(row["query_text"])
    bad = {q for q, t in texts.items() if len(t) > 1}
    if not bad:
        return
    keep = []
    for r in src.rows:
        if r[2]["query_id"] in bad:
            src.quarantine.append((r[0], r[1], f"query_id {r[2]['query_id']!r} has conflicting caption texts"))
        else:
            keep.append(r)
    src.rows = keep
