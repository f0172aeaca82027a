# -*- test-case-name: tests.node.test_first_contact -*-
"""
Linearizable reads by ReadIndex (Raft thesis §6.4): a read asks the leader
for the commit index after confirming it still leads (a heartbeat round that
starts after the read arrived), waits until this node has applied that
index, then reads its own state machine.  Followers serve reads this way
too.  ``READONLY`` connections (and a read that asks so itself, KVD.GET ...
SERIALIZABLE) skip all of it and read the local state.

A request lost on the way to the leader (the link was not up yet, the
leader restarted) is asked again on the next tick and as soon as the link
to the leader comes up, so a read never waits out the request timeout in a
healthy cluster.

Expiry (kvd.kv.expiry): a read is answered at its applied index's log time.
When a key the read looks at expires between that time and this node's
clock (plus a margin for skew), the node first proposes a ``Tick`` (stamped
by the leader, after the read arrived), then asks for the read index again:
the read is served at an index at or after the Tick, so a key whose expiry
had passed when the read arrived is never returned, and every replica
answers the same at the same index.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger

from kvd.errors import Code, KvdError
from kvd.kv.commands import Tick
from kvd.raft.core import NotLeader


class Read:
    """A linearizable read: the replica's token from its ReadIndex request until it is served."""

    __slots__ = ("op", "deferred", "deadline", "index", "ctx", "asked_at", "ticked")

    def __init__(self, op, deferred: defer.Deferred, deadline: float):
        self.op = op
        self.deferred = deferred
        self.deadline = deadline
        self.index: Optional[int] = None
        self.ctx = b""  # the ReadIndex context while it waits for its index
        self.asked_at = 0.0  # when its ReadIndex request was last sent
        self.ticked = False  # whether a Tick moved the log's time on for it (kvd.kv.expiry)


class LinearizableReads:
    log = Logger()

    def __init__(self, node):
        self.node = node
        self.read_seq = 0

    def read(self, op, linearizable: bool = True) -> defer.Deferred:
        """Serve a read op; linearizable by ReadIndex unless the client asked for READONLY or SERIALIZABLE."""
        node = self.node
        if not linearizable:
            return defer.maybeDeferred(node.machine.read, op)
        node.stats["reads"] += 1
        r = Read(op, defer.Deferred(), node.clock.seconds() + node.config.request_timeout_s)
        self.request_index(r)
        return r.deferred

    def request_index(self, r: Read):
        node = self.node
        if r.deferred.called:
            return
        if r.deadline <= node.clock.seconds():
            r.deferred.errback(KvdError(Code.TIMEOUT, "could not confirm a linearizable read in time (no quorum?)"))
            return
        if node.core.leader is None:
            self.no_leader_known(r)
            return
        self.read_seq += 1
        r.ctx, r.asked_at = b"%s/%d" % (node.session.client_id, self.read_seq), node.clock.seconds()
        node.catch_up_lease_clock()
        node.replica.read_index(r.ctx, r)
        node.schedule_drain()

    def no_leader_known(self, r: Read) -> None:
        """No leader known when the read was asked: wait for one, then ask again."""
        node = self.node

        def fail(f):
            if not r.deferred.called:
                r.deferred.errback(f)

        node.when_leader(r.deadline).addCallbacks(lambda _: self.request_index(r), fail)

    def ask_again(self, asked_before: float) -> None:
        """
        Send again the ReadIndex requests sent at or before ``asked_before`` that
        have no answer.  A request to the leader is lost when the link is down (a
        restarted follower's first reads go out before its connection is up)
        or the leader restarted; without this, such a read would wait for the
        whole request timeout in a healthy cluster.  A repeated context is
        harmless: the first answer serves the read, later ones find nothing.
        """
        node = self.node
        if node.core.leader is None or node.core.is_leader():
            return
        now = node.clock.seconds()
        again = [r for r in node.replica.reads.values() if r.asked_at <= asked_before and not r.deferred.called]
        if not again:
            return

        def ask(core):
            for r in again:
                try:
                    core.read_index(r.ctx)
                except NotLeader:
                    return  # the leader is gone: the next leadership asks all of them again
                r.asked_at = now

        node.replica.input(ask)
        node.schedule_drain()

    def serve(self, r: Read) -> None:
        node = self.node
        if r.deferred.called:
            return  # timed out meanwhile
        if not r.ticked and node.machine.needs_time(r.op, int(node.clock.seconds() * 1000)):
            # The log's time is behind a key's expiry this read depends on: move it on, then read again.
            r.ticked = True
            node.stats["read_ticks"] = node.stats.get("read_ticks", 0) + 1

            def ticked(_):
                r.index = None
                self.request_index(r)

            def failed(f):
                if not r.deferred.called:
                    r.deferred.errback(f)

            node.submit(Tick()).addCallbacks(ticked, failed)
            return
        try:
            result = node.machine.read(r.op)
        except Exception as e:  # a bug in a read op must not stop the loop
            self.log.failure("read failed")
            r.deferred.errback(e)
        else:
            r.deferred.callback(result)

    def expire(self, now: float) -> None:
        """Fail the reads whose time is up (the replica keeps them in the order they were made)."""
        replica = self.node.replica
        reads = replica.reads
        while reads:
            ctx = next(iter(reads))
            r = reads[ctx]
            if r.deadline > now:
                break
            del reads[ctx]
            if not r.deferred.called:
                r.deferred.errback(KvdError(Code.TIMEOUT, "could not confirm a linearizable read in time (no quorum?)"))
        indexed = replica.indexed_reads
        if indexed and indexed[0][1].deadline <= now:
            keep = []
            for index, r in indexed:
                if r.deadline > now:
                    keep.append((index, r))
                elif not r.deferred.called:
                    r.deferred.errback(KvdError(Code.TIMEOUT, "this node did not catch up with the read index in time"))
            replica.indexed_reads = keep

    def fail_all(self, error: KvdError) -> None:
        """The node stops: every read still waiting fails with ``error``."""
        replica = self.node.replica
        if replica is None:
            return
        reads = list(replica.reads.values()) + [r for _, r in replica.indexed_reads]
        replica.reads, replica.indexed_reads = {}, []
        for r in reads:
            if not r.deferred.called:
                r.deferred.errback(error)
