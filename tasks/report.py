"""The run report: one HTML page a person opens from disk to see what the run did.

    warehouse/reports/<run_id>/index.html      the page (no server, no network, no JS library)
    warehouse/reports/<run_id>/thumbs/*.jpg    small thumbnails of the photos it shows

For a sample of saved queries it shows the top-k photos with their scores; the law
applies as in the results table: a blocked query shows the disclaimer instead of
results, and a restricted photo keeps its rank but shows the disclaimer, and no
thumbnail of it is ever written.  Plots (inline SVG, drawn here) show how the scores
of matching and non-matching pairs separate, and the retrieval curve of every head.

    python -m tasks.report [--warehouse DIR] [--run RUN_ID]    rebuild from a published warehouse
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps

from tasks.config import DISCLAIMER
from tasks.evaluate import roc_auc
from tasks.warehouse import Warehouse, atomic_write_bytes, connect

HEAD_COLOURS = {"bridge": "#8250df", "lgbm": "#1a7f37", "mlp": "#bc4c00"}
MATCH_COLOUR, OTHER_COLOUR = "#0969da", "#8c959f"
# Figures shown per head in the metrics table, in this order: (protocol, metric, label).
TABLE_ROWS = [
    ("oof_grouped_by_photo", "expert_kendall_tau_c", "Expert Kendall τc (out of fold)"),
    ("oof_grouped_by_photo", "expert_spearman", "Expert Spearman (out of fold)"),
    ("oof_grouped_by_photo", "crowd_kendall_tau_b", "Crowd Kendall τb (out of fold)"),
    ("oof_strict_captions", "expert_kendall_tau_c", "Expert τc, unseen captions too"),
    ("test_queries_filter_off", "recall_at_1", "Recall@1, test queries"),
    ("test_queries_filter_off", "recall_at_5", "Recall@5, test queries"),
    ("test_queries_filter_off", "recall_at_10", "Recall@10, test queries"),
    ("test_queries_filter_off", "mrr", "MRR, test queries"),
]


@dataclass(frozen=True)
class ReportConfig:
    sample_queries: int = 12     # query cards on the page
    blocked_examples: int = 2    # of which at most this many blocked queries ...
    hidden_examples: int = 3     # ... and this many with a restricted photo in the top-k
    thumb_px: int = 160          # longest side of a thumbnail
    curve_max_k: int = 50
    bins: int = 30


# ---------------------------------------------------------------- figures


@dataclass
class ScoreFigures:
    """What the plots draw, for the allowed saved queries against the whole gallery."""

    n_queries: int
    match: np.ndarray            # chosen head: score of each query's own photo
    other: np.ndarray            # chosen head: scores of every other gallery photo
    auc: float                   # how well ``match`` and ``other`` separate
    recall: dict[str, np.ndarray]  # head -> recall@k for k = 1..len


def score_figures(model, gallery_feats: np.ndarray, query_vecs: np.ndarray, correct: np.ndarray,
                  heads: list[str], chosen: str, max_k: int) -> ScoreFigures:
    """``correct[q]``: the gallery index of the photo query q was written for."""
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
                auc = roc_auc(np.concatenate([match, other]),
                              np.concatenate([np.ones(len(match)), np.zeros(len(other))]))
    return ScoreFigures(len(correct), match, other, auc, recall)


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:.0f}"


def svg_histogram(series: list[tuple[str, np.ndarray, str]], bins: int, title: str,
                  width: int = 560, height: int = 330) -> str:
    """Overlaid density histograms (each series integrates to 1, so sizes may differ)."""
    values = [v for _, v, _ in series if len(v)]
    if not values:
        return '<p class="muted">No scores to plot.</p>'
    lo, hi = float(min(v.min() for v in values)), float(max(v.max() for v in values))
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    dens = [(n, np.histogram(v, edges, density=True)[0] if len(v) else np.zeros(bins), c) for n, v, c in series]
    ymax = max(float(d.max()) for _, d, _ in dens) * 1.08 or 1.0
    ml, mr, mt, mb = 52, 16, 34 + 18 * len(series), 44
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: float) -> float:
        return ml + (x - lo) / (hi - lo) * pw

    def sy(y: float) -> float:
        return mt + ph - y / ymax * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{ml}" y="18" class="t">{html.escape(title)}</text>']
    out += _axes(ml, mt, pw, ph, [(sx(x), _fmt(x)) for x in np.linspace(lo, hi, 6)],
                 [(sy(y), _fmt(y)) for y in np.linspace(0, ymax, 5)], "score", "density")
    for name, d, colour in dens:
        pts = [f"{sx(edges[0]):.1f},{sy(0):.1f}"]
        for i, y in enumerate(d):
            pts += [f"{sx(edges[i]):.1f},{sy(y):.1f}", f"{sx(edges[i + 1]):.1f},{sy(y):.1f}"]
        pts.append(f"{sx(edges[-1]):.1f},{sy(0):.1f}")
        out.append(f'<polygon points="{" ".join(pts)}" fill="{colour}" fill-opacity="0.28" '
                   f'stroke="{colour}" stroke-width="1.5"/>')
    for i, (name, v, colour) in enumerate(series):
        y = 40 + 18 * i
        out.append(f'<rect x="{ml}" y="{y - 10}" width="12" height="12" fill="{colour}" fill-opacity="0.6"/>')
        out.append(f'<text x="{ml + 18}" y="{y}" class="l">{html.escape(name)} (n={len(v):,})</text>')
    out.append("</svg>")
    return "\n".join(out)


def svg_curves(curves: list[tuple[str, np.ndarray, str, bool]], title: str, width: int = 560,
               height: int = 330) -> str:
    """Recall@k against k, one line per head; the chosen head drawn bold."""
    if not curves:
        return '<p class="muted">No queries to plot.</p>'
    k_max = max(len(c) for _, c, _, _ in curves)
    ml, mr, mt, mb = 52, 16, 34 + 18 * len(curves), 44
    pw, ph = width - ml - mr, height - mt - mb

    def sx(k: float) -> float:
        return ml + (k - 1) / max(k_max - 1, 1) * pw

    def sy(r: float) -> float:
        return mt + ph - r * ph

    xt = sorted({1, *[k for k in (5, 10, 20, 30, 40, 50, 100) if k <= k_max], k_max})
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{ml}" y="18" class="t">{html.escape(title)}</text>']
    out += _axes(ml, mt, pw, ph, [(sx(k), str(k)) for k in xt], [(sy(r), _fmt(r)) for r in np.linspace(0, 1, 6)],
                 "k (photos looked at)", "recall@k")
    for name, c, colour, bold in curves:
        pts = " ".join(f"{sx(k):.1f},{sy(r):.1f}" for k, r in enumerate(c, start=1))
        dash = "" if bold else ' stroke-dasharray="5 3"'
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                   f'stroke-width="{3 if bold else 1.5}"{dash}/>')
    for i, (name, c, colour, bold) in enumerate(curves):
        y = 40 + 18 * i
        r10 = c[min(10, len(c)) - 1]
        label = f"{name}{' (chosen)' if bold else ''}: R@1 {c[0]:.2f}, R@{min(10, len(c))} {r10:.2f}"
        out.append(f'<line x1="{ml}" y1="{y - 4}" x2="{ml + 16}" y2="{y - 4}" '
                   f'stroke="{colour}" stroke-width="{3 if bold else 1.5}"/>')
        out.append(f'<text x="{ml + 22}" y="{y}" class="l">{html.escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _axes(ml: float, mt: float, pw: float, ph: float, xticks: list[tuple[float, str]],
          yticks: list[tuple[float, str]], xlabel: str, ylabel: str) -> list[str]:
    out = [f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#d0d7de"/>']
    for x, label in xticks:
        out.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" stroke="#57606a"/>')
        out.append(f'<text x="{x:.1f}" y="{mt + ph + 16}" class="a" text-anchor="middle">{label}</text>')
    for y, label in yticks:
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#eaeef2"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" class="a" text-anchor="end">{label}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 34}" class="a" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text x="14" y="{mt + ph / 2}" class="a" text-anchor="middle" '
               f'transform="rotate(-90 14 {mt + ph / 2})">{ylabel}</text>')
    return out


# ---------------------------------------------------------------- sample and thumbnails


def sample_query_ids(results: pl.DataFrame, config: ReportConfig) -> list[str]:
    """A fixed, varied sample: some blocked queries, some with a hidden photo, the rest plain.

    Queries are taken in the order of a hash of their id, so the sample is the same
    from run to run while the data stays the same.
    """
    per_q = (results.group_by("query_id")
             .agg(pl.col("rank").is_null().any().alias("blocked"),
                  (pl.col("rank").is_not_null() & ~pl.col("shown")).any().alias("hidden"))
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
    with Image.open(src) as im:
        im.draft("RGB", (px, px))
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((px, px))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        im.save(tmp, format="JPEG", quality=80, optimize=True)
    tmp.replace(dest)


# ---------------------------------------------------------------- page


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px} header .sub{color:#d0d7de;font-size:13px}
main{padding:18px 28px;max-width:1280px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 18px;margin:0 0 18px}
h2{font-size:18px;margin:0 0 10px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:130px}
.card b{display:block;font-size:20px} .card span{color:#57606a;font-size:12px}
.q{border-top:1px solid #eaeef2;padding:10px 0}
.q h3{font-size:15px;margin:0 0 6px;font-weight:600} .q .id{color:#57606a;font-weight:400;font-size:12px}
.row{display:flex;gap:8px;overflow-x:auto;padding-bottom:4px}
figure{margin:0;width:124px;flex:none;font-size:12px}
figure img,.blocked-photo{width:120px;height:90px;object-fit:cover;border-radius:4px;border:2px solid #d0d7de;display:block;background:#eaeef2}
figure.target img{border-color:#0969da}
figcaption{color:#57606a;margin-top:2px}
.disclaimer{font-size:11px;line-height:1.25;color:#6e4b00;background:#fff8c5;border-color:#d4a72c;padding:6px;box-sizing:border-box;overflow:hidden}
.blocked-query{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:10px 12px;color:#6e4b00}
.badge{display:inline-block;font-size:11px;padding:1px 6px;border-radius:10px;background:#eaeef2;color:#57606a;margin-left:6px}
.badge.warn{background:#fff8c5;color:#6e4b00}
.plots{display:flex;gap:18px;flex-wrap:wrap}
.plots svg{background:#fff;max-width:100%;height:auto}
svg .t{font-size:14px;font-weight:600;fill:#1f2328} svg .a{font-size:11px;fill:#57606a} svg .l{font-size:12px;fill:#1f2328}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #eaeef2;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f6f8fa}
td.chosen,th.chosen{background:#ddf4ff;font-weight:600}
.muted{color:#57606a} #broken{display:none;background:#ffebe9;border:1px solid #ff8182;padding:8px 12px;border-radius:6px;margin-bottom:12px}
a{color:#0969da}
"""

