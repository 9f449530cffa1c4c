"""Benchmark of the text safety classifier: recall and false-block rate per kind, texts/second.

    python bench/text_filter.py [--baseline REV] [--cases tests/fixtures/text_safety_cases.tsv]

Labels: tests/fixtures/text_safety_cases.tsv (hand-written; ``expected`` block/allow, ``kind``,
``split`` dev/holdout; the holdout third was written with the rest and set aside; its
figures from before any of it was seen are in bench/results/text_filter_holdout_first_look.md).  For each kind: share blocked (recall for child kinds, false-block rate for
look-alike kinds).  Real data (data/with_sense, when present): how many train captions and
test queries are flagged, and the throughput on them.  ``--baseline REV`` runs the same on
the classifier and lexicon of a git revision (the BEFORE column).

Writes bench/results/text_filter.json and bench/results/text_filter.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = ROOT / "tests" / "fixtures" / "text_safety_cases.tsv"
DATA = ROOT / "data" / "with_sense"
OUT = ROOT / "bench" / "results"


def load_cases(path: Path = CASES) -> pl.DataFrame:
    return pl.read_csv(path, separator="\t", quote_char='"', schema_overrides={"text": pl.String})


def _baseline_classifier(rev: str):
    """classify_many of tasks/compliance_text.py + its lexicon at ``rev`` (a single-module version)."""
    tmp = Path(tempfile.mkdtemp(prefix="textfilter-baseline-"))
    src = subprocess.run(["git", "show", f"{rev}:tasks/compliance_text.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    toml = subprocess.run(["git", "show", f"{rev}:compliance/child_lexicon.toml"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    (tmp / "baseline_compliance_text.py").write_text(src, encoding="utf-8")
    (tmp / "lexicon.toml").write_bytes(toml)
    spec = importlib.util.spec_from_file_location("baseline_compliance_text", tmp / "baseline_compliance_text.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    lex = module.load_lexicon(tmp / "lexicon.toml")
    return lambda texts: module.classify_many(texts, lex)


def _current_classifier():
    from tasks.compliance_text import classify_many, load_lexicon

    lex = load_lexicon()
    return lambda texts: classify_many(texts, lex)


def per_kind(cases: pl.DataFrame, flagged: list[bool]) -> pl.DataFrame:
    frame = cases.with_columns(flagged=pl.Series(flagged))
    rows = frame.group_by("expected", "kind").agg(
        n=pl.len(), blocked=pl.col("flagged").sum(),
        holdout_n=(pl.col("split") == "holdout").sum(),
        holdout_blocked=(pl.col("flagged") & (pl.col("split") == "holdout")).sum(),
    )
    return rows.with_columns(share_blocked=pl.col("blocked") / pl.col("n")).sort("expected", "kind", descending=[True, False])


def summary(table: pl.DataFrame) -> dict:
    out = {}
    for expected, name in (("block", "recall"), ("allow", "false_block_rate")):
        part = table.filter(pl.col("expected") == expected)
        out[name] = float(part["blocked"].sum() / part["n"].sum())
        out[f"holdout_{name}"] = float(part["holdout_blocked"].sum() / max(1, part["holdout_n"].sum()))
    return out


def real_data(classify) -> dict | None:
    if not (DATA / "train_dataset.csv").exists():
        return None
    train = pl.read_csv(DATA / "train_dataset.csv")
    test = pl.read_csv(DATA / "test_queries.csv", separator="|")
    captions = train["query_text"].to_list()
    unique = sorted(set(captions))
    queries = test["query_text"].to_list()
    start = time.perf_counter()
    cap_flags = dict(zip(unique, (v.flagged for v in classify(unique))))
    cap_seconds = time.perf_counter() - start
    q_flags = [v.flagged for v in classify(queries)]
    test = test.with_columns(flag=pl.Series(q_flags))
    return {
        "train_caption_rows": len(captions),
        "train_caption_rows_flagged": sum(cap_flags[c] for c in captions),
        "unique_captions": len(unique),
        "unique_captions_flagged": sum(cap_flags.values()),
        "test_queries": len(queries),
        "test_queries_flagged": sum(q_flags),
        "test_photos_with_flagged_query": int(test.group_by("image").agg(pl.col("flag").any())["flag"].sum()),
        "caption_texts_per_second_warm": round(len(unique) / cap_seconds, 1),
    }


def throughput(classify, texts: list[str]) -> float:
    # Distinct texts (classify_many judges a repeated text once): suffixes make each unique.
    batch = [f"{t} #{i}" for i, t in enumerate(texts)]
    start = time.perf_counter()
    classify(batch)
    return round(len(batch) / (time.perf_counter() - start), 1)


def evaluate(classify, cases: pl.DataFrame) -> dict:
    start = time.perf_counter()
    verdicts = classify(cases["text"].to_list())
    first_call = time.perf_counter() - start
    table = per_kind(cases, [v.flagged for v in verdicts])
    failures = [
        {"text": t, "expected": e, "kind": k, "rule": v.rule, "match": v.match,
         "normalized": getattr(v, "normalized", None)}
        for t, e, k, s, v in zip(cases["text"], cases["expected"], cases["kind"], cases["split"], verdicts)
        if (e == "block") != v.flagged and s == "dev"
    ]
    return {"per_kind": table.to_dicts(), "summary": summary(table), "failures_dev": failures,
            "first_call_seconds": round(first_call, 2)}


def markdown(result: dict) -> str:
    after = {(r["expected"], r["kind"]): r for r in result["after"]["per_kind"]}
    before = {(r["expected"], r["kind"]): r for r in result.get("before", {}).get("per_kind", [])}
    lines = [
        "# Text safety classifier benchmark",
        "",
        f"- date: {result['date']}",
        f"- machine: {result['machine']}",
        f"- command: `{result['command']}`",
        f"- labels: {result['cases']} ({result['n_cases']} hand-written texts; holdout = a third set aside; its figures before any of it was seen: text_filter_holdout_first_look.md)",
        "",
        "| side | kind | n | blocked before | blocked after | after, holdout only |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in after.items():
        b = before.get(key)
        btxt = f"{b['blocked']}/{b['n']} ({b['share_blocked']:.0%})" if b else "-"
        hold = f"{r['holdout_blocked']}/{r['holdout_n']}" if r["holdout_n"] else "-"
        side = "child (want 100%)" if key[0] == "block" else "look-alike (want 0%)"
        lines.append(f"| {side} | {key[1]} | {r['n']} | {btxt} | {r['blocked']}/{r['n']} ({r['share_blocked']:.0%}) | {hold} |")
    lines += ["", "| summary | before | after |", "|---|---|---|"]
    for name in ("recall", "false_block_rate", "holdout_recall", "holdout_false_block_rate"):
        b = result.get("before", {}).get("summary", {}).get(name)
        lines.append(f"| {name} | {'-' if b is None else f'{b:.1%}'} | {result['after']['summary'][name]:.1%} |")
    real_a, real_b = result["after"].get("real_data"), result.get("before", {}).get("real_data")
    if real_a:
        lines += ["", "Real data (data/with_sense):", "", "| | before | after |", "|---|---|---|"]
        for key, value in real_a.items():
            lines.append(f"| {key} | {real_b.get(key, '-') if real_b else '-'} | {value} |")
    lines += ["", f"Throughput (distinct texts, warm, one process): {result['after']['texts_per_second']} texts/s after"
              + (f", {result['before']['texts_per_second']} before" if "before" in result else "") + ".",
              f"First call including loading the lexicon and word tables: {result['after']['first_call_seconds']} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="git revision whose classifier is the BEFORE column")
    p.add_argument("--cases", type=Path, default=CASES)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--show-failures", action="store_true", help="print the dev-split texts judged wrongly")
    a = p.parse_args(argv)
    cases = load_cases(a.cases)
    speed_texts = cases["text"].to_list() * 10
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPU, Python {platform.python_version()}, "
                   f"load average {os.getloadavg()[0]:.1f} at start (other work shares the cores)",
        "command": "python bench/text_filter.py" + (f" --baseline {a.baseline}" if a.baseline else ""),
        "cases": str(a.cases.relative_to(ROOT)) if a.cases.is_relative_to(ROOT) else str(a.cases),
        "n_cases": cases.height,
    }
    runs = [("after", _current_classifier())]
    if a.baseline:
        runs.append(("before", _baseline_classifier(a.baseline)))
    for name, classify in runs:
        res = evaluate(classify, cases)
        res["texts_per_second"] = throughput(classify, speed_texts)
        res["real_data"] = real_data(classify)
        result[name] = res
        print(f"{name}: {res['summary']}  {res['texts_per_second']} texts/s  real: {res['real_data']}")
    if a.show_failures:
        for f in result["after"]["failures_dev"]:
            print(f"  {f['expected']:5} {f['kind']:13} {f['text']!r} -> {f['rule']} {f['match']!r} | {f['normalized']!r}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "text_filter.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    (a.out / "text_filter.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
