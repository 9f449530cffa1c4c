"""Public entry of the text safety classifier (children under 16): one API for captions,
photo descriptions, saved queries and ad-hoc queries.

    classify_text("a сhild feeding ducks") -> TextVerdict(flagged=True, rule="child_noun", match="child",
                                                         normalized="a child feeding ducks", language="en", ...)
    classify_many(texts) -> list[TextVerdict]
    check_query("   ") -> QueryVerdict(action="refuse", message="empty query: ...")

The implementation lives in ``tasks/text_safety/`` (normalize, language, lexicon, context,
classifier); the words and rules in ``compliance/child_lexicon.toml``.  Policy (where
the line between blocked and allowed is) is in docs/compliance.md, "Text filter".
"""

from __future__ import annotations

from tasks.text_safety.classifier import (
    MAX_QUERY_CHARS,
    REFUSALS,
    QueryVerdict,
    TextVerdict,
    check_query,
    classify_many,
    classify_text,
    find_matches,
)
from tasks.text_safety.lexicon import (
    DEFAULT_LEXICON_PATH,
    Lexicon,
    LexiconError,
    Rule,
    lexicon_version,
    load_lexicon,
)
from tasks.text_safety.normalize import Normalized, normalize
from tasks.text_safety.numbers import parse_number, parse_ordinal

__all__ = [
    "DEFAULT_LEXICON_PATH",
    "Lexicon",
    "LexiconError",
    "MAX_QUERY_CHARS",
    "Normalized",
    "QueryVerdict",
    "REFUSALS",
    "Rule",
    "TextVerdict",
    "check_query",
    "classify_many",
    "classify_text",
    "find_matches",
    "lexicon_version",
    "load_lexicon",
    "normalize",
    "parse_number",
    "parse_ordinal",
]


def __getattr__(name: str) -> str:
    # LEXICON_VERSION is computed on access so that an edited file is picked up.
    if name == "LEXICON_VERSION":
        return lexicon_version()
    raise AttributeError(name)
