"""MkDocs hook: the command line reference is made from the parser at build time.

``docs/reference/cli.md`` holds the marker ``<!-- durable --help -->``; this hook replaces it with
the ``--help`` text of ``durable`` and of every command and sub-command, as argparse prints them,
so the page cannot drift from the parser (``durable.cli.parser.build_parser``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

MARKER = "<!-- durable --help -->"
WIDTH = "100"  # argparse wraps at $COLUMNS: the same text on every machine


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:  # argparse keeps its sub-parsers here, nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def cli_reference() -> str:
    """The Markdown of every command's ``--help``, ``durable`` first."""
    from durable.cli.parser import build_parser  # the installed package: the build's venv

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = []
        for path, parser in _commands(build_parser(), ("durable",)):
            title = " ".join(path)
            parts.append(f"### `{title}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace the marker of the CLI page with the generated reference."""
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
