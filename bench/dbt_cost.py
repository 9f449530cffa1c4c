"""What dbt costs a reindex: seconds of the dbt steps in a cold run and in a no-change run.

    python bench/dbt_cost.py [--data-dir DIR] [--warehouse DIR] [--out bench/results]

Runs ``python -m flows.reindex`` three times on a fresh warehouse, each in its own process
(as the nightly job does): a cold run (no dbt state: full parse), a run with nothing new
forced to build every dbt step (``WITH_SENSE_DBT_REBUILD=1``; dbt's target/ with
partial_parse.msgpack kept in the warehouse), and a default run with nothing new (every
step's fingerprint equals the published run's, so dbt is not invoked).  dbt runs in process;
each run's seconds per dbt invocation come from the run's own record,
``reports/<run_id>/dbt/run_results.json`` (``steps``: seconds measured around each
``dbtRunner.invoke``, the first including ``import dbt``).  Writes ``dbt_cost.json`` and
``dbt_cost.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def reindex(data_dir: Path, warehouse: Path, rebuild: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "WITH_SENSE_DBT_REBUILD": "1" if rebuild else "0"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows.reindex", "--data-dir", str(data_dir),
                          "--warehouse", str(warehouse), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    rr = json.loads((warehouse / "reports" / summary["run_id"] / "dbt" / "run_results.json").read_text())
    steps = {s.get("selector") or "docs": s["seconds_in_process"] for s in rr["steps"]}
    return {"run_id": summary["run_id"], "process_wall_s": round(wall, 2),
            "flow_wall_s": round(summary["wall_seconds"], 2), "dbt_steps_s": steps,
            "dbt_total_s": round(sum(steps.values()), 2), "nodes": len(rr["results"]),
            "all_passed": all(r["status"] in ("success", "pass") for r in rr["results"]),
            "reused": [s.get("selector") for s in rr["steps"] if s.get("reused_from")]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", type=Path, default=ROOT / "data" / "with_sense")
    p.add_argument("--warehouse", type=Path, default=None, help="a fresh folder (default: a temporary one)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--name", default="dbt_cost", help="file stem of the results (<name>.json, <name>.md)")
    a = p.parse_args()
    wh = a.warehouse or Path(tempfile.mkdtemp(prefix="dbt-cost-"))
    if wh.exists() and any(wh.iterdir()):
        sys.exit(f"{wh} is not empty: the cold run needs a fresh warehouse")
    load_before = os.getloadavg()
    cold = reindex(a.data_dir, wh)
    no_change_rebuilt = reindex(a.data_dir, wh, rebuild=True)
    no_change = reindex(a.data_dir, wh)
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, load average at start "
                   f"{load_before[0]:.1f}, at end {os.getloadavg()[0]:.1f}",
        "command": f"python bench/dbt_cost.py --data-dir {a.data_dir} --name {a.name}",
        "data_dir": str(a.data_dir), "cold": cold, "no_change_rebuilt": no_change_rebuilt, "no_change": no_change,
        "no_change_over_cold_dbt": round(no_change["dbt_total_s"] / cold["dbt_total_s"], 3),
        "rebuilt_over_cold_dbt": round(no_change_rebuilt["dbt_total_s"] / cold["dbt_total_s"], 3),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    rows = ["| run | dbt total s | " + " | ".join(cold["dbt_steps_s"]) + " | flow wall s | dbt share |",
            "|---|---|" + "---|" * len(cold["dbt_steps_s"]) + "---|---|"]
    for name, r in (("cold (no dbt state: full parse, every step built)", cold),
                    ("no change, every step rebuilt (WITH_SENSE_DBT_REBUILD=1: partial parse)", no_change_rebuilt),
                    ("no change (default: every step's fingerprint equal, reused)", no_change)):
        rows.append(f"| {name} | {r['dbt_total_s']:.2f} | " + " | ".join(f"{v:.2f}" for v in r["dbt_steps_s"].values())
                    + f" | {r['flow_wall_s']:.1f} | {r['dbt_total_s'] / r['flow_wall_s']:.0%} |")
    md = [f"# dbt cost in a reindex", "", f"- date: {res['date']}", f"- machine: {res['machine']}",
          f"- command: `{res['command']}`", f"- nodes per run (models + tests): {cold['nodes']}, all passed: "
          f"{cold['all_passed'] and no_change['all_passed']}", "", *rows, "",
          f"dbt seconds, no change / cold: {res['no_change_over_cold_dbt']} (default), "
          f"{res['rebuilt_over_cold_dbt']} (every step rebuilt with partial parsing).", "",
          "Seconds per step are measured around each in-process `dbtRunner.invoke` (the first includes "
          "`import dbt`), or around the fingerprint check when a step is reused.", ""]
    (a.out / f"{a.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    if a.warehouse is None:
        shutil.rmtree(wh, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
