"""Photo classifier: does this photo show a child under 16?

Photos carry no caption at search time, so the law's photo rule needs a classifier on
what the image towers see.  One L2-regularised, class-balanced logistic regression (scikit-learn) over
several blocks of frozen-encoder outputs (``photo_inputs``), each block the pooled
features (L2-normalised) and the square-rooted ImageNet probabilities of one view of
the photo.  The decision threshold is chosen elsewhere (on training folds, for the legal
recall floor) and stored beside the weights.

Why this and not more: on the 1000 train photos, out-of-fold, a kNN vote, LightGBM, a
ridge "bridge" into the caption space and soft/weighted caption labels were all within
+-0.01 AUC of this model or below it; what moved the numbers was more views of the photo
(a second resolution, max-pooling over the feature map, a second network) and strong
regularisation.  See docs/compliance.md for the measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChildPhotoConfig:
    """Fit settings of ``ChildPhotoClassifier``."""

    # Penalty on the mean (class-balanced) log-loss: l2 * ||w||^2 on standardised inputs.
    # ~ scikit-learn C = 1e-3 at 1000 photos; weaker penalties overfit the 1000 photos
    # (out-of-fold AUC 0.87 -> 0.83 at l2 = 0.01).
    l2: float = 0.5
    max_iter: int = 1000
    # One BLAS thread per fit: these fits are small, and OpenMP workers that spin while the
    # other core is busy made them 20x slower on a loaded 2-core machine.
    threads: int = 1


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def view_block(features: np.ndarray, logits: np.ndarray, max_features: np.ndarray | None = None) -> np.ndarray:
    """One view of the photos -> [n, d] inputs: unit-length features, sqrt-probabilities
    (a variance-stabilising map: rare ImageNet classes such as 'bib' or 'crib' still count),
    and, when given, the unit-length max over the feature map (small figures)."""
    parts = [_l2n(features), np.sqrt(_softmax(logits))]
    if max_features is not None:
        parts.append(_l2n(max_features))
    return np.hstack(parts).astype(np.float32)


def photo_inputs(*blocks: np.ndarray) -> np.ndarray:
    """Concatenate view blocks (all rows aligned to the same photos)."""
    return np.hstack(blocks).astype(np.float32)


class ChildPhotoClassifier:
    """Class-balanced, L2-penalised logistic regression on standardised image features.

    Holds the standardisation (``mean``, ``std``, each (d,)) and the weights ``w`` (d,) and bias
    ``b``; ``decision`` is the logit of P(child).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, w: np.ndarray, b: float):
        self.mean, self.std, self.w, self.b = mean, std, w, b

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, config: ChildPhotoConfig = ChildPhotoConfig(),
            weight: np.ndarray | None = None) -> "ChildPhotoClassifier":
        """Fit on (n, d) inputs and (n,) 0/1 labels; ``weight`` (n,) multiplies the class-balanced weights.

        Minimises ``mean(sw * log_loss) + l2 * ||w||^2`` on standardised inputs, sw = 0.5 / share
        of the row's class, with scikit-learn's ``LogisticRegression`` (lbfgs; the intercept is
        not penalised): in its terms ``C = 1 / (2 * l2 * n)``.
        """
        from threadpoolctl import threadpool_limits

        with threadpool_limits(config.threads):
            return cls._fit(x, y, config, weight)

    @classmethod
    def _fit(cls, x: np.ndarray, y: np.ndarray, config: ChildPhotoConfig,
             weight: np.ndarray | None = None) -> "ChildPhotoClassifier":
        from sklearn.linear_model import LogisticRegression

        x = x.astype(np.float64)
        mean, std = x.mean(0), x.std(0) + 1e-6
        y = (np.asarray(y) > 0.5).astype(np.int64)
        # Balanced weights: the legal floor is on recall of the (minority) child class.
        pos = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
        sw = np.where(y > 0, 0.5 / pos, 0.5 / (1 - pos))
        if weight is not None:
            sw = sw * np.asarray(weight, dtype=np.float64)
        lr = LogisticRegression(C=1.0 / (2.0 * config.l2 * len(y)), solver="lbfgs", max_iter=config.max_iter,
                                tol=1e-10)
        lr.fit((x - mean) / std, y, sample_weight=sw)
        return cls(mean.astype(np.float32), std.astype(np.float32), lr.coef_[0].astype(np.float32),
                   float(lr.intercept_[0]))

    @classmethod
    def fit_many(cls, x: np.ndarray, y: np.ndarray, masks: Sequence[np.ndarray],
                 config: ChildPhotoConfig = ChildPhotoConfig(), workers: int = 2) -> list["ChildPhotoClassifier"]:
        """One fit per (n,) boolean row mask (cross-validation folds), ``workers`` fits at a time.

        Each fit's BLAS is single-threaded (see ``ChildPhotoConfig.threads``) and numpy releases
        the GIL in its kernels, so two fits on two cores take about the time of one.  Results
        are identical to fitting one after the other."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(config.threads), ThreadPoolExecutor(max(1, workers), "child-photo-fit") as pool:
            return list(pool.map(lambda m: cls._fit(x[m], y[m], config), masks))

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Logits (n,) float64 for image features (n, d); > 0 leans towards a child."""
        return (((x - self.mean) / self.std) @ self.w + self.b).astype(np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probability-like score in [0, 1] (class-balanced, so not calibrated to the base rate)."""
        return 1.0 / (1.0 + np.exp(-self.decision(x)))

    def state_dict(self) -> dict[str, np.ndarray]:
        """``mean``, ``std``, ``w`` as float32 and ``b`` as a (1,) float64 array (for safetensors)."""
        return {"mean": np.ascontiguousarray(self.mean, dtype=np.float32),
                "std": np.ascontiguousarray(self.std, dtype=np.float32),
                "w": np.ascontiguousarray(self.w, dtype=np.float32),
                "b": np.array([self.b], dtype=np.float64)}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray]) -> "ChildPhotoClassifier":
        """Inverse of ``state_dict``.

        Raises:
            KeyError: an array is missing from ``d``.
        """
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32),
                   np.asarray(d["w"], np.float32), float(np.asarray(d["b"]).reshape(-1)[0]))
