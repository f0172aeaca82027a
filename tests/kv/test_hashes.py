"""
Hashes in the machine (kvd.kv.hashes): the log's codec of the hash
commands, the in-memory snapshot (version 4), a script's buffer of hash
writes, HSCAN's cursor, and HINCRBYFLOAT's long double arithmetic.
(Compared with a real redis-server in tests/resp/test_hashes.py; on disk in
tests/store/test_hashes.py.)
"""

import random

import pytest

from kvd.kv import longdouble
from kvd.kv.codec import CodecError
from kvd.kv.results import OK
from kvd.kv.commands import (
    READ_OPS, Envelope, HashRead, HashWrite, KeyType, Scan, Script, Set, Transaction, decode_envelope, encode_envelope,
)
from kvd.kv.hashes import HASH, SMALL_HASH, field_key
from kvd.kv.keyspace import Keyspace
from kvd.kv.machine import KVMachine
from tests.kv.hash_workload import dump, random_hash_commands, scan_fields


def _apply(machine, command):
    seq = machine.applied_index + 1
    return machine.apply(seq, encode_envelope(Envelope(b"c", seq, seq, 0, command)))


@pytest.mark.parametrize("command", [
    HashWrite("hset", b"h", (b"f", b"v", b"g", b"w")), HashWrite("hmset", b"h", (b"f", b"v")),
    HashWrite("hsetnx", b"h", (b"f", b"v")), HashWrite("hdel", b"h", (b"f", b"g")),
    HashWrite("hincrby", b"h", (b"f", b"-9223372036854775808")), HashWrite("hincrbyfloat", b"h", (b"f", b"0x1p-3")),
    Transaction((HashRead("hgetall", b"h"), HashRead("hscan", b"h", (b"12", b"MATCH", b"x*")), KeyType(b"h"),
                 HashRead("hrandfield", b"h", (b"5", b"-3", b"WITHVALUES")), Scan(0, b"*", 5, "hash"),
                 Scan(0, None, 5, "other"), HashWrite("hdel", b"h", (b"f",)))),
])
def test_hash_commands_round_trip_through_the_log(command):
    env = Envelope(b"c", 1, 1, 0, command)
    assert decode_envelope(encode_envelope(env)) == env


@pytest.mark.parametrize("make", [
    lambda: HashWrite("hset", b"h", (b"f",)), lambda: HashWrite("hincrby", b"h", (b"f", b"01")),
    lambda: HashWrite("hincrbyfloat", b"h", (b"f", b"nan")), lambda: HashWrite("hget", b"h", (b"f",)),
    lambda: HashWrite("hdel", b"h", ()), lambda: HashRead("hscan", b"h", (b"-1",)),
    lambda: HashRead("hrandfield", b"h", (b"1", b"2", b"WITHSCORES")), lambda: HashRead("hget", b"h", ()),
])
def test_invalid_hash_commands_cannot_be_built(make):
    with pytest.raises((ValueError, TypeError)):
        make()


def test_an_unknown_hash_op_in_the_log_is_a_codec_error():
    data = bytearray(encode_envelope(Envelope(b"c", 1, 1, 0, HashWrite("hdel", b"h", (b"f",)))))
    data[data.index(14) + 1] = 9  # the op byte after tag 14
    with pytest.raises(CodecError, match="hash write op"):
        decode_envelope(bytes(data))


@pytest.mark.parametrize("seed", range(3))
def test_a_snapshot_keeps_hashes_and_old_versions_still_restore(seed):
    rng = random.Random(seed)
    machine = KVMachine()
    for command in random_hash_commands(rng, 300):
        if not isinstance(command, READ_OPS):
            _apply(machine, command)
    machine.check()
    restored = KVMachine()
    restored.restore(machine.snapshot())
    assert dump(restored) == dump(machine) and restored.snapshot() == machine.snapshot()
    restored.check()


def test_a_script_writes_hashes_through_its_buffer_and_a_killed_one_writes_nothing():
    machine = KVMachine()
    _apply(machine, HashWrite("hset", b"h", (b"a", b"1", b"b", b"2")))
    body = (b"redis.call('HSET', KEYS[1], 'c', '3'); redis.call('HDEL', KEYS[1], 'a');"
            b"redis.call('HINCRBY', KEYS[1], 'b', 5);"
            b"return {redis.call('HLEN', KEYS[1]), redis.call('HGET', KEYS[1], 'a'), redis.call('HGET', KEYS[1], 'b')}")
    assert _apply(machine, Script("eval", body, (b"h",), (), 1 << 20)) == [2, None, b"7"]
    assert machine.read(HashRead("hgetall", b"h")) == machine.read(HashRead("hgetall", b"h"))
    assert sorted(machine.read(HashRead("hkeys", b"h"))) == [b"b", b"c"]
    # Deleted and re-created inside one script: the old fields do not come back.
    body = b"redis.call('DEL', KEYS[1]); redis.call('HSET', KEYS[1], 'z', '1'); return redis.call('HGETALL', KEYS[1])"
    assert _apply(machine, Script("eval", body, (b"h",), (), 1 << 20)) == [b"z", b"1"]
    assert machine.read(HashRead("hgetall", b"h")) == [b"z", b"1"]
    loop = b"redis.call('HSET', KEYS[1], 'never', '1'); while true do end"
    assert _apply(machine, Script("eval", loop, (b"h",), (), 1 << 20)).message.startswith("ERR Script killed")
    assert machine.read(HashRead("hgetall", b"h")) == [b"z", b"1"]
    body = b"redis.call('SET', KEYS[1], 'x'); return redis.pcall('HSET', KEYS[1], 'f', 'v')"
    assert _apply(machine, Script("eval", body, (b"h",), (), 1 << 20)).message.startswith("WRONGTYPE")
    assert machine.read(KeyType(b"h")) == b"string"
    machine.check()


