"""The training stage (Prefect): the relevance heads (``tasks/train.py``) fitted on the run's
training data, or loaded when that data is unchanged (content-keyed model folders)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.relevance_model import FittedModel, load_model, save_model
from tasks.load import earlier_run_with, record_stage
from tasks.train import (TrainConfig, TrainingSet, agreement_table, build_training_set, choose_head, cross_validate,
                         fit_final, fusion_table)
from tasks.warehouse import connect


def load_training_set(db: Path, images, texts, config: TrainConfig) -> TrainingSet:
    """The training set from ``training_pairs``, ``bridge_positives`` and ``training_photos`` in ``db``.

    ``images`` / ``texts``: the run's embeddings (``EmbeddedImages``, ``EmbeddedTexts``).

    Raises:
        KeyError: a training photo or text was not embedded.
    """
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
    reused = (folder / "card.json").exists()
    fitted_in: str | None = None  # the run that fitted the heads, when reused
    if reused:
        model = load_model(folder)
        card = json.loads((folder / "card.json").read_text())
        metrics = card["metrics"]
        fitted_in = card.get("fitted_in_run")
        log.info("training data unchanged (%s): heads reused (fitted in run %s)", fingerprint, fitted_in)
    else:
        started = time.perf_counter()
        cv = cross_validate(ts, config)
        metrics = agreement_table(ts, cv, "oof_grouped_by_photo")
        metrics += agreement_table(ts, cross_validate(ts, config, strict_captions=True), "oof_strict_captions")
        model = fit_final(ts, config, choose_head(metrics))
        model.fusions, fusion_rows = fusion_table(ts, cv, config)
        metrics += fusion_rows
        seconds = time.perf_counter() - started
        card = {"fingerprint": fingerprint, "head": model.head, "config": asdict(config),
                "image_encoder": images.encoder, "text_encoder": texts.encoder,
                "data": {"pairs": int(len(ts.target)), "photos": int(len(ts.img)), "texts": int(len(ts.txt)),
                         "bridge_positives": int(len(ts.pos_img))},
                "train_seconds": round(seconds, 2), "fitted_in_run": run_id, "metrics": metrics}
        save_model(model, folder, card)
        log.info("heads trained (%s) in %.1f s, chosen on training folds: %s", fingerprint, seconds, model.head)
    if head != "auto":
        model.head = head
    model.fingerprint = fingerprint
    model.settings = {k: card[k] for k in ("config", "data", "train_seconds") if k in card}
    rows = [dict(r) for r in metrics] + [
        {"head": "chosen", "protocol": "selection", "metric": f"is_{model.head}", "value": 1.0}]
    with connect(db) as con:
        con.execute("DELETE FROM model_metrics WHERE run_id = ? AND component = 'relevance'", [run_id])
        con.register("_m", pl.DataFrame(rows).with_columns(pl.lit(run_id).alias("run_id"),
                                                           pl.lit("relevance").alias("component")))
        con.execute("INSERT INTO model_metrics BY NAME SELECT * FROM _m")
        con.unregister("_m")
        # Cards saved before run_stages existed do not name their run: the newest run that used them.
        earlier = earlier_run_with(con, "relevance_heads", fingerprint, run_id) if reused and not fitted_in else None
        reused_from = (fitted_in or (earlier[1] if earlier else "unknown")) if reused else None
        record_stage(con, run_id, "relevance_heads", fingerprint, reused_from)
    return model
