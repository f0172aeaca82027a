"""Tests for kvd.kv.commands and kvd.kv.codec: typed commands and the envelope codec."""

import dataclasses
import random

import pytest

from kvd.kv.codec import Reader, Writer
from kvd.kv.commands import (
    INT64_MAX, INT64_MIN, MAX_STRING_BYTES, Append, CodecError, Copy, DbSize, Delete, Envelope, Exists, FlushAll, Get,
    GetDel,
    IncrBy, Keys, MGet, MSet, MSetNX, Rename, Scan, Set, SetRange, decode_envelope, encode_envelope, parse_int64,
)

ODD = b"\x00\r\n\xff \t*"

SAMPLE_COMMANDS = [
    Set(b"k", b"v"),
    Set(b"", b""),
    Set(ODD, ODD * 100),
    Set(b"k", b"v", cond="NX"),
    Set(b"k", b"v", cond="XX", get=True),
    Set(b"k", b"v", ifeq=b"old"),
    Set(b"k", b"v", ifeq=b"", get=True),
    Delete((b"a",)),
    Delete((b"a", b"a", ODD)),
    MSet(((b"a", b"1"),)),
    MSet(((b"a", b"1"), (ODD, b""), (b"a", b"2"))),
    IncrBy(b"n", 1),
    IncrBy(b"n", -1),
    IncrBy(b"n", 0),
    IncrBy(b"n", INT64_MAX),
    IncrBy(b"n", INT64_MIN),
    GetDel(b"k"),
    GetDel(ODD),
    Append(b"k", b"", 0),
    Append(ODD, ODD * 10, 1 << 20),
    Append(b"k", b"v", MAX_STRING_BYTES),
    SetRange(b"k", 0, b"", 0),
    SetRange(ODD, 300, ODD, 1 << 20),
    SetRange(b"k", MAX_STRING_BYTES - 1, b"x", MAX_STRING_BYTES),
    MSetNX(((b"a", b"1"),)),
    MSetNX(((b"a", b"1"), (ODD, b""), (b"a", b"2"))),
    Rename(b"a", b"b"),
    Rename(b"a", b"a", nx=True),
    Rename(ODD, b"", nx=False),
    Copy(b"a", b"b"),
    Copy(ODD, b"", replace=True),
    FlushAll(),
]


def envelopes():
    for i, cmd in enumerate(SAMPLE_COMMANDS):
        yield Envelope(b"client-%d" % i, i + 1, i, 1700000000000 + i, cmd)
    yield Envelope(b"", 0, 0, 0, Set(b"k", b"v"))
    yield Envelope(ODD, 2**64 - 1, 2**64 - 1, 2**64 - 1, IncrBy(b"x", 5))


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("env", list(envelopes()), ids=repr)
def test_round_trip(env):
    """Every kind of command, with awkward bytes and extreme integers, decodes to an equal envelope."""
    data = encode_envelope(env)
    assert isinstance(data, bytes)
    assert decode_envelope(data) == env


def test_encoding_is_deterministic_and_versioned():
    """Equal envelopes encode to equal bytes, and the first byte is the format version."""
    a = Envelope(b"c", 1, 1, 5, MSet([(b"a", b"1"), (b"b", b"2")]))
    b = Envelope(b"c", 1, 1, 5, MSet(((b"a", b"1"), (b"b", b"2"))))
    assert encode_envelope(a) == encode_envelope(b)
    assert encode_envelope(a)[0] == 1


def test_decode_accepts_bytearray_and_memoryview():
    """The log may hand us any bytes-like object."""
    data = encode_envelope(Envelope(b"c", 1, 1, 5, Set(b"k", b"v")))
    assert decode_envelope(bytearray(data)) == decode_envelope(memoryview(data)) == decode_envelope(data)


def test_encode_rejects_non_envelopes():
    """Encoding a bare command is a programming error and says so."""
    with pytest.raises(TypeError):
        encode_envelope(Set(b"k", b"v"))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("env", list(envelopes())[:8], ids=repr)
