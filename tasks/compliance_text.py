"""Text side of the legal compliance filter: does an English text describe a child under 16?

The law forbids processing or showing any text that describes or depicts a child
under 16.  This module decides that for one text with hand-written rules; the words
and rules themselves live in ``compliance/child_lexicon.toml`` so that a compliance
officer can read and change them without touching code.  This file only knows *how*
to apply a rule (word boundaries, plurals, possessives, numbers, context checks),
never *which* words count.

Policy decisions (each is also explained next to its rule in the TOML):

* Ambiguity blocks.  A missed child is a breach of the law; a hidden adult is one
  search result fewer.  Exceptions exist only where the text clearly does not mean a
  child ("baby elephant", "30-year-old man", "boyfriend", "cover girl").
* Teenagers: "teen", "teenager", "teenage", "adolescent", "juvenile", "a youth",
  "young people" block, because three of the seven teen years are under 16 and a
  text rarely says which.  "late teens", "older teens" and an explicit age of 16+
  ("a 17-year-old boy/teen") do not.  The officer can switch the ``teen`` rule off;
  the age, grade and child-word rules still catch anyone shown to be under 16.
* "girl"/"boy" block: in the photo captions they almost always mean a child or a
  teenager.  Fixed adult idioms ("cover girl", "boy band", "girls' night") do not.
* Kinship words alone do not block ("son", "daughter", "brother", "grandchildren",
  "lad"): adults are sons and lads too.  With "little/young/baby ..." in front they
  do; "grandkids" does.
* "babysitter", "stroller", "playground", "kiddie pool", "childhood" do not block:
  they name an adult, an object, a place or a time.  Someone *in* a stroller, a
  playpen, a pacifier or a diaper do.
* Ages: any stated age under 16, in digits or words, in years, months, weeks, days or
  hours ("18-month-old"), as "aged 7", "she is six", "Emma, 7,", "third birthday",
  "5th grade", "under-12s".  Ranges count by their youngest age ("ages 12-18"); lower
  bounds ("over 5 years old") do not count.
* Animals and objects: a child word that only describes the noun after it ("baby
  elephant", "kid gloves", "10-year-old car"), an animal's young ("a mother dog and
  her babies") and "a big dog and a little one" do not block.

A rule "fires" on a match unless one of the rule's exceptions overlaps the match or
one of its context checks says the word describes an animal or an object.  Rules are
tried in file order and the first one that fires is reported, with the exact span of
text that fired it, so every blocked text can be explained.  ``lexicon_version()``
(a short sha256 of the TOML file) should be stored with each run's verdicts.

Out of scope: deliberate obfuscation ("k1ds", "b.o.y"), languages other than English,
and meaning that needs world knowledge ("Bart Simpson" without an age).
"""

from __future__ import annotations

import bisect
import hashlib
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

from tasks.config import PROJECT_ROOT

DEFAULT_LEXICON_PATH = PROJECT_ROOT / "compliance" / "child_lexicon.toml"

__all__ = [
    "DEFAULT_LEXICON_PATH",
    "Lexicon",
    "LexiconError",
    "Rule",
    "TextVerdict",
    "classify_many",
    "classify_text",
    "find_matches",
    "lexicon_version",
    "load_lexicon",
]


@dataclass(frozen=True)
class TextVerdict:
    flagged: bool
    rule: str | None
    match: str | None


NOT_FLAGGED = TextVerdict(False, None, None)


class LexiconError(ValueError):
    """The lexicon file is malformed; the message names the rule at fault."""


# --------------------------------------------------------------------------- numbers

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


# --------------------------------------------------------------------------- compiling


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


Cues = tuple[tuple[str, ...], ...]


