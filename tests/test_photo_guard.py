"""The photo side of the under-16 law: the child-photo guard and what every output does with it.

Unit tests pin the guard's own promises (the threshold meets the recall floor on the
training folds, with margin; save/load through safetensors; same data -> same guard;
missing or broken scores fail closed).  The end-to-end tests read the shared tiny
reindex (``tests/tiny_warehouse.py``): an innocent query whose results include a photo
the guard restricted, blocked queries, the training exclusions, and a gallery photo
that has no verdict at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
import subprocess
import sys

import duckdb
import numpy as np
import polars as pl
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from conftest import PROJECT_ROOT
from models.child_photo import ChildPhotoClassifier, ChildPhotoConfig, photo_inputs, view_block
from tasks.compliance import (LEGAL_RECALL_FLOOR, PhotoGuard, conservative_threshold, recall_lower_bound,
                              stratified_folds, train_photo_guard)
from tasks.config import DISCLAIMER
from tasks.photo_guard import DECIDING_SIGNALS
from tiny_warehouse import tiny_run

INNOCENT = "people at a playground"


# ---------------------------------------------------------------- unit


def synthetic(n: int = 400, d: int = 24, seed: int = 0, shift: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes (~35 % positive): separable only in part, like the real task."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :3] += shift * y[:, None]
    return x, y


def test_recall_lower_bound_is_clopper_pearson():
    # 334 of 344 caught: observed 0.971, one-sided 95 % bound just above 0.95.
    assert recall_lower_bound(344, 10) == pytest.approx(0.9511, abs=5e-4)
    assert recall_lower_bound(344, 0) > recall_lower_bound(344, 5) > recall_lower_bound(344, 20)
    assert recall_lower_bound(0, 0) == 0.0 and recall_lower_bound(5, 5) == 0.0


def test_conservative_threshold_keeps_the_floor_with_margin():
    rng = np.random.default_rng(1)
    label = rng.random(2000) < 0.3
    score = rng.normal(size=2000) + 1.5 * label
    t = conservative_threshold(score, label)
    pos = score[label]
    missed = int((pos < t).sum())
    assert (pos >= t).mean() >= LEGAL_RECALL_FLOOR
    assert recall_lower_bound(len(pos), missed) >= LEGAL_RECALL_FLOOR
    # The highest such threshold: one more positive missed would break the bound.
    assert recall_lower_bound(len(pos), missed + 1) < LEGAL_RECALL_FLOOR


def test_conservative_threshold_with_few_positives_catches_them_all():
    score = np.array([0.9, 0.8, 0.2, 0.1, 0.7, 0.05])
    label = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    assert conservative_threshold(score, label) == pytest.approx(0.7)


def test_stratified_folds_spread_each_class():
    y = np.array([1] * 10 + [0] * 30)
    fold = stratified_folds(y, 5, seed=3)
    for k in range(5):
        assert (y[fold == k] == 1).sum() == 2 and (y[fold == k] == 0).sum() == 6


def test_guard_threshold_meets_recall_on_training_folds():
    x, y = synthetic()
    guard = train_photo_guard(x, y, repeats=2)
    assert guard.cv["oof_recall"] >= LEGAL_RECALL_FLOOR
    assert guard.cv["oof_recall_lower_bound"] >= LEGAL_RECALL_FLOOR
    assert 0.8 < guard.cv["oof_roc_auc"] < 1.0
    assert guard.cv["threshold"] == guard.threshold
    # On fresh photos from the same distribution the floor holds too (the margin at work).
    xt, yt = synthetic(n=3000, seed=7)
    s = guard.score(xt)
    assert (s[yt > 0.5] >= guard.threshold).mean() >= LEGAL_RECALL_FLOOR


def test_guard_is_deterministic():
    x, y = synthetic(n=200)
    a, b = train_photo_guard(x, y, repeats=2), train_photo_guard(x, y, repeats=2)
    assert a.threshold == b.threshold and a.cv == b.cv
    np.testing.assert_array_equal(a.classifier.w, b.classifier.w)


def test_classifier_round_trips_through_safetensors():
    x, y = synthetic(n=150)
    clf = ChildPhotoClassifier.fit(x, y, ChildPhotoConfig(l2=0.1))
    blob = st_save(clf.state_dict())
    again = ChildPhotoClassifier.from_state_dict(st_load(blob))
    np.testing.assert_array_equal(clf.predict(x), again.predict(x))

    guard = PhotoGuard(clf, 0.42, {})
    back = PhotoGuard.from_state_dict(st_load(st_save(guard.state_dict())))
    assert back.threshold == 0.42
    np.testing.assert_array_equal(guard.score(x), back.score(x))


def test_restricted_fails_closed():
    guard = PhotoGuard(ChildPhotoClassifier(np.zeros(2), np.ones(2), np.zeros(2), 0.0), 0.5, {})
    assert guard.restricted(np.array([0.49, 0.5, 0.9, np.nan])).tolist() == [False, True, True, True]


def test_one_class_training_restricts_everything():
    x, _ = synthetic(n=60)
    guard = train_photo_guard(x, np.zeros(60, np.float32), repeats=1)
    assert guard.restricted(guard.score(x)).all()


def test_photo_inputs_shape():
    rng = np.random.default_rng(0)
    f, lg, mx = rng.random((5, 8)), rng.normal(size=(5, 10)), rng.random((5, 8))
    x = photo_inputs(view_block(f, lg), view_block(f, lg, mx))
    assert x.shape == (5, 8 + 10 + 8 + 10 + 8) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x[:, :8], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose((x[:, 8:18] ** 2).sum(1), 1.0, rtol=1e-5)  # sqrt-probabilities


# ---------------------------------------------------------------- end to end (tiny reindex)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def connect(run):
    return duckdb.connect(str(run.db), read_only=True)


def test_every_gallery_photo_has_an_auditable_verdict(run):
    """One photo_flags row per gallery photo with every signal's value, the thresholds, the
    decision and the signal that decided it; the decision follows from the audit columns."""
    con = connect(run)
    rid = run.summary["run_id"]
    flags = con.execute("SELECT * FROM photo_flags WHERE run_id = ?", [rid]).pl()
    gallery = con.execute("SELECT image FROM gallery").pl()["image"].to_list()
    assert sorted(flags["image"].to_list()) == sorted(gallery)
    for col in ("threshold", "image_threshold", "face_gate"):
        assert flags[col].is_not_null().all() and flags[col].n_unique() == 1, col
    assert flags["image_score"].is_not_null().all()
    assert set(flags["deciding_signal"]) <= set(DECIDING_SIGNALS)
    desc = flags["descriptions_flagged"] > 0
    # Each gallery photo's own descriptions are its saved queries (`<image>#<n>`): one each here.
    assert (flags["n_descriptions"] == 1).all()
    assert (flags.filter(desc)["restricted"]).all() and (flags.filter(desc)["deciding_signal"] == "description").all()
    assert flags.filter(desc)["description_id"].is_not_null().all() and flags.filter(desc)["description_rule"].is_not_null().all()
    assert (flags["face_checked"] == (flags["image_score"] >= flags["face_gate"])).all()
    cleared = flags.filter(~desc & ~pl.col("face_checked"))
    assert (~cleared["restricted"]).all() and (cleared["deciding_signal"] == "image_classifier").all()
    assert cleared["score"].is_null().all() and cleared["n_faces"].is_null().all()
    judged = flags.filter(~desc & pl.col("face_checked"))
    # The tiny photos are 64 x 48 px colour fields: no face in any of them (a value, not a missing signal).
    assert (judged["n_faces"] == 0).all() and judged["youngest_age"].is_null().all()
    assert (judged["restricted"] == (judged["score"] >= judged["threshold"])).all()
    assert flags["restricted"].any(), "the tiny gallery has child scenes; the guard must restrict some"
    metrics = con.execute("""SELECT head, protocol, metric, value FROM model_metrics
                             WHERE run_id = ? AND component = 'photo_guard'""", [rid]).pl()
    got = {(h, p, m) for h, p, m in zip(metrics["head"], metrics["protocol"], metrics["metric"])}
    for key in [("image", "oof_train_photos", "oof_roc_auc"), ("image", "oof_train_photos", "threshold"),
                ("image", "oof_train_photos", "oof_recall"), ("image_face", "oof_train_photos", "threshold"),
                ("image_face", "oof_train_photos", "face_gate"), ("image_face", "oof_train_photos", "oof_recall"),
                ("guard", "oof_train_photos", "recall"), ("guard", "oof_train_photos", "clean_withheld"),
                ("image", "test_photos_caption_labels", "roc_auc"), ("guard", "test_photos_caption_labels", "recall"),
                ("image_face", "test_photos_caption_labels", "clean_withheld"),
                ("guard", "gallery_decisions", "restricted_by_description")]:
        assert key in got, key
    value = lambda h, p, m: metrics.filter((pl.col("head") == h) & (pl.col("protocol") == p)  # noqa: E731
                                           & (pl.col("metric") == m))["value"][0]
    assert value("guard", "oof_train_photos", "threshold") == pytest.approx(flags["threshold"][0])
    assert value("image", "oof_train_photos", "threshold") == pytest.approx(flags["image_threshold"][0])
    assert value("image_face", "oof_train_photos", "face_gate") == pytest.approx(flags["face_gate"][0])
    assert value("guard", "gallery_decisions", "restricted") == flags["restricted"].sum()
    # The fitted guard of this run is kept, with the same thresholds.
    saved = st_load((run.warehouse / "models" / "photo_guard" / f"{rid}.safetensors").read_bytes())
    assert float(saved["threshold"][0]) == pytest.approx(flags["threshold"][0])
    assert float(saved["image.threshold"][0]) == pytest.approx(flags["image_threshold"][0])


def test_both_views_embedded_in_one_pass(run):
    """The embedding step decodes each photo once and fills both caches (relevance view and
    guard view) chunk by chunk: the two caches hold the same photos, in parts of the same
    chunks, and the guard view has its three outputs."""
    import pyarrow.parquet as pq

    def parts(kind: str) -> list[Path]:
        (folder,) = (run.warehouse / "embeddings" / kind).iterdir()
        return sorted(folder.glob("part-*.parquet"))

    image, guard = parts("image"), parts("photo_guard")
    digest = lambda ps: sorted(p.stem.rsplit("-", 1)[1] for p in ps)  # noqa: E731  (hash of the chunk's keys)
    assert image and digest(image) == digest(guard)
    keys = lambda ps: sorted(k for p in ps for k in pq.read_table(p, columns=["sha256"]).column(0).to_pylist())  # noqa: E731
    assert keys(image) == keys(guard)
    assert pq.read_schema(guard[0]).names == ["sha256", "features", "max_features", "logits"]


def test_innocent_query_never_shows_a_restricted_photo_and_audits_it(run):
    """Nightly table (results contract, issue 12 part 3): an allowed query's rows are the
    photos that may be shown, ranked 1..n among themselves; a restricted photo that would
    have ranked above them is recorded in withheld_results with its rank and reason."""
    from tasks.rank import WITHHELD_NOTE

    con = connect(run)
    rows = con.execute("""
        SELECT r.*, coalesce(p.restricted, true) AS restricted FROM latest_search_results r
        JOIN text_flags f ON f.run_id = r.run_id AND f.text_kind = 'query' AND f.text_id = r.query_id
        LEFT JOIN photo_flags p ON p.run_id = r.run_id AND p.image = r.image
        WHERE NOT f.flagged AND r.rank IS NOT NULL""").pl()
    assert rows.height > 0 and not rows["restricted"].any() and rows["shown"].all()
    for _, g in rows.group_by("query_id"):
        assert sorted(g["rank"].to_list()) == list(range(1, g.height + 1))
    held = con.execute("""SELECT w.*, p.restricted FROM latest_withheld_results w
                          JOIN photo_flags p ON p.run_id = w.run_id AND p.image = w.image""").pl()
    assert held.height > 0 and held["restricted"].all()
    noted = set(con.execute("SELECT query_id FROM latest_search_results WHERE note = ?",
                            [WITHHELD_NOTE]).pl()["query_id"])
    assert noted == set(held["query_id"])


def test_adhoc_innocent_query_never_shows_a_restricted_photo(run):
    from flows.search import run_search

    con = connect(run)
    restricted = set(con.execute("""SELECT image FROM photo_flags
                                    WHERE run_id = (SELECT run_id FROM latest_run) AND restricted""").pl()["image"])
    n = con.execute("SELECT count(*) FROM gallery").fetchone()[0]
    rows = run_search([INNOCENT], run.warehouse, k=n)  # the whole gallery: every restricted photo is ranked
    assert len(restricted) > 0
    assert [r["rank"] for r in rows] == list(range(1, n - len(restricted) + 1))
    assert all(r["shown"] and r["display"] == r["image"] for r in rows)
    assert not {r["image"] for r in rows} & restricted
    assert rows[0]["note"] and DISCLAIMER in rows[0]["note"] and not any(r["note"] for r in rows[1:])


def test_blocked_query_gets_exactly_one_disclaimer_row(run):
    con = connect(run)
    blocked = con.execute("""
        SELECT r.query_id, count(*) AS n, bool_and(r.display = ?) AS disclaimer, bool_and(r.image IS NULL) AS no_image,
               bool_and(r.rank IS NULL) AS no_rank
        FROM latest_search_results r
        JOIN text_flags f ON f.run_id = r.run_id AND f.text_kind = 'query' AND f.text_id = r.query_id
        WHERE f.flagged GROUP BY 1""", [DISCLAIMER]).pl()
    assert blocked.height > 0
    assert (blocked["n"] == 1).all() and blocked["disclaimer"].all() and blocked["no_image"].all()
    assert blocked["no_rank"].all()

    out = subprocess.run([sys.executable, "-m", "flows.search", "a little girl in a pink dress", INNOCENT,
                          "--top-k", "3", "--warehouse", str(run.warehouse), "--json"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    girl = [r for r in rows if r["query"] == "a little girl in a pink dress"]
    assert girl == [{"query": "a little girl in a pink dress", "rank": None, "image": None, "score": None,
                     "model_score": None, "description_score": None, "channel": None, "shown": False,
                     "disclaimer": DISCLAIMER, "display": DISCLAIMER, "note": None}]
    innocent = [r for r in rows if r["query"] == INNOCENT]
    assert [r["rank"] for r in innocent] == list(range(1, len(innocent) + 1))
    assert all(r["shown"] and r["display"] == r["image"] for r in innocent)


def test_training_exclusions_list_every_removed_pair_with_a_reason(run):
    con = connect(run)
    rid = run.summary["run_id"]
    # Every judged pair with a flagged caption, and every pair of a restricted photo, is listed.
    missing = con.execute("""
        SELECT count(*) FROM relevance_targets t
        LEFT JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'caption' AND f.text_id = t.caption_id
        LEFT JOIN restricted_train_photos r ON r.image = t.image
        ANTI JOIN training_exclusions e ON e.image = t.image AND e.caption_id = t.caption_id
        WHERE coalesce(f.flagged, false) OR r.image IS NOT NULL""", [rid]).fetchone()[0]
    assert missing == 0
    ex = con.execute("SELECT * FROM training_exclusions").pl()
    assert ex.height > 0 and ex["reason"].is_not_null().all() and ex["rule"].is_not_null().all()
    assert set(ex["reason"]) <= {"caption describes a child", "photo shows a child (own_caption)",
                                 "photo shows a child (matched_caption)"}
    # A photo whose own caption is flagged is restricted and leaves the training photos.
    own = set(con.execute("""
        SELECT c.described_image FROM stg_captions c JOIN text_flags f
          ON f.run_id = ? AND f.text_kind = 'caption' AND f.text_id = c.caption_id AND f.flagged""", [rid]).pl()["described_image"])
    assert own and own <= set(con.execute("SELECT image FROM restricted_train_photos").pl()["image"])
    assert not own & set(con.execute("SELECT image FROM training_photos").pl()["image"])
    leaked = con.execute("""SELECT count(*) FROM training_pairs p JOIN training_exclusions e USING (image, caption_id)""").fetchone()[0]
    assert leaked == 0


def test_gallery_photo_without_a_verdict_is_hidden(run, tmp_path):
    """A photo that reaches the gallery with no photo_flags row (added later, a failed
    guard) is treated as restricted by the search command: fail closed."""
    from flows.search import run_search

    wh = tmp_path / "wh"
    shutil.copytree(run.warehouse, wh, ignore=shutil.ignore_patterns("reports", "exports"))
    con = duckdb.connect(str(wh / "with_sense.duckdb"))
    free = con.execute("""SELECT image FROM photo_flags WHERE run_id = (SELECT run_id FROM latest_run)
                          AND NOT restricted ORDER BY image LIMIT 1""").fetchone()
    assert free is not None, "need one unrestricted photo to take the verdict from"
    con.execute("DELETE FROM photo_flags WHERE image = ?", [free[0]])
    n = con.execute("SELECT count(*) FROM gallery").fetchone()[0]
    con.close()
    rows = run_search([INNOCENT], wh, k=n)
    assert free[0] not in {r["image"] for r in rows}
    assert rows[0]["note"] and all(r["shown"] for r in rows)
