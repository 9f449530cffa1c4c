"""The text safety classifier: does a text describe a child under 16?  One API for captions,
photo descriptions, saved queries and ad-hoc queries.

``classify_text(text) -> TextVerdict``: the text is normalized (``normalize.py``), its
language detected (``language.py``), then the English lexicon rules (``lexicon.py`` +
``context.py``) and the core child words of Russian, Spanish, German, French, Italian and
Portuguese are applied to the normalized form.  A text in a language the filter cannot
read is blocked (``rule="unsupported_language"``): the law comes first.  Every verdict
carries the normalized form that was judged, the language, and a one-line reason.

``check_query(text) -> QueryVerdict`` adds what only a search query needs: blank and
over-long queries are refused, and a query the relevance model cannot serve (not English)
gets a clear answer instead of photos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from tasks.text_safety.context import Doc, rule_hits
from tasks.text_safety.language import LANGUAGE_NAMES, LanguageGuess, detect_language, foreign_child_word
from tasks.text_safety.cues import cues_present
from tasks.text_safety.lexicon import Lexicon, load_lexicon
from tasks.text_safety.normalize import normalize

__all__ = ["TextVerdict", "QueryVerdict", "classify_text", "classify_many", "find_matches", "check_query",
           "MAX_QUERY_CHARS", "REFUSALS"]

# Longer than any scene description a person types (the real test queries are < 200
# characters); beyond it a "query" is pasted text, which the text encoder would truncate
# at 256 tokens anyway, so part of it would be ignored by the ranking.
MAX_QUERY_CHARS = 500
JUDGED_LANGUAGES = ("en", "ru", "es", "de", "fr", "it", "pt")
SEARCH_LANGUAGES = ("en",)
# lingua's short-text guesses mix close languages (Russian/Ukrainian, Spanish/Catalan): a
# text is "unsupported" only when the judged languages together stay under this share.
UNJUDGED_SHARE = 0.3
NOT_ENGLISH_BELOW = 0.2


@dataclass(frozen=True)
class TextVerdict:
    """``flagged``: the text describes a child under 16 (or cannot be judged); ``rule``: the
    lexicon rule id that fired; ``match``: the words of the normalized text that fired it.
    The extra fields are for the audit and do not take part in equality."""

    flagged: bool
    rule: str | None
    match: str | None
    normalized: str | None = field(default=None, compare=False)
    language: str | None = field(default=None, compare=False)
    reason: str | None = field(default=None, compare=False)


def _english_hit(text: str, lex: Lexicon) -> tuple[str, str] | None:
    doc = Doc(text)
    for rule in lex.rules:
        if not cues_present(rule, doc.lowered):
            continue
        for m in rule_hits(rule, doc, lex):
            return rule.id, m.group(0)
    return None


def classify_text(text: str, lexicon: Lexicon | None = None) -> TextVerdict:
    """Judge one text.  Never raises on any ``str``; a non-string or empty text is not flagged."""
    if not text or not isinstance(text, str):
        return TextVerdict(False, None, None, text if isinstance(text, str) else None, None, "empty text")
    lex = lexicon or load_lexicon()
    norm = normalize(text, lex.head_words)
    judged = norm.text
    changed = f" (normalized: {', '.join(norm.steps)})" if norm.steps else ""
    guess = detect_language(judged)
    hit = _english_hit(judged, lex)
    if hit is not None:
        rule, match = hit
        return TextVerdict(True, rule, match, judged, guess.code, f"rule {rule} matched {match!r}{changed}")
    foreign = foreign_child_word(judged, guess, lex.foreign)
    if foreign is not None:
        lang, word = foreign
        return TextVerdict(True, f"child_word_{lang}", word, judged, guess.code,
                           f"{LANGUAGE_NAMES[lang]} child word {word!r}{changed}")
    if _unsupported(guess):
        return TextVerdict(True, "unsupported_language", None, judged, guess.code,
                           f"language {guess.code} ({guess.confidence:.2f}) cannot be judged; blocked")
    return TextVerdict(False, None, None, judged, guess.code, "no rule matched" + changed)


def _unsupported(guess: LanguageGuess) -> bool:
    # Only a confident guess blocks: a short English text with names may look foreign.
    # Russian text can look Ukrainian or Bulgarian: what counts is how likely a judged language is.
    return guess.method == "lingua" and guess.code not in JUDGED_LANGUAGES and guess.judged_share < UNJUDGED_SHARE


def _confident_foreign(text: str) -> bool:
    # A short English query that fails the vocabulary test can still look foreign to lingua:
    # refuse only when English itself is unlikely.
    guess = detect_language(text)
    return guess.code not in SEARCH_LANGUAGES and guess.english < NOT_ENGLISH_BELOW


def classify_many(texts: Iterable[str], lexicon: Lexicon | None = None) -> list[TextVerdict]:
    """``classify_text`` over a list; repeated texts are judged once."""
    lex = lexicon or load_lexicon()
    seen: dict[str, TextVerdict] = {}
    out = []
    for t in texts:
        if isinstance(t, str) and t in seen:
            out.append(seen[t])
            continue
        v = classify_text(t, lex)
        if isinstance(t, str):
            seen[t] = v
        out.append(v)
    return out


def find_matches(text: str, lexicon: Lexicon | None = None) -> list[TextVerdict]:
    """Every (rule, span) of the English rules that fires on the normalized text, for audits."""
    if not text or not isinstance(text, str):
        return []
    lex = lexicon or load_lexicon()
    judged = normalize(text, lex.head_words).text
    doc = Doc(judged)
    return [
        TextVerdict(True, rule.id, m.group(0), judged)
        for rule in lex.rules
        if cues_present(rule, doc.lowered)
        for m in rule_hits(rule, doc, lex)
    ]


@dataclass(frozen=True)
class QueryVerdict:
    """What to do with one search query.

    ``action``: "search" (rank photos), "disclaimer" (describes a child: the legal
    disclaimer, no photos) or "refuse" (no photos; ``code`` is one of ``REFUSALS`` and
    ``message`` says why in a sentence a user can act on).
    """

    action: str
    code: str | None
    message: str | None
    verdict: TextVerdict | None

    @property
    def searchable(self) -> bool:
        """True when the query may be answered with photos (``action == 'search'``)."""
        return self.action == "search"


REFUSALS = ("blank_query", "query_too_long", "unsupported_language", "not_english")


def check_query(text: str | None, lexicon: Lexicon | None = None) -> QueryVerdict:
    """Decide how a query is answered.  Order: blank, describes a child (judged in full,
    whatever its length), too long, a language that cannot be judged, not English."""
    if text is None or not str(text).strip():
        return QueryVerdict("refuse", "blank_query", "empty query: type a scene to search for", None)
    text = str(text)
    v = classify_text(text, lexicon)
    if v.flagged and v.rule != "unsupported_language":
        return QueryVerdict("disclaimer", None, None, v)
    if len(text) > MAX_QUERY_CHARS:
        return QueryVerdict("refuse", "query_too_long",
                            f"query too long: {len(text)} characters, at most {MAX_QUERY_CHARS}", v)
    if v.rule == "unsupported_language":
        return QueryVerdict("refuse", "unsupported_language",
                            f"this query's language ({v.language}) cannot be checked or searched; search in English", v)
    if v.language == "und":
        return QueryVerdict("refuse", "blank_query", "query has no words to search for", v)
    if v.language not in SEARCH_LANGUAGES and _confident_foreign(v.normalized or text):
        name = LANGUAGE_NAMES.get(v.language or "", v.language)
        return QueryVerdict("refuse", "not_english", f"search understands English only; this query looks {name}", v)
    return QueryVerdict("search", None, None, v)
