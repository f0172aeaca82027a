# -*- test-case-name: tests.test_replica -*-
"""
The Ready loop, once: the order in which a node persists, sends and applies
what the Raft core hands out.  The node (kvd.node, on the reactor) and the
simulator (kvd.sim.cluster, on its simulated clock and disks) run this very
object, so every change to the loop is checked by the simulator.

For each Ready, in the order the core's persistence contract prescribes
(kvd.raft.core):

1. ``messages`` out at once (a leader's appends travel while it persists);
2. ``storage.write(...)``, synced if ``must_sync``; it may complete later;
3. when it has completed: ``persisted_messages`` out (votes, acknowledgements),
   the snapshot restored into the machine, committed entries applied and
   their proposals answered, read states recorded, ``core.advance``;
4. reads whose index is applied are served, and ``events.finished`` told.

A Ready with nothing that must be durable (a leader's commit: only the commit
index moved) issues its write first, and sends its ``messages`` after it: a
write that completes at once (the storage keeps a commit index alone for the
next transaction) has run 3 and 4 by then, so the clients that commit answers
go before the followers hear of it, which no rule of Raft orders.

The core hands out a bounded run of committed entries per Ready
(``RaftSettings.apply_entries_max``).  After a Ready that applied a full run,
``drain`` returns with ``more`` set instead of going on, so that the embedder
serves its network (heartbeats, clients) before it calls ``drain`` again: a
follower that learns of ten thousand commits at once does not stop the world
to apply them.

While a write is outstanding the core must not change (the Ready it gave
describes it), so inputs wait in an inbox; once the write has completed they
all run, in order, and share the next Ready (one write for everything that
arrived during the last, as etcd-io/raft batches behind an asynchronous
write); ticks that could not run in time are coalesced into one, as a real
event loop does, which tells the core how many it stands for (its lease
clock counts them all: ``RaftCore.tick``).
``hold()``/``release()`` stop the loop in the same way (the simulator's
pauses).  Inputs never run the loop by themselves: the embedder calls
``drain()`` when it wants the Ready (the node once per reactor turn, so that
everything that arrived together shares one write; the simulator after each
input).

A storage failure (``storage.write`` or ``storage.compact`` raising, or a
write completing with ``done(error)``: a full disk, an I/O error) fail-stops
the loop: the write's outcome is unknown, so
the core, which describes it in its outstanding Ready, cannot go on.  The
loop records the error in ``failed``, tells ``events.storage_failed`` once,
and from then on runs nothing (inputs are dropped, ``drain`` returns at once),
as a crashed process would; the embedder stops the process.  Raft expects a
node to crash, not to carry on with a disk it cannot trust.  Any other
exception that escapes the loop (an assertion of the core, a machine that
raises while applying) leaves it just as unusable (a Ready half done, never
advanced): it fail-stops the same way and is told to ``events.loop_failed``,
which by default raises it again (the simulator reports it).

Proposals and reads carry an opaque ``token`` of the embedder's; what
becomes of them is told through the ``Events`` it provides.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from kvd.raft.core import NotLeader, ProposalDropped, RaftCore, Ready
from kvd.raft.messages import Entry, EntryKind, Message, Snapshot
from kvd.raft.storage import Protocol, Storage


class Transport(Protocol):
    def send_many(self, messages: Sequence[Message]) -> None:
        """Send each message or drop it; never blocks (Raft retransmits)."""


class Machine(Protocol):
    applied_index: int

    def apply(self, index: int, data: bytes) -> Any:
        """Apply a normal entry; its result answers the proposal."""

    def apply_noop(self, index: int) -> None:
        """Advance over an entry that is not a command (no-op, configuration)."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's."""

    def snapshot(self) -> bytes:
        """The whole state, at ``applied_index``."""


class Superseded(Exception):
    """A proposal that will never be answered with a result: it was certainly not applied as proposed."""


class Replaced(Superseded):
    """Another leader's entry took the proposal's place in the log."""


class Overtaken(Superseded):
    """A snapshot from the leader jumped over the proposal's index; its fate is unknown here."""


