# -*- test-case-name: tests.wire.test_peers -*-
"""Tests for kvd.wire.peers, over in-memory connections and a fake clock (no sockets)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.protocols import amp
from twisted.python.failure import Failure

from kvd.raft import messages as m
from kvd.raft.messages import Entry, Snapshot
from kvd.wire import codec, errors
from kvd.wire.errors import ForwardError
from kvd.wire.peers import PeerServerFactory, PeerTransport

from tests.helpers import LogCapture, connect
from tests.wire.test_codec import random_message

MiB = 1 << 20
ADDRESSES = {"a": ("127.0.0.1", 7001), "b": ("127.0.0.2", 7002), "c": ("127.0.0.3", 7003)}


class Node:
    """One node's transport and listening factory, recording what reaches it."""

    def __init__(self, node_id, reactor, cluster_id="c1", addresses=None, **kwargs):
        self.node_id = node_id
        self.addresses = addresses if addresses is not None else dict(ADDRESSES)
        self.received = []
        self.unreachable = []
        self.forwarded = []
        kwargs.setdefault("forward_handler", self._forward)
        kwargs.setdefault("join_handler", lambda node, address: succeed(f"joined {node} at {address}".encode()))
        self.transport = PeerTransport(
            node_id,
            cluster_id,
            self.addresses.get,
            self.received.append,
            reactor,
            self.addresses[node_id][0],
            on_unreachable=self.unreachable.append,
            backoff_jitter=lambda: 0.0,
            **kwargs,
        )
        self.server = self.transport.server_factory()

    def _forward(self, src, payload):
        self.forwarded.append((src, payload))
        return succeed(b"ok:" + payload)


def accept(reactor, server_factory, attempt=-1, flush=True):
    """Complete the connection attempt ``reactor.tcpClients[attempt]`` against ``server_factory``."""
    host, port, factory, timeout, bind = reactor.tcpClients[attempt]
    client_address = IPv4Address("TCP", bind[0] if bind else "127.0.0.9", 50000 + len(reactor.tcpClients))
    server_address = IPv4Address("TCP", host, port)
    client = factory.buildProtocol(server_address)
    server = server_factory.buildProtocol(client_address)
    return connect(client, server, client_address=client_address, server_address=server_address, flush=flush)


def refuse(reactor, attempt=-1):
    """Fail the connection attempt ``reactor.tcpClients[attempt]`` as a closed port would."""
    _, _, factory, _, _ = reactor.tcpClients[attempt]
    factory.clientConnectionFailed(reactor.connectors[attempt], Failure(error.ConnectionRefusedError()))


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def a(reactor):
    return Node("a", reactor)


@pytest.fixture
def b(reactor):
    return Node("b", reactor)


def link_up(reactor, a, b):
    """Have ``a`` dial ``b`` and complete the connection and Hello; returns the pump."""
    assert a.transport.dial(b.node_id)
    pump = accept(reactor, b.server)
    assert a.transport.is_connected(b.node_id)
    return pump


def client_protocol(a, peer="b"):
    return a.transport._links[peer].protocol


# ----------------------------------------------------------------- tests


def test_dial_uses_resolved_address_bind_host_and_timeout(reactor, a):
    """The outbound connection goes to resolve(peer), binds to bind_host and has a connect timeout."""
    a.transport.dial("b")
    host, port, _, timeout, bind = reactor.tcpClients[-1]
    assert (host, port) == ADDRESSES["b"]
    assert bind == ("127.0.0.1", 0)
    assert timeout == a.transport.connect_timeout_s


def test_every_message_type_reaches_the_peer_after_hello(reactor, a, b):
    """After Hello, each of the 12 message types sent by a arrives equal at b, in order."""
    pump = link_up(reactor, a, b)
    rng = random.Random(11)
    sent = []
    for message_type in m.MESSAGE_TYPES:
        message = random_message(rng, message_type)
        message = dataclasses.replace(message, src="a", dst="b")
        sent.append(message)
    a.transport.send_many(sent[:6])
    for message in sent[6:]:
        a.transport.send(message)
    pump.flush()
    assert b.received == sent
    assert a.unreachable == []
    assert pump.client_transport.nodelay and pump.server_transport.nodelay
    assert b.server.inbound["a"] is pump.server


