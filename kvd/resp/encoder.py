# -*- test-case-name: tests.resp.test_protocol -*-
"""
RESP2 encoding of replies, and the RESP3 variant a client asks for with
``HELLO 3`` (redis-py 8 does so by default).

Python values map onto RESP2 types as follows::

    kvd.kv OK, SimpleString("PONG")  -> +OK / +PONG           simple string (kvd.kv StatusText too)
    KVError, RespError, KvdError     -> -ERR message          error (KvdError: -CODE message)
    int (bool too)                   -> :42                   integer
    bytes, bytearray, memoryview     -> $3 abc                bulk string
    str                              -> bulk string of its UTF-8 bytes
    Verbatim                         -> bulk string (RESP2), =N txt:... (RESP3: CLIENT LIST, INFO)
    None                             -> $-1                   nil bulk
    NIL_ARRAY                        -> *-1                   nil array (EXEC after a WATCHed key changed)
    list, tuple                      -> *N ...                array, nested freely
    RespMap                          -> %N ... (RESP3) or a flat *2N array (RESP2)
    RespPairs                        -> *N of *2 arrays (RESP3) or a flat *2N array (RESP2)
    Push                             -> >N ... (RESP3 push: out of band) or *N ... (RESP2)

The two protocols differ only where kvd uses it: RESP3 writes nil as ``_``
and has a map type.

Simple strings and errors are single lines: CR and LF inside them are
replaced by spaces, as Redis does, so no reply can desynchronise a client.
Text from the client (e.g. an unknown command name) is kept byte for byte by
decoding it with ``surrogateescape``, which this module reverses.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

from kvd.errors import KvdError
from kvd.kv.results import OK, KVError, StatusText
from kvd.resp.errors import RespError

CRLF = b"\r\n"
NIL = b"$-1\r\n"
_LINE_FIX = bytes.maketrans(b"\r\n", b"  ")


@dataclass(frozen=True)
class SimpleString:
    text: str


@dataclass(frozen=True)
class Verbatim:
    """Text for people (CLIENT LIST, CLIENT INFO): a RESP3 verbatim string ``=N txt:...``, a bulk string in RESP2."""

    data: bytes


PONG = SimpleString("PONG")
QUEUED = SimpleString("QUEUED")


class NilArray:
    """EXEC's reply when a WATCHed key changed: ``*-1`` (RESP2) or ``_`` (RESP3)."""

    def __repr__(self) -> str:
        return "NIL_ARRAY"


NIL_ARRAY = NilArray()


@dataclass(frozen=True)
class RespMap:
    pairs: tuple  # ((key, value), ...)


@dataclass(frozen=True)
class RespPairs(RespMap):
    """HRANDFIELD ... WITHVALUES: an array of [field, value] arrays in RESP3, a flat array in RESP2."""


@dataclass(frozen=True)
class Push:
    """An out-of-band message (pub/sub): RESP3's push type ``>N``, a plain array in RESP2."""

    items: tuple


def _line(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").translate(_LINE_FIX)


def encode_error(prefix: str, message: str) -> bytes:
    return b"-" + _line("%s %s" % (prefix, message)) + CRLF


def encode(value: Any, resp3: bool = False) -> bytes:
    """The RESP2 (or RESP3) bytes of one reply; TypeError for anything that is not a reply."""
    # SET's and GET's replies at once, without the list that nested replies need.
    if value is OK:
        return b"+OK\r\n"
    if type(value) is bytes:
        return b"$%d\r\n%s\r\n" % (len(value), value)
    out: List[bytes] = []
    _encode(value, out, resp3)
    return b"".join(out)


def _encode(value: Any, out: List[bytes], resp3: bool = False) -> None:
    if value is None:
        out.append(b"_\r\n" if resp3 else NIL)
    elif value is OK:
        out.append(b"+OK\r\n")
    elif value is NIL_ARRAY:
        out.append(b"_\r\n" if resp3 else b"*-1\r\n")
    elif isinstance(value, bytes):
        out.append(b"$%d\r\n" % len(value))
        out.append(value)
        out.append(CRLF)
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, (list, tuple)):
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode(item, out, resp3)
    elif isinstance(value, str):
        _encode(value.encode("utf-8", "surrogateescape"), out, resp3)
    elif isinstance(value, (bytearray, memoryview)):
        _encode(bytes(value), out)
    elif isinstance(value, Push):
        out.append(b">%d\r\n" % len(value.items) if resp3 else b"*%d\r\n" % len(value.items))
        for item in value.items:
            _encode(item, out, resp3)
    elif isinstance(value, RespPairs) and resp3:
        _encode([list(pair) for pair in value.pairs], out, resp3)
    elif isinstance(value, RespMap):
        out.append(b"%%%d\r\n" % len(value.pairs) if resp3 else b"*%d\r\n" % (2 * len(value.pairs)))
        for k, v in value.pairs:
            _encode(k, out, resp3)
            _encode(v, out, resp3)
    elif isinstance(value, Verbatim):
        if resp3:
            out.append(b"=%d\r\ntxt:" % (len(value.data) + 4))
            out.append(value.data)
            out.append(CRLF)
        else:
            _encode(value.data, out)
    elif isinstance(value, (SimpleString, StatusText)):
        out.append(b"+" + _line(value.text) + CRLF)
    elif isinstance(value, KVError):
        out.append(b"-" + _line(value.message) + CRLF)
    elif isinstance(value, RespError):
        out.append(encode_error(value.prefix, value.message))
    elif isinstance(value, KvdError):
        out.append(encode_error(value.code.value, value.message))
    else:
        raise TypeError("cannot encode %r as a RESP reply" % (value,))
