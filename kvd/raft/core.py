# -*- test-case-name: tests.raft.test_core -*-
"""
The Raft protocol as a deterministic state machine (etcd-io/raft's
Step/Ready design, in Python).

Inputs: ``tick()``, ``step(message)``, ``propose(data)``, ``read_index(ctx)``,
membership and leadership-transfer requests, ``compact(...)``.
Outputs, collected by ``ready()`` and acknowledged by ``advance(ready)``:
hard state and entries to persist, a snapshot to install, committed entries
to apply, messages to send, read states to serve.

The core never does I/O, never reads a clock (time is a count of ticks) and
draws randomness only from the ``random.Random`` it is given, so the same
inputs always give the same outputs: that is what lets ``kvd.sim`` replay a
run from its seed.

The persistence contract (the embedder's loop, see ``Ready``):

1. send ``ready.messages``: appends and heartbeats of a leader, which may
   travel while the leader persists its own entries (thesis §10.2.1);
2. persist ``hard_state``, ``entries`` and ``snapshot`` (sync if
   ``must_sync``);
3. only then send ``ready.persisted_messages``: votes, append
   acknowledgements and everything else whose meaning is "I have it on disk";
4. restore ``snapshot`` into the state machine, apply ``committed``;
5. call ``advance(ready)``.  A leader counts its own entries toward a
   majority only from here, when they are durable.

What lives elsewhere, as etcd-io/raft splits it: the log and its unstable
tail (``kvd.raft.log``), a leader's view of each follower and its flow
control (``kvd.raft.progress``), quorum arithmetic and the vote tally
(``kvd.raft.quorum``), the bookkeeping of ReadIndex rounds
(``kvd.raft.read_only``), messages and durable state (``kvd.raft.messages``).
This module keeps the protocol: roles, terms, elections, replication,
commitment, membership, leadership transfer, snapshots, and when a read
round may start.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from kvd.limits import LIMITS
from kvd.raft.log import RaftLog
from kvd.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatReply,
    InstallSnapshot,
    MAX_INDEX,
    MAX_NODE_ID_LENGTH,
    MAX_TERM,
    MAX_TERM_JUMP,
    Message,
    NodeId,
    PreVote,
    PreVoteReply,
    ReadIndexReply,
    ReadIndexRequest,
    ReadState,
    RequestVote,
    RequestVoteReply,
    Role,
    Snapshot,
    TimeoutNow,
)
from kvd.raft.progress import Progress, ProgressState
from kvd.raft.quorum import VoteResult, has_quorum, quorum_index, vote_result
from kvd.raft.read_only import ReadOnly, stamp, unstamp


class NotLeader(Exception):
    """This node cannot take the request; ``leader`` is the node that can, if known."""

    def __init__(self, leader: Optional[NodeId]):
        super().__init__("not the leader (leader: %s)" % (leader or "unknown"))
        self.leader = leader


class ProposalDropped(Exception):
    """The leader refuses the proposal for now (e.g. a leadership transfer is under way)."""


class ConfigChangeRejected(Exception):
    """
    A membership change was refused; the message says why.  ``in_progress``:
    only because another change (or the leader's first commit) is still
    pending, so the same request may succeed a little later.
    """

    def __init__(self, message: str, in_progress: bool = False):
        super().__init__(message)
        self.in_progress = in_progress


@dataclass
class RaftSettings:
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    append_bytes_max: int = LIMITS.append_bytes  # per AppendEntries (at least one entry is always sent)
    inflight_max: int = 64  # pipelined appends per follower
    check_quorum: bool = True
    pre_vote: bool = True
    promote_learners: bool = True  # the leader promotes a learner once it has caught up
    snapshot_retry_ticks: int = 0  # 0: 2 * election_ticks
    # Committed entries handed out per Ready (etcd's MaxCommittedSizePerReady): a
    # follower that learns of thousands of commits at once applies them in steps,
    # and its embedder serves the network between two (kvd.replica).  64: a run
    # is a few milliseconds of a loaded leader's reactor (256 was tens).
    apply_entries_max: int = 64
    # Lease reads (thesis §6.4.1, etcd's ReadOnlyLeaseBased): a leader answers a
    # read at once, without a heartbeat round, while it holds a lease
    # (``lease_ticks``).  Safe only if the nodes' clocks run at the same rate
    # within the margin below, hence off by default.  Only the leader's option
    # matters: every node keeps the promise the lease stands on whenever
    # check_quorum is on (``RaftCore._in_leader_lease``), with or without it,
    # so a cluster where some nodes lack it is as safe as one where all have it.
    lease_reads: bool = False
    # A new commit index is not sent at once to the followers that hold the
    # whole log (an empty append to each, and an acknowledgement back from each:
    # as many messages as the write itself took).  The next append or heartbeat
    # carries it, or ``send_commit_notice`` when the embedder's short timer
    # fires first (``commit_notice_pending``).  Only the followers' applying
    # waits (a ReadIndex round's heartbeats carry the commit index too).
    defer_commit_notice: bool = False

    @property
    def lease_ticks(self) -> int:
        """
        How long a quorum's acknowledgement of a heartbeat lets the leader
        serve reads alone, counted on its own clock from when it *sent* that
        heartbeat (the acknowledgement may arrive much later).

        A voter that acknowledges grants no vote for ``election_ticks`` of
        its own ticks after it received the heartbeat (check-quorum's leader
        lease, ``_in_leader_lease``), and no leader can be elected without
        one of the voters that acknowledged: so none exists before
        ``election_ticks - 1`` tick periods have passed since the sending
        (the voter's first tick may come right after it reset its count).
        One tick less than that leaves a margin for the clocks: the lease
        holds as long as no voter's ticks run faster than the leader's by
        more than ``1 / (election_ticks - 2)`` (1/6, 17%, with 8; 1/8 with 10).
        """
        return self.election_ticks - 2

    def validate(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.inflight_max < 1 or self.append_bytes_max < 1 or self.apply_entries_max < 1:
            raise ValueError("inflight_max, append_bytes_max and apply_entries_max must be positive")
        if self.lease_reads and not self.check_quorum:
            # As etcd: without check-quorum, voters do not refuse votes while
            # they hear from a leader, and nothing bounds when another is elected.
            raise ValueError("lease_reads needs check_quorum")
        if self.lease_reads and self.lease_ticks <= self.heartbeat_ticks:
            raise ValueError("lease_reads needs election_ticks >= heartbeat_ticks + 3, or the lease lapses between heartbeats")


@dataclass
class Ready:
    """What the embedder must do, in the order given in the module docstring."""

    hard_state: Optional[HardState] = None
    entries: List[Entry] = field(default_factory=list)  # stored entries >= entries[0].index are replaced
    snapshot: Optional[Snapshot] = None  # from the leader: persist, drop the whole log, restore
    committed: List[Entry] = field(default_factory=list)
    messages: List[Message] = field(default_factory=list)
    persisted_messages: List[Message] = field(default_factory=list)
    read_states: List[ReadState] = field(default_factory=list)
    must_sync: bool = False
    soft_state: Optional[Tuple[Role, Optional[NodeId], int]] = None  # (role, leader, term) when changed


#: ``bootstrap`` writes term 1, and the first election is for the next one:
#: no node has heard from a leader of a term below this.
FIRST_ELECTED_TERM = 2

# Messages only the leader of a term sends (step's ``second_leader`` rule).
_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot, ReadIndexReply)

# Messages a leader may send before its own entries are durable.
_LEADER_EARLY = (AppendEntries, Heartbeat, InstallSnapshot, TimeoutNow, ReadIndexReply)


def bootstrap(config: Configuration) -> Tuple[HardState, List[Entry]]:
    """
    The initial durable state of every founding member: one configuration
    entry at index 1, term 1.  All founders must be given the same
    configuration, so their logs agree from the start.
    """
    return HardState(term=1, vote=None, commit=0), [Entry(1, 1, EntryKind.CONFIG, config.encode())]


class RaftCore:
    """
    One Raft node's protocol state.  Attributes the embedder and the tests
    read (write none of them):

    - ``term``, ``vote``: the current term and the vote cast in it (durable).
    - ``commit``: the commit index, the highest log index known to be
      committed (``status()["commit_index"]``; durable as ``HardState.commit``).
    - ``applied``: the applied index, the highest index the embedder has been
      handed to apply (entries in ``Ready.committed``, or a snapshot) in a
      Ready it has since passed to ``advance()`` (``status()["applied_index"]``).
      ``applied <= commit`` always.
    - ``persisted_index``: the last log index known to be durable here.
    - ``role``, ``leader``, ``config``, ``log``, ``progress`` (a leader's view
      of each follower, keyed by node id).
    """

    def __init__(
        self,
        node_id: NodeId,
        options: RaftSettings,
        rng: random.Random,
        hard_state: HardState = HardState(),
        snapshot: Optional[Snapshot] = None,
        entries: Sequence[Entry] = (),
    ):
        options.validate()
        self.id = node_id
        self.options = options
        self.rng = rng
        snapshot = snapshot or Snapshot()
        self.log = RaftLog(snapshot, entries)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.commit = max(hard_state.commit, snapshot.index)
        assert self.commit <= self.log.last_index(), "durable commit index beyond the durable log"
        # The embedder restores its state machine from ``snapshot`` before starting us.
        self.applied = snapshot.index
        self.persisted_index = self.log.last_index()
        self.latest_snapshot = snapshot

        # Configurations take effect when appended: the latest one in the log rules.
        self.base_config = snapshot.config
        self.configs: List[Tuple[int, Configuration]] = []
        for e in self.log.entries:
            self._note_config(e)

        self.role = Role.FOLLOWER
        self.leader: Optional[NodeId] = None
        self.progress: Dict[NodeId, Progress] = {}
        self.votes: Dict[NodeId, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.lead_transferee: Optional[NodeId] = None
        self.transfer_elapsed = 0
        self.noop_index = 0  # a leader's first entry of its term
        self.pending_config_index = 0  # last config entry appended by this leader

        # ReadIndex (thesis §6.4): reads wait for a heartbeat round that starts after they arrive.
        self.read_only = ReadOnly()
        # Lease reads (``RaftSettings.lease_reads``, see ``_lease_holds``).
        #: Ticks of time this node has lived through, those its embedder
        #: coalesced included (``tick``): the clock a leader measures its lease on.
        self.now = 0
        #: Ticks since this node last heard from a leader, whatever the term, on
        #: the election timer's count (``_in_leader_lease``).
        self.heard_elapsed = self._heard_elapsed_at_start(options)
        #: A TimeoutNow went out in this term: its target may be elected at any
        #: moment (its votes skip the followers' promise), so no lease until the term ends.
        self.lease_forfeited = False
        #: Reads this leader answered by its lease, without a heartbeat round.
        self.lease_reads_served = 0

        # Outputs gathered for the next Ready, under the names Ready gives them.
        self.messages: List[Message] = []
        self.persisted_messages: List[Message] = []
        self.read_states: List[ReadState] = []
        self.received_snapshot: Optional[Snapshot] = None
        self.broadcast_pending = False
        #: A commit index not yet sent to every follower (``RaftSettings.defer_commit_notice``).
        self.commit_notice_pending = False
        self.prev_hard = HardState(self.term, self.vote, self.commit)
        self.prev_soft: Tuple[Role, Optional[NodeId], int] = (self.role, None, self.term)
        self.outstanding: Optional[Ready] = None
        #: Messages dropped by the checks in ``step``, by reason, and the latest
        #: one as (reason, message type name, src, term).
        self.refused: Dict[str, int] = {}
        self.last_refused: Optional[Tuple[str, str, str, object]] = None
        self._become_follower(self.term, None)

    def _heard_elapsed_at_start(self, options: RaftSettings) -> int:
        """
        Zero, as if a leader had just been heard, if this node may have
        acknowledged a leader's heartbeat just before it stopped: the promise
        that went with it (``_in_leader_lease``) outlives the process, so a
        restarted node grants no vote for an election timeout.  Every node
        keeps it, with or without lease reads: a node cannot tell whether the
        process before it promised (it may have run with the option), and the
        leader that counted on it cannot tell a restart.  A node still in the
        bootstrap term (or a joiner, in term 0) heard no leader, whose first is
        elected in term ``FIRST_ELECTED_TERM``; an acknowledgement goes out only
        once its term is durable (``persisted_messages``), so its start costs
        no wait, neither for a new cluster's first election nor for a joiner.
        """
        return 0 if self.term >= FIRST_ELECTED_TERM else options.election_ticks

    # ============================================================ public API
    @property
    def config(self) -> Configuration:
        return self.configs[-1][1] if self.configs else self.base_config

    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def catch_up(self, elapsed: int) -> None:
        """
        ``elapsed`` ticks of time have passed that the embedder's timer has
        not delivered yet: a process that was paused (SIGSTOP, a VM pause)
        handles what piled up on its sockets before its timer runs.  The
        lease clock ``now`` counts them at once, so no read is answered on a
        lease that ran out during the pause; the election and heartbeat
        timers wait for the tick.  The tick's own count may include them
        again: ``now`` then runs ahead, which only shortens the leases of
        heartbeats already sent (the safe side).
        """
        if elapsed > 0:
            self.now += elapsed

    def tick(self, elapsed: int = 1) -> None:
        """
        One tick of the election and heartbeat timers.  ``elapsed``: how many
        ticks of time have passed since the last call, more than one when the
        embedder was too busy to call in time and coalesced them (kvd.replica).
        The timers advance by one all the same (messages that waited behind
        the stall still count before an election fires), but the lease clock
        ``now`` advances by all: a leader that lost ticks must not believe
        its lease is younger than it is.  A late tick lengthens the
        followers' promise instead, which is the safe side.
        """
        self.now += elapsed
        self.heard_elapsed += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (tests, and a lone founder that need not wait)."""
        if self.role is not Role.LEADER:
            self._campaign(pre=False)

    def propose(self, data: bytes, kind: EntryKind = EntryKind.NORMAL) -> Tuple[int, int]:
        """Append a command to the leader's log; returns (term, index) to watch for."""
        return self.propose_many([data], kind)[0]

    def propose_many(self, datas: Sequence[bytes], kind: EntryKind = EntryKind.NORMAL) -> List[Tuple[int, int]]:
        """Append several commands at once; they travel to followers in the same batches."""
        self._check_can_propose()
        if kind is EntryKind.CONFIG:
            raise ValueError("use the membership methods for configuration changes")
        start = self.log.last_index() + 1
        self._append_own([Entry(start + i, self.term, kind, d) for i, d in enumerate(datas)])
        return [(self.term, start + i) for i in range(len(datas))]

    def read_index(self, ctx: bytes) -> None:
        """
        Ask for a linearizable read point; a ReadState(index, ctx) comes out
        in a later Ready once leadership is confirmed.  Raises NotLeader when
        no leader is known (the read would only wait).
        """
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader is None:
            raise NotLeader(None)
        else:
            self._send(ReadIndexRequest(self.term, self.id, self.leader, ctx))

    def add_learner(self, node: NodeId, address: str) -> int:
        if node in self.config.members:
            raise ConfigChangeRejected("%s is already a member" % node)
        return self._propose_config(self.config.with_learner(node, address))

    def promote(self, node: NodeId) -> int:
        if node not in self.config.learners:
            raise ConfigChangeRejected("%s is not a learner" % node)
        return self._propose_config(self.config.with_voter(node))

    def remove(self, node: NodeId) -> int:
        if node not in self.config.members:
            raise ConfigChangeRejected("%s is not a member" % node)
        if self.config.voters == (node,):
            raise ConfigChangeRejected("cannot remove the last voter")
        return self._propose_config(self.config.without(node))

    def transfer_leadership(self, target: Optional[NodeId] = None) -> Optional[NodeId]:
        """Hand leadership to ``target`` (default: the most up-to-date voter); returns it."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target is None:
            others = [v for v in self.config.voters if v != self.id and v in self.progress]
            if not others:
                return None
            target = max(sorted(others), key=lambda v: self.progress[v].match)
        if target == self.id or target not in self.config.voters or target not in self.progress:
            raise ConfigChangeRejected("cannot transfer leadership to %s" % target)
        self.lead_transferee = target
        self.transfer_elapsed = 0
        if self.progress[target].match == self.log.last_index():
            self._send_timeout_now(target)
        else:
            self._send_append(target)
        return target

    def compact(self, index: int, data: bytes, keep_entries: int = 0) -> Snapshot:
        """
        Record a snapshot of the state machine as of ``index`` (which must be
        applied) and forget log entries up to ``index - keep_entries``.  The
        embedder persists the returned snapshot.
        """
        assert self.log.snapshot_index <= index <= self.applied, "snapshot of an unapplied index"
        snap = Snapshot(index, self.log.term_at(index), self._config_at(index), data)
        self.latest_snapshot = snap
        cut = max(self.log.snapshot_index, index - keep_entries)
        if cut > self.log.snapshot_index:
            base = self._config_at(cut)
            self.log.compact(cut, self.log.term_at(cut))
            self.base_config = base
            self.configs = [(i, c) for i, c in self.configs if i > cut]
        return snap

    def followers_floor(self, max_lag: int) -> Optional[int]:
        """
        On a leader, the lowest match index of the followers it replicates to
        that were heard from within an election timeout and lag at most
        ``max_lag`` entries: compacting the log past it would send them a
        snapshot instead of the few entries they miss.  None if there is none.
        """
        if self.role is not Role.LEADER:
            return None
        floors = [
            pr.match for node, pr in self.progress.items()
            if node != self.id and pr.state is not ProgressState.SNAPSHOT
            and pr.idle_ticks < self.options.election_ticks and self.applied - pr.match <= max_lag
        ]
        return min(floors) if floors else None

    def match_of(self, node: NodeId) -> Optional[int]:
        """On a leader, the highest index ``node`` is known to hold; None elsewhere or for a non-member."""
        pr = self.progress.get(node) if self.role is Role.LEADER else None
        return None if pr is None else pr.match

    def snapshot_at(self, index: int) -> Snapshot:
        """
        What a snapshot of the machine at the applied ``index`` records (its
        term and the configuration then), without data: for a machine whose
        state is on disk and streamed at whatever index it has reached
        (kvd.wire.snapshots), newer than ``latest_snapshot``.  ValueError if
        ``index`` is not applied or its entry is compacted away.
        """
        term = self.log.term_at(index)
        if term is None or index > self.applied:
            raise ValueError(f"no snapshot at index {index}: applied {self.applied}, log from {self.log.snapshot_index}")
        return Snapshot(index, term, self._config_at(index), b"")

    def report_unreachable(self, node: NodeId) -> None:
        pr = self.progress.get(node)
        if pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node: NodeId, ok: bool) -> None:
        pr = self.progress.get(node)
        if pr is not None and pr.state is ProgressState.SNAPSHOT:
            if not ok:
                pr.pending_snapshot = 0
            pr.become_probe()

    def status(self) -> dict:
        return {
            "id": self.id,
            "role": self.role.value,
            "term": self.term,
            "leader": self.leader,
            "vote": self.vote,
            "commit_index": self.commit,
            "applied_index": self.applied,
            "last_index": self.log.last_index(),
            "first_index": self.log.first_index(),
            "snapshot_index": self.latest_snapshot.index,
            "voters": list(self.config.voters),
            "learners": list(self.config.learners),
            "progress": {
                n: {
                    "match": p.match,
                    "next": p.next,
                    "state": p.state.value,
                    # Heard from within an election timeout; unlike recent_active
                    # this does not flicker at the CheckQuorum window boundary.
                    "active": p.idle_ticks < self.options.election_ticks,
                }
                for n, p in sorted(self.progress.items())
            },
            "refused": dict(self.refused),
            "lease_reads_served": self.lease_reads_served,
        }

    # ------------------------------------------------------------ Ready
    def has_ready(self) -> bool:
        return bool(
            self.messages
            or self.persisted_messages
            or self.read_states
            or self.received_snapshot
            or self.broadcast_pending
            or self.log.unstable_from <= self.log.last_index()
            or self.commit > self.applied
            or self._hard_state() != self.prev_hard
            or self._soft_state() != self.prev_soft
        )

    def ready(self) -> Ready:
        assert self.outstanding is None, "ready() called twice without advance()"
        if self.broadcast_pending:
            self.broadcast_pending = False
            self._broadcast_append()
        rd = Ready()
        hs = self._hard_state()
        if hs != self.prev_hard:
            rd.hard_state = hs
            rd.must_sync = hs.term != self.prev_hard.term or hs.vote != self.prev_hard.vote
        rd.snapshot = self.received_snapshot
        rd.entries = self.log.take_unstable()
        rd.must_sync = rd.must_sync or bool(rd.entries) or rd.snapshot is not None
        start = max(self.applied, rd.snapshot.index if rd.snapshot else 0)
        if self.commit > start:
            rd.committed = self.log.slice(start + 1, min(self.commit, start + self.options.apply_entries_max) + 1)
        rd.messages, self.messages = self.messages, []
        rd.persisted_messages, self.persisted_messages = self.persisted_messages, []
        if rd.hard_state is not None and (hs.term != self.prev_hard.term or hs.vote != self.prev_hard.vote):
            # Nothing may leave under a term or vote that is not durable yet.
            # A leader elected by its own vote alone (a single voter) has sent
            # no vote request, so its appends could otherwise travel before
            # its term is on disk; after a crash it could campaign in the same
            # term again and send different entries under it.
            rd.persisted_messages = rd.messages + rd.persisted_messages
            rd.messages = []
        rd.read_states, self.read_states = self.read_states, []
        soft = self._soft_state()
        if soft != self.prev_soft:
            rd.soft_state = soft
            self.prev_soft = soft
        self.received_snapshot = None
        self.outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        assert rd is self.outstanding, "advance() with a Ready that is not the outstanding one"
        self.outstanding = None
        if rd.hard_state is not None:
            self.prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.applied = max(self.applied, rd.snapshot.index)
            self.persisted_index = max(self.persisted_index, rd.snapshot.index)
        if rd.entries:
            self.persisted_index = rd.entries[-1].index
        if rd.committed:
            self.applied = rd.committed[-1].index
        if self.role is Role.LEADER and rd.entries:
            # Our own entries are durable now and count toward a majority.
            if self._maybe_commit():
                if self.options.defer_commit_notice:
                    self.commit_notice_pending = bool(self.progress)
                else:
                    self.broadcast_pending = True

    # ============================================================ stepping
    def step(self, m: Message) -> None:
        """
        Take one message from a peer.  Every field is checked, whoever sends
        it (a buggy peer, or anyone who can reach the port when the transport
        does not authenticate), and what breaks a rule below is dropped before
        it touches any state, counted in ``refused`` (``status()["refused"]``,
        by reason; ``last_refused`` names the latest) for the embedder to log:

        - ``malformed``: a field out of range or of the wrong shape
          (``_well_formed``): a term or index beyond ``MAX_TERM``/``MAX_INDEX``
          (so nothing the core stores can be beyond what storage and the codec
          hold), a negative one, entries that do not follow ``prev_index``, a
          configuration entry that does not decode, an empty or oversized node
          id or read context.
        - ``term_jump``: a term more than ``MAX_TERM_JUMP`` (2^32) past ours.
          No real peer is that far ahead (terms grow by about one per election
          timeout); refusing it keeps one message from taking the node to the
          last term there is, from which no election could ever start.
          (Refusing a message never breaks Raft's safety, only, at worst, its
          progress.)
        - ``timeout_now``: TimeoutNow is obeyed only from the leader this node
          follows in the current term (same term, ``src == leader``); one with
          a higher term is not even adopted as a term.
        - ``transfer_vote``: a vote request with ``transfer=True`` skips the
          leader lease (thesis §4.2.3: a server that hears from a live leader
          ignores vote requests), so it is honoured within the lease only if
          it can be the answer to a TimeoutNow of the leader we follow: its
          term is exactly ours + 1 (a TimeoutNow'd target campaigns straight
          from the leader's term, which is ours while we follow that leader),
          it comes from a voter of our configuration, and its log is at least
          as up-to-date as ours (the leader sends TimeoutNow only to a target
          that holds its whole log).  The leader itself knows whom it sent
          TimeoutNow: it honours a transfer vote only from its
          ``lead_transferee``.  All of this is checked before the term is
          adopted, so a refused one changes nothing.  (A follower cannot tell
          a real transferee from a voter that lies about its log: telling
          peers apart is the authenticated transport's job; the leader,
          whom a forged transfer vote would depose, can.)
        - ``beyond_log``: an append acknowledgement (or rejection) at an index
          past the leader's last entry, which no follower can send.
        - ``second_leader``: appends (AppendEntries, Heartbeat, InstallSnapshot)
          and read-index answers (ReadIndexReply, which a follower serves a
          read at) only from the leader of their term: once this node knows a
          leader in its term (or is the leader), such a message from another
          node is dropped.  Raft elects at most one leader per term, so only a
          bug or a forgery sends one.
        """
        if m.dst != self.id:
            return
        if not _well_formed(m):
            self._refuse("malformed", m)
            return
        if m.term > self.term + MAX_TERM_JUMP:
            self._refuse("term_jump", m)
            return
        if isinstance(m, TimeoutNow) and (m.term != self.term or m.src != self.leader or self.role is Role.LEADER):
            if m.term >= self.term:
                self._refuse("timeout_now", m)
            return  # an older term's: stale
        if m.term > self.term:
            if isinstance(m, (PreVote, RequestVote)) and self._in_leader_lease():
                if isinstance(m, RequestVote) and m.transfer:
                    if not self._transfer_vote_allowed(m):
                        self._refuse("transfer_vote", m)
                        return
                else:
                    # Thesis §4.2.3: we heard from a live leader within the
                    # minimum election timeout, so ignore a disruptive candidate.
                    return
            if isinstance(m, PreVote) or (isinstance(m, PreVoteReply) and m.granted):
                pass  # a pre-vote's term is hypothetical: never adopt it
            else:
                leader = m.src if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)) else None
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            if isinstance(m, (AppendEntries, Heartbeat)):
                # A deposed leader: tell it our term so it steps down (it may
                # never hear a vote request of ours when pre-vote is on).
                self._send(AppendEntriesReply(self.term, self.id, m.src, False, 0))
            elif isinstance(m, PreVote):
                self._send(PreVoteReply(self.term, self.id, m.src, False))
            return
        elif self.leader is not None and self.leader != m.src and isinstance(m, _FROM_LEADER):
            self._refuse("second_leader", m)
            return

        if isinstance(m, (PreVote, RequestVote)):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _refuse(self, reason: str, m: Message) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        # A small description, not the message (which may be big, or hold absurd values).
        src = m.src if type(m.src) is str else repr(type(m.src))
        term = m.term if type(m.term) is int and 0 <= m.term <= MAX_TERM else "out of range"
        self.last_refused = (reason, type(m).__name__, src[:MAX_NODE_ID_LENGTH], term)

    def _transfer_vote_allowed(self, m: RequestVote) -> bool:
        """May this transfer vote bypass the leader lease?  (The rule is in ``step``'s docstring.)"""
        if m.term != self.term + 1:
            return False
        if self.role is Role.LEADER:
            return m.src == self.lead_transferee
        return m.src in self.config.voters and self.log.is_up_to_date(m.last_log_index, m.last_log_term)

    def _send_timeout_now(self, target: NodeId) -> None:
        """Tell ``target`` to campaign now.  It can win at once, so this term's lease is given up for good."""
        self.lease_forfeited = True
        self._send(TimeoutNow(self.term, self.id, target))

    def _handle_vote_request(self, m) -> None:
        pre = isinstance(m, PreVote)
        reply = PreVoteReply if pre else RequestVoteReply
        if self._can_grant_vote(m):
            if not pre:
                self.vote = m.src
                self.election_elapsed = 0
            self._send(reply(m.term, self.id, m.src, True))
        else:
            self._send(reply(self.term, self.id, m.src, False))

    def _can_grant_vote(self, m) -> bool:
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (isinstance(m, PreVote) and m.term > self.term)
        )
        if can_vote and self._in_leader_lease():
            # A request of our own term (``step`` only holds back higher ones):
            # we may have reached it by a stray message after acknowledging a
            # leader of an older term; the promise holds whatever the term,
            # except for a transfer vote (its leader gave its lease up).
            can_vote = isinstance(m, RequestVote) and m.transfer
        return can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term)

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.src)
        if pr is not None:
            pr.idle_ticks = 0
        if isinstance(m, ReadIndexRequest):
            if pr is not None:
                pr.recent_active = True
                self._leader_read(m.ctx, m.src)
            return
        if pr is None:
            return
        if isinstance(m, AppendEntriesReply):
            pr.recent_active = True
            self._handle_append_reply(m, pr)
        elif isinstance(m, HeartbeatReply):
            pr.recent_active = True
            self._handle_heartbeat_reply(m, pr)

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            # Someone won this term (Raft §5.2).
            self._become_follower(self.term, m.src)
            self._step_follower(m)
        elif isinstance(m, PreVoteReply) and self.role is Role.PRE_CANDIDATE:
            self._tally(m.src, m.granted)
        elif isinstance(m, RequestVoteReply) and self.role is Role.CANDIDATE:
            self._tally(m.src, m.granted)

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            self.election_elapsed = 0
            self.heard_elapsed = 0
            self.leader = m.src
            if isinstance(m, AppendEntries):
                self._handle_append(m)
            elif isinstance(m, Heartbeat):
                self._commit_to(min(m.commit, self.log.last_index()))
                self._send(HeartbeatReply(self.term, self.id, m.src, m.ctx))
            else:
                self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            # From our leader of this term only (checked in step).
            if self._promotable():
                self._campaign(pre=False, transfer=True)
        elif isinstance(m, ReadIndexReply):
            if m.index > 0:
                self.read_states.append(ReadState(m.index, m.ctx))

    # ============================================================ follower side
    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self.commit:
            self._send(AppendEntriesReply(self.term, self.id, m.src, True, self.commit))
            return
        if not self.log.matches(m.prev_index, m.prev_term):
            self._reject_append(m)
            return
        last_new = m.prev_index + len(m.entries)
        conflict = self.log.find_conflict(m.entries)
        if conflict is not None:
            assert conflict.index > self.commit, "leader overwrites a committed entry"
            if conflict.index <= self.log.last_index():
                self._truncate(conflict.index)
            self._append(m.entries[conflict.index - m.entries[0].index :])
        self._commit_to(min(m.commit, last_new))
        self._send(AppendEntriesReply(self.term, self.id, m.src, True, last_new))

    def _reject_append(self, m: AppendEntries) -> None:
        if m.prev_index > self.log.last_index():
            hint_index, hint_term = self.log.last_index() + 1, 0
        else:
            hint_term = self.log.term_at(m.prev_index)
            hint_index = self.log.first_index_of_term(m.prev_index)
        self._send(AppendEntriesReply(self.term, self.id, m.src, False, m.prev_index, hint_index, hint_term))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        snap = m.snapshot
        if snap.index <= self.commit:
            self._send(AppendEntriesReply(self.term, self.id, m.src, True, self.commit))
            return
        if self.log.matches(snap.index, snap.term):
            # We already hold the snapshot's entries: just learn they are committed.
            self._commit_to(snap.index)
        else:
            self.log.reset_to(snap)
            self.commit = snap.index
            self.persisted_index = min(self.persisted_index, snap.index)
            self.base_config = snap.config
            self.configs = []
            self.latest_snapshot = snap
            self.received_snapshot = snap
            self._refresh_role()
        self._send(AppendEntriesReply(self.term, self.id, m.src, True, snap.index))

    # ============================================================ leader side
    def _handle_append_reply(self, m: AppendEntriesReply, pr: Progress) -> None:
        if m.index > self.log.last_index():
            # No follower can hold (or have been sent) more than we have: a
            # leader never truncates its log, and a follower's commit index is
            # in every later leader's log (Leader Completeness).
            self._refuse("beyond_log", m)
            return
        if not m.success:
            if m.index == 0 and m.conflict_index == 0:
                return  # a stale-term notice, handled by the term check
            hint = self._hint_next(m)
            if pr.maybe_decrease(m.index, hint):
                self._send_append(m.src)
            return
        was_paused = pr.is_paused()
        if pr.update(m.index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                pr.become_probe()
                pr.become_replicate()
            if self._maybe_commit():
                self._commit_advanced()
            elif was_paused or pr.state is ProgressState.REPLICATE:
                self._send_all_available(m.src)
            if self.role is Role.LEADER and m.src == self.lead_transferee and pr.match == self.log.last_index():
                self._send_timeout_now(m.src)
                if self._removed_and_committed():
                    self._become_follower(self.term, None)  # the hand-over of a removed leader is done
        elif was_paused and not pr.is_paused():
            self._send_all_available(m.src)

    def _hint_next(self, m: AppendEntriesReply) -> int:
        if m.conflict_term:
            last = self.log.last_index_of_term(m.conflict_term)
            if last:
                return last + 1
        return max(1, m.conflict_index)

    def _handle_heartbeat_reply(self, m: HeartbeatReply, pr: Progress) -> None:
        pr.probe_sent = False
        if pr.state is ProgressState.REPLICATE and pr.is_paused():
            pr.inflight.popleft()  # an ack may have been lost; let one more through
        if pr.match < self.log.last_index():
            self._send_append(m.src, allow_empty=True)
        ctx = self._note_lease_ack(pr, m.ctx) if self.options.lease_reads else m.ctx
        if self.read_only.ack(m.src, ctx):
            self._maybe_release_reads()

    def _note_lease_ack(self, pr: Progress, ctx: bytes) -> bytes:
        """
        Record the send tick a heartbeat reply vouches for (``stamp``), the
        latest one only (replies may come out of order), and none from the
        future (no reply answers a heartbeat not sent yet); return the
        round's context for ReadIndex.
        """
        ctx, sent = unstamp(ctx)
        if sent is not None and sent <= self.now and (pr.heartbeat_acked is None or sent > pr.heartbeat_acked):
            pr.heartbeat_acked = sent
        return ctx

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a majority of voters hold (Raft §5.3, §5.4.2)."""
        n = quorum_index([self._match_of(v) for v in self.config.voters])
        if n > self.commit and self.log.term_at(n) == self.term:
            self._commit_to(n)
            return True
        return False

    def _match_of(self, node: NodeId) -> int:
        if node == self.id:
            return self.persisted_index
        pr = self.progress.get(node)
        return pr.match if pr else 0

    def _send_append(self, to: NodeId, allow_empty: bool = True) -> bool:
        """Send the next batch to ``to`` if flow control allows; True if something was sent."""
        pr = self.progress[to]
        if pr.is_paused() and not allow_empty:
            return False
        if pr.state is ProgressState.SNAPSHOT:
            return False
        prev = pr.next - 1
        prev_term = self.log.term_at(prev)
        if prev_term is None or pr.next < self.log.first_index():
            return self._send_snapshot(to, pr)
        entries = self.log.slice(pr.next, self.log.last_index() + 1, self.options.append_bytes_max)
        if not entries and not allow_empty:
            return False
        if pr.is_paused() and entries:
            entries = []
        self._send(AppendEntries(self.term, self.id, to, prev, prev_term, tuple(entries), self.commit))
        pr.sent(entries[-1].index if entries else prev, len(entries))
        return True

    def _send_all_available(self, to: NodeId) -> None:
        pr = self.progress[to]
        while pr.next <= self.log.last_index() and not pr.is_paused():
            if not self._send_append(to, allow_empty=False):
                break
            if pr.state is not ProgressState.REPLICATE:
                break  # a probe carries one batch and waits for the answer

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        snap = self.latest_snapshot
        if snap.index == 0:
            return False
        self._send(InstallSnapshot(self.term, self.id, to, snap))
        pr.become_snapshot(snap.index)
        return True

    def _commit_advanced(self) -> None:
        """Tell the followers of a new commit index: at once, or with what they are sent next (``defer_commit_notice``)."""
        if not self.options.defer_commit_notice:
            self._broadcast_append()
            return
        for peer in sorted(self.progress):
            pr = self.progress[peer]
            if not pr.is_paused() and pr.next <= self.log.last_index():
                self._send_all_available(peer)  # entries go now anyway, and carry the commit index
        self.commit_notice_pending = bool(self.progress)

    def send_commit_notice(self) -> None:
        """The embedder's timer for ``defer_commit_notice``: send a commit index no append has carried yet."""
        if self.role is Role.LEADER and self.commit_notice_pending:
            self._broadcast_append()
        self.commit_notice_pending = False

    def _broadcast_append(self) -> None:
        self.commit_notice_pending = False  # every follower that can be sent anything gets the commit index
        for peer in sorted(self.progress):
            pr = self.progress[peer]
            if pr.is_paused():
                continue
            if pr.next <= self.log.last_index():
                self._send_all_available(peer)
            else:
                self._send_append(peer, allow_empty=True)  # carries the new commit index

    def _broadcast_heartbeat(self, ctx: bytes = b"") -> None:
        if self.options.lease_reads:
            ctx = stamp(ctx, self.now)  # echoed in the replies: which send time an acknowledgement vouches for
        for peer in sorted(self.progress):
            commit = min(self.progress[peer].match, self.commit)
            self._send(Heartbeat(self.term, self.id, peer, commit, ctx))

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        for peer in sorted(self.progress):
            pr = self.progress[peer]
            pr.idle_ticks += 1
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks > (self.options.snapshot_retry_ticks or 2 * self.options.election_ticks):
                    # The snapshot or its acknowledgement was lost: start over.
                    pr.pending_snapshot = 0
                    pr.become_probe()
        if self.lead_transferee is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.options.election_ticks:
                self.lead_transferee = None  # the transfer failed; serve again
                if self._removed_and_committed():
                    self._become_follower(self.term, None)  # unless removed: then only step down
                    return
        if self.election_elapsed >= self.options.election_ticks:
            self.election_elapsed = 0
            if self.options.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
            for pr in self.progress.values():
                pr.recent_active = False
        if self.heartbeat_elapsed >= self.options.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self.read_only.ctx())
        self._maybe_promote_learner()

    def _quorum_active(self) -> bool:
        """CheckQuorum: have a majority of voters (counting us) been heard from this window?"""
        active = {self.id} | {n for n, pr in self.progress.items() if pr.recent_active}
        return has_quorum(self.config.voters, active)

    def _maybe_promote_learner(self) -> None:
        if not self.options.promote_learners or not self.config.learners:
            return
        if not self._can_change_config():
            return
        for node in self.config.learners:
            pr = self.progress.get(node)
            if pr is not None and pr.match >= self.commit and pr.recent_active:
                self.promote(node)
                return

    # ============================================================ ReadIndex
    # The state of the reads lives in self.read_only (kvd.raft.read_only);
    # when a round may start and what answers it are decided here.
    def _leader_read(self, ctx: bytes, requester: NodeId) -> None:
        if self.options.lease_reads and self._committed_in_term() and self._lease_holds():
            self.lease_reads_served += 1
            self._answer_read(ctx, requester, self.commit)
            return
        self.read_only.queue(ctx, requester)
        self._maybe_start_read_round()

    def _maybe_start_read_round(self) -> None:
        if self.read_only.in_flight or not self.read_only.waiting:
            return
        if not self._committed_in_term():
            return  # our commit index may lag the cluster's until our no-op commits
        ctx = self.read_only.start(self.commit, self.id)
        if not self._maybe_release_reads():
            self._broadcast_heartbeat(ctx)

    def _maybe_release_reads(self) -> bool:
        """Answer the round's reads if a quorum of voters has acknowledged it, then start the next round."""
        released = self.read_only.release(self.config.voters)
        if released is None:
            return False
        index, requests = released
        for ctx, requester in requests:
            self._answer_read(ctx, requester, index)
        self._maybe_start_read_round()
        return True

    def _answer_read(self, ctx: bytes, requester: NodeId, index: int) -> None:
        if requester == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(ReadIndexReply(self.term, self.id, requester, ctx, index))

    def _committed_in_term(self) -> bool:
        return self.noop_index > 0 and self.commit >= self.noop_index

    def _lease_holds(self) -> bool:
        """
        May this leader answer a read with its commit index now, without a
        heartbeat round (thesis §6.4.1)?  Yes while a quorum of voters
        (counting us) has acknowledged a heartbeat we sent less than
        ``lease_ticks`` ago on our clock: each of them grants no vote for
        ``election_ticks`` of its own clock after receiving it
        (``_in_leader_lease``), and any new leader needs one of them, so none
        exists yet (``RaftSettings.lease_ticks`` has the arithmetic and the
        clock margin).  The commit index is then the cluster's, once an entry
        of our term has committed (as for ReadIndex).

        Each heartbeat carries our tick at sending and each reply echoes it
        (``stamp``), so an acknowledgement vouches for a known send time
        however long either message took; a lost or late reply can only make
        the lease look older.  Never while a leadership transfer is under way
        or after a TimeoutNow in this term: the target's transfer votes skip
        the followers' promise, so it can be elected at any moment (etcd's
        lease reads do not check this; etcd-io/raft#99).
        """
        if self.lead_transferee is not None or self.lease_forfeited:
            return False
        since = self.now - self.options.lease_ticks
        fresh = {self.id} | {
            node for node, pr in self.progress.items() if pr.heartbeat_acked is not None and pr.heartbeat_acked > since
        }
        return has_quorum(self.config.voters, fresh)

    # ============================================================ membership
    def _can_change_config(self) -> bool:
        return (
            self.role is Role.LEADER
            and self.lead_transferee is None
            and self._committed_in_term()  # Ongaro 2015: no change before an entry of this term commits
            and self.pending_config_index <= self.commit  # one change at a time
        )

    def _propose_config(self, new: Configuration) -> int:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if not self._can_change_config():
            raise ConfigChangeRejected("a membership change is in progress or this leader has not committed yet", in_progress=True)
        old = self.config
        if len(set(old.voters) ^ set(new.voters)) > 1:
            raise ConfigChangeRejected("only one voter may be added or removed at a time")
        index = self.log.last_index() + 1
        self._append_own([Entry(index, self.term, EntryKind.CONFIG, new.encode())])
        return index

    def _config_at(self, index: int) -> Configuration:
        config = self.base_config
        for i, c in self.configs:
            if i <= index:
                config = c
        return config

    def _note_config(self, e: Entry) -> None:
        if e.kind is EntryKind.CONFIG:
            self.configs.append((e.index, Configuration.decode(e.data)))

    def _apply_config_to_role(self) -> None:
        """A configuration entry was appended or truncated away: adjust peers and role."""
        config = self.config
        if self.role is Role.LEADER:
            for node in config.members:
                if node != self.id and node not in self.progress:
                    self.progress[node] = Progress(self.log.last_index() + 1, self.options.inflight_max)
            for node in list(self.progress):
                if node not in config.members:
                    del self.progress[node]
            if self.lead_transferee is not None and self.lead_transferee not in config.voters:
                self.lead_transferee = None
            if self.read_only.in_flight:
                # The quorum changed: a read round waiting for acknowledgements
                # from a voter that is gone may be complete now (and would wait
                # forever if we were now the only voter: nobody else replies).
                self._maybe_release_reads()
        else:
            self._refresh_role()

    def _refresh_role(self) -> None:
        if self.role in (Role.FOLLOWER, Role.LEARNER):
            self.role = Role.LEARNER if self.id in self.config.learners else Role.FOLLOWER

    def _maybe_step_down_removed(self) -> None:
        # Thesis §4.2.2: a leader not in the configuration steps down once it is committed.
        if self.role is Role.LEADER and self._removed_and_committed() and self._hand_over_on_removal():
            self._become_follower(self.term, None)

    def _hand_over_on_removal(self) -> bool:
        """
        Stepping down alone would leave the cluster without a leader for an
        election timeout (1.6-2.8 s measured); instead the most up-to-date
        remaining voter is told to campaign at once (TimeoutNow, as a
        leadership transfer does), and the others grant its transfer vote
        within their leader lease (``_transfer_vote_allowed``), so the gap is
        one round of votes.  Only a voter holding our whole log can count on
        those votes (one behind another would be refused), so until one does,
        we go on leading as a transfer does: no new proposals, appends to it,
        and the TimeoutNow once it acknowledges the last entry (``_step_leader``),
        then the step-down.  True: step down now (TimeoutNow sent, or nobody to
        hand over to, or the wait took an election timeout: ``_tick_leader``).
        """
        voters = [v for v in sorted(self.config.voters) if v in self.progress]
        if not voters:
            return True
        target = max(voters, key=lambda v: self.progress[v].match)
        if self.progress[target].match == self.log.last_index():
            self._send_timeout_now(target)
            return True
        if self.lead_transferee is None:
            self.lead_transferee = target
            self.transfer_elapsed = 0
            self._send_append(target)
        return False

    def _removed_and_committed(self) -> bool:
        return self.id not in self.config.voters and self.commit >= (self.configs[-1][0] if self.configs else 0)

    # ============================================================ elections
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self._campaign(pre=self.options.pre_vote)

    def _promotable(self) -> bool:
        # Thesis §4.2.2: a server that is not part of its own latest
        # configuration should still start elections while that configuration
        # is uncommitted, for it may hold the only copy of the entry that
        # removes it (a leader that removed itself and then lost leadership);
        # it just does not count its own vote.  Learners never campaign.
        config = self.config
        if self.id in config.voters:
            return True
        return self.id not in config.members and self.id in self._config_at(self.commit).voters

    def _in_leader_lease(self) -> bool:
        """
        Thesis §4.2.3: a node that heard from a live leader within the
        minimum election timeout grants no vote (check-quorum's leader lease).
        It is also the promise a leader's lease reads stand on
        (``_lease_holds``), so it is kept by the time since *any* leader was
        heard (``heard_elapsed``): not dropped when a stray message of a
        higher term makes us forget the leader, nor when the process restarts
        (``_heard_elapsed_at_start``).  Every node keeps it, whatever its own
        ``lease_reads``: the leader's option alone decides whether reads are
        served by lease, so a node that lacks the option (forgotten, or in a
        rolling restart) does not break the lease of one that has it.  It
        costs no election time: a follower's ``heard_elapsed`` runs with its
        election timer, which also starts over when it hears a leader, and a
        candidate's own has run at least an election timeout when it
        campaigns.  A leader is always in its own lease.
        """
        if not self.options.check_quorum:
            return False
        if self.role is Role.LEADER:
            return True
        return self.heard_elapsed < self.options.election_ticks

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if not self._promotable():
            return
        if pre:
            self.role = Role.PRE_CANDIDATE
            self.leader = None
            term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            term = self.term
        self.votes = {self.id: True}
        self.election_elapsed = 0
        self._randomize_timeout()
        if self._vote_result() is VoteResult.WON:
            self._won(pre)
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for peer in self.config.voters:
            if peer == self.id:
                continue
            if pre:
                self._send(PreVote(term, self.id, peer, last_index, last_term))
            else:
                self._send(RequestVote(term, self.id, peer, last_index, last_term, transfer))

    def _tally(self, node: NodeId, granted: bool) -> None:
        self.votes.setdefault(node, granted)
        result = self._vote_result()
        if result is VoteResult.WON:
            self._won(self.role is Role.PRE_CANDIDATE)
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None)

    def _vote_result(self) -> VoteResult:
        return vote_result(self.config.voters, self.votes)

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False)
        else:
            self._become_leader()

    def _randomize_timeout(self) -> None:
        et = self.options.election_ticks
        self.randomized_timeout = self.rng.randint(et, 2 * et - 1)

    # ============================================================ transitions
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomize_timeout()
        self.votes = {}
        self.progress = {}
        self.lead_transferee = None
        self.lease_forfeited = False
        self.commit_notice_pending = False
        self.noop_index = 0
        self.pending_config_index = 0
        self.read_only.reset()

    def _become_follower(self, term: int, leader: Optional[NodeId]) -> None:
        self._reset(term)
        self.leader = leader
        self.role = Role.FOLLOWER
        self._refresh_role()

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        self.role = Role.LEADER
        self.leader = self.id
        self.progress = {
            n: Progress(self.log.last_index() + 1, self.options.inflight_max) for n in self.config.members if n != self.id
        }
        for pr in self.progress.values():
            pr.recent_active = True  # give everyone a full CheckQuorum window
        # No membership change until everything before us has committed.
        self.pending_config_index = self.log.last_index()
        self.noop_index = self.log.last_index() + 1
        self._append_own([Entry(self.noop_index, self.term, EntryKind.NOOP)])

    # ============================================================ log helpers
    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee is not None:
            raise ProposalDropped("leadership transfer to %s in progress" % self.lead_transferee)

    def _append_own(self, entries: List[Entry]) -> None:
        self._append(entries)
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                self.pending_config_index = e.index
        self.broadcast_pending = True
        # A lone voter commits as soon as its entries are durable (in advance()).

    def _append(self, entries: Sequence[Entry]) -> None:
        self.log.append(entries)
        changed = False
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                self._note_config(e)
                changed = True
        if changed:
            self._apply_config_to_role()

    def _truncate(self, index: int) -> None:
        self.log.truncate_from(index)
        self.persisted_index = min(self.persisted_index, index - 1)
        before = len(self.configs)
        self.configs = [(i, c) for i, c in self.configs if i < index]
        if len(self.configs) != before:
            self._apply_config_to_role()

    def _commit_to(self, index: int) -> None:
        if index > self.commit:
            self.commit = index
            if self.role is Role.LEADER:
                self._maybe_step_down_removed()
                self._maybe_start_read_round()

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def _soft_state(self) -> Tuple[Role, Optional[NodeId], int]:
        return (self.role, self.leader, self.term)

    def _send(self, m: Message) -> None:
        if self.role is Role.LEADER and isinstance(m, _LEADER_EARLY):
            self.messages.append(m)
        else:
            self.persisted_messages.append(m)


