# -*- test-case-name: tests.wire.test_peers -*-
"""
Errors that cross the wire between peers.

``ForwardError`` is raised by a ``forward_handler``/``join_handler`` on the
leader and re-raised, with the same code and message, from the follower's
``PeerTransport.forward``/``join``.  On the wire it is one AMP error whose
description is ``"CODE: message"``; AMP rebuilds the exception from that one
string, which is why the constructor also accepts it.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import re

from kvd.errors import Code, KvdError

# The codes are kvd's one vocabulary (kvd.errors); these names stay for the wire's callers.
NOLEADER = Code.NOLEADER
TRYAGAIN = Code.TRYAGAIN
TIMEOUT = Code.TIMEOUT
TOOBIG = Code.TOOBIG
INTERNAL = Code.INTERNAL

_CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class ForwardError(KvdError):
    """
    A ``KvdError`` that crossed the wire.  AMP rebuilds a remote error from its
    description alone, ``"CODE: message"``, which is why the constructor also
    accepts that one string; a code this version does not know is INTERNAL.
    """

    def __init__(self, code, message: str = "") -> None:
        if not isinstance(code, Code):
            if not message and not _CODE.match(code):
                code, message = _parse_description(code)
            if not _CODE.match(code):
                raise ValueError(f"ForwardError code must match {_CODE.pattern}, got {code!r}")
            code = Code.parse(code)
        super().__init__(code, message)

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}" if self.message else self.code.value

    def __repr__(self) -> str:
        return f"ForwardError({self.code.value!r}, {self.message!r})"


def _parse_description(description: str):
    code, sep, message = description.partition(": ")
    if _CODE.match(code):
        return code, message
    # Not our format (e.g. a peer running other code): keep the text.
    return INTERNAL.value, description


class HelloRefused(Exception):
    """The listening peer refused our Hello (wrong cluster, unknown node, bad version)."""


class ProtocolViolation(Exception):
    """A peer broke the protocol (malformed chunk, staging limit, out-of-order data)."""
