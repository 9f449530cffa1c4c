"""Numbers, ordinals and age units as the lexicon's {n}, {nth} and {unit} placeholders read them.

``parse_number("five to seven") -> 5.0``; ``unit_in_years("months") -> 1/12``.  Pure
functions over strings; no state.
"""

from __future__ import annotations

import re
from typing import Iterable


_UNIT_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS_WORDS = "twenty thirty forty fourty fifty sixty seventy eighty ninety".split()
_TENS_VALUE = {w: 20 + 10 * i for i, w in enumerate(_TENS_WORDS[:3])} | {"fourty": 40} | {
    w: 50 + 10 * i for i, w in enumerate(_TENS_WORDS[4:])
}
_NUMBER_VALUE = {w: i for i, w in enumerate(_UNIT_WORDS)} | _TENS_VALUE | {
    "hundred": 100,
    "thousand": 1000,
    "dozen": 12,
}
# Vague counts still tell us the age is small: "a few months old" is a baby.
_VAGUE_VALUE = {"few": 3, "couple": 2, "several": 5}

_ORDINAL_UNITS = (
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
    "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
).split()
_ORDINAL_TENS = "twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split()
_ORDINAL_VALUE = {w: i for i, w in enumerate(_ORDINAL_UNITS)} | {
    w: 20 + 10 * i for i, w in enumerate(_ORDINAL_TENS)
}

_SEP = r"[\s\-\u2010-\u2015]"
SEP_REQUIRED = _SEP + "+"
SEP_OPTIONAL = _SEP + "*"
APOSTROPHE = r"['\u2019]?"


def _alternation(words: Iterable[str]) -> str:
    # Longest first so that "seventeen" wins over "seven".
    return "|".join(sorted({re.escape(w) for w in words}, key=len, reverse=True))


_UNITS_RE = _alternation(_UNIT_WORDS[1:10])
_TENS_RE = _alternation(_TENS_WORDS)
_NUMBER_WORD_RE = (
    rf"(?:(?:{_TENS_RE})(?:{SEP_OPTIONAL}(?:{_UNITS_RE}))?|{_alternation(_UNIT_WORDS + ['hundred', 'thousand', 'dozen'])})"
    r"(?![a-z])"
)
_DIGITS_RE = r"(?<![\d.,/])\d{1,4}(?:\.\d+)?(?![\d])"
_FRACTION_RE = r"(?:[\s-]*(?:and[\s-]+a[\s-]+half|1/2|\u00bd)|\u00bd)?"
_VAGUE_RE = r"(?:a\s+)?(?:few|couple(?:\s+of)?)(?![a-z])|several(?![a-z])"
_ONE_NUMBER_RE = rf"(?:{_DIGITS_RE}|{_NUMBER_WORD_RE}|{_VAGUE_RE}){_FRACTION_RE}"
_RANGE_SEP_RE = r"\s*(?:-|\u2013|\u2014|to|or|and|/)\s*"
NUMBER_RE = rf"{_ONE_NUMBER_RE}(?:{_RANGE_SEP_RE}{_ONE_NUMBER_RE})?"
ORDINAL_RE = (
    rf"(?:(?<![\d.,])\d{{1,3}}\s*(?:st|nd|rd|th)(?![a-z])"
    rf"|(?:{_alternation(_TENS_WORDS)}){SEP_OPTIONAL}(?:{_alternation(_ORDINAL_UNITS[1:10])})"
    rf"|{_alternation(_ORDINAL_UNITS + _ORDINAL_TENS)})"
)
UNIT_RE = r"(?:years?|yrs?\.?|months?|mos?|mths?|weeks?|wks?|days?|hours?|hrs?)"

# Every {n} match contains one of these strings, every {nth} match one of the second set:
# a cheap test that lets an age rule skip a text without a number.
NUMBER_CUES = frozenset("0123456789") | frozenset(_UNIT_WORDS + _TENS_WORDS + ["hundred", "thousand", "dozen"]) | frozenset(
    ["few", "couple", "several", "\u00bd"])
ORDINAL_CUES = frozenset("0123456789") | frozenset(_ORDINAL_UNITS + _ORDINAL_TENS)

_ONE_NUMBER_PARSE = re.compile(_ONE_NUMBER_RE, re.IGNORECASE)
_WORD_SPLIT = re.compile(r"[\s\-\u2010-\u2015]+")


def _parse_one_number(text: str) -> float | None:
    text = text.lower().strip()
    half = 0.0
    text = re.sub(r"[\s-]+", " ", text)
    for suffix in ("and a half", "1/2", "\u00bd"):
        if text.endswith(suffix):
            half = 0.5
            text = text[: -len(suffix)].strip(" -")
            break
    if not text:
        return half or None
    try:
        return float(text) + half
    except ValueError:
        pass
    words = [w for w in _WORD_SPLIT.split(text) if w and w not in ("a", "of")]
    if len(words) == 1 and words[0] in _VAGUE_VALUE:
        return _VAGUE_VALUE[words[0]] + half
    total = 0.0
    for word in words:
        if word not in _NUMBER_VALUE:
            return None
        total += _NUMBER_VALUE[word]
    return total + half


def parse_number(text: str) -> float | None:
    """Smallest number in "5", "five", "twenty-one", "2 1/2", "a few", "5-7", "five to seven"."""
    values = [_parse_one_number(m.group(0)) for m in _ONE_NUMBER_PARSE.finditer(text)]
    values = [v for v in values if v is not None]
    return min(values) if values else None


def parse_ordinal(text: str) -> float | None:
    """The value of an ordinal: leading digits ("21st" -> 21.0) or ordinal and tens words ("twenty-first" ->
    21.0); None when a word is neither."""
    text = text.lower().strip()
    digits = re.match(r"(\d+)", text)
    if digits:
        return float(digits.group(1))
    total = 0.0
    for word in _WORD_SPLIT.split(text):
        if word in _ORDINAL_VALUE:
            total += _ORDINAL_VALUE[word]
        elif word in _TENS_VALUE:
            total += _TENS_VALUE[word]
        elif word:
            return None
    return total


def unit_in_years(unit: str | None) -> float:
    """Years per ``unit`` (year, month, week, day, else hour), by its first letters; None counts as years."""
    unit = (unit or "year").lower()
    if unit.startswith("y"):
        return 1.0
    if unit.startswith("mo") or unit.startswith("mt"):
        return 1 / 12
    if unit.startswith("w"):
        return 1 / 52
    if unit.startswith("d"):
        return 1 / 365
    return 1 / 8760  # hours
