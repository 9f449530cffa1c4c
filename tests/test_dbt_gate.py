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