def test_hello_carries_the_advertised_address(reactor):
    """The dialling node's advertised address reaches the listener's on_hello (how a joiner learns its peers)."""
    heard = []
    a = Node("a", reactor, advertise="127.0.0.1:7001:17001")
    b = Node("b", reactor, on_hello=lambda node, address: heard.append((node, address)))
    link_up(reactor, a, b)
    assert heard == [("a", "127.0.0.1:7001:17001")]
    link_up(reactor, b, a)  # b advertises nothing: a hears nothing, and nothing breaks
    assert heard == [("a", "127.0.0.1:7001:17001")]


def test_big_entry_and_big_snapshot_cross_the_connection(reactor, a, b):
    """A 1 MiB entry and a 3 MiB snapshot are chunked by a and reassembled by b."""
    pump = link_up(reactor, a, b)
    rng = random.Random(12)
    append = m.AppendEntries(
        term=3, src="a", dst="b", prev_index=9, prev_term=3, entries=(Entry(10, 3, data=rng.randbytes(MiB)),), commit=9
    )
    snapshot = Snapshot(index=50, term=3, data=rng.randbytes(3 * MiB))
    install = m.InstallSnapshot(term=3, src="a", dst="b", snapshot=snapshot)
    heartbeat = m.Heartbeat(term=3, src="a", dst="b", commit=9)
    a.transport.send(append)
    a.transport.send(install)
    a.transport.send(heartbeat)
    pump.flush()
    assert b.received == [append, install, heartbeat]
    assert pump.server._decoder.assembler.staged_bytes == 0


def test_send_to_down_peer_drops_and_reports_unreachable(reactor, a):
    """With no connection (still dialling, or no address) send writes nothing and calls on_unreachable."""
    a.transport.send(m.TimeoutNow(term=1, src="a", dst="b"))
    assert a.unreachable == ["b"]
    assert len(reactor.tcpClients) == 1  # it started dialling, it did not queue
    a.transport.send(m.TimeoutNow(term=1, src="a", dst="zz"))  # unresolvable
    assert a.unreachable == ["b", "zz"]
    assert len(reactor.tcpClients) == 1


def test_hello_from_other_cluster_is_refused(reactor, a):
    """A listener of another cluster refuses the Hello, closes, and both sides log why."""
    other = Node("b", reactor, cluster_id="c2")
    with LogCapture() as logs:
        a.transport.dial("b")
        pump = accept(reactor, other.server)
    assert pump.closed
    assert not a.transport.is_connected("b")
    assert other.server.inbound == {}
    text = "\n".join(logs.messages(LogLevel.warn))
    assert "cluster 'c1', this node is in cluster 'c2'" in text
    assert "refused our Hello" in text
    a.transport.send(m.TimeoutNow(term=1, src="a", dst="b"))
    assert a.unreachable == ["b"]


def test_hello_from_unknown_node_is_refused(reactor, a):
    """A listener whose is_known rejects the caller refuses it and disconnects."""
    strict = PeerServerFactory("b", "c1", is_known=lambda node: node == "c", on_message=lambda msg: None)
    with LogCapture() as logs:
        a.transport.dial("b")
        pump = accept(reactor, strict)
    assert pump.closed and not a.transport.is_connected("b")
    assert any("node id 'a' is not a member" in line for line in logs.messages(LogLevel.warn))


def test_answer_from_the_wrong_node_is_dropped(reactor, a):
    """If b's address now hosts node c, a refuses to treat the connection as its link to b."""
    impostor = Node("c", reactor)
    with LogCapture() as logs:
        a.transport.dial("b")
        pump = accept(reactor, impostor.server)
    assert pump.closed and not a.transport.is_connected("b")
    assert any("expected node 'b'" in line for line in logs.messages(LogLevel.error))


def test_spoofed_src_disconnects_and_is_not_delivered(reactor, a, b):
    """A message whose src is not the Hello's node id drops the connection undelivered."""
    pump = link_up(reactor, a, b)
    spoofed = m.RequestVote(term=9, src="c", dst="b", last_log_index=1, last_log_term=1)
    with LogCapture() as logs:
        client_protocol(a).write_frames(codec.message_frames(spoofed, 1), bounded=False)
        pump.flush()
    assert pump.closed
    assert b.received == []
    assert any("claims src 'c'" in line for line in logs.messages(LogLevel.warn))
    assert not a.transport.is_connected("b")


def test_message_for_another_node_disconnects(reactor, a, b):
    """A message addressed to someone else is a protocol error, not silently accepted."""
    pump = link_up(reactor, a, b)
    client_protocol(a).write_frames(codec.message_frames(m.TimeoutNow(term=1, src="a", dst="c"), 1), bounded=False)
    pump.flush()
    assert pump.closed and b.received == []


