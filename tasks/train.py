"""Train the relevance heads and measure them out of fold, with folds grouped by photo.

The bridge (kernel ridge, models/bridge.py) maps photos into the text space; its cosine
is the first-stage score and the "bridge" head.  The LightGBM and MLP heads rerank with
features of that map (models/features.py), learnt from the judged pairs.

Stacking without leakage, without nested refits: a pair's training features come from
the bridge's closed-form leave-one-photo-out map of its photo, so they look like the
features of a photo the bridge never saw -- which is what the validation fold gets from
a bridge fitted without it.  The head that scores search results is chosen on these
training-fold figures only; the test queries never choose anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from models.bridge import Bridge, BridgeConfig
from models.features import HEADS, bridge_score, pair_features
from models.fusion import FEATURE_SETS, MIN_GAIN, Fusion
from models.lgbm_head import LgbmConfig, LgbmHead
from models.mlp_head import MlpConfig, MlpHead
from models.relevance_model import FittedModel
from tasks.config import SEED
from tasks.descriptions import cross_validate_fusion, pair_description_scores
from tasks.evaluate import judgment_agreement, rank_metrics, retrieval_ranks
from tasks.progress import track
from tasks.sql_project import project_var

SELECTION_METRIC = "expert_kendall_tau_c"
# Bump when the saved model's meaning changes, so older saved heads are never reused.
# 3: folds from scikit-learn's GroupKFold, and the description fusion saved beside the heads.
# 4: the fusion's feature set chosen simplest-first.
MODEL_FORMAT = 4


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the relevance training: folds, seed, match threshold and each head's config."""

    folds: int = 5
    seed: int = SEED
    # Pairs with target >= this are matches; the same threshold restricts train photos (SQL).
    positive_threshold: float = project_var("match_target_threshold")
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
    described_image: np.ndarray  # [texts] index of the photo the text was written for, -1 if none here

    def fingerprint(self, config: TrainConfig) -> str:
        """16 hex digits of SHA-256 over ``MODEL_FORMAT``, the arrays a fit depends on and ``config``: equal
        fingerprints, equal models."""
        h = hashlib.sha256(f"format {MODEL_FORMAT}|".encode())
        for a in (self.img, self.txt, self.pair_img, self.pair_txt, self.target, self.weight,
                  self.pos_img, self.pos_txt, self.pos_weight, self.described_image):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps(asdict(config), sort_keys=True).encode())
        return h.hexdigest()[:16]


def build_training_set(pairs: pl.DataFrame, positives: pl.DataFrame,
                       img_index: dict[str, int], img: np.ndarray,
                       txt_index: dict[str, int], txt: np.ndarray,
                       config: TrainConfig = TrainConfig()) -> TrainingSet:
    """``pairs``: training_pairs mart rows; ``positives``: (image, caption_text) known matches.

    Both carry ``described_image``, the photo each caption was written for.
    """
    described = np.full(len(txt), -1, dtype=np.int64)
    for frame in (pairs, positives):
        for t, di in zip(frame["caption_text"], frame["described_image"]):
            described[txt_index[t]] = img_index.get(di, -1)
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
        described_image=described,
    )


def photo_folds(n_photos: int, k: int, seed: int) -> np.ndarray:
    """The fold [n_photos] each photo is validated in: scikit-learn's GroupKFold, shuffled,
    one group per photo (every pair of a photo follows it)."""
    from sklearn.model_selection import GroupKFold

    folds = np.zeros(n_photos, np.int64)
    photos = np.arange(n_photos)
    for k_, (_, val) in enumerate(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(photos, groups=photos)):
        folds[val] = k_
    return folds


def bridge_rows(ts: TrainingSet, photo_ok: np.ndarray, text_ok: np.ndarray | None) -> np.ndarray:
    """The positives the bridge may learn from: allowed photo and allowed text."""
    m = photo_ok[ts.pos_img]
    if text_ok is not None:
        m &= text_ok[ts.pos_txt]
    return m


def fit_bridge(ts: TrainingSet, photo_ok: np.ndarray, text_ok: np.ndarray | None,
               config: TrainConfig) -> tuple[Bridge, np.ndarray]:
    """The bridge on the allowed positives, and every photo mapped into the text space:
    photos it learnt from by their leave-one-out map, all others by the bridge itself."""
    m = bridge_rows(ts, photo_ok, text_ok)
    # Every caption of the training side, judged or matched, places the text space's origin.
    ref = ts.txt if text_ok is None else ts.txt[text_ok]
    bridge, ids, loo = Bridge.fit_loo(ts.img[ts.pos_img[m]], ts.txt[ts.pos_txt[m]], ts.pos_weight[m],
                                      config.bridge, groups=ts.pos_img[m], txt_ref=ref)
    mapped = bridge.image_to_text(ts.img)
    mapped[ids] = loo
    return bridge, mapped


