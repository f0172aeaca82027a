# -*- test-case-name: tests.node.test_node -*-
"""
``NodeService``: one kvd node as a Twisted service.  It builds the Raft core
from what LMDB holds, runs the shared Ready loop (kvd.replica) on the
reactor and feeds it ticks and peer messages.  Writes are
``ClientSession``'s (kvd.node.session), linearizable reads
``LinearizableReads``' (kvd.node.reads), membership changes ``Membership``'s
(kvd.node.membership); the rest of kvd reads the node
through ``NodeView`` (kvd.node.view).

A storage failure in the Ready loop (a full disk, an LMDB error) fail-stops
the node: one critical log line names the data dir and the error, the node
reports itself stopping (``NodeView.failure``, ``/v1/health``), and the
reactor it runs on is stopped, so twistd stops every service and the process
ends, as a crash would (Raft expects a node that cannot persist to be down,
not to serve on).  On a clock that cannot stop (tests' ``task.Clock``) the
node stops its own service.  From the failure on it answers no read and
takes no write, and ``exit_code`` is what the process should exit with
(twistd itself would exit 0: kvd.tap sees to it).  A storage error in a read
outside the loop (``storage_stats``) fail-stops it the same way, and so does
one at start (``open``/``load``), before anything listens: one line, then
``SystemExit(EXIT_STORAGE)``.

Messages the Raft core refuses (out-of-range fields, a TimeoutNow or append
from a node that is not this term's leader, a forged transfer vote: see
``RaftCore.step``) are counted in ``stats["refused"]`` and logged, at most
one line per reason every ``REFUSED_LOG_INTERVAL_S``.

Pub/sub (kvd.kv.events): after each entry is applied, the node hands the
events it produced (published messages, keyspace events) to ``on_events``
(the client port's registry, kvd.resp.pubsub), on every node alike; the
entries a restart applies again (up to the commit index stored before it)
deliver nothing, and neither does a snapshot.

KVD.WATCH (kvd.kv.watch, kvd.resp.watch): after each entry that made a
revision, the node hands what it changed to ``watch_feed``, replayed entries
included (a revision is the same change whenever it is applied); the history
starts at the revision loaded, and starts again, ending every open watch,
when a snapshot is installed.

Everything that arrives in one reactor turn (client commands, peer
messages, a tick) is folded into one Ready: one LMDB transaction, one sync
and one append message per follower for the whole batch.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import random
from typing import Callable, List, Optional, Tuple

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from kvd.address import MemberAddress
from kvd.errors import Code, KvdError
from kvd.kv.commands import Lease, Tick
from kvd.kv.results import OK
from kvd.kv.watch import changes_of
from kvd.node.settings import NodeSettings
from kvd.node.membership import Membership
from kvd.node.reads import LinearizableReads, Read
from kvd.node.session import ClientSession, Proposal
from kvd.node.view import NodeView
from kvd.raft.core import ConfigChangeRejected, NotLeader, RaftSettings, ProposalDropped, RaftCore, bootstrap
from kvd.raft.messages import Configuration, EntryKind, ReadIndexRequest, Role
from kvd.replica import Events, Overtaken, Replica, Superseded


#: Stored records of the applied state whose checksums are verified per tick
#: (kvd.store.state scrub): under 1 ms of work (2.7 ms per 1000 records of 1 KiB,
#: measured); a million keys are checked in under four minutes at 50 ms ticks.
SCRUB_RECORDS_PER_TICK = 250
#: ... but a tenth of that in a tick after which more than ``SCRUB_BUSY_ENTRIES``
#: entries were applied: under a full write load the scrub took about 6% of the
#: leader's reactor thread (py-spy, SET from 64 clients), time the writes need,
#: and as much under one client's writes (about 20 entries a tick), where it
#: stood between every node and its share of the two cores.  A node that is
#: always busy still checks a million keys in about 40 minutes.
SCRUB_RECORDS_PER_BUSY_TICK = 25
SCRUB_BUSY_ENTRIES = 0

#: A follower that is up and lags at most this many snapshot intervals keeps the
#: log from being compacted past it (beyond that it is sent a snapshot).
FOLLOWER_HOLD_SNAPSHOTS = 10

#: A peer streamed a snapshot keeps the log from being compacted past it while its
#: match index rises at least this often.
CATCH_UP_STALL_S = 10.0

#: Seconds between two log lines about refused peer messages of one reason.
REFUSED_LOG_INTERVAL_S = 10.0

#: Process exit status after a storage fail-stop (sysexits' EX_IOERR), and after any other failure of the Raft loop (EX_SOFTWARE).
#: How often at most the leader proposes a Tick to reclaim expired keys and leases (kvd.kv.expiry, kvd.kv.leases).
RECLAIM_INTERVAL_S = 1.0

#: Seconds a backup waits at most for the compaction that flushes the state (kvd.discovery.backup).
BACKUP_FLUSH_WAIT_S = 30.0

EXIT_STORAGE = 74
EXIT_LOOP_FAILED = 70


class NodeService(service.Service):
    log = Logger()

    def __init__(self, config: NodeSettings, storage, machine, clock, rng: Optional[random.Random] = None):
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
        self._commit_notice_call = None  # the timer of a deferred commit notice (_send_commit_notice)
        self._lease_clock_at = 0.0  # when the lease clock last counted the time (catch_up_lease_clock)
        self._scrub_applied_before = 0  # the applied index at the last tick's scrub (busy ticks scrub less)
        # Proposals and reads in flight live in the replica, in the order they
        # were made, so that one sweep per tick expires them (no timer per
        # request: they are the hot path).
        self.leader_waiters: List[defer.Deferred] = []
        # Addresses peers advertised when they connected: how a node that has
        # no configuration yet (a joiner) can answer the nodes that call it.
        self.advertised = {}
        self.session = ClientSession(self)
        self.reads = LinearizableReads(self)
        self.membership = Membership(self)
        self.view = NodeView(self)
        self.stats = {"leader_changes": 0, "elections": 0, "proposals": 0, "reads": 0, "snapshots": 0,
                      "read_ticks": 0}
        # The highest commit index a leader has told us (AppendEntries and
        # Heartbeat carry it): how far behind the cluster this node's applied
        # index is, for /v1/health and metrics.  A view only; Raft never reads it.
        self.leader_commit_seen = 0
        self.last_leader_seen: Optional[str] = None  # for counting leader changes (metrics)
        self.stopping = False
        #: The error that fail-stopped this node (storage, or the Raft loop), if any, and why in words.
        self.failure: Optional[Exception] = None
        self.failure_reason: Optional[str] = None
        #: The process exit status the failure calls for (EXIT_STORAGE, EXIT_LOOP_FAILED), None while healthy.
        self.exit_code: Optional[int] = None
        self._refused_logged = {}  # reason -> (count logged, clock time)
        self._reclaiming = False  # a Tick to reclaim expired keys is in flight
        self._reclaim_after = 0.0
        #: Peers streamed a snapshot, catching up: peer -> (stream index, match seen, when it last rose).
        self._catching_up = {}
        #: Called with the events (kvd.kv.events: pub/sub messages, keyspace events) of each entry applied:
        #: the client port's pub/sub registry (kvd.resp.pubsub), set by kvd.tap.
        self.on_events: Optional[Callable[[list], None]] = None
        #: Called once a Ready has answered its proposals and reads: the client port pushes those replies out.
        self.on_replies: Optional[Callable[[], None]] = None
        #: Entries up to this index were committed before this process started: applying them again at a
        #: restart replays them, and their events are not delivered a second time.
        self.replayed_through = 0
        #: KVD.WATCH's feed (kvd.resp.watch.WatchHub, set by kvd.tap): ``applied(revision, changes)`` after each
        #: entry that made a revision, ``reset(revision, reason)`` when the history must start again.
        self.watch_feed = None
        self._watch_revision = 0  # the store's revision the feed has been given

    # ============================================================ lifecycle
    def startService(self):
        super().startService()
        durable = getattr(self.machine, "durable", False)
        restored = self._storage_at_start(lambda: self._open_and_load(durable))
        hard_state, snapshot, entries = restored.hard_state, restored.snapshot, restored.entries
        if hard_state.term == 0 and not entries and snapshot is None and self.config.initial_cluster:
            config = Configuration.make(voters=self.config.initial_cluster, addresses=self.config.initial_cluster)
            hard_state, entries = bootstrap(config)
            self._storage_at_start(lambda: self.storage.save(hard_state, entries, None, sync=True))
            self.log.info("{node} bootstrapped a cluster of {n} from the initial member list", node=self.config.node_id, n=len(config.voters))
        if snapshot is not None and not durable:
            self.machine.restore(snapshot.data)
        self.replayed_through = hard_state.commit
        self._watch_reset("the node started")
        self.make_core(hard_state, snapshot, entries)
        # withCount: a reactor that was late tells how many ticks it missed (the lease clock counts them: RaftCore.tick).
        self.ticker = task.LoopingCall.withCount(self._tick)
        self.ticker.clock = self.clock
        self._lease_clock_at = self.clock.seconds()
        self.ticker.start(self.config.tick_s, now=False)
        self.log.info(
            "{node} started: term {term}, {n} log entries, members {members}",
            node=self.config.node_id,
            term=hard_state.term,
            n=len(entries),
            members=list(self.core.config.members),
        )
        if not self.core.config.members:
            self.log.warn("{node}: {why}", node=self.config.node_id, why=self.membership.waiting_for())
        # Dial every member now, not at the first message (a follower sends none
        # until its election timer fires): a peer that sees us connect dials us
        # back at once (kvd.wire.peers), so a restarted node hears its leader
        # within a heartbeat, not after the leader's reconnect backoff.
        dial = getattr(self.peers, "dial", None)
        if dial is not None:
            for member in self.core.config.members:
                if member != self.config.node_id:
                    dial(member)
        self.campaign_if_alone()

    def _open_and_load(self, durable: bool):
        self.storage.open(self.config.cluster_id, self.config.node_id)
        if durable:
            # The applied state is on disk (kvd.store.state): open it; only the
            # log after its applied index is applied again.
            self.machine.reload()
        return self.storage.load()

    def _storage_at_start(self, fn: Callable[[], object]):
        """``fn()``; a storage error is one line, then the process ends (nothing listens yet: nothing was served)."""
        try:
            return fn()
        except Exception as e:
            self._storage_failed(e)
            raise SystemExit(EXIT_STORAGE) from None

    def make_core(self, hard_state, snapshot, entries) -> None:
        """A Raft core on this durable state, and the Ready loop around it."""
        options = RaftSettings(
            election_ticks=self.config.election_ticks,
            heartbeat_ticks=self.config.heartbeat_ticks,
            lease_reads=self.config.lease_reads,
            defer_commit_notice=self.config.commit_notice_s > 0,
        )
        self.core = RaftCore(self.config.node_id, options, self.rng, hard_state, snapshot, entries)
        self.replica = Replica(self.core, self.storage, _Peers(self), self.machine, _NodeEvents(self))

    def campaign_if_alone(self) -> None:
        """A cluster of one voter elects itself at once (no one else would ever ask it)."""
        if self.core.config.voters == (self.config.node_id,):
            self.replica.input(lambda core: core.campaign())
            self.schedule_drain()

    def call_core(self, fn: Callable[[RaftCore], object]) -> defer.Deferred:
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
        self.schedule_drain()
        return d

    @defer.inlineCallbacks
    def stopService(self):
        """Hand leadership over, answer what is pending, close the store."""
        self.stopping = True
        if self.failure is None and self.core is not None and self.core.is_leader() and len(self.core.config.voters) > 1:
            try:
                target = yield self.call_core(lambda core: core.transfer_leadership())
                self._drain()
                self.log.info("{node} is stopping: transferring leadership to {target}", node=self.config.node_id, target=target)
                deadline = self.clock.seconds() + self.config.tick_s * self.config.election_ticks * 2
                while self.core.is_leader() and self.clock.seconds() < deadline:
                    yield task.deferLater(self.clock, self.config.tick_s, lambda: None)
            except (NotLeader, ConfigChangeRejected):
                pass
        if self.ticker is not None and self.ticker.running:
            self.ticker.stop()
        for call in (self.drain_call, self._commit_notice_call):
            if call is not None and call.active():
                call.cancel()
        self._fail_all(KvdError(Code.TRYAGAIN, "the node is shutting down"))
        if self.peers is not None:
            yield defer.maybeDeferred(self.peers.stop)
        self.storage.close()
        super().stopService()

    def _fail_all(self, error: KvdError):
        replica = self.replica
        if replica is not None:
            proposals, replica.proposals = replica.proposals, {}
            for _, p in proposals.values():
                # We cannot know whether a proposed entry will still commit.
                p.deferred.errback(KvdError(Code.TIMEOUT, "the node stopped before the outcome was known"))
        self.reads.fail_all(error)
        waiters, self.leader_waiters = self.leader_waiters, []
        for d in waiters:
            d.errback(error)

    # ============================================================ requests
    def submit(self, command) -> defer.Deferred:
        """Replicate a kv write command; fires with its result once applied (kvd.node.session)."""
        if self.failure is not None:
            return defer.fail(self._failed_error())
        return self.session.submit(command)

    def forwarded(self, src: str, payload: bytes) -> defer.Deferred:
        """The peer transport's forward handler: a follower hands us, the leader, a client's write."""
        if self.failure is not None:
            return defer.fail(self._failed_error())
        return self.session.forwarded(src, payload)

    def read(self, op, linearizable: bool = True) -> defer.Deferred:
        """Serve a read op; linearizable by ReadIndex unless the client asked for READONLY or SERIALIZABLE (kvd.node.reads)."""
        if self.failure is not None:
            return defer.fail(self._failed_error())
        return self.reads.read(op, linearizable)

    def _failed_error(self) -> KvdError:
        """What a request hears from a fail-stopped node (it has not run the command)."""
        return KvdError(Code.TRYAGAIN, "this node has fail-stopped (%s); ask another node" % self.failure_reason)

    def storage_stats(self) -> dict:
        """
        The store's numbers (kvd.store.lmdb ``stats``), or {} while stopping.
        An error reading them is a storage failure like one in the loop: the node fail-stops.
        """
        stats = getattr(self.storage, "stats", None)
        if stats is None or self.stopping or self.failure is not None:
            return {}
        try:
            return dict(stats())
        except Exception as e:
            self._storage_failed(e)
            return {}

    def join(self, node_id: str, address: str) -> defer.Deferred:
        if self.failure is not None:
            return defer.fail(self._failed_error())
        return self.membership.join(node_id, address)

    def remove(self, node_id: str) -> defer.Deferred:
        if self.failure is not None:
            return defer.fail(self._failed_error())
        return self.membership.remove(node_id)

    def join_received(self, node_id: str, address: str) -> defer.Deferred:
        """The peer transport's join handler."""
        if self.failure is not None:
            return defer.fail(self._failed_error())
        return self.membership.join_received(node_id, address)

    # ============================================================ inputs
    def _tick(self, count: int):
        self._lease_clock_at = self.clock.seconds()
        self.replica.tick(count)
        self._drain()
        state = getattr(self.storage, "state", None)
        if state is not None and self.failure is None:
            # A lying disk is caught even where nobody reads (a corrupt record fail-stops the node).
            applied = self.core.applied
            busy = applied - self._scrub_applied_before > SCRUB_BUSY_ENTRIES
            self._scrub_applied_before = applied
            try:
                state.scrub(SCRUB_RECORDS_PER_BUSY_TICK if busy else SCRUB_RECORDS_PER_TICK)
            except Exception as e:
                self._storage_failed(e)
                return
        now = self.clock.seconds()
        self._expire(now)
        self._reclaim_expired(now)
        self.reads.ask_again(now - self.config.tick_s * max(3, 2 * self.config.heartbeat_ticks))

    def _reclaim_expired(self, now: float) -> None:
        """
        The leader proposes a Tick (at most one in flight, one per RECLAIM_INTERVAL_S) while keys it sees
        expired by its clock are stored: applying it deletes a bounded batch of them, on every replica
        alike (kvd.kv.expiry).  Nothing is deleted outside the log.
        """
        if (self._reclaiming or now < self._reclaim_after or self.stopping or self.failure is not None
                or not self.core.is_leader()):
            return
        machine = self.machine
        first = machine.next_expiry()
        if first is None or first > int(now * 1000):
            return
        self._reclaiming = True
        self._reclaim_after = now + RECLAIM_INTERVAL_S

        def done(result):
            self._reclaiming = False
            # A mass expiry: go on at once while keys are left that had expired when this Tick was proposed.
            left = self.machine.next_expiry()
            if result is OK and left is not None and left <= int(now * 1000):
                self._reclaim_after = 0.0
            return None

        self.submit(Tick()).addBoth(done)

    def _expire(self, now: float):
        """Fail the requests whose time is up (oldest first; they were made in order)."""
        proposals = self.replica.proposals
        while proposals:
            index = next(iter(proposals))
            _, p = proposals[index]
            if p.deadline > now:
                break
            del proposals[index]
            p.deferred.errback(KvdError(Code.TIMEOUT, "not committed in time (the entry may still commit)"))
        self.reads.expire(now)

    def catch_up_lease_clock(self) -> None:
        """
        Before an input that may be answered by the leader's lease (a read, a
        follower's ReadIndexRequest): count the ticks the timer has not run
        yet (``RaftCore.catch_up``), as after a pause of this process.
        """
        if not self.config.lease_reads or self.replica is None:
            return
        due = int((self.clock.seconds() - self._lease_clock_at) / self.config.tick_s)
        if due > 0:
            self._lease_clock_at += due * self.config.tick_s
            self.replica.input(lambda core: core.catch_up(due))

    def message_received(self, message) -> None:
        """A Raft message from a peer (already validated by the transport)."""
        if self.core is None:
            return
        if isinstance(message, ReadIndexRequest):
            self.catch_up_lease_clock()
        commit = getattr(message, "commit", None)
        # Only from the leader this node follows: a forged or stray commit
        # index must not make /v1/health report this node behind for good.
        if (isinstance(commit, int) and commit > self.leader_commit_seen
                and message.src == self.core.leader and message.term == self.core.term):
            self.leader_commit_seen = commit
        self.replica.step(message)
        self.schedule_drain()

    def peer_connected(self, node_id: str) -> None:
        """Our link to ``node_id`` is up: if it leads, re-ask what may have been dropped while it was down."""
        if self.core is not None and node_id == self.core.leader and not self.core.is_leader():
            self.reads.ask_again(self.clock.seconds())

    def peer_unreachable(self, node_id: str) -> None:
        if self.replica is not None:
            self.replica.input(lambda core: core.report_unreachable(node_id))

    def is_known_peer(self, node_id: str) -> bool:
        members = self.core.config.members if self.core else ()
        # A node that has not been given a configuration yet (a joiner, or a
        # seed still gathering its founders) accepts the cluster's nodes.
        return not members or node_id in members or node_id in self.membership.pending_joins

    def peer_hello(self, node_id: str, address: str) -> None:
        """An accepted peer told us where it listens."""
        try:
            MemberAddress.parse(address)
        except ValueError:
            self.log.warn("{peer} advertised a malformed address {address!r}", peer=node_id, address=address)
            return
        self.advertised[node_id] = address

    def peer_address(self, node_id: str) -> Optional[Tuple[str, int]]:
        address = self.view.address_of(node_id)
        return None if address is None else (address.host, address.peer_port)

    def schedule_drain(self):
        """Run the loop once this reactor turn is over, so that what arrives together shares one Ready."""
        if self.drain_call is None or not self.drain_call.active():
            self.drain_call = self.clock.callLater(0, self._drain)

    # ============================================================ the Ready loop's events
    def _drain(self):
        """Run the Ready loop (kvd.replica) over everything that arrived, then take a snapshot if due."""
        if self.drain_call is not None and self.drain_call.active():
            self.drain_call.cancel()
        self.drain_call = None
        self.replica.drain()
        if self.replica.more:
            self.schedule_drain()  # the rest of the committed entries, after this turn's I/O
        if self.core.commit_notice_pending and self._commit_notice_call is None:
            self._commit_notice_call = self.clock.callLater(self.config.commit_notice_s, self._send_commit_notice)
        state = getattr(self.storage, "state", None)
        if state is not None and not self.replica.inbox and self.replica.writing is None:
            state.settle_staging()  # a received snapshot the core did not take is dropped now
        if self.replica.failed is not None:
            return
        self._log_refused()
        self._maybe_snapshot()

    def _send_commit_notice(self) -> None:
        """A commit index no append has carried within ``commit_notice_s`` goes out now (RaftSettings.defer_commit_notice)."""
        self._commit_notice_call = None
        if self.replica is not None and self.core.commit_notice_pending:
            self.replica.input(lambda core: core.send_commit_notice())
            self._drain()

    def _log_refused(self) -> None:
        """Log what the core refused since the last line of that reason (rate-limited: a flood is one line)."""
        refused = self.core.refused
        if not refused:
            return
        self.stats["refused"] = sum(refused.values())
        now = self.clock.seconds()
        for reason, count in refused.items():
            logged, when = self._refused_logged.get(reason, (0, None))
            if count == logged or (when is not None and now - when < REFUSED_LOG_INTERVAL_S):
                continue
            self._refused_logged[reason] = (count, now)
            last = self.core.last_refused
            example = ""
            if last is not None and last[0] == reason:
                example = " (latest: %s from %r, term %s)" % last[1:]
            self.log.warn(
                "{node} refused {n} peer message(s) ({reason}; {total} in all){example}",
                node=self.config.node_id, n=count - logged, reason=reason, total=count, example=example,
            )

    def open_snapshot_stream(self, min_index: int):
        """
        The peer transport's snapshot source: a consistent read of the state on
        disk (kvd.store.state) and the Raft snapshot it amounts to, at the
        index it has reached (at least ``min_index``, the core's snapshot).
        """
        stream = self.storage.state.open_stream(min_index)
        try:
            return self.core.snapshot_at(stream.applied_index), stream
        except Exception:
            stream.close()
            raise

    def backup_point(self) -> defer.Deferred:
        """
        Make the state on disk linearizable for a backup (kvd.discovery.backup):
        a ReadIndex read (DBSIZE) first, so this node has applied every write
        acknowledged before the request; then a snapshot through the Ready loop,
        whose compaction flushes the applied state to disk.  Fires with the
        index the state on disk then has reached, at least that read's, once
        the compaction has completed (polled on the clock, at most
        ``BACKUP_FLUSH_WAIT_S``).
        """
        from kvd.kv.commands import DbSize

        done = defer.Deferred()

        def flush(_):
            def fn(core):
                if core.applied == core.latest_snapshot.index:
                    done.callback(core.applied)  # the last compaction flushed everything applied
                    return
                snap = self.replica.compact_now(self._keep_entries())
                if snap is None:
                    done.callback(0)  # the machine lags the core: stream what the disk has
                    return
                self._snapshot_taken(snap)
                self._when_compacted(done, snap.index, self.clock.seconds() + BACKUP_FLUSH_WAIT_S)

            self.replica.input(fn)
            self.schedule_drain()

        self.read(DbSize()).addCallbacks(flush, done.errback)
        return done

    def _when_compacted(self, done: defer.Deferred, index: int, deadline: float) -> None:
        if not self.replica.compacting or self.clock.seconds() >= deadline or self.failure is not None:
            done.callback(index)
            return
        self.clock.callLater(0.01, self._when_compacted, done, index, deadline)

    def storage_failed(self, error: Exception) -> None:
        """Storage failed outside the Ready loop (a corrupt record found by a read): the same fail-stop."""
        self._storage_failed(error)

    def _storage_failed(self, error: Exception) -> None:
        """The Ready loop's write or compaction raised: log once, then stop as a crashed node would."""
        if self.failure is not None:
            return
        self.failure = error
        self.exit_code = EXIT_STORAGE
        self.failure_reason = "storage failed in data dir %s: %s: %s" % (self.config.data_dir, _error_name(error), error)
        self.log.critical(
            "{node}: storage failed in data dir {data_dir}: {error}; stopping the node (fail-stop: it keeps "
            "the data last written; fix the disk and restart it, or rebuild it from the others: "
            "mgmt.py -r server -c rebuild)",
            node=self.config.node_id, data_dir=self.config.data_dir, error="%s: %s" % (_error_name(error), error),
        )
        self._begin_fail_stop()

    def _loop_failed(self, error: Exception) -> None:
        """Something else raised inside the Ready loop (a bug, or state that breaks Raft's rules): the same fail-stop."""
        if self.failure is not None:
            return
        self.failure = error
        self.exit_code = EXIT_LOOP_FAILED
        self.failure_reason = "the Raft loop failed: %s: %s" % (type(error).__name__, error)
        self.log.failure(
            "{node}: the Raft loop failed: {error}; stopping the node (fail-stop; data dir {data_dir})",
            Failure(error, type(error), error.__traceback__),
            node=self.config.node_id, data_dir=self.config.data_dir, error="%s: %s" % (type(error).__name__, error),
            log_level=LogLevel.critical,
        )
        self._begin_fail_stop()

    def _begin_fail_stop(self) -> None:
        self.stopping = True
        if self.ticker is not None and self.ticker.running:
            self.ticker.stop()
        self.clock.callLater(0, self._fail_stop)

    def _fail_stop(self) -> None:
        stop = getattr(self.clock, "stop", None)
        if callable(stop) and getattr(self.clock, "running", False):
            stop()  # the reactor: twistd stops every service, this one included, and the process ends
        elif self.running:
            self.stopService()

    def _applied(self, entry) -> None:
        if self.watch_feed is not None:
            self._feed_watches(entry.index)
        if self.on_events is not None and entry.index > self.replayed_through:
            self._deliver_events(entry.index)
        if entry.kind is EntryKind.CONFIG:
            self.log.info("{node}: membership is now {members}", node=self.config.node_id, members=self.view.members_text())
            self._forget_removed_peers()
            self._dial_members()

    def _deliver_events(self, index: int) -> None:
        """Hand the entry's events to the subscribers; nothing a subscriber does may stop the Raft loop."""
        events = getattr(self.machine, "events", None)
        if not events:
            return
        try:
            self.on_events(events)
        except Exception:
            self.log.failure("{node}: delivering the events of entry {index} failed", node=self.config.node_id,
                             index=index)

    def _feed_watches(self, index: int) -> None:
        """
        The changes of the entry just applied, if it made a revision, to KVD.WATCH's history (kvd.kv.watch).
        Entries a restart applies again are fed too: the history started at the revision loaded, and a
        revision is the same change whenever it is applied.  Nothing a watcher does may stop the Raft loop.
        """
        view = self.machine.view()
        revision = view.revision
        if revision == self._watch_revision:
            return
        self._watch_revision = revision
        try:
            self.watch_feed.applied(revision, changes_of(self.machine.events, view.ks, revision))
        except Exception:
            self.log.failure("{node}: feeding the watches entry {index} failed", node=self.config.node_id, index=index)
            self._watch_reset("feeding the watch history failed")

    def _watch_reset(self, reason: str) -> None:
        """KVD.WATCH's history starts again at the store's revision (a start, a snapshot); open watches end."""
        self._watch_revision = self.machine.view().revision
        if self.watch_feed is not None:
            self.watch_feed.reset(self._watch_revision, reason)

    def _dial_members(self) -> None:
        """
        Link to every member now, not at the first message: a follower sends
        only to its leader, so a node (re-)added at an address we refused while
        it was not a member would otherwise wait out its backoff before it could
        ask us for a vote (a removed leader hands over to the most up-to-date
        voter, which may be it: measured, the hand-over then fell back to an
        election timeout).  The dialled node dials us back at once.
        """
        redial = getattr(self.peers, "redial", None)
        if redial is None:
            return
        for node_id in self.core.config.members:
            if node_id != self.config.node_id:
                redial(node_id)

    def _forget_removed_peers(self) -> None:
        """
        Stop dialling nodes the configuration no longer has: else the link
        would redial a removed node forever, with a backoff that a node
        re-added at the same address would then wait out before it is contacted.
        """
        dialled, forget = getattr(self.peers, "dialled", None), getattr(self.peers, "forget", None)
        if dialled is None or forget is None:
            return
        members = set(self.core.config.members)
        for node_id in dialled():
            if node_id not in members and node_id not in self.membership.pending_joins:
                forget(node_id)

    def _snapshot_installed(self, snapshot) -> None:
        self.stats["snapshots_installed"] = self.stats.get("snapshots_installed", 0) + 1
        self._watch_reset("a snapshot was installed at index %d: resume with FROMREV" % snapshot.index)
        self.log.info("{node} installed a snapshot at index {index}", node=self.config.node_id, index=snapshot.index)

    def _soft_state_changed(self, role: Role, leader: Optional[str], term: int):
        self.log.info("{node} is {role} at term {term}, leader {leader}", node=self.config.node_id, role=role.value, term=term, leader=leader or "unknown")
        if role is Role.CANDIDATE:
            self.stats["elections"] += 1
        self.stats["leader_changes"] += 1
        if leader is not None and leader != self.last_leader_seen:
            self.stats["new_leaders"] = self.stats.get("new_leaders", 0) + 1
            self.last_leader_seen = leader
        if role is Role.LEADER:
            self._promote_leases()
        if leader is not None:
            waiters, self.leader_waiters = self.leader_waiters, []
            for d in waiters:
                d.callback(leader)
            self.session.leader_changed(leader)
        # Reads that had not got their index yet were dropped with the old
        # leadership; ask again.
        for _, r in self.replica.take_waiting_reads():
            self.reads.request_index(r)

    def _promote_leases(self) -> None:
        """
        A new leader's first proposal, when leases may exist (the machine has some, or a command not applied
        yet may grant one): PROMOTE extends every live lease by its ttl from this leader's stamp (etcd's
        promote, kvd.kv.leases), so the election gap cuts off no client that kept its lease alive through the
        old leader.  Proposed before any Tick of this leader's, so no lease expires across the gap first.
        """
        core = self.core
        log = core.log
        pending = any(log.entry(i).kind is EntryKind.NORMAL
                      for i in range(max(core.applied, log.snapshot_index) + 1, log.last_index() + 1))
        if not (self.machine.lease_count() or pending):
            return
        self.stats["lease_promotes"] = self.stats.get("lease_promotes", 0) + 1

        def failed(f):
            # Not applied (leadership lost at once): the next leader promotes; nothing else to do.
            self.log.info("{node}: lease promote not applied: {error}", node=self.config.node_id,
                          error=f.getErrorMessage())

        self.submit(Lease("promote")).addErrback(failed)

    def _maybe_snapshot(self):
        core = self.core
        if core.applied - core.latest_snapshot.index < self.config.snapshot_entries:
            return
        self.replica.compact(self._keep_entries(), self.config.snapshot_entries, self._snapshot_taken)

    def _keep_entries(self) -> int:
        """
        Entries to keep below a new snapshot: the configured tail, or more if
        a follower that is up needs them (a few entries beat a snapshot of the
        whole state), or a snapshot stream's receiver will go on from there.
        """
        keep = self.config.snapshot_keep_entries
        floors = [self.core.followers_floor(FOLLOWER_HOLD_SNAPSHOTS * self.config.snapshot_entries)]
        floors.extend(self._catching_up_floors())
        floors = [f for f in floors if f is not None]
        if floors:
            keep = max(keep, self.core.applied - min(floors))
        return keep

    def _catching_up_floors(self) -> List[int]:
        """
        Where each peer that was streamed a snapshot goes on from: the
        stream's index, then its match index for as long as that keeps
        rising (at least every ``CATCH_UP_STALL_S``).  A joiner streamed a
        large state under steady writes ends far behind, further than a
        follower is otherwise waited for; compacting past it would stream the
        whole state again, and again, while the writes go on.
        """
        recent = getattr(self.peers, "recent_streams", None)
        now = self.clock.seconds()
        for peer, index in (recent() if recent is not None else {}).items():
            tracked = self._catching_up.get(peer)
            # While its stream runs (or just ended) the clock of its catching up has not started.
            self._catching_up[peer] = (index, 0 if tracked is None or tracked[0] != index else tracked[1], now)
        floors = []
        for peer, (index, last_match, progressed) in list(self._catching_up.items()):
            match = self.core.match_of(peer)
            if match is None:
                del self._catching_up[peer]
                continue
            if match > last_match:
                last_match, progressed = match, now
                self._catching_up[peer] = (index, match, now)
            if now - progressed > CATCH_UP_STALL_S:
                del self._catching_up[peer]  # it stopped catching up: a snapshot it will be
                continue
            floors.append(max(index, last_match))
        return floors

    def _snapshot_taken(self, snap) -> None:
        self.stats["snapshots"] += 1
        self.log.info("{node} took a snapshot at index {index}", node=self.config.node_id, index=snap.index)

    # ============================================================ waiting for a leader
    def _no_leader(self) -> KvdError:
        """NOLEADER, saying why: an unformed node says what it waits for and how to form a cluster."""
        if self.core is not None and not self.core.config.members:
            return KvdError(Code.NOLEADER, "the command was not applied: " + self.membership.waiting_for())
        return KvdError(Code.NOLEADER, "no leader: this node cannot reach a majority of the cluster; the command was not applied")

    def when_leader(self, deadline: Optional[float] = None) -> defer.Deferred:
        """
        Fires with the leader's id once one is known, or fails with NOLEADER
        after about three election timeouts, or at ``deadline`` (the request's
        own) if that comes first.
        """
        if self.core.leader is not None:
            return defer.succeed(self.core.leader)
        if self.stopping:
            return defer.fail(KvdError(Code.TRYAGAIN, "the node is shutting down"))
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