# Marks on <body> whether every thumbnail loaded (an automated check reads it), and warns
# a person when the thumbs/ folder was not copied along with the page.
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.thumb'));
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-thumbs-total', imgs.length);
  document.body.setAttribute('data-thumbs-loaded', imgs.length - broken.length);
  if (broken.length) {
    var b = document.getElementById('broken');
    b.textContent = broken.length + ' of ' + imgs.length + ' thumbnails did not load: keep the thumbs/ folder next to this page.';
    b.style.display = 'block';
  }
});
"""


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _query_card(qid: str, rows: pl.DataFrame, written_for: str | None, thumbs: dict[str, str]) -> str:
    text = rows["query_text"][0]
    first = rows.row(0, named=True)
    if first["rank"] is None:
        return (f'<div class="q blocked"><h3>{_esc(text)} <span class="id">{_esc(qid)}</span>'
                f'<span class="badge warn">{_esc(first["blocked_reason"] or "blocked")}</span></h3>'
                f'<div class="blocked-query">{_esc(DISCLAIMER)}</div></div>')
    figs = []
    for r in rows.sort("rank").iter_rows(named=True):
        is_target = r["image"] == written_for
        cap = f'#{r["rank"]} · {r["score"]:.3f}'
        if not r["shown"]:
            figs.append(f'<figure class="hidden"><div class="blocked-photo disclaimer">{_esc(DISCLAIMER)}</div>'
                        f'<figcaption>{cap}</figcaption></figure>')
            continue
        star = " ★ its photo" if is_target else ""
        figs.append(f'<figure class="{"target" if is_target else "shown"}"><img class="thumb" loading="eager" '
                    f'src="{_esc(thumbs[r["image"]])}" alt="{_esc(r["image"])}" title="{_esc(r["image"])}">'
                    f'<figcaption>{cap}{star}</figcaption></figure>')
    n_hidden = int((~rows["shown"]).sum())
    badge = f'<span class="badge warn">{n_hidden} photo(s) hidden by law</span>' if n_hidden else ""
    return (f'<div class="q"><h3>{_esc(text)} <span class="id">{_esc(qid)}</span>{badge}</h3>'
            f'<div class="row">{"".join(figs)}</div></div>')


def _metrics_table(metrics: pl.DataFrame, chosen: str) -> str:
    rel = metrics.filter(pl.col("component") == "relevance")
    heads = [h for h in ("bridge", "lgbm", "mlp") if h in set(rel["head"])]
    value = {(r["head"], r["protocol"], r["metric"]): r["value"] for r in rel.iter_rows(named=True)}
    head_cells = "".join(f'<th class="{"chosen" if h == chosen else ""}">{_esc(h)}{" (chosen)" if h == chosen else ""}'
                         f"</th>" for h in heads)
    lines = [f"<table><tr><th>figure</th>{head_cells}</tr>"]
    for protocol, metric, label in TABLE_ROWS:
        cells = []
        for h in heads:
            v = value.get((h, protocol, metric))
            cells.append(f'<td class="{"chosen" if h == chosen else ""}">{"–" if v is None else f"{v:.4f}"}</td>')
        lines.append(f"<tr><td>{_esc(label)}</td>{''.join(cells)}</tr>")
    lines.append("</table>")
    guard = metrics.filter(pl.col("component") == "photo_guard")
    if guard.height:
        lines.append('<h3 style="font-size:15px;margin:14px 0 6px">Photo guard (shows a child?)</h3>'
                     "<table><tr><th>signals</th><th>protocol</th><th>metric</th><th>value</th></tr>")
        for r in guard.sort("head", "protocol", "metric").iter_rows(named=True):
            lines.append(f"<tr><td>{_esc(r['head'])}</td><td>{_esc(r['protocol'])}</td><td>{_esc(r['metric'])}</td>"
                         f"<td>{r['value']:.4f}</td></tr>")
        lines.append("</table>")
    return "\n".join(lines)


def _simple_table(frame: pl.DataFrame) -> str:
    if frame.height == 0:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in frame.iter_rows())
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(run: dict, summary: dict, sample: list[tuple[str, pl.DataFrame, str | None]],
                thumbs: dict[str, str], figures: ScoreFigures, metrics: pl.DataFrame,
                ledger: pl.DataFrame, quarantine: pl.DataFrame, config: ReportConfig) -> str:
    chosen = summary["head"]
    res = summary["results"]
    comp = summary["compliance"]
    value = {(r["head"], r["protocol"], r["metric"]): r["value"] for r in metrics.iter_rows(named=True)}

    def fig(protocol: str, metric: str) -> str:
        v = value.get((chosen, protocol, metric))
        return "–" if v is None else f"{v:.3f}"

    cards = [
        (fig("oof_grouped_by_photo", "expert_kendall_tau_c"), "expert τc, out of fold"),
        (fig("test_queries_filter_off", "recall_at_1"), "recall@1, test queries"),
        (fig("test_queries_filter_off", "recall_at_10"), "recall@10, test queries"),
        (f"{res['queries']:,}", "saved queries"),
        (f"{res['blocked_queries']:,}", "queries blocked by law"),
        (f"{comp['gallery_photos_restricted']:,}", "gallery photos restricted"),
    ]
    cards_html = "".join(f'<div class="card"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for v, k in cards)
    queries_html = "\n".join(_query_card(qid, rows, wf, thumbs) for qid, rows, wf in sample)
    hist = svg_histogram([("matching: the query's own photo", figures.match, MATCH_COLOUR),
                          ("non-matching: every other photo", figures.other, OTHER_COLOUR)],
                         config.bins, f"Scores of the chosen head ({chosen}); AUC {figures.auc:.3f}")
    curves = svg_curves([(h, c, HEAD_COLOURS.get(h, "#57606a"), h == chosen) for h, c in figures.recall.items()],
                        "Retrieval curve: the query's own photo within the top k")
    q_by_reason = (quarantine.group_by("source", "reason").len().sort("len", descending=True).head(20)
                   if quarantine.height else quarantine)
    wall = summary.get("wall_seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>With Sense reindex {_esc(run['run_id'])}</title>
<style>{CSS}</style></head>
<body data-run-id="{_esc(run['run_id'])}">
<header><h1>With Sense search · nightly reindex</h1>
<div class="sub">run {_esc(run['run_id'])} · started {_esc(run.get('started_at'))} UTC
{f"· {wall:.0f} s" if wall is not None else ""} · head <b>{_esc(chosen)}</b> · top-{_esc(run.get('top_k'))}
· data {_esc(run.get('data_dir'))}</div></header>
<main>
<div id="broken"></div>
<section><h2>At a glance</h2><div class="cards">{cards_html}</div>
<p class="muted">Expert τc and recall are the chosen head's; recall is measured with the compliance filter off
(the model alone, {int(value.get((chosen, 'test_queries_filter_off', 'n_queries'), 0))} queries).
<a href="model_card.md">Model card</a> · <a href="model_card.json">model card (JSON)</a> ·
exports of the latest run: <a href="../../exports/search_results.parquet">search_results.parquet</a>,
<a href="../../exports/model_metrics.parquet">model_metrics.parquet</a></p></section>

<section><h2>Sample of saved queries <span class="badge">{len(sample)} of {res['queries']:,}</span></h2>
<p class="muted">Top-{_esc(run.get('top_k'))} photos per query as users see them, with rank and score.
A blue frame and ★ mark the photo the query was written for. Where the law hides a query or a photo, the
disclaimer stands in its place and no picture of it is stored.</p>
{queries_html}</section>

<section><h2>How well scores separate</h2><div class="plots">{hist}{curves}</div>
<p class="muted">Both plots use the {figures.n_queries:,} saved queries the compliance filter allows, each scored
against every gallery photo (restricted photos included, as in ranking; they are never shown).</p></section>

<section><h2>Metrics</h2>{_metrics_table(metrics, chosen)}</section>

<section><h2>Inputs</h2>{_simple_table(ledger.select("source", "rows_read", "rows_loaded", "rows_quarantined"))}
<h3 style="font-size:15px;margin:14px 0 6px">Quarantine by reason</h3>{_simple_table(q_by_reason)}
<p class="muted">Embedded this run: {summary['images_embedded']:,} photos, {summary['texts_embedded']:,} texts
(the rest from the cache). Compliance: {_esc(json.dumps(comp))}.</p></section>
</main>
<script>{SCRIPT}</script>
</body></html>
"""


