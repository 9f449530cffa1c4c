"""Constants shared by the SQL layer and Python, read from the dbt project's one place.

``sql/dbt_project.yml`` ``vars:`` holds every constant both sides use (the match threshold
on relevance targets, the legal disclaimer, ...).  SQL reads them with ``var('name')``;
Python with :func:`project_var`.  A leaf module: it imports nothing from ``tasks``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "sql"


@cache
def project_vars() -> dict:
    """``vars:`` of ``sql/dbt_project.yml`` (plain YAML values, no Jinja)."""
    return dict(yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())["vars"])


def project_var(name: str):
    """One shared constant; ``KeyError`` names the file when it is not defined there."""
    try:
        return project_vars()[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in vars: of {DBT_PROJECT_DIR / 'dbt_project.yml'}") from None
