# -*- test-case-name: tests.wire.test_peers -*-
"""
The peer transport: Raft messages, forwarded commands and join requests
between the nodes of one cluster, over AMP on TCP.

Each node keeps one persistent *outbound* connection per peer
(``ClientService``, capped exponential backoff with jitter) and sends all of
its messages to that peer on it; it receives the peer's messages on the
peer's outbound connection, i.e. one of its own *inbound* connections
(``PeerServerFactory``).  Every connection starts with ``Hello``: the
listener checks the caller's cluster id, node id and protocol version, and
the caller checks that the answer comes from the node it meant to reach.

With ``tls`` (a kvd.wire.tls.PeerTLS) every connection is mutual TLS 1.3 and
a node's id is its certificate's CN: a Hello claiming another id than the
caller's certificate is refused (and displaces nobody), a listener whose
certificate is not the node we dialled is dropped, and since every message's
``src`` must be the Hello's id, it must be the certificate's.  Without it
(``--insecure-peers``) the Hello's claim is all there is.

Sending never blocks and never queues without bound: when a peer's link is
down, or its socket buffer is backed up past ``max_pending_bytes``, the
message is dropped and ``on_unreachable(node_id)`` tells the core (Raft
retransmits).  A peer that breaks the protocol (a message before Hello, a
``src`` that is not the Hello's node id, an unknown command, a malformed
box, too many staged bytes) is logged and disconnected; nothing it sends can
raise into the reactor.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import socket
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from kvd.limits import LIMITS
from kvd.push import push_now
from kvd.raft.messages import InstallSnapshot, Message
from kvd.wire import errors
from kvd.wire.codec import (
    DEFAULT_MAX_STAGED_BYTES,
    MAX_VALUE_LENGTH,
    MESSAGE_COMMANDS_BY_NAME,
    PROTOCOL_VERSION,
    Chunk,
    ChunkAssembler,
    FORWARD_BATCH_BYTES,
    FORWARD_BATCH_ITEM_BYTES,
    Forward,
    ForwardBatch,
    Frame,
    Hello,
    Join,
    MessageDecoder,
    bytes_frames,
    decode_forward_batch,
    decode_forward_outcomes,
    encode_forward_batch,
    encode_forward_outcomes,
    message_frames,
    pack_bytes_blob,
)
from kvd.wire.errors import ForwardError, HelloRefused, ProtocolViolation
from kvd.wire.snapshots import (
    STREAM_COMMANDS, SnapshotBegin, SnapshotData, SnapshotEnd, SnapshotReceiver, SnapshotSender, new_stream_id,
)
from kvd.wire.tls import PeerTLS, is_tls, peer_identity

Address = Tuple[str, int]

#: Bytes a peer's connection may accept while its transport has paused us.
DEFAULT_MAX_PENDING_BYTES = 8 * 1024 * 1024
#: Largest forwarded payload or result (each side stages it whole; kvd.limits: at least one log entry).
DEFAULT_MAX_FORWARD_BYTES = LIMITS.forward_bytes
#: Seconds after a snapshot stream ends during which the log is still kept from its index on
#: (the receiver installs it, answers, and is then sent the entries after it).
STREAM_FLOOR_HOLD_S = 10.0
#: Seconds written data may stay unacknowledged before the kernel drops the
#: connection (TCP_USER_TIMEOUT, Linux).
DEFAULT_TCP_USER_TIMEOUT = 10.0

_log = Logger()


def tune_socket(transport, user_timeout: float) -> None:
    """
    Make a dead peer show up as a lost connection within ``user_timeout``
    seconds instead of TCP's default of many minutes of retransmissions; after
    a network partition heals the link then comes back through a reconnect
    rather than waiting out a long retransmission backoff.  An application
    ping would misfire behind a large snapshot that is still draining; the
    kernel knows whether bytes are being acknowledged.  No-op where the
    options (or a real socket) are missing.
    """
    if getattr(transport, "wrappedProtocol", None) is not None:
        transport = transport.transport  # TLS: the options belong to the TCP socket underneath
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None or user_timeout <= 0:
        return
    try:
        sock = get_handle()
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout * 1000))
        # Keepalive probes cover idle connections, which have nothing unacknowledged.
        for name, value in (
            ("TCP_KEEPIDLE", max(1, int(user_timeout / 2))),
            ("TCP_KEEPINTVL", max(1, int(user_timeout / 6))),
            ("TCP_KEEPCNT", 3),
        ):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except (OSError, AttributeError, TypeError) as e:
        _log.debug("cannot tune peer socket: {error}", error=e)


def _box_size(frames: List[Frame]) -> int:
    # Two 2-byte length prefixes per key/value pair; close enough to bound memory.
    return sum(len(k) + len(v) + 4 for _, box in frames for k, v in box.items()) + 16 * len(frames)


class _PeerProtocol(amp.AMP):
    """What both ends of a peer connection share: chunk staging, output bounding, violation handling."""

    log = Logger()

    #: Whether Raft message commands are accepted on this side.
    accepts_messages = False
    #: Request/response commands served on this side.  Everything else AMP
    #: would answer (StartTLS!) is refused as unknown.
    request_commands: frozenset = frozenset()

    def __init__(
        self, local_id: str, max_staged_bytes: int, max_pending_bytes: int, tcp_user_timeout: float
    ) -> None:
        super().__init__()
        self.local_id = local_id
        self._tcp_user_timeout = tcp_user_timeout
        #: The remote node id, once the Hello exchange has succeeded.
        self.peer_id: Optional[str] = None
        self._decoder = MessageDecoder(ChunkAssembler(max_bytes=max_staged_bytes))
        self._blob_ids = itertools.count(1)
        self._max_pending_bytes = max_pending_bytes
        self._paused = False
        self._pending_bytes = 0
        self._dropping = False

    # ------------------------------------------------------ connection

    def connectionMade(self) -> None:
        super().connectionMade()
        # Small boxes must not wait for Nagle: Raft is latency-bound.
        for option in ("setTcpNoDelay", "setTcpKeepAlive"):
            setter = getattr(self.transport, option, None)
            if setter is not None:
                setter(True)
        tune_socket(self.transport, self._tcp_user_timeout)
        # As a streaming producer we learn when the socket buffer backs up.  Under TLS, of the TCP
        # socket's: TLS would hold off every close (ours, AMP's after a fatal error) until the
        # producer is unregistered, and what it buffers itself is bounded (64 kB).
        underneath = self.transport
        if getattr(underneath, "wrappedProtocol", None) is not None and underneath.transport is not None:
            underneath = underneath.transport
        underneath.registerProducer(self, True)

    def connectionLost(self, reason: Failure) -> None:
        self._decoder.assembler.clear()
        super().connectionLost(reason)

    @property
    def certified_id(self) -> Optional[str]:
        """The node id the peer's verified certificate names; None on a plaintext connection."""
        return peer_identity(self.transport) if self.transport is not None else None

    @property
    def peer_label(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        host = getattr(address, "host", "?")
        port = getattr(address, "port", "?")
        return f"{self.peer_id or '?'}@{host}:{port}"

    def drop(self) -> None:
        """Close this connection after what is already written; read nothing more from it."""
        if self._dropping:
            return
        self._dropping = True
        if self.transport is not None:
            self.transport.loseConnection()

    # ------------------------------------------------- IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True
        self._pending_bytes = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._pending_bytes = 0

    def stopProducing(self) -> None:
        self._paused = True

    # ----------------------------------------------------------- output

    def _can_write(self) -> bool:
        return not self._dropping and self.transport is not None

    def push_now(self) -> None:
        """Hand what is buffered to the kernel now (kvd.push): a batch leaves before the Ready's disk write."""
        push_now(self.transport)

    def write_frames(self, frames: List[Frame], bounded: bool) -> bool:
        """
        Write boxes as one-way commands.  ``bounded`` frames are dropped
        (returning False) when the socket is backed up past the pending limit.
        """
        if not self._can_write():
            return False
        if bounded and self._paused:
            size = _box_size(frames)
            if self._pending_bytes + size > self._max_pending_bytes:
                return False
            self._pending_bytes += size
        for name, box in frames:
            # No argument may be called "command" or "requiresAnswer" (the
            # codec tests check): they would collide with this signature.
            self.callRemoteString(name, False, **{k.decode("ascii"): v for k, v in box.items()})
        return True

    def next_blob_id(self) -> int:
        return next(self._blob_ids)

    def send_big_bytes(self, data: bytes) -> int:
        """Send ``data`` as chunks; return the blob id that names it."""
        blob_id = self.next_blob_id()
        self.write_frames(bytes_frames(pack_bytes_blob(data), blob_id), bounded=False)
        return blob_id

    # ------------------------------------------------------------ input

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        if self._dropping:
            return
        try:
            super().ampBoxReceived(box)
        except Exception:
            # An answer to nothing we asked, a box with no command...
            self.log.failure("dropping connection {peer}: cannot handle box", peer=self.peer_label)
            self.drop()

    def lengthLimitExceeded(self, length: int) -> None:
        self.log.warn(
            "dropping connection {peer}: a key of {length} bytes breaks AMP framing",
            peer=self.peer_label,
            length=length,
        )
        self._dropping = True
        super().lengthLimitExceeded(length)

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred:
        name = box.get(amp.COMMAND)
        if name != Hello.commandName and self.peer_id is None:
            self.log.warn(
                "dropping connection {peer}: command {command!r} before a successful Hello",
                peer=self.peer_label,
                command=name,
            )
            self.drop()
            return Deferred()  # never answered: the connection is closing
        responder = self.locateResponder(name)
        if responder is None:
            self.log.warn("dropping connection {peer}: unknown command {command!r}", peer=self.peer_label, command=name)
            self.drop()
            return Deferred()
        result = maybeDeferred(responder, box)
        if amp.ASK not in box:
            result.addErrback(self._one_way_failed, name)
        return result

    def _one_way_failed(self, failure: Failure, name: bytes) -> None:
        if failure.check(ProtocolViolation):
            self.log.warn(
                "dropping connection {peer}: {command!r}: {reason}",
                peer=self.peer_label,
                command=name,
                reason=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "dropping connection {peer}: malformed {command!r} box", failure, peer=self.peer_label, command=name
            )
        self.drop()

    def unhandledError(self, failure: Failure) -> None:
        self.log.failure("dropping connection {peer}: unhandled AMP error", failure, peer=self.peer_label)
        self.drop()

    def locateResponder(self, name: bytes):
        if name == Chunk.commandName:
            return self._chunk_box
        if self.accepts_messages and name in MESSAGE_COMMANDS_BY_NAME:
            return lambda box: self._message_box(name, box)
        if name in self.request_commands:
            return super().locateResponder(name)
        return None

    def _chunk_box(self, box: amp.AmpBox) -> None:
        try:
            args = Chunk.parseArguments(box, self)
        except Exception as e:
            raise ProtocolViolation(f"malformed Chunk box: {e!r}") from None
        message = self._decoder.chunk(args["blob_id"], args["seq"], args["last"], args["data"])
        if message is not None:
            self._deliver(message)

    def _message_box(self, name: bytes, box: amp.AmpBox) -> None:
        self._deliver(self._decoder.message_box(name, box))

    def _deliver(self, message: Message) -> None:
        raise ProtocolViolation(f"unexpected {type(message).__name__} on an outbound connection")


# =================================================================== server


class PeerServerProtocol(_PeerProtocol):
    """The listening end: authenticates the caller, receives its messages, serves Forward and Join."""

    accepts_messages = True
    request_commands = (
        frozenset({Hello.commandName, Forward.commandName, ForwardBatch.commandName, Join.commandName})
        | STREAM_COMMANDS
    )

    def __init__(self, factory: "PeerServerFactory") -> None:
        super().__init__(
            factory.node_id, factory.max_staged_bytes, DEFAULT_MAX_PENDING_BYTES, factory.tcp_user_timeout
        )
        self.factory = factory
        self._hello_deadline = None
        self._snapshots = SnapshotReceiver(factory.snapshot_sink, self._deliver_streamed, factory.node_id)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)
        clock = self.factory.clock
        if clock is not None and self.factory.hello_timeout_s > 0:
            # A caller that never completes TLS and Hello (a scanner, an attacker holding sockets) goes.
            self._hello_deadline = clock.callLater(self.factory.hello_timeout_s, self._no_hello)

    def _no_hello(self) -> None:
        self._hello_deadline = None
        if self.peer_id is None and not self._dropping:
            self.log.warn(
                "dropping connection {peer}: no Hello within {timeout}s",
                peer=self.peer_label,
                timeout=self.factory.hello_timeout_s,
            )
            self._dropping = True
            if self.transport is not None:
                self.transport.abortConnection()

    def _cancel_hello_deadline(self) -> None:
        if self._hello_deadline is not None and self._hello_deadline.active():
            self._hello_deadline.cancel()
        self._hello_deadline = None

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_hello_deadline()
        self._snapshots.abort()
        self.factory.connections.discard(self)
        if self.peer_id is not None:
            self.log.info("inbound connection from {peer} closed", peer=self.peer_label)
            self.factory.unregister(self)
        super().connectionLost(reason)

    @Hello.responder
    def hello(self, cluster_id: str, node_id: str, protocol_version: int, address: Optional[str] = None) -> Dict[str, Any]:
        factory = self.factory
        if self.peer_id is not None:
            reason = f"second Hello on a connection already opened by {self.peer_id!r}"
        elif protocol_version != PROTOCOL_VERSION:
            reason = f"protocol version {protocol_version} is not {PROTOCOL_VERSION}"
        elif cluster_id != factory.cluster_id:
            reason = f"peer is in cluster {cluster_id!r}, this node is in cluster {factory.cluster_id!r}"
        elif node_id == factory.node_id:
            reason = f"peer claims this node's own id {node_id!r}"
        elif factory.tls_required and not is_tls(self.transport):
            reason = "this node takes peers over TLS only"
        elif factory.tls_required and self.certified_id != node_id:
            # Whatever it claims, the caller is who its certificate says.
            reason = f"Hello claims node id {node_id!r}, the caller's certificate is for {self.certified_id!r}"
        elif not factory.is_known(node_id):
            reason = f"node id {node_id!r} is not a member of cluster {factory.cluster_id!r}"
        else:
            reason = None
        if reason is not None:
            self.log.warn("refusing Hello from {address}: {reason}", address=self.peer_label, reason=reason)
            self._dropping = True  # AMP closes after sending the fatal error
            raise HelloRefused(reason)
        self._cancel_hello_deadline()
        self.peer_id = node_id
        factory.register(self)
        if factory.on_hello is not None:
            factory.on_hello(node_id, address)  # address may be None: the peer is up all the same
        self.log.info("inbound connection from {peer} accepted", peer=self.peer_label)
        return {
            "accepted": True,
            "cluster_id": factory.cluster_id,
            "node_id": factory.node_id,
            "protocol_version": PROTOCOL_VERSION,
        }

    def _deliver_streamed(self, message: Message) -> None:
        self._deliver(message, streamed=True)

    def _deliver(self, message: Message, streamed: bool = False) -> None:
        if isinstance(message, InstallSnapshot) and self.factory.snapshot_sink is not None and not streamed:
            # Our state is on disk: a snapshot is only ever the stream we staged and checked.
            raise ProtocolViolation("a snapshot for a node that keeps its state on disk must come as a stream")
        if message.src != self.peer_id:
            raise ProtocolViolation(f"message claims src {message.src!r} on a connection opened by {self.peer_id!r}")
        if message.dst != self.local_id:
            raise ProtocolViolation(f"message for {message.dst!r} reached {self.local_id!r}")
        try:
            self.factory.on_message(message)
        except Exception:
            # The core's bug, not the peer's: keep the connection.
            self.log.failure("on_message raised for {message!r}", message=message)

    # A snapshot streamed by the leader (kvd.wire.snapshots).
    @SnapshotBegin.responder
    def snapshot_begin(self, stream_id: int, term: int, snapshot) -> Dict[str, Any]:
        return self._snapshots.begin(self.peer_id, stream_id, term, snapshot)

    @SnapshotData.responder
    def snapshot_data(self, stream_id: int, data: bytes) -> Dict[str, Any]:
        return self._snapshots.data(stream_id, data)

    @SnapshotEnd.responder
    def snapshot_end(self, stream_id: int, count: int, crc: int) -> Dict[str, Any]:
        return self._snapshots.end(stream_id, count, crc)

    @Forward.responder
    def forward(self, payload: bytes, blob_id: Optional[int] = None) -> Deferred:
        if blob_id is not None:
            payload = self._decoder.assembler.claim(blob_id)
        handler = self.factory.forward_handler
        if handler is None:
            return fail(ForwardError(errors.INTERNAL, f"node {self.local_id} does not accept forwarded commands"))
        src = self.peer_id
        result = maybeDeferred(handler, src, payload)
        result.addCallbacks(self._forward_result, self._handler_failed, errbackArgs=("forward",))
        return result

    def _forward_result(self, result: bytes) -> Dict[str, Any]:
        result = self._checked_result(result)
        if len(result) <= MAX_VALUE_LENGTH:
            return {"result": result}
        # The chunks precede the answer on the same stream, so they are
        # staged by the time the caller reads it.
        return {"result": b"", "result_blob": self.send_big_bytes(result)}

    def _checked_result(self, result: bytes) -> bytes:
        if not isinstance(result, bytes):
            raise ForwardError(errors.INTERNAL, f"forward handler returned {type(result).__name__}, not bytes")
        if len(result) > self.factory.max_forward_bytes:
            raise ForwardError(errors.TOOBIG, f"result of {len(result)} bytes is over the forwarding limit")
        return result

    @ForwardBatch.responder
    def forward_batch(self, payloads: bytes) -> Deferred:
        """Each payload to the forward handler in order; one answer once every one has its outcome."""
        handler = self.factory.forward_handler
        if handler is None:
            return fail(ForwardError(errors.INTERNAL, f"node {self.local_id} does not accept forwarded commands"))
        try:
            items = decode_forward_batch(payloads)
        except ValueError as e:
            return fail(ForwardError(errors.INTERNAL, f"malformed forward batch: {e}"))
        src = self.peer_id
        answers = []
        for payload in items:
            d = maybeDeferred(handler, src, payload)
            answers.append(d.addCallbacks(self._checked_result, self._handler_failed, errbackArgs=("forward",)))
        return DeferredList(answers, consumeErrors=True).addCallback(self._batch_outcomes)

    def _batch_outcomes(self, results: List[Tuple[bool, Any]]) -> Dict[str, Any]:
        value = encode_forward_outcomes([outcome if ok else outcome.value for ok, outcome in results])
        if len(value) <= MAX_VALUE_LENGTH:
            return {"results": value}
        return {"results": b"", "results_blob": self.send_big_bytes(value)}

    def _handler_failed(self, failure: Failure, what: str) -> Failure:
        if failure.check(ForwardError):
            return failure
        self.log.failure("{what} handler failed for {peer}", failure, what=what, peer=self.peer_label)
        return Failure(ForwardError(errors.INTERNAL, f"{what} failed on {self.local_id}: {failure.getErrorMessage()}"))

    @Join.responder
    def join(self, node_id: str, address: str) -> Deferred:
        handler = self.factory.join_handler
        if handler is None:
            return fail(ForwardError(errors.INTERNAL, f"node {self.local_id} does not accept joins"))
        result = maybeDeferred(handler, node_id, address)
        result.addCallbacks(self._join_result, self._handler_failed, errbackArgs=("join",))
        return result

    def _join_result(self, result: bytes) -> Dict[str, Any]:
        if not isinstance(result, bytes) or len(result) > MAX_VALUE_LENGTH:
            raise ForwardError(errors.INTERNAL, "join handler must return bytes of at most 64 KiB")
        return {"result": result}


