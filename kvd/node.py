# -*- test-case-name: tests.node.test_node -*-
"""
The node: wires the pure Raft core to the reactor, to LMDB, to the peer
transport and to the key/value state machine.

This module is the only place that knows the order of the Ready loop
(kvd.raft.core's docstring): leader appends out, persist, acknowledgements
out, apply, advance.  Because that order lives here alone, "vote and
acknowledge only after fsync" holds by construction.

Everything that arrives in one reactor turn (client commands, peer
messages, a tick) is folded into one Ready: one LMDB transaction, one sync
and one append message per follower for the whole batch.

Allowed imports: twisted, kvd.raft, kvd.kv, kvd.store, kvd.wire, kvd.address,
kvd.results (never kvd.cli or kvd.sim).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvd.address import MemberAddress
from kvd.kv.codec import Reader, Writer
from kvd.kv.commands import Envelope, decode_envelope, encode_envelope
from kvd.kv.results import ERR_SESSION_EXPIRED, decode_result, encode_result
from kvd.raft.core import ConfigChangeRejected, NotLeader, Options, ProposalDropped, RaftCore, bootstrap
from kvd.raft.messages import Configuration, EntryKind, Role
from kvd.replica import Events, Overtaken, Replica, Superseded
from kvd.wire.errors import ForwardError


class NodeError(Exception):
    """
    A request failed.  ``code`` tells the client whether it may have taken
    effect: NOLEADER and TRYAGAIN only when it certainly did not, TIMEOUT when
    the outcome is unknown.
    """

    def __init__(self, code: str, message: str):
        super().__init__("%s %s" % (code, message))
        self.code = code
        self.message = message


@dataclass
class NodeConfig:
    node_id: str
    cluster_id: str
    address: MemberAddress
    data_dir: str
    initial_cluster: Optional[Dict[str, str]] = None  # node id -> host:client:peer, for a static bootstrap
    bootstrap_expect: int = 0  # >0: this is a seed that forms the cluster once this many nodes have joined
    tick_s: float = 0.1
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    sync: bool = True
    snapshot_entries: int = 10000
    snapshot_keep_entries: int = 1000
    request_timeout_s: float = 5.0
    value_bytes_max: int = 1024 * 1024


def encode_result_bytes(result) -> bytes:
    w = Writer()
    encode_result(w, result)
    return w.getvalue()


def decode_result_bytes(data: bytes):
    return decode_result(Reader(data))


class _Proposal:
    __slots__ = ("deferred", "deadline")

    def __init__(self, deferred: defer.Deferred, deadline: float):
        self.deferred = deferred
        self.deadline = deadline


class _Read:
    __slots__ = ("op", "deferred", "deadline", "index", "ctx", "asked_at")

    def __init__(self, op, deferred: defer.Deferred, deadline: float):
        self.op = op
        self.deferred = deferred
        self.deadline = deadline
        self.index: Optional[int] = None
        self.ctx = b""  # the ReadIndex context while it waits for its index
        self.asked_at = 0.0  # when its ReadIndex request was last sent


class _Forward:
    """A command forwarded to ``leader``, still unanswered."""

    __slots__ = ("leader", "deferred")

    def __init__(self, leader: str, deferred: defer.Deferred):
        self.leader = leader
        self.deferred = deferred


class _Retry(Exception):
    """Internal: the attempt certainly did not apply the command; try again."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class NodeService(service.Service):
    log = Logger()

    def __init__(self, config: NodeConfig, storage, machine, clock, rng: Optional[random.Random] = None):
        """
        The peer transport is attached as ``peers`` before the service
        starts (it needs this node's callbacks, and tests hand in a fake).
        """
        self.config = config
        self.storage = storage
        self.machine = machine
        self.clock = clock
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.core: Optional[RaftCore] = None
        self.replica: Optional[Replica] = None  # the Ready loop (kvd.replica), once the core exists
        self.peers = None
        self.ticker: Optional[task.LoopingCall] = None
        self.drain_call = None
        # Proposals and reads in flight live in the replica, in the order they
        # were made, so that one sweep per tick expires them (no timer per
        # request: they are the hot path).
        self.read_seq = 0
        self.forwards: List[_Forward] = []  # commands forwarded to a leader, unanswered
        self.leader_waiters: List[defer.Deferred] = []
        self.pending_joins: Dict[str, str] = {}  # before bootstrap: node id -> member address
        # Addresses peers advertised when they connected: how a node that has
        # no configuration yet (a joiner) can answer the nodes that call it.
        self.advertised: Dict[str, str] = {}
        # Exactly-once (thesis §6.3): this node is one client of the state machine.
        self._new_session()
        self.stats = {"leader_changes": 0, "elections": 0, "proposals": 0, "reads": 0, "snapshots": 0}
        # The highest commit index a leader has told us (AppendEntries and
        # Heartbeat carry it): how far behind the cluster this node's applied
        # index is, for /v1/health and metrics.  A view only; Raft never reads it.
        self.leader_commit_seen = 0
        self.last_leader_seen: Optional[str] = None  # for counting leader changes (metrics)
        self.stopping = False

    # ============================================================ lifecycle
    def startService(self):
        super().startService()
        self.storage.open(self.config.cluster_id, self.config.node_id)
        restored = self.storage.load()
        hard_state, snapshot, entries = restored.hard_state, restored.snapshot, restored.entries
        if hard_state.term == 0 and not entries and snapshot is None and self.config.initial_cluster:
            config = Configuration.make(voters=self.config.initial_cluster, addresses=self.config.initial_cluster)
            hard_state, entries = bootstrap(config)
            self.storage.save(hard_state, entries, None, sync=True)
            self.log.info("{node} bootstrapped a cluster of {n} from the initial member list", node=self.config.node_id, n=len(config.voters))
        if snapshot is not None:
            self.machine.restore(snapshot.data)
        self._make_core(hard_state, snapshot, entries)
        self.ticker = task.LoopingCall(self._tick)
        self.ticker.clock = self.clock
        self.ticker.start(self.config.tick_s, now=False)
        self.log.info(
            "{node} started: term {term}, {n} log entries, members {members}",
            node=self.config.node_id,
            term=hard_state.term,
            n=len(entries),
            members=list(self.core.config.members),
        )
        if not self.core.config.members:
            self.log.warn("{node}: {why}", node=self.config.node_id, why=self.waiting_for())
        if self._is_lone_voter():
            self.replica.input(lambda core: core.campaign())
            self._schedule_drain()

    def _make_core(self, hard_state, snapshot, entries):
        options = Options(
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
        )
        self.core = RaftCore(self.config.node_id, options, self.rng, hard_state, snapshot, entries)
        self.replica = Replica(self.core, self.storage, _Peers(self), self.machine, _NodeEvents(self))

    def _call_core(self, fn: Callable[[RaftCore], object]) -> defer.Deferred:
        """Run ``fn(core)`` as an input of the loop (at once, or after an outstanding write); fires with its result."""
        d = defer.Deferred()

        def run(core):
            try:
                result = fn(core)
            except Exception:
                d.errback(Failure())
            else:
                d.callback(result)

        self.replica.input(run)
        self._schedule_drain()
        return d

    def _is_lone_voter(self) -> bool:
        return self.core.config.voters == (self.config.node_id,)

    @defer.inlineCallbacks
    def stopService(self):
        """Hand leadership over, answer what is pending, close the store."""
        self.stopping = True
        if self.core is not None and self.core.is_leader() and len(self.core.config.voters) > 1:
            try:
                target = yield self._call_core(lambda core: core.transfer_leadership())
                self._drain()
                self.log.info("{node} is stopping: transferring leadership to {target}", node=self.config.node_id, target=target)
                deadline = self.clock.seconds() + self.config.tick_s * self.config.election_ticks * 2
                while self.core.is_leader() and self.clock.seconds() < deadline:
                    yield task.deferLater(self.clock, self.config.tick_s, lambda: None)
            except (NotLeader, ConfigChangeRejected):
                pass
        if self.ticker is not None and self.ticker.running:
            self.ticker.stop()
        if self.drain_call is not None and self.drain_call.active():
            self.drain_call.cancel()
        self._fail_all(NodeError("TRYAGAIN", "the node is shutting down"))
        if self.peers is not None:
            yield defer.maybeDeferred(self.peers.stop)
        self.storage.close()
        super().stopService()

    def _fail_all(self, error: NodeError):
        replica = self.replica
        if replica is not None:
            proposals, replica.proposals = replica.proposals, {}
            for _, p in proposals.values():
                # We cannot know whether a proposed entry will still commit.
                p.deferred.errback(NodeError("TIMEOUT", "the node stopped before the outcome was known"))
            reads = list(replica.reads.values()) + [r for _, r in replica.indexed_reads]
            replica.reads, replica.indexed_reads = {}, []
            for r in reads:
                if not r.deferred.called:
                    r.deferred.errback(error)
        waiters, self.leader_waiters = self.leader_waiters, []
        for d in waiters:
            d.errback(error)

    # ============================================================ inputs
    def _tick(self):
        self.replica.tick()
        self._drain()
        now = self.clock.seconds()
        self._expire(now)
        self._ask_again(now - self.config.tick_s * max(3, 2 * self.config.heartbeat_ticks))

    def _expire(self, now: float):
        """Fail the requests whose time is up (oldest first; they were made in order)."""
        proposals = self.replica.proposals
        while proposals:
            index = next(iter(proposals))
            _, p = proposals[index]
            if p.deadline > now:
                break
            del proposals[index]
            p.deferred.errback(NodeError("TIMEOUT", "not committed in time (the entry may still commit)"))
        reads = self.replica.reads
        while reads:
            ctx = next(iter(reads))
            r = reads[ctx]
            if r.deadline > now:
                break
            del reads[ctx]
            if not r.deferred.called:
                r.deferred.errback(NodeError("TIMEOUT", "could not confirm a linearizable read in time (no quorum?)"))
        indexed = self.replica.indexed_reads
        if indexed and indexed[0][1].deadline <= now:
            keep = []
            for index, r in indexed:
                if r.deadline > now:
                    keep.append((index, r))
                elif not r.deferred.called:
                    r.deferred.errback(NodeError("TIMEOUT", "this node did not catch up with the read index in time"))
            self.replica.indexed_reads = keep

    def message_received(self, message) -> None:
        """A Raft message from a peer (already validated by the transport)."""
        if self.core is None:
            return
        commit = getattr(message, "commit", None)
        if isinstance(commit, int) and commit > self.leader_commit_seen:
            self.leader_commit_seen = commit
        self.replica.step(message)
        self._schedule_drain()

    def peer_connected(self, node_id: str) -> None:
        """Our link to ``node_id`` is up: if it leads, re-ask what may have been dropped while it was down."""
        if self.core is not None and node_id == self.core.leader and not self.core.is_leader():
            self._ask_again(self.clock.seconds())

    def _ask_again(self, asked_before: float) -> None:
        """
        Send again the ReadIndex requests sent at or before ``asked_before`` that have
        no answer.  A request to the leader is lost when the link is down (a
        restarted follower's first reads go out before its connection is up)
        or the leader restarted; without this, such a read would wait for the
        whole request timeout in a healthy cluster.  A repeated context is
        harmless: the first answer serves the read, later ones find nothing.
        """
        if self.core.leader is None or self.core.is_leader():
            return
        now = self.clock.seconds()
        again = [r for r in self.replica.reads.values() if r.asked_at <= asked_before and not r.deferred.called]
        if not again:
            return

        def ask(core):
            for r in again:
                try:
                    core.read_index(r.ctx)
                except NotLeader:
                    return  # the leader is gone: the next leadership asks all of them again
                r.asked_at = now

        self.replica.input(ask)
        self._schedule_drain()

    def peer_unreachable(self, node_id: str) -> None:
        if self.replica is not None:
            self.replica.input(lambda core: core.report_unreachable(node_id))

    def is_known_peer(self, node_id: str) -> bool:
        members = self.core.config.members if self.core else ()
        # A node that has not been given a configuration yet (a joiner, or a
        # seed still gathering its founders) accepts the cluster's nodes.
        return not members or node_id in members or node_id in self.pending_joins

    def peer_hello(self, node_id: str, address: str) -> None:
        """An accepted peer told us where it listens."""
        try:
            MemberAddress.parse(address)
        except ValueError:
            self.log.warn("{peer} advertised a malformed address {address!r}", peer=node_id, address=address)
            return
        self.advertised[node_id] = address

    def peer_address(self, node_id: str) -> Optional[Tuple[str, int]]:
        text = self.core.config.address_of(node_id) if self.core else None
        text = text or self.pending_joins.get(node_id) or self.advertised.get(node_id)
        if not text:
            return None
        address = MemberAddress.parse(text)
        return (address.host, address.peer_port)

    def _schedule_drain(self):
        if self.drain_call is None or not self.drain_call.active():
            self.drain_call = self.clock.callLater(0, self._drain)

    # ============================================================ the Ready loop
    def _drain(self):
        """Run the Ready loop (kvd.replica) over everything that arrived, then take a snapshot if due."""
        if self.drain_call is not None and self.drain_call.active():
            self.drain_call.cancel()
        self.drain_call = None
        self.replica.drain()
        self._maybe_snapshot()

    def _applied(self, entry) -> None:
        if entry.kind is EntryKind.CONFIG:
            self.log.info("{node}: membership is now {members}", node=self.config.node_id, members=self._members_text())

    def _snapshot_installed(self, snapshot) -> None:
        self.stats["snapshots_installed"] = self.stats.get("snapshots_installed", 0) + 1
        self.log.info("{node} installed a snapshot at index {index}", node=self.config.node_id, index=snapshot.index)

    def _soft_state_changed(self, role: Role, leader: Optional[str], term: int):
        self.log.info("{node} is {role} at term {term}, leader {leader}", node=self.config.node_id, role=role.value, term=term, leader=leader or "unknown")
        if role is Role.CANDIDATE:
            self.stats["elections"] += 1
        self.stats["leader_changes"] += 1
        if leader is not None and leader != self.last_leader_seen:
            self.stats["new_leaders"] = self.stats.get("new_leaders", 0) + 1
            self.last_leader_seen = leader
        if leader is not None:
            waiters, self.leader_waiters = self.leader_waiters, []
            for d in waiters:
                d.callback(leader)
            self._redirect_forwards(leader)
        # Reads that had not got their index yet were dropped with the old
        # leadership; ask again.
        for _, r in self.replica.take_waiting_reads():
            self._request_read_index(r)

    def _serve_read(self, r: "_Read") -> None:
        if r.deferred.called:
            return  # timed out meanwhile
        try:
            result = self.machine.read(r.op)
        except Exception as e:  # a bug in a read op must not stop the loop
            self.log.failure("read failed")
            r.deferred.errback(e)
        else:
            r.deferred.callback(result)

    def _maybe_snapshot(self):
        core = self.core
        if core.applied - core.latest_snapshot.index < self.config.snapshot_entries:
            return
        self.replica.compact(self.config.snapshot_keep_entries, self.config.snapshot_entries, self._snapshot_taken)

    def _snapshot_taken(self, snap) -> None:
        self.stats["snapshots"] += 1
        self.log.info("{node} took a snapshot at index {index}", node=self.config.node_id, index=snap.index)

    # ============================================================ waiting for a leader
    def _no_leader(self) -> NodeError:
        """NOLEADER, saying why: an unformed node says what it waits for and how to form a cluster."""
        if self.core is not None and not self.core.config.members:
            return NodeError("NOLEADER", "the command was not applied: " + self.waiting_for())
        return NodeError("NOLEADER", "no leader: this node cannot reach a majority of the cluster; the command was not applied")

    def waiting_for(self) -> str:
        """What a node that belongs to no cluster yet is waiting for, and how to give it one."""
        if self.config.bootstrap_expect:
            have = len(self.pending_joins) + 1
            return ("this seed waits for %d of %d founding nodes to join before it forms the cluster "
                    "(mgmt.py -r server -c join -h HOST:PORT, or KVD.JOIN <id> <address> on this node)"
                    % (self.config.bootstrap_expect - have, self.config.bootstrap_expect))
        return ("this node is not part of a cluster yet: start every founder with the same "
                "--initial-cluster id1,id2,..., or add this node to a running cluster "
                "(mgmt.py -r server -c join -h %s, or KVD.JOIN %s %s sent to a member)"
                % (self.config.address.client, self.config.node_id, self.config.address))

    def _when_leader(self, deadline: Optional[float] = None) -> defer.Deferred:
        """
        Fires with the leader's id once one is known, or fails with NOLEADER
        after about three election timeouts, or at ``deadline`` (the request's
        own) if that comes first.
        """
        if self.core.leader is not None:
            return defer.succeed(self.core.leader)
        if self.stopping:
            return defer.fail(NodeError("TRYAGAIN", "the node is shutting down"))
        d = defer.Deferred()
        self.leader_waiters.append(d)
        wait_s = self.config.tick_s * self.config.election_ticks * 3
        if deadline is not None:
            wait_s = max(0.0, min(wait_s, deadline - self.clock.seconds()))

        def give_up():
            if d in self.leader_waiters:
                self.leader_waiters.remove(d)
                d.errback(self._no_leader())

        call = self.clock.callLater(wait_s, give_up)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    # ============================================================ writes
    def submit(self, command) -> defer.Deferred:
        """Replicate a kv write command; fires with its result once applied."""
        return self._submit_in_session(command, retry_expired=True)

    def _new_session(self):
        self.client_id = ("%s/%s" % (self.config.node_id, os.urandom(6).hex())).encode()
        self.next_seq = 1
        self.outstanding_seqs: set = set()
        self.session_known = False  # has the machine applied a command of this session?

    def _submit_in_session(self, command, retry_expired: bool) -> defer.Deferred:
        client_id, outstanding = self.client_id, self.outstanding_seqs
        seq = self.next_seq
        self.next_seq += 1
        outstanding.add(seq)
        # Found by the Jepsen suite (tests/jepsen/test_node_regressions.py):
        # the machine reads "unknown client, ack_below > 1" as an expired
        # session.  Until a command of this session has been applied the
        # machine does not know it, so seqs that failed before reaching the
        # log (NOLEADER after a restart) must not count as answered, or every
        # later write is refused with SESSIONEXPIRED.
        env = Envelope(client_id, seq, min(outstanding) if self.session_known else 1, 0, command)
        deadline = self.clock.seconds() + self.config.request_timeout_s
        d = None
        if self.core.is_leader():
            # The common case on the leader, without the retry machinery.
            d = self._propose_here(env, deadline).addErrback(self._retry_after, env, deadline)
        if d is None:
            d = self._submit_with_retries(env, deadline)

        def done(result):
            outstanding.discard(seq)
            return result

        def applied(result):
            if result == ERR_SESSION_EXPIRED and retry_expired:
                # Not executed: the session expired (idle past the machine's
                # TTL).  Start a new one, once, rather than fail every write.
                if self.client_id == client_id:
                    self._new_session()
                return self._submit_in_session(command, retry_expired=False)
            if self.client_id == client_id:
                self.session_known = True
            return result

        return d.addBoth(done).addCallback(applied)

    def _retry_after(self, failure, env: Envelope, deadline: float):
        failure.trap(_Retry)
        return self._submit_with_retries(env, deadline)

    @defer.inlineCallbacks
    def _submit_with_retries(self, env: Envelope, deadline: float):
        maybe_applied = False
        last = NodeError("NOLEADER", "no leader")
        while self.clock.seconds() < deadline and not self.stopping:
            try:
                leader = yield self._when_leader(deadline)
            except NodeError as e:
                last = e
                break
            try:
                if leader == self.config.node_id:
                    result = yield self._propose_here(env, deadline)
                else:
                    maybe_applied = True
                    result = yield self._forward(leader, env, deadline)
                    result = self._decode_forwarded(result)
                return result
            except _Retry as e:
                last = NodeError(e.code, e.message)
            except (NodeError, ForwardError) as e:
                if e.code == "TIMEOUT":
                    maybe_applied = True
                last = NodeError(e.code, e.message)
                if e.code not in ("NOLEADER", "TRYAGAIN", "TIMEOUT"):
                    raise last
            except Exception as e:  # the link to the leader broke mid-request
                last = NodeError("TIMEOUT", "lost the connection to the leader (%s)" % e.__class__.__name__)
            yield task.deferLater(self.clock, self.config.tick_s, lambda: None)
        if maybe_applied or last.code == "TIMEOUT":
            raise NodeError("TIMEOUT", "the outcome is unknown: %s" % last.message)
        raise last

    def _forward(self, leader: str, env: Envelope, deadline: float) -> defer.Deferred:
        """
        Forward ``env`` to ``leader``, waiting no longer than ``deadline``.  If
        another leader appears first this fails with _Retry, and the caller
        sends the same envelope to the new one: the old leader may have been
        cut off with it, and the session (client id, seq) makes sure that it is
        applied at most once whichever leader's copy commits.
        """
        d = defer.Deferred()
        pending = _Forward(leader, d)
        self.forwards.append(pending)

        def settle(outcome):
            if pending in self.forwards:
                self.forwards.remove(pending)
            if not d.called:
                d.callback(outcome) if not isinstance(outcome, Failure) else d.errback(outcome)

        timeout = max(0.0, deadline - self.clock.seconds())
        self.peers.forward(leader, encode_envelope(env), timeout=timeout).addBoth(settle)
        return d

    def _redirect_forwards(self, leader: str) -> None:
        for pending in [f for f in self.forwards if f.leader != leader]:
            self.forwards.remove(pending)
            if not pending.deferred.called:
                pending.deferred.errback(_Retry("TRYAGAIN", "%s took over from %s" % (leader, pending.leader)))

    def _propose_here(self, env: Envelope, deadline: float) -> defer.Deferred:
        """Propose on this node; fails with _Retry when it certainly was not applied (not leader, replaced)."""
        # The leader stamps the time: the only clock the state machine sees.
        env = replace(env, stamp_ms=int(self.clock.seconds() * 1000))
        self.stats["proposals"] += 1
        d = defer.Deferred()
        self.replica.propose(encode_envelope(env), _Proposal(d, deadline))
        self._schedule_drain()
        return d

    def forwarded(self, src: str, payload: bytes) -> defer.Deferred:
        """A follower forwards a client's envelope to us, the leader."""
        try:
            env = decode_envelope(payload)
        except Exception:
            return defer.fail(ForwardError("INTERNAL", "malformed forwarded command"))
        if not self.core.is_leader():
            return defer.fail(ForwardError("TRYAGAIN", "%s is not the leader" % self.config.node_id))
        deadline = self.clock.seconds() + self.config.request_timeout_s
        d = defer.maybeDeferred(self._propose_here, env, deadline)
        d.addCallback(self._encode_forwarded)

        def convert(f):
            f.trap(_Retry, NodeError)
            raise ForwardError(f.value.code, f.value.message)

        return d.addErrback(convert)

    def join_received(self, node_id: str, address: str) -> defer.Deferred:
        """A Join over the peer transport (answers bytes, refuses with ForwardError)."""
        d = defer.maybeDeferred(self.join, node_id, address)
        d.addCallback(lambda word: word.encode())

        def convert(f):
            f.trap(NodeError)
            raise ForwardError("TRYAGAIN" if f.value.code in ("NOLEADER", "MOVED") else "INTERNAL", f.value.message)

        return d.addErrback(convert)

    def _encode_forwarded(self, result) -> bytes:
        return encode_result_bytes(result)

    def _decode_forwarded(self, data: bytes):
        return decode_result_bytes(data)

    # ============================================================ reads
    def read(self, op, linearizable: bool = True) -> defer.Deferred:
        """Serve a read op; linearizable by ReadIndex unless the client asked for READONLY."""
        if not linearizable:
            return defer.maybeDeferred(self.machine.read, op)
        self.stats["reads"] += 1
        r = _Read(op, defer.Deferred(), self.clock.seconds() + self.config.request_timeout_s)
        self._request_read_index(r)
        return r.deferred

    def _request_read_index(self, r: _Read):
        if r.deferred.called:
            return
        if r.deadline <= self.clock.seconds():
            r.deferred.errback(NodeError("TIMEOUT", "could not confirm a linearizable read in time (no quorum?)"))
            return
        def fail(f):
            if not r.deferred.called:
                r.deferred.errback(f)

        if self.core.leader is None:
            self._when_leader(r.deadline).addCallbacks(lambda _: self._request_read_index(r), fail)
            return
        self.read_seq += 1
        r.ctx, r.asked_at = b"%s/%d" % (self.client_id, self.read_seq), self.clock.seconds()
        self.replica.read_index(r.ctx, r)
        self._schedule_drain()

    def _read_index_refused(self, r: "_Read") -> None:
        """No leader known when the read was asked: wait for one, then ask again."""

        def fail(f):
            if not r.deferred.called:
                r.deferred.errback(f)

        self._when_leader(r.deadline).addCallbacks(lambda _: self._request_read_index(r), fail)

    # ============================================================ membership
    def join(self, node_id: str, address: str) -> defer.Deferred:
        """
        Add a node.  Before bootstrap (a seed with bootstrap_expect) it is
        counted toward the founders; afterwards the leader adds it as a
        learner, and the core promotes it once it has caught up.
        """
        MemberAddress.parse(address)
        if not self.core.config.members and self.config.bootstrap_expect:
            return defer.succeed(self._gather_founder(node_id, address))
        return self._leader_call(lambda: self.core.add_learner(node_id, address), "joining")

    def remove(self, node_id: str) -> defer.Deferred:
        return self._leader_call(lambda: self.core.remove(node_id), "removed")

    @defer.inlineCallbacks
    def _leader_call(self, change: Callable[[], int], word: str):
        deadline = self.clock.seconds() + self.config.request_timeout_s * 2
        while True:
            if not self.core.is_leader():
                leader = self.core.leader
                if leader is None:
                    raise NodeError("NOLEADER", "no leader; try again when the cluster has one")
                raise NodeError("MOVED", self._client_address(leader) or leader)
            try:
                index = yield self._call_core(lambda core: change())
                break
            except ConfigChangeRejected as e:
                if "in progress" not in str(e) or self.clock.seconds() > deadline:
                    raise NodeError("ERR", str(e))
            yield task.deferLater(self.clock, self.config.tick_s, lambda: None)
        self._schedule_drain()
        while self.core.applied < index:
            if self.clock.seconds() > deadline:
                raise NodeError("TIMEOUT", "membership change not committed in time")
            yield task.deferLater(self.clock, self.config.tick_s, lambda: None)
        return word

    def _gather_founder(self, node_id: str, address: str) -> str:
        self.pending_joins[node_id] = address
        founders = dict(self.pending_joins)
        founders[self.config.node_id] = str(self.config.address)
        if len(founders) < self.config.bootstrap_expect:
            self.log.info("{node}: {n} of {expect} founders have joined", node=self.config.node_id, n=len(founders), expect=self.config.bootstrap_expect)
            return "waiting for %d more node(s) to bootstrap" % (self.config.bootstrap_expect - len(founders))
        config = Configuration.make(voters=founders, addresses=founders)
        hard_state, entries = bootstrap(config)
        self.storage.save(hard_state, entries, None, sync=True)
        self._make_core(hard_state, None, entries)
        self.pending_joins = {}
        self.log.info("{node} bootstrapped the cluster with {members}", node=self.config.node_id, members=sorted(founders))
        if self._is_lone_voter():
            self.replica.input(lambda core: core.campaign())
        self._schedule_drain()
        return "bootstrapped"

    # ============================================================ views
    def _client_address(self, node_id: Optional[str]) -> str:
        if node_id is None:
            return ""
        text = self.core.config.address_of(node_id) or self.pending_joins.get(node_id) or self.advertised.get(node_id)
        return MemberAddress.parse(text).client if text else ""

    def _members_text(self) -> str:
        c = self.core.config
        return ", ".join(["%s (voter)" % v for v in c.voters] + ["%s (learner)" % v for v in c.learners])

    def role_name(self) -> str:
        """The role as the log names it (pre-candidate too), or learner / joining for a non-voter."""
        if self.core.role is Role.FOLLOWER and self.config.node_id not in self.core.config.members:
            return "learner" if self.core.config.members else "joining"
        return self.core.role.value

    def live_leader(self) -> Optional[str]:
        """
        The leader this node can vouch for right now, or None: itself while it
        leads, else the leader it has heard from within an election timeout.
        A follower whose leader has gone quiet stops naming it at once, before
        its own election timer fires (DNS and /v1/status/leader use this, so a
        dead leader is never handed out).
        """
        core = self.core
        if core is None or core.leader is None:
            return None
        if core.leader == self.config.node_id:
            return core.leader if core.is_leader() else None
        if core.election_elapsed >= self.config.election_ticks:
            return None
        return core.leader

    def leader_commit(self) -> int:
        """The commit index of the cluster as far as this node knows (its own when it leads)."""
        if self.core is None:
            return 0
        return max(self.core.commit, self.leader_commit_seen)

    def members(self) -> List[dict]:
        """The membership as this node sees it (a leader adds replication progress)."""
        status = self.core.status()
        out = []
        for node_id in self.core.config.members:
            address = MemberAddress.parse(self.core.config.address_of(node_id))
            row = {
                "id": node_id,
                "client": address.client,
                "peer": address.peer,
                "voter": node_id in self.core.config.voters,
                # A leader we have stopped hearing from is not named (live_leader).
                "leader": node_id == self.live_leader(),
            }
            progress = status["progress"].get(node_id)
            if node_id == self.config.node_id:
                row["match"] = self.core.log.last_index()
                row["up"] = True
            elif progress is not None:
                row["match"] = progress["match"]
                row["up"] = progress["active"]
            out.append(row)
        return out

    def info(self) -> Dict[str, object]:
        core = self.core
        return {
            "raft_node_id": self.config.node_id,
            "raft_cluster_id": self.config.cluster_id,
            "raft_role": self.role_name(),
            "raft_term": core.term,
            "raft_leader": self._client_address(core.leader),
            "raft_leader_id": core.leader or "",
            "raft_commit_index": core.commit,
            "raft_applied_index": core.applied,
            "raft_last_index": core.log.last_index(),
            "raft_snapshot_index": core.latest_snapshot.index,
            "raft_members": ",".join(core.config.members),
            "raft_voters": ",".join(core.config.voters),
            "raft_learners": ",".join(core.config.learners),
            "raft_client_address": self.config.address.client,
            "raft_peer_address": self.config.address.peer,
            "raft_leader_changes": self.stats["leader_changes"],
            "raft_elections": self.stats["elections"],
            "raft_proposals": self.stats["proposals"],
            "raft_reads": self.stats["reads"],
            "raft_snapshots": self.stats["snapshots"],
        }


