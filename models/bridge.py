"""Bridge: closed-form ridge maps between the image space and the text space.

Two frozen towers that were never trained together cannot be compared directly, so we
learn linear maps from matching (photo, caption) pairs: image -> text space and
text -> image space.  The cosine in each space is the first-stage relevance signal and
the input of the heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BridgeConfig:
    alpha_image_to_text: float = 10.0
    alpha_text_to_image: float = 10.0
    # Principal text directions along which the heads see per-direction agreement;
    # all 384 raw dimensions made the heads slow and no better.
    n_agree: int = 32


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float, w: np.ndarray | None) -> np.ndarray:
    w = np.ones(len(x)) if w is None else w
    xw = x * w[:, None]
    a = x.T @ xw + alpha * np.eye(x.shape[1])
    return np.linalg.solve(a, xw.T @ y)


def _basis(vt: np.ndarray, dim: int, n: int) -> np.ndarray:
    """Top-n principal directions, zero-padded when there are fewer texts than n, so
    every bridge yields features of the same width."""
    basis = np.zeros((dim, n))
    k = min(n, len(vt))
    basis[:, :k] = vt[:k].T
    return basis


@dataclass
class Bridge:
    """Fitted maps; arrays only, so they save to safetensors (no pickle)."""

    img_mean: np.ndarray
    txt_mean: np.ndarray
    w_it: np.ndarray  # (image dim + 1) x text dim
    w_ti: np.ndarray  # (text dim + 1) x image dim
    txt_basis: np.ndarray  # text dim x n_agree, orthonormal

    @classmethod
    def fit(cls, img: np.ndarray, txt: np.ndarray, weight: np.ndarray | None = None,
            config: BridgeConfig = BridgeConfig()) -> "Bridge":
        img, txt = l2n(img), l2n(txt)
        img_mean, txt_mean = img.mean(0), txt.mean(0)
        xi = np.hstack([img - img_mean, np.ones((len(img), 1))])
        xt = np.hstack([txt - txt_mean, np.ones((len(txt), 1))])
        _, _, vt = np.linalg.svd(txt - txt_mean, full_matrices=False)
        return cls(img_mean, txt_mean,
                   _ridge(xi, txt, config.alpha_image_to_text, weight),
                   _ridge(xt, img, config.alpha_text_to_image, weight),
                   _basis(vt, txt.shape[1], config.n_agree))

    def image_to_text(self, img: np.ndarray) -> np.ndarray:
        img = l2n(img)
        return l2n(np.hstack([img - self.img_mean, np.ones((len(img), 1))]) @ self.w_it)

    def text_to_image(self, txt: np.ndarray) -> np.ndarray:
        txt = l2n(txt)
        return l2n(np.hstack([txt - self.txt_mean, np.ones((len(txt), 1))]) @ self.w_ti)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.__dict__.items()}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray]) -> "Bridge":
        return cls(**{k: np.asarray(d[k], dtype=np.float64) for k in ("img_mean", "txt_mean", "w_it", "w_ti", "txt_basis")})
