"""The description channel and its fusion on tiny synthetic data: leave-own-out, the
fallback for photos without descriptions, the three protocols, the results contract."""

from __future__ import annotations

import numpy as np
import pytest

import tasks  # noqa: F401
from models.bridge import l2n
from models.fusion import Fusion
from tasks import train as T
from tasks.config import DISCLAIMER
from tasks.descriptions import (DescriptionSet, description_scores, fusion_folds, pair_description_scores,
                                top_description_candidates)
from tasks.evaluate import fusion_protocols
from tasks.rank import WITHHELD_NOTE, Ranked, build_results

from test_train import CONFIG, synthetic


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_own_description_is_left_out_and_max_mean_by_hand():
    # Photo 0: descriptions a (id "p0#0") and b ("p0#1"); photo 1: c ("p1#0"); photo 2: none.
    a, b, c = unit([1, 0, 0]), unit([0, 1, 0]), unit([1, 1, 0])
    descs = DescriptionSet.build([1, 0, 0], ["p1#0", "p0#0", "p0#1"], np.stack([c, a, b]), n_photos=3)
    q = np.stack([a, a])
    mx, mn = description_scores(q, descs, ["p0#0", None])
    # Query 0 is description "p0#0": photo 0 keeps only b; photo 1 keeps c.
    assert mx[0, 0] == pytest.approx(0.0) and mn[0, 0] == pytest.approx(0.0)
    assert mx[0, 1] == pytest.approx(1 / np.sqrt(2))
    # Query 1 leaves nothing out: photo 0 has a (cos 1) and b (cos 0).
    assert mx[1, 0] == pytest.approx(1.0) and mn[1, 0] == pytest.approx(0.5)
    assert np.isnan(mx[:, 2]).all() and np.isnan(mn[:, 2]).all()          # no descriptions: missing
    # A photo whose only description is the query itself has none left.
    mx1, _ = description_scores(c[None], descs, ["p1#0"])
    assert np.isnan(mx1[0, 1])
    # Photos without descriptions come last among description candidates.
    assert top_description_candidates(mx[1:], 3)[0].tolist() == [0, 1, 2]


def test_training_pairs_leave_their_own_caption_out():
    ts = synthetic(seed=1, n_photos=12, n_extra_texts=4)
    mx, mn = pair_description_scores(ts.txt, ts.described_image, len(ts.img), ts.pair_img, ts.pair_txt)
    own = ts.described_image[ts.pair_txt] == ts.pair_img
    # Each synthetic photo has exactly one description (its own caption): judged against it, none is left.
    assert own.any() and np.isnan(mx[own]).all() and np.isnan(mn[own]).all()
    other = ~own
    expect = (l2n(ts.txt[ts.pair_txt[other]]) * l2n(ts.txt[ts.pair_img[other]])).sum(1)  # photo p's caption is text p
    np.testing.assert_allclose(mx[other], expect, atol=1e-5)


def test_fusion_folds_are_grouped_by_photo():
    ts = synthetic(seed=2, n_photos=30)
    for train, val in fusion_folds(ts.pair_img, 4, 0):
        assert not set(ts.pair_img[train]) & set(ts.pair_img[val])


def informative_gallery(seed=0, n_photos=40, n_desc=3, noise=0.35):
    """Photos with a hidden scene; queries written for one photo each; descriptions close to
    their photo's scene; a model score that knows the scene only weakly."""
    rng = np.random.default_rng(seed)
    scene = l2n(rng.standard_normal((n_photos, 16)))
    desc_vecs = l2n(np.repeat(scene, n_desc, 0) + noise * rng.standard_normal((n_photos * n_desc, 16)))
    owner = np.repeat(np.arange(n_photos), n_desc)
    ids = [f"p{p}#{j}" for p in range(n_photos) for j in range(n_desc)]
    descs = DescriptionSet.build(owner, ids, desc_vecs, n_photos)
    # Each query is its photo's description #0 (so leave-own-out matters).
    queries = desc_vecs[::n_desc]
    correct = np.arange(n_photos)
    weak = (l2n(queries) @ scene.T) + 1.2 * rng.standard_normal((n_photos, n_photos))
    model_scores = 1 / (1 + np.exp(-weak))
    return descs, queries, [ids[p * n_desc] for p in range(n_photos)], correct, model_scores


def fitted_fusion(seed=0) -> Fusion:
    """A fusion fitted on judged pairs drawn like the gallery: the description cosine and the
    model score both say something about the graded label."""
    rng = np.random.default_rng(seed)
    n = 4000
    rel = rng.random(n) < 0.3
    desc = np.where(rel, 0.75, 0.1) + 0.15 * rng.standard_normal(n)
    model = 1 / (1 + np.exp(-(np.where(rel, 0.8, -0.5) + 1.0 * rng.standard_normal(n))))
    desc[rng.random(n) < 0.2] = np.nan                                  # some photos have none
    target = np.clip(rel * 0.9 + 0.05 + 0.05 * rng.standard_normal(n), 0, 1)
    return Fusion.fit("logistic_max_mean", model, desc, desc, target, np.full(n, 3.0))


