"""Extra views of every photo for the child-photo guard, cached by content hash.

The relevance tower sees each photo once, whole, at 260 px (``tasks/embed.py``).  Children
are often small figures in a wide scene, and on the train photos a second look at higher
resolution, max-pooled over the feature map, is what lifted the guard most (out-of-fold
AUC 0.873 -> 0.903, see docs/compliance.md).  ``GUARD_VIEW`` is that look: EfficientNet-Lite0
(the cheaper network: ~1.7x the 260 px Lite2 pass in FLOPs) at 448 px, returning the
mean- and max-pooled head activations and the ImageNet logits of the mean.

The embedding step (``tasks/embed.py``: ``embed_photos``, also in the mapped shards of
``tasks/distributed.py``) computes this view in the same pass as the relevance view, from
the same decoded photo; the guard reads it with ``cached_views``.  ``compute_views`` (the
benchmarks) computes what a cache lacks.

Layout: ``warehouse/embeddings/photo_guard/<view name>/part-*.parquet`` (the same
content-hash cache as the relevance embeddings, in its own folder, so the two never
collide and an unchanged photo is never looked at twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.image_encoder import ImageEncoder, ImageEncoderConfig, ImageLike, default_precision, encode_views
from tasks.embedding_cache import calibration_sample, embed_with_cache, encoder_dir, load_cached

# int8, like the relevance view: in a cold reindex of the 1100 photos (both views int8) the
# guard's out-of-fold AUC moved 0.9016 -> 0.9001 and its test recall 0.955 -> 0.977 (bar: AUC
# within 0.005, recall not lower).  int8 only where the CPU has VNNI (default_precision).
GUARD_VIEW = ImageEncoderConfig(variant="lite0", image_size=448, max_pool=True, precision=default_precision())
OUTPUTS = GUARD_VIEW.outputs  # ('features', 'max_features', 'logits')


def guard_encoder(onnx_cache: Path, calibration: Sequence[ImageLike] | None = None,
                  view: ImageEncoderConfig | None = None) -> ImageEncoder:
    """The guard view's encoder (ONNX export, and int8 model if any, built once in ``onnx_cache``).
    ``view`` defaults to ``GUARD_VIEW`` as it is at call time (the benchmark switches it)."""
    return ImageEncoder(view or GUARD_VIEW, cache_dir=onnx_cache, calibration_images=calibration)


@dataclass
class PhotoViews:
    """The guard view's encoder outputs for (split, image) keys: ``arrays`` maps each of ``OUTPUTS`` to (n,
    d)."""

    keys: list[tuple[str, str]]   # (split, image)
    arrays: dict[str, np.ndarray]  # OUTPUTS -> [n, d]
    name: str
    n_computed: int

    def rows(self, split: str, images: Sequence[str]) -> np.ndarray:
        """Row of each of ``images`` (in ``split``) in ``arrays``: (len(images),) int64.

        Raises:
            KeyError: an image was not encoded.
        """
        where = {k: i for i, k in enumerate(self.keys)}
        return np.array([where[(split, i)] for i in images], dtype=np.int64)


def cached_views(shas: Sequence[str], emb_root: Path, onnx_cache: Path,
                 view: ImageEncoderConfig = GUARD_VIEW) -> tuple[dict[str, np.ndarray], str]:
    """The guard view of every photo (rows aligned with ``shas``; ``OUTPUTS`` -> [n, d] float32)
    as the embedding pass cached it, and the view's name.  Raises ``LookupError`` naming the
    first missing content hash: the embedding stage embeds every valid photo first, so a
    miss is a bug or a cache deleted mid-run, never something to recompute here."""
    enc = guard_encoder(onnx_cache, None, view)
    found = load_cached(encoder_dir(emb_root, "photo_guard", enc.name), list(shas), list(enc.outputs))
    missing = [s for s in shas if s not in found[enc.outputs[0]]]
    if missing:
        raise LookupError(f"{len(missing)} photos have no cached guard view (first: {missing[0]}): "
                          "the embedding stage must run first")
    return {o: np.stack([found[o][s] for s in shas]).astype(np.float32) if len(shas)
            else np.zeros((0, 0), np.float32) for o in enc.outputs}, enc.name


def compute_views(paths: Sequence[Path], shas: Sequence[str], emb_root: Path, onnx_cache: Path,
                  view: ImageEncoderConfig = GUARD_VIEW) -> tuple[dict[str, np.ndarray], str, int]:
    """The guard view of every photo (rows aligned with ``shas``): read from the cache the
    embedding step filled; only contents missing there are computed."""
    enc = guard_encoder(onnx_cache, calibration_sample(paths, shas), view)

    def compute(idx: list[int]):
        start = 0
        for (out,) in encode_views([enc], [paths[i] for i in idx]):
            n = len(out["features"])
            yield idx[start : start + n], out
            start += n

    arrays, n = embed_with_cache(encoder_dir(emb_root, "photo_guard", enc.name), list(shas), list(enc.outputs),
                                 compute)
    return arrays, enc.name, n
