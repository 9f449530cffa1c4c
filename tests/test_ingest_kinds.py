"""The kinds of input issue 14 names, each on a small dataset the test makes.

1. a lone CR ending one line of an LF file (and CR, CRLF, LF mixed);
2. a byte-order mark at the start of a line mid-file (two exports concatenated);
3. a JPEG without its end-of-image marker (loads, recorded as repaired) against one really
   cut short (quarantined);
4. invisible characters inside child words in captions and saved queries (removed, noted).
(5, the runner allowlist, is tests/test_runner_allowlist.py.)
Every test also checks the ledger: rows read = loaded + quarantined, per source.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image


from tasks.ingest import ingest
from tasks.ingest_photos import REPAIRED_EOI


# clean_copy, clean_result and data: tests/conftest.py (shared with test_ingest_bad_input.py)


def assert_ledger_adds_up(result) -> None:
    led = result.ledger
    assert (led["rows_read"] == led["rows_loaded"] + led["rows_quarantined"]).all(), led
    per_source = dict(result.quarantine.group_by("source").len().iter_rows())
    for row in led.iter_rows(named=True):
        assert per_source.get(row["source"], 0) == row["rows_quarantined"], row


def ledger_row(result, source: str) -> dict:
    return result.ledger.filter(pl.col("source") == source).row(0, named=True)


def same_tables(result, clean) -> None:
    for table, frame in clean.tables.items():
        assert result.tables[table].equals(frame), table


# ---------------------------------------------------------------- 1. line ends


def test_a_lone_cr_ends_a_line_in_an_lf_file(data, clean_result):
    p = data / "train_dataset.csv"
    lines = p.read_bytes().split(b"\n")
    n_rows = len(lines) - 2  # header, and the empty piece after the last LF
    cut = 3  # the line ending of physical line 4 becomes a lone CR
    p.write_bytes(b"\n".join(lines[:cut]) + b"\n" + lines[cut] + b"\r" + b"\n".join(lines[cut + 1:]))
    result = ingest(data)
    assert result.quarantine.height == 0, result.quarantine
    led = ledger_row(result, "train_dataset.csv")
    assert (led["rows_read"], led["rows_loaded"]) == (n_rows, n_rows)
    same_tables(result, clean_result)


def test_cr_crlf_and_lf_mixed_in_one_file(data, clean_result):
    p = data / "CrowdAnnotations.tsv"
    lines = p.read_bytes().splitlines()
    ends = [b"\r", b"\r\n", b"\n"]
    p.write_bytes(b"".join(line + ends[i % 3] for i, line in enumerate(lines)))
    result = ingest(data)
    assert result.quarantine.height == 0
    assert ledger_row(result, "CrowdAnnotations.tsv")["rows_read"] == len(lines)
    same_tables(result, clean_result)


# ---------------------------------------------------------------- 2. byte-order marks


def test_a_bom_at_the_start_of_a_line_mid_file_is_removed_and_noted(data, clean_result):
    p = data / "ExpertAnnotations.tsv"
    lines = p.read_bytes().splitlines(keepends=True)
    k = len(lines) // 2
    p.write_bytes(b"".join(lines[:k]) + b"\xef\xbb\xbf" + b"".join(lines[k:]))
    result = ingest(data)
    assert result.quarantine.height == 0, result.quarantine
    same_tables(result, clean_result)
    notes = result.row_notes.filter(pl.col("source") == "ExpertAnnotations.tsv")
    assert notes["line_no"].to_list() == [k + 1] and "byte-order mark" in notes["note"][0]
    # The folder ledger counts the files in the folder, not names rows made up.
    n_files = len(list((data / "train_images").iterdir()))
    assert ledger_row(result, "train_images/")["rows_read"] == n_files
    assert_ledger_adds_up(result)


def test_two_exports_concatenated_count_every_line_once(data, clean_result):
    p = data / "train_dataset.csv"
    one = p.read_bytes()
    p.write_bytes(b"\xef\xbb\xbf" + one + b"\xef\xbb\xbf" + one)
    result = ingest(data)
    n = len(one.splitlines()) - 1
    led = ledger_row(result, "train_dataset.csv")
    # The second header is a line of the file: counted, quarantined; the second copy's
    # rows are exact duplicates of the first's.
    assert led["rows_read"] == 2 * n + 1 and led["rows_loaded"] == n
    q = result.quarantine.filter(pl.col("source") == "train_dataset.csv")
    assert q.filter(pl.col("line_no") == n + 2)["reason"].to_list() == ["repeated header line"]
    assert q.filter(pl.col("reason").str.starts_with("exact duplicate of line")).height == n
    same_tables(result, clean_result)
    assert_ledger_adds_up(result)


def test_a_row_naming_a_missing_photo_is_not_a_file_of_the_folder(data, clean_result):
    with (data / "test_images.csv").open("a") as f:
        f.write("9999_nowhere.jpg\n")
    result = ingest(data)
    assert ledger_row(result, "test_images/") == ledger_row(clean_result, "test_images/")
    assert result.quarantine.filter(pl.col("source") == "test_images.csv")["reason"].to_list() == [
        "image '9999_nowhere.jpg' not found in test_images/"]
    assert_ledger_adds_up(result)


# ---------------------------------------------------------------- 3. JPEG end marker


def test_jpeg_without_its_end_marker_loads_as_repaired_and_embeds_like_the_original(data, clean_result):
    from models.image_encoder import load

    photo = data / "test_images" / "5000_test.jpg"
    original = photo.read_bytes()
    assert original.endswith(b"\xff\xd9")
    photo.write_bytes(original[:-2])
    result = ingest(data)
    assert result.quarantine.height == 0, result.quarantine
    same_tables(result, clean_result)  # its saved queries and test_images.csv row stay
    row = result.photos.filter(pl.col("image") == "5000_test.jpg").row(0, named=True)
    assert row["problem"] is None and row["repair"] == REPAIRED_EOI
    assert result.row_notes.filter(pl.col("source") == "test_images/").select("raw_line", "note").rows() == [
        ("5000_test.jpg", REPAIRED_EOI)]
    # The encoder's decode of the repaired file is the original photo, pixel for pixel.
    assert np.array_equal(load(photo), load(_saved(data, original)))
    assert_ledger_adds_up(result)


def _saved(data: Path, content: bytes) -> Path:
    p = data.parent / "original.jpg"
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("cut", [3, 40, 400])
def test_jpeg_really_cut_short_stays_quarantined_with_its_rows(data, clean_result, cut):
    """Larger photo than the tiny set's, so every cut removes scan data of its last MCUs."""
    rng = np.random.default_rng(cut)
    photo = data / "test_images" / "5010_test.jpg"
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    photo.write_bytes(buf.getvalue()[:-cut])
    result = ingest(data)
    q = result.quarantine.filter(pl.col("source") == "test_images/")
    assert q["raw_line"].to_list() == ["5010_test.jpg"] and "truncated" in q["reason"][0]
    assert result.row_notes.filter(pl.col("source") == "test_images/").height == 0
    for source in ("test_queries.csv", "test_images.csv"):
        reasons = result.quarantine.filter(pl.col("source") == source)["reason"].to_list()
        assert reasons and all(r.startswith("image '5010_test.jpg' is quarantined") for r in reasons)
    assert_ledger_adds_up(result)