class Events:
    """What the embedder hears from the loop; every method may be left as this no-op."""

    def stepped(self, core: RaftCore) -> None:
        """One input ran (a message, a tick, a proposal...); its Ready is not taken yet."""

    def ready(self, core: RaftCore, rd: Ready) -> None:
        """A Ready was taken, before anything of it happens."""

    def persisted(self, core: RaftCore, rd: Ready) -> None:
        """Its write completed, before the persisted messages leave."""

    def applied(self, entry: Entry, result: Any) -> None:
        """One committed entry was applied (``result`` is None for non-commands)."""

    def snapshot_installed(self, snapshot: Snapshot) -> None:
        """The machine was restored from a snapshot received from the leader."""

    def advanced(self, core: RaftCore, rd: Ready) -> None:
        """``core.advance(rd)`` returned: the Ready is done (``rd.soft_state`` tells a role change)."""

    def finished(self, core: RaftCore, rd: Ready) -> None:
        """The Ready is done: its proposals answered and its reads served (replies may be flushed now)."""

    def proposal_done(self, token: Any, result: Any, index: int) -> None:
        """The proposal committed at ``index`` and was applied with ``result``."""

    def proposal_failed(self, token: Any, error: Exception) -> None:
        """The proposal was certainly not applied as proposed: NotLeader, ProposalDropped or Superseded."""

    def read_failed(self, token: Any, error: Exception) -> None:
        """A read could not be given an index (NotLeader: no leader known)."""

    def read_ready(self, token: Any) -> None:
        """The read's index is applied: serve it from the machine now."""

    def storage_failed(self, error: Exception) -> None:
        """A write or compaction raised ``error``; the loop has stopped for good (told once)."""

    def loop_failed(self, error: Exception) -> None:
        """Anything else raised ``error`` inside the loop; it has stopped for good.  By default: raise it."""
        raise error


