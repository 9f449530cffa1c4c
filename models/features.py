"""Pair features shared by the heads: what the bridge says about one (text, photo) pair."""

from __future__ import annotations

import numpy as np

from models.bridge import Bridge, l2n

# The relevance heads, in the order every table lists them (tasks/train.py fits them).
HEADS = ("bridge", "lgbm", "mlp")

FEATURE_NAMES_HEAD = [
    "cos",               # photo mapped into the centred text space vs the caption there (the bridge score)
    "cos_raw_text",      # the same photo vector vs the caption's raw (uncentred) vector
    "photo_hub",         # how much the photo's map agrees with captions at large
    "text_hub",          # how much the caption agrees with mapped photos at large
    "cos_minus_photo_hub",
    "cos_minus_text_hub",
]


def pair_features(bridge: Bridge, img: np.ndarray, txt: np.ndarray, img_idx: np.ndarray, txt_idx: np.ndarray,
                  img_text: np.ndarray | None = None) -> np.ndarray:
    """Features for the pairs (img[img_idx[k]], txt[txt_idx[k]]).

    ``img_text``: the photos already mapped into the text space (e.g. leave-one-out maps
    for training photos); mapped here when not given.  Maps are computed once per
    distinct photo and text, then gathered per pair.
    """
    p = (bridge.image_to_text(img) if img_text is None else img_text).astype(np.float32)
    t = bridge.text_vectors(txt).astype(np.float32)
    raw = l2n(np.asarray(txt, dtype=np.float32))
    cos = _cos(p, t, img_idx, txt_idx)
    photo_hub = (p @ bridge.txt_ref.astype(np.float32))[img_idx]
    text_hub = (t @ bridge.img_ref.astype(np.float32))[txt_idx]
    cols = [cos, (p[img_idx] * raw[txt_idx]).sum(1), photo_hub, text_hub, cos - photo_hub, cos - text_hub]
    basis = bridge.txt_basis.astype(np.float32)
    # Agreement along each principal text direction: lets a head weigh what a caption is about.
    agree = (p @ basis)[img_idx] * (t @ basis)[txt_idx]
    return np.hstack([np.column_stack(cols), agree]).astype(np.float32)


def _cos(p: np.ndarray, t: np.ndarray, img_idx: np.ndarray, txt_idx: np.ndarray) -> np.ndarray:
    return (p[img_idx] * t[txt_idx]).sum(1)


def bridge_cosine(bridge: Bridge, img: np.ndarray, txt: np.ndarray, img_idx: np.ndarray,
                  txt_idx: np.ndarray) -> np.ndarray:
    """The first feature alone (what the bridge head needs), without the others' cost."""
    p = bridge.image_to_text(img).astype(np.float32)
    return _cos(p, bridge.text_vectors(txt).astype(np.float32), img_idx, txt_idx)


def feature_names(n_agree: int) -> list[str]:
    """Column names of ``pair_features``: ``FEATURE_NAMES_HEAD`` then ``agree_0`` .. ``agree_{n_agree-1}``."""
    return FEATURE_NAMES_HEAD + [f"agree_{i}" for i in range(n_agree)]


def bridge_score(x: np.ndarray) -> np.ndarray:
    """The bridge alone as a head: its cosine (``x[:, 0]``, or a 1-d array of cosines), on [0, 1]."""
    cos = x if x.ndim == 1 else x[:, 0]
    return np.clip((cos + 1.0) / 2.0, 0.0, 1.0)
