"""Context checks that decide whether a rule's match really describes a child.

"baby elephant" (the next noun is an animal), "a mother dog and her babies" (an animal
owns the word), "the house is 5 years old" (the age belongs to a thing).  Works on one
text at a time through a lazily tokenised :class:`Doc`.
"""

from __future__ import annotations

import bisect
import re
from functools import lru_cache
from typing import Iterator

from tasks.text_safety.cues import any_cue
from tasks.text_safety.lexicon import Lexicon, Rule
from tasks.text_safety.numbers import parse_number, parse_ordinal, unit_in_years


_TOKEN = re.compile(r"[^\W_]+|['\u2019]s?(?![\w])|[.!?;:,()]")
_SENTENCE_END = frozenset(".!?;:")
_POSSESSIVE_TOKENS = frozenset({"'s", "'"})
_POSSESSIVE_END = re.compile(r"\s?['\u2019]s?$")
_SPECIFIC_DETERMINERS = frozenset(
    "my your his her our their the this that these those 's '".split()
)


class Doc:
    """Lazily tokenised text for the context checks (most texts never need it)."""

    __slots__ = ("text", "lowered", "_tokens", "_starts", "_ends")

    def __init__(self, text: str) -> None:
        self.text = text
        self.lowered = text.lower()
        self._tokens: list[tuple[int, int, str]] | None = None

    @property
    def tokens(self) -> list[tuple[int, int, str]]:
        """Word tokens as (start, end, lower-case form with ’ as '), character offsets into ``text``; computed
        on first use."""
        if self._tokens is None:
            self._tokens = [
                (m.start(), m.end(), m.group(0).lower().replace("\u2019", "'"))
                for m in _TOKEN.finditer(self.text)
            ]
            self._starts = [t[0] for t in self._tokens]
            self._ends = [t[1] for t in self._tokens]
        return self._tokens

    def first_at_or_after(self, pos: int) -> int:
        """Index of the first token starting at or after ``pos``."""
        self.tokens
        return bisect.bisect_left(self._starts, pos)

    def last_before(self, pos: int) -> int:
        """Index of the last token ending at or before ``pos`` (-1 if none)."""
        self.tokens
        return bisect.bisect_right(self._ends, pos) - 1


def _is_boundary(tok: str, lex: Lexicon) -> bool:
    return tok in _SENTENCE_END or tok in ",()" or tok in lex.function_words or tok in _POSSESSIVE_TOKENS


def _next_noun_in(doc: Doc, end: int, guard: frozenset[str], lex: Lexicon) -> bool:
    """Is the word a modifier of a following guarded noun ("baby elephant", "kid gloves")?"""
    toks = doc.tokens
    i = doc.first_at_or_after(end)
    for tok in (t for _, _, t in toks[i : i + 3]):
        if _is_boundary(tok, lex) or tok.isdigit():
            return False
        if _names_one_of(tok, guard):
            return True
        if tok in lex.people:
            return False
        # Looks like a verb ("babies crawl-ing", "kids play-s"): the child word was the subject.
        if tok.endswith(("ing", "ed")) or (tok.endswith("s") and not tok.endswith("ss")):
            return False
    return False


def _nearest_being_before(doc: Doc, index: int, guard: frozenset[str], lex: Lexicon) -> bool:
    """Walk back within the sentence to the nearest person or guarded creature."""
    for _, _, tok in reversed(doc.tokens[: index + 1]):
        if tok in _SENTENCE_END:
            return False
        if tok in guard:
            return True
        if tok in lex.people:
            return False
    return False


def _owner_in(doc: Doc, start: int, guard: frozenset[str], lex: Lexicon) -> bool:
    """"a mother dog and her (two) babies", "the goat's kids", "its young"."""
    toks = doc.tokens
    j = doc.last_before(start)
    skipped = 0
    while j >= 0 and skipped < 2:
        tok = toks[j][2]
        if _is_boundary(tok, lex) or tok in lex.people or tok in guard:
            break
        j -= 1  # an adjective or a number between the owner and the word
        skipped += 1
    if j < 0:
        return False
    tok = toks[j][2]
    if tok == "its":
        return True
    if tok in _POSSESSIVE_TOKENS:
        return j >= 1 and toks[j - 1][2] in guard
    if tok in ("her", "his", "their"):
        return _nearest_being_before(doc, j - 1, guard, lex)
    return False


def _subject_in(doc: Doc, start: int, guard: frozenset[str], lex: Lexicon) -> bool:
    """"the house is (only) 5 years old": the age belongs to the subject before the verb."""
    toks = doc.tokens
    j = doc.last_before(start)
    hedges = 0
    while j >= 0 and toks[j][2] in lex.hedges and hedges < 3:
        j -= 1
        hedges += 1
    if j < 0 or toks[j][2] not in lex.copulas:
        return False
    return _nearest_being_before(doc, j - 1, guard, lex)


_DETERMINERS = frozenset("a an the our my his her their its your".split())
_NAME_CONNECTORS = frozenset({"'s", "'", "t", "of", "the", "and", "ii", "&"})
_CHILD_MODIFIERS = frozenset("little young small wee tiny baby big new two three four five six seven eight nine ten".split())
_QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb"


