"""The SQL layer: the dbt project in ``sql/``, run in process on the run's work copy.

The reindex builds the project in three graph-selected steps (``sql/selectors.yml``), each
once its inputs exist, and every step runs the data tests of what it built; a failing test
raises :class:`DbtFailed`, which fails the flow before anything is published:

- ``before_text_flags`` (after ingest): staging, ``gallery``, ``relevance_targets``;
- ``after_text_flags`` (after the text verdicts): the training marts;
- ``before_publish`` (after ranking): the ``latest_*`` views and the tests on the history
  tables the later stages write (no restricted photo shown, ...).

A step whose SQL and inputs (fingerprint) equal the latest published run's is not run
again: that run's tables are already in the copy and its tests held on the same rows
(``run_stages`` records ``dbt_<step>`` with ``reused_from``).  Then :func:`document` writes
``catalog.json`` and the static docs site, and copies the run's artifacts into
``reports/<run_id>/dbt/``.

dbt's own state (``target/`` with ``partial_parse.msgpack``, logs) lives in the warehouse
(``<warehouse>/dbt/``) so that a run with no changed SQL does not parse the project again.
For that the profile's database path must not change from run to run: dbt opens a hard
link ``<warehouse>/.work/dbt.duckdb`` to this run's copy; the run id reaches the models
as an environment variable (``macros/run_id.sql`` says why).  Usage statistics are off
(``DO_NOT_TRACK=1``, ``--no-send-anonymous-usage-stats``) and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tasks.load import fingerprint, record_stage
from tasks.sql_project import DBT_PROJECT_DIR
from tasks.atomic import atomic_write_bytes
from tasks.warehouse import Warehouse, connect

STEPS = ("before_text_flags", "after_text_flags", "before_publish")
# Artifacts a run keeps beside its report (reports/<run_id>/dbt/).
ARTIFACTS = ("manifest.json", "catalog.json", "static_index.html")


class DbtFailed(RuntimeError):
    """A dbt step failed: a model did not build or a data test found rows."""


@dataclass
class DbtStep:
    """One dbt invocation: what it ran and how each node ended."""

    step: str
    seconds: float
    results: list[dict] = field(default_factory=list)   # unique_id, resource_type, status, failures, seconds, message
    run_results: dict | None = None                       # dbt's run_results.json of this invocation
    reused_from: str | None = None                        # set when the published run's build stood

    def counts(self) -> dict[str, int]:
        """Node counts by ``<resource_type>s_<status>``, e.g. ``models_success``, ``tests_pass``."""
        out: dict[str, int] = {}
        for r in self.results:
            key = f"{r['resource_type']}s_{r['status']}"
            out[key] = out.get(key, 0) + 1
        return out

    def failed(self) -> list[dict]:
        """The results whose status is ``error``, ``fail`` or ``runtime error``."""
        return [r for r in self.results if r["status"] in ("error", "fail", "runtime error")]


def state_dir(wh: Warehouse) -> Path:
    """Where dbt keeps ``target/`` (manifest, partial parse state) and logs between runs."""
    return wh.root / "dbt"


# dbt's name for the run's copy: a hard link beside it, the same path every run.  Not a
# symbolic link: DuckDB names the catalog after the file it resolves to, and the profile's
# database must match the path's stem.
DBT_DB_NAME = "dbt.duckdb"


@contextmanager
def _linked(db: Path) -> Iterator[Path]:
    """A hard link ``.work/dbt.duckdb`` to ``db`` while dbt runs, removed afterwards."""
    link = Path(db).parent / DBT_DB_NAME
    wal = link.with_name(link.name + ".wal")
    for stale in (link, wal):   # a killed run's leftovers (recover() sweeps .work too)
        stale.unlink(missing_ok=True)
    os.link(db, link)
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)
        if wal.exists():
            # DuckDB checkpoints on close; a log left behind would hold writes the copy lacks.
            wal.unlink()
            raise DbtFailed(f"dbt left an unmerged DuckDB log {wal}; the run's copy is incomplete")


def invoke(args: list[str], db: Path, run_id: str, state: Path) -> tuple[bool, object]:
    """Run one dbt command in this process against ``db``; returns (success, dbt's result).

    ``db`` must not be open elsewhere in this process while dbt runs (DuckDB would see
    two databases on one file); dbt's connection is closed before this returns.
    """
    from dbt.cli.main import dbtRunner

    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["WITH_SENSE_RUN_ID"] = run_id
    common = ["--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
              "--target-path", str(state / "target"), "--log-path", str(state / "logs"),
              "--no-send-anonymous-usage-stats", "--no-version-check", "--partial-parse",
              "--quiet", "--no-use-colors"]
    with _linked(db) as link:
        os.environ["WITH_SENSE_DB"] = str(link)
        try:
            res = dbtRunner().invoke([*args, *common])
        finally:
            _close_dbt_connection()
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise DbtFailed(f"dbt {' '.join(args)} could not run: {res.exception}") from res.exception
    return bool(res.success), res.result


def _close_dbt_connection() -> None:
    """dbt-duckdb keeps one DuckDB instance per process; close it so the file is free."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    env = DuckDBConnectionManager._ENV
    if env is not None:
        env.close()
    DuckDBConnectionManager.close_all_connections()


# Bookkeeping tables left out of a step's fingerprint: their rows carry this run's own
# times and ids, which no model reads.
_NOT_INPUTS = ("runs", "run_stages")


def _project_files() -> list[Path]:
    """The files dbt reads: the three YAML files and everything under models/macros/tests."""
    top = [DBT_PROJECT_DIR / n for n in ("dbt_project.yml", "selectors.yml", "profiles.yml")]
    return top + sorted(p for d in ("models", "macros", "tests") for p in (DBT_PROJECT_DIR / d).rglob("*")
                        if p.is_file() and p.suffix in (".sql", ".yml", ".md"))


def step_fingerprint(con, step: str, run_id: str) -> str:
    """What a dbt step's output depends on: the project's files, dbt's version, every raw
    table, and this run's rows of the history tables (without ``run_id``).  Order-free
    row hashes (sum of row hashes, with row counts), so equal contents give equal prints."""
    from importlib.metadata import version  # not dbt.version: importing dbt costs ~1 s

    parts: list = [step, version("dbt-core"), version("dbt-duckdb")]
    parts += [[str(p.relative_to(DBT_PROJECT_DIR)), hashlib.sha256(p.read_bytes()).hexdigest()] for p in _project_files()]
    history = {p.stem for p in (DBT_PROJECT_DIR / "history").glob("*.sql")} - set(_NOT_INPUTS)
    tables = sorted(r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_type = 'BASE TABLE'"
    ).fetchall())
    for t in tables:
        if t.startswith("raw_"):
            rows = f'SELECT * FROM "{t}"'
        elif t in history:
            rows = f'SELECT * EXCLUDE (run_id) FROM "{t}" WHERE run_id = $run_id'
        else:
            continue
        n, h = con.execute(f"SELECT count(*), sum(hash(r)::HUGEINT)::VARCHAR FROM ({rows}) AS r",
                           {"run_id": run_id} if t in history else {}).fetchone()
        parts.append([t, n, h])
    return fingerprint(*parts)


