"""Text safety classifier (issue 13): normalization, languages, context, queries, audit rows.

The labelled set is tests/fixtures/text_safety_cases.tsv (hand-written; bench/text_filter.py
reports the same set per kind with figures).  Here each kind must hold on its own.
"""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.compliance_text import (
    MAX_QUERY_CHARS,
    check_query,
    classify_many,
    classify_text,
    load_lexicon,
    normalize,
)

CASES_PATH = Path(__file__).parent / "fixtures" / "text_safety_cases.tsv"
with CASES_PATH.open(encoding="utf-8", newline="") as f:
    CASES = list(csv.DictReader(f, delimiter="\t"))
KINDS = sorted({(c["expected"], c["kind"]) for c in CASES})

# The field examples, verbatim.
FIELD_BLOCKED = [
    "a \u0441hild feeding ducks at a pond",
    "\uff4b\uff49\uff44\uff53 building a sandcastle",
    "chidlren running through a sprinkler",
    "babygirl in a knitted hat",
    "#toddlerlife at the farm",
    "\U0001f9d2 on a scooter in the park",
    "дети играют на площадке",
    "niñas jugando al fútbol",
    "Kinder beim Laternenumzug",
    "A little bo\u200by runs on the beach .",
    "bo\u00adys",
]
FIELD_ALLOWED = [
    "Kid Creole and the Coconuts album cover",
    "Girls' Generation K-pop concert crowd",
    "baby kale in a colander",
    "grilled baby squid with lemon",
    "a 7-year-old Honda Civic for sale",
    "Max, 11, a senior beagle at the vet",
    "a teen-sized wetsuit on a hanger",
    "the old girls' network meeting for brunch",
]


def test_case_file_has_enough_texts_on_both_sides():
    assert len(CASES) >= 400
    assert {c["expected"] for c in CASES} == {"block", "allow"}
    for expected in ("block", "allow"):
        assert sum(c["expected"] == expected for c in CASES) >= 150


@pytest.mark.parametrize("text", FIELD_BLOCKED)
def test_field_examples_blocked(text: str):
    v = classify_text(text)
    assert v.flagged, v


@pytest.mark.parametrize("text", FIELD_ALLOWED)
def test_field_examples_allowed(text: str):
    v = classify_text(text)
    assert not v.flagged, v


