"""The report's pieces without a browser or a run: the query sample, the plots, number
formatting, the run digest, progress."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import polars as pl

from tasks.progress import Progress, artifact_key, text_bar, track
from tasks.report import ReportConfig, sample_query_ids
from tasks.report_charts import histogram_svg, recall_curves_svg
from tasks.run_digest import count, count_delta, delta, digest_markdown, figure, metric_value, metrics_rows


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


def test_plots_are_well_formed_svg_with_their_legends():
    rng = np.random.default_rng(1)
    hist = histogram_svg([("matching", rng.normal(0.8, 0.05, 50), "#00f"),
                          ("other", rng.normal(0.5, 0.1, 500), "#888")], 20, "Scores & more")
    curve = recall_curves_svg([("bridge", np.linspace(0.2, 1.0, 50), "#f0f", True),
                               ("lgbm", np.linspace(0.1, 1.0, 50), "#0f0", False)], "Retrieval")
    for svg in (hist, curve):
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
    assert "matching (n=50)" in hist and "Scores &amp; more" in hist
    assert "bridge (chosen): R@1 0.20, R@10 0.35" in curve
    # Same figures, same bytes: no dates or random ids in the page.
    assert curve == recall_curves_svg([("bridge", np.linspace(0.2, 1.0, 50), "#f0f", True),
                                       ("lgbm", np.linspace(0.1, 1.0, 50), "#0f0", False)], "Retrieval")
    assert "No scores" in histogram_svg([("empty", np.zeros(0), "#000")], 10, "t")


def test_numbers_are_written_for_people():
    assert (count(5.0), count(1100), count(None)) == ("5", "1,100", "–")
    assert figure(0.5107033639143731) == "0.511" and figure(float("nan")) == "–"
    assert (delta(0.64, 0.667), delta(0.7, 0.7), delta(0.5, None)) == ("−0.027", "0", "new")
    assert (count_delta(67, 78), count_delta(8, 8), count_delta(3, None)) == ("−11", "0", "–")
    # Counts stay whole, fractions get three decimals, whatever the metric is called.
    assert metric_value("n_queries", 500.0) == "500" and metric_value("oof_n", 23.0) == "23"
    assert metric_value("folds", 5.0) == "5" and metric_value("recall_at_1", 1.0) == "1.000"
    assert metric_value("threshold", 0.9675347325355159) == "0.968"
    rows = metrics_rows([{"component": "relevance", "head": "bridge", "protocol": "test_queries_filter_off",
                          "metric": "mrr", "value": 0.7708333333333334}])
    assert rows == [{"component": "relevance", "head": "bridge", "protocol": "test queries filter off",
                     "metric": "mrr", "value": "0.771"}]


def test_digest_says_what_changed_and_where_the_report_is():
    summary = {"run_id": "R2", "wall_seconds": 4.6, "head": "bridge", "top_k": 10, "warehouse": "/w/db",
               "images_embedded": 0, "texts_embedded": 0, "stage_seconds": {"ingest": 0.8}}
    digest = {"run_id": "R2", "previous_run": "R1",
              "photos": {"added": 2, "removed": 1, "changed": 0,
                         "examples": {"added": ["test/a.jpg", "test/b.jpg"], "removed": ["train/c.jpg"], "changed": []}},
              "rows": [{"table": "raw_train_pairs", "before": 78, "now": 67, "added": 0, "removed": 11}],
              "stages": [{"stage": "relevance_heads", "reused_from": "R1"}, {"stage": "rank", "reused_from": None}],
              "metrics": [{"label": "recall@1", "protocol": "p", "metric": "recall_at_1", "now": 0.625,
                           "before": 0.75, "changed": True},
                          {"label": "MRR", "protocol": "p", "metric": "mrr", "now": 0.5, "before": 0.5,
                           "changed": False}],
              "compliance": {"queries": 8, "queries_blocked": 2, "result_rows": 30, "result_rows_withheld": 6,
                             "photos_withheld": [{"why": "score ≥ threshold | guard", "photos": 2}]},
              "compliance_before": {"queries_blocked": 1, "result_rows_withheld": 6},
              "inputs": [{"source": "train_dataset.csv", "read": 78, "loaded": 67, "quarantined": 11,
                          "loaded_before": 78}],
              "quarantine": [{"source": "train_dataset.csv", "reason": "image not found", "rows": 11}]}
    md = digest_markdown(summary, digest, {"url": None, "path": "/w/reports/R2/index.html"})
    assert "Compared with run **R1**" in md and "+2 / −1 / 0" in md and "test/a.jpg, test/b.jpg" in md
    assert "| rows of `raw_train_pairs` (added +0, removed −11) | 78 | 67 | −11 |" in md
    assert "| queries blocked by law | 1 | 2 | +1 |" in md
    assert "| recall@1 | 0.750 | 0.625 | −0.125 |" in md and "Figures unchanged at three decimals: MRR." in md
    assert "| relevance heads | reused from run R1 |" in md and "| rank | computed |" in md
    assert "`/w/reports/R2/index.html`" in md and "file://" not in md
    assert "score ≥ threshold \\| guard" in md  # a pipe in a value does not break the table
    first = digest_markdown(summary, {"run_id": "R2", "previous_run": None}, {"url": "http://h:8000/R2/index.html", "path": "/p"})
    assert "first published run" in first and "[open the report](http://h:8000/R2/index.html)" in first


def test_progress_outside_a_run_only_counts():
    assert list(track(range(3), "three things")) == [0, 1, 2]
    with Progress(10, "ten things") as p:
        p.advance(4)
        p.advance(6)
    assert p.done == 10 and p._artifact_id is None
    assert artifact_key("Embedding photos (by shard)") == "embedding-photos-by-shard"
    assert text_bar(0, 4) == "▱" * 20 + " 0 %" and text_bar(2, 4) == "▰" * 10 + "▱" * 10 + " 50 %"


def test_digest_of_a_run_recorded_before_digests_says_so():
    summary = {"run_id": "R0", "wall_seconds": 3.0, "head": "bridge", "warehouse": "/w/db",
               "images_embedded": 1, "texts_embedded": 2}
    md = digest_markdown(summary, {}, None)
    assert "Not recorded for this run" in md and "first published run" not in md
