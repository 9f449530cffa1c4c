"""tasks.atomic: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.atomic import atomic_write, atomic_write_bytes, atomic_write_parquet


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(b"old", target)

    def half_then_crash(tmp):
        tmp.write_bytes(b"ne")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_threads_writing_one_target_never_mix(tmp_path):
    target = tmp_path / "t.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write_bytes, args=(p, target)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def test_parquet_round_trips(tmp_path):
    table = pa.table({"sha256": ["a", "b"], "x": [1.0, 2.0]})
    path = atomic_write_parquet(table, tmp_path / "part.parquet")
    assert pq.read_table(path).equals(table)
