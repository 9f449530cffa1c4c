"""What every part of ingest shares: the two errors, path containment, and text helpers.

``SourceFileError`` stops the run (a whole file is missing or unusable); ``RowError`` is
one row's quarantine reason.  ``resolve_inside`` is the one gate every path passes before
a byte of it is read.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path

# How much of a bad line the quarantine keeps: enough to recognise it, not the whole blob.
MAX_RAW_CHARS = 2_000
BOM = "\ufeff"


class SourceFileError(RuntimeError):
    """A whole source file is missing or unreadable: the run stops."""


class RowError(ValueError):
    """One row is bad; its message is the quarantine reason."""


class OutsideDataFolder(Exception):
    """A path that resolves (through links) to somewhere outside the data folder."""


def printable_name(name: str) -> str:
    """A file name as text even when its bytes are not UTF-8 (os gives surrogate escapes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def clip(text: str) -> str:
    """``text`` cut at MAX_RAW_CHARS characters, saying how long it was."""
    if len(text) <= MAX_RAW_CHARS:
        return text
    return f"{text[:MAX_RAW_CHARS]}... [{len(text):,} characters in all]"


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


def inside_or_refuse(data_dir: Path, path: Path, what: str, missing: str) -> Path:
    """``resolve_inside`` for a whole input (a source file or a photo folder): any problem is a
    ``SourceFileError`` naming ``what`` ("source file", "photo folder") and, when it is missing,
    what was expected there (``missing``)."""
    try:
        return resolve_inside(data_dir.resolve(), path)
    except FileNotFoundError:
        raise SourceFileError(f"{what} {path} is missing ({missing})") from None
    except OutsideDataFolder:
        raise SourceFileError(f"{what} {path} is a link to {path.resolve()}, outside the data folder "
                              f"{data_dir.resolve()}; the pipeline reads only inside the data folder") from None
    except OSError as exc:
        raise SourceFileError(f"{what} {path} cannot be opened: {exc}") from None


def format_characters(text: str) -> Counter[str]:
    """Invisible format characters (Unicode category Cf: zero-width space, soft hyphen,
    byte-order mark, joiners, direction marks) in ``text``, by character."""
    return Counter(ch for ch in text if unicodedata.category(ch) == "Cf")


def without_format_characters(text: str) -> str:
    """``text`` with every Unicode Cf character removed ('gi\\u200brl' -> 'girl')."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def describe_characters(found: Counter[str]) -> str:
    """'U+200B ZERO WIDTH SPACE x2, U+00AD SOFT HYPHEN x1' (most frequent first)."""
    return ", ".join(f"U+{ord(ch):04X} {unicodedata.name(ch, 'UNNAMED')} x{n}" for ch, n in found.most_common())