def _reusable(con, stage: str, fp: str) -> str | None:
    """The run whose build this run's copy holds, if the latest published run recorded the
    same fingerprint for this step (its tables are then exactly what a build would give)."""
    row = con.execute("""
        SELECT coalesce(s.reused_from, s.run_id) FROM run_stages s
        WHERE s.stage = ? AND s.fingerprint = ? AND s.run_id = (
            SELECT max(run_id) FROM runs WHERE finished_at IS NOT NULL)""", [stage, fp]).fetchone()
    return row[0] if row else None


def build(step: str, db: Path, run_id: str, wh: Warehouse) -> DbtStep:
    """``dbt build --selector <step>``: models, then their data tests; raises :class:`DbtFailed`."""
    if step not in STEPS:
        raise ValueError(f"unknown dbt step {step!r}; one of {STEPS}")
    state = state_dir(wh)
    t0 = time.perf_counter()
    stage = f"dbt_{step}"
    with connect(db) as con:
        fp = step_fingerprint(con, step, run_id)
        # WITH_SENSE_DBT_REBUILD=1 builds and tests every step even when nothing changed
        # (bench/dbt_cost.py measures that case: partial parsing, no reuse).
        reused = None if os.environ.get("WITH_SENSE_DBT_REBUILD") == "1" else _reusable(con, stage, fp)
        if reused is not None:
            # Same SQL, same inputs as the published run: its tables (in this copy) and its
            # test outcomes stand.  run_stages says which run built and tested them.
            record_stage(con, run_id, stage, fp, reused)
            return DbtStep(step, round(time.perf_counter() - t0, 3), reused_from=reused)
    ok, result = invoke(["build", "--selector", step], db, run_id, state)
    out = DbtStep(step, round(time.perf_counter() - t0, 3))
    for r in getattr(result, "results", None) or []:
        out.results.append({"unique_id": r.node.unique_id, "resource_type": str(r.node.resource_type),
                            "status": str(r.status), "failures": r.failures,
                            "seconds": round(r.execution_time, 3), "message": r.message})
    rr = state / "target" / "run_results.json"
    if rr.exists():
        out.run_results = json.loads(rr.read_text())
    bad = out.failed()
    if ok and not bad:
        with connect(db) as con:
            record_stage(con, run_id, stage, fp, None)
    if not ok or bad:
        lines = [f"  {r['unique_id']}: {r['status']}" + (f" ({r['failures']} rows)" if r["failures"] else "")
                 + (f": {r['message']}" if r["message"] and r["status"] == "error" else "") for r in bad]
        raise DbtFailed(f"dbt build --selector {step} failed; nothing will be published:\n"
                        + ("\n".join(lines) or "  (see the dbt log in " + str(state / "logs") + ")"))
    return out


