"""The image classifier's side of the photo guard: fitting "shows a child" on the train
photos' image views and choosing its threshold on repeated, stratified training folds so
the legal recall floor holds with a one-sided confidence bound (Clopper-Pearson).

Used by ``tasks/photo_guard.py`` (the multi-signal guard) and ``tasks/compliance.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tasks.config import SEED
from tasks.evaluate import precision_recall_at

if TYPE_CHECKING:  # torch is imported only where a fit happens
    from models.child_photo import ChildPhotoClassifier, ChildPhotoConfig

LEGAL_RECALL_FLOOR = 0.95

THRESHOLD_CONFIDENCE = 0.95   # one-sided confidence that the recall floor holds
CV_FOLDS, CV_REPEATS = 5, 3


@dataclass
class PhotoGuard:
    """The fitted classifier and its threshold; ``restricted`` fails closed (NaN -> restricted)."""

    classifier: ChildPhotoClassifier
    threshold: float
    cv: dict[str, float]
    view: str = ""
    fingerprint: str = ""   # guard_fingerprint of what it was fitted on
    reused: bool = False    # this run loaded it instead of fitting it
    fitted_in: str = ""     # run_id of the run that fitted it
    oof: np.ndarray | None = None  # out-of-fold score of each train photo (None when loaded)

    def score(self, x: np.ndarray) -> np.ndarray:
        """P(child) (n,) for guard inputs (n, d), from the classifier."""
        return self.classifier.predict(x)

    def restricted(self, score: np.ndarray) -> np.ndarray:
        """True where ``score`` is at or above the threshold, or NaN (fails closed)."""
        return ~(np.asarray(score, dtype=np.float64) < self.threshold)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The classifier's arrays plus ``threshold`` (a (1,) float64 array)."""
        return {**self.classifier.state_dict(), "threshold": np.array([self.threshold], dtype=np.float64)}

    @classmethod
    def from_state_dict(cls, d: dict[str, np.ndarray], view: str = "") -> "PhotoGuard":
        """Inverse of ``state_dict`` for photo view ``view``; ``cv`` comes back empty.

        Raises:
            KeyError: an array is missing from ``d``.
        """
        from models.child_photo import ChildPhotoClassifier

        return cls(ChildPhotoClassifier.from_state_dict(d), float(np.asarray(d["threshold"]).reshape(-1)[0]), {}, view)


