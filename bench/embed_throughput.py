"""Image-encoder throughput benchmark (not a test): photos/s end to end, torch vs ONNX Runtime.

    python bench/embed_throughput.py                     # the pipeline's default configuration:
                                                         #   writes bench/results/embed_throughput.{json,md}
    python bench/embed_throughput.py --variants lite2 lite0 --precisions fp32 int8   # per network

Default (pipeline) mode: the embedding step exactly as the reindex runs it,
``tasks.embed.embed_photos`` with ``photo_encoders`` (relevance view + photo-guard view, each
photo read and decoded once and fed to both networks by the same worker, both Parquet
caches written into a fresh folder per pass), against the plain PyTorch reference (the same
two modules, torch backend, fp32, all cores as intra-op threads, decoding in the same
``encode_views`` loop).  Printed: photos/s of each, the speed-up, FLOPs per photo of the
networks used, GFLOP/s and the fraction of the processor's fp32 peak, and the deviation of
every output from the torch reference (max |diff|, cosine min/mean): the feature tolerance.
``--torch-limit N`` times the (slow) torch reference on the first N photos only.

Per-network mode (``--variants``):
End to end = open + read + JPEG decode + resize (+ EXIF, RGB) + forward, through the
pipeline's own ``ImageEncoder.encode_paths`` (``--workers`` threads each decode and encode
their own batch), on all photos of ``train_images/`` and ``test_images/``.  Each (variant, backend) runs in a fresh
spawned process (clean peak RSS, no thread-pool interference between torch and ORT); setup
(export / session build) and one warm-up batch are excluded; the photo files are in the page
cache after the first pass.  photos/s is the median of ``--repeats`` passes.  On a shared
machine, ``--wait-idle 600`` waits (up to 600 s) before each pass until other processes use
< 0.15 core; the bg column reports what they used anyway.

Printed per row: photos/s, speed-up over the torch reference, network GFLOP/s and fraction of
the processor's fp32 peak, the features' deviation from the torch reference on the same
photos (max |diff|, cosine), top-1 agreement of the logits, a retrieval-quality proxy when
``ExpertAnnotations.tsv`` is present (AUC of feature cosine between photo pairs experts judged
relevant (mean score >= 3) vs irrelevant (<= 1.5)), peak RSS, and the CPU load of *other*
processes during the timed passes (the machine is shared; a row with bg > 0.1 is suspect).

Peak: cores x clock x fp32 FLOP/cycle.  FLOP/cycle per core: Zen 2/3/4 (AMD family 0x17 /
0x19) have two 256-bit FMA pipes -> 2 x 8 lanes x 2 = 32 (Zen 4 runs AVX-512 double-pumped on
them, so AVX-512 does not double it); Zen 5 (0x1A) and Intel AVX-512 server cores with two
512-bit FMA units -> 64; otherwise AVX2 -> 32.  The clock is the "cpu MHz" of /proc/cpuinfo
(in a VM that is the nominal/TSC clock; real boost clocks can be higher) unless --clock-ghz.
A measured fp32 GEMM rate on the same threads is printed as the practically reachable peak.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))


# ----------------------------------------------------------------------------- machine


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    first = text.split("\n\n")[0]

    def field(name: str, default: str = "") -> str:
        m = re.search(rf"^{name}\s*:\s*(.*)$", first, re.M)
        return m.group(1).strip() if m else default

    flags = set(field("flags").split())
    vendor, family = field("vendor_id"), int(field("cpu family", "0"))
    if vendor == "AuthenticAMD":
        fpc = 64 if family >= 0x1A else 32
        why = f"AMD family {family:#x}: " + (
            "2 x 512-bit FMA" if fpc == 64 else "2 x 256-bit FMA pipes (AVX-512 double-pumped)"
        )
    elif "avx512f" in flags:
        fpc, why = 64, "Intel AVX-512: 2 x 512-bit FMA units (server cores)"
    else:
        fpc, why = 32, "AVX2: 2 x 256-bit FMA"
    return {
        "model": field("model name"), "mhz": float(field("cpu MHz", "0") or 0),
        "cores": os.cpu_count() or 1, "flops_per_cycle": fpc, "why": why,
    }


def busy_jiffies() -> int:
    """Busy CPU time of the whole machine (all processes), in clock ticks."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts[:8]) - idle