def test_progressive_jpeg_without_its_end_marker_stays_quarantined(data):
    photo = data / "test_images" / "5020_test.jpg"
    buf = io.BytesIO()
    Image.open(photo).save(buf, format="JPEG", quality=90, progressive=True)
    photo.write_bytes(buf.getvalue()[:-2])
    result = ingest(data)
    assert result.quarantine.filter(pl.col("source") == "test_images/")["raw_line"].to_list() == ["5020_test.jpg"]
    assert_ledger_adds_up(result)


# ---------------------------------------------------------------- 4. invisible characters


def test_invisible_characters_inside_child_words_are_removed_and_noted(data):
    p = data / "train_dataset.csv"
    text = p.read_text()
    assert "A little girl" in text
    p.write_text(text.replace("A little girl", "A little gi\u200brl"))
    q = data / "test_queries.csv"
    q.write_text(q.read_text().replace("Two boys", "Two bo\u00adys"))
    result = ingest(data)
    assert result.quarantine.height == 0
    captions = result.tables["raw_train_pairs"]["query_text"]
    assert captions.str.contains("little girl").any() and not captions.str.contains("\u200b").any()
    queries = result.tables["raw_test_queries"]["query_text"]
    assert queries.str.contains("Two boys").any() and not queries.str.contains("\u00ad").any()
    notes = result.row_notes
    caption_notes = notes.filter(pl.col("source") == "train_dataset.csv")
    assert caption_notes.height == text.count("A little girl")
    assert set(caption_notes["note"]) == {
        "invisible format characters removed from query_text: U+200B ZERO WIDTH SPACE x1"}
    assert notes.filter(pl.col("source") == "test_queries.csv")["note"].to_list() == [
        "invisible format characters removed from query_text: U+00AD SOFT HYPHEN x1"]
    # The raw line keeps what the file held.
    assert caption_notes["raw_line"].str.contains("gi\u200brl").all()
    assert_ledger_adds_up(result)


def _doc_sql(start: str) -> str:
    """The first ```sql block of docs/compliance.md after the line containing ``start``."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "compliance.md").read_text()
    after = text[text.index(start):]
    return after[after.index("```sql\n") + 7:].split("```", 1)[0]


def test_the_compliance_audit_query_rechecks_texts_instead_of_trusting_flags():
    """A saved query 'gi\\u200brl' that the flags missed and that got photos is reported."""
    import duckdb

    con = duckdb.connect()
    con.execute("create table search_results (run_id varchar, query_id varchar, query_text varchar, rank int,"
                " image varchar, shown boolean, display varchar)")
    con.execute("create table photo_flags (run_id varchar, image varchar, restricted boolean)")
    con.execute("create table text_flags (run_id varchar, text_kind varchar, text_id varchar, flagged boolean)")
    queries = {"q1": "A little gi\u200brl in a pink dress", "q2": "Two bo\u00adys play football",
               "q3": "A dog runs on the grass"}
    for n, (qid, text) in enumerate(queries.items()):
        con.execute("insert into search_results values ('r1', ?, ?, 1, ?, true, 'photo')", [qid, text, f"p{n}.jpg"])
        con.execute("insert into photo_flags values ('r1', ?, false)", [f"p{n}.jpg"])
        con.execute("insert into text_flags values ('r1', 'query', ?, false)", [qid])  # the flags missed both
    got = con.execute(_doc_sql("Is anything shown that must not be?")).fetchall()
    assert got == [("r1", 0, 2)]
    # With the texts fixed at ingest (no format characters) and the flags right, nothing is reported.
    con.execute("update search_results set query_text = regexp_replace(query_text, '\\p{Cf}', '', 'g')")
    con.execute("update text_flags set flagged = true where text_id in ('q1', 'q2')")
    con.execute("update search_results set shown = false, image = null, "
                "display = 'This image is unavailable in your country in compliance with local laws' "
                "where query_id in ('q1', 'q2')")
    assert con.execute(_doc_sql("Is anything shown that must not be?")).fetchall() == []
