"""LightGBM head: gradient-boosted trees from pair features to a match score in [0, 1]."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightgbm as lgb
import numpy as np


@dataclass(frozen=True)
class LgbmConfig:
    """LightGBM settings of the ``lgbm`` relevance head."""

    # Six features, ~20k judged pairs: more or bigger trees measured no better out of fold.
    n_estimators: int = 100
    learning_rate: float = 0.08
    num_leaves: int = 15
    min_data_in_leaf: int = 40
    feature_fraction: float = 1.0
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    # One thread: these fits are small, and OpenMP workers that spin while the other core
    # is busy made them 20x slower on a loaded 2-core machine.
    threads: int = 1
    seed: int = 0


class LgbmHead:
    """Relevance head: LightGBM trees on pair features, predicting the match probability."""

    name = "lgbm"

    def __init__(self, booster: lgb.Booster):
        self.booster = booster

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None,
            config: LgbmConfig = LgbmConfig()) -> "LgbmHead":
        """Train on pair features ``x`` (n, d) and soft targets ``y`` (n,) in [0, 1].

        ``weight`` (n,): per-pair weights (None: equal).  Objective ``cross_entropy``
        (LightGBM docs: accepts labels in [0, 1]); deterministic for a given ``config.seed``.
        """
        c = asdict(config)
        params = {
            # cross_entropy accepts soft labels in [0, 1] and predicts a probability.
            "objective": "cross_entropy",
            "learning_rate": c["learning_rate"],
            "num_leaves": c["num_leaves"],
            "min_data_in_leaf": c["min_data_in_leaf"],
            "feature_fraction": c["feature_fraction"],
            "bagging_fraction": c["bagging_fraction"],
            "bagging_freq": 1,
            "lambda_l2": c["lambda_l2"],
            "num_threads": c["threads"],
            "seed": c["seed"],
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        data = lgb.Dataset(x, label=y, weight=weight, free_raw_data=True)
        return cls(lgb.train(params, data, num_boost_round=c["n_estimators"]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Match probabilities (n,) float32, clipped to [0, 1], for pair features (n, d)."""
        return np.clip(self.booster.predict(x), 0.0, 1.0).astype(np.float32)

    def to_text(self) -> str:
        """The booster as LightGBM's text model format."""
        return self.booster.model_to_string()

    @classmethod
    def from_text(cls, text: str) -> "LgbmHead":
        """Inverse of ``to_text``."""
        return cls(lgb.Booster(model_str=text))
