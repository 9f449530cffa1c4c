"""Bad input at the ingest step (tasks/ingest*.py): every kind of damage, row by row.

Each test damages a copy of the tiny dataset in one way and checks three things: the bad
row or photo is in the quarantine with a reason a person understands, the good rows are
all still loaded, and for every source rows read = rows loaded + rows quarantined.
A whole file that is missing or unreadable is the one thing that stops ingest.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from conftest import make_photo
from tasks import ingest as ing
from tasks import ingest_photos, ingest_sources
from tasks.ingest import SourceFileError, ingest, preflight

# clean_copy, clean_result and data: tests/conftest.py (shared with test_ingest_kinds.py)


def append(path: Path, line: bytes | str) -> int:
    """Add one line; returns its 1-based line number."""
    raw = line.encode() if isinstance(line, str) else line
    before = path.read_bytes()
    path.write_bytes(before + raw + b"\n")
    return before.count(b"\n") + 1


def loaded(result, table: str) -> int:
    return result.tables[table].height


def assert_ledger_adds_up(result) -> None:
    led = result.ledger
    assert (led["rows_read"] == led["rows_loaded"] + led["rows_quarantined"]).all(), led
    q = result.quarantine.group_by("source").len()
    per_source = dict(zip(q["source"], q["len"]))
    for row in led.iter_rows(named=True):
        assert per_source.get(row["source"], 0) == row["rows_quarantined"], row


def only_quarantined(result, source: str) -> dict:
    q = result.quarantine.filter(pl.col("source") == source)
    assert q.height == 1, q
    return q.row(0, named=True)


# ---------------------------------------------------------------- one bad row each

ROW_CASES = [
    # (file, line as bytes or text, words the reason must contain)
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#2", "2 fields, expected 3"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#3,A dog runs,extra", "4 fields, expected 3"),
    ("train_dataset.csv", '1000_train.jpg,1000_train.jpg#3,"   "', "query_text is empty"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#3,\u200b\u3000\u200b", "has no letters or digits"),
    ("train_dataset.csv", b"1000_train.jpg,1000_train.jpg#3,A caf\xe9 on a street .", "invalid UTF-8 at byte 38 of the line"),
    ("train_dataset.csv", b"1000_train.jpg,1000_train.jpg#3,A dog\x00 runs .", "NUL bytes"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#3,A dog\x1b[31m runs .", "control character U+001B"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg,A dog runs .", "does not follow <image>#<n>"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#x,A dog runs .", "does not follow <image>#<n>"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#\u0663,A dog runs .", "does not follow <image>#<n>"),
    ("train_dataset.csv", "1000_train.jpg,../1000_train.jpg#2,A dog runs .", "does not name a plain image file"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#99999999999,A dog runs .", "caption number over"),
    ("train_dataset.csv", "1000_train.jpg,4242_ghost.jpg#0,A ghost runs .",
     "names image '4242_ghost.jpg', not found in train_images/"),
    ("train_dataset.csv", "9999_nope.jpg,1000_train.jpg#2,A dog runs on the green grass .",
     "image '9999_nope.jpg' not found in train_images/"),
    ("train_dataset.csv", "../../../etc/passwd,1000_train.jpg#2,A dog runs on the green grass .",
     "not a plain file name"),
    ("train_dataset.csv", "/etc/passwd,1000_train.jpg#2,A dog runs on the green grass .", "not a plain file name"),
    ("train_dataset.csv", '1000_train.jpg,1000_train.jpg#3,"A man says "hi" to a dog ."', "malformed quoting"),
    ("train_dataset.csv", '1000_train.jpg,1000_train.jpg#3,"A caption that never ends', "malformed quoting"),
    ("train_dataset.csv", "1000_train.jpg,1000_train.jpg#3," + "very " * 20_000, "over the 65,536-byte limit"),
    ("train_dataset.csv", "image,query_id,query_text", "repeated header line"),
    ("ExpertAnnotations.tsv", "1000_train.jpg\t1000_train.jpg#2\t4\t7\t4", "expert score 7 is outside 1..4"),
    ("ExpertAnnotations.tsv", "1000_train.jpg\t1000_train.jpg#2\t0\t1\t1", "expert score 0 is outside 1..4"),
    ("ExpertAnnotations.tsv", "1000_train.jpg\t1000_train.jpg#2\t4\tfour\t4", "expert score 'four' is not a whole number"),
    ("ExpertAnnotations.tsv", "1000_train.jpg\t1000_train.jpg#2\t2.5\t4\t4", "expert score '2.5' is not a whole number"),
    ("ExpertAnnotations.tsv", "1000_train.jpg\t1000_train.jpg#2\t1_0\t4\t4", "not a whole number"),
    ("ExpertAnnotations.tsv", "1000_train.jpg\t1000_train.jpg#2\t4\t4", "4 fields, expected 5"),
    ("ExpertAnnotations.tsv", "1000_train.jpg,1000_train.jpg#2,4,4,4", "1 fields, expected 5"),
    ("ExpertAnnotations.tsv", "9999_nope.jpg\t1000_train.jpg#2\t1\t1\t1", "image '9999_nope.jpg' not found"),
    ("CrowdAnnotations.tsv", "1000_train.jpg\t1010_train.jpg#2\t0.9\t0\t3", "crowd share 0.9 contradicts the counts"),
    ("CrowdAnnotations.tsv", "1000_train.jpg\t1010_train.jpg#2\t1.5\t3\t0", "crowd share 1.5 is outside 0..1"),
    ("CrowdAnnotations.tsv", "1000_train.jpg\t1010_train.jpg#2\tnan\t3\t0", "crowd share 'nan' is not a number"),
    ("CrowdAnnotations.tsv", "1000_train.jpg\t1010_train.jpg#2\tlots\t3\t0", "crowd share 'lots' is not a number"),
    ("CrowdAnnotations.tsv", "1000_train.jpg\t1010_train.jpg#2\t0\t-1\t3", "crowd yes count -1 is outside"),
    ("CrowdAnnotations.tsv", "1000_train.jpg\t1010_train.jpg#2\t0\t0\t0", "no votes"),
    ("CrowdAnnotations.tsv", "1000_train.jpg\t1010_train.jpg#2\t0\t0\t99999999999", "crowd no count 99999999999 is outside"),
    ("test_queries.csv", "99|5000_test.jpg#7|   |5000_test.jpg", "query_text is empty"),
    ("test_queries.csv", "99|5000_test.jpg#7|A dog runs .|5010_test.jpg",
     "names image '5000_test.jpg' but the row's image is '5010_test.jpg'"),
    ("test_queries.csv", "99|5000_test.jpg|A dog runs .|5000_test.jpg", "does not follow <image>#<n>"),
    ("test_queries.csv", "99|9999_test.jpg#0|A dog runs .|9999_test.jpg", "image '9999_test.jpg' not found in test_images/"),
    ("test_queries.csv", "99|5000_test.jpg#7|A dog runs .", "3 fields, expected 4"),
    ("test_images.csv", "9999_missing.jpg", "image '9999_missing.jpg' not found in test_images/"),
    ("test_images.csv", "../train_images/1000_train.jpg", "not a plain file name"),
    ("test_images.csv", "C:\\photos\\x.jpg", "not a plain file name"),
]
TABLE = {s.file: s.table for s in ing.SOURCES}


@pytest.mark.parametrize("file,line,why", ROW_CASES, ids=[f"{c[0]}:{c[2][:30]}" for c in ROW_CASES])
def test_bad_row_is_quarantined_with_its_reason(data, clean_result, file, line, why):
    line_no = append(data / file, line)
    result = ingest(data)
    q = only_quarantined(result, file)
    assert why in q["reason"]
    assert q["line_no"] == line_no
    raw = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    assert q["raw_line"] == ing._clip(raw)
    # Every good row is still loaded; nothing else was touched.
    for table, frame in clean_result.tables.items():
        assert result.tables[table].equals(frame), table
    assert_ledger_adds_up(result)


def test_quarantine_keeps_a_huge_line_short(data):
    append(data / "train_dataset.csv", "x" * 1_000_000)
    q = only_quarantined(ingest(data), "train_dataset.csv")
    assert len(q["raw_line"]) < ing.MAX_RAW_CHARS + 100 and "1,000,000 characters in all" in q["raw_line"]


def test_many_bad_rows_at_once_add_up(data, clean_result):
    """Every row case in one file set: each lands in the quarantine once, nothing is lost."""
    expected = {}
    for file, line, why in ROW_CASES:
        expected[(file, append(data / file, line))] = why
    result = ingest(data)
    got = {(r["source"], r["line_no"]): r["reason"] for r in result.quarantine.iter_rows(named=True)
           if not r["source"].endswith("/")}  # photos named by rows but missing are quarantined too
    assert got.keys() == expected.keys()
    for k, why in expected.items():
        assert why in got[k], (k, got[k])
    for table, frame in clean_result.tables.items():
        assert result.tables[table].equals(frame), table
    assert_ledger_adds_up(result)


def test_integral_scores_written_as_decimals_are_accepted(data, clean_result):
    """'4.0' is the number 4, not damage; '+1' likewise."""
    lines = (data / "ExpertAnnotations.tsv").read_text().splitlines()
    lines[0] = "\t".join(lines[0].split("\t")[:2] + ["4.0", "+4", "3.00"])
    (data / "ExpertAnnotations.tsv").write_text("\n".join(lines) + "\n")
    result = ingest(data)
    assert result.quarantine.height == 0
    row = result.tables["raw_expert_annotations"].row(0, named=True)
    assert (row["expert_1"], row["expert_2"], row["expert_3"]) == (4, 4, 3)


# ---------------------------------------------------------------- duplicates


def test_exact_duplicate_keeps_the_first_line(data, clean_result):
    first = (data / "train_dataset.csv").read_text().splitlines()[1]
    n = append(data / "train_dataset.csv", first)
    result = ingest(data)
    q = only_quarantined(result, "train_dataset.csv")
    assert q["line_no"] == n and q["reason"] == "exact duplicate of line 2"
    assert result.tables["raw_train_pairs"].equals(clean_result.tables["raw_train_pairs"])
    assert_ledger_adds_up(result)


def test_duplicate_key_with_conflicting_values_keeps_neither(data, clean_result):
    first = (data / "ExpertAnnotations.tsv").read_text().splitlines()[0].split("\t")
    n = append(data / "ExpertAnnotations.tsv", "\t".join(first[:2] + ["1", "1", "1"]))
    result = ingest(data)
    q = result.quarantine.filter(pl.col("source") == "ExpertAnnotations.tsv")
    assert q["line_no"].to_list() == [1, n]
    assert all(f"duplicate key (image='{first[0]}', query_id='{first[1]}') with conflicting values on lines 1, {n}"
               == r for r in q["reason"])
    assert loaded(result, "raw_expert_annotations") == loaded(clean_result, "raw_expert_annotations") - 1
    assert_ledger_adds_up(result)


def test_a_caption_id_with_two_texts_is_quarantined_everywhere(data, clean_result):
    lines = (data / "train_dataset.csv").read_text().splitlines()
    qid = lines[1].split(",")[1]
    paired = {ln.split(",")[0] for ln in lines[1:] if ln.split(",")[1] == qid}
    other = next(p.name for p in sorted((data / "train_images").iterdir()) if p.name not in paired)
    n = append(data / "train_dataset.csv", f"{other},{qid},A completely different caption .")
    result = ingest(data)
    q = result.quarantine.filter(pl.col("source") == "train_dataset.csv")
    uses = [i + 1 for i, ln in enumerate(lines) if i and ln.split(",")[1] == qid]
    assert sorted(q["line_no"].to_list()) == sorted(uses + [n])
    assert set(q["reason"]) == {f"query_id '{qid}' has conflicting caption texts"}
    assert_ledger_adds_up(result)


def test_two_saved_queries_with_one_id_are_both_quarantined(data):
    n = append(data / "test_queries.csv", "99|5000_test.jpg#0|Something else entirely .|5000_test.jpg")
    result = ingest(data)
    q = result.quarantine.filter(pl.col("source") == "test_queries.csv")
    assert q["line_no"].to_list() == [2, n]
    assert all("conflicting" in r for r in q["reason"])
    assert_ledger_adds_up(result)


# ---------------------------------------------------------------- line endings and headers


def test_crlf_bom_and_header_variants_load_the_same_rows(data, clean_result):
    p = data / "train_dataset.csv"
    lines = p.read_text().splitlines()
    lines[0] = '"Image" , "QUERY_ID" ,query_text'
    p.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n\n")
    result = ingest(data)
    assert result.quarantine.height == 0
    assert result.tables["raw_train_pairs"].equals(clean_result.tables["raw_train_pairs"])
    assert_ledger_adds_up(result)


def test_old_mac_line_endings_load_the_same_rows(data, clean_result):
    p = data / "ExpertAnnotations.tsv"
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r"))
    result = ingest(data)
    assert result.quarantine.height == 0
    assert result.tables["raw_expert_annotations"].equals(clean_result.tables["raw_expert_annotations"])


def test_missing_header_line_is_tolerated_and_noted(data, clean_result):
    p = data / "train_dataset.csv"
    p.write_text("\n".join(p.read_text().splitlines()[1:]) + "\n")
    result = ingest(data)
    assert result.tables["raw_train_pairs"].equals(clean_result.tables["raw_train_pairs"])
    assert any("header line is missing" in n for n in result.notes)
    assert_ledger_adds_up(result)


def test_header_in_a_headerless_file_is_skipped_not_counted(data, clean_result):
    p = data / "ExpertAnnotations.tsv"
    p.write_text("image\tquery_id\texpert_1\texpert_2\texpert_3\n" + p.read_text())
    result = ingest(data)
    assert result.quarantine.height == 0
    assert result.tables["raw_expert_annotations"].equals(clean_result.tables["raw_expert_annotations"])
    led = result.ledger.filter(pl.col("source") == "ExpertAnnotations.tsv").row(0, named=True)
    assert led["rows_read"] == loaded(clean_result, "raw_expert_annotations")
    assert any("line 1 is a header" in n for n in result.notes)


def test_blank_line_in_the_middle_is_a_quarantined_row_trailing_ones_are_not(data):
    p = data / "CrowdAnnotations.tsv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n\n\n")
    result = ingest(data)
    q = only_quarantined(result, "CrowdAnnotations.tsv")
    assert (q["line_no"], q["reason"]) == (4, "blank line")
    assert_ledger_adds_up(result)


# ---------------------------------------------------------------- photos


def jpeg_bytes(seed: int = 1, size=(64, 48)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header announcing a huge image, with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


def image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new(mode, (32, 24), "red" if mode in ("RGB", "CMYK") else 1).save(buf, format=fmt)
    return buf.getvalue()


def _outside_jpeg(tmp_path: Path) -> Path:
    p = tmp_path / "outside" / "secret.jpg"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(jpeg_bytes(7))
    return p


def make_zero(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).write_bytes(b"")


def make_truncated(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).write_bytes(jpeg_bytes(3, (256, 192))[:3000])


def make_text(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).write_text("this is not a photo\n")


def make_gif(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).write_bytes(image_bytes("GIF", "P"))


def make_tiff(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).write_bytes(image_bytes("TIFF"))


def make_bomb(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).write_bytes(png_header_only(100_000, 100_000))


def make_link_outside(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).symlink_to(_outside_jpeg(tmp))


def make_relative_link_outside(folder: Path, name: str, tmp: Path) -> None:
    target = _outside_jpeg(tmp)
    (folder / name).symlink_to(os.path.relpath(target, folder))


def make_dangling_link(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).symlink_to(folder / "no_such_file.jpg")


def make_link_loop(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).symlink_to(folder / name)


def make_directory(folder: Path, name: str, tmp: Path) -> None:
    (folder / name).mkdir()


def make_fifo(folder: Path, name: str, tmp: Path) -> None:
    os.mkfifo(folder / name)


PHOTO_CASES = [
    (make_zero, "is empty (0 bytes)"),
    (make_truncated, "cannot be decoded"),
    (make_text, "is not an image file"),
    (make_gif, "is GIF, a format the pipeline does not read"),
    (make_tiff, "is TIFF, a format the pipeline does not read"),
    (make_bomb, "is 100000x100000 pixels, over the 60,000,000 limit (possible decompression bomb)"),
    (make_link_outside, "is a link pointing outside the data folder (not read)"),
    (make_relative_link_outside, "is a link pointing outside the data folder (not read)"),
    (make_dangling_link, "is a link to a file that does not exist"),
    (make_link_loop, "cannot be resolved"),
    (make_directory, "is not a regular file"),
    (make_fifo, "is not a regular file"),  # opening a FIFO would hang: it must not be opened
]


@pytest.mark.parametrize("make,why", PHOTO_CASES, ids=[m.__name__[5:] for m, _ in PHOTO_CASES])
def test_bad_photo_is_quarantined_and_so_is_the_row_naming_it(data, tmp_path, clean_result, make, why):
    make(data / "test_images", "9000_bad.jpg", tmp_path)
    line_no = append(data / "test_images.csv", "9000_bad.jpg")
    result = ingest(data)
    photo = only_quarantined(result, "test_images/")
    assert photo["raw_line"] == "9000_bad.jpg" and photo["line_no"] is None
    assert photo["reason"].startswith("image '9000_bad.jpg' ") and why in photo["reason"]
    row = only_quarantined(result, "test_images.csv")
    assert row["line_no"] == line_no and row["reason"] == f"image '9000_bad.jpg' is quarantined: {photo['reason']}"
    for table, frame in clean_result.tables.items():
        assert result.tables[table].equals(frame), table
    assert_ledger_adds_up(result)


def test_photo_over_the_size_limit_is_not_read(data, monkeypatch):
    limit = max(p.stat().st_size for p in data.glob("*_images/*")) + 1
    monkeypatch.setattr(ingest_photos, "MAX_PHOTO_BYTES", limit)
    (data / "train_images" / "9000_big.jpg").write_bytes(jpeg_bytes(5, (400, 300)))
    q = only_quarantined(ingest(data), "train_images/")
    assert q["reason"].startswith("image '9000_big.jpg' is ") and f"over the {limit:,}-byte limit" in q["reason"]


def test_train_photo_damage_quarantines_its_rows_not_others(data, clean_result):
    (data / "train_images" / "1000_train.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    result = ingest(data)
    photo = only_quarantined(result, "train_images/")
    assert "cannot be decoded" in photo["reason"] or "not an image" in photo["reason"]
    rows = result.quarantine.filter(pl.col("source") == "train_dataset.csv")
    uses = clean_result.tables["raw_train_pairs"].filter(pl.col("image") == "1000_train.jpg").height
    assert rows.height == uses and all(r.startswith("image '1000_train.jpg' is quarantined") for r in rows["reason"])
    # Rows whose caption was written for that photo stay: the caption text is fine.
    assert result.tables["raw_train_pairs"].filter(pl.col("query_id") == "1000_train.jpg#2").height > 0
    assert_ledger_adds_up(result)


def test_hidden_and_non_utf8_names_in_a_photo_folder_are_counted_not_read(data):
    (data / "train_images" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    os.close(os.open(os.fsencode(data / "train_images") + b"/bad\xff name.jpg", os.O_CREAT | os.O_WRONLY))
    result = ingest(data)
    q = result.quarantine.filter(pl.col("source") == "train_images/").sort("raw_line")
    assert q["reason"].to_list() == ["hidden file '.DS_Store' is not read as a photo",
                                     "image name 'bad\ufffd name.jpg' is not valid UTF-8"]
    assert_ledger_adds_up(result)


def test_unusual_but_valid_photos_are_loaded(data):
    """Grey 16-bit PNG, CMYK JPEG, palette PNG with transparency, a link inside the folder."""
    folder = data / "test_images"
    Image.fromarray((np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80)).save(folder / "9001_grey16.png")
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(folder / "9002_cmyk.jpg")
    pal = Image.new("P", (40, 30), 1)
    pal.info["transparency"] = 0
    pal.save(folder / "9003_pal.png")
    (folder / "9004_link.jpg").symlink_to("5000_test.jpg")
    make_photo(folder / "9005_jpeg_named.png", (10, 200, 10), "rect", seed=3)
    result = ingest(data)
    assert result.quarantine.height == 0
    ok = result.photos.filter(pl.col("image").str.starts_with("900"))
    assert ok.height == 5 and ok["problem"].is_null().all()
    assert set(ok["format"]) == {"PNG", "JPEG"}


# ---------------------------------------------------------------- whole files


@pytest.mark.parametrize("spec", ing.SOURCES, ids=[s.file for s in ing.SOURCES])
def test_missing_source_file_stops_with_one_clear_error(data, spec):
    (data / spec.file).unlink()
    for check in (preflight, ingest):
        with pytest.raises(SourceFileError) as err:
            check(data)
        assert str(err.value) == f"source file {data / spec.file} is missing (expected {spec.expected()})"


@pytest.mark.parametrize("damage,words", [
    (lambda p: (p.unlink(), p.mkdir()), "is not a regular file"),
    (lambda p: p.write_bytes(b""), "is empty (expected UTF-8 comma-separated text with the header"),
    (lambda p: p.write_text("query_id,image,query_text\n" + "\n".join(p.read_text().splitlines()[1:])),
     "which is neither the header nor a valid row"),
    (lambda p: p.write_bytes(p.read_text().encode("utf-16")), "is UTF-16 or UTF-32 encoded"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), "neither the header nor a valid row"),
], ids=["directory", "empty", "wrong-header", "utf16", "binary"])
def test_unreadable_source_file_stops_the_run(data, damage, words):
    p = data / "train_dataset.csv"
    damage(p)
    for check in (preflight, ingest):
        with pytest.raises(SourceFileError, match=r"source file .*train_dataset\.csv") as err:
            check(data)
        assert words in str(err.value)


def test_source_file_over_the_size_limit_is_not_read(data, monkeypatch):
    monkeypatch.setattr(ingest_sources, "MAX_SOURCE_BYTES", 100)
    with pytest.raises(SourceFileError, match=r"train_dataset\.csv is [0-9,]+ bytes, over the 100-byte limit"):
        preflight(data)


def test_file_with_no_valid_row_stops_the_run(data):
    p = data / "ExpertAnnotations.tsv"
    p.write_text(p.read_text().replace("\t", ","))  # comma-separated where tabs are expected
    with pytest.raises(SourceFileError) as err:
        ingest(data)
    assert "ExpertAnnotations.tsv has no valid rows (78 read; first problem, line 1: 1 fields, expected 5" in str(err.value)
    assert "tab-separated" in str(err.value)


def test_source_file_linked_outside_the_data_folder_stops_the_run(data, tmp_path):
    outside = tmp_path / "elsewhere.csv"
    shutil.move(data / "train_dataset.csv", outside)
    (data / "train_dataset.csv").symlink_to(outside)
    with pytest.raises(SourceFileError, match="outside the data folder"):
        ingest(data)


@pytest.mark.parametrize("damage,words", [
    (lambda d, t: shutil.rmtree(d), "is missing (expected a folder of .jpg photos)"),
    (lambda d, t: (shutil.move(d, t / "photos"), d.symlink_to(t / "photos")), "outside the data folder"),
    (lambda d, t: (shutil.rmtree(d), d.write_text("x")), "is not a folder"),
    (lambda d, t: [p.write_bytes(b"junk") for p in d.iterdir()], "has no readable photos"),
], ids=["missing", "linked-outside", "a-file", "all-broken"])
def test_photo_folder_problems_stop_the_run(data, tmp_path, damage, words):
    damage(data / "test_images", tmp_path)
    with pytest.raises(SourceFileError, match="test_images") as err:
        ingest(data)
    assert words in str(err.value)


def test_missing_data_folder(tmp_path):
    with pytest.raises(SourceFileError, match="data folder .* is missing"):
        preflight(tmp_path / "nowhere")


# ---------------------------------------------------------------- never outside the data folder

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    # Every file open in the process raises the 'open' audit event (builtins.open, io.open,
    # os.open, Path.read_bytes); recorded only while a test switches the recorder on.
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


_AUDIT_INSTALLED = False


def test_nothing_outside_the_data_folder_is_opened(data, tmp_path):
    """Links, absolute names and '../' names pointing at a valid photo outside: never opened."""
    global _OPENED, _AUDIT_INSTALLED
    secret = _outside_jpeg(tmp_path)
    (data / "train_images" / "9000_link.jpg").symlink_to(secret)
    (data / "test_images" / "9001_rel.jpg").symlink_to(os.path.relpath(secret, data / "test_images"))
    for name in ("9001_rel.jpg", str(secret), "../../outside/secret.jpg", "..\\outside\\secret.jpg"):
        append(data / "test_images.csv", name)
    caption = "A dog runs on the green grass ."
    append(data / "train_dataset.csv", f"9000_link.jpg,1000_train.jpg#2,{caption}")
    append(data / "train_dataset.csv", f"../../outside/secret.jpg,1000_train.jpg#2,{caption}")
    append(data / "train_dataset.csv", f"1000_train.jpg,{secret}#2,{caption}")

    if not _AUDIT_INSTALLED:
        sys.addaudithook(_audit)
        _AUDIT_INSTALLED = True
    _OPENED = []
    try:
        result = ingest(data)
        preflight(data)
    finally:
        opened, _OPENED = _OPENED, None

    root = data.resolve()
    python = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    files = [Path(p).resolve() for p in opened]
    outside = [p for p in files if not p.is_relative_to(root) and not str(p).startswith(python)]
    assert outside == [], outside
    assert secret.resolve() not in files
    assert any(p.name == "1000_train.jpg" for p in files)  # the recorder did see photo reads
    q = result.quarantine
    links = q.filter(pl.col("source").str.ends_with("/"))
    assert sorted(links["raw_line"]) == ["9000_link.jpg", "9001_rel.jpg"]
    assert links["reason"].str.contains("is a link pointing outside the data folder").all()
    assert q.filter(pl.col("source") == "test_images.csv").height == 4
    assert q.filter(pl.col("source") == "train_dataset.csv").height == 3
    assert_ledger_adds_up(result)
