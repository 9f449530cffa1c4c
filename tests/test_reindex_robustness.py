"""The whole reindex under bad input, a kill, two runs at once and a missing file.

Runs on the tiny dataset (conftest.build_dataset).  One clean in-process run is the
reference; every other run works on a copy of its warehouse, so the runs that need
no training reuse its heads and stay short:

- corrupted copy (in-process): every kind of bad row and photo added, one good saved
  query damaged.  The run completes, each bad input is quarantined with its reason, the
  counts add up, nothing outside the data folder is opened, and the untouched saved
  queries get exactly the clean run's results.
- two CLI reindexes started at once on one warehouse: one runs, the other refuses with
  exit code 2 and one clear line; the finished warehouse equals the clean run's
  (idempotence: same current tables, same rows of the latest run up to float noise).
- a CLI reindex killed with SIGKILL once its first embeddings are on disk: the
  published database and exports are byte-identical afterwards, and the next run
  completes, embedding only the photos the killed run had not finished.
- a missing source file: exit code 2, one clear message, database byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from conftest import PROJECT_ROOT, build_dataset
from test_ingest_bad_input import image_bytes, jpeg_bytes, png_header_only
from tasks.warehouse import (
    DB_NAME,
    Warehouse,
    WarehouseBusy,
    prefect_slot,
    publish,
    recover,
    reindex_lock,
    staged_exports_dir,
)

TOP_K = 5
RUN_TIMEOUT = 900  # seconds; a tiny run takes well under this even on a loaded machine
HISTORY = ["search_results", "withheld_results", "model_metrics", "photo_flags", "text_flags", "quarantine", "ingest_ledger"]
# Values that legitimately differ between two runs of the same inputs.
VOLATILE = {"run_id"}


# ---------------------------------------------------------------- helpers


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.glob("*.parquet"))}


def query(db: Path, sql: str, params: list | None = None) -> pl.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).pl()


def sorted_frame(df: pl.DataFrame) -> pl.DataFrame:
    df = df.drop([c for c in df.columns if c in VOLATILE])
    return df.sort(df.columns, nulls_last=True)


def current_tables(db: Path) -> dict[str, pl.DataFrame]:
    """Every non-history table, i.e. what a run replaces wholesale."""
    # run_stages is history too, and differs on purpose: a rerun records what it reused.
    names = query(db, "SELECT table_name FROM duckdb_tables() WHERE table_name NOT IN "
                      f"({', '.join(repr(t) for t in [*HISTORY, 'runs', 'run_stages'])}) ORDER BY 1")["table_name"]
    return {n: sorted_frame(query(db, f'SELECT * FROM "{n}"')) for n in names}


def run_rows(db: Path, table: str, run_id: str) -> pl.DataFrame:
    return sorted_frame(query(db, f"SELECT * FROM {table} WHERE run_id = ?", [run_id]))


def latest_run(db: Path) -> str:
    return query(db, "SELECT run_id FROM latest_run")["run_id"][0]


def results(db: Path, run_id: str) -> pl.DataFrame:
    return run_rows(db, "search_results", run_id)


def assert_same(a: pl.DataFrame, b: pl.DataFrame, what: str) -> None:
    """Equal rows; floats equal up to the noise of a different thread schedule."""
    assert a.columns == b.columns, what
    assert_frame_equal(a, b, check_exact=False, rel_tol=1e-5, abs_tol=1e-6, check_dtypes=True), what


def seed_warehouse(src: Path, dest: Path, embeddings: bool) -> Path:
    """A copy of a published warehouse: database, exports, fitted heads, ONNX export."""
    dest.mkdir(parents=True)
    shutil.copy2(src / DB_NAME, dest / DB_NAME)
    for sub in ["exports", "models", *(["embeddings"] if embeddings else [])]:
        shutil.copytree(src / sub, dest / sub)
    return dest


_STARTED: list[subprocess.Popen] = []


@dataclass
class Cli:
    proc: subprocess.Popen
    out: Path
    err: Path

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    @property
    def summary(self) -> dict:
        return json.loads(self.out.read_text().strip().splitlines()[-1])


def start_cli(name: str, logs: Path, data: Path, wh: Path, *extra: str) -> Cli:
    """``python -m flows.reindex`` in its own process group (its Prefect server goes with it)."""
    out, err = logs / f"{name}.out", logs / f"{name}.err"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.reindex", "--data-dir", str(data), "--warehouse", str(wh),
         "--top-k", str(TOP_K), "--json", *extra],
        cwd=PROJECT_ROOT, stdout=out.open("wb"), stderr=err.open("wb"), start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    _STARTED.append(proc)
    return Cli(proc, out, err)


def end_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a CLI run we started: a SIGKILLed reindex orphans its Prefect server."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(scope="module", autouse=True)
def _reap_processes():
    yield
    for proc in _STARTED:
        end_group(proc)


# ---------------------------------------------------------------- the lock, without a flow


def test_lock_refuses_a_second_holder_and_reenters_for_the_first(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    held, release = threading.Event(), threading.Event()

    def holder():
        with reindex_lock(wh):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(WarehouseBusy, match=rf"another reindex is running on {wh.root} \(pid {os.getpid()} since"):
            with reindex_lock(wh):
                pass
        # --wait: the second run starts as soon as the first lets go.
        threading.Timer(1.0, release.set).start()
        with reindex_lock(wh, wait_seconds=60):
            # Behaviour, not timing: it got the lock only once the holder let go.
            assert release.is_set()
            with reindex_lock(wh):  # the CLI holds it and the flow takes it again
                pass
    finally:
        release.set()
        t.join()


def test_failed_run_leaves_no_work_behind(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    with pytest.raises(RuntimeError):
        with reindex_lock(wh):
            wh.work_db_path("r1").write_bytes(b"half a database")
            (staged_exports_dir(wh, "r1")).mkdir()
            raise RuntimeError("a task failed")
    assert list(wh.work_dir.iterdir()) == []


def _published(wh: Warehouse, run_id: str) -> None:
    wh.ensure()
    work = wh.work_db_path(run_id)
    with duckdb.connect(str(work)) as con:
        con.execute("CREATE TABLE runs (run_id VARCHAR, finished_at TIMESTAMP)")
        con.execute("INSERT INTO runs VALUES (?, now())", [run_id])


def test_publish_moves_staged_exports_only_after_the_database(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    _published(wh, "r1")
    staged = staged_exports_dir(wh, "r1")
    staged.mkdir()
    (staged / "search_results.parquet").write_bytes(b"r1 results")
    publish(wh, "r1")
    assert (wh.exports_dir / "search_results.parquet").read_bytes() == b"r1 results"
    assert not staged.exists()


def test_recover_rolls_forward_a_publish_cut_short_and_drops_unpublished_work(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    _published(wh, "r1")
    staged = staged_exports_dir(wh, "r1")
    staged.mkdir()
    (staged / "search_results.parquet").write_bytes(b"r1 results")
    # Killed between the database swap and the export moves:
    os.replace(wh.work_db_path("r1"), wh.db_path)
    # ... and an unpublished run's leftovers, with a half-written temporary file.
    (staged_exports_dir(wh, "r2")).mkdir()
    (staged_exports_dir(wh, "r2") / "search_results.parquet").write_bytes(b"r2, never published")
    wh.work_db_path("r2").write_bytes(b"half")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (wh.embeddings_dir / f".part-1.parquet.{dead}.tmp").write_bytes(b"half")
    (wh.embeddings_dir / f".part-2.parquet.{os.getpid()}.tmp").write_bytes(b"being written")
    recover(wh)
    assert (wh.exports_dir / "search_results.parquet").read_bytes() == b"r1 results"
    assert list(wh.work_dir.iterdir()) == []
    assert [p.name for p in wh.embeddings_dir.glob(".*.tmp")] == [f".part-2.parquet.{os.getpid()}.tmp"]


# ---------------------------------------------------------------- reference run and corrupted copy


@dataclass
class Reference:
    data: Path
    wh: Path
    run_id: str
    snapshot: Path  # the published database right after the run


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("robust")


@pytest.fixture(scope="module")
def clean(root) -> Reference:
    from flows.reindex import reindex

    data = build_dataset(root / "clean")
    wh = root / "wh-clean"
    summary = reindex(data_dir=data, warehouse_dir=wh, top_k=TOP_K)
    snapshot = root / "clean-snapshot.duckdb"
    shutil.copy2(wh / DB_NAME, snapshot)
    return Reference(data, wh, summary["run_id"], snapshot)


# (source, words of the reason); filled by corrupt(), checked after the run.
Expected = list[tuple[str, int | str, str]]
DAMAGED_QUERY = "5070_test.jpg#0"


def corrupt(clean_data: Path, dest: Path, outside: Path) -> tuple[Path, Expected]:
    """The clean dataset plus every category of bad row and photo, and one good row damaged.

    Bad rows are added (so the good rows stay exactly the clean ones), except one saved
    query whose line gets a NUL byte: it must drop out of the results and nothing else.
    """
    data = Path(shutil.copytree(clean_data, dest))
    expected: Expected = []

    def add(file: str, line: str | bytes, words: str) -> None:
        p = data / file
        raw = line.encode() if isinstance(line, str) else line
        before = p.read_bytes()
        p.write_bytes(before + raw + b"\n")
        expected.append((file, before.count(b"\n") + 1, words))

    secret = outside / "secret.jpg"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(jpeg_bytes(11))

    t = "train_dataset.csv"
    add(t, (data / t).read_bytes().split(b"\n")[1], "exact duplicate of line 2")
    add(t, "1000_train.jpg,1000_train.jpg#2", "2 fields, expected 3")
    add(t, '1000_train.jpg,1010_train.jpg#2,"  "', "query_text is empty")
    add(t, b"1000_train.jpg,1010_train.jpg#2,A caf\xe9 .", "invalid UTF-8")
    add(t, b"1000_train.jpg,1010_train.jpg#2,A dog\x00 .", "NUL bytes")
    add(t, "1000_train.jpg,1010_train.jpg_2,A dog runs .", "does not follow <image>#<n>")
    add(t, "1000_train.jpg,9999_ghost.jpg#1,A ghost .", "names image '9999_ghost.jpg', not found in train_images/")
    add(t, "9999_nope.jpg,1000_train.jpg#2,A dog runs on the green grass .", "image '9999_nope.jpg' not found")
    add(t, "../outside/secret.jpg,1000_train.jpg#2,A dog runs on the green grass .", "not a plain file name")
    add(t, '1000_train.jpg,1010_train.jpg#2,"A man says "hi" .', "malformed quoting")
    add(t, "1000_train.jpg,1010_train.jpg#2," + "word " * 30_000, "over the 65,536-byte limit")
    e = "ExpertAnnotations.tsv"
    add(e, "1000_train.jpg\t1000_train.jpg#2\t4\t7\t4", "expert score 7 is outside 1..4")
    add(e, "1000_train.jpg\t1000_train.jpg#2\t4\tfour\t4", "expert score 'four' is not a whole number")
    add(e, "1000_train.jpg\t1000_train.jpg#2\t4\t4", "4 fields, expected 5")
    add(e, "1010_train.jpg\t1000_train.jpg#2\t1\t1\t1", "with conflicting values")  # a new key, twice,
    add(e, "1010_train.jpg\t1000_train.jpg#2\t3\t3\t3", "with conflicting values")  # disagreeing
    c = "CrowdAnnotations.tsv"
    add(c, "1010_train.jpg\t1000_train.jpg#2\t0.9\t0\t3", "contradicts the counts")
    add(c, "1010_train.jpg\t1000_train.jpg#2\t1.5\t3\t0", "crowd share 1.5 is outside 0..1")
    add(c, "1010_train.jpg\t1000_train.jpg#2\tnan\t3\t0", "is not a number")
    add(c, "1010_train.jpg\t1000_train.jpg#2\t0\t0\t0", "no votes")
    q = "test_queries.csv"
    add(q, "90|5000_test.jpg#5|   |5000_test.jpg", "query_text is empty")
    add(q, "91|5000_test.jpg|A dog .|5000_test.jpg", "does not follow <image>#<n>")
    add(q, "92|9999_test.jpg#0|A dog .|9999_test.jpg", "image '9999_test.jpg' not found in test_images/")
    lines = (data / q).read_bytes().split(b"\n")
    n = next(i for i, ln in enumerate(lines) if DAMAGED_QUERY.encode() in ln)
    lines[n] = lines[n].replace(b" blue", b" bl\x00ue")
    (data / q).write_bytes(b"\n".join(lines))
    expected.append((q, n + 1, "NUL bytes"))

    # Issue 14's inputs that must change nothing in the results: a lone CR line end, a
    # byte-order mark mid-file, a zero-width space inside a child word, a gallery photo
    # without its end-of-image marker (loaded as repaired, embedded like the original).
    lines = (data / t).read_bytes().split(b"\n")
    (data / t).write_bytes(b"\n".join(lines[:2]) + b"\r" + b"\n".join(lines[2:]))
    lines = (data / e).read_bytes().split(b"\n")
    lines[3] = b"\xef\xbb\xbf" + lines[3]
    (data / e).write_bytes(b"\n".join(lines))
    (data / t).write_bytes((data / t).read_bytes().replace(b"little girl", "little gi\u200brl".encode()))
    gallery = data / "test_images" / "5010_test.jpg"
    gallery.write_bytes(gallery.read_bytes()[:-2])

    photos = {
        "9000_zero.jpg": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        "9001_trunc.jpg": (lambda p: p.write_bytes(jpeg_bytes(3, (256, 192))[:3000]), "cannot be decoded"),
        "9002_text.jpg": (lambda p: p.write_text("not a photo"), "is not an image file"),
        "9003_anim.gif": (lambda p: p.write_bytes(image_bytes("GIF", "P")), "is GIF, a format the pipeline does not read"),
        "9004_bomb.png": (lambda p: p.write_bytes(png_header_only(100_000, 100_000)), "possible decompression bomb"),
        "9005_link.jpg": (lambda p: p.symlink_to(secret), "is a link pointing outside the data folder"),
        "9006_loop.jpg": (lambda p: p.symlink_to(p), "cannot be resolved"),
        "9007_dir.jpg": (lambda p: p.mkdir(), "is not a regular file"),
        "9008_fifo.jpg": (lambda p: os.mkfifo(p), "is not a regular file"),
    }
    for name, (make, words) in photos.items():
        make(data / "test_images" / name)
        expected.append(("test_images/", name, words))
        add("test_images.csv", name, f"image '{name}' is quarantined: image '{name}' ")
    (data / "train_images" / "1990_trunc.jpg").write_bytes(jpeg_bytes(4, (256, 192))[:2500])
    expected.append(("train_images/", "1990_trunc.jpg", "cannot be decoded"))
    (data / "train_images" / "1991_link.jpg").symlink_to(os.path.relpath(secret, data / "train_images"))
    expected.append(("train_images/", "1991_link.jpg", "is a link pointing outside the data folder"))
    (data / "train_images" / ".DS_Store").write_bytes(b"Bud1")
    expected.append(("train_images/", ".DS_Store", "hidden file"))
    add("test_images.csv", "/etc/passwd", "not a plain file name")
    add("test_images.csv", "../train_images/1000_train.jpg", "not a plain file name")
    # Photos named by rows but absent quarantine those rows only: they are not files of
    # the folder, so the folder's ledger counts no phantom photos.
    return data, expected


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


@dataclass
class Corrupted:
    data: Path
    wh: Path
    run_id: str
    expected: Expected
    opened: list[Path]
    outside: Path


@pytest.fixture(scope="module")
def corrupted(root, clean) -> Corrupted:
    """The corrupted copy, run in-process with every file open recorded."""
    global _OPENED
    from flows.reindex import reindex

    outside = root / "outside"
    data, expected = corrupt(clean.data, root / "corrupted", outside)
    # Embeddings and the ONNX export are reused; the heads are trained again, from the
    # good rows only, so equal results also show the training is seeded.
    wh = seed_warehouse(clean.wh, root / "wh-corrupted", embeddings=True)
    for fitted in [p for p in (wh / "models").iterdir() if p.name != "onnx"]:
        shutil.rmtree(fitted)
    sys.addaudithook(_audit)
    _OPENED = []
    try:
        summary = reindex(data_dir=data, warehouse_dir=wh, top_k=TOP_K)
    finally:
        opened, _OPENED = _OPENED, None
    return Corrupted(data, wh, summary["run_id"], expected, [Path(p).resolve() for p in opened], outside)


def test_corrupted_copy_completes_and_quarantines_each_bad_input(corrupted):
    db = corrupted.wh / DB_NAME
    assert latest_run(db) == corrupted.run_id
    q = query(db, "SELECT source, line_no, raw_line, reason FROM quarantine WHERE run_id = ?", [corrupted.run_id])
    got = {}
    for r in q.iter_rows(named=True):
        key = (r["source"], r["line_no"] if r["line_no"] is not None else r["raw_line"])
        assert key not in got, f"quarantined twice: {key}"
        got[key] = r["reason"]
    want = {(src, where): words for src, where, words in corrupted.expected}
    assert set(got) == set(want), (set(got) ^ set(want))
    for key, words in want.items():
        assert words in got[key], (key, got[key])


def test_corrupted_copy_counts_add_up(corrupted, clean):
    db = corrupted.wh / DB_NAME
    led = query(db, "SELECT * FROM ingest_ledger WHERE run_id = ? ORDER BY source", [corrupted.run_id])
    assert (led["rows_read"] == led["rows_loaded"] + led["rows_quarantined"]).all()
    per_source = query(db, "SELECT source, count(*) AS n FROM quarantine WHERE run_id = ? GROUP BY 1",
                       [corrupted.run_id])
    assert dict(zip(led["source"], led["rows_quarantined"])) == {
        s: dict(zip(per_source["source"], per_source["n"])).get(s, 0) for s in led["source"]}
    clean_led = query(clean.wh / DB_NAME, "SELECT source, rows_loaded FROM ingest_ledger WHERE run_id = ?",
                      [clean.run_id])
    loaded = dict(zip(led["source"], led["rows_loaded"]))
    for source, n in zip(clean_led["source"], clean_led["rows_loaded"]):
        assert loaded[source] == n - (source == "test_queries.csv"), source
    # The run's summary (runs.summary_json, printed and logged) carries the same ledger.
    summary = json.loads(query(db, "SELECT summary_json FROM runs WHERE run_id = ?", [corrupted.run_id])[0, 0])
    assert sorted(summary["ledger"], key=lambda r: r["source"]) == led.drop("run_id").to_dicts()
    exported = pl.read_parquet(corrupted.wh / "exports" / "quarantine.parquet")
    assert exported.height == sum(led["rows_quarantined"])


def test_corrupted_copy_never_opens_a_file_outside_the_data_folder(corrupted):
    assert corrupted.opened, "the audit hook recorded nothing"
    assert not [p for p in corrupted.opened if p.is_relative_to(corrupted.outside.resolve())]
    # ... while the photos themselves were read.
    assert any(p.is_relative_to(corrupted.data.resolve()) and p.suffix == ".jpg" for p in corrupted.opened)


def test_good_rows_give_the_clean_results(corrupted, clean):
    """Bad inputs were added, not substituted, so training and gallery are the clean ones:
    the same heads (same training fingerprint) and, for every saved query except the
    damaged one, the same ranked photos with the same scores."""
    a, b = clean.wh / DB_NAME, corrupted.wh / DB_NAME
    fp = "SELECT train_fingerprint FROM runs WHERE run_id = ?"
    assert query(a, fp, [clean.run_id])[0, 0] == query(b, fp, [corrupted.run_id])[0, 0]
    ta, tb = current_tables(a), current_tables(b)
    for table in ["raw_train_pairs", "raw_expert_annotations", "raw_crowd_annotations", "raw_test_images",
                  "training_pairs", "training_photos"]:
        assert_same(ta[table], tb[table], table)
    # The gallery photo without its end marker has other bytes (so another sha256), the same pixels.
    changed = ta["gallery"].join(tb["gallery"], on="image").filter(pl.col("sha256") != pl.col("sha256_right"))
    assert changed["image"].to_list() == ["5010_test.jpg"]
    assert_same(ta["gallery"].drop("sha256", "bytes", strict=False),
                tb["gallery"].drop("sha256", "bytes", strict=False), "gallery")
    ref, got = results(a, clean.run_id), results(b, corrupted.run_id)
    assert ref.filter(pl.col("query_id") == DAMAGED_QUERY).height > 0
    assert got.filter(pl.col("query_id") == DAMAGED_QUERY).height == 0
    # The damaged query is also one of its photo's descriptions, so only that photo's
    # description channel changes: every query that ranks it in neither run has the same
    # rows, and the relevance model's own score of every pair shown in both is the same.
    photo = DAMAGED_QUERY.split("#")[0]
    touched = set(ref.filter(pl.col("image") == photo)["query_id"]) | set(got.filter(pl.col("image") == photo)["query_id"])
    keep = ~pl.col("query_id").is_in([DAMAGED_QUERY, *touched])
    assert_same(ref.filter(keep), got.filter(keep), "search_results")
    both = ref.join(got, on=["query_id", "image"], suffix="_b").filter(pl.col("query_id") != DAMAGED_QUERY)
    assert both.height > 0
    assert_frame_equal(both.select(pl.col("model_score")), both.select(pl.col("model_score_b").alias("model_score")),
                       check_exact=False, rel_tol=1e-5, abs_tol=1e-6)
    # Out-of-fold agreement comes from training data alone; test-query metrics lose a query.
    oof = "SELECT * FROM model_metrics WHERE run_id = ? AND protocol LIKE 'oof%'"
    assert_same(sorted_frame(query(a, oof, [clean.run_id])), sorted_frame(query(b, oof, [corrupted.run_id])),
                "model_metrics")
    # The damaged query was one of its photo's own descriptions: that photo has one fewer, same verdict.
    fa, fb = run_rows(a, "photo_flags", clean.run_id), run_rows(b, "photo_flags", corrupted.run_id)
    photo = DAMAGED_QUERY.split("#")[0]
    n_desc = lambda f: f.filter(pl.col("image") == photo)["n_descriptions"][0]  # noqa: E731
    assert n_desc(fa) == n_desc(fb) + 1
    assert_same(fa.drop("n_descriptions"), fb.drop("n_descriptions"), "photo_flags")


# ---------------------------------------------------------------- two at once, idempotence


@dataclass
class Pair:
    wh: Path
    runs: list[Cli]
    codes: list[int]


@pytest.fixture(scope="module")
def pair(root, clean) -> Pair:
    wh = seed_warehouse(clean.wh, root / "wh-pair", embeddings=True)
    runs = [start_cli(f"pair-{i}", root, clean.data, wh) for i in range(2)]
    codes = [r.wait() for r in runs]
    return Pair(wh, runs, codes)


def test_two_reindexes_at_once_one_runs_one_refuses(pair, clean):
    assert sorted(pair.codes) == [0, 2], "\n\n".join(f"exit {c}:\n{r.stderr[-3000:]}" for r, c in zip(pair.runs, pair.codes))
    winner = pair.runs[pair.codes.index(0)]
    loser = pair.runs[pair.codes.index(2)]
    said = [ln for ln in loser.stderr.splitlines() if "reindex stopped" in ln]
    assert len(said) == 1, loser.stderr
    assert said[0].startswith(f"reindex stopped: another reindex is running on {pair.wh} (pid {winner.proc.pid} since")
    assert "Traceback" not in loser.stderr
    db = pair.wh / DB_NAME
    runs = query(db, "SELECT run_id FROM runs ORDER BY run_id")["run_id"].to_list()
    assert runs == [clean.run_id, winner.summary["run_id"]]  # the refused run left no trace
    assert latest_run(db) == winner.summary["run_id"]
    assert list((pair.wh / ".work").iterdir()) == []


def test_a_second_run_on_the_same_inputs_gives_the_same_tables(pair, clean):
    """Idempotence: the clean run's snapshot against the second run on its warehouse."""
    assert 0 in pair.codes, "no run of the pair completed; see test_two_reindexes_at_once_one_runs_one_refuses"
    second = pair.runs[pair.codes.index(0)].summary["run_id"]
    before, after = current_tables(clean.snapshot), current_tables(pair.wh / DB_NAME)
    assert before.keys() == after.keys()
    for name in before:
        assert_same(before[name], after[name], name)
    for table in HISTORY:
        assert_same(run_rows(clean.snapshot, table, clean.run_id), run_rows(pair.wh / DB_NAME, table, second), table)


