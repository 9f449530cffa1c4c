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


# The photo's own descriptions: every text whose id `<image>#<n>` names it, with this run's verdict.
DESCRIPTIONS_SQL = """
    SELECT split_part(f.text_id, '#', 1) AS image, f.text_id, f.flagged, f.rule
    FROM text_flags f
    WHERE f.run_id = ? AND f.text_kind = ? AND f.text_id LIKE '%#%'
"""

PHOTO_FLAG_COLUMNS = ["run_id", "image", "score", "threshold", "restricted", "deciding_signal", "image_score",
                      "image_threshold", "face_gate", "face_checked", "n_faces", "youngest_age",
                      "youngest_age_confidence", "faces_under_16", "n_descriptions", "descriptions_flagged",
                      "description_id", "description_rule"]


@task(name="photo-guard", cache_policy=NO_CACHE)
def photo_guard_task(db: Path, run_id: str, images, emb_root: Path, models_dir: Path):
    """Judge every gallery photo on every signal; audit each verdict and the signal that decided.

    Fits (or reuses) the guard on the train photos (``tasks/photo_guard.py``: image classifier,
    face gate, combiner, thresholds), then for each gallery photo: its own descriptions'
    verdicts (``text_flags``), the image score, the faces (used only above the gate) and the
    decision, into ``photo_flags``.  Reads what the embedding pass computed (guard view and
    faces, by content hash under ``emb_root``); it never opens a photo file.  A fit is
    kept as ``models_dir/photo_guard/fit-<fingerprint>.safetensors`` and reused while its
    inputs, labels and settings are unchanged; each run's guard is also saved as
    ``models_dir/photo_guard/<run_id>.safetensors``.  The gallery is judged every run.
    """
    from models.child_photo import photo_inputs, view_block
    from tasks import photo_guard as pg
    from tasks.photo_views import cached_views
    from tasks.atomic import atomic_write_bytes

    log = get_run_logger()
    config = pg.GuardConfig()
    with connect(db) as con:
        train = con.execute("""
            SELECT p.image, p.path, p.sha256, r.image IS NOT NULL AS child
            FROM stg_photos p LEFT JOIN restricted_train_photos r USING (image)
            WHERE p.split = 'train' AND p.is_valid ORDER BY p.image""").pl()
        gallery = con.execute("""
            SELECT g.image, p.path, p.sha256 FROM gallery g JOIN stg_photos p ON p.split = 'test' AND p.image = g.image
            ORDER BY g.image""").pl()
        gallery_desc = con.execute(DESCRIPTIONS_SQL, [run_id, "query"]).pl()
        train_desc = con.execute(DESCRIPTIONS_SQL, [run_id, "caption"]).pl()
    both = pl.concat([train.select("path", "sha256"), gallery.select("path", "sha256")])
    views, view_name = cached_views(both["sha256"].to_list(), emb_root, Path(models_dir) / "onnx")

    def inputs(split: str, names: list[str], rows: slice) -> np.ndarray:
        idx = images.rows(split, names)
        return photo_inputs(view_block(images.features[idx], images.logits[idx]),
                            view_block(views["features"][rows], views["logits"][rows], views["max_features"][rows]))

    names = gallery["image"].to_list()
    x_train = inputs("train", train["image"].to_list(), slice(0, train.height))
    y_train = train["child"].to_numpy().astype(np.float32)
    train_shas = train["sha256"].to_list()
    view = f"{images.encoder} + {view_name}"
    own_flagged = set(train_desc.filter(pl.col("flagged"))["image"].to_list())
    desc_train = np.array([i in own_flagged for i in train["image"]], dtype=bool)
    fingerprint = pg.guard_fingerprint(guard_fingerprint(x_train, y_train, view), train_shas, config,
                                       desc_train)
    fitted_path = Path(models_dir) / "photo_guard" / f"fit-{fingerprint}.safetensors"
    face_cache = pg.face_cache_dir(emb_root, config.faces)
    cost = {"faces_analysed": 0, "faces_failed": 0, "faces_from_cache": 0, "face_seconds": 0.0, "face_cpu_seconds": 0.0}

    def add_cost(c: dict) -> None:
        for k_ in cost:
            cost[k_] += c[k_]

    def train_faces(idx: np.ndarray) -> np.ndarray:
        frame, c = pg.face_signals(None, [train_shas[i] for i in idx], face_cache, config.faces)
        add_cost(c)
        return pg.face_matrix(frame)

    # Same inputs, labels and settings give the same fit: reuse it (16 image fits, faces, combiner).
    model = load_guard(fitted_path, config) if fitted_path.exists() else None
    reused = model is not None
    if model is None:
        model = pg.fit_guard(x_train, y_train, train_shas, train_faces, config)
        model.cv.update(policy_oof_figures(model, desc_train, y_train))
        model.fitted_in = run_id
    model.image.view = view

    # The gallery: image scores, faces above the gate, descriptions, the decision.
    image_score = (model.image.score(inputs("test", names, slice(train.height, None))) if names
                   else np.zeros(0, np.float64))
    need = pg.needs_faces(image_score, model.face_gate)
    picked = np.flatnonzero(need)
    gal_faces, c = pg.face_signals(None, [gallery["sha256"][int(i)] for i in picked], face_cache, config.faces)
    add_cost(c)
    face_rows = {s_: r for s_, r in zip(gal_faces["sha256"], pg.face_matrix(gal_faces))}
    empty = np.full(len(pg.FACE_FEATURES), np.nan)
    gal_matrix = np.stack([face_rows.get(s_, empty) if n_ else empty
                           for s_, n_ in zip(gallery["sha256"], need)]) if names else np.zeros((0, len(empty)))
    # Unanalysable photos stay null (missing); photos below the gate were not looked at.
    analysed = np.array([n_ and s_ in face_rows and np.isfinite(face_rows[s_][0])
                         for s_, n_ in zip(gallery["sha256"], need)], dtype=bool)
    signals = pg.description_signals(names, gallery_desc).with_columns(
        pl.Series("image_score", image_score, dtype=pl.Float64),
        pl.Series("face_checked", need, dtype=pl.Boolean),
        *[pl.Series(f, np.where(analysed, gal_matrix[:, i], np.nan), dtype=pl.Float64).fill_nan(None)
          if f in ("n_faces", "faces_under_16") else
          pl.when(pl.Series(analysed)).then(pl.Series(f, gal_matrix[:, i], dtype=pl.Float64)).otherwise(None).alias(f)
          for i, f in enumerate(pg.FACE_FEATURES)])
    verdicts = pg.decide(signals, model)
    flags = verdicts.with_columns(
        pl.lit(run_id).alias("run_id"),
        pl.col("n_faces").cast(pl.Int32), pl.col("faces_under_16").cast(pl.Int32),
        pl.col("n_descriptions").cast(pl.Int32), pl.col("descriptions_flagged").cast(pl.Int32),
        pl.col("youngest_age").fill_nan(None), pl.col("youngest_age_confidence").fill_nan(None),
    ).select(PHOTO_FLAG_COLUMNS)

    metrics = guard_metrics(model, verdicts)
    model.cost = cost
    blob = guard_bytes(model, model.fitted_in, fingerprint)
    if not reused:
        atomic_write_bytes(blob, fitted_path)
    atomic_write_bytes(blob, Path(models_dir) / "photo_guard" / f"{run_id}.safetensors")
    with connect(db) as con:
        append_run_rows(con, "photo_flags", run_id, flags)
        record_stage(con, run_id, "photo_guard", fingerprint, model.fitted_in if reused else None)
        append_run_rows(con, "model_metrics", run_id, pl.DataFrame(metrics).with_columns(
            pl.lit(run_id).alias("run_id"), pl.lit("photo_guard").alias("component")))
    by_signal = dict(verdicts.filter(pl.col("restricted")).group_by("deciding_signal").len().rows())
    log.info("photo guard (%s, %s): faces: %d analysed (%.1f s, %.1f CPU s), %d from the embedding pass; "
             "image threshold %.4f, face gate %.4f, combined threshold %.4f; %d of %d gallery photos restricted %s",
             fingerprint, "inputs unchanged: reused" if reused else "fitted", cost["faces_analysed"],
             cost["face_seconds"], cost["face_cpu_seconds"], cost["faces_from_cache"], model.image_threshold,
             model.face_gate, model.threshold, int(verdicts["restricted"].sum()), len(names), by_signal)
    model.fingerprint, model.reused = fingerprint, reused
    return model