def _error_name(error: Exception) -> str:
    """``StorageFull``, ``OSError``, but ``lmdb.Error``: a bare "Error" says nothing."""
    kind = type(error)
    module = kind.__module__.split(".")[0]
    return kind.__qualname__ if module in ("builtins", "kvd") else "%s.%s" % (module, kind.__qualname__)


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

    def finished(self, core, rd) -> None:
        if self.node.on_replies is not None:
            self.node.on_replies()

    def proposal_done(self, token: Proposal, result, index: int) -> None:
        token.deferred.callback(result)

    def proposal_failed(self, token: Proposal, error: Exception) -> None:
        # Each of these means "certainly not applied as proposed": TRYAGAIN
        # (the session makes a retry safe even when a snapshot overtook it).
        if isinstance(error, NotLeader):
            message = "leadership moved"
        elif isinstance(error, Overtaken):
            message = "overtaken by a snapshot"
        elif isinstance(error, (ProposalDropped, Superseded)):
            message = str(error)
        else:
            token.deferred.errback(error)
            return
        token.deferred.errback(KvdError(Code.TRYAGAIN, message))

    def read_failed(self, token: Read, error: Exception) -> None:
        self.node.reads.no_leader_known(token)

    def read_ready(self, token: Read) -> None:
        self.node.reads.serve(token)

    def storage_failed(self, error: Exception) -> None:
        self.node._storage_failed(error)

    def loop_failed(self, error: Exception) -> None:
        self.node._loop_failed(error)