def _raw_client(reactor, server_factory):
    """A bare AMP client connected to ``server_factory`` (no Hello sent)."""
    client = amp.AMP()
    server = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
    pump = connect(client, server)
    return client, pump


def test_message_before_hello_disconnects(reactor, b):
    """A peer that sends a Raft message without Hello is logged and dropped."""
    client, pump = _raw_client(reactor, b.server)
    with LogCapture() as logs:
        client.callRemote(codec.RaftCommand, m=codec.encode_binary(
            m.PreVote(term=1, src="a", dst="b", last_log_index=0, last_log_term=0)))
        pump.flush()
    assert pump.closed and b.received == []
    assert any("before a successful Hello" in line for line in logs.messages(LogLevel.warn))


def _hello(client, pump, node="a"):
    answers = []
    client.callRemote(codec.Hello, cluster_id="c1", node_id=node, protocol_version=codec.PROTOCOL_VERSION).addCallback(
        answers.append
    )
    pump.flush()
    assert answers and answers[0]["node_id"] == "b"


def test_malformed_box_disconnects_and_logs(reactor, b):
    """After Hello, an AppendEntries cut short drops the connection, with a log."""
    client, pump = _raw_client(reactor, b.server)
    _hello(client, pump)
    append = codec.encode_binary(m.AppendEntries(term=1, src="a", dst="b", prev_index=0, prev_term=0, entries=(), commit=0))
    with LogCapture() as logs:
        client.callRemoteString(b"Raft", False, m=append[:-2])
        # must not be delivered:
        client.callRemote(codec.RaftCommand, m=codec.encode_binary(m.TimeoutNow(term=1, src="a", dst="b")))
        pump.flush()
    assert pump.closed and b.received == []
    assert any("malformed Raft" in line for line in logs.messages(LogLevel.warn))


def test_unknown_command_and_starttls_disconnect(reactor, b):
    """Commands outside our vocabulary, including AMP's built-in StartTLS, drop the connection."""
    for name in (b"Frobnicate", b"StartTLS"):
        client, pump = _raw_client(reactor, b.server)
        _hello(client, pump)
        with LogCapture() as logs:
            client.callRemoteString(name, False)
            pump.flush()
        assert pump.closed
        assert any("unknown command" in line for line in logs.messages(LogLevel.warn)), name


def test_box_without_command_disconnects_without_raising(reactor, b):
    """A box that is neither command nor answer is logged and dropped; nothing escapes dataReceived."""
    client, pump = _raw_client(reactor, b.server)
    with LogCapture() as logs:
        pump.client_transport.write(amp.AmpBox(junk=b"1").serialize())
        pump.flush()
    assert pump.closed
    assert any("cannot handle box" in line for line in logs.messages(LogLevel.critical))


def test_staging_limit_drops_the_connection(reactor, a):
    """A peer that stages more than max_staged_bytes is disconnected before it can deliver."""
    small = Node("b", reactor, max_staged_bytes=1 * MiB)
    a.transport.dial("b")
    pump = accept(reactor, small.server)
    snapshot = Snapshot(index=1, term=1, data=b"s" * (3 * MiB))
    with LogCapture() as logs:
        a.transport.send(m.InstallSnapshot(term=1, src="a", dst="b", snapshot=snapshot))
        pump.flush()
    assert pump.closed and small.received == []
    assert any("1048576-byte limit" in line for line in logs.messages(LogLevel.warn))


def test_on_message_exception_keeps_the_connection(reactor, a):
    """A bug in the receiving core is logged but does not punish the peer."""
    calls = []

    def broken(message):
        calls.append(message)
        raise RuntimeError("core bug")

    b = Node("b", reactor)
    b.server.on_message = broken
    pump = link_up(reactor, a, b)
    with LogCapture() as logs:
        a.transport.send(m.TimeoutNow(term=1, src="a", dst="b"))
        a.transport.send(m.TimeoutNow(term=2, src="a", dst="b"))
        pump.flush()
    assert len(calls) == 2 and not pump.closed
    assert len([f for f in logs.failures() if f.check(RuntimeError)]) == 2


