"""The embedding cache: Parquet files keyed by the content hash of their input.

Layout: ``warehouse/embeddings/<kind>/<encoder>/part-*.parquet``, one row per input with
``sha256`` and one fixed-size float32 list per output.  New rows go into new part files,
each written atomically as soon as its chunk is done, so a killed run keeps what it
finished and an unchanged input is never embedded twice.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from models.face_age import FaceAgeConfig
from models.image_encoder import CALIBRATION_PHOTOS, ImageLike
from tasks.atomic import atomic_write_parquet

# The face signal the photo guard reads (tasks/photo_guard.py GuardConfig.faces), computed by
# the embedding pass from the same decoded photo as the image views (tasks/embed.py).
FACES = FaceAgeConfig()

# compute(indices) yields (indices done, {output name: array [len(indices done), dim]}).
Compute = Callable[[list[int]], Iterator[tuple[list[int], dict[str, np.ndarray]]]]


def text_sha(text: str) -> str:
    """SHA-256 hex digest of the text's UTF-8 bytes: a text's cache key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def encoder_dir(root: Path, kind: str, encoder_name: str) -> Path:
    """Cache folder ``root/kind/<encoder name>`` of one encoder.

    Each run of characters outside ``[A-Za-z0-9.@_-]`` in the name becomes one ``_``.
    """
    return root / kind / re.sub(r"[^A-Za-z0-9.@_-]+", "_", encoder_name)


def face_cache_dir(emb_root: Path, config: FaceAgeConfig = FACES) -> Path:
    """``emb_root/faces/<config name>/``: face vectors (``models.face_age.FEATURES``) by content hash."""
    return encoder_dir(emb_root, "faces", config.name)


def cached_keys(folder: Path) -> set[str]:
    """Keys already in a cache folder, reading only the key column of its parts."""
    parts = sorted(folder.glob("part-*.parquet")) if folder.exists() else []
    if not parts:
        return set()
    return set(ds.dataset(parts, format="parquet").to_table(columns=["sha256"]).column(0).to_pylist())


def load_cached(folder: Path, keys: Sequence[str], outputs: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Vectors already on disk for any of ``keys``: {output: {sha: vector}}."""
    found: dict[str, dict[str, np.ndarray]] = {o: {} for o in outputs}
    parts = sorted(folder.glob("part-*.parquet")) if folder.exists() else []
    if not parts or not keys:
        return found
    wanted = pa.array(sorted(set(keys)), pa.string())
    table = ds.dataset(parts, format="parquet").to_table(
        columns=["sha256", *outputs], filter=ds.field("sha256").isin(wanted)
    )
    shas = table.column("sha256").to_pylist()
    for o in outputs:
        col = table.column(o).combine_chunks()
        dim = col.type.list_size
        mat = col.values.to_numpy(zero_copy_only=False).reshape(len(shas), dim)
        found[o] = dict(zip(shas, mat))
    return found


def write_part(folder: Path, shas: Sequence[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write one cache part: ``shas`` and, per output, their vectors.

    Args:
        folder: the encoder's cache folder.
        shas: (n,) keys.
        arrays: output name -> (n, d) vectors, stored as float32 fixed-size lists.

    Returns:
        The new Parquet file, ``part-<ns time>-<key digest>.parquet``, written atomically.
    """
    cols = {"sha256": pa.array(list(shas), pa.string())}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
    digest = hashlib.sha256("".join(shas).encode()).hexdigest()[:16]
    return atomic_write_parquet(pa.table(cols), folder / f"part-{time.time_ns()}-{digest}.parquet")


def embed_with_cache(
    folder: Path,
    keys: Sequence[str],
    outputs: Sequence[str],
    compute: Compute,
    chunk_size: int = 256,
) -> tuple[dict[str, np.ndarray], int]:
    """Vectors for every key (rows aligned with ``keys``); only missing keys are computed.

    Returns the arrays and how many inputs had to be embedded this time.
    """
    cached = load_cached(folder, keys, outputs)
    missing_keys = sorted({k for k in keys if k not in cached[outputs[0]]})
    first_index = {}
    for i, k in enumerate(keys):
        first_index.setdefault(k, i)
    todo = [first_index[k] for k in missing_keys]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        done_idx: list[int] = []
        done: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
        for idx, arrays in compute(chunk):
            done_idx.extend(idx)
            for o in outputs:
                done[o].append(arrays[o])
        if not done_idx:
            continue
        stacked = {o: np.concatenate(done[o]) for o in outputs}
        write_part(folder, [keys[i] for i in done_idx], stacked)
        for o in outputs:
            cached[o].update(zip((keys[i] for i in done_idx), stacked[o]))
    result = {o: np.stack([cached[o][k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32)
              for o in outputs}
    return result, len(todo)


def unique_contents(paths: Sequence[ImageLike], shas: Sequence[str]) -> dict[str, ImageLike]:
    """One path per distinct content (the first one seen): {sha256: path}."""
    first: dict[str, ImageLike] = {}
    for path, sha in zip(paths, shas):
        first.setdefault(sha, path)
    return first


def calibration_sample(paths: Sequence[ImageLike], shas: Sequence[str],
                       n: int = CALIBRATION_PHOTOS) -> list[ImageLike]:
    """The photos an int8 model is calibrated on if it has to be built: the ``n`` distinct
    contents with the smallest sha256.  Deterministic and independent of names and order;
    once the model exists it is reused, so later photos never change it."""
    first = unique_contents(paths, shas)
    return [first[s] for s in sorted(first)[:n]]
