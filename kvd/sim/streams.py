# -*- test-case-name: tests.sim.test_durable -*-
"""
Snapshots streamed between simulated nodes, as kvd.wire.snapshots streams
them between real ones.

When the core of a node with a durable state (kvd.sim.state) sends an
``InstallSnapshot`` (any, as the node's transport streams every one; only
with empty data under ``SimOptions(stream_any_snapshot=False)``, the rule
before 60883da), the sender opens a consistent read of
its state (``open_stream``; the snapshot it sends is at the index that
state has reached, ``RaftCore.snapshot_at``, as the node's source does) and
the stream travels over one simulated connection: a *begin*, pieces of at
most ``piece_bytes``, an *end* with the record count and checksum, each
answered by the receiver, at most ``window`` pieces unanswered.  Each frame
and each answer is a message of the simulated network (its delay drawn
there, held in order as TCP does); one that is lost or cut by a partition
breaks the connection, and so does a crash of either end: the stream is
abandoned on both sides (the receiver's writer aborted) and the core's
snapshot retry starts a new one.  The receiver writes the pieces into its
staging slot (``begin`` -> writer: ``feed``, ``finish``); a refusal
(``StagingBusy``, a writer replaced by a newer stream) breaks the stream too.
Once finished, the receiver's core is handed the ``InstallSnapshot``, its
data now the token naming the staged state.

One stream per (sender, receiver) at a time: the core's retries while one
runs are ignored, as the node's transport ignores them.  Frames are taken
even while the receiver's loop is busy or paused (as if the transport ran
beside a stalled loop): the token may then wait in the loop's inbox while
another stream begins, which ``StagingBusy`` refuses.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Dict, Optional, Tuple

from kvd.raft.messages import InstallSnapshot
from kvd.sim.state import StagingBusy, StateError


class _Stream:
    __slots__ = ("id", "message", "source", "src_incarnation", "dst_incarnation", "writer", "inflight", "ending",
                 "last_arrival", "pieces", "broken")

    def __init__(self, stream_id: int, message: InstallSnapshot, source, src_incarnation: int) -> None:
        self.id = stream_id
        self.message = message
        self.source = source
        self.src_incarnation = src_incarnation
        self.dst_incarnation: Optional[int] = None
        self.writer = None
        self.inflight = 0
        self.ending = False
        self.last_arrival = 0
        self.pieces = 0
        self.broken = False


class SimStreams:
    def __init__(self, cluster, rng: random.Random, piece_bytes: int, window: int) -> None:
        self.cluster = cluster
        self.rng = rng
        self.piece_bytes = piece_bytes
        self.window = window
        self.active: Dict[Tuple[str, str], _Stream] = {}

    # ------------------------------------------------------------ the sender
    def start(self, m: InstallSnapshot) -> None:
        c = self.cluster
        key = (m.src, m.dst)
        if key in self.active:
            c.stats["stream_retries_ignored"] += 1
            return
        src = c.nodes[m.src]
        try:
            source = src.state.open_stream(m.snapshot.index)
        except StateError as e:
            c.event(m.src, "stream", "cannot read a snapshot for %s: %s" % (m.dst, e))
            return
        # As the node's source does (NodeService.open_snapshot_stream): the stream is a snapshot
        # at the index its state has reached, not the core's older one.
        try:
            m = dataclasses.replace(m, snapshot=src.core.snapshot_at(source.applied_index))
        except ValueError as e:
            source.close()
            c.event(m.src, "stream", "no snapshot at the state's index for %s: %s" % (m.dst, e))
            return
        s = self.active[key] = _Stream(self.rng.getrandbits(63), m, source, src.incarnation)
        c.stats["streams"] += 1
        c.event(m.src, "stream", "%d to %s: snapshot %d, state at %d" % (s.id % 1000, m.dst, m.snapshot.index, source.applied_index))
        c.stream_started(src, c.nodes.get(m.dst), s)
        self._frame(s, "begin", None)

    def _frame(self, s: _Stream, kind: str, payload) -> None:
        """Send one frame of the stream to the receiver (in order, or the connection breaks)."""
        m = s.message
        if kind == "data":
            s.inflight += 1
        self._hop(s, m.src, m.dst, self._arrive, kind, payload)

    def _hop(self, s: _Stream, src: str, dst: str, fn, *args) -> None:
        c = self.cluster
        times = c.net.plan(src, dst, c.now)
        if not times:
            self._break(s, "connection lost (%s>%s)" % (src, dst))
            return
        at = max(times[0], s.last_arrival)  # TCP: in order, never twice
        s.last_arrival = at
        c.schedule(at - c.now, fn, s, *args)

    def _alive(self, s: _Stream) -> bool:
        """Both ends up in the incarnations the stream began with, and the link open both ways."""
        c = self.cluster
        m = s.message
        if s.broken or self.active.get((m.src, m.dst)) is not s:
            return False
        src, dst = c.nodes.get(m.src), c.nodes.get(m.dst)
        if src is None or not src.up or src.incarnation != s.src_incarnation:
            self._break(s, "the sender went down")
            return False
        if dst is None or not dst.up or (s.dst_incarnation is not None and dst.incarnation != s.dst_incarnation):
            self._break(s, "the receiver went down")
            return False
        if not c.net.connected(m.src, m.dst) or not c.net.connected(m.dst, m.src):
            self._break(s, "partitioned")
            return False
        return True

    def _answered(self, s: _Stream, kind: str) -> None:
        if not self._alive(s):
            return
        if kind == "data":
            s.inflight -= 1
        elif kind == "end":
            del self.active[(s.message.src, s.message.dst)]
            s.source.close()
            return
        self._pump(s)

    def _pump(self, s: _Stream) -> None:
        while s.inflight < self.window and not s.source.done:
            piece = s.source.read(self.piece_bytes)
            s.pieces += 1
            self._frame(s, "data", piece)
            if s.broken:
                return
        if s.source.done and s.inflight == 0 and not s.ending:
            s.ending = True
            self._frame(s, "end", (s.source.count, s.source.crc))

    # ------------------------------------------------------------ the receiver
    def _arrive(self, s: _Stream, kind: str, payload) -> None:
        if not self._alive(s):
            return
        c = self.cluster
        m = s.message
        dst = c.nodes[m.dst]
        try:
            if kind == "begin":
                s.dst_incarnation = dst.incarnation
                s.writer = dst.state.begin(s.id)
            elif kind == "data":
                s.writer.feed(payload)
                c.stats["stream_pieces"] += 1
            else:
                token = s.writer.finish(*payload)
        except StagingBusy:
            c.stats["staging_busy"] += 1
            self._break(s, "refused: a received snapshot awaits its install")
            return
        except StateError as e:
            self._break(s, "refused: %s" % e)
            return
        if kind == "end":
            s.writer = None
            c.stats["streams_done"] += 1
            message = dataclasses.replace(m, snapshot=dataclasses.replace(m.snapshot, data=token))
            c.event(m.dst, "staged", "stream %d from %s complete (state at %d)" % (s.id % 1000, m.src, s.source.applied_index))
            c.stream_completed(dst)
            dst.input(lambda core: core.step(message))
        self._hop(s, m.dst, m.src, self._answered, kind)

    # ------------------------------------------------------------ breaks
    def _break(self, s: _Stream, why: str) -> None:
        if s.broken:
            return
        s.broken = True
        m = s.message
        if self.active.get((m.src, m.dst)) is s:
            del self.active[(m.src, m.dst)]
        if s.writer is not None:
            s.writer.abort()  # the receiver sees its connection go
            s.writer = None
        s.source.close()
        self.cluster.stats["streams_broken"] += 1
        self.cluster.event(m.src, "stream", "%d to %s broke off after %d pieces: %s" % (s.id % 1000, m.dst, s.pieces, why))

    def node_down(self, node_id: str) -> int:
        """A node crashed: every stream from or to it breaks; returns how many it was receiving mid-way."""
        mid = 0
        for key in sorted(self.active):
            s = self.active[key]
            if node_id in key:
                if key[1] == node_id and s.writer is not None:
                    mid += 1
                self._break(s, "%s crashed" % node_id)
        return mid

    def sending(self, node_id: str) -> bool:
        return any(src == node_id for src, _ in self.active)
