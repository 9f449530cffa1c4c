"""Every fusion tried for the description channel, measured with the three protocols.

    .venv/bin/python bench/fusion_variants.py --warehouse DIR [--data-dir DIR]

Reads a published warehouse (a copy of its DuckDB file; nothing is written to it): the
run's training set, embeddings and chosen head.  Refits the heads' cross-validation to
get out-of-fold scores, fits each fusion on them (training pairs only; each pair's own
caption left out of its photo's descriptions), and measures on the saved queries the
text filter allows, each query's photo ranked among all gallery photos:
(1) the model alone, (2) the product with each query's own description left out,
(3) the product with every description removed.  Test queries are only measured here.
Writes bench/results/fusion_variants.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tasks  # noqa: E402,F401
from models.fusion import FEATURE_SETS, Fusion  # noqa: E402
from tasks.config import default_data_dir  # noqa: E402
from tasks.descriptions import description_scores, gallery_descriptions, pair_description_scores  # noqa: E402
from tasks.evaluate import fusion_protocols, retrieval_metrics  # noqa: E402
from tasks.warehouse import Warehouse, connect  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
RRF_K = 60  # the usual constant of reciprocal rank fusion, untuned


def rrf(model_scores: np.ndarray, desc_max: np.ndarray) -> np.ndarray:
    """Reciprocal rank fusion of the model's and the descriptions' rankings; a photo without
    descriptions gets the model's term only."""
    from scipy.stats import rankdata

    rm = rankdata(-model_scores, axis=1, method="ordinal")
    rd = rankdata(-np.where(np.isnan(desc_max), -np.inf, desc_max), axis=1, method="ordinal")
    return 1.0 / (RRF_K + rm) + np.where(np.isnan(desc_max), 0.0, 1.0 / (RRF_K + rd))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--warehouse", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    a = p.parse_args(argv)
    from tasks import embed
    from models.relevance_model import load_model
    from tasks.train import TrainConfig, cross_validate
    from tasks.train_stage import load_training_set

    wh = Warehouse(a.warehouse)
    tmp = Path(tempfile.mkdtemp(prefix="fusion-bench-"))
    db = tmp / "with_sense.duckdb"
    shutil.copy(wh.db_path, db)
    started = time.perf_counter()
    with connect(db) as con:
        run_id, fp, head = con.execute("SELECT run_id, train_fingerprint, head FROM latest_run").fetchone()
    from prefect.logging import disable_run_logger

    with disable_run_logger():  # the tasks' bodies, outside a flow: everything comes from the caches
        images = embed.embed_images_task.fn(db, wh.embeddings_dir, wh.models_dir / "onnx")
        texts = embed.embed_texts_task.fn(db, wh.embeddings_dir, wh.models_dir / "onnx")
    model = load_model(wh.models_dir / fp)
    config = TrainConfig()
    ts = load_training_set(db, images, texts, config)
    cv = cross_validate(ts, config)
    s = cv.oof[head]
    ok = ~np.isnan(s)
    dmax_tr, dmean_tr = pair_description_scores(ts.txt, ts.described_image, len(ts.img), ts.pair_img, ts.pair_txt)

    with connect(db) as con:
        q = con.execute("""
            SELECT q.query_id, q.query_text, q.described_image FROM stg_test_queries q
            JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            WHERE NOT f.flagged ORDER BY q.query_id""", [run_id]).pl()
        gallery = con.execute("SELECT image FROM gallery ORDER BY image").pl()["image"].to_list()
        descs, _ = gallery_descriptions(con, run_id, gallery, lambda t: texts.vectors[texts.rows(t)])
    pos = {g: i for i, g in enumerate(gallery)}
    keep = [i for i, w in enumerate(q["described_image"]) if w in pos]
    txt = texts.vectors[texts.rows([q["query_text"][i] for i in keep])]
    ids = [q["query_id"][i] for i in keep]
    correct = np.array([pos[q["described_image"][i]] for i in keep])
    ms = model.score_matrix(images.features[images.rows("test", gallery)], txt, head)
    dmax, _ = description_scores(txt, descs, ids)

    rows = []
    for kind in FEATURE_SETS:
        f = Fusion.fit(kind, s[ok], dmax_tr[ok], dmean_tr[ok], ts.target[ok], ts.weight[ok])
        out = fusion_protocols(ms, f.score, descs, txt, ids, correct)
        rows.append({"fusion": f"{head} + {kind} (logistic regression)", "chosen": kind == model.fusions[head].kind,
                     "coef": [round(float(c), 4) for c in f.coef], "fallback_coef": round(f.fallback_coef, 4),
                     **{p: out[p] for p in ("p1_model_alone", "p2_product_own_description_left_out",
                                            "p3_product_no_descriptions")}})
    none = np.full_like(dmax, np.nan)
    base = fusion_protocols(ms, lambda m, x, y: m, descs, txt, ids, correct)
    rows.append({"fusion": "reciprocal rank fusion, k=60 (untuned)", "chosen": False,
                 "p1_model_alone": base["p1_model_alone"],
                 "p2_product_own_description_left_out": retrieval_metrics(rrf(ms, dmax), correct),
                 "p3_product_no_descriptions": retrieval_metrics(rrf(ms, none), correct)})
    rows.append({"fusion": "descriptions only (MiniLM max cosine)", "chosen": False,
                 "p1_model_alone": base["p1_model_alone"],
                 "p2_product_own_description_left_out": base["descriptions_only_own_left_out"],
                 "p3_product_no_descriptions": None})
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {platform.platform()}",
            "command": "python bench/fusion_variants.py --warehouse " + str(a.warehouse),
            "run_id": run_id, "head": head, "queries": len(keep), "gallery_photos": len(gallery),
            "labels": "each allowed saved query's own photo (test_queries.csv), reported only; fusions fitted "
                      "on training pairs' graded labels (expert + crowd), out-of-fold head scores",
            "seconds": round(time.perf_counter() - started, 1)}
    OUT.mkdir(exist_ok=True)
    (OUT / "fusion_variants.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Fusions of the image model and the description channel ({meta['date']})", "",
             f"Machine: {meta['machine']}. Command: `{meta['command']}` (run {run_id}, head {head}).",
             f"{len(keep)} allowed saved queries over {len(gallery)} gallery photos, law off. "
             "(1) model alone, (2) product with each query's own description left out, "
             "(3) product with every description removed.", "",
             "| fusion | (1) R@1 | (1) R@10 | (2) R@1 | (2) R@10 | (2) MRR | (3) R@1 | (3) R@10 | chosen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p1, p2, p3 = r["p1_model_alone"], r["p2_product_own_description_left_out"], r["p3_product_no_descriptions"]
        f3 = (f"{p3['recall_at_1']:.3f} | {p3['recall_at_10']:.3f}" if p3 else "— | —")
        lines.append(f"| {r['fusion']} | {p1['recall_at_1']:.3f} | {p1['recall_at_10']:.3f} | {p2['recall_at_1']:.3f} "
                     f"| {p2['recall_at_10']:.3f} | {p2['mrr']:.3f} | {f3} | {'yes' if r['chosen'] else ''} |")
    with connect(db) as con:
        recorded = con.execute("""
            SELECT head, protocol, metric, value FROM model_metrics
            WHERE run_id = ? AND component = 'relevance' AND metric IN ('recall_at_1', 'recall_at_10', 'mrr', 'n_queries')
              AND (protocol LIKE 'p%' OR protocol = 'descriptions_only_own_left_out')""", [run_id]).fetchall()
    got = {(h, p_, m): v for h, p_, m, v in recorded}
    lines += ["", f"As the run recorded them (model_metrics of run {run_id}; every head with its chosen fusion):", "",
              "| head | protocol | queries | R@1 | R@10 | MRR |", "|---|---|---|---|---|---|"]
    for h in sorted({k[0] for k in got}):
        for p_ in ("p1_model_alone", "p2_product_own_description_left_out", "p3_product_no_descriptions",
                   "descriptions_only_own_left_out", "p2_product_shown_photos"):
            if (h, p_, "recall_at_1") in got:
                lines.append(f"| {h} | {p_} | {int(got[(h, p_, 'n_queries')])} | {got[(h, p_, 'recall_at_1')]:.3f} "
                             f"| {got[(h, p_, 'recall_at_10')]:.3f} | {got[(h, p_, 'mrr')]:.3f} |")
    (OUT / "fusion_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
