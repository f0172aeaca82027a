"""
Snapshots streamed between peers (kvd.wire.snapshots over kvd.wire.peers):
flow-controlled pieces from the sender's source into the receiver's sink,
the InstallSnapshot reaching the core only once the whole stream is checked.
"""

from __future__ import annotations

import dataclasses
import random

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock

from kvd.raft import messages as m
from kvd.raft.messages import Configuration, Snapshot
from kvd.wire import snapshots
from tests.wire.test_peers import Node, accept, link_up


class Source:
    """A stream of ``size`` random bytes, read as the state's stream is."""

    def __init__(self, size: int, seed: int = 1):
        self.data = random.Random(seed).randbytes(size)
        self.pos = 0
        self.done = False
        self.count = 0
        self.crc = 0
        self.closed = False
        self.applied_index = 99
        self.reads = 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        piece = self.data[self.pos:self.pos + n]
        self.pos += len(piece)
        self.count += 1 if piece else 0
        self.crc = (self.crc + len(piece)) & 0xFFFFFFFF
        if self.pos >= len(self.data):
            self.done = True
        return piece

    def close(self):
        self.closed = True


class Sink:
    def __init__(self, busy=False):
        self.busy = busy
        self.writers = []

    def begin(self, stream_id):
        if self.busy:
            raise RuntimeError("busy")
        writer = Writer(stream_id)
        self.writers.append(writer)
        return writer


class Writer:
    def __init__(self, stream_id):
        self.stream_id = stream_id
        self.received = bytearray()
        self.pieces = 0
        self.aborted = False

    def feed(self, data):
        self.pieces += 1
        self.received += data

    def finish(self, count, crc):
        if count != self.pieces or crc != len(self.received) & 0xFFFFFFFF:
            raise ValueError("count or crc differ")
        return b"token-%d" % self.stream_id

    def abort(self):
        self.aborted = True


def nodes(reactor, source, sink):
    a = Node("a", reactor, snapshot_source=lambda index: (dataclasses.replace(SNAP, index=source.applied_index), source))
    b = Node("b", reactor, snapshot_sink=sink)
    return a, b


SNAP = Snapshot(index=90, term=3, config=Configuration.make(voters={"a": "x", "b": "y"}), data=b"")


def test_a_snapshot_crosses_as_a_flow_controlled_stream():
    reactor = MemoryReactorClock()
    source, sink = Source(5 * snapshots.PIECE_BYTES * snapshots.WINDOW // 2 + 17), Sink()
    a, b = nodes(reactor, source, sink)
    pump = link_up(reactor, a, b)
    install = m.InstallSnapshot(term=3, src="a", dst="b", snapshot=SNAP)
    a.transport.send(install)
    # Nothing is answered yet: no more than WINDOW pieces were read and sent.
    assert source.reads <= snapshots.WINDOW + 1
    a.transport.send(install)  # the core asks again meanwhile: the running stream answers it
    assert a.transport.streaming_to() == ["b"] and a.transport.recent_streams() == {"b": 99}
    pump.flush()
    writer = sink.writers[0]
    assert bytes(writer.received) == source.data and source.closed
    # At the index the stream's state has reached (99), past the core's snapshot (90).
    assert b.received == [m.InstallSnapshot(term=3, src="a", dst="b", snapshot=Snapshot(99, 3, SNAP.config, b"token-%d" % writer.stream_id))]
    assert a.transport.streaming_to() == [] and len(sink.writers) == 1
    # The log is kept from the streamed index a while longer: the receiver goes on from there.
    assert a.transport.recent_streams() == {"b": 99}
    reactor.advance(11)
    assert a.transport.recent_streams() == {}


def test_a_refusing_receiver_ends_the_stream_and_the_core_may_ask_again():
    reactor = MemoryReactorClock()
    source, sink = Source(1000), Sink(busy=True)
    a, b = nodes(reactor, source, sink)
    pump = link_up(reactor, a, b)
    a.transport.send(m.InstallSnapshot(term=3, src="a", dst="b", snapshot=SNAP))
    pump.flush()
    assert b.received == [] and a.transport.streaming_to() == [] and source.closed


def test_a_lost_connection_aborts_the_staged_stream():
    reactor = MemoryReactorClock()
    source, sink = Source(50 * snapshots.PIECE_BYTES), Sink()
    a, b = nodes(reactor, source, sink)
    assert a.transport.dial("b")
    pump = accept(reactor, b.server, flush=False)
    pump.flush()
    a.transport.send(m.InstallSnapshot(term=3, src="a", dst="b", snapshot=SNAP))
    pump._move(pump.client_transport, pump.server)  # the first window of pieces only
    pump.close(error.ConnectionLost("cut"))
    assert sink.writers and sink.writers[0].aborted
    assert b.received == []


def test_a_plain_install_snapshot_to_a_node_with_state_on_disk_is_refused():
    """A peer cannot make a node install a snapshot that was not streamed and checked into its staging."""
    reactor = MemoryReactorClock()
    a = Node("a", reactor)  # no source: sends the snapshot as one message
    b = Node("b", reactor, snapshot_sink=Sink())
    pump = link_up(reactor, a, b)
    a.transport.send(m.InstallSnapshot(term=3, src="a", dst="b", snapshot=Snapshot(90, 3, SNAP.config, b"kvd-stream:xxxxxxxx")))
    pump.flush()
    assert b.received == []
    assert not a.transport.is_connected("b")