def _required_substrings(pattern: str, flags: int) -> Cues:
    """Clauses of lower-cased strings: every match contains one string of each clause.

    A cheap ``in`` test on these lets most texts skip a regex entirely, which is what
    makes 100k texts take seconds.  Derived from the regex itself, so the lexicon
    needs no extra hints; anything unexpected just returns no clauses (no shortcut).
    """
    try:
        from re import _constants as C, _parser
    except ImportError:  # pragma: no cover - private module moved in a future Python
        return ()

    def best(options: list[frozenset[str]]) -> frozenset[str] | None:
        options = [o for o in options if o]
        if not options:
            return None
        return max(options, key=lambda o: (min(map(len, o)), -len(o)))

    def exact(op, av) -> set[str] | None:
        """All strings a small literal node can match ("(yo|y/o)" -> {"yo", "y/o"})."""
        if op is C.LITERAL:
            return {chr(av).lower()}
        if op is C.IN and all(o is C.LITERAL for o, _ in av) and len(av) <= 4:
            return {chr(v).lower() for _, v in av}
        if op is C.SUBPATTERN:
            return exact_seq(av[3])
        if op is C.BRANCH:
            out: set[str] = set()
            for branch in av[1]:
                sub = exact_seq(branch)
                if sub is None:
                    return None
                out |= sub
            return out
        if op in (C.MAX_REPEAT, C.MIN_REPEAT) and av[1] == 1:
            sub = exact_seq(av[2])
            return None if sub is None else sub | ({""} if av[0] == 0 else set())
        return None

    def exact_seq(items) -> set[str] | None:
        out = {""}
        for op, av in items:
            sub = exact(op, av)
            if sub is None or len(out) * len(sub) > 64:
                return None
            out = {a + b for a in out for b in sub}
        return out

    def seq(items) -> frozenset[str] | None:
        return best(seq_all(items))

    def seq_all(items) -> list[frozenset[str]]:
        """Every requirement of a sequence (all of them hold for any match)."""
        options: list[frozenset[str]] = []
        run = {""}  # consecutive literal nodes, multiplied out
        for op, av in items:
            if op is C.SUBPATTERN and exact_seq(av[3]) is None:
                # A group that must match as a whole: its own requirements all hold.
                if "" not in run:
                    options.append(frozenset(run))
                run = {""}
                options.extend(seq_all(av[3]))
                continue
            sub = exact(op, av)
            if sub is not None and len(run) * len(sub) <= 64:
                run = {a + b for a in run for b in sub}
                continue
            if "" not in run:
                options.append(frozenset(run))
            run = {""}
            req = node(op, av)
            if req:
                options.append(req)
            if sub is not None:
                run = sub
        if "" not in run:
            options.append(frozenset(run))
        return [o for o in options if o and "" not in o]

    def node(op, av) -> frozenset[str] | None:
        if op is C.SUBPATTERN:
            return seq(av[3])
        if op is C.ATOMIC_GROUP:
            return seq(av)
        if op is C.BRANCH:
            union: set[str] = set()
            for branch in av[1]:
                req = seq(branch)
                if not req:
                    return None
                union |= req
            return frozenset(union)
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT) and av[0] >= 1:
            return seq(av[2])
        if op is C.IN and all(o is C.LITERAL for o, _ in av) and len(av) <= 4:
            return frozenset(chr(v).lower() for _, v in av)
        return None

    try:
        options = seq_all(_parser.parse(pattern, flags))
    except Exception:  # noqa: BLE001 - the shortcut is optional
        return ()
    clauses = set()
    for option in options:
        # "children" needs no test of its own once "child" is tested.
        minimal = tuple(sorted(r for r in option if not any(o != r and o in r for o in option)))
        if len(minimal) <= 40:  # a long list costs more to test than the regex saves
            clauses.add(minimal)
    return tuple(sorted(clauses, key=len))


def _cues_present(cues: Cues, lowered: str) -> bool:
    for clause in cues:
        for cue in clause:
            if cue in lowered:
                break
        else:
            return False
    return True


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
}
_LIST_KEYS = {"animals", "things", "people", "function_words", "copulas", "hedges"}


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    kind: str  # "words" (any match blocks) or "age" (the number must be below flag_below)
    regex: re.Pattern[str]
    cues: Cues  # quick necessary condition for regex to match
    unless: tuple[tuple[Cues, re.Pattern[str]], ...]
    flag_below: float
    next_noun: frozenset[str]
    next_noun_after_possessive: frozenset[str]
    owner: frozenset[str]
    nearest_being: frozenset[str]
    subject: frozenset[str]


@dataclass(frozen=True)
class Lexicon:
    path: Path
    version: str
    rules: tuple[Rule, ...]
    people: frozenset[str]
    function_words: frozenset[str]
    copulas: frozenset[str]
    hedges: frozenset[str]

    @property
    def rule_ids(self) -> tuple[str, ...]:
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
        cues=_required_substrings(regex.pattern, re.IGNORECASE),
        unless=tuple((_required_substrings(u.pattern, re.IGNORECASE), u) for u in unless),
        flag_below=float(raw.get("flag_below", default_age)),
        next_noun=_guard_set(raw, "skip_if_next_noun_in", lists, where),
        # After a possessive an animal does not cancel ("a girl's dog"); an
        # object can ("a children's book").
        next_noun_after_possessive=_guard_set(raw, "skip_if_next_noun_in", lists, where, {"things"}),
        owner=_guard_set(raw, "skip_if_owner_in", lists, where),
        nearest_being=_guard_set(raw, "skip_if_nearest_being_in", lists, where),
        subject=_guard_set(raw, "skip_if_subject_in", lists, where),
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


