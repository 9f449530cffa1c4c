"""Where benchmarks put their figures: ``bench/results/<name>.json`` and ``<name>.md``.

Every file says when, on what machine and by which command its figures were measured, so
the README and docs can quote a file instead of copying numbers by hand.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def meta() -> dict:
    """Date (UTC), machine (CPU model, cores, load average now) and the command line that ran."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "command": "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])}


def write(name: str, data: dict, markdown: list[str], out: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``out/name.json`` (``{"meta": ..., **data}``) and ``out/name.md`` (the lines, under a
    header with the same meta).  Returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    m = data.get("meta") or meta()
    j, md = out / f"{name}.json", out / f"{name}.md"
    j.write_text(json.dumps({"meta": m, **{k: v for k, v in data.items() if k != "meta"}}, indent=2) + "\n")
    head = [f"Date: {m['date']}  ", f"Machine: {m['machine']}; load average {m['load_average']}  ",
            f"Command: `{m['command']}`", ""]
    md.write_text("\n".join([*markdown[:1], "", *head, *markdown[1:]]) + "\n")
    return j, md