def fit_heads(x: np.ndarray, y: np.ndarray, w: np.ndarray, config: TrainConfig) -> dict[str, object]:
    """The ``lgbm`` and ``mlp`` heads fitted on pair features ``x`` (n, d), targets ``y`` (n,) in [0, 1] and
    weights ``w`` (n,)."""
    return {
        "lgbm": LgbmHead.fit(x, y, w, config.lgbm),
        "mlp": MlpHead.fit(x, y, w, config.mlp),
    }


def predict_all(heads: dict[str, object], x: np.ndarray) -> dict[str, np.ndarray]:
    """Scores (n,) per head for pair features ``x`` (n, d): ``bridge`` from the cosine column, plus each
    fitted head."""
    out = {"bridge": bridge_score(x)}
    out.update({name: h.predict(x) for name, h in heads.items()})
    return out


def caption_folds(ts: TrainingSet, photo_fold: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A caption shares the fold of the photo it was written for (hashed when unknown)."""
    rng = np.random.default_rng(seed + 7)
    fallback = rng.integers(0, k, size=len(ts.txt))
    return np.where(ts.described_image >= 0, photo_fold[np.maximum(ts.described_image, 0)], fallback)


def fold_split(ts: TrainingSet, folds: np.ndarray, tfolds: np.ndarray, k: int, strict_captions: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Fold ``k``: (training pairs, validation pairs, photos the training side may use, texts
    it may use -- None for all)."""
    val = folds[ts.pair_img] == k
    photo_ok = folds != k
    text_ok = None
    train = ~val
    if strict_captions:
        text_ok = tfolds != k
        val &= ~text_ok[ts.pair_txt]
        train &= text_ok[ts.pair_txt]
    return train, val, photo_ok, text_ok


@dataclass
class CrossValidation:
    """Out-of-fold scores and retrieval ranks per head (``cross_validate``)."""

    oof: dict[str, np.ndarray]          # head -> [pairs] out-of-fold score (NaN where no fold validates)
    ranks: dict[str, np.ndarray]        # head -> rank of each held-out caption's own photo among the fold's photos


def cross_validate(ts: TrainingSet, config: TrainConfig, strict_captions: bool = False) -> CrossValidation:
    """Out-of-fold scores per head.

    Folds are grouped by photo.  ``strict_captions`` also groups by caption text: a pair
    is validated only when its photo and its caption are both in the held-out fold, and
    the training side holds neither, so no caption text is on both sides.  Captions
    follow the fold of the photo they were written for, which keeps every known match
    in the validation cells.  Under that protocol each held-out caption is also searched
    for among the held-out photos, so retrieval is measured on training folds too.
    """
    folds = photo_folds(len(ts.img), config.folds, config.seed)
    tfolds = caption_folds(ts, folds, config.folds, config.seed)
    oof = {h: np.full(len(ts.target), np.nan, dtype=np.float32) for h in HEADS}
    ranks: dict[str, list[np.ndarray]] = {h: [] for h in HEADS}
    for k in track(range(config.folds), f"cross-validation ({'strict captions' if strict_captions else 'by photo'})",
                   unit="fold", key="train-cv-progress"):
        train, val, photo_ok, text_ok = fold_split(ts, folds, tfolds, k, strict_captions)
        if not val.any():
            continue
        bridge, mapped = fit_bridge(ts, photo_ok, text_ok, config)
        rows = np.flatnonzero(train)
        x_train = pair_features(bridge, ts.img, ts.txt, ts.pair_img[rows], ts.pair_txt[rows], img_text=mapped)
        heads = fit_heads(x_train, ts.target[rows], ts.weight[rows], config)
        rows = np.flatnonzero(val)
        # Validation photos were never fitted: ``mapped`` holds the bridge's own map for them.
        x_val = pair_features(bridge, ts.img, ts.txt, ts.pair_img[rows], ts.pair_txt[rows], img_text=mapped)
        for name, s in predict_all(heads, x_val).items():
            oof[name][rows] = s
        if strict_captions:
            gallery = np.flatnonzero(~photo_ok)
            own = (ts.described_image[ts.pos_txt] == ts.pos_img) & ~photo_ok[ts.pos_img]
            queries = np.unique(ts.pos_txt[own])
            if len(queries) and len(gallery):
                where = np.full(len(ts.img), -1)
                where[gallery] = np.arange(len(gallery))
                gi, qi = np.meshgrid(gallery, queries)
                x = pair_features(bridge, ts.img, ts.txt, gi.ravel(), qi.ravel(), img_text=mapped)
                for name, s in predict_all(heads, x).items():
                    ranks[name].append(retrieval_ranks(s.reshape(len(queries), len(gallery)),
                                                       where[ts.described_image[queries]]))
    return CrossValidation(oof, {h: np.concatenate(r) if r else np.zeros(0) for h, r in ranks.items()})


def agreement_table(ts: TrainingSet, cv: CrossValidation, protocol: str) -> list[dict]:
    """Metric rows (head, protocol, metric, value): each head's out-of-fold agreement with the judges, plus
    its retrieval metrics when ranks were measured."""
    rows = []
    for head, s in cv.oof.items():
        ok = ~np.isnan(s)
        measured = judgment_agreement(s[ok], ts.expert[ok], ts.crowd_share[ok])
        if len(cv.ranks[head]):
            measured.update(rank_metrics(cv.ranks[head]))
        for metric, value in measured.items():
            rows.append({"head": head, "protocol": protocol, "metric": metric, "value": value})
    return rows


def choose_head(metrics: list[dict]) -> str:
    """The head with the highest ``SELECTION_METRIC`` under ``oof_grouped_by_photo``.

    Ties go to the first name in sorted order.

    Raises:
        ValueError: no row of that protocol and metric.
    """
    cv = {r["head"]: r["value"] for r in metrics
          if r["protocol"] == "oof_grouped_by_photo" and r["metric"] == SELECTION_METRIC}
    return max(sorted(cv), key=lambda h: cv[h])


def fit_fusions(score_oof: dict[str, np.ndarray], desc_max: np.ndarray, desc_mean: np.ndarray,
                target: np.ndarray, weight: np.ndarray, pair_img: np.ndarray, expert: np.ndarray,
                crowd_share: np.ndarray, k: int, seed: int) -> tuple[dict[str, Fusion], list[dict]]:
    """For each head: every feature set cross-validated on training folds grouped by photo,
    the best by out-of-fold expert tau-c (a richer set must gain MIN_GAIN over a simpler one)
    chosen and refitted on every pair.

    ``score_oof[head]`` [pairs]: the head's out-of-fold scores (NaN where none; those pairs
    are left out).  Returns ({head: chosen fusion}, model_metrics rows with protocol
    'fusion_oof_grouped_by_photo', head '<head>+<kind>').
    """
    fusions: dict[str, Fusion] = {}
    rows: list[dict] = []
    if np.isnan(desc_max).all():
        return fusions, rows
    for head, s in score_oof.items():
        ok = ~np.isnan(s)
        best, best_tau = next(iter(FEATURE_SETS)), -np.inf
        for kind in FEATURE_SETS:
            oof = cross_validate_fusion(kind, s[ok], desc_max[ok], desc_mean[ok], target[ok], weight[ok],
                                        pair_img[ok], k, seed)
            has = ~np.isnan(oof)
            measured = judgment_agreement(oof[has], expert[ok][has], crowd_share[ok][has])
            d = has & ~np.isnan(desc_max[ok])
            if d.sum() > 2:
                on_desc = judgment_agreement(oof[d], expert[ok][d], crowd_share[ok][d])
                measured.update({f"{m}_pairs_with_descriptions": v for m, v in on_desc.items()})
            # Undefined figures (a constant input, e.g. tiny data) are left out, not stored as NaN.
            rows += [{"head": f"{head}+{kind}", "protocol": "fusion_oof_grouped_by_photo", "metric": m,
                      "value": float(v)} for m, v in measured.items() if np.isfinite(v)]
            tau = measured.get("expert_kendall_tau_c", -np.inf)
            if tau > best_tau + MIN_GAIN:  # sets go simplest first: a richer one must do better
                best, best_tau = kind, tau
        fusions[head] = Fusion.fit(best, s[ok], desc_max[ok], desc_mean[ok], target[ok], weight[ok])
        rows.append({"head": f"{head}+{best}", "protocol": "fusion_selection", "metric": "chosen", "value": 1.0})
    return fusions, rows


def fusion_table(ts: TrainingSet, cv: CrossValidation, config: TrainConfig) -> tuple[dict[str, Fusion], list[dict]]:
    """Each head's fusion with the description channel, fitted on its out-of-fold scores
    (folds grouped by photo) with every pair's caption left out of its photo's descriptions."""
    dmax, dmean = pair_description_scores(ts.txt, ts.described_image, len(ts.img), ts.pair_img, ts.pair_txt)
    return fit_fusions(cv.oof, dmax, dmean, ts.target, ts.weight, ts.pair_img, ts.expert, ts.crowd_share,
                       config.folds, config.seed)


def fit_final(ts: TrainingSet, config: TrainConfig, head: str) -> FittedModel:
    """The bridge and heads fitted on every training photo; the heads learn from the photos' leave-one-out
    maps, as in cross-validation."""
    everything = np.ones(len(ts.img), dtype=bool)
    bridge, mapped = fit_bridge(ts, everything, None, config)
    x = pair_features(bridge, ts.img, ts.txt, ts.pair_img, ts.pair_txt, img_text=mapped)
    return FittedModel(bridge, fit_heads(x, ts.target, ts.weight, config), head)