# ---------------------------------------------------------------- a real kill


@dataclass
class Killed:
    wh: Path
    db_sha: str
    exports: dict[str, str]
    work_left: list[str]
    parts: list[Path]
    photos_done: int  # photos the killed run wrote to the parts of both views
    code: int


@pytest.fixture(scope="module")
def killed(root, clean) -> Killed:
    """A CLI reindex, SIGKILLed as soon as both photo views have written an embeddings part."""
    wh = seed_warehouse(clean.wh, root / "wh-kill", embeddings=False)
    db_sha, exports = sha(wh / DB_NAME), folder_hashes(wh / "exports")
    run = start_cli("killed", root, clean.data, wh)
    deadline = time.monotonic() + RUN_TIMEOUT
    # A photo is done when both views (relevance, photo guard) have it: each writes its own
    # part, one after the other, so the kill waits for a part of each.
    views = ("image", "photo_guard")
    parts: list[Path] = []
    while run.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        parts = sorted(p for v in views for p in (wh / "embeddings").glob(f"{v}/*/part-*.parquet"))
        if {p.parent.parent.name for p in parts} == set(views):
            break
    assert parts, f"no embeddings part appeared; stderr: {run.stderr[-3000:]}"
    os.kill(run.proc.pid, signal.SIGKILL)
    code = run.proc.wait(60)
    work_left = sorted(p.name for p in (wh / ".work").iterdir())
    end_group(run.proc)  # its orphaned Prefect server
    parts = sorted(p for v in views for p in (wh / "embeddings").glob(f"{v}/*/part-*.parquet"))
    done = len(set.intersection(*(
        {k for p in parts if p.parent.parent.name == v for k in pq.read_table(p, columns=["sha256"]).column(0).to_pylist()}
        for v in views)))
    return Killed(wh, db_sha, exports, work_left, parts, done, code)


