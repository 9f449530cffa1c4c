"""Normalize a text before the lexicon judges it, so that obfuscation does not hide a child word.

``normalize(text) -> Normalized`` returns the form that is judged and the names of the
steps that changed it; the stored and shown text is never modified.  Steps, in order:

1. ``emoji``: emoji become their CLDR names (``emoji`` package): "🧒" -> "child".
2. ``nfkc``: Unicode NFKC (``unicodedata``): fullwidth "ｋｉｄｓ" -> "kids", ligatures, math letters.
3. ``format``: format characters (category Cf: zero-width space, soft hyphen, joiners,
   bidi marks) removed; combining marks stacked on ASCII letters ("b̶o̶y̶") removed.
4. ``confusables``: letters of another script inside a Latin word, or a whole foreign-script
   word in a Latin text, folded to the Latin letter they imitate, from Unicode's
   confusables.txt as shipped by ``confusable-homoglyphs``: Cyrillic "сhild" -> "child".
5. ``leet``: digits and symbols between letters read as letters: "k1ds" -> "kids".
6. ``spaced``: single letters joined by one separator: "b.o.y", "k i d s" -> "boy", "kids".
7. ``split``: hashtags, CamelCase, underscores and joined words that contain a head word
   split with ``wordsegment`` (English unigram frequencies): "#toddlerlife" -> "toddler life".
8. ``fuzzy``: a word that is not common English and is one edit (two for rare words of 7+
   letters; transpositions count once) from a head word, with the same first letter,
   becomes that head word (``rapidfuzz`` OSA distance): "chidlren" -> "children".

Head words come from ``[normalize] head_words`` in the lexicon TOML.  Cost: pure-ASCII
texts skip steps 1-4; steps 7-8 run only on words that need them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Normalized", "normalize", "english_count"]

# A word this common in English web text is a real word, not a misspelling of a head word.
COMMON_WORD_COUNT = 1_000_000
RARE_WORD_COUNT = 100_000


@dataclass(frozen=True)
class Normalized:
    """A text in the form the lexicon judges, and the names of the ``normalize`` steps that changed it."""

    text: str
    steps: tuple[str, ...]


@lru_cache(maxsize=1)
def _unigrams() -> dict[str, float]:
    """Words seen at least RARE_WORD_COUNT times in wordsegment's English unigram table.

    The file is sorted by count, so reading stops at the first rarer word: a third of the
    table, and no judgement here needs to tell two rarer words apart.
    """
    import wordsegment

    counts: dict[str, float] = {}
    with open(wordsegment.Segmenter.UNIGRAMS_FILENAME, encoding="utf-8") as reader:
        for line in reader:
            word, count = line.rstrip("\n").split("\t")
            if float(count) < RARE_WORD_COUNT:
                break
            counts[word] = float(count)
    return counts


@lru_cache(maxsize=1)
def _segmenter():
    # The full unigram and bigram tables, loaded only when a joined word needs splitting.
    import wordsegment

    if not wordsegment.UNIGRAMS:
        wordsegment.load()
    return wordsegment.segment


def english_count(word: str) -> float:
    """Occurrences of a lower-case word in wordsegment's English unigram table (0 if absent
    or rarer than RARE_WORD_COUNT)."""
    return _unigrams().get(word, 0.0)


@lru_cache(maxsize=1)
def _confusable_map() -> dict[str, str]:
    """Non-Latin character -> the ASCII letter(s) it imitates, from Unicode confusables.txt."""
    from confusable_homoglyphs import confusables as cf

    table = cf.confusables_data if hasattr(cf, "confusables_data") else None
    if table is None:
        from confusable_homoglyphs import utils

        table = utils.load("confusables.json")
    out: dict[str, str] = {}
    for char, entries in table.items():
        if len(char) != 1 or char.isascii():
            continue
        for entry in entries:
            target = entry["c"]
            if target.isascii() and target.isalpha():
                out[char] = target.lower() if char.islower() or not char.isupper() else target
                break
    return out


def _is_latin(ch: str) -> bool:
    return ch.isascii() or unicodedata.name(ch, "").startswith("LATIN")


def _demojize(text: str) -> str:
    import emoji

    if emoji.emoji_count(text) == 0:
        return text
    return emoji.replace_emoji(text, replace=lambda _c, data: " " + data["en"].strip(":").replace("_", " ") + " ")


def _strip_format(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cf":
            continue
        if cat == "Mn" and out and out[-1].isascii():
            continue  # strikethrough / zalgo marks on Latin letters
        out.append(ch)
    return "".join(out)


_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _fold_confusables(text: str) -> str:
    table = _confusable_map()
    letters = [c for c in text if c.isalpha()]
    latin_text = sum(map(_is_latin, letters)) * 2 > len(letters)

    def fold(m: re.Match[str]) -> str:
        word = m.group(0)
        foreign = [c for c in word if not _is_latin(c)]
        if not foreign:
            return word
        mixed = len(foreign) < len(word)
        if not (mixed or latin_text):
            return word  # a Russian word in a Russian text stays Russian
        folded = "".join(table.get(c, c) if not _is_latin(c) else c for c in word)
        # A whole foreign word is folded only if every letter imitates a Latin one.
        return folded if mixed or all(_is_latin(c) for c in folded) else word

    return _WORD.sub(fold, text)


_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "l"})
_LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "l", "|": "l"})
_LEET_WORD = re.compile(r"(?<![\w@$!|])[a-z][a-z0-9@$!|]*[0-9@$!|][a-z0-9@$!|]*[a-z](?![\w@$!|])", re.IGNORECASE)
_SPACED = re.compile(r"(?<![\w.])([A-Za-z])(?:([.\-*_ ])[A-Za-z])(?:\2[A-Za-z])+(?![\w])")
_HASHTAG = re.compile(r"#(\w+)")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _leet(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        # Kept only when it reads as a real word: "U12s" and "mp3s" are left alone.
        for table in (_LEET, _LEET_L):
            word = m.group(0).translate(table)
            if english_count(word.lower()) >= COMMON_WORD_COUNT:
                return word
        return m.group(0)

    return _LEET_WORD.sub(repl, text)


def _unspace(text: str) -> str:
    return _SPACED.sub(lambda m: re.sub(r"[.\-*_ ]", "", m.group(0)), text)


def _split_word(word: str, heads: frozenset[str]) -> str:
    lower = word.lower()
    if lower in heads or len(lower) < 5 or not any(h in lower for h in heads):
        return word
    if english_count(lower) >= COMMON_WORD_COUNT:  # "childless", "kidnapped": a word of its own
        return word
    pieces = _segmenter()(lower)
    return " ".join(pieces) if len(pieces) > 1 and any(p in heads for p in pieces) else word


def _split(text: str, heads: frozenset[str]) -> str:
    text = _HASHTAG.sub(lambda m: " " + m.group(1) + " ", text)
    text = _CAMEL.sub(" ", text).replace("_", " ")
    return re.sub(r"[A-Za-z]{5,}", lambda m: _split_word(m.group(0), heads), text)


def _nearest_head(word: str, heads: tuple[str, ...]) -> str | None:
    from rapidfuzz.distance import OSA

    lower = word.lower()
    if len(lower) < 4 or lower in heads or english_count(lower) >= COMMON_WORD_COUNT:
        return None
    best, best_d = None, 3
    for head in heads:
        if head[0] != lower[0] or abs(len(head) - len(lower)) > 2:
            continue
        # Two edits only for long, rare words: "skoolgirl" yes, "childless" (a real word) no.
        limit = 2 if min(len(head), len(lower)) >= 7 and english_count(lower) < RARE_WORD_COUNT else 1
        d = OSA.distance(lower, head, score_cutoff=limit)
        if d <= limit and d < best_d:
            best, best_d = head, d
    return best


def _fuzzy(text: str, heads: tuple[str, ...]) -> str:
    def repl(m: re.Match[str]) -> str:
        head = _nearest_head(m.group(0), heads)
        return m.group(0) if head is None else head

    return re.sub(r"[A-Za-z]{4,}", repl, text)


def normalize(text: str, head_words: tuple[str, ...] = ()) -> Normalized:
    """The form of ``text`` the lexicon judges, and which steps changed it.

    Args:
        text: any string as written (caption, description, query).
        head_words: lower-case lexicon head words for the split and fuzzy steps.
    Returns:
        :class:`Normalized`; ``steps`` is empty when the text was already plain.
    """
    steps: list[str] = []
    current = text

    def apply(name: str, fn, *args) -> None:
        nonlocal current
        new = fn(current, *args)
        if new != current:
            steps.append(name)
            current = new

    if not current.isascii():
        apply("emoji", _demojize)
        apply("nfkc", lambda t: unicodedata.normalize("NFKC", t))
        apply("format", _strip_format)
        apply("confusables", _fold_confusables)
    apply("leet", _leet)
    apply("spaced", _unspace)
    if head_words:
        heads = frozenset(head_words)
        apply("split", _split, heads)
        apply("fuzzy", _fuzzy, tuple(sorted(heads)))
    if steps:
        current = re.sub(r"[ \t]{2,}", " ", current).strip()
    return Normalized(current, tuple(steps))
