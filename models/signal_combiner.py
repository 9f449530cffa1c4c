"""The photo guard's combiner: one calibrated probability that a photo shows a child,
from every signal the host has about the photo's pixels.

Inputs per photo (``combiner_inputs``), all numbers, no missing values (a photo with a
missing signal never reaches the combiner: the guard restricts it first):

* ``image``: the child-photo classifier's score (``models/child_photo.py``) as a logit;
* ``face``: what ``models/face_age.py`` found: any face, any face under 16, the youngest
  apparent age (relative to 16, capped) and its confidence, the number of faces.

A standardised, lightly L2-penalised logistic regression (scikit-learn), unweighted, so its
output is a probability calibrated to the training photos' base rate (``brier`` in the
guard's metrics measures how well).  The decision threshold is chosen elsewhere (out of
fold on the training photos, for the legal recall floor: ``tasks/compliance.py``).

The photo's own descriptions are *not* an input: on the training photos the label is
derived from those same descriptions, so a model fitted on them would learn the labeller,
not the photo.  They act as a rule beside the combiner (a flagged description restricts
the photo), see ``tasks/photo_guard.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Inputs per signal set; ``combiner_inputs`` builds them in this order.
INPUTS = {
    "image": ("image_logit",),
    "face": ("has_face", "child_face", "youngest_age_vs_16", "youngest_age_confidence", "log_faces"),
}


@dataclass(frozen=True)
class CombinerConfig:
    """Which signal sets feed the combiner, and its regularisation."""

    signals: tuple[str, ...] = ("image", "face")
    # Inverse L2 strength on standardised inputs (scikit-learn's C); 7 inputs, ~1000 photos.
    C: float = 1.0
    # Youngest apparent age is capped here before centring on 16 (an 80-year-old face says
    # no more than a 40-year-old one about a child elsewhere in the frame).
    age_cap: float = 40.0

    def columns(self) -> list[str]:
        """Input column names, in ``combiner_inputs`` order."""
        return [c for s in self.signals for c in INPUTS[s]]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def combiner_inputs(image_score: np.ndarray, faces: np.ndarray | None, config: CombinerConfig = CombinerConfig()
                    ) -> np.ndarray:
    """[n, d] inputs from image scores [n] and face vectors [n, len(face_age.FEATURES)].

    Face vectors follow ``models.face_age.FEATURES``; a photo without faces has n_faces 0 and
    NaN ages, which become has_face 0 and zeros here.  Rows with a missing signal (NaN image
    score, NaN n_faces) come out NaN, so they can never pass for a clean photo."""
    n = len(image_score)
    cols: list[np.ndarray] = []
    if "image" in config.signals:
        s = np.asarray(image_score, dtype=np.float64)
        cols.append(np.where(np.isfinite(s), _logit(np.nan_to_num(s, nan=0.5)), np.nan))
    if "face" in config.signals:
        f = np.asarray(faces, dtype=np.float64).reshape(n, -1)
        n_faces, youngest, conf, under = f[:, 0], f[:, 1], f[:, 2], f[:, 3]
        has = np.where(np.isfinite(n_faces), (n_faces > 0).astype(np.float64), np.nan)
        clear = np.isfinite(n_faces) & (n_faces > 0)
        age = np.where(clear, (np.minimum(np.nan_to_num(youngest, nan=config.age_cap), config.age_cap) - 16.0) / 10.0, 0.0)
        cols += [has,
                 np.where(np.isfinite(n_faces), (np.nan_to_num(under) > 0).astype(np.float64), np.nan),
                 np.where(np.isfinite(n_faces), age, np.nan),
                 np.where(np.isfinite(n_faces), np.where(clear, np.nan_to_num(conf), 0.0), np.nan),
                 np.where(np.isfinite(n_faces), np.log1p(np.nan_to_num(n_faces)), np.nan)]
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0))


class SignalCombiner:
    """Standardise, then logistic regression; ``predict`` is P(child | signals)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float,
                 config: CombinerConfig = CombinerConfig()):
        self.mean, self.scale, self.coef, self.intercept, self.config = mean, scale, coef, float(intercept), config

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, config: CombinerConfig = CombinerConfig()) -> "SignalCombiner":
        """Fit on inputs ``x`` (n, d) from ``combiner_inputs`` and labels ``y`` (n,), 1 for a child.

        With one class only, the model is constant (intercept +10 or -10, zero weights).
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        y = np.asarray(y).astype(int)
        scaler = StandardScaler().fit(x)
        if y.min() == y.max():  # one class: the constant model (the guard then fails closed)
            return cls(scaler.mean_, scaler.scale_, np.zeros(x.shape[1]), 10.0 if y.min() else -10.0, config)
        lr = LogisticRegression(C=config.C, max_iter=1000).fit(scaler.transform(x), y)
        return cls(scaler.mean_, scaler.scale_, lr.coef_[0], float(lr.intercept_[0]), config)

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Logits (n,) float64 of P(child) for inputs (n, d)."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(child) per row; NaN where an input is missing."""
        return 1.0 / (1.0 + np.exp(-self.decision(x)))

    def contributions(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each input's term in the logit (audit: which input pushed the score where)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale * self.coef
        return dict(zip(self.config.columns(), z.T))

    def state_dict(self, prefix: str = "combiner.") -> dict[str, np.ndarray]:
        """``mean``, ``scale``, ``coef`` and ``intercept`` (a (1,) array), float64, keys prefixed by
        ``prefix``."""
        return {f"{prefix}mean": np.asarray(self.mean, np.float64), f"{prefix}scale": np.asarray(self.scale, np.float64),
                f"{prefix}coef": np.asarray(self.coef, np.float64),
                f"{prefix}intercept": np.array([self.intercept], np.float64)}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray], config: CombinerConfig = CombinerConfig(),
                        prefix: str = "combiner.") -> "SignalCombiner":
        """Inverse of ``state_dict``, with the same ``prefix``.

        Raises:
            KeyError: an array is missing from ``d``.
        """
        return cls(np.asarray(d[f"{prefix}mean"]), np.asarray(d[f"{prefix}scale"]), np.asarray(d[f"{prefix}coef"]),
                   float(np.asarray(d[f"{prefix}intercept"]).reshape(-1)[0]), config)
