"""Embedding stages (Prefect tasks): photos through both image views, texts through MiniLM.

What they compute is cached by content hash in ``tasks/embedding_cache.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.face_age import FaceAgeConfig, FaceAnalyser
from models.image_encoder import ImageEncoder, ImageEncoderConfig, ImageLike, default_precision, encode_views
from tasks.embedding_cache import (FACES, cached_keys, calibration_sample, embed_with_cache, encoder_dir,  # noqa: F401
                                   face_cache_dir, load_cached, text_sha, unique_contents, write_part)
from tasks.warehouse import connect


@dataclass
class EmbeddedImages:
    """Image-encoder outputs for (split, image) keys: ``features`` (n, 1280), ``logits`` (n, 1000)."""

    keys: list[tuple[str, str]]   # (split, image)
    features: np.ndarray          # [n, 1280]
    logits: np.ndarray            # [n, 1000]
    encoder: str
    n_computed: int

    def rows(self, split: str, images: Sequence[str]) -> np.ndarray:
        """Row of each of ``images`` (in ``split``) in ``features``: (len(images),) int64.

        Raises:
            KeyError: an image was not embedded.
        """
        where = {k: i for i, k in enumerate(self.keys)}
        return np.array([where[(split, i)] for i in images], dtype=np.int64)


@dataclass
class EmbeddedTexts:
    """Text-encoder vectors (n, 384), L2-normalised, one row per distinct text."""

    texts: list[str]
    vectors: np.ndarray           # [n, 384], L2-normalised
    encoder: str
    n_computed: int

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        """Row of each of ``texts`` in ``vectors``: (len(texts),) int64.

        Raises:
            KeyError: a text was not embedded.
        """
        where = {t: i for i, t in enumerate(self.texts)}
        return np.array([where[t] for t in texts], dtype=np.int64)


# int8 (models/image_encoder.py: INT8_KEEP_FP32, calibrated once): in a cold reindex of the 1100
# photos against the same run in fp32 it moved the relevance head's out-of-fold expert tau-c,
# Spearman and crowd tau-b by -0.0003 each and test R@1 / R@5 / R@10 / MRR by -0.008 / +0.010
# / +0.004 / -0.002: inside the bar for the default (0.005 out of fold, 0.01 on test), R@1 and
# R@5 near its edge; another calibration sample gave +0.002 / -0.002 / +0.006 / +0.002, so
# the test differences are calibration noise of a few queries.  int8 only on CPUs whose int8
# kernels are exact (VNNI); fp32 elsewhere (models/image_encoder.py: default_precision).
RELEVANCE_VIEW = ImageEncoderConfig(variant="lite2", precision=default_precision())  # 260 px: mean-pooled features + logits


def image_encoder(onnx_cache: Path, calibration: Sequence[ImageLike] | None = None) -> ImageEncoder:
    """The relevance view's encoder (its ONNX export, and int8 model if any, built once)."""
    return ImageEncoder(RELEVANCE_VIEW, cache_dir=onnx_cache, calibration_images=calibration)


def photo_encoders(onnx_cache: Path, calibration: Sequence[ImageLike] | None = None) -> dict[str, ImageEncoder]:
    """Every view computed per photo, keyed by its cache kind: relevance ('image') and guard."""
    from tasks.photo_views import guard_encoder

    return {"image": image_encoder(onnx_cache, calibration), "photo_guard": guard_encoder(onnx_cache, calibration)}


