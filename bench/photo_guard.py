"""Photo guard benchmark (not a test): what each signal adds, on visual labels and caption labels.

    python bench/photo_guard.py --warehouse DIR            # after `python -m flows.reindex --warehouse DIR`
    python bench/photo_guard.py --warehouse DIR --no-face-cost --no-upsampling   # quality only

Writes ``bench/results/photo_guard.json`` and ``bench/results/photo_guard.md``.

Evaluation (never fitted on the photos it reports on):

* **Visual labels** (``../shared/labels/visual_train.tsv``: 150 train photos labelled by
  looking at the pixels; minor yes 43 / no 90 / unsure 17).  The whole guard -- image
  classifier, its out-of-fold scores, the face gate, the combiner and every threshold -- is
  fitted exactly as a run fits it, on the *other* train photos (labels from captions, as in
  the pipeline), then applied to the 150 as new photos.  Reported: recall on ``yes``
  (photos showing a minor that are restricted) and the share of ``no`` photos restricted
  (clean photos withheld), with 95 % Clopper-Pearson intervals, for each signal set.  A
  train photo has one description (its caption); gallery photos have five.
* **Caption labels** beside them: the same 150 photos (label: a caption written for the
  photo, or judged to match it, is flagged), the 100 gallery photos against labels from their
  own five descriptions (circular for any row that uses descriptions: their recall is 1 by
  construction), and the run's out-of-fold figures on the 1000 train photos.
* **Face signal cost**: every one of the 1100 photos analysed into an empty cache (cold, as a
  cold run's embedding pass does), the same again from the cache, and the share of photos
  above the face gate (whose faces the guard uses).
* **Upsampling**: faces found on the 150 at several resize factors, CPU seconds per photo.

The machine is shared: wall seconds depend on its load (printed), CPU seconds much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import tasks  # noqa: E402,F401  (torchvision shim)
import polars as pl  # noqa: E402

VISUAL_LABELS = PROJECT_ROOT.parent / "shared" / "labels" / "visual_train.tsv"


# ------------------------------------------------------------------- inputs


def load_inputs(warehouse: Path, data_dir: Path) -> dict:
    """Train and gallery photos of the warehouse's latest run with their guard inputs (from
    the embedding caches the run filled), caption labels and description verdicts."""
    import duckdb

    from models.child_photo import photo_inputs, view_block
    from tasks.compliance import DESCRIPTIONS_SQL
    from tasks.embed import image_encoder
    from tasks.embedding_cache import encoder_dir, load_cached
    from tasks.photo_views import guard_encoder

    con = duckdb.connect(str(warehouse / "with_sense.duckdb"), read_only=True)
    run_id = con.execute("SELECT run_id FROM latest_run").fetchone()[0]
    train = con.execute("""
        SELECT p.image, p.path, p.sha256, r.image IS NOT NULL AS child
        FROM stg_photos p LEFT JOIN restricted_train_photos r USING (image)
        WHERE p.split = 'train' AND p.is_valid ORDER BY p.image""").pl()
    gallery = con.execute("SELECT g.image, g.path, g.sha256 FROM gallery g ORDER BY g.image").pl()
    train_desc = con.execute(DESCRIPTIONS_SQL, [run_id, "caption"]).pl()
    gallery_desc = con.execute(DESCRIPTIONS_SQL, [run_id, "query"]).pl()
    metrics = con.execute("SELECT head, protocol, metric, value FROM model_metrics WHERE run_id = ? "
                          "AND component = 'photo_guard'", [run_id]).pl()
    con.close()
    onnx = warehouse / "models" / "onnx"
    rel, grd = image_encoder(onnx), guard_encoder(onnx)
    emb = warehouse / "embeddings"

    def x_of(shas: list[str]) -> np.ndarray:
        a = load_cached(encoder_dir(emb, "image", rel.name), shas, ["features", "logits"])
        b = load_cached(encoder_dir(emb, "photo_guard", grd.name), shas, ["features", "logits", "max_features"])
        st = lambda m, o: np.stack([m[o][s] for s in shas])  # noqa: E731
        return photo_inputs(view_block(st(a, "features"), st(a, "logits")),
                            view_block(st(b, "features"), st(b, "logits"), st(b, "max_features")))

    return {"run_id": run_id, "train": train, "gallery": gallery, "train_desc": train_desc,
            "gallery_desc": gallery_desc, "x_train": x_of(train["sha256"].to_list()),
            "x_gallery": x_of(gallery["sha256"].to_list()), "metrics": metrics,
            "encoders": f"{rel.name} + {grd.name}", "emb_root": emb, "data_dir": data_dir}


def desc_flags(images: list[str], descriptions: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    from tasks.photo_guard import description_signals

    d = description_signals(images, descriptions)
    return d["descriptions_flagged"].to_numpy() > 0, d["n_descriptions"].to_numpy()


# ------------------------------------------------------------------- figures


def interval(k: int, n: int) -> list[float]:
    """Two-sided 95 % Clopper-Pearson interval for k of n."""
    from scipy import stats

    if n == 0:
        return [float("nan"), float("nan")]
    lo = 0.0 if k == 0 else float(stats.beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(0.975, k + 1, n - k))
    return [round(lo, 3), round(hi, 3)]


def visual_figures(restricted: np.ndarray, minor: np.ndarray) -> dict:
    r = np.asarray(restricted, bool)
    yes, no, unsure = minor == "yes", minor == "no", minor == "unsure"
    k_yes, k_no = int(r[yes].sum()), int(r[no].sum())
    return {"yes_restricted": k_yes, "yes": int(yes.sum()), "recall_yes": round(k_yes / max(yes.sum(), 1), 3),
            "recall_yes_ci95": interval(k_yes, int(yes.sum())),
            "no_restricted": k_no, "no": int(no.sum()), "clean_withheld": round(k_no / max(no.sum(), 1), 3),
            "clean_withheld_ci95": interval(k_no, int(no.sum())),
            "unsure_restricted": int(r[unsure].sum()), "unsure": int(unsure.sum())}


def caption_figures(restricted: np.ndarray, label: np.ndarray) -> dict:
    r, y = np.asarray(restricted, bool), np.asarray(label, bool)
    return {"recall": round(float(r[y].mean()), 3) if y.any() else None, "positives": int(y.sum()),
            "clean_withheld": round(float(r[~y].mean()), 3) if (~y).any() else None, "negatives": int((~y).sum())}


# ------------------------------------------------------------------- the evaluation


def evaluate(inp: dict, face_cache: Path, config) -> dict:
    """Fit on the train photos outside the visual sample, judge the visual sample as new photos."""
    from dataclasses import replace as dc_replace

    from models.face_age import FEATURES
    from models.signal_combiner import combiner_inputs
    from tasks.compliance import conservative_threshold
    from tasks.photo_guard import decide, description_signals, face_matrix, face_signals, fit_guard, needs_faces

    train, x = inp["train"], inp["x_train"]
    data_dir = inp["data_dir"]
    visual = pl.read_csv(VISUAL_LABELS, separator="\t").select("image", "minor")
    held = train["image"].is_in(visual["image"].to_list()).to_numpy()
    minor_of = dict(zip(visual["image"], visual["minor"]))
    paths = [data_dir / p for p in train["path"]]
    shas = train["sha256"].to_list()
    y = train["child"].to_numpy().astype(np.float32)

    def faces_of(rows: np.ndarray, subset: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(subset)[rows]
        frame, _ = face_signals([paths[i] for i in idx], [shas[i] for i in idx], face_cache, config.faces)
        return face_matrix(frame)

    fit_rows = ~held
    t0 = time.perf_counter()
    model = fit_guard(x[fit_rows], y[fit_rows], [shas[i] for i in np.flatnonzero(fit_rows)],
                      lambda r: faces_of(r, fit_rows), config)
    fit_seconds = time.perf_counter() - t0

    # The 150 as new photos: image score from the fitted classifier, faces above the gate, own description.
    hi = np.flatnonzero(held)
    names = [train["image"][int(i)] for i in hi]
    minor = np.array([minor_of[n] for n in names])
    img = model.image.score(x[held])
    need = needs_faces(img, model.face_gate)
    faces_all, _ = face_signals([paths[i] for i in hi], [shas[i] for i in hi], face_cache, config.faces)
    fm = face_matrix(faces_all)
    fm[~need] = np.nan
    desc, n_desc = desc_flags(names, inp["train_desc"])

    def verdict(with_desc: bool, threshold: float | None = None) -> np.ndarray:
        m = model if threshold is None else dc_replace(model, threshold=threshold)
        frame = description_signals(names, inp["train_desc"]).with_columns(
            pl.Series("image_score", img), pl.Series("face_checked", need),
            *[pl.Series(f, fm[:, i]) for i, f in enumerate(FEATURES)])
        if not with_desc:
            frame = frame.with_columns(pl.lit(0).alias("descriptions_flagged"))
        return decide(frame, m)["restricted"].to_numpy()

    image_only = ~(img < model.image_threshold)
    image_face = verdict(False)
    full = verdict(True)
    # The alternative the issue leaves open: let the descriptions count toward the recall floor
    # (the combiner's threshold then only has to catch what the training captions miss).
    desc_fit, _ = desc_flags([train["image"][int(i)] for i in np.flatnonzero(fit_rows)], inp["train_desc"])
    t_policy = conservative_threshold(np.where(desc_fit, np.inf, model.oof["combined"]), y[fit_rows])
    full_policy_floor = verdict(True, t_policy)
    caption_y = y[held] > 0.5
    rows = {
        "image classifier only": image_only,
        "image + face (a photo without descriptions)": image_face,
        "descriptions only": desc,
        "image + descriptions": image_only | desc,
        "full policy: descriptions, image, face (shipped)": full,
        "alternative: full policy, descriptions counted toward the recall floor": full_policy_floor,
    }
    table = {k: {"visual": visual_figures(v, minor), "caption_labels_same_150": caption_figures(v, caption_y)}
             for k, v in rows.items()}

    # For understanding only (tuned on the evaluation labels themselves, so optimistic): the best
    # recall on `yes` any threshold on the combined score reaches with <= 15 % of `no` withheld.
    comb = np.where(need, model.combiner.predict(combiner_inputs(img, fm, model.config.combiner)), -np.inf)
    frontier = {}
    for with_desc in (False, True):
        best = None
        for t in np.unique(np.concatenate([comb[np.isfinite(comb)], [np.inf]])):
            r = (comb >= t) | (desc if with_desc else False)
            w = r[minor == "no"].mean()
            if w <= 0.15 and (best is None or r[minor == "yes"].mean() > best[0]):
                best = (float(r[minor == "yes"].mean()), float(w), float(t))
        frontier["with descriptions" if with_desc else "image + face"] = (
            {"recall_yes": round(best[0], 3), "clean_withheld": round(best[1], 3), "threshold": best[2]} if best else None)
    misses = [{"image": n, "image_score": round(float(s), 4), "description_flagged": bool(d),
               "faces": None if not np.isfinite(f[0]) else int(f[0]),
               "youngest_age": None if not np.isfinite(f[1]) else float(f[1])}
              for n, s, d, f, r, m in zip(names, img, desc, fm, full, minor) if m == "yes" and not r]
    return {"fit_photos": int(fit_rows.sum()), "held_out": len(names), "fit_seconds": round(fit_seconds, 1),
            "photos_with_descriptions": int((n_desc > 0).sum()),
            "thresholds": {"image_threshold": model.image_threshold, "face_gate": model.face_gate,
                           "combined_threshold": model.threshold, "alternative_threshold": t_policy},
            "faces_checked": int(need.sum()), "table": table, "frontier_at_15pct_clean_withheld": frontier,
            "missed_yes_full_policy": misses, "fit_cv": {k: round(v, 4) for k, v in model.cv.items()}}


def gallery_figures(inp: dict, face_cache: Path, config, run_model) -> dict:
    """The run's fitted guard on the 100 gallery photos, labels from their own descriptions."""
    from models.face_age import FEATURES
    from tasks.photo_guard import decide, description_signals, face_matrix, face_signals, needs_faces

    g = inp["gallery"]
    names = g["image"].to_list()
    img = run_model.image.score(inp["x_gallery"])
    need = needs_faces(img, run_model.face_gate)
    frame, _ = face_signals([inp["data_dir"] / p for p in g["path"]], g["sha256"].to_list(), face_cache, config.faces)
    fm = face_matrix(frame)
    fm[~need] = np.nan
    desc, _ = desc_flags(names, inp["gallery_desc"])
    base = description_signals(names, inp["gallery_desc"]).with_columns(
        pl.Series("image_score", img), pl.Series("face_checked", need),
        *[pl.Series(f, fm[:, i]) for i, f in enumerate(FEATURES)])
    full = decide(base, run_model)["restricted"].to_numpy()
    alone = decide(base.with_columns(pl.lit(0).alias("descriptions_flagged")), run_model)["restricted"].to_numpy()
    image_only = ~(img < run_model.image_threshold)
    return {"labels": "a gallery photo is 'child' when one of its five descriptions is flagged (44 of 100)",
            "image classifier only": caption_figures(image_only, desc),
            "image + face (a photo without descriptions)": caption_figures(alone, desc),
            "full policy (shipped; recall 1 by construction)": {**caption_figures(full, desc),
                                                              "restricted": int(full.sum())},
            "faces_checked": int(need.sum())}


