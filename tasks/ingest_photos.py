"""Photo checks: every file in the photo folders is stat'ed, read once, decoded and judged.

A photo is loaded, loaded as repaired (a JPEG whose only damage is a missing end-of-image
marker), or quarantined with a reason.  Nothing outside the data folder is opened, and a
photo unchanged since the previous run (same stat key) keeps its earlier verdict.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from models.photo_file import JPEG_EOI, decodable_bytes
from tasks.ingest_base import OutsideDataFolder, SourceFileError, inside_or_refuse, printable_name, resolve_inside

# Larger photos are refused before decoding (decompression bombs); PIL's own guard is
# disabled so that our explicit check decides, with a readable reason.
MAX_PIXELS = 60_000_000
Image.MAX_IMAGE_PIXELS = None
# A photo in this archive is well under 1 MiB; a file 100x that is not a photo we want to
# hash and decode on every run.
MAX_PHOTO_BYTES = 100 * 2**20
# MPO is the JPEG variant some cameras write (a JPEG with a second preview image).
READABLE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP"}
PHOTO_DIRS = {"train": "train_images", "test": "test_images"}
# Part of every photo's stat key: a change to what validation checks re-checks every photo.
VALIDATION_RULES = hashlib.sha256(
    f"{MAX_PIXELS}|{MAX_PHOTO_BYTES}|{sorted(READABLE_FORMATS)}|draft-decode+exif|eoi-repair|v2".encode()
).hexdigest()[:8]
SAFE_NAME = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]*$")
# Bytes placed between the data and the end marker in the completeness check: a decoder
# that still needed scan data would read them as coefficients and change pixels.  One
# filler can decode to the same coefficients as the decoder's own zero fill by chance
# (measured: 0x55 alone passed cuts of real photos), so there are several, fixed (seeded)
# for a reproducible verdict, with no FF byte (a marker prefix).
PROBE_PADDINGS = tuple(bytes(min(b, 0xFE) for b in np.random.default_rng(seed).integers(0, 256, 64))
                       for seed in range(6)) + (b"\x55" * 64, b"\xaa" * 64)
REPAIRED_EOI = "repaired: missing end-of-image marker (all scan data present; decoded with the marker added)"


@dataclass(frozen=True)
class PhotoCheck:
    """One photo file's verdict: ``problem`` None means loaded; ``repair`` says what was
    tolerated in a loaded photo (None: nothing)."""

    image: str
    split: str
    path: str
    bytes: int | None
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    problem: str | None
    # size:mtime_ns:ctime_ns:inode:rules of the file as read; None when it was not read.
    stat_key: str | None = None
    repair: str | None = None


# A previous run's checks by (split, image): reused when the file's stat key is unchanged.
KnownPhotos = dict[tuple[str, str], PhotoCheck]


def stat_key(st) -> str:
    """What must stay equal for an earlier check of a file to still hold.

    ctime and inode change whenever the file is written, replaced, renamed over or
    copied (even by tools that restore mtime), so a file is re-read unless it is the
    very same file, untouched, checked under the same rules.
    """
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{VALIDATION_RULES}"


def check_photo_name(name: str) -> str | None:
    """None for a plain, safe file name; otherwise the reason it is not one."""
    if not name:
        return "empty image name"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"image name {printable_name(name)!r} is not valid UTF-8"
    if name.startswith("/") or "\\" in name or "/" in name or ".." in name:
        return f"image name {name!r} is not a plain file name (paths are not allowed)"
    if not SAFE_NAME.match(name):
        return f"image name {name!r} has characters a file name may not have here"
    return None


def not_found(name: str, split: str) -> str:
    """The quarantine reason for a photo file missing from its split's folder."""
    return f"image '{name}' not found in {PHOTO_DIRS[split]}/"