class _Peers:
    """The loop's transport: whatever ``node.peers`` is at the time of sending."""

    def __init__(self, node: NodeService):
        self.node = node

    def send_many(self, messages) -> None:
        self.node.peers.send_many(messages)


class _NodeEvents(Events):
    """What the node does at the loop's moments (kvd.replica.Events)."""

    def __init__(self, node: NodeService):
        self.node = node

    def applied(self, entry, result) -> None:
        self.node._applied(entry)

    def snapshot_installed(self, snapshot) -> None:
        self.node._snapshot_installed(snapshot)

    def advanced(self, core, rd) -> None:
        if rd.soft_state is not None:
            self.node._soft_state_changed(*rd.soft_state)

    def proposal_done(self, token: _Proposal, result, index: int) -> None:
        token.deferred.callback(result)

    def proposal_failed(self, token: _Proposal, error: Exception) -> None:
        if isinstance(error, NotLeader):
            retry = _Retry("TRYAGAIN", "leadership moved")
        elif isinstance(error, Overtaken):
            # Sessions make the retry safe whether or not it was applied.
            retry = _Retry("TRYAGAIN", "overtaken by a snapshot")
        elif isinstance(error, (ProposalDropped, Superseded)):
            retry = _Retry("TRYAGAIN", str(error))
        else:
            retry = error
        token.deferred.errback(retry)

    def read_failed(self, token: _Read, error: Exception) -> None:
        self.node._read_index_refused(token)

    def read_ready(self, token: _Read) -> None:
        self.node._serve_read(token)
