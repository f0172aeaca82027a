# -*- test-case-name: tests.sim.test_sim -*-
"""
The simulated disk of one node.

Each Ready becomes one write (hard state, snapshot, entries), applied
atomically like one LMDB transaction.  Writes are first only *written*; a
``sync`` makes everything written so far durable.  A crash keeps the synced
image and, of the writes not yet synced, a random prefix (the device may
have flushed some of them on its own; writes land in order and whole): what
the core did not ask to have synced may or may not survive, and nothing else
does.  A restarted node is rebuilt from ``load()`` only.

A node whose applied state is durable (kvd.sim.state, ``attach_state``)
keeps it in the same image: every write carries the state's ``flush`` (and
the write that persists a received snapshot its ``install``), the state's
staging writes are writes of their own, and each is applied to ``visible``
(what the node reads back, LMDB's committed pages) when written and to
``image`` (the durable state) when it survives, so the state shares the fate
of the write it rode on.

The durable image itself is checked as it changes: the durable term never
goes back, the durable vote never changes within a term (one vote per term),
and the durable commit index never goes back; the durable applied state is
never ahead of the durable commit index (unless it was received whole from a
leader, at its received index) nor behind the durable snapshot, and a
snapshot is only installed from a complete stream.

It implements the Raft core's ``Storage`` protocol (kvd.raft.storage), the
same method shapes as the LMDB store, so the one Ready loop (kvd.replica)
runs on it.  A synced write may take simulated time (a slow disk): its
``done`` then comes later, from the cluster's event queue, unless a crash
came first, in which case it never comes.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, List, Optional, Sequence, Tuple

from kvd.raft.messages import Entry, HardState, Snapshot
from kvd.raft.storage import Restored
from kvd.sim.invariants import Violation

Write = Tuple[Optional[HardState], Optional[Snapshot], List[Entry], list]  # ..., the state's ops


class SimDisk:
    def __init__(self, node_id: str, rng: random.Random, sync_delay_max: int = 0,
                 schedule: Optional[Callable[..., None]] = None):
        self.node_id = node_id
        self.rng = rng
        self.sync_delay_max = sync_delay_max  # 0: syncs are instant
        self.schedule = schedule  # schedule(delay, fn, *args): the cluster's event queue, for slow syncs
        self.epoch = 0  # a crash starts a new one: completions of the old one never come
        # The durable image.
        self.hard_state = HardState()
        self.snapshot: Optional[Snapshot] = None
        self.entries: List[Entry] = []  # contiguous, starting after the snapshot
        # Written, not yet synced, oldest first.
        self.pending: List[Write] = []
        self.writes = 0
        self.syncs = 0
        # The durable applied state (kvd.sim.state), if the node keeps one.
        self.state = None  # the SimState of the running node
        self.image = None  # StateImage: durable
        self.visible = None  # StateImage: as written (what the node reads)
        self.lost_flushes = 0  # unsynced writes carrying a state flush that a crash lost
        self.lost_staging = 0  # unsynced staging writes that a crash lost
        #: False: a snapshot is stored without its data, as kvd.store.lmdb stores it beside a state on disk.
        self.keep_snapshot_data = True

    def attach_state(self, state) -> None:
        """The running node's durable keyspace; its image starts empty on a new disk."""
        from kvd.sim.state import StateImage

        if self.image is None:
            self.image = StateImage()
            self.visible = StateImage()
        self.state = state

    # ----------------------------------------------------------- Storage (kvd.raft.storage)
    def load(self) -> Restored:
        assert not self.pending, "load() with writes in flight"
        return Restored(self.hard_state, self.snapshot, list(self.entries))

    def write(self, hard_state: Optional[HardState], entries: Sequence[Entry], snapshot: Optional[Snapshot],
              sync: bool, done: Callable[[], None]) -> None:
        self.put(hard_state, snapshot, entries)
        if not sync:
            done()
            return
        delay = self.sync_delay()
        if not delay:
            self.sync()
            done()
            return
        self.schedule(delay, self._synced_later, self.epoch, done)

    def _synced_later(self, epoch: int, done: Callable[[], None]) -> None:
        if epoch != self.epoch:
            return  # the node crashed meanwhile: what was written is gone, or partly kept by crash()
        self.sync()
        done()

    def compact(self, snap: Snapshot, done: Optional[Callable[..., None]] = None) -> None:
        """A snapshot taken by compaction: written and synced at once, then the log before it is dropped."""
        self.writes += 1
        self.pending.append((None, snap, [], self._state_ops(None, force_flush=True)))
        self._state_committed(None)
        self.sync()
        if done is not None:
            done()

    # ----------------------------------------------------------- the image, piece by piece
    def put(self, hard_state: Optional[HardState], snapshot: Optional[Snapshot], entries: Sequence[Entry]) -> None:
        """Written, not yet synced."""
        if hard_state is None and snapshot is None and not entries:
            return
        self.writes += 1
        self.pending.append((hard_state, snapshot, list(entries), self._state_ops(snapshot)))
        self._state_committed(snapshot)

    def put_state(self, ops: list) -> None:
        """A write of the state's own (a staging write), not synced."""
        self.visible_apply(ops)
        self.pending.append((None, None, [], ops))

    def _state_ops(self, installed: Optional[Snapshot], force_flush: bool = False) -> list:
        """What the state adds to a write (in its transaction, as kvd.store.lmdb does): its flush, an install."""
        state = self.state
        if state is None:
            return []
        ops: list = []
        if state.loaded:
            state.flush(ops, force=force_flush)
        if installed is not None:
            state.install(ops, installed.data)
        self.visible_apply(ops)
        return ops

    def _state_committed(self, installed: Optional[Snapshot]) -> None:
        state = self.state
        if state is None:
            return
        if state.loaded:
            state.committed()
        if installed is not None:
            state.installed()

    def visible_apply(self, ops: list) -> None:
        for op in ops:
            self.visible.apply(op, self.node_id, False)

    def sync_delay(self) -> int:
        """How long the next sync takes (time units)."""
        if not self.sync_delay_max:
            return 0
        return self.rng.randint(1, self.sync_delay_max)

    def sync(self) -> None:
        self.syncs += 1
        for w in self.pending:
            self._make_durable(w)
        self.pending = []

    # ----------------------------------------------------------- faults
    def crash(self) -> int:
        """Lose what was not synced, except a random prefix of whole writes; returns how many were lost."""
        keep = self.rng.randint(0, len(self.pending))
        for w in self.pending[:keep]:
            self._make_durable(w)
        lost = len(self.pending) - keep
        for w in self.pending[keep:]:
            for op in w[3]:
                if op[0] == "flush":
                    self.lost_flushes += 1
                elif op[0].startswith("stage"):
                    self.lost_staging += 1
        self.pending = []
        self.epoch += 1
        if self.image is not None:
            self.visible = self.image.copy()  # what was written and not kept is gone
            self.state = None
        return lost

    def last_index(self) -> int:
        base = self.snapshot.index if self.snapshot else 0
        return base + len(self.entries)

    # ----------------------------------------------------------- the image
    def _make_durable(self, w: Write) -> None:
        hs, snap, entries, ops = w
        if snap is not None:
            if self.snapshot is not None and snap.index < self.snapshot.index:
                raise Violation("disk", "%s: durable snapshot moves back from %d to %d" % (self.node_id, self.snapshot.index, snap.index))
            # Keep the entries after the snapshot only if they continue it.
            keep = [e for e in self.entries if e.index > snap.index]
            if keep and not (keep[0].index == snap.index + 1 and self._term_at(snap.index) == snap.term):
                keep = []
            self.entries = keep
            self.snapshot = snap if self.keep_snapshot_data or not snap.data else dataclasses.replace(snap, data=b"")
            if snap.index > self.hard_state.commit:
                # A snapshot holds only committed state: it carries the commit index with it.
                self.hard_state = HardState(self.hard_state.term, self.hard_state.vote, snap.index)
        if entries:
            first = entries[0].index
            base = self.snapshot.index if self.snapshot else 0
            if first <= base:
                raise Violation("disk", "%s: write replaces entry %d inside the snapshot (%d)" % (self.node_id, first, base))
            if first > self.last_index() + 1:
                raise Violation("disk", "%s: write at %d leaves a gap after %d" % (self.node_id, first, self.last_index()))
            del self.entries[first - base - 1 :]
            self.entries.extend(entries)
        if hs is not None:
            old = self.hard_state
            if hs.term < old.term:
                raise Violation("disk", "%s: durable term moves back from %d to %d" % (self.node_id, old.term, hs.term))
            if hs.term == old.term and old.vote is not None and hs.vote != old.vote:
                raise Violation(
                    "one vote per term",
                    "%s: durable vote in term %d changes from %s to %s" % (self.node_id, hs.term, old.vote, hs.vote),
                )
            if hs.commit < old.commit:
                raise Violation("durable commit", "%s: durable commit index moves back from %d to %d" % (self.node_id, old.commit, hs.commit))
            self.hard_state = hs
        if ops:
            for op in ops:
                self.image.apply(op, self.node_id, True)
            self._check_state()

    def _check_state(self) -> None:
        """The durable applied state against the durable log."""
        image = self.image
        live = image.slots[image.live]
        snap_index = self.snapshot.index if self.snapshot is not None else 0
        if live.applied > max(self.hard_state.commit, snap_index, live.base):
            raise Violation("durable state", "%s: the state on disk is applied to %d, the durable commit index is %d"
                            % (self.node_id, live.applied, self.hard_state.commit))
        if live.applied < snap_index:
            raise Violation("durable state", "%s: the state on disk is applied to %d, behind the durable snapshot at %d"
                            % (self.node_id, live.applied, snap_index))

    def _term_at(self, index: int) -> Optional[int]:
        base = self.snapshot.index if self.snapshot else 0
        if self.snapshot is not None and index == base:
            return self.snapshot.term
        if base < index <= self.last_index():
            return self.entries[index - base - 1].term
        return None
