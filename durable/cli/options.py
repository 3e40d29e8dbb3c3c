"""Flags made from the option dataclasses, so that each option is written once.

``durable spawn`` offers a flag for each field of :class:`SpawnOptions` whose metadata carries a
``cli`` help, and builds the options from the flags given; ``durable worker``'s flags show the
defaults that :class:`WorkerOptions` holds and pass on only the flags given.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import functools
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from durable.cli import arguments
from durable.protocol.records import ReasonClass, SpawnOptions
from durable.runtime.worker import WorkerOptions


@dataclass(frozen=True, slots=True)
class _Reading:
    """How a flag reads one value: its argument type and the name of the value in ``--help``."""

    parse: Callable[[str], Any]
    metavar: str


#: How a spawn flag reads a value of the field's type (None left out of the union).
_BY_TYPE: dict[frozenset[object], _Reading] = {
    frozenset({str}): _Reading(str, "K"),
    frozenset({int}): _Reading(int, "N"),
    frozenset({float, timedelta}): _Reading(arguments.non_negative_float, "S"),
    frozenset({datetime}): _Reading(arguments.aware_datetime, "ISO8601"),
    frozenset({uuid.UUID}): _Reading(arguments.task_id, "ID"),
}
#: The fields the command line reads more strictly than their type says, or names otherwise.
_BY_NAME: dict[str, _Reading] = {
    "max_attempts": _Reading(arguments.positive_int, "N"),
    "priority": _Reading(int, "P"),
    "tags": _Reading(arguments.tag, "T"),
    "retry_on": _Reading(arguments.one_of(tuple(c.value for c in ReasonClass)), "CLASS"),
    "discard_on": _Reading(arguments.one_of(tuple(c.value for c in ReasonClass)), "CLASS"),
}
#: Fields whose flags exclude each other.
_EXCLUSIVE: tuple[frozenset[str], ...] = (frozenset({"delay", "at"}),)


@dataclass(frozen=True, slots=True)
class SpawnFlag:
    """The flag of one field of :class:`SpawnOptions`."""

    name: str  # the field's, and the flag's dest
    help: str
    reading: _Reading
    repeatable: bool  # a sequence: the flag is given once per item

    @property
    def flag(self) -> str:
        """``--name-with-dashes``; a repeatable flag names one item (``tags``: ``--tag``)."""
        name = self.name.removesuffix("s") if self.repeatable else self.name
        return "--" + name.replace("_", "-")


def _spawn_flag(field: dataclasses.Field[Any], hint: object) -> SpawnFlag:
    types = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    repeatable = len(types) == 1 and typing.get_origin(types[0]) is collections.abc.Sequence
    if repeatable:
        types = list(typing.get_args(types[0]))
    reading = _BY_NAME.get(field.name) or _BY_TYPE.get(frozenset(types))
    if reading is None and len(types) == 1 and typing.get_origin(types[0]) is typing.Literal:
        choices = tuple(str(choice) for choice in typing.get_args(types[0]))
        reading = _Reading(arguments.one_of(choices), "|".join(choices))
    if reading is None:
        raise TypeError(
            f"SpawnOptions.{field.name} has a cli help but durable spawn cannot read a {hint}: "
            "add its type to durable/cli/options.py"
        )
    return SpawnFlag(field.name, field.metadata["cli"], reading, repeatable)


@functools.cache
def spawn_flags() -> tuple[SpawnFlag, ...]:
    """A flag for each field of :class:`SpawnOptions` with a ``cli`` help, in field order."""
    hints = typing.get_type_hints(SpawnOptions)
    return tuple(
        _spawn_flag(field, hints[field.name])
        for field in dataclasses.fields(SpawnOptions)
        if field.metadata.get("cli")
    )


def add_spawn_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per spawn option (see :func:`spawn_flags`) on ``durable spawn``'s parser."""
    groups: dict[frozenset[str], argparse._ActionsContainer] = {}
    for spawn_flag in spawn_flags():
        target: argparse._ActionsContainer = parser
        for names in _EXCLUSIVE:
            if spawn_flag.name in names:
                if names not in groups:
                    groups[names] = parser.add_mutually_exclusive_group()
                target = groups[names]
        target.add_argument(
            spawn_flag.flag,
            dest=spawn_flag.name,
            action="append" if spawn_flag.repeatable else "store",
            type=spawn_flag.reading.parse,
            metavar=spawn_flag.reading.metavar,
            help=spawn_flag.help,
        )


def spawn_options(args: argparse.Namespace) -> SpawnOptions:
    """The options of the spawn flags given (the others keep SpawnOptions's defaults);
    ValueError when SpawnOptions refuses them."""
    given = {
        flag.name: value
        for flag in spawn_flags()
        if (value := getattr(args, flag.name, None)) is not None
    }
    return SpawnOptions(**given)


#: WorkerOptions's defaults by field name, read from its dataclass fields (where they live).
_WORKER_DEFAULTS: Mapping[str, object] = {
    field.name: field.default
    for field in dataclasses.fields(WorkerOptions)
    if field.default is not dataclasses.MISSING
}


def worker_help(name: str, text: str) -> str:
    """``text`` with ``{default}`` replaced by WorkerOptions's default of field ``name``."""
    default = _WORKER_DEFAULTS[name]
    return text.format(default=f"{default:g}" if isinstance(default, float) else default)


def worker_options(args: argparse.Namespace) -> dict[str, Any]:
    """The worker options given as flags (None: not given, WorkerOptions's default applies)."""
    return {
        name: value for name in _WORKER_DEFAULTS if (value := getattr(args, name, None)) is not None
    }
