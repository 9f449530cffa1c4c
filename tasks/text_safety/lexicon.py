"""Compile ``compliance/child_lexicon.toml`` into rules (plain ``re``, no private APIs).

The TOML holds *which* words count; this module only knows *how* to turn an entry into a
regular expression (word boundaries, plurals, possessives, numbers).  ``load_lexicon``
returns a frozen :class:`Lexicon`, cached until the file changes on disk; its
``version`` is the sha256 prefix of the file, stored with every verdict.

Errors: :class:`LexiconError` names the rule at fault (unknown key, unknown list, bad
pattern, duplicate id).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from tasks.config import PROJECT_ROOT
from tasks.text_safety.language import ForeignLexicon, build_foreign_lexicon
from tasks.text_safety.cues import _pattern_cues, _rule_cues
from tasks.text_safety.numbers import (
    APOSTROPHE,
    NUMBER_RE,
    ORDINAL_RE,
    SEP_OPTIONAL,
    SEP_REQUIRED,
    UNIT_RE,
)

DEFAULT_LEXICON_PATH = PROJECT_ROOT / "compliance" / "child_lexicon.toml"


class LexiconError(ValueError):
    """The lexicon file is malformed; the message names the rule at fault."""




def plural(word: str) -> str:
    """Regular English plural of the last word of an entry ("little one" -> "little ones")."""
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    return word + "s"


def _entry_regex(entry: str) -> str:
    """A word-list entry: space = space/hyphen, hyphen = optional space/hyphen, apostrophe optional."""
    out = []
    for ch in entry.strip().lower():
        if ch == " ":
            out.append(SEP_REQUIRED)
        elif ch == "-":
            out.append(SEP_OPTIONAL)
        elif ch in "'\u2019":
            out.append(APOSTROPHE)
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _word_forms(entries: Iterable[str]) -> set[str]:
    forms: set[str] = set()
    for entry in entries:
        entry = entry.strip().lower()
        if entry:
            forms.add(entry)
            forms.add(plural(entry))
    return forms


def _word_set(entries: Iterable[str]) -> frozenset[str]:
    """Single-token forms, for the token-level context checks."""
    return frozenset(_word_forms(entries))


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# The possessive is part of the reported span: "children's", "kids'", "kid 's".
_POSSESSIVE_RE = r"(?:\s?['\u2019]s(?![\w])|(?<=s)['\u2019](?![\w]))?"


def _translate_pattern(
    pattern: str,
    lists: dict[str, list[str]],
    tag: str,
    where: str,
    pattern_lists: dict[str, list[str]],
) -> str:
    """Turn the TOML pattern mini-language into a regular expression.

    ``tag`` makes the named groups (n, nth, unit) unique when several patterns of a
    rule are joined into one regex.
    """
    out: list[str] = []
    i = 0
    in_class = False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            out.append(ch)
            in_class = ch != "]"
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
        elif ch == "{" and (m := _PLACEHOLDER.match(pattern, i)):
            name = m.group(1)
            if name == "n":
                out.append(f"(?P<n{tag}>{NUMBER_RE})")
            elif name == "nth":
                out.append(f"(?P<nth{tag}>{ORDINAL_RE})")
            elif name == "unit":
                out.append(f"(?P<unit{tag}>{UNIT_RE})")
            elif name in lists:
                out.append(f"(?:{_alternation_of_entries(lists[name])})")
            elif name in pattern_lists:
                alternatives = [
                    _translate_pattern(p, lists, f"{tag}_{name}{k}", where, {})
                    for k, p in enumerate(pattern_lists[name])
                ]
                out.append("(?:" + "|".join(f"(?:{a})" for a in alternatives) + ")")
            else:
                raise LexiconError(f"{where}: unknown list {{{name}}} in pattern {pattern!r}")
            i = m.end()
            continue
        elif ch == " ":
            out.append(SEP_REQUIRED)
        elif ch == "-" and pattern[max(0, i - 2) : i] == "(?":
            out.append(ch)  # inline flag such as (?-i:...)
        elif ch == "-":
            out.append(SEP_OPTIONAL)
        elif ch in "'\u2019":
            out.append(APOSTROPHE)
        elif pattern.startswith("(?P<n>", i):
            out.append(f"(?P<n{tag}>")
            i += len("(?P<n>")
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _alternation_of_entries(entries: Iterable[str]) -> str:
    return "|".join(sorted((_entry_regex(f) for f in _word_forms(entries)), key=len, reverse=True))


def _bounded(body: str) -> str:
    # Whole words only, but a pattern that starts or ends with punctuation
    # ("Section (") needs no word boundary on that side.
    return rf"(?:(?=\w)(?<![\w'\u2019])|(?!\w))(?:{body})(?:(?<=\w)(?!\w)|(?<!\w))"


_RULE_KEYS = {
    "id",
    "description",
    "enabled",
    "kind",
    "words",
    "patterns",
    "unless",
    "flag_below",
    "skip_if_next_noun_in",
    "skip_if_owner_in",
    "skip_if_nearest_being_in",
    "skip_if_subject_in",
    "skip_if_appositive_in",
    "skip_in_titles",
}
_LIST_KEYS = {"animals", "things", "people", "function_words", "copulas", "hedges"}


@dataclass(frozen=True)
class Rule:
    """One lexicon rule: its pattern, the cheap pre-check cues, and the context that cancels a match."""

    id: str
    description: str
    kind: str  # "words" (any match blocks) or "age" (the number must be below flag_below)
    regex: re.Pattern[str]
    cues: frozenset[str] | None  # one of these lower-case strings is in every match; None: no shortcut
    unless: tuple[tuple[frozenset[str] | None, re.Pattern[str]], ...]  # (cues, exception)
    flag_below: float
    next_noun: frozenset[str]
    next_noun_after_possessive: frozenset[str]
    owner: frozenset[str]
    nearest_being: frozenset[str]
    subject: frozenset[str]
    appositive: frozenset[str] = frozenset()
    in_titles: bool = False  # a capitalised name of a work or brand does not count


@dataclass(frozen=True)
class Lexicon:
    """The parsed lexicon file (``compliance/child_lexicon.toml``): its rules and the word lists the context
    checks use."""

    path: Path
    version: str
    rules: tuple[Rule, ...]
    people: frozenset[str]
    function_words: frozenset[str]
    copulas: frozenset[str]
    hedges: frozenset[str]
    head_words: tuple[str, ...] = ()   # for normalize(): joined-word splitting and near-misses
    foreign: ForeignLexicon = ForeignLexicon({}, {})
    titles: frozenset[str] = frozenset()   # nouns that make a capitalised name a work or brand

    @property
    def rule_ids(self) -> tuple[str, ...]:
        """Ids of the rules, in file order."""
        return tuple(r.id for r in self.rules)


def _guard_set(
    raw: dict, key: str, lists: dict[str, list[str]], where: str, only: set[str] | None = None
) -> frozenset[str]:
    names = raw.get(key, [])
    if not isinstance(names, list):
        raise LexiconError(f"{where}: {key} must be a list of list names")
    words: set[str] = set()
    for name in names:
        if name not in lists:
            raise LexiconError(f"{where}: {key} names unknown list {name!r}")
        if only is None or name in only:
            words |= _word_set(lists[name])
    return frozenset(words)


def _compile_rule(
    raw: dict,
    index: int,
    lists: dict[str, list[str]],
    pattern_lists: dict[str, list[str]],
    default_age: float,
) -> Rule:
    where = f"rule #{index + 1} ({raw.get('id', '?')})"
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise LexiconError(f"{where}: unknown keys {sorted(unknown)}")
    for key in ("id", "description"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise LexiconError(f"{where}: missing {key}")
    kind = raw.get("kind", "words")
    if kind not in ("words", "age"):
        raise LexiconError(f"{where}: kind must be 'words' or 'age'")
    words = raw.get("words", [])
    patterns = raw.get("patterns", [])
    if not words and not patterns:
        raise LexiconError(f"{where}: needs words or patterns")

    parts: list[str] = []
    if words:
        parts.append(f"(?:{_alternation_of_entries(words)}){_POSSESSIVE_RE}")
    for j, pattern in enumerate(patterns):
        parts.append(f"(?:{_translate_pattern(pattern, lists, f'_{j}', where, pattern_lists)})")
    unless_parts = [
        _translate_pattern(p, lists, f"_u{j}", where, pattern_lists)
        for j, p in enumerate(raw.get("unless", []))
    ]
    try:
        regex = re.compile(_bounded("|".join(parts)), re.IGNORECASE)
        unless = [re.compile(_bounded(u), re.IGNORECASE) for u in unless_parts]
    except re.error as exc:
        raise LexiconError(f"{where}: bad pattern: {exc}") from exc
    if kind == "age" and not any(g.startswith(("n_", "nth_")) for g in regex.groupindex):
        raise LexiconError(f"{where}: an age rule needs {{n}} or {{nth}} in its patterns")

    return Rule(
        id=raw["id"].strip(),
        description=raw["description"].strip(),
        kind=kind,
        regex=regex,
        cues=_rule_cues(words, patterns, lists),
        unless=tuple((_pattern_cues(p, lists), u) for p, u in zip(raw.get("unless", []), unless)),
        flag_below=float(raw.get("flag_below", default_age)),
        next_noun=_guard_set(raw, "skip_if_next_noun_in", lists, where),
        # After a possessive an animal does not cancel ("a girl's dog"); an
        # object can ("a children's book").
        next_noun_after_possessive=_guard_set(raw, "skip_if_next_noun_in", lists, where, {"things"}),
        owner=_guard_set(raw, "skip_if_owner_in", lists, where),
        nearest_being=_guard_set(raw, "skip_if_nearest_being_in", lists, where),
        subject=_guard_set(raw, "skip_if_subject_in", lists, where),
        appositive=_guard_set(raw, "skip_if_appositive_in", lists, where),
        in_titles=bool(raw.get("skip_in_titles", False)),
    )


def _parse_lexicon(content: bytes, path: Path) -> Lexicon:
    try:
        data = tomllib.loads(content.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LexiconError(f"{path}: not valid TOML: {exc}") from exc
    lists = data.get("lists", {})
    missing = _LIST_KEYS - set(lists)
    if missing:
        raise LexiconError(f"{path}: [lists] lacks {sorted(missing)}")
    default_age = float(data.get("settings", {}).get("child_under_age", 16))
    raw_rules = data.get("rule", [])
    if not raw_rules:
        raise LexiconError(f"{path}: no [[rule]] blocks")
    pattern_lists = data.get("pattern_lists", {})
    rules = [
        _compile_rule(raw, i, lists, pattern_lists, default_age)
        for i, raw in enumerate(raw_rules)
        if raw.get("enabled", True)
    ]
    ids = [r.id for r in rules]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise LexiconError(f"{path}: duplicate rule ids {sorted(duplicates)}")
    return Lexicon(
        path=path,
        version=_short_sha(content),
        rules=tuple(rules),
        people=_word_set(lists["people"]),
        function_words=_word_set(lists["function_words"]),
        copulas=frozenset(w.lower() for w in lists["copulas"]),
        hedges=frozenset(w.lower() for w in lists["hedges"]),
        head_words=tuple(sorted(_word_forms(data.get("normalize", {}).get("head_words", [])))),
        foreign=build_foreign_lexicon(data.get("languages", {})),
        titles=_word_set(lists.get("work_or_brand_nouns", [])),
    )


def _short_sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:12]


@lru_cache(maxsize=8)
def _load_cached(path: Path, mtime_ns: int, size: int) -> Lexicon:
    return _parse_lexicon(path.read_bytes(), path)


def load_lexicon(path: Path | None = None) -> Lexicon:
    """Load and compile the lexicon; cached until the file changes on disk."""
    path = Path(path or DEFAULT_LEXICON_PATH).resolve()
    stat = path.stat()
    return _load_cached(path, stat.st_mtime_ns, stat.st_size)


def lexicon_version(path: Path | None = None) -> str:
    """Short sha256 of the lexicon file, to store next to every verdict of a run."""
    return load_lexicon(path).version
