"""The first stage is exact, blocking changes nothing, and two stages equal the full ranking
when the candidates cover the gallery."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks  # noqa: F401
from models.bridge import Bridge, BridgeConfig
from models.lgbm_head import LgbmConfig, LgbmHead
from models.features import pair_features
from tasks import retrieval as r
from models.relevance_model import FittedModel


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_rows", [7, 64, 1000, 5000])
def test_first_stage_matches_brute_force(block_rows):
    rng = np.random.default_rng(0)
    gallery, queries = unit(rng, 1000, 384), unit(rng, 37, 384)
    idx, scores = r.first_stage(queries, r.matrix_blocks(gallery, block_rows), c=25)
    ref_idx, ref_scores = r.first_stage_exact_reference(queries, gallery, 25)
    assert idx.shape == (37, 25)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_blocked_equals_unblocked_and_parquet_stream(tmp_path):
    rng = np.random.default_rng(1)
    gallery, queries = unit(rng, 3000, 64), unit(rng, 20, 64)
    whole = r.first_stage(queries, r.matrix_blocks(gallery, len(gallery)), c=10)
    blocked = r.first_stage(queries, r.matrix_blocks(gallery, 128), c=10)
    # Three part files, read back as a stream of blocks that do not line up with the files.
    files = []
    for i, (s, e) in enumerate([(0, 1000), (1000, 1700), (1700, 3000)]):
        part = gallery[s:e]
        col = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), 64)
        files.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(pa.table({"v": col}), files[-1], row_group_size=300)
    streamed = r.first_stage(queries, r.parquet_blocks(files, "v", block_rows=256), c=10)
    for other in (blocked, streamed):
        np.testing.assert_array_equal(whole[0], other[0])
        np.testing.assert_allclose(whole[1], other[1], atol=1e-6)


def test_fewer_photos_than_candidates():
    rng = np.random.default_rng(2)
    gallery, queries = unit(rng, 5, 16), unit(rng, 3, 16)
    idx, _ = r.first_stage(queries, r.matrix_blocks(gallery, 2), c=50)
    assert idx.shape == (3, 5)
    assert all(sorted(row) == list(range(5)) for row in idx)
    empty, _ = r.first_stage(queries, [], c=50)
    assert empty.shape == (3, 0)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_scan_keeps_exact_scores_and_high_recall(precision):
    rng = np.random.default_rng(3)
    gallery, queries = unit(rng, 20000, 384), unit(rng, 50, 384)
    ref_idx, ref_scores = r.first_stage_exact_reference(queries, gallery, 100)
    idx, scores = r.first_stage(queries, r.matrix_blocks(gallery, 4096, precision), c=100, precision=precision)
    # The scores of whatever was picked are the float32 ones.
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, idx, 1), atol=1e-5)
    assert r.recall_of(ref_idx[:, :10], idx) >= 0.95


def small_model(rng) -> FittedModel:
    img = np.abs(rng.standard_normal((300, 48))).astype(np.float32)
    txt = unit(rng, 300, 24)
    bridge = Bridge.fit(img, txt, None, BridgeConfig(n_agree=4))
    pi, pt = rng.integers(0, 300, 2000), rng.integers(0, 300, 2000)
    x = pair_features(bridge, img, txt, pi, pt)
    y = (x[:, 0] + 0.3 * rng.standard_normal(len(x)) > 0).astype(np.float32)
    head = LgbmHead.fit(x, y, None, LgbmConfig())
    return FittedModel(bridge, {"lgbm": head}, "lgbm")


@pytest.mark.parametrize("head", ["bridge", "lgbm"])
def test_two_stage_equals_full_ranking_when_candidates_cover_gallery(head):
    rng = np.random.default_rng(4)
    model = small_model(rng)
    img = np.abs(rng.standard_normal((120, 48))).astype(np.float32)
    txt = unit(rng, 15, 24)
    full = model.score_matrix(img, txt, head)  # the pipeline's own full scoring, from image features
    full_idx = np.argsort(-full, axis=1, kind="stable")[:, :10]
    idx, scores, cand = r.two_stage(model, img, txt, 10, r.RetrievalConfig(candidates=500, block_rows=50), head)
    np.testing.assert_array_equal(idx, full_idx)
    np.testing.assert_allclose(scores, np.take_along_axis(full, full_idx, 1), atol=1e-5)
    assert r.recall_of(full_idx, cand) == 1.0
    index = r.matrix_blocks(r.photo_text_vectors(model.bridge, img), 50)
    np.testing.assert_array_equal(r.full_ranking(model, index, txt, 10, head, max_pairs=200), full_idx)


def test_bridge_head_two_stage_is_exact_at_any_candidate_count():
    # The bridge head is a monotone function of the first-stage score, so C >= k suffices.
    rng = np.random.default_rng(5)
    model = small_model(rng)
    img = np.abs(rng.standard_normal((400, 48))).astype(np.float32)
    txt = unit(rng, 12, 24)
    full_idx = np.argsort(-model.score_matrix(img, txt, "bridge"), axis=1, kind="stable")[:, :10]
    idx, _, cand = r.two_stage(model, img, txt, 10, r.RetrievalConfig(candidates=20, block_rows=64), "bridge")
    np.testing.assert_array_equal(idx, full_idx)
    assert r.recall_of(full_idx, cand) == 1.0


def test_rerank_reads_candidate_vectors_from_a_parquet_index(tmp_path):
    rng = np.random.default_rng(6)
    model = small_model(rng)
    img = np.abs(rng.standard_normal((300, 48))).astype(np.float32)
    txt = unit(rng, 9, 24)
    files = r.build_index(tmp_path / "idx", model.bridge, img, [f"p{i}" for i in range(300)],
                          [f"{i:064x}" for i in range(300)], rows_per_part=70)
    assert len(files) == 5 and (tmp_path / "idx" / "_SUCCESS").exists()

    def blocks(precision="fp32"):
        return r.parquet_blocks(files, "text_space", 64, precision)

    cand, _ = r.first_stage(r.query_text_vectors(txt, model.bridge), blocks(), 40)
    idx, scores = r.rerank(model, lambda rows: r.gather_rows(blocks(), rows), txt, cand, 10, "lgbm")
    ref_idx, ref_scores, ref_cand = r.two_stage(model, img, txt, 10, r.RetrievalConfig(candidates=40), "lgbm")
    np.testing.assert_array_equal(cand, ref_cand)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    # The audit reads the same index; the lgbm head's full top-10 is mostly inside the top-40.
    rows = r.first_stage_recall(model, blocks, txt, cand, ["bridge", "lgbm"], [10, 40], n_photos=300)
    got = {(m["head"], m["metric"]): m["value"] for m in rows}
    assert got[("bridge", "recall_of_full_top10_at_10")] == 1.0
    assert 0.0 < got[("lgbm", "recall_of_full_top10_at_40")] <= 1.0
    assert got[("lgbm", "audited_queries")] == 9
