"""Cheap necessary conditions ("cues") for the lexicon's regular expressions.

Read from the TOML pattern language itself (not from a compiled regex, so no private
``re`` internals): a rule's cues are lower-case strings one of which every match
contains; a text with none of them skips the rule.  A pattern this reader does not
understand gets no cues and is always run, so a cue can only save time, never a match.
"""

from __future__ import annotations

import re

from tasks.text_safety.numbers import NUMBER_CUES, ORDINAL_CUES


def _entry_cue(entry: str) -> str:
    return re.split(r"[\s\-'\u2019]", entry.strip().lower(), maxsplit=1)[0]


def _pattern_cues(pattern: str, lists: dict[str, list[str]]) -> frozenset[str] | None:
    """Strings one of which every match of a TOML pattern contains, read from the pattern itself.

    Only the top level is read: a run of plain letters ("birthday"), a ``{list}`` of
    words, or a group of plain alternatives ("(stroller|pram)").  Anything else gives
    None (the rule is always run), so a pattern this does not understand is never skipped.
    """
    candidates: list[frozenset[str]] = []
    depth, i, run = 0, 0, ""
    while i < len(pattern):
        ch = pattern[i]
        optional = i + 1 < len(pattern) and pattern[i + 1] in "?*"
        if depth == 0 and "a" <= ch.lower() <= "z" and not optional:
            run += ch.lower()
            i += 1
            continue
        if len(run) >= 3:
            candidates.append(frozenset([run]))
        run = ""
        if ch == "\\" or ch == "[":
            return None if depth == 0 and ch == "[" and optional else _skip_and_continue(pattern, i, depth, candidates, lists)
        if ch == "(":
            close = _group_end(pattern, i)
            body = pattern[i + 1 : close]
            after = pattern[close + 1 : close + 2]
            if depth == 0 and after not in ("?", "*"):
                found = _group_cues(body)
                if found:
                    candidates.append(found)
            i = close + 1
            continue
        if ch == "{" and depth == 0 and (m := re.match(r"\{([a-z_][a-z0-9_]*)\}", pattern[i:])):
            if m.group(1) in lists and not optional:
                candidates.append(frozenset(_entry_cue(e) for e in lists[m.group(1)]))
            elif m.group(1) in ("n", "nth") and not optional:
                candidates.append(NUMBER_CUES if m.group(1) == "n" else ORDINAL_CUES)
            i += m.end()
            continue
        if ch == "|" and depth == 0:
            return None
        i += 1
    if len(run) >= 3:
        candidates.append(frozenset([run]))
    return max(candidates, key=lambda c: (min(map(len, c)), -len(c))) if candidates else None


def _group_cues(body: str) -> frozenset[str] | None:
    """Cues of a group: "(stroller|pram|car seat)", "(?-i:Year)", "(?P<n>\\d{1,2})"."""
    if body.startswith("?P<n>"):
        return NUMBER_CUES
    if m := re.fullmatch(r"\?-i:([A-Za-z]{3,})", body):
        return frozenset([m.group(1).lower()])
    if not re.fullmatch(r"[a-z][a-z \-']*s?\??(\|[a-z][a-z \-']*s?\??)*", body):
        return None
    alternatives = [re.split(r"[ \-']", a[:-2] if a.endswith("s?") else a)[0] for a in body.split("|")]
    return frozenset(alternatives) if min(map(len, alternatives)) >= 2 else None


def _group_end(pattern: str, start: int) -> int:
    depth, i = 0, start
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(pattern[i], 0)
        if depth == 0:
            return i
        i += 1
    return len(pattern)


def _skip_and_continue(pattern, i, depth, candidates, lists):
    # An escape or a character class ends the literal run; read the rest separately.
    j = i + 2 if pattern[i] == "\\" else pattern.find("]", i) + 1 or len(pattern)
    rest = _pattern_cues(pattern[j:], lists)
    pool = candidates + ([rest] if rest else [])
    return max(pool, key=lambda c: (min(map(len, c)), -len(c))) if pool else None


def _rule_cues(words: list[str], patterns: list[str], lists: dict[str, list[str]]) -> frozenset[str] | None:
    cues = {_entry_cue(w) for w in words}
    for pattern in patterns:
        found = _pattern_cues(pattern, lists)
        if found is None:
            return None
        cues |= found
    return frozenset(cues) if all(cues) else None


def cues_present(rule, lowered: str) -> bool:
    """May ``rule`` match a text whose lower-case form is ``lowered``?  (False: it cannot.)"""
    return rule.cues is None or any(c in lowered for c in rule.cues)


def any_cue(cues: frozenset[str] | None, lowered: str) -> bool:
    """May a pattern with these ``cues`` match ``lowered`` (a lower-case text)?  True when ``cues`` is None
    (no shortcut)."""
    return cues is None or any(c in lowered for c in cues)
