# -*- test-case-name: tests.wire.test_codec -*-
"""Tests for kvd.wire.codec: every Raft message through real AMP boxes, chunking, staging."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from kvd.raft import messages as m
from kvd.raft.messages import Configuration, Entry, EntryKind, Snapshot
from kvd.wire import codec
from kvd.wire.errors import ForwardError, ProtocolViolation

MiB = 1 << 20


# ------------------------------------------------------------ generators


def _node_id(rng):
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_.éü节点"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def _int(rng):
    return rng.choice([0, 1, rng.randint(0, 1000), rng.randint(0, m.MAX_TERM)])


def _bytes(rng, big=False):
    size = rng.choice([0, 1, rng.randint(0, 64), rng.randint(0, 3000)])
    if big:
        size = rng.randint(codec.MAX_VALUE_LENGTH, 3 * codec.MAX_VALUE_LENGTH)
    return rng.getrandbits(8 * size).to_bytes(size, "big") if size else b""


def _entries(rng, big):
    start = rng.randint(1, 1 << 40)
    count = rng.randint(0, 6)
    entries = []
    for i in range(count):
        entries.append(
            Entry(index=start + i, term=_int(rng), kind=rng.choice(list(EntryKind)), data=_bytes(rng, big and i == 0))
        )
    return tuple(entries)


def _config(rng):
    members = [_node_id(rng) for _ in range(rng.randint(0, 5))]
    voters = members[: rng.randint(0, len(members))]
    learners = members[len(voters) :]
    addresses = {n: f"127.0.0.{rng.randint(1, 254)}:{rng.randint(1, 65535)}" for n in members if rng.random() < 0.7}
    return Configuration.make(voters, learners, addresses)


def random_message(rng, message_type, big=False):
    """A random instance of ``message_type``; ``big`` forces a value over AMP's cap where possible."""
    values = {}
    for f in dataclasses.fields(message_type):
        if f.name in ("src", "dst"):
            values[f.name] = _node_id(rng)
        elif f.type in ("bool",) or f.name in ("granted", "success", "transfer"):
            values[f.name] = rng.random() < 0.5
        elif f.name == "ctx":
            values[f.name] = _bytes(rng, big)
        elif f.name == "entries":
            values[f.name] = _entries(rng, big)
        elif f.name == "snapshot":
            values[f.name] = Snapshot(index=_int(rng), term=_int(rng), config=_config(rng), data=_bytes(rng, big))
        else:
            values[f.name] = _int(rng)
    return message_type(**values)


# ----------------------------------------------------- real AMP round trip


class _BoxCollector:
    """An IBoxReceiver that keeps every box the AMP parser produces."""

    def __init__(self):
        self.boxes = []

    def startReceivingBoxes(self, sender):
        pass

    def ampBoxReceived(self, box):
        self.boxes.append(box)

    def stopReceivingBoxes(self, reason):
        pass


def wire_bytes(frames):
    """Serialize frames exactly as AMP would put them on a socket."""
    out = []
    for name, strings in frames:
        box = amp.AmpBox(strings)
        box[amp.COMMAND] = name
        out.append(box.serialize())  # raises TooLong if a value breaks the cap
    return b"".join(out)


def parse_wire(data):
    collector = _BoxCollector()
    parser = amp.BinaryBoxProtocol(collector)
    parser.makeConnection(StringTransport())
    # Feed in odd-sized pieces: framing must not depend on read boundaries.
    for i in range(0, len(data), 7919):
        parser.dataReceived(data[i : i + 7919])
    return collector.boxes


def through_amp(message, decoder=None, blob_id=1):
    """Encode ``message``, serialize to AMP bytes, parse them back and decode; returns the decoded messages."""
    decoder = decoder or codec.MessageDecoder()
    frames = codec.message_frames(message, blob_id)
    decoded = []
    for box in parse_wire(wire_bytes(frames)):
        name = box.pop(amp.COMMAND)
        if name == codec.Chunk.commandName:
            args = codec.Chunk.parseArguments(box, None)
            result = decoder.chunk(args["blob_id"], args["seq"], args["last"], args["data"])
            if result is not None:
                decoded.append(result)
        else:
            decoded.append(decoder.message_box(name, box))
    return frames, decoded