def test_every_truncation_is_a_codec_error(env):
    """Cutting a valid encoding anywhere gives CodecError, never a short but valid command."""
    data = encode_envelope(env)
    for n in range(len(data)):
        with pytest.raises(CodecError):
            decode_envelope(data[:n])


def test_trailing_bytes_are_rejected():
    """An entry longer than its command means corruption, not extra padding to ignore."""
    data = encode_envelope(Envelope(b"c", 1, 1, 5, Set(b"k", b"v")))
    with pytest.raises(CodecError, match="trailing"):
        decode_envelope(data + b"\x00")


def test_unknown_version_is_rejected():
    """A future format version is refused clearly rather than misread."""
    data = bytearray(encode_envelope(Envelope(b"c", 1, 1, 5, Set(b"k", b"v"))))
    data[0] = 2
    with pytest.raises(CodecError, match="version 2"):
        decode_envelope(bytes(data))


def test_unknown_command_tag_is_rejected():
    """A tag the codec does not know is a CodecError naming the tag."""
    w = Writer()
    w.byte(1)
    w.blob(b"c")
    w.uint(1)
    w.uint(1)
    w.uint(0)
    w.byte(99)
    with pytest.raises(CodecError, match="tag 99"):
        decode_envelope(w.getvalue())


def _set_with_flags(flags, tail=b""):
    w = Writer()
    w.byte(1)
    w.blob(b"c")
    w.uint(1)
    w.uint(1)
    w.uint(0)
    w.byte(1)
    w.blob(b"k")
    w.blob(b"v")
    w.byte(flags)
    w.raw(tail)
    return w.getvalue()


@pytest.mark.parametrize("flags", [0x03, 0x60, 0x80])
def test_invalid_set_flags_are_rejected(flags):
    """Undefined flag bits and the undefined cond code 3 are refused."""
    with pytest.raises(CodecError):
        decode_envelope(_set_with_flags(flags))


def test_decoded_commands_are_validated():
    """Bytes describing SET ... NX IFEQ (impossible to construct) do not decode."""
    with pytest.raises(CodecError, match="IFEQ"):
        decode_envelope(_set_with_flags(0x01 | 0x04, tail=b"\x01x"))


def test_empty_delete_does_not_decode():
    """DEL with zero keys cannot be built, so it cannot be decoded either."""
    w = Writer()
    w.byte(1)
    w.blob(b"c")
    w.uint(1)
    w.uint(1)
    w.uint(0)
    w.byte(2)
    w.uint(0)
    with pytest.raises(CodecError):
        decode_envelope(w.getvalue())


def test_huge_counts_fail_fast():
    """A count far beyond the input size is refused before any allocation proportional to it."""
    w = Writer()
    w.byte(1)
    w.blob(b"c")
    w.uint(1)
    w.uint(1)
    w.uint(0)
    w.byte(2)
    w.uint(2**62)
    with pytest.raises(CodecError, match="count"):
        decode_envelope(w.getvalue())


def test_overlong_and_oversized_varints_are_rejected():
    """Non-canonical and >64-bit varints are CodecErrors, keeping the encoding unique."""
    with pytest.raises(CodecError, match="over-long"):
        Reader(b"\x80\x00").uint()
    with pytest.raises(CodecError):
        Reader(b"\xff" * 11 + b"\x01").uint()
    with pytest.raises(CodecError, match="range"):
        Reader(b"\x80\x01").uint(limit=100)


def test_incrby_delta_beyond_int64_is_rejected():
    """A zigzag delta outside signed 64 bits cannot sneak in through the log."""
    w = Writer()
    w.byte(1)
    w.blob(b"c")
    w.uint(1)
    w.uint(1)
    w.uint(0)
    w.byte(4)
    w.blob(b"k")
    w.sint(INT64_MAX + 1)
    with pytest.raises(CodecError, match="range"):
        decode_envelope(w.getvalue())


@pytest.mark.parametrize("data", ["text", None, 12, [1, 2]])
def test_non_bytes_input_is_a_codec_error(data):
    """Whatever the caller passes, the only exception is CodecError."""
    with pytest.raises(CodecError):
        decode_envelope(data)


