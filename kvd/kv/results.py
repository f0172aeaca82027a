# -*- test-case-name: tests.kv.test_machine -*-
"""
What the key/value machine answers, and the codec that keeps answers in
snapshots (sessions remember the responses a client has not acknowledged).

A result is one of: ``OK``, bytes (a bulk string), int, None (nil), a list of
results, ``KVError``, or ``StatusText`` (a status other than OK: a Lua
script's ``{ok=...}``).  These are exactly the shapes RESP2 can carry, so
the protocol layer encodes them without knowing any command.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import List, Union

from kvd.kv.codec import CodecError, Reader, Writer


class Status(enum.Enum):
    OK = "OK"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


OK = Status.OK


@dataclass(frozen=True)
class KVError:
    """An error reply; ``message`` starts with its code, e.g. ``"ERR value is not ..."``."""

    message: str

    def __post_init__(self):
        if not isinstance(self.message, str):
            raise TypeError("message must be str")

    @property
    def code(self) -> str:
        return self.message.split(" ", 1)[0]


@dataclass(frozen=True)
class StatusText:
    """A status reply other than OK (``+PONG``, a script's ``redis.status_reply``)."""

    text: str

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise TypeError("text must be str")


Result = Union[Status, bytes, int, None, List["Result"], KVError, StatusText]

ERR_NOT_INTEGER = KVError("ERR value is not an integer or out of range")
ERR_OVERFLOW = KVError("ERR increment or decrement would overflow")
ERR_NO_SUCH_KEY = KVError("ERR no such key")
# Redis's text for a string over proto-max-bulk-len; kvd's limit is the proposing node's --value-max-bytes.
ERR_STRING_TOO_LONG = KVError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
# The client's session was forgotten after session_ttl_ms of silence.  Whether
# an earlier attempt of this very command was applied is unknown: a client may
# retry under a new client id only a command it never proposed before.
ERR_SESSION_EXPIRED = KVError("SESSIONEXPIRED client session expired; start a new session")
# The seq is below what the client acknowledged: a retry after the client
# claimed to have the answer, so the answer is gone.
ERR_STALE_SEQ = KVError("ERR stale request: sequence number already acknowledged")

_NIL, _OK, _BYTES, _INT, _LIST, _ERROR, _STATUS = range(7)
_MAX_DEPTH = 8


def encode_result(w: Writer, result: Result, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("result nested too deeply")
    if result is None:
        w.byte(_NIL)
    elif result is OK:
        w.byte(_OK)
    elif isinstance(result, bytes):
        w.byte(_BYTES)
        w.blob(result)
    elif isinstance(result, int) and not isinstance(result, bool):
        w.byte(_INT)
        w.sint(result)
    elif isinstance(result, list):
        w.byte(_LIST)
        w.uint(len(result))
        for item in result:
            encode_result(w, item, depth + 1)
    elif isinstance(result, KVError):
        w.byte(_ERROR)
        w.blob(result.message.encode("utf-8", "surrogateescape"))
    elif isinstance(result, StatusText):
        w.byte(_STATUS)
        w.blob(result.text.encode("utf-8", "surrogateescape"))
    else:
        raise TypeError("not a result: %r" % (result,))


def decode_result(r: Reader, depth: int = 0) -> Result:
    if depth > _MAX_DEPTH:
        raise CodecError("result nested too deeply")
    tag = r.byte()
    if tag == _NIL:
        return None
    if tag == _OK:
        return OK
    if tag == _BYTES:
        return r.blob()
    if tag == _INT:
        return r.sint()
    if tag == _LIST:
        return [decode_result(r, depth + 1) for _ in range(r.count())]
    if tag == _ERROR:
        return KVError(r.blob().decode("utf-8", "surrogateescape"))
    if tag == _STATUS:
        return StatusText(r.blob().decode("utf-8", "surrogateescape"))
    raise CodecError("unknown result tag %d" % (tag,))
