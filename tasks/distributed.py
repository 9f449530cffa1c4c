"""Where the mapped steps run, and how work is cut into shards.

The reindex maps two steps over shards: embedding photos (shards of photo paths) and
ranking (shards of saved queries).  ``runner`` picks where those shard tasks run:

- ``local``             one process, one shard after another (Prefect's thread pool, one thread)
- ``dask``              a Dask LocalCluster on this machine: 2 worker processes x 1 thread
- a configured name     the scheduler of an existing Dask cluster (``dask scheduler`` /
                        ``dask worker tcp://host:8786`` on each machine), named in the
                        deployment's configuration: the worker's environment variable
                        ``WITH_SENSE_DASK_SCHEDULERS='lab=tcp://10.0.0.5:8786,gpu=tls://...'``

The flow parameter ``runner`` is a name, never an address: whoever can open the Prefect
run form must not be able to send the model and results (pickled by Dask) to a scheduler
of their choosing.  A name that is not ``local``, ``dask`` or configured is refused when
the parameters are validated, before anything connects (``check_runner_name``).  The
command line may still take an address (``check_runner``): the operator is at the shell.

The tasks are the same whatever the runner, and so are the shards, so the tables are the
same.  Shard tasks get paths and small arrays, never the gallery: they read what they need
from the Parquet caches under the warehouse, so workers on other machines need the
warehouse (and the photos) at the same path -- a shared file system.  They never open the
DuckDB file: the flow process reads and writes it, the workers only compute.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.embedding_cache import cached_keys

RUNNERS = ("local", "dask")
SCHEDULERS_ENV = "WITH_SENSE_DASK_SCHEDULERS"
RUNNER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls)://[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}$")
# Addresses given on this process's command line, by the name the flow receives.
_SHELL_SCHEDULERS: dict[str, str] = {}


@dataclass(frozen=True)
class ShardConfig:
    """How embedding and search work is cut into shards (counts of photos and queries)."""

    photos_per_shard: int = 512    # one shard = one encoder session and one Parquet part
    queries_per_shard: int = 256   # each query shard scans the whole gallery index once
    # At least this many shards, so two workers both get work even on a small batch.
    min_shards: int = 2


def configured_schedulers(env: str | None = None) -> dict[str, str]:
    """Scheduler addresses by name, from ``WITH_SENSE_DASK_SCHEDULERS`` (``env`` overrides
    the environment's value): comma-separated ``name=tcp://host:port`` entries.  Raises
    ValueError on an entry that is not a lower-case name and a tcp:// or tls:// address,
    or that reuses 'local' or 'dask'."""
    raw = os.environ.get(SCHEDULERS_ENV, "") if env is None else env
    out: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        name, _, address = (part.strip() for part in entry.partition("="))
        if not RUNNER_NAME.match(name) or name in RUNNERS or not SCHEDULER_ADDRESS.match(address):
            raise ValueError(f"{SCHEDULERS_ENV}: {entry!r} is not name=tcp://host:port "
                             "(a lower-case name other than local/dask, a tcp:// or tls:// address)")
        out[name] = address
    return out | _SHELL_SCHEDULERS


def check_runner_name(runner: str) -> str:
    """``runner`` if it is 'local', 'dask' or a configured scheduler name (the flow
    parameter's validator: runs before the flow, so nothing has connected anywhere).
    Raises ValueError naming the allowed choices."""
    if runner in RUNNERS or runner in configured_schedulers():
        return runner
    allowed = ", ".join(repr(n) for n in (*RUNNERS, *sorted(configured_schedulers())))
    hint = " (scheduler addresses go in the deployment's configuration, not the run form)" if "://" in runner else ""
    raise ValueError(f"runner must be one of {allowed}, not {runner[:80]!r}{hint}; "
                     f"configure named schedulers in {SCHEDULERS_ENV}")


def check_runner(runner: str) -> str:
    """The command line's ``--runner``: a name (as ``check_runner_name``) or, since the
    operator is at the shell, a scheduler address, registered in this process under the
    name 'shell' (which is what the flow then receives)."""
    if SCHEDULER_ADDRESS.match(runner):
        _SHELL_SCHEDULERS["shell"] = runner
        return "shell"
    return check_runner_name(runner)


def scheduler_address(runner: str) -> str | None:
    """The address a configured name stands for (None for 'local' and 'dask');
    ValueError for anything else."""
    check_runner_name(runner)
    return None if runner in RUNNERS else configured_schedulers()[runner]


def task_runner(runner: str = "local", n_workers: int = 2) -> TaskRunner:
    """A fresh (not yet started) Prefect task runner; a flow enters it with ``open_runner``.
    ``runner``: 'local', 'dask' or a configured scheduler name (ValueError otherwise)."""
    address = scheduler_address(runner)
    if runner == "local":
        # One at a time: the single-process run the cluster run is compared with, and no
        # second encoder session competing for the same two cores.
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    # The scheduler's INFO lines (worker start/stop) would drown the run's own log.
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker",
                 "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if runner == "dask":
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
            "n_workers": n_workers, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None, "silence_logs": logging.WARNING})
    return DaskTaskRunner(address=address)


def on_this_machine(tr: TaskRunner) -> bool:
    """Whether ``tr`` runs its tasks on this machine (a thread pool or a local Dask cluster),
    so they can read and write the warehouse folder (e.g. Prefect's persisted results)."""
    return getattr(tr, "address", None) is None


@contextmanager
def open_runner(runner: str = "local", n_workers: int = 2) -> Iterator[TaskRunner]:
    """The started task runner for a flow run (enter it inside the flow).

    Workers run each task in their own process and find the Prefect API through the
    settings sent with the task.  When the flow runs on Prefect's temporary (ephemeral)
    server those settings name no server, and every worker would start one of its own,
    logging its task runs where nobody looks; so the flow's server address goes with them.
    A cluster on other machines needs a real server (PREFECT_API_URL) they can reach.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with ExitStack() as stack:
        ctx = FlowRunContext.get()
        if runner != "local" and not PREFECT_API_URL.value() and ctx is not None:
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: str(ctx.client.api_url).rstrip("/")}))
        yield stack.enter_context(task_runner(runner, n_workers))


def shard_bounds(n: int, per_shard: int, min_shards: int = 1) -> list[tuple[int, int]]:
    """Contiguous, nearly equal [start, stop) ranges covering range(n)."""
    if n <= 0:
        return []
    k = min(n, max(math.ceil(n / max(per_shard, 1)), min_shards))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


# ------------------------------------------------------------- embedding shards


@task(name="embed-image-shard", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def embed_image_shard(paths: list[str], shas: list[str], emb_root: str, onnx_cache: str,
                      workers: int | None = None) -> int:
    """Embed one shard of photos, both views and the face signal in one pass (relevance, photo
    guard, faces: each photo read and decoded once), into their own Parquet part(s) of each
    cache; returns how many.  ``workers``: encoder threads and face processes (None: one per core)."""
    from tasks.embed import FACES, embed_photos, photo_encoders

    # The flow built the ONNX exports (and int8 models) before mapping: here they are only loaded.
    return embed_photos(paths, shas, Path(emb_root), photo_encoders(Path(onnx_cache)), workers=workers,
                        faces=FACES)


def encoder_workers(tr: TaskRunner) -> int | None:
    """Encoder threads per embedding shard.  Shards of a local Dask cluster run at the same
    time in processes sharing this machine's cores, so each gets cores // processes threads
    (2 x 1 on 2 cores, not 2 x 2 fighting over them); otherwise None: the encoder's own
    default, one thread per core (one shard at a time locally, one machine per worker)."""
    processes = (getattr(tr, "cluster_kwargs", None) or {}).get("n_workers")
    if processes:
        return max(1, (os.cpu_count() or 1) // int(processes))
    return None


def fill_image_cache(tr: TaskRunner, db: Path, data_dir: Path, emb_root: Path, onnx_cache: Path,
                     config: ShardConfig = ShardConfig()) -> int:
    """Embed the valid photos any cache lacks (relevance view, guard view, faces), in mapped
    shards; returns how many photos were decoded.  The only stage after ingest that opens
    photo files: later stages read these caches.

    Runs in the flow before ``embed_images_task`` and ``photo_guard_task``, which then find
    every photo cached.
    """
    from tasks.embed import FACES, face_cache_dir, photo_encoders
    from tasks.embedding_cache import calibration_sample, encoder_dir
    from tasks.warehouse import connect

    with connect(db) as con:
        photos = con.execute(
            "SELECT path, sha256 FROM stg_photos WHERE is_valid ORDER BY split, image").pl()
    paths = [str(Path(data_dir) / p) for p in photos["path"]]
    shas_all = photos["sha256"].to_list()
    # Built here once, so the ONNX exports (and any int8 model, calibrated on a deterministic
    # sample of these photos) exist before the shards, which each open their own sessions.
    encoders = photo_encoders(onnx_cache, calibration_sample(paths, shas_all))
    have = [cached_keys(encoder_dir(emb_root, kind, enc.name)) for kind, enc in encoders.items()]
    have.append(cached_keys(face_cache_dir(emb_root, FACES)))
    todo: dict[str, str] = {}
    for path, sha in zip(paths, shas_all):
        if any(sha not in h for h in have):
            todo.setdefault(sha, path)
    shas = sorted(todo)
    bounds = shard_bounds(len(shas), config.photos_per_shard, config.min_shards)
    if bounds:
        from prefect import unmapped

        from tasks.progress import Progress

        futures = tr.map(embed_image_shard, {
            "paths": [[todo[s] for s in shas[a:b]] for a, b in bounds],
            "shas": [shas[a:b] for a, b in bounds],
            "emb_root": unmapped(str(emb_root)), "onnx_cache": unmapped(str(onnx_cache)),
            "workers": unmapped(encoder_workers(tr))})
        done = 0
        # Shards may run on other machines: progress is counted here, one shard at a time.
        with Progress(len(shas), "embedding photos", unit="photo", key="embed-images-progress") as progress:
            for f, (a, b) in zip(futures, bounds):
                done += f.result()
                progress.advance(b - a)
    else:
        done = 0
    get_run_logger().info("image cache: %d photos decoded (relevance + guard views, faces) in %d shards, %d already cached",
                          done, len(bounds), len(photos) - len(shas))
    return done
