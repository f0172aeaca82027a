"""
kvd.limits: the table is coherent, each relation it checks can fail, every
layer takes its numbers from it, and the largest command it allows really
crosses every later step: the envelope, the Raft batch, the peer wire's
chunks and the follower's staging, with a forwarded command staged beside it.
"""

import pytest

from kvd.kv.codec import U64_MAX
from kvd.kv.commands import Delete, Envelope, IncrBy, MSet, Set, command_size, encode_envelope
from kvd.limits import LIMITS, LMDB_KEY_BYTES, Limits, LimitsError, MiB
from kvd.raft.log import RaftLog
from kvd.raft.messages import MAX_NODE_ID_LENGTH, AppendEntries, Entry
from kvd.wire.codec import Chunk, ChunkAssembler, MessageDecoder, bytes_frames, message_frames, pack_bytes_blob
from kvd.wire.errors import ProtocolViolation


def largest_mset(extra: int = 0, prefix: bytes = b"k") -> MSet:
    """
    An MSET whose encoding is exactly ``command_bytes + extra``: values of
    ``value_bytes`` (the most a client may send) and a last one cut to fit.
    Shared by the tests of every layer that enforces the limits.
    """
    budget = LIMITS.command_bytes + extra
    pairs = []
    while command_size(MSet(tuple(pairs) + ((prefix + b"%d" % len(pairs), b"v" * LIMITS.value_bytes),))) < budget:
        pairs.append((prefix + b"%d" % len(pairs), b"v" * LIMITS.value_bytes))
    last = prefix + b"%d" % len(pairs)
    rest = budget - command_size(MSet(tuple(pairs) + ((last, b""),)))
    value = b"w" * (rest - 2)  # its length takes three bytes, not one
    command = MSet(tuple(pairs) + ((last, value),))
    assert command_size(command) == budget and len(value) <= LIMITS.value_bytes
    return command


def test_the_default_table_is_coherent():
    """No relation is broken by the defaults, and the table's rows are the numbers the README states."""
    assert LIMITS.problems() == []
    rows = {name: value for name, value, _ in LIMITS.table()}
    assert rows["key_bytes"] == LMDB_KEY_BYTES == 511
    assert rows["value_bytes"] == 1 * MiB
    assert rows["command_bytes"] == 4 * MiB and rows["command_keys"] == 10_000
    assert rows["entry_bytes"] == 4 * MiB + 4096
    assert rows["staged_bytes"] == 64 * MiB and rows["forward_bytes"] == 16 * MiB
    # Well below staging: the largest AppendEntries and a forward take under half of it.
    assert LIMITS.append_message_bytes + LIMITS.forward_bytes <= LIMITS.staged_bytes // 2


@pytest.mark.parametrize("change,words", [
    (dict(key_bytes=LMDB_KEY_BYTES + 1), "cannot be an LMDB key"),
    (dict(value_bytes=4 * MiB), "over the command limit"),
    (dict(staged_bytes=16 * MiB), "staged_bytes (16777216) is too small"),
    (dict(forward_bytes=4 * MiB), "forward the largest entry"),
    (dict(command_bytes=32 * MiB, forward_bytes=64 * MiB, staged_bytes=96 * MiB), "stage the largest AppendEntries"),
    (dict(value_bytes=0), "value_bytes must be a positive whole number"),
    (dict(command_keys=True), "command_keys must be a positive whole number"),
])
def test_each_relation_is_checked(change, words):
    """A table that breaks a relation raises LimitsError naming it (the check is not vacuous)."""
    broken = Limits(**change)
    with pytest.raises(LimitsError) as e:
        broken.check()
    assert words in str(e.value)


def test_the_value_limit_of_a_node_is_bounded_by_one_command():
    """--value-max-bytes may go up to what a SET of it and the longest key takes in one command, no further."""
    assert LIMITS.with_value_bytes(LIMITS.value_bytes_max).value_bytes == LIMITS.value_bytes_max
    assert command_size(Set(b"k" * LIMITS.key_bytes, b"v" * LIMITS.value_bytes_max, get=True)) <= LIMITS.command_bytes
    with pytest.raises(LimitsError):
        LIMITS.with_value_bytes(LIMITS.value_bytes_max + 1)


def test_client_port_options_must_receive_and_answer_the_largest_command():
    """An output limit that cannot answer a GET of the largest value, or a client memory cap under one request, is named."""
    assert LIMITS.client_problems(64 * MiB, 1024 * MiB) == []
    assert LIMITS.client_problems(64 * MiB, 0) == []
    assert "--client-output-limit" in LIMITS.client_problems(LIMITS.value_bytes, 0)[0]
    assert "--maxmemory-clients" in LIMITS.client_problems(64 * MiB, LIMITS.request_bytes - 1)[0]


