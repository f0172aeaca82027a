# -*- test-case-name: tests.raft.test_read_only -*-
"""
The leader's bookkeeping for ReadIndex reads (thesis §6.4; etcd-io/raft's
``read_only.go``).

A linearizable read must not be served by a leader that has been deposed
without knowing it.  So a read is not answered when it arrives: it waits
for a heartbeat round that *starts after it arrived*, and is answered with
the commit index the leader had when that round started, once a quorum of
voters has acknowledged the round.  Any newer leader would have needed one
of those voters, which would then have refused our heartbeat.

One round is in flight at a time; reads that arrive meanwhile wait for the
next round (they cannot join the current one: it may have been acknowledged
by a quorum before they arrived).  A round is told apart from older ones by
the context its heartbeats carry (``ctx``).

This module only holds that state.  The core decides when a round may start
(once an entry of its term has committed, so its commit index is not
stale), sends the heartbeats and answers the reads.

With lease reads (thesis §6.4.1, ``RaftSettings.lease_reads``) the leader
skips the round while it holds a lease, which it measures from when it sent
the heartbeats a quorum acknowledged: each heartbeat's context then also
carries the leader's tick at sending (``stamp``), echoed like the round's.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Set, Tuple

from kvd.raft.messages import NodeId
from kvd.raft.quorum import has_quorum


def stamp(ctx: bytes, tick: int) -> bytes:
    """A heartbeat's context under lease reads: the round's ``ctx`` (b"" if none) and the leader's tick at sending."""
    return b"%s@%d" % (ctx, tick)


def unstamp(ctx: bytes) -> Tuple[bytes, Optional[int]]:
    """The round's context and the tick of an echoed ``stamp``; (ctx, None) if it carries none."""
    head, sep, tick = ctx.rpartition(b"@")
    if not sep or not tick.isdigit():
        return ctx, None
    return head, int(tick)


class ReadRequest(NamedTuple):
    ctx: bytes  # the requester's opaque token, handed back with the read index
    requester: NodeId  # the leader itself, or the follower that forwarded it


class ReadOnly:
    def __init__(self) -> None:
        self.waiting: List[ReadRequest] = []  # arrived since the round in flight started
        self.round_id = 0  # the round in flight, 0 if none
        self.round_index = 0  # the commit index when it started: the answer to its reads
        self.round_requests: List[ReadRequest] = []
        self.round_acks: Set[NodeId] = set()
        self._seq = 0  # last round id handed out; never reset, so an old round's ctx never matches a new one

    @property
    def in_flight(self) -> bool:
        return self.round_id != 0

    def queue(self, ctx: bytes, requester: NodeId) -> None:
        """A read arrived: it waits for the next round."""
        self.waiting.append(ReadRequest(ctx, requester))

    def start(self, index: int, leader: NodeId) -> bytes:
        """
        Start a round for every waiting read, to be answered with ``index``
        (the leader's commit index now); the leader acknowledges its own
        round.  Returns the context its heartbeats must carry.
        """
        assert not self.in_flight and self.waiting, "a round is in flight, or nothing waits"
        self._seq += 1
        self.round_id = self._seq
        self.round_index = index
        self.round_requests, self.waiting = self.waiting, []
        self.round_acks = {leader}
        return self.ctx()

    def ctx(self) -> bytes:
        """The context of the round in flight (what heartbeats carry), b"" if none."""
        return b"r%d" % self.round_id if self.round_id else b""

    def ack(self, node: NodeId, ctx: bytes) -> bool:
        """A heartbeat reply carrying ``ctx`` came from ``node``; True if it acknowledges the round in flight."""
        if not self.round_id or ctx != self.ctx():
            return False
        self.round_acks.add(node)
        return True

    def release(self, voters: Sequence[NodeId]) -> Optional[Tuple[int, List[ReadRequest]]]:
        """
        If a quorum of ``voters`` has acknowledged the round in flight, end
        it and return (read index, its requests) to answer; else None.
        ``voters`` is the configuration now, which may have changed since
        the round started (a removed voter's acknowledgement no longer counts).
        """
        if not self.in_flight or not has_quorum(voters, self.round_acks):
            return None
        done = (self.round_index, self.round_requests)
        self.round_id = 0
        self.round_requests = []
        return done

    def reset(self) -> None:
        """The leader's term ended: drop every read, waiting or in flight; none is ever answered."""
        self.round_id = 0
        self.round_requests = []
        self.waiting = []
