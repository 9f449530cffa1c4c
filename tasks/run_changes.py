"""What a run did, in facts a person can check: what changed since the previous published
run, the compliance counts, quarantine and stage reuse.

``describe_run`` reads them from a run's DuckDB file and returns plain, JSON-ready data; the
run page's markdown artifact (``tasks/run_digest.py``) and the HTML report render the same
data.  It is stored in ``runs.summary_json`` under ``"digest"``, so a rebuilt report shows
what the run saw.

Tolerant by design: tables and columns are looked up before they are read, so a warehouse
from before (or after) a change of another stage still gets every section it has data for.
What it reads (each optional):

- history tables: ``runs`` (run_id, finished_at), ``run_stages`` (stage, reused_from),
  ``model_metrics`` (component, head, protocol, metric, value), ``ingest_ledger`` (source,
  rows_read, rows_loaded, rows_quarantined), ``quarantine`` (source, reason),
  ``search_results`` (query_id, rank, shown), ``photo_flags`` (image, restricted, and a
  reason column if any: ``deciding_signal``, ``signal``, ``reason``), ``text_flags``
  (text_kind, flagged, rule), ``withheld_results`` / ``withheld_photos`` if present;
- this run's ``raw_*`` tables and ``raw_photos`` (split, image, sha256), compared with the
  same tables of the previously *published* file (``previous_db``), which a run replaces.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

# Metrics compared between runs, for the chosen head: (protocol, metric, label).
HEADLINE = [
    ("oof_grouped_by_photo", "expert_kendall_tau_c", "expert Kendall τc, out of fold"),
    ("oof_grouped_by_photo", "expert_spearman", "expert Spearman, out of fold"),
    ("oof_grouped_by_photo", "crowd_kendall_tau_b", "crowd Kendall τb, out of fold"),
    ("oof_strict_captions", "expert_kendall_tau_c", "expert τc, unseen captions too"),
    ("test_queries_filter_off", "recall_at_1", "recall@1, all test queries, model alone"),
    ("test_queries_filter_off", "recall_at_5", "recall@5, all test queries, model alone"),
    ("test_queries_filter_off", "recall_at_10", "recall@10, all test queries, model alone"),
    ("test_queries_filter_off", "mrr", "MRR, all test queries, model alone"),
]
# The photo guard's figures compared between runs (the rest are in the metrics table).
GUARD_HEADLINE = ("oof_roc_auc", "oof_recall", "oof_precision", "threshold", "roc_auc", "recall", "precision")
# Columns that differ between runs without the row's content changing.
VOLATILE = {"run_id", "line_no", "loaded_at", "ingested_at", "stat_key"}
PHOTO_REASON_COLUMNS = ("deciding_signal", "signal", "reason")
# A metric change smaller than this is rounding noise in a three-decimal display.
METRIC_EPSILON = 5e-4


def _columns(con: duckdb.DuckDBPyConnection, table: str, catalog: str | None = None) -> list[str]:
    sql = "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
    params = [table]
    if catalog:
        sql += " AND table_catalog = ?"
        params.append(catalog)
    return [r[0] for r in con.execute(sql + " ORDER BY ordinal_position", params).fetchall()]


def _tables(con: duckdb.DuckDBPyConnection, catalog: str) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [catalog]).fetchall()}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def previous_run(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    """The latest finished run before ``run_id`` (run ids sort by their UTC start)."""
    row = con.execute("SELECT max(run_id) FROM runs WHERE finished_at IS NOT NULL AND run_id < ?",
                      [run_id]).fetchone()
    return row[0] if row else None


def photo_changes(con, now: str, prev: str) -> dict:
    """Readable photos added, removed and with new contents, by (split, image); a few names of
    each.  A photo that became unreadable (no content hash) counts as removed."""
    key = "split || '/' || image"
    sql = f"""
        WITH a AS (SELECT {key} AS k, sha256 FROM {_q(now)}.raw_photos WHERE sha256 IS NOT NULL),
             b AS (SELECT {key} AS k, sha256 FROM {_q(prev)}.raw_photos WHERE sha256 IS NOT NULL)
        SELECT (SELECT list(k ORDER BY k) FROM a ANTI JOIN b USING (k)),
               (SELECT list(k ORDER BY k) FROM b ANTI JOIN a USING (k)),
               (SELECT list(a.k ORDER BY a.k) FROM a JOIN b USING (k) WHERE a.sha256 IS DISTINCT FROM b.sha256)"""
    added, removed, changed = (x or [] for x in con.execute(sql).fetchone())
    return {"added": len(added), "removed": len(removed), "changed": len(changed),
            "examples": {"added": added[:5], "removed": removed[:5], "changed": changed[:5]}}


def row_changes(con, now: str, prev: str) -> list[dict]:
    """Per raw table: rows now, rows before, and rows added / removed by content (a multiset
    difference over the columns both versions have, run-specific columns left out)."""
    out = []
    for table in sorted(t for t in _tables(con, now) & _tables(con, prev)
                        if t.startswith("raw_") and t != "raw_photos"):
        cols = [c for c in _columns(con, table, now) if c in set(_columns(con, table, prev)) and c not in VOLATILE]
        if not cols:
            continue
        sel = ", ".join(_q(c) for c in cols)
        a, b = f"{_q(now)}.{_q(table)}", f"{_q(prev)}.{_q(table)}"
        n_now, n_before, added, removed = con.execute(f"""
            SELECT (SELECT count(*) FROM {a}), (SELECT count(*) FROM {b}),
                   (SELECT count(*) FROM (SELECT {sel} FROM {a} EXCEPT ALL SELECT {sel} FROM {b})),
                   (SELECT count(*) FROM (SELECT {sel} FROM {b} EXCEPT ALL SELECT {sel} FROM {a}))""").fetchone()
        out.append({"table": table, "before": n_before, "now": n_now, "added": added, "removed": removed})
    return out


def metric_changes(con, run_id: str, prev: str | None, head: str | None, prev_head: str | None = None) -> list[dict]:
    """The headline figures -- each run's chosen head (``head`` now, ``prev_head`` before) and
    the photo guard's -- now and in ``prev``."""
    rows = con.execute("""
        SELECT component, head, protocol, metric,
               max(value) FILTER (WHERE run_id = ?) AS now, max(value) FILTER (WHERE run_id = ?) AS before
        FROM model_metrics WHERE run_id IN (?, ?) GROUP BY ALL""", [run_id, prev, run_id, prev]).fetchall()
    value = {(c, h, p, m): (now, before) for c, h, p, m, now, before in rows}
    prev_head = prev_head or head
    out = []
    for protocol, metric, label in HEADLINE:
        now = value.get(("relevance", head, protocol, metric), (None, None))[0]
        before = value.get(("relevance", prev_head, protocol, metric), (None, None))[1]
        if now is not None or before is not None:
            out.append({"label": label, "protocol": protocol, "metric": metric, "now": now, "before": before})
    for (c, h, p, m), (now, before) in sorted(value.items()):
        if c == "photo_guard" and m in GUARD_HEADLINE:
            out.append({"label": f"photo guard: {m.replace('_', ' ')} ({p.replace('_', ' ')})", "protocol": p,
                        "metric": m, "now": now, "before": before})
    for r in out:
        r["changed"] = (r["now"] is None) != (r["before"] is None) or (
            r["now"] is not None and abs(r["now"] - r["before"]) >= METRIC_EPSILON)
    return out


