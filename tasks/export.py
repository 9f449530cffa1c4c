"""Finish a run: record it, export Parquet, write the model card and a summary."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.config import SEED
from tasks.run_changes import describe_run
from tasks.run_digest import metrics_rows
from tasks.atomic import atomic_write_bytes, atomic_write_parquet
from tasks.warehouse import Warehouse, connect, staged_exports_dir

EXPORTS = {
    "search_results": "SELECT * FROM search_results WHERE run_id = ? ORDER BY query_id, rank NULLS FIRST",
    "model_metrics": "SELECT * FROM model_metrics WHERE run_id = ? ORDER BY component, protocol, head, metric",
    "quarantine": "SELECT * FROM quarantine WHERE run_id = ? ORDER BY source, line_no",
    "ingest_ledger": "SELECT * FROM ingest_ledger WHERE run_id = ? ORDER BY source",
    "text_flags": "SELECT * FROM text_flags WHERE run_id = ? ORDER BY text_kind, text_id",
    "photo_flags": "SELECT * FROM photo_flags WHERE run_id = ? ORDER BY image",
    "withheld_results": "SELECT * FROM withheld_results WHERE run_id = ? ORDER BY query_id, model_rank",
}
HEADLINE = [
    ("relevance", "oof_grouped_by_photo", "expert_kendall_tau_c"),
    ("relevance", "oof_grouped_by_photo", "expert_spearman"),
    ("relevance", "oof_grouped_by_photo", "crowd_kendall_tau_b"),
    ("relevance", "oof_strict_captions", "expert_kendall_tau_c"),
    ("relevance", "test_queries_filter_off", "recall_at_1"),
    ("relevance", "test_queries_filter_off", "recall_at_5"),
    ("relevance", "test_queries_filter_off", "recall_at_10"),
    ("relevance", "test_queries_filter_off", "mrr"),
]


def model_card_markdown(card: dict) -> str:
    """The model card dict (as written to ``model_card.json``) as Markdown: settings, then a table of every
    metric."""
    lines = [f"# Model card: run {card['run_id']}", "",
             f"- chosen head: **{card['head']}** (by {card['selection']}, on training folds only)",
             f"- encoders: {card['image_encoder']} (images), {card['text_encoder']} (texts), both frozen",
             f"- training data: {card['data']}", f"- seed: {card['seed']}",
             f"- training settings: {json.dumps(card.get('training', {}), sort_keys=True)}", "",
             "| head | protocol | metric | value |", "|---|---|---|---|"]
    for m in card["metrics"]:
        lines.append(f"| {m['head']} | {m['protocol']} | {m['metric']} | {m['value']:.4f} |")
    return "\n".join(lines) + "\n"


def format_summary(s: dict) -> str:
    """The run summary (``finish_run_task``'s dict) as the lines printed at the end of a reindex."""
    lines = [f"reindex {s['run_id']} finished in {s['wall_seconds']:.1f} s",
             f"  warehouse: {s['warehouse']}  (exports in {s['exports']})"]
    for r in s["ledger"]:
        lines.append(f"  {r['source']:<22} read {r['rows_read']:>6}  loaded {r['rows_loaded']:>6}  "
                     f"quarantined {r['rows_quarantined']:>4}")
    lines.append(f"  embedded this run: {s['images_embedded']} photos, {s['texts_embedded']} texts "
                 "(the rest from earlier runs' cache)")
    c, r = s["compliance"], s["results"]
    lines.append(f"  compliance: {c.get('queries_flagged', '?')} queries and {c.get('captions_flagged', '?')} captions "
                 f"flagged; {c['gallery_photos_restricted']} gallery photos restricted "
                 f"(photo guard threshold {c['photo_threshold']:.3f})")
    lines.append(f"  head: {s['head']}  (retrieval figures: all test queries, compliance filter off)")
    for (comp, protocol, metric), v in zip(HEADLINE, s["headline"]):
        lines.append(f"  {protocol:<26} {metric:<22} {'–' if v is None else f'{v:.3f}'}")
    lines.append(f"  results: {r['queries']} queries, {r['blocked_queries']} blocked; {r['rows']} rows, "
                 f"{r['shown_rows']} shown, {r['hidden_photo_rows']} photos withheld by law")
    if s.get("stage_seconds"):
        lines.append("  seconds by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in s["stage_seconds"].items()))
    if s.get("reused"):
        lines.append("  stages: " + ", ".join(f"{k} {'reused from ' + v if v else 'computed'}"
                                               for k, v in s["reused"].items()))
    return "\n".join(lines)


def con_rows(db: Path, sql: str, params: list) -> list[tuple]:
    """All rows of ``sql`` with ``params`` on a fresh connection to ``db``."""
    with connect(db) as con:
        return con.execute(sql, params).fetchall()


@task(name="finish-run", cache_policy=NO_CACHE)
def finish_run_task(db: Path, run_id: str, wh: Warehouse, ledger: pl.DataFrame, flags: dict, images, texts,
                    model, guard, results: pl.DataFrame, wall_seconds: float,
                    stage_seconds: dict[str, float] | None = None) -> dict:
    """Prefect task: close the run and return its summary.

    Reads the run's ``model_metrics`` and export tables from ``db``; writes ``model_card.json`` /
    ``.md`` to the run's report folder, the exports as staged Parquet files (published with the
    database), the ``runs`` row (finish time, head, counts, ``wall_seconds``, summary JSON) and
    the ``reindex-metrics`` artifact.
    """
    with connect(db) as con:
        metrics = con.execute("SELECT component, head, protocol, metric, value FROM model_metrics "
                              "WHERE run_id = ? ORDER BY component, protocol, head, metric", [run_id]).pl()
        frames = {name: con.execute(sql, [run_id]).pl() for name, sql in EXPORTS.items()}
        data = con.execute("SELECT count(*) FROM training_pairs").fetchone()[0]
    chosen = metrics.filter((pl.col("component") == "relevance") & (pl.col("head") == model.head))
    headline = []
    for comp, protocol, metric in HEADLINE:
        hit = chosen.filter((pl.col("protocol") == protocol) & (pl.col("metric") == metric))
        headline.append(float(hit["value"][0]) if hit.height else None)
    shown = results.filter(pl.col("shown"))
    summary = {
        "run_id": run_id,
        "warehouse": str(wh.db_path),
        "exports": str(wh.exports_dir),
        "wall_seconds": wall_seconds,
        "ledger": ledger.select("source", "rows_read", "rows_loaded", "rows_quarantined").to_dicts(),
        "images_embedded": images.n_computed,
        "texts_embedded": texts.n_computed,
        "compliance": {**flags, "gallery_photos_restricted": int(frames["photo_flags"]["restricted"].sum()),
                       "photo_threshold": round(guard.threshold, 6)},
        "head": model.head,
        "headline": headline,
        "results": {"rows": results.height, "queries": results["query_id"].n_unique(),
                    "blocked_queries": int(results["rank"].is_null().sum()),
                    # Results contract: a withheld photo is not a result row; withheld_results audits it.
                    "shown_rows": shown.height, "hidden_photo_rows": frames["withheld_results"].height},
        # Seconds per stage up to this one (flows/reindex.py), and which stages reused earlier output.
        "stage_seconds": stage_seconds or {},
        "reused": dict(con_rows(db, "SELECT stage, reused_from FROM run_stages WHERE run_id = ? ORDER BY stage",
                                [run_id])),
    }
    card = {"run_id": run_id, "head": model.head, "selection": "expert_kendall_tau_c out of fold",
            "fingerprint": model.fingerprint, "image_encoder": images.encoder, "text_encoder": texts.encoder,
            "data": {"training_pairs": data}, "seed": SEED, "training": getattr(model, "settings", {}),
            "metrics": metrics.to_dicts()}
    report_dir = wh.reports_dir / run_id
    atomic_write_bytes(json.dumps(card, indent=2).encode(), report_dir / "model_card.json")
    atomic_write_bytes(model_card_markdown(card).encode(), report_dir / "model_card.md")
    for name, frame in frames.items():
        # Staged: they replace exports/ only once publish() has swapped the database in.
        atomic_write_parquet(frame.to_arrow(), staged_exports_dir(wh, run_id) / f"{name}.parquet")
    # What changed since the previous published run (still the published file: this run's
    # copy replaces it only at publish), read with no other connection to ``db`` open.
    summary["top_k"] = con_rows(db, "SELECT top_k FROM runs WHERE run_id = ?", [run_id])[0][0]
    summary["digest"] = describe_run(db, run_id, model.head, wh.db_path)
    with connect(db) as con:
        con.execute("""UPDATE runs SET finished_at = ?, head = ?, train_fingerprint = ?, images_embedded = ?,
                       texts_embedded = ?, wall_seconds = ?, summary_json = ? WHERE run_id = ?""",
                    [datetime.now(timezone.utc).replace(tzinfo=None), model.head, model.fingerprint,
                     images.n_computed, texts.n_computed, wall_seconds, json.dumps(summary), run_id])
    # The run's summary artifact (reindex-summary) is written by the report task, which knows
    # where the report is.
    create_table_artifact(key="reindex-metrics", table=metrics_rows(metrics.to_dicts()),
                          description=f"Measured figures of run {run_id} (counts as integers, the rest to 3 decimals)")
    return summary
