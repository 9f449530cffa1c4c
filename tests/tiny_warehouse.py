"""One finished reindex on the tiny dataset, shared by every test module that needs one.

A reindex is the slowest thing the tests do, so the session runs it once: the first
module that asks builds it, the others get the same folders back.  Tests only read it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from conftest import build_dataset

TOP_K = 5


@dataclass(frozen=True)
class TinyRun:
    data: Path       # the tiny dataset (build_dataset layout)
    warehouse: Path  # a published warehouse with one finished run
    summary: dict    # what the flow returned

    @property
    def db(self) -> Path:
        return self.warehouse / "with_sense.duckdb"

    @property
    def report(self) -> Path:
        return self.warehouse / "reports" / self.summary["run_id"] / "index.html"


_RUN: TinyRun | None = None


def tiny_run(tmp_path_factory) -> TinyRun:
    global _RUN
    if _RUN is None:
        root = tmp_path_factory.mktemp("tiny-warehouse")
        data = add_bad_inputs(build_dataset(root / "data"))
        from flows.reindex import reindex

        summary = reindex(data_dir=data, warehouse_dir=root / "wh", top_k=TOP_K)
        _RUN = TinyRun(data, root / "wh", summary)
    return _RUN


def add_bad_inputs(data: Path) -> Path:
    """Two inputs the run must quarantine, so the quarantine tables have rows to show."""
    with (data / "ExpertAnnotations.tsv").open("a") as f:
        f.write("1000_train.jpg\t1000_train.jpg#2\t4\t9\t4\n")   # a score outside 1..4
    (data / "train_images" / "9999_empty.jpg").write_bytes(b"")    # an empty photo file
    return data


def seed_models(src: TinyRun, warehouse: Path) -> None:
    """Give a new warehouse the fitted heads and the exported encoder of ``src``.

    The heads are keyed by a fingerprint of the training data, so a run on the same
    tiny dataset reuses them instead of training again; photos and texts are still
    embedded afresh (the embedding cache is not copied).
    """
    shutil.copytree(src.warehouse / "models", warehouse / "models", dirs_exist_ok=True)
