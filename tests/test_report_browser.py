"""The run report in a real browser (headless Chromium): thumbnails load from disk and fit
the page (ten per row at common widths), the disclaimer stands where the law hides a query or
a photo, the plots are drawn, numbers are written for people.  Fails (never skips) when
Chromium is missing: .ci/run installs it."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import duckdb
import pytest

from tasks.config import DISCLAIMER
from tiny_warehouse import TOP_K, tiny_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(page: Path, *args: str) -> str:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                              "--no-first-run", "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                              *args, page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert out.returncode == 0, f"chromium failed:\n{out.stderr[-2000:]}"
    return out.stdout


def body_attr(dom: str, name: str) -> str | None:
    m = re.search(r"<body[^>]*\s" + re.escape(name) + r'="([^"]*)"', dom)
    return m.group(1) if m else None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_report_renders_with_thumbnails_disclaimers_and_plots(run):
    dom = chromium(run.report, "--dump-dom")
    assert body_attr(dom, "data-run-id") == run.summary["run_id"]
    total, loaded = body_attr(dom, "data-thumbs-total"), body_attr(dom, "data-thumbs-loaded")
    assert total is not None, "the page's load script did not run"
    assert int(total) > 0 and loaded == total, f"{loaded} of {total} thumbnails loaded"

    with duckdb.connect(str(run.db), read_only=True) as con:
        blocked = con.execute("SELECT count(*) FROM latest_search_results WHERE rank IS NULL").fetchone()[0]
        hidden = con.execute("SELECT count(*) FROM latest_search_results WHERE rank IS NOT NULL AND NOT shown"
                             ).fetchone()[0]
        noted = con.execute("SELECT count(*) FROM latest_search_results WHERE note IS NOT NULL").fetchone()[0]
        restricted = [r[0] for r in con.execute("SELECT image FROM photo_flags WHERE restricted").fetchall()]
    # The tiny dataset has blocked queries and restricted photos; all its 8 queries are in the sample.
    # Results contract: restricted photos are withheld (never a row), a note says so once per query.
    assert blocked > 0 and hidden == 0 and noted > 0 and restricted
    assert dom.count('class="blocked-query"') == blocked
    assert dom.count(DISCLAIMER) == blocked + noted
    # A restricted photo is never pictured, not even as a thumbnail file.
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == int(total) and len(imgs) <= 8 * TOP_K
    assert not any(name in tag for tag in imgs for name in restricted)
    thumbs = {p.name for p in (run.report.parent / "thumbs").iterdir()}
    assert {re.search(r'src="thumbs/([^"]+)"', t).group(1) for t in imgs} == thumbs

    # Two plots (matplotlib SVG): score distributions and the retrieval curve, with their legends;
    # the curve's R@1 is the recorded recall@1 (same queries: all test queries, filter off).
    assert dom.count("<svg") == 2
    assert "matching: the query's own photo" in dom and "non-matching: every other photo" in dom
    with duckdb.connect(str(run.db), read_only=True) as con:
        r1 = con.execute("""SELECT value FROM latest_model_metrics WHERE head = ? AND metric = 'recall_at_1'
                            AND protocol = 'test_queries_filter_off'""", [run.summary["head"]]).fetchone()[0]
    assert f"{run.summary['head']} (chosen): R@1 {r1:.2f}" in dom

    # What changed opens the page; numbers are written for people: no long floats, no raw JSON.
    assert dom.index('id="changes"') < dom.index("Sample of saved queries")
    assert "What changed since the previous published run" in dom
    text = re.sub(r"<svg.*?</svg>|<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    assert not re.search(r"\d\.\d{4,}", text), re.findall(r".{40}\d\.\d{4,}.{20}", text)
    assert "{&#34;" not in dom and '{"' not in text
    # Links to the model card and exports resolve from the page's folder.
    for href in ("model_card.md", "model_card.json", "../../exports/search_results.parquet"):
        assert f'href="{href}"' in dom and (run.report.parent / href).exists()


def test_report_warns_when_thumbnails_are_missing(run, tmp_path):
    # The same page without its thumbs/ folder: the check must see the failure, and say so.
    lonely = tmp_path / "index.html"
    shutil.copy(run.report, lonely)
    dom = chromium(lonely, "--dump-dom")
    assert int(body_attr(dom, "data-thumbs-total")) > 0
    assert body_attr(dom, "data-thumbs-loaded") == "0"
    assert "thumbnails did not load" in dom


@pytest.mark.parametrize("width", [1024, 1280, 1920])
def test_every_result_photo_is_visible_at_common_widths(run, width):
    # The page measures each result row's photos after layout; none may stick out of its row.
    dom = chromium(run.report, f"--window-size={width},1200", "--dump-dom")
    figures, clipped = body_attr(dom, "data-figures"), body_attr(dom, "data-figures-clipped")
    assert figures is not None and int(figures) > 0
    assert clipped == "0", f"{clipped} of {figures} photos cut off at {width} px"


def test_ten_photos_fit_one_row(run, tmp_path):
    # The tiny run has five per query: a copy of its page with rows of ten (the nightly top_k).
    page = run.report.read_text()
    doubled = re.sub(r'(<div class="row">)(.*?)(</div></div>)', lambda m: m.group(1) + m.group(2) * 2 + m.group(3),
                     page, flags=re.S)
    copy = run.report.parent / "ten-per-row.html"
    copy.write_text(doubled)
    try:
        for width in (1280, 1920):
            dom = chromium(copy, f"--window-size={width},1200", "--dump-dom")
            assert body_attr(dom, "data-figures-clipped") == "0", width
    finally:
        copy.unlink()


def test_report_screenshot(run, tmp_path):
    shot = tmp_path / "report.png"
    chromium(run.report, "--window-size=1280,1600", f"--screenshot={shot}", "--hide-scrollbars")
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