def embed_photos(paths: Sequence[ImageLike], shas: Sequence[str], emb_root: Path,
                 encoders: dict[str, ImageEncoder], chunk_size: int = 256, workers: int | None = None,
                 faces: FaceAgeConfig | None = None) -> int:
    """Fill every encoder's content-hash cache (``emb_root/<kind>/<encoder name>/``) for these
    photos in one pass: each photo missing anywhere is read and decoded once and fed to every
    network that lacks it, by the same worker thread (``encode_views``).  With ``faces``, the
    same decoded photo also goes to the face signal (``FaceAnalyser``, worker processes) for
    the face cache (``face_cache_dir``), so no later stage opens the photo again.  A part file
    per cache is written every ``chunk_size`` photos.  ``workers``: encoder threads (default:
    the encoders', one per core; also the face processes).  Returns how many photos were
    decoded.  A photo whose face analysis fails is left out of the face cache (a missing
    signal: the guard fails closed) and is decoded again by the next run."""
    folders = {kind: encoder_dir(emb_root, kind, enc.name) for kind, enc in encoders.items()}
    if faces is not None:
        folders["faces"] = face_cache_dir(emb_root, faces)
    have = {kind: cached_keys(folder) for kind, folder in folders.items()}
    first = unique_contents(paths, shas)
    groups: dict[tuple[str, ...], list[str]] = {}  # which caches lack it -> contents
    for sha in sorted(first):
        kinds = tuple(kind for kind in folders if sha not in have[kind])
        if kinds:
            groups.setdefault(kinds, []).append(sha)
    total = sum(len(todo) for todo in groups.values())
    with FaceAnalyser(faces or FaceAgeConfig(), workers, expected=total) as analyser:
        for kinds, todo in groups.items():
            nets = [k for k in kinds if k != "faces"]
            encs = [encoders[kind] for kind in nets]
            # Per batch: the networks' outputs, a future of its face vectors, its photo count.
            pending: list[tuple[list[dict[str, np.ndarray]], object, int]] = []
            done = 0

            def flush() -> None:
                nonlocal pending, done
                n = sum(batch[2] for batch in pending)
                for k, kind in enumerate(nets):
                    write_part(folders[kind], todo[done : done + n],
                               {o: np.concatenate([batch[0][k][o] for batch in pending]) for o in encs[k].outputs})
                if "faces" in kinds:  # waits for the face workers to catch up with this chunk
                    vecs = [v for batch in pending for v in batch[1].result()]
                    ok = [i for i, v in enumerate(vecs) if v is not None]
                    if ok:
                        write_part(folders["faces"], [todo[done + i] for i in ok],
                                   {"faces": np.stack([np.asarray(vecs[i], np.float32) for i in ok])})
                pending, done = [], done + n

            # One stream over every photo (no drain at part boundaries): the workers stay busy.
            stream = encode_views(encs, [first[s] for s in todo], keep_decoded=True,
                                  batch_size=None if encs else 8, workers=workers or (None if encs else 2))
            for outs, photos in stream:
                pending.append((outs, analyser.submit(photos) if "faces" in kinds else None, len(photos)))
                if sum(batch[2] for batch in pending) >= chunk_size:
                    flush()
            if pending:
                flush()
    return total


