"""Compliance with the under-16 law: flag texts, learn which photos show a child.

Texts are judged by the editable lexicon (``tasks/compliance_text.py``).  Photos carry
no caption at search time, so a classifier learns "shows a child" from the train
photos' own captions; its threshold is set on training folds to meet the legal recall
floor and stored with every flag, so an officer can audit each decision in SQL.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl

# models.child_photo (torch) and scipy are imported where used: a run whose guard inputs
# are unchanged loads the saved guard and needs neither to start.
from tasks.compliance_text import check_query, classify_many, lexicon_version
from tasks.config import SEED
from tasks.guard_fit import (  # noqa: F401  (re-exported: the guard's public names live here too)
    CV_FOLDS, CV_REPEATS, GUARD_FORMAT, LEGAL_RECALL_FLOOR, THRESHOLD_CONFIDENCE, PhotoGuard, conservative_threshold,
    cv_folds, cv_splits, recall_lower_bound, roc_auc, stratified_folds, train_photo_guard)

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


def guard_fingerprint(x: np.ndarray, label: np.ndarray, view: str) -> str:
    """Hash of everything the image classifier's fit depends on: the inputs, the labels, the
    view names and settings.  Equal fingerprints give the same fit (it is deterministic)."""
    from dataclasses import asdict

    from models.child_photo import ChildPhotoConfig

    h = hashlib.sha256(f"guard {GUARD_FORMAT}|{view}|{x.shape}|".encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(label, dtype=np.float32).tobytes())
    settings = {"folds": CV_FOLDS, "repeats": CV_REPEATS, "seed": SEED, "recall": LEGAL_RECALL_FLOOR,
                "confidence": THRESHOLD_CONFIDENCE, "config": asdict(ChildPhotoConfig())}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def guard_bytes(model, run_id: str, fingerprint: str) -> bytes:
    """The fitted photo guard (``tasks.photo_guard.GuardModel``) as safetensors, float64 where it
    matters, so a reused guard decides bit for bit like the fit it came from."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in model.state_dict().items()},
                metadata={"run_id": run_id, "inputs": model.image.view, "threshold": repr(model.threshold),
                          "fingerprint": fingerprint, "cv": json.dumps(model.cv),
                          "image_cv": json.dumps(model.image.cv)})