# ---------------------------------------------------------------- build


def build_report(db: Path, run_id: str, wh: Warehouse, data_dir: Path, model, summary: dict,
                 gallery_feats: np.ndarray, query_vecs: dict[str, np.ndarray],
                 config: ReportConfig = ReportConfig()) -> Path:
    """Write ``reports/<run_id>/index.html`` and its thumbnails; return the page's path.

    ``gallery_feats`` rows follow the gallery in image order; ``query_vecs`` maps query text
    to its text vector (needed for the allowed queries only).
    """
    from tasks.train import HEADS

    with connect(db, read_only=True) as con:
        run = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).pl().row(0, named=True)
        results = con.execute("SELECT * FROM search_results WHERE run_id = ? ORDER BY query_id, rank",
                              [run_id]).pl()
        queries = con.execute("SELECT query_id, query_text, written_for_image FROM stg_test_queries "
                              "ORDER BY query_id").pl()
        gallery = con.execute("""
            SELECT g.image, g.sha256, g.path, coalesce(p.restricted, true) AS restricted
            FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
            ORDER BY g.image""", [run_id]).pl()
        metrics = con.execute("SELECT * FROM model_metrics WHERE run_id = ?", [run_id]).pl()
        ledger = con.execute("SELECT * FROM ingest_ledger WHERE run_id = ? ORDER BY source", [run_id]).pl()
        quarantine = con.execute("SELECT source, reason FROM quarantine WHERE run_id = ?", [run_id]).pl()

    out = wh.reports_dir / run_id
    # Figures: allowed queries (those that got ranked rows) against the whole gallery.
    pos = {g: i for i, g in enumerate(gallery["image"])}
    allowed = set(results.filter(pl.col("rank").is_not_null())["query_id"])
    keep = queries.filter(pl.col("query_id").is_in(list(allowed)) & pl.col("written_for_image").is_in(list(pos)))
    vecs = (np.stack([query_vecs[t] for t in keep["query_text"]]) if keep.height
            else np.zeros((0, 1), np.float32))
    correct = np.array([pos[w] for w in keep["written_for_image"]], dtype=np.int64)
    figures = score_figures(model, gallery_feats, vecs, correct, list(HEADS), summary["head"], config.curve_max_k)

    written_for = dict(zip(queries["query_id"], queries["written_for_image"]))
    sample = [(q, results.filter(pl.col("query_id") == q), written_for.get(q))
              for q in sample_query_ids(results, config)]
    # Thumbnails of shown photos only: a restricted photo's pixels never leave the data folder.
    shown = set()
    for _, rows, _ in sample:
        shown |= set(rows.filter(pl.col("shown") & pl.col("image").is_not_null())["image"])
    info = {r["image"]: r for r in gallery.iter_rows(named=True)}
    thumbs = {}
    for image in sorted(shown):
        g = info[image]
        if g["restricted"]:
            continue
        name = f"{g['sha256'][:20]}.jpg"
        dest = out / "thumbs" / name
        if not dest.exists():
            write_thumbnail(Path(data_dir) / g["path"], dest, config.thumb_px)
        thumbs[image] = f"thumbs/{name}"
    page = render_html(run, summary, sample, thumbs, figures, metrics, ledger, quarantine, config)
    return atomic_write_bytes(page.encode("utf-8"), out / "index.html")


