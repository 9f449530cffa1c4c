"""Train the relevance heads and measure them out of fold, with folds grouped by photo.

Stacking without leakage: the heads learn from bridge features, and the bridge is itself
fitted on photos.  So a pair's training features always come from a bridge that did not
see its photo (inner folds), and each outer validation fold is scored by a bridge and
heads fitted without it.  The head that scores search results is chosen on these
training-fold figures only; the test queries never choose anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from safetensors.numpy import load_file, save_file

from models.bridge import Bridge, BridgeConfig
from models.features import pair_features
from models.lgbm_head import LgbmConfig, LgbmHead
from models.mlp_head import MlpConfig, MlpHead
from tasks.evaluate import judgment_agreement
from tasks.warehouse import atomic_write_bytes

HEADS = ("bridge", "lgbm", "mlp")
SELECTION_METRIC = "expert_kendall_tau_c"


@dataclass(frozen=True)
class TrainConfig:
    folds: int = 5
    inner_folds: int = 4
    seed: int = 0
    positive_threshold: float = 0.6
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    lgbm: LgbmConfig = field(default_factory=LgbmConfig)
    mlp: MlpConfig = field(default_factory=MlpConfig)


@dataclass
class TrainingSet:
    """Everything the heads learn from, after the compliance exclusions."""

    img: np.ndarray            # [photos, image dim]
    txt: np.ndarray            # [texts, text dim]
    pair_img: np.ndarray       # [pairs] index into img
    pair_txt: np.ndarray       # [pairs] index into txt
    target: np.ndarray         # [pairs] in [0, 1]
    weight: np.ndarray         # [pairs] how many judges stand behind the target
    expert: np.ndarray         # [pairs, 3] NaN where not judged by experts
    crowd_share: np.ndarray    # [pairs] NaN where not judged by the crowd
    pos_img: np.ndarray        # bridge positives: photo index
    pos_txt: np.ndarray        # bridge positives: text index
    pos_weight: np.ndarray

    def fingerprint(self, config: TrainConfig) -> str:
        h = hashlib.sha256()
        for a in (self.img, self.txt, self.pair_img, self.pair_txt, self.target, self.weight,
                  self.pos_img, self.pos_txt, self.pos_weight):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps(asdict(config), sort_keys=True).encode())
        return h.hexdigest()[:16]


def build_training_set(pairs: pl.DataFrame, positives: pl.DataFrame,
                       img_index: dict[str, int], img: np.ndarray,
                       txt_index: dict[str, int], txt: np.ndarray,
                       config: TrainConfig = TrainConfig()) -> TrainingSet:
    """``pairs``: training_pairs mart rows; ``positives``: (image, caption_text) known matches."""
    pi = np.array([img_index[i] for i in pairs["image"]], dtype=np.int64)
    pt = np.array([txt_index[t] for t in pairs["caption_text"]], dtype=np.int64)
    expert = pairs.select("expert_1", "expert_2", "expert_3").to_numpy().astype(np.float64)
    strong = pairs.filter(pl.col("target") >= config.positive_threshold)
    pos = pl.concat([
        positives.select("image", "caption_text", pl.lit(1.0).alias("w")),
        strong.select("image", "caption_text", pl.col("target").alias("w")),
    ]).unique(subset=["image", "caption_text"], keep="first", maintain_order=True)
    return TrainingSet(
        img=img, txt=txt, pair_img=pi, pair_txt=pt,
        target=pairs["target"].to_numpy().astype(np.float32),
        weight=pairs["n_judges"].to_numpy().astype(np.float32),
        expert=expert,
        crowd_share=pairs["crowd_share"].fill_null(np.nan).to_numpy().astype(np.float64),
        pos_img=np.array([img_index[i] for i in pos["image"]], dtype=np.int64),
        pos_txt=np.array([txt_index[t] for t in pos["caption_text"]], dtype=np.int64),
        pos_weight=pos["w"].to_numpy().astype(np.float64),
    )


def photo_folds(n_photos: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    folds = np.arange(n_photos) % k
    rng.shuffle(folds)
    return folds


def fit_bridge(ts: TrainingSet, photo_ok: np.ndarray, text_ok: np.ndarray | None, config: TrainConfig) -> Bridge:
    m = photo_ok[ts.pos_img]
    if text_ok is not None:
        m &= text_ok[ts.pos_txt]
    return Bridge.fit(ts.img[ts.pos_img[m]], ts.txt[ts.pos_txt[m]], ts.pos_weight[m], config.bridge)


def oof_bridge_features(ts: TrainingSet, pair_mask: np.ndarray, photo_ok: np.ndarray,
                        text_ok: np.ndarray | None, config: TrainConfig, seed: int) -> np.ndarray:
    """Features for the masked pairs, each from a bridge fitted without its photo."""
    folds = photo_folds(len(ts.img), config.inner_folds, seed)
    x = None
    for f in range(config.inner_folds):
        inner_ok = photo_ok & (folds != f)
        rows = np.flatnonzero(pair_mask & (folds[ts.pair_img] == f))
        if len(rows) == 0:
            continue
        b = fit_bridge(ts, inner_ok, text_ok, config)
        feats = pair_features(b, ts.img, ts.txt, ts.pair_img[rows], ts.pair_txt[rows])
        if x is None:
            x = np.zeros((len(ts.target), feats.shape[1]), dtype=np.float32)
        x[rows] = feats
    return x[pair_mask]


def fit_heads(x: np.ndarray, y: np.ndarray, w: np.ndarray, config: TrainConfig) -> dict[str, object]:
    return {
        "lgbm": LgbmHead.fit(x, y, w, config.lgbm),
        "mlp": MlpHead.fit(x, y, w, config.mlp),
    }


def bridge_score(x: np.ndarray) -> np.ndarray:
    """The bridge alone as a head: its image->text cosine, put on [0, 1]."""
    return np.clip((x[:, 0] + 1.0) / 2.0, 0.0, 1.0)


def predict_all(heads: dict[str, object], x: np.ndarray) -> dict[str, np.ndarray]:
    out = {"bridge": bridge_score(x)}
    out.update({name: h.predict(x) for name, h in heads.items()})
    return out


def cross_validate(ts: TrainingSet, config: TrainConfig, strict_captions: bool = False) -> dict[str, np.ndarray]:
    """Out-of-fold scores for every pair, per head.

    ``strict_captions``: also drop from each fold's training side every pair, and every
    bridge positive, whose caption text appears on its validation side.
    """
    folds = photo_folds(len(ts.img), config.folds, config.seed)
    oof = {h: np.full(len(ts.target), np.nan, dtype=np.float32) for h in HEADS}
    for k in range(config.folds):
        val = folds[ts.pair_img] == k
        if not val.any():
            continue
        photo_ok = folds != k
        text_ok = None
        train = ~val
        if strict_captions:
            text_ok = np.ones(len(ts.txt), dtype=bool)
            text_ok[ts.pair_txt[val]] = False
            train &= text_ok[ts.pair_txt]
        x_train = oof_bridge_features(ts, train, photo_ok, text_ok, config, seed=config.seed + 1 + k)
        heads = fit_heads(x_train, ts.target[train], ts.weight[train], config)
        b = fit_bridge(ts, photo_ok, text_ok, config)
        rows = np.flatnonzero(val)
        x_val = pair_features(b, ts.img, ts.txt, ts.pair_img[rows], ts.pair_txt[rows])
        for name, s in predict_all(heads, x_val).items():
            oof[name][rows] = s
    return oof


def agreement_table(ts: TrainingSet, oof: dict[str, np.ndarray], protocol: str) -> list[dict]:
    rows = []
    for head, s in oof.items():
        ok = ~np.isnan(s)
        for metric, value in judgment_agreement(s[ok], ts.expert[ok], ts.crowd_share[ok]).items():
            rows.append({"head": head, "protocol": protocol, "metric": metric, "value": value})
    return rows


def choose_head(metrics: list[dict]) -> str:
    cv = {r["head"]: r["value"] for r in metrics
          if r["protocol"] == "oof_grouped_by_photo" and r["metric"] == SELECTION_METRIC}
    return max(sorted(cv), key=lambda h: cv[h])


@dataclass
class FittedModel:
    bridge: Bridge
    heads: dict[str, object]
    head: str

    def score(self, img: np.ndarray, txt: np.ndarray, img_idx: np.ndarray, txt_idx: np.ndarray,
              head: str | None = None) -> np.ndarray:
        x = pair_features(self.bridge, img, txt, img_idx, txt_idx)
        name = head or self.head
        return bridge_score(x) if name == "bridge" else self.heads[name].predict(x)

    def score_matrix(self, img: np.ndarray, txt: np.ndarray, head: str | None = None) -> np.ndarray:
        """Scores [texts, photos] for every text against every photo."""
        ti, ii = np.meshgrid(np.arange(len(txt)), np.arange(len(img)), indexing="ij")
        return self.score(img, txt, ii.ravel(), ti.ravel(), head).reshape(len(txt), len(img))


def fit_final(ts: TrainingSet, config: TrainConfig, head: str) -> FittedModel:
    everything = np.ones(len(ts.img), dtype=bool)
    x = oof_bridge_features(ts, np.ones(len(ts.target), dtype=bool), everything, None, config, seed=config.seed)
    return FittedModel(fit_bridge(ts, everything, None, config), fit_heads(x, ts.target, ts.weight, config), head)


# ------------------------------------------------------------- saving (no pickle)


def save_model(model: FittedModel, folder: Path, card: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mlp = model.heads["mlp"]
    save_file(model.bridge.state_dict(), str(folder / "bridge.safetensors"))
    save_file({k: v.numpy() for k, v in mlp.state_dict().items()}, str(folder / "mlp.safetensors"))
    atomic_write_bytes(model.heads["lgbm"].to_text().encode(), folder / "lgbm.txt")
    meta = {"head": model.head, "mlp_n_in": int(mlp.mean.shape[0]), "mlp_config": asdict(mlp.config)}
    atomic_write_bytes(json.dumps(meta, indent=2).encode(), folder / "model.json")
    atomic_write_bytes(json.dumps(card, indent=2, default=str).encode(), folder / "card.json")
    return folder


def load_model(folder: Path) -> FittedModel:
    import torch

    meta = json.loads((folder / "model.json").read_text())
    mlp = MlpHead(meta["mlp_n_in"], MlpConfig(**meta["mlp_config"]))
    mlp.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(folder / "mlp.safetensors")).items()})
    heads = {"lgbm": LgbmHead.from_text((folder / "lgbm.txt").read_text()), "mlp": mlp.eval()}
    return FittedModel(Bridge.from_state_dict(load_file(str(folder / "bridge.safetensors"))), heads, meta["head"])
