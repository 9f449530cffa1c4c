"""Extra views of every photo for the child-photo guard, cached by content hash.

The relevance tower sees each photo once, whole, at 260 px (``tasks/embed.py``).  Children
are often small figures in a wide scene, and on the train photos a second look at higher
resolution, max-pooled over the feature map, is what lifted the guard most (out-of-fold
AUC 0.873 -> 0.903, see docs/compliance.md).  ``GUARD_VIEW`` is that look: EfficientNet-Lite0
(the cheaper network: ~1.7x the 260 px Lite2 pass in FLOPs) at 448 px, returning the
mean- and max-pooled head activations and the ImageNet logits of the mean.

Layout: ``warehouse/embeddings/photo_guard/<view name>/part-*.parquet`` (the same
content-hash cache as the relevance embeddings, in its own folder, so the two never
collide and an unchanged photo is never looked at twice).
"""

from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import models  # noqa: F401  (torchvision compat shim first)
import torch
from torch import nn

from models.image_encoder import MEAN, ONNX_OPSET, PREPROCESSING, STD, _atomic_write, _sha256, load, weights_path
from tasks.embed import embed_with_cache, encoder_dir

OUTPUTS = ("features", "max_features", "logits")
VIEW_FORMAT = 1  # bump whenever the exported graph or what it returns changes


@dataclass(frozen=True)
class GuardView:
    variant: str = "lite0"
    size: int = 448
    batch_size: int = 8
    threads: int = 2

    def name(self, weights_sha256: str) -> str:
        return (f"efficientnet-{self.variant}@{self.size}-{PREPROCESSING}-meanmax-v{VIEW_FORMAT}"
                f"-w{weights_sha256[:8]}")


GUARD_VIEW = GuardView()


class _PooledEncoder(nn.Module):
    """uint8 NHWC pixels -> (mean-pooled, max-pooled head activations, logits of the mean)."""

    def __init__(self, variant: str, size: int):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=size)
        net.load_state_dict(torch.load(weights_path(variant), map_location="cpu", weights_only=True), strict=True)
        self.net = net.eval()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (pixels.permute(0, 3, 1, 2).float() - MEAN) / STD
        fmap = self.net.extract_features(x)
        mean = fmap.mean(dim=(2, 3))
        return mean, fmap.amax(dim=(2, 3)), self.net._fc(mean)


class ViewEncoder:
    """ONNX Runtime session of ``_PooledEncoder`` for one ``GuardView`` (exported once into ``cache_dir``)."""

    def __init__(self, view: GuardView, cache_dir: Path):
        import onnxruntime as ort

        self.view = view
        self.weights_sha256 = _sha256(weights_path(view.variant))
        settings = f"{VIEW_FORMAT}|{ONNX_OPSET}|{view.size}|{MEAN}|{STD}|{torch.__version__}"
        key = hashlib.sha256(settings.encode()).hexdigest()[:10]
        path = Path(cache_dir) / f"guard-{view.variant}-{view.size}px-w{self.weights_sha256[:12]}-x{key}.onnx"
        if not path.exists():
            self._export(path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = view.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    @property
    def name(self) -> str:
        return self.view.name(self.weights_sha256)

    def _export(self, path: Path) -> None:
        module = _PooledEncoder(self.view.variant, self.view.size).eval()
        example = torch.zeros(1, self.view.size, self.view.size, 3, dtype=torch.uint8)

        def write(tmp: str) -> None:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), tmp, dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=["pixels"], output_names=list(OUTPUTS),
                                  dynamic_axes={n: {0: "n"} for n in ("pixels", *OUTPUTS)},
                                  do_constant_folding=True)

        _atomic_write(path, write)

    def encode(self, images: Sequence) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield (start, {output: [n, d]}) per batch; ``images`` are paths or PIL images."""
        bs, size = self.view.batch_size, self.view.size
        starts = list(range(0, len(images), bs))
        # One thread decodes batch k+1 while the network runs batch k (PIL releases the GIL).
        with ThreadPoolExecutor(1, "guard-decode") as pool:
            def submit(start: int):
                return pool.submit(lambda: np.stack([load(src, size) for src in images[start : start + bs]]))

            pending = submit(starts[0]) if starts else None
            for k, start in enumerate(starts):
                pixels = pending.result()
                pending = submit(starts[k + 1]) if k + 1 < len(starts) else None
                yield start, dict(zip(OUTPUTS, self._session.run(None, {"pixels": pixels})))


@dataclass
class PhotoViews:
    keys: list[tuple[str, str]]   # (split, image)
    arrays: dict[str, np.ndarray]  # OUTPUTS -> [n, d]
    name: str
    n_computed: int

    def rows(self, split: str, images: Sequence[str]) -> np.ndarray:
        where = {k: i for i, k in enumerate(self.keys)}
        return np.array([where[(split, i)] for i in images], dtype=np.int64)


def compute_views(paths: Sequence[Path], shas: Sequence[str], emb_root: Path, onnx_cache: Path,
                  view: GuardView = GUARD_VIEW) -> tuple[dict[str, np.ndarray], str, int]:
    """The guard view of every photo (rows aligned with ``shas``); only unseen contents are computed."""
    enc = ViewEncoder(view, onnx_cache)

    def compute(idx: list[int]):
        for start, out in enc.encode([paths[i] for i in idx]):
            yield idx[start : start + len(out["features"])], out

    arrays, n = embed_with_cache(encoder_dir(emb_root, "photo_guard", enc.name), list(shas), list(OUTPUTS), compute)
    return arrays, enc.name, n
