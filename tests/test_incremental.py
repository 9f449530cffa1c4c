"""Incremental reindex: the same tables as a cold run on the same inputs, for less work.

Warehouse 1 sees the data grow: a run on dataset A, then on A+B (B: new gallery photos,
and new train photos with their captions and expert/crowd judgments, so the training
data changes), then once more with nothing new.  Warehouse 2 gets one cold run on A+B.
Every table that describes results must agree between warehouse 1's last run and
warehouse 2's run, and each incremental run must have done only the work its new
inputs need.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conftest import build_dataset

TOP_K = 3
# Current-state tables (replaced every run) and the latest run's slice of the history tables.
CURRENT = ["gallery", "stg_photos", "stg_captions", "stg_test_queries", "relevance_targets", "training_pairs",
           "training_exclusions", "training_photos", "bridge_positives", "restricted_train_photos"]
HISTORY = ["search_results", "photo_flags", "text_flags", "model_metrics", "quarantine", "ingest_ledger"]
EXPORTS = ["search_results", "photo_flags", "text_flags", "model_metrics", "quarantine", "ingest_ledger"]
# Columns that legitimately differ between two runs of the same inputs.
VOLATILE = {"run_id"}


def grow(data: Path, bigger: Path) -> list[str]:
    """Add to ``data`` what ``bigger`` has beyond it: new photo files, and the source files
    rewritten.  Files ``data`` already has are left untouched (same inode, same times)."""
    added = []
    for folder in ("train_images", "test_images"):
        for src in sorted((bigger / folder).iterdir()):
            dst = data / folder / src.name
            if not dst.exists():
                shutil.copyfile(src, dst)
                added.append(f"{folder}/{src.name}")
            else:
                assert dst.read_bytes() == src.read_bytes(), f"{src.name} differs between A and A+B"
    for src in bigger.glob("*.*sv"):
        shutil.copyfile(src, data / src.name)
    return added


BROKEN = "5999_broken.jpg"
# A new caption B brings (a new text to embed), written for one of B's train photos.
NEW_CAPTION = "A brown dog swims across a quiet lake ."


def add_caption(data: Path, image: str, text: str) -> None:
    """A second caption for ``image``, judged by experts and the crowd as a match."""
    qid = f"{image}#1"
    with open(data / "train_dataset.csv", "a") as f:
        f.write(f'{image},{qid},"{text}"\n')
    with open(data / "ExpertAnnotations.tsv", "a") as f:
        f.write(f"{image}\t{qid}\t4\t3\t4\n")
    with open(data / "CrowdAnnotations.tsv", "a") as f:
        f.write(f"{image}\t{qid}\t1.000000\t3\t0\n")


def latest(db: Path, table: str) -> pl.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        if table in HISTORY:
            df = con.execute(f"SELECT * FROM {table} WHERE run_id = (SELECT max(run_id) FROM runs)").pl()
        else:
            df = con.execute(f"SELECT * FROM {table}").pl()
    return canonical(df)


def canonical(df: pl.DataFrame) -> pl.DataFrame:
    df = df.drop([c for c in df.columns if c in VOLATILE])
    return df.sort(df.columns, nulls_last=True)


def runs(db: Path) -> pl.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT run_id, images_embedded, texts_embedded, train_fingerprint "
                           "FROM runs ORDER BY run_id").pl()


def stages(db: Path, run_id: str) -> dict[str, str | None]:
    with duckdb.connect(str(db), read_only=True) as con:
        return dict(con.execute("SELECT stage, reused_from FROM run_stages WHERE run_id = ?", [run_id]).fetchall())


def assert_same(a: pl.DataFrame, b: pl.DataFrame, what: str) -> None:
    """Equal, except float columns within 1e-5.

    Results and figures are computed from the same cached vectors by the same
    deterministic code; the tolerance only absorbs float summation order in BLAS/OpenMP
    (thread scheduling), which can move the last bits of a score.  Ranks, photos,
    flags and texts must match exactly.
    """
    assert a.columns == b.columns, what
    assert a.height == b.height, f"{what}: {a.height} rows vs {b.height}"
    floats = [c for c, t in a.schema.items() if t in (pl.Float32, pl.Float64)]
    try:
        assert_frame_equal(a.drop(floats), b.drop(floats), check_dtypes=True)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from None
    for c in floats:
        x, y = a[c].cast(pl.Float64).to_numpy(), b[c].cast(pl.Float64).to_numpy()
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=f"{what}.{c}")


class OpenedFiles:
    """Paths opened (PEP 578 ``open`` audit events: ``open()``, ``os.open``, Pillow) by this
    process and its threads while recording, under ``root``.  An audit hook cannot be
    removed, so one hook is installed per test session and records only inside ``with``."""

    active: "OpenedFiles | None" = None
    installed = False

    def __init__(self, root: Path):
        self.root, self.paths = str(root.resolve()), []
        if not OpenedFiles.installed:
            sys.addaudithook(OpenedFiles._hook)
            OpenedFiles.installed = True

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        rec = OpenedFiles.active
        if rec is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path.startswith(rec.root):
                rec.paths.append(path)

    def __enter__(self) -> "OpenedFiles":
        OpenedFiles.active = self
        return self

    def __exit__(self, *exc) -> None:
        OpenedFiles.active = None


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> dict:
    from flows.reindex import reindex

    root = tmp_path_factory.mktemp("incremental")
    data = build_dataset(root / "a", n_train_per_scene=2, n_test_per_scene=1)
    bigger = build_dataset(root / "ab", n_train_per_scene=3, n_test_per_scene=2)
    add_caption(bigger, "1002_train.jpg", NEW_CAPTION)  # scene 0's third photo: in B only
    # Bad input too, so the quarantine tables have rows to compare: a file that is no photo
    # (quarantined, and its verdict reused by the next run) and a malformed judgment line.
    (bigger / "test_images" / BROKEN).write_bytes(b"not a photo at all")
    with open(bigger / "CrowdAnnotations.tsv", "a") as f:
        f.write("1000_train.jpg\tnot-a-query-id\t0.5\n")
    wh1, wh2 = root / "wh_incremental", root / "wh_cold"
    first = reindex(data_dir=data, warehouse_dir=wh1, top_k=TOP_K)
    added = grow(data, bigger)
    second = reindex(data_dir=data, warehouse_dir=wh1, top_k=TOP_K)
    with OpenedFiles(data) as opened_by_third:
        third = reindex(data_dir=data, warehouse_dir=wh1, top_k=TOP_K)
    # The same encoders: the int8 image models are calibrated once per warehouse, on the
    # photos of its first run (tasks/embed.py calibration_sample), so a warehouse started
    # on A+B would calibrate other int8 models and compute other vectors.  The cold run
    # starts with warehouse 1's ONNX models and nothing else: no embeddings, no fits.
    shutil.copytree(wh1 / "models" / "onnx", wh2 / "models" / "onnx")
    cold = reindex(data_dir=bigger, warehouse_dir=wh2, top_k=TOP_K)
    return {"wh1": wh1, "wh2": wh2, "added": added, "runs": (first, second, third), "cold": cold,
            "opened_by_third": opened_by_third.paths}


@pytest.mark.parametrize("table", CURRENT + HISTORY)
def test_incremental_tables_equal_cold(grown, table):
    a = latest(grown["wh1"] / "with_sense.duckdb", table)
    b = latest(grown["wh2"] / "with_sense.duckdb", table)
    assert a.height > 0, f"{table} is empty: the comparison would prove nothing"
    assert_same(a, b, table)


@pytest.mark.parametrize("name", EXPORTS)
def test_incremental_exports_equal_cold(grown, name):
    a = canonical(pl.read_parquet(grown["wh1"] / "exports" / f"{name}.parquet"))
    b = canonical(pl.read_parquet(grown["wh2"] / "exports" / f"{name}.parquet"))
    assert_same(a, b, f"exports/{name}.parquet")


def test_incremental_run_embeds_only_the_new_inputs(grown):
    first, second, third = grown["runs"]
    new_photos = len([p for p in grown["added"] if not p.endswith(BROKEN)])
    assert {p.split("/")[0] for p in grown["added"]} == {"train_images", "test_images"}
    r = runs(grown["wh1"] / "with_sense.duckdb")
    assert r["run_id"].to_list() == [first["run_id"], second["run_id"], third["run_id"]]
    # Every photo file of B is new content (its own seed), so each is embedded once, and only those.
    assert second["images_embedded"] == new_photos
    assert r["images_embedded"].to_list() == [first["images_embedded"], new_photos, 0]
    # B's saved queries repeat known texts; its one new caption is the only text embedded.
    assert second["texts_embedded"] == 1
    assert third["texts_embedded"] == 0
    # The training data changed, so the heads were retrained; then nothing changed.
    fps = r["train_fingerprint"].to_list()
    assert fps[0] != fps[1] == fps[2]
    assert all(v is None for v in stages(grown["wh1"] / "with_sense.duckdb", second["run_id"]).values())


def test_no_change_run_reuses_every_stage(grown):
    _, second, third = grown["runs"]
    got = stages(grown["wh1"] / "with_sense.duckdb", third["run_id"])
    assert set(got) == {"photo_guard", "relevance_heads", "evaluate", "rank",
                        "dbt_before_text_flags", "dbt_after_text_flags", "dbt_before_publish"}
    assert got == {stage: second["run_id"] for stage in got}, got
    assert third["reused"] == got


def test_no_change_run_opens_no_photo_file(grown):
    # Ingest knows every file by size and mtime; embeddings, faces and report thumbnails come
    # from content-keyed stores in the warehouse.  Only the source files are read again.
    photos = [p for p in grown["opened_by_third"] if "/train_images/" in p or "/test_images/" in p]
    assert photos == []
    assert grown["opened_by_third"], "the recorder saw no file at all: it would prove nothing"


def test_report_thumbnails_come_from_the_store_and_never_show_a_restricted_photo(grown):
    import duckdb

    _, _, third = grown["runs"]
    store = grown["wh1"] / "reports" / "thumbs" / "160px"
    run_thumbs = list((grown["wh1"] / "reports" / third["run_id"] / "thumbs").iterdir())
    assert run_thumbs and all((store / p.name).exists() for p in run_thumbs)
    with duckdb.connect(str(grown["wh1"] / "with_sense.duckdb"), read_only=True) as con:
        restricted = {r[0][:20] for r in con.execute("""SELECT p.sha256 FROM photo_flags f
            JOIN stg_photos p ON p.split = 'test' AND p.image = f.image WHERE f.run_id = ? AND f.restricted""", [third["run_id"]]).fetchall()}
    assert restricted, "the tiny data restricts photos: the check would prove nothing"
    assert not restricted & {p.stem for p in store.iterdir()}


def test_prefect_keeps_one_ingest_result_per_state_of_the_data_folder(grown):
    # Runs 1 (A) and 2 (A+B) parsed the data; run 3 (nothing new) got run 2's result back
    # from Prefect's cache, so no third key was written.
    results = grown["wh1"] / "results"
    assert len(list(results.glob("ingest-*"))) == 2
    assert len(list(results.glob("evaluate-*"))) == 2


def test_ingest_key_follows_every_file_and_nothing_else(tmp_path):
    import os
    import time

    from tasks.ingest_stage import ingest_key

    data = build_dataset(tmp_path / "d")
    key = ingest_key(None, {"data_dir": data})
    assert ingest_key(None, {"data_dir": data}) == key                       # stable
    photo = next((data / "test_images").iterdir())
    os.utime(photo, ns=(time.time_ns(), time.time_ns() + 10**9))             # a photo touched
    touched = ingest_key(None, {"data_dir": data})
    assert touched != key
    with open(data / "test_queries.csv", "a") as f:                           # a source file edited
        f.write("\n")
    assert ingest_key(None, {"data_dir": data}) != touched


def test_unchanged_photos_are_not_read_again(tmp_path, monkeypatch):
    from tasks import ingest

    data = build_dataset(tmp_path / "d")
    first = ingest.ingest(data)
    known = {(c["split"], c["image"]): ingest.PhotoCheck(**c) for c in first.photos.to_dicts()}
    opened = []
    real_open = ingest.Image.open
    monkeypatch.setattr(ingest.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    again = ingest.ingest(data, known)
    assert opened == [] and again.photos.equals(first.photos)
    # A photo rewritten in place (same name, new bytes) is read again and gets its new hash.
    target = data / "test_images" / first.photos.filter(pl.col("split") == "test")["image"][0]
    target.write_bytes((data / "train_images" / first.photos["image"][0]).read_bytes())
    third = ingest.ingest(data, known)
    assert len(opened) == 1
    changed = third.photos.join(first.photos, on=["split", "image"]).filter(pl.col("sha256") != pl.col("sha256_right"))
    assert changed["image"].to_list() == [target.name]


def test_reuse_stops_when_an_input_of_the_stage_changes(grown, tmp_path):
    """A different k changes what ranking produces, and nothing else: only ranking reruns."""
    from flows.reindex import reindex

    _, second, _ = grown["runs"]
    wh = tmp_path / "wh"
    shutil.copytree(grown["wh1"], wh)
    with duckdb.connect(str(wh / "with_sense.duckdb"), read_only=True) as con:
        data = Path(con.execute("SELECT data_dir FROM runs ORDER BY run_id DESC LIMIT 1").fetchone()[0])
    run = reindex(data_dir=data, warehouse_dir=wh, top_k=TOP_K - 1)
    got = stages(wh / "with_sense.duckdb", run["run_id"])
    assert got["rank"] is None
    assert got["photo_guard"] == got["relevance_heads"] == got["evaluate"] == second["run_id"]
    assert run["images_embedded"] == run["texts_embedded"] == 0
    res = latest(wh / "with_sense.duckdb", "search_results").filter(pl.col("rank").is_not_null())
    assert res.group_by("query_id").len()["len"].max() == TOP_K - 1