@pytest.mark.parametrize(("expected", "kind"), KINDS, ids=[f"{e}-{k}" for e, k in KINDS])
def test_each_kind_holds(expected: str, kind: str):
    texts = [c["text"] for c in CASES if c["expected"] == expected and c["kind"] == kind]
    verdicts = classify_many(texts)
    wrong = [(t, v.rule, v.match) for t, v in zip(texts, verdicts) if v.flagged != (expected == "block")]
    # At most one miss per kind (the known ones are listed in docs/compliance.md).
    assert len(wrong) <= max(1, len(texts) // 20), wrong


def test_stored_text_is_not_changed_but_normalized_form_is_reported():
    text = "a little bo\u200by"
    v = classify_text(text)
    assert v.flagged and v.normalized == "a little boy" and v.match == "boy"
    assert "format" in v.reason and text == "a little bo\u200by"


@pytest.mark.parametrize(
    ("text", "step", "expected"),
    [
        ("\uff42\uff4f\uff59", "nfkc", "boy"),
        ("gi\u2060rl", "format", "girl"),
        ("\u0441hild", "confusables", "child"),
        ("\U0001f476 asleep", "emoji", "baby asleep"),
        ("k1ds", "leet", "kids"),
        ("t.e.e.n", "spaced", "teen"),
        ("#babyboy", "split", "baby boy"),
        ("todler", "fuzzy", "toddler"),
    ],
)
def test_each_normalization_step(text: str, step: str, expected: str):
    norm = normalize(text, load_lexicon().head_words)
    assert norm.text == expected and step in norm.steps


@pytest.mark.parametrize("word", ["kidney", "cowboy", "boyfriend", "childless", "toys", "chill", "teeming"])
def test_real_words_are_not_bent_into_child_words(word: str):
    assert normalize(word, load_lexicon().head_words).text == word


_INVISIBLE = [c for c in map(chr, range(0x2000, 0x2070)) if unicodedata.category(c) == "Cf"] + ["\u00ad", "\ufeff"]


@settings(max_examples=60, deadline=None)
@given(word=st.sampled_from(["child", "kids", "boy", "girls", "toddler", "baby"]),
       chars=st.lists(st.sampled_from(_INVISIBLE), min_size=1, max_size=3), data=st.data())
def test_invisible_characters_anywhere_do_not_hide_a_child_word(word, chars, data):
    out = word
    for ch in chars:
        k = data.draw(st.integers(1, len(out) - 1))
        out = out[:k] + ch + out[k:]
    assert classify_text(f"a {out} at the park").flagged


@pytest.mark.parametrize(
    ("text", "language"),
    [("дети играют на площадке", "ru"), ("niños en la piscina", "es"), ("Kinder beim Laternenumzug", "de"),
     ("des enfants au bord de la mer", "fr"), ("bambini che giocano in spiaggia", "it"),
     ("crianças brincando na praia", "pt")],
)
def test_core_child_words_of_judged_languages(text: str, language: str):
    v = classify_text(text)
    assert v.flagged and v.language == language, v


@pytest.mark.parametrize("text", ["мальчика", "мальчикам", "детьми", "девочками", "малышей"])
def test_russian_inflections(text: str):
    assert classify_text(f"фото: {text} у реки").flagged


def test_unjudged_language_is_blocked_and_said():
    v = classify_text("dzieci bawią się na placu zabaw")  # Polish
    assert v.flagged and v.rule == "unsupported_language" and v.language == "pl"


@pytest.mark.parametrize("text", ["", "   ", "\t\n", None])
def test_blank_query_refused(text):
    q = check_query(text)
    assert q.action == "refuse" and q.code == "blank_query" and "empty" in q.message


def test_over_long_query_refused_but_still_judged():
    long_ok = "a dog on a beach " * 40
    assert len(long_ok) > MAX_QUERY_CHARS
    q = check_query(long_ok)
    assert q.action == "refuse" and q.code == "query_too_long"
    assert check_query(long_ok + "with a toddler").action == "disclaimer"


def test_query_actions():
    assert check_query("a dog runs on the beach").action == "search"
    assert check_query("a сhild on a swing").action == "disclaimer"
    q = check_query("perros corriendo en la playa")
    assert q.action == "refuse" and q.code == "not_english" and "English only" in q.message
    assert check_query("一只狗在海滩上奔跑").code == "unsupported_language"


def test_flag_texts_audit_rows_carry_normalized_form_and_reason():
    from tasks.compliance import flag_texts

    caps = flag_texts("r1", "caption", ["c1", "c2"], ["a little bo\u200by runs", "a dog runs"])
    assert caps["text"].to_list() == ["a little bo\u200by runs", "a dog runs"]
    assert caps["normalized"].to_list() == ["a little boy runs", "a dog runs"]
    assert caps["flagged"].to_list() == [True, False]
    qs = flag_texts("r1", "query", ["q1", "q2", "q3"], ["   ", "bo\u00adys at play", "a red car"])
    assert qs["flagged"].to_list() == [True, True, False]
    assert qs["rule"].to_list()[0] == "blank_query" and "empty" in qs["reason"].to_list()[0]
    assert qs["normalized"].to_list()[1] == "boys at play"


def test_nightly_table_gives_refused_query_one_row_with_its_reason():
    from tasks.rank import Ranked, build_results

    rows = np.array([0, 1])
    ranked = {2: Ranked(rows, np.array([0.9, 0.8]), np.array([0.7, 0.6]), np.array([np.nan, np.nan]),
                        np.array(["model (no descriptions)"] * 2, dtype=object))}
    frame, withheld = build_results("r1", ["q1", "q2", "q3"], ["   ", "a boy", "a dog"], [True, True, False],
                                    ["a.jpg", "b.jpg"], np.array([False, False]), ["", ""], ranked, 2,
                                    ["empty query: type a scene to search for", None, None])
    blank = frame.filter(frame["query_id"] == "q1")
    assert blank.height == 1 and blank["image"][0] is None and "empty" in blank["display"][0]
    assert frame.filter(frame["query_id"] == "q2")["blocked_reason"][0] == "query describes a child"
    assert frame.filter(frame["query_id"] == "q3").height == 2 and withheld.height == 0


def test_cli_and_flow_refuse_blank_queries_without_a_warehouse(tmp_path, capsys):
    from flows.search import main, run_search

    from flows.search import OUTPUT_KEYS

    rows = run_search(["   "], tmp_path / "no-warehouse")
    assert len(rows) == 1 and set(rows[0]) == {"query", "refused", *OUTPUT_KEYS}
    assert {k: v for k, v in rows[0].items() if v is not None} == {
        "query": "   ", "shown": False, "display": "empty query: type a scene to search for", "refused": "blank_query"}
    with pytest.raises(SystemExit):
        main(["   "])
    assert "empty query" in capsys.readouterr().err


def test_rules_use_no_private_regex_api():
    root = Path(__file__).resolve().parents[1] / "tasks"
    for path in [root / "compliance_text.py", *sorted((root / "text_safety").glob("*.py"))]:
        assert "_parser" not in path.read_text(encoding="utf-8"), path
