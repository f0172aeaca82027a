# -*- test-case-name: tests.wire.test_peers -*-
"""
Errors that cross the wire between peers.

``ForwardError`` is raised by a ``forward_handler``/``join_handler`` on the
leader and re-raised, with the same code and message, from the follower's
``PeerTransport.forward``/``join``.  On the wire it is one AMP error whose
description is ``"CODE: message"``; AMP rebuilds the exception from that one
string, which is why the constructor also accepts it.

Allowed imports: the standard library only.
"""

from __future__ import annotations

import re

#: No leader is known (or the receiver is not the leader any more).
NOLEADER = "NOLEADER"
#: Nothing was done; the client may retry the same command.
TRYAGAIN = "TRYAGAIN"
#: No answer in time or the link broke after the request left: the outcome is unknown.
TIMEOUT = "TIMEOUT"
#: The payload or result exceeds what the transport will stage.
TOOBIG = "TOOBIG"
#: The remote handler failed with an unexpected exception.
INTERNAL = "INTERNAL"

_CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class ForwardError(Exception):
    """A forwarded command failed; ``code`` is machine-readable, ``message`` is for humans."""

    def __init__(self, code: str, message: str = "") -> None:
        if not message and not _CODE.match(code):
            # AMP builds remote errors from the description alone.
            code, message = _parse_description(code)
        if not _CODE.match(code):
            raise ValueError(f"ForwardError code must match {_CODE.pattern}, got {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code

    def __repr__(self) -> str:
        return f"ForwardError({self.code!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ForwardError):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


def _parse_description(description: str):
    code, sep, message = description.partition(": ")
    if _CODE.match(code):
        return code, message
    # Not our format (e.g. a peer running other code): keep the text.
    return INTERNAL, description


class HelloRefused(Exception):
    """The listening peer refused our Hello (wrong cluster, unknown node, bad version)."""


class ProtocolViolation(Exception):
    """A peer broke the protocol (malformed chunk, staging limit, out-of-order data)."""
