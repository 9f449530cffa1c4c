"""A failing dbt data test stops the reindex before anything is published."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import pytest

from conftest import PROJECT_ROOT
from tiny_warehouse import TOP_K, tiny_run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failing_data_test_stops_the_run_before_publish(tmp_path, tmp_path_factory, monkeypatch):
    from flows.reindex import reindex
    from tasks import transform

    src = tiny_run(tmp_path_factory)
    wh = tmp_path / "wh"   # a published warehouse with one finished run, caches and dbt state
    shutil.copytree(src.warehouse, wh, ignore=shutil.ignore_patterns(".work", ".reindex.lock"))
    before = {p.relative_to(wh): digest(p) for p in [wh / "with_sense.duckdb", *(wh / "exports").iterdir()]}
    reports_before = sorted(p.name for p in (wh / "reports").iterdir())

    # The project as it is, plus one invariant this run breaks: it only fails once the run's
    # results exist, i.e. in the last dbt step, after every Python stage has run.
    project = tmp_path / "sql"
    shutil.copytree(PROJECT_ROOT / "sql", project, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "tests" / "results_of_this_run_are_absent.sql").write_text(
        "select * from {{ source('history', 'search_results') }} where run_id = '{{ run_id() }}'\n")
    monkeypatch.setattr(transform, "DBT_PROJECT_DIR", project)

    with pytest.raises(transform.DbtFailed, match="results_of_this_run_are_absent"):
        reindex(data_dir=src.data, warehouse_dir=wh, top_k=TOP_K)

    # Nothing published: the database and exports are byte-identical, no new report, no work left.
    assert {p.relative_to(wh): digest(p) for p in [wh / "with_sense.duckdb", *(wh / "exports").iterdir()]} == before
    assert sorted(p.name for p in (wh / "reports").iterdir()) == reports_before
    assert list((wh / ".work").iterdir()) == []
    with duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True) as con:
        assert con.execute("SELECT max(run_id) FROM runs").fetchone()[0] == src.summary["run_id"]


def test_step_fingerprint_sees_contents_not_order_nor_other_runs(tmp_path):
    """A dbt step is skipped only when its inputs are equal: the fingerprint must change
    with any raw row or any of this run's history rows, and with nothing else."""
    from tasks.load import ensure_history_tables
    from tasks.transform import step_fingerprint

    def fp(rows: list[tuple], flags: list[tuple]) -> str:
        db = tmp_path / f"w{len(list(tmp_path.iterdir()))}.duckdb"
        with duckdb.connect(str(db)) as con:
            ensure_history_tables(con)
            con.execute("CREATE TABLE raw_test_images (image VARCHAR)")
            con.executemany("INSERT INTO raw_test_images VALUES (?)", [[r[0]] for r in rows])
            con.executemany("INSERT INTO text_flags (run_id, text_kind, text_id, flagged) VALUES (?, 'query', ?, ?)",
                            flags)
            con.execute("INSERT INTO runs (run_id, started_at) VALUES ('r2', now())")  # bookkeeping: ignored
            return step_fingerprint(con, "after_text_flags", "r2")

    base = fp([("a.jpg",), ("b.jpg",)], [("r2", "q1", True), ("r1", "q1", False)])
    assert fp([("b.jpg",), ("a.jpg",)], [("r1", "q1", False), ("r2", "q1", True)]) == base       # order
    assert fp([("a.jpg",), ("b.jpg",)], [("r2", "q1", True), ("r1", "q1", True)]) == base        # another run
    assert fp([("a.jpg",), ("c.jpg",)], [("r2", "q1", True), ("r1", "q1", False)]) != base       # a raw row
    assert fp([("a.jpg",), ("b.jpg",), ("b.jpg",)], [("r2", "q1", True)]) != base               # a duplicate
    assert fp([("a.jpg",), ("b.jpg",)], [("r2", "q1", False), ("r1", "q1", False)]) != base      # this run's verdict
