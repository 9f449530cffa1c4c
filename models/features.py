"""Pair features shared by the heads: what the bridge says about one (text, photo) pair."""

from __future__ import annotations

import numpy as np

from models.bridge import Bridge, l2n

FEATURE_NAMES_HEAD = ["cos_image_to_text", "cos_text_to_image"]


def pair_features(bridge: Bridge, img: np.ndarray, txt: np.ndarray,
                  img_idx: np.ndarray, txt_idx: np.ndarray) -> np.ndarray:
    """Features for the pairs (img[img_idx[k]], txt[txt_idx[k]]).

    Maps are computed once per distinct photo and text, then gathered per pair, so the
    cost grows with the number of pairs only through cheap row products.
    """
    it = bridge.image_to_text(img).astype(np.float32)     # photos seen in the text space
    ti = bridge.text_to_image(txt).astype(np.float32)     # texts seen in the image space
    t = l2n(txt).astype(np.float32)
    f = l2n(img).astype(np.float32)
    cos_it = (it[img_idx] * t[txt_idx]).sum(1, keepdims=True)
    basis = bridge.txt_basis.astype(np.float32)
    # Agreement along each principal text direction: lets a head weigh what a caption is about.
    prod = (it @ basis)[img_idx] * (t @ basis)[txt_idx]
    cos_ti = (ti[txt_idx] * f[img_idx]).sum(1, keepdims=True)
    return np.hstack([cos_it, cos_ti, prod]).astype(np.float32)


def feature_names(n_agree: int) -> list[str]:
    return FEATURE_NAMES_HEAD + [f"agree_{i}" for i in range(n_agree)]