def wait_idle(max_wait: float, threshold: float = 0.15) -> None:
    """Sleep until other processes use < ``threshold`` cores over 2 s (at most ``max_wait`` s)."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        j0, c0 = busy_jiffies(), own_cpu_seconds()
        time.sleep(2)
        if ((busy_jiffies() - j0) / os.sysconf("SC_CLK_TCK") - (own_cpu_seconds() - c0)) / 2 < threshold:
            return
        time.sleep(5)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the face workers it spawned
    and joined), so their work is not counted as other processes' ("bg")."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def gemm_gflops(threads: int, n: int = 2048, reps: int = 8) -> float:
    """Best fp32 GEMM rate (numpy / OpenBLAS, ``threads`` threads): the reachable dense peak."""
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)  # read when numpy's OpenBLAS starts
    import numpy as np  # noqa: F811  (fresh spawned process: the variable above is seen)

    a, b = np.random.rand(n, n).astype(np.float32), np.random.rand(n, n).astype(np.float32)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def network_gflop(variant: str, size: int = 0, max_pool: bool = False) -> float:
    """FLOPs of one photo's forward (multiply-add = 2), counted by torch's FlopCounterMode."""
    import models  # noqa: F401
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.image_encoder import NATIVE_SIZE, encoder_module

    s = size or NATIVE_SIZE[variant]
    net = encoder_module(variant, s, max_pool)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, s, s, 3, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------------- one run (child)


def prepare_backend(variant, backend, precision, calib, cache_dir) -> None:
    """Build the cached ONNX export (and int8 model) in its own process, outside the timing."""
    import models  # noqa: F401
    from models.image_encoder import ImageEncoder, ImageEncoderConfig

    if backend == "onnx":
        cfg = ImageEncoderConfig(variant=variant, precision=precision)
        ImageEncoder(cfg, Path(cache_dir), calibration_images=calib if precision == "int8" else None)


def run_backend(variant, backend, precision, paths, calib, batch_size, workers, threads, cache_dir, repeats,
                max_wait):
    import models  # noqa: F401
    from models.image_encoder import ImageEncoder, ImageEncoderConfig

    t0 = time.perf_counter()
    cfg = ImageEncoderConfig(variant=variant, backend=backend, precision=precision,
                             batch_size=batch_size, workers=workers, threads=threads)
    enc = ImageEncoder(cfg, Path(cache_dir), calibration_images=calib if precision == "int8" else None)
    setup_s = time.perf_counter() - t0  # cached export: model load + session build only
    enc.encode_paths(paths[: 2 * batch_size])  # warm-up: arena allocation, kernel selection
    rates, bg = [], []
    for _ in range(repeats):
        wait_idle(max_wait)
        j0, c0, t = busy_jiffies(), own_cpu_seconds(), time.perf_counter()
        feats, logits = enc.encode_paths(paths)
        wall = time.perf_counter() - t
        others = (busy_jiffies() - j0) / os.sysconf("SC_CLK_TCK") - (own_cpu_seconds() - c0)
        rates.append(len(paths) / wall)
        bg.append(max(0.0, others / wall))
    # What bounds it: the forward alone (one decoded batch, repeated) and decoding alone.
    from models.image_encoder import load

    from concurrent.futures import ThreadPoolExecutor

    pixels = np.stack([load(p, enc.size) for p in paths[:batch_size]])
    fwd, n = [], 2 * workers if backend == "onnx" else workers
    with ThreadPoolExecutor(workers) as pool:  # the same parallelism as encode(), no decoding
        for _ in range(3):
            t = time.perf_counter()
            list(pool.map(enc.forward, [pixels] * n))
            fwd.append((time.perf_counter() - t) / (n * len(pixels)))
    t = time.perf_counter()
    for p in paths[:200]:
        load(p, enc.size)
    dec_s = (time.perf_counter() - t) / len(paths[:200])
    return {
        "version": enc.version, "rates": rates, "bg": bg, "setup_s": setup_s,
        "fwd_s": float(np.median(fwd)), "dec_s": dec_s,
        "feats": feats, "logits": logits,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ----------------------------------------------------------------------------- pipeline mode (child)


def run_pipeline(paths, cache_dir, repeats, max_wait, precision: str = "", faces: bool = True) -> dict:
    """The reindex's embedding step on ``paths``: both views and (``faces``) the face signal,
    one decode per photo, every cache written (into a fresh temporary folder per pass).  Setup
    and one warm-up batch excluded.  ``precision`` ('fp32' / 'int8') overrides the views'
    precision, '' keeps the defaults."""
    import tempfile
    from dataclasses import replace

    import models  # noqa: F401
    from models.image_encoder import encode_views, photo_hash
    from tasks.embed import embed_photos, photo_encoders
    from tasks.embedding_cache import FACES, calibration_sample, encoder_dir, load_cached

    shas = [photo_hash(p) for p in paths]  # ingest hashes the files; not part of embedding
    if precision:
        import tasks.embed
        import tasks.photo_views

        tasks.embed.RELEVANCE_VIEW = replace(tasks.embed.RELEVANCE_VIEW, precision=precision)
        tasks.photo_views.GUARD_VIEW = replace(tasks.photo_views.GUARD_VIEW, precision=precision)
    t0 = time.perf_counter()
    encoders = photo_encoders(Path(cache_dir), calibration_sample(paths, shas))
    setup_s = time.perf_counter() - t0
    list(encode_views(list(encoders.values()), paths[:8]))  # warm-up
    rates, bg = [], []
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        for r in range(repeats):
            wait_idle(max_wait)
            root = Path(tmp) / f"pass{r}"
            j0, c0, t = busy_jiffies(), own_cpu_seconds(), time.perf_counter()
            embed_photos(paths, shas, root, encoders, faces=FACES if faces else None)
            wall = time.perf_counter() - t
            others = (busy_jiffies() - j0) / os.sysconf("SC_CLK_TCK") - (own_cpu_seconds() - c0)
            rates.append(len(paths) / wall)
            bg.append(max(0.0, others / wall))
        arrays = {}
        for kind, enc in encoders.items():
            found = load_cached(encoder_dir(root, kind, enc.name), shas, enc.outputs)
            arrays[kind] = {o: np.stack([found[o][s] for s in shas]) for o in enc.outputs}
    return {"rates": rates, "bg": bg, "setup_s": setup_s, "arrays": arrays,
            "views": {kind: (enc.config, enc.version) for kind, enc in encoders.items()},
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_torch_reference(paths, cache_dir, threads) -> dict:
    """The same views with the plain PyTorch forward (fp32), decoding in the same loop."""
    from dataclasses import replace

    import models  # noqa: F401
    from models.image_encoder import ImageEncoder, encode_views
    from tasks.embed import RELEVANCE_VIEW
    from tasks.photo_views import GUARD_VIEW

    encoders = {kind: ImageEncoder(replace(view, backend="torch", precision="fp32", workers=1, threads=threads),
                                   Path(cache_dir))
                for kind, view in (("image", RELEVANCE_VIEW), ("photo_guard", GUARD_VIEW))}
    list(encode_views(list(encoders.values()), paths[:2]))  # warm-up
    parts = {kind: {o: [] for o in enc.outputs} for kind, enc in encoders.items()}
    j0, c0, t = busy_jiffies(), own_cpu_seconds(), time.perf_counter()
    for outs in encode_views(list(encoders.values()), paths):
        for (kind, enc), out in zip(encoders.items(), outs):
            for o in enc.outputs:
                parts[kind][o].append(out[o])
    wall = time.perf_counter() - t
    others = (busy_jiffies() - j0) / os.sysconf("SC_CLK_TCK") - (own_cpu_seconds() - c0)
    return {"rate": len(paths) / wall, "bg": max(0.0, others / wall),
            "arrays": {k: {o: np.concatenate(v) for o, v in d.items()} for k, d in parts.items()}}


def pipeline_main(args, paths, ctx_child, peak, gemm, threads) -> None:
    n_ref = min(len(paths), args.torch_limit or len(paths))
    print(f"running the pipeline's embedding step ({args.repeats} passes over {len(paths)} photos) ...", flush=True)
    pipe = ctx_child(run_pipeline, paths, str(args.cache_dir), args.repeats, args.wait_idle)
    print("running the same step without the face signal ...", flush=True)
    views_only = ctx_child(run_pipeline, paths, str(args.cache_dir), args.repeats, args.wait_idle, "", False)
    fp32 = None
    if args.also_fp32:
        print("running the same step with both views in ONNX fp32 ...", flush=True)
        fp32 = ctx_child(run_pipeline, paths, str(args.cache_dir), args.repeats, args.wait_idle, "fp32")
    print(f"running the plain PyTorch reference ({n_ref} photos) ...", flush=True)
    ref = ctx_child(run_torch_reference, paths[:n_ref], str(args.cache_dir), threads)
    gflop = {kind: ctx_child(network_gflop, cfg.variant, cfg.size, cfg.max_pool)
             for kind, (cfg, _) in pipe["views"].items()}
    per_photo = sum(gflop.values())
    rate = float(np.median(pipe["rates"]))
    runs = "/".join(f"{x:.0f}" for x in pipe["rates"])
    print(f"\nviews per photo (one decode each):")
    for kind, (cfg, version) in pipe["views"].items():
        print(f"  {kind:<12} {version}  {gflop[kind]:.3f} GFLOP")
    print(f"FLOPs per photo of the networks used: {per_photo:.3f} GFLOP (FlopCounterMode, multiply-add = 2)\n")
    hdr = f"{'':<22}{'photos/s':>9}{'(runs)':>16}{'x torch':>8}{'GFLOP/s':>9}{'%peak':>7}{'%GEMM':>7}{'bg':>6}"
    print(hdr + "\n" + "-" * len(hdr))
    rows = [("torch reference fp32", ref["rate"], f"{ref['rate']:.1f}", ref["bg"])]
    if fp32:
        rows.append(("onnx fp32 (both views)", float(np.median(fp32["rates"])),
                     "/".join(f"{x:.0f}" for x in fp32["rates"]), max(fp32["bg"])))
    rows.append(("views only (no faces)", float(np.median(views_only["rates"])),
                 "/".join(f"{x:.0f}" for x in views_only["rates"]), max(views_only["bg"])))
    rows.append(("pipeline default", rate, runs, max(pipe["bg"])))
    for label, r, rr, b in rows:
        g = r * per_photo
        print(f"{label:<22}{r:>9.1f}{rr:>16}{r / ref['rate']:>8.2f}{g:>9.0f}{100 * g / peak:>6.0f}%"
              f"{100 * g / gemm:>6.0f}%{b:>6.2f}")
    print(f"\nfeature tolerance vs the torch reference ({n_ref} photos):")
    print(f"  {'view':<12}{'output':<14}{'max|diff|':>10}{'cos min':>10}{'cos mean':>10}{'top1=':>7}")
    for kind, outs in ref["arrays"].items():
        for o, want in outs.items():
            got = pipe["arrays"][kind][o][:n_ref]
            d = deviation(got, pipe["arrays"][kind]["logits"][:n_ref], want, outs["logits"])
            top1 = f"{d['top1']:.3f}" if o == "logits" else ""
            print(f"  {kind:<12}{o:<14}{d['max_abs']:>10.2e}{d['cos_min']:>10.5f}{d['cos_mean']:>10.5f}{top1:>7}")
    print(f"""