def test_hscan_returns_every_field_once_while_the_hash_changes():
    machine = KVMachine()
    _apply(machine, HashWrite("hset", b"h", tuple(x for i in range(1000) for x in (b"f%d" % i, b"v"))))
    stable = {b"f%d" % i for i in range(0, 1000, 2)}
    seen, cursor, rng = [], b"0", random.Random(1)
    while True:
        cursor, items = machine.read(HashRead("hscan", b"h", (cursor, b"COUNT", b"17")))
        seen += items[0::2]
        _apply(machine, HashWrite("hdel", b"h", tuple(b"f%d" % rng.randrange(1, 1000, 2) for _ in range(5))))
        _apply(machine, HashWrite("hset", b"h", (b"new%d" % rng.randrange(10 ** 6), b"v")))
        if cursor == b"0":
            break
    assert stable <= set(seen) and len(seen) == len(set(seen))


def test_a_small_hash_is_scanned_whole_in_one_call_as_redis_does():
    machine = KVMachine()
    _apply(machine, HashWrite("hset", b"h", tuple(x for i in range(SMALL_HASH) for x in (b"f%d" % i, b"v"))))
    cursor, items = machine.read(HashRead("hscan", b"h", (b"0", b"COUNT", b"1")))
    assert cursor == b"0" and len(items) == 2 * SMALL_HASH
    _apply(machine, HashWrite("hset", b"h", (b"one-more", b"v")))
    cursor, items = machine.read(HashRead("hscan", b"h", (b"0", b"COUNT", b"1")))
    assert cursor != b"0" and len(scan_fields(machine, b"h", 1)) == 2 * (SMALL_HASH + 1)


def test_fields_are_kept_in_field_key_order_in_memory():
    ks = Keyspace()
    fields = [b"f%d" % i for i in range(50)] + [b"L" * 1000, b"L" * 999 + b"M"]
    for field in fields:
        ks.hset(b"h", field, b"v")
    assert ks.get(b"h") is HASH and ks.hlen(b"h") == len(fields)
    assert [fk for fk, _, _ in ks.hfields_from(b"h")] == sorted(field_key(f) for f in fields)
    assert {f for _, f, _ in ks.hfields_from(b"h")} == set(fields)
    for field in fields:
        assert ks.hdel(b"h", field)
    assert ks.get(b"h") is None and len(ks) == 0
    ks.check()


@pytest.mark.parametrize("text,expected", [
    (b"0.1", b"0.1"), (b"10.5", b"10.5"), (b"-0", b"0"), (b"1e3", b"1000"), (b"0x10", b"16"),
    (b"3.0e-2", b"0.03"), (b"1e-18", b"0"), (b"-1e-18", b"0"), (b"5.0000000000000001", b"5.0000000000000001"),
    (b"123456789012345678901234567890", b"123456789012345678899921813504"),  # rounded to 64 bits, as Redis on x86-64 prints it
])
def test_long_double_parse_and_print(text, expected):
    assert longdouble.format_human(longdouble.parse(text)) == expected


def test_long_double_adds_with_one_rounding_to_64_bits():
    tenth = longdouble.parse(b"0.1")
    total = longdouble.add(longdouble.parse(b"10.5"), tenth)
    assert longdouble.format_human(total) == b"10.6"  # a double would print 10.59999999999999964
    assert longdouble.add(longdouble.parse(b"1e4932"), longdouble.parse(b"1e4932")) is None  # overflow
    for refused in (b"", b" 1", b"1 ", b"nan", b"inf", b"1e5000", b"1e-5000", b"1e", b"0x", b"1.5\x00", b"--1"):
        assert longdouble.parse(refused) is None, refused
    assert longdouble.is_infinity(b"-Infinity") and not longdouble.is_infinity(b"1e5000")
    # The least subnormal is a value; half of it rounds to zero and is refused.
    assert longdouble.parse(b"0x1p-16445") == (1, 1 << 16445)
    assert longdouble.parse(b"0x1p-16446") is None


def test_set_replaces_a_hash_and_wrongtype_guards_the_rest():
    machine = KVMachine()
    _apply(machine, HashWrite("hset", b"h", (b"a", b"1")))
    for command in (Set(b"h", b"x", get=True), Set(b"h", b"x", ifeq=b"y")):
        assert _apply(machine, command).message.startswith("WRONGTYPE")
    assert machine.read(KeyType(b"h")) == b"hash"
    assert _apply(machine, Set(b"h", b"x")) is OK
    assert machine.read(KeyType(b"h")) == b"string"
    assert machine.read(HashRead("hlen", b"h")).message.startswith("WRONGTYPE")
    machine.check()
