"""Training on tiny synthetic arrays: no leakage across folds, exact saving, determinism."""

from __future__ import annotations

import numpy as np
import pytest

import tasks  # noqa: F401
from models.bridge import Bridge, BridgeConfig, l2n
from models.relevance_model import load_model, save_model
from tasks import train as T
from tasks.evaluate import judgment_agreement


def synthetic(seed: int = 0, n_photos: int = 60, n_extra_texts: int = 15) -> T.TrainingSet:
    """Photos and captions that share a hidden scene, judged pairs graded by how close
    their scenes are, some rated by experts (1..4), most by a crowd (share of yes)."""
    rng = np.random.default_rng(seed)
    scene = rng.standard_normal((n_photos + n_extra_texts, 5))
    # Non-negative like pooled ReLU6 activations, but (unlike abs) keeping the scene's sign.
    img = np.logaddexp(0, scene[:n_photos] @ rng.standard_normal((5, 24)) + 0.3 * rng.standard_normal((n_photos, 24)))
    txt = l2n(scene @ rng.standard_normal((5, 12)) + 0.3 * rng.standard_normal((len(scene), 12)))
    described = np.concatenate([np.arange(n_photos), np.full(n_extra_texts, -1)])
    pi, pt = [], []
    for p in range(n_photos):
        for t in rng.choice(len(txt), size=8, replace=False):
            pi.append(p)
            pt.append(t)
        pi.append(p)
        pt.append(p)  # its own caption, judged too
    pi, pt = np.array(pi), np.array(pt)
    sim = (l2n(scene[pi]) * l2n(scene[pt])).sum(1)
    target = np.clip((sim + 1) / 2 + 0.1 * rng.standard_normal(len(pi)), 0, 1).astype(np.float32)
    expert = np.full((len(pi), 3), np.nan)
    rated = rng.random(len(pi)) < 0.5
    expert[rated] = np.clip(np.round(1 + 3 * target[rated, None] + 0.5 * rng.standard_normal((rated.sum(), 3))), 1, 4)
    crowd = np.where(rng.random(len(pi)) < 0.8, np.round(target * 3) / 3, np.nan)
    strong = target >= 0.6
    pos_img = np.concatenate([np.arange(n_photos), pi[strong]])
    pos_txt = np.concatenate([np.arange(n_photos), pt[strong]])
    pos_w = np.concatenate([np.ones(n_photos), target[strong]])
    return T.TrainingSet(img=img.astype(np.float32), txt=txt.astype(np.float32), pair_img=pi, pair_txt=pt,
                         target=target, weight=np.full(len(pi), 3.0, np.float32), expert=expert,
                         crowd_share=crowd, pos_img=pos_img, pos_txt=pos_txt, pos_weight=pos_w, described_image=described)


CONFIG = T.TrainConfig(folds=4, seed=3)


@pytest.fixture(scope="module")
def ts() -> T.TrainingSet:
    return synthetic()


@pytest.mark.parametrize("strict", [False, True])
def test_no_fold_validates_a_photo_its_training_side_used(ts, strict, monkeypatch):
    seen = []
    real = Bridge.fit_loo.__func__

    def spy(cls, img, txt, weight=None, config=BridgeConfig(), groups=None, txt_ref=None):
        seen.append({"photos": set(np.asarray(groups).tolist()), "txt": np.asarray(txt), "txt_ref": np.asarray(txt_ref)})
        return real(cls, img, txt, weight, config, groups, txt_ref)

    monkeypatch.setattr(Bridge, "fit_loo", classmethod(spy))
    cv = T.cross_validate(ts, CONFIG, strict_captions=strict)
    folds = T.photo_folds(len(ts.img), CONFIG.folds, CONFIG.seed)
    tfolds = T.caption_folds(ts, folds, CONFIG.folds, CONFIG.seed)
    assert len(seen) == CONFIG.folds
    for k, fit in enumerate(seen):
        train, val, photo_ok, text_ok = T.fold_split(ts, folds, tfolds, k, strict)
        val_photos = set(ts.pair_img[val].tolist())
        assert val_photos and not (val_photos & fit["photos"])               # the bridge never saw them
        assert not (val_photos & set(ts.pair_img[train].tolist()))           # nor did the heads
        assert photo_ok[ts.pos_img[T.bridge_rows(ts, photo_ok, text_ok)]].all()
        if strict:
            val_txt = set(ts.pair_txt[val].tolist())
            used = set(ts.pair_txt[train].tolist()) | set(ts.pos_txt[T.bridge_rows(ts, photo_ok, text_ok)].tolist())
            assert val_txt and not (val_txt & used)                          # no caption on both sides
            held_out = ts.txt[sorted(val_txt)]
            for side in (fit["txt"], fit["txt_ref"]):                        # not even as a text vector
                assert not (side[:, None, :] == held_out[None, :, :]).all(-1).any()
    # Every validated pair was scored by exactly one fold, and only those.
    ok = ~np.isnan(cv.oof["bridge"])
    assert ok.any()
    for h in T.HEADS:
        np.testing.assert_array_equal(~np.isnan(cv.oof[h]), ok)


