# -*- test-case-name: tests.wire.test_snapshots -*-
"""
Snapshots streamed between peers, never held whole in memory on either side.

When the Raft core sends ``InstallSnapshot`` with empty data, the state is
on the sender's disk (kvd.store.state): the transport then opens a
consistent read of it (``source(min_index)``, a stream with ``read(n)``) and
sends it on its connection to the peer as ``SnapshotBegin``, a run of
``SnapshotData`` pieces of at most ``PIECE_BYTES``, and ``SnapshotEnd`` with
the record count and checksum.  These are request/response commands and at
most ``WINDOW`` pieces are unanswered at once, so the stream is flow
controlled by the receiver's pace and heartbeats interleave with it on the
same connection (they never wait behind more than ``WINDOW`` pieces).

The receiver writes the pieces into its staging area (``sink.begin(id)``:
``feed``, ``finish(count, crc) -> token``, ``abort``); once ``finish`` has
verified the whole, it hands the core the ``InstallSnapshot`` message the
stream began with, its data now the token naming the staged state, and the
storage swaps it in when the core persists the snapshot.

One stream per peer at a time: the core asks again (its snapshot retry)
while a long stream is still running, and those asks are ignored.  A stream
that breaks (connection lost, the receiver refuses: busy, a bad record) is
logged and dropped; the core's retry starts a new one.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Dict, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp

from kvd.raft.messages import InstallSnapshot, Message
from kvd.wire.codec import SnapshotArgument

#: Bytes of stream per SnapshotData box (under AMP's 64 KiB value cap).
PIECE_BYTES = 60 * 1024
#: SnapshotData boxes sent and not yet answered, per stream.
WINDOW = 16

_log = Logger()


class StreamRefused(Exception):
    """The receiver will not take (or go on with) this stream; the description says why."""


class SnapshotBegin(amp.Command):
    commandName = b"SnapshotBegin"
    arguments = [(b"stream_id", amp.Integer()), (b"term", amp.Integer()), (b"snapshot", SnapshotArgument())]
    response: list = []
    errors = {StreamRefused: b"STREAM_REFUSED"}


class SnapshotData(amp.Command):
    commandName = b"SnapshotData"
    arguments = [(b"stream_id", amp.Integer()), (b"data", amp.String())]
    response: list = []
    errors = {StreamRefused: b"STREAM_REFUSED"}


class SnapshotEnd(amp.Command):
    commandName = b"SnapshotEnd"
    arguments = [(b"stream_id", amp.Integer()), (b"count", amp.Integer()), (b"crc", amp.Integer())]
    response: list = []
    errors = {StreamRefused: b"STREAM_REFUSED"}


STREAM_COMMANDS = frozenset({SnapshotBegin.commandName, SnapshotData.commandName, SnapshotEnd.commandName})


def new_stream_id(rng=random.SystemRandom()) -> int:
    # Random, so that a restarted sender never reuses the id of a stream the receiver staged.
    return rng.getrandbits(63)


class SnapshotSender:
    """Streams one snapshot to one peer over ``protocol`` (an AMP connection whose far end receives)."""

    def __init__(self, protocol: amp.AMP, message: InstallSnapshot, stream, stream_id: int) -> None:
        self.protocol = protocol
        self.message = message
        self.stream = stream
        self.stream_id = stream_id
        self.sent_bytes = 0
        self._inflight = 0
        self._ending = False
        self._failed = False
        self.done: Deferred = Deferred()

    def start(self) -> Deferred:
        snapshot = dataclasses.replace(self.message.snapshot, data=b"")
        begun = self.protocol.callRemote(SnapshotBegin, stream_id=self.stream_id, term=self.message.term, snapshot=snapshot)
        begun.addCallbacks(lambda _: self._pump(), self._fail)
        return self.done

    def _pump(self) -> None:
        while not self._failed and self._inflight < WINDOW and not self.stream.done:
            try:
                piece = self.stream.read(PIECE_BYTES)
            except Exception as e:
                self._fail(e)
                return
            if not piece:
                break
            self._inflight += 1
            self.sent_bytes += len(piece)
            sent = self.protocol.callRemote(SnapshotData, stream_id=self.stream_id, data=piece)
            sent.addCallbacks(self._acked, self._fail)
        if self.stream.done and self._inflight == 0 and not self._ending and not self._failed:
            self._ending = True
            ended = self.protocol.callRemote(SnapshotEnd, stream_id=self.stream_id, count=self.stream.count, crc=self.stream.crc)
            ended.addCallbacks(self._ended, self._fail)

    def _acked(self, _) -> None:
        self._inflight -= 1
        self._pump()

    def _ended(self, _) -> None:
        self.stream.close()
        if not self.done.called:
            self.done.callback(self.sent_bytes)

    def _fail(self, failure) -> None:
        if self._failed:
            return None
        self._failed = True
        self.stream.close()
        if not self.done.called:
            self.done.errback(failure)
        return None


class SnapshotReceiver:
    """One connection's incoming stream, if any: the responders of the three commands."""

    def __init__(self, sink, deliver: Callable[[Message], None], local_id: str) -> None:
        self.sink = sink
        self.deliver = deliver
        self.local_id = local_id
        self._stream_id: Optional[int] = None
        self._writer = None
        self._message: Optional[InstallSnapshot] = None

    def begin(self, peer_id: str, stream_id: int, term: int, snapshot) -> Dict[str, Any]:
        if self.sink is None:
            raise StreamRefused("this node does not take streamed snapshots")
        self.abort()
        try:
            writer = self.sink.begin(stream_id)
        except Exception as e:
            raise StreamRefused(f"{type(e).__name__}: {e}") from None
        self._stream_id, self._writer = stream_id, writer
        self._message = InstallSnapshot(term, peer_id, self.local_id, snapshot)
        _log.info("receiving a snapshot at index {index} from {peer} (stream {stream})",
                  index=snapshot.index, peer=peer_id, stream=stream_id)
        return {}

    def data(self, stream_id: int, data: bytes) -> Dict[str, Any]:
        writer = self._current(stream_id)
        try:
            writer.feed(data)
        except Exception as e:
            self.abort()
            raise StreamRefused(f"{type(e).__name__}: {e}") from None
        return {}

    def end(self, stream_id: int, count: int, crc: int) -> Dict[str, Any]:
        writer = self._current(stream_id)
        message = self._message
        try:
            token = writer.finish(count, crc)
        except Exception as e:
            self.abort()
            raise StreamRefused(f"{type(e).__name__}: {e}") from None
        self._stream_id = self._writer = self._message = None
        self.deliver(dataclasses.replace(message, snapshot=dataclasses.replace(message.snapshot, data=token)))
        return {}

    def _current(self, stream_id: int):
        if self._writer is None or stream_id != self._stream_id:
            raise StreamRefused(f"no stream {stream_id} in progress on this connection")
        return self._writer

    def abort(self) -> None:
        """The connection went, or a new stream replaces this one."""
        if self._writer is not None:
            self._writer.abort()
        self._stream_id = self._writer = self._message = None
