"""The whole reindex on the tiny dataset, then the search command against its warehouse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from conftest import PROJECT_ROOT, build_dataset
from tasks.config import DISCLAIMER


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("pipeline")
    data = build_dataset(root / "data")
    wh = root / "wh"
    from flows.reindex import reindex

    summary = reindex(data_dir=data, warehouse_dir=wh, top_k=3)
    return data, wh, summary


def test_reindex_writes_every_table(tiny_run):
    data, wh, summary = tiny_run
    con = duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True)
    n_queries = con.execute("SELECT count(*) FROM stg_test_queries").fetchone()[0]
    assert n_queries == 8
    res = con.execute("SELECT * FROM latest_search_results").pl()
    # Every query is answered: top-3 rows, or one disclaimer row when blocked.
    per_query = res.group_by("query_id").len()
    assert per_query.height == n_queries
    assert set(per_query["len"].to_list()) <= {1, 3}
    ranked = res.filter(pl.col("rank").is_not_null())
    assert ranked["score"].min() >= 0.0 and ranked["score"].max() <= 1.0
    # Ranks are 1..k in score order within each query.
    for _, g in ranked.group_by("query_id"):
        g = g.sort("rank")
        assert g["rank"].to_list() == [1, 2, 3]
        assert g["score"].to_list() == sorted(g["score"].to_list(), reverse=True)
    ledger = con.execute("SELECT * FROM ingest_ledger WHERE run_id = ?", [summary["run_id"]]).pl()
    assert (ledger["rows_read"] == ledger["rows_loaded"] + ledger["rows_quarantined"]).all()
    assert con.execute("SELECT count(*) FROM model_metrics WHERE run_id = ?", [summary["run_id"]]).fetchone()[0] > 10
    assert (wh / "exports" / "search_results.parquet").exists()
    assert pl.read_parquet(wh / "exports" / "search_results.parquet").height == res.height


def test_blocked_queries_get_only_the_disclaimer(tiny_run):
    _, wh, _ = tiny_run
    con = duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True)
    blocked = con.execute("""
        SELECT r.* FROM latest_search_results r
        JOIN text_flags f ON f.run_id = r.run_id AND f.text_kind = 'query' AND f.text_id = r.query_id
        WHERE f.flagged""").pl()
    # Two of the eight scenes describe children ("Two boys ...", "A little girl ...").
    assert blocked["query_id"].n_unique() == 2
    assert blocked.height == 2
    assert (blocked["display"] == DISCLAIMER).all() and (blocked["disclaimer"] == DISCLAIMER).all()
    assert blocked["image"].is_null().all() and (~blocked["shown"]).all()


def test_hidden_photos_keep_rank_and_show_disclaimer(tiny_run):
    _, wh, _ = tiny_run
    con = duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True)
    res = con.execute("""
        SELECT r.*, p.restricted FROM latest_search_results r
        JOIN photo_flags p ON p.run_id = r.run_id AND p.image = r.image""").pl()
    assert (res["shown"] == ~res["restricted"]).all()
    hidden = res.filter(~pl.col("shown"))
    assert (hidden["display"] == DISCLAIMER).all()
    shown = res.filter(pl.col("shown"))
    assert (shown["display"] == shown["image"]).all() and shown["disclaimer"].is_null().all()


def test_training_excludes_children(tiny_run):
    _, wh, _ = tiny_run
    con = duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True)
    leaked = con.execute("""
        SELECT count(*) FROM training_pairs t
        JOIN text_flags f ON f.text_kind = 'caption' AND f.text_id = t.caption_id AND f.flagged
        WHERE f.run_id = (SELECT run_id FROM latest_run)""").fetchone()[0]
    assert leaked == 0
    assert con.execute("SELECT count(*) FROM training_exclusions").fetchone()[0] > 0
    restricted = set(con.execute("SELECT image FROM restricted_train_photos").pl()["image"])
    assert restricted and not restricted & set(con.execute("SELECT image FROM training_photos").pl()["image"])


def test_search_cli_json(tiny_run):
    _, wh, _ = tiny_run
    out = subprocess.run(
        [sys.executable, "-m", "flows.search", "a dog runs on the grass", "a little boy with a kite",
         "--top-k", "2", "--warehouse", str(wh), "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    dog = [r for r in rows if r["query"] == "a dog runs on the grass"]
    kid = [r for r in rows if r["query"] == "a little boy with a kite"]
    assert [r["rank"] for r in dog] == [1, 2]
    assert all((r["image"] is None) == (r["display"] == DISCLAIMER) for r in dog)
    assert kid == [{"query": "a little boy with a kite", "rank": None, "image": None, "score": None,
                    "shown": False, "disclaimer": DISCLAIMER, "display": DISCLAIMER}]


def test_second_run_reuses_embeddings_and_heads(tiny_run):
    data, wh, first = tiny_run
    from flows.reindex import reindex

    second = reindex(data_dir=data, warehouse_dir=wh, top_k=3)
    assert second["images_embedded"] == 0 and second["texts_embedded"] == 0
    con = duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True)
    runs = con.execute("SELECT run_id, train_fingerprint FROM runs ORDER BY run_id").pl()
    assert runs.height >= 2 and runs["train_fingerprint"].n_unique() == 1
    a = con.execute("SELECT query_id, rank, image, score FROM search_results WHERE run_id = ? ORDER BY ALL",
                    [first["run_id"]]).pl()
    b = con.execute("SELECT query_id, rank, image, score FROM search_results WHERE run_id = ? ORDER BY ALL",
                    [second["run_id"]]).pl()
    assert a.select("query_id", "rank", "image").equals(b.select("query_id", "rank", "image"))
    np.testing.assert_allclose(a["score"].fill_null(0).to_numpy(), b["score"].fill_null(0).to_numpy(), atol=1e-6)
