"""The report's two charts, drawn by matplotlib and inlined in the page as SVG.

- ``histogram_svg``: overlaid density histograms (each series integrates to 1, so series of
  very different sizes -- a few hundred matching pairs against tens of thousands of others --
  can be compared by shape).
- ``recall_curves_svg``: recall@k against k, one line per head, the chosen head bold.

Text stays text in the SVG (``svg.fonttype = none``), so the legends are searchable and a
browser test can read them; the output carries no date and fixed ids, so the same figures
give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

# Agg: no display is needed, and no GUI toolkit is imported on a worker.
import matplotlib  # noqa: I001

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "with-sense-report",  # stable element ids from run to run
    "font.family": ["DejaVu Sans", "sans-serif"],
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#eaeef2",
    "axes.edgecolor": "#8c959f",
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "legend.frameon": False,
}
SIZE_INCHES = (5.8, 3.6)


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    # Inline in HTML: drop the XML prolog and DOCTYPE, keep the <svg> element.
    return text[text.index("<svg"):]


def _empty(message: str) -> str:
    return f'<p class="muted">{message}</p>'


def histogram_svg(series: Sequence[tuple[str, np.ndarray, str]], bins: int, title: str) -> str:
    """Overlaid density histograms of ``series`` = [(label, values, colour)]; the legend gives
    each series' size.  Returns an ``<svg>`` element, or a short note when nothing is plotted."""
    values = [np.asarray(v, dtype=float) for _, v, _ in series]
    if not any(len(v) for v in values):
        return _empty("No scores to plot.")
    lo = min(float(v.min()) for v in values if len(v))
    hi = max(float(v.max()) for v in values if len(v))
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=SIZE_INCHES)
        for (label, _, colour), v in zip(series, values):
            if len(v):
                ax.hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color=colour,
                        edgecolor=colour, linewidth=1.5, label=f"{label} (n={len(v):,})")
        ax.set(title=title, xlabel="score", ylabel="density")
        ax.legend(loc="upper left", fontsize=9)
        return _svg(fig)


def recall_curves_svg(curves: Sequence[tuple[str, np.ndarray, str, bool]], title: str) -> str:
    """Recall@k for k = 1..len(curve) of each [(head, recall, colour, chosen)]; the chosen head is
    drawn bold and its legend entry says so, with R@1 and R@10 (two decimals)."""
    curves = [c for c in curves if len(c[1])]
    if not curves:
        return _empty("No queries to plot.")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=SIZE_INCHES)
        for head, recall, colour, chosen in curves:
            k10 = min(10, len(recall))
            label = f"{head}{' (chosen)' if chosen else ''}: R@1 {recall[0]:.2f}, R@{k10} {recall[k10 - 1]:.2f}"
            ax.plot(np.arange(1, len(recall) + 1), recall, color=colour, linewidth=3 if chosen else 1.5,
                    linestyle="-" if chosen else "--", label=label)
        ax.set(title=title, xlabel="k (photos looked at)", ylabel="recall@k", ylim=(0, 1.02))
        ax.set_xlim(1, max(len(c[1]) for c in curves))
        ax.legend(loc="lower right", fontsize=9)
        return _svg(fig)
