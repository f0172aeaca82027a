# -*- test-case-name: tests.resp.test_protocol -*-
"""
Errors that travel to a Redis client as ``-PREFIX message`` lines.

``RespError`` is an error reply of the Redis protocol itself (``ERR`` syntax,
``NOPROTO``, ``EXECABORT`` ...).  The node's failures are kvd.errors.KvdError,
which the protocol writes as they are (``-NOLEADER ...``).  Any other
exception reaching the protocol is a bug and becomes ``-ERR internal error``.
``CommandError`` is the same thing returned (not raised) by the command
parser for a request that is malformed before it reaches any executor.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations


class RespError(Exception):
    def __init__(self, prefix: str, message: str):
        if not prefix or " " in prefix:
            raise ValueError("prefix must be one word, e.g. 'ERR'")
        super().__init__(prefix, message)
        self.prefix = prefix
        self.message = message

    def __str__(self) -> str:
        return "%s %s" % (self.prefix, self.message)

    def __repr__(self) -> str:
        return "%s(%r, %r)" % (type(self).__name__, self.prefix, self.message)

    def __eq__(self, other) -> bool:
        if not isinstance(other, RespError):
            return NotImplemented
        return (self.prefix, self.message) == (other.prefix, other.message)

    def __hash__(self) -> int:
        return hash((self.prefix, self.message))


class CommandError(RespError):
    """A request refused by the command table (arity, syntax, unknown command)."""


class Rejected(CommandError):
    """
    A request refused on its face the way Redis refuses it before queueing it
    inside MULTI (unknown command or subcommand, wrong number of arguments), or
    over one of kvd's size limits: inside MULTI it answers at once and EXEC
    then answers EXECABORT.  Any other ``CommandError`` (syntax, not an
    integer ...) is, as in Redis, queued and answered in its place in EXEC's reply.
    """