def load_guard(path: Path, config=None):
    """A guard saved by ``guard_bytes``, or None if the file is missing, unreadable or older."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from tasks.photo_guard import GuardConfig, GuardModel

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
        model = GuardModel.from_state_dict(tensors, config or GuardConfig())
        model.image.view = meta.get("inputs", "")
        model.cv = {k: float(v) for k, v in json.loads(meta["cv"]).items()}
        model.image.cv = {k: float(v) for k, v in json.loads(meta["image_cv"]).items()}
        model.fitted_in = meta["run_id"]
    except Exception:  # noqa: BLE001  (an unreadable or older file is refitted, never fatal)
        return None
    return model


def caption_label_figures(restricted: np.ndarray, label: np.ndarray, score: np.ndarray | None = None
                          ) -> dict[str, float]:
    """Recall, share of clean photos withheld, precision and counts of a verdict against labels."""
    r, y = np.asarray(restricted).astype(bool), np.asarray(label).astype(bool)
    out = {"recall": float(r[y].mean()) if y.any() else float("nan"),
           "clean_withheld": float(r[~y].mean()) if (~y).any() else float("nan"),
           "precision": float((r & y).sum() / max(r.sum(), 1)), "flagged": float(r.sum()),
           "positives": float(y.sum()), "n": float(len(y))}
    if score is not None:
        out["roc_auc"] = roc_auc(score, y)
    return out


def policy_oof_figures(model, desc_flagged: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """The shipped policy (descriptions, then image and faces) on the train photos, out of fold:
    a train photo's own description flag with its out-of-fold image+face verdict.  Caption
    labels: the descriptions are part of how those labels were made, so their recall here is
    an upper bound (docs/compliance.md: the visual labels are the honest check)."""
    caught = np.asarray(desc_flagged).astype(bool) | (model.oof["combined"] >= model.threshold)
    return {f"policy_{k}": v for k, v in caption_label_figures(caught, label).items()}


def guard_metrics(model, verdicts: pl.DataFrame) -> list[dict]:
    """model_metrics rows of the photo guard: out of fold on the train photos (caption labels) for
    the image classifier ('image'), image + faces ('image_face', a photo without descriptions)
    and the shipped policy ('guard'); on the gallery against labels from its own descriptions;
    and how many gallery photos each signal decided."""
    rows = [{"head": "image", "protocol": "oof_train_photos", "metric": k, "value": float(v)}
            for k, v in model.image.cv.items()]
    rows += [{"head": "image_face", "protocol": "oof_train_photos", "metric": k, "value": float(v)}
             for k, v in model.cv.items() if not k.startswith("policy_")]
    rows += [{"head": "guard", "protocol": "oof_train_photos", "metric": k.removeprefix("policy_"), "value": float(v)}
             for k, v in model.cv.items() if k.startswith("policy_")]
    rows += [{"head": "guard", "protocol": "oof_train_photos", "metric": "threshold", "value": model.threshold}]
    described = verdicts.filter(pl.col("n_descriptions") > 0)
    if described.height:
        y = (described["descriptions_flagged"] > 0).to_numpy()
        img = described["image_score"].fill_null(np.nan).to_numpy()
        without = described.with_columns(pl.lit(0).alias("descriptions_flagged"))
        from tasks.photo_guard import decide

        no_desc = decide(without, model)
        for head, restricted, score in [
                ("image", ~(img < model.image_threshold), img),
                ("image_face", no_desc["restricted"].to_numpy(), None),
                ("guard", described["restricted"].to_numpy(), None)]:
            rows += [{"head": head, "protocol": "test_photos_caption_labels", "metric": k, "value": float(v)}
                     for k, v in caption_label_figures(restricted, y, score).items()]
    for signal in ("description", "missing_signal", "image_classifier", "face_age"):
        mine = verdicts.filter(pl.col("deciding_signal") == signal)
        rows += [{"head": "guard", "protocol": "gallery_decisions", "metric": f"restricted_by_{signal}",
                  "value": float(mine["restricted"].sum())},
                 {"head": "guard", "protocol": "gallery_decisions", "metric": f"allowed_by_{signal}",
                  "value": float((~mine["restricted"]).sum())}]
    rows += [{"head": "guard", "protocol": "gallery_decisions", "metric": "faces_checked",
              "value": float(verdicts["face_checked"].sum())},
             {"head": "guard", "protocol": "gallery_decisions", "metric": "restricted",
              "value": float(verdicts["restricted"].sum())},
             {"head": "guard", "protocol": "gallery_decisions", "metric": "photos", "value": float(verdicts.height)}]
    # A figure that is undefined here (one class only, e.g. on tiny data) is left out, not stored as NaN.
    return [r for r in rows if np.isfinite(r["value"])]


# A photo's own descriptions (text ids "<image>#<n>") with this run's verdicts: (run_id, text_kind).
DESCRIPTIONS_SQL = """
    SELECT split_part(f.text_id, '#', 1) AS image, f.text_id, f.flagged, f.rule
    FROM text_flags f
    WHERE f.run_id = ? AND f.text_kind = ? AND f.text_id LIKE '%#%'
"""

# photo_flags, column by column (sql/history/photo_flags.sql).
PHOTO_FLAG_COLUMNS = ["run_id", "image", "score", "threshold", "restricted", "deciding_signal", "image_score",
                      "image_threshold", "face_gate", "face_checked", "n_faces", "youngest_age",
                      "youngest_age_confidence", "faces_under_16", "n_descriptions", "descriptions_flagged",
                      "description_id", "description_rule"]