def test_every_layer_takes_its_numbers_from_the_table():
    """One place: the parser, the command table, the node, the Raft core and the peer wire use the table's values."""
    from kvd.node.settings import NodeSettings
    from kvd.raft.core import RaftSettings
    from kvd.resp import commands, parser
    from kvd.wire import codec, peers

    assert parser.DEFAULT_MAX_BULK_BYTES == LIMITS.value_bytes
    assert parser.DEFAULT_MAX_REQUEST_BYTES == LIMITS.request_bytes
    assert (commands.MAX_WRITE_BYTES, commands.MAX_WRITE_KEYS, commands.MAX_KEY_BYTES) == (
        LIMITS.command_bytes, LIMITS.command_keys, LIMITS.key_bytes)
    assert RaftSettings().append_bytes_max == LIMITS.append_bytes
    assert NodeSettings.value_max_bytes == LIMITS.value_bytes
    assert codec.DEFAULT_MAX_STAGED_BYTES == LIMITS.staged_bytes
    assert peers.DEFAULT_MAX_FORWARD_BYTES == LIMITS.forward_bytes


def test_command_size_is_the_encoded_size():
    """command_size, which the limits are checked against, is exactly what the command adds to an envelope."""
    empty = len(encode_envelope(Envelope(b"c", 1, 1, 1, IncrBy(b"", 0)))) - command_size(IncrBy(b"", 0))
    commands = [
        Set(b"k" * 200, b"v" * 20000), Set(b"", b"", ifeq=b"x" * 130, get=True), Delete((b"a", b"b" * 128)),
        MSet(((b"k" * 127, b"v" * 16384),) * 3), IncrBy(b"k", -(1 << 63)), IncrBy(b"k", (1 << 63) - 1), IncrBy(b"k", -64),
    ]
    for command in commands:
        assert len(encode_envelope(Envelope(b"c", 1, 1, 1, command))) == empty + command_size(command), command


def largest_entry(index: int) -> Entry:
    """The largest entry a client can make: a command of exactly command_bytes in the biggest envelope."""
    client_id = ("\U0010ffff" * MAX_NODE_ID_LENGTH + "/" + "ab" * 6).encode()
    command = largest_mset()
    data = encode_envelope(Envelope(client_id, U64_MAX, U64_MAX, U64_MAX, command))
    assert len(data) <= LIMITS.entry_bytes
    return Entry(index=index, term=1, data=data)


def staged(message, assembler: ChunkAssembler, forward: bytes = b""):
    """Send ``message`` (and a forwarded payload before it) through the wire's chunks into ``assembler``."""
    decoder = MessageDecoder(assembler)
    if forward:
        for _, box in bytes_frames(pack_bytes_blob(forward), 1):
            args = Chunk.parseArguments(box, None)
            assert decoder.chunk(args["blob_id"], args["seq"], args["last"], args["data"]) is None
    received = None
    for _, box in message_frames(message, 2):
        args = Chunk.parseArguments(box, None)
        received = decoder.chunk(args["blob_id"], args["seq"], args["last"], args["data"])
    return received


def test_the_largest_entry_crosses_the_wire_beside_the_largest_forward():
    """
    The leader's batch holding the largest entry (after small ones, as the
    core slices it) is staged and decoded by a follower whose connection
    already holds the largest forwarded payload; with staging one entry
    staging that cannot hold both, the same message is refused, as the
    operator saw (an entry just over the staging limit).
    """
    small = [Entry(index=i, term=1, data=b"s" * 1000) for i in range(1, 40)]
    log = RaftLog(entries=small + [largest_entry(40)])
    batch = log.slice(39, 41, LIMITS.append_bytes)
    assert len(batch) == 1 and sum(e.size() for e in batch) <= LIMITS.append_message_bytes
    batch = log.slice(40, 41, LIMITS.append_bytes)
    node = "n" * MAX_NODE_ID_LENGTH
    message = AppendEntries(term=(1 << 62) - 1, src=node, dst="m" * MAX_NODE_ID_LENGTH, prev_index=39, prev_term=1,
                            entries=tuple(batch), commit=39)
    forward = b"f" * LIMITS.forward_bytes
    assert staged(message, ChunkAssembler(LIMITS.staged_bytes), forward) == message
    with pytest.raises(ProtocolViolation):
        staged(message, ChunkAssembler(LIMITS.forward_bytes + len(batch[0].data)), forward)
