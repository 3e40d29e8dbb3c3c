"""Griffe extension: the docstrings' reStructuredText roles read as Markdown code.

The code's docstrings name things as Sphinx does (``:class:`TaskFailed```,
``:meth:`~durable.Durable.spawn```); mkdocstrings renders Markdown, where the role would show
as it is written. This turns each role into inline code (``~`` keeps the last name only), so the
docstrings stay as they are for ``help()`` and editors.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match[1], match[2]
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class RstRoles(griffe.Extension):
    """Rewrite every docstring's roles when griffe loads an object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
