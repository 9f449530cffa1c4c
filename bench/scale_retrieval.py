"""Scale benchmark of the two-stage ranking (not a test): 10k, 100k and 1M photos x 1000 queries.

    python bench/scale_retrieval.py                       # 10k, 100k, 1M; writes bench/results/scale_retrieval.md
    python bench/scale_retrieval.py --sizes 10000 100000  # a quick look

Galleries are synthetic but have the real dimensions and the real heads: each synthetic
photo is a random blend a*x_i + (1-a)*x_j of two real EfficientNet feature vectors (1280-d)
from the warehouse's embedding cache (read lazily with polars), the queries are 1000 real
caption/query vectors (384-d), and the bridge and heads are the warehouse's latest fitted
model.  Without a warehouse, random features and a model fitted on them stand in (said in
the output).  Blends of 1100 real photos make many near-duplicates, which is hard for an
approximate first stage, not easy.

Per size, in a fresh process (clean peak RSS):
- build: photos -> text space (``bridge.image_to_text``, float64 as in the pipeline) in
  blocks; this is the index, built once (the bf16 / int8 copies are timed apart).
- first stage: exact float32 blocked top-C (C = 100), and the bf16 and int8 scans with
  float32 rescoring; median of ``--repeats`` runs.
- rerank: each head on the C candidates per query, then top-10.
- recall: bf16 / int8 first stage vs the exact first stage's top-10; and the heads' full
  top-10 (every photo scored by the head, on a query sample sized to 2M pairs) inside
  the exact top-C -- not at 1M, where scoring every pair is what the two stages avoid.
A last section ranks the 1100 real photos with the real test queries and reports the
heads' full top-10 recall at several C.  The cost exponent is the log-log slope of time
against gallery size.  The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import tasks  # noqa: E402,F401  (torchvision shim)
from tasks import retrieval as r  # noqa: E402

BLOCK = 65_536


# ------------------------------------------------------------------- sources


def load_sources(warehouse: Path, seed: int = 0):
    """(base photo features [B, 1280], query pool [T, 384], fitted model, description)."""
    import polars as pl

    from tasks.embedding_cache import encoder_dir
    from models.relevance_model import load_model

    cards = sorted(warehouse.glob("models/*/card.json"), key=lambda p: p.stat().st_mtime)
    if cards:
        card = json.loads(cards[-1].read_text())
        img_dir = encoder_dir(warehouse / "embeddings", "image", card["image_encoder"])
        txt_dir = encoder_dir(warehouse / "embeddings", "text", card["text_encoder"])
        if list(img_dir.glob("part-*.parquet")) and list(txt_dir.glob("part-*.parquet")):
            # Lazy scans: only the vector column is read, nothing else of the cache.
            feats = pl.scan_parquet(str(img_dir / "part-*.parquet")).select("features").collect()
            texts = pl.scan_parquet(str(txt_dir / "part-*.parquet")).select("embedding").collect()
            base = np.asarray(feats["features"].to_list(), dtype=np.float32)
            pool = np.asarray(texts["embedding"].to_list(), dtype=np.float32)
            return base, pool, load_model(cards[-1].parent), f"real vectors and heads from {warehouse}"
    rng = np.random.default_rng(seed)
    from models.bridge import Bridge
    from models.features import pair_features
    from models.lgbm_head import LgbmHead
    from models.mlp_head import MlpHead
    from models.relevance_model import FittedModel

    base = np.abs(rng.standard_normal((1100, 1280))).astype(np.float32)
    pool = rng.standard_normal((1500, 384)).astype(np.float32)
    bridge = Bridge.fit(base, pool[:1100])
    pi, pt = rng.integers(0, 1100, 20000), rng.integers(0, 1100, 20000)
    x = pair_features(bridge, base, pool[:1100], pi, pt)
    y = (pi == pt).astype(np.float32) * 0.8 + 0.2 * rng.random(len(pi)).astype(np.float32)
    model = FittedModel(bridge, {"lgbm": LgbmHead.fit(x, y), "mlp": MlpHead.fit(x, y)}, "lgbm")
    return base, pool, model, "random vectors and a model fitted on them (no warehouse found)"


class Gallery:
    """N synthetic photos, each a blend of two base photos; rows are made on demand."""

    def __init__(self, base: np.ndarray, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.base, self.n = base, n
        self.i = rng.integers(0, len(base), n).astype(np.int32)
        self.j = rng.integers(0, len(base), n).astype(np.int32)
        self.a = rng.random(n).astype(np.float32)[:, None]

    def features(self, rows: np.ndarray | slice) -> np.ndarray:
        a = self.a[rows]
        return a * self.base[self.i[rows]] + (1 - a) * self.base[self.j[rows]]


def queries(pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), n, replace=n > len(pool))
    return pool[pick]


# ------------------------------------------------------------------- one size


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), times, out


def run_size(n: int, args) -> dict:
    import torch

    from tasks.train import HEADS

    torch.set_num_threads(args.threads)
    base, pool, model, source = load_sources(Path(args.warehouse))
    gallery = Gallery(base, n, seed=n)
    txt = queries(pool, args.queries, seed=1)
    q = r.query_text_vectors(txt, model.bridge)
    c, out = args.candidates, {"n": n, "source": source, "head": model.head}
    cpu0, wall0 = os.times(), time.perf_counter()

    t = time.perf_counter()
    index = None
    for s in range(0, n, BLOCK):
        vecs = r.photo_text_vectors(model.bridge, gallery.features(slice(s, s + BLOCK)))
        if index is None:
            index = np.empty((n, vecs.shape[1]), np.float32)
        index[s : s + len(vecs)] = vecs
    out["build_s"] = time.perf_counter() - t
    fp32_blocks = r.matrix_blocks(index, BLOCK)
    out["exact_s"], out["exact_runs"], (cand, _) = timed(lambda: r.first_stage(q, fp32_blocks, c), args.repeats)
    for precision in ("bf16", "int8"):
        t = time.perf_counter()
        blocks = r.matrix_blocks(index, BLOCK, precision)  # the low-precision copy is part of the index
        out[f"build_{precision}_s"] = time.perf_counter() - t
        out[f"{precision}_s"], out[f"{precision}_runs"], (low, _) = timed(
            lambda: r.first_stage(q, blocks, c, precision=precision), args.repeats)
        out[f"recall_{precision}_of_exact_top10"] = r.recall_of(cand[:, :10], low)
        del blocks
    for head in HEADS:
        out[f"rerank_{head}_s"], _, _ = timed(lambda: r.rerank(model, lambda rows: index[rows], txt, cand, 10, head),
                                              args.repeats)
    for p in ("exact", "bf16", "int8"):
        out[f"total_{p}_s"] = out[f"{p}_s"] + out[f"rerank_{model.head}_s"]
    cpu1 = os.times()
    out["cpu_share"] = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (time.perf_counter() - wall0)

    sample = min(len(txt), 2_000_000 // n) if n <= args.head_audit_max else 0
    out["head_audit_queries"] = sample
    if sample:
        pick = np.linspace(0, len(txt) - 1, sample).round().astype(int)
        for head in HEADS:
            full = r.full_ranking(model, fp32_blocks, txt[pick], 10, head)
            out[f"recall_{head}_full_top10_at_C"] = r.recall_of(full, cand[pick])
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def real_gallery(args) -> dict:
    """The 1100 real photos (train + test) ranked for the real saved queries, every C."""
    import duckdb

    from tasks.train import HEADS

    base, pool, model, source = load_sources(Path(args.warehouse))
    db = Path(args.warehouse) / "with_sense.duckdb"
    if "real" not in source or not db.exists():
        return {}
    from tasks.embedding_cache import encoder_dir, load_cached, text_sha

    with duckdb.connect(str(db), read_only=True) as con:
        texts = [t for (t,) in con.execute("SELECT query_text FROM stg_test_queries ORDER BY query_id").fetchall()]
    card = json.loads(sorted(Path(args.warehouse).glob("models/*/card.json"), key=lambda p: p.stat().st_mtime)[-1]
                      .read_text())
    shas = [text_sha(t) for t in texts]
    found = load_cached(encoder_dir(Path(args.warehouse) / "embeddings", "text", card["text_encoder"]), shas,
                        ["embedding"])["embedding"]
    txt = np.stack([found[s] for s in shas])
    cs = [10, 20, 50, 100, 200]
    index = r.matrix_blocks(r.photo_text_vectors(model.bridge, base))
    cand, _ = r.first_stage(r.query_text_vectors(txt, model.bridge), index, max(cs))
    out = {"photos": len(base), "queries": len(txt)}
    for head in HEADS:
        full = r.full_ranking(model, index, txt, 10, head)
        out[head] = {c: r.recall_of(full, cand[:, :c]) for c in cs}
    return out


# ------------------------------------------------------------------- report


def slope(ns, ts) -> float:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def report(rows: list[dict], real: dict, args, load: tuple, cmd: str) -> str:
    c = args.candidates
    head = rows[0]["head"]
    lines = [
        "# Scale benchmark: two-stage ranking",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"torch threads {args.threads}; **shared and loaded** while measured: load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after (2 cores: 2.0 is a full machine).  `cpu` is the cores this process got over its timed "
        f"part (2.0 = both), so an idle machine would be up to 2/cpu times faster.  Times are medians of "
        f"{args.repeats} runs.  ",
        f"Data: {rows[0]['source']}; {args.queries} queries; C = {c} candidates per query; chosen head `{head}`.",
        "",
        f"| photos | index build (s) | first stage top-{c}: exact / bf16 / int8 (s) | rerank `{head}` (s) "
        f"| top-10 total: exact / bf16 / int8 (s) | bf16 / int8 recall of exact top-10 | peak RSS (GB) | cpu |",
        "|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for o in rows:
        lines.append(
            f"| {o['n']:,} | {o['build_s']:.1f} | {o['exact_s']:.2f} / {o['bf16_s']:.2f} / {o['int8_s']:.2f} | "
            f"{o[f'rerank_{head}_s']:.2f} | {o['total_exact_s']:.2f} / {o['total_bf16_s']:.2f} / "
            f"{o['total_int8_s']:.2f} | {o['recall_bf16_of_exact_top10']:.4f} / {o['recall_int8_of_exact_top10']:.4f} "
            f"| {o['peak_rss_gb']:.2f} | {o['cpu_share']:.2f} |")
    lines += ["", f"Rerank time per head on the {c} candidates (s): " + "; ".join(
        f"{o['n']:,}: " + ", ".join(f"{h} {o[f'rerank_{h}_s']:.2f}" for h in ("bridge", "lgbm", "mlp"))
        for o in rows)]
    audited = [o for o in rows if o["head_audit_queries"]]
    if audited:
        lines += ["", f"Share of each head's full top-10 (every photo scored by the head, on a sample of queries) "
                  f"inside the exact first stage's top-{c}:", "",
                  "| photos | queries audited | bridge | lgbm | mlp |", "|---:|---:|---:|---:|---:|"]
        for o in audited:
            lines.append(f"| {o['n']:,} | {o['head_audit_queries']} | " + " | ".join(
                f"{o[f'recall_{h}_full_top10_at_C']:.3f}" for h in ("bridge", "lgbm", "mlp")) + " |")
    if len(rows) >= 2:
        ns = [o["n"] for o in rows]
        lines += ["", "Cost exponent b in time ~ photos^b (least-squares log-log slope over "
                  f"{', '.join(f'{n:,}' for n in ns)}): "
                  + ", ".join(f"{name} {slope(ns, [o[key] for o in rows]):.2f}" for name, key in (
                      ("index build", "build_s"), ("exact first stage", "exact_s"), ("bf16", "bf16_s"),
                      ("int8", "int8_s"), (f"rerank {head}", f"rerank_{head}_s")))
                  + ".  Peak RSS: " + f"{slope(ns, [o['peak_rss_gb'] for o in rows]):.2f}."]
    lines += ["", "Every first-stage run (s): " + "; ".join(
        f"{o['n']:,}: exact " + ", ".join(f"{t:.2f}" for t in o["exact_runs"])
        + " / bf16 " + ", ".join(f"{t:.2f}" for t in o["bf16_runs"])
        + " / int8 " + ", ".join(f"{t:.2f}" for t in o["int8_runs"]) for o in rows)]
    if real:
        lines += ["", f"## Real gallery: {real['photos']} photos (train + test) x {real['queries']} saved queries",
                  "", "Share of each head's full top-10 inside the exact first stage's top-C:", "",
                  "| head | " + " | ".join(f"C={c}" for c in real["bridge"]) + " |",
                  "|---|" + "---:|" * len(real["bridge"])]
        for h in ("bridge", "lgbm", "mlp"):
            lines.append(f"| {h} | " + " | ".join(f"{v:.3f}" for v in real[h].values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--head-audit-max", type=int, default=100_000, help="largest gallery whose heads score every pair")
    p.add_argument("--warehouse", default=os.environ.get("WITH_SENSE_WAREHOUSE", str(PROJECT_ROOT / "warehouse")))
    p.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results" / "scale_retrieval.md"))
    p.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--real-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_size:
        print(json.dumps(run_size(args.one_size, args)))
        return 0
    if args.real_only:
        print(json.dumps(real_gallery(args)))
        return 0
    cmd = "python bench/scale_retrieval.py " + " ".join(sys.argv[1:])
    load0 = os.getloadavg()[0]
    rows = []
    passthrough = ["--queries", str(args.queries), "--candidates", str(args.candidates), "--repeats",
                   str(args.repeats), "--threads", str(args.threads), "--head-audit-max", str(args.head_audit_max),
                   "--warehouse", args.warehouse]
    for n in args.sizes:
        res = subprocess.run([sys.executable, __file__, "--one-size", str(n), *passthrough],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        o = rows[-1]
        print(f"{n:>9,} photos: build {o['build_s']:.1f}s  exact {o['exact_s']:.2f}s  bf16 {o['bf16_s']:.2f}s  "
              f"int8 {o['int8_s']:.2f}s  rerank {o['rerank_' + o['head'] + '_s']:.2f}s  "
              f"recall bf16 {o['recall_bf16_of_exact_top10']:.4f} int8 {o['recall_int8_of_exact_top10']:.4f}  "
              f"rss {o['peak_rss_gb']:.2f} GB  cpu {o['cpu_share']:.2f}", flush=True)
    res = subprocess.run([sys.executable, __file__, "--real-only", *passthrough], check=True, capture_output=True,
                         text=True)
    real = json.loads(res.stdout.strip().splitlines()[-1])
    text = report(rows, real, args, (load0, os.getloadavg()[0]), cmd)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
