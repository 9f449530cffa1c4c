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
from tasks.rank import WITHHELD_NOTE


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
    # Every query is answered: up to 3 shown photos, or one disclaimer row.
    per_query = res.group_by("query_id").len()
    assert per_query.height == n_queries
    assert set(per_query["len"].to_list()) <= {1, 2, 3}
    ranked = res.filter(pl.col("rank").is_not_null())
    assert ranked.height and ranked["score"].min() >= 0.0 and ranked["score"].max() <= 1.0
    assert ranked["model_score"].min() >= 0.0 and ranked["model_score"].max() <= 1.0
    # Ranks are 1..n in fused-score order within each query.
    for _, g in ranked.group_by("query_id"):
        g = g.sort("rank")
        assert g["rank"].to_list() == list(range(1, g.height + 1))
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


def test_results_contract_shown_photos_and_withheld_audit(tiny_run):
    _, wh, summary = tiny_run
    con = duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True)
    res = con.execute("""
        SELECT r.*, p.restricted FROM latest_search_results r
        LEFT JOIN photo_flags p ON p.run_id = r.run_id AND p.image = r.image
        WHERE r.rank IS NOT NULL""").pl()
    # Only photos the guard lets through are shown, and what is shown is the photo.
    assert res["shown"].all() and (~res["restricted"]).all()
    assert (res["display"] == res["image"]).all() and res["disclaimer"].is_null().all()
    assert set(res["channel"]) <= {"model", "descriptions", "model (no descriptions)"}
    held = con.execute("""
        SELECT w.*, p.restricted FROM latest_withheld_results w
        JOIN photo_flags p ON p.run_id = w.run_id AND p.image = w.image""").pl()
    assert held.height and held["restricted"].all() and held["reason"].is_not_null().all()
    assert con.execute("SELECT count(*) FROM withheld_results WHERE run_id = ?",
                       [summary["run_id"]]).fetchone()[0] == held.height
    every = con.execute("SELECT * FROM latest_search_results").pl()
    for qid, g in every.group_by("query_id"):
        w = held.filter(pl.col("query_id") == qid[0])
        shown = g.filter(pl.col("rank").is_not_null())
        # Before the law, the shown and the withheld photos were exactly the first places.
        places = sorted(shown["model_rank"].to_list() + w["model_rank"].to_list())
        assert places == list(range(1, len(places) + 1))
        # The note is stated once, on the first row, exactly when something was withheld.
        notes = g["note"].drop_nulls().to_list()
        assert notes == ([WITHHELD_NOTE] if w.height else [])
        if w.height and shown.height:
            assert g.sort("rank", nulls_last=True)["note"][0] == WITHHELD_NOTE


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


def test_search_cli_json(tiny_run, tmp_path):
    _, wh, _ = tiny_run
    typed = "  a dog runs on the  grass "  # echoed exactly, spaces and all
    queries = tmp_path / "q.txt"
    queries.write_text("a black dog jumps\n\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "flows.search", typed, "a little boy with a kite", "--queries-file", str(queries),
         "--top-k", "2", "--warehouse", str(wh), "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["query"] for r in rows if r["rank"] in (None, 1)] == [typed, "a little boy with a kite",
                                                                    "a black dog jumps"]
    dog = [r for r in rows if r["query"] == typed]
    assert [r["rank"] for r in dog] == list(range(1, len(dog) + 1)) and 1 <= len(dog) <= 2
    assert all(r["shown"] and r["display"] == r["image"] for r in dog)
    con = duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True)
    restricted = set(con.execute("SELECT image FROM photo_flags WHERE run_id = (SELECT run_id FROM latest_run) "
                                 "AND restricted").pl()["image"])
    assert not {r["image"] for r in rows} & restricted
    assert [r["note"] for r in dog][1:] == [None] * (len(dog) - 1)
    kid = [r for r in rows if r["query"] == "a little boy with a kite"]
    assert kid == [{"query": "a little boy with a kite", "rank": None, "image": None, "score": None,
                    "model_score": None, "description_score": None, "channel": None, "shown": False,
                    "disclaimer": DISCLAIMER, "display": DISCLAIMER, "note": None}]
    table = subprocess.run(
        [sys.executable, "-m", "flows.search", typed, "a little boy with a kite", "--top-k", "2",
         "--warehouse", str(wh)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True).stdout
    assert table.count(WITHHELD_NOTE) == (1 if any(r["note"] for r in dog) else 0)


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
