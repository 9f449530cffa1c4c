"""Opening a photo file for decoding, shared by ingest's checks and the image encoders.

Ingest loads a JPEG that lacks only its end-of-image marker (FF D9) when all its scan data
is present (``tasks.ingest_photos.jpeg_complete_without_eoi``), and records it as repaired;
every decoder of that photo must then give the marker back, which ``open_photo`` does.
Photos ingest quarantined never reach the encoders, so nothing here judges completeness.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


def decodable_bytes(data: bytes) -> bytes:
    """``data``, with the end-of-image marker appended when it is a JPEG that lacks one
    (what Pillow's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` does for a JPEG, kept
    to this one photo)."""
    if data.startswith(JPEG_SOI) and not data.endswith(JPEG_EOI):
        return data + JPEG_EOI
    return data


def open_photo(src: Path | str) -> Image.Image:
    """``Image.open`` of the photo at ``src``, read whole and passed through
    ``decodable_bytes``.  Raises what ``Image.open`` raises (OSError, UnidentifiedImageError)."""
    return Image.open(io.BytesIO(decodable_bytes(Path(src).read_bytes())))
