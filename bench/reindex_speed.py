"""Whole-reindex benchmark: cold vs nothing-new vs 10-new-photos, in one run.

    .venv/bin/python bench/reindex_speed.py [--data-dir DIR] [--repeats 1] [--server]

Writes bench/results/reindex_speed[_server].{json,md}.  Each mode runs `python -m flows.reindex`
as its own process, timed from outside, on Prefect's ephemeral server (the default) or, with
``--server``, against a Prefect server this benchmark starts first (how the nightly deployment
runs: no server start-up inside the run); peak resident memory is the process's maxrss.
Each reindex runs under ``bench/count_opens.py`` (strace): how often each photo file was opened,
by any process of the run.
- cold:       empty warehouse (no embedding cache, no trained heads)
- no change:  the same inputs again on the warm warehouse
- 10 new:     ten new gallery photos added (new files, new content hashes)
- floor:      an empty Prefect flow in the same mode (own process, ephemeral server), alone
              and after importing flows.reindex: the fixed cost no reindex can go below
For each reindex the flow's own duration (runs.wall_seconds: flow body up to the summary)
and its seconds by stage (runs.summary_json) are read back from the warehouse.
The copy of the data lives in a temporary folder and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import socket
import urllib.request
from collections import Counter
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import results_io  # noqa: E402
from tasks.config import default_data_dir  # noqa: E402

COUNT_OPENS = str(ROOT / "bench" / "count_opens.py")
PHOTO_DIRS = ("train_images", "test_images")


# A wrapper process reports its own children's peak RSS, so each mode's figure is its own
# (RUSAGE_CHILDREN here would be the maximum over every mode so far).
WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


# An empty flow, run the way the reindex runs: its own process, Prefect's ephemeral server.
EMPTY_FLOW = ("{imports}from prefect import flow\n"
              "@flow(name='empty-flow')\ndef empty() -> int:\n    return 0\n"
              "empty()\n")


# Where a process's wall time goes, from the timestamps of Prefect's own log lines.
PHASES = [("before server", "Starting temporary server"), ("server start", "Beginning flow run"),
          ("flow run", "Finished in state")]
LOG_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d(?:\.\d+)?) \| \w+ +\| (.*)$")


def phases(stderr: str, started: datetime, wall: float) -> dict[str, float]:
    """Seconds from process start to the ephemeral server starting (imports, preflight,
    lock), to the flow run beginning (server start-up), to the flow run's final state,
    and from there to process exit (server shutdown).  Empty if the lines are missing
    (e.g. PREFECT_API_URL set: no ephemeral server)."""
    midnight = started.replace(hour=0, minute=0, second=0, microsecond=0)
    t0 = (started - midnight).total_seconds()
    marks: dict[str, float] = {}
    for line in stderr.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        at, msg = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) - t0, m[4]
        for _, needle in PHASES:
            if needle not in msg or (needle != PHASES[0][1] and not msg.startswith("Flow run")):
                continue  # task runs log "Finished in state" too: only the flow's own lines count
            # The first server start and flow start; the last final state (the flow's).
            if needle == PHASES[2][1] or needle not in marks:
                marks[needle] = at
    if len(marks) < len(PHASES):
        return {}
    out, last = {}, 0.0
    for name, needle in PHASES:
        out[name] = marks[needle] - last
        last = marks[needle]
    out["after flow"] = wall - last
    return out


def timed(cmd: list[str]) -> tuple[float, float, dict[str, float]]:
    """Wall seconds (process start to exit), peak RSS (MiB) and phases of one process."""
    started = datetime.now()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAP, *cmd], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{out.stderr[-3000:]}")
    return wall, int(out.stderr.strip().splitlines()[-1]) / 1024.0, phases(out.stderr, started, wall)


def open_counts(opens_json: Path, data: Path) -> dict:
    """How many photo files were opened how often: {"photos": n, "opened": k, "max": m,
    "files_by_opens": {times: files}} (photo files only, not the source CSVs)."""
    photos = [p for d in PHOTO_DIRS for p in (data / d).iterdir()]
    counts = json.loads(opens_json.read_text())["opens"]
    per_photo = [counts.get(str(p.resolve()), 0) + counts.get(str(p), 0) * (str(p) != str(p.resolve()))
                 for p in photos]
    hist = Counter(per_photo)
    return {"photos": len(photos), "opened": sum(1 for n in per_photo if n), "max": max(per_photo, default=0),
            "files_by_opens": {str(k): hist[k] for k in sorted(hist)}}


def run_reindex(data: Path, wh: Path) -> tuple[float, float, float, dict[str, float], dict[str, float], dict]:
    """Wall seconds, peak RSS (MiB) and phases of one reindex process, the flow's own
    duration and its seconds by stage, as the run recorded them, and its photo-file opens."""
    opens = wh.parent / "opens.json"
    wall, rss, phase = timed([sys.executable, COUNT_OPENS, str(opens), str(data), "--", sys.executable, "-m", "flows.reindex",
                              "--data-dir", str(data), "--warehouse", str(wh)])
    import duckdb

    with duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True) as con:
        flow_s, summary = con.execute("SELECT wall_seconds, summary_json FROM runs ORDER BY run_id DESC LIMIT 1"
                                      ).fetchone()
    return wall, rss, flow_s, json.loads(summary).get("stage_seconds", {}), phase, open_counts(opens, data)


# (protocol, metric, column) of the relevance table: out-of-fold agreement with the judges,
# then retrieval on the 500 test queries (the model alone, the law off; the product with the
# photos' descriptions, each query's own left out).
FIGURES = [("oof_grouped_by_photo", "expert_kendall_tau_c", "expert τc (OOF)"),
           ("oof_grouped_by_photo", "expert_spearman", "Spearman (OOF)"),
           ("oof_grouped_by_photo", "crowd_kendall_tau_b", "crowd τb (OOF)"),
           ("oof_strict_captions", "expert_kendall_tau_c", "strict τc"),
           ("test_queries_filter_off", "recall_at_1", "R@1"), ("test_queries_filter_off", "recall_at_5", "R@5"),
           ("test_queries_filter_off", "recall_at_10", "R@10"), ("test_queries_filter_off", "mrr", "MRR"),
           ("p2_product_own_description_left_out", "recall_at_1", "product R@1"),
           ("p2_product_own_description_left_out", "recall_at_10", "product R@10")]


def run_figures(wh: Path) -> dict:
    """The latest run's chosen head, relevance figures per head (``FIGURES``) and compliance counts."""
    import duckdb

    with duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True) as con:
        head, summary = con.execute("SELECT head, summary_json FROM runs ORDER BY run_id DESC LIMIT 1").fetchone()
        rows = con.execute("""SELECT head, protocol, metric, value FROM latest_model_metrics
                              WHERE component = 'relevance' AND head IN ('bridge', 'lgbm', 'mlp')""").fetchall()
        restricted = con.execute("""SELECT deciding_signal, count(*) FROM photo_flags
                                    WHERE restricted AND run_id = (SELECT max(run_id) FROM runs)
                                    GROUP BY ALL ORDER BY 1""").fetchall()
    got = {(h, p, m): v for h, p, m, v in rows}
    table = {h: {col: got.get((h, p, m)) for p, m, col in FIGURES} for h in ("bridge", "lgbm", "mlp")}
    return {"head": head, "relevance": table, "compliance": json.loads(summary).get("compliance", {}),
            "gallery_restricted_by": dict(restricted)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    """A Prefect server on a free local port with its own PREFECT_HOME (SQLite); waits until
    /api/health answers (at most 120 s).  Returns the process and its API URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=3) as r:
                if r.status == 200:
                    return proc, api
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise SystemExit("the Prefect server did not answer /api/health within 120 s")


def run_floor(with_imports: bool) -> tuple[float, float, dict[str, float]]:
    imports = "import flows.reindex\n" if with_imports else ""
    return timed([sys.executable, "-c", EMPTY_FLOW.format(imports=imports)])


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=False)
    return dst


def add_new_photos(data: Path, n: int = 10) -> None:
    """n new gallery photos: mirrored train photos under new names (new content hashes)."""
    sources = sorted((data / "train_images").glob("*.jpg"))[:n]
    names = []
    for i, src in enumerate(sources):
        name = f"new_{i:02d}_{src.name}"
        with Image.open(src) as img:
            ImageOps.mirror(img.convert("RGB")).save(data / "test_images" / name, quality=92)
        names.append(name)
    with open(data / "test_images.csv", "a") as f:
        f.write("".join(f"{n}\n" for n in names))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--repeats", type=int, default=1, help="runs of each warm mode (median reported)")
    p.add_argument("--server", action="store_true", help="run against a Prefect server started for the benchmark")
    p.add_argument("--out", type=Path, default=results_io.RESULTS)
    a = p.parse_args()
    meta = results_io.meta()
    with tempfile.TemporaryDirectory(prefix="reindex-bench-") as tmp:
        tmp = Path(tmp)
        server = None
        if a.server:
            server, os.environ["PREFECT_API_URL"] = start_server(tmp / "prefect-home")
        try:
            data = copy_data(a.data_dir.resolve(), tmp / "with_sense")
            wh = tmp / "wh"
            cold = run_reindex(data, wh)
            figures = run_figures(wh)
            nochange = sorted((run_reindex(data, wh) for _ in range(a.repeats)), key=lambda r: r[0])[a.repeats // 2]
            add_new_photos(data, 10)
            new10 = run_reindex(data, wh)
            floor = run_floor(with_imports=False)
            floor_imports = run_floor(with_imports=True)
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
    rows = [("cold", cold), ("no change", nochange), ("10 new photos", new10)]
    floors = [("floor: empty flow", floor), ("  + import reindex", floor_imports)]
    mode = "a running Prefect server (started by the benchmark)" if a.server else "Prefect's ephemeral server"
    md = [f"# Reindex speed: cold, no change, 10 new photos ({'server' if a.server else 'ephemeral'})",
          "## Modes", "",
          f"Each mode is one `python -m flows.reindex` process on a copy of the real data, against {mode}.  "
          "wall s: process start to exit, timed from outside; flow s: the flow body up to the summary "
          "(runs.wall_seconds); photo opens: how often each of the photo files was opened (every successful "
          "open system call of any process of the run, traced with strace: bench/count_opens.py).", "",
          "| mode | wall s | vs cold | flow s | peak RSS MiB | photo files opened | most opens of one file | files by opens |",
          "|---|---|---|---|---|---|---|---|"]
    for name, (wall, rss, flow_s, _, _, op) in rows:
        by = ", ".join(f"{k}×: {v}" for k, v in op["files_by_opens"].items())
        md.append(f"| {name} | {wall:.1f} | {wall / cold[0]:.3f} | {flow_s:.1f} | {rss:.0f} | "
                  f"{op['opened']} of {op['photos']} | {op['max']} | {by} |")
    for name, (wall, rss, _) in floors:
        md.append(f"| {name.strip()} | {wall:.1f} | {wall / cold[0]:.3f} | | {rss:.0f} | | | |")
    md += ["", f"Load average at the end {[round(v, 2) for v in os.getloadavg()]} (the machine is shared: "
           "wall seconds are upper bounds)."]
    cols = [(n, r[4]) for n, r in rows] + [("empty flow", floor[2]), ("empty + imports", floor_imports[2])]
    if any(c for _, c in cols):
        md += ["", "## Where the wall time goes", "", "Seconds, from Prefect's log timestamps:", "",
               "| phase | " + " | ".join(n for n, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for ph in [p_ for p_, _ in PHASES] + ["after flow"]:
            md.append(f"| {ph} | " + " | ".join(f"{c.get(ph, float('nan')):.2f}" for _, c in cols) + " |")
    stages = list(dict.fromkeys(k for r in (cold, nochange, new10) for k in r[3]))
    md += ["", "## Seconds by stage", "", "As each run recorded them (runs.summary_json):", "", "| stage | " + " | ".join(n for n, _ in rows) + " |",
           "|---" * (len(rows) + 1) + "|"]
    for st in stages:
        md.append(f"| {st} | " + " | ".join(f"{r[3].get(st, float('nan')):.2f}" for _, r in rows) + " |")
    md += ["", "## Relevance figures of the cold run", "",
           f"Chosen head: **{figures['head']}** (by out-of-fold expert τc on training folds; test figures are "
           "reported, never used to choose).  OOF: folds grouped by photo; strict: every caption text on one "
           "side only.  R@k, MRR: 500 test queries over the 100 gallery photos, the model alone, the law off; "
           "product: fused with the photos' descriptions, each query's own description left out.", "",
           "| head | " + " | ".join(col for _, _, col in FIGURES) + " |", "|---" * (len(FIGURES) + 1) + "|"]
    for h, vals in figures["relevance"].items():
        cells = " | ".join("" if v is None else f"{v:.3f}" for v in vals.values())
        md.append(f"| {'**' + h + '**' if h == figures['head'] else h} | {cells} |")
    md += ["", f"Compliance in the cold run: {json.dumps(figures['compliance'])}; gallery photos restricted, "
           f"by deciding signal: {json.dumps(figures['gallery_restricted_by'])}."]
    data_out = {"meta": meta, "server": a.server, "cold_run_figures": figures,
                "modes": {n: {"wall_s": round(r[0], 2), "vs_cold": round(r[0] / cold[0], 4), "flow_s": r[2],
                              "peak_rss_mib": round(r[1]), "stage_seconds": r[3], "phases": r[4], "photo_opens": r[5]}
                          for n, r in rows},
                "floors": {n.strip(): {"wall_s": round(r[0], 2), "peak_rss_mib": round(r[1]), "phases": r[2]}
                           for n, r in floors}}
    name = "reindex_speed_server" if a.server else "reindex_speed"
    for path in results_io.write(name, data_out, md, a.out):
        print("wrote", path)
    print("\n".join(md))


if __name__ == "__main__":
    main()
