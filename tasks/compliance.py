"""Compliance with the under-16 law: flag texts, learn which photos show a child.

Texts are judged by the editable lexicon (``tasks/compliance_text.py``).  Photos carry
no caption at search time, so a classifier learns "shows a child" from the train
photos' own captions; its threshold is set on training folds to meet the legal recall
floor and stored with every flag, so an officer can audit each decision in SQL.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

# models.child_photo (torch) and scipy are imported where used: a run whose guard inputs
# are unchanged loads the saved guard and needs neither to start.
from tasks.compliance_text import check_query, classify_many, lexicon_version
from tasks.config import SEED
from tasks.evaluate import precision_recall_at, roc_auc

LEGAL_RECALL_FLOOR = 0.95


def flag_texts(run_id: str, kind: str, ids: list[str], texts: list[str]) -> pl.DataFrame:
    """One audit row per text: blocked or not, the rule that fired, the words it matched,
    the normalized form that was judged and a one-line reason.

    Captions (and any kind but "query") are judged by ``classify_many``; saved queries by
    ``check_query``, so a blank, over-long or unservable query is blocked with its own rule
    ("blank_query", "query_too_long", "unsupported_language", "not_english") and reason.
    """
    if kind == "query":
        checks = [check_query(t) for t in texts]
        flagged = [not c.searchable for c in checks]
        rules = [c.code or (c.verdict.rule if c.verdict else None) for c in checks]
        matched = [c.verdict.match if c.verdict and not c.code else None for c in checks]
        normalized = [c.verdict.normalized if c.verdict else None for c in checks]
        reasons = [c.message or (c.verdict.reason if c.verdict else None) for c in checks]
    else:
        verdicts = classify_many(texts)
        flagged = [v.flagged for v in verdicts]
        rules = [v.rule for v in verdicts]
        matched = [v.match for v in verdicts]
        normalized = [v.normalized for v in verdicts]
        reasons = [v.reason for v in verdicts]
    return pl.DataFrame(
        {
            "run_id": run_id,
            "text_kind": kind,
            "text_id": ids,
            "text": texts,
            "flagged": flagged,
            "rule": rules,
            "matched": matched,
            "lexicon_version": lexicon_version(),
            "normalized": normalized,
            "reason": reasons,
        },
        schema={"run_id": pl.String, "text_kind": pl.String, "text_id": pl.String, "text": pl.String,
                "flagged": pl.Boolean, "rule": pl.String, "matched": pl.String, "lexicon_version": pl.String,
                "normalized": pl.String, "reason": pl.String},
    )


THRESHOLD_CONFIDENCE = 0.95   # one-sided confidence that the recall floor holds
CV_FOLDS, CV_REPEATS = 5, 3


@dataclass
class PhotoGuard:
    """The fitted classifier and its threshold; ``restricted`` fails closed (NaN -> restricted)."""

    classifier: ChildPhotoClassifier
    threshold: float
    cv: dict[str, float]
    view: str = ""
    fingerprint: str = ""   # guard_fingerprint of what it was fitted on
    reused: bool = False    # this run loaded it instead of fitting it
    fitted_in: str = ""     # run_id of the run that fitted it

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.predict(x)

    def restricted(self, score: np.ndarray) -> np.ndarray:
        return ~(np.asarray(score, dtype=np.float64) < self.threshold)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.classifier.state_dict(), "threshold": np.array([self.threshold], dtype=np.float64)}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray], view: str = "") -> "PhotoGuard":
        from models.child_photo import ChildPhotoClassifier

        return cls(ChildPhotoClassifier.from_state_dict(d), float(np.asarray(d["threshold"]).reshape(-1)[0]), {}, view)


def recall_lower_bound(n_pos: int, missed: int, confidence: float = THRESHOLD_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound on recall after catching n_pos - missed of n_pos."""
    if n_pos <= 0:
        return 0.0
    if missed >= n_pos:
        return 0.0
    from scipy import stats

    return float(stats.beta.ppf(1.0 - confidence, n_pos - missed, missed + 1))


