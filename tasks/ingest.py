"""Ingest: read the five source files and the photo folders, validate every row and photo.

Every input row ends up in exactly one place: its typed raw table or the quarantine,
with a reason a person understands.  Only a whole file that is missing or unreadable
stops the run (``SourceFileError``), before anything in the warehouse changes.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from PIL import Image

# Larger photos are refused before decoding (decompression bombs); PIL's own guard is
# disabled so that our explicit check decides, with a readable reason.
MAX_PIXELS = 60_000_000
Image.MAX_IMAGE_PIXELS = None
READABLE_FORMATS = {"JPEG", "PNG", "WEBP", "BMP"}
PHOTO_DIRS = {"train": "train_images", "test": "test_images"}

SAFE_NAME = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]*$")
QUERY_ID = re.compile(r"^(?P<image>[^#]+)#(?P<n>\d+)$")
CROWD_SHARE_TOLERANCE = 0.01


class SourceFileError(RuntimeError):
    """A whole source file is missing or unreadable: the run stops."""


class RowError(ValueError):
    """One row is bad; its message is the quarantine reason."""


# ---------------------------------------------------------------- photos


@dataclass(frozen=True)
class PhotoCheck:
    image: str
    split: str
    path: str
    bytes: int | None
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    problem: str | None


def check_photo_name(name: str) -> str | None:
    if not name:
        return "empty image name"
    if name.startswith("/") or "\\" in name or "/" in name or ".." in name:
        return f"image name {name!r} is not a plain file name (paths are not allowed)"
    if not SAFE_NAME.match(name):
        return f"image name {name!r} has characters a file name may not have here"
    return None


def inspect_photo(data_dir: Path, split: str, name: str) -> PhotoCheck:
    """Validate one photo without ever reading outside ``data_dir``."""
    rel = f"{PHOTO_DIRS[split]}/{name}"

    def bad(problem: str, **kw) -> PhotoCheck:
        base = dict(bytes=None, sha256=None, width=None, height=None, format=None)
        base.update(kw)
        return PhotoCheck(name, split, rel, problem=problem, **base)

    if problem := check_photo_name(name):
        return bad(problem)
    path = data_dir / PHOTO_DIRS[split] / name
    root = data_dir.resolve()
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root):
            return bad(f"image '{name}' is a link pointing outside the data folder")
    if not path.exists():
        return bad(f"image '{name}' not found in {PHOTO_DIRS[split]}/")
    if not path.is_file():
        return bad(f"image '{name}' is not a regular file")
    data = path.read_bytes()
    if not data:
        return bad(f"image '{name}' is empty (0 bytes)", bytes=0)
    sha = hashlib.sha256(data).hexdigest()
    seen = dict(bytes=len(data), sha256=sha)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt, (w, h) = img.format, img.size
                seen.update(format=fmt, width=w, height=h)
                if fmt not in READABLE_FORMATS:
                    return bad(f"image '{name}' is {fmt}, a format the pipeline does not read", **seen)
                if w * h > MAX_PIXELS:
                    return bad(
                        f"image '{name}' is {w}x{h} pixels, over the {MAX_PIXELS:,} limit "
                        "(possible decompression bomb)",
                        **seen,
                    )
                # A reduced-size decode still walks the whole compressed stream, so it
                # finds truncation and corruption at a fraction of a full decode's cost.
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                img.load()
    except Image.UnidentifiedImageError:
        return bad(f"image '{name}' is not an image file", **seen)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return bad(f"image '{name}' cannot be decoded: {exc}", **seen)
    return PhotoCheck(name, split, rel, problem=None, **seen)


def register_photos(data_dir: Path, referenced: dict[str, set[str]]) -> list[PhotoCheck]:
    """Every file in the photo folders plus every photo a row names, each checked once."""
    checks = []
    for split, folder in PHOTO_DIRS.items():
        d = data_dir / folder
        if not d.is_dir():
            raise SourceFileError(f"photo folder {d} is missing (expected a folder of .jpg photos)")
        names = {p.name for p in d.iterdir() if not p.name.startswith(".")} | referenced.get(split, set())
        checks.extend(inspect_photo(data_dir, split, n) for n in sorted(names))
    return checks


# ---------------------------------------------------------------- rows


@dataclass
class SourceSpec:
    """How to read one source file and what a valid row looks like."""

    file: str
    table: str
    delimiter: str
    columns: list[str]
    header: list[str] | None
    parse: Callable[[list[str]], dict]
    key: list[str]
    photo_refs: dict[str, str] = field(default_factory=dict)  # column -> split


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise RowError(f"{what} is empty")
    return value


def _int_in(value: str, what: str, lo: int, hi: int | None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise RowError(f"{what} {value.strip()!r} is not a whole number") from None
    if n < lo or (hi is not None and n > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise RowError(f"{what} {n} is outside {rng}")
    return n


def _image_name(value: str, what: str) -> str:
    name = value.strip()
    if problem := check_photo_name(name):
        raise RowError(f"{what}: {problem}")
    return name


def _query_id(value: str) -> str:
    qid = value.strip()
    m = QUERY_ID.match(qid)
    if not m:
        raise RowError(f"query_id {qid!r} does not follow <image>#<n>")
    if check_photo_name(m["image"]):
        raise RowError(f"query_id {qid!r} names no plain image file before '#'")
    return qid


def parse_train_pair(f: list[str]) -> dict:
    return {
        "image": _image_name(f[0], "image"),
        "query_id": _query_id(f[1]),
        "query_text": _text(f[2], "query_text"),
    }


def parse_expert(f: list[str]) -> dict:
    row = {"image": _image_name(f[0], "image"), "query_id": _query_id(f[1])}
    for i in range(3):
        row[f"expert_{i + 1}"] = _int_in(f[2 + i], "expert score", 1, 4)
    return row


def parse_crowd(f: list[str]) -> dict:
    try:
        share = float(f[2].strip())
    except ValueError:
        raise RowError(f"crowd share {f[2].strip()!r} is not a number") from None
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise RowError(f"crowd share {share} is outside 0..1")
    yes = _int_in(f[3], "crowd yes count", 0, None)
    no = _int_in(f[4], "crowd no count", 0, None)
    if yes + no == 0:
        raise RowError("crowd row has no votes (yes 0, no 0)")
    if abs(yes / (yes + no) - share) > CROWD_SHARE_TOLERANCE:
        raise RowError(f"crowd share {share} contradicts the counts ({yes} yes, {no} no)")
    return {
        "image": _image_name(f[0], "image"),
        "query_id": _query_id(f[1]),
        "crowd_share": share,
        "crowd_yes": yes,
        "crowd_no": no,
    }


def parse_test_query(f: list[str]) -> dict:
    return {
        "query_id": _query_id(f[1]),
        "query_text": _text(f[2], "query_text"),
        "image": _image_name(f[3], "image"),
    }


def parse_test_image(f: list[str]) -> dict:
    return {"image": _image_name(f[0], "image")}


SOURCES = [
    SourceSpec("train_dataset.csv", "raw_train_pairs", ",", ["image", "query_id", "query_text"],
               ["image", "query_id", "query_text"], parse_train_pair, ["image", "query_id"], {"image": "train"}),
    SourceSpec("ExpertAnnotations.tsv", "raw_expert_annotations", "\t",
               ["image", "query_id", "expert_1", "expert_2", "expert_3"], None, parse_expert,
               ["image", "query_id"], {"image": "train"}),
    SourceSpec("CrowdAnnotations.tsv", "raw_crowd_annotations", "\t",
               ["image", "query_id", "crowd_share", "crowd_yes", "crowd_no"], None, parse_crowd,
               ["image", "query_id"], {"image": "train"}),
    SourceSpec("test_queries.csv", "raw_test_queries", "|", ["query_id", "query_text", "image"],
               ["", "query_id", "query_text", "image"], parse_test_query, ["query_id"], {"image": "test"}),
    SourceSpec("test_images.csv", "raw_test_images", ",", ["image"], ["image"], parse_test_image,
               ["image"], {"image": "test"}),
]

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "raw_train_pairs": {"image": pl.String, "query_id": pl.String, "query_text": pl.String},
    "raw_expert_annotations": {"image": pl.String, "query_id": pl.String,
                               "expert_1": pl.Int8, "expert_2": pl.Int8, "expert_3": pl.Int8},
    "raw_crowd_annotations": {"image": pl.String, "query_id": pl.String, "crowd_share": pl.Float64,
                              "crowd_yes": pl.Int32, "crowd_no": pl.Int32},
    "raw_test_queries": {"query_id": pl.String, "query_text": pl.String, "image": pl.String},
    "raw_test_images": {"image": pl.String},
}


@dataclass
class ParsedSource:
    spec: SourceSpec
    rows: list[tuple[int, str, dict]]  # (line number, raw line, parsed row)
    quarantine: list[tuple[int, str, str]]  # (line number, raw line, reason)
    rows_read: int


def read_lines(path: Path) -> list[bytes]:
    if not path.exists():
        raise SourceFileError(f"source file {path} is missing")
    if not path.is_file():
        raise SourceFileError(f"source file {path} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceFileError(f"source file {path} cannot be read: {exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.splitlines()


def parse_source(data_dir: Path, spec: SourceSpec) -> ParsedSource:
    path = data_dir / spec.file
    lines = read_lines(path)
    start = 0
    if spec.header is not None:
        if not lines:
            raise SourceFileError(f"source file {path} is empty (expected header {spec.delimiter.join(spec.header)!r})")
        got = lines[0].decode("utf-8", errors="replace").strip().split(spec.delimiter)
        if [g.strip() for g in got] != spec.header:
            raise SourceFileError(
                f"source file {path} has header {lines[0][:200]!r}, expected {spec.delimiter.join(spec.header)!r}"
            )
        start = 1
    n_fields = len(spec.header) if spec.header is not None else len(spec.columns)
    rows, quarantine = [], []
    for line_no, raw_bytes in enumerate(lines[start:], start=start + 1):
        raw = raw_bytes.decode("utf-8", errors="replace")
        try:
            if b"\x00" in raw_bytes:
                raise RowError("line contains NUL bytes")
            try:
                text = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RowError(f"invalid UTF-8 at byte {exc.start}") from None
            if not text.strip():
                raise RowError("blank line")
            fields = next(csv.reader([text], delimiter=spec.delimiter))
            if len(fields) != n_fields:
                raise RowError(f"{len(fields)} fields, expected {n_fields}")
            rows.append((line_no, raw, spec.parse(fields)))
        except (RowError, csv.Error) as exc:
            quarantine.append((line_no, raw, str(exc)))
    # Trailing blank lines are file formatting, not rows.
    while quarantine and quarantine[-1][2] == "blank line" and quarantine[-1][0] == len(lines):
        quarantine.pop()
        lines = lines[:-1]
    parsed = ParsedSource(spec, rows, quarantine, rows_read=len(lines) - start)
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


def check_photo_refs(src: ParsedSource, photos: dict[tuple[str, str], PhotoCheck]) -> None:
    keep = []
    for r in src.rows:
        reason = None
        for col, split in src.spec.photo_refs.items():
            p = photos.get((split, r[2][col]))
            if p is None or (p.problem and "not found" in p.problem):
                reason = f"image '{r[2][col]}' not found in {PHOTO_DIRS[split]}/"
            elif p.problem:
                reason = f"image '{r[2][col]}' is quarantined: {p.problem}"
            if reason:
                break
        if reason:
            src.quarantine.append((r[0], r[1], reason))
        else:
            keep.append(r)
    src.rows = keep


@dataclass
class IngestResult:
    tables: dict[str, pl.DataFrame]
    photos: pl.DataFrame
    quarantine: pl.DataFrame
    ledger: pl.DataFrame


def ingest(data_dir: Path) -> IngestResult:
    """Read, validate and type everything under ``data_dir``; never reads outside it."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SourceFileError(f"data folder {data_dir} is missing")
    parsed = [parse_source(data_dir, spec) for spec in SOURCES]
    for p in parsed:
        if p.spec.table in ("raw_train_pairs", "raw_test_queries"):
            check_conflicting_texts(p)

    referenced: dict[str, set[str]] = {}
    for p in parsed:
        for col, split in p.spec.photo_refs.items():
            referenced.setdefault(split, set()).update(r[2][col] for r in p.rows)
    checks = register_photos(data_dir, referenced)
    by_name = {(c.split, c.image): c for c in checks}
    for p in parsed:
        check_photo_refs(p, by_name)

    tables, q_rows, ledger = {}, [], []
    for p in parsed:
        tables[p.spec.table] = pl.DataFrame([r[2] for r in p.rows], schema=SCHEMAS[p.spec.table], orient="row")
        q_rows.extend(
            {"source": p.spec.file, "line_no": ln, "raw_line": raw, "reason": why}
            for ln, raw, why in sorted(p.quarantine)
        )
        ledger.append({"source": p.spec.file, "rows_read": p.rows_read,
                       "rows_loaded": len(p.rows), "rows_quarantined": len(p.quarantine)})
    # Photos are rows of their folders: each file is loaded or quarantined.
    for split, folder in PHOTO_DIRS.items():
        mine = [c for c in checks if c.split == split]
        bad = [c for c in mine if c.problem]
        q_rows.extend({"source": f"{folder}/", "line_no": None, "raw_line": c.image, "reason": c.problem} for c in bad)
        ledger.append({"source": f"{folder}/", "rows_read": len(mine),
                       "rows_loaded": len(mine) - len(bad), "rows_quarantined": len(bad)})

    photos = pl.DataFrame(
        [c.__dict__ for c in checks],
        schema={"image": pl.String, "split": pl.String, "path": pl.String, "bytes": pl.Int64,
                "sha256": pl.String, "width": pl.Int32, "height": pl.Int32, "format": pl.String,
                "problem": pl.String},
        orient="row",
    )
    quarantine = pl.DataFrame(
        q_rows, schema={"source": pl.String, "line_no": pl.Int64, "raw_line": pl.String, "reason": pl.String},
        orient="row",
    )
    return IngestResult(tables, photos, quarantine, pl.DataFrame(ledger))