def test_three_protocols_descriptions_help_and_removing_them_gives_the_model():
    descs, queries, own_ids, correct, model_scores = informative_gallery()
    f = fitted_fusion()
    out = fusion_protocols(model_scores, f.score, descs, queries, own_ids, correct)
    p1, p2, p3 = (out[p] for p in ("p1_model_alone", "p2_product_own_description_left_out",
                                   "p3_product_no_descriptions"))
    assert p2["recall_at_1"] > p1["recall_at_1"] + 0.2         # the channel adds what the model lacks
    assert p3 == p1                                             # no descriptions: exactly the model
    # Leave-own-out is real: with the own description kept, every query finds its photo first.
    kept = fusion_protocols(model_scores, f.score, descs, queries, [None] * len(queries), correct)
    assert kept["p2_product_own_description_left_out"]["recall_at_1"] == 1.0
    assert p2["recall_at_1"] < 1.0 or kept["descriptions_only_own_left_out"]["recall_at_1"] == 1.0


def test_photo_without_descriptions_falls_back_to_the_model_without_penalty():
    f = fitted_fusion()
    m = np.linspace(0.02, 0.98, 50)
    none = f.score(m, np.full(50, np.nan), np.full(50, np.nan))
    assert (np.diff(none) > 0).all()                            # the model's order, strictly
    # No penalty: at the same model score, an undescribed photo scores like the average
    # described photo drawn as in training (its descriptions as often for as against).
    rng = np.random.default_rng(5)
    rel = rng.random(20000) < 0.3
    desc = np.where(rel, 0.75, 0.1) + 0.15 * rng.standard_normal(20000)
    for s in (0.3, 0.5, 0.7):
        with_d = f.score(np.full(20000, s), desc, desc)
        # The fallback is P(match | model score); the description model averaged over the
        # descriptions' distribution estimates the same probability (up to the model score's
        # own association with relevance, which the average ignores): same ballpark.
        assert abs(float(f.score(np.array([s]), np.array([np.nan]), np.array([np.nan]))[0])
                   - float(with_d.mean())) < 0.15
    # And a Fusion round-trips through its JSON form.
    back = Fusion.from_dict(f.to_dict())
    np.testing.assert_array_equal(back.score(m, none, none), f.score(m, none, none))


def test_training_fits_a_fusion_per_head_on_out_of_fold_scores():
    ts = synthetic(seed=0, n_photos=60)
    cv = T.cross_validate(ts, CONFIG)
    fusions, rows = T.fusion_table(ts, cv, CONFIG)
    assert set(fusions) == set(T.HEADS)
    chosen = [r for r in rows if r["protocol"] == "fusion_selection"]
    assert len(chosen) == len(T.HEADS)
    assert {r["protocol"] for r in rows} == {"fusion_oof_grouped_by_photo", "fusion_selection"}
    for f in fusions.values():
        assert f.fallback_coef > 0


def ranked(rows, scores):
    rows = np.asarray(rows)
    s = np.asarray(scores, np.float32)
    return Ranked(rows, s, s, np.full(len(rows), np.nan), np.full(len(rows), "model", dtype=object))


def test_results_contract_shows_top_k_allowed_and_audits_the_withheld():
    gallery = [f"g{i}.jpg" for i in range(6)]
    restricted = np.array([True, False, True, False, False, True])
    reasons = ["faces"] * 6
    r = {0: ranked([0, 1, 2, 3, 4, 5], [.9, .8, .7, .6, .5, .4]),   # two restricted above the 2nd shown
         1: ranked([1, 3, 0, 4, 2, 5], [.9, .8, .7, .6, .5, .4]),   # none above: nothing withheld
         2: ranked([0, 2, 5], [.9, .8, .7])}                        # nothing may be shown
    res, held = build_results("run", ["q0", "q1", "q2", "q3"], ["a", "b", "c", "kids"],
                              [False, False, False, True], gallery, restricted, reasons, r, k=2)
    q0 = res.filter(res["query_id"] == "q0")
    assert q0["image"].to_list() == ["g1.jpg", "g3.jpg"] and q0["rank"].to_list() == [1, 2]
    assert q0["model_rank"].to_list() == [2, 4] and q0["shown"].all()
    assert q0["note"].to_list() == [WITHHELD_NOTE, None]                 # stated once
    assert DISCLAIMER in WITHHELD_NOTE
    assert held.filter(held["query_id"] == "q0").select("image", "model_rank", "reason").rows() == [
        ("g0.jpg", 1, "faces"), ("g2.jpg", 3, "faces")]
    q1 = res.filter(res["query_id"] == "q1")
    assert q1["image"].to_list() == ["g1.jpg", "g3.jpg"] and q1["note"].is_null().all()
    assert held.filter(held["query_id"] == "q1").height == 0             # g0 ranked below the 2nd shown
    q2 = res.filter(res["query_id"] == "q2")
    assert q2.height == 1 and q2["image"][0] is None and q2["display"][0] == DISCLAIMER
    assert q2["note"][0] == WITHHELD_NOTE and held.filter(held["query_id"] == "q2").height == 3
    q3 = res.filter(res["query_id"] == "q3")                             # a child query: the disclaimer only
    assert q3.rows(named=True) == [{**{c: None for c in res.columns}, "run_id": "run", "query_id": "q3",
                                    "query_text": "kids", "shown": False, "disclaimer": DISCLAIMER,
                                    "display": DISCLAIMER, "blocked_reason": "query describes a child"}]
    assert not set(res.filter(res["shown"])["image"]) & {g for g, x in zip(gallery, restricted) if x}
