# -*- test-case-name: tests.sim.test_sim -*-
"""
The invariants the simulator checks after every step, each raising
``Violation(invariant, detail)`` the moment it fails.

Safety (Raft paper Figure 3, plus what kvd promises its clients):

- **one leader per term**: no two nodes (nor two incarnations of one node)
  lead in the same term;
- **log matching**: an (index, term) pair names one entry everywhere, with
  one predecessor term, so two logs that share an (index, term) share the
  prefix before it (checked incrementally on every entry a node appends);
- **leader completeness**: a new leader's log holds every entry any node
  has committed;
- **committed prefix / state-machine safety**: every node commits and
  applies the same entry at each index, with the same result and the same
  events (kvd.kv.events: what each node delivers to its own subscribers),
  and a node restarted from its disk still agrees (nothing applied is lost);
- **durable state** (in kvd.sim.disk): the durable term and commit index
  never go back, the durable vote never changes within a term;
- **persistence contract**: a granted vote (or a later term) and an
  acknowledged entry are on the sender's synced disk when the message leaves, and a leader's commit
  index names an entry that a majority of its voters hold on their disks;
- **exactly once**: every acknowledged write was applied, its effect taken
  once (the first time its (client, seq) reached the log), and its answer is
  that of the first application;
- **linearizable reads**: a read served at applied index ``a`` returns what
  the reference register holds at ``a`` (so nothing never written), and
  ``a`` is at least the index of every write to that key that was
  acknowledged before the read was invoked;
- **durable state** (the durable mode, kvd.sim.state): whenever a machine
  is loaded rather than built entry by entry (a restart opens the state on
  disk, a streamed snapshot is installed) and at the end of a run, its
  whole state (keys, values, client sessions, clock) equals that of a
  reference machine fed the applied history up to the same index (so a
  state that lost a flush, skipped an entry, took a half-written stream or
  a stream read from a moving state shows); in kvd.sim.disk: the durable
  state never ahead of the durable commit, never behind the durable
  snapshot, and only a complete stream installed;
- **lease deletion** (runs with leases, kvd.sim.leases): every node holds
  the same leases, attached keys and stored lease keys at the same index, so
  a lease's keys are deleted at the same index everywhere; the lease
  commands' answers and the reads of attached keys are the lease model's.

The reference model is built here from the applied history alone (first
application of each index, duplicates removed by (client, seq)); it does not
use kvd.kv's machine, so a broken machine or a broken core both show.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Dict, List, Optional, Tuple

from hashlib import blake2b

from kvd.kv.codec import CodecError
from kvd.kv.commands import Delete, Get, IncrBy, Keys, KvTxn, Lease, MSet, Set, decode_envelope
from kvd.kv.glob import Pattern
from kvd.kv.keyspace import Keyspace
from kvd.kv.machine import KVMachine, encode_session
from kvd.kv.results import OK
from kvd.raft.messages import AppendEntriesReply, Entry, EntryKind, RequestVoteReply
from kvd.sim.leases import LeaseModel, lease_state


class Violation(Exception):
    """An invariant failed; ``invariant`` names it, ``detail`` says how."""

    def __init__(self, invariant: str, detail: str):
        super().__init__("%s: %s" % (invariant, detail))
        self.invariant = invariant
        self.detail = detail


def _ent(e: Entry) -> Tuple[int, int, bytes]:
    return (e.term, int(e.kind), e.data)


def machine_digest(machine) -> bytes:
    """
    The whole state of a KVMachine, in memory or durable: applied index, clock, sessions, scripts, keys and
    values, the store's revision and each key's (create, mod, version) (kvd.kv.revisions).
    """
    h = blake2b(digest_size=16)
    h.update(b"%d %d;" % (machine.applied_index, machine.clock_ms))
    sessions = machine._sessions
    for cid in sorted(sessions):
        data = encode_session(sessions[cid])
        h.update(b"%d:%s%d:%s" % (len(cid), cid, len(data), data))
    for sha in sorted(machine._scripts):  # the replicated script cache (kvd.kv.script)
        h.update(b"s%s:%d:%s" % (sha, len(machine._scripts[sha]), machine._scripts[sha]))
    keyspace = machine._keyspace
    if isinstance(keyspace, Keyspace):
        items = sorted(keyspace._data.items())  # the reference's and in-memory machines': the quick way
    else:
        # What is stored, expired keys not reclaimed yet included (reclaiming is replicated state too).
        items = [(key, keyspace.get(key)) for key in keyspace.keys(Pattern(b"*"))]
    h.update(b"r%d;" % (keyspace.revision,))
    for key, value in items:
        h.update(b"%d:%s%d:%s" % (len(key), key, len(value), value))
        h.update(b"m%d,%d,%d;" % keyspace.rev_meta(key))
    for key, at_ms in machine._expiries.items():  # the keys' expiries (kvd.kv.expiry)
        h.update(b"e%d:%s%d;" % (len(key), key, at_ms))
    if len(machine._leases):  # the leases (kvd.kv.leases): none in a run without them, the digest as before
        h.update(b"l" + lease_state(machine))
    return h.digest()


def durably_holds(disk, index: int, term: int) -> bool:
    """Does the synced image of ``disk`` hold entry ``index`` of ``term`` (or a snapshot past it)?"""
    snap = disk.snapshot
    if snap is not None and snap.index >= index:
        return True
    return disk._term_at(index) == term


def _durable_last(disk) -> Tuple[int, int]:
    """(last term, last index) of a disk's synced log."""
    if disk.entries:
        e = disk.entries[-1]
        return (e.term, e.index)
    snap = disk.snapshot
    return (snap.term, snap.index) if snap is not None else (0, 0)


