"""The reindex on a local Dask cluster (two worker processes) gives the single-process tables.

The single-process run is the session's shared tiny run (runner 'local'); the cluster run
starts from its fitted heads and exported encoder (tiny_warehouse.seed_models) but embeds
every photo and text again, in shards on the workers.  The heads are reused only when the
cluster's embeddings give the same training-data fingerprint, so reuse is itself a check.
"""

from __future__ import annotations

import duckdb
import pytest

from tiny_warehouse import TOP_K, seed_models, tiny_run

SCORE_TOL = 1e-5


def latest(db, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        run_id = con.execute("SELECT max(run_id) FROM runs").fetchone()[0]
        return con.execute(sql, [run_id]).fetchall()


RESULTS = """SELECT query_id, query_text, rank, image, score, shown, disclaimer, display, blocked_reason
             FROM search_results WHERE run_id = ? ORDER BY query_id, rank NULLS FIRST"""
METRICS = """SELECT component, head, protocol, metric, value
             FROM model_metrics WHERE run_id = ? ORDER BY component, head, protocol, metric"""


def same_rows(a: list[tuple], b: list[tuple], float_col: int) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[:float_col] + x[float_col + 1:] == y[:float_col] + y[float_col + 1:], (x, y)
        if x[float_col] is None or y[float_col] is None:
            assert x[float_col] is None and y[float_col] is None, (x, y)
        else:
            assert abs(x[float_col] - y[float_col]) <= SCORE_TOL, (x, y)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.reindex import reindex

    local = tiny_run(tmp_path_factory)
    wh = tmp_path_factory.mktemp("dask-warehouse") / "wh"
    seed_models(local, wh)
    state = reindex(data_dir=local.data, warehouse_dir=wh, top_k=TOP_K, runner="dask", return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    return local, wh, summary, task_runs


def test_cluster_run_gives_the_single_process_tables(cluster_run):
    local, wh, summary, _ = cluster_run
    same_rows(latest(local.db, RESULTS), latest(wh / "with_sense.duckdb", RESULTS), float_col=4)
    same_rows(latest(local.db, METRICS), latest(wh / "with_sense.duckdb", METRICS), float_col=4)
    assert summary["results"] == local.summary["results"]


def test_cluster_run_embedded_every_photo_in_shards_and_reused_the_heads(cluster_run):
    local, wh, summary, _ = cluster_run
    parts = list((wh / "embeddings" / "image").glob("*/part-*.parquet"))
    assert len(parts) >= 2, "each embedding shard writes its own part"
    assert summary["images_embedded"] == local.summary["images_embedded"] > 0
    assert len(list((wh / "models").glob("*/card.json"))) == 1, "same fingerprint: the seeded heads were reused"


def test_shard_tasks_ran_on_the_workers_and_reported_to_the_flows_server(cluster_run):
    _, _, _, task_runs = cluster_run
    by_name: dict[str, list] = {}
    for tr in task_runs:
        by_name.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr)
    for name in ("embed-image-shard", "rank-shard"):
        runs = by_name.get(name, [])
        assert len(runs) >= 2, (name, sorted(by_name))
        assert all(r.state.is_completed() for r in runs)


def test_first_stage_recall_is_recorded(cluster_run):
    _, wh, _, _ = cluster_run
    rows = latest(wh / "with_sense.duckdb", """
        SELECT head, value FROM model_metrics
        WHERE run_id = ? AND protocol = 'first_stage' AND metric = 'recall_of_full_top10_at_C'""")
    assert len(rows) == 1 and rows[0][1] == pytest.approx(1.0)  # 100 candidates cover the 8 photos
