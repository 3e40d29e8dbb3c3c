"""The code version a worker records on every run it claims (``runs.code_version``, shown by
``durable show`` and the dashboard): ``Durable(version=...)`` when the app declares one (a
release tag, a git commit), else one derived from the source of the app's handlers, so that a
change to a handler is a new version even when nobody declared one."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from durable.protocol.errors import MAX_NAME_CHARS

#: How many hex digits of the derived version's sha256 are kept.
DERIVED_DIGITS = 12


def check_version(version: str) -> str:
    """``version`` if it can be recorded (1 to 255 characters), else ValueError."""
    if not isinstance(version, str) or not 0 < len(version) <= MAX_NAME_CHARS:
        raise ValueError(f"version must be a string of 1 to {MAX_NAME_CHARS} characters")
    return version


def derive_version(handlers: Iterable[tuple[str, Callable[..., Any]]]) -> str:
    """A version derived from the handlers (task name, function): the first digits of the sha256
    of their names and source code, in name order. The same code gives the same version on
    every worker; a handler changed, added or removed gives another."""
    digest = hashlib.sha256()
    for name, fn in sorted(handlers, key=lambda handler: handler[0]):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(_source(fn))
        digest.update(b"\0")
    return digest.hexdigest()[:DERIVED_DIGITS]


def _source(fn: Callable[..., Any]) -> bytes:
    """The handler's source; its bytecode and constants when the source is not available (a
    function defined in a REPL or built at run time)."""
    try:
        return inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            return getattr(fn, "__qualname__", type(fn).__qualname__).encode()
        return bytes(code.co_code) + repr(code.co_consts).encode()
