# -*- test-case-name: tests.node.test_node -*-
"""
Writes, exactly once: the node as one client of the replicated state
machine (Raft thesis §6.3).

Every write a node takes from its clients travels in an ``Envelope`` with
this node's client id and a sequence number, so that the state machine
applies it at most once however often it is sent: to the leader after a
lost answer, or to a new leader when the old one was cut off with it.  That
is what lets a follower forward a write, re-send it when a new leader
appears, and retry until ``--request-timeout`` without ever applying it
twice.

``ClientSession.submit`` proposes on this node when it leads and forwards to
the leader otherwise; ``forwarded`` is the leader's side of a forward.

No entry over kvd.limits' ``entry_bytes`` or ``command_keys`` is ever
proposed: every follower stages, stores and applies what the leader proposes,
and an entry one of them refuses would be sent again and again, stalling
every write behind it (one that takes long to apply stalls every node).  The
client port refuses such commands first (kvd.resp.commands); ``submit`` and
the leader's ``propose_here`` check again, for every other caller and for a
forward from a node that checks less.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import replace
from typing import Dict, List, Optional

from twisted.internet import defer, task
from twisted.python.failure import Failure

from kvd.errors import Code, KvdError, Outcome
from kvd.kv.codec import Reader, Writer
from kvd.kv.commands import Envelope, command_keys, command_size, decode_envelope, encode_envelope
from kvd.kv.results import ERR_SESSION_EXPIRED, decode_result, encode_result
from kvd.limits import LIMITS
from kvd.wire.errors import ForwardError

#: Failures after which a write is tried again (on whichever node leads then) until its deadline.
RETRYABLE = frozenset({Code.NOLEADER, Code.TRYAGAIN, Code.TIMEOUT})


def encode_result_bytes(result) -> bytes:
    w = Writer()
    encode_result(w, result)
    return w.getvalue()


def decode_result_bytes(data: bytes):
    return decode_result(Reader(data))


def too_big(size: int, limit: int, what: str) -> KvdError:
    """The refusal of a write too big for one log entry (kvd.limits), in the client port's words."""
    return KvdError(Code.ERR, "a write of %d bytes is over the limit of %d bytes in %s; the command was not run: "
                              "split it" % (size, limit, what))


def too_many_keys(command) -> KvdError:
    return KvdError(Code.ERR, "a write of %d keys is over the limit of %d keys in one write; the command was not "
                              "run: split it" % (command_keys(command), LIMITS.command_keys))


def _failed_attempt(error: BaseException) -> KvdError:
    """
    What a failed attempt to run a write leaves the retry loop: the error to
    try again after, or raised when no retry can help.  Any other exception
    is a link to the leader that broke mid-request.
    """
    if isinstance(error, KvdError):
        if error.code not in RETRYABLE:
            raise KvdError(error.code, error.message)
        return error
    return KvdError(Code.TIMEOUT, "lost the connection to the leader (%s)" % error.__class__.__name__)


class Proposal:
    """A command proposed on this node: the replica's token until it is applied or certainly lost."""

    __slots__ = ("deferred", "deadline")

    def __init__(self, deferred: defer.Deferred, deadline: float):
        self.deferred = deferred
        self.deadline = deadline


class _Forward:
    """A command forwarded to ``leader``, still unanswered."""

    __slots__ = ("leader", "deferred")

    def __init__(self, leader: str, deferred: defer.Deferred):
        self.leader = leader
        self.deferred = deferred