# ------------------------------------------------------------------ tests


def test_every_message_type_has_a_tag_and_travels_in_the_one_raft_command():
    """Every Raft message is a one-way ``Raft`` box with one argument; the transport passes it as a keyword."""
    assert set(codec._TAG_FOR_TYPE) == set(m.MESSAGE_TYPES)
    assert len(set(codec._TAG_FOR_TYPE.values())) == len(m.MESSAGE_TYPES)
    assert codec.MESSAGE_COMMANDS_BY_NAME == {b"Raft": codec.RaftCommand}
    assert codec.RaftCommand.requiresAnswer is False
    # AMP's callRemoteString(command, requiresAnswer, **kw) takes the box as keywords.
    for command in (codec.RaftCommand, codec.Chunk):
        assert not {b"command", b"requiresAnswer"} & {name for name, _ in command.arguments}


def test_binary_layout_round_trips_without_wire():
    """encode_binary and decode_binary are inverse for every type; anything else is refused."""
    rng = random.Random(1)
    for message_type in m.MESSAGE_TYPES:
        for _ in range(50):
            message = random_message(rng, message_type)
            assert codec.decode_binary(codec.encode_binary(message)) == message
    with pytest.raises(TypeError):
        codec.encode_binary(object())


def test_the_binary_layout_is_the_documented_one():
    """A reply laid out by hand: tag 6, term, ids with u16 lengths, then success, index, conflict index and term."""
    reply = m.AppendEntriesReply(term=7, src="a", dst="bc", success=True, index=9, conflict_index=0, conflict_term=0)
    expected = (bytes([6]) + (7).to_bytes(8, "big") + b"\x00\x01a" + b"\x00\x02bc" + b"\x01"
                + (9).to_bytes(8, "big") + bytes(16))
    assert codec.encode_binary(reply) == expected


@pytest.mark.parametrize("message_type", m.MESSAGE_TYPES, ids=lambda t: t.__name__)
def test_random_messages_round_trip_through_real_amp_boxes(message_type):
    """Hundreds of random messages of each type survive serialization and parsing exactly."""
    rng = random.Random(hash(message_type.__name__) & 0xFFFF)
    decoder = codec.MessageDecoder()
    for i in range(150):
        message = random_message(rng, message_type, big=(i % 25 == 0))
        frames, decoded = through_amp(message, decoder, blob_id=i + 1)
        assert decoded == [message]
        assert all(len(v) <= codec.MAX_VALUE_LENGTH for _, box in frames for v in box.values())
    assert decoder.assembler.staged_bytes == 0


def test_small_message_is_one_raft_box():
    """A heartbeat goes as a single Raft box, never as chunks."""
    frames, decoded = through_amp(m.Heartbeat(term=3, src="a", dst="b", commit=9, ctx=b"r1"))
    assert [name for name, _ in frames] == [b"Raft"]
    assert decoded == [m.Heartbeat(term=3, src="a", dst="b", commit=9, ctx=b"r1")]


def test_one_mib_entry_is_split_and_reassembled():
    """An AppendEntries holding a 1 MiB entry travels as >= 17 Chunk boxes and decodes equal."""
    big = Entry(index=5, term=2, kind=EntryKind.NORMAL, data=random.Random(2).randbytes(MiB))
    message = m.AppendEntries(
        term=2, src="a", dst="b", prev_index=4, prev_term=2, entries=(big, Entry(6, 2, EntryKind.NOOP)), commit=4
    )
    frames, decoded = through_amp(message)
    assert {name for name, _ in frames} == {b"Chunk"}
    assert len(frames) >= MiB // codec.CHUNK_DATA_SIZE
    assert decoded == [message]