# ---------------------------------------------------------------- Prefect task

from prefect import get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402


@task(name="report", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def report_task(db: Path, run_id: str, wh: Warehouse, data_dir: Path, images, texts, model,
                summary: dict) -> Path:
    """The run's HTML report, and a link to it on the run's page in the Prefect UI."""
    from prefect.artifacts import create_link_artifact

    with connect(db, read_only=True) as con:
        gallery = con.execute("SELECT image FROM gallery ORDER BY image").pl()["image"].to_list()
        q_texts = con.execute("SELECT DISTINCT query_text FROM search_results WHERE run_id = ? AND rank IS NOT NULL",
                              [run_id]).pl()["query_text"].to_list()
    feats = images.features[images.rows("test", gallery)] if gallery else np.zeros((0, 1), np.float32)
    vecs = dict(zip(q_texts, texts.vectors[texts.rows(q_texts)])) if q_texts else {}
    page = build_report(db, run_id, wh, data_dir, model, summary, feats, vecs)
    create_link_artifact(key="reindex-report", link=page.resolve().as_uri(), link_text=f"Report of run {run_id}",
                         description="HTML report: sample queries with thumbnails, score plots, metrics. "
                                     "Opens from disk on the machine that ran the flow.")
    get_run_logger().info("report: %s", page.resolve().as_uri())
    return page


# ---------------------------------------------------------------- CLI: rebuild from a published warehouse


def rebuild(warehouse_dir: Path, run_id: str | None = None, data_dir: Path | None = None) -> Path:
    """The report of a published run, from the warehouse alone (model folder, embedding cache)."""
    from tasks.embed import encoder_dir, load_cached, text_sha
    from tasks.train import load_model

    wh = Warehouse(Path(warehouse_dir))
    with connect(wh.db_path, read_only=True) as con:
        if run_id is None:
            run_id = con.execute("SELECT run_id FROM latest_run").fetchone()[0]
        run = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).pl().row(0, named=True)
        gallery = con.execute("SELECT image, sha256 FROM gallery ORDER BY image").pl()
        q_texts = con.execute("SELECT DISTINCT query_text FROM search_results WHERE run_id = ? AND rank IS NOT NULL",
                              [run_id]).pl()["query_text"].to_list()
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
    return build_report(wh.db_path, run_id, wh, Path(data_dir or run["data_dir"]), model, summary, feats, vecs)


def main(argv: list[str] | None = None) -> int:
    from tasks.config import default_warehouse_dir

    p = argparse.ArgumentParser(prog="python -m tasks.report", description="Rebuild a run's HTML report.")
    p.add_argument("--warehouse", type=Path, default=default_warehouse_dir())
    p.add_argument("--run", help="run id (default: the latest finished run)")
    p.add_argument("--data-dir", type=Path, help="photos folder (default: the run's own data_dir)")
    a = p.parse_args(argv)
    page = rebuild(a.warehouse, a.run, a.data_dir)
    print(page.resolve().as_uri())
    return 0


if __name__ == "__main__":
    import tasks  # noqa: F401  (torchvision shim before the models load)

    sys.exit(main())
