"""The operator's path, for real: a Prefect server on loopback, the process pool, the
deployments from prefect.yaml, a worker, and runs triggered through the API.

Everything runs in subprocesses with their own PREFECT_HOME, exactly as the commands in
docs/operations.md; every process this module starts is stopped at the end, pass or fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest

from conftest import PROJECT_ROOT
from tasks.config import DISCLAIMER
from tiny_warehouse import TOP_K, seed_models, tiny_run

POOL = "with-sense"
SERVER_START_SECONDS = 180
RUN_TIMEOUT_SECONDS = 420
PREFECT = [sys.executable, "-m", "prefect"]
# Tasks of the nightly flow, by the name they are declared with (ranking may be sharded,
# so its tasks are checked by prefix).
NIGHTLY_TASKS = {"ingest", "load-raw", "sql-models", "flag-texts", "embed-images", "embed-texts", "photo-guard",
                 "train-heads", "evaluate-retrieval", "finish-run", "report"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Own session: stopping the group also stops what it spawned (the worker's flow runs).
    return subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Ctrl-C first (what an operator does), then harder; only this process's own group."""
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server, pool, both deployments and a worker; yields (api url, client, tiny run, logs)."""
    from prefect.client.orchestration import SyncPrefectClient

    root = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(root / "home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_LOGGING_LEVEL="INFO",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    procs: list[subprocess.Popen] = []
    logs = {name: root / f"{name}.log" for name in ("server", "worker", "pool", "deploy")}
    try:
        procs.append(start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                           logs["server"]))
        # The server boots while the shared tiny warehouse is built in this process.
        tiny = tiny_run(tmp_path_factory)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not healthy(api):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"the Prefect server did not start on 127.0.0.1:{port}:\n{tail(logs['server'])}")
            time.sleep(1)
        for name, cmd in (("pool", [*PREFECT, "work-pool", "create", POOL, "--type", "process"]),
                          ("deploy", [*PREFECT, "--no-prompt", "deploy", "--all"])):
            done = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, stdout=logs[name].open("wb"),
                                  stderr=subprocess.STDOUT, timeout=300)
            assert done.returncode == 0, f"`{' '.join(cmd[2:])}` failed:\n{tail(logs[name])}"
        procs.append(start([*PREFECT, "worker", "start", "--pool", POOL], env, logs["worker"]))
        with SyncPrefectClient(api) as client:
            yield api, client, tiny, logs
    finally:
        for p in reversed(procs):
            stop(p)


def wait_final(client, flow_run_id, logs: dict) -> object:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {run.name} still {run.state.name} after {RUN_TIMEOUT_SECONDS} s;\n"
                        f"worker log:\n{tail(logs['worker'])}")
        time.sleep(2)


@pytest.fixture(scope="module")
def nightly(stack, tmp_path_factory):
    """One run of the nightly deployment on the tiny dataset, triggered through the API."""
    _, client, tiny, logs = stack
    wh = tmp_path_factory.mktemp("deployed-warehouse")
    seed_models(tiny, wh)
    deployment = client.read_deployment_by_name("nightly-reindex/nightly")
    started = time.monotonic()
    created = client.create_flow_run_from_deployment(
        deployment.id, parameters={"data_dir": str(tiny.data), "warehouse_dir": str(wh), "top_k": TOP_K})
    run = wait_final(client, created.id, logs)
    print(f"nightly deployment run: {run.state.name} in {time.monotonic() - started:.1f} s (from trigger)")
    return run, wh


def test_deployments_are_declared_as_documented(stack):
    _, client, _, _ = stack
    nightly = client.read_deployment_by_name("nightly-reindex/nightly")
    assert nightly.work_pool_name == POOL
    assert client.read_work_pool(POOL).type == "process"
    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "UTC", True)
    assert nightly.global_concurrency_limit is not None and nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy.value == "ENQUEUE"
    # The run form in the UI: every parameter typed, with a default and a description.
    props = nightly.parameter_openapi_schema["properties"]
    assert {"data_dir", "warehouse_dir", "top_k", "head", "wait_for_lock_seconds"} <= set(props)
    assert all(p.get("description") for p in props.values()), props
    assert props["head"]["enum"] == ["auto", "bridge", "lgbm", "mlp"]
    assert (props["top_k"]["type"], props["top_k"]["minimum"]) == ("integer", 1)
    # The flow runs from this checkout.
    [step] = nightly.pull_steps
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert Path(directory).resolve() == PROJECT_ROOT

    adhoc = client.read_deployment_by_name("adhoc-search/adhoc")
    assert adhoc.work_pool_name == POOL and not adhoc.schedules
    schema = adhoc.parameter_openapi_schema
    assert schema["required"] == ["queries"]
    assert schema["properties"]["queries"]["type"] == "array"
    assert all(p.get("description") for p in schema["properties"].values())


def test_nightly_run_completes_with_tasks_and_artifacts(stack, nightly):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    _, client, _, logs = stack
    run, wh = nightly
    assert run.state.is_completed(), f"{run.state!r}\nworker log:\n{tail(logs['worker'])}"
    only_this = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))

    # Task run states reach the server as events, possibly just after the flow's final state.
    deadline = time.monotonic() + 60
    while True:
        task_runs = client.read_task_runs(flow_run_filter=only_this)
        if all(t.state and t.state.is_completed() for t in task_runs) or time.monotonic() > deadline:
            break
        time.sleep(2)
    names = {t.name.rsplit("-", 1)[0] for t in task_runs}
    assert NIGHTLY_TASKS <= names, NIGHTLY_TASKS - names
    assert any(n.startswith("rank") for n in names), names
    assert all(t.state.is_completed() for t in task_runs), [(t.name, t.state.name) for t in task_runs]

    artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=only_this) if a.key}
    assert artifacts["reindex-metrics"].type == "table"
    assert artifacts["reindex-summary"].type == "markdown"
    assert "finished in" in artifacts["reindex-summary"].data
    link = artifacts["reindex-report"]  # a link artifact is stored as markdown: [text](uri)
    assert link.type in ("link", "markdown") and "](file://" in link.data
    # The progress artifact of the embedding step reached 100 %.
    assert artifacts["embed-images-progress"].type == "progress"
    assert float(artifacts["embed-images-progress"].data) == 100.0

    # The run published its warehouse, and the linked report is there.
    with duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True) as con:
        run_id, top_k = con.execute("SELECT run_id, top_k FROM latest_run").fetchone()
    assert top_k == TOP_K
    report = wh / "reports" / run_id / "index.html"
    assert report.exists() and report.resolve().as_uri() in link.data


def test_adhoc_search_deployment_answers_with_the_law_applied(stack, nightly):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    _, client, _, logs = stack
    _, wh = nightly
    deployment = client.read_deployment_by_name("adhoc-search/adhoc")
    created = client.create_flow_run_from_deployment(deployment.id, parameters={
        "queries": ["A black dog jumps over a log .", "Two boys are playing football in the park ."],
        "warehouse_dir": str(wh), "top_k": 3})
    run = wait_final(client, created.id, logs)
    assert run.state.is_completed(), f"{run.state!r}\nworker log:\n{tail(logs['worker'])}"
    # Logs reach the server in batches, possibly after the final state: wait for the table.
    deadline = time.monotonic() + 60
    while True:
        printed = "\n".join(entry.message for entry in
                            client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))))
        if "Two boys are playing" in printed or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert "A black dog jumps over a log" in printed
    # The query about boys gets one row, rank null, the disclaimer (the table wraps long cells).
    boys = [ln for ln in printed.splitlines() if "Two boys are playing" in ln]
    assert len(boys) == 1 and "null" in boys[0] and DISCLAIMER.split(" in ")[0] in boys[0], boys


def test_ui_lists_the_deployments(stack):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    api, _, _, _ = stack
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                              "--dump-dom", api.removesuffix("/api") + "/deployments"],
                             capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    # The UI is served offline by the server itself and renders both deployments.
    assert "nightly-reindex" in out.stdout and "adhoc-search" in out.stdout, out.stdout[-2000:]