def test_three_mib_snapshot_is_split_and_reassembled():
    """An InstallSnapshot with 3 MiB of state is chunked, and only the last chunk completes it."""
    config = Configuration.make(["a", "b", "c"], ["d"], {"a": "127.0.0.1:1", "d": "127.0.0.4:1"})
    snapshot = Snapshot(index=1000, term=7, config=config, data=random.Random(3).randbytes(3 * MiB))
    message = m.InstallSnapshot(term=7, src="a", dst="b", snapshot=snapshot)
    decoder = codec.MessageDecoder()
    frames = codec.message_frames(message, blob_id=42)
    boxes = parse_wire(wire_bytes(frames))
    results = []
    for box in boxes:
        args = codec.Chunk.parseArguments(box, None)
        assert args["blob_id"] == 42
        results.append(decoder.chunk(args["blob_id"], args["seq"], args["last"], args["data"]))
    assert results[:-1] == [None] * (len(results) - 1)
    assert results[-1] == message
    assert len(boxes) >= 3 * MiB // codec.CHUNK_DATA_SIZE


def test_interleaved_blobs_are_reassembled_independently():
    """Chunks of two big messages interleaved on one stream both decode."""
    rng = random.Random(4)
    first = m.InstallSnapshot(term=1, src="a", dst="b", snapshot=Snapshot(index=1, data=rng.randbytes(200_000)))
    second = m.AppendEntries(
        term=1, src="a", dst="b", prev_index=0, prev_term=0,
        entries=(Entry(1, 1, data=rng.randbytes(150_000)),), commit=0,
    )
    f1 = codec.message_frames(first, 1)
    f2 = codec.message_frames(second, 2)
    interleaved = [f for pair in zip(f1, f2) for f in pair] + f1[len(f2) :] + f2[len(f1) :]
    decoder = codec.MessageDecoder()
    out = []
    for box in parse_wire(wire_bytes(interleaved)):
        args = codec.Chunk.parseArguments(box, None)
        msg = decoder.chunk(args["blob_id"], args["seq"], args["last"], args["data"])
        if msg is not None:
            out.append(msg)
    assert sorted(out, key=lambda x: type(x).__name__) == [second, first]


def test_assembler_rejects_out_of_order_chunks():
    """A chunk that skips a sequence number is a protocol violation."""
    assembler = codec.ChunkAssembler()
    assembler.add(1, 0, False, b"x")
    with pytest.raises(ProtocolViolation, match="chunk 2 of blob 1 where chunk 1 was due"):
        assembler.add(1, 2, True, b"y")
    with pytest.raises(ProtocolViolation):
        assembler.add(2, 1, True, b"y")  # a blob must start at 0


def test_assembler_bounds_staged_bytes_and_blobs():
    """Staging past the byte budget or the blob count raises; completed blobs free their bytes."""
    assembler = codec.ChunkAssembler(max_bytes=100, max_blobs=2)
    assembler.add(1, 0, False, b"a" * 60)
    assert assembler.staged_bytes == 60
    with pytest.raises(ProtocolViolation, match="100-byte limit"):
        assembler.add(2, 0, False, b"b" * 41)
    assert assembler.add(1, 1, True, b"a" * 30) == b"a" * 90
    assert assembler.staged_bytes == 0
    assembler.add(3, 0, False, b"")
    assembler.add(4, 0, False, b"")
    with pytest.raises(ProtocolViolation, match="more than 2 blobs"):
        assembler.add(5, 0, False, b"")


def test_bytes_blob_is_held_until_claimed():
    """A raw-bytes blob is not a message: it waits, counted, for a Forward to claim it once."""
    decoder = codec.MessageDecoder()
    payload = random.Random(5).randbytes(150_000)
    blob = codec.pack_bytes_blob(payload)
    outputs = [decoder.chunk(**kw) for kw in codec.chunk_arguments(9, blob)]
    assert outputs == [None] * len(outputs)
    assert decoder.assembler.staged_bytes == len(payload)
    assert decoder.assembler.claim(9) == payload
    assert decoder.assembler.staged_bytes == 0
    with pytest.raises(ProtocolViolation):
        decoder.assembler.claim(9)


