# -*- test-case-name: tests.resp.test_protocol -*-
"""
RESP2 encoding of replies.

Python values map onto RESP2 types as follows::

    kvd.kv OK, SimpleString("PONG")  -> +OK / +PONG           simple string
    KVError, RespError               -> -ERR message          error
    int (bool too)                   -> :42                   integer
    bytes, bytearray, memoryview     -> $3 abc                bulk string
    str                              -> bulk string of its UTF-8 bytes
    None                             -> $-1                   nil bulk
    list, tuple                      -> *N ...                array, nested freely

Simple strings and errors are single lines: CR and LF inside them are
replaced by spaces, as Redis does, so no reply can desynchronise a client.
Text from the client (e.g. an unknown command name) is kept byte for byte by
decoding it with ``surrogateescape``, which this module reverses.

Allowed imports: the standard library, kvd.kv and kvd.resp.errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

from kvd.kv.results import OK, KVError
from kvd.resp.errors import RespError

CRLF = b"\r\n"
NIL = b"$-1\r\n"
_LINE_FIX = bytes.maketrans(b"\r\n", b"  ")


@dataclass(frozen=True)
class SimpleString:
    text: str


PONG = SimpleString("PONG")


def _line(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").translate(_LINE_FIX)


def encode_error(prefix: str, message: str) -> bytes:
    return b"-" + _line("%s %s" % (prefix, message)) + CRLF


def encode(value: Any) -> bytes:
    """The RESP2 bytes of one reply; TypeError for anything that is not a reply."""
    out: List[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: List[bytes]) -> None:
    if value is None:
        out.append(NIL)
    elif value is OK:
        out.append(b"+OK\r\n")
    elif isinstance(value, bytes):
        out.append(b"$%d\r\n" % len(value))
        out.append(value)
        out.append(CRLF)
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, (list, tuple)):
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, str):
        _encode(value.encode("utf-8", "surrogateescape"), out)
    elif isinstance(value, (bytearray, memoryview)):
        _encode(bytes(value), out)
    elif isinstance(value, SimpleString):
        out.append(b"+" + _line(value.text) + CRLF)
    elif isinstance(value, KVError):
        out.append(b"-" + _line(value.message) + CRLF)
    elif isinstance(value, RespError):
        out.append(encode_error(value.prefix, value.message))
    else:
        raise TypeError("cannot encode %r as a RESP reply" % (value,))
