"""Can a maintained CSV reader keep ingest's row contract?  (Not a test: evidence for a design choice.)

    python bench/csv_reader_contract.py      # writes bench/results/csv_reader_contract.{json,md}

The contract (docs/robustness.md): every physical line of a source file is loaded or
quarantined exactly once, with a reason; LF, CRLF and a lone CR each end a line; a
byte-order mark at a line start is not data; a broken line never takes its neighbours
with it.  Each case is a 4-line, 3-column file with one damaged line; the expected
outcome is 3 good rows loaded and the damaged line rejected (or, for the line-end and BOM
cases, 4 good rows).  Readers: DuckDB ``read_csv`` with ``store_rejects`` (strict and
``strict_mode=false``), polars ``read_csv`` (``ignore_errors``), and ingest's own
``tasks.ingest_sources.parse_source`` (universal newlines + the standard ``csv`` module).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOOD = [b"a1,b1,c1", b"a2,b2,c2", b"a3,b3,c3", b"a4,b4,c4"]
CASES = {
    # name: (file bytes, good rows expected, damaged lines expected)
    "lone CR ends line 2 (LF file)": (b"a1,b1,c1\na2,b2,c2\ra3,b3,c3\na4,b4,c4\n", 4, 0),
    "CR, CRLF and LF mixed": (b"a1,b1,c1\ra2,b2,c2\r\na3,b3,c3\na4,b4,c4\r", 4, 0),
    "BOM at the start of line 3": (b"a1,b1,c1\na2,b2,c2\n\xef\xbb\xbfa3,b3,c3\na4,b4,c4\n", 4, 0),
    "unterminated quote on line 2": (b'a1,b1,c1\na2,b2,"c2 never ends\na3,b3,c3\na4,b4,c4\n', 3, 1),
    "stray quote inside a quoted field, line 2": (b'a1,b1,c1\na2,b2,"c "x" 2"\na3,b3,c3\na4,b4,c4\n', 3, 1),
    "NUL byte in line 2": (b"a1,b1,c1\na2,b\x002,c2\na3,b3,c3\na4,b4,c4\n", 3, 1),
    "invalid UTF-8 in line 2": (b"a1,b1,c1\na2,b\xe92,c2\na3,b3,c3\na4,b4,c4\n", 3, 1),
    "2 fields on line 2": (b"a1,b1,c1\na2,b2\na3,b3,c3\na4,b4,c4\n", 3, 1),
}


def expected_values(content: bytes, n_good: int) -> set[tuple[str, str, str]]:
    return {tuple(g.decode().split(",")) for g in GOOD} if n_good == 4 else {
        tuple(g.decode().split(",")) for g in GOOD if g in content.split(b"\n")}


def run_duckdb(path: Path, strict: bool) -> dict:
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT * FROM read_csv(?, delim=',', quote='\"', escape='\"', header=false, auto_detect=false, "
            "columns={'a': 'VARCHAR', 'b': 'VARCHAR', 'c': 'VARCHAR'}, store_rejects=true, "
            f"strict_mode={'true' if strict else 'false'})", [str(path)]).fetchall()
        rejects = con.execute("SELECT line, error_type FROM reject_errors").fetchall()
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    return {"rows": [tuple(r) for r in rows], "rejected": len(rejects),
            "reasons": sorted({r[1] for r in rejects})}


def run_polars(path: Path) -> dict:
    import polars as pl

    try:
        df = pl.read_csv(path, has_header=False, new_columns=["a", "b", "c"], ignore_errors=True,
                         truncate_ragged_lines=False, infer_schema=False)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    return {"rows": [tuple(r) for r in df.iter_rows()], "rejected": None, "reasons": []}


def run_ingest(path: Path) -> dict:
    from tasks.ingest_rows import SourceSpec
    from tasks.ingest_sources import parse_source

    spec = SourceSpec(path.name, "t", ",", ["a", "b", "c"], None,
                      lambda f: {"a": f[0], "b": f[1], "c": f[2]}, ["a", "b", "c"])
    parsed = parse_source(path.parent, spec)
    return {"rows": [(r[2]["a"], r[2]["b"], r[2]["c"]) for r in parsed.rows],
            "rejected": len(parsed.quarantine), "reasons": [q[2] for q in parsed.quarantine]}


def judge(result: dict, content: bytes, n_good: int, n_bad: int) -> str:
    if "error" in result:
        return "whole file refused"
    want = expected_values(content, n_good)
    got = set(result["rows"])
    lost = len(want - got)
    if got == want and result["rejected"] in (n_bad, None if n_bad == 0 else n_bad):
        return "ok"
    parts = []
    if result["rejected"] is None:  # polars: no per-row rejects
        parts.append("no per-line rejects")
    if lost:
        parts.append(f"{lost} good row(s) lost or changed")
    if got - want:
        parts.append(f"{len(got - want)} row(s) loaded with damage")
    if result["rejected"] not in (None, n_bad):
        parts.append(f"{result['rejected']} rejected (expected {n_bad})")
    return ", ".join(parts)


def main() -> None:
    import duckdb
    import polars as pl

    readers = {"duckdb read_csv strict": lambda p: run_duckdb(p, True),
               "duckdb read_csv strict_mode=false": lambda p: run_duckdb(p, False),
               "polars read_csv ignore_errors": run_polars,
               "ingest (splitlines + csv)": run_ingest}
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (content, n_good, n_bad) in CASES.items():
            path = Path(tmp) / "case.csv"
            path.write_bytes(content)
            table[name] = {r: judge(fn(path), content, n_good, n_bad) for r, fn in readers.items()}
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
            "python": platform.python_version(), "duckdb": duckdb.__version__, "polars": pl.__version__,
            "command": "python bench/csv_reader_contract.py"}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "csv_reader_contract.json").write_text(json.dumps({"meta": meta, "cases": table}, indent=2) + "\n")
    lines = [f"# CSV readers against the ingest row contract", "",
             f"{meta['date']}, {meta['machine']}, Python {meta['python']}, DuckDB {meta['duckdb']}, "
             f"polars {meta['polars']}; `{meta['command']}`", "",
             "| case | " + " | ".join(readers) + " |", "|---|" + "---|" * len(readers)]
    lines += [f"| {case} | " + " | ".join(v[r] for r in readers) + " |" for case, v in table.items()]
    (out / "csv_reader_contract.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
