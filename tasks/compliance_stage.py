"""The compliance stages (Prefect): flag every caption and query (``flag_texts``), then judge
every gallery photo on every signal (the photo guard, ``tasks/photo_guard.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.compliance import (DESCRIPTIONS_SQL, PHOTO_FLAG_COLUMNS, flag_texts, guard_bytes, guard_fingerprint,
                              guard_metrics, load_guard, policy_oof_figures)
from tasks.load import append_run_rows, record_stage
from tasks.warehouse import connect


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
