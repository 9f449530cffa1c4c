"""The report's pieces without a browser or a run: the query sample, the plots, progress."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import polars as pl

from tasks.progress import Progress, artifact_key, track
from tasks.report import ReportConfig, sample_query_ids, svg_curves, svg_histogram


def results_frame(n_queries: int = 30, k: int = 4) -> pl.DataFrame:
    """search_results-shaped rows: every 7th query blocked, photos 3 and 5 restricted."""
    rng = np.random.default_rng(0)
    rows = []
    for q in range(n_queries):
        if q % 7 == 0:
            rows.append({"query_id": f"q{q:02d}", "rank": None, "image": None, "shown": False})
            continue
        for r, g in enumerate(rng.permutation(10)[:k], start=1):
            rows.append({"query_id": f"q{q:02d}", "rank": r, "image": f"{g}.jpg", "shown": g not in (3, 5)})
    return pl.DataFrame(rows, schema={"query_id": pl.String, "rank": pl.Int32, "image": pl.String,
                                      "shown": pl.Boolean})


def test_sample_mixes_blocked_hidden_and_plain_queries_and_is_stable():
    res = results_frame()
    cfg = ReportConfig(sample_queries=8, blocked_examples=2, hidden_examples=3)
    sample = sample_query_ids(res, cfg)
    assert len(sample) == 8 and sample == sample_query_ids(res.sample(fraction=1.0, shuffle=True, seed=1), cfg)
    per_q = res.filter(pl.col("query_id").is_in(sample)).group_by("query_id").agg(
        pl.col("rank").is_null().any().alias("blocked"))
    assert per_q["blocked"].sum() == 2


def test_plots_are_well_formed_svg():
    rng = np.random.default_rng(1)
    hist = svg_histogram([("matching", rng.normal(0.8, 0.05, 50), "#00f"),
                          ("other", rng.normal(0.5, 0.1, 500), "#888")], 20, "Scores & more")
    curve = svg_curves([("bridge", np.linspace(0.2, 1.0, 50), "#f0f", True),
                        ("lgbm", np.linspace(0.1, 1.0, 50), "#0f0", False)], "Retrieval")
    for svg in (hist, curve):
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
    assert "matching (n=50)" in hist and "Scores &amp; more" in hist
    assert "bridge (chosen): R@1 0.20" in curve
    assert "No scores" in svg_histogram([("empty", np.zeros(0), "#000")], 10, "t")


def test_progress_outside_a_run_only_counts():
    assert list(track(range(3), "three things")) == [0, 1, 2]
    with Progress(10, "ten things") as p:
        p.advance(4)
        p.advance(6)
    assert p.done == 10 and p._artifact_id is None
    assert artifact_key("Embedding photos (by shard)") == "embedding-photos-by-shard"