def compliance_counts(con, run_id: str) -> dict:
    """Queries blocked (by rule) and photos withheld (and why) in this run's results."""
    out: dict = {}
    tables = _tables(con, _catalog(con))
    if "search_results" in tables:
        q, blocked, rows, hidden = con.execute("""
            SELECT count(DISTINCT query_id), count(DISTINCT query_id) FILTER (WHERE rank IS NULL),
                   count(*) FILTER (WHERE rank IS NOT NULL), count(*) FILTER (WHERE rank IS NOT NULL AND NOT shown)
            FROM search_results WHERE run_id = ?""", [run_id]).fetchone()
        out.update(queries=q, queries_blocked=blocked, result_rows=rows, result_rows_withheld=hidden)
    for name in ("withheld_results", "withheld_photos"):  # the audit table of the new results contract
        if name in tables and "run_id" in _columns(con, name):
            out["result_rows_withheld"] = con.execute(
                f"SELECT count(*) FROM {name} WHERE run_id = ?", [run_id]).fetchone()[0]
    if "text_flags" in tables:
        out["blocked_by_rule"] = [{"rule": r or "(no rule)", "queries": n} for r, n in con.execute("""
            SELECT rule, count(*) AS n FROM text_flags WHERE run_id = ? AND text_kind = 'query' AND flagged
            GROUP BY rule ORDER BY n DESC, rule LIMIT 10""", [run_id]).fetchall()]
        out["captions_flagged"] = con.execute(
            "SELECT count(*) FROM text_flags WHERE run_id = ? AND text_kind = 'caption' AND flagged",
            [run_id]).fetchone()[0]
    if "photo_flags" in tables:
        cols = _columns(con, "photo_flags")
        reason = next((c for c in PHOTO_REASON_COLUMNS if c in cols), None)
        why = f"coalesce(CAST({_q(reason)} AS VARCHAR), 'classifier score ≥ threshold')" if reason \
            else "'classifier score ≥ threshold'"
        out["photos_checked"] = con.execute("SELECT count(*) FROM photo_flags WHERE run_id = ?", [run_id]).fetchone()[0]
        out["photos_withheld"] = [{"why": w, "photos": n} for w, n in con.execute(f"""
            SELECT {why} AS why, count(*) AS n FROM photo_flags WHERE run_id = ? AND restricted
            GROUP BY why ORDER BY n DESC, why""", [run_id]).fetchall()]
        if "gallery" in tables:  # a gallery photo without a verdict is withheld too
            unjudged = con.execute("""SELECT count(*) FROM gallery g WHERE NOT EXISTS
                (SELECT 1 FROM photo_flags p WHERE p.run_id = ? AND p.image = g.image)""", [run_id]).fetchone()[0]
            if unjudged:
                out["photos_withheld"].append({"why": "no verdict (unreadable or not scored)", "photos": unjudged})
    return out


