"""Ingest: read the five source files and the photo folders, validate every row and photo.

Every input row ends up in exactly one place: its typed raw table or the quarantine,
with a reason a person understands.  Only a whole file that is missing or unreadable
stops the run (``SourceFileError``), before anything in the warehouse changes.

Nothing outside the data folder is ever opened: every path is resolved (links followed)
and checked to lie inside the data folder before a byte of it is read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from PIL import Image, ImageOps

# Larger photos are refused before decoding (decompression bombs); PIL's own guard is
# disabled so that our explicit check decides, with a readable reason.
MAX_PIXELS = 60_000_000
Image.MAX_IMAGE_PIXELS = None
# A photo in this archive is well under 1 MiB; a file 100x that is not a photo we want to
# hash and decode on every run.
MAX_PHOTO_BYTES = 100 * 2**20
# The longest real row is under 400 bytes; a megabyte "line" is a broken file, not a caption.
MAX_LINE_BYTES = 64 * 2**10
# The largest source file is ~3 MB; a gigabyte is a wrong file, not one to load into memory.
MAX_SOURCE_BYTES = 2**30
# How much of a bad line the quarantine keeps: enough to recognise it, not the whole blob.
MAX_RAW_CHARS = 2_000
# MPO is the JPEG variant some cameras write (a JPEG with a second preview image).
READABLE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP"}
PHOTO_DIRS = {"train": "train_images", "test": "test_images"}
# Part of every photo's stat key: a change to what validation checks re-checks every photo.
VALIDATION_RULES = hashlib.sha256(
    f"{MAX_PIXELS}|{MAX_PHOTO_BYTES}|{sorted(READABLE_FORMATS)}|draft-decode+exif|v1".encode()).hexdigest()[:8]

SAFE_NAME = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]*$")
QUERY_ID = re.compile(r"^(?P<image>[^#]+)#(?P<n>[0-9]+)$")
INTEGER = re.compile(r"^[+-]?[0-9]+(?:\.0*)?$")
# Unicode category Cc, less the tab that separates TSV fields.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
DECIMAL = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
MAX_CAPTION_N = 2**31 - 1  # stg_captions casts the number after '#' to a 32-bit integer
MAX_VOTES = 1_000_000
CROWD_SHARE_TOLERANCE = 0.01
DELIMITER_NAMES = {",": "comma", "\t": "tab", "|": "pipe"}


class SourceFileError(RuntimeError):
    """A whole source file is missing or unreadable: the run stops."""


class RowError(ValueError):
    """One row is bad; its message is the quarantine reason."""


def _printable_name(name: str) -> str:
    """A file name as text even when its bytes are not UTF-8 (os gives surrogate escapes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _clip(text: str) -> str:
    if len(text) <= MAX_RAW_CHARS:
        return text
    return f"{text[:MAX_RAW_CHARS]}... [{len(text):,} characters in all]"


class OutsideDataFolder(Exception):
    """A path that resolves (through links) to somewhere outside the data folder."""


def resolve_inside(root: Path, path: Path) -> Path:
    """``path`` with every link followed, if it exists and lies inside ``root`` (resolved).

    Raises FileNotFoundError (missing, or a link to nothing), OutsideDataFolder, or
    OSError (link loop, a folder on the way that cannot be searched).
    """
    try:
        real = path.resolve(strict=True)
    except RuntimeError as exc:  # Python < 3.13 reports a link loop this way
        raise OSError(f"link loop: {exc}") from None
    if not real.is_relative_to(root):
        raise OutsideDataFolder(f"{path} resolves to {real}, outside {root}")
    return real


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
    # size:mtime_ns:ctime_ns:inode:rules of the file as read; None when it was not read.
    stat_key: str | None = None


# A previous run's checks by (split, image): reused when the file's stat key is unchanged.
KnownPhotos = dict[tuple[str, str], PhotoCheck]


def stat_key(st) -> str:
    """What must stay equal for an earlier check of a file to still hold.

    ctime and inode change whenever the file is written, replaced, renamed over or
    copied (even by tools that restore mtime), so a file is re-read unless it is the
    very same file, untouched, checked under the same rules.
    """
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{VALIDATION_RULES}"


def check_photo_name(name: str) -> str | None:
    if not name:
        return "empty image name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"image name {_printable_name(name)!r} is not valid UTF-8"
    if name.startswith("/") or "\\" in name or "/" in name or ".." in name:
        return f"image name {name!r} is not a plain file name (paths are not allowed)"
    if not SAFE_NAME.match(name):
        return f"image name {name!r} has characters a file name may not have here"
    return None


def not_found(name: str, split: str) -> str:
    return f"image '{name}' not found in {PHOTO_DIRS[split]}/"


def inspect_photo(data_dir: Path, split: str, name: str, known: KnownPhotos | None = None) -> PhotoCheck:
    """Validate one photo without ever reading outside ``data_dir``.

    ``known``: earlier checks; one whose stat key equals the file's is returned as is
    (path containment and the stat are always redone; the bytes are not re-read).
    """
    shown = _printable_name(name)
    rel = f"{PHOTO_DIRS[split]}/{shown}"

    def bad(problem: str, **kw) -> PhotoCheck:
        base = dict(bytes=None, sha256=None, width=None, height=None, format=None)
        base.update(kw)
        return PhotoCheck(shown, split, rel, problem=problem, **base)

    if problem := check_photo_name(name):
        return bad(problem)
    path = data_dir / PHOTO_DIRS[split] / name
    try:
        real = resolve_inside(data_dir.resolve(), path)
    except FileNotFoundError:
        if path.is_symlink():
            return bad(f"image '{name}' is a link to a file that does not exist")
        return bad(not_found(name, split))
    except OutsideDataFolder:
        return bad(f"image '{name}' is a link pointing outside the data folder (not read)")
    except OSError as exc:
        return bad(f"image '{name}' cannot be resolved ({exc})")
    # stat before open: a FIFO or device would block or stream forever if opened.
    try:
        st = real.stat()
    except OSError as exc:
        return bad(f"image '{name}' cannot be read: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return bad(f"image '{name}' is not a regular file")
    if st.st_size == 0:
        return bad(f"image '{name}' is empty (0 bytes)", bytes=0)
    if st.st_size > MAX_PHOTO_BYTES:
        return bad(f"image '{name}' is {st.st_size:,} bytes, over the {MAX_PHOTO_BYTES:,}-byte limit",
                   bytes=st.st_size)
    key = stat_key(st)
    if known and (prev := known.get((split, name))) is not None and prev.stat_key == key and prev.path == rel:
        return prev
    try:
        data = real.read_bytes()
    except OSError as exc:
        return bad(f"image '{name}' cannot be read: {exc.strerror or exc}")
    if not data:
        return bad(f"image '{name}' is empty (0 bytes)", bytes=0)
    sha = hashlib.sha256(data).hexdigest()
    # Read in full now: the verdict below depends on these bytes only (and on the rules).
    seen = dict(bytes=len(data), sha256=sha, stat_key=key if len(data) == st.st_size else None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Decoded from the bytes already read: the file is opened once, by us.
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format, img.size
                seen.update(format=fmt, width=w, height=h)
                if fmt not in READABLE_FORMATS:
                    return bad(f"image '{name}' is {fmt}, a format the pipeline does not read "
                               f"(it reads {', '.join(sorted(READABLE_FORMATS))})", **seen)
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
                # The encoder turns photos upright by their EXIF tag; a broken tag must
                # fail here, not halfway through embedding.
                ImageOps.exif_transpose(img)
    except Image.UnidentifiedImageError:
        return bad(f"image '{name}' is not an image file", **seen)
    except Exception as exc:  # noqa: BLE001  (any decoder failure is this photo's problem)
        return bad(f"image '{name}' cannot be decoded: {type(exc).__name__}: {exc}", **seen)
    return PhotoCheck(name, split, rel, problem=None, **seen)


def _photo_folder(data_dir: Path, folder: str) -> Path:
    d = data_dir / folder
    try:
        real = resolve_inside(data_dir.resolve(), d)
    except FileNotFoundError:
        raise SourceFileError(f"photo folder {d} is missing (expected a folder of .jpg photos)") from None
    except OutsideDataFolder:
        raise SourceFileError(f"photo folder {d} is a link to {d.resolve()}, outside the data folder "
                              f"{data_dir.resolve()}; the pipeline reads only inside the data folder") from None
    except OSError as exc:
        raise SourceFileError(f"photo folder {d} cannot be opened: {exc}") from None
    if not real.is_dir():
        raise SourceFileError(f"photo folder {d} is not a folder (expected a folder of .jpg photos)")
    return d


def register_photos(data_dir: Path, referenced: dict[str, set[str]], known: KnownPhotos | None = None
                    ) -> list[PhotoCheck]:
    """Every file in the photo folders plus every photo a row names, each checked once
    (unchanged files by their earlier check, see ``inspect_photo``)."""
    checks = []
    for split, folder in PHOTO_DIRS.items():
        d = _photo_folder(data_dir, folder)
        try:
            listed = {p.name for p in d.iterdir()}
        except OSError as exc:
            raise SourceFileError(f"photo folder {d} cannot be listed: {exc}") from None
        for name in sorted(listed | referenced.get(split, set())):
            if name.startswith(".") and name in listed:
                # Hidden files (.DS_Store, ._x.jpg) are counted, never opened.
                checks.append(PhotoCheck(_printable_name(name), split, f"{folder}/{_printable_name(name)}",
                                         None, None, None, None, None,
                                         f"hidden file '{_printable_name(name)}' is not read as a photo"))
            else:
                checks.append(inspect_photo(data_dir, split, name, known))
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

    @property
    def n_fields(self) -> int:
        return len(self.header) if self.header is not None else len(self.columns)

    def expected(self) -> str:
        sep = DELIMITER_NAMES.get(self.delimiter, repr(self.delimiter))
        if self.header is not None:
            return f"UTF-8 {sep}-separated text with the header {self.delimiter.join(self.header)!r}"
        return f"UTF-8 {sep}-separated text without a header, columns {', '.join(self.columns)}"


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise RowError(f"{what} is empty")
    # Zero-width and other invisible characters are not whitespace to str.strip().
    if not any(ch.isalnum() for ch in value):
        raise RowError(f"{what} {value[:60]!r} has no letters or digits")
    return value


def _int_in(value: str, what: str, lo: int, hi: int | None) -> int:
    v = value.strip()
    # ASCII digits only: int() would also take '1_000' and non-Latin digits.
    if not INTEGER.match(v):
        raise RowError(f"{what} {v[:40]!r} is not a whole number")
    n = int(v.split(".")[0])
    if n < lo or (hi is not None and n > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise RowError(f"{what} {n} is outside {rng}")
    return n


def _image_name(value: str) -> str:
    name = value.strip()
    if problem := check_photo_name(name):
        raise RowError(problem)
    return name


def _query_id(value: str) -> str:
    qid = value.strip()
    m = QUERY_ID.match(qid)
    if not m:
        raise RowError(f"query_id {qid[:80]!r} does not follow <image>#<n>")
    if problem := check_photo_name(m["image"]):
        raise RowError(f"query_id {qid[:80]!r} does not name a plain image file before '#' ({problem})")
    if int(m["n"]) > MAX_CAPTION_N:
        raise RowError(f"query_id {qid[:80]!r} has a caption number over {MAX_CAPTION_N}")
    return qid


def query_image(query_id: str) -> str:
    return query_id.rsplit("#", 1)[0]


def parse_train_pair(f: list[str]) -> dict:
    return {
        "image": _image_name(f[0]),
        "query_id": _query_id(f[1]),
        "query_text": _text(f[2], "query_text"),
    }


def parse_expert(f: list[str]) -> dict:
    row = {"image": _image_name(f[0]), "query_id": _query_id(f[1])}
    for i in range(3):
        row[f"expert_{i + 1}"] = _int_in(f[2 + i], "expert score", 1, 4)
    return row


def parse_crowd(f: list[str]) -> dict:
    raw_share = f[2].strip()
    if not DECIMAL.match(raw_share):
        raise RowError(f"crowd share {raw_share[:40]!r} is not a number")
    share = float(raw_share)
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise RowError(f"crowd share {raw_share} is outside 0..1")
    yes = _int_in(f[3], "crowd yes count", 0, MAX_VOTES)
    no = _int_in(f[4], "crowd no count", 0, MAX_VOTES)
    if yes + no == 0:
        raise RowError("crowd row has no votes (yes 0, no 0)")
    if abs(yes / (yes + no) - share) > CROWD_SHARE_TOLERANCE:
        raise RowError(f"crowd share {raw_share} contradicts the counts ({yes} yes, {no} no)")
    return {
        "image": _image_name(f[0]),
        "query_id": _query_id(f[1]),
        "crowd_share": share,
        "crowd_yes": yes,
        "crowd_no": no,
    }


def parse_test_query(f: list[str]) -> dict:
    row = {
        "query_id": _query_id(f[1]),
        "query_text": _text(f[2], "query_text"),
        "image": _image_name(f[3]),
    }
    # A saved query is written for one gallery photo, and its id names that photo.
    if query_image(row["query_id"]) != row["image"]:
        raise RowError(f"query_id {row['query_id']!r} names image '{query_image(row['query_id'])}' "
                       f"but the row's image is '{row['image']}'")
    return row


def parse_test_image(f: list[str]) -> dict:
    return {"image": _image_name(f[0])}


SOURCES = [
    SourceSpec("train_dataset.csv", "raw_train_pairs", ",", ["image", "query_id", "query_text"],
               ["image", "query_id", "query_text"], parse_train_pair, ["image", "query_id"],
               {"image": "train", "query_id": "train"}),
    SourceSpec("ExpertAnnotations.tsv", "raw_expert_annotations", "\t",
               ["image", "query_id", "expert_1", "expert_2", "expert_3"], None, parse_expert,
               ["image", "query_id"], {"image": "train", "query_id": "train"}),
    SourceSpec("CrowdAnnotations.tsv", "raw_crowd_annotations", "\t",
               ["image", "query_id", "crowd_share", "crowd_yes", "crowd_no"], None, parse_crowd,
               ["image", "query_id"], {"image": "train", "query_id": "train"}),
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
    notes: list[str] = field(default_factory=list)  # file-level remarks for the log


def read_lines(data_dir: Path, spec: SourceSpec) -> list[bytes]:
    """The file's physical lines (split on LF, a CR before it dropped), checked whole."""
    path = data_dir / spec.file
    try:
        real = resolve_inside(data_dir.resolve(), path)
    except FileNotFoundError:
        raise SourceFileError(f"source file {path} is missing (expected {spec.expected()})") from None
    except OutsideDataFolder:
        raise SourceFileError(f"source file {path} is a link to {path.resolve()}, outside the data folder; "
                              "the pipeline reads only inside the data folder") from None
    except OSError as exc:
        raise SourceFileError(f"source file {path} cannot be opened: {exc}") from None
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
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    # Old Mac files end lines with CR alone.
    lines = data.split(b"\n" if b"\n" in data or b"\r" not in data else b"\r")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _fields(text: str, delimiter: str) -> list[str]:
    # strict: a quote in the wrong place is an error, not silently glued into the text.
    return next(csv.reader([text], delimiter=delimiter, strict=True))


def _header_like(raw: bytes, delimiter: str) -> list[str]:
    try:
        got = next(csv.reader([raw.decode("utf-8", errors="replace")], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return []
    return [g.strip().strip('"').strip().lower() for g in got]


def _parse_line(spec: SourceSpec, raw_bytes: bytes, header: list[str]) -> dict:
    """One physical line -> a typed row, or RowError with the reason."""
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
    if [f.strip().lower() for f in fields] == header:
        raise RowError("repeated header line")
    if len(fields) != spec.n_fields:
        raise RowError(f"{len(fields)} fields, expected {spec.n_fields} "
                       f"({', '.join(spec.header or spec.columns)})")
    return spec.parse(fields)


def _data_start(data_dir: Path, spec: SourceSpec, lines: list[bytes]) -> tuple[int, list[str]]:
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


def _source_lines(data_dir: Path, spec: SourceSpec) -> list[bytes]:
    lines = read_lines(data_dir, spec)
    # Trailing blank lines are file formatting, not rows.
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def preflight(data_dir: Path) -> None:
    """The whole-file checks alone (missing, unreadable, not the expected format), so a
    run that cannot work stops with one clear message before it starts."""
    data_dir = Path(data_dir)
    _check_data_dir(data_dir)
    for spec in SOURCES:
        _data_start(data_dir, spec, _source_lines(data_dir, spec))
    for folder in PHOTO_DIRS.values():
        _photo_folder(data_dir, folder)


def parse_source(data_dir: Path, spec: SourceSpec) -> ParsedSource:
    lines = _source_lines(data_dir, spec)
    start, notes = _data_start(data_dir, spec, lines)
    header = [h.lower() for h in (spec.header or spec.columns)]
    rows, quarantine = [], []
    for line_no, raw_bytes in enumerate(lines[start:], start=start + 1):
        try:
            rows.append((line_no, _clip(raw_bytes.decode("utf-8", errors="replace")),
                         _parse_line(spec, raw_bytes, header)))
        except RowError as exc:
            quarantine.append((line_no, _clip(raw_bytes.decode("utf-8", errors="replace")), str(exc)))
    parsed = ParsedSource(spec, rows, quarantine, rows_read=len(lines) - start, notes=notes)
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
    tables: dict[str, pl.DataFrame]
    photos: pl.DataFrame
    quarantine: pl.DataFrame
    ledger: pl.DataFrame
    notes: list[str] = field(default_factory=list)


def _check_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise SourceFileError(f"data folder {data_dir} is missing (expected a folder with "
                              f"{', '.join(s.file for s in SOURCES)}, train_images/ and test_images/)")


def ingest(data_dir: Path, known: KnownPhotos | None = None) -> IngestResult:
    """Read, validate and type everything under ``data_dir``; never reads outside it.

    ``known``: the previous run's photo checks (``known_photos``); unchanged files keep them.
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
                "problem": pl.String, "stat_key": pl.String},
        orient="row",
    )
    quarantine = pl.DataFrame(
        q_rows, schema={"source": pl.String, "line_no": pl.Int64, "raw_line": pl.String, "reason": pl.String},
        orient="row",
    )
    ledger_frame = pl.DataFrame(ledger, schema={"source": pl.String, "rows_read": pl.Int64,
                                                "rows_loaded": pl.Int64, "rows_quarantined": pl.Int64})
    return IngestResult(tables, photos, quarantine, ledger_frame, [n for p in parsed for n in p.notes])


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


def known_photos(db: Path | None) -> KnownPhotos:
    """The photo checks in ``db``'s raw_photos (the previous run's), by (split, image)."""
    if db is None or not Path(db).exists():
        return {}
    from tasks.warehouse import connect

    with connect(db) as con:
        cols = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'raw_photos'").fetchall()}
        if "stat_key" not in cols:  # a warehouse from before stat keys: check everything once
            return {}
        rows = con.execute("SELECT * FROM raw_photos WHERE stat_key IS NOT NULL").pl()
    fields = PhotoCheck.__dataclass_fields__
    return {(r["split"], r["image"]): PhotoCheck(**{k: r[k] for k in fields}) for r in rows.iter_rows(named=True)}


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def ingest_task(data_dir: Path, db: Path | None = None) -> IngestResult:
    """Read and validate the data folder; photos unchanged since the run in ``db`` are not re-read."""
    known = known_photos(db)
    result = ingest(data_dir, known)
    log = get_run_logger()
    reused = sum(1 for (split, image, key) in result.photos.select("split", "image", "stat_key").iter_rows()
                 if key is not None and (p := known.get((split, image))) is not None and p.stat_key == key)
    log.info("photos: %d checked, %d unchanged since the last run (not re-read)",
             result.photos.height - reused, reused)
    for note in result.notes:
        log.warning("%s", note)
    for row in result.ledger.iter_rows(named=True):
        log.info("%-22s read %6d  loaded %6d  quarantined %5d", row["source"], row["rows_read"],
                 row["rows_loaded"], row["rows_quarantined"])
    for row in result.quarantine.head(20).iter_rows(named=True):
        log.warning("quarantined %s line %s: %s", row["source"], row["line_no"], row["reason"])
    if result.quarantine.height > 20:
        log.warning("... and %d more quarantined rows (table quarantine, exports/quarantine.parquet)",
                    result.quarantine.height - 20)
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