def _decode_full(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


def jpeg_complete_without_eoi(data: bytes) -> bool:
    """True when a JPEG that stops without its end-of-image marker (FF D9) holds all its
    scan data, so that adding the marker gives the whole photo.

    Decodes ``data + FF D9`` (what Pillow's ``LOAD_TRUNCATED_IMAGES`` does for a JPEG,
    without that process-wide switch) and again with each of eight fillers before the
    marker.  A decoder that still needed data would read the filler as image data and
    change pixels; identical pixels for every filler mean the last MCU was already decoded
    (bench/results/jpeg_eoi_repair.md measures the rule on the real photos).  Only sequential (baseline)
    JPEGs qualify: a progressive JPEG cut exactly between two scans decodes completely at
    lower detail, so its data cannot show that nothing is missing; it stays quarantined.
    """
    if data.endswith(JPEG_EOI):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.info.get("progressive") or img.info.get("progression"):
                return False
        base = _decode_full(data + JPEG_EOI)
        return all(np.array_equal(base, _decode_full(data + pad + JPEG_EOI)) for pad in PROBE_PADDINGS)
    except Exception:  # noqa: BLE001  (any decoder failure means: not repairable)
        return False


def _decode_check(data: bytes, name: str) -> tuple[str | None, dict, str | None]:
    """(problem, format/size fields, repair) for a photo's bytes."""
    seen: dict = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Decoded from the bytes already read: the file is opened once, by us.
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format, img.size
                seen.update(format=fmt, width=w, height=h)
                if fmt not in READABLE_FORMATS:
                    return (f"image '{name}' is {fmt}, a format the pipeline does not read "
                            f"(it reads {', '.join(sorted(READABLE_FORMATS))})"), seen, None
                if w * h > MAX_PIXELS:
                    return (f"image '{name}' is {w}x{h} pixels, over the {MAX_PIXELS:,} limit "
                            "(possible decompression bomb)"), seen, None
                _draft_load(img)
        return None, seen, None
    except Image.UnidentifiedImageError:
        return f"image '{name}' is not an image file", seen, None
    except Exception as exc:  # noqa: BLE001  (any decoder failure is this photo's problem)
        problem = f"image '{name}' cannot be decoded: {type(exc).__name__}: {exc}"
        if seen.get("format") in ("JPEG", "MPO") and "truncated" in str(exc) and jpeg_complete_without_eoi(data):
            try:
                with Image.open(io.BytesIO(decodable_bytes(data))) as img:
                    _draft_load(img)
            except Exception:  # noqa: BLE001
                return problem, seen, None
            return None, seen, REPAIRED_EOI
        return problem, seen, None


def _draft_load(img: Image.Image) -> None:
    w, h = img.size
    # A reduced-size decode still walks the whole compressed stream, so it finds
    # truncation and corruption at a fraction of a full decode's cost.
    img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
    img.load()
    # The encoder turns photos upright by their EXIF tag; a broken tag must fail here,
    # not halfway through embedding.
    ImageOps.exif_transpose(img)


def inspect_photo(data_dir: Path, split: str, name: str, known: KnownPhotos | None = None) -> PhotoCheck:
    """Validate one photo without ever reading outside ``data_dir``.

    ``known``: earlier checks; one whose stat key equals the file's is returned as is
    (path containment and the stat are always redone; the bytes are not re-read).
    """
    shown = printable_name(name)
    rel = f"{PHOTO_DIRS[split]}/{shown}"

    def bad(problem: str, **kw) -> PhotoCheck:
        base = dict(bytes=None, sha256=None, width=None, height=None, format=None)
        base.update(kw)
        return PhotoCheck(shown, split, rel, problem=problem, **base)

    if problem := check_photo_name(name):
        return bad(problem)
    path = data_dir / PHOTO_DIRS[split] / name
    try:
        real = resolve_inside(data_dir.resolve(), path)
    except FileNotFoundError:
        if path.is_symlink():
            return bad(f"image '{name}' is a link to a file that does not exist")
        return bad(not_found(name, split))
    except OutsideDataFolder:
        return bad(f"image '{name}' is a link pointing outside the data folder (not read)")
    except OSError as exc:
        return bad(f"image '{name}' cannot be resolved ({exc})")
    # stat before open: a FIFO or device would block or stream forever if opened.
    try:
        st = real.stat()
    except OSError as exc:
        return bad(f"image '{name}' cannot be read: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return bad(f"image '{name}' is not a regular file")
    if st.st_size == 0:
        return bad(f"image '{name}' is empty (0 bytes)", bytes=0)
    if st.st_size > MAX_PHOTO_BYTES:
        return bad(f"image '{name}' is {st.st_size:,} bytes, over the {MAX_PHOTO_BYTES:,}-byte limit",
                   bytes=st.st_size)
    key = stat_key(st)
    if known and (prev := known.get((split, name))) is not None and prev.stat_key == key and prev.path == rel:
        return prev
    try:
        data = real.read_bytes()
    except OSError as exc:
        return bad(f"image '{name}' cannot be read: {exc.strerror or exc}")
    if not data:
        return bad(f"image '{name}' is empty (0 bytes)", bytes=0)
    # Read in full now: the verdict below depends on these bytes only (and on the rules).
    seen = dict(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                stat_key=key if len(data) == st.st_size else None)
    problem, decoded, repair = _decode_check(data, name)
    seen.update(decoded)
    if problem:
        return bad(problem, **seen)
    return PhotoCheck(name, split, rel, problem=None, repair=repair, **seen)


def photo_folder(data_dir: Path, folder: str) -> Path:
    """``data_dir/folder`` after checking it is a folder inside the data folder."""
    d = data_dir / folder
    real = inside_or_refuse(data_dir, d, "photo folder", "expected a folder of .jpg photos")
    if not real.is_dir():
        raise SourceFileError(f"photo folder {d} is not a folder (expected a folder of .jpg photos)")
    return d


def register_photos(data_dir: Path, referenced: dict[str, set[str]], known: KnownPhotos | None = None
                    ) -> list[PhotoCheck]:
    """Every file in the photo folders, each checked once (unchanged files by their earlier
    check, see ``inspect_photo``), plus a check of each photo a row names that the folder
    listing lacks: kept only when such a file does exist (a case-insensitive file system),
    so a name no file has is the row's problem, never a phantom file of the folder."""
    checks = []
    for split, folder in PHOTO_DIRS.items():
        d = photo_folder(data_dir, folder)
        try:
            listed = {p.name for p in d.iterdir()}
        except OSError as exc:
            raise SourceFileError(f"photo folder {d} cannot be listed: {exc}") from None
        for name in sorted(listed | referenced.get(split, set())):
            if name.startswith(".") and name in listed:
                # Hidden files (.DS_Store, ._x.jpg) are counted, never opened.
                checks.append(PhotoCheck(printable_name(name), split, f"{folder}/{printable_name(name)}",
                                         None, None, None, None, None,
                                         f"hidden file '{printable_name(name)}' is not read as a photo"))
                continue
            check = inspect_photo(data_dir, split, name, known)
            if name in listed or check.problem != not_found(name, split):
                checks.append(check)
    return checks
