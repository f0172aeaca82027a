"""
Issue 15's commands applied by the machine, on both keyspaces: in memory
(``Keyspace``) and on disk (kvd.store.state's ``LmdbState``, flushed or not),
which must answer alike.
"""

import random

import pytest

from kvd.kv.commands import (
    MAX_STRING_BYTES, Append, Copy, DbSize, Delete, Exists, FlushAll, Get, GetDel, GetRange, Keys, MSet, MSetNX,
    RandomKey, Rename, Scan, Set, SetRange, StrLen,
)
from kvd.kv.keyspace import MAX_CURSOR, scan_position
from kvd.kv.machine import KVMachine
from kvd.kv.results import ERR_NO_SUCH_KEY, ERR_STRING_TOO_LONG, OK
from tests.store.test_state import Node, reference_apply


class Memory:
    """The in-memory machine behind the same small interface as tests.store.test_state.Node."""

    def __init__(self):
        self.machine = KVMachine(session_ttl_ms=10_000)
        self.seq = 0

    def apply(self, command):
        self.seq += 1
        return reference_apply(self.machine, self.seq, command)

    def flush(self):
        pass

    def close(self):
        pass


@pytest.fixture(params=["memory", "lmdb", "lmdb-unflushed"])
def kv(request, tmp_path):
    if request.param == "memory":
        target = Memory()
    else:
        target = Node(str(tmp_path / "n"), flush_writes=1 if request.param == "lmdb" else 10_000)
    flush = request.param == "lmdb"

    class Run:
        machine = target.machine

        def __call__(self, command):
            result = target.apply(command)
            if flush:
                target.flush()
            return result

        def read(self, op):
            return target.machine.read(op)

    yield Run()
    target.machine.check()
    target.close()


BIG = 1 << 20


def test_getdel(kv):
    kv(Set(b"k", b"v"))
    assert kv(GetDel(b"k")) == b"v"
    assert kv.read(Get(b"k")) is None and kv.read(DbSize()) == 0
    assert kv(GetDel(b"k")) is None
    assert kv.read(DbSize()) == 0


def test_append(kv):
    assert kv(Append(b"k", b"ab", BIG)) == 2
    assert kv(Append(b"k", b"", BIG)) == 2
    assert kv(Append(b"k", b"cde", BIG)) == 5
    assert kv.read(Get(b"k")) == b"abcde"
    assert kv(Append(b"e", b"", BIG)) == 0
    assert kv.read(Get(b"e")) == b"" and kv.read(DbSize()) == 2  # Redis creates the empty key


def test_append_past_the_value_limit_is_refused_and_changes_nothing(kv):
    assert kv(Append(b"k", b"12345", 8)) == 5
    assert kv(Append(b"k", b"6789", 8)) == ERR_STRING_TOO_LONG
    assert kv.read(Get(b"k")) == b"12345"
    assert kv(Append(b"k", b"678", 8)) == 8
    assert kv(Append(b"new", b"123456789", 8)) == ERR_STRING_TOO_LONG
    assert kv.read(Exists((b"new",))) == 0


def test_setrange(kv):
    assert kv(SetRange(b"k", 0, b"", BIG)) == 0
    assert kv.read(Exists((b"k",))) == 0  # an empty SETRANGE creates nothing
    assert kv(SetRange(b"k", 3, b"ab", BIG)) == 5
    assert kv.read(Get(b"k")) == b"\x00\x00\x00ab"
    assert kv(SetRange(b"k", 1, b"XY", BIG)) == 5
    assert kv.read(Get(b"k")) == b"\x00XYab"
    assert kv(SetRange(b"k", 4, b"long", BIG)) == 8
    assert kv.read(Get(b"k")) == b"\x00XYalong"
    assert kv(SetRange(b"k", 100, b"", BIG)) == 8  # empty: the length, nothing written
    assert kv(SetRange(b"k", 10, b"z", BIG)) == 11
    assert kv.read(Get(b"k")) == b"\x00XYalong\x00\x00z"


