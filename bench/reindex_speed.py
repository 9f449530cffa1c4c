"""Whole-reindex benchmark: cold vs nothing-new vs 10-new-photos, in one run.

    .venv/bin/python bench/reindex_speed.py [--data-dir DIR] [--repeats 1]

Each mode runs `python -m flows.reindex` as its own process (Prefect's ephemeral server,
the default mode), timed from outside; peak resident memory is the process's maxrss.
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

from tasks.config import default_data_dir  # noqa: E402


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


def run_reindex(data: Path, wh: Path) -> tuple[float, float, float, dict[str, float], dict[str, float]]:
    """Wall seconds, peak RSS (MiB) and phases of one reindex process, then the flow's own
    duration and its seconds by stage, as the run recorded them."""
    wall, rss, phase = timed([sys.executable, "-m", "flows.reindex", "--data-dir", str(data), "--warehouse", str(wh)])
    import duckdb

    with duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True) as con:
        flow_s, summary = con.execute("SELECT wall_seconds, summary_json FROM runs ORDER BY run_id DESC LIMIT 1"
                                      ).fetchone()
    return wall, rss, flow_s, json.loads(summary).get("stage_seconds", {}), phase


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
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="reindex-bench-") as tmp:
        tmp = Path(tmp)
        data = copy_data(a.data_dir.resolve(), tmp / "with_sense")
        wh = tmp / "wh"
        load_start = os.getloadavg()[0]
        cold = run_reindex(data, wh)
        nochange = sorted((run_reindex(data, wh) for _ in range(a.repeats)), key=lambda r: r[0])[a.repeats // 2]
        add_new_photos(data, 10)
        new10 = run_reindex(data, wh)
    floor = run_floor(with_imports=False)
    floor_imports = run_floor(with_imports=True)
    rows = [("cold", cold), ("no change", nochange), ("10 new photos", new10)]
    print(f"{'mode':<22}{'wall s':>9}{'vs cold':>9}{'flow s':>9}{'peak RSS MiB':>14}")
    for name, (wall, rss, flow_s, *_) in rows:
        print(f"{name:<22}{wall:>9.1f}{wall / cold[0]:>9.3f}{flow_s:>9.1f}{rss:>14.0f}")
    floors = [("floor: empty flow", floor), ("  + import reindex", floor_imports)]
    for name, (wall, rss, _) in floors:
        print(f"{name:<22}{wall:>9.1f}{wall / cold[0]:>9.3f}{'':>9}{rss:>14.0f}")
    print("wall s: process start to exit, timed from outside; flow s: the flow body up to the summary "
          "(runs.wall_seconds)")
    print("where the wall time goes (seconds, from Prefect's log timestamps):")
    cols = [(n, r[4]) for n, r in rows] + [("empty flow", floor[2]), ("empty + imports", floor_imports[2])]
    print(f"  {'phase':<20}" + "".join(f"{n[:15]:>16}" for n, _ in cols))
    for ph in [p for p, _ in PHASES] + ["after flow"]:
        print(f"  {ph:<20}" + "".join(f"{c.get(ph, float('nan')):>16.2f}" for _, c in cols))
    print("seconds by stage (runs.summary_json):")
    stages = list(dict.fromkeys(k for r in (cold, nochange, new10) for k in r[3]))
    print(f"  {'stage':<20}" + "".join(f"{n:>16}" for n, _ in rows))
    for st in stages:
        print(f"  {st:<20}" + "".join(f"{r[3].get(st, float('nan')):>16.2f}" for _, r in rows))
    print(f"(cpu count {os.cpu_count()}, load average at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