def test_malformed_boxes_raise_protocol_violation():
    """Truncated entries, bad kinds, bad flags, trailing bytes, missing arguments and unknown names are all rejected."""
    name, strings = codec.encode_message(
        m.AppendEntries(
            term=1, src="a", dst="b", prev_index=0, prev_term=0, entries=(Entry(1, 1, data=b"xyz"),), commit=0
        )
    )
    data = strings[b"m"]
    assert codec.decode_message(name, strings).entries[0].data == b"xyz"
    with pytest.raises(ProtocolViolation, match="malformed Raft"):
        codec.decode_message(name, {b"m": data[:-1]})
    head = 1 + 8 + 2 + 1 + 2 + 1 + 24  # tag, term, src, dst, prev index/term, commit
    bad_kind = bytearray(data)
    bad_kind[head + 4 + 16] = 7  # count (4 bytes), index and term (16), then the kind byte
    with pytest.raises(ProtocolViolation):
        codec.decode_message(name, {b"m": bytes(bad_kind)})
    with pytest.raises(ProtocolViolation, match="unknown message tag"):
        codec.decode_message(name, {b"m": b"\x63" + data[1:]})
    with pytest.raises(ProtocolViolation, match="node ids"):
        codec.decode_message(name, {b"m": data[:9] + b"\xff\xff" + data[11:]})
    vote = codec.encode_binary(m.PreVoteReply(term=1, src="a", dst="b", granted=True))
    with pytest.raises(ProtocolViolation, match="not a boolean"):
        codec.decode_message(name, {b"m": vote[:-1] + b"\x02"})
    with pytest.raises(ProtocolViolation, match="trailing"):
        codec.decode_message(name, {b"m": codec.encode_binary(m.TimeoutNow(term=1, src="a", dst="b")) + b"x"})
    with pytest.raises(ProtocolViolation, match="not 1"):
        codec.decode_message(name, {b"m": vote + b"x"})
    with pytest.raises(ProtocolViolation):
        codec.decode_message(name, {})
    with pytest.raises(ProtocolViolation, match="outside"):  # a term over MAX_TERM
        codec.decode_message(name, {b"m": data[:1] + (m.MAX_TERM + 1).to_bytes(8, "big") + data[9:]})
    with pytest.raises(ProtocolViolation, match="unknown message command"):
        codec.decode_message(b"StartTLS", strings)
    with pytest.raises(ProtocolViolation):
        codec.unpack_blob(codec.pack_message_blob(name, strings)[:-3])
    with pytest.raises(ProtocolViolation, match="unknown blob kind"):
        codec.unpack_blob(b"\x07abc")


def test_entries_argument_refuses_absurd_counts():
    """A tiny value claiming a billion entries fails fast instead of looping."""
    with pytest.raises(ValueError, match="too short"):
        codec.decode_entries(b"\x40\x00\x00\x00" + b"\x00" * 10)


def test_forward_error_survives_its_wire_description():
    """ForwardError(code, message) rebuilt from str() (as AMP does) keeps code and message."""
    original = ForwardError("NOLEADER", "no leader: election in progress")
    rebuilt = ForwardError(str(original))
    assert (rebuilt.code, rebuilt.message) == ("NOLEADER", "no leader: election in progress")
    assert ForwardError("TRYAGAIN") == ForwardError(str(ForwardError("TRYAGAIN")))
    assert ForwardError("something odd happened").code == "INTERNAL"
    with pytest.raises(ValueError):
        ForwardError("lower", "message")