def test_setrange_past_the_value_limit_is_refused_and_changes_nothing(kv):
    assert kv(SetRange(b"k", 0, b"abc", 8)) == 3
    assert kv(SetRange(b"k", 6, b"xyz", 8)) == ERR_STRING_TOO_LONG
    assert kv(SetRange(b"k", MAX_STRING_BYTES - 1, b"x", MAX_STRING_BYTES - 1)) == ERR_STRING_TOO_LONG
    assert kv.read(Get(b"k")) == b"abc"
    assert kv(SetRange(b"k", 5, b"xyz", 8)) == 8


def test_msetnx(kv):
    assert kv(MSetNX(((b"a", b"1"), (b"b", b"2")))) == 1
    assert kv(MSetNX(((b"c", b"3"), (b"a", b"x")))) == 0
    assert kv.read(Exists((b"c",))) == 0 and kv.read(Get(b"a")) == b"1"
    assert kv(MSetNX(((b"d", b"1"), (b"d", b"2")))) == 1
    assert kv.read(Get(b"d")) == b"2"


def test_rename(kv):
    assert kv(Rename(b"a", b"b")) == ERR_NO_SUCH_KEY
    assert kv(Rename(b"a", b"a")) == ERR_NO_SUCH_KEY
    kv(MSet(((b"a", b"1"), (b"b", b"2"))))
    assert kv(Rename(b"a", b"a")) is OK
    assert kv(Rename(b"a", b"b")) is OK
    assert kv.read(Get(b"b")) == b"1" and kv.read(Exists((b"a",))) == 0 and kv.read(DbSize()) == 1
    assert kv(Rename(b"b", b"c")) is OK
    assert kv.read(Keys(b"*")) == [b"c"]


def test_renamenx(kv):
    assert kv(Rename(b"a", b"b", nx=True)) == ERR_NO_SUCH_KEY
    kv(MSet(((b"a", b"1"), (b"b", b"2"))))
    assert kv(Rename(b"a", b"a", nx=True)) == 0
    assert kv(Rename(b"a", b"b", nx=True)) == 0
    assert kv.read(Get(b"a")) == b"1" and kv.read(Get(b"b")) == b"2"
    assert kv(Rename(b"a", b"c", nx=True)) == 1
    assert kv.read(Keys(b"*")) == [b"b", b"c"]


def test_copy(kv):
    assert kv(Copy(b"a", b"b")) == 0
    kv(MSet(((b"a", b"1"), (b"b", b"2"))))
    assert kv(Copy(b"a", b"b")) == 0
    assert kv.read(Get(b"b")) == b"2"
    assert kv(Copy(b"a", b"b", replace=True)) == 1
    assert kv.read(Get(b"b")) == b"1"
    assert kv(Copy(b"a", b"c")) == 1
    assert kv.read(Keys(b"*")) == [b"a", b"b", b"c"]


def test_strlen_and_getrange(kv):
    assert kv.read(StrLen(b"k")) == 0
    assert kv.read(GetRange(b"k", 0, -1)) == b""
    kv(Set(b"k", b"Hello World"))
    assert kv.read(StrLen(b"k")) == 11
    cases = [
        ((0, 3), b"Hell"), ((-3, -1), b"rld"), ((0, -1), b"Hello World"), ((10, 100), b"d"), ((5, 3), b""),
        ((-1, -5), b""), ((-100, 2), b"Hel"), ((0, -100), b"H"), ((11, 20), b""), ((-2, 0), b""),
        ((2**63 - 1, -1), b""), ((-2**63, 2**63 - 1), b"Hello World"),
    ]
    for (start, end), expected in cases:
        assert kv.read(GetRange(b"k", start, end)) == expected, (start, end)
    kv(Set(b"e", b""))
    assert kv.read(GetRange(b"e", 0, -1)) == b"" and kv.read(StrLen(b"e")) == 0