def recall_lower_bound(n_pos: int, missed: int, confidence: float = THRESHOLD_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound on recall after catching n_pos - missed of n_pos."""
    if n_pos <= 0:
        return 0.0
    if missed >= n_pos:
        return 0.0
    from scipy import stats

    return float(stats.beta.ppf(1.0 - confidence, n_pos - missed, missed + 1))


def conservative_threshold(score: np.ndarray, label: np.ndarray, recall: float = LEGAL_RECALL_FLOOR,
                           confidence: float = THRESHOLD_CONFIDENCE) -> float:
    """The highest threshold whose out-of-fold recall is >= ``recall`` with ``confidence``.

    A recall of exactly 0.95 on the training folds is a point estimate: about as likely
    to fall short on new photos as not, and the train labels (mostly one caption per
    photo) miss some child photos, probably the harder ones.  Asking that the one-sided
    lower confidence bound reach 0.95 buys the margin (~0.97 out of fold at 344
    positives).  With too few positives for any such bound the threshold is the lowest
    positive score: every known child photo is caught.
    """
    pos = np.sort(np.asarray(score, dtype=np.float64)[np.asarray(label).astype(bool)])
    if len(pos) == 0:
        return 0.0
    missed = 0
    while missed + 1 < len(pos) and recall_lower_bound(len(pos), missed + 1, confidence) >= recall:
        missed += 1
    return float(pos[missed])


def cv_splits(label: np.ndarray, k: int, repeats: int, seed: int,
              groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Held-out masks of ``repeats`` x ``k``-fold cross-validation (scikit-learn), each class
    spread evenly over the folds; rows of one group (a photo content hash: the same picture
    under two names) stay in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    label = np.asarray(label).astype(int)
    groups = np.arange(len(label)) if groups is None else np.asarray(groups)
    masks = []
    for r in range(repeats):
        for _, va in StratifiedGroupKFold(k, shuffle=True, random_state=seed + r).split(label, label, groups):
            m = np.zeros(len(label), dtype=bool)
            m[va] = True
            masks.append(m)
    return masks


def stratified_folds(label: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold of each row (one repeat of ``cv_splits``)."""
    fold = np.empty(len(label), dtype=np.int64)
    for f, m in enumerate(cv_splits(label, k, 1, seed, groups)):
        fold[m] = f
    return fold


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC (scikit-learn); NaN when it is undefined (one class, or NaN scores)."""
    from sklearn.metrics import roc_auc_score

    label = np.asarray(label).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if label.all() or (~label).all() or np.isnan(score).any():
        return float("nan")
    return float(roc_auc_score(label, score))


def cv_folds(label: np.ndarray, folds: int) -> int:
    """Folds actually used: no more than either class has members (at least 2)."""
    label = np.asarray(label).astype(bool)
    if 0 < label.sum() < len(label):
        return max(2, min(folds, int(label.sum()), int((~label).sum())))
    return folds


def _fit(x: np.ndarray, y: np.ndarray, config: ChildPhotoConfig) -> ChildPhotoClassifier:
    from models.child_photo import ChildPhotoClassifier

    if y.min() == y.max():  # one class only: nothing to separate; score everything alike
        d = x.shape[1]
        return ChildPhotoClassifier(np.zeros(d, np.float32), np.ones(d, np.float32), np.zeros(d, np.float32),
                                    0.0)
    return ChildPhotoClassifier.fit(x, y, config)


def train_photo_guard(x: np.ndarray, label: np.ndarray, folds: int = CV_FOLDS, repeats: int = CV_REPEATS,
                      seed: int = SEED, recall: float = LEGAL_RECALL_FLOOR,
                      confidence: float = THRESHOLD_CONFIDENCE,
                      config: ChildPhotoConfig | None = None, groups: np.ndarray | None = None) -> PhotoGuard:
    """Fit on all train photos; pick the threshold out of fold (``repeats`` x ``folds``-fold CV).

    ``x`` are ``photo_inputs`` rows of the train photos, ``label`` whether each shows a child,
    ``groups`` their content hashes (identical photos share a fold).  The test photos never
    enter: neither the fit nor the threshold sees them.  ``guard.oof`` keeps each train
    photo's out-of-fold score (mean over repeats): the combiner learns from those.
    """
    from models.child_photo import ChildPhotoClassifier, ChildPhotoConfig

    config = config or ChildPhotoConfig()
    label = np.asarray(label).astype(np.float32)
    k = cv_folds(label, folds)
    oof = np.zeros(len(x), dtype=np.float64)
    if label.min() == label.max():
        held_out = [np.arange(len(x)) % k == f for f in range(k)]  # no classes to stratify
        fits = [_fit(x[~va], label[~va], config) for va in held_out]
        repeats_done = 1
    else:  # two fits at a time on the two cores; identical to fitting one after the other
        held_out = cv_splits(label, k, repeats, seed, groups)
        fits = ChildPhotoClassifier.fit_many(x, label, [~va for va in held_out], config)
        repeats_done = repeats
    for va, clf in zip(held_out, fits):
        oof[va] += clf.predict(x[va]) / repeats_done
    if label.min() == label.max():
        threshold = 0.0  # no contrast to learn from: restrict every photo (fail closed)
    else:
        threshold = conservative_threshold(oof, label, recall, confidence)
    missed = int(((oof < threshold) & (label > 0.5)).sum())
    cv = {"oof_roc_auc": roc_auc(oof, label), "threshold": threshold,
          **{f"oof_{k_}": v for k_, v in precision_recall_at(oof, label, threshold).items()},
          "oof_recall_lower_bound": recall_lower_bound(int(label.sum()), missed, confidence),
          "recall_floor": recall, "confidence": confidence, "folds": float(k), "repeats": float(repeats)}
    guard = PhotoGuard(_fit(x, label, config), threshold, cv)
    guard.oof = oof
    return guard


# Bump when what a saved guard means changes, so older fits are never reused.
# 3: image classifier + face gate + signal combiner in one file; sklearn folds grouped by content.
GUARD_FORMAT = 3
