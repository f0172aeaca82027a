"""
kvd's one error vocabulary, from the edge of the Raft core to the client's
socket: a ``Code`` says what happened and, above all, what a client may
conclude about its command (``Outcome``), because a client cannot be correct
without knowing whether a failed command took effect.

A ``KvdError`` is raised by the node, crosses the peer wire unchanged (a
forwarded command's failure on the leader is the same error on the follower,
kvd.wire.errors.ForwardError), and is written to a Redis client as
``-CODE message`` by the RESP encoder.  Nothing translates it on the way.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    NOT_APPLIED = "certainly not applied: safe to retry"
    UNKNOWN = "may or may not have been applied: read before retrying anything not idempotent"
    REFUSED = "a bad request: fix it"


class Code(str, enum.Enum):
    """The error's first word, on the peer wire and on the Redis port."""

    #: No leader is reachable (an election, or no majority): certainly not applied.
    NOLEADER = "NOLEADER"
    #: Nothing was done (leadership moved, the node is stopping): retry the same command.
    TRYAGAIN = "TRYAGAIN"
    #: A membership change must be sent to the leader at the given address.
    MOVED = "MOVED"
    #: No answer in time, or the link broke after the request left: the outcome is unknown.
    TIMEOUT = "TIMEOUT"
    #: A payload or result bigger than the transport will stage.
    TOOBIG = "TOOBIG"
    #: An unexpected failure on the other side (a bug): the outcome is unknown.
    INTERNAL = "INTERNAL"
    #: A bad request (syntax, arity, a membership change the cluster refuses).
    ERR = "ERR"

    @property
    def outcome(self) -> Outcome:
        return _OUTCOMES[self]

    @classmethod
    def parse(cls, word: str) -> "Code":
        """The code named by ``word``; an unknown word (another version's) is INTERNAL."""
        try:
            return cls(word)
        except ValueError:
            return cls.INTERNAL


_OUTCOMES = {
    Code.NOLEADER: Outcome.NOT_APPLIED,
    Code.TRYAGAIN: Outcome.NOT_APPLIED,
    Code.MOVED: Outcome.NOT_APPLIED,
    Code.TOOBIG: Outcome.NOT_APPLIED,
    Code.TIMEOUT: Outcome.UNKNOWN,
    Code.INTERNAL: Outcome.UNKNOWN,
    Code.ERR: Outcome.REFUSED,
}


class KvdError(Exception):
    """A request failed; ``code`` says how, ``message`` is for humans."""

    def __init__(self, code: Code, message: str = ""):
        code = Code(code)
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def outcome(self) -> Outcome:
        return self.code.outcome

    @property
    def not_applied(self) -> bool:
        """True when the command certainly did not take effect (a retry is safe)."""
        return self.code.outcome is Outcome.NOT_APPLIED

    def __str__(self) -> str:
        return "%s %s" % (self.code.value, self.message) if self.message else self.code.value

    def __repr__(self) -> str:
        return "%s(%s, %r)" % (type(self).__name__, self.code.name, self.message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KvdError):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))