def test_randomkey(kv):
    assert kv.read(RandomKey(0)) is None
    assert kv.read(RandomKey(MAX_CURSOR)) is None
    keys = [b"k%d" % i for i in range(20)]
    kv(MSet(tuple((k, b"v") for k in keys)))
    by_position = sorted(keys, key=lambda k: (scan_position(k), k))
    assert kv.read(RandomKey(0)) == by_position[0]
    assert kv.read(RandomKey(scan_position(by_position[7]))) == by_position[7]
    assert kv.read(RandomKey(scan_position(by_position[7]) + 1)) == by_position[8]
    assert kv.read(RandomKey(scan_position(by_position[-1]) + 1)) == by_position[0]  # wraps around
    assert kv.read(RandomKey(2**64 - 1)) in keys
    rng = random.Random(5)
    seen = {kv.read(RandomKey(rng.getrandbits(63))) for _ in range(200)}
    assert seen <= set(keys) and len(seen) > 10
    kv(Delete(tuple(keys)))
    assert kv.read(RandomKey(0)) is None


def test_flushall(kv):
    assert kv(FlushAll()) is OK
    kv(MSet(tuple((b"k%d" % i, b"v") for i in range(50))))
    assert kv.read(DbSize()) == 50
    assert kv(FlushAll()) is OK
    assert kv.read(DbSize()) == 0 and kv.read(Get(b"k1")) is None and kv.read(Keys(b"*")) == []
    assert kv.read(Scan(0, None, 100)) == [b"0", []] and kv.read(RandomKey(0)) is None
    kv(MSet(((b"k1", b"new"), (b"x", b"y"))))
    kv(Delete((b"x", b"k2")))
    assert kv.read(Keys(b"*")) == [b"k1"] and kv.read(DbSize()) == 1
    assert kv.read(Get(b"k1")) == b"new" and kv.read(Get(b"k3")) is None


def test_flushall_survives_a_restart_flushed_or_not(tmp_path):
    """Dropped in the flush's transaction: a restart sees the keys gone once it committed, all there before."""
    node = Node(str(tmp_path / "a"), flush_writes=1)
    node.apply(MSet(tuple((b"k%d" % i, b"v") for i in range(100))))
    node.flush()
    node.apply(FlushAll())
    node.apply(Set(b"after", b"1"))
    assert node.machine.read(DbSize()) == 1  # not flushed yet: the overlay hides what is stored
    node.close()
    again = Node(str(tmp_path / "a"), client=b"c2")  # c1's seq 1 is remembered: a retry would not apply
    assert again.machine.read(DbSize()) == 100 and again.machine.read(Get(b"after")) is None  # the log replays them
    again.apply(FlushAll())
    again.apply(Set(b"after", b"1"))
    again.flush()
    again.state.check()
    again.close()
    third = Node(str(tmp_path / "a"))
    assert third.machine.read(DbSize()) == 1 and third.machine.read(Keys(b"*")) == [b"after"]
    third.state.check()
    third.close()


@pytest.mark.parametrize("seed", range(2))
def test_random_sequences_answer_alike_on_both_keyspaces(tmp_path, seed):
    """The new commands mixed with the old, with flushes at random: the disk answers as memory does."""
    rng = random.Random(seed)
    node, memory = Node(str(tmp_path / "a")), Memory()
    names = [b"k%d" % i for i in range(8)]
    for i in range(300):
        a, b = rng.choice(names), rng.choice(names)
        command = rng.choice([
            lambda: Set(a, b"v%d" % rng.randrange(100)),
            lambda: Delete((a, b)),
            lambda: GetDel(a),
            lambda: Append(a, b"x" * rng.randrange(4), 40),
            lambda: SetRange(a, rng.randrange(12), b"y" * rng.randrange(4), 40),
            lambda: MSetNX(((a, b"m"), (b, b"n"))),
            lambda: Rename(a, b, nx=rng.random() < 0.5),
            lambda: Copy(a, b, replace=rng.random() < 0.5) if a != b else GetDel(a),
            lambda: FlushAll() if rng.random() < 0.2 else MSetNX(((a, b"f"),)),
        ])()
        assert node.apply(command) == memory.apply(command), command
        if rng.random() < 0.3:
            node.flush()
        if i % 30 == 0:
            for key in names:
                assert node.machine.read(Get(key)) == memory.machine.read(Get(key))
            assert node.machine.read(Keys(b"*")) == memory.machine.read(Keys(b"*"))
            assert node.machine.read(RandomKey(i * 997)) == memory.machine.read(RandomKey(i * 997))
    node.state.check()
    node.close()
