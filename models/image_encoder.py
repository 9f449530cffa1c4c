"""Image encoder: ImageNet EfficientNet-Lite (lite2 or lite0) -> pooled features + logits.

One readable file, nanoGPT style.  Two backends compute the same function:

* ``torch``: the plain PyTorch forward of ``efficientnet_lite_pytorch.EfficientNet``, the
  reference.  ~2.5-3.8x slower forward than ORT here (PyTorch's CPU depthwise convolutions).
* ``onnx``: the same module exported once to ONNX (cached in ``cache_dir``), run by ONNX
  Runtime (graph optimisations on: BatchNorm folded, ReLU6 fused, NCHWc AVX-512 kernels).
  ``precision='int8'`` (the pipeline's default for both of its views, see ``tasks/embed.py``)
  adds static post-training quantisation (QDQ, per-channel int8 weights, uint8 activations,
  min/max ranges; stem, head conv and classifier kept fp32), calibrated once on a few photos
  and cached: the features stay within ``INT8_TOLERANCE`` of fp32 (cosine mean >= 0.99) and
  the pipeline's relevance and guard metrics did not move beyond noise -- on CPUs with VNNI.
  Without it ONNX Runtime's fused int8 kernels deviate and are no faster, so the pipeline
  runs fp32 there (``default_precision``).

Throughput comes from data parallelism, not intra-op parallelism: ``workers`` threads (one
per core) each decode a whole batch and run it through a single-threaded forward on the
shared session (``run`` is thread-safe and, like PIL's decode and resize, releases the GIL).
No thread waits at an intra-op barrier for a thread the OS preempted to decode JPEGs; on the
2-core box that is 20-25 % faster end to end than 2 intra-op threads plus a decode thread
prefetching the next batch (lite2 fp32: 76 vs 61 photos/s; lite0 fp32 127 vs 106).

Measured end to end on 1100 photos, 2 Zen 4 cores, defaults (bench/embed_throughput.py; the
shared VM's speed drifts ~10 % between sessions): lite2 fp32 64-72 photos/s (torch reference
30), lite2 int8 128-146, lite0 fp32 ~138, lite0 int8 207-232.  lite2 fp32 is compute-bound:
its forward alone runs at ~125-140 GFLOP/s, ~65-70 % of the box's measured fp32 GEMM rate
(190-205 GFLOP/s); 150 photos/s would need ~260 GFLOP/s for the network alone.

Model facts (checked against the package's code, its TensorFlow origin and real photos):

* ``EfficientNet.from_name('efficientnet-lite2')`` + the package's weight file is exactly
  ``EfficientNet.from_pretrained('efficientnet-lite2', weights_path=...)`` (the state dict
  loads strictly: no missing or unexpected keys).  TF "SAME" padding is precomputed for the
  image size, ReLU6 activations, no squeeze-excitation.  Native sizes: lite2 260, lite0 224.
* Input normalisation is the one the TF EfficientNet-Lite models were trained with:
  ``(pixel - 127) / 128`` on 0..255 RGB (``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB =
  [128.0] * 3`` in tensorflow/tpu's lite builder: "edge models use inception-style mean and
  stddev").  On the project's photos it gives the most confident, sensible ImageNet classes
  (retrievers, Pembroke, white wolf, park bench ...); ImageNet mean/std is slightly flatter.
* ``features`` are the head's ReLU6 activations averaged over space ([n, 1280], >= 0), i.e.
  the input of the classifier; ``logits`` the ImageNet classifier on them ([n, 1000]).

Preprocessing (``preprocess``): EXIF orientation applied, any mode -> RGB, then the *whole*
photo resized to S x S with PIL's antialiased bicubic filter (aspect ratio not kept).  On the
project's expert-judged pairs (ExpertAnnotations.tsv: photo vs photo whose caption was the
query), whole-photo resizing separates relevant from irrelevant pairs better than the
ImageNet-style centre crop (AUC +0.017 +- 0.006 for lite2) and bicubic beats bilinear
(+0.006 +- 0.002): a crop cuts off people and objects at the edges of the photo.

The normalisation and the NHWC -> NCHW transpose live inside the model (``_Encoder``), so
``preprocess`` returns plain uint8 pixels and every backend sees identical input.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from itertools import islice
from pathlib import Path

import numpy as np

import models  # noqa: F401  (torchvision compat shim; must precede torch-ecosystem imports)
from models.image_export import (  # noqa: F401  (re-exported: one import point for the encoder's names)
    CALIBRATION_BATCH, CALIBRATION_PHOTOS, EXPORT_FORMAT, FEATURE_DIM, INT8_FORMAT, INT8_KEEP_FP32, INT8_TOLERANCE,
    MEAN, NUM_CLASSES, ONNX_OPSET, STD, _sha256, _weights_sha256, cpu_has_vnni, default_precision,
    encoder_module, export_onnx, photo_hash, quantize_int8, weights_path)
from tasks.atomic import atomic_write
from models.image_preprocess import (  # noqa: F401
    NATIVE_SIZE, PREPROCESSING, RESAMPLE, ImageLike, decode_views, load, load_views, preprocess, to_rgb)


@dataclass(frozen=True)
class ImageEncoderConfig:
    """How the image encoder runs; checked on construction.

    Raises:
        ValueError: an unknown ``variant``, ``backend`` or ``precision``; ``precision='int8'``
            without ``backend='onnx'``; ``workers``, ``threads`` or ``batch_size`` below 1.
    """

    variant: str = "lite2"  # 'lite2' | 'lite0'
    image_size: int | None = None  # None: the variant's native resolution (260 / 224)
    batch_size: int = 4  # photos per forward: 2..16 within ~3 % end to end, small is cache-friendly
    workers: int = 2  # batches decoded + encoded concurrently: the number of physical cores
    threads: int = 1  # intra-op threads per forward (cores used = workers x threads)
    backend: str = "onnx"  # 'onnx' (fast) | 'torch' (reference)
    precision: str = "fp32"  # 'fp32' | 'int8' (onnx only; calibrated once, see ``quantize_int8``)
    max_pool: bool = False  # also return the max-pooled head activations ('max_features')

    def __post_init__(self):
        for field, value, allowed in [("variant", self.variant, tuple(NATIVE_SIZE)),
                                      ("backend", self.backend, ("onnx", "torch")),
                                      ("precision", self.precision, ("fp32", "int8"))]:
            if value not in allowed:
                raise ValueError(f"ImageEncoderConfig.{field}={value!r}: expected one of {allowed}")
        if self.precision == "int8" and self.backend != "onnx":
            raise ValueError("precision='int8' needs backend='onnx'")
        if self.workers < 1 or self.threads < 1 or self.batch_size < 1:
            raise ValueError("workers, threads and batch_size must be >= 1")

    @property
    def size(self) -> int:
        """Input side in pixels: ``image_size``, else the variant's native size (lite2 260, lite0 224)."""
        return self.image_size or NATIVE_SIZE[self.variant]

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the model's outputs: ``features``, ``logits``, and ``max_features`` with ``max_pool``."""
        return ("features", "max_features", "logits") if self.max_pool else ("features", "logits")