def __getattr__(name: str) -> str:
    # LEXICON_VERSION is computed on access so that an edited file is picked up.
    if name == "LEXICON_VERSION":
        return lexicon_version()
    raise AttributeError(name)


# --------------------------------------------------------------------------- matching

_TOKEN = re.compile(r"[^\W_]+|['\u2019]s?(?![\w])|[.!?;:,()]")
_SENTENCE_END = frozenset(".!?;:")
_POSSESSIVE_TOKENS = frozenset({"'s", "'"})
_POSSESSIVE_END = re.compile(r"\s?['\u2019]s?$")
_SPECIFIC_DETERMINERS = frozenset(
    "my your his her our their the this that these those 's '".split()
)


class _Doc:
    """Lazily tokenised text for the context checks (most texts never need it)."""

    __slots__ = ("text", "lowered", "_tokens", "_starts", "_ends")

    def __init__(self, text: str) -> None:
        self.text = text
        self.lowered = text.lower()
        self._tokens: list[tuple[int, int, str]] | None = None

    @property
    def tokens(self) -> list[tuple[int, int, str]]:
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


def _next_noun_in(doc: _Doc, end: int, guard: frozenset[str], lex: Lexicon) -> bool:
    """Is the word a modifier of a following guarded noun ("baby elephant", "kid gloves")?"""
    toks = doc.tokens
    i = doc.first_at_or_after(end)
    for tok in (t for _, _, t in toks[i : i + 3]):
        if _is_boundary(tok, lex) or tok.isdigit():
            return False
        if tok in guard:
            return True
        if tok in lex.people:
            return False
        # Looks like a verb ("babies crawl-ing", "kids play-s"): the child word was the subject.
        if tok.endswith(("ing", "ed")) or (tok.endswith("s") and not tok.endswith("ss")):
            return False
    return False


def _nearest_being_before(doc: _Doc, index: int, guard: frozenset[str], lex: Lexicon) -> bool:
    """Walk back within the sentence to the nearest person or guarded creature."""
    for _, _, tok in reversed(doc.tokens[: index + 1]):
        if tok in _SENTENCE_END:
            return False
        if tok in guard:
            return True
        if tok in lex.people:
            return False
    return False


def _owner_in(doc: _Doc, start: int, guard: frozenset[str], lex: Lexicon) -> bool:
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


def _subject_in(doc: _Doc, start: int, guard: frozenset[str], lex: Lexicon) -> bool:
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


def _rule_hits(rule: Rule, doc: _Doc, lex: Lexicon) -> Iterator[re.Match[str]]:
    unless_spans: list[tuple[int, int]] | None = None
    lowered = doc.lowered
    for m in rule.regex.finditer(doc.text):
        if rule.kind == "age":
            age = _age_of(m)
            # An unreadable number blocks: the pattern already said "age".
            if age is not None and age >= rule.flag_below:
                continue
        if rule.unless:
            if unless_spans is None:
                unless_spans = [
                    u.span()
                    for cues, regex in rule.unless
                    if _cues_present(cues, lowered)
                    for u in regex.finditer(doc.text)
                ]
            if any(s < m.end() and m.start() < e for s, e in unless_spans):
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
        yield m


def classify_text(text: str, lexicon: Lexicon | None = None) -> TextVerdict:
    """Flag a text that describes a child under 16; report the rule and the span that fired."""
    if not text or not isinstance(text, str):
        return NOT_FLAGGED
    lex = lexicon or load_lexicon()
    doc = _Doc(text)
    for rule in lex.rules:
        if not _cues_present(rule.cues, doc.lowered):
            continue
        for m in _rule_hits(rule, doc, lex):
            return TextVerdict(True, rule.id, m.group(0))
    return NOT_FLAGGED


def classify_many(texts: Iterable[str], lexicon: Lexicon | None = None) -> list[TextVerdict]:
    lex = lexicon or load_lexicon()
    return [classify_text(t, lex) for t in texts]


def find_matches(text: str, lexicon: Lexicon | None = None) -> list[TextVerdict]:
    """Every (rule, span) that fires on a text, for audits and for tuning the lexicon."""
    if not text or not isinstance(text, str):
        return []
    lex = lexicon or load_lexicon()
    doc = _Doc(text)
    return [
        TextVerdict(True, rule.id, m.group(0))
        for rule in lex.rules
        if _cues_present(rule.cues, doc.lowered)
        for m in _rule_hits(rule, doc, lex)
    ]
