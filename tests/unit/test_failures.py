"""The reason class of a handler's error: bounded, by error type, first matching rule wins."""

from __future__ import annotations

import json
import socket

import pytest

from durable.protocol.errors import DatabaseUnavailable, NotSerializable
from durable.protocol.failures import classify_error
from durable.protocol.records import ReasonClass


class PaymentGatewayDown(ConnectionError):
    pass


class UpstreamRateLimited(Exception):
    pass


class ReadTimeout(Exception):
    pass


class OrderValidationError(Exception):
    pass


class Declared(Exception):
    durable_reason_class = "exhausted"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(), ReasonClass.TRANSPORT),
        (PaymentGatewayDown(), ReasonClass.TRANSPORT),
        (socket.gaierror(), ReasonClass.TRANSPORT),
        (DatabaseUnavailable("down"), ReasonClass.TRANSPORT),
        (EOFError(), ReasonClass.TRANSPORT),
        (TimeoutError(), ReasonClass.TIMEOUT),
        (ReadTimeout(), ReasonClass.TIMEOUT),
        (MemoryError(), ReasonClass.EXHAUSTED),
        (RecursionError(), ReasonClass.EXHAUSTED),
        (UpstreamRateLimited(), ReasonClass.EXHAUSTED),
        (ValueError(), ReasonClass.VALIDATION),
        (json.JSONDecodeError("x", "", 0), ReasonClass.VALIDATION),
        (KeyError("k"), ReasonClass.VALIDATION),
        (TypeError(), ReasonClass.VALIDATION),
        (NotSerializable("params", "a set"), ReasonClass.VALIDATION),
        (OrderValidationError(), ReasonClass.VALIDATION),
        (Declared(), ReasonClass.EXHAUSTED),
        (RuntimeError(), ReasonClass.UNKNOWN),
        (FileNotFoundError(), ReasonClass.UNKNOWN),
    ],
)
def test_classify_error(exc: BaseException, expected: ReasonClass) -> None:
    assert classify_error(exc) is expected


def test_non_retryable_has_the_class_of_what_it_wraps() -> None:
    from durable.protocol.errors import NonRetryable, PatchRetired

    assert classify_error(NonRetryable("bad input")) is ReasonClass.VALIDATION
    assert classify_error(NonRetryable(ConnectionResetError())) is ReasonClass.TRANSPORT
    chained = NonRetryable("gave up")
    chained.__cause__ = TimeoutError("slow")  # as `raise NonRetryable("gave up") from exc` sets
    assert chained.cause is chained.__cause__
    assert classify_error(chained) is ReasonClass.TIMEOUT
    wrapped = NonRetryable(KeyError("k"))
    assert (str(wrapped), wrapped.__cause__) == ("KeyError: 'k'", wrapped.cause)
    assert classify_error(PatchRetired("c")) is ReasonClass.VALIDATION  # declared


def test_is_retried_by_default_and_as_the_rules_say() -> None:
    from durable.protocol.errors import NonRetryable
    from durable.protocol.failures import is_retried

    value, transport = ValueError(), ConnectionError()
    assert is_retried(value, ReasonClass.VALIDATION)  # the default: every error
    assert not is_retried(NonRetryable(), ReasonClass.VALIDATION, retry_on=[NonRetryable])
    assert not is_retried(value, ReasonClass.VALIDATION, discard_on=[LookupError, ValueError])
    assert not is_retried(value, ReasonClass.VALIDATION, discard_on=[ReasonClass.VALIDATION])
    assert is_retried(transport, ReasonClass.TRANSPORT, discard_on=[ReasonClass.VALIDATION])
    assert is_retried(transport, ReasonClass.TRANSPORT, retry_on=[ReasonClass.TRANSPORT])
    assert not is_retried(value, ReasonClass.VALIDATION, retry_on=[ReasonClass.TRANSPORT])
    assert not is_retried(None, ReasonClass.TIMEOUT, retry_on=[TimeoutError])  # heartbeat
    assert is_retried(None, ReasonClass.TIMEOUT, retry_on=[ReasonClass.TIMEOUT])
