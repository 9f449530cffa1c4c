"""The photo guard: every signal the host has about a photo, one decision, and which signal made it.

Signals, per photo:

* ``description``: the photo's own descriptions (captions whose id ``<image>#<n>`` names it)
  judged by the same text filter as queries (``tasks/compliance_text.py``, the ``text_flags``
  table).  One flagged description restricts the photo: the law covers descriptions.  A
  photo without descriptions (a new upload) is judged by the other signals alone.
* ``image_classifier``: the child-photo classifier on two EfficientNet views
  (``models/child_photo.py``, fitted in ``tasks/compliance.py``).
* ``face_age``: faces and apparent ages (``models/face_age.py``), cached per content hash.

The image and face signals meet in one calibrated model (``models/signal_combiner.py``),
fitted on the train photos' *out-of-fold* image scores, its threshold chosen out of fold
for the legal recall floor on its own: the image and face signals must be lawful without
any description, so descriptions only ever add restrictions.

The decision, in order (the first that applies is the ``deciding_signal``):

1. a flagged description -> restricted (``description``);
2. no image score -> restricted (``missing_signal``);
3. image score below ``face_gate`` -> allowed, faces not looked at (``image_classifier``).
   The gate is the image score at which the classifier alone still catches
   ``GuardConfig.gate_recall`` of the train photos' child photos, out of fold: below it no
   face can matter enough to pay for looking (measured: see docs/compliance.md);
4. faces needed but not analysable -> restricted (``missing_signal``);
5. combined score >= threshold -> restricted, else allowed; ``face_age`` when the faces
   changed the outcome the image classifier alone (score >= ``image_threshold``) would
   have had, else ``image_classifier``.

Everything here is plain functions over arrays and frames; the Prefect task is in
``tasks/compliance.py``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from models.face_age import FEATURES as FACE_FEATURES
from models.face_age import FaceAgeConfig
from models.signal_combiner import CombinerConfig, SignalCombiner, combiner_inputs
from tasks.guard_fit import (CV_FOLDS, CV_REPEATS, LEGAL_RECALL_FLOOR, THRESHOLD_CONFIDENCE, PhotoGuard,
                              conservative_threshold, cv_folds, cv_splits, recall_lower_bound, roc_auc)
from tasks.config import SEED
from tasks.embedding_cache import FACES, face_cache_dir  # noqa: F401  (face_cache_dir: for the guard's callers)

DECIDING_SIGNALS = ("description", "missing_signal", "image_classifier", "face_age")


@dataclass(frozen=True)
class GuardConfig:
    """Settings of the photo guard: its face signal, combiner, face gate and the legal recall target of its
    threshold."""

    # The face signal the embedding pass computed (tasks/embed.py FACES): the cache it reads.
    faces: FaceAgeConfig = field(default_factory=lambda: FACES)
    combiner: CombinerConfig = field(default_factory=CombinerConfig)
    # Faces are used only for photos scoring at or above the image score that keeps
    # this out-of-fold recall on the train photos' child photos (1.0: every photo above the
    # lowest-scoring child photo).
    gate_recall: float = 0.99
    recall: float = LEGAL_RECALL_FLOOR
    confidence: float = THRESHOLD_CONFIDENCE
    folds: int = CV_FOLDS
    repeats: int = CV_REPEATS
    seed: int = SEED


# ---------------------------------------------------------------- signals


def description_signals(images: Sequence[str], descriptions: pl.DataFrame) -> pl.DataFrame:
    """Per photo: how many own descriptions, how many flagged, the first flagged one and its rule.

    ``descriptions`` has one row per description: ``image``, ``text_id``, ``flagged``, ``rule``
    (e.g. ``text_flags`` rows joined to the photo named by the id).  Photos without any get
    ``n_descriptions = 0`` (absent, not missing: the other signals decide)."""
    base = pl.DataFrame({"image": list(images)}, schema={"image": pl.String})
    if descriptions.height == 0:
        agg = pl.DataFrame(schema={"image": pl.String, "n_descriptions": pl.Int64, "descriptions_flagged": pl.Int64,
                                   "description_id": pl.String, "description_rule": pl.String})
    else:
        d = descriptions.sort("text_id")
        agg = d.group_by("image").agg(
            pl.len().cast(pl.Int64).alias("n_descriptions"),
            pl.col("flagged").cast(pl.Int64).sum().alias("descriptions_flagged"),
            pl.col("text_id").filter(pl.col("flagged")).first().alias("description_id"),
            pl.col("rule").filter(pl.col("flagged")).first().alias("description_rule"),
        )
    return base.join(agg, on="image", how="left").with_columns(
        pl.col("n_descriptions").fill_null(0), pl.col("descriptions_flagged").fill_null(0))


def face_signals(paths: Sequence[Path] | None, sha256s: Sequence[str], cache: Path | None = None,
                 config: FaceAgeConfig = FaceAgeConfig(), workers: int | None = None) -> tuple[pl.DataFrame, dict]:
    """Face vectors (``models.face_age.FEATURES``) per photo, rows aligned with ``sha256s``.

    Cached per content hash under ``cache`` (parquet parts, like the embeddings; the run's
    embedding pass fills it, ``tasks/embed.py``): only contents not found there are analysed,
    from ``paths``; with ``paths=None`` nothing is analysed and a photo not in the cache is
    missing.  A photo that could not be analysed (or is missing) has nulls (a missing
    signal: the guard fails closed) and is not cached, so the next run tries again.  Also
    returns the cost: photos analysed, photos from the cache, seconds (wall and CPU of this
    process and its workers)."""
    from models.face_age import analyse_photos
    from tasks.embedding_cache import load_cached, unique_contents, write_part

    shas = list(sha256s)
    cached = load_cached(cache, shas, ["faces"])["faces"] if cache is not None else {}
    todo = {} if paths is None else {s: p for s, p in unique_contents(list(paths), shas).items() if s not in cached}
    t0, c0 = time.perf_counter(), _cpu_seconds()
    fresh: dict[str, np.ndarray] = {}
    if todo:
        keys = sorted(todo)
        for s, v in zip(keys, analyse_photos([todo[s] for s in keys], config, workers)):
            if v is not None:  # float32, as the cache stores it: a cached photo decides like a fresh one
                fresh[s] = np.asarray(v, dtype=np.float32)
        if cache is not None and fresh:
            done = sorted(fresh)
            write_part(cache, done, {"faces": np.stack([fresh[s] for s in done])})
    cost = {"faces_analysed": len(todo), "faces_failed": len(todo) - len(fresh),
            "faces_from_cache": len({s for s in shas if s in cached}),
            "face_seconds": time.perf_counter() - t0, "face_cpu_seconds": _cpu_seconds() - c0}
    found = {**cached, **fresh}
    rows = np.stack([np.asarray(found.get(s, np.full(len(FACE_FEATURES), np.nan)), np.float64) for s in shas]) if shas else \
        np.zeros((0, len(FACE_FEATURES)))
    missing = np.array([s not in found for s in shas], dtype=bool)
    frame = pl.DataFrame({"sha256": shas, **{f: rows[:, i] for i, f in enumerate(FACE_FEATURES)}},
                         schema={"sha256": pl.String, **{f: pl.Float64 for f in FACE_FEATURES}})
    # NaN from the vector (no face: no youngest age) stays NaN; an unanalysable photo is null.
    frame = frame.with_columns([pl.when(pl.Series(missing)).then(None).otherwise(pl.col(f)).alias(f)
                                for f in FACE_FEATURES])
    return frame, cost


def _cpu_seconds() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def face_matrix(frame: pl.DataFrame) -> np.ndarray:
    """[n, len(FACE_FEATURES)] from a ``face_signals`` frame; null (missing) -> NaN n_faces."""
    return np.stack([frame[f].cast(pl.Float64).fill_null(np.nan).to_numpy() for f in FACE_FEATURES], axis=1) \
        if frame.height else np.zeros((0, len(FACE_FEATURES)))


# ---------------------------------------------------------------- the fitted guard


@dataclass
class GuardModel:
    """The image classifier (with its own legal threshold), the face gate, the combiner and
    its threshold, and the out-of-fold figures they were chosen on."""

    image: PhotoGuard
    combiner: SignalCombiner
    face_gate: float
    threshold: float
    config: GuardConfig
    cv: dict[str, float] = field(default_factory=dict)
    oof: dict[str, np.ndarray] = field(default_factory=dict)   # per train photo, when fitted here
    fingerprint: str = ""
    reused: bool = False
    fitted_in: str = ""
    cost: dict[str, float] = field(default_factory=dict)   # this run's face-signal work

    @property
    def image_threshold(self) -> float:
        """The image classifier's own legal threshold (a probability)."""
        return self.image.threshold

    def state_dict(self) -> dict[str, np.ndarray]:
        """All arrays for safetensors: the classifier's under ``image.``, the combiner's under ``combiner.``,
        plus ``face_gate`` and ``threshold`` ((1,) float64 each)."""
        return {**{f"image.{k}": v for k, v in self.image.state_dict().items()}, **self.combiner.state_dict(),
                "face_gate": np.array([self.face_gate], np.float64), "threshold": np.array([self.threshold], np.float64)}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray], config: GuardConfig) -> "GuardModel":
        """Inverse of ``state_dict``; ``config`` must be the one it was fitted with.

        Raises:
            KeyError: an array is missing from ``d``.
        """
        image = PhotoGuard.from_state_dict({k[6:]: v for k, v in d.items() if k.startswith("image.")})
        return cls(image, SignalCombiner.from_state_dict(d, config.combiner),
                   float(np.asarray(d["face_gate"]).reshape(-1)[0]), float(np.asarray(d["threshold"]).reshape(-1)[0]),
                   config)


