#!/usr/bin/env python3
"""Regenerate the generated blocks of docs/*.md (or, with --check, list stale ones).

A block is written once by hand as

    <!-- BEGIN generated from SOURCE -->
    <!-- END generated -->

and this script fills it: SOURCE ``detector/config.py`` gives the configuration
reference table (from the dataclasses' field docstrings), a ``bench/results/*.json``
written by ``python -m bench`` gives the table that subcommand renders from it, any other
SOURCE is a repository file (an older ``bench/results/*.md`` file, ...) copied in
verbatim, its own headings turned into bold lines. So the numbers in the docs are the
measured ones and cannot drift from the results files; ``tests/test_docs.py`` runs
``--check`` and fails on a measured number typed outside such a block.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- BEGIN generated from (?P<src>\S+) -->\n)(?P<body>.*?)(<!-- END generated -->)",
                   re.S)


def source_text(src: str, repo: Path = REPO) -> str:
    """What the block for ``src`` must contain (ends with a newline)."""
    if src == "detector/config.py":
        sys.path.insert(0, str(repo))
        from detector.config import reference_markdown
        return reference_markdown().rstrip("\n") + "\n"
    path = repo / src
    if not path.is_file():
        raise SystemExit(f"sync_docs: error: {src} named in a docs block does not exist")
    if path.suffix == ".json":
        sys.path.insert(0, str(REPO))
        from bench._common import markdown_of
        return markdown_of(path).strip("\n") + "\n"
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#+\s+(.*)", line)
        lines.append(f"**{heading.group(1)}**" if heading else line)
    return "\n".join(lines).strip("\n") + "\n"


def render(text: str, repo: Path = REPO) -> str:
    """``text`` with every generated block refilled from its source."""
    return BLOCK.sub(lambda m: m.group(1) + source_text(m.group("src"), repo) + m.group(4), text)


def pages(repo: Path = REPO) -> list[Path]:
    """The pages that may hold generated blocks: docs/*.md and the README."""
    return sorted((repo / "docs").glob("*.md")) + [p for p in [repo / "README.md"] if p.is_file()]


def stale(repo: Path = REPO) -> list[str]:
    """Pages whose generated blocks differ from their sources."""
    return [str(p.relative_to(repo)) for p in pages(repo)
            if render(p.read_text(encoding="utf-8"), repo) != p.read_text(encoding="utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list stale pages (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for page in old:
            print(f"{page}: generated block out of date; run python scripts/sync_docs.py")
        return 1 if old else 0
    for page in pages():
        old = page.read_text(encoding="utf-8")
        new = render(old)
        if new != old:
            page.write_text(new, encoding="utf-8")
            print(f"updated {page.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
