"""The evaluation stage: a run's test-query retrieval figures (``model_metrics``).

Three steps with data between them: ``read_inputs`` takes what the figures depend on out of
the run's warehouse copy, ``evaluate_retrieval`` (a Prefect task) computes the figures from
it, ``evaluate_stage`` writes them as this run's rows.  Reuse is Prefect's: the task's cache
key is the content of its inputs (``evaluation_key``) and its result is persisted in the
warehouse (``Warehouse.results_dir``), so a run whose model, photos, verdicts, queries and
descriptions are unchanged gets the figures back from Prefect's result store without
computing them.  ``run_stages`` records, for the audit, which run computed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from prefect import get_run_logger, task

from models.features import HEADS
from tasks.descriptions import DescriptionSet, gallery_descriptions
from tasks.evaluate import fusion_protocols, retrieval_metrics
from tasks.load import fingerprint, record_stage
from tasks.warehouse import Warehouse, connect, result_storage

# Bump when the figures change for the same inputs, so earlier figures are not reused.
# 2: the description channel's three protocols.  3: computed by a Prefect-cached task.
EVALUATE_FORMAT = 3

PROTOCOLS = ("test_queries_filter_off", "p1_model_alone", "p2_product_own_description_left_out",
             "p3_product_no_descriptions", "descriptions_only_own_left_out", "p2_product_shown_photos",
             "description_gallery")


@dataclass(frozen=True)
class EvaluationInputs:
    """What the figures depend on besides the model and the vectors."""

    queries: pl.DataFrame     # query_id, query_text, described_image, blocked (text filter, fail-closed)
    photos: pl.DataFrame      # gallery in image order: image, sha256, restricted (photo guard, fail-closed)
    descs: DescriptionSet     # the gallery photos' allowed descriptions, with their text vectors
    desc_rows: pl.DataFrame   # the same as rows (description_id, text, image), for the cache key


@dataclass(frozen=True)
class Computed:
    """A stage's output and the run that computed it (this run, or the one Prefect's cache kept it from)."""

    rows: pl.DataFrame
    run_id: str


def read_inputs(db: Path, run_id: str, texts) -> EvaluationInputs:
    """This run's test queries with their verdicts, gallery photos with theirs, and the gallery's
    allowed descriptions (vectors from ``texts``, an ``EmbeddedTexts``)."""
    with connect(db) as con:
        queries = con.execute("""
            SELECT q.query_id, q.query_text, q.described_image, coalesce(f.flagged, true) AS blocked
            FROM stg_test_queries q
            LEFT JOIN text_flags f ON f.run_id = ? AND f.text_kind = 'query' AND f.text_id = q.query_id
            ORDER BY q.query_id""", [run_id]).pl()
        photos = con.execute("""
            SELECT g.image, g.sha256, coalesce(p.restricted, true) AS restricted
            FROM gallery g LEFT JOIN photo_flags p ON p.run_id = ? AND p.image = g.image
            ORDER BY g.image""", [run_id]).pl()
        descs, desc_rows = gallery_descriptions(con, run_id, photos["image"].to_list(),
                                                lambda t: texts.vectors[texts.rows(t)])
    return EvaluationInputs(queries, photos, descs, desc_rows)


def evaluation_key(_context, parameters: dict) -> str:
    """Prefect cache key of ``evaluate_retrieval``: a hash of everything its figures depend on
    (format, model, encoders, heads, queries and verdicts, photos and verdicts, descriptions)."""
    i: EvaluationInputs = parameters["inputs"]
    return "evaluate-" + fingerprint(f"evaluate v{EVALUATE_FORMAT}", parameters["model"].fingerprint,
                                     parameters["images"].encoder, parameters["texts"].encoder, list(HEADS),
                                     i.queries.rows(), i.photos.rows(), i.desc_rows.rows())


@task(name="evaluate-retrieval", cache_key_fn=evaluation_key, persist_result=True)
def evaluate_retrieval(inputs: EvaluationInputs, images, texts, model, run_id: str) -> Computed:
    """Test queries over all gallery photos: every head alone (all queries with a gallery photo,
    the filter off) and the description channel's protocols (``fusion_protocols``) on the
    allowed queries.  Reported only: nothing here is fitted or chosen.

    Returns ``Computed`` with rows (head, protocol, metric, value) and ``run_id`` (the run
    computing them: a later run with the same inputs gets this result from Prefect's cache).
    """
    q, photos, descs = inputs.queries, inputs.photos, inputs.descs
    gallery = photos["image"].to_list()
    pos = {g: i for i, g in enumerate(gallery)}
    keep = [i for i, w in enumerate(q["described_image"]) if w in pos]
    img = images.features[images.rows("test", gallery)]
    txt = texts.vectors[texts.rows([q["query_text"][i] for i in keep])]
    correct = np.array([pos[q["described_image"][i]] for i in keep], dtype=np.int64)
    scores = {h: model.score_matrix(img, txt, h) for h in HEADS}
    rows = [{"head": h, "protocol": "test_queries_filter_off", "metric": m, "value": v}
            for h, s in scores.items() for m, v in retrieval_metrics(s, correct).items()]
    allowed = np.array([not q["blocked"][i] for i in keep], bool)
    ids = [q["query_id"][i] for i, a in zip(keep, allowed) if a]
    shown = ~photos["restricted"].to_numpy()
    for h, s in scores.items():
        if not allowed.any():
            break
        measured = fusion_protocols(s[allowed], lambda m, a, b, h=h: model.fuse(m, a, b, h), descs, txt[allowed], ids,
                                    correct[allowed], shown)
        rows += [{"head": h, "protocol": p, "metric": m, "value": v} for p, ms in measured.items() for m, v in ms.items()]
    rows += [{"head": "descriptions", "protocol": "description_gallery", "metric": m, "value": float(v)} for m, v in (
        ("photos", descs.n_photos), ("photos_with_descriptions", (descs.counts() > 0).sum()),
        ("allowed_descriptions", len(descs.ids)))]
    return Computed(pl.DataFrame(rows, schema={"head": pl.String, "protocol": pl.String, "metric": pl.String,
                                               "value": pl.Float64}), run_id)


def evaluate_stage(db: Path, run_id: str, wh: Warehouse, images, texts, model) -> dict[str, dict[str, float]]:
    """Read the inputs, get the figures (computed, or from Prefect's cache), write them as this
    run's ``model_metrics`` rows (component 'relevance') and record the stage in ``run_stages``.
    Returns {head: {metric: value}} of the model alone, the filter off."""
    inputs = read_inputs(db, run_id, texts)
    task_ = evaluate_retrieval.with_options(result_storage=result_storage(wh))
    computed = task_(inputs, images, texts, model, run_id)
    where_p = "protocol IN (" + ", ".join(f"'{p}'" for p in PROTOCOLS) + ")"
    frame = computed.rows.with_columns(pl.lit(run_id).alias("run_id"), pl.lit("relevance").alias("component"))
    reused_from = None if computed.run_id == run_id else computed.run_id
    with connect(db) as con:
        con.execute(f"DELETE FROM model_metrics WHERE run_id = ? AND {where_p}", [run_id])
        con.register("_m", frame)
        con.execute("INSERT INTO model_metrics BY NAME SELECT * FROM _m")
        con.unregister("_m")
        record_stage(con, run_id, "evaluate",
                     evaluation_key(None, {"inputs": inputs, "model": model, "images": images, "texts": texts}),
                     reused_from)
    r1 = {p: round(v, 3) for h, p, m, v in computed.rows.iter_rows()
          if h == model.head and m == "recall_at_1" and p in PROTOCOLS}
    get_run_logger().info("retrieval R@1, %s head: %s%s", model.head, r1,
                          f" (computed by run {reused_from}; Prefect's cache)" if reused_from else "")
    out: dict[str, dict[str, float]] = {}
    for h, p, m, v in computed.rows.iter_rows():
        if p == "test_queries_filter_off":
            out.setdefault(h, {})[m] = v
    return out