def face_gate_for(image_oof: np.ndarray, label: np.ndarray, gate_recall: float) -> float:
    """The highest image score that keeps ``gate_recall`` of the child photos at or above it."""
    pos = np.sort(np.asarray(image_oof, dtype=np.float64)[np.asarray(label).astype(bool)])
    if len(pos) == 0:
        return 0.0
    k = int(np.floor((1.0 - gate_recall) * len(pos) + 1e-9))
    return float(pos[min(k, len(pos) - 1)])


def needs_faces(image_score: np.ndarray, face_gate: float) -> np.ndarray:
    """Which photos the face signal is computed for (NaN image scores: not needed, restricted anyway)."""
    s = np.asarray(image_score, dtype=np.float64)
    return np.isfinite(s) & (s >= face_gate)


def fit_combiner(image_oof: np.ndarray, faces: np.ndarray, label: np.ndarray, face_gate: float,
                 config: GuardConfig = GuardConfig(), groups: np.ndarray | None = None
                 ) -> tuple[SignalCombiner, float, dict[str, float], np.ndarray]:
    """Fit the combiner on the gated train photos' out-of-fold image scores and faces.

    The threshold comes from the combiner's own out-of-fold scores (``repeats`` x ``folds``,
    stratified and grouped by content, scikit-learn), as the highest one at which the
    image+face policy -- photos under the gate count as allowed -- keeps the legal recall
    floor, with its one-sided confidence bound, on *all* the train photos' child photos.
    Returns (combiner, threshold, figures, out-of-fold combined score: -inf under the gate)."""
    y = np.asarray(label).astype(bool)
    gated = needs_faces(image_oof, face_gate)
    x = combiner_inputs(image_oof, faces, config.combiner)
    usable = gated & np.isfinite(x).all(axis=1)
    k = cv_folds(y[usable], config.folds)
    comb = np.full(len(y), -np.inf)
    acc, cnt = np.zeros(len(y)), np.zeros(len(y))
    if usable.sum() >= 2 * k and 0 < y[usable].sum() < usable.sum():
        idx = np.flatnonzero(usable)
        g = None if groups is None else np.asarray(groups)[idx]
        for m in cv_splits(y[idx], k, config.repeats, config.seed, g):
            tr, va = idx[~m], idx[m]
            acc[va] += SignalCombiner.fit(x[tr], y[tr], config.combiner).predict(x[va])
            cnt[va] += 1
        comb[usable] = acc[usable] / np.maximum(cnt[usable], 1)
        final = SignalCombiner.fit(x[usable], y[usable], config.combiner)
        threshold = conservative_threshold(comb, y, config.recall, config.confidence)
    else:  # too little to fit or only one class above the gate: restrict everything gated (fail closed)
        final = SignalCombiner.fit(x[usable] if usable.any() else np.zeros((2, x.shape[1])),
                                   y[usable] if usable.any() else np.array([1, 1]), config.combiner)
        threshold = 0.0
        comb[usable] = 1.0
    caught = comb >= threshold
    missed = int((y & ~caught).sum())
    cv = {"threshold": threshold, "face_gate": face_gate, "gate_recall": config.gate_recall,
          "faces_needed_share": float(gated.mean()) if len(y) else 0.0,
          "oof_roc_auc": roc_auc(np.where(np.isfinite(comb), comb, -1.0), y),
          "oof_recall": float(caught[y].mean()) if y.any() else float("nan"),
          "oof_recall_lower_bound": recall_lower_bound(int(y.sum()), missed, config.confidence),
          "oof_clean_withheld": float(caught[~y].mean()) if (~y).any() else float("nan"),
          "oof_flagged": float(caught.sum()), "oof_brier": _brier(comb[usable], y[usable]),
          "folds": float(k), "repeats": float(config.repeats)}
    cv.update({f"coef_{c}": float(w) for c, w in zip(config.combiner.columns(), final.coef)})
    return final, threshold, cv, comb


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(y.astype(int), p)) if len(p) and 0 < y.sum() < len(y) else float("nan")