def test_fuzz_random_bytes_only_raise_codec_error():
    """Random byte strings either decode to a valid Envelope or raise CodecError, nothing else."""
    rng = random.Random(20240601)
    for _ in range(30000):
        n = rng.randint(0, 40)
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if rng.random() < 0.5 and data:
            data = b"\x01" + data[1:]  # get past the version byte more often
        try:
            env = decode_envelope(data)
        except CodecError:
            continue
        assert isinstance(env, Envelope)
        assert encode_envelope(env) == data  # anything accepted is canonical


def test_fuzz_mutated_valid_encodings():
    """Bit flips, insertions and deletions in valid entries never raise anything but CodecError."""
    rng = random.Random(7)
    originals = [encode_envelope(e) for e in envelopes()]
    accepted = 0
    for _ in range(30000):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and pos < len(data):
                data[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[pos:pos] = bytes((rng.getrandbits(8),))
            elif pos < len(data):
                del data[pos]
        try:
            env = decode_envelope(bytes(data))
        except CodecError:
            continue
        accepted += 1
        assert encode_envelope(env) == bytes(data)
    assert accepted > 0  # some mutations (e.g. in a value) stay valid, and they re-encode exactly


# ------------------------------------------------------------- validation


def test_commands_are_frozen():
    """A command handed to Raft cannot be changed afterwards."""
    cmd = Set(b"k", b"v")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd.value = b"w"


@pytest.mark.parametrize(
    "build,error",
    [
        (lambda: Set("k", b"v"), TypeError),
        (lambda: Set(b"k", "v"), TypeError),
        (lambda: Set(b"k", b"v", cond="nx"), ValueError),
        (lambda: Set(b"k", b"v", cond="NX", ifeq=b"x"), ValueError),
        (lambda: Set(b"k", b"v", cond="XX", ifeq=b"x"), ValueError),
        (lambda: Set(b"k", b"v", ifeq="x"), TypeError),
        (lambda: Set(b"k", b"v", get=1), TypeError),
        (lambda: Delete(()), ValueError),
        (lambda: Delete(b"abc"), TypeError),
        (lambda: Delete(("a",)), TypeError),
        (lambda: MSet(()), ValueError),
        (lambda: MSet(((b"a",),)), ValueError),
        (lambda: MSet(((b"a", 1),)), TypeError),
        (lambda: IncrBy(b"n", INT64_MAX + 1), ValueError),
        (lambda: IncrBy(b"n", 1.0), TypeError),
        (lambda: IncrBy(b"n", True), TypeError),
        (lambda: Envelope(b"c", -1, 0, 0, Set(b"k", b"v")), ValueError),
        (lambda: Envelope(b"c", 1, 0, 0, Get(b"k")), TypeError),
        (lambda: Envelope("c", 1, 0, 0, Set(b"k", b"v")), TypeError),
        (lambda: Scan(count=0), ValueError),
        (lambda: Scan(cursor=-1), ValueError),
        (lambda: Scan(match="x"), TypeError),
        (lambda: MGet(()), ValueError),
        (lambda: Exists([b"a", None]), TypeError),
        (lambda: Keys("*"), TypeError),
        (lambda: Get(None), TypeError),
        (lambda: GetDel("k"), TypeError),
        (lambda: Append(b"k", b"v", -1), ValueError),
        (lambda: Append(b"k", b"v", MAX_STRING_BYTES + 1), ValueError),
        (lambda: SetRange(b"k", -1, b"v", 10), ValueError),
        (lambda: SetRange(b"k", MAX_STRING_BYTES, b"v", 10), ValueError),
        (lambda: SetRange(b"k", 0, "v", 10), TypeError),
        (lambda: MSetNX(()), ValueError),
        (lambda: Rename(b"a", b"b", nx=1), TypeError),
        (lambda: Copy(b"a", b"a"), ValueError),
        (lambda: Copy(b"a", b"b", replace=None), TypeError),
    ],
)
def test_invalid_commands_cannot_be_built(build, error):
    """Each invalid construction raises a precise error instead of producing a bad command."""
    with pytest.raises(error):
        build()


def test_sequences_are_normalised_to_tuples():
    """Lists are accepted and stored as tuples so commands stay hashable and immutable."""
    assert Delete([b"a", b"b"]).keys == (b"a", b"b")
    assert MSet([[b"a", b"1"]]).pairs == ((b"a", b"1"),)
    assert MGet([b"a"]).keys == (b"a",)
    assert hash(Delete([b"a"])) == hash(Delete((b"a",)))
    assert DbSize() == DbSize()


@pytest.mark.parametrize(
    "text,value",
    [
        (b"0", 0),
        (b"1", 1),
        (b"-1", -1),
        (b"9223372036854775807", INT64_MAX),
        (b"-9223372036854775808", INT64_MIN),
        (b"9223372036854775808", None),
        (b"-9223372036854775809", None),
        (b"", None),
        (b"-", None),
        (b"-0", None),
        (b"01", None),
        (b"+1", None),
        (b" 1", None),
        (b"1 ", None),
        (b"1.0", None),
        (b"1e3", None),
        (b"\xd9\xa1", None),  # an Arabic-Indic digit: not ASCII
        (b"123456789012345678901", None),
    ],
)
def test_parse_int64_matches_redis_string2ll(text, value):
    """Only canonical signed 64-bit decimals parse, exactly like Redis's string2ll."""
    assert parse_int64(text) == value


@pytest.mark.parametrize("cmd", SAMPLE_COMMANDS, ids=repr)
def test_command_size_is_the_encoded_size(cmd):
    """command_size (what the limits are checked against) is exactly the command's bytes in its envelope."""
    from kvd.kv.commands import command_size

    base = len(encode_envelope(Envelope(b"c", 1, 1, 5, cmd)))
    empty = Envelope(b"c", 1, 1, 5, GetDel(b""))
    assert base - len(encode_envelope(empty)) + command_size(GetDel(b"")) == command_size(cmd)


def test_command_keys_and_write_keys_of_the_new_commands():
    """RENAME and COPY touch two keys, MSETNX its pairs; write_keys names them for the key length limit."""
    from kvd.kv.commands import command_keys, write_keys

    assert command_keys(Rename(b"a", b"b")) == 2 and write_keys(Rename(b"a", b"b")) == (b"a", b"b")
    assert command_keys(Copy(b"a", b"b")) == 2 and write_keys(Copy(b"a", b"b", True)) == (b"a", b"b")
    pairs = MSetNX(((b"a", b"1"), (b"b", b"2"), (b"a", b"3")))
    assert command_keys(pairs) == 3 and write_keys(pairs) == (b"a", b"b", b"a")
    for cmd in (GetDel(b"k"), Append(b"k", b"v", 9), SetRange(b"k", 1, b"v", 9)):
        assert command_keys(cmd) == 1 and write_keys(cmd) == (b"k",)
    assert command_keys(FlushAll()) == 0 and write_keys(FlushAll()) == ()


@pytest.mark.parametrize("cmd", [Rename(b"a", b"b"), Copy(b"a", b"b")], ids=repr)
def test_rename_and_copy_flags_beyond_one_are_rejected(cmd):
    """Their flag byte is 0 or 1; anything else is a CodecError, never a command."""
    data = bytearray(encode_envelope(Envelope(b"c", 1, 1, 5, cmd)))
    assert data[-1] == 0
    data[-1] = 2
    with pytest.raises(CodecError, match="flag 2"):
        decode_envelope(bytes(data))


def test_decoded_copy_onto_itself_is_rejected():
    """A COPY of a key onto itself cannot be built, so it cannot be decoded either."""
    data = encode_envelope(Envelope(b"c", 1, 1, 5, Copy(b"a", b"b")))
    forged = data.replace(b"\x01a\x01b", b"\x01a\x01a")
    assert forged != data
    with pytest.raises(CodecError):
        decode_envelope(forged)
