"""The five source files: how each is laid out, and how one row's fields become typed values.

Each parser takes the fields of one physical line (as the CSV reader split them) and
returns the typed row, or raises ``RowError`` with the reason a person reads in the
quarantine.  Invisible format characters (zero-width space, soft hyphen, byte-order
mark) are removed from every field here; the reader records where it found them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from tasks.ingest_base import RowError, without_format_characters
from tasks.ingest_photos import check_photo_name

QUERY_ID = re.compile(r"^(?P<image>[^#]+)#(?P<n>[0-9]+)$")
INTEGER = re.compile(r"^[+-]?[0-9]+(?:\.0*)?$")
DECIMAL = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
MAX_CAPTION_N = 2**31 - 1  # stg_captions casts the number after '#' to a 32-bit integer
MAX_VOTES = 1_000_000
CROWD_SHARE_TOLERANCE = 0.01
DELIMITER_NAMES = {",": "comma", "\t": "tab", "|": "pipe"}


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
        """Fields per row: the header's length, else the number of columns."""
        return len(self.header) if self.header is not None else len(self.columns)

    def expected(self) -> str:
        """What a valid file looks like, in words, for error messages (encoding, delimiter, header or
        columns)."""
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
    # 'gi\u200brl' must read as 'girl' to everything downstream (the text filter above all).
    return without_format_characters(value).strip()


def _int_in(value: str, what: str, lo: int, hi: int | None) -> int:
    v = without_format_characters(value).strip()
    # ASCII digits only: int() would also take '1_000' and non-Latin digits.
    if not INTEGER.match(v):
        raise RowError(f"{what} {v[:40]!r} is not a whole number")
    n = int(v.split(".")[0])
    if n < lo or (hi is not None and n > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise RowError(f"{what} {n} is outside {rng}")
    return n


def _image_name(value: str) -> str:
    name = without_format_characters(value).strip()
    if problem := check_photo_name(name):
        raise RowError(problem)
    return name


def _query_id(value: str) -> str:
    qid = without_format_characters(value).strip()
    m = QUERY_ID.match(qid)
    if not m:
        raise RowError(f"query_id {qid[:80]!r} does not follow <image>#<n>")
    if problem := check_photo_name(m["image"]):
        raise RowError(f"query_id {qid[:80]!r} does not name a plain image file before '#' ({problem})")
    if int(m["n"]) > MAX_CAPTION_N:
        raise RowError(f"query_id {qid[:80]!r} has a caption number over {MAX_CAPTION_N}")
    return qid


def query_image(query_id: str) -> str:
    """The image part of a query or caption id ``<image>#<n>``: the photo it was written for."""
    return query_id.rsplit("#", 1)[0]


def parse_train_pair(f: list[str]) -> dict:
    """One ``train_dataset.csv`` row (fields as split) -> ``image``, ``query_id``, ``query_text``.

    Raises:
        RowError: a bad photo name, a query id not of the form ``<image>#<n>``, or a text without
            letters or digits.
    """
    return {
        "image": _image_name(f[0]),
        "query_id": _query_id(f[1]),
        "query_text": _text(f[2], "query_text"),
    }


def parse_expert(f: list[str]) -> dict:
    """One ``ExpertAnnotations.tsv`` row -> ``image``, ``query_id``, ``expert_1`` .. ``expert_3``.

    Raises:
        RowError: a bad photo name or query id, or a grade that is not a whole number in 1..4.
    """
    row = {"image": _image_name(f[0]), "query_id": _query_id(f[1])}
    for i in range(3):
        row[f"expert_{i + 1}"] = _int_in(f[2 + i], "expert score", 1, 4)
    return row


def parse_crowd(f: list[str]) -> dict:
    """One ``CrowdAnnotations.tsv`` row -> ``image``, ``query_id``, ``crowd_share``, ``crowd_yes``, ``crowd_no``.

    Raises:
        RowError: a bad photo name or query id; a share not a number in 0..1; counts not whole
            numbers in 0..``MAX_VOTES``, or both 0; a share more than ``CROWD_SHARE_TOLERANCE``
            from ``yes / (yes + no)``.
    """
    raw_share = without_format_characters(f[2]).strip()
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
    """One ``test_queries.csv`` row (a saved query) -> ``query_id``, ``query_text``, ``image``.

    Raises:
        RowError: a bad field, or a query id naming another photo than the row's ``image``.
    """
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
    """One ``test_images.csv`` row -> ``image``.

    Raises:
        RowError: not a plain photo file name.
    """
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


