"""
Fuzzing the parsers that read what strangers send: the RESP request parser
and the whole client-port protocol (kvd.resp), the DNS server's packet
handling (kvd.discovery.dns) and the peer message decoder (kvd.wire.codec).

Random bytes, and valid inputs mutated (bytes flipped, cut, spliced,
repeated), each fed whole and in random pieces.  Each must: raise nothing
(or only its documented error), hold bounded memory, and answer with a
clear error.  ``make fuzz`` runs the same tests with many more examples
(tests/fuzz/conftest.py).
"""

from __future__ import annotations

import struct

import dns.message
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.discovery.dns import TCPProtocol, make_dns
from kvd.kv.results import OK
from kvd.resp.parser import ProtocolError, RespParser
from kvd.resp.protocol import RespFactory
from kvd.wire import codec
from kvd.wire.errors import ProtocolViolation
from tests.discovery.fakes import FakeNode
from tests.resp.test_protocol import MachineExecutor

# ------------------------------------------------------------ input shapes

VALID_REQUESTS = [
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n",
    b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
    b"PING\r\n",
    b'SET k "two words\\x41\\n" \'x\'\r\n',
    b"*1\r\n$4\r\nPING\r\n*0\r\n*-1\r\n",
    b"MGET a b c\r\n",
    b"*4\r\n$4\r\nSCAN\r\n$1\r\n0\r\n$5\r\nMATCH\r\n$3\r\n*a?\r\n",
    b"KEYS [a-z]*\\\r\n",
    b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n",
    b"HELLO 3 AUTH u p\r\n",
    b"*3\r\n$3\r\nSET\r\n$-1\r\n$99999999999999999999\r\n",
    b"SETRANGE k 536870911 x\r\nAPPEND k tail\r\nGETRANGE k -3 -1\r\n",
    b"COPY a b REPLACE DB 0\r\nRENAME b c\r\nRENAMENX c a\r\nMSETNX x 1 y 2\r\nTYPE x\r\nRANDOMKEY\r\n",
    b"SETNX n 1\r\nGETSET n 2\r\nGETDEL n\r\nUNLINK n x\r\nSTRLEN k\r\nSUBSTR k 0 9\r\n",
]


