"""The analyst's path: the documented example queries, run by the `duckdb` command line
tool (the PyPI duckdb-cli package) against a real warehouse, and the one page that
documents every table and view kept in step with what the warehouse holds."""

from __future__ import annotations

import csv
import io
import re
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


def documented_names() -> set[str]:
    return set(re.findall(r"^### `([a-z_]+)`", SQL_README.read_text(), flags=re.M))


def test_every_table_and_view_is_documented(run):
    with duckdb.connect(str(run.db), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        columns = con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall()
    documented = documented_names()
    assert names - documented == set(), "tables or views missing from sql/README.md"
    assert documented - names == set(), "sql/README.md documents tables the warehouse does not have"
    # Every column is named in its table's section, or the section says it has the same
    # columns as another table, and it really has.
    text = SQL_README.read_text()
    sections = dict(re.findall(r"^### `([a-z_]+)`(.*?)(?=^##|\Z)", text, flags=re.M | re.S))
    cols_of: dict[str, list[str]] = {}
    for t, c in columns:
        cols_of.setdefault(t, []).append(c)
    missing = []
    for t, cols in cols_of.items():
        same = re.search(r"same columns as `([a-z_]+)`", sections[t], flags=re.I)
        if same:
            assert sorted(cols) == sorted(cols_of[same.group(1)]), f"{t} does not have the columns of {same.group(1)}"
        else:
            missing += [f"{t}.{c}" for c in cols if f"`{c}`" not in sections[t]]
    assert not missing, f"columns not described in sql/README.md: {missing}"


def test_every_example_is_listed_in_the_readme():
    text = SQL_README.read_text()
    assert [p.name for p in EXAMPLES if f"examples/{p.name}" not in text] == []
