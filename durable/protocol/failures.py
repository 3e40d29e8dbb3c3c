"""Why work failed, in a few words: the bounded reason classes of the failed-work view.

A run's failure reason says how it ended (``errored``, ``job_timeout``, ``heartbeat_timeout``,
``crash``, ``cancelled``). The reason class says what kind of trouble it was, so an on-call
engineer can tell at a glance whether to wait (transport), fix the input or the code
(validation), give the work more time (timeout), look at the machines (crash) or at a quota or
memory (exhausted):

* ``crash``: the worker died (reason ``crash``);
* ``timeout``: reason ``job_timeout`` or ``heartbeat_timeout``, a cancellation policy's time
  limit, or a handler that raised ``TimeoutError`` (``asyncio.TimeoutError``, ``socket.timeout``)
  or an error whose type name ends in ``Timeout``/``TimeoutError``/``TimeoutException``;
* ``exhausted``: a resource ran out: ``MemoryError``, ``RecursionError``, or a type name that
  says so (``RateLimit``, ``TooMany``, ``Quota``, ``Throttl``, ``Exhausted``, ``OutOfMemory``,
  ``DiskFull``);
* ``transport``: the network or a service was unreachable: ``ConnectionError`` and its
  subclasses, ``EOFError``, ``socket.gaierror``, ``ssl.SSLError``, ``urllib.error.URLError``,
  ``durable.DatabaseUnavailable``, or a type name ending in ``ConnectionError``,
  ``ConnectError``, ``TransportError``, ``NetworkError`` or ``ProtocolError``;
* ``validation``: the input or the code is wrong, and running the same input again fails the
  same way: ``ValueError`` (so ``json.JSONDecodeError``, ``UnicodeError`` and pydantic's
  ``ValidationError``), ``TypeError``, ``LookupError`` (``KeyError``, ``IndexError``),
  ``AttributeError``, ``AssertionError``, ``NotImplementedError``, ``durable.NotSerializable``,
  ``durable.UnknownTask``, or a type name ending in ``ValidationError``;
* ``unknown``: anything else, including an operator's cancellation.

The first rule that matches wins, in the order above. An exception class may also name its
class itself: ``durable_reason_class = "transport"``. A :class:`durable.NonRetryable` has the class
of the error it wraps (``validation`` when it wraps none). The worker classifies a handler's error
when it records it (``error["reason_class"]``); the database derives the class from the failure
reason for the others (``durable.reason_class`` in ``sql/``).

Whether a failure is retried (:func:`is_retried`) is decided here too, by the worker that records
it; the default is to retry every error while attempts are left:

* a :class:`durable.NonRetryable` (``PatchRetired`` is one) is never retried;
* a task's ``discard_on`` (exception types and reason classes) lists errors that end it now;
* a task's ``retry_on``, when given, lists the only errors that are retried.

A failure that is not retried is recorded with ``error["retryable"] = false``, and
``durable.fail_locked_run`` ends the task ``failed`` at once (its ``on_discard`` hook is told
``non_retryable``). The database applies the task's stored reason classes too (a spawn's
``retry_on``/``discard_on``, and a definition's classes), to every failure, a crash included: a
failure is retried only when both allow it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from durable.protocol.errors import InvalidArgument, NonRetryable
from durable.protocol.records import FailedWork, ReasonClass

#: What ``retry_on`` and ``discard_on`` list: exception types (a subclass matches) and reason
#: classes (``"transport"``, ``ReasonClass.VALIDATION``, ...).
ErrorMatch = type[BaseException] | ReasonClass | str

_TIMEOUT_TYPES = frozenset({"builtins.TimeoutError"})
_TIMEOUT_SUFFIXES = ("Timeout", "TimeoutError", "TimeoutException")

_EXHAUSTED_TYPES = frozenset({"builtins.MemoryError", "builtins.RecursionError"})
_EXHAUSTED_WORDS = (
    "RateLimit",
    "TooMany",
    "Quota",
    "Throttl",
    "Exhausted",
    "OutOfMemory",
    "DiskFull",
)

_TRANSPORT_TYPES = frozenset(
    {
        "builtins.ConnectionError",
        "builtins.EOFError",
        "socket.gaierror",
        "socket.herror",
        "ssl.SSLError",
        "urllib.error.URLError",
        "durable.protocol.errors.DatabaseUnavailable",
    }
)
_TRANSPORT_SUFFIXES = (
    "ConnectionError",
    "ConnectError",
    "TransportError",
    "NetworkError",
    "ProtocolError",
)

_VALIDATION_TYPES = frozenset(
    {
        "builtins.ValueError",
        "builtins.TypeError",
        "builtins.LookupError",
        "builtins.AttributeError",
        "builtins.AssertionError",
        "builtins.NotImplementedError",
        "durable.protocol.errors.NotSerializable",
        "durable.protocol.errors.UnknownTask",
    }
)
_VALIDATION_SUFFIXES = ("ValidationError",)


def classify_error(exc: BaseException) -> ReasonClass:
    """The reason class of a handler's error (see the module's docstring)."""
    if isinstance(exc, NonRetryable) and getattr(exc, "durable_reason_class", None) is None:
        cause = exc.cause
        return ReasonClass.VALIDATION if cause is None else classify_error(cause)
    declared = getattr(exc, "durable_reason_class", None)
    if isinstance(declared, str) and declared in ReasonClass.__members__.values():
        return ReasonClass(declared)
    lineage = [cls for cls in type(exc).__mro__ if cls not in (object, BaseException, Exception)]
    names = {f"{cls.__module__}.{cls.__qualname__}" for cls in lineage}
    short = [cls.__qualname__ for cls in lineage]
    if names & _TIMEOUT_TYPES or _ends_with(short, _TIMEOUT_SUFFIXES):
        return ReasonClass.TIMEOUT
    if names & _EXHAUSTED_TYPES or any(w in n for n in short for w in _EXHAUSTED_WORDS):
        return ReasonClass.EXHAUSTED
    if names & _TRANSPORT_TYPES or _ends_with(short, _TRANSPORT_SUFFIXES):
        return ReasonClass.TRANSPORT
    if names & _VALIDATION_TYPES or _ends_with(short, _VALIDATION_SUFFIXES):
        return ReasonClass.VALIDATION
    return ReasonClass.UNKNOWN


def error_matches(
    exc: BaseException | None, reason_class: ReasonClass, matches: Sequence[ErrorMatch]
) -> bool:
    """Whether a failure (``exc``, None for a heartbeat timeout, and its ``reason_class``) is one
    of ``matches``: an instance of a listed type, or of a listed reason class."""
    for match in matches:
        if isinstance(match, type):
            if exc is not None and isinstance(exc, match):
                return True
        elif match == reason_class:
            return True
    return False


def is_retried(
    exc: BaseException | None,
    reason_class: ReasonClass,
    *,
    retry_on: Sequence[ErrorMatch] | None = None,
    discard_on: Sequence[ErrorMatch] = (),
) -> bool:
    """Whether a failure is retried while attempts are left (see the module's docstring)."""
    if isinstance(exc, NonRetryable):
        return False
    if discard_on and error_matches(exc, reason_class, discard_on):
        return False
    return retry_on is None or error_matches(exc, reason_class, retry_on)


def check_error_matches(value: object, what: str) -> tuple[ErrorMatch, ...] | None:
    """``retry_on``/``discard_on`` as given to ``@app.task``, checked: None, or a sequence of
    exception types and reason class names (one alone is taken as a sequence of one)."""
    if value is None:
        return None
    items = (value,) if isinstance(value, type | str) else value
    if not isinstance(items, Sequence | set | frozenset):
        raise InvalidArgument(f"{what} must be exception types or reason classes, got {value!r}")
    checked: list[ErrorMatch] = []
    for item in items:
        if isinstance(item, type) and issubclass(item, BaseException):
            checked.append(item)
        elif isinstance(item, str) and item in ReasonClass.__members__.values():
            checked.append(ReasonClass(item))
        else:
            known = ", ".join(c.value for c in ReasonClass)
            raise InvalidArgument(
                f"{what} takes exception types and reason classes ({known}), got {item!r}"
            )
    return tuple(checked)


def _ends_with(names: Iterable[str], suffixes: tuple[str, ...]) -> bool:
    return any(name.endswith(suffixes) for name in names)


def reason_class_counts(rows: Iterable[FailedWork]) -> dict[ReasonClass, int]:
    """How many of ``rows`` fall in each reason class (every class, most frequent first)."""
    counts = Counter(row.reason_class for row in rows)
    ordered = sorted(ReasonClass, key=lambda c: (-counts[c], list(ReasonClass).index(c)))
    return {reason_class: counts[reason_class] for reason_class in ordered}
