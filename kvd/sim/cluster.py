# -*- test-case-name: tests.sim.test_sim -*-
"""
A whole simulated cluster: N real ``RaftCore``s, each behind the node's own
Ready loop (kvd.replica), over a ``SimNetwork`` and ``SimDisk``s, with clients, a nemesis that injects faults, and the checker
of kvd.sim.invariants run after every step.

Everything is driven by one event queue in simulated time (1 unit ~ 1 ms;
a tick every ``TICK`` units) and by child ``random.Random``s derived from the
one seed, so a seed replays a run exactly, trace and all.

A run has two phases, as in TigerBeetle's VOPR: a *safety* phase of
``ticks`` ticks with faults (loss, duplication, reordering, partitions,
crashes, slow disks, membership changes, compaction) and client traffic,
then a *liveness* phase: faults heal, every member restarts, and within a
bounded number of ticks a leader must be elected, a new write must commit
and be acknowledged, every client must finish and every member catch up.

Where the applied state lives (``SimOptions.state``): in memory, the
machine restored from snapshot blobs (``memory``); or on the simulated disk
as the node keeps it (``durable``, kvd.sim.state: flushed with the log,
reopened at a restart, snapshots streamed by kvd.sim.streams), with faults
aimed at it: crashes of the receiver in the middle of a stream, compactions
of the sender while it streams; ``mixed`` (the default) draws one per seed.

Lease reads (``SimOptions.lease_reads``, RaftSettings.lease_reads) run
under the same faults.  Their clock assumption is kept: the skew fault draws
tick rates within the lease's margin; a paused node's ticks coalesce and the
loop counts them (``RaftCore.tick``), as the node's timer does.  With
``SimOptions.lease_reads_mixed`` only some nodes have the option (drawn per
node, as an operator who forgot it on some, or a rolling restart, leaves it):
the leaders that have it serve reads by lease on the others' promise.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Deque, Dict, FrozenSet, List, Optional

from kvd.kv.commands import Compare, Delete, Envelope, Get, IncrBy, KvTxn, Lease, MSet, Set, TxnOp, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.raft.core import ConfigChangeRejected, NotLeader, RaftSettings, ProposalDropped, RaftCore, Ready, bootstrap
from kvd.raft.messages import Configuration, InstallSnapshot, Role
from kvd.replica import Events, Overtaken, Replaced, Replica
from kvd.sim.invariants import Checker, Violation
from kvd.sim.disk import SimDisk
from kvd.sim.network import NetworkFaults, SimNetwork
from kvd.sim.leases import MAX_SKEW, LeaseClient
from kvd.sim.state import SimState
from kvd.sim.streams import SimStreams

TICK = 100  # time units per tick
ALL_FAULTS = ("loss", "dup", "reorder", "partition", "crash", "membership", "snapshot", "slowdisk", "skew", "pause")
#: The tick periods the skew fault draws a node's from: clocks up to twice as slow or 30% fast.
TICK_PERIODS = (TICK, TICK, TICK * 7 // 10, TICK * 3 // 2, TICK * 2)
#: The same with lease reads, within their margin (RaftSettings.lease_ticks: with 10 election ticks, no
#: node's ticks may run more than 1/8 faster than the leader's): 95 against 105 is 10.5% faster.
LEASE_TICK_PERIODS = (TICK, TICK, TICK * 95 // 100, TICK * 105 // 100, TICK * 97 // 100)
STATE_MODES = ("memory", "durable", "mixed")
REGISTER_KEYS = (b"x", b"y", b"z")
COUNTER_KEY = b"ctr"


@dataclass
class SimOptions:
    seed: int = 0
    nodes: int = 3
    faults: FrozenSet[str] = frozenset(ALL_FAULTS)
    ticks: int = 300  # safety phase
    liveness_ticks: int = 400  # bound on the liveness phase
    trace_keep: int = 200  # events kept for the failure report (0: keep all)
    swarm: bool = True  # each run enables a random subset of ``faults``
    state: str = "mixed"  # where the applied state lives: memory, durable, or mixed (drawn per seed)
    # The durable node's snapshot rules as they are (since 60883da): it streams every InstallSnapshot,
    # also one whose data is the token of a stream it installed itself (core.latest_snapshot keeps
    # it), stores snapshots without their data, and refuses a plain InstallSnapshot.  False: as the
    # node was before, streaming only one with empty data, so the token went out as data, which no
    # receiver can install (tests/sim/test_durable.py shows the simulator finds it).
    stream_any_snapshot: bool = True
    #: How often a durable state's flush waits for a later write (kvd.store.state flushes in batches);
    #: None: drawn per seed among 0, 0.5 and 0.9.
    flush_skip: Optional[float] = None
    #: Drive leases (kvd.sim.leases): a lease client, nodes' stamps skewed by their clocks, a new leader's PROMOTE.
    leases: bool = False
    #: Lease reads (RaftSettings.lease_reads) on every node.  Their clock assumption holds: the skew fault
    #: draws tick rates within the lease's margin (``LEASE_TICK_PERIODS``).
    lease_reads: bool = False
    #: With ``lease_reads``: each node (a joiner too) has the option with probability 1/2, drawn per seed;
    #: a node keeps its draw across restarts.
    lease_reads_mixed: bool = False
    #: RaftSettings.defer_commit_notice on every node (the node's default): a leader sends a new commit
    #: index with its next append or heartbeat, or at its next tick (the node's short timer) if none went.
    defer_commit_notice: bool = False


@dataclass
class Swarm:
    """The per-seed knobs, drawn from the seed (TigerBeetle's 'swarm' testing)."""

    enabled: FrozenSet[str]
    net: NetworkFaults
    partition_rate: float
    crash_rate: float
    crash_down_ticks_max: int
    membership_rate: float
    compact_rate: float
    sync_delay_max: Dict[str, int]
    skew: bool
    pause_rate: float
    power_loss_rate: float
    leader_crash_rate: float
    clients: int
    client_rate: float
    read_ratio: float
    raft: RaftSettings
    max_members: int
    min_voters: int

    @classmethod
    def draw(cls, rng: random.Random, opts: SimOptions) -> "Swarm":
        # Swarm testing: each run enables a random subset of the allowed
        # faults, since some bugs only show when other faults stay away
        # (a stale read needs a leader that lives long enough to be stale).
        f = frozenset(x for x in sorted(opts.faults) if not opts.swarm or rng.random() < 0.6)
        net = NetworkFaults(
            loss=rng.choice([0.0, 0.01, 0.05, 0.15]) if "loss" in f else 0.0,
            dup=rng.choice([0.0, 0.02, 0.1]) if "dup" in f else 0.0,
            reorder=rng.choice([0.0, 0.05, 0.3]) if "reorder" in f else 0.0,
            delay_max=rng.choice([3, 10, 40]),
        )
        slow = rng.choice([0, 15, 60, 250]) if "slowdisk" in f else 0
        raft = RaftSettings(
            election_ticks=10,
            heartbeat_ticks=rng.choice([1, 2, 3]),
            append_bytes_max=rng.choice([60, 200, 48 * 1024]),
            inflight_max=rng.choice([1, 2, 8, 64]),
            # Small, so that applying in steps between network turns (kvd.replica ``more``) is exercised.
            apply_entries_max=4,
            lease_reads=opts.lease_reads,
            defer_commit_notice=opts.defer_commit_notice,
        )
        return cls(
            enabled=f,
            net=net,
            partition_rate=rng.choice([0.005, 0.02, 0.05]) if "partition" in f else 0.0,
            crash_rate=rng.choice([0.003, 0.01, 0.03]) if "crash" in f else 0.0,
            crash_down_ticks_max=rng.choice([1, 10, 40]),
            membership_rate=rng.choice([0.02, 0.06, 0.15]) if "membership" in f else 0.0,
            compact_rate=rng.choice([0.01, 0.05, 0.2]) if "snapshot" in f else 0.0,
            sync_delay_max={"*": slow},
            skew="skew" in f and rng.random() < 0.7,
            pause_rate=rng.choice([0.01, 0.03, 0.06]) if "pause" in f else 0.0,
            power_loss_rate=rng.choice([0.0, 0.003, 0.01]) if "crash" in f else 0.0,
            leader_crash_rate=rng.choice([0.0, 0.2, 0.5, 0.9]) if "crash" in f else 0.0,
            clients=rng.randint(1, 4),
            client_rate=rng.choice([0.2, 0.5, 1.0]),
            read_ratio=rng.choice([0.2, 0.5]),
            raft=raft,
            max_members=opts.nodes + 2,
            min_voters=1 if opts.nodes <= 3 else 2,
        )


# ============================================================ one node
class SimNode:
    """
    One simulated node: the real core behind the real Ready loop
    (kvd.replica.Replica, the node's own), on a ``SimDisk`` and the simulated
    network; this class only adds what the simulator needs around it: the
    checker's hooks, the clients' bookkeeping, crashes and pauses.
    """

    def __init__(self, cluster: "SimCluster", node_id: str, disk: SimDisk):
        self.cluster = cluster
        self.id = node_id
        self.disk = disk
        self.up = False
        self.decommissioned = False
        self.incarnation = 0
        self.replica: Optional[Replica] = None
        self.core: Optional[RaftCore] = None
        self.machine: Optional[KVMachine] = None
        self.state: Optional[SimState] = None  # the durable keyspace, in the durable mode
        self.tick_period = TICK  # a node whose clock runs slow or fast ticks at another rate
        self.lease_reads = cluster.opts.lease_reads  # its own option (SimOptions.lease_reads_mixed)
        self.clock_offset = 0  # how far its clock, which stamps its entries, is from the simulation's (leases runs)
        self.promotes = 0

    def clock_ms(self) -> int:
        """This node's clock: what it stamps the entries it proposes with."""
        return max(0, self.cluster.now + self.clock_offset)

    @property
    def busy(self) -> bool:
        """A write is outstanding or the node is paused: its inputs wait."""
        return self.replica is not None and self.replica.busy

    # ------------------------------------------------------------ life
    def start(self) -> None:
        c = self.cluster
        restored = self.disk.load()
        if c.durable:
            # As the node starts (kvd.node.service): open the state on disk; the
            # loop skips the log entries it holds already.
            self.state = SimState(self.disk, skip_flush=c.skip_flush)
            self.machine = KVMachine(keyspace=self.state)
            self.machine.reload()
        else:
            self.machine = KVMachine()
            if restored.snapshot is not None:
                self.machine.restore(restored.snapshot.data)
        if self.machine.applied_index:
            c.checker.on_machine_loaded(self.id, "restart", self.machine)
        if c.durable and self.disk.image.staging is not None and not self.disk.image.staging[2]:
            c.stats["restarts_with_half_staged_stream"] += 1  # a crash left a stream half-written: the next begin clears it
        self.core = RaftCore(self.id, replace(c.swarm.raft, lease_reads=self.lease_reads), random.Random(c.rng_cores.getrandbits(64)),
                             restored.hard_state, restored.snapshot, restored.entries)
        self.incarnation += 1
        self.replica = Replica(self.core, self.disk, _SimTransport(c), self.machine, _SimEvents(self))
        self.up = True
        c.checker.forget_node(self.id)
        c.checker.on_commit(self.id, self.core)
        c.event(self.id, "start", "term=%d commit=%d last=%d applied=%d"
                % (self.core.term, self.core.commit, self.core.log.last_index(), self.machine.applied_index))
        self.drain()

    def crash(self) -> None:
        if not self.up:
            return
        c = self.cluster
        flushes, staging = self.disk.lost_flushes, self.disk.lost_staging
        lost = self.disk.crash()
        self.up = False
        self.count_lease_reads()
        self.replica = None
        self.core = None
        self.machine = None
        self.state = None
        if c.durable:
            c.stats["lost_flushes"] += self.disk.lost_flushes - flushes
            c.stats["lost_staging_writes"] += self.disk.lost_staging - staging
            if c.streams.sending(self.id):
                c.stats["sender_crashes_mid_stream"] += 1
            c.stats["crashes_mid_stream"] += c.streams.node_down(self.id)
        c.event(self.id, "crash", "lost %d unsynced writes" % lost)

    def count_lease_reads(self) -> None:
        """Add the reads this core answered by its lease to the run's stats (before the core goes)."""
        if self.cluster.opts.lease_reads:
            self.cluster.stats["lease_reads"] += self.core.lease_reads_served

    def drain(self) -> None:
        """Run the loop; then, as the node does after each drain, drop a received stream the core did not take."""
        self.replica.drain()
        if self.replica.more:
            self.cluster.schedule(0, self._drain_more, self.incarnation)  # as the node: after what is due now
        if self.state is not None and not self.replica.inbox and self.replica.writing is None:
            self.state.settle_staging()

    def _drain_more(self, incarnation: int) -> None:
        if self.up and incarnation == self.incarnation:
            self.drain()

    # ------------------------------------------------------------ inputs
    def input(self, fn: Callable[[RaftCore], None]) -> None:
        if not self.up:
            return
        self.replica.input(fn)
        self.drain()

    def tick(self) -> None:
        if not self.up:
            return
        if self.replica.core.commit_notice_pending:
            # The node's timer (kvd.node.service _send_commit_notice), at tick granularity.
            self.cluster.stats["commit_notices"] = self.cluster.stats.get("commit_notices", 0) + 1
            self.replica.input(lambda core: core.send_commit_notice())
        self.replica.tick()
        self.drain()

    def pause(self, duration: int) -> None:
        """Stop processing for a while (a VM pause, a long GC): inputs wait, timers coalesce."""
        if not self.up or self.busy:
            return
        self.replica.hold()
        self.cluster.event(self.id, "pause", "for %d" % duration)
        self.cluster.schedule(duration, self._unpause, self.incarnation)

    def _unpause(self, incarnation: int) -> None:
        if not self.up or incarnation != self.incarnation:
            return
        self.replica.release()
        self.drain()

    # ------------------------------------------------------------ client requests
    def client_write(self, client: "SimClient", op_no: int, attempt: int, envelope_args: tuple) -> None:
        def fn(core: RaftCore) -> None:
            if core.role is not Role.LEADER:
                self.cluster.reply(client, op_no, attempt, "redirect", core.leader)
                return
            cid, seq, cmd = envelope_args
            data = encode_envelope(Envelope(cid, seq, seq, self.clock_ms(), cmd))
            self.replica.propose(data, (client, op_no, attempt))

        self.input(fn)

    def client_read(self, client: "SimClient", op_no: int, attempt: int, key: bytes) -> None:
        def fn(core: RaftCore) -> None:
            ctx = b"%s/%d/%d/%d" % (client.id, op_no, attempt, self.incarnation)
            self.replica.read_index(ctx, (client, op_no, attempt, key))

        self.input(fn)

    def promote(self, incarnation: int, term: int) -> None:
        """A new leader's first proposal (kvd.node.service): PROMOTE, extending the live leases (kvd.kv.leases)."""
        def fn(core: RaftCore) -> None:
            if core.role is not Role.LEADER or core.term != term:
                return
            self.promotes += 1
            cid = b"promote/%s/%d/%d/%d" % (self.id.encode(), incarnation, term, self.promotes)
            self.replica.propose(encode_envelope(Envelope(cid, 1, 1, self.clock_ms(), Lease("promote"))), None)
            self.cluster.stats["promotes"] = self.cluster.stats.get("promotes", 0) + 1

        if incarnation == self.incarnation:
            self.input(fn)

    # ------------------------------------------------------------ maintenance
    def compact(self, keep_entries: int) -> None:
        def fn(core: RaftCore) -> None:
            if core.applied - core.log.snapshot_index < 4:
                return
            if self.machine.applied_index != core.applied:
                # A durable machine reopened at a restart is at its last flush, past the core's
                # applied index until the core hands those entries out again; the loop does not
                # compact then (compact_now).
                assert self.state is not None and self.machine.applied_index > core.applied, \
                    "machine and core disagree on the applied index"
                return
            snap = self.replica.compact_now(keep_entries)
            self.cluster.stats["compactions"] += 1
            if self.cluster.durable and self.cluster.streams.sending(self.id):
                self.cluster.stats["compactions_during_stream"] += 1
            self.cluster.event(self.id, "compact", "index=%d keep=%d" % (snap.index, keep_entries))

        self.input(fn)


class _SimTransport:
    def __init__(self, cluster: "SimCluster"):
        self.cluster = cluster

    def send_many(self, messages) -> None:
        for m in messages:
            self.cluster.send(m)


class _SimEvents(Events):
    """The checker's hooks and the clients' answers, at the loop's moments."""

    def __init__(self, node: SimNode):
        self.node = node
        self.c = node.cluster

    def ready(self, core: RaftCore, rd: Ready) -> None:
        c, nid = self.c, self.node.id
        if rd.soft_state is not None:
            role, leader, term = rd.soft_state
            c.event(nid, "role", "%s term=%d leader=%s" % (role.value, term, leader))
        if rd.entries:
            c.checker.on_entries(nid, core, rd.entries)
        c.checker.on_commit(nid, core)
        if core.role is Role.LEADER:
            c.checker.on_leader_commit(nid, core, c.disks(), c.live_cores())

    def stepped(self, core: RaftCore) -> None:
        # Every input, not only every Ready: inputs that waited behind a write share
        # one Ready, and one of them may change the configuration after another
        # advanced the commit index under the configuration before it.
        if core.role is Role.LEADER:
            self.c.checker.on_leader_commit(self.node.id, core, self.c.disks(), self.c.live_cores())

    def advanced(self, core: RaftCore, rd: Ready) -> None:
        if core.role is Role.LEADER:  # the leader's own persisted entries count at advance
            self.c.checker.on_leader_commit(self.node.id, core, self.c.disks(), self.c.live_cores())

    def persisted(self, core: RaftCore, rd: Ready) -> None:
        if rd.soft_state is not None and rd.soft_state[0] is Role.LEADER:
            # Checked once the Ready is persisted: a leader elected by its own
            # vote alone whose term never reached the disk was never seen by anyone.
            self.c.checker.on_leader(self.node.id, self.node.incarnation, rd.soft_state[2], core)
            self.c.stats["leaders"] += 1
            if self.c.opts.leases:
                self.c.schedule(0, self.node.promote, self.node.incarnation, rd.soft_state[2])
            self.c.nemesis_new_leader(self.node)

    def snapshot_installed(self, snapshot) -> None:
        self.c.stats["installs"] += 1
        machine = self.node.machine
        self.c.event(self.node.id, "install", "snapshot index=%d term=%d state at %d" % (snapshot.index, snapshot.term, machine.applied_index))
        self.c.checker.on_machine_loaded(self.node.id, "install", machine)

    def applied(self, entry, result) -> None:
        self.c.checker.on_apply(self.node.id, entry, result, getattr(self.node.machine, "events", ()))
        if self.c.opts.leases:
            self.c.checker.on_lease_state(self.node.id, self.node.machine)

    def storage_failed(self, error: Exception) -> None:
        # The simulated disk raises only the checker's Violations (kvd.sim.disk):
        # they end the run, as they did before the loop learnt to fail-stop.
        raise error

    def proposal_done(self, token, result, index: int) -> None:
        if token is None:  # a node's own PROMOTE
            return
        client, op_no, attempt = token
        self.c.reply(client, op_no, attempt, "ok", (result, index))

    def proposal_failed(self, token, error: Exception) -> None:
        if token is None:  # a node's own PROMOTE: the next leader promotes
            return
        client, op_no, attempt = token
        if isinstance(error, Replaced):
            self.c.reply(client, op_no, attempt, "retry", None)
        elif not isinstance(error, Overtaken):  # overtaken: the client's own timeout retries
            self.c.reply(client, op_no, attempt, "redirect", self.node.core.leader)

    def read_failed(self, token, error: Exception) -> None:
        client, op_no, attempt, _ = token
        self.c.reply(client, op_no, attempt, "redirect", self.node.core.leader)

    def read_ready(self, token) -> None:
        client, op_no, attempt, key = token
        machine = self.node.machine
        applied = machine.applied_index
        value = machine.read(Get(key))
        self.c.checker.on_read_served(self.node.id, key, applied, value)
        self.c.reply(client, op_no, attempt, "ok", (value, applied))


# ============================================================ clients
class SimClient:
    """
    A client with one operation at a time.  Writes carry (client id, seq) so
    that retries are applied once; a request that is not answered within a
    timeout is retried, perhaps to another node.
    """

    def __init__(self, cluster: "SimCluster", cid: bytes, rng: random.Random):
        self.cluster = cluster
        self.id = cid
        self.rng = rng
        self.seq = 0
        self.op_no = 0
        self.op: Optional[dict] = None
        self.target: Optional[str] = None
        self.done = 0
        self.lease: Optional[LeaseClient] = None  # the lease workload's decisions (kvd.sim.leases)

    def maybe_start(self) -> None:
        c = self.cluster
        if self.op is not None or self.rng.random() >= c.swarm.client_rate:
            return
        if self.lease is not None:
            op = self.lease.next_op(self.seq + 1)
            if op is None:
                return
            kind, what, keys = op
            if kind == "read":
                self.begin({"kind": "read", "key": what})
            else:
                self.seq += 1
                self.begin({"kind": "write", "seq": self.seq, "cmd": what, "keys": keys})
            return
        if self.rng.random() < c.swarm.read_ratio:
            self.begin({"kind": "read", "key": self.rng.choice(REGISTER_KEYS + (COUNTER_KEY,))})
        else:
            self.seq += 1
            r = self.rng.random()
            value = b"%s.%d" % (self.id, self.seq)
            if r < 0.5:
                key = self.rng.choice(REGISTER_KEYS)
                # Every fifth write of a client's gives its key an expiry (kvd.kv.expiry: decided from the
                # leaders' stamps, so every replica drops it at the same index); drawn without the rng, so
                # that a seed's schedule of faults is the one it had before expiry existed.
                expire = 1 + (self.seq * 37) % (20 * TICK) if self.seq % 5 == 0 else None
                cmd, keys = Set(key, value, expire=expire), [key]
            elif r < 0.8:
                cmd, keys = IncrBy(COUNTER_KEY, 1), [COUNTER_KEY]
            elif r < 0.9:
                key = self.rng.choice(REGISTER_KEYS)
                cmd, keys = Delete((key,)), [key]
            else:
                a, b = self.rng.sample(REGISTER_KEYS, 2)
                cmd, keys = MSet(((a, value), (b, value))), [a, b]
                if self.seq % 2 == 0:
                    # Every other one a KVD.TXN (kvd.kv.txn), drawn without the rng: both keys if a exists,
                    # else b alone and a read of a, in one entry at one revision.
                    cmd = KvTxn((Compare("exists", a),), (TxnOp("set", a, value), TxnOp("set", b, value)),
                                (TxnOp("set", b, value), TxnOp("get", a)))
            self.begin({"kind": "write", "seq": self.seq, "cmd": cmd, "keys": keys})

    def begin(self, op: dict) -> None:
        c = self.cluster
        self.op_no += 1
        op["invoked"] = c.step_no
        op["attempt"] = 0
        self.op = op
        c.event(self.id.decode(), "invoke", _describe_op(op))
        self.send()

    def send(self) -> None:
        c = self.cluster
        op = self.op
        op["attempt"] += 1
        op["deadline"] = c.now + c.swarm.raft.election_ticks * TICK
        members = c.member_ids()
        if self.target not in members:
            self.target = self.rng.choice(members)
        if op["kind"] == "write":
            node = c.nodes[self.target]
            args = (self.id, op["seq"], op["cmd"])
            c.client_hop(node.client_write, self, self.op_no, op["attempt"], args)
        else:
            # Reads are spread over all members: followers serve them too, by ReadIndex.
            node = c.nodes[self.rng.choice(members)] if self.rng.random() < 0.5 else c.nodes[self.target]
            c.client_hop(node.client_read, self, self.op_no, op["attempt"], op["key"])

    def on_tick(self) -> None:
        if self.op is not None and self.cluster.now >= self.op["deadline"]:
            self.target = None  # try someone else
            self.send()

    def on_reply(self, op_no: int, attempt: int, kind: str, payload) -> None:
        c = self.cluster
        op = self.op
        if op is None or op_no != self.op_no:
            return  # an answer to an operation already finished
        if kind in ("redirect", "retry"):
            if attempt != op["attempt"]:
                return
            self.target = payload if kind == "redirect" and payload in c.nodes else None
            op["deadline"] = c.now + TICK  # retry on the next tick
            return
        if op["kind"] == "write":
            result, index = payload
            c.checker.on_write_acked(c.step_no, self.id, op["seq"], op["keys"], result)
            if self.lease is not None:
                self.lease.acked(op["cmd"], result)
            c.stats["acks"] += 1
            c.event(self.id.decode(), "acked", "#%d at %d -> %r" % (op["seq"], index, result))
        else:
            value, applied = payload
            c.checker.on_read_done(op["invoked"], self.id, op["key"], applied)
            c.stats["reads"] += 1
            c.event(self.id.decode(), "read", "%r = %r at %d" % (op["key"], value, applied))
        self.op = None
        self.done += 1


def _describe_op(op: dict) -> str:
    if op["kind"] == "read":
        return "get %r" % op["key"]
    return "#%d %r" % (op["seq"], op["cmd"])


# ============================================================ the cluster
class SimCluster:
    def __init__(self, opts: SimOptions):
        self.opts = opts
        master = random.Random(opts.seed)
        # One child generator per concern, so that adding draws to one does not shift the others.
        self.rng_swarm = random.Random(master.getrandbits(64))
        self.rng_net = random.Random(master.getrandbits(64))
        self.rng_disk = random.Random(master.getrandbits(64))
        self.rng_cores = random.Random(master.getrandbits(64))
        self.rng_clients = random.Random(master.getrandbits(64))
        self.rng_nemesis = random.Random(master.getrandbits(64))
        self.rng_streams = random.Random(master.getrandbits(64))  # last: the draws above are as before it came
        self.rng_flush = random.Random(master.getrandbits(64))  # after it, for the same reason
        #: How often a durable state's flush waits for a later write (LmdbState flushes in batches).
        self.flush_skip = self.rng_flush.choice([0.0, 0.5, 0.9]) if opts.flush_skip is None else opts.flush_skip
        # The lease workload's draws (clock skews, its client): apart, so that a seed without leases runs as before.
        self.rng_leases = random.Random(master.getrandbits(64) ^ 0x1EA5E)
        # Which nodes have lease reads in a mixed run: apart too, and last, so that the draws above are as before.
        self.rng_mixed = random.Random(master.getrandbits(64))
        if opts.lease_reads_mixed and not opts.lease_reads:
            raise ValueError("lease_reads_mixed needs lease_reads")
        self.swarm = Swarm.draw(self.rng_swarm, opts)
        if opts.state not in STATE_MODES:
            raise ValueError("state must be one of %s" % ", ".join(STATE_MODES))
        rs = self.rng_streams
        drawn = rs.random() < 0.6  # drawn whatever the mode: a seed runs the same in "mixed" as in the mode it drew
        self.durable = opts.state == "durable" or (opts.state == "mixed" and drawn)
        self.streams = SimStreams(self, rs, piece_bytes=rs.choice([8, 16, 48]), window=rs.choice([1, 2, 4]))
        # Faults aimed at streams: the receiver crashes in mid-stream, the sender compacts while it streams.
        self.stream_crash_rate = rs.choice([0.0, 0.3, 0.6]) if "crash" in self.swarm.enabled else 0.0
        self.stream_compact_rate = rs.choice([0.3, 0.7]) if "snapshot" in self.swarm.enabled else 0.0
        self.stream_pause_rate = rs.choice([0.0, 0.5]) if "pause" in self.swarm.enabled else 0.0
        self.net = SimNetwork(self.rng_net, self.swarm.net)
        self.checker = Checker()
        self.now = 0
        self.step_no = 0
        self.queue: list = []
        self.seq = 0
        self.trace: Deque[tuple] = deque(maxlen=opts.trace_keep or None)
        self.nodes: Dict[str, SimNode] = {}
        self.next_node = opts.nodes + 1
        self.healed = False
        self.partition_until = 0
        self.last_leader: Optional[str] = None
        self.added_at: Dict[str, int] = {}  # node -> index of the entry that made it a learner
        self.stats = {"crashes": 0, "partitions": 0, "config_changes": 0, "compactions": 0, "transfers": 0,
                      "leaders": 0, "installs": 0, "acks": 0, "reads": 0}
        if opts.lease_reads:
            self.stats["lease_reads"] = 0
        if opts.lease_reads_mixed:
            self.stats["nodes_without_lease_reads"] = 0
        if self.durable:
            self.stats.update(durable=1, streams=0, streams_done=0, streams_broken=0, stream_pieces=0, stream_retries_ignored=0,
                              staging_busy=0, crashes_mid_stream=0, sender_crashes_mid_stream=0, compactions_during_stream=0,
                              lost_flushes=0, lost_staging_writes=0, restarts_with_half_staged_stream=0, plain_snapshots_refused=0,
                              skipped_flushes=0)

        founders = ["n%d" % i for i in range(1, opts.nodes + 1)]
        config = Configuration.make(voters=founders, addresses={n: n for n in founders})
        hs, entries = bootstrap(config)
        for n in founders:
            node = self._new_node(n)
            node.disk.put(hs, None, entries)
            node.disk.sync()
        for n in founders:
            self.nodes[n].start()
        self.clients = [SimClient(self, b"c%d" % i, random.Random(self.rng_clients.getrandbits(64))) for i in range(self.swarm.clients)]
        if opts.leases:
            lease_client = SimClient(self, b"lease", random.Random(self.rng_leases.getrandbits(64)))
            lease_client.lease = LeaseClient(random.Random(self.rng_leases.getrandbits(64)))
            self.clients.append(lease_client)
        self.probe: Optional[SimClient] = None

    def _new_node(self, node_id: str) -> SimNode:
        slow = self.swarm.sync_delay_max["*"]
        delay = self.rng_disk.choice([0, slow]) if slow else 0
        disk = SimDisk(node_id, random.Random(self.rng_disk.getrandbits(64)), delay, self.schedule)
        disk.keep_snapshot_data = not (self.durable and self.opts.stream_any_snapshot)  # kvd.store.lmdb keeps none then
        node = self.nodes[node_id] = SimNode(self, node_id, disk)
        if self.opts.lease_reads_mixed:
            node.lease_reads = self.rng_mixed.random() < 0.5
            self.stats["nodes_without_lease_reads"] += not node.lease_reads
            self.event(node_id, "option", "lease reads %s" % ("on" if node.lease_reads else "off"))
        if self.swarm.skew:
            node.tick_period = self.rng_disk.choice(LEASE_TICK_PERIODS if self.opts.lease_reads else TICK_PERIODS)
            if self.opts.leases:
                node.clock_offset = self.rng_leases.randint(-MAX_SKEW, MAX_SKEW)
        # Timers of different nodes are not aligned.
        self.schedule(self.rng_disk.randint(1, node.tick_period), self._node_tick, node)
        return node

    def _node_tick(self, node: SimNode) -> None:
        if node.decommissioned:
            return
        node.tick()
        self.schedule(node.tick_period, self._node_tick, node)

    # ------------------------------------------------------------ events and trace
    def skip_flush(self) -> bool:
        if self.rng_flush.random() < self.flush_skip:
            self.stats["skipped_flushes"] += 1
            return True
        return False

    def schedule(self, delay: int, fn: Callable, *args) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay, self.seq, fn, args))

    def event(self, who: str, what: str, detail: str = "") -> None:
        self.trace.append((self.now, who, what, detail))

    def trace_lines(self) -> List[str]:
        return ["%7d %-4s %-8s %s" % (t, who, what, detail if isinstance(detail, str) else _fmt(detail)) for t, who, what, detail in self.trace]

    # ------------------------------------------------------------ network
    def disks(self) -> Dict[str, SimDisk]:
        return {n: node.disk for n, node in self.nodes.items()}

    def live_cores(self) -> Dict[str, Optional[RaftCore]]:
        """Every node still in service (its core, or None while it is down)."""
        return {n: (node.core if node.up else None) for n, node in self.nodes.items() if not node.decommissioned}

    def send(self, m) -> None:
        src = self.nodes[m.src]
        self.checker.on_send(src.core, src.disk, m)
        if self.durable and isinstance(m, InstallSnapshot) and (self.opts.stream_any_snapshot or not m.snapshot.data):
            # As the node's transport does (kvd.wire.peers): the state is streamed from disk.
            self.streams.start(m)
            return
        for at in self.net.plan(m.src, m.dst, self.now):
            self.schedule(at - self.now, self._deliver, m)

    def _deliver(self, m) -> None:
        node = self.nodes.get(m.dst)
        if node is None or not node.up or not self.net.connected(m.src, m.dst):
            return
        if self.durable and self.opts.stream_any_snapshot and isinstance(m, InstallSnapshot):
            # kvd.wire.peers: a node with its state on disk takes a snapshot only as a stream.
            self.stats["plain_snapshots_refused"] += 1
            self.event(m.dst, "refuse", "a plain InstallSnapshot from %s" % m.src)
            return
        self.trace.append((self.now, m.dst, "recv", m))  # formatted only if the trace is printed
        node.input(lambda core: core.step(m))

    def stream_started(self, src: SimNode, dst: Optional[SimNode], stream) -> None:
        """The nemesis of streams: crash the receiver in the middle of it, compact the sender while it runs."""
        if self.healed or dst is None:
            return
        rng = self.rng_streams
        span = 4 * self.swarm.net.delay_max + 10
        if self.stream_crash_rate and rng.random() < self.stream_crash_rate:
            self.stats["crashes"] += 1
            self.schedule(rng.randint(1, span), self._crash, dst)
            self.schedule(span + rng.randint(1, 15) * TICK, self._restart, dst)
        if self.stream_compact_rate and rng.random() < self.stream_compact_rate:
            self.schedule(rng.randint(1, span), src.compact, rng.choice([0, 2]))

    def stream_completed(self, dst: SimNode) -> None:
        """Sometimes pause the receiver as its stream completes: the token waits, and the leader's retry finds it busy."""
        if not self.healed and self.stream_pause_rate and self.rng_streams.random() < self.stream_pause_rate:
            dst.pause(self.rng_streams.randint(15, 40) * TICK)

    def client_hop(self, fn: Callable, *args) -> None:
        """A client request travels to a node (it may be lost)."""
        f = self.swarm.net
        if not self.healed and f.loss and self.rng_net.random() < f.loss:
            return
        self.schedule(self.rng_net.randint(1, f.delay_max), fn, *args)

    def reply(self, client: SimClient, op_no: int, attempt: int, kind: str, payload) -> None:
        self.client_hop(client.on_reply, op_no, attempt, kind, payload)

    # ------------------------------------------------------------ queries
    def member_ids(self) -> List[str]:
        return sorted(n for n, node in self.nodes.items() if not node.decommissioned)

    def leader(self) -> Optional[SimNode]:
        best = None
        for n in sorted(self.nodes):
            node = self.nodes[n]
            if node.up and node.core.role is Role.LEADER and (best is None or node.core.term > best.core.term):
                best = node
        return best

    # ------------------------------------------------------------ the run
    def run(self) -> None:
        opts = self.opts
        end = opts.ticks + opts.liveness_ticks
        for tick in range(1, end + 1):
            self._run_until(tick * TICK)
            if tick == opts.ticks:
                self.heal()
            for client in self.clients:
                client.on_tick()
                if not self.healed:
                    client.maybe_start()
            if self.probe is not None:
                self.probe.on_tick()
            if not self.healed:
                self.nemesis(tick)
            self.decommission()
            if self.healed and self.converged():
                self.final_checks()
                return
        raise Violation("liveness", "no progress %d ticks after the faults healed: %s" % (opts.liveness_ticks, self.describe()))

    def _run_until(self, t: int) -> None:
        q = self.queue
        while q and q[0][0] <= t:
            at, _, fn, args = heapq.heappop(q)
            self.now = at
            self.step_no += 1
            fn(*args)
        self.now = t
        self.step_no += 1

    # ------------------------------------------------------------ liveness
    def heal(self) -> None:
        self.healed = True
        self.net.heal()
        self.swarm.net.loss = 0.0
        self.swarm.net.dup = 0.0
        self.event("sim", "heal", "faults stop; every member restarts")
        for n in self.member_ids():
            if not self.nodes[n].up:
                self.nodes[n].start()
        self.probe = SimClient(self, b"probe", random.Random(self.rng_clients.getrandbits(64)))
        self.probe.seq = 1
        self.probe.begin({"kind": "write", "seq": 1, "cmd": Set(b"x", b"probe"), "keys": [b"x"]})

    def converged(self) -> bool:
        if self.probe.op is not None or any(c.op is not None for c in self.clients):
            return False
        leader = self.leader()
        if leader is None or leader.id not in leader.core.config.voters:
            return False
        commit = leader.core.commit
        for n in leader.core.config.members:
            node = self.nodes.get(n)
            if node is None or not node.up or node.busy or node.core.applied < commit:
                return False
        return True

    def final_checks(self) -> None:
        for n in self.member_ids():
            node = self.nodes[n]
            if node.up:
                self.checker.final_state(n, node.machine.applied_index, node.machine)
                node.count_lease_reads()

    def describe(self) -> str:
        parts = []
        for n in sorted(self.nodes):
            node = self.nodes[n]
            if node.decommissioned:
                continue
            if not node.up:
                parts.append("%s down" % n)
                continue
            s = node.core.status()
            parts.append(
                "%s %s t%d lead=%s commit=%d applied=%d last=%d voters=%s"
                % (n, s["role"], s["term"], s["leader"], s["commit_index"], s["applied_index"], s["last_index"], ",".join(s["voters"]))
            )
        pending = [c.id.decode() for c in self.clients + [self.probe] if c is not None and c.op is not None]
        return "; ".join(parts) + "; clients waiting: %s" % (",".join(pending) or "none")

    # ------------------------------------------------------------ the nemesis
    def nemesis(self, tick: int) -> None:
        rng = self.rng_nemesis
        sw = self.swarm
        # Partitions form and heal.
        if self.net.blocked and tick >= self.partition_until:
            self.net.heal()
            self.event("sim", "heal", "partition healed")
        elif not self.net.blocked and sw.partition_rate and rng.random() < sw.partition_rate:
            self._partition(rng)
            self.partition_until = tick + rng.randint(3, 40)
        # Crashes, at a random moment inside the tick (so they land mid-sync), and restarts.
        if sw.crash_rate and rng.random() < sw.crash_rate:
            self._crash_some(rng)
        # A power loss: every node at once, each losing what it had not synced.
        if sw.power_loss_rate and rng.random() < sw.power_loss_rate:
            at = rng.randint(0, TICK - 1)
            self.event("sim", "power", "every node loses power")
            for n in self.member_ids():
                node = self.nodes[n]
                self.stats["crashes"] += 1
                self.schedule(at, self._crash, node)
                self.schedule(at + rng.randint(1, 20) * TICK, self._restart, node)
        # Pauses.
        if sw.pause_rate and rng.random() < sw.pause_rate:
            ids = [n for n in self.member_ids() if self.nodes[n].up]
            leader = self.leader()
            victim = leader if leader is not None and rng.random() < 0.7 else (self.nodes[rng.choice(ids)] if ids else None)
            if victim is not None:
                self.stats["pauses"] = self.stats.get("pauses", 0) + 1
                ticks = rng.randint(1, 40)
                self.schedule(rng.randint(0, TICK - 1), victim.pause, ticks * TICK)
                if rng.random() < 0.7:
                    # A zombie: paused and cut off from its peers, but not from clients.
                    self.schedule(rng.randint(0, TICK - 1), self._isolate, victim, ticks + rng.randint(0, 20))
        # Membership changes and leadership transfers.
        if sw.membership_rate and rng.random() < sw.membership_rate:
            self._change_membership(rng)
        # Compaction.
        if sw.compact_rate:
            for n in self.member_ids():
                node = self.nodes[n]
                if node.up and rng.random() < sw.compact_rate:
                    node.compact(rng.choice([0, 0, 2, 20]))

    def _partition(self, rng: random.Random) -> None:
        ids = [n for n in self.member_ids()]
        leader = self.leader()
        kind = rng.choice(["isolate", "isolate-leader", "split", "one-way", "one-way-leader"])
        self.stats["partitions"] += 1
        if kind.endswith("leader") and leader is not None:
            victim = leader.id
        else:
            victim = rng.choice(ids)
        if kind.startswith("isolate"):
            self.net.partition([frozenset([victim]), frozenset(ids) - {victim}])
        elif kind == "split":
            shuffled = list(ids)
            rng.shuffle(shuffled)
            k = rng.randint(1, len(ids) - 1) if len(ids) > 1 else 1
            self.net.partition([frozenset(shuffled[:k]), frozenset(shuffled[k:])])
        else:
            others = frozenset(ids) - {victim}
            groups = [frozenset([victim]), others] if rng.random() < 0.5 else [others, frozenset([victim])]
            self.net.partition(groups, one_way=True)
        self.event("sim", "part", "%s %s: %s" % (kind, victim, ",".join("%s>%s" % l for l in sorted(self.net.blocked))))

    def _crash_some(self, rng: random.Random) -> None:
        up = [self.nodes[n] for n in self.member_ids() if self.nodes[n].up]
        if not up:
            return
        leader = self.leader()
        busy = [n for n in up if n.busy]
        r = rng.random()
        if r < 0.3 and leader is not None:
            victims = [leader]
        elif r < 0.5 and busy:
            victims = [rng.choice(busy)]
        elif r < 0.65 and leader is not None and len(up) > 1:
            # The leader and a follower together: the case that loses acknowledged-but-unsynced entries.
            victims = [leader, rng.choice([n for n in up if n is not leader])]
        else:
            victims = [rng.choice(up)]
        for v in victims:
            self.stats["crashes"] += 1
            self.schedule(rng.randint(0, TICK - 1), self._crash, v)
            down = rng.randint(0, self.swarm.crash_down_ticks_max) * TICK + rng.randint(1, TICK - 1)
            self.schedule(down, self._restart, v)

    def _crash(self, node: SimNode) -> None:
        if not self.healed:
            node.crash()

    def _restart(self, node: SimNode) -> None:
        if not node.up and not node.decommissioned and not self.healed:
            node.start()

    def _change_membership(self, rng: random.Random) -> None:
        leader = self.leader()
        if leader is None:
            return
        if rng.random() < 0.15:
            self.stats["transfers"] += 1
            leader.input(_try(lambda core: core.transfer_leadership()))
            self.event(leader.id, "transfer", "")
            return
        self._propose_change(leader, rng, crash_after=rng.random() < 0.3)

    def _propose_change(self, leader: SimNode, rng: random.Random, crash_after: bool, victim: Optional[str] = None) -> None:
        sw = self.swarm
        config = leader.core.config
        voters, learners = list(config.voters), list(config.learners)
        r = rng.random()
        can_remove = len(voters) > sw.min_voters
        if victim is not None and victim in config.members:
            r = 0.5 if victim in voters else 0.9
            voters, learners = [victim], [victim]
        if r < 0.45 and len(config.members) < sw.max_members:
            new_id = "n%d" % self.next_node
            self.next_node += 1

            def fn(core: RaftCore) -> None:
                try:
                    self.added_at[new_id] = core.add_learner(new_id, new_id)
                except (ConfigChangeRejected, NotLeader, ProposalDropped):
                    return
                self.stats["config_changes"] += 1
                self.event(leader.id, "config", "add learner %s" % new_id)
                node = self._new_node(new_id)
                node.start()
                self._maybe_crash_after_change(leader, rng, crash_after)
        elif r < 0.85 and can_remove:
            victim = rng.choice(voters)

            def fn(core: RaftCore) -> None:
                try:
                    core.remove(victim)
                except (ConfigChangeRejected, NotLeader, ProposalDropped):
                    return
                self.stats["config_changes"] += 1
                self.event(leader.id, "config", "remove voter %s" % victim)
                self._maybe_crash_after_change(leader, rng, crash_after)
        elif learners:
            victim = rng.choice(learners)

            def fn(core: RaftCore) -> None:
                try:
                    core.remove(victim)
                except (ConfigChangeRejected, NotLeader, ProposalDropped):
                    return
                self.stats["config_changes"] += 1
                self.event(leader.id, "config", "remove learner %s" % victim)
                self._maybe_crash_after_change(leader, rng, crash_after)
        else:
            return
        leader.input(fn)

    def _maybe_crash_after_change(self, leader: SimNode, rng: random.Random, crash_after: bool) -> None:
        # Ongaro's single-server-change bug needs a leader that dies with an
        # uncommitted change only it (and perhaps the joiner) holds.
        if crash_after:
            self.stats["crashes"] += 1
            self.schedule(rng.randint(0, 30), self._crash, leader)
            self.schedule(rng.randint(1, 30) * TICK, self._restart, leader)

    def nemesis_new_leader(self, node: SimNode) -> None:
        """
        A new leader: the moments around a change of leader are where Raft's
        subtle bugs live (Figure 8, Ongaro's membership bug), so crash new
        leaders soon after they win, and have the operator replace the
        previous leader at once (remove it, add a fresh node), retrying.
        """
        previous, self.last_leader = self.last_leader, node.id
        if self.healed:
            return
        rng = self.rng_nemesis
        sw = self.swarm
        if sw.leader_crash_rate and rng.random() < sw.leader_crash_rate:
            # Often before its first entries have spread, and back soon: the
            # Figure 8 pattern of competing uncommitted entries from several terms.
            self.stats["crashes"] += 1
            self.schedule(rng.choice([rng.randint(0, 20), rng.randint(1, 2 * TICK)]), self._crash, node)
            self.schedule(rng.randint(1, 15) * TICK, self._restart, node)
        if sw.partition_rate and rng.random() < 0.4:
            # Cut the new leader off before its first entries spread: it keeps
            # taking client writes of its term that nobody else has.
            self.schedule(rng.randint(1, TICK), self._isolate, node, rng.randint(2, 30))
        if sw.membership_rate and rng.random() < 0.5:
            victim = previous if previous != node.id and rng.random() < 0.7 else None
            crash_after = rng.random() < 0.3
            for delay in (1, 5, 20, 60, 150):
                self.schedule(delay, self._eager_change, node, node.incarnation, node.core.term, crash_after, victim)

    def _isolate(self, node: SimNode, ticks: int) -> None:
        # Adds to any partition in force: two leaders cut off one after the
        # other leave competing uncommitted entries of two terms (Figure 8).
        if self.healed:
            return
        ids = frozenset(self.member_ids())
        self.net.partition([frozenset([node.id]), ids - {node.id}])
        self.partition_until = max(self.partition_until, self.now // TICK + ticks)
        self.stats["partitions"] += 1
        self.event("sim", "part", "isolate %s for %d ticks" % (node.id, ticks))

    def _eager_change(self, node: SimNode, incarnation: int, term: int, crash_after: bool, victim: Optional[str]) -> None:
        if self.healed or not node.up or node.incarnation != incarnation or node.core.term != term:
            return
        if node.core.role is Role.LEADER:
            self._propose_change(node, self.rng_nemesis, crash_after, victim)

    def decommission(self) -> None:
        """Stop for good every node that the current leader's committed configuration no longer has."""
        leader = self.leader()
        if leader is None:
            return
        core = leader.core
        committed = core._config_at(core.commit)
        keep = set(committed.members) | set(core.config.members)
        for n in sorted(self.nodes):
            node = self.nodes[n]
            # Only once the entry that added it is committed too: an add that is
            # not committed yet may still win through a later leader.
            if not node.decommissioned and n not in keep and core.commit >= self.added_at.get(n, 0):
                node.decommissioned = True
                node.crash()
                self.event(n, "gone", "removed from the configuration")


def _try(fn: Callable) -> Callable:
    def wrapped(core: RaftCore) -> None:
        try:
            fn(core)
        except (ConfigChangeRejected, NotLeader, ProposalDropped):
            pass

    return wrapped


def _fmt(m) -> str:
    """A short, stable rendering of a message for the trace."""
    name = type(m).__name__
    s = "%s %s>%s t%d" % (name, m.src, m.dst, m.term)
    if name == "AppendEntries":
        if m.entries:
            s += " prev=%d/%d [%d..%d] commit=%d" % (m.prev_index, m.prev_term, m.entries[0].index, m.entries[-1].index, m.commit)
        else:
            s += " prev=%d/%d [] commit=%d" % (m.prev_index, m.prev_term, m.commit)
    elif name == "AppendEntriesReply":
        s += " %s index=%d hint=%d/%d" % ("ok" if m.success else "reject", m.index, m.conflict_index, m.conflict_term)
    elif name in ("PreVote", "RequestVote"):
        s += " last=%d/%d" % (m.last_log_index, m.last_log_term)
    elif name in ("PreVoteReply", "RequestVoteReply"):
        s += " granted" if m.granted else " refused"
    elif name == "Heartbeat":
        s += " commit=%d ctx=%s" % (m.commit, m.ctx.decode())
    elif name == "HeartbeatReply":
        s += " ctx=%s" % m.ctx.decode()
    elif name == "InstallSnapshot":
        s += " snap=%d/%d" % (m.snapshot.index, m.snapshot.term)
    elif name in ("ReadIndexRequest", "ReadIndexReply"):
        s += " ctx=%s" % m.ctx.decode()
        if name == "ReadIndexReply":
            s += " index=%d" % m.index
    return s


@dataclass
class RunResult:
    seed: int
    ok: bool
    invariant: str = ""
    detail: str = ""
    trace: List[str] = field(default_factory=list)
    ticks: int = 0
    stats: dict = field(default_factory=dict)


def run_one(opts: SimOptions) -> RunResult:
    """Run one seed; never raises for a failure of the system under test."""
    cluster = None
    try:
        cluster = SimCluster(opts)
        cluster.run()
    except Violation as v:
        return _result(opts, cluster, v.invariant, v.detail)
    except Exception as e:  # an assertion inside the core, or a crash of the machine
        import traceback

        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = "%s:%d" % (tb.filename.rsplit("/", 1)[-1], tb.lineno)
        return _result(opts, cluster, "exception", "%s: %s (at %s)" % (type(e).__name__, e, where))
    trace = cluster.trace_lines() if opts.trace_keep == 0 else []
    return RunResult(opts.seed, True, trace=trace, ticks=cluster.now // TICK, stats=dict(cluster.stats, checks=cluster.checker.checks))


def _result(opts: SimOptions, cluster: Optional[SimCluster], invariant: str, detail: str) -> RunResult:
    if cluster is None:
        return RunResult(opts.seed, False, invariant, detail)
    return RunResult(
        opts.seed, False, invariant, detail, cluster.trace_lines(), cluster.now // TICK, dict(cluster.stats, checks=cluster.checker.checks)
    )