# ---------------------------------------------------------------- decisions


def decide(signals: pl.DataFrame, model: GuardModel) -> pl.DataFrame:
    """One verdict per photo from its signals, with the deciding signal.

    ``signals`` columns: ``image``, ``image_score``, ``n_descriptions``, ``descriptions_flagged``,
    ``face_checked`` (the face signal was looked for) and the face columns
    (``models.face_age.FEATURES``; null = could not be analysed).  Adds ``score`` (combined
    P(child); null where the combiner did not run), ``threshold``, ``image_threshold``,
    ``face_gate``, ``restricted`` and ``deciding_signal``."""
    n = signals.height
    img = signals["image_score"].cast(pl.Float64).fill_null(np.nan).to_numpy() if n else np.zeros(0)
    faces = face_matrix(signals) if n else np.zeros((0, len(FACE_FEATURES)))
    desc = (signals["descriptions_flagged"].fill_null(0).to_numpy() > 0) if n else np.zeros(0, bool)
    image_missing = ~np.isfinite(img)
    needed = needs_faces(img, model.face_gate)
    face_missing = needed & ~np.isfinite(faces[:, 0]) if n else np.zeros(0, bool)
    score = np.full(n, np.nan)
    run = needed & ~face_missing
    if run.any():
        score[run] = model.combiner.predict(combiner_inputs(img[run], faces[run], model.config.combiner))
    image_alone = np.where(image_missing, True, np.nan_to_num(img, nan=1.0) >= model.image_threshold)
    by_combiner = ~(score < model.threshold)   # NaN -> True (fail closed)
    restricted = np.where(desc | image_missing | face_missing, True, np.where(needed, by_combiner, False))
    deciding = np.where(desc, "description",
                np.where(image_missing | face_missing, "missing_signal",
                np.where(~needed, "image_classifier",
                np.where(by_combiner != image_alone, "face_age", "image_classifier"))))
    return signals.with_columns(
        pl.Series("score", score, dtype=pl.Float64).fill_nan(None),
        pl.lit(model.threshold, dtype=pl.Float64).alias("threshold"),
        pl.lit(model.image_threshold, dtype=pl.Float64).alias("image_threshold"),
        pl.lit(model.face_gate, dtype=pl.Float64).alias("face_gate"),
        pl.Series("restricted", restricted.astype(bool), dtype=pl.Boolean),
        pl.Series("deciding_signal", deciding.tolist(), dtype=pl.String),
    )