# -----------------------------------------------------------------------------
# the encoder


class ImageEncoder:
    """Photos -> {output: float32 [n, d]} ('features' [n, 1280], optional 'max_features'
    [n, 1280], 'logits' [n, 1000]), streamed in batches.

    ``cache_dir`` holds the ONNX export, built on first use and keyed by variant, image size,
    weights hash and export settings.  For ``precision='int8'`` it also holds the int8 model,
    keyed by the fp32 export and the int8 recipe only, *not* by the calibration photos: it is
    calibrated once, on ``calibration_images`` (paths or PIL images; the pipeline passes a
    deterministic sample of its photos), and reused as long as the file exists, so adding
    photos never changes it.  The photos it was calibrated on are listed next to it
    (``<model>.calibration.json``); ``name`` carries a hash of the int8 file, so a rebuilt
    model gets a new name and the embedding cache keyed by it starts afresh.
    """

    def __init__(
        self,
        config: ImageEncoderConfig,
        cache_dir: Path,
        calibration_images: Sequence[ImageLike] | None = None,
    ):
        self.config = config
        self.size = config.size
        self.outputs = config.outputs
        self.cache_dir = Path(cache_dir)
        self.weights_sha256 = _weights_sha256(config.variant)
        self.model_tag = ""  # int8: a hash of the int8 model file
        if config.backend == "torch":
            import torch

            torch.set_num_threads(config.threads)  # process-wide: torch has no per-model knob
            self._model = encoder_module(config.variant, self.size, config.max_pool)
        else:
            self.onnx_path = self._build_onnx(calibration_images)
            # Opened on the first forward, not here: a run with nothing new to embed needs only ``name``.
            self._session, self._session_lock = None, threading.Lock()

    # --- identity, stored next to the embeddings
    @property
    def name(self) -> str:
        """What determines the features, e.g. 'efficientnet-lite2@260-whole-bicubic-fp32-w9656183e'
        (the pipeline keys its embedding cache by it).  The backend is left out on purpose: the
        torch and ONNX fp32 features agree to ~1e-5; int8 features differ, so 'int8' and the
        int8 model's hash are in, e.g. '...-bicubic-int8m1a2b3c4d-w9656183e'."""
        c = self.config
        pool = "-meanmax" if c.max_pool else ""
        return (f"efficientnet-{c.variant}@{self.size}-{PREPROCESSING}{pool}-{c.precision}{self.model_tag}"
                f"-w{self.weights_sha256[:8]}")

    @property
    def version(self) -> str:
        """``name`` plus the runtime, e.g. '...-fp32-w9656183e/onnxruntime-1.32.0'."""
        if self.config.backend == "torch":
            return f"{self.name}/torch-{version('torch')}"
        return f"{self.name}/onnxruntime-{version('onnxruntime')}"

    # --- ONNX export, quantisation, session
    def session(self):
        """The shared ONNX Runtime session, opened on first use (thread-safe)."""
        with self._session_lock:  # worker threads may ask at the same time
            if self._session is None:
                self._session = self._onnx_session(self.onnx_path)
            return self._session

    def _build_onnx(self, calibration_images: Sequence[ImageLike] | None) -> Path:
        c = self.config
        pool = "-meanmax" if c.max_pool else ""
        settings = f"{EXPORT_FORMAT}|{ONNX_OPSET}|{self.size}|{MEAN}|{STD}|{version('torch')}{pool}"
        key = hashlib.sha256(settings.encode()).hexdigest()[:10]
        stem = f"efficientnet-{c.variant}-{self.size}px{pool}-w{self.weights_sha256[:12]}-x{key}"
        fp32_path = self.cache_dir / f"{stem}.onnx"
        if not fp32_path.exists():
            export_onnx(c.variant, self.size, fp32_path, c.max_pool)
        if c.precision == "fp32":
            return fp32_path

        recipe = f"{INT8_FORMAT}|{','.join(INT8_KEEP_FP32)}|{version('onnxruntime')}"
        int8_path = self.cache_dir / f"{stem}-int8-q{hashlib.sha256(recipe.encode()).hexdigest()[:10]}.onnx"
        if not int8_path.exists():
            if not calibration_images:
                raise ValueError("precision='int8' needs calibration_images to build its int8 model once")
            photos = list(calibration_images)
            quantize_int8(fp32_path, int8_path, photos, self.size)
            listing = {"recipe": recipe, "int8_sha256": _sha256(int8_path),
                       "calibration_sha256": [photo_hash(src) for src in photos]}
            atomic_write(int8_path.with_suffix(".calibration.json"),
                         lambda tmp: tmp.write_text(json.dumps(listing, indent=1)))
        self.model_tag = "m" + _sha256(int8_path)[:8]
        return int8_path

    def _onnx_session(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # incl. NCHWc
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.config.threads  # 1: the calling worker thread only
        so.inter_op_num_threads = 1
        # If threads > 1, idle ORT threads must not spin: other workers need those cycles.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [n, S, S, 3] -> {output: float32 [n, d]} for every name in ``outputs``."""
        if self.config.backend == "onnx":
            return dict(zip(self.outputs, self.session().run(list(self.outputs), {"pixels": pixels})))
        import torch

        with torch.inference_mode():
            out = self._model(torch.from_numpy(pixels))
        return {name: t.numpy() for name, t in zip(self.outputs, out)}

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [n, S, S, 3] -> (features [n, 1280], logits [n, 1000]) float32."""
        out = self.run(pixels)
        return out["features"], out["logits"]

    # --- streaming
    def _encode_batch(self, chunk: list[ImageLike]) -> tuple[np.ndarray, np.ndarray]:
        return self.forward(np.stack([load(src, self.size) for src in chunk]))

    def encode(
        self, images: Iterable[ImageLike], batch_size: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (features float32 [n, 1280], logits float32 [n, 1000]) per batch, in input
        order.  ``images``: PIL images and/or paths, any iterable (consumed lazily)."""
        return _stream(self._encode_batch, images, batch_size or self.config.batch_size, self.config.workers)

    def iter_encode_paths(
        self, paths: Sequence[ImageLike], batch_size: int | None = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (start, features, logits) per batch: rows for ``paths[start:start + n]``."""
        start = 0
        for feats, logits in self.encode(paths, batch_size):
            yield start, feats, logits
            start += len(feats)

    def encode_paths(self, paths: Sequence[ImageLike]) -> tuple[np.ndarray, np.ndarray]:
        """All at once: (features [len(paths), 1280], logits [len(paths), 1000]) float32."""
        feats = np.empty((len(paths), FEATURE_DIM), np.float32)
        logits = np.empty((len(paths), NUM_CLASSES), np.float32)
        for start, f, lg in self.iter_encode_paths(paths):
            feats[start : start + len(f)], logits[start : start + len(f)] = f, lg
        return feats, logits


def _stream(fn, images: Iterable, batch_size: int, workers: int) -> Iterator:
    """``fn(batch)`` for consecutive batches of ``images``, yielded in input order.

    ``workers`` threads each take a whole batch, decode it and run it through the net(s) on
    single-threaded sessions; one more batch waits in the queue so no worker idles.  At most
    ``workers + 1`` batches are in flight, so memory does not grow with the number of photos."""
    it = iter(images)
    with ThreadPoolExecutor(workers, "image-encoder") as pool:
        pending: deque = deque()

        def submit_next_batch() -> None:
            chunk = list(islice(it, batch_size))
            if chunk:
                pending.append(pool.submit(fn, chunk))

        try:
            for _ in range(workers + 1):
                submit_next_batch()
            while pending:
                done = pending.popleft().result()
                submit_next_batch()
                yield done
        finally:  # consumer stopped early or a photo failed: drop the queued batches
            for future in pending:
                future.cancel()


def encode_views(
    encoders: Sequence[ImageEncoder], images: Iterable[ImageLike], batch_size: int | None = None,
    workers: int | None = None, keep_decoded: bool = False,
) -> Iterator:
    """One pass for several encoders: yield, per batch in input order, ``[encoder.run(...) for
    encoder in encoders]``.  Each photo is read and decoded once (``load_views``) and resized
    to every encoder's size; each worker thread then runs its batch through every network.
    The same arrays as ``encoders[k].run`` on ``load(photo, encoders[k].size)``, bit for bit.

    ``keep_decoded``: yield ``(outputs, photos)`` instead, ``photos`` the batch's decoded,
    upright RGB PIL images (``decode_views``), for signals that need the pixels too.
    ``encoders`` may then be empty (decode only).  Needs ``batch_size`` and ``workers`` or at
    least one encoder to take them from."""
    sizes = [enc.size for enc in encoders] or [max(NATIVE_SIZE.values())]
    first = encoders[0].config if encoders else None

    def batch(chunk: list[ImageLike]):
        decoded = [decode_views(src, sizes) for src in chunk]
        outs = [enc.run(np.stack([v[k] for v, _ in decoded])) for k, enc in enumerate(encoders)]
        return (outs, [img for _, img in decoded]) if keep_decoded else outs

    return _stream(batch, images, batch_size or first.batch_size, workers or first.workers)