def face_cost(inp: dict, config, gate_share: float) -> dict:
    """Every photo through the face signal into an empty cache (cold), then again (cached)."""
    from tasks.photo_guard import face_signals

    photos = pl.concat([inp["train"].select("path", "sha256"), inp["gallery"].select("path", "sha256")])
    paths = [inp["data_dir"] / p for p in photos["path"]]
    with tempfile.TemporaryDirectory() as tmp:
        load0 = os.getloadavg()[0]
        _, cold = face_signals(paths, photos["sha256"].to_list(), Path(tmp), config.faces)
        load1 = os.getloadavg()[0]
        _, warm = face_signals(paths, photos["sha256"].to_list(), Path(tmp), config.faces)
    return {"photos": len(paths), "cold": {k: round(v, 2) for k, v in cold.items()},
            "cached": {k: round(v, 2) for k, v in warm.items()},
            "cpu_seconds_per_photo": round(cold["face_cpu_seconds"] / max(cold["faces_analysed"], 1), 4),
            "load_average_before_after": [round(load0, 2), round(load1, 2)],
            "gated_share_of_photos": round(gate_share, 3)}


def upsampling(inp: dict, factors: list[float]) -> list[dict]:
    """Faces found on the 150 visually labelled photos at several resize factors."""
    from dataclasses import replace

    from models.face_age import FaceAgeConfig, analyse_photos
    from tasks.photo_guard import _cpu_seconds

    visual = pl.read_csv(VISUAL_LABELS, separator="\t").select("image", "minor")
    t = inp["train"].join(visual, on="image")
    paths = [inp["data_dir"] / p for p in t["path"]]
    minor = t["minor"].to_numpy()
    out = []
    for f in factors:
        cfg = replace(FaceAgeConfig(), upsample=f)
        c0 = _cpu_seconds()
        vecs = analyse_photos(paths, cfg, workers=1)
        cpu = _cpu_seconds() - c0
        m = np.stack([v for v in vecs])
        row = {"upsample": f, "cpu_seconds_per_photo": round(cpu / len(paths), 4),
               "photos_with_a_face": int((m[:, 0] > 0).sum())}
        for lab in ("yes", "no", "unsure"):
            s = minor == lab
            row[lab] = {"photos": int(s.sum()), "with_a_face": int((m[s, 0] > 0).sum()),
                        "youngest_under_16": int((m[s, 3] > 0).sum()),
                        "adult_faces_only": int(((m[s, 0] > 0) & (m[s, 3] == 0)).sum())}
        out.append(row)
        print("upsampling", json.dumps(row), flush=True)
    return out


