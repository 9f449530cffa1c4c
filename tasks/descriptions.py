"""The description channel: each photo's own descriptions, scored against a query.

On the photo host every photo carries descriptions written by its owner and other
users; in the course data they are the captions whose id ``<image>#<n>`` names the
photo (train_dataset.csv for training photos, test_queries.csv for gallery photos).
Descriptions the text filter flags (text_flags.flagged, or no verdict: fail-closed) are
never loaded.  Vectors are the MiniLM embeddings the run already caches per text hash
(tasks/embed.py): nothing is embedded again here.

Leave-own-out: a saved query is itself one of its photo's descriptions, so its own
description (same id) is left out when it is scored -- exactly as a judged training pair
(photo P, caption C) leaves C out of P's descriptions.

Also here: fitting the fusion (models/fusion.py) on training folds grouped by photo
(scikit-learn GroupKFold), and choosing its feature set on those folds only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from models.fusion import FEATURE_SETS, Fusion


@dataclass(frozen=True)
class DescriptionSet:
    """The descriptions of one gallery's photos, grouped by photo.

    ``owner`` [n] int64: gallery row of the photo each description names, ascending;
    ``ids`` [n]: description ids (``<image>#<n>``, or any key a query can share to be left
    out); ``vectors`` [n, dim] float32, unit length; ``n_photos``: gallery size.
    """

    owner: np.ndarray
    ids: list[str]
    vectors: np.ndarray
    n_photos: int

    @classmethod
    def build(cls, owner: Sequence[int], ids: Sequence[str], vectors: np.ndarray, n_photos: int) -> "DescriptionSet":
        """Group descriptions by photo.

        Args:
            owner: (n,) gallery row of the photo each description names.
            ids: (n,) description ids.
            vectors: (n, dim) text vectors; stored as float32, L2-normalised.
            n_photos: gallery size.

        Returns:
            The set, rows sorted by ``owner`` (stable, so equal owners keep their order).
        """
        owner = np.asarray(owner, np.int64)
        order = np.argsort(owner, kind="stable")
        v = np.asarray(vectors, np.float32).reshape(len(owner), -1)[order]
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) if len(v) else v
        return cls(owner[order], [ids[i] for i in order], v, int(n_photos))

    def without_all(self) -> "DescriptionSet":
        """The same gallery with every description removed (a night of new uploads)."""
        return DescriptionSet(np.zeros(0, np.int64), [], np.zeros((0, self.vectors.shape[1] if self.vectors.ndim == 2
                                                                      else 0), np.float32), self.n_photos)

    def counts(self) -> np.ndarray:
        """Descriptions per gallery photo [n_photos]."""
        return np.bincount(self.owner, minlength=self.n_photos)


def description_scores(queries: np.ndarray, descs: DescriptionSet, query_ids: Sequence[str | None] | None = None,
                       block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each query with each photo's descriptions: (max, mean), each [Q, photos].

    ``queries`` [Q, dim] text-encoder vectors.  ``query_ids[q]``: the id of query q's own
    description, left out of its photo's set (None: nothing left out).  NaN where a photo
    has no description left.  Queries go in blocks of ``block`` rows, so memory is one
    block of [block, descriptions] cosines.
    """
    n_q = len(queries)
    best = np.full((n_q, descs.n_photos), np.nan, np.float32)
    mean = np.full((n_q, descs.n_photos), np.nan, np.float32)
    if n_q == 0 or len(descs.owner) == 0:
        return best, mean
    q = np.asarray(queries, np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    photos, starts = np.unique(descs.owner, return_index=True)
    id_of = {d: i for i, d in enumerate(descs.ids)}
    for s in range(0, n_q, block):
        sims = q[s : s + block] @ descs.vectors.T                        # [b, descriptions]
        keep = np.ones_like(sims, dtype=bool)
        if query_ids is not None:
            for r, qid in enumerate(query_ids[s : s + block]):
                if qid is not None and qid in id_of:
                    keep[r, id_of[qid]] = False
        n = np.add.reduceat(keep.astype(np.int32), starts, axis=1)
        mx = np.maximum.reduceat(np.where(keep, sims, -np.inf), starts, axis=1)
        sm = np.add.reduceat(np.where(keep, sims, 0.0), starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            best[s : s + block, photos] = np.where(n > 0, mx, np.nan)
            mean[s : s + block, photos] = np.where(n > 0, sm / n, np.nan)
    return best, mean


def top_description_candidates(desc_max: np.ndarray, c: int) -> np.ndarray:
    """Each query's ``c`` photos with the best-matching description, best first [Q, c'];
    photos without descriptions come last (they are the model's to find)."""
    c = min(c, desc_max.shape[1])
    filled = np.where(np.isnan(desc_max), -np.inf, desc_max)
    return np.argsort(-filled, axis=1, kind="stable")[:, :c]


# ----------------------------------------------------------------- loading

GALLERY_DESCRIPTIONS_SQL = """
    SELECT q.query_id AS description_id, q.query_text AS text, split_part(q.query_id, '#', 1) AS image
    FROM stg_test_queries q
    LEFT JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
    WHERE NOT coalesce(f.flagged, true)
    ORDER BY q.query_id"""


def gallery_descriptions(con, run_id: str, gallery: Sequence[str],
                         vectors_of: Callable[[list[str]], np.ndarray]) -> tuple[DescriptionSet, pl.DataFrame]:
    """The allowed descriptions of the gallery's photos (text filter applied, fail-closed).

    ``vectors_of(texts)`` returns their cached text-encoder vectors [n, dim].  Returns the
    set and its rows (description_id, text, image) for fingerprints and audits.
    """
    rows = con.execute(GALLERY_DESCRIPTIONS_SQL, [run_id]).pl()
    pos = {g: i for i, g in enumerate(gallery)}
    rows = rows.filter(pl.col("image").is_in(list(pos)))
    vecs = vectors_of(rows["text"].to_list()) if rows.height else np.zeros((0, 0), np.float32)
    return DescriptionSet.build([pos[i] for i in rows["image"]], rows["description_id"].to_list(), vecs,
                                len(gallery)), rows


# ----------------------------------------------------------- training the fusion


def training_descriptions(txt: np.ndarray, described_image: np.ndarray, n_photos: int) -> DescriptionSet:
    """Training photos' descriptions: each allowed caption under the photo it was written for.
    Ids are the caption's row in ``txt``, so a pair's own caption is left out by its row."""
    rows = np.flatnonzero(described_image >= 0)
    return DescriptionSet.build(described_image[rows], [str(r) for r in rows], txt[rows], n_photos)


def pair_description_scores(txt: np.ndarray, described_image: np.ndarray, n_photos: int, pair_img: np.ndarray,
                            pair_txt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max, mean) cosine of each judged pair's caption with its photo's descriptions,
    the caption itself left out (leave-own-out): NaN for a photo judged against its own,
    only, description."""
    descs = training_descriptions(txt, described_image, n_photos)
    texts = np.unique(pair_txt)
    mx, mn = description_scores(txt[texts], descs, [str(t) for t in texts])
    row = np.searchsorted(texts, pair_txt)
    return mx[row, pair_img], mn[row, pair_img]


def fusion_folds(pair_img: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) of judged pairs, grouped by photo (GroupKFold)."""
    from sklearn.model_selection import GroupKFold

    k = max(2, min(k, len(np.unique(pair_img))))
    return list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(pair_img, groups=pair_img))


def cross_validate_fusion(kind: str, score: np.ndarray, desc_max: np.ndarray, desc_mean: np.ndarray,
                          target: np.ndarray, weight: np.ndarray, pair_img: np.ndarray, k: int,
                          seed: int) -> np.ndarray:
    """Out-of-fold fused scores [pairs]: each fold's fusion fitted on the other photos' pairs.
    ``score`` must itself be out of fold (the heads' cross-validation)."""
    oof = np.full(len(score), np.nan, np.float32)
    for train, val in fusion_folds(pair_img, k, seed):
        if np.isnan(desc_max[train]).all():
            continue
        f = Fusion.fit(kind, score[train], desc_max[train], desc_mean[train], target[train], weight[train])
        oof[val] = f.score(score[val], desc_max[val], desc_mean[val])
    return oof
