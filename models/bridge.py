"""Bridge: kernel ridge regression from the image space into the text space.

Two frozen towers that were never trained together cannot be compared directly, so we
learn a map from matching (photo, caption) pairs: a photo goes to the point of the text
space where its captions should be, and the cosine there with a caption is the
first-stage relevance signal and the main input of the heads.

Choices, each measured out of fold on the training photos (tasks/train.py; README table):

* Kernel ridge, not a linear ridge: an RBF kernel on the cosine of the centred image
  features (``exp(gamma * (cos - 1))``) lifts expert tau-c 0.606 -> 0.615 and training-fold
  R@1 0.30 -> 0.31 over the best linear map with the same inputs (the shipped ridge,
  alpha 10 on raw spaces, had 0.560 / 0.25).
* The text space is centred on the mean of the training side's captions before both the
  regression and the cosine: MiniLM vectors share a large common direction that carries
  no relevance (tau-c 0.600 uncentred -> 0.614).  Each caption once, not once per
  training row: captions that match many photos would pull the origin towards
  themselves (tau-c 0.562).
* Training rows of the same photo are merged into one (weighted mean target, summed
  weight), which is the same least-squares problem with a kernel of photos, not pairs;
  it also gives every photo's leave-one-out map in closed form, so the heads can learn
  from features of a bridge that never saw the photo without refitting it.
* A constant added to the kernel acts as a (regularised) intercept; keeping it inside the
  kernel keeps the leave-one-out formula exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BridgeConfig:
    """Hyperparameters of the bridge's kernel ridge regression (see the module docstring)."""

    alpha: float = 1.0       # ridge penalty
    gamma: float = 1.5       # kernel width: exp(gamma * (cos - 1)); near 0 is a linear map
    intercept: float = 1.0   # constant added to the kernel
    # Principal directions of the centred text space along which the heads see
    # per-direction agreement (0: none).
    n_agree: int = 0


def l2n(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm: (n, d) -> (n, d); an all-zero row stays zero."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Bridge:
    """Fitted map; arrays only, so it saves to safetensors (no pickle)."""

    img_mean: np.ndarray    # [image dim] mean of the L2-normalised training photos
    support: np.ndarray     # [photos, image dim] centred, L2-normalised training photos
    coef: np.ndarray        # [photos, text dim] dual coefficients
    txt_mean: np.ndarray    # [text dim] mean caption vector: the text space's origin
    txt_ref: np.ndarray     # [text dim] mean centred caption: a photo's agreement with captions at large
    img_ref: np.ndarray     # [text dim] mean mapped training photo: a caption's agreement with photos at large
    txt_basis: np.ndarray   # [text dim, n_agree] orthonormal
    kernel: np.ndarray      # [gamma, intercept]

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, img: np.ndarray, txt: np.ndarray, weight: np.ndarray | None = None,
            config: BridgeConfig = BridgeConfig(), groups: np.ndarray | None = None,
            txt_ref: np.ndarray | None = None) -> "Bridge":
        """``img[k]`` and ``txt[k]`` match with ``weight[k]``.  ``groups[k]`` names the photo of
        row k (rows with equal image vectors when not given).  ``txt_ref``: the texts whose
        mean is the text space's origin (the distinct texts of the rows when not given)."""
        return cls.fit_loo(img, txt, weight, config, groups, txt_ref)[0]

    @classmethod
    def fit_loo(cls, img: np.ndarray, txt: np.ndarray, weight: np.ndarray | None = None,
                config: BridgeConfig = BridgeConfig(), groups: np.ndarray | None = None,
                txt_ref: np.ndarray | None = None) -> tuple["Bridge", np.ndarray, np.ndarray]:
        """The fit, plus each photo's map by the bridge fitted without that photo.

        Returns (bridge, photo group ids [photos], leave-one-out text-space vectors [photos, text dim]).
        """
        img = np.asarray(img, dtype=np.float64)
        txt = np.asarray(txt, dtype=np.float64)
        w = np.ones(len(img)) if weight is None else np.asarray(weight, dtype=np.float64)
        if groups is None:
            _, first, inv = np.unique(img, axis=0, return_index=True, return_inverse=True)
            ids = first
        else:
            ids, first, inv = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        x = l2n(img[first])
        img_mean = x.mean(0)
        support = l2n(x - img_mean)
        t = l2n(txt)
        ref = np.unique(t, axis=0) if txt_ref is None else l2n(np.asarray(txt_ref, dtype=np.float64))
        txt_mean = ref.mean(0)
        tc = l2n(t - txt_mean)
        # One row per photo: weighted mean of its captions, weight summed (same least squares).
        wsum = np.bincount(inv, weights=w, minlength=len(first))
        y = np.zeros((len(first), tc.shape[1]))
        np.add.at(y, inv, tc * w[:, None])
        y /= np.maximum(wsum, 1e-12)[:, None]
        gamma, c0 = config.gamma, config.intercept
        k = np.exp(gamma * (support @ support.T - 1.0)) + c0
        m = wsum[:, None] * k + config.alpha * np.eye(len(k))
        minv_w = np.linalg.solve(m, np.diag(wsum))        # M^-1 W
        coef = minv_w @ y
        fitted = k @ coef
        hat = np.einsum("ij,ji->i", k, minv_w)           # diag(K M^-1 W)
        loo = l2n((fitted - hat[:, None] * y) / np.maximum(1.0 - hat, 1e-9)[:, None])
        ref_c = l2n(ref - txt_mean)
        basis = np.zeros((tc.shape[1], 0))
        if config.n_agree:
            basis = np.linalg.svd(ref_c - ref_c.mean(0), full_matrices=False)[2][: config.n_agree].T.copy()
        bridge = cls(img_mean, support, coef, txt_mean, ref_c.mean(0), l2n(fitted).mean(0), basis,
                     np.array([gamma, c0]))
        # Saved as float32: round now, so a loaded bridge scores exactly like the fitted one.
        return cls.from_state_dict(bridge.state_dict()), ids, loo

    # ----------------------------------------------------------------- mapping
    @property
    def text_dim(self) -> int:
        """Dimension of the text space the bridge maps into."""
        return self.coef.shape[1]

    def image_to_text(self, img: np.ndarray) -> np.ndarray:
        """Photos (image features) -> unit vectors in the centred text space."""
        gamma, c0 = self.kernel
        x = l2n(l2n(np.asarray(img, dtype=np.float64)) - self.img_mean)
        return l2n((np.exp(gamma * (x @ self.support.T - 1.0)) + c0) @ self.coef)

    def text_vectors(self, txt: np.ndarray) -> np.ndarray:
        """Texts (text-encoder vectors) -> unit vectors in the centred text space."""
        return l2n(l2n(np.asarray(txt, dtype=np.float64)) - self.txt_mean)

    # ------------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, np.ndarray]:
        """Every array as contiguous float32, keyed by field name (for safetensors)."""
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.__dict__.items()}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray]) -> "Bridge":
        """Inverse of ``state_dict``: the arrays as float64.

        Raises:
            KeyError: a field is missing from ``d``.
        """
        names = ("img_mean", "support", "coef", "txt_mean", "txt_ref", "img_ref", "txt_basis", "kernel")
        return cls(**{k: np.asarray(d[k], dtype=np.float64) for k in names})
