"""What an operator reads on a run's page in the Prefect UI, and how numbers are written.

- ``digest_markdown``: the ``reindex-summary`` markdown artifact -- where the HTML report is,
  what changed since the previous published run, the headline figures (rounded), compliance
  counts, quarantine, stage reuse and time per stage (``tasks/templates/digest.md.j2``).
- ``metrics_rows``: the ``reindex-metrics`` table artifact, values written for people.
- the jinja2 environment the HTML report shares (``tasks/templates/``), with the number
  filters below, so the page and the artifact print a figure the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2

from tasks.config import reports_base_url

TEMPLATES = Path(__file__).resolve().parent / "templates"


def count(n) -> str:
    """An integer count with thousands separators; '–' when unknown."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    return f"{int(round(n)):,}"


def figure(v, digits: int = 3) -> str:
    """A measured figure rounded for reading (3 decimals); '–' when unknown."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def delta(now, before, digits: int = 3) -> str:
    """The change ``now - before`` as +0.012 / −0.004 / 0; 'new' or 'gone' when one side is missing."""
    if before is None and now is None:
        return "–"
    if before is None:
        return "new"
    if now is None:
        return "gone"
    d = now - before
    if round(d, digits) == 0:
        return "0"
    return f"{'+' if d > 0 else '−'}{abs(d):.{digits}f}"


def count_delta(now, before) -> str:
    """The change of a count: +3 / −2 / 0, '–' when there is nothing to compare with."""
    if now is None or before is None:
        return "–"
    d = int(now) - int(before)
    return f"{'+' if d > 0 else '−' if d < 0 else ''}{abs(d):,}"


# Words in a metric's name that make it a fraction or a score, never a count.
FRACTION_WORDS = ("auc", "precision", "recall", "tau", "spearman", "mrr", "threshold", "confidence", "floor",
                  "rate", "share", "score", "bound")


def is_count(metric: str, v) -> bool:
    """A ``model_metrics`` value that counts things (n, folds, flagged photos, ...): a whole number
    whose metric name says nothing of a fraction."""
    return (v is not None and not (isinstance(v, float) and math.isnan(v)) and float(v).is_integer()
            and not any(w in metric.lower() for w in FRACTION_WORDS))


def metric_value(metric: str, v) -> str:
    """How a ``model_metrics`` value is written: counts as integers, the rest to 3 decimals."""
    return count(v) if is_count(metric, v) else figure(v)


def seconds(v) -> str:
    """A duration in seconds as text: ``'12.3 s'``, from 120 s on ``'2 min 5 s'``; ``'–'`` for None."""
    if v is None:
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{int(v // 60)} min {v % 60:.0f} s"


def label(text: str) -> str:
    """A column or stage name for people: underscores become spaces."""
    return str(text).replace("_", " ")


def environment(autoescape: bool) -> jinja2.Environment:
    """Templates from ``tasks/templates`` with the filters above; HTML ones autoescaped."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(count=count, figure=figure, delta=delta, count_delta=count_delta,
                       metric_value=metric_value, seconds=seconds, label=label)
    return env


def report_location(page: Path, run_id: str) -> dict:
    """Where a person opens the report: a web address when ``WITH_SENSE_REPORTS_URL`` says
    where ``reports/`` is served, and always the file path (to paste into a browser's address
    bar on the machine that ran the flow -- a page served over http may not link to file://)."""
    base = reports_base_url()
    return {"url": f"{base}/{run_id}/index.html" if base else None, "path": str(Path(page).resolve())}


def md_cell(value) -> str:
    """A value safe inside a markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def digest_markdown(summary: dict, digest: dict, location: dict | None) -> str:
    """The run page's summary: ``summary`` from ``finish_run_task``, ``digest`` from
    ``tasks.run_changes.describe_run``, ``location`` from ``report_location`` (None: no report)."""
    env = environment(autoescape=False)
    env.filters["cell"] = md_cell
    return env.get_template("digest.md.j2").render(s=summary, d={"previous_run": None, **digest}, report=location)


def metrics_rows(metrics: list[dict]) -> list[dict]:
    """``model_metrics`` rows for the table artifact: values as text written for people."""
    return [{"component": m["component"], "head": m["head"], "protocol": label(m["protocol"]),
             "metric": label(m["metric"]), "value": metric_value(m["metric"], m["value"])} for m in metrics]