class PeerServerFactory(Factory):
    """
    Builds the listening side's protocols.  ``is_known(node_id)`` decides
    who may connect; ``on_message(message)`` receives every Raft message;
    ``forward_handler(src_node_id, payload) -> Deferred[bytes]`` and
    ``join_handler(node_id, address) -> Deferred[bytes]`` serve the
    request/response commands (raising ``ForwardError`` to refuse);
    ``on_hello(node_id, address)`` hears of every accepted peer and the
    address it advertises (None if it advertised none).
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        is_known: Callable[[str], bool],
        on_message: Callable[[Message], None],
        *,
        forward_handler: Optional[Callable[[str, bytes], Any]] = None,
        join_handler: Optional[Callable[[str, str], Any]] = None,
        on_hello: Optional[Callable[[str, str], None]] = None,
        max_staged_bytes: int = DEFAULT_MAX_STAGED_BYTES,
        max_forward_bytes: int = DEFAULT_MAX_FORWARD_BYTES,
        tcp_user_timeout: float = DEFAULT_TCP_USER_TIMEOUT,
        tls_required: bool = False,
        clock=None,
        hello_timeout_s: float = 10.0,
        snapshot_sink=None,
    ) -> None:
        self.node_id = node_id
        #: Where streamed snapshots are received (kvd.wire.snapshots); None: refused.
        self.snapshot_sink = snapshot_sink
        self.cluster_id = cluster_id
        self.is_known = is_known
        self.tls_required = tls_required
        #: With a clock, a connection without a successful Hello after ``hello_timeout_s`` is aborted.
        self.clock = clock
        self.hello_timeout_s = hello_timeout_s
        self.on_hello = on_hello
        self.on_message = on_message
        self.forward_handler = forward_handler
        self.join_handler = join_handler
        self.max_staged_bytes = max_staged_bytes
        self.max_forward_bytes = max_forward_bytes
        self.tcp_user_timeout = tcp_user_timeout
        #: node id -> its current accepted inbound connection.
        self.inbound: Dict[str, PeerServerProtocol] = {}
        #: Every open inbound connection, accepted or still before Hello.
        self.connections: Set[PeerServerProtocol] = set()

    def buildProtocol(self, addr) -> PeerServerProtocol:
        return PeerServerProtocol(self)

    def register(self, protocol: PeerServerProtocol) -> None:
        old = self.inbound.get(protocol.peer_id)
        self.inbound[protocol.peer_id] = protocol
        if old is not None and old is not protocol:
            # The peer reconnected; its old connection is half-open or dying.
            self.log.info("replacing inbound connection {old} by {new}", old=old.peer_label, new=protocol.peer_label)
            old.drop()

    def unregister(self, protocol: PeerServerProtocol) -> None:
        if self.inbound.get(protocol.peer_id) is protocol:
            del self.inbound[protocol.peer_id]

    def close_all(self) -> None:
        for protocol in list(self.connections):
            protocol.drop()


# =================================================================== client


class PeerClientProtocol(_PeerProtocol):
    """Our outbound end to one peer: sends Hello, then messages and Forward/Join requests."""

    def __init__(self, link: "_PeerLink") -> None:
        owner = link.owner
        super().__init__(owner.node_id, owner.max_staged_bytes, owner.max_pending_bytes, owner.tcp_user_timeout)
        self.link = link
        self._up = False
        self._hello_timer = None
        # Forwarded payloads waiting for the end of the reactor turn (``call_forward``).
        self._batch: List[Tuple[bytes, Deferred]] = []
        self._batch_bytes = 0
        self._batch_call = None

    @property
    def peer_label(self) -> str:
        # Before Hello succeeds we still know whom we meant to reach.
        address = self.transport.getPeer() if self.transport is not None else None
        return f"{self.link.node_id}@{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    def connectionMade(self) -> None:
        super().connectionMade()
        owner = self.link.owner
        hello = self.callRemote(
            Hello,
            cluster_id=owner.cluster_id,
            node_id=owner.node_id,
            protocol_version=PROTOCOL_VERSION,
            address=owner.advertise,
        )
        hello.addCallbacks(self._hello_answered, self._hello_failed)
        # Something that accepts TCP but never answers (a wedged process,
        # another service on a reused port) must not hold the link forever.
        self._hello_timer = owner.reactor.callLater(owner.connect_timeout_s, self._hello_timed_out)

    def _hello_timed_out(self) -> None:
        self._hello_timer = None
        self.log.warn(
            "no answer to Hello from {peer} within {timeout}s",
            peer=self.peer_label,
            timeout=self.link.owner.connect_timeout_s,
        )
        self.link.handshake_failed()
        self._dropping = True
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancel_hello_timer(self) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_hello_timer()
        for _, waiter in self._take_batch():
            # Never sent: certainly not applied.
            waiter.errback(ForwardError(errors.TRYAGAIN, f"connection to {self.link.node_id!r} lost before forwarding"))
        if self._up:
            self._up = False
            self.log.info(
                "outbound connection to {peer} lost: {reason}",
                peer=self.peer_label,
                reason=reason.getErrorMessage() if reason is not None else "closed",
            )
            self.link.connection_down(self)
        super().connectionLost(reason)

    def _hello_answered(self, answer: Dict[str, Any]) -> None:
        self._cancel_hello_timer()
        owner = self.link.owner
        expected = (True, owner.cluster_id, self.link.node_id, PROTOCOL_VERSION)
        got = (answer["accepted"], answer["cluster_id"], answer["node_id"], answer["protocol_version"])
        certified = self.certified_id
        if owner.tls is not None and certified != self.link.node_id:
            self.log.error(
                "dropping outbound connection {peer}: the listener's certificate is for {got!r}, not {node!r}",
                peer=self.peer_label,
                got=certified,
                node=self.link.node_id,
            )
            self.link.handshake_failed()
            self.drop()
            return
        if got != expected:
            self.log.error(
                "dropping outbound connection {peer}: expected node {node!r} of cluster {cluster!r}, "
                "the listener is node {got_node!r} of cluster {got_cluster!r}",
                peer=self.peer_label,
                node=self.link.node_id,
                cluster=owner.cluster_id,
                got_node=answer["node_id"],
                got_cluster=answer["cluster_id"],
            )
            self.link.handshake_failed()
            self.drop()
            return
        if not self._can_write():
            return
        self.peer_id = self.link.node_id
        self._up = True
        self.log.info("outbound connection to {peer} up", peer=self.peer_label)
        self.link.connection_up(self)

    def _hello_failed(self, failure: Failure) -> None:
        self._cancel_hello_timer()
        if self._dropping:
            return  # we gave up on it already (timeout); nothing more to say
        if failure.check(HelloRefused):
            self.log.error(
                "peer {peer} refused our Hello: {reason}", peer=self.peer_label, reason=failure.getErrorMessage()
            )
        else:
            self.log.info(
                "Hello to {peer} failed: {reason}", peer=self.peer_label, reason=failure.getErrorMessage()
            )
        self.link.handshake_failed()
        self.drop()

    def send_message(self, message: Message) -> bool:
        if not self._up or not self._can_write():
            return False
        if self._paused and self._pending_bytes >= self._max_pending_bytes:
            return False  # skip encoding what would be dropped anyway
        frames = message_frames(message, self.next_blob_id())
        return self.write_frames(frames, bounded=True)

    def call_forward(self, payload: bytes) -> Deferred:
        """
        Forward ``payload``; it waits for the end of this reactor turn with
        whatever else is forwarded meanwhile, and they go as one ForwardBatch
        (one alone goes as a Forward).  A payload too big to batch goes at
        once, after what is waiting: one client's commands keep their order.
        """
        if len(payload) > FORWARD_BATCH_ITEM_BYTES:
            self.send_forward_batch()
            return self._call_forward_alone(payload)
        if self._batch_bytes + len(payload) > FORWARD_BATCH_BYTES:
            self.send_forward_batch()
        waiter: Deferred = Deferred()
        self._batch.append((payload, waiter))
        self._batch_bytes += len(payload)
        if self._batch_call is None:
            self._batch_call = self.link.owner.reactor.callLater(0, self.send_forward_batch)
        return waiter

    def send_forward_batch(self) -> None:
        """Send what is waiting to be forwarded now."""
        batch = self._take_batch()
        if len(batch) == 1:
            payload, waiter = batch[0]
            self._call_forward_alone(payload).chainDeferred(waiter)
        elif batch:
            waiters = [waiter for _, waiter in batch]
            answer = self.callRemote(ForwardBatch, payloads=encode_forward_batch([p for p, _ in batch]))
            answer.addCallbacks(self._batch_answered, self._batch_failed, (waiters,), None, (waiters,))

    def _take_batch(self) -> List[Tuple[bytes, Deferred]]:
        """What waits to be forwarded, no longer waiting (its end-of-turn send cancelled)."""
        if self._batch_call is not None and self._batch_call.active():
            self._batch_call.cancel()
        self._batch_call = None
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        return batch

    def _batch_answered(self, answer: Dict[str, Any], waiters: List[Deferred]) -> None:
        blob = answer.get("results_blob")
        value = answer["results"] if blob is None else self._decoder.assembler.claim(blob)
        try:
            outcomes = decode_forward_outcomes(value)
            if len(outcomes) != len(waiters):
                raise ValueError(f"{len(outcomes)} outcomes for a batch of {len(waiters)}")
        except ValueError as e:
            # The leader ran them, or some: their outcome is unknown here.
            self._batch_failed(Failure(ForwardError(errors.TIMEOUT, f"unreadable answer to a forward batch: {e}")),
                               waiters)
            return
        for waiter, outcome in zip(waiters, outcomes):
            if isinstance(outcome, ForwardError):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    @staticmethod
    def _batch_failed(failure: Failure, waiters: List[Deferred]) -> None:
        for waiter in waiters:
            waiter.errback(failure)

    def _call_forward_alone(self, payload: bytes) -> Deferred:
        if len(payload) <= MAX_VALUE_LENGTH:
            answer = self.callRemote(Forward, payload=payload)
        else:
            blob_id = self.send_big_bytes(payload)
            answer = self.callRemote(Forward, payload=b"", blob_id=blob_id)
        return answer.addCallback(self._forward_answered)

    def _forward_answered(self, answer: Dict[str, Any]) -> bytes:
        if answer.get("result_blob") is None:
            return answer["result"]
        return self._decoder.assembler.claim(answer["result_blob"])

    def call_join(self, node_id: str, address: str) -> Deferred:
        return self.callRemote(Join, node_id=node_id, address=address).addCallback(lambda answer: answer["result"])


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, link: "_PeerLink") -> None:
        self.link = link

    def buildProtocol(self, addr) -> PeerClientProtocol:
        return PeerClientProtocol(self.link)


class _PeerLink:
    """The persistent outbound connection to one peer at one address."""

    def __init__(self, owner: "PeerTransport", node_id: str, address: Address) -> None:
        self.owner = owner
        self.node_id = node_id
        self.address = address
        self.protocol: Optional[PeerClientProtocol] = None
        self.handshake_failures = 0
        host, port = address
        bind = (owner.bind_host, 0) if owner.bind_host else None
        endpoint = TCP4ClientEndpoint(owner.reactor, host, port, timeout=owner.connect_timeout_s, bindAddress=bind)
        factory = _ClientFactory(self)
        if owner.tls is not None:
            factory = owner.tls.client_factory(factory, clock=owner.reactor)
        self.service = ClientService(endpoint, factory, retryPolicy=self._retry_delay, clock=owner.reactor)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> Deferred:
        self.protocol = None
        return self.service.stopService()

    def _retry_delay(self, attempt: int) -> float:
        # ClientService counts only failed TCP connects; a refused Hello
        # follows a successful connect, so count those here or a
        # misconfigured peer would be redialled at the initial delay forever.
        return self.owner.retry_policy(attempt + self.handshake_failures)

    def connection_up(self, protocol: PeerClientProtocol) -> None:
        self.handshake_failures = 0
        self.protocol = protocol
        self.owner._report_connected(self.node_id)

    def connection_down(self, protocol: PeerClientProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None

    def handshake_failed(self) -> None:
        self.handshake_failures += 1


class PeerTransport:
    """
    Sends Raft messages to peers and forwards commands to them.

    ``resolve(node_id)`` gives a peer's ``(host, port)`` or None; it is asked
    on every send, so a changed address (a new configuration) re-dials.
    Incoming messages reach ``on_message`` through the factory made by
    :meth:`server_factory`, which the node listens with.
    """

    log = Logger()

    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        resolve: Callable[[str], Optional[Address]],
        on_message: Callable[[Message], None],
        reactor,
        bind_host: Optional[str] = None,
        *,
        on_unreachable: Optional[Callable[[str], None]] = None,
        is_known: Optional[Callable[[str], bool]] = None,
        forward_handler: Optional[Callable[[str, bytes], Any]] = None,
        join_handler: Optional[Callable[[str, str], Any]] = None,
        advertise: Optional[str] = None,
        on_hello: Optional[Callable[[str, str], None]] = None,
        on_connected: Optional[Callable[[str], None]] = None,
        connect_timeout_s: float = 3.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        backoff_factor: float = 2.0,
        backoff_jitter: Optional[Callable[[], float]] = None,
        forward_timeout_s: float = 10.0,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_staged_bytes: int = DEFAULT_MAX_STAGED_BYTES,
        max_forward_bytes: int = DEFAULT_MAX_FORWARD_BYTES,
        tcp_user_timeout: float = DEFAULT_TCP_USER_TIMEOUT,
        tls: Optional[PeerTLS] = None,
        snapshot_source: Optional[Callable[[int], Tuple[Any, Any]]] = None,
        snapshot_sink=None,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        #: With a source, ``source(min_index) -> (Snapshot without data, stream)``, every
        #: InstallSnapshot is streamed from disk (kvd.wire.snapshots), at the index the stream
        #: has (at least ``min_index``); a sink receives the streams peers send us.
        self.snapshot_source = snapshot_source
        self.snapshot_sink = snapshot_sink
        self._streams: Dict[str, SnapshotSender] = {}
        self._streamed: Dict[str, Tuple[int, float]] = {}  # peer -> (index, when) of its last stream
        self.resolve = resolve
        #: Mutual TLS for every connection (None: plaintext, --insecure-peers).
        self.tls = tls
        self.on_message = on_message
        self.reactor = reactor
        self.bind_host = bind_host
        self.on_unreachable = on_unreachable
        self.is_known = is_known if is_known is not None else (lambda peer: resolve(peer) is not None)
        self.forward_handler = forward_handler
        self.join_handler = join_handler
        self.advertise = advertise  # our address, told to every peer we dial
        self.on_hello = on_hello
        # Our link to a peer is up (Hello answered): what was dropped while it
        # was down may be sent again now rather than at the next retry.
        self.on_connected = on_connected
        self.connect_timeout_s = connect_timeout_s
        self.forward_timeout_s = forward_timeout_s
        self.max_pending_bytes = max_pending_bytes
        self.max_staged_bytes = max_staged_bytes
        self.max_forward_bytes = max_forward_bytes
        self.tcp_user_timeout = tcp_user_timeout
        if backoff_jitter is None:
            # Up to half the initial delay: enough to de-synchronise peers
            # that lost a common neighbour at the same instant.
            rng = random.Random()
            backoff_jitter = lambda: rng.uniform(0, backoff_initial / 2)  # noqa: E731
        self.retry_policy = backoffPolicy(
            initialDelay=backoff_initial, maxDelay=backoff_max, factor=backoff_factor, jitter=backoff_jitter
        )
        self._links: Dict[str, _PeerLink] = {}
        self._server_factories: List[PeerServerFactory] = []
        self._stopped = False

    # ---------------------------------------------------------- listening

    def server_factory(self) -> PeerServerFactory:
        """A factory for the listening port, delivering to this transport's callbacks."""
        factory = PeerServerFactory(
            self.node_id,
            self.cluster_id,
            self.is_known,
            self.on_message,
            forward_handler=self.forward_handler,
            join_handler=self.join_handler,
            on_hello=self._inbound_hello,
            max_staged_bytes=self.max_staged_bytes,
            max_forward_bytes=self.max_forward_bytes,
            tcp_user_timeout=self.tcp_user_timeout,
            tls_required=self.tls is not None,
            clock=self.reactor,
            hello_timeout_s=max(10.0, 2 * self.connect_timeout_s),
            snapshot_sink=self.snapshot_sink,
        )
        self._server_factories.append(factory)
        return factory

    def _inbound_hello(self, node_id: str, address: Optional[str]) -> None:
        """
        A peer just dialled us and was accepted: it is up.  If our own link to
        it is down, waiting out its backoff (up to ``backoff_max``) would leave
        it without our messages that long (a restarted follower would not hear
        from its leader and answer NOLEADER meanwhile), so dial it now.
        """
        link = self._links.get(node_id)
        if link is not None and link.protocol is None and not self._stopped:
            self.log.info("{node} is back: dialling it now", node=node_id)
            self.redial(node_id)
        if address and self.on_hello is not None:
            self.on_hello(node_id, address)

    def listening_factory(self):
        """What the peer port listens with: :meth:`server_factory`, behind TLS unless the peers are insecure."""
        factory = self.server_factory()
        return factory if self.tls is None else self.tls.server_factory(factory, clock=self.reactor)

    # ------------------------------------------------------------ sending

    def send(self, message: Message) -> None:
        """Send one message now or drop it (and report the peer unreachable); never blocks."""
        self._send(message)

    def send_many(self, messages) -> None:
        """``send`` each message in order (a Ready's batch), and push them out at once (``push_now``)."""
        used = []
        for message in messages:
            protocol = self._send(message)
            if protocol is not None and protocol not in used:
                used.append(protocol)
        for protocol in used:
            protocol.push_now()

    def _send(self, message: Message):
        """``send``; the protocol written to, if any."""
        if self._stopped:
            return None
        dst = message.dst
        if dst == self.node_id:
            self.log.warn("not sending {message!r} to ourselves", message=message)
            return None
        link = self._link_for(dst)
        protocol = link.protocol if link is not None else None
        if isinstance(message, InstallSnapshot) and self.snapshot_source is not None:
            self._stream_snapshot(message, protocol)
            return None
        try:
            sent = protocol is not None and protocol.send_message(message)
        except Exception:
            self.log.failure("cannot encode {message!r}; dropped", message=message)
            return None
        if not sent:
            self._report_unreachable(dst)
            return None
        return protocol

    def _stream_snapshot(self, message: InstallSnapshot, protocol: Optional[PeerClientProtocol]) -> None:
        """Stream the state on disk to ``message.dst`` unless a stream to it is running already."""
        dst = message.dst
        if dst in self._streams:
            return  # the core asks again while a long stream runs; the running one answers it
        if protocol is None or not protocol._can_write():
            self._report_unreachable(dst)
            return
        try:
            snapshot, stream = self.snapshot_source(message.snapshot.index)
        except Exception as e:
            self.log.error("cannot read a snapshot for {peer}: {error}", peer=dst, error=e)
            return
        # The state is read at whatever index it has reached, at or past the core's
        # snapshot: the stream says so, or the follower would be sent the entries
        # in between, which the leader may have compacted away meanwhile (and then
        # another snapshot, forever, while writes go on).
        message = dataclasses.replace(message, snapshot=snapshot)
        sender = self._streams[dst] = SnapshotSender(protocol, message, stream, new_stream_id())
        started = self.reactor.seconds()
        self.log.info("streaming a snapshot at index {index} to {peer}", index=snapshot.index, peer=dst)

        def finished(outcome):
            if self._streams.get(dst) is sender:
                del self._streams[dst]
                self._streamed[dst] = (snapshot.index, self.reactor.seconds())
            seconds = max(self.reactor.seconds() - started, 1e-6)
            if isinstance(outcome, Failure):
                self.log.warn("snapshot stream to {peer} broke off after {mib:.1f} MiB: {reason}",
                              peer=dst, mib=sender.sent_bytes / 2**20, reason=outcome.getErrorMessage())
            else:
                self.log.info("snapshot stream to {peer} done: {mib:.1f} MiB in {seconds:.2f}s ({rate:.1f} MiB/s)",
                              peer=dst, mib=outcome / 2**20, seconds=seconds, rate=outcome / 2**20 / seconds)
            return None

        sender.start().addBoth(finished)

    def streaming_to(self) -> List[str]:
        """The peers a snapshot is being streamed to now."""
        return list(self._streams)

    def recent_streams(self) -> Dict[str, int]:
        """
        Peer -> snapshot index of each stream running, or ended within
        ``STREAM_FLOOR_HOLD_S``: its receiver goes on from the entry after it,
        so the log must not be compacted past it meanwhile (else another
        snapshot would follow, and another, as long as writes go on).
        """
        now = self.reactor.seconds()
        recent = {}
        for dst, (index, when) in list(self._streamed.items()):
            if now - when > STREAM_FLOOR_HOLD_S:
                del self._streamed[dst]
            else:
                recent[dst] = index
        for dst, sender in self._streams.items():
            recent[dst] = sender.message.snapshot.index
        return recent

    def forward(self, node_id: str, payload: bytes, timeout: Optional[float] = None) -> Deferred:
        """
        Hand ``payload`` to ``node_id``'s forward handler; fires with its
        result bytes or fails with ``ForwardError`` (``TRYAGAIN`` when nothing
        was sent, ``TIMEOUT`` when the outcome is unknown, at the latest after
        ``timeout`` seconds: the caller's own deadline, else ``forward_timeout_s``).
        """
        if len(payload) > self.max_forward_bytes:
            return fail(ForwardError(errors.TOOBIG, f"payload of {len(payload)} bytes is over the forwarding limit"))
        protocol = self._connected(node_id)
        if protocol is None:
            return fail(ForwardError(errors.TRYAGAIN, f"no connection to node {node_id!r}"))
        return self._bounded(protocol.call_forward(payload), node_id, "forward", timeout)

    def join(self, node_id: str, joiner_id: str, address: str) -> Deferred:
        """Ask ``node_id`` to add ``joiner_id`` at ``address``; fires with the handler's bytes."""
        protocol = self._connected(node_id)
        if protocol is None:
            return fail(ForwardError(errors.TRYAGAIN, f"no connection to node {node_id!r}"))
        return self._bounded(protocol.call_join(joiner_id, address), node_id, "join")

    def dial(self, node_id: str) -> bool:
        """
        Start (or keep) the link to ``node_id`` without sending anything, so
        the first real message does not find it down; False if it has no address.
        """
        return self._connected_link(node_id) is not None

    def redial(self, node_id: str) -> None:
        """
        Dial ``node_id`` now: a link that is down starts again without waiting
        out its backoff, a missing one is started; a connected one is left alone.
        """
        if self._stopped or node_id == self.node_id:
            return
        link = self._links.get(node_id)
        if link is not None and link.protocol is not None:
            return
        if link is not None:
            del self._links[node_id]
            link.stop()
        self._link_for(node_id)

    def is_connected(self, node_id: str) -> bool:
        link = self._links.get(node_id)
        return link is not None and link.protocol is not None

    def dialled(self) -> List[str]:
        """The peers this transport keeps an outbound link to (connected or redialling)."""
        return list(self._links)

    def forget(self, node_id: str) -> Deferred:
        """Close the link to a node that left the configuration."""
        link = self._links.pop(node_id, None)
        if link is None:
            return succeed(None)
        self.log.info("closing link to {node}", node=node_id)
        return link.stop()

    def stop(self) -> Deferred:
        """Close every outbound link and inbound connection; fires when the links are down."""
        self._stopped = True
        links, self._links = self._links, {}
        for factory in self._server_factories:
            factory.close_all()
        return gatherResults([link.stop() for link in links.values()], consumeErrors=True).addCallback(lambda _: None)

    # ---------------------------------------------------------- internals

    def _connected_link(self, node_id: str) -> Optional[_PeerLink]:
        if self._stopped or node_id == self.node_id:
            return None
        return self._link_for(node_id)

    def _connected(self, node_id: str) -> Optional[PeerClientProtocol]:
        link = self._connected_link(node_id)
        return link.protocol if link is not None else None

    def _link_for(self, node_id: str) -> Optional[_PeerLink]:
        address = self.resolve(node_id)
        if address is not None:
            address = (address[0], int(address[1]))
        link = self._links.get(node_id)
        if link is not None and link.address == address:
            return link
        if link is not None:
            self.log.info(
                "address of {node} changed from {old} to {new}", node=node_id, old=link.address, new=address
            )
            del self._links[node_id]
            link.stop()
        if address is None:
            return None
        link = self._links[node_id] = _PeerLink(self, node_id, address)
        self.log.info("dialling {node} at {host}:{port}", node=node_id, host=address[0], port=address[1])
        link.start()
        return link

    def _report_unreachable(self, node_id: str) -> None:
        if self.on_unreachable is None:
            return
        try:
            self.on_unreachable(node_id)
        except Exception:
            self.log.failure("on_unreachable raised for {node}", node=node_id)

    def _report_connected(self, node_id: str) -> None:
        if self.on_connected is None:
            return
        try:
            self.on_connected(node_id)
        except Exception:
            self.log.failure("on_connected raised for {node}", node=node_id)

    def _bounded(self, answer: Deferred, node_id: str, what: str, timeout: Optional[float] = None) -> Deferred:
        """``answer`` with a timeout, and with every failure turned into a ForwardError."""
        result: Deferred = Deferred(lambda _: timer.cancel() if timer.active() else None)
        seconds = self.forward_timeout_s if timeout is None else max(0.0, timeout)

        def on_timeout() -> None:
            result.errback(
                ForwardError(errors.TIMEOUT, f"no answer to {what} from {node_id!r} within {seconds:g}s")
            )

        def settle(outcome):
            if result.called:
                return None  # too late: the caller has had a timeout or cancelled
            if timer.active():
                timer.cancel()
            if not isinstance(outcome, Failure):
                result.callback(outcome)
            elif outcome.check(ForwardError):
                result.errback(outcome)
            elif outcome.check(net_error.ConnectionClosed, net_error.ConnectionLost, net_error.ConnectionDone):
                result.errback(
                    ForwardError(errors.TIMEOUT, f"connection to {node_id!r} lost during {what}; outcome unknown")
                )
            else:
                self.log.failure("{what} to {node} failed", outcome, what=what, node=node_id)
                reason = outcome.getErrorMessage()
                result.errback(ForwardError(errors.INTERNAL, f"{what} to {node_id!r} failed: {reason}"))
            return None

        timer = self.reactor.callLater(seconds, on_timeout)
        answer.addBoth(settle)
        return result