def _catalog(con) -> str:
    return con.execute("SELECT current_database()").fetchone()[0]


def describe_run(db: Path, run_id: str, head: str | None, previous_db: Path | None) -> dict:
    """Everything the run page and the report say about what ``run_id`` did (see module doc).

    ``db``: the run's DuckDB file (its work copy during the run); ``previous_db``: the
    published file as it was before this run (None or missing: nothing to compare with).
    Never raises for a missing table or column; a section it cannot compute is left out.
    """
    from tasks.warehouse import connect

    out: dict = {"run_id": run_id, "previous_run": None}
    with connect(db, read_only=True) as con:
        now = _catalog(con)
        tables = _tables(con, now)
        prev = previous_run(con, run_id) if "runs" in tables else None
        out["previous_run"] = prev
        if "run_stages" in tables:
            out["stages"] = [{"stage": s, "reused_from": r} for s, r in con.execute(
                "SELECT stage, reused_from FROM run_stages WHERE run_id = ? ORDER BY stage", [run_id]).fetchall()]
        if "ingest_ledger" in tables:
            out["inputs"] = [dict(zip(("source", "read", "loaded", "quarantined", "loaded_before"), r))
                             for r in con.execute("""
                SELECT n.source, n.rows_read, n.rows_loaded, n.rows_quarantined, p.rows_loaded
                FROM ingest_ledger n LEFT JOIN ingest_ledger p ON p.run_id = ? AND p.source = n.source
                WHERE n.run_id = ? ORDER BY n.source""", [prev, run_id]).fetchall()]
        if "quarantine" in tables:
            out["quarantine"] = [{"source": s, "reason": r, "rows": n} for s, r, n in con.execute("""
                SELECT source, reason, count(*) AS n FROM quarantine WHERE run_id = ?
                GROUP BY ALL ORDER BY n DESC, source, reason LIMIT 20""", [run_id]).fetchall()]
        if prev is not None:
            cols = set(_columns(con, "runs"))
            wanted = [c for c in ("top_k", "head", "data_dir") if c in cols]
            if wanted:
                sel = ", ".join(_q(c) for c in wanted)
                now_row = con.execute(f"SELECT {sel} FROM runs WHERE run_id = ?", [run_id]).fetchone()
                before_row = con.execute(f"SELECT {sel} FROM runs WHERE run_id = ?", [prev]).fetchone()
                now_v = dict(zip(wanted, now_row or ()))
                if "head" in now_v and head is not None:
                    now_v["head"] = head  # recorded at the end of the run; this run's is known already
                before_v = dict(zip(wanted, before_row or ()))
                out["settings"] = [{"setting": {"head": "chosen head"}.get(k, k), "before": before_v.get(k),
                                    "now": now_v.get(k)} for k in wanted if before_v.get(k) != now_v.get(k)]
        if "model_metrics" in tables:
            prev_head = None
            if prev is not None and "head" in set(_columns(con, "runs")):
                prev_head = con.execute("SELECT head FROM runs WHERE run_id = ?", [prev]).fetchone()[0]
            out["metrics"] = metric_changes(con, run_id, prev, head, prev_head)
        out["compliance"] = compliance_counts(con, run_id)
        if prev is not None:
            out["compliance_before"] = {k: v for k, v in compliance_counts(con, prev).items()
                                        if isinstance(v, int)}
        if prev is not None and previous_db is not None and Path(previous_db).exists():
            con.execute(f"ATTACH '{Path(previous_db).resolve()}' AS previous_published (READ_ONLY)")
            try:
                old = _tables(con, "previous_published")
                if "raw_photos" in tables and "raw_photos" in old:
                    out["photos"] = photo_changes(con, now, "previous_published")
                out["rows"] = row_changes(con, now, "previous_published")
            finally:
                con.execute("DETACH previous_published")
    return out