# ---------------------------------------------------------------- Prefect tasks

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402


def _transient(task, task_run, state) -> bool:
    """Retry I/O hiccups, not a missing or malformed file (that needs a person)."""
    try:
        state.result()
    except SourceFileError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return False


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def ingest_task(data_dir: Path) -> IngestResult:
    result = ingest(data_dir)
    log = get_run_logger()
    for row in result.ledger.iter_rows(named=True):
        log.info("%-22s read %6d  loaded %6d  quarantined %5d", row["source"], row["rows_read"],
                 row["rows_loaded"], row["rows_quarantined"])
    for row in result.quarantine.head(20).iter_rows(named=True):
        log.warning("quarantined %s line %s: %s", row["source"], row["line_no"], row["reason"])
    return result


@task(name="load-raw", cache_policy=NO_CACHE)
def load_task(db: Path, run_id: str, result: IngestResult, data_dir: str, top_k: int) -> pl.DataFrame:
    """Raw tables replaced, this run's ledger and quarantine appended."""
    from datetime import datetime, timezone

    from tasks.load import append_run_rows, ensure_history_tables, replace_table
    from tasks.warehouse import connect

    with connect(db) as con:
        ensure_history_tables(con)
        for name, frame in result.tables.items():
            replace_table(con, name, frame)
        replace_table(con, "raw_photos", result.photos)
        append_run_rows(con, "quarantine", run_id, result.quarantine.with_columns(pl.lit(run_id).alias("run_id")))
        ledger = result.ledger.with_columns(pl.lit(run_id).alias("run_id"))
        append_run_rows(con, "ingest_ledger", run_id, ledger)
        con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        con.execute("INSERT INTO runs (run_id, started_at, data_dir, top_k) VALUES (?, ?, ?, ?)",
                    [run_id, datetime.now(timezone.utc).replace(tzinfo=None), data_dir, top_k])
    return ledger
