"""Learned fusion of the image model and the photo's descriptions (the description channel).

A photo's descriptions are the captions written for it by its owner and other users
(tasks/descriptions.py).  For a query and a photo the description channel gives two
cosines in the text encoder's space: the best-matching description (``desc_max``) and
the mean over the photo's descriptions (``desc_mean``); NaN when the photo has none
(a new upload, or every description removed by the text filter or left out because it
is the query itself).

The fused score is a calibrated probability that the pair matches, from two logistic
regressions (scikit-learn) fitted on the judged pairs' graded relevance labels:

* ``with_descriptions``: model logit and description cosines, for photos that have any;
* ``fallback``: the model logit alone, for photos that have none.

Both estimate the same probability, so a photo without descriptions is not penalised
for having none, and the fallback is strictly increasing in the model score: a
gallery with no descriptions at all is ranked exactly as the model ranks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Named feature sets a fusion may use (each fitted and compared on training folds), simplest
# first: a richer set must beat a simpler one on training folds to be chosen (tasks/train.py).
# On training photos (one description each) max and mean coincide, so the mean's weight is
# not identifiable there: the two sets tie, and the simpler one is kept.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "logistic_max": ("model_logit", "desc_max"),
    "logistic_max_mean": ("model_logit", "desc_max", "desc_mean"),
}
# How much better (out-of-fold expert tau-c) a richer feature set must be to be chosen.
MIN_GAIN = 1e-3
# Logistic regression's inverse regularisation: three features and ~20k pairs, so weak.
C_REG = 10.0
EPS = 1e-4


def model_logit(score: np.ndarray) -> np.ndarray:
    """Head scores in [0, 1] -> logits (clipped at 1e-4 from each end)."""
    s = np.clip(np.asarray(score, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(s) - np.log1p(-s)


def feature_matrix(names: tuple[str, ...], score: np.ndarray, desc_max: np.ndarray,
                   desc_mean: np.ndarray) -> np.ndarray:
    """Fusion inputs, one column per name in ``names``.

    Args:
        names: feature names from ``FEATURE_SETS`` (``model_logit``, ``desc_max``, ``desc_mean``).
        score: (n,) head scores in [0, 1], turned into logits (``model_logit``).
        desc_max, desc_mean: (n,) description cosines, NaN where the photo has none.

    Returns:
        (n, len(names)) float64.

    Raises:
        KeyError: an unknown name.
    """
    cols = {"model_logit": model_logit(score), "desc_max": np.asarray(desc_max, np.float64),
            "desc_mean": np.asarray(desc_mean, np.float64)}
    return np.column_stack([cols[n].reshape(-1) for n in names])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(x: np.ndarray, target: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression on graded labels in [0, 1]: each pair counts as a match with
    weight ``w * t`` and as a non-match with weight ``w * (1 - t)`` (the same likelihood as
    cross-entropy on soft labels).  Returns (coefficients, intercept)."""
    from sklearn.linear_model import LogisticRegression

    t = np.asarray(target, np.float64)
    w = np.asarray(weight, np.float64)
    xx = np.vstack([x, x])
    yy = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    ww = np.concatenate([w * t, w * (1.0 - t)])
    keep = ww > 0
    lr = LogisticRegression(C=C_REG, max_iter=2000)
    lr.fit(xx[keep], yy[keep], sample_weight=ww[keep])
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