class ClientSession:
    def __init__(self, node):
        self.node = node
        self.forwards: Dict[_Forward, None] = {}  # commands forwarded to a leader, unanswered (in order)
        self.new()

    def new(self) -> None:
        """Start a new session: a new client id, sequence numbers from 1."""
        self.client_id = ("%s/%s" % (self.node.config.node_id, os.urandom(6).hex())).encode()
        self.next_seq = 1
        self.outstanding_seqs: set = set()
        self._lowest: List[int] = []  # a heap of seqs, the answered ones dropped lazily (``_ack_below``)
        self.known = False  # has the machine applied a command of this session?

    def _ack_below(self) -> int:
        """The lowest seq still waiting for its answer (every one below has reached its client)."""
        lowest, outstanding = self._lowest, self.outstanding_seqs
        while lowest[0] not in outstanding:
            heapq.heappop(lowest)
        return lowest[0]

    # ------------------------------------------------------------ a client's write
    def submit(self, command) -> defer.Deferred:
        """Replicate a kv write command; fires with its result once applied, or fails with a KvdError."""
        if command_keys(command) > LIMITS.command_keys:
            return defer.fail(too_many_keys(command))
        size = command_size(command)
        if size > LIMITS.command_bytes:
            return defer.fail(too_big(size, LIMITS.command_bytes, "one write"))
        return self._submit(command, retry_expired=True)

    def _submit(self, command, retry_expired: bool) -> defer.Deferred:
        node = self.node
        client_id, outstanding = self.client_id, self.outstanding_seqs
        seq = self.next_seq
        self.next_seq += 1
        outstanding.add(seq)
        heapq.heappush(self._lowest, seq)
        # Found by the Jepsen suite (tests/jepsen/test_node_regressions.py):
        # the machine reads "unknown client, ack_below > 1" as an expired
        # session.  Until a command of this session has been applied the
        # machine does not know it, so seqs that failed before reaching the
        # log (NOLEADER after a restart) must not count as answered, or every
        # later write is refused with SESSIONEXPIRED.
        env = Envelope(client_id, seq, self._ack_below() if self.known else 1, 0, command)
        deadline = node.clock.seconds() + node.config.request_timeout_s
        if node.core.is_leader():
            # The common case on the leader, without the retry machinery.
            d = self.propose_here(env, deadline).addErrback(self._retry_if_not_applied, env, deadline)
        elif node.core.leader not in (None, node.config.node_id) and not node.stopping:
            # The common case on a follower: one forward to the known leader,
            # the retry machinery only once that fails.
            d = self._forward(node.core.leader, env, deadline).addCallback(decode_result_bytes)
            d.addErrback(self._retry_after_forward, env, deadline)
        else:
            d = self._submit_with_retries(env, deadline)

        def done(result):
            outstanding.discard(seq)
            return result

        def applied(result):
            if result == ERR_SESSION_EXPIRED and retry_expired:
                # Not executed: the session expired (idle past the machine's
                # TTL).  Start a new one, once, rather than fail every write.
                if self.client_id == client_id:
                    self.new()
                return self._submit(command, retry_expired=False)
            if self.client_id == client_id:
                self.known = True
            return result

        return d.addBoth(done).addCallback(applied)

    def _retry_if_not_applied(self, failure: Failure, env: Envelope, deadline: float):
        if not (failure.check(KvdError) and failure.value.not_applied):
            return failure
        return self._submit_with_retries(env, deadline)

    def _retry_after_forward(self, failure: Failure, env: Envelope, deadline: float):
        """The first forward failed: what ``_submit_with_retries`` does after a failed attempt, then its loop."""
        last = _failed_attempt(failure.value)
        node = self.node
        wait = task.deferLater(node.clock, node.config.tick_s, lambda: None)
        return wait.addCallback(lambda _: self._submit_with_retries(env, deadline, maybe_applied=True, last=last))

    @defer.inlineCallbacks
    def _submit_with_retries(self, env: Envelope, deadline: float, maybe_applied: bool = False,
                             last: Optional[KvdError] = None):
        node = self.node
        last = last or KvdError(Code.NOLEADER, "no leader")
        while node.clock.seconds() < deadline and not node.stopping:
            try:
                leader = yield node.when_leader(deadline)
            except KvdError as e:
                last = e
                break
            try:
                if leader == node.config.node_id:
                    result = yield self.propose_here(env, deadline)
                else:
                    maybe_applied = True
                    result = decode_result_bytes((yield self._forward(leader, env, deadline)))
                return result
            except Exception as e:
                if not isinstance(e, KvdError) or e.outcome is Outcome.UNKNOWN:
                    maybe_applied = True
                last = _failed_attempt(e)
            yield task.deferLater(node.clock, node.config.tick_s, lambda: None)
        if maybe_applied or last.code is Code.TIMEOUT:
            raise KvdError(Code.TIMEOUT, "the outcome is unknown: %s" % last.message)
        raise KvdError(last.code, last.message)

    def _forward(self, leader: str, env: Envelope, deadline: float) -> defer.Deferred:
        """
        Forward ``env`` to ``leader``, waiting no longer than ``deadline``.  If
        another leader appears first this fails with TRYAGAIN, and the caller
        sends the same envelope to the new one: the old leader may have been
        cut off with it, and the session (client id, seq) makes sure that it is
        applied at most once whichever leader's copy commits.
        """
        node = self.node
        d = defer.Deferred()
        pending = _Forward(leader, d)
        self.forwards[pending] = None

        def settle(outcome):
            self.forwards.pop(pending, None)
            if not d.called:
                d.callback(outcome) if not isinstance(outcome, Failure) else d.errback(outcome)

        timeout = max(0.0, deadline - node.clock.seconds())
        node.peers.forward(leader, encode_envelope(env), timeout=timeout).addBoth(settle)
        return d

    def leader_changed(self, leader: str) -> None:
        """A new leader is known: what was forwarded to another one goes to it (see ``_forward``)."""
        for pending in [f for f in self.forwards if f.leader != leader]:
            del self.forwards[pending]
            if not pending.deferred.called:
                pending.deferred.errback(KvdError(Code.TRYAGAIN, "%s took over from %s" % (leader, pending.leader)))

    def propose_here(self, env: Envelope, deadline: float) -> defer.Deferred:
        """Propose on this node; fails with a not-applied KvdError when it certainly was not applied."""
        node = self.node
        # The leader stamps the time: the only clock the state machine sees.
        env = replace(env, stamp_ms=int(node.clock.seconds() * 1000))
        if command_keys(env.command) > LIMITS.command_keys:
            return defer.fail(too_many_keys(env.command))
        data = encode_envelope(env)
        if len(data) > LIMITS.entry_bytes:
            return defer.fail(too_big(len(data), LIMITS.entry_bytes, "one log entry"))
        node.stats["proposals"] += 1
        d = defer.Deferred()
        node.replica.propose(data, Proposal(d, deadline))
        node.schedule_drain()
        return d

    # ------------------------------------------------------------ the leader's side
    def forwarded(self, src: str, payload: bytes) -> defer.Deferred:
        """A follower forwards a client's envelope to us, the leader; answers the encoded result."""
        node = self.node
        try:
            env = decode_envelope(payload)
        except Exception:
            return defer.fail(ForwardError(Code.INTERNAL, "malformed forwarded command"))
        if not node.core.is_leader():
            return defer.fail(ForwardError(Code.TRYAGAIN, "%s is not the leader" % node.config.node_id))
        deadline = node.clock.seconds() + node.config.request_timeout_s
        d = self.propose_here(env, deadline)
        d.addCallback(encode_result_bytes)

        def on_the_wire(f):
            f.trap(KvdError)
            raise ForwardError(f.value.code, f.value.message)

        return d.addErrback(on_the_wire)
