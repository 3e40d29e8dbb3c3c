"""The documentation cannot rot: what ``mkdocs build --strict`` (make lint) cannot check.

- every public name of ``durable`` and each of its public methods has a docstring, and appears in
  the API reference (mkdocstrings renders what it is pointed at, silently skipping no docstring);
- every Python block of the site is a file that the tests run, included by ``--8<--``: no page
  holds an untested block of Python;
- the README's example is ``examples/hello.py``, which ``tests/acceptance/test_examples.py``
  runs;
- the CLI reference is generated from the parser, every command included;
- every test the guarantees page names exists.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import durable
from durable.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Where an included file may come from: both are run by the suite (examples by
#: tests/acceptance/test_examples.py, tests by themselves).
TESTED = ("examples/", "tests/")
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M
)
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$')


def _own_docstring(obj: object) -> str:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        # a dataclass without a docstring gets its signature as one
        if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return ""
        return str(doc)
    return inspect.getdoc(obj) or ""


def _public_members(cls: type) -> Iterator[tuple[str, object]]:
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            yield name, value.__func__
        elif isinstance(value, property):
            yield name, value.fget
        elif inspect.isfunction(value):
            yield name, value


def test_every_public_name_and_method_has_a_docstring() -> None:
    missing = []
    for name in durable.__all__:
        obj = getattr(durable, name)
        if not _own_docstring(obj).strip():
            missing.append(name)
        if inspect.isclass(obj):
            missing += [
                f"{name}.{member}"
                for member, fn in _public_members(obj)
                if not (getattr(fn, "__doc__", None) or "").strip()
            ]
    assert missing == [], f"public names without a docstring: {missing}"


def test_every_public_name_is_in_the_api_reference() -> None:
    page = (DOCS / "reference" / "api.md").read_text()
    documented = re.findall(r"^::: durable\.(\w+)$", page, re.M)
    assert sorted(documented) == sorted(durable.__all__)
    assert len(documented) == len(set(documented)), "a name is documented twice"


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)


def _python_blocks(text: str) -> list[str]:
    return [m["body"] for m in FENCE.finditer(text) if m["lang"] in ("python", "py", "pycon")]


def _included(path: str, section: str | None) -> str:
    text = (ROOT / path).read_text()
    if section is None:
        return text
    match = re.search(
        rf"^\s*# --8<-- \[start:{section}\]\n(.*?)^\s*# --8<-- \[end:{section}\]",
        text,
        re.S | re.M,
    )
    assert match, f"{path} has no section {section!r}"
    return match[1]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_of_a_page_is_a_tested_file(page: Path) -> None:
    for block in _python_blocks(page.read_text()):
        lines = [line.strip() for line in block.strip().splitlines()]
        for line in lines:
            match = SNIPPET.match(line)
            assert match, (
                f"{page.name}: a Python block must include a tested file with --8<--, "
                f"not hold code of its own:\n{block}"
            )
            assert match["path"].startswith(TESTED), f"{match['path']} is not run by the tests"
            assert _included(match["path"], match["section"]).strip()


def test_the_readme_example_is_the_tested_hello_example() -> None:
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks == [(ROOT / "examples" / "hello.py").read_text()], (
        "README.md's one Python block must be examples/hello.py, byte for byte"
    )


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", DOCS / "hooks" / "cli_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_has_every_command() -> None:
    text: str = _hook().cli_reference()
    for path, _ in _hook()._commands(build_parser(), ("durable",)):
        assert f"### `{' '.join(path)}`" in text
    for command in ("worker", "migrate", "spawn", "retry", "cron add", "queue pause", "dashboard"):
        assert f"### `durable {command}`" in text
    assert "<!-- durable --help -->" in (DOCS / "reference" / "cli.md").read_text()


def test_every_test_a_guarantee_names_exists() -> None:
    """docs/guarantees.md names, for each promise, the tests that prove it: they must exist."""
    page = (DOCS / "guarantees.md").read_text()
    named = re.findall(r"`((?:tests|bench)/[\w/]+\.py)(?:::(\w+))?`", page)
    assert len(named) > 30
    missing = []
    for path, test in named:
        source = ROOT / path
        if not source.is_file():
            missing.append(path)
        elif test and not re.search(rf"^(async )?def {test}\(", source.read_text(), re.M):
            missing.append(f"{path}::{test}")
    assert missing == [], f"guarantees name tests that do not exist: {missing}"


def _docstrings() -> Iterator[tuple[str, str]]:
    for name in durable.__all__:
        obj = getattr(durable, name)
        yield name, _own_docstring(obj)
        if inspect.isclass(obj):
            for member, fn in _public_members(obj):
                yield f"{name}.{member}", inspect.getdoc(fn) or ""


def test_the_examples_in_docstrings_are_valid_python() -> None:
    """A docstring's example is an excerpt (it needs an app and a database to run), but it must
    at least parse, top-level ``await`` allowed, so a renamed keyword shows up in review."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    checked = 0
    for where, doc in _docstrings():
        for block in _python_blocks(inspect.cleandoc(doc)):
            code = textwrap.dedent(block)
            try:
                compile(code, where, "exec", flags=flags)
            except SyntaxError as exc:
                pytest.fail(f"the example in {where}'s docstring does not parse: {exc}\n{code}")
            checked += 1
    assert checked >= 12  # the examples written so far: a floor, so the check keeps running
