"""The one way files are written in this project: readers see the old file or the whole new one.

``write`` fills a temporary file next to the target (``.<name>.<random>.<pid>.tmp``, same
folder, so the final ``os.replace`` is a rename on one file system), which is fsynced and
then renamed over the target.  A killed process leaves at most its temporary file, which
``tasks.warehouse`` (at the start of a run) removes once that pid is gone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (POSIX ``fsync``); for a folder, its entries, so a rename in it
    survives a crash.  Raises ``OSError`` if it cannot be opened."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object], mode: int = 0o644) -> Path:
    """``write(tmp)`` then fsync and rename over ``path``; returns ``path``.

    Creates missing parent folders.  If ``write`` raises, the temporary file is removed and
    the exception propagates; ``path`` is untouched.  The random part keeps two threads of
    one process that write the same target from sharing a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, mode)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(data: bytes, path: Path) -> Path:
    """``data`` into ``path`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_parquet(table, path: Path) -> Path:
    """A ``pyarrow.Table`` into ``path`` as zstd-compressed Parquet, atomically (see ``atomic_write``)."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