def document(db: Path, run_id: str, wh: Warehouse, steps: list[DbtStep]) -> Path:
    """The run's dbt artifacts in ``reports/<run_id>/dbt/``: manifest.json, catalog.json,
    static_index.html (the docs site, one self-contained file; ``dbt docs generate --static``
    on the built copy) and run_results.json (every step's node results, each tagged with its
    step; a reused step's come from the run that built it, tagged ``reused_from``).

    When every step was reused, the project and the tables are those of that run, so its
    manifest, catalog and site are copied instead of generated again."""
    state = state_dir(wh)
    out = wh.reports_dir / run_id / "dbt"
    t0 = time.perf_counter()
    source = None
    if steps and all(s.reused_from for s in steps):
        earlier = wh.reports_dir / steps[-1].reused_from / "dbt"
        if all((earlier / name).exists() for name in ARTIFACTS):
            source = earlier
    if source is None:
        # --no-compile needs the manifest of a build in this state folder; a warehouse whose
        # steps were all reused from a run built elsewhere (a copied warehouse) has none.
        no_compile = ["--no-compile"] if (state / "target" / "manifest.json").exists() else []
        ok, _ = invoke(["docs", "generate", "--static", *no_compile], db, run_id, state)
        if not ok:
            raise DbtFailed(f"dbt docs generate failed (see {state / 'logs'})")
        source = state / "target"
    for name in ARTIFACTS:
        atomic_write_bytes((source / name).read_bytes(), out / name)
    docs_seconds = round(time.perf_counter() - t0, 3)
    results: list[dict] = []
    metadata: dict = {}
    for s in steps:
        if s.run_results:
            metadata = metadata or s.run_results["metadata"]
            results += [{**r, "step": s.step} for r in s.run_results["results"]]
        elif s.reused_from:
            earlier = wh.reports_dir / s.reused_from / "dbt" / "run_results.json"
            if earlier.exists():
                results += [{**r, "reused_from": r.get("reused_from", s.reused_from)}
                            for r in json.loads(earlier.read_text())["results"] if r.get("step") == s.step]
    merged = {"metadata": metadata,
              "steps": [{"selector": s.step, "reused_from": s.reused_from, "seconds_in_process": s.seconds,
                         "elapsed_time": s.run_results["elapsed_time"] if s.run_results else None} for s in steps]
              + [{"command": "docs generate --static" if source == state / "target" else f"copied from {source}",
                  "seconds_in_process": docs_seconds}],
              "results": results}
    atomic_write_bytes(json.dumps(merged, indent=1).encode(), out / "run_results.json")
    return out


def summary(steps: list[DbtStep]) -> dict:
    """Counts and seconds per step, for the run summary and logs."""
    return {s.step: {"seconds": s.seconds, **s.counts()} for s in steps}
