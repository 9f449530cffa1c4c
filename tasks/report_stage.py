"""The report stage (Prefect): the run's HTML page (``tasks/report.py``) and the run page's summary artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.report import build_report, evaluation_queries
from tasks.warehouse import Warehouse, connect


@task(name="report", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def report_task(db: Path, run_id: str, wh: Warehouse, data_dir: Path, images, texts, model,
                summary: dict) -> Path:
    """The run's HTML report, and the run page's summary (markdown artifact ``reindex-summary``)
    saying what the run did and where the report is."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.run_digest import digest_markdown, report_location

    with connect(db, read_only=True) as con:
        gallery = con.execute("SELECT image FROM gallery ORDER BY image").pl()["image"].to_list()
        q_texts = evaluation_queries(con)["query_text"].unique().to_list()
    feats = images.features[images.rows("test", gallery)] if gallery else np.zeros((0, 1), np.float32)
    vecs = dict(zip(q_texts, texts.vectors[texts.rows(q_texts)])) if q_texts else {}
    digest = summary.get("digest", {})
    page = build_report(db, run_id, wh, data_dir, model, summary, feats, vecs, digest)
    where = report_location(page, run_id)
    create_markdown_artifact(key="reindex-summary", markdown=digest_markdown(summary, digest, where),
                             description=f"What run {run_id} did, and where its HTML report is")
    get_run_logger().info("report: %s", where["url"] or where["path"])
    return page


