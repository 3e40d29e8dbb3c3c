"""Argument types: the text of one command-line value to its value. Their errors are one-line
usage errors (exit code 2), raised as ``argparse.ArgumentTypeError``."""

from __future__ import annotations

import argparse
import json
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from durable.protocol.durations import seconds


def json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (a UUID): {text!r}") from None


def aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no timezone — add an offset, e.g. {text}Z or {text}+02:00"
        )
    return value


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """An argument type that takes one of ``choices``."""

    def choice(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of: {', '.join(choices)}")
        return text

    return choice


def tag(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a tag must not be empty")
    return text


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``1w`` or a number of seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:  # the units are read here; what a duration may be is seconds()'s to say
        return seconds(float(number) * _UNITS[unit], what="a duration")
    except ValueError:  # not a number, or negative, infinite or NaN
        raise argparse.ArgumentTypeError(
            f"not a duration (e.g. 7d, 12h, 30m, 45s): {text!r}"
        ) from None


def since(text: str) -> datetime | float:
    """A duration back from now, or an ISO 8601 time with its offset."""
    try:
        return duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        return aware_datetime(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a duration (30m, 6h, 7d) nor an ISO time with offset: {text!r}"
        ) from None


def rate(text: str) -> float:
    """``10/s``, ``600/m``, ``100/h`` or a number: actions per second."""
    number, _, unit = text.partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit)
    try:
        value = float(number) / per if per else float("nan")
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"not a rate (e.g. 10/s, 30/m): {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def _seconds(text: str, *, allow_zero: bool) -> float:
    try:
        value: float | None = seconds(float(text), what="seconds")
    except ValueError:  # not a number, or negative, infinite or NaN
        value = None
    if value is None or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise argparse.ArgumentTypeError(f"not a number of seconds {bound}: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    return _seconds(text, allow_zero=True)


def positive_float(text: str) -> float:
    return _seconds(text, allow_zero=False)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {text!r}")
    return value