def test_forward_success_small_and_big(reactor, a, b):
    """forward() returns the handler's bytes; payloads and results over 64 KiB go as chunks."""
    pump = link_up(reactor, a, b)
    results = []
    a.transport.forward("b", b"SET k v").addCallback(results.append)
    big = random.Random(13).randbytes(300_000)
    a.transport.forward("b", big).addCallback(results.append)
    pump.flush()
    assert results == [b"ok:SET k v", b"ok:" + big]
    assert b.forwarded == [("a", b"SET k v"), ("a", big)]
    # Both sides released the staged payload and result.
    assert pump.server._decoder.assembler.staged_bytes == 0
    assert client_protocol(a)._decoder.assembler.staged_bytes == 0


def _failure_of(d):
    failures = []
    d.addErrback(failures.append)
    return failures


def test_forward_error_maps_both_ways(reactor, a):
    """A ForwardError raised by the leader's handler comes back with the same code and message."""
    refusal = ForwardError("NOLEADER", "leader unknown: term 7")
    b = Node("b", reactor, forward_handler=lambda src, payload: fail(refusal))
    pump = link_up(reactor, a, b)
    failures = _failure_of(a.transport.forward("b", b"x"))
    reactor.advance(0)  # the end of the reactor turn sends what waits to be forwarded
    pump.flush()
    assert len(failures) == 1
    assert failures[0].value == ForwardError("NOLEADER", "leader unknown: term 7")
    assert not pump.closed  # an application error is not a protocol error


def test_unexpected_handler_exception_becomes_internal(reactor, a):
    """A handler crashing with a non-ForwardError yields INTERNAL to the caller and a log on the leader."""

    def crash(src, payload):
        raise KeyError("boom")

    b = Node("b", reactor, forward_handler=crash)
    pump = link_up(reactor, a, b)
    with LogCapture() as logs:
        failures = _failure_of(a.transport.forward("b", b"x"))
        reactor.advance(0)  # the end of the reactor turn sends what waits to be forwarded
        pump.flush()
    assert failures[0].value.code == errors.INTERNAL
    assert any(f.check(KeyError) for f in logs.failures())


def test_forward_to_unconnected_peer_is_tryagain(reactor, a):
    """Forwarding with the link down fails at once with TRYAGAIN (nothing was sent)."""
    failures = _failure_of(a.transport.forward("b", b"x"))
    assert failures[0].value.code == errors.TRYAGAIN
    failures = _failure_of(a.transport.forward("b", b"x" * (a.transport.max_forward_bytes + 1)))
    assert failures[0].value.code == errors.TOOBIG


def test_forward_times_out_and_ignores_the_late_answer(reactor, a):
    """No answer within forward_timeout_s fails with TIMEOUT; a late answer is swallowed."""
    pending = Deferred()
    b = Node("b", reactor, forward_handler=lambda src, payload: pending)
    pump = link_up(reactor, a, b)
    failures = _failure_of(a.transport.forward("b", b"x"))
    reactor.advance(0)  # the end of the reactor turn sends what waits to be forwarded
    pump.flush()
    reactor.advance(a.transport.forward_timeout_s - 0.01)
    assert failures == []
    reactor.advance(0.02)
    assert failures[0].value.code == errors.TIMEOUT
    pending.callback(b"late")
    pump.flush()
    assert not pump.closed


def test_connection_lost_during_forward_is_timeout(reactor, a):
    """If the link breaks after the request left, the outcome is unknown: TIMEOUT."""
    b = Node("b", reactor, forward_handler=lambda src, payload: Deferred())
    pump = link_up(reactor, a, b)
    failures = _failure_of(a.transport.forward("b", b"x"))
    reactor.advance(0)  # the end of the reactor turn sends what waits to be forwarded
    pump.flush()
    pump.cut()
    assert failures[0].value.code == errors.TIMEOUT
    assert "outcome unknown" in failures[0].value.message
    # The timeout timer was cancelled, so it cannot fire a second outcome.
    assert [c for c in reactor.getDelayedCalls() if c.func.__name__ == "on_timeout"] == []


