"""The child-photo classifier's fit reaches the optimum; parallel fits equal serial ones."""

from __future__ import annotations

import numpy as np

from models.child_photo import ChildPhotoClassifier, ChildPhotoConfig


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.2, 3.0, size=d).astype(np.float32)
    y = (x[:, :5].sum(1) + rng.normal(size=n) > 0.5).astype(np.float32)
    return x, y


def primal_gradient(clf: ChildPhotoClassifier, x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Gradient of the objective ``fit`` minimises, in the original (standardised) input space."""
    xs = (x.astype(np.float64) - clf.mean) / clf.std
    p = 1.0 / (1.0 + np.exp(-(xs @ clf.w.astype(np.float64) + clf.b)))
    pos = y.mean()
    sw = np.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos))
    g = (p - y) * sw / len(y)
    return np.concatenate([xs.T @ g + 2 * l2 * clf.w, [g.sum()]])


def test_fit_with_more_inputs_than_photos_is_the_optimum():
    x, y = data(60, 400)  # n < d, as with the real photos
    config = ChildPhotoConfig(l2=0.05)
    clf = ChildPhotoClassifier.fit(x, y, config)
    grad = primal_gradient(clf, x, y, config.l2)
    assert np.abs(grad).max() < 1e-5
    assert np.abs(clf.w).max() > 1e-3  # it learned something


def test_fit_with_more_photos_than_inputs_is_the_optimum():
    x, y = data(300, 20)
    clf = ChildPhotoClassifier.fit(x, y, ChildPhotoConfig(l2=0.05))
    assert np.abs(primal_gradient(clf, x, y, 0.05)).max() < 1e-5


def test_fit_many_equals_one_fit_after_the_other():
    x, y = data(80, 200, seed=1)
    masks = [np.arange(80) % 4 != k for k in range(4)]
    together = ChildPhotoClassifier.fit_many(x, y, masks, workers=2)
    for m, clf in zip(masks, together):
        alone = ChildPhotoClassifier.fit(x[m], y[m])
        np.testing.assert_array_equal(clf.w, alone.w)
        assert clf.b == alone.b