def test_kill_mid_run_leaves_the_published_warehouse_intact(killed, clean):
    assert killed.code == -signal.SIGKILL
    assert any(n.endswith(".duckdb") for n in killed.work_left), killed.work_left  # it was mid-run
    db = killed.wh / DB_NAME
    assert sha(db) == killed.db_sha
    assert folder_hashes(killed.wh / "exports") == killed.exports
    assert latest_run(db) == clean.run_id  # opens, and still answers with the old run
    assert_same(results(db, clean.run_id), results(clean.snapshot, clean.run_id), "search_results")


def test_next_run_after_a_kill_completes_and_reuses_embeddings(killed, clean):
    from flows.reindex import reindex

    summary = reindex(data_dir=clean.data, warehouse_dir=killed.wh, top_k=TOP_K)
    db = killed.wh / DB_NAME
    assert latest_run(db) == summary["run_id"]
    embedded = "SELECT images_embedded FROM runs WHERE run_id = ?"
    total = query(clean.snapshot, embedded, [clean.run_id])[0, 0]  # a cold run embeds every photo
    assert 0 < killed.photos_done <= total
    # The photos the killed run finished come from its part files; only the rest are embedded.
    assert query(db, embedded, [summary["run_id"]])[0, 0] == total - killed.photos_done
    assert list((killed.wh / ".work").iterdir()) == []
    assert set(killed.parts) <= set((killed.wh / "embeddings").glob("*/*/part-*.parquet"))
    assert_same(results(db, summary["run_id"]), results(clean.snapshot, clean.run_id), "search_results")
    assert query(db, "SELECT count(*) FROM runs")[0, 0] == 2  # the killed run was never published


