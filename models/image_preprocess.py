"""Image preprocessing for the EfficientNet-Lite encoders: a photo -> uint8 [S, S, 3] RGB.

EXIF orientation applied, any mode -> RGB, the *whole* photo resized to S x S with PIL's
antialiased bicubic filter (aspect ratio not kept); why, and the measurements behind it, in
``models/image_encoder.py``.  Normalisation lives inside the network, so every backend sees
identical uint8 input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from models.photo_file import open_photo

NATIVE_SIZE = {"lite0": 224, "lite2": 260}
RESAMPLE = Image.Resampling.BICUBIC
PREPROCESSING = "whole-bicubic"  # part of the encoder's ``name``: change it whenever ``preprocess`` changes

ImageLike = Image.Image | Path | str


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha is composited on white, 16-bit / float greys are rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # high-bit-depth grey
        a = np.asarray(img, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        a = a * (255.0 / hi) if hi > 255.0 else a
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _upright_rgb(img: Image.Image) -> Image.Image:
    if img.getexif().get(0x0112, 1) != 1:  # EXIF Orientation; skip the copy when upright
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def _resize(img: Image.Image, size: int) -> np.ndarray:
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8)


def preprocess(img: Image.Image, size: int = NATIVE_SIZE["lite2"]) -> np.ndarray:
    """PIL image -> uint8 array [size, size, 3] (RGB, HWC): upright, whole photo, bicubic."""
    return _resize(_upright_rgb(img), size)


def load(src: ImageLike, size: int = NATIVE_SIZE["lite2"]) -> np.ndarray:
    """``preprocess`` a PIL image or the photo at a path.  For a JPEG file, ``draft`` lets
    libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay >= ``size`` (large photos)."""
    if isinstance(src, Image.Image):
        return preprocess(src, size)
    with open_photo(src) as img:
        img.draft("RGB", (size, size))
        return preprocess(img, size)


def _draft_scale(wh: tuple[int, int], size: int) -> int:
    """The 1/scale libjpeg decodes at after ``draft('RGB', (size, size))`` (PIL's own rule)."""
    fits = min(wh[0] // size, wh[1] // size)
    return next(s for s in (8, 4, 2, 1) if fits >= s or s == 1)


def load_views(src: ImageLike, sizes: Sequence[int]) -> list[np.ndarray]:
    """``[load(src, s) for s in sizes]``, bit for bit, decoding the photo once per distinct
    draft scale.  At 260 and 448 px the scales agree for photos whose short side is < 520 px
    (all 1100 photos here: decoded once) and differ for short sides in [520, 896), [1040,
    1792) or [2080, 3584) (decoded twice, so the arrays stay exactly ``load``'s)."""
    return decode_views(src, sizes)[0]


def decode_views(src: ImageLike, sizes: Sequence[int]) -> tuple[list[np.ndarray], Image.Image]:
    """``load_views`` and the upright RGB photo they were resized from (for other signals that
    need the pixels, e.g. faces, without reading the file again).  That photo is decoded at the
    draft scale of the largest size: full resolution unless its short side is >= 2x that size."""
    if isinstance(src, Image.Image):
        img = _upright_rgb(src)
        return [_resize(img, s) for s in sizes], img
    with open_photo(src) as img:
        if img.format != "JPEG" or len({_draft_scale(img.size, s) for s in sizes}) == 1:
            img.draft("RGB", (max(sizes), max(sizes)))  # a no-op for other formats, as in load
            upright = _upright_rgb(img)
            return [_resize(upright, s) for s in sizes], upright
        img.draft("RGB", (max(sizes), max(sizes)))
        upright = _upright_rgb(img)
        upright.load()  # the pixels stay usable after the file is closed
    return [load(src, s) for s in sizes], upright  # different draft scales: one decode per size