def test_strict_protocol_also_measures_retrieval_on_held_out_photos(ts):
    cv = T.cross_validate(ts, CONFIG, strict_captions=True)
    per_fold = np.bincount(T.photo_folds(len(ts.img), CONFIG.folds, CONFIG.seed))
    for h in T.HEADS:
        assert len(cv.ranks[h]) == len(ts.img)  # each photo's own caption is searched once
        assert cv.ranks[h].min() >= 1 and cv.ranks[h].max() <= per_fold.max()
    rows = T.agreement_table(ts, cv, "oof_strict_captions")
    assert {"recall_at_1", "recall_at_10", "mrr"} <= {r["metric"] for r in rows}


def test_the_bridge_learns_the_synthetic_scenes(ts):
    cv = T.cross_validate(ts, CONFIG)
    ok = ~np.isnan(cv.oof["bridge"])
    out = judgment_agreement(cv.oof["bridge"][ok], ts.expert[ok], ts.crowd_share[ok])
    assert out["expert_kendall_tau_c"] > 0.5 and out["crowd_kendall_tau_b"] > 0.5


def test_scores_are_in_unit_interval(ts):
    model = T.fit_final(ts, CONFIG, "bridge")
    for h in T.HEADS:
        s = model.score_matrix(ts.img, ts.txt, h)
        assert s.shape == (len(ts.txt), len(ts.img))
        assert np.isfinite(s).all() and s.min() >= 0.0 and s.max() <= 1.0


def test_save_load_roundtrip_gives_identical_scores(ts, tmp_path):
    model = T.fit_final(ts, CONFIG, "mlp")
    save_model(model, tmp_path / "m", {"metrics": []})
    back = load_model(tmp_path / "m")
    assert back.head == "mlp"
    for h in T.HEADS:
        np.testing.assert_array_equal(model.score_matrix(ts.img, ts.txt, h), back.score_matrix(ts.img, ts.txt, h))


def test_two_fits_give_the_same_scores(ts):
    a, b = T.fit_final(ts, CONFIG, "bridge"), T.fit_final(ts, CONFIG, "bridge")
    for h in T.HEADS:
        np.testing.assert_array_equal(a.score_matrix(ts.img, ts.txt, h), b.score_matrix(ts.img, ts.txt, h))
    cv_a, cv_b = T.cross_validate(ts, CONFIG, strict_captions=True), T.cross_validate(ts, CONFIG, strict_captions=True)
    for h in T.HEADS:
        np.testing.assert_array_equal(cv_a.oof[h], cv_b.oof[h])
        np.testing.assert_array_equal(cv_a.ranks[h], cv_b.ranks[h])


def test_leave_one_out_map_is_the_map_of_a_bridge_that_never_saw_the_photo(ts):
    rows = np.arange(len(ts.pos_img))
    bridge, ids, loo = Bridge.fit_loo(ts.img[ts.pos_img], ts.txt[ts.pos_txt], ts.pos_weight, groups=ts.pos_img,
                                      txt_ref=ts.txt)
    for j in (0, 7, 33):
        w = np.where(ts.pos_img[rows] == ids[j], 0.0, ts.pos_weight)  # the photo's rows count for nothing
        without = Bridge.fit(ts.img[ts.pos_img], ts.txt[ts.pos_txt], w, groups=ts.pos_img, txt_ref=ts.txt)
        np.testing.assert_allclose(without.image_to_text(ts.img[[ids[j]]])[0], loo[j], atol=1e-5)
        assert not np.allclose(bridge.image_to_text(ts.img[[ids[j]]])[0], loo[j], atol=1e-3)


def test_rows_of_one_photo_merge_into_one(ts):
    # Same least squares: duplicating every row with half the weight changes nothing.
    img, txt, w = ts.img[ts.pos_img], ts.txt[ts.pos_txt], ts.pos_weight
    a = Bridge.fit(img, txt, w, txt_ref=ts.txt)
    b = Bridge.fit(np.vstack([img, img]), np.vstack([txt, txt]), np.concatenate([w, w]) / 2, txt_ref=ts.txt)
    np.testing.assert_allclose(a.image_to_text(ts.img), b.image_to_text(ts.img), atol=1e-6)
