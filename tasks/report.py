"""The run report: one HTML page a person opens to see what the run did.

    warehouse/reports/<run_id>/index.html      the page (no server, no network, no JS library)
    warehouse/reports/<run_id>/thumbs/*.jpg    small thumbnails of the photos it shows
    warehouse/reports/thumbs/<px>px/*.jpg      the same thumbnails by content hash, kept across runs

The page (``tasks/templates/report.html.j2``) opens with what changed since the previous
published run (the same facts as the run page's summary artifact, ``tasks/run_changes.py``),
then shows, for a sample of saved queries, the top-k photos with their scores; the law
applies as in the results table: a blocked query shows the disclaimer instead of results,
a restricted photo is never shown (the first card of its query says, with the disclaimer,
that images were withheld), and no thumbnail of it is ever written or kept.  Two charts (matplotlib, ``tasks/report_charts.py``) show how the scores of matching
and non-matching pairs separate and the retrieval curve of every head, on the same queries as
the recall figures: all test queries, the compliance filter off.

    python -m tasks.report [--warehouse DIR] [--run RUN_ID]    rebuild from a published warehouse
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from tasks.config import DISCLAIMER
from tasks.report_charts import histogram_svg, recall_curves_svg
from tasks.run_changes import HEADLINE
from tasks.run_digest import environment, figure
from tasks.atomic import atomic_write, atomic_write_bytes
from tasks.warehouse import Warehouse, connect

HEAD_COLOURS = {"bridge": "#8250df", "lgbm": "#1a7f37", "mlp": "#bc4c00"}
MATCH_COLOUR, OTHER_COLOUR = "#0969da", "#8c959f"
HEAD_ORDER = ("bridge", "lgbm", "mlp")


@dataclass(frozen=True)
class ReportConfig:
    """What the run report shows: how many query cards, thumbnail size in pixels, curve and histogram extents."""

    sample_queries: int = 12     # query cards on the page
    blocked_examples: int = 2    # of which at most this many blocked queries ...
    hidden_examples: int = 3     # ... and this many with a restricted photo in the top-k
    thumb_px: int = 160          # longest side of a thumbnail
    curve_max_k: int = 50
    bins: int = 30


# ---------------------------------------------------------------- figures


@dataclass
class ScoreFigures:
    """What the charts draw: test queries (compliance filter off) against the whole gallery."""

    n_queries: int
    match: np.ndarray              # chosen head: score of each query's own photo, [n_queries]
    other: np.ndarray              # chosen head: scores of every other gallery photo
    auc: float                     # ROC AUC of ``match`` against ``other``
    recall: dict[str, np.ndarray]  # head -> recall@k for k = 1..min(max_k, gallery size)


def score_figures(model, gallery_feats: np.ndarray, query_vecs: np.ndarray, correct: np.ndarray,
                  heads: list[str], chosen: str, max_k: int) -> ScoreFigures:
    """``gallery_feats`` [photos, d], ``query_vecs`` [queries, d'], ``correct[q]``: the gallery
    index of the photo query q was written for.  A query's rank counts the photos scored strictly
    higher than its own, as in ``tasks/evaluate.py``, so R@k here equals the recorded figure."""
    from sklearn.metrics import roc_auc_score

    recall, match, other, auc = {}, np.zeros(0), np.zeros(0), float("nan")
    if len(correct) and len(gallery_feats):
        k_max = min(max_k, len(gallery_feats))
        rows = np.arange(len(correct))
        for h in heads:
            s = model.score_matrix(gallery_feats, query_vecs, h)
            target = s[rows, correct]
            rank = 1 + (s > target[:, None]).sum(1)
            recall[h] = np.array([(rank <= k).mean() for k in range(1, k_max + 1)])
            if h == chosen:
                mask = np.zeros_like(s, dtype=bool)
                mask[rows, correct] = True
                match, other = s[mask], s[~mask]
                if len(other):
                    auc = float(roc_auc_score(np.r_[np.ones(len(match)), np.zeros(len(other))],
                                              np.r_[match, other]))
    return ScoreFigures(len(correct), match, other, auc, recall)


# ---------------------------------------------------------------- sample and thumbnails


def sample_query_ids(results: pl.DataFrame, config: ReportConfig) -> list[str]:
    """A fixed, varied sample: some blocked queries, some with a hidden photo, the rest plain.

    ``results``: rows with query_id, rank (null: blocked) and shown.  Queries are taken in the
    order of a hash of their id, so the sample is the same from run to run while the data is.
    """
    per_q = (results.group_by("query_id")
             .agg(pl.col("rank").is_null().any().alias("blocked"),
                  ((pl.col("rank").is_not_null() & ~pl.col("shown"))
                   | (pl.col("note").is_not_null() if "note" in results.columns else pl.lit(False))
                   ).any().alias("hidden"))
             .with_columns(pl.col("query_id").map_elements(
                 lambda q: hashlib.sha256(q.encode()).hexdigest(), return_dtype=pl.String).alias("h"))
             .sort("h"))
    blocked = per_q.filter(pl.col("blocked"))["query_id"].to_list()[: config.blocked_examples]
    hidden = per_q.filter(~pl.col("blocked") & pl.col("hidden"))["query_id"].to_list()[: config.hidden_examples]
    taken = set(blocked) | set(hidden)
    rest = [q for q in per_q.filter(~pl.col("blocked"))["query_id"] if q not in taken]
    chosen = set(blocked + hidden + rest[: max(config.sample_queries - len(taken), 0)])
    return sorted(chosen)


def write_thumbnail(src: Path, dest: Path, px: int) -> None:
    """A JPEG of ``src`` whose longest side is ``px``, upright (EXIF), written atomically."""
    from models.photo_file import open_photo  # a JPEG ingest loaded without its end marker gets it back

    with open_photo(src) as im:
        im.draft("RGB", (px, px))
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((px, px))
        atomic_write(dest, lambda tmp: im.save(tmp, format="JPEG", quality=80, optimize=True))


def thumbnail_store(wh: Warehouse, px: int) -> Path:
    """``reports/thumbs/<px>px/``: thumbnails of photos some run's report showed, by content
    hash (first 20 hex digits), so a photo's file is read for its thumbnail once, not per run."""
    return wh.reports_dir / "thumbs" / f"{px}px"


def copy_into(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (a copy across file systems): each run's report
    folder stays whole on its own."""
    import os
    import shutil

    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def sample_cards(results: pl.DataFrame, sample: list[str], described_image: dict, thumbs: dict[str, str]) -> list[dict]:
    """What the template draws per sampled query (blocked, or its photos in rank order)."""
    cards = []
    for qid in sample:
        rows = results.filter(pl.col("query_id") == qid).sort("rank", nulls_last=False)
        first = rows.row(0, named=True)
        card = {"query_id": qid, "text": first["query_text"], "blocked": first["rank"] is None,
                "blocked_reason": first.get("blocked_reason"), "photos": [], "n_hidden": 0,
                # Results contract: withheld photos are not rows; the query's first row carries the note.
                "note": next((n for n in rows["note"].to_list() if n), None) if "note" in rows.columns else None}
        if not card["blocked"]:
            for r in rows.iter_rows(named=True):
                shown = bool(r["shown"]) and r["image"] in thumbs
                card["photos"].append({"rank": r["rank"], "score": r["score"], "shown": shown, "image": r["image"],
                                       "thumb": thumbs.get(r["image"]), "target": r["image"] == described_image.get(qid)})
            card["n_hidden"] = sum(not p["shown"] for p in card["photos"])
        cards.append(card)
    return cards


# ---------------------------------------------------------------- page


def render_html(run: dict, summary: dict, digest: dict, cards: list[dict], figures: ScoreFigures,
                metrics: pl.DataFrame, config: ReportConfig) -> str:
    """The page, from ``tasks/templates/report.html.j2``; every value is escaped by jinja2."""
    chosen = summary["head"]
    rel = metrics.filter(pl.col("component") == "relevance")
    value = {(r["head"], r["protocol"], r["metric"]): r["value"] for r in rel.iter_rows(named=True)}
    heads = [h for h in HEAD_ORDER if h in set(rel["head"])] + sorted(set(rel["head"]) - set(HEAD_ORDER) - {"chosen"})
    digest = {"previous_run": None, **digest}  # a run recorded before digests existed has none
    comp = digest.get("compliance", {})
    withheld = sum(w["photos"] for w in comp.get("photos_withheld", []))
    cards_at_a_glance = [
        (figure(value.get((chosen, "oof_grouped_by_photo", "expert_kendall_tau_c"))), "expert τc, out of fold"),
        (figure(value.get((chosen, "test_queries_filter_off", "recall_at_1"))), "recall@1, all test queries"),
        (figure(value.get((chosen, "test_queries_filter_off", "recall_at_10"))), "recall@10, all test queries"),
        (f"{comp.get('queries', 0):,}", "saved queries"),
        (f"{comp.get('queries_blocked', 0):,}", "queries blocked by law"),
        (f"{withheld:,}", "gallery photos withheld"),
    ]
    n_eval = value.get((chosen, "test_queries_filter_off", "n_queries"))
    guard = metrics.filter(pl.col("component") == "photo_guard").sort("protocol", "metric")
    hist = histogram_svg([("matching: the query's own photo", figures.match, MATCH_COLOUR),
                          ("non-matching: every other photo", figures.other, OTHER_COLOUR)],
                         config.bins, f"Scores of the chosen head ({chosen})")
    curves = recall_curves_svg([(h, c, HEAD_COLOURS.get(h, "#57606a"), h == chosen)
                                for h, c in figures.recall.items()],
                               "Retrieval: the query's own photo within the top k")
    return environment(autoescape=True).get_template("report.html.j2").render(
        run=run, s=summary, d=digest, c=comp, cb=digest.get("compliance_before", {}), cards=cards_at_a_glance,
        sample=cards, disclaimer=DISCLAIMER, hist=hist, curves=curves, auc=figures.auc,
        n_plot_queries=figures.n_queries, n_eval_queries=n_eval if n_eval is not None else figures.n_queries,
        heads=heads, value=value, table_rows=[(p, m, label) for p, m, label in HEADLINE],
        guard_rows=guard.to_dicts())


# ---------------------------------------------------------------- build


def _results(con, run_id: str) -> pl.DataFrame:
    """This run's result rows; tolerant of a results table without ``shown`` (then every
    ranked row is shown) or without ``blocked_reason``."""
    res = con.execute("SELECT * FROM search_results WHERE run_id = ? ORDER BY query_id, rank", [run_id]).pl()
    if "shown" not in res.columns:
        res = res.with_columns(pl.col("rank").is_not_null().alias("shown"))
    if "blocked_reason" not in res.columns:
        res = res.with_columns(pl.lit(None, pl.String).alias("blocked_reason"))
    return res


def evaluation_queries(con) -> pl.DataFrame:
    """Test queries whose photo is in the gallery, by query_id: what the recall figures use."""
    return con.execute("""SELECT q.query_id, q.query_text, q.described_image FROM stg_test_queries q
                          WHERE q.described_image IN (SELECT image FROM gallery) ORDER BY q.query_id""").pl()


def build_report(db: Path, run_id: str, wh: Warehouse, data_dir: Path, model, summary: dict,
                 gallery_feats: np.ndarray, query_vecs: dict[str, np.ndarray], digest: dict,
                 config: ReportConfig = ReportConfig()) -> Path:
    """Write ``reports/<run_id>/index.html`` and its thumbnails; return the page's path.

    ``gallery_feats`` rows follow the gallery in image order; ``query_vecs`` maps query text to
    its text vector (every evaluation query); ``digest``: ``tasks.run_changes.describe_run``.
    """
    from tasks.train import HEADS

    with connect(db, read_only=True) as con:
        run = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).pl().row(0, named=True)
        results = _results(con, run_id)
        described_image = dict(con.execute("SELECT query_id, described_image FROM stg_test_queries").fetchall())
        queries = evaluation_queries(con)
        gallery = con.execute("""
            SELECT g.image, g.sha256, g.path, coalesce(p.restricted, true) AS restricted
            FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
            ORDER BY g.image""", [run_id]).pl()
        metrics = con.execute("SELECT * FROM model_metrics WHERE run_id = ?", [run_id]).pl()

    out = wh.reports_dir / run_id
    pos = {g: i for i, g in enumerate(gallery["image"])}
    vecs = (np.stack([query_vecs[t] for t in queries["query_text"]]) if queries.height
            else np.zeros((0, 1), np.float32))
    correct = np.array([pos[w] for w in queries["described_image"]], dtype=np.int64)
    figures = score_figures(model, gallery_feats, vecs, correct, list(HEADS), summary["head"], config.curve_max_k)

    sample = sample_query_ids(results, config)
    # Thumbnails of shown photos only: a restricted photo's pixels never leave the data folder.
    info = {r["image"]: r for r in gallery.iter_rows(named=True)}
    wanted = results.filter(pl.col("query_id").is_in(sample) & pl.col("shown") & pl.col("image").is_not_null())
    thumbs = {}
    store = thumbnail_store(wh, config.thumb_px)
    # The store may hold a photo shown by an earlier run that this run's guard restricts.
    for sha in gallery.filter(pl.col("restricted"))["sha256"]:
        (store / f"{sha[:20]}.jpg").unlink(missing_ok=True)
    for image in sorted(set(wanted["image"])):
        g = info.get(image)
        if g is None or g["restricted"]:
            continue
        name = f"{g['sha256'][:20]}.jpg"
        kept = store / name
        if not kept.exists():  # the photo file is opened only the first time it is shown
            write_thumbnail(Path(data_dir) / g["path"], kept, config.thumb_px)
        copy_into(kept, out / "thumbs" / name)
        thumbs[image] = f"thumbs/{name}"
    page = render_html(run, summary, digest, sample_cards(results, sample, described_image, thumbs), figures, metrics,
                       config)
    return atomic_write_bytes(page.encode("utf-8"), out / "index.html")


# ---------------------------------------------------------------- CLI: rebuild from a published warehouse


def rebuild(warehouse_dir: Path, run_id: str | None = None, data_dir: Path | None = None) -> Path:
    """The report of a published run, from the warehouse alone (model folder, embedding cache)."""
    from tasks.embedding_cache import encoder_dir, load_cached, text_sha
    from models.relevance_model import load_model

    wh = Warehouse(Path(warehouse_dir))
    with connect(wh.db_path, read_only=True) as con:
        if run_id is None:
            run_id = con.execute("SELECT run_id FROM latest_run").fetchone()[0]
        run = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).pl().row(0, named=True)
        gallery = con.execute("SELECT image, sha256 FROM gallery ORDER BY image").pl()
        q_texts = evaluation_queries(con)["query_text"].unique().to_list()
    folder = wh.models_dir / run["train_fingerprint"]
    card = json.loads((folder / "card.json").read_text())
    model = load_model(folder)
    summary = json.loads(run["summary_json"])
    model.head = summary["head"]
    img = load_cached(encoder_dir(wh.embeddings_dir, "image", card["image_encoder"]),
                      gallery["sha256"].to_list(), ["features"])["features"]
    txt = load_cached(encoder_dir(wh.embeddings_dir, "text", card["text_encoder"]),
                      [text_sha(t) for t in q_texts], ["embedding"])["embedding"]
    feats = np.stack([img[s] for s in gallery["sha256"]]) if gallery.height else np.zeros((0, 1), np.float32)
    vecs = {t: txt[text_sha(t)] for t in q_texts}
    return build_report(wh.db_path, run_id, wh, Path(data_dir or run["data_dir"]), model, summary, feats, vecs,
                        summary.get("digest", {}))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point of ``python -m tasks.report``: rebuild a run's report, print its path.

    Returns:
        0.
    """
    from tasks.config import resolve_warehouse_dir

    p = argparse.ArgumentParser(prog="python -m tasks.report", description="Rebuild a run's HTML report.")
    p.add_argument("--warehouse", type=Path, default=None, help="default: $WITH_SENSE_WAREHOUSE, else <checkout>/warehouse")
    p.add_argument("--run", help="run id (default: the latest finished run)")
    p.add_argument("--data-dir", type=Path, help="photos folder (default: the run's own data_dir)")
    a = p.parse_args(argv)
    page = rebuild(resolve_warehouse_dir(a.warehouse), a.run, a.data_dir)
    print(page.resolve())
    return 0


if __name__ == "__main__":
    import tasks  # noqa: F401  (torchvision shim before the models load)

    sys.exit(main())