def _appositive_in(doc: Doc, end: int, guard: frozenset[str], lex: Lexicon) -> bool:
    """"Max, 11, a senior beagle": the phrase right after the age renames the subject as an animal."""
    toks = doc.tokens
    i = doc.first_at_or_after(end)
    if i < len(toks) and toks[i][2] == ",":  # "Rex (8), a retired police dog"
        i += 1
    if i < len(toks) and toks[i][2] in _DETERMINERS:
        i += 1
    for _, _, tok in toks[i : i + 3]:
        if _names_one_of(tok, guard):
            return True
        if tok in lex.people or _is_boundary(tok, lex):
            return False
    return False


def _names_one_of(tok: str, guard: frozenset[str]) -> bool:
    """``tok`` is in ``guard`` or a compound ending in a longer entry: "goldfish", "wolfhound"."""
    if tok in guard:
        return True
    suffixes = _long_entries(guard)
    return bool(suffixes) and len(tok) > 4 and tok.endswith(suffixes)


@lru_cache(maxsize=64)
def _long_entries(guard: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(w for w in guard if len(w) >= 4 and w.isalpha()))


def _in_title(doc: Doc, start: int, end: int, lex: Lexicon) -> bool:
    """The match is part of a capitalised name ("Kid Creole", "Girls' Generation", "Baby Driver")
    and a noun of a work or brand ("album", "concert", "soundtrack") follows outside that name."""
    text, toks = doc.text, doc.tokens
    if not text[start : start + 1].isupper() or not lex.titles:
        return False
    first, last = doc.first_at_or_after(start), doc.last_before(end)

    def in_name(k: int) -> bool:
        s, _, tok = toks[k]
        return text[s].isupper() or tok in _NAME_CONNECTORS

    lo, hi = first, last
    while lo > 0 and in_name(lo - 1):
        lo -= 1
    while hi + 1 < len(toks) and in_name(hi + 1):
        hi += 1
    others = [
        tok for k, (s, _, tok) in enumerate(toks[lo : hi + 1], start=lo)
        if not first <= k <= last and text[s].isupper()
        and tok not in lex.people and tok not in lex.function_words and tok not in _CHILD_MODIFIERS
    ]
    if not others:
        return False
    quoted = toks[lo][0] > 0 and text[toks[lo][0] - 1] in _QUOTES
    outside = [tok for k, (_, _, tok) in enumerate(toks) if not lo <= k <= hi]
    return quoted or any(tok in lex.titles for tok in outside)


def _age_of(match: re.Match[str]) -> float | None:
    """Age in years stated by an age-rule match, or None when no number could be read."""
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    unit = next((v for k, v in groups.items() if k.startswith("unit_")), None)
    for key, value in groups.items():
        if key.startswith("nth_"):
            return parse_ordinal(value)
        if key.startswith("n_"):
            number = parse_number(value)
            return None if number is None else number * unit_in_years(unit)
    # "(a|an|{n})-{unit}-old" matched "a year old": one unit.
    return unit_in_years(unit) if unit else None


# Exceptions are phrases of a few words: looking this far around a match finds any that overlaps it.
_UNLESS_WINDOW = 100


def _cancelled(rule: Rule, text: str, start: int, end: int) -> bool:
    lo, hi = max(0, start - _UNLESS_WINDOW), min(len(text), end + _UNLESS_WINDOW)
    candidates = rule.unless
    window = text[lo:hi].lower()
    return any(
        s < end and start < e
        for cues, regex in candidates
        if any_cue(cues, window)
        for s, e in (u.span() for u in regex.finditer(text, lo, hi))
    )


def rule_hits(rule: Rule, doc: Doc, lex: Lexicon) -> Iterator[re.Match[str]]:
    """Matches of ``rule`` in ``doc`` that survive its exceptions and context checks (age at or above
    ``flag_below``, ``unless`` patterns, next noun, owner, nearest being, subject, appositive, titles), in
    text order."""
    for m in rule.regex.finditer(doc.text):
        if rule.kind == "age":
            age = _age_of(m)
            # An unreadable number blocks: the pattern already said "age".
            if age is not None and age >= rule.flag_below:
                continue
        if rule.unless and _cancelled(rule, doc.text, m.start(), m.end()):
            continue
        start, end = m.span()
        next_guard = rule.next_noun
        possessor = _POSSESSIVE_END.sub("", m.group(0))
        if possessor != m.group(0):
            # "a boy's shoe", "the girl's dog", "my children's toys": a particular
            # child exists.  Only a plural possessive without a determiner
            # ("a children's book", "kids' menu") merely classifies an object.
            before = doc.last_before(start)
            plural_possessor = possessor.lower().endswith(("s", "children"))
            if not plural_possessor or (before >= 0 and doc.tokens[before][2] in _SPECIFIC_DETERMINERS):
                next_guard = frozenset()
            else:
                next_guard = rule.next_noun_after_possessive
        if next_guard and _next_noun_in(doc, end, next_guard, lex):
            continue
        if rule.owner and _owner_in(doc, start, rule.owner, lex):
            continue
        if rule.nearest_being and _nearest_being_before(doc, doc.last_before(start), rule.nearest_being, lex):
            continue
        if rule.subject and _subject_in(doc, start, rule.subject, lex):
            continue
        if rule.appositive and _appositive_in(doc, end, rule.appositive, lex):
            continue
        if rule.in_titles and _in_title(doc, start, end, lex):
            continue
        yield m