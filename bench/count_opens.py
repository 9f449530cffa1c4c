"""Run a command and count how often each file under some folders is opened, by any of its processes.

    python bench/count_opens.py OUT.json DIR [DIR ...] -- COMMAND [ARG ...]

Uses ``strace -f --seccomp-bpf`` (only these calls stop the process, so the overhead is
small; every process and thread the command starts: Prefect task threads,
spawned face-analysis workers, Dask workers on this machine) on the ``open``/``openat``
/``openat2`` system calls, so opens by C libraries count too.  A call counts when it
succeeded and its path, made absolute against the command's working directory, lies
under one of the DIRs (symlinks are not resolved: pass each spelling of a folder the
command may use).  OUT.json gets ``{"opens": {path: n}}``; the exit status is the command's.

Errors: exits with a message when ``strace`` is not installed (``apt-get install strace``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

# 1234  openat(AT_FDCWD, "/data/x.jpg", O_RDONLY|O_CLOEXEC) = 5
# or, when another thread's call came between, split in two lines:
# 1234  openat(AT_FDCWD, "/data/x.jpg", O_RDONLY|O_CLOEXEC <unfinished ...>
# 1234  <... openat resumed>) = 5
CALL = re.compile(r'^(\d+)\s+(?:open|openat|openat2)\((?:[^,"]+,\s*)?"((?:[^"\\]|\\.)*)"(.*)$')
RESUMED = re.compile(r'^(\d+)\s+<\.\.\. (?:open|openat|openat2) resumed>.*\)\s+=\s+(-?\d+)')
RESULT = re.compile(r'\)\s+=\s+(-?\d+)')


def count(log: str, roots: tuple[str, ...], cwd: str) -> Counter[str]:
    """Successful opens per path under ``roots`` in an ``strace -f`` log."""
    counts: Counter[str] = Counter()
    pending: dict[str, str] = {}  # pid -> path of its unfinished call

    def add(path: str, result: str) -> None:
        if int(result) >= 0:
            path = os.path.normpath(os.path.join(cwd, path.encode().decode("unicode_escape")))
            if path.startswith(roots):
                counts[path] += 1

    with open(log, errors="replace") as f:
        for line in f:
            if m := CALL.match(line):
                if "<unfinished ...>" in m[3]:
                    pending[m[1]] = m[2]
                elif r := RESULT.search(m[3]):
                    add(m[2], r[1])
            elif (m := RESUMED.match(line)) and m[1] in pending:
                add(pending.pop(m[1]), m[2])
    return counts


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv) < argv.index("--") + 2 or argv.index("--") < 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    out, *dirs = argv[:argv.index("--")]
    cmd = argv[argv.index("--") + 1:]
    if shutil.which("strace") is None:
        raise SystemExit("count_opens needs strace (apt-get install -y strace)")
    roots = tuple(os.path.join(os.path.abspath(d), "") for d in dirs)
    with tempfile.TemporaryDirectory(prefix="count-opens-") as tmp:
        log = os.path.join(tmp, "strace.log")
        rc = subprocess.run(["strace", "-f", "--seccomp-bpf", "-qq", "-s", "4096", "-e", "trace=open,openat,openat2",
                             "-o", log, *cmd]).returncode
        counts = count(log, roots, os.getcwd())
    with open(out, "w") as f:
        json.dump({"opens": dict(sorted(counts.items()))}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