@pytest.mark.parametrize("value", [m.MAX_TERM + 1, (1 << 63), (1 << 64) - 1, 1 << 64, 1 << 200, -1])
def test_terms_and_indexes_beyond_the_bound_are_malformed(value):
    """A term or index outside [0, MAX_TERM] (2^62 - 1), in any integer field, an entry or a snapshot, is a
    malformed box: the transport drops it before the core sees it.  The bound itself decodes.  (The wire's
    integers are u64: a negative value or one of 2^64 or more cannot be sent at all.)"""
    vote = m.RequestVote(term=m.MAX_TERM, src="a", dst="b", last_log_index=m.MAX_INDEX, last_log_term=1)
    name, strings = codec.encode_message(vote)
    assert codec.decode_message(name, strings) == vote
    if not 0 <= value < (1 << 64):
        with pytest.raises((ValueError, struct.error)):
            codec.encode_binary(dataclasses.replace(vote, last_log_term=value))
        return
    for field in ("term", "last_log_index", "last_log_term"):
        _, strings = codec.encode_message(dataclasses.replace(vote, **{field: value}))
        with pytest.raises(ProtocolViolation, match="malformed Raft.*outside"):
            codec.decode_message(name, strings)
    reply = m.AppendEntriesReply(term=1, src="a", dst="b", success=False, index=1, conflict_index=2, conflict_term=value)
    with pytest.raises(ProtocolViolation):
        codec.decode_message(*codec.encode_message(reply))
    for entry in (Entry(value, 1), Entry(1, value)):
        name, strings = codec.encode_message(
            m.AppendEntries(term=1, src="a", dst="b", prev_index=0, prev_term=0, entries=(entry,), commit=0)
        )
        with pytest.raises(ProtocolViolation, match="out of range"):
            codec.decode_message(name, strings)
    for snap in (Snapshot(index=value, term=1), Snapshot(index=1, term=value)):
        name, strings = codec.encode_message(m.InstallSnapshot(term=1, src="a", dst="b", snapshot=snap))
        with pytest.raises(ProtocolViolation, match="out of range"):
            codec.decode_message(name, strings)


def test_node_ids_must_be_present_and_bounded():
    for bad in ("", "x" * (m.MAX_NODE_ID_LENGTH + 1)):
        for field in ("src", "dst"):
            name, strings = codec.encode_message(m.TimeoutNow(**{"term": 1, "src": "a", "dst": "b", field: bad}))
            with pytest.raises(ProtocolViolation, match="malformed Raft.*characters"):
                codec.decode_message(name, strings)
    invalid_utf8 = codec.encode_binary(m.TimeoutNow(term=1, src="a", dst="b")).replace(b"\x00\x01a", b"\x00\x01\xff")
    with pytest.raises(ProtocolViolation, match="utf-8"):
        codec.decode_message(b"Raft", {b"m": invalid_utf8})


def test_forward_batch_and_outcomes_round_trip():
    payloads = [b"", b"SET k v", bytes(range(256)) * 10]
    assert codec.decode_forward_batch(codec.encode_forward_batch(payloads)) == payloads
    outcomes = [b"+OK", ForwardError("NOLEADER", "no leader in term 3"), b"", ForwardError("TRYAGAIN", "\u00e9")]
    assert codec.decode_forward_outcomes(codec.encode_forward_outcomes(outcomes)) == outcomes


@pytest.mark.parametrize("decode, value", [
    (codec.decode_forward_batch, b"\x00\x00"),
    (codec.decode_forward_batch, b"\x00\x00\x00\x02\x00\x00\x00\x01a"),
    (codec.decode_forward_batch, b"\x00\x00\x00\x01\x00\x00\x00\x01ab"),
    (codec.decode_forward_batch, b"\xff\xff\xff\xff"),
    (codec.decode_forward_outcomes, b"\x00\x00\x00\x01\x07"),
    (codec.decode_forward_outcomes, b"\x00\x00\x00\x01\x00\x00\x00\x00\x09ab"),
    (codec.decode_forward_outcomes, b"\x00\x00\x00\x02\x00\x00\x00\x00\x00"),
    (codec.decode_forward_outcomes, b"\xff\xff\xff\xff"),
])
def test_malformed_forward_batches_and_outcomes_are_refused(decode, value):
    with pytest.raises(ValueError):
        decode(value)