def test_forwards_of_one_reactor_turn_go_as_one_batch(reactor, a):
    """Forwards made in one turn leave as one ForwardBatch box; each gets its own outcome, in order."""

    def handler(src, payload):
        seen.append(payload)
        if payload == b"bad":
            return fail(ForwardError("NOLEADER", "leader unknown: term 7"))
        return succeed(b"ok:" + payload)

    seen = []
    b = Node("b", reactor, forward_handler=handler)
    pump = link_up(reactor, a, b)
    payloads = [b"SET k%d v" % i for i in range(4)] + [b"bad", b"SET k9 v"]
    outcomes = []
    for payload in payloads:
        a.transport.forward("b", payload).addBoth(outcomes.append)
    assert pump.client_transport.value() == b""  # waiting for the end of the turn
    reactor.advance(0)
    wire = pump.client_transport.value()
    assert wire.count(b"_command") == 1 and b"ForwardBatch" in wire
    pump.flush()
    assert seen == payloads
    assert outcomes[:4] + outcomes[5:] == [b"ok:" + p for p in payloads if p != b"bad"]
    assert isinstance(outcomes[4], Failure) and outcomes[4].value == ForwardError("NOLEADER", "leader unknown: term 7")
    assert not pump.closed


def test_a_big_forward_follows_the_batch_waiting_before_it(reactor, a, b):
    """A payload too big to batch goes at once, but after the commands forwarded before it."""
    pump = link_up(reactor, a, b)
    big = b"x" * (codec.FORWARD_BATCH_ITEM_BYTES + 1)
    results = []
    for payload in (b"one", b"two", big):
        a.transport.forward("b", payload).addCallback(results.append)
    pump.flush()  # no turn has ended: the big one pushed the batch out first
    assert [p for _, p in b.forwarded] == [b"one", b"two", big]
    assert results == [b"ok:one", b"ok:two", b"ok:" + big]


def test_a_full_batch_leaves_before_the_turn_ends(reactor, a, b):
    """Payloads that would take a batch over FORWARD_BATCH_BYTES start the next one."""
    pump = link_up(reactor, a, b)
    payload = b"p" * (codec.FORWARD_BATCH_ITEM_BYTES - 100)
    count = codec.FORWARD_BATCH_BYTES // len(payload) + 2
    results = []
    for _ in range(count):
        a.transport.forward("b", payload).addCallback(results.append)
    assert pump.client_transport.value().count(b"_command") == 1  # the first full batch
    reactor.advance(0)
    pump.flush()
    assert results == [b"ok:" + payload] * count


def test_batch_outcomes_too_big_for_one_value_come_as_chunks(reactor, a, b):
    """The outcomes of a batch over AMP's 64 KiB value cap travel as chunks; nothing stays staged."""
    results = []
    b = Node("b", reactor, forward_handler=lambda src, payload: succeed(payload * 5000))
    pump = link_up(reactor, a, b)
    for payload in (b"0123456789", b"abcdefghij"):
        a.transport.forward("b", payload).addCallback(results.append)
    reactor.advance(0)
    pump.flush()
    assert results == [b"0123456789" * 5000, b"abcdefghij" * 5000]
    assert client_protocol(a)._decoder.assembler.staged_bytes == 0


def test_connection_lost_before_or_after_a_batch_left(reactor, a):
    """Lost before the batch was sent: TRYAGAIN (certainly not applied); after: TIMEOUT (unknown)."""
    b = Node("b", reactor, forward_handler=lambda src, payload: Deferred())
    pump = link_up(reactor, a, b)
    unsent = [_failure_of(a.transport.forward("b", p)) for p in (b"x", b"y")]
    pump.cut()
    assert [f[0].value.code for f in unsent] == [errors.TRYAGAIN] * 2
    reactor.advance(0)  # the cancelled send does not fire
    assert a.transport.dial("b")
    reactor.advance(a.transport.retry_policy(1) + 1)
    pump = accept(reactor, b.server)
    sent = [_failure_of(a.transport.forward("b", p)) for p in (b"x", b"y")]
    reactor.advance(0)
    pump.flush()
    pump.cut()
    assert [f[0].value.code for f in sent] == [errors.TIMEOUT] * 2


def test_a_malformed_forward_batch_is_refused_without_dropping_the_link(reactor, a, b):
    """A ForwardBatch that does not parse fails as INTERNAL; the handler never sees it."""
    pump = link_up(reactor, a, b)
    failures = _failure_of(client_protocol(a).callRemote(codec.ForwardBatch, payloads=b"\x00\x00\x00\x05ab"))
    pump.flush()
    assert failures[0].value.code == errors.INTERNAL and "malformed forward batch" in failures[0].value.message
    assert b.forwarded == [] and not pump.closed