def policy_restricted(image_score: np.ndarray, faces: np.ndarray, desc_flagged: np.ndarray | None,
                      model: GuardModel) -> np.ndarray:
    """``decide``'s verdicts from arrays (benchmarks): ``desc_flagged`` None = no descriptions."""
    n = len(image_score)
    frame = pl.DataFrame({"image": [str(i) for i in range(n)], "image_score": np.asarray(image_score, np.float64),
                          "n_descriptions": np.zeros(n, np.int64),
                          "descriptions_flagged": (np.zeros(n, np.int64) if desc_flagged is None
                                                   else np.asarray(desc_flagged).astype(np.int64)),
                          **{f: np.asarray(faces, np.float64)[:, i] for i, f in enumerate(FACE_FEATURES)}})
    return decide(frame, model)["restricted"].to_numpy()


# ---------------------------------------------------------------- fitting end to end (benchmark and task)


def guard_fingerprint(image_fingerprint: str, shas: Sequence[str], config: GuardConfig,
                      desc_flagged: np.ndarray | None = None) -> str:
    """The image classifier's fingerprint plus everything the face stage depends on: the train
    photos' contents (the faces are a function of them and the face settings), the settings,
    and the train photos' own description flags (they enter the saved out-of-fold figures)."""
    from tasks.guard_fit import GUARD_FORMAT

    h = hashlib.sha256(f"photo guard {GUARD_FORMAT}|{image_fingerprint}|".encode())
    h.update("\n".join(shas).encode())
    if desc_flagged is not None:
        h.update(np.packbits(np.asarray(desc_flagged, dtype=bool)).tobytes())
    h.update(json.dumps(asdict(config), sort_keys=True, default=str).encode())
    h.update(config.faces.name.encode())
    return h.hexdigest()[:16]


def fit_guard(x: np.ndarray, label: np.ndarray, shas: Sequence[str], faces_of, config: GuardConfig = GuardConfig()
              ) -> GuardModel:
    """Fit everything on train photos: the image classifier (and its out-of-fold scores), the
    face gate, then faces for the gated photos only (``faces_of(indices) -> [len, FEATURES]``),
    then the combiner and its threshold."""
    from tasks.guard_fit import train_photo_guard

    y = np.asarray(label).astype(np.float32)
    groups = np.asarray(list(shas))
    image = train_photo_guard(x, y, config.folds, config.repeats, config.seed, config.recall, config.confidence,
                              groups=groups)
    gate = face_gate_for(image.oof, y, config.gate_recall) if 0 < y.sum() < len(y) else 0.0
    need = needs_faces(image.oof, gate)
    faces = np.full((len(y), len(FACE_FEATURES)), np.nan)
    if need.any():
        faces[need] = faces_of(np.flatnonzero(need))
    combiner, threshold, cv, comb = fit_combiner(image.oof, faces, y, gate, config, groups)
    model = GuardModel(image, combiner, gate, threshold, config, cv=cv,
                       oof={"image": image.oof, "combined": comb, "faces": faces})
    return model
