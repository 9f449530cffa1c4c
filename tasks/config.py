"""Paths, settings and constants shared by every stage.

Settings that come from the environment are resolved when a run *starts*, never when a
module is imported: a deployment registered on one machine (``prefect deploy`` imports the
flow) must not freeze that machine's paths into its defaults.  Every kind of run -- the
schedule, Quick run and Custom run in the UI, the CLI -- passes ``None`` (or an empty
value) for "not given" and gets the same answer from these functions:

=================  ==========================  ==========================================
setting            environment variable        project default
=================  ==========================  ==========================================
data folder        ``WITH_SENSE_DATA_DIR``     ``<checkout>/data/with_sense``
warehouse          ``WITH_SENSE_WAREHOUSE``    ``<checkout>/warehouse``
report base URL    ``WITH_SENSE_REPORTS_URL``  none: the report is named by its file path
=================  ==========================  ==========================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator

from tasks.sql_project import project_var

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The exact text the law asks us to show in place of a blocked query or photo (shared with
# the SQL layer's data tests: sql/dbt_project.yml vars).
DISCLAIMER: str = project_var("disclaimer")

SEED = 20261123

DATA_DIR_ENV = "WITH_SENSE_DATA_DIR"
WAREHOUSE_ENV = "WITH_SENSE_WAREHOUSE"
REPORTS_URL_ENV = "WITH_SENSE_REPORTS_URL"

# Shown in the run form (parameter descriptions), so an operator sees what an empty field means.
DATA_DIR_HELP = (f"Folder with the five source files, train_images/ and test_images/. Empty: ${DATA_DIR_ENV} "
                 "of the process that runs the flow (the worker), else <checkout>/data/with_sense; "
                 "resolved when the run starts and logged on its first line.")
WAREHOUSE_HELP = (f"Where the DuckDB file, Parquet exports, caches and reports live. Empty: ${WAREHOUSE_ENV} "
                  "of the process that runs the flow (the worker), else <checkout>/warehouse; "
                  "resolved when the run starts and logged on its first line.")


def _given(value: str | os.PathLike | None) -> bool:
    return value is not None and str(value).strip() != ""


def _empty_to_none(value):
    return None if isinstance(value, str) and not value.strip() else value


# A path parameter that may be left empty: a blank string from a run form means "not given"
# (plain pydantic would turn "" into Path('.'), the worker's current directory).
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_to_none)]


def resolve_data_dir(value: str | os.PathLike | None = None) -> Path:
    """The data folder: ``value`` if given, else ``$WITH_SENSE_DATA_DIR``, else the checkout's
    ``data/with_sense``.  Read at call time (run start), not at import."""
    if _given(value):
        return Path(value).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "")
    return Path(env).expanduser() if env.strip() else PROJECT_ROOT / "data" / "with_sense"


def resolve_warehouse_dir(value: str | os.PathLike | None = None) -> Path:
    """The warehouse folder: ``value`` if given, else ``$WITH_SENSE_WAREHOUSE``, else the
    checkout's ``warehouse/``.  Read at call time (run start), not at import."""
    if _given(value):
        return Path(value).expanduser()
    env = os.environ.get(WAREHOUSE_ENV, "")
    return Path(env).expanduser() if env.strip() else PROJECT_ROOT / "warehouse"


def reports_base_url() -> str | None:
    """``$WITH_SENSE_REPORTS_URL`` without a trailing slash: where a web server serves the
    warehouse's ``reports/`` folder (docs/operations.md), or None when nothing serves it."""
    url = os.environ.get(REPORTS_URL_ENV, "").strip().rstrip("/")
    return url or None


# Older names, kept for scripts (bench/) that call them at run time.
default_data_dir = resolve_data_dir
default_warehouse_dir = resolve_warehouse_dir
