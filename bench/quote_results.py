"""Copy benchmark results into the docs, so no figure there is typed by hand.

    python bench/quote_results.py            # rewrite every quote block in README.md and docs/*.md
    python bench/quote_results.py --check    # exit 1 if any block differs from its file (the tests run this)

A quote block is

    <!-- quote bench/results/NAME.md -->            the whole file but its title
    <!-- quote bench/results/NAME.md#Heading -->    the text under "## Heading" in it
    ...                                             (replaced)
    <!-- end quote -->

and becomes a line naming the file (with its date and command, from the file's header) and
the quoted text, headings demoted two levels so they sit under the document's own.
Errors: ``LookupError`` for a missing file or heading.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- quote (?P<src>[^ #]+)(?:#(?P<section>[^>]+?))? -->\n)(?P<body>.*?)(<!-- end quote -->)",
                   re.S)


def header(lines: list[str]) -> dict[str, str]:
    """Date, Machine and Command from a results file's header lines (``bench/results_io.py``)."""
    out = {}
    for line in lines[:8]:
        m = re.match(r"^(Date|Machine|Command): (.*?)\s*$", line)
        if m:
            out[m[1]] = m[2]
    return out


def quoted(src: str, section: str | None) -> str:
    """The replacement text of one block."""
    path = ROOT / src
    if not path.exists():
        raise LookupError(f"{src}: no such results file (run its benchmark first)")
    lines = path.read_text().splitlines()
    meta = header(lines)
    body = [ln for ln in lines[1:] if not re.match(r"^(Date|Machine|Command): ", ln)]
    if section:
        start = next((i for i, ln in enumerate(body) if ln.strip() == f"## {section.strip()}"), None)
        if start is None:
            raise LookupError(f"{src}: no section '## {section}'")
        end = next((i for i in range(start + 1, len(body)) if body[i].startswith("## ")), len(body))
        body = body[start + 1:end]
    body = [("##" + ln) if ln.startswith("#") else ln for ln in body]
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    where = f"[`{src}`]({src})"
    prov = f"*Quoted from {where}" + (f", section \"{section.strip()}\"" if section else "")
    said = [f"measured {meta['Date']}" if "Date" in meta else "",
            f"`{meta['Command'].strip('`')}`" if "Command" in meta else ""]
    prov += (f" ({', '.join(x for x in said if x)})" if any(said) else "") + ".*"
    return "\n".join([prov, "", *body, ""])


def rewrite(text: str, base: Path) -> str:
    """``text`` with every quote block filled in; ``src`` paths are relative to the repository root."""
    def fill(m: re.Match) -> str:
        return m.group(1) + quoted(m["src"], m["section"]) + m.group(5)

    return BLOCK.sub(fill, text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = rewrite(text, doc.parent)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not check:
                doc.write_text(new)
    if stale:
        print(("out of date: " if check else "rewrote: ") + ", ".join(map(str, stale)))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