photos/s: end to end (read + decode + resize + both forwards + the face signal on the decoded
  photo + every Parquet cache written), median of the passes; "views only" leaves the faces out;
  the torch reference decodes in the same loop but writes nothing.
GFLOP/s = {per_photo:.3f} GFLOP/photo x photos/s; %peak of the {peak:.0f} GFLOP/s fp32 peak above (int8
  work counted as the same FLOPs); %GEMM of the measured GEMM rate.  bg: cores used by other
  processes during the timed passes (the machine is shared; > 0.1 makes the row suspect).
setup (sessions, plus any ONNX export / int8 calibration not cached yet in --cache-dir):
  {pipe['setup_s']:.1f} s; peak RSS {pipe['rss_mib']:.0f} MiB.""")
    tolerance = []
    for kind, outs in ref["arrays"].items():
        for o, want in outs.items():
            d = deviation(pipe["arrays"][kind][o][:n_ref], pipe["arrays"][kind]["logits"][:n_ref], want, outs["logits"])
            tolerance.append({"view": kind, "output": o, **{k: float(v) for k, v in d.items()}})
    table = [{"step": label, "photos_per_s": round(r, 2), "passes": rr, "x_torch": round(r / ref["rate"], 2),
              "gflop_per_s": round(r * per_photo, 1), "share_of_fp32_peak": round(r * per_photo / peak, 3),
              "background_cores": round(b, 2)} for label, r, rr, b in rows]
    md = ["# Embedding step throughput (the reindex's configuration)",
          f"{len(paths)} photos; views per photo (one decode each): "
          + ", ".join(f"{kind} `{version}` {gflop[kind]:.3f} GFLOP" for kind, (cfg, version) in pipe["views"].items())
          + f"; fp32 peak assumed {peak:.0f} GFLOP/s, measured GEMM {gemm:.0f} GFLOP/s.", "",
          "| step | photos/s | passes | × torch | GFLOP/s | share of fp32 peak | other processes (cores) |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {t['step']} | {t['photos_per_s']} | {t['passes']} | {t['x_torch']} | {t['gflop_per_s']} | "
           f"{100 * t['share_of_fp32_peak']:.0f} % | {t['background_cores']} |" for t in table]
    md += ["", f"Feature tolerance against the torch fp32 reference ({n_ref} photos):", "",
           "| view | output | max abs diff | cosine min | cosine mean | top-1 agreement |", "|---|---|---|---|---|---|"]
    md += [f"| {t['view']} | {t['output']} | {t['max_abs']:.2e} | {t['cos_min']:.5f} | {t['cos_mean']:.5f} | "
           f"{t['top1']:.3f} |" for t in tolerance]
    md += ["", "photos/s: end to end (read + decode + resize + both forwards + the face signal on the decoded photo "
           "+ every cache written), median of the passes; 'views only' leaves the faces out; the torch reference "
           f"decodes in the same loop and writes nothing.  Setup {pipe['setup_s']:.1f} s, peak RSS "
           f"{pipe['rss_mib']:.0f} MiB."]
    from bench import results_io

    for path in results_io.write("embed_throughput", {"photos": len(paths), "steps": table, "tolerance": tolerance,
                                                     "gflop_per_photo": gflop, "peak_gflops": peak, "gemm_gflops": gemm},
                                 md):
        print("wrote", path)


# ----------------------------------------------------------------------------- quality


def pair_auc(feats: np.ndarray, paths: list[Path], data_dir: Path) -> float | None:
    """AUC of cos(photo, photo whose caption was the query) for expert-relevant vs -irrelevant."""
    tsv = data_dir / "ExpertAnnotations.tsv"
    if not tsv.exists():
        return None
    from scipy.stats import rankdata

    index = {p.name: i for i, p in enumerate(paths) if p.parent.name == "train_images"}
    a, b, score = [], [], []
    for line in tsv.read_text().splitlines():
        img, query, *s = line.split("\t")
        src = query.split("#")[0]
        if img in index and src in index and img != src:
            a.append(index[img]), b.append(index[src]), score.append(np.mean([float(x) for x in s[:3]]))
    score = np.array(score)
    if not (score >= 3).any() or not (score <= 1.5).any():
        return None
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = (f[a] * f[b]).sum(1)
    pos, neg = sim[score >= 3], sim[score <= 1.5]
    r = rankdata(np.concatenate([pos, neg]))[: len(pos)]
    return float((r.sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def deviation(f, lg, ref_f, ref_lg) -> dict:
    cos = (f * ref_f).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(ref_f, axis=1))
    return {
        "max_abs": float(np.abs(f - ref_f).max()), "cos_min": float(cos.min()),
        "cos_mean": float(cos.mean()), "top1": float((lg.argmax(1) == ref_lg.argmax(1)).mean()),
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    default_data = Path(os.environ.get("WITH_SENSE_DATA_DIR", PROJECT_ROOT / "data" / "with_sense"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=default_data)
    ap.add_argument("--variants", nargs="+", choices=["lite2", "lite0"],
                    help="per-network mode (native sizes) instead of the pipeline's configuration")
    ap.add_argument("--also-fp32", action="store_true",
                    help="pipeline mode: also time the same step with both views in ONNX fp32")
    ap.add_argument("--torch-limit", type=int, default=0,
                    help="pipeline mode: time the torch reference on the first N photos only (0: all)")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "int8"],
                    help="ONNX precisions to time (int8: calibrated on --calib train photos)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="batches in parallel")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per forward")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per ONNX backend")
    ap.add_argument("--torch-repeats", type=int, default=1, help="timed passes of the torch reference")
    ap.add_argument("--calib", type=int, default=128, help="int8 calibration photos (train, seeded)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N photos (0: all)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each timed pass wait up to S seconds for the machine to be idle")
    ap.add_argument("--cache-dir", type=Path, help="ONNX exports (default: ~/.cache/with_sense/image_encoder)",
                    default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "with_sense" / "image_encoder")
    ap.add_argument("--clock-ghz", type=float, default=0.0, help="override the clock for the peak")
    ap.add_argument("--flops-per-cycle", type=int, default=0, help="override fp32 FLOP/cycle/core")
    args = ap.parse_args()

    paths = sorted((args.data_dir / "train_images").glob("*.jpg")) + sorted(
        (args.data_dir / "test_images").glob("*.jpg"))
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        sys.exit(f"no photos under {args.data_dir}/{{train,test}}_images (set --data-dir)")
    train = [p for p in paths if p.parent.name == "train_images"] or paths
    rng = np.random.default_rng(20261123)
    calib = [train[i] for i in sorted(rng.choice(len(train), min(args.calib, len(train)), replace=False))]

    cpu = cpu_info()
    clock = args.clock_ghz or cpu["mhz"] / 1000
    fpc = args.flops_per_cycle or cpu["flops_per_cycle"]
    threads = args.workers * args.threads  # cores used
    peak = threads * clock * fpc
    ctx = get_context("spawn")

    def child(fn, *a):
        with ProcessPoolExecutor(1, mp_context=ctx) as ex:
            return ex.submit(fn, *a).result()

    gemm = child(gemm_gflops, threads)
    print(f"CPU: {cpu['model']} | {cpu['cores']} logical CPUs | encoder: {args.workers} workers x "
          f"{args.threads} intra-op threads = {threads} cores | "
          f"clock {clock:.2f} GHz ({'--clock-ghz' if args.clock_ghz else '/proc/cpuinfo'})")
    print(f"fp32 peak assumption: {threads} cores x {clock:.2f} GHz x {fpc} FLOP/cycle "
          f"({cpu['why']}) = {peak:.0f} GFLOP/s\nmeasured fp32 GEMM (numpy/OpenBLAS, {threads} threads): "
          f"{gemm:.0f} GFLOP/s, i.e. an effective clock >= {gemm / (threads * fpc):.2f} GHz at {fpc} FLOP/cycle")
    print(f"photos: {len(paths)} from {args.data_dir}  batch {args.batch_size}  "
          f"repeats onnx {args.repeats} / torch {args.torch_repeats}\n")

    if not args.variants:
        return pipeline_main(args, paths, child, peak, gemm, threads)

    rows = []
    for variant in args.variants:
        gflop = child(network_gflop, variant)
        jobs = [("torch", "fp32", args.torch_repeats)] + [("onnx", p, args.repeats) for p in args.precisions]
        ref = None
        for backend, precision, repeats in jobs:
            label = f"{variant} {backend}" + (f"-{precision}" if backend == "onnx" else "")
            print(f"running {label} ...", flush=True)
            child(prepare_backend, variant, backend, precision, calib, str(args.cache_dir))
            r = child(run_backend, variant, backend, precision, paths, calib, args.batch_size,
                      args.workers, args.threads, str(args.cache_dir), repeats, args.wait_idle)
            rate = float(np.median(r["rates"]))
            ref = ref or (r["feats"], r["logits"], rate)
            rows.append({
                "label": label, "version": r["version"], "rate": rate, "rates": r["rates"],
                "speedup": rate / ref[2], "gflops": rate * gflop, "gflop": gflop,
                "dev": deviation(r["feats"], r["logits"], ref[0], ref[1]),
                "auc": pair_auc(r["feats"], paths, args.data_dir),
                "rss": r["rss_mib"], "bg": max(r["bg"]), "setup": r["setup_s"],
                "fwd_ms": 1000 * r["fwd_s"], "dec_ms": 1000 * r["dec_s"],
            })

    hdr = (f"{'backend':<17}{'photos/s':>9}{'(runs)':>24}{'x torch':>8}{'fwd ms':>7}{'dec ms':>7}"
           f"{'GFLOP/s':>8}{'%peak':>6}{'%GEMM':>6}{'max|df|':>9}{'cos min':>9}{'cos mean':>9}"
           f"{'top1=':>7}{'pairAUC':>8}{'RSS MiB':>8}{'bg':>5}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        d = r["dev"]
        runs = "/".join(f"{x:.0f}" if x >= 10 else f"{x:.1f}" for x in r["rates"])
        auc = f"{r['auc']:.4f}" if r["auc"] is not None else "-"
        print(f"{r['label']:<17}{r['rate']:>9.1f}{runs:>24}{r['speedup']:>8.2f}{r['fwd_ms']:>7.2f}"
              f"{r['dec_ms']:>7.2f}{r['gflops']:>8.0f}{100 * r['gflops'] / peak:>5.0f}%"
              f"{100 * r['gflops'] / gemm:>5.0f}%{d['max_abs']:>9.1e}{d['cos_min']:>9.5f}"
              f"{d['cos_mean']:>9.5f}{d['top1']:>7.3f}{auc:>8}{r['rss']:>8.0f}{r['bg']:>5.2f}")
    gflop = ", ".join(sorted({f"{r['label'].split()[0]} {r['gflop']:.3f}" for r in rows}))
    print(f"""
photos/s: end to end, median of the runs.  fwd ms: wall time per photo of the forward alone
  (decoded batches of {args.batch_size}, same workers/threads); dec ms: read + decode + resize alone per
  photo on 1 thread.  Both share the {threads} cores: end-to-end ceiling ~ 1 / (fwd + dec / {threads}).
GFLOP/s = GFLOP/photo x photos/s (end to end); GFLOP/photo: {gflop} (FlopCounterMode,
  multiply-add = 2).  %peak: of the {peak:.0f} GFLOP/s fp32 peak above; %GEMM: of the measured GEMM
  rate.  int8 rows count the same FLOPs against the fp32 peak (VNNI int8 peak is higher).
max|df|, cos: features vs the torch reference of the same variant on the same photos; top1=:
  agreement of the ImageNet argmax.  pairAUC: expert-pair retrieval proxy (see the docstring).
RSS: peak of the timing process.  bg: cores used by other processes during the timed runs.""")
    for r in rows:
        print(f"  {r['label']:<17} {r['version']}  (setup {r['setup']:.1f} s, cached export)")


if __name__ == "__main__":
    main()