# ------------------------------------------------------------------- report


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    from models.image_encoder import cpu_has_vnni, default_precision

    return {"cpu": cpu, "cores": os.cpu_count(), "vnni": cpu_has_vnni(), "encoder_precision": default_precision(),
            "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def markdown(res: dict) -> str:
    ev = res["visual_evaluation"]
    lines = [
        "# Photo guard benchmark: what each signal adds",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}  ",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, VNNI {res['machine']['vnni']} "
        f"(image encoders {res['machine']['encoder_precision']}); load average at the end {res['machine']['load_average']} "
        f"(shared machine: wall seconds are upper bounds, CPU seconds are not inflated by it).  ",
        f"Warehouse run: `{res['run_id']}`; encoders `{res['encoders']}`; face signal `{res['face_config']}`.",
        "",
        "## Visual labels: 150 train photos, held out",
        "",
        f"The guard is fitted as a run fits it on the {ev['fit_photos']} other train photos (caption labels), then "
        f"judges the {ev['held_out']} as new photos.  Thresholds from that fit: image {ev['thresholds']['image_threshold']:.4f}, "
        f"face gate {ev['thresholds']['face_gate']:.4f}, combined {ev['thresholds']['combined_threshold']:.4f}.  "
        f"{ev['faces_checked']} of the 150 were above the face gate.  {ev['photos_with_descriptions']} of the 150 have a "
        "description (train photos have one each; gallery photos five).  Intervals: 95 % Clopper–Pearson.",
        "",
        "| signals | minors restricted (`yes`, n=43) | clean withheld (`no`, n=90) | `unsure` restricted (n=17) | caption labels, same 150: recall / clean withheld |",
        "|---|---|---|---|---|",
    ]
    for name, row in ev["table"].items():
        v, c = row["visual"], row["caption_labels_same_150"]
        lines.append(f"| {name} | {v['yes_restricted']}/{v['yes']} = {pct(v['recall_yes'])} "
                     f"[{pct(v['recall_yes_ci95'][0])}, {pct(v['recall_yes_ci95'][1])}] | "
                     f"{v['no_restricted']}/{v['no']} = {pct(v['clean_withheld'])} "
                     f"[{pct(v['clean_withheld_ci95'][0])}, {pct(v['clean_withheld_ci95'][1])}] | "
                     f"{v['unsure_restricted']}/{v['unsure']} | {pct(c['recall'])} / {pct(c['clean_withheld'])} |")
    fr = ev["frontier_at_15pct_clean_withheld"]
    lines += ["", "Targets (issue 12, on the kept-back gallery labels): ≥ 97 % of minors never shown, ≤ 15 % of clean "
              "photos withheld.  For understanding only (the threshold tuned on these 150 labels themselves, so "
              "optimistic): the best recall on `yes` any threshold on the combined score reaches with ≤ 15 % of `no` "
              f"withheld is {pct(fr['image + face']['recall_yes']) if fr['image + face'] else '–'} without descriptions "
              f"and {pct(fr['with descriptions']['recall_yes']) if fr['with descriptions'] else '–'} with them.", ""]
    if ev["missed_yes_full_policy"]:
        lines.append("Minors the shipped policy misses on the 150: " + "; ".join(
            f"`{m['image']}` (image score {m['image_score']}, description flagged {m['description_flagged']}, "
            f"faces {m['faces']}, youngest {m['youngest_age']})" for m in ev["missed_yes_full_policy"]) + ".")
        lines.append("")
    g = res["gallery_caption_labels"]
    lines += ["## Gallery: 100 test photos, caption labels", "",
              f"The run's own fitted guard.  Labels: {g['labels']}; the visual gallery labels are kept back by the issue's "
              "author.  Any row using descriptions has recall 1 by construction here.", "",
              "| signals | recall | clean withheld |", "|---|---|---|"]
    for k in ("image classifier only", "image + face (a photo without descriptions)",
              "full policy (shipped; recall 1 by construction)"):
        lines.append(f"| {k} | {pct(g[k]['recall'])} ({g[k]['positives']} child) | {pct(g[k]['clean_withheld'])} "
                     f"({g[k]['negatives']} clean) |")
    oof = res["run_oof_train_photos"]
    lines += ["", "## The run's out-of-fold figures on the 1000 train photos (caption labels)", "",
              "| head | metric | value |", "|---|---|---|"]
    lines += [f"| {h} | {m} | {v:.4f} |" for h, m, v in oof]
    if res.get("face_cost"):
        fc = res["face_cost"]
        lines += ["", "## Face signal cost", "",
                  f"All {fc['photos']} photos into an empty cache: {fc['cold']['face_seconds']} s wall, "
                  f"{fc['cold']['face_cpu_seconds']} CPU s ({fc['cpu_seconds_per_photo']} CPU s per photo; load average "
                  f"{fc['load_average_before_after'][0]} → {fc['load_average_before_after'][1]}); the same photos again "
                  f"from the cache: {fc['cached']['face_seconds']} s.  A run analyses every new photo in its embedding "
                  f"pass, from the pixels it decodes for the image views (the file is read once for both), so a cold "
                  f"run pays all of it; the gate ({pct(fc['gated_share_of_photos'])} of the photos here) only decides "
                  f"whose faces the guard uses.  A run with no new photo analyses none."]
    if res.get("upsampling"):
        lines += ["", "## Upsampling (the 150 visually labelled photos)", "",
                  "| resize | CPU s / photo | photos with a face | `yes`: with a face / youngest < 16 | `no`: with a face / youngest < 16 |",
                  "|---|---|---|---|---|"]
        for u in res["upsampling"]:
            lines.append(f"| ×{u['upsample']:g} | {u['cpu_seconds_per_photo']} | {u['photos_with_a_face']} | "
                         f"{u['yes']['with_a_face']} / {u['yes']['youngest_under_16']} | "
                         f"{u['no']['with_a_face']} / {u['no']['youngest_under_16']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from tasks.config import default_data_dir
    from tasks.photo_guard import GuardConfig, face_cache_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warehouse", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    ap.add_argument("--no-face-cost", action="store_true")
    ap.add_argument("--no-upsampling", action="store_true")
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5])
    a = ap.parse_args(argv)
    config = GuardConfig()
    inp = load_inputs(a.warehouse, a.data_dir)
    face_cache = face_cache_dir(inp["emb_root"], config.faces)
    from tasks.compliance import load_guard

    (saved,) = [p for p in (a.warehouse / "models" / "photo_guard").glob(f"{inp['run_id']}.safetensors")]
    run_model = load_guard(saved, config)
    res = {"command": "python " + " ".join([os.path.relpath(__file__, PROJECT_ROOT), *sys.argv[1:]]) if argv is None
           else "python bench/photo_guard.py " + " ".join(argv),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "run_id": inp["run_id"],
           "encoders": inp["encoders"], "face_config": config.faces.name,
           "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                 text=True).stdout.strip()}
    res["visual_evaluation"] = evaluate(inp, face_cache, config)
    print(json.dumps(res["visual_evaluation"]["table"], indent=1), flush=True)
    res["gallery_caption_labels"] = gallery_figures(inp, face_cache, config, run_model)
    m = inp["metrics"].filter(pl.col("protocol") == "oof_train_photos").sort("head", "metric")
    keep = {"oof_roc_auc", "threshold", "oof_recall", "recall", "oof_recall_lower_bound", "oof_clean_withheld",
            "clean_withheld", "face_gate", "faces_needed_share", "oof_brier", "oof_precision", "precision"}
    res["run_oof_train_photos"] = [(h, mm, v) for h, mm, v in zip(m["head"], m["metric"], m["value"]) if mm in keep]
    if not a.no_face_cost:
        share = float(res["run_oof_train_photos"] and next((v for h, mm, v in res["run_oof_train_photos"]
                                                            if h == "image_face" and mm == "faces_needed_share"), 1.0))
        res["face_cost"] = face_cost(inp, config, share)
    if not a.no_upsampling:
        res["upsampling"] = upsampling(inp, a.factors)
    res["machine"] = machine()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "photo_guard.json").write_text(json.dumps(res, indent=1, default=float))
    (a.out / "photo_guard.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