def test_join_round_trip(reactor, a, b):
    """join() carries node id and address to the join handler and returns its bytes."""
    pump = link_up(reactor, a, b)
    results = []
    a.transport.join("b", "d", "127.0.0.4:7004").addCallback(results.append)
    pump.flush()
    assert results == [b"joined d at 127.0.0.4:7004"]


def test_backoff_reconnect_with_clock(reactor, a, b):
    """Failed connects are retried after capped, growing delays; a lost link is redialled quickly."""
    a.transport.dial("b")
    delays = []
    for _ in range(8):
        attempts = len(reactor.tcpClients)
        refuse(reactor)
        waited = 0.0
        while len(reactor.tcpClients) == attempts:
            reactor.advance(0.05)
            waited += 0.05
            assert waited < 60
        delays.append(round(waited, 2))
    # backoff_initial=0.1, factor 2, max 5, no jitter: 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5, 5
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0], abs=0.051)
    pump = accept(reactor, b.server)
    assert a.transport.is_connected("b")
    pump.cut()
    assert not a.transport.is_connected("b")
    attempts = len(reactor.tcpClients)
    reactor.advance(0.21)
    assert len(reactor.tcpClients) == attempts + 1  # back to the short delay
    accept(reactor, b.server)
    assert a.transport.is_connected("b")


def test_refused_hello_backs_off_like_a_failed_connect(reactor, a):
    """Repeated Hello refusals lengthen the retry delay instead of redialling at the initial delay."""
    other = Node("b", reactor, cluster_id="c2")
    a.transport.dial("b")
    accept(reactor, other.server)  # refused once
    attempts = len(reactor.tcpClients)
    reactor.advance(0.21)
    assert len(reactor.tcpClients) == attempts  # policy(1 + 1) = 0.4 s, not 0.2 s
    reactor.advance(0.2)
    assert len(reactor.tcpClients) == attempts + 1


def test_output_is_bounded_while_the_socket_is_backed_up(reactor, a, b):
    """Once paused by its transport, a link accepts max_pending_bytes more and then drops messages."""
    a.transport.max_pending_bytes = 20_000
    pump = link_up(reactor, a, b)
    protocol = client_protocol(a)
    assert pump.client_transport.producer is not None  # registered as a streaming producer
    protocol.pauseProducing()  # what the reactor does when the send buffer fills
    entry = Entry(1, 1, data=b"e" * 4000)
    message = m.AppendEntries(term=1, src="a", dst="b", prev_index=0, prev_term=0, entries=(entry,), commit=0)
    for _ in range(10):
        a.transport.send(message)
    dropped = a.unreachable.count("b")
    assert dropped == 6  # four ~4 KB messages fit in 20 KB, the fifth would not
    assert len(pump.client_transport.value()) < 30_000
    protocol.resumeProducing()
    a.unreachable.clear()
    a.transport.send(message)
    assert a.unreachable == []
    pump.flush()
    assert len(b.received) == 10 - dropped + 1
    assert all(received == message for received in b.received)


def test_second_connection_from_same_peer_replaces_the_first(reactor, a, b):
    """When a peer reconnects, its previous inbound connection is closed."""
    first = link_up(reactor, a, b)
    old_server = first.server
    a2 = Node("a", reactor)
    a2.transport.dial("b")
    second = accept(reactor, b.server)
    first.flush()
    assert first.closed
    assert b.server.inbound["a"] is second.server is not old_server


def test_address_change_redials(reactor, a, b):
    """A new address for a peer stops the old link and dials the new one."""
    link_up(reactor, a, b)
    a.addresses["b"] = ("127.0.0.22", 7002)
    a.transport.send(m.TimeoutNow(term=1, src="a", dst="b"))
    assert a.unreachable == ["b"]
    assert reactor.tcpClients[-1][:2] == ("127.0.0.22", 7002)


def test_stop_closes_links_and_silences_send(reactor, a, b):
    """After stop() outbound and inbound connections close and send() does nothing."""
    pump = link_up(reactor, a, b)
    c = Node("c", reactor)
    c.transport.dial("a")
    inbound = accept(reactor, a.server)
    _, silent = _raw_client(reactor, a.server)  # connected, never said Hello
    stopped = []
    a.transport.stop().addCallback(stopped.append)
    for p in (pump, inbound, silent):
        p.flush()
    assert pump.closed and inbound.closed and silent.closed
    assert a.server.connections == set()
    assert stopped == [None]
    def dials_from_a():
        return len([attempt for attempt in reactor.tcpClients if attempt[4] == ("127.0.0.1", 0)])

    attempts = dials_from_a()
    a.transport.send(m.TimeoutNow(term=1, src="a", dst="b"))
    reactor.advance(10)
    assert dials_from_a() == attempts
    assert a.unreachable == []  # a stopped transport is silent, not "unreachable"


