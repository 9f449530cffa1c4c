"""Figures in the README and docs are quoted from bench/results, never typed by hand: every
quote block equals what ``bench/quote_results.py`` makes of its results file now."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import quote_results  # noqa: E402


def test_readme_quotes_the_benchmark_results():
    text = (ROOT / "README.md").read_text()
    blocks = list(quote_results.BLOCK.finditer(text))
    assert len(blocks) >= 3, "the README's measured figures should come from quote blocks"
    for m in blocks:
        assert (ROOT / m["src"]).exists(), m["src"]


def test_every_quote_block_is_up_to_date():
    for doc in quote_results.DOCS:
        text = doc.read_text()
        assert quote_results.rewrite(text, doc.parent) == text, (
            f"{doc.relative_to(ROOT)} quotes an older results file: run python bench/quote_results.py")


def test_a_section_quote_takes_only_that_section_and_names_its_source(tmp_path, monkeypatch):
    (tmp_path / "r.md").write_text("# Title\n\nDate: 2026-01-01  \nCommand: `python bench/x.py`\n\n"
                                   "## A\n\nfirst | 1\n\n## B\n\nsecond | 2\n")
    monkeypatch.setattr(quote_results, "ROOT", tmp_path)
    out = quote_results.rewrite("x\n<!-- quote r.md#B -->\nold 3\n<!-- end quote -->\ny\n", tmp_path)
    assert "second | 2" in out and "first" not in out and "old 3" not in out
    assert "[`r.md`](r.md)" in out and "2026-01-01" in out and "python bench/x.py" in out
    whole = quote_results.rewrite("<!-- quote r.md -->\n<!-- end quote -->\n", tmp_path)
    assert "#### A" in whole and "#### B" in whole and "# Title" not in whole