def conservative_threshold(score: np.ndarray, label: np.ndarray, recall: float = LEGAL_RECALL_FLOOR,
                           confidence: float = THRESHOLD_CONFIDENCE) -> float:
    """The highest threshold whose out-of-fold recall is >= ``recall`` with ``confidence``.

    A recall of exactly 0.95 on the training folds is a point estimate: about as likely
    to fall short on new photos as not, and the train labels (mostly one caption per
    photo) miss some child photos, probably the harder ones.  Asking that the one-sided
    lower confidence bound reach 0.95 buys the margin (~0.97 out of fold at 344
    positives).  With too few positives for any such bound the threshold is the lowest
    positive score: every known child photo is caught.
    """
    pos = np.sort(np.asarray(score, dtype=np.float64)[np.asarray(label).astype(bool)])
    if len(pos) == 0:
        return 0.0
    missed = 0
    while missed + 1 < len(pos) and recall_lower_bound(len(pos), missed + 1, confidence) >= recall:
        missed += 1
    return float(pos[missed])


def stratified_folds(label: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold of each row; each class spread evenly over the folds."""
    label = np.asarray(label).astype(bool)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(label), dtype=np.int64)
    offset = 0
    for cls in (True, False):
        idx = np.flatnonzero(label == cls)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def _fit(x: np.ndarray, y: np.ndarray, config: ChildPhotoConfig) -> ChildPhotoClassifier:
    from models.child_photo import ChildPhotoClassifier

    if y.min() == y.max():  # one class only: nothing to separate; score everything alike
        d = x.shape[1]
        return ChildPhotoClassifier(np.zeros(d, np.float32), np.ones(d, np.float32), np.zeros(d, np.float32),
                                    0.0)
    return ChildPhotoClassifier.fit(x, y, config)


def train_photo_guard(x: np.ndarray, label: np.ndarray, folds: int = CV_FOLDS, repeats: int = CV_REPEATS,
                      seed: int = SEED, recall: float = LEGAL_RECALL_FLOOR,
                      confidence: float = THRESHOLD_CONFIDENCE,
                      config: ChildPhotoConfig | None = None) -> PhotoGuard:
    """Fit on all train photos; pick the threshold out of fold (``repeats`` x ``folds``-fold CV).

    ``x`` are ``photo_inputs`` rows of the train photos, ``label`` whether each shows a child.
    The test photos never enter: neither the fit nor the threshold sees them.
    """
    from models.child_photo import ChildPhotoClassifier, ChildPhotoConfig

    config = config or ChildPhotoConfig()
    label = np.asarray(label).astype(np.float32)
    k = max(2, min(folds, int(label.sum()), int((1 - label).sum()))) if 0 < label.sum() < len(label) else folds
    oof = np.zeros(len(x), dtype=np.float64)
    held_out = [stratified_folds(label, k, seed + r) == f for r in range(repeats) for f in range(k)]
    if label.min() == label.max():
        fits = [_fit(x[~va], label[~va], config) for va in held_out]
    else:  # two fits at a time on the two cores; identical to fitting one after the other
        fits = ChildPhotoClassifier.fit_many(x, label, [~va for va in held_out], config)
    for va, clf in zip(held_out, fits):
        oof[va] += clf.predict(x[va]) / repeats
    if label.min() == label.max():
        threshold = 0.0  # no contrast to learn from: restrict every photo (fail closed)
    else:
        threshold = conservative_threshold(oof, label, recall, confidence)
    missed = int(((oof < threshold) & (label > 0.5)).sum())
    cv = {"oof_roc_auc": roc_auc(oof, label), "threshold": threshold,
          **{f"oof_{k_}": v for k_, v in precision_recall_at(oof, label, threshold).items()},
          "oof_recall_lower_bound": recall_lower_bound(int(label.sum()), missed, confidence),
          "recall_floor": recall, "confidence": confidence, "folds": float(k), "repeats": float(repeats)}
    return PhotoGuard(_fit(x, label, config), threshold, cv)


# Bump when what a saved guard means changes, so older fits are never reused.
GUARD_FORMAT = 2


def guard_fingerprint(x: np.ndarray, label: np.ndarray, view: str) -> str:
    """Hash of everything a fit depends on: the inputs, the labels, the view names and settings.

    Equal fingerprints give the same guard (the fit is deterministic), so it is reused.
    """
    from dataclasses import asdict

    from models.child_photo import ChildPhotoConfig

    h = hashlib.sha256(f"guard {GUARD_FORMAT}|{view}|{x.shape}|".encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(label, dtype=np.float32).tobytes())
    settings = {"folds": CV_FOLDS, "repeats": CV_REPEATS, "seed": SEED, "recall": LEGAL_RECALL_FLOOR,
                "confidence": THRESHOLD_CONFIDENCE, "config": asdict(ChildPhotoConfig())}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def guard_bytes(guard: PhotoGuard, run_id: str, fingerprint: str) -> bytes:
    """The guard as safetensors (the bias is kept in float64, so a reused guard scores bit for
    bit like the fit it came from)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in guard.state_dict().items()},
                metadata={"run_id": run_id, "inputs": guard.view, "threshold": repr(guard.threshold),
                          "fingerprint": fingerprint, "cv": json.dumps(guard.cv)})


