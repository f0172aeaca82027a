# -*- test-case-name: tests.test_limits -*-
"""
Every size limit of kvd, in one table, with the relations between them checked.

A client's write travels a long way: the RESP parser buffers it, the command
table turns it into one write command, the node wraps it in an envelope that
is one Raft log entry, a follower forwards that envelope to the leader, the
leader sends it to every follower inside an AppendEntries batch, and each
receiver stages the batch whole before storing and applying it.  Each step
has a limit, and a command that passes an early limit but breaks a later one
is the worst case there is: it is accepted, logged and then refused by a
follower's transport again and again, and every write behind it times out.
So the limits are not independent numbers but a chain, and ``Limits.check``
proves the chain holds: whatever the client port accepts fits every later
step.

The table (defaults; ``--value-max-bytes`` is the one a node sets itself):

======================  ===========  ==================================================
limit                   default      bounds
======================  ===========  ==================================================
``key_bytes``           511 B        a key; LMDB's largest key (keys may be LMDB keys)
``value_bytes``         1 MiB        a value (``--value-max-bytes``); any bulk argument
``command_keys``        10,000       keys one write touches (applying it takes bounded
                                     time: 27-48 ms for 10,000 keys, measured)
``command_bytes``       4 MiB        one write command as encoded in the log (an MSET's
                                     keys and values with their lengths)
``request_bytes``       4 MiB+64 KiB one RESP request's bulk arguments, buffered whole
``entry_bytes``         4 MiB+4 KiB  one log entry: a command and its envelope
``append_bytes``        48 KiB       entries batched into one AppendEntries (a bigger
                                     entry travels alone)
``forward_bytes``       16 MiB       a forwarded payload (an entry) or its result
``staged_bytes``        64 MiB       bytes one peer connection stages (blobs)
======================  ===========  ==================================================

Why 4 MiB for a command.  Measured on the 2-core machine, three TLS nodes with
fsync, an MSET through the leader / through a follower, median (max) of 10:

* quiet machine: 4 MiB 0.10 s / 0.08 s, 8 MiB 0.21 s / 0.21 s, 14 MiB
  0.38 s / 0.64 s;
* shared with other test runs (load 4.5): 2 MiB 0.04 s / 0.05 s, 4 MiB
  0.13 (0.21) s / 0.18 (0.71) s, 8 MiB 0.28-0.69 (1.65) s / 0.32-0.59 (0.89) s,
  and one leader election in 36 writes of 8 MiB, none at 4 MiB or less.

A write holds every node's reactor for about as long as it takes, and the
shortest election timeout is 8 ticks of 50 ms = 0.4 s: at 8 MiB a loaded
node already misses it.  4 MiB keeps a command within about half of it, and
the largest AppendEntries with the largest forward beside it within 20 MiB
of a connection's 64 MiB staging, so no accepted command comes near it.
etcd, for comparison, takes requests of 1.5 MiB by default.

Everything here is pure: the table is imported by the RESP port, the node,
the Raft core's defaults, the peer transport and ``twistd kvd``'s options.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

KiB = 1024
MiB = 1024 * KiB

#: LMDB's largest key (MDB_MAXKEYSIZE of the library the lmdb package bundles): a key of the key space
#: must fit when the applied state keeps keys as LMDB keys.
LMDB_KEY_BYTES = 511
#: LMDB's largest value (a u32 length): log entries are LMDB values.
LMDB_VALUE_BYTES = (1 << 32) - 1
#: The peer wire frames entries and blobs with u32 lengths (kvd.wire.codec).
WIRE_LENGTH_BYTES = (1 << 32) - 1
#: Not a size anything is accepted at, but where the RESP parser stops trusting the framing: a bulk
#: length past it closes the connection (Redis's proto-max-bulk-len, 512 MB), while anything over the
#: limits below it is skipped unread and answered with an error.
BULK_FRAMING_BYTES = 512 * MiB

#: An envelope's bytes around its command (kvd.kv.commands): a version byte, the client id
#: (a node id of up to 255 characters, 4 bytes each in UTF-8, a slash and 12 hex digits) with
#: its length, three u64 varints (seq, ack_below, stamp_ms).  Rounded up.
ENVELOPE_ROOM = 4 * KiB
#: A RESP request's bytes beyond its command's encoding: the command name and option words
#: (``MSET``, ``SET ... NX GET``).  Rounded up generously.
REQUEST_ROOM = 64 * KiB
#: What an AppendEntries message carries besides its entries' data (the command name, terms,
#: indexes, node ids of up to 1,020 bytes each, a header per entry counted by ``Entry.size``).
MESSAGE_ROOM = 64 * KiB
#: The largest encoding of a SET beyond its key and value: tag, two lengths, flags.
SET_ROOM = 32
#: A write's result beyond one value (SET ... GET answers the old value).
RESULT_ROOM = 64


class LimitsError(ValueError):
    """Two limits contradict each other: a command one step accepts, a later step would refuse."""


@dataclass(frozen=True)
class Limits:
    """
    The table: the limits a node is built with (fields) and those that follow from them (properties).
    Only ``value_bytes`` differs between nodes (``--value-max-bytes``); the rest is the same on every
    node, because a follower must take whatever any leader proposes.
    """

    key_bytes: int = LMDB_KEY_BYTES
    value_bytes: int = 1 * MiB
    command_keys: int = 10_000
    command_bytes: int = 4 * MiB
    append_bytes: int = 48 * KiB
    forward_bytes: int = 16 * MiB
    staged_bytes: int = 64 * MiB

    @property
    def entry_bytes(self) -> int:
        """The largest log entry a client's command can make: the command and its envelope."""
        return self.command_bytes + ENVELOPE_ROOM

    @property
    def request_bytes(self) -> int:
        """The bulk bytes of one RESP request the parser will buffer (past it: skipped, -ERR)."""
        return self.command_bytes + REQUEST_ROOM

    @property
    def append_message_bytes(self) -> int:
        """The largest AppendEntries: a batch of ``append_bytes``, or one entry alone, and its header."""
        return max(self.append_bytes, self.entry_bytes) + MESSAGE_ROOM

    @property
    def value_bytes_max(self) -> int:
        """The largest ``value_bytes`` this table allows: a SET of it and the largest key is one command."""
        return self.command_bytes - self.key_bytes - SET_ROOM

    @property
    def largest_set_bytes(self) -> int:
        """The encoding of a SET of the largest key and the largest value."""
        return self.key_bytes + self.value_bytes + SET_ROOM

    def with_value_bytes(self, value_bytes: int) -> "Limits":
        """This table with a node's ``--value-max-bytes``, checked."""
        limits = replace(self, value_bytes=value_bytes)
        limits.check()
        return limits

    def problems(self):
        """Every relation that does not hold, as sentences naming the limits (empty: coherent)."""
        out = []

        def need(ok: bool, text: str) -> None:
            if not ok:
                out.append(text)

        for name in ("key_bytes", "value_bytes", "command_keys", "command_bytes", "append_bytes", "forward_bytes",
                     "staged_bytes"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 "%s must be a positive whole number, not %r" % (name, value))
        if out:
            return out
        need(self.key_bytes <= LMDB_KEY_BYTES,
             "a key of %d bytes (key_bytes) cannot be an LMDB key (at most %d bytes)" % (self.key_bytes, LMDB_KEY_BYTES))
        need(self.largest_set_bytes <= self.command_bytes,
             "a SET of the largest key and value (%d bytes: key_bytes + value_bytes + %d) is over the command limit "
             "(command_bytes, %d): lower the value limit to at most %d bytes"
             % (self.largest_set_bytes, SET_ROOM, self.command_bytes, self.value_bytes_max))
        need(self.entry_bytes <= LMDB_VALUE_BYTES and self.staged_bytes <= WIRE_LENGTH_BYTES,
             "entries and staged blobs must stay under 4 GiB (LMDB values and the wire's u32 lengths)")
        need(self.append_message_bytes + self.forward_bytes <= self.staged_bytes,
             "a peer connection must be able to stage the largest AppendEntries (%d bytes: the largest entry or "
             "batch and %d of header room) and a forwarded command (forward_bytes, %d) at once: staged_bytes "
             "(%d) is too small" % (self.append_message_bytes, MESSAGE_ROOM, self.forward_bytes, self.staged_bytes))
        need(self.forward_bytes >= self.entry_bytes,
             "a follower must be able to forward the largest entry (%d bytes, entry_bytes) to the leader: "
             "forward_bytes (%d) is too small" % (self.entry_bytes, self.forward_bytes))
        need(self.forward_bytes >= self.value_bytes + RESULT_ROOM,
             "the leader must be able to answer a forwarded SET ... GET with the largest value (%d bytes): "
             "forward_bytes (%d) is too small" % (self.value_bytes + RESULT_ROOM, self.forward_bytes))
        return out

    def client_problems(self, output_bytes: int, clients_memory_bytes: int):
        """
        What the client port's own options break: a reply limit (``--client-output-limit``) too small
        for a GET of the largest value, or a memory cap for all clients (``--maxmemory-clients``, 0:
        none) too small to receive the largest request, which would evict the client sending it.
        """
        out = []
        if output_bytes < self.value_bytes + RESULT_ROOM:
            out.append("--client-output-limit %d cannot answer a GET of the largest value (%d bytes with its "
                       "framing, --value-max-bytes): raise it" % (output_bytes, self.value_bytes + RESULT_ROOM))
        if clients_memory_bytes and clients_memory_bytes < self.request_bytes:
            out.append("--maxmemory-clients %d cannot hold the largest request a client may send (%d bytes): "
                       "raise it, or 0 for no cap" % (clients_memory_bytes, self.request_bytes))
        return out

    def check(self) -> None:
        """Raise ``LimitsError`` naming every broken relation."""
        problems = self.problems()
        if problems:
            raise LimitsError("incoherent limits: " + "; ".join(problems))

    def table(self):
        """(name, bytes or count, what it bounds) rows: the README's table, from the code."""
        return [
            ("key_bytes", self.key_bytes, "a key"),
            ("value_bytes", self.value_bytes, "a value, and any bulk argument (--value-max-bytes)"),
            ("command_keys", self.command_keys, "keys one write command touches"),
            ("command_bytes", self.command_bytes, "one write command as encoded in the log"),
            ("request_bytes", self.request_bytes, "one RESP request's arguments"),
            ("entry_bytes", self.entry_bytes, "one log entry (a command and its envelope)"),
            ("append_bytes", self.append_bytes, "entries batched in one AppendEntries"),
            ("forward_bytes", self.forward_bytes, "a forwarded command or its result"),
            ("staged_bytes", self.staged_bytes, "bytes one peer connection stages"),
        ]


#: The table every node uses (a node's own --value-max-bytes replaces ``value_bytes``).
LIMITS = Limits()
LIMITS.check()