@dataclass
class Fusion:
    """Two logistic regressions; arrays and names only, so it saves as JSON (no pickle)."""

    kind: str                                   # a FEATURE_SETS key
    coef: np.ndarray                            # [features of ``kind``]
    intercept: float
    fallback_coef: float                        # > 0: the fallback keeps the model's order
    fallback_intercept: float
    train_means: dict[str, float] = field(default_factory=dict)  # for the results' ``channel``

    @property
    def features(self) -> tuple[str, ...]:
        """The feature names of this fusion's ``kind`` (``FEATURE_SETS[kind]``)."""
        return FEATURE_SETS[self.kind]

    @classmethod
    def fit(cls, kind: str, score: np.ndarray, desc_max: np.ndarray, desc_mean: np.ndarray,
            target: np.ndarray, weight: np.ndarray) -> "Fusion":
        """``score`` [pairs]: the model's out-of-fold scores; ``desc_*`` [pairs], NaN where the
        photo has no description left (leave-own-out); ``target`` graded labels in [0, 1].

        The description model learns from pairs with descriptions only, the fallback from
        every pair.  Raises ValueError when no pair has a description.
        """
        has = ~np.isnan(desc_max)
        if not has.any():
            raise ValueError("no judged pair has a description: nothing to fuse")
        names = FEATURE_SETS[kind]
        x = feature_matrix(names, score, desc_max, desc_mean)
        coef, b = fit_logistic(x[has], target[has], weight[has])
        fb, fb0 = fit_logistic(feature_matrix(("model_logit",), score, desc_max, desc_mean), target, weight)
        means = {n: float(x[has, i].mean()) for i, n in enumerate(names)}
        # A non-positive slope would reverse the model's order for undescribed photos; it
        # never happens with a model that agrees with judges at all, and is floored to keep
        # the fallback strictly increasing whatever the data.
        return cls(kind, coef, b, max(float(fb[0]), 1e-6), fb0, means)

    def score(self, score: np.ndarray, desc_max: np.ndarray, desc_mean: np.ndarray) -> np.ndarray:
        """Fused scores in (0, 1), same shape as ``score``: the description model where
        ``desc_max`` is a number, the fallback where it is NaN."""
        shape = np.shape(score)
        dm = np.asarray(desc_max, np.float64).reshape(-1)
        has = ~np.isnan(dm)
        out = _sigmoid(self.fallback_coef * model_logit(score).reshape(-1) + self.fallback_intercept)
        if has.any():
            x = feature_matrix(self.features, np.asarray(score).reshape(-1)[has], dm[has],
                               np.asarray(desc_mean, np.float64).reshape(-1)[has])
            out[has] = _sigmoid(x @ self.coef + self.intercept)
        return out.reshape(shape).astype(np.float32)

    def channel(self, score: np.ndarray, desc_max: np.ndarray, desc_mean: np.ndarray) -> np.ndarray:
        """Which channel moved each fused score most from the training pairs' average:
        'model', 'descriptions', or 'model' alone when the photo has no descriptions
        ('model (no descriptions)')."""
        dm = np.asarray(desc_max, np.float64).reshape(-1)
        has = ~np.isnan(dm)
        out = np.full(len(dm), "model (no descriptions)", dtype=object)
        if has.any():
            x = feature_matrix(self.features, np.asarray(score).reshape(-1)[has], dm[has],
                               np.asarray(desc_mean, np.float64).reshape(-1)[has])
            centred = (x - np.array([self.train_means[n] for n in self.features])) * self.coef
            model_part = np.abs(centred[:, 0])
            desc_part = np.abs(centred[:, 1:].sum(1))
            out[has] = np.where(desc_part > model_part, "descriptions", "model")
        return out.reshape(np.shape(score))

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict:
        """JSON-ready dict of the fusion: ``kind``, coefficients, intercepts and ``train_means``."""
        return {"kind": self.kind, "coef": [float(c) for c in self.coef], "intercept": self.intercept,
                "fallback_coef": self.fallback_coef, "fallback_intercept": self.fallback_intercept,
                "train_means": self.train_means}

    @classmethod
    def from_dict(cls, d: dict) -> "Fusion":
        """Inverse of ``to_dict``; ``train_means`` may be absent (empty then).

        Raises:
            KeyError: a required key is missing.
        """
        return cls(d["kind"], np.asarray(d["coef"], np.float64), float(d["intercept"]), float(d["fallback_coef"]),
                   float(d["fallback_intercept"]), dict(d.get("train_means", {})))