def load_guard(path: Path) -> PhotoGuard | None:
    """A guard saved by ``guard_bytes``, or None if the file is missing or unreadable."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        guard = PhotoGuard.from_state_dict(tensors, meta.get("inputs", ""))
        guard.cv = {k: float(v) for k, v in json.loads(meta["cv"]).items()}
        guard.fitted_in = meta["run_id"]
    except Exception:  # noqa: BLE001  (an unreadable or older file is refitted, never fatal)
        return None
    return guard


# ---------------------------------------------------------------- Prefect tasks

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.load import append_run_rows, record_stage  # noqa: E402
from tasks.warehouse import connect  # noqa: E402


@task(name="flag-texts", cache_policy=NO_CACHE)
def flag_texts_task(db: Path, run_id: str) -> dict[str, int]:
    """Audit every caption and query against the lexicon; rows go to ``text_flags``."""
    with connect(db) as con:
        caps = con.execute("SELECT caption_id, caption_text FROM stg_captions ORDER BY caption_id").pl()
        qs = con.execute("SELECT query_id, query_text FROM stg_test_queries ORDER BY query_id").pl()
        frame = pl.concat([
            flag_texts(run_id, "caption", caps["caption_id"].to_list(), caps["caption_text"].to_list()),
            flag_texts(run_id, "query", qs["query_id"].to_list(), qs["query_text"].to_list()),
        ])
        append_run_rows(con, "text_flags", run_id, frame)
    counts = {
        "captions": caps.height,
        "captions_flagged": int(frame.filter((pl.col("text_kind") == "caption") & pl.col("flagged")).height),
        "queries": qs.height,
        "queries_flagged": int(frame.filter((pl.col("text_kind") == "query") & pl.col("flagged")).height),
    }
    get_run_logger().info("compliance: %s", counts)
    return counts


@task(name="photo-guard", cache_policy=NO_CACHE)
def photo_guard_task(db: Path, run_id: str, images, data_dir: Path, emb_root: Path, models_dir: Path) -> PhotoGuard:
    """Learn 'shows a child' on train photos, flag every gallery photo, audit both.

    Inputs per photo: the relevance tower's 260 px Lite2 view (``images``) and the guard's
    own 448 px Lite0 view (``tasks/photo_views.py``, cached under ``emb_root``).  A fit is
    kept as ``models_dir/photo_guard/fit-<fingerprint>.safetensors`` and reused while its
    inputs, labels and settings are unchanged; each run's guard is also saved as
    ``models_dir/photo_guard/<run_id>.safetensors``.  The gallery is scored every run.
    """
    from models.child_photo import photo_inputs, view_block
    from tasks.photo_views import compute_views
    from tasks.warehouse import atomic_write_bytes

    with connect(db) as con:
        train = con.execute("""
            SELECT p.image, p.path, p.sha256, r.image IS NOT NULL AS child
            FROM stg_photos p LEFT JOIN restricted_train_photos r USING (image)
            WHERE p.split = 'train' AND p.is_valid ORDER BY p.image""").pl()
        gallery = con.execute("""
            SELECT g.image, p.path, p.sha256 FROM gallery g JOIN stg_photos p ON p.split = 'test' AND p.image = g.image
            ORDER BY g.image""").pl()
        # Test photos' labels come from their own five captions: reporting only, never fitting.
        test_labels = con.execute("""
            SELECT q.written_for_image AS image, bool_or(f.flagged) AS child
            FROM stg_test_queries q JOIN text_flags f
              ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            GROUP BY 1""", [run_id]).pl()
    both = pl.concat([train.select("path", "sha256"), gallery.select("path", "sha256")])
    views, view_name, n_computed = compute_views([Path(data_dir) / p for p in both["path"]], both["sha256"].to_list(),
                                                 emb_root, Path(models_dir) / "onnx")

    def inputs(split: str, names: list[str], rows: slice) -> np.ndarray:
        idx = images.rows(split, names)
        return photo_inputs(view_block(images.features[idx], images.logits[idx]),
                            view_block(views["features"][rows], views["logits"][rows], views["max_features"][rows]))

    names = gallery["image"].to_list()
    x_train = inputs("train", train["image"].to_list(), slice(0, train.height))
    y_train = train["child"].to_numpy().astype(np.float32)
    view = f"{images.encoder} + {view_name}"
    fingerprint = guard_fingerprint(x_train, y_train, view)
    fitted_path = Path(models_dir) / "photo_guard" / f"fit-{fingerprint}.safetensors"
    # Same inputs, labels and settings give the same fit: reuse it (16 fits otherwise).
    guard = load_guard(fitted_path) if fitted_path.exists() else None
    reused = guard is not None
    if guard is None:
        guard = train_photo_guard(x_train, y_train)
        guard.fitted_in = run_id
    guard.view = view
    score = (guard.score(inputs("test", names, slice(train.height, None))) if names
             else np.zeros(0, np.float64))
    restricted = guard.restricted(score)
    flags = pl.DataFrame({"run_id": run_id, "image": names, "score": score.astype(np.float64),
                          "threshold": guard.threshold, "restricted": restricted},
                         schema={"run_id": pl.String, "image": pl.String, "score": pl.Float64,
                                 "threshold": pl.Float64, "restricted": pl.Boolean})
    metrics = [{"head": "guard", "protocol": "oof_train_photos", "metric": k, "value": float(v)}
               for k, v in guard.cv.items()]
    lab = dict(zip(test_labels["image"], test_labels["child"]))
    known = [g for g in names if g in lab]
    if known:
        s = dict(zip(names, score))
        ys, ss = np.array([lab[g] for g in known], dtype=bool), np.array([s[g] for g in known])
        test = {"roc_auc": roc_auc(ss, ys), **precision_recall_at(ss, ys, guard.threshold)}
        metrics += [{"head": "guard", "protocol": "test_photos_caption_labels", "metric": k, "value": float(v)}
                    for k, v in test.items()]
    blob = guard_bytes(guard, guard.fitted_in, fingerprint)
    if not reused:
        atomic_write_bytes(blob, fitted_path)
    atomic_write_bytes(blob, Path(models_dir) / "photo_guard" / f"{run_id}.safetensors")
    with connect(db) as con:
        append_run_rows(con, "photo_flags", run_id, flags)
        record_stage(con, run_id, "photo_guard", fingerprint, guard.fitted_in if reused else None)
        append_run_rows(con, "model_metrics", run_id, pl.DataFrame(metrics).with_columns(
            pl.lit(run_id).alias("run_id"), pl.lit("photo_guard").alias("component")))
    get_run_logger().info("photo guard (%s, %s): %d views computed, threshold %.4f, %d of %d gallery photos "
                          "restricted, %s", fingerprint, "inputs unchanged: reused" if reused else "fitted",
                          n_computed, guard.threshold, int(restricted.sum()), len(names), guard.cv)
    guard.fingerprint, guard.reused = fingerprint, reused
    return guard
