"""The operator's path, for real: a PostgreSQL server, a Prefect server on it (loopback), the
process pool, the deployments from prefect.yaml, a worker, and runs triggered through the API.

Everything runs in subprocesses with their own PREFECT_HOME and a private PostgreSQL cluster
under /tmp, as the commands in docs/operations.md; every process this module starts is
stopped at the end, pass or fail.  Nothing here skips: a missing PostgreSQL, a server that
does not start or a missing Chromium fails the test (.ci/run installs both).
"""

from __future__ import annotations

import json
import os
import re
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
from tiny_warehouse import seed_models, tiny_run

POOL = "with-sense"
SERVER_START_SECONDS = 180
RUN_TIMEOUT_SECONDS = 420
PREFECT = [sys.executable, "-m", "prefect"]
# Tasks of the nightly flow, by the name they are declared with (ranking may be sharded,
# so its tasks are checked by prefix).
NIGHTLY_TASKS = {"ingest", "load-raw", "dbt-build-staging", "flag-texts", "dbt-build-marts", "build-encoders",
                 "embed-images", "embed-texts", "photo-guard", "train-heads", "evaluate-retrieval", "dbt-test",
                 "finish-run", "report", "dbt-docs"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


def postgres_bindir() -> Path:
    """Debian's PostgreSQL server programs (initdb, pg_ctl), newest version first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does it)")
    return Path(initdb).parent


def as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: as root, run them as the package's postgres user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster on a free loopback port, with a `prefect` role and database
    (as docs/operations.md creates them); yields the SQLAlchemy URL Prefect's server takes."""
    bindir = postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="with-sense-pg-"))  # under /tmp: the postgres user must reach it
    port = free_port()
    data, log = root / "data", root / "postgres.log"
    try:
        if os.geteuid() == 0:
            os.chmod(root, 0o755)
            shutil.chown(root, "postgres")
        for cmd in ([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--no-sync"],
                    [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "120", "-o",
                     f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off",
                     "start"]):
            done = subprocess.run(as_postgres(cmd), capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stdout}\n{done.stderr}\n{tail(log)}"
        psql = [str(bindir / "psql") if (bindir / "psql").exists() else "psql", "-h", "127.0.0.1", "-p", str(port),
                "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
        for sql in ("CREATE ROLE prefect LOGIN PASSWORD 'prefect'", "CREATE DATABASE prefect OWNER prefect"):
            done = subprocess.run([*psql, "-c", sql], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{sql}: {done.stderr}"
        yield f"postgresql+asyncpg://prefect:prefect@127.0.0.1:{port}/prefect"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres):
    """Server (on PostgreSQL), pool, both deployments, a worker and a web server for the reports.

    The worker's environment names the data folder and the warehouse (WITH_SENSE_*), the way
    docs/operations.md sets up a production worker; `prefect deploy` runs with other values in
    its environment, which must not leak into the deployments.  Yields a dict: api, client,
    tiny (the shared tiny run), warehouse (the worker's), reports_url, logs.
    """
    from prefect.client.orchestration import SyncPrefectClient

    root = tmp_path_factory.mktemp("prefect-stack")
    port, http_port = free_port(), free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WITH_SENSE_"))}
    env.update(PREFECT_HOME=str(root / "home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_LOGGING_LEVEL="INFO",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    procs: list[subprocess.Popen] = []
    logs = {name: root / f"{name}.log" for name in ("server", "worker", "pool", "deploy", "http")}
    warehouse = root / "worker-warehouse"
    try:
        procs.append(start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                           {**env, "PREFECT_API_DATABASE_CONNECTION_URL": postgres}, logs["server"]))
        # The server boots while the shared tiny warehouse is built in this process.
        tiny = tiny_run(tmp_path_factory)
        seed_models(tiny, warehouse)
        (warehouse / "reports").mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not healthy(api):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not start on 127.0.0.1:{port}:\n{tail(logs['server'])}")
            time.sleep(1)
        # Deploy-time paths that must NOT end up in the deployments' defaults.
        deploy_env = {**env, "WITH_SENSE_DATA_DIR": str(root / "deploy-time-data"),
                      "WITH_SENSE_WAREHOUSE": str(root / "deploy-time-warehouse")}
        for name, cmd in (("pool", [*PREFECT, "work-pool", "create", POOL, "--type", "process"]),
                          ("deploy", [*PREFECT, "--no-prompt", "deploy", "--all"])):
            done = subprocess.run(cmd, env=deploy_env, cwd=PROJECT_ROOT, stdout=logs[name].open("wb"),
                                  stderr=subprocess.STDOUT, timeout=300)
            assert done.returncode == 0, f"`{' '.join(cmd[2:])}` failed:\n{tail(logs[name])}"
        reports_url = f"http://127.0.0.1:{http_port}"
        procs.append(start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                            str(warehouse / "reports"), str(http_port)], env, logs["http"]))
        procs.append(start([*PREFECT, "worker", "start", "--pool", POOL],
                           {**env, "WITH_SENSE_DATA_DIR": str(tiny.data), "WITH_SENSE_WAREHOUSE": str(warehouse),
                            "WITH_SENSE_REPORTS_URL": reports_url}, logs["worker"]))
        with SyncPrefectClient(api) as client:
            yield {"api": api, "client": client, "tiny": tiny, "warehouse": warehouse, "reports_url": reports_url,
                   "logs": logs, "root": root}
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


def unchanged_custom_run(deployment) -> dict:
    """What Run -> Custom run submits when the operator changes nothing: every default the
    form shows (the deployment's parameter schema) with the deployment's own parameters on top."""
    props = deployment.parameter_openapi_schema["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v} | dict(deployment.parameters)


def run_logs(client, run_id, until: str | None = None) -> str:
    """A flow run's log lines (logs reach the server in batches: wait up to a minute for ``until``)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 60
    while True:
        text = "\n".join(e.message for e in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))))
        if until is None or until in text or time.monotonic() > deadline:
            return text
        time.sleep(2)


def artifacts_of(client, run_id) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return {a.key: a for a in client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            if a.key}


@pytest.fixture(scope="module")
def nightly(stack):
    """Two runs of the nightly deployment on the tiny dataset, through the worker: first an
    unchanged Custom-run payload, then a Quick run (no parameters), as an operator would."""
    client, logs = stack["client"], stack["logs"]
    deployment = client.read_deployment_by_name("nightly-reindex/nightly")
    payload = unchanged_custom_run(deployment)
    runs = []
    for parameters in (payload, {}):
        started = time.monotonic()
        created = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        run = wait_final(client, created.id, logs)
        print(f"nightly deployment run: {run.state.name} in {time.monotonic() - started:.1f} s (from trigger)")
        assert run.state.is_completed(), f"{run.state!r}\nworker log:\n{tail(logs['worker'])}"
        runs.append(run)
    return payload, runs


def published_runs(warehouse: Path) -> list[tuple]:
    with duckdb.connect(str(warehouse / "with_sense.duckdb"), read_only=True) as con:
        return con.execute("SELECT run_id, data_dir, top_k FROM runs WHERE finished_at IS NOT NULL "
                           "ORDER BY run_id").fetchall()


def test_deployments_are_declared_as_documented(stack):
    client = stack["client"]
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
    # Paths are not frozen at deploy time (`prefect deploy` ran with other WITH_SENSE_* values):
    # the form shows them empty and says what an empty field means.
    for name, env in (("data_dir", "WITH_SENSE_DATA_DIR"), ("warehouse_dir", "WITH_SENSE_WAREHOUSE")):
        assert props[name]["default"] is None, props[name]
        assert env in props[name]["description"] and "when the run starts" in props[name]["description"]
    assert "deploy-time" not in json.dumps(nightly.parameter_openapi_schema) + json.dumps(nightly.parameters)
    # The flow runs from this checkout.
    [step] = nightly.pull_steps
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert Path(directory).resolve() == PROJECT_ROOT

    adhoc = client.read_deployment_by_name("adhoc-search/adhoc")
    assert adhoc.work_pool_name == POOL and not adhoc.schedules
    schema = adhoc.parameter_openapi_schema
    assert schema["required"] == ["queries"]
    assert schema["properties"]["queries"]["type"] == "array"
    assert schema["properties"]["warehouse_dir"]["default"] is None
    assert all(p.get("description") for p in schema["properties"].values())


def test_server_keeps_its_state_in_postgresql(stack, postgres, nightly):
    # The flow runs the server reports are rows in the PostgreSQL database it was pointed at.
    port = postgres.rsplit(":", 1)[1].split("/")[0]
    _, runs = nightly
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", "prefect", "-d", "prefect", "-At", "-c",
                          "SELECT id FROM flow_run"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PGPASSWORD": "prefect"})
    assert out.returncode == 0, out.stderr
    assert {str(r.id) for r in runs} <= set(out.stdout.split())


def test_unchanged_custom_run_writes_where_the_worker_says(stack, nightly):
    payload, runs = nightly
    # The form's defaults leave the paths empty ...
    assert payload.get("data_dir") is None and payload.get("warehouse_dir") is None
    # ... so both runs (Custom and Quick) used the worker's WITH_SENSE_* settings, not the
    # checkout's folders nor what `prefect deploy` had in its environment.
    published = published_runs(stack["warehouse"])
    assert len(published) == 2
    assert {Path(d) for _, d, _ in published} == {stack["tiny"].data}
    assert all(k == payload["top_k"] for _, _, k in published)
    assert not (stack["root"] / "deploy-time-warehouse").exists()
    first_log = run_logs(stack["client"], runs[0].id, until=str(stack["warehouse"]))
    assert f"-> warehouse {stack['warehouse']}" in first_log
    assert "from the environment or default" in first_log


def test_nightly_run_completes_with_tasks_and_artifacts(stack, nightly):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    client, logs = stack["client"], stack["logs"]
    _, (run, second) = nightly
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

    run_id = published_runs(stack["warehouse"])[0][0]
    artifacts = artifacts_of(client, run.id)
    metrics = artifacts["reindex-metrics"]
    assert metrics.type == "table"
    values = [row["value"] for row in json.loads(metrics.data)]
    assert values and all(re.fullmatch(r"–|-?[\d,]+(\.\d{3})?", v) for v in values), values
    summary = artifacts["reindex-summary"]
    assert summary.type == "markdown"
    text = summary.data
    assert "What changed since the previous published run" in text and "first published run" in text
    assert "Compliance" in text and "queries blocked" in text and "Stages: computed or reused" in text
    # No long floats, no raw dicts, no dead file:// link; the report's web address and its path.
    assert not re.search(r"\d\.\d{4,}", text) and "{'" not in text and "file://" not in text, text
    url = f"{stack['reports_url']}/{run_id}/index.html"
    report = stack["warehouse"] / "reports" / run_id / "index.html"
    assert url in text and str(report) in text
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and f'data-run-id="{run_id}"'.encode() in r.read()
    # Progress artifacts of the long steps reached 100 %.
    for key in ("build-encoders-progress", "embed-images-progress"):
        assert artifacts[key].type == "progress" and float(artifacts[key].data) == 100.0, key

    # One count per step, the same wherever it is logged: what the shards embedded is what
    # embed-images reports as embedded this run (not "0 embedded, all from cache").
    log = run_logs(client, run.id, until="embedded this run")
    shards = re.search(r"image cache: (\d+) photos decoded", log)
    images = re.search(r"images: \d+ photos .*?embedded this run: (\d+);", log)
    assert shards and images, log[-3000:]
    assert int(images.group(1)) == int(shards.group(1)) > 0
    assert "Loading weights" not in log and "Loading weights" not in tail(logs["worker"], 100000)

    # The Quick run after it says what it reused, from which run.
    second_text = artifacts_of(client, second.id)["reindex-summary"].data
    assert f"Compared with run **{run_id}**" in second_text
    assert re.search(r"\| relevance heads \| reused from run \d{8}T", second_text), second_text
    assert "| embeddings | 0 photos and 0 texts embedded" in second_text


def test_adhoc_search_deployment_answers_with_the_law_applied(stack, nightly):
    client, logs = stack["client"], stack["logs"]
    deployment = client.read_deployment_by_name("adhoc-search/adhoc")
    # No warehouse given: the worker's WITH_SENSE_WAREHOUSE, where the nightly runs published.
    created = client.create_flow_run_from_deployment(deployment.id, parameters={
        "queries": ["A black dog jumps over a log .", "Two boys are playing football in the park ."], "top_k": 3})
    run = wait_final(client, created.id, logs)
    assert run.state.is_completed(), f"{run.state!r}\nworker log:\n{tail(logs['worker'])}"
    printed = run_logs(client, run.id, until="Two boys are playing")
    assert "A black dog jumps over a log" in printed
    # The query about boys gets one row, rank null, the disclaimer (the table wraps long cells).
    boys = [ln for ln in printed.splitlines() if "Two boys are playing" in ln]
    assert len(boys) == 1 and "null" in boys[0] and DISCLAIMER.split(" in ")[0] in boys[0], boys


def dump_dom(url: str) -> str:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                              "--dump-dom", url], capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.returncode == 0 and out.stdout.strip(), f"chromium failed on {url}:\n{out.stderr[-2000:]}"
    return out.stdout


def test_ui_pages_show_the_deployments_the_run_and_its_summary(stack, nightly):
    ui = stack["api"].removesuffix("/api")
    # The UI is served offline by the server itself and renders both deployments ...
    dom = dump_dom(f"{ui}/deployments")
    assert "nightly-reindex" in dom and "adhoc-search" in dom, dom[-2000:]
    # ... the run's page, and the summary artifact rendered from its markdown.
    _, (run, _) = nightly
    dom = dump_dom(f"{ui}/runs/flow-run/{run.id}")
    assert run.name in dom, dom[-2000:]
    summary = artifacts_of(stack["client"], run.id)["reindex-summary"]
    dom = dump_dom(f"{ui}/artifacts/artifact/{summary.id}")
    assert "What changed since the previous published run" in dom and "Compliance" in dom, dom[-3000:]
    # The report, as the artifact's link opens it: served over http, thumbnails loaded.
    run_id = published_runs(stack["warehouse"])[0][0]
    dom = dump_dom(f"{stack['reports_url']}/{run_id}/index.html")
    loaded = re.search(r'data-thumbs-loaded="(\d+)"', dom)
    total = re.search(r'data-thumbs-total="(\d+)"', dom)
    assert loaded and total and int(total.group(1)) > 0 and loaded.group(1) == total.group(1)


def test_path_defaults_are_resolved_when_a_run_starts(monkeypatch, tmp_path):
    # No server needed: the rule every kind of run shares (tasks/config.py).
    from prefect.utilities.callables import parameter_schema

    from flows.reindex import reindex
    from flows.search import adhoc_search
    from tasks.config import PROJECT_ROOT as ROOT
    from tasks.config import resolve_data_dir, resolve_warehouse_dir

    for flow_fn in (reindex, adhoc_search):
        props = parameter_schema(flow_fn).model_dump_for_openapi()["properties"]
        assert props["warehouse_dir"]["default"] is None
    monkeypatch.delenv("WITH_SENSE_WAREHOUSE", raising=False)
    monkeypatch.delenv("WITH_SENSE_DATA_DIR", raising=False)
    assert resolve_warehouse_dir(None) == ROOT / "warehouse"
    assert resolve_data_dir("") == ROOT / "data" / "with_sense"
    # Read at call time: a variable set after import counts; a given value wins; blank is not given.
    monkeypatch.setenv("WITH_SENSE_WAREHOUSE", str(tmp_path / "ops"))
    assert resolve_warehouse_dir(None) == resolve_warehouse_dir("  ") == tmp_path / "ops"
    assert resolve_warehouse_dir(tmp_path / "mine") == tmp_path / "mine"
    # The run form may send "" for an empty field: it must not become Path('.').
    from pydantic import TypeAdapter

    from tasks.config import OptionalPath

    assert TypeAdapter(OptionalPath).validate_python("") is None