# ---------------------------------------------------------------- a whole file missing


def test_missing_source_file_stops_with_one_clear_error(root, clean):
    data = Path(shutil.copytree(clean.data, root / "missing-file"))
    (data / "ExpertAnnotations.tsv").unlink()
    wh = clean.wh
    before = sha(wh / DB_NAME), folder_hashes(wh / "exports")
    run = start_cli("missing", root, data, wh)
    assert run.wait() == 2
    said = [ln for ln in run.stderr.splitlines() if "reindex stopped" in ln]
    assert said == [f"reindex stopped: source file {data / 'ExpertAnnotations.tsv'} is missing (expected UTF-8 "
                    "tab-separated text without a header, columns image, query_id, expert_1, expert_2, expert_3)"]
    assert "Traceback" not in run.stderr and "Prefect" not in run.stderr  # stopped before Prefect started
    assert (sha(wh / DB_NAME), folder_hashes(wh / "exports")) == before


def test_file_found_unusable_inside_the_flow_changes_nothing(root, clean, capsys):
    """A file that passes the quick check but has no valid row: exit 2, warehouse untouched."""
    from flows.reindex import main

    data = Path(shutil.copytree(clean.data, root / "no-valid-rows"))
    p = data / "CrowdAnnotations.tsv"
    p.write_text(p.read_text().replace("\t", ";"))
    wh = seed_warehouse(clean.wh, root / "wh-no-valid-rows", embeddings=False)
    before = sha(wh / DB_NAME)
    assert main(["--data-dir", str(data), "--warehouse", str(wh), "--top-k", str(TOP_K)]) == 2
    err = capsys.readouterr().err
    assert f"reindex stopped: source file {p} has no valid rows (78 read; first problem, line 1: 1 fields" in err
    assert sha(wh / DB_NAME) == before
    assert list((wh / ".work").iterdir()) == []


# ---------------------------------------------------------------- Prefect's concurrency limit


def test_prefect_concurrency_limit_is_held_when_a_server_has_one(tmp_path, clean):
    """Against a server with the limit, a second holder is refused like a second flock.

    Forced onto the ephemeral server here (use_server=True); a throwaway limit name so
    that nothing is left to block anyone if this test dies halfway.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"with-sense-test-{uuid.uuid4().hex[:8]}"
    wh = Warehouse(tmp_path / "wh")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        try:
            with prefect_slot(wh, 0, use_server=True, limit=name):
                assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
                with pytest.raises(WarehouseBusy, match=f"Prefect concurrency limit '{name}'"):
                    with prefect_slot(wh, 0, use_server=True, limit=name):
                        pass
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
            with prefect_slot(wh, 0, use_server=False, limit=name):
                assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
        finally:
            client.delete_global_concurrency_limit_by_name(name)
    with prefect_slot(wh, 0, use_server=True, limit=name):  # no such limit: nothing to hold
        pass
