"""Paths and constants shared by every stage."""

import os
from pathlib import Path

from tasks.sql_project import project_var

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The exact text the law asks us to show in place of a blocked query or photo (shared with
# the SQL layer's data tests: sql/dbt_project.yml vars).
DISCLAIMER: str = project_var("disclaimer")

SEED = 20261123


def default_data_dir() -> Path:
    return Path(os.environ.get("WITH_SENSE_DATA_DIR", PROJECT_ROOT / "data" / "with_sense"))


def default_warehouse_dir() -> Path:
    return Path(os.environ.get("WITH_SENSE_WAREHOUSE", PROJECT_ROOT / "warehouse"))