@st.composite
def mutated(draw, seeds):
    """A valid input with a few bytes flipped, cut, duplicated or spliced with another."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(seeds), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.integers(0, 3))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if action == 0:
            data[i] = draw(st.integers(0, 255))
        elif action == 1:
            del data[i:i + draw(st.integers(1, 8))]
        elif action == 2:
            data[i:i] = data[i:i + draw(st.integers(1, 16))] * draw(st.integers(1, 4))
        else:
            data[i:i] = draw(st.sampled_from([b"\r\n", b"*", b"$", b"-1", b"9999999", b"\x00", b"\"", b"'", b"\\"]))
    return bytes(data)


def pieces(draw_data, data: bytes):
    """``data`` cut at random places."""
    cuts = sorted(draw_data.draw(st.lists(st.integers(0, len(data)), max_size=6)))
    out, start = [], 0
    for cut in cuts + [len(data)]:
        out.append(data[start:cut])
        start = cut
    return out


resp_inputs = st.one_of(st.binary(max_size=512), mutated(VALID_REQUESTS))

# ------------------------------------------------------------- the parser

LIMITS = dict(max_inline_bytes=256, max_bulk_bytes=128, max_args=64, max_request_bytes=1024)


@given(data=resp_inputs, split=st.data())
def test_resp_parser_never_crashes_and_holds_little(data, split):
    """Any bytes: only requests (lists of bytes) and ProtocolErrors with a message; memory bounded by the limits."""
    whole = RespParser(**LIMITS).feed(data)
    parser = RespParser(**LIMITS)
    items = []
    for piece in pieces(split, data):
        items.extend(parser.feed(piece))
        # Partial input held: at most one request's worth (plus one line being read).
        assert parser.buffered <= LIMITS["max_request_bytes"] + LIMITS["max_inline_bytes"] + 64 + len(piece)
    for item in items:
        if isinstance(item, ProtocolError):
            assert item.message and isinstance(item.recoverable, bool)
        else:
            assert isinstance(item, list) and all(isinstance(a, bytes) for a in item)
            assert len(item) <= LIMITS["max_args"] and all(len(a) <= LIMITS["max_bulk_bytes"] for a in item)
    # Where the stream splits does not change what it means.
    assert items == whole
    if any(isinstance(i, ProtocolError) and not i.recoverable for i in items):
        assert parser.failed and parser.feed(b"PING\r\n") == []


@given(data=st.binary(min_size=1, max_size=64))
def test_resp_parser_huge_declared_lengths_are_refused_before_buffering(data):
    parser = RespParser(**LIMITS)
    items = parser.feed(b"*2\r\n$3\r\nSET\r\n$999999999\r\n" + data)
    assert parser.buffered < 256
    assert all(isinstance(i, ProtocolError) for i in items)


# ------------------------------------------------- the whole client protocol


def _reply_end(data: bytes, pos: int) -> int:
    """Where the RESP2 or RESP3 reply at ``pos`` ends; AssertionError if it is not one."""
    end = data.index(b"\r\n", pos)
    kind, line = data[pos:pos + 1], data[pos + 1:end]
    after = end + 2
    if kind in (b"+", b"-"):
        assert b"\n" not in line and b"\r" not in line
        return after
    if kind == b"_":
        assert line == b""
        return after
    if kind == b":":
        int(line)
        return after
    if kind == b"$":
        n = int(line)
        if n == -1:
            return after
        assert data[after + n:after + n + 2] == b"\r\n"
        return after + n + 2
    if kind in (b"*", b"%"):
        n = int(line) * (2 if kind == b"%" else 1)
        for _ in range(max(n, 0)):
            after = _reply_end(data, after)
        return after
    raise AssertionError("not a reply: %r" % data[pos:pos + 40])


@given(data=resp_inputs, split=st.data())
def test_client_port_answers_only_well_formed_replies(data, split):
    """Whatever a client sends, the node answers complete RESP replies, errors as ``-CODE message``, and survives."""
    factory = RespFactory(MachineExecutor(), value_max_bytes=128, output_limit=64 * 1024)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    for piece in pieces(split, data):
        proto.dataReceived(piece)
    out = transport.value()
    pos = 0
    while pos < len(out):  # every byte written belongs to a whole reply
        pos = _reply_end(out, pos)
    proto.connectionLost(None)
    assert factory.connections == {}


# --------------------------------------------------------------- the DNS server

DNS_QUERIES = [
    dns.message.make_query(name, rdtype).to_wire()
    for name, rdtype in [("leader.kvd.", "SRV"), ("_kvd._tcp.kvd.", "SRV"), ("leader.kvd.", "A"), ("x.node.kvd.", "AAAA"),
                         ("kvd.", "SOA"), ("example.com.", "A")]
] + [dns.message.make_query("leader.kvd.", "SRV", use_edns=0, payload=4096).to_wire()]


class _UDPTransport:
    def __init__(self):
        self.sent = []

    def write(self, data, address):
        self.sent.append((data, address))


def _dns():
    node = FakeNode()
    node.set_leader("127.0.0.1:7002")
    return make_dns(node.view)


@given(packet=st.one_of(st.binary(max_size=600), mutated(DNS_QUERIES)))
def test_dns_udp_survives_any_datagram(packet):
    """At most one answer per datagram, never bigger than a UDP DNS answer may be, and never to a response."""
    factory, udp = _dns()
    udp.transport = _UDPTransport()
    udp.datagramReceived(packet, ("127.0.0.1", 5353))
    assert len(udp.transport.sent) <= 1
    for data, _ in udp.transport.sent:
        assert len(data) <= 4096
        assert len(packet) >= 12 and not packet[2] & 0x80  # only queries are answered


@given(packets=st.lists(st.one_of(st.binary(max_size=300), mutated(DNS_QUERIES)), max_size=4), split=st.data())
def test_dns_tcp_survives_any_stream(packets, split):
    factory, _ = _dns()
    tcp = TCPProtocol(factory)
    transport = StringTransport()
    tcp.makeConnection(transport)
    stream = b"".join(struct.pack("!H", len(p)) + p for p in packets)
    if split.draw(st.booleans()):
        stream = split.draw(mutated([stream or b"\x00"]))
    for piece in pieces(split, stream):
        tcp.dataReceived(piece)
    # Answers are length-prefixed messages; walk them.
    out = transport.value()
    while out:
        (length,) = struct.unpack("!H", out[:2])
        assert len(out) >= 2 + length
        out = out[2 + length:]
    tcp.connectionLost(None)


# ------------------------------------------------------ the peer message decoder

def _sample_blobs():
    from kvd.raft.messages import AppendEntries, Entry, EntryKind, RequestVote

    messages = [
        RequestVote(src="n1", dst="n2", term=3, last_log_index=7, last_log_term=2),
        AppendEntries(src="n1", dst="n2", term=3, prev_index=1, prev_term=1, commit=1,
                      entries=(Entry(index=2, term=3, kind=EntryKind.NORMAL, data=b"x" * 40),)),
    ]
    blobs = []
    for message in messages:
        name, box = codec.encode_message(message)
        blobs.append(codec.pack_message_blob(name, dict(box)))
    return blobs


PEER_BLOBS = _sample_blobs()


def test_the_peer_seeds_decode():
    """The mutated inputs start from real messages (so the fuzzing reaches deep into the decoder)."""
    for blob in PEER_BLOBS:
        kind, name, strings = codec.unpack_blob(blob)
        assert kind == codec.BLOB_MESSAGE and codec.decode_message(name, strings)


@given(blob=st.one_of(st.binary(max_size=400), mutated(PEER_BLOBS)))
def test_peer_decoder_raises_only_protocol_violations(blob):
    """A blob from a peer decodes to a message or raises ProtocolViolation: nothing else escapes."""
    try:
        kind, name, strings = codec.unpack_blob(blob)
        if kind == codec.BLOB_MESSAGE:
            codec.decode_message(name, strings)
    except ProtocolViolation as e:
        assert str(e)


@given(value=st.one_of(st.binary(max_size=200), st.binary(max_size=8).map(lambda b: b"\xff\xff\xff\xff" + b)))
def test_entries_decoder_refuses_absurd_counts_without_looping(value):
    try:
        codec.decode_entries(value)
    except ValueError as e:
        assert str(e)


@given(chunks=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.binary(max_size=64)), max_size=30))
def test_chunk_assembler_stays_within_its_bound(chunks):
    assembler = codec.ChunkAssembler(max_bytes=256, max_blobs=2)
    for blob_id, seq, last, data in chunks:
        try:
            assembler.add(blob_id, seq, last, data)
        except ProtocolViolation as e:
            assert str(e)
            break
        assert assembler.staged_bytes <= 256


class _Recorder:
    def __init__(self):
        self.calls = []

    def execute(self, request, connection):
        self.calls.append(request)
        return OK


@given(data=st.one_of(resp_inputs, mutated(VALID_REQUESTS + [b"AUTH wrong\r\n", b"HELLO 3 AUTH default pw\r\n",
                                                             b"POST / HTTP/1.1\r\n"])), split=st.data())
def test_without_the_password_nothing_reaches_the_node(data, split):
    """With a password set, no input that lacks it runs anything: every request is answered locally."""
    from kvd.resp.auth import ADMIN, User, Users, digest

    executor = _Recorder()
    factory = RespFactory(executor, value_max_bytes=128,
                          users=Users({"default": User("default", ADMIN, digest(b"the real one"))}))
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    for piece in pieces(split, data):
        proto.dataReceived(piece)
    assert executor.calls == [] and not proto.connection.authenticated
    out, pos = transport.value(), 0
    while pos < len(out):
        pos = _reply_end(out, pos)


def _sample_messages():
    return [codec.encode_binary(m) for m in _messages_of_every_type()]


def _messages_of_every_type():
    from kvd.raft import messages as rm

    snap = rm.Snapshot(index=5, term=2, config=rm.Configuration.make(["n1", "n2"], [], {"n1": "127.0.0.1:1"}), data=b"s")
    return [
        rm.PreVote(term=3, src="n1", dst="n2", last_log_index=7, last_log_term=2),
        rm.PreVoteReply(term=3, src="n2", dst="n1", granted=True),
        rm.RequestVote(term=3, src="n1", dst="n2", last_log_index=7, last_log_term=2, transfer=True),
        rm.RequestVoteReply(term=3, src="n2", dst="n1", granted=False),
        rm.AppendEntries(term=3, src="n1", dst="n2", prev_index=1, prev_term=1, commit=1,
                         entries=(rm.Entry(index=2, term=3, data=b"x" * 40),)),
        rm.AppendEntriesReply(term=3, src="n2", dst="n1", success=False, index=2, conflict_index=1, conflict_term=1),
        rm.Heartbeat(term=3, src="n1", dst="n2", commit=4, ctx=b"r1"),
        rm.HeartbeatReply(term=3, src="n2", dst="n1", ctx=b"r1"),
        rm.InstallSnapshot(term=3, src="n1", dst="n2", snapshot=snap),
        rm.TimeoutNow(term=3, src="n1", dst="n2"),
        rm.ReadIndexRequest(term=3, src="n2", dst="n1", ctx=b"q"),
        rm.ReadIndexReply(term=3, src="n1", dst="n2", ctx=b"q", index=9),
    ]


MESSAGE_SEEDS = _sample_messages()


def test_the_message_seeds_decode_to_every_type():
    assert len({type(codec.decode_binary(data)) for data in MESSAGE_SEEDS}) == 12


@given(name=st.sampled_from(sorted(codec.MESSAGE_COMMANDS_BY_NAME) + [b"Nope", b""]),
       data=st.one_of(st.binary(max_size=120), mutated(MESSAGE_SEEDS)), key=st.sampled_from([b"m", b"x"]))
def test_peer_messages_of_any_bytes_raise_only_protocol_violations(name, data, key):
    """Any bytes in a Raft box (from real messages of every type, mutated) decode or raise ProtocolViolation."""
    try:
        codec.decode_message(name, {key: data})
    except ProtocolViolation as e:
        assert str(e)
