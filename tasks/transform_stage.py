"""The dbt stages (Prefect): build the staging models, then the marts, run the data tests and
write the docs site, each a task around ``tasks/transform.py``."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.transform import DbtStep, build, document
from tasks.warehouse import Warehouse


def _logged(step: DbtStep) -> DbtStep:
    c = step.counts()
    if step.reused_from:
        get_run_logger().info("dbt %s: inputs and SQL unchanged since run %s; its build and tests stand (%.2f s)",
                              step.step, step.reused_from, step.seconds)
    else:
        get_run_logger().info("dbt %s: %d models, %d tests passed in %.2f s", step.step,
                              c.get("models_success", 0), c.get("tests_pass", 0), step.seconds)
    return step


@task(name="dbt-build-staging", cache_policy=NO_CACHE)
def build_staging_task(db: Path, run_id: str, wh: Warehouse) -> DbtStep:
    """Prefect task: ``build('before_text_flags', ...)`` (staging, gallery, relevance_targets and their tests)
    on ``db``, logged; raises ``DbtFailed``."""
    return _logged(build("before_text_flags", db, run_id, wh))


@task(name="dbt-build-marts", cache_policy=NO_CACHE)
def build_marts_task(db: Path, run_id: str, wh: Warehouse) -> DbtStep:
    """Prefect task: ``build('after_text_flags', ...)`` (the training marts, which read text_flags) on ``db``,
    logged; raises ``DbtFailed``."""
    return _logged(build("after_text_flags", db, run_id, wh))


@task(name="dbt-test", cache_policy=NO_CACHE)
def test_task(db: Path, run_id: str, wh: Warehouse) -> DbtStep:
    """Prefect task: ``build('before_publish', ...)`` (views and tests on the history tables) on ``db``,
    logged; raises ``DbtFailed``."""
    return _logged(build("before_publish", db, run_id, wh))


@task(name="dbt-docs", cache_policy=NO_CACHE)
def docs_task(db: Path, run_id: str, wh: Warehouse, steps: list[DbtStep]) -> Path:
    """Prefect task: ``document(...)``: the run's dbt artifacts in ``reports/<run_id>/dbt/``; returns that
    folder."""
    return document(db, run_id, wh, steps)