# The integer fields of each message: all are terms or log indexes.
_INT_FIELDS = {
    PreVote: ("term", "last_log_index", "last_log_term"),
    PreVoteReply: ("term",),
    RequestVote: ("term", "last_log_index", "last_log_term"),
    RequestVoteReply: ("term",),
    AppendEntries: ("term", "prev_index", "prev_term", "commit"),
    AppendEntriesReply: ("term", "index", "conflict_index", "conflict_term"),
    Heartbeat: ("term", "commit"),
    HeartbeatReply: ("term",),
    InstallSnapshot: ("term",),
    TimeoutNow: ("term",),
    ReadIndexRequest: ("term",),
    ReadIndexReply: ("term", "index"),
}
assert MAX_TERM == MAX_INDEX  # one bound checks both kinds of field below
_WITH_CTX = frozenset((Heartbeat, HeartbeatReply, ReadIndexRequest, ReadIndexReply))
#: A ReadIndex context is a small opaque token (a client id and a counter).
MAX_CTX_LENGTH = 1024


def _well_formed(m: Message) -> bool:
    """
    Drop what a buggy or hostile peer could send to break our invariants or
    make us unable to persist: every integer a term or index within
    ``[0, MAX_TERM]`` (``MAX_INDEX``), node ids non-empty strings of at most
    ``MAX_NODE_ID_LENGTH``, read contexts bytes of at most ``MAX_CTX_LENGTH``,
    entries that continue ``prev_index`` one by one with terms in
    ``[1, m.term]``, configuration entries that decode, and snapshots of a
    positive index and term no newer than the message.
    """
    kind = type(m)
    fields = _INT_FIELDS.get(kind)
    if fields is None:
        return False
    for name in fields:
        v = getattr(m, name)
        if type(v) is not int or not 0 <= v <= MAX_TERM:
            return False
    src = m.src
    if type(src) is not str or not 0 < len(src) <= MAX_NODE_ID_LENGTH:
        return False
    if kind in _WITH_CTX:
        ctx = m.ctx
        if type(ctx) is not bytes or len(ctx) > MAX_CTX_LENGTH:
            return False
    elif kind is AppendEntries:
        for i, e in enumerate(m.entries):
            if e.index != m.prev_index + 1 + i or e.term > m.term or e.term < 1:
                return False
            if e.kind is EntryKind.CONFIG and not _config_decodes(e.data):
                return False
        if m.entries and (m.entries[0].term < m.prev_term or m.entries[-1].index > MAX_INDEX):
            return False
    elif kind is InstallSnapshot:
        snap = m.snapshot
        if type(snap.index) is not int or type(snap.term) is not int or snap.index > MAX_INDEX:
            return False
        return snap.index > 0 and 0 < snap.term <= m.term and isinstance(snap.config, Configuration)
    return True


def _config_decodes(data: bytes) -> bool:
    try:
        config = Configuration.decode(data)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return all(type(n) is str and 0 < len(n) <= MAX_NODE_ID_LENGTH for n in config.members)
