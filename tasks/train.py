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
from tasks.progress import track
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
    txt_home: np.ndarray       # [texts] index of the photo the text was written for, -1 if none here

    def fingerprint(self, config: TrainConfig) -> str:
        h = hashlib.sha256()
        for a in (self.img, self.txt, self.pair_img, self.pair_txt, self.target, self.weight,
                  self.pos_img, self.pos_txt, self.pos_weight, self.txt_home):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps(asdict(config), sort_keys=True).encode())
        return h.hexdigest()[:16]


def build_training_set(pairs: pl.DataFrame, positives: pl.DataFrame,
                       img_index: dict[str, int], img: np.ndarray,
                       txt_index: dict[str, int], txt: np.ndarray,
                       config: TrainConfig = TrainConfig()) -> TrainingSet:
    """``pairs``: training_pairs mart rows; ``positives``: (image, caption_text) known matches.

    Both carry ``caption_image``, the photo each caption was written for.
    """
    home = np.full(len(txt), -1, dtype=np.int64)
    for frame in (pairs, positives):
        for t, ci in zip(frame["caption_text"], frame["caption_image"]):
            home[txt_index[t]] = img_index.get(ci, -1)
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
        txt_home=home,
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


def caption_folds(ts: TrainingSet, photo_fold: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A caption shares the fold of the photo it was written for (hashed when unknown)."""
    rng = np.random.default_rng(seed + 7)
    fallback = rng.integers(0, k, size=len(ts.txt))
    return np.where(ts.txt_home >= 0, photo_fold[np.maximum(ts.txt_home, 0)], fallback)


def cross_validate(ts: TrainingSet, config: TrainConfig, strict_captions: bool = False) -> dict[str, np.ndarray]:
    """Out-of-fold scores per head (NaN for pairs no fold validates).

    Folds are grouped by photo.  ``strict_captions`` also groups by caption text: a pair
    is validated only when its photo and its caption are both in the held-out fold, and
    the training side holds neither, so no caption text is on both sides.  Captions
    follow the fold of the photo they were written for, which keeps every known match
    in the validation cells.
    """
    folds = photo_folds(len(ts.img), config.folds, config.seed)
    tfolds = caption_folds(ts, folds, config.folds, config.seed)
    oof = {h: np.full(len(ts.target), np.nan, dtype=np.float32) for h in HEADS}
    for k in track(range(config.folds), f"cross-validation ({'strict captions' if strict_captions else 'by photo'})",
                   unit="fold", key="train-cv-progress"):
        val = folds[ts.pair_img] == k
        photo_ok = folds != k
        text_ok = None
        train = ~val
        if strict_captions:
            text_ok = tfolds != k
            val &= ~text_ok[ts.pair_txt]
            train &= text_ok[ts.pair_txt]
        if not val.any():
            continue
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
    fingerprint: str = ""

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


# ---------------------------------------------------------------- Prefect task

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.warehouse import connect  # noqa: E402


def load_training_set(db: Path, images, texts, config: TrainConfig) -> TrainingSet:
    with connect(db) as con:
        pairs = con.execute("SELECT * FROM training_pairs ORDER BY image, caption_id").pl()
        pos = con.execute("SELECT * FROM bridge_positives ORDER BY image, caption_id").pl()
        photos = con.execute("SELECT image FROM training_photos ORDER BY image").pl()["image"].to_list()
    img = images.features[images.rows("train", photos)]
    used = sorted(set(pairs["caption_text"]) | set(pos["caption_text"]))
    txt = texts.vectors[texts.rows(used)]
    return build_training_set(pairs, pos, {p: i for i, p in enumerate(photos)}, img,
                              {t: i for i, t in enumerate(used)}, txt, config)


@task(name="train-heads", cache_policy=NO_CACHE)
def train_heads_task(db: Path, run_id: str, images, texts, models_root: Path, head: str = "auto",
                     config: TrainConfig = TrainConfig()) -> FittedModel:
    """Cross-validate, choose and fit the heads; reuse them when the training data is unchanged."""
    log = get_run_logger()
    ts = load_training_set(db, images, texts, config)
    fingerprint = hashlib.sha256(f"{ts.fingerprint(config)}|{images.encoder}|{texts.encoder}".encode()).hexdigest()[:16]
    folder = models_root / fingerprint
    if (folder / "card.json").exists():
        model = load_model(folder)
        metrics = json.loads((folder / "card.json").read_text())["metrics"]
        log.info("training data unchanged (%s): heads reused", fingerprint)
    else:
        metrics = agreement_table(ts, cross_validate(ts, config), "oof_grouped_by_photo")
        metrics += agreement_table(ts, cross_validate(ts, config, strict_captions=True), "oof_strict_captions")
        model = fit_final(ts, config, choose_head(metrics))
        card = {"fingerprint": fingerprint, "head": model.head, "config": asdict(config),
                "image_encoder": images.encoder, "text_encoder": texts.encoder,
                "data": {"pairs": int(len(ts.target)), "photos": int(len(ts.img)), "texts": int(len(ts.txt)),
                         "bridge_positives": int(len(ts.pos_img))},
                "metrics": metrics}
        save_model(model, folder, card)
        log.info("heads trained (%s), chosen on training folds: %s", fingerprint, model.head)
    if head != "auto":
        model.head = head
    model.fingerprint = fingerprint
    rows = [dict(r) for r in metrics] + [
        {"head": "chosen", "protocol": "selection", "metric": f"is_{model.head}", "value": 1.0}]
    with connect(db) as con:
        con.execute("DELETE FROM model_metrics WHERE run_id = ? AND component = 'relevance'", [run_id])
        con.register("_m", pl.DataFrame(rows).with_columns(pl.lit(run_id).alias("run_id"),
                                                           pl.lit("relevance").alias("component")))
        con.execute("INSERT INTO model_metrics BY NAME SELECT * FROM _m")
        con.unregister("_m")
    return model
