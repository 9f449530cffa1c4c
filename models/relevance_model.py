"""The relevance model a run scores with: the cross-modal projection ("bridge"), the rerankers
("heads": LightGBM, MLP) on its pair features, the chosen head and the fusions of each head's
score with the photo's own descriptions; saved and loaded without pickle.

Fitted by ``tasks/train.py``; read by ranking (``tasks/rank.py``), the report, ``flows/search.py``
and the benchmarks.  Files in a model folder: ``bridge.safetensors``, ``mlp.safetensors``,
``lgbm.txt``, ``model.json`` (chosen head, MLP shape, fusions) and ``card.json`` (what it was
fitted on, its figures).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from models.bridge import Bridge
from models.features import bridge_cosine, bridge_score, pair_features
from models.fusion import Fusion
from models.lgbm_head import LgbmHead
from models.mlp_head import MlpConfig, MlpHead
from tasks.atomic import atomic_write, atomic_write_bytes


@dataclass
class FittedModel:
    """The bridge, the heads, the chosen head and the description fusions: what a run scores with."""

    bridge: Bridge
    heads: dict[str, object]
    head: str
    fingerprint: str = ""
    settings: dict = field(default_factory=dict)  # what the model card reports: config, data, timing
    fusions: dict[str, Fusion] = field(default_factory=dict)  # head -> fusion with the description channel

    def fuse(self, score: np.ndarray, desc_max: np.ndarray, desc_mean: np.ndarray,
             head: str | None = None) -> np.ndarray:
        """The product's score: the head's ``score`` fused with the description channel
        (models/fusion.py); the head's score itself when no fusion was fitted (no training
        pair had a description)."""
        f = self.fusions.get(head or self.head)
        return np.asarray(score, np.float32) if f is None else f.score(score, desc_max, desc_mean)

    def score(self, img: np.ndarray, txt: np.ndarray, img_idx: np.ndarray, txt_idx: np.ndarray,
              head: str | None = None) -> np.ndarray:
        """Scores (n,) in [0, 1] of the pairs (``img[img_idx[k]]``, ``txt[txt_idx[k]]``) by ``head`` (default:
        the chosen one)."""
        name = head or self.head
        if name == "bridge":
            return bridge_score(bridge_cosine(self.bridge, img, txt, img_idx, txt_idx))
        return self.heads[name].predict(pair_features(self.bridge, img, txt, img_idx, txt_idx))

    def score_matrix(self, img: np.ndarray, txt: np.ndarray, head: str | None = None) -> np.ndarray:
        """Scores [texts, photos] for every text against every photo."""
        ti, ii = np.meshgrid(np.arange(len(txt)), np.arange(len(img)), indexing="ij")
        return self.score(img, txt, ii.ravel(), ti.ravel(), head).reshape(len(txt), len(img))


def save_model(model: FittedModel, folder: Path, card: dict) -> Path:
    """Write the model to ``folder``: ``bridge.safetensors``, ``mlp.safetensors``, ``lgbm.txt``,
    ``model.json`` (head, MLP shape, fusions) and ``card.json``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    mlp = model.heads["mlp"]
    atomic_write(folder / "bridge.safetensors", lambda tmp: save_file(model.bridge.state_dict(), str(tmp)))
    atomic_write(folder / "mlp.safetensors",
                 lambda tmp: save_file({k: v.numpy() for k, v in mlp.state_dict().items()}, str(tmp)))
    atomic_write_bytes(model.heads["lgbm"].to_text().encode(), folder / "lgbm.txt")
    meta = {"head": model.head, "mlp_n_in": int(mlp.mean.shape[0]), "mlp_config": asdict(mlp.config)}
    meta["fusions"] = {h: f.to_dict() for h, f in model.fusions.items()}
    atomic_write_bytes(json.dumps(meta, indent=2).encode(), folder / "model.json")
    atomic_write_bytes(json.dumps(card, indent=2, default=str).encode(), folder / "card.json")
    return folder


def load_model(folder: Path) -> FittedModel:
    """Inverse of ``save_model`` (without ``fingerprint`` and ``settings``).

    Raises:
        FileNotFoundError: ``model.json`` or ``lgbm.txt`` is missing.
    """
    import torch

    meta = json.loads((folder / "model.json").read_text())
    mlp = MlpHead(meta["mlp_n_in"], MlpConfig(**meta["mlp_config"]))
    mlp.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(folder / "mlp.safetensors")).items()})
    heads = {"lgbm": LgbmHead.from_text((folder / "lgbm.txt").read_text()), "mlp": mlp.eval()}
    fusions = {h: Fusion.from_dict(d) for h, d in meta.get("fusions", {}).items()}
    return FittedModel(Bridge.from_state_dict(load_file(str(folder / "bridge.safetensors"))), heads, meta["head"],
                       fusions=fusions)
