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
