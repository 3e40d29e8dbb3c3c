"""JSON in and out: what durable stores is JSON, encoded once with orjson and checked before any
round trip; the pool's jsonb codec passes encoded values through and decodes what it reads."""

from __future__ import annotations

import math
from typing import Any, Final

import orjson

from durable.protocol.errors import NotSerializable, PayloadTooLarge


class RawJson(bytes):
    """JSON text already encoded by :func:`encode_json`; the jsonb codec passes it through."""


MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024
"""The most encoded JSON one value may take: params (a whole ``spawn_many`` batch counts as one
value), options, a result, a step's value, an error. Larger values raise
:class:`~durable.protocol.errors.PayloadTooLarge` before anything is sent. PostgreSQL's own
ceiling for a jsonb value is about 255 MiB, but every claim, retry and replay carries the value
again."""

_JSON_NUL: Final = b"\\u0000"
_NULL: Final = RawJson(b"null")


def encode_json(value: Any, what: str) -> RawJson:
    """Encode ``value`` as JSON or raise :class:`NotSerializable` naming ``what``.

    Refused here, before any round trip: what is not JSON (orjson's types, lone surrogates,
    integers beyond 64 bits, NaN and infinities), a NUL character (jsonb cannot store
    ``\\u0000``) and more than :data:`MAX_PAYLOAD_BYTES` of JSON (:class:`PayloadTooLarge`).
    """
    if value is None:
        return _NULL  # what most handlers return
    if isinstance(value, RawJson):
        return value
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise NotSerializable(what, str(exc)) from exc
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(what, len(encoded), MAX_PAYLOAD_BYTES)
    # orjson writes NaN and infinities as null; JSON has no such numbers, so refuse them
    if b"null" in encoded and _has_non_finite(value):
        raise NotSerializable(what, "NaN and infinity are not JSON numbers")
    if _JSON_NUL in encoded and _has_nul_escape(encoded):
        raise NotSerializable(
            what,
            "it contains a NUL character (\\x00) in a string or a key, which PostgreSQL jsonb "
            "cannot store — remove it, or encode binary data (base64)",
        )
    return RawJson(encoded)


def _has_nul_escape(encoded: bytes) -> bool:
    """Whether ``encoded`` holds the escape ``\\u0000`` (not a literal backslash before "u0000")."""
    at = encoded.find(_JSON_NUL)
    while at != -1:
        before = at  # the escape is real when an even number of backslashes precede it
        while before > 0 and encoded[before - 1] == 0x5C:
            before -= 1
        if (at - before) % 2 == 0:
            return True
        at = encoded.find(_JSON_NUL, at + 1)
    return False


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def encode_jsonb(value: Any) -> bytes:
    return b"\x01" + (value if isinstance(value, RawJson) else orjson.dumps(value))


def decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])