def test_string_transport_sanity():
    """The fake transport records writes (guards the helpers the other tests rely on)."""
    t = StringTransport()
    t.write(b"x")
    assert t.value() == b"x"


def test_silent_listener_times_out_the_hello(reactor, a, b):
    """A listener that accepts TCP but never answers Hello is aborted after connect_timeout_s and redialled later."""
    a.transport.dial("b")
    pump = accept(reactor, b.server, flush=False)  # bytes are never delivered
    with LogCapture() as logs:
        reactor.advance(a.transport.connect_timeout_s - 0.01)
        assert not pump.client_transport.disconnecting
        reactor.advance(0.02)
    assert pump.client_transport.disconnected  # aborted, not a polite close
    assert any("no answer to Hello" in line for line in logs.messages(LogLevel.warn))
    assert a.transport._links["b"].handshake_failures == 1
    pump.close(error.ConnectionAborted())
    attempts = len(reactor.tcpClients)
    reactor.advance(0.41)  # policy(1 + 1 handshake failure) = 0.4 s
    assert len(reactor.tcpClients) == attempts + 1


def test_oversized_key_breaks_framing_and_disconnects(reactor, b):
    """A key length over 255 cannot be AMP: the connection is logged and closed, nothing raised."""
    client, pump = _raw_client(reactor, b.server)
    with LogCapture() as logs:
        pump.client_transport.write(b"\x01\x00" + b"k" * 256)
        pump.flush()
    assert pump.closed
    assert any("breaks AMP framing" in line for line in logs.messages(LogLevel.warn))


class _RecordingSocket:
    def __init__(self):
        self.options = {}

    def setsockopt(self, level, option, value):
        self.options[(level, option)] = value


class _HandleTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.sock = _RecordingSocket()

    def getHandle(self):
        return self.sock


def test_sockets_get_a_user_timeout_and_keepalive_probes():
    """Real sockets are tuned so a dead peer is noticed in seconds (where the OS has the options)."""
    import socket

    from kvd.wire.peers import tune_socket

    transport = _HandleTransport()
    tune_socket(transport, 10.0)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert transport.sock.options[(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)] == 10000
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert transport.sock.options[(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)] == 5
    tune_socket(StringTransport(), 10.0)  # no handle: silently nothing


def test_a_peer_that_dials_us_is_dialled_back_at_once(reactor, a, b):
    """Our link to b is down and waiting out its backoff; when b dials us (it restarted), we dial b now
    rather than after the backoff, so a restarted node hears from us (its leader) at once."""
    assert a.transport.dial("b")
    for _ in range(4):  # b is down: refused, with growing backoff
        refuse(reactor)
        reactor.advance(a.transport.retry_policy(10))
    refuse(reactor)
    attempts = len(reactor.tcpClients)
    link_up(reactor, b, a)  # b is back and dials a: a accepts its Hello
    assert len(reactor.tcpClients) == attempts + 2, "a did not dial b back at once"
    accept(reactor, b.server)
    assert a.transport.is_connected("b")


def test_a_connected_link_is_left_alone_when_the_peer_dials_us(reactor, a, b):
    link_up(reactor, a, b)
    link = a.transport._links["b"]
    link_up(reactor, b, a)
    assert a.transport._links["b"] is link and a.transport.is_connected("b")


def test_redial_skips_the_backoff_of_a_down_link_and_leaves_a_connected_one(reactor, a, b):
    """A node that became a member is dialled at once (the node redials every member on a configuration change)."""
    assert a.transport.dial("b")
    for _ in range(4):  # b refuses: growing backoff
        refuse(reactor)
        reactor.advance(a.transport.retry_policy(10))
    refuse(reactor)
    attempts = len(reactor.tcpClients)
    a.transport.redial("b")
    assert len(reactor.tcpClients) == attempts + 1, "redial waited for the backoff"
    accept(reactor, b.server)
    assert a.transport.is_connected("b")
    link = a.transport._links["b"]
    a.transport.redial("b")
    assert a.transport._links["b"] is link and len(reactor.tcpClients) == attempts + 1
    a.transport.redial("c")  # no link yet: one is started
    assert "c" in a.transport.dialled()
