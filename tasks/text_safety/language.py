"""Which language a text is in, and the core child words of the languages the filter reads.

``detect_language(text) -> LanguageGuess``: a cheap English test first (the share of words
that are common English in wordsegment's unigram table), then, only for texts that fail
it, the offline ``lingua-language-detector`` (n-gram models shipped inside the wheel;
the most accurate of the offline detectors on short texts; models load on first use).

``foreign_child_word(text, guess, words) -> (language, word) | None``: the words listed under
``[languages.<code>]`` in the lexicon TOML, matched per token through the Snowball stemmer
of that language (``snowballstemmer``), so Russian "детей" / "детям" / "детьми" match
"дети".  German compounds match on their last part ("Schulkinder").  A token counts when
the text was detected as that language, or when the token is not a common English word
("niños" inside an English sentence counts; "kinder" in "a kinder world" does not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from tasks.text_safety.normalize import english_count

__all__ = ["LanguageGuess", "ForeignLexicon", "detect_language", "foreign_child_word", "LANGUAGE_NAMES"]

LANGUAGE_NAMES = {
    "en": "English", "ru": "Russian", "es": "Spanish", "de": "German", "fr": "French",
    "it": "Italian", "pt": "Portuguese", "und": "undetermined",
}
_JUDGED = frozenset({"en", "ru", "es", "de", "fr", "it", "pt"})
_STEMMERS = {"ru": "russian", "es": "spanish", "de": "german", "fr": "french", "it": "italian", "pt": "portuguese"}
# Languages lingua weighs against each other: the judged ones plus the most common others,
# so that Polish or Chinese is named as such rather than forced onto the nearest judged one.
_CANDIDATES = (
    "ENGLISH RUSSIAN SPANISH GERMAN FRENCH ITALIAN PORTUGUESE POLISH DUTCH TURKISH UKRAINIAN "
    "CHINESE JAPANESE KOREAN ARABIC HINDI SWEDISH CZECH GREEK HEBREW INDONESIAN VIETNAMESE "
    "PERSIAN ROMANIAN HUNGARIAN FINNISH DANISH BOKMAL"
).split()
ENGLISH_SHARE = 0.9  # share of common-English words above which a text is English without lingua
_ENGLISH_WORD_COUNT = 500_000
_TOKEN = re.compile(r"[^\W\d_]+")
# With one of these a text is English when half its words are common English: "a snowboarder".
_ENGLISH_FUNCTION_WORDS = frozenset(
    "a an the of in on at with and is are was to for his her their its from by while into "
    "through near over under up down as it this that one two three some".split()
)


@dataclass(frozen=True)
class LanguageGuess:
    """The language a text is in, how sure the guess is, and how it was made."""

    code: str          # ISO 639-1 ("en", "ru", ...), or "und" for a text without letters
    confidence: float  # 0..1; 1.0 for the vocabulary test
    method: str        # "vocabulary", "lingua" or "none"
    judged_share: float = 1.0  # lingua's confidence summed over the languages the filter reads
    english: float = 1.0  # lingua's confidence that the text is English


@lru_cache(maxsize=1)
def _detector():
    from lingua import Language, LanguageDetectorBuilder

    return (LanguageDetectorBuilder.from_languages(*(getattr(Language, n) for n in _CANDIDATES))
            .with_low_accuracy_mode().build())


def detect_language(text: str) -> LanguageGuess:
    """Language of a (normalized) text; English texts are recognised without loading lingua."""
    words = _TOKEN.findall(text.lower())
    if not words:
        return LanguageGuess("und", 0.0, "none")
    common = sum(w.isascii() and english_count(w) >= _ENGLISH_WORD_COUNT for w in words)
    has_function_word = any(w in _ENGLISH_FUNCTION_WORDS for w in words)
    if common >= (0.5 if has_function_word else ENGLISH_SHARE) * len(words):
        return LanguageGuess("en", 1.0, "vocabulary")
    values = _detector().compute_language_confidence_values(text)
    if not values:
        return LanguageGuess("und", 0.0, "lingua", 0.0, 0.0)
    top = values[0]
    judged = sum(float(v.value) for v in values if v.language.iso_code_639_1.name.lower() in _JUDGED)
    english = sum(float(v.value) for v in values if v.language.iso_code_639_1.name == "EN")
    return LanguageGuess(top.language.iso_code_639_1.name.lower(), float(top.value), "lingua", judged, english)


@dataclass(frozen=True)
class ForeignLexicon:
    """Child words of the non-English languages the filter reads, as listed and as Snowball stems."""

    words: dict[str, frozenset[str]]  # language -> listed forms, lower case
    stems: dict[str, frozenset[str]]  # language -> their Snowball stems
    prefixes: frozenset[str] = frozenset()  # first two letters of every word and stem: a cheap pre-check
    loan_phrases: tuple[str, ...] = ()  # "enfant terrible": removed before matching


@lru_cache(maxsize=8)
def _stemmer(lang: str):
    import snowballstemmer

    return snowballstemmer.stemmer(_STEMMERS[lang])


def _norm(word: str) -> str:
    return word.lower().replace("ё", "е")


def build_foreign_lexicon(raw: dict[str, list[str]]) -> ForeignLexicon:
    """``raw``: language code -> child words as written in the TOML, and ``english_loan_phrases``."""
    words = {lang: frozenset(_norm(w) for w in entries) for lang, entries in raw.items() if lang in _STEMMERS}
    stems = {lang: frozenset(_stemmer(lang).stemWords(sorted(ws))) for lang, ws in words.items()}
    prefixes = frozenset(w[:2] for group in (*words.values(), *stems.values()) for w in group)
    loans = tuple(_norm(p) for p in raw.get("english_loan_phrases", []))
    return ForeignLexicon(words, stems, prefixes, loans)


@lru_cache(maxsize=65536)
def _stem(lang: str, word: str) -> str:
    return _stemmer(lang).stemWord(word)


def foreign_child_word(text: str, guess: LanguageGuess, lex: ForeignLexicon) -> tuple[str, str] | None:
    """First token that is a child word of a judged language other than English, as (language, token)."""
    lowered = _norm(text)
    for phrase in lex.loan_phrases:
        lowered = lowered.replace(phrase, " ")
    tokens = _TOKEN.findall(lowered)
    if not tokens or not lex.words:
        return None
    for token in tokens:
        low = _norm(token)
        if low[:2] not in lex.prefixes and guess.code != "de":
            continue
        cyrillic = not low.isascii() and "а" <= low[0] <= "я"
        for lang, words in lex.words.items():
            if (lang == "ru") != cyrillic:
                continue
            if guess.code != lang and low.isascii() and english_count(low) >= _ENGLISH_WORD_COUNT:
                continue
            if low in words or _stem(lang, low) in lex.stems[lang]:
                return lang, token
            if lang == "de" and guess.code == "de" and any(low[i:] in words for i in range(2, len(low) - 3)):
                return lang, token
    return None