def _durable_config(disk):
    from kvd.raft.messages import Configuration

    for e in reversed(disk.entries):
        if e.kind is EntryKind.CONFIG:
            return Configuration.decode(e.data)
    return disk.snapshot.config if disk.snapshot is not None else Configuration()


class _KeyHistory:
    """The effective writes to one key, by log index, and their acknowledgements."""

    __slots__ = ("idx", "vals", "ack_steps", "ack_max")

    def __init__(self):
        self.idx: List[int] = []
        self.vals: List[Optional[bytes]] = []
        self.ack_steps: List[int] = []  # logical step of each acknowledgement, ascending
        self.ack_max: List[int] = []  # running max of the acknowledged writes' indexes

    def at(self, index: int) -> Optional[bytes]:
        i = bisect_right(self.idx, index)
        return self.vals[i - 1] if i else None

    def put(self, index: int, value: Optional[bytes]) -> None:
        self.idx.append(index)
        self.vals.append(value)

    def acked(self, step: int, index: int) -> None:
        self.ack_steps.append(step)
        self.ack_max.append(max(index, self.ack_max[-1] if self.ack_max else 0))

    def needed(self, invoked_step: int) -> int:
        """The highest index of a write to this key acknowledged before ``invoked_step``."""
        i = bisect_left(self.ack_steps, invoked_step)
        return self.ack_max[i - 1] if i else 0


