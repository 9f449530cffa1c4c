"""Results: the query -> top-k table, with the law applied (the results contract).

For every saved query the product ranks the gallery by the fused score (the relevance
head fused with the photo's descriptions, models/fusion.py), then applies the law:

- A query that describes a child gets one row: no photo, the disclaimer.
- Otherwise the rows are the top-k photos that may be shown, ranked among themselves
  (``rank`` 1..k).  A photo the guard restricts (photo_flags.restricted; no verdict
  counts as restricted) is never shown whatever its score: when it would have ranked
  above the k-th shown photo it is recorded in ``withheld_results`` (its rank before the
  law, ``model_rank``, and the reason) for compliance officers, and the query's first row
  carries ``note`` -- stated once per query -- saying that images were withheld, with the
  disclaimer.  If nothing may be shown, the query gets one disclaimer row.

Ranking is two-stage (tasks/retrieval.py): an exact first stage picks each query's
candidates from the gallery index (plus the photos whose descriptions match it best),
the chosen head reranks only those.  Queries are cut into shards, each a mapped task
(the Prefect stage: ``tasks/rank_stage.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from tasks.config import DISCLAIMER

# Bump when what ranking writes changes for the same inputs (order, columns, the law's
# rules), so earlier runs' results are never copied into a run that would rank differently.
# 2: fused with the description channel; shown photos only, withheld ones audited.
RANK_FORMAT = 2
# What a user reads once when a query's results left some photos out.
WITHHELD_NOTE = f"Some images were withheld. {DISCLAIMER}"
NO_VERDICT_REASON = "no photo guard verdict (fail-closed)"
DEFAULT_REASON = "photo guard"

RESULT_SCHEMA = {
    "run_id": pl.String,
    "query_id": pl.String,
    "query_text": pl.String,
    "rank": pl.Int32,               # 1..k among the shown photos; null on a disclaimer-only row
    "image": pl.String,             # the shown photo; null on a disclaimer-only row
    "score": pl.Float32,            # the fused score in (0, 1): what the ranking sorts by
    "model_score": pl.Float32,      # the relevance head's score in [0, 1]
    "description_score": pl.Float32,  # best cosine with the photo's descriptions; null when none
    "channel": pl.String,           # 'model', 'descriptions', or 'model (no descriptions)'
    "model_rank": pl.Int32,         # the photo's rank before the law removed restricted photos
    "shown": pl.Boolean,
    "disclaimer": pl.String,        # the legal text on a disclaimer-only row, else null
    "display": pl.String,           # what the user sees: the photo's name or the disclaimer
    "blocked_reason": pl.String,    # why a query got only the disclaimer
    "note": pl.String,              # on a query's first row when photos were withheld, else null
}

WITHHELD_SCHEMA = {
    "run_id": pl.String,
    "query_id": pl.String,
    "query_text": pl.String,
    "image": pl.String,
    "model_rank": pl.Int32,         # where it would have ranked, law off (1 = first)
    "score": pl.Float32,            # its fused score
    "reason": pl.String,            # photo_flags' reason / deciding signal, else 'photo guard'
}


@dataclass
class Ranked:
    """One query's candidates in the product's order, best first (all arrays [n])."""

    rows: np.ndarray                # gallery rows
    score: np.ndarray               # fused
    model_score: np.ndarray
    description_score: np.ndarray   # NaN where the photo has no description left
    channel: np.ndarray             # str


def order_candidates(model, rows: np.ndarray, model_score: np.ndarray, desc_max: np.ndarray,
                     desc_mean: np.ndarray, head: str | None = None) -> Ranked:
    """Fuse one query's candidates (duplicates dropped) and sort them: fused score
    descending, ties by lower gallery row."""
    rows, first = np.unique(np.asarray(rows, np.int64), return_index=True)
    ms, dx, dm = model_score[first], desc_max[first], desc_mean[first]
    fused = model.fuse(ms, dx, dm, head)
    f = model.fusions.get(head or model.head)
    channel = (f.channel(ms, dx, dm) if f is not None else np.full(len(rows), "model", dtype=object))
    order = np.lexsort((rows, -fused))
    return Ranked(rows[order], fused[order], ms[order], dx[order], channel[order])


def build_results(run_id: str, query_ids: list[str], query_texts: list[str], query_blocked: list[bool],
                  gallery: list[str], photo_restricted: np.ndarray, reasons: list[str], ranked: dict[int, Ranked],
                  k: int, refusals: list[str | None] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(search_results rows, withheld_results rows) under the results contract.

    ``ranked[q]``: query q's candidates in the product's order (absent for blocked queries,
    which are never scored).  ``photo_restricted`` [photos] bool, ``reasons`` [photos] why.
    ``refusals[q]``: a refused query's message (blank, too long, not English) shown instead of
    the disclaimer; None for a query that describes a child or is searchable.
    """
    rows, withheld = [], []
    for q, (qid, text, blocked) in enumerate(zip(query_ids, query_texts, query_blocked)):
        if blocked and refusals and refusals[q]:
            rows.append((run_id, qid, text, None, None, None, None, None, None, None, False, None, refusals[q],
                         refusals[q], None))
            continue
        if blocked or q not in ranked:
            rows.append((run_id, qid, text, None, None, None, None, None, None, None, False, DISCLAIMER, DISCLAIMER,
                         "query describes a child" if blocked else "nothing to rank", None))
            continue
        r = ranked[q]
        mine, held = [], []
        for pos, g in enumerate(r.rows):
            if len(mine) == k:
                break
            g = int(g)
            if photo_restricted[g]:
                held.append((run_id, qid, text, gallery[g], pos + 1, float(r.score[pos]), reasons[g]))
                continue
            ds = None if np.isnan(r.description_score[pos]) else float(r.description_score[pos])
            mine.append([run_id, qid, text, len(mine) + 1, gallery[g], float(r.score[pos]),
                         float(r.model_score[pos]), ds, str(r.channel[pos]), pos + 1, True, None, gallery[g], None,
                         None])
        note = WITHHELD_NOTE if held else None
        if mine:
            mine[0][-1] = note
            rows += [tuple(m) for m in mine]
        else:
            rows.append((run_id, qid, text, None, None, None, None, None, None, None, False, DISCLAIMER, DISCLAIMER,
                         "every photo withheld", note))
        withheld += held
    return (pl.DataFrame(rows, schema=RESULT_SCHEMA, orient="row"),
            pl.DataFrame(withheld, schema=WITHHELD_SCHEMA, orient="row"))


def photo_verdicts(con, run_id: str) -> pl.DataFrame:
    """Gallery photos in order with sha256, restricted (fail-closed) and the reason to withhold.

    The reason is photo_flags' ``reason`` or ``deciding_signal`` column when the guard
    writes one, else 'photo guard'; a photo without a verdict is restricted.
    """
    cols = {r[0] for r in con.execute("DESCRIBE photo_flags").fetchall()}
    why = next((f"p.{c}" for c in ("reason", "deciding_signal") if c in cols), None)
    reason = f"coalesce(CAST({why} AS VARCHAR), '{DEFAULT_REASON}')" if why else f"'{DEFAULT_REASON}'"
    return con.execute(f"""
        SELECT g.image, g.sha256, coalesce(p.restricted, true) AS restricted,
               CASE WHEN p.image IS NULL THEN '{NO_VERDICT_REASON}' ELSE {reason} END AS reason
        FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
        ORDER BY g.image""", [run_id]).pl()
