"""Compliance with the under-16 law: flag texts, learn which photos show a child.

Texts are judged by the editable lexicon (``tasks/compliance_text.py``).  Photos carry
no caption at search time, so a classifier learns "shows a child" from the train
photos' own captions; its threshold is set on training folds to meet the legal recall
floor and stored with every flag, so an officer can audit each decision in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from models.child_photo import ChildPhotoClassifier, ChildPhotoConfig, photo_inputs
from tasks.compliance_text import classify_many, lexicon_version
from tasks.evaluate import precision_recall_at, roc_auc, threshold_for_recall

LEGAL_RECALL_FLOOR = 0.95


def flag_texts(run_id: str, kind: str, ids: list[str], texts: list[str]) -> pl.DataFrame:
    """One audit row per text: flagged or not, the rule that fired and the words it matched."""
    verdicts = classify_many(texts)
    return pl.DataFrame(
        {
            "run_id": run_id,
            "text_kind": kind,
            "text_id": ids,
            "text": texts,
            "flagged": [v.flagged for v in verdicts],
            "rule": [v.rule for v in verdicts],
            "matched": [v.match for v in verdicts],
            "lexicon_version": lexicon_version(),
        },
        schema={"run_id": pl.String, "text_kind": pl.String, "text_id": pl.String, "text": pl.String,
                "flagged": pl.Boolean, "rule": pl.String, "matched": pl.String, "lexicon_version": pl.String},
    )


@dataclass
class PhotoGuard:
    classifier: ChildPhotoClassifier
    threshold: float
    cv: dict[str, float]

    def score(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        return self.classifier.predict(photo_inputs(features, logits))


def train_photo_guard(features: np.ndarray, logits: np.ndarray, label: np.ndarray, folds: int = 5,
                      seed: int = 0, recall: float = LEGAL_RECALL_FLOOR,
                      config: ChildPhotoConfig = ChildPhotoConfig()) -> PhotoGuard:
    """Fit on all train photos; pick the threshold out of fold for ``recall``."""
    x = photo_inputs(features, logits)
    fold = np.arange(len(x)) % folds
    np.random.default_rng(seed).shuffle(fold)
    oof = np.zeros(len(x), dtype=np.float32)
    for k in range(folds):
        tr, va = fold != k, fold == k
        oof[va] = ChildPhotoClassifier.fit(x[tr], label[tr], config).predict(x[va])
    threshold = threshold_for_recall(oof, label, recall)
    cv = {"oof_roc_auc": roc_auc(oof, label), "threshold": threshold,
          **{f"oof_{k}": v for k, v in precision_recall_at(oof, label, threshold).items()}}
    return PhotoGuard(ChildPhotoClassifier.fit(x, label, config), threshold, cv)


# ---------------------------------------------------------------- Prefect tasks

from pathlib import Path  # noqa: E402

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.load import append_run_rows  # noqa: E402
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
def photo_guard_task(db: Path, run_id: str, images) -> PhotoGuard:
    """Learn 'shows a child' on train photos, flag the gallery, audit both."""
    with connect(db) as con:
        train = con.execute("""
            SELECT p.image, r.image IS NOT NULL AS child
            FROM stg_photos p LEFT JOIN restricted_train_photos r USING (image)
            WHERE p.split = 'train' AND p.is_valid ORDER BY p.image""").pl()
        gallery = con.execute("SELECT image FROM gallery ORDER BY image").pl()["image"].to_list()
        # Test photos' labels come from their own five captions: reporting only, never fitting.
        test_labels = con.execute("""
            SELECT q.written_for_image AS image, bool_or(f.flagged) AS child
            FROM stg_test_queries q JOIN text_flags f
              ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            GROUP BY 1""", [run_id]).pl()
    ti = images.rows("train", train["image"].to_list())
    guard = train_photo_guard(images.features[ti], images.logits[ti], train["child"].to_numpy().astype(np.float32))
    gi = images.rows("test", gallery)
    score = guard.score(images.features[gi], images.logits[gi]) if gallery else np.zeros(0, np.float32)
    flags = pl.DataFrame({"run_id": run_id, "image": gallery, "score": score.astype(np.float64),
                          "threshold": guard.threshold, "restricted": score >= guard.threshold},
                         schema={"run_id": pl.String, "image": pl.String, "score": pl.Float64,
                                 "threshold": pl.Float64, "restricted": pl.Boolean})
    metrics = [{"head": "guard", "protocol": "oof_train_photos", "metric": k, "value": float(v)}
               for k, v in guard.cv.items()]
    lab = dict(zip(test_labels["image"], test_labels["child"]))
    known = [g for g in gallery if g in lab]
    if known:
        s = dict(zip(gallery, score))
        ys, ss = np.array([lab[g] for g in known], dtype=bool), np.array([s[g] for g in known])
        test = {"roc_auc": roc_auc(ss, ys), **precision_recall_at(ss, ys, guard.threshold)}
        metrics += [{"head": "guard", "protocol": "test_photos_caption_labels", "metric": k, "value": float(v)}
                    for k, v in test.items()]
    with connect(db) as con:
        append_run_rows(con, "photo_flags", run_id, flags)
        append_run_rows(con, "model_metrics", run_id, pl.DataFrame(metrics).with_columns(
            pl.lit(run_id).alias("run_id"), pl.lit("photo_guard").alias("component")))
    get_run_logger().info("photo guard: threshold %.4f, %d of %d gallery photos restricted, %s",
                          guard.threshold, int(flags["restricted"].sum()), len(gallery), guard.cv)
    return guard