class Replica:
    def __init__(self, core: RaftCore, storage: Storage, transport: Transport, machine: Machine,
                 events: Optional[Events] = None):
        self.core = core
        self.storage = storage
        self.transport = transport
        self.machine = machine
        self.events = events or Events()
        self.writing: Optional[Ready] = None  # the Ready whose write has not completed
        self.compacting = False  # a compaction's write has not completed
        self._compact_call = False  # inside storage.compact: a completion there is not the loop's to drain
        self.held = False
        #: The storage error that stopped the loop for good, if any.
        self.failed: Optional[Exception] = None
        self.inbox: Deque[Callable[[RaftCore], None]] = deque()
        self._ticks_queued = 0  # ticks coalesced into the one waiting in the inbox
        self._draining = False
        #: ``drain`` stopped after a full run of applied entries: call it again soon.
        self.more = False
        #: Proposals not answered yet, in the order made: log index -> (term, token).
        self.proposals: Dict[int, Tuple[int, Any]] = {}
        #: Reads waiting for their index: ReadIndex context -> token.
        self.reads: Dict[bytes, Any] = {}
        #: Reads that know their index, waiting for it to be applied, oldest first.
        self.indexed_reads: List[Tuple[int, Any]] = []

    @property
    def busy(self) -> bool:
        """Inputs wait: a write or compaction is outstanding, or the loop is held (or has failed)."""
        return self.writing is not None or self.compacting or self.held or self.failed is not None

    # ------------------------------------------------------------ inputs
    def input(self, fn: Callable[[RaftCore], None]) -> None:
        """Run ``fn(core)`` now, or once the outstanding write has completed (never, once failed)."""
        if self.failed is not None:
            return
        if self.busy:
            self.inbox.append(fn)
        else:
            self._guarded(self._run, fn)

    def _run(self, fn: Callable[[RaftCore], None]) -> None:
        fn(self.core)
        self.events.stepped(self.core)

    def tick(self, elapsed: int = 1) -> None:
        """``elapsed`` ticks of time have passed (more than one: the embedder itself was late)."""
        if self.failed is not None:
            return
        if not self.busy:
            self._guarded(self._run, lambda core: core.tick(elapsed))
            return
        if not self._ticks_queued:
            self.inbox.append(self._queued_tick)
        self._ticks_queued += elapsed

    def _queued_tick(self, core: RaftCore) -> None:
        elapsed, self._ticks_queued = self._ticks_queued, 0
        core.tick(elapsed)

    def step(self, message: Message) -> None:
        self.input(lambda core: core.step(message))

    def propose(self, data: bytes, token: Any) -> None:
        """Propose ``data``; the outcome reaches ``events.proposal_done`` or ``proposal_failed``."""
        self.input(lambda core: self._propose(core, data, token))

    def _propose(self, core: RaftCore, data: bytes, token: Any) -> None:
        try:
            term, index = core.propose(data)
        except (NotLeader, ProposalDropped) as e:
            self.events.proposal_failed(token, e)
            return
        self.proposals[index] = (term, token)

    def read_index(self, ctx: bytes, token: Any) -> None:
        """Ask for a linearizable read point; ``events.read_ready(token)`` once it is applied here."""
        self.input(lambda core: self._read_index(core, ctx, token))

    def _read_index(self, core: RaftCore, ctx: bytes, token: Any) -> None:
        try:
            core.read_index(ctx)
        except NotLeader as e:
            self.events.read_failed(token, e)
            return
        self.reads[ctx] = token

    def compact(self, keep_entries: int, min_entries: int = 1,
                then: Optional[Callable[[Snapshot], None]] = None) -> None:
        """
        Snapshot the machine and drop the log before it (keeping ``keep_entries``
        for followers that lag a little), if at least ``min_entries`` were
        applied since the last snapshot; ``then(snapshot)`` when it was taken.
        """

        def fn(core: RaftCore) -> None:
            if core.applied - core.latest_snapshot.index < min_entries:
                return
            snap = self.compact_now(keep_entries)
            if snap is not None and then is not None:
                then(snap)

        self.input(fn)

    def compact_now(self, keep_entries: int) -> Optional[Snapshot]:
        """
        The compaction itself, from inside an input (the core must not have a
        Ready outstanding).  The storage may complete it later (a writer
        thread): until then the loop is busy, as for a write, for the disk
        is busy with the state's flush and nothing may change the state.
        """
        assert self.writing is None and not self.compacting, "compaction while a write is outstanding"
        if self.machine.applied_index != self.core.applied:
            return None
        snap = self.core.compact(self.core.applied, self.machine.snapshot(), keep_entries=keep_entries)
        self.compacting = True
        self._compact_call = True
        try:
            self.storage.compact(snap, self._compacted)
        except Exception as e:
            self._fail(e)
            return None
        finally:
            self._compact_call = False
        return snap

    def _compacted(self, error: Optional[BaseException] = None) -> None:
        if not self.compacting or self.failed is not None:
            return
        if error is not None:
            self._fail(error)
            return
        self.compacting = False
        if not self._compact_call:
            self.drain()  # what waited behind it

    def hold(self) -> None:
        """Stop running inputs (a paused process): they wait in the inbox."""
        self.held = True

    def release(self) -> None:
        self.held = False
        self.drain()

    # ------------------------------------------------------------ the loop
    def drain(self) -> None:
        """Run the loop until the core has nothing more, or a write is outstanding."""
        if self._draining:
            return  # a write completed inside storage.write: the running loop goes on
        self._draining = True
        try:
            self._guarded(self._drain)
        finally:
            self._draining = False

    def _drain(self) -> None:
        core = self.core
        self.more = False
        while not self.busy:
            while self.inbox and not self.busy:
                self._run(self.inbox.popleft())
            if self.busy or not core.has_ready():
                break
            rd = core.ready()
            self.events.ready(core, rd)
            if rd.must_sync:
                if rd.messages:
                    self.transport.send_many(rd.messages)
                self._write(rd)
            elif rd.hard_state is not None:
                # Only the commit index moved: a leader's commit.  Its write need not
                # be durable (the storage may complete it at once), and its messages
                # carry the new commit index to the followers, which only speeds up
                # their applying: the clients this commit answers go first (kvd.push).
                self._write(rd)
                if rd.messages:
                    self.transport.send_many(rd.messages)
            else:
                self._finish(rd)
                if rd.messages:
                    self.transport.send_many(rd.messages)
                if len(rd.committed) >= core.options.apply_entries_max and core.has_ready():
                    self.more = True  # the embedder lets its network in, then drains again
                    break

    def _guarded(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)``; an exception escaping it fail-stops the loop (``events.loop_failed``)."""
        try:
            fn(*args)
        except Exception as e:
            if self.failed is not None:
                raise  # already failed (and told) deeper down: let it go on up
            self.failed = e
            self.inbox.clear()
            self.events.loop_failed(e)

    def _write(self, rd: Ready) -> None:
        self.writing = rd
        try:
            self.storage.write(rd.hard_state, rd.entries, rd.snapshot, rd.must_sync,
                               lambda error=None: self._written(rd, error))
        except Exception as e:
            if self.writing is not rd:
                raise  # the write completed (done ran): the error is not the storage's
            self._fail(e)

    def _fail(self, error: Exception) -> None:
        """Fail-stop on a storage error: nothing more runs; the embedder hears it once."""
        if self.failed is not None:
            return
        self.failed = error
        self.inbox.clear()
        self.events.storage_failed(error)

    def _written(self, rd: Ready, error: Optional[BaseException] = None) -> None:
        if self.writing is not rd or self.failed is not None:
            return  # not ours any more (a node that crashed and restarted with a new Replica)
        if error is not None:
            self._fail(error)  # stays "writing": the Ready is never finished, nothing more runs
            return
        self.writing = None
        self._guarded(self._finish, rd)
        self.drain()

    def _finish(self, rd: Ready) -> None:
        core, events = self.core, self.events
        events.persisted(core, rd)
        if rd.persisted_messages:
            self.transport.send_many(rd.persisted_messages)
        if rd.snapshot is not None:
            self.machine.restore(rd.snapshot.data)
            # A durable machine reloads its state (kvd.store.state), which is at least at the snapshot's index.
            covered = max(rd.snapshot.index, self.machine.applied_index)
            for index in [i for i in self.proposals if i <= covered]:
                _, token = self.proposals.pop(index)
                events.proposal_failed(token, Overtaken("overtaken by a snapshot from the leader"))
            events.snapshot_installed(rd.snapshot)
        for entry in rd.committed:
            self._apply(entry)
        for rs in rd.read_states:
            token = self.reads.pop(rs.ctx, None)
            if token is not None:
                self.indexed_reads.append((rs.index, token))
        core.advance(rd)
        events.advanced(core, rd)
        self._serve_reads()
        events.finished(core, rd)

    def _apply(self, entry: Entry) -> None:
        if entry.index <= self.machine.applied_index:
            # The machine holds it already: a durable state reopened after a
            # restart is at its last flush, past the stored snapshot's index
            # (etcd's consistent index), and the core hands those entries out
            # again.
            return
        if entry.kind is EntryKind.NORMAL:
            result = self.machine.apply(entry.index, entry.data)
        else:
            self.machine.apply_noop(entry.index)
            result = None
        self.events.applied(entry, result)
        pending = self.proposals.pop(entry.index, None)
        if pending is not None:
            term, token = pending
            if term == entry.term:
                self.events.proposal_done(token, result, entry.index)
            else:
                self.events.proposal_failed(token, Replaced("the entry was replaced by a new leader's"))

    def _serve_reads(self) -> None:
        if not self.indexed_reads:
            return
        applied = self.machine.applied_index
        waiting: List[Tuple[int, Any]] = []
        for index, token in self.indexed_reads:
            if index <= applied:
                self.events.read_ready(token)
            else:
                waiting.append((index, token))
        self.indexed_reads = waiting

    # ------------------------------------------------------------ for the embedder
    def take_waiting_reads(self) -> List[Tuple[bytes, Any]]:
        """Forget the reads still waiting for an index (a new leadership drops them) and return them."""
        waiting, self.reads = list(self.reads.items()), {}
        return waiting
