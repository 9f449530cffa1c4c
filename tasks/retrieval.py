"""Two-stage retrieval: an exact first stage over the gallery in blocks, the heads rerank its candidates.

The heads cost a feature vector and a tree ensemble (or an MLP) per (query, photo) pair,
so scoring every pair grows as queries x photos.  The first stage is one number per pair
that the bridge already gives: the cosine, in the bridge's text space, between the photo
mapped there (``bridge.image_to_text``) and the query (``bridge.text_vectors``) -- the
first feature of every head and the whole of the bridge head.  Photo and query vectors
live in one space, so the first stage is a plain matrix product, done exactly in blocks
of photos: memory stays at one block of scores whatever the gallery size, and the running
top-C per query is merged block by block.  The heads then score only those C candidates,
from the same photo vectors (the gallery index), so no photo is mapped twice.

``precision="bf16"`` or ``"int8"`` scans each block in low precision (bfloat16 products,
or int8 products summed in int32 -- AVX-512 BF16 / VNNI on these CPUs, through torch) and
rescores the block's best candidates in float32, so the candidates' scores are exact and
only the choice of candidates can differ from the float32 scan; their recall is
measured, not assumed (bench/scale_retrieval.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.dataset as ds
import torch

from models.bridge import Bridge
from models.features import bridge_score, pair_features

Precision = Literal["fp32", "bf16", "int8"]
# Pair features and their temporaries are a few 384-d vectors per (query, photo) pair:
# 50k pairs per head call keep them near 0.5 GB.
PAIRS_PER_CALL = 50_000
# (first gallery row of the block, float32 block [rows, dim], optional bf16/int8 copy)
Block = tuple[int, np.ndarray, torch.Tensor | None]


@dataclass(frozen=True)
class RetrievalConfig:
    """How the search is run: candidates per query for the heads, score block size (rows) and precision."""

    # Candidates per query that the heads rerank.  On the real photos a head's own
    # top-10 lies inside the first stage's top-100 for 89-100% of its photos
    # (bench/results/scale_retrieval.md); the flow records the figure every run.
    candidates: int = 100
    block_rows: int = 65_536  # 1000 queries x 65k photos of float32 scores = 262 MB
    precision: Precision = "fp32"


# ------------------------------------------------------------------ first stage


def photo_text_vectors(bridge: Bridge, features: np.ndarray, block_rows: int = 8192) -> np.ndarray:
    """Photos mapped into the bridge's text space (unit vectors, float32), in blocks."""
    parts = [bridge.image_to_text(features[s : s + block_rows]).astype(np.float32)
             for s in range(0, len(features), block_rows)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def query_text_vectors(txt: np.ndarray, bridge: Bridge) -> np.ndarray:
    """Queries (text-encoder vectors) in the same space as ``photo_text_vectors``."""
    return np.ascontiguousarray(bridge.text_vectors(txt), dtype=np.float32)


def low_precision(x: torch.Tensor, precision: Precision) -> torch.Tensor | None:
    """The coarse copy a scan runs on.  int8 uses one scale per block of photos (or per
    query): scores inside a block stay comparable, and blocks meet only through the
    float32 rescoring, so no global scale is needed."""
    if precision == "bf16":
        return x.to(torch.bfloat16)
    if precision == "int8":
        scale = 127.0 / x.abs().amax().clamp_min(1e-12)
        return (x * scale).round().clamp(-127, 127).to(torch.int8)
    return None


def matrix_blocks(matrix: np.ndarray, block_rows: int = 65_536, precision: Precision = "fp32") -> list[Block]:
    """An in-memory gallery cut into blocks (views, no copy; bf16/int8 copies when asked)."""
    out = []
    for s in range(0, len(matrix), block_rows):
        b = np.ascontiguousarray(matrix[s : s + block_rows], dtype=np.float32)
        out.append((s, b, low_precision(torch.from_numpy(b), precision)))
    return out


def parquet_blocks(files: Sequence[Path], column: str, block_rows: int = 65_536,
                   precision: Precision = "fp32") -> Iterator[Block]:
    """Stream one fixed-size-list column of Parquet files as blocks, in file and row order.

    Only ``column`` is read and at most one block is held at a time, so a scan over a
    gallery of any size needs one block of memory.
    """
    scanner = ds.dataset([str(f) for f in files], format="parquet").scanner(
        columns=[column], batch_size=block_rows, use_threads=False)
    offset = 0
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        col = batch.column(0)
        dim = col.type.list_size
        b = col.values.to_numpy(zero_copy_only=False)[col.offset * dim : (col.offset + len(col)) * dim]
        b = np.array(b.reshape(len(col), dim), dtype=np.float32)  # writable copy for torch
        yield offset, b, low_precision(torch.from_numpy(b), precision)
        offset += len(col)


def _merge(best_s: torch.Tensor | None, best_i: torch.Tensor | None, s: torch.Tensor, i: torch.Tensor,
           c: int) -> tuple[torch.Tensor, torch.Tensor]:
    if best_s is not None:
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
    if s.shape[1] > c:
        s, pos = torch.topk(s, c, dim=1)
        i = torch.gather(i, 1, pos)
    return s, i


def first_stage(queries: np.ndarray, blocks: Iterable[Block], c: int,
                precision: Precision = "fp32", pool: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``c`` gallery rows per query by inner product, best first; exact in float32.

    ``queries`` [Q, dim] float32.  Returns (rows [Q, c'], scores [Q, c']) with
    c' = min(c, gallery size).  Equal scores are ordered by lower row; which of several
    photos tied at the c-th place gets in is not specified.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    # Per-query scale for int8: it cannot change a query's order.
    ql = (low_precision(q / q.abs().amax(1, keepdim=True).clamp_min(1e-12), precision)
          if precision == "int8" else low_precision(q, precision))
    pool = max(c, pool or c)
    best_s = best_i = None
    for offset, block, low in blocks:
        b = torch.from_numpy(block)
        if precision != "fp32":
            # Coarse scan (bf16 product, or int8 with int32 sums), then the block's best
            # `pool` rescored exactly in fp32.
            low = low if low is not None else low_precision(b, precision)
            coarse = torch._int_mm(ql, low.T) if precision == "int8" else torch.mm(ql, low.T)
            _, pos = torch.topk(coarse, min(pool, coarse.shape[1]), dim=1)
            s = torch.einsum("qd,qkd->qk", q, b[pos])
        else:
            s = torch.mm(q, b.T)
            if s.shape[1] > c:
                s, pos = torch.topk(s, c, dim=1)
            else:
                pos = torch.arange(s.shape[1]).expand(len(q), -1)
        best_s, best_i = _merge(best_s, best_i, s, pos + offset, c)
    if best_s is None:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    rows, scores = best_i.numpy().astype(np.int64), best_s.numpy().astype(np.float32)
    order = np.lexsort((rows, -scores), axis=1)  # score desc, then row asc
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def first_stage_exact_reference(queries: np.ndarray, gallery: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the whole matrix at once (tests, and small galleries only)."""
    s = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :c]
    return idx, np.take_along_axis(s, idx, 1)


# ----------------------------------------------------------------- second stage


def head_scores(model, photo_vecs: np.ndarray, txt: np.ndarray, img_idx: np.ndarray, txt_idx: np.ndarray,
                head: str | None = None) -> np.ndarray:
    """FittedModel.score for pairs, starting from photos already in the text space
    (the gallery index), so no photo is mapped again and no image feature is read."""
    x = pair_features(model.bridge, None, txt, img_idx, txt_idx, img_text=photo_vecs)
    name = head or model.head
    return np.asarray(bridge_score(x) if name == "bridge" else model.heads[name].predict(x), np.float32)


def rerank(model, text_space_of, txt: np.ndarray, candidates: np.ndarray, k: int,
           head: str | None = None, max_pairs: int = PAIRS_PER_CALL) -> tuple[np.ndarray, np.ndarray]:
    """The head's scores for each query's candidates; its top-``k`` per query, best first.

    ``text_space_of(rows)`` gives the gallery index vectors of photo rows (sorted,
    unique).  Ties are broken by lower gallery row, as in a full ranking, so when the
    candidates are the whole gallery the result is the full ranking.
    """
    n_q, n_c = candidates.shape
    if n_q == 0 or n_c == 0:
        return np.zeros((n_q, 0), np.int64), np.zeros((n_q, 0), np.float32)
    cand = np.sort(candidates, axis=1)
    scores = np.empty((n_q, n_c), np.float32)
    step = max(1, max_pairs // n_c)  # pair features are a few vectors per pair: bound them
    for s in range(0, n_q, step):
        part = cand[s : s + step]
        uniq, local = np.unique(part, return_inverse=True)
        scores[s : s + step] = head_scores(model, np.asarray(text_space_of(uniq), np.float32), txt[s : s + step],
                                           local.reshape(-1), np.repeat(np.arange(len(part)), n_c),
                                           head).reshape(len(part), n_c)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, n_c)]
    return np.take_along_axis(cand, top, 1), np.take_along_axis(scores, top, 1)


def full_ranking(model, blocks: Iterable[Block], txt: np.ndarray, k: int, head: str | None = None,
                 max_pairs: int = PAIRS_PER_CALL) -> np.ndarray:
    """Every photo of the index scored by the head: top-``k`` rows per query (ties: lower row).

    What the two stages avoid; used to audit them on a sample of queries.  Photos go in
    slices of at most ``max_pairs`` pairs, so memory does not grow with the gallery.
    """
    best_s = np.zeros((len(txt), 0), np.float32)
    best_i = np.zeros((len(txt), 0), np.int64)
    if len(txt) == 0:
        return best_i
    step = max(1, max_pairs // len(txt))
    for offset, block, _ in blocks:
        for s in range(0, len(block), step):
            vecs = block[s : s + step]
            ii, ti = np.meshgrid(np.arange(len(vecs)), np.arange(len(txt)))
            sc = head_scores(model, vecs, txt, ii.ravel(), ti.ravel(), head).reshape(len(txt), len(vecs))
            rows = np.arange(offset + s, offset + s + len(vecs))
            best_s = np.hstack([best_s, sc])
            best_i = np.hstack([best_i, np.broadcast_to(rows, sc.shape)])
            order = np.lexsort((best_i, -best_s), axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def gather_rows(blocks: Iterable[Block], rows: np.ndarray) -> np.ndarray:
    """The vectors of gallery ``rows`` (sorted, unique) from one more pass over the blocks."""
    out, got = None, 0
    for offset, block, _ in blocks:
        lo, hi = np.searchsorted(rows, [offset, offset + len(block)])
        if out is None:
            out = np.empty((len(rows), block.shape[1]), np.float32)
        out[lo:hi] = block[rows[lo:hi] - offset]
        got += hi - lo
    if got != len(rows):
        raise IndexError(f"{len(rows) - got} rows beyond the end of the gallery")
    return out if out is not None else np.zeros((0, 0), np.float32)


def recall_of(reference: np.ndarray, candidates: np.ndarray) -> float:
    """Mean share of each query's reference rows found among its candidate rows."""
    if reference.size == 0:
        return float("nan")
    hits = [np.isin(r, c).sum() / len(r) for r, c in zip(reference, candidates)]
    return float(np.mean(hits))


def two_stage(model, img: np.ndarray, txt: np.ndarray, k: int, config: RetrievalConfig = RetrievalConfig(),
              head: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-memory two-stage ranking: (top-k rows, their scores, the first stage's candidates)."""
    gallery = photo_text_vectors(model.bridge, img)
    cand, _ = first_stage(query_text_vectors(txt, model.bridge),
                          matrix_blocks(gallery, config.block_rows, config.precision),
                          config.candidates, config.precision)
    idx, scores = rerank(model, lambda rows: gallery[rows], txt, cand, k, head)
    return idx, scores, cand


# ------------------------------------------------------------ the gallery index
#
# The first stage's gallery on disk: ``index/<key>/part-00000.parquet, ...`` in gallery
# order, each part with ``row``, ``image``, ``sha256`` and ``text_space`` (the photo in the
# text space, float32).  ``key`` hashes the model, the encoder and the gallery, so a run
# whose photos and heads did not change reuses the index; rank shards stream it block by
# block.  DuckDB and polars read it lazily like any folder of Parquet parts:
#     SELECT image FROM read_parquet('warehouse/index/*/part-*.parquet') LIMIT 5
#     pl.scan_parquet("warehouse/index/<key>/part-*.parquet").select("image").head(5).collect()


def index_key(model_fingerprint: str, encoder: str, shas: Sequence[str]) -> str:
    """16-hex-digit key of a gallery index: SHA-256 of the model fingerprint, the encoder and the photos'
    SHA-256s in order."""
    import hashlib

    h = hashlib.sha256(f"{model_fingerprint}|{encoder}|".encode())
    for s in shas:
        h.update(s.encode())
    return h.hexdigest()[:16]


def index_files(folder: Path) -> list[Path]:
    """The Parquet parts (``part-*.parquet``) of an index folder, sorted by name."""
    return sorted(Path(folder).glob("part-*.parquet"))


def build_index(folder: Path, bridge: Bridge, features: np.ndarray, images: Sequence[str], shas: Sequence[str],
                rows_per_part: int = 65_536) -> list[Path]:
    """Write the gallery index (once per key: a finished folder is reused as it is)."""
    import pyarrow as pa

    from tasks.atomic import atomic_write_bytes, atomic_write_parquet

    folder = Path(folder)
    if (folder / "_SUCCESS").exists():
        return index_files(folder)
    for stale in index_files(folder):
        stale.unlink()
    for p, s in enumerate(range(0, len(features), rows_per_part)):
        vec = photo_text_vectors(bridge, features[s : s + rows_per_part])  # float32 [rows, text dim]
        atomic_write_parquet(pa.table({
            "row": pa.array(np.arange(s, s + len(vec), dtype=np.int64)),
            "image": pa.array(list(images[s : s + len(vec)]), pa.string()),
            "sha256": pa.array(list(shas[s : s + len(vec)]), pa.string()),
            "text_space": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1]),
        }), folder / f"part-{p:05d}.parquet")
    atomic_write_bytes(f"{len(features)} rows\n".encode(), folder / "_SUCCESS")
    return index_files(folder)


def prune_indexes(root: Path, keep: Path) -> None:
    """Indexes of older galleries or models: one reindex at a time holds the lock, so safe."""
    import shutil

    for d in Path(root).glob("*"):
        if d.is_dir() and d.resolve() != Path(keep).resolve():
            shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------- first-stage audit


def first_stage_recall(model, blocks, txt: np.ndarray, candidates: np.ndarray, heads: Sequence[str],
                       at: Sequence[int], n_photos: int, k: int = 10, max_pairs: int = 2_000_000) -> list[dict]:
    """Recall of each head's full top-``k`` inside the first stage's top-c, for c in ``at``.

    ``blocks()`` yields the gallery index afresh.  Scoring every photo is what the two
    stages avoid, so this audits a sample: evenly spaced queries, up to ``max_pairs``
    (query, photo) pairs per head.
    """
    n = min(len(txt), max(1, max_pairs // max(n_photos, 1)))
    pick = np.unique(np.linspace(0, len(txt) - 1, n).round().astype(int)) if len(txt) else np.zeros(0, int)
    rows = []
    for head in heads:
        full = full_ranking(model, blocks(), txt[pick], k, head)
        for c in at:
            rows.append({"head": head, "metric": f"recall_of_full_top{k}_at_{c}",
                         "value": recall_of(full, candidates[pick, :c])})
    return rows + [{"head": h, "metric": "audited_queries", "value": float(len(pick))} for h in heads]