class Checker:
    def __init__(self):
        self.leaders: Dict[int, Tuple[str, int]] = {}  # term -> (node, incarnation)
        self.pairs: Dict[Tuple[int, int], Tuple[int, bytes, Optional[int]]] = {}  # (index, term) -> (kind, data, prev term)
        self.committed: Dict[int, Tuple[int, int, bytes]] = {}  # index -> entry
        self.commit_seen: Dict[str, int] = {}  # node -> commit index already checked
        self.applied: Dict[int, Tuple[int, int, bytes]] = {}
        self.results: Dict[int, str] = {}
        #: The events (kvd.kv.events: messages, keyspace events) the first node to apply each index produced.
        self.events: Dict[int, str] = {}
        self.keys: Dict[bytes, _KeyHistory] = {}
        self.first: Dict[Tuple[bytes, int], int] = {}  # (client, seq) -> index of its effective application
        self.first_result: Dict[Tuple[bytes, int], object] = {}
        self.leader_commit_seen: Dict[str, Tuple[int, int]] = {}
        # index -> the term of the node that first reported it committed (the
        # term it was committed in, or a later one)
        self.committed_term: Dict[int, int] = {}
        self.checks = 0
        # The reference machine, fed the applied history on demand, and its digest at each index it passed.
        self.reference_machine = KVMachine()
        #: The log's time (kvd.kv.expiry): the largest stamp applied, after each normal entry, by index.
        self.clock_idx: List[int] = []
        self.clock_ms: List[int] = []
        #: Reads served after their key's expiry (the reference answers nil): how much expiry was exercised.
        self.expired_reads = 0
        self.reference_digests: Dict[int, bytes] = {0: machine_digest(self.reference_machine)}
        #: The leases as the applied history defines them (kvd.sim.leases), and each index's lease state.
        self.lease_model = LeaseModel()
        self.lease_states: Dict[int, Tuple[str, bytes]] = {}

    # ------------------------------------------------------------ elections
    def on_leader(self, node: str, incarnation: int, term: int, core) -> None:
        self.checks += 1
        prev = self.leaders.get(term)
        if prev is not None and prev != (node, incarnation):
            raise Violation(
                "one leader per term",
                "term %d: %s (incarnation %d) and %s (incarnation %d)" % (term, prev[0], prev[1], node, incarnation),
            )
        self.leaders[term] = (node, incarnation)
        log = core.log
        for index in sorted(self.committed):
            if index <= log.snapshot_index or self.committed_term[index] >= term:
                # Leader completeness is about entries committed in earlier terms; a
                # leadership observed late (its Ready waited for a slow disk) may
                # predate later commits.
                continue
            want = self.committed[index]
            if index > log.last_index() or _ent(log.entry(index)) != want:
                raise Violation(
                    "leader completeness",
                    "%s leads term %d without committed entry %d (term %d); its log ends at %d"
                    % (node, term, index, want[0], log.last_index()),
                )

    # ------------------------------------------------------------ logs
    def on_entries(self, node: str, core, entries: List[Entry]) -> None:
        log = core.log
        for e in entries:
            self.checks += 1
            prev_term = log.term_at(e.index - 1)
            key = (e.index, e.term)
            got = self.pairs.get(key)
            mine = (int(e.kind), e.data, prev_term)
            if got is None:
                self.pairs[key] = mine
                continue
            if got[0] != mine[0] or got[1] != mine[1]:
                raise Violation("log matching", "%s holds a different entry at index %d term %d" % (node, e.index, e.term))
            if got[2] is not None and prev_term is not None and got[2] != prev_term:
                raise Violation(
                    "log matching",
                    "%s: entry %d/%d follows term %s here and term %s elsewhere" % (node, e.index, e.term, prev_term, got[2]),
                )

    def on_commit(self, node: str, core) -> None:
        """Every entry a node now counts as committed must agree with what anyone committed there."""
        log = core.log
        start = max(self.commit_seen.get(node, 0), log.snapshot_index)
        for index in range(start + 1, min(core.commit, log.last_index()) + 1):
            self.checks += 1
            mine = _ent(log.entry(index))
            want = self.committed.setdefault(index, mine)
            self.committed_term.setdefault(index, core.term)
            if want != mine:
                raise Violation(
                    "state-machine safety",
                    "%s commits term %d at index %d where term %d was committed" % (node, mine[0], index, want[0]),
                )
        self.commit_seen[node] = max(self.commit_seen.get(node, 0), core.commit)

    def forget_node(self, node: str) -> None:
        """The node restarts: re-check its whole committed prefix from its disk."""
        self.commit_seen.pop(node, None)

    # ------------------------------------------------------------ the persistence contract
    def on_send(self, core, disk, m) -> None:
        """
        What a message claims to be durable must be on the sender's disk,
        synced, when it leaves: a granted vote, an acknowledged entry.
        """
        if isinstance(m, AppendEntriesReply) and m.success:
            self.checks += 1
            term = core.log.term_at(m.index)
            if term is not None and not durably_holds(disk, m.index, term):
                raise Violation(
                    "persistence contract",
                    "%s acknowledges entry %d (term %d) that is not durable on its disk" % (m.src, m.index, term),
                )
        elif isinstance(m, RequestVoteReply) and m.granted:
            self.checks += 1
            hs = disk.hard_state
            # Its disk holds this very vote, or a later term: a node whose durable term is
            # past m.term never votes in m.term again, so the grant can never be doubled
            # (votes of two terms that arrived behind one write share its Ready).
            if hs.term < m.term or (hs.term == m.term and hs.vote != m.dst):
                raise Violation(
                    "persistence contract",
                    "%s grants its vote in term %d to %s while its disk holds term %d vote %s" % (m.src, m.term, m.dst, hs.term, hs.vote),
                )

    def on_leader_commit(self, node: str, core, disks: Dict[str, object], others: Dict[str, object] = None) -> None:
        """
        When a leader advances its commit index: a majority of its voters hold
        that entry durably, and no node lacking it could be elected (see
        ``_committed_entry_is_safe``).
        """
        seen = self.leader_commit_seen.get(node)
        self.leader_commit_seen[node] = (core.term, core.commit)
        if seen is None or seen[0] != core.term or seen[1] >= core.commit:
            return  # a new leadership starts from the commit index it had; only its advances are checked
        index = core.commit
        term = core.log.term_at(index)
        if term is None or index == 0:
            return
        self.checks += 1
        config = core.config
        holders = [v for v in config.voters if v in disks and durably_holds(disks[v], index, term)]
        if len(holders) < config.quorum():
            raise Violation(
                "persistence contract",
                "%s commits entry %d (term %d) but only %s of voters %s hold it on disk"
                % (node, index, term, ",".join(holders) or "none", ",".join(config.voters)),
            )
        if others is not None:
            self._committed_entry_is_safe(node, index, term, disks, others)

    def _committed_entry_is_safe(self, leader: str, index: int, term: int, disks: Dict[str, object], cores: Dict[str, object]) -> None:
        """
        Leader completeness, checked the moment an entry commits rather than
        at the next election: no node that lacks the entry may hold a log that
        a majority of its own configuration would vote for (§5.4.1 compares
        logs only).  Voters are judged by their durable logs, which a crash
        can take them back to; a candidate by its durable log and, if it is
        up, its log in memory.  Terms and votes are ignored, so this
        over-approximates who could win; Raft's safety argument needs no more
        than the log comparison, so a correct core never trips it.
        """
        lasts = {n: _durable_last(d) for n, d in disks.items()}
        for n in sorted(cores):
            disk, core = disks[n], cores[n]
            candidates = []
            if not durably_holds(disk, index, term):
                candidates.append((lasts[n], _durable_config(disk)))
            if core is not None and core.log.snapshot_index < index and core.log.term_at(index) != term:
                candidates.append(((core.log.last_term(), core.log.last_index()), core.config))
            for (last_term, last_index), config in candidates:
                if not config.voters:
                    continue
                grants = [
                    v for v in config.voters
                    if v == n or (v in cores and (last_term, last_index) >= lasts[v])
                ]
                if len(grants) >= config.quorum():
                    self.checks += 1
                    raise Violation(
                        "leader completeness",
                        "%s commits entry %d (term %d), but %s, whose log lacks it and ends at %d/%d, could be elected by %s"
                        % (leader, index, term, n, last_index, last_term, ",".join(grants)),
                    )

    # ------------------------------------------------------------ the state machine
    def on_apply(self, node: str, e: Entry, result, events=()) -> None:
        """
        Called for each entry a node applies, in order, with the machine's answer and the events it produced
        (pub/sub and keyspace notifications: every node delivers its own, so they must agree as the answers do).
        """
        self.checks += 1
        mine = _ent(e)
        want = self.applied.get(e.index)
        rkey = repr(result)
        ekey = repr(list(events))
        if want is None:
            self.applied[e.index] = mine
            self.results[e.index] = rkey
            self.events[e.index] = ekey
            if e.kind is EntryKind.NORMAL:
                self._reference_apply(e.index, e.data, result)
            return
        if want != mine:
            raise Violation(
                "state-machine safety",
                "%s applies term %d at index %d where term %d was applied" % (node, mine[0], e.index, want[0]),
            )
        if self.results[e.index] != rkey:
            raise Violation(
                "state-machine safety",
                "%s answers %s at index %d where %s was answered" % (node, rkey, e.index, self.results[e.index]),
            )
        if self.events[e.index] != ekey:
            raise Violation(
                "state-machine safety",
                "%s produces events %s at index %d where %s were produced" % (node, ekey, e.index, self.events[e.index]),
            )

    def clock_at(self, index: int) -> int:
        """The log's time once entry ``index`` is applied: what expiry is decided from."""
        i = bisect_right(self.clock_idx, index)
        return self.clock_ms[i - 1] if i else 0

    def _reference_apply(self, index: int, data: bytes, result) -> None:
        try:
            env = decode_envelope(data)
        except CodecError:
            return
        before = self.clock_ms[-1] if self.clock_ms else 0
        clock = max(env.stamp_ms, before)
        self.clock_idx.append(index)
        self.clock_ms.append(clock)
        cmd = env.command
        if isinstance(cmd, Lease) and cmd.op == "promote":
            self.lease_model.promote(index, before, clock)
        ident = (env.client_id, env.seq)
        if ident in self.first:
            return  # a retry or a duplicate: must take no effect
        self.first[ident] = index
        if isinstance(cmd, Lease) or (isinstance(cmd, Set) and cmd.lease is not None):
            self.first_result[ident] = self.lease_model.apply(
                index, cmd, clock, lambda key, value: self._key(key).put(index, value))
        elif isinstance(cmd, Set):
            assert cmd.cond is None and cmd.ifeq is None and not cmd.get, "the workload only sends plain SETs"
            assert not cmd.expire_at and not cmd.keepttl, "the workload's expiries are relative"
            # A value with an expiry is (value, Unix ms): gone for reads at indexes whose log time reaches it.
            self._key(cmd.key).put(index, cmd.value if cmd.expire is None else (cmd.value, clock + cmd.expire))
            self.first_result[ident] = OK
        elif isinstance(cmd, IncrBy):
            h = self._key(cmd.key)
            old = h.at(index)
            value = (int(old) if old is not None else 0) + cmd.delta
            h.put(index, b"%d" % value)
            self.first_result[ident] = value
        elif isinstance(cmd, Delete):
            n = 0
            for k in dict.fromkeys(cmd.keys):
                h = self._key(k)
                if self.reference(k, index) is not None:
                    n += 1
                h.put(index, None)
            self.first_result[ident] = n
        elif isinstance(cmd, MSet):
            for k, v in cmd.pairs:
                self._key(k).put(index, v)
            self.first_result[ident] = OK
        elif isinstance(cmd, KvTxn):
            # The registers know values, not revisions: the branch and the replies are checked here, the
            # revision answered is the machine's own (the digests compare revisions across replicas).
            assert all(c.target == "exists" for c in cmd.compares), "the workload's KVD.TXNs compare EXISTS"
            holds = all(self.reference(c.key, index) is not None for c in cmd.compares)
            replies = []
            for op in cmd.success if holds else cmd.failure:
                if op.op == "set":
                    self._key(op.key).put(index, op.value)
                    replies.append(OK)
                elif op.op == "del":
                    replies.append(0 if self.reference(op.key, index) is None else 1)
                    self._key(op.key).put(index, None)
                else:
                    replies.append(self.reference(op.key, index))
            revision = result[2] if isinstance(result, list) and len(result) == 3 else None
            self.first_result[ident] = [1 if holds else 0, replies, revision]
        if repr(result) != repr(self.first_result[ident]):
            raise Violation(
                "exactly once",
                "index %d: the machine answers %r where the reference register answers %r" % (index, result, self.first_result[ident]),
            )

    def _key(self, key: bytes) -> _KeyHistory:
        h = self.keys.get(key)
        if h is None:
            h = self.keys[key] = _KeyHistory()
        return h

    def reference(self, key: bytes, index: int) -> Optional[bytes]:
        h = self.keys.get(key)
        value = h.at(index) if h else None
        if isinstance(value, tuple) and isinstance(value[1], tuple):  # attached to a lease: gone once it expired
            return value[0] if self.lease_model.alive_at(value[1][1], index, self.clock_at(index)) else None
        if isinstance(value, tuple):  # with an expiry: gone once the log's time at ``index`` reaches it
            return value[0] if value[1] > self.clock_at(index) else None
        return value

    # ------------------------------------------------------------ clients
    def on_write_acked(self, step: int, client: bytes, seq: int, keys: List[bytes], result) -> None:
        self.checks += 1
        ident = (client, seq)
        index = self.first.get(ident)
        if index is None:
            raise Violation("exactly once", "write %s#%d acknowledged but never applied" % (client.decode(), seq))
        if repr(result) != repr(self.first_result[ident]):
            raise Violation(
                "exactly once",
                "write %s#%d answered %r, but its first application answered %r"
                % (client.decode(), seq, result, self.first_result[ident]),
            )
        for k in keys:
            self._key(k).acked(step, index)

    def on_read_served(self, node: str, key: bytes, applied: int, value) -> None:
        """A node serves a read at its applied index: the value must be the reference's there."""
        self.checks += 1
        want = self.reference(key, applied)
        h = self.keys.get(key)
        if want is None and h is not None and isinstance(h.at(applied), tuple):
            self.expired_reads += 1
            if isinstance(h.at(applied)[1], tuple):
                self.lease_model.expired_reads += 1
        if value != want:
            raise Violation(
                "linearizable read",
                "%s reads %r = %r at applied index %d; the applied history holds %r" % (node, key, value, applied, want),
            )

    def on_read_done(self, invoked_step: int, client: bytes, key: bytes, applied: int) -> None:
        """A read completed: it must reflect every write to its key acknowledged before it was invoked."""
        self.checks += 1
        h = self.keys.get(key)
        needed = h.needed(invoked_step) if h else 0
        if applied < needed:
            raise Violation(
                "linearizable read",
                "%s read %r at index %d, but a write at index %d was acknowledged before the read began"
                % (client.decode(), key, applied, needed),
            )

    def on_lease_state(self, node: str, machine) -> None:
        """After a node applied an entry: its leases and lease keys are those every node had at that index."""
        self.checks += 1
        index = machine.applied_index
        mine = lease_state(machine)
        first = self.lease_states.setdefault(index, (node, mine))
        if first[1] != mine:
            raise Violation(
                "lease deletion",
                "%s holds other leases or lease keys at index %d than %s did: %r, %r" % (
                    node, index, first[0], list(machine._leases.items()), list(machine._leases.attached())),
            )

    def reference_digest(self, index: int) -> Optional[bytes]:
        """The reference machine's digest at ``index`` (None: some entry up to it was never applied anywhere)."""
        ref = self.reference_machine
        while ref.applied_index < index:
            i = ref.applied_index + 1
            e = self.applied.get(i)
            if e is None:
                return None
            term, kind, data = e
            if kind == int(EntryKind.NORMAL):
                ref.apply(i, data)
            else:
                ref.apply_noop(i)
            self.reference_digests[i] = machine_digest(ref)
        return self.reference_digests.get(index)

    def on_machine_loaded(self, node: str, how: str, machine) -> None:
        """A machine was loaded whole (``how``: restart, install, end): it must equal the reference at its index."""
        self.checks += 1
        index = machine.applied_index
        want = self.reference_digest(index)
        if want is None:
            raise Violation("durable state", "%s (%s) holds a state applied to %d, but not every entry up to it was ever applied"
                            % (node, how, index))
        if machine_digest(machine) != want:
            raise Violation("durable state", "%s (%s): its state at applied index %d differs from the applied history's"
                            % (node, how, index))

    def final_state(self, node: str, applied: int, machine) -> None:
        """At the end of a run: a node's whole keyspace equals the reference at its applied index."""
        for key in sorted(self.keys):
            self.on_read_served(node, key, applied, machine.read(Get(key)))
        self.on_machine_loaded(node, "end", machine)
