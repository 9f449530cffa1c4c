"""The analyst's path: the documented example queries, run by the `duckdb` command line
tool (the PyPI duckdb-cli package) against a real warehouse, and the dbt docs of the run
(manifest, run results, static site) kept in step with what the warehouse holds."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from conftest import PROJECT_ROOT
from tiny_warehouse import tiny_run

EXAMPLES = sorted((PROJECT_ROOT / "sql" / "examples").glob("*.sql"))
SQL_README = PROJECT_ROOT / "sql" / "README.md"
# Examples whose answer on the tiny warehouse is known not to be empty (all of them:
# the tiny dataset has blocked queries, restricted photos and two quarantined inputs).
NON_EMPTY = {p.stem for p in EXAMPLES}


def duckdb_cli() -> str:
    beside = Path(sys.executable).parent / "duckdb"
    found = str(beside) if beside.exists() else shutil.which("duckdb")
    assert found, "the duckdb CLI is missing: it is a dev dependency (duckdb-cli in pyproject.toml)"
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_cli_is_the_same_duckdb_as_the_pipeline():
    # Same version, same file format: the analysts' tool always opens what the flow wrote.
    out = subprocess.run([duckdb_cli(), "-version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert f"v{duckdb.__version__}" in out.stdout


def test_there_are_enough_examples():
    assert 5 <= len(EXAMPLES) <= 8


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_the_duckdb_cli(run, example):
    # As the README says: from the warehouse folder, read-only (a reindex may be publishing).
    out = subprocess.run([duckdb_cli(), "-readonly", "-csv", "with_sense.duckdb", "-f", str(example)],
                         cwd=run.warehouse, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Error" not in out.stderr, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows, f"{example.name} printed nothing"
    if example.stem in NON_EMPTY:
        assert len(rows) >= 2, f"{example.name} returned no rows:\n{out.stdout}"


def test_quarantine_example_finds_the_bad_inputs(run):
    example = PROJECT_ROOT / "sql" / "examples" / "quarantine_by_reason.sql"
    out = subprocess.run([duckdb_cli(), "-readonly", "-csv", "with_sense.duckdb", "-f", str(example)],
                         cwd=run.warehouse, capture_output=True, text=True, timeout=120, check=True)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    reasons = {(r["source"], r["reason"]) for r in rows}
    assert ("ExpertAnnotations.tsv", "expert score 9 is outside 1..4") in reasons
    assert any(src == "train_images/" and "empty" in why for src, why in reasons)


def dbt_artifact(run, name: str) -> dict:
    return json.loads((run.warehouse / "reports" / run.summary["run_id"] / "dbt" / name).read_text())


def test_dbt_artifacts_and_docs_site_land_beside_the_report(run):
    folder = run.warehouse / "reports" / run.summary["run_id"] / "dbt"
    for name in ("manifest.json", "run_results.json", "catalog.json", "static_index.html"):
        assert (folder / name).stat().st_size > 1000, name
    # The static site carries the manifest and catalog inside it: one file, no server.
    site = (folder / "static_index.html").read_text()
    assert "relevance_targets" in site and "training_exclusions" in site
    assert 'href="dbt/static_index.html"' in run.report.read_text()


def test_every_table_view_and_column_is_documented_in_dbt(run):
    """The docs site (the dbt manifest of the run) describes every relation and column
    the published warehouse has; views describe their columns as their table does."""
    manifest = dbt_artifact(run, "manifest.json")
    documented: dict[str, dict[str, str]] = {}
    for node in [*manifest["nodes"].values(), *manifest["sources"].values()]:
        if node["resource_type"] in ("model", "source"):
            name = node.get("identifier") or node["alias"]
            assert node["description"].strip(), f"{name} has no description"
            documented[name] = {c: v["description"] for c, v in node["columns"].items()}
    with duckdb.connect(str(run.db), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        columns = con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall()
    assert names - set(documented) == set(), "tables or views missing from the dbt project (sources or models)"
    assert set(documented) - names == set(), "the dbt project documents tables the warehouse does not have"
    missing = [f"{t}.{c}" for t, c in columns if not documented[t].get(c, "").strip()]
    assert not missing, f"columns without a description in sql/models/**.yml: {missing}"
    for view, table in (("latest_run", "runs"), ("latest_search_results", "search_results"),
                        ("latest_model_metrics", "model_metrics")):
        assert documented[view] == documented[table], f"{view} describes its columns unlike {table}"


def test_every_model_is_tested_and_every_test_ran_once_and_passed(run):
    manifest = dbt_artifact(run, "manifest.json")
    results = dbt_artifact(run, "run_results.json")["results"]
    tests = {k: v for k, v in manifest["nodes"].items() if v["resource_type"] == "test"}
    models = {k for k, v in manifest["nodes"].items() if v["resource_type"] == "model"}
    assert len(tests) >= 20
    tested = {dep for t in tests.values() for dep in t["depends_on"]["nodes"]}
    assert models - tested == set(), "models without a data test"
    # The three build steps (sql/selectors.yml) partition the project: each node once.
    ran = [r["unique_id"] for r in results]
    assert sorted(ran) == sorted(tests.keys() | models)
    assert {r["status"] for r in results} <= {"success", "pass"}, [r for r in results if r["status"] not in ("success", "pass")]


def test_shared_constants_come_from_the_dbt_project():
    from tasks.config import DISCLAIMER
    from tasks.sql_project import project_var
    from tasks.train import TrainConfig

    assert TrainConfig().positive_threshold == project_var("match_target_threshold")
    assert DISCLAIMER == project_var("disclaimer")
    sql = (PROJECT_ROOT / "sql" / "models" / "marts" / "restricted_train_photos.sql").read_text()
    assert "var('match_target_threshold')" in sql and ">= 0.6" not in sql


def test_staging_models_do_not_sort():
    for model in (PROJECT_ROOT / "sql" / "models" / "staging").glob("*.sql"):
        assert "order by" not in model.read_text().lower(), model.name


def test_every_example_is_listed_in_the_readme():
    text = SQL_README.read_text()
    assert "static_index.html" in text  # where the docs site is
    assert [p.name for p in EXAMPLES if f"examples/{p.name}" not in text] == []