def quiet_libraries() -> None:
    """Keep libraries' own progress bars (transformers' "Loading weights", Hugging Face
    downloads) and ONNX Runtime's graph-optimisation warnings (hundreds of "Removing
    initializer" lines while an int8 model is calibrated) out of run logs: a worker's log is
    a file, not a terminal.  Our long steps report through ``tasks.progress`` instead."""
    import os
    import sys

    import onnxruntime

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    onnxruntime.set_default_logger_severity(3)  # errors only
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@task(name="build-encoders", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def build_encoders_task(db: Path, data_dir: Path, onnx_cache: Path) -> dict[str, str]:
    """The networks every later step runs, built once per warehouse in ``onnx_cache``: the
    ONNX exports of both photo views and of the text tower, and the int8 models of the photo
    views, calibrated on a deterministic sample of the valid photos (``calibration_sample``).

    The first run on a warehouse exports and calibrates here (the issue measured 15.5 s on an
    idle machine, then spent in the flow body); later runs only check the cached files.  Returns {cache kind: encoder name}.  Raises whatever the export
    raises (a missing weights package, an unreadable calibration photo)."""
    from models.text_encoder import TextEncoder
    from tasks.photo_views import guard_encoder
    from tasks.progress import Progress

    quiet_libraries()
    with connect(db) as con:
        photos = con.execute("SELECT path, sha256 FROM stg_photos WHERE is_valid ORDER BY split, image").pl()
    sample = calibration_sample([data_dir / p for p in photos["path"]], photos["sha256"].to_list())
    steps = [("image", lambda: image_encoder(onnx_cache, sample)),
             ("photo_guard", lambda: guard_encoder(onnx_cache, sample)),
             ("text", lambda: TextEncoder(cache_dir=onnx_cache))]
    names: dict[str, str] = {}
    log = get_run_logger()
    with Progress(len(steps), "building encoders (ONNX export, int8 calibration)", unit="network",
                  key="build-encoders-progress") as progress:
        for kind, build in steps:
            started = time.monotonic()
            enc = build()
            if kind == "text":
                _ = enc.onnx_path  # the text tower exports on first use: here, not in embed-texts
            names[kind] = enc.name
            log.info("encoder %s: %s ready in %.1f s", kind, names[kind], time.monotonic() - started)
            progress.advance(1)
    return names


@task(name="embed-images", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def embed_images_task(db: Path, emb_root: Path, onnx_cache: Path, embedded_in_shards: int = 0) -> EmbeddedImages:
    """Every valid photo's relevance features [n, 1280] and logits [n, 1000] (float32), rows in
    (split, image) order, read from the content-hash cache the embedding shards filled
    (``tasks/distributed.py`` ``fill_image_cache``); no photo file is opened here.

    ``embedded_in_shards``: photos the shards embedded earlier in this run (counted as embedded
    this run, not as "from cache").  Raises ``LookupError`` naming the first photo missing from
    the cache: the shards embed every valid photo first, so a miss is a bug, never something
    to recompute here."""
    with connect(db) as con:
        photos = con.execute(
            "SELECT split, image, sha256 FROM stg_photos WHERE is_valid ORDER BY split, image").pl()
    shas = photos["sha256"].to_list()
    enc = image_encoder(onnx_cache)
    found = load_cached(encoder_dir(emb_root, "image", enc.name), shas, ["features", "logits"])
    missing = [s for s in shas if s not in found["features"]]
    if missing:
        raise LookupError(f"{len(missing)} photos have no cached relevance embedding (first: {missing[0]}): "
                          "the embedding shards must run first")
    arrays = {o: np.stack([found[o][s] for s in shas]).astype(np.float32) if shas else np.zeros((0, 0), np.float32)
              for o in ("features", "logits")}
    distinct = len(set(shas))
    this_run = min(embedded_in_shards, distinct)
    get_run_logger().info(
        "images: %d photos (%d distinct contents); embedded this run: %d; from earlier runs' cache: %d (%s)",
        len(shas), distinct, this_run, distinct - this_run, enc.name)
    return EmbeddedImages(list(zip(photos["split"], photos["image"])), arrays["features"], arrays["logits"],
                          enc.name, this_run)


@task(name="embed-texts", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def embed_texts_task(db: Path, emb_root: Path, onnx_cache: Path | None = None) -> EmbeddedTexts:
    """Captions and saved queries, embedded once per text hash (ONNX export built once in ``onnx_cache``)."""
    from models.text_encoder import TextEncoder

    with connect(db) as con:
        texts = con.execute("""
            SELECT caption_text AS t FROM stg_captions
            UNION SELECT query_text FROM stg_test_queries ORDER BY t""").pl()["t"].to_list()
    quiet_libraries()
    enc = TextEncoder(cache_dir=onnx_cache)

    def compute(idx: list[int]):
        yield idx, {"embedding": enc.encode([texts[i] for i in idx])}

    arrays, n = embed_with_cache(encoder_dir(emb_root, "text", enc.name), [text_sha(t) for t in texts],
                                 ["embedding"], compute, chunk_size=1024)
    get_run_logger().info("texts: %d distinct; embedded this run: %d; from earlier runs' cache: %d",
                          len(texts), n, len(texts) - n)
    return EmbeddedTexts(texts, arrays["embedding"], enc.name, n)
