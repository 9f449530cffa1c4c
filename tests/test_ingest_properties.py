"""Property-based tests (Hypothesis): whatever bytes are injected into a source file or a
photo, ingest never raises and counts every physical row exactly once.

Injected: CR, LF, CRLF, byte-order marks, NUL, quotes, the file's delimiter, invalid
UTF-8, zero-width spaces and soft hyphens, arbitrary bytes; at random places after the
header line (damage to a header is a whole-file problem, tested in test_ingest_bad_input).
The expected line count comes from a regular expression, not from ingest's own splitter.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_dataset
from tasks.ingest import PhotoCheck, ingest
from tasks.ingest_rows import SOURCES
from tasks.ingest_sources import data_start, parse_source, source_lines

SPECS = {s.file: s for s in SOURCES}
# Modest: the suite runs on 2 shared cores.  Each example re-reads one source file only
# (photos are reused by their stat keys).
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])
LINE_END = re.compile(rb"\r\n|\r|\n")
PIECES = [b"\r", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\x00", b'"', b",", b"\t", b"|", b"\xff", b"\xc3",
          b"\xe2\x80", "\u200b".encode(), "\u00ad".encode(), b" ", b"#", b"\x1b", b"\x0b", b"\x85"]
injection = st.one_of(st.sampled_from(PIECES), st.binary(min_size=1, max_size=4))


def expected_rows(data: bytes, has_header: bool) -> int:
    """Physical lines after the header, without trailing blank lines (file formatting)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = LINE_END.split(data)
    if lines and lines[-1] == b"":
        lines.pop()
    while lines and not lines[-1].strip():
        lines.pop()
    return len(lines) - (1 if has_header else 0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = build_dataset(tmp_path_factory.mktemp("props"))
    first = ingest(data)
    known = {(c["split"], c["image"]): PhotoCheck(**c) for c in first.photos.to_dicts()}
    originals = {f: (data / f).read_bytes() for f in SPECS}
    return data, known, originals


def inject(original: bytes, header_end: int, cuts: list[tuple[float, bytes]]) -> bytes:
    out = original
    for where, piece in sorted(cuts, reverse=True):
        at = header_end + int(where * (len(original) - header_end))
        out = out[:at] + piece + out[at:]
    return out


def damaged(dataset, file: str, cuts) -> tuple[Path, bytes]:
    data, _, originals = dataset
    original = originals[file]
    header_end = original.index(b"\n") + 1 if SPECS[file].header is not None else 0
    content = inject(original, header_end, cuts)
    (data / file).write_bytes(content)
    return data, content


cuts_strategy = st.lists(st.tuples(st.floats(0, 1), injection), min_size=1, max_size=5)


@PROPERTY_SETTINGS
@given(file=st.sampled_from(sorted(SPECS)), cuts=cuts_strategy)
def test_every_physical_line_is_loaded_or_quarantined_exactly_once(dataset, file, cuts):
    data, content = damaged(dataset, file, cuts)
    try:
        spec = SPECS[file]
        parsed = parse_source(data, spec)
        start, _ = data_start(data, spec, source_lines(data, spec))
        loaded = [r[0] for r in parsed.rows]
        quarantined = [q[0] for q in parsed.quarantine]
        assert parsed.rows_read == expected_rows(content, spec.header is not None and start == 1)
        assert sorted(loaded + quarantined) == list(range(start + 1, start + 1 + parsed.rows_read))
        assert all(q[2] for q in parsed.quarantine)  # every quarantined line has a reason
    finally:
        (data / file).write_bytes(dataset[2][file])


@PROPERTY_SETTINGS
@given(file=st.sampled_from(sorted(SPECS)), cuts=cuts_strategy)
def test_ingest_never_raises_and_the_ledger_adds_up(dataset, file, cuts):
    data, known, originals = dataset
    _, content = damaged(dataset, file, cuts)
    try:
        result = ingest(data, known)
    finally:
        (data / file).write_bytes(originals[file])
    led = {r["source"]: r for r in result.ledger.iter_rows(named=True)}
    for row in led.values():
        assert row["rows_read"] == row["rows_loaded"] + row["rows_quarantined"], row
        q = result.quarantine.filter(result.quarantine["source"] == row["source"])
        assert q.height == row["rows_quarantined"]
        if not row["source"].endswith("/"):
            assert q["line_no"].n_unique() == q.height  # no line quarantined twice
    assert led[file]["rows_read"] == expected_rows(content, SPECS[file].header is not None)
    for source, original in originals.items():
        if source != file:
            assert led[source]["rows_read"] == expected_rows(original, SPECS[source].header is not None)
    assert led["train_images/"]["rows_read"] == len(list((data / "train_images").iterdir()))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 2000), junk=st.binary(max_size=64), keep_tail=st.booleans())
def test_a_damaged_photo_never_raises_and_is_counted_once(dataset, cut, junk, keep_tail):
    data, known, _ = dataset
    photo = data / "test_images" / "5000_test.jpg"
    original = photo.read_bytes()
    body = original[:max(2, len(original) - cut)]
    photo.write_bytes(body + junk + (original[-2:] if keep_tail else b""))
    try:
        result = ingest(data, known)
    finally:
        photo.write_bytes(original)
    led = {r["source"]: r for r in result.ledger.iter_rows(named=True)}
    assert led["test_images/"]["rows_read"] == len(list((data / "test_images").iterdir()))
    assert led["test_images/"]["rows_read"] == led["test_images/"]["rows_loaded"] + led["test_images/"]["rows_quarantined"]
    row = result.photos.filter(result.photos["image"] == "5000_test.jpg").row(0, named=True)
    in_quarantine = result.quarantine.filter((result.quarantine["source"] == "test_images/")
                                             & (result.quarantine["raw_line"] == "5000_test.jpg")).height
    assert in_quarantine == (0 if row["problem"] is None else 1)
