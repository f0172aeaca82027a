"""
Expiry in the machine (kvd.kv.expiry): Redis 7's semantics decided from the
log's time (the entries' stamps) only, so that two replicas fed the same
entries expire the same keys at the same indexes with the same replies.
"""

import random

import pytest

from kvd.kv.commands import (
    EXPIRE_GT, EXPIRE_LT, EXPIRE_NX, EXPIRE_XX, Copy, DbSize, Delete, Envelope, Exists, Expire, Get, GetEx,
    HashRead, HashWrite, IncrBy, Keys, KeyType, MGet, MSet, RandomKey, Rename, Scan, Script, Set, Tick,
    Transaction, Ttl, Append, Versions, decode_envelope, encode_envelope,
)
from kvd.kv.expiry import RECLAIM_PER_ENTRY, RECLAIM_PER_TICK
from kvd.kv.machine import KVMachine
from kvd.kv.results import OK, KVError


class Clocked:
    """A machine fed entries stamped with an explicit log time."""

    def __init__(self, machine=None):
        self.machine = machine or KVMachine()
        self.seq = 0
        self.now = 1_000_000

    def __call__(self, command, at=None):
        if at is not None:
            self.now = at
        self.seq += 1
        env = Envelope(b"c", self.seq, self.seq, self.now, command)
        return self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))

    def read(self, op):
        return self.machine.read(op)


@pytest.fixture
def m():
    return Clocked()


def test_codec_round_trips_the_expiry_commands():
    for cmd in [Set(b"k", b"v", expire=5, expire_at=True, keepttl=False, get=True), Set(b"k", b"v", keepttl=True),
                Set(b"k", b"v", cond="NX", expire=10), Expire("pexpire", b"k", -5, EXPIRE_XX | EXPIRE_GT),
                Expire("persist", b"k"), GetEx(b"k"), GetEx(b"k", 7, True), GetEx(b"k", persist=True), Tick(),
                Transaction((Ttl("pexpiretime", b"k"), Expire("expire", b"k", 3)))]:
        env = Envelope(b"c", 1, 1, 5, cmd)
        assert decode_envelope(encode_envelope(env)) == env


def test_set_ex_and_ttl_rounding(m):
    assert m(Set(b"k", b"v", expire=10_000)) is OK
    assert m.read(Ttl("ttl", b"k")) == 10 and m.read(Ttl("pttl", b"k")) == 10_000
    assert m.read(Ttl("pexpiretime", b"k")) == m.now + 10_000
    assert m.read(Ttl("expiretime", b"k")) == (m.now + 10_000 + 500) // 1000
    m(Tick(), at=m.now + 1_499)
    assert m.read(Ttl("ttl", b"k")) == 9 and m.read(Ttl("pttl", b"k")) == 8_501
    assert m.read(Ttl("ttl", b"nope")) == -2
    m(Set(b"p", b"v"))
    assert m.read(Ttl("ttl", b"p")) == -1 and m.read(Ttl("expiretime", b"p")) == -1


def test_a_key_is_gone_for_every_read_once_the_log_time_passes_its_expiry(m, monkeypatch):
    m(Set(b"k", b"v", expire=100))
    m(HashWrite("hset", b"h", (b"f", b"1")))
    m(Expire("pexpire", b"h", 100))
    m(Set(b"keep", b"v"))
    assert m.read(Get(b"k")) == b"v" and m.read(DbSize()) == 3
    m(Tick(), at=m.now + 99)
    assert m.read(Exists((b"k", b"h"))) == 2
    # Tick's reclaim is off here: the expired keys stay stored, yet no read sees them.
    monkeypatch.setattr("kvd.kv.expiry.View.reclaim", lambda self, limit: 0)
    m(Set(b"other", b"x"), at=m.now + 1)
    assert len(m.machine._keyspace) == 4
    assert m.read(Get(b"k")) is None and m.read(MGet((b"k", b"keep"))) == [None, b"v"]
    assert m.read(Exists((b"k", b"h", b"keep"))) == 1
    assert m.read(KeyType(b"k")) == b"none" and m.read(KeyType(b"h")) == b"none"
    assert m.read(HashRead("hget", b"h", (b"f",))) is None
    assert m.read(Keys(b"*")) == [b"keep", b"other"]
    assert sorted(m.read(Scan(0, None, 100))[1]) == [b"keep", b"other"]
    assert m.read(DbSize()) == 2
    assert all(m.read(RandomKey(p)) in (b"keep", b"other") for p in range(0, 2 ** 63, 2 ** 59))
    assert m.read(Versions((b"k",))) == [[0, m.machine.applied_index]]
    assert m.read(Ttl("ttl", b"k")) == -2
    # A write finds it gone: INCR starts from 0 with no TTL, as Redis.
    assert m(Set(b"k", b"5", cond="XX")) is None
    assert m(IncrBy(b"k", 1)) == 1 and m.read(Ttl("ttl", b"k")) == -1
    assert m(Append(b"h", b"x", 100)) == 1  # the expired hash is gone: APPEND makes a string
    m.machine.check()


def test_set_replaces_the_ttl_keepttl_keeps_it_and_in_place_writes_keep_it(m):
    m(Set(b"k", b"v", expire=10_000))
    m(Set(b"k", b"w", keepttl=True))
    assert m.read(Ttl("pttl", b"k")) == 10_000
    m(IncrBy(b"n", 1))
    m(Expire("expire", b"n", 50))
    m(IncrBy(b"n", 1))
    m(Append(b"k", b"x", 100))
    m(HashWrite("hset", b"h", (b"f", b"1")))
    m(Expire("expire", b"h", 60))
    m(HashWrite("hset", b"h", (b"g", b"2")))
    assert (m.read(Ttl("ttl", b"n")), m.read(Ttl("ttl", b"k")), m.read(Ttl("ttl", b"h"))) == (50, 10, 60)
    m(Set(b"k", b"v"))
    m(MSet(((b"n", b"1"),)))
    assert m.read(Ttl("ttl", b"k")) == -1 and m.read(Ttl("ttl", b"n")) == -1
    m(HashWrite("hdel", b"h", (b"f", b"g")))  # the last field goes: the key and its TTL with it
    m(HashWrite("hset", b"h", (b"f", b"1")))
    assert m.read(Ttl("ttl", b"h")) == -1
    m.machine.check()


def test_rename_moves_the_ttl_and_copy_copies_it(m):
    m(Set(b"a", b"1", expire=5_000))
    m(Set(b"b", b"2", expire=9_000))
    assert m(Rename(b"a", b"b")) is OK
    assert m.read(Ttl("pttl", b"b")) == 5_000 and m.read(Ttl("pttl", b"a")) == -2
    m(Set(b"c", b"3"))
    m(Set(b"d", b"4", expire=1_000))
    assert m(Rename(b"c", b"d")) is OK and m.read(Ttl("pttl", b"d")) == -1
    assert m(Copy(b"b", b"e")) == 1 and m.read(Ttl("pttl", b"e")) == 5_000
    m(HashWrite("hset", b"h", (b"f", b"1")))
    m(Expire("pexpire", b"h", 7_000))
    assert m(Copy(b"h", b"h2")) == 1 and m.read(Ttl("pttl", b"h2")) == 7_000
    assert m(Copy(b"d", b"h2", replace=True)) == 1 and m.read(Ttl("pttl", b"h2")) == -1
    m.machine.check()


def test_expire_options_and_return_codes_as_redis_7(m):
    assert m(Expire("expire", b"nope", 10)) == 0
    m(Set(b"k", b"v"))
    assert m(Expire("expire", b"k", 10, EXPIRE_XX)) == 0
    assert m(Expire("expire", b"k", 10, EXPIRE_GT)) == 0  # no TTL is an infinite one
    assert m(Expire("expire", b"k", 10, EXPIRE_LT)) == 1
    assert m(Expire("expire", b"k", 20, EXPIRE_NX)) == 0
    assert m(Expire("expire", b"k", 20, EXPIRE_LT)) == 0
    assert m(Expire("expire", b"k", 20, EXPIRE_GT | EXPIRE_XX)) == 1
    assert m(Expire("pexpire", b"k", 20_000, EXPIRE_GT)) == 0
    assert m.read(Ttl("ttl", b"k")) == 20
    assert m(Expire("persist", b"k")) == 1 and m(Expire("persist", b"k")) == 0
    assert m(Expire("persist", b"nope")) == 0
    assert m(Expire("expireat", b"k", m.now // 1000 + 100)) == 1
    assert m.read(Ttl("expiretime", b"k")) == m.now // 1000 + 100
    assert m(Expire("pexpireat", b"k", m.now)) == 1  # at or before now: deleted
    assert m.read(Get(b"k")) is None and m.read(Ttl("ttl", b"k")) == -2
    m(Set(b"k", b"v"))
    assert m(Expire("expire", b"k", -1)) == 1 and m.read(Exists((b"k",))) == 0
    m(Set(b"k", b"v"))
    big = 9_223_372_036_854_775_807
    assert m(Expire("pexpire", b"k", big)) == KVError("ERR invalid expire time in 'pexpire' command")
    assert m(Expire("pexpireat", b"k", big)) == 1
    m.machine.check()


def test_getex(m):
    assert m(GetEx(b"nope", 1000)) is None
    m(HashWrite("hset", b"h", (b"f", b"1")))
    assert isinstance(m(GetEx(b"h", persist=True)), KVError)
    m(Set(b"k", b"v"))
    assert m(GetEx(b"k", 3000)) == b"v" and m.read(Ttl("pttl", b"k")) == 3000
    assert m(GetEx(b"k")) == b"v" and m.read(Ttl("pttl", b"k")) == 3000
    assert m(GetEx(b"k", persist=True)) == b"v" and m.read(Ttl("pttl", b"k")) == -1
    assert m(GetEx(b"k", m.now + 10, expire_at=True)) == b"v" and m.read(Ttl("pttl", b"k")) == 10
    assert m(GetEx(b"k", 1, expire_at=True)) == b"v" and m.read(Get(b"k")) is None  # in the past: deleted
    m(Set(b"k", b"v", get=True, expire=1, expire_at=True))
    assert m.read(Get(b"k")) is None


def test_watch_sees_an_expiry_as_a_change(m):
    m(Set(b"k", b"v", expire=1000))
    ((exists, index),) = m.read(Versions((b"k",)))
    assert m(Transaction((Get(b"k"),), ((b"k", True, index),))) == [b"v"]
    m(Tick(), at=m.now + 1000)
    assert m(Transaction((Get(b"k"),), ((b"k", True, index),))) is None


@pytest.mark.parametrize("change", [Expire("expire", b"k", 100), Expire("persist", b"k"), GetEx(b"k", 500),
                                    GetEx(b"k", persist=True)])
@pytest.mark.parametrize("hash_key", [False, True])
def test_watch_sees_a_change_of_the_expiry_as_a_change(m, change, hash_key):
    if hash_key:
        if isinstance(change, GetEx):
            return
        m(HashWrite("hset", b"k", (b"f", b"1", b"g", b"2")))
        m(Expire("expire", b"k", 50))
    else:
        m(Set(b"k", b"v", expire=50_000))
    ((exists, index),) = m.read(Versions((b"k",)))
    assert m(change) not in (0, None)
    assert m(Transaction((KeyType(b"k"),), ((b"k", True, index),))) is None
    m.machine.check()


def test_scripts_see_and_set_expiries():
    pytest.importorskip("lupa")
    m = Clocked()
    m(Set(b"old", b"v", expire=5_000))
    body = (b"redis.call('SET', KEYS[1], 'x', 'EX', 10) redis.call('DEL', KEYS[2]) redis.call('SET', KEYS[2], 'y') "
            b"redis.call('PEXPIRE', KEYS[3], 100) "
            b"return {redis.call('TTL', KEYS[1]), redis.call('TTL', KEYS[2]), redis.call('PTTL', KEYS[3])}")
    m(Set(b"c", b"z"))
    assert m(Script("eval", body, (b"a", b"old", b"c"), (), 1 << 20)) == [10, -1, 100]
    assert m.read(Ttl("ttl", b"a")) == 10 and m.read(Ttl("ttl", b"old")) == -1 and m.read(Ttl("pttl", b"c")) == 100
    m.machine.check()


def test_reclaiming_is_bounded_and_through_the_log(m):
    for i in range(600):
        m(Set(b"k%d" % i, b"v", expire=10 + i % 7))
    m(Set(b"stay", b"v"), at=m.now + 100)
    stored = len(m.machine._keyspace)
    assert stored >= 600 - 2 * RECLAIM_PER_ENTRY
    assert m.read(DbSize()) == 1
    m(Tick())
    assert len(m.machine._keyspace) == stored - RECLAIM_PER_TICK
    for _ in range(5):
        m(Tick())
    assert len(m.machine._keyspace) == 1 and m.machine.expiry_count() == 0
    m.machine.check()


def random_workload(rng, n):
    keys = [b"k%d" % i for i in range(12)]
    now = 1_000_000
    for _ in range(n):
        now += rng.choice((0, 1, 5, 50, 400))
        key, other = rng.choice(keys), rng.choice(keys)
        op = rng.random()
        if op < 0.2:
            cmd = Set(key, b"v%d" % rng.randrange(100), expire=rng.choice((None, 1, 100, 1000)))
        elif op < 0.3:
            cmd = Set(key, b"w", keepttl=True)
        elif op < 0.45:
            cmd = Expire(rng.choice(("expire", "pexpire", "expireat", "pexpireat")), key,
                         rng.choice((-1, 0, 1, 2, 300, now // 1000 + 1, now + 200)),
                         rng.choice((0, EXPIRE_NX, EXPIRE_XX, EXPIRE_GT, EXPIRE_LT)))
        elif op < 0.5:
            cmd = Expire("persist", key)
        elif op < 0.6:
            cmd = GetEx(key, rng.choice((None, 5, 500)))
        elif op < 0.7:
            cmd = HashWrite("hset", key, (b"f", b"1")) if rng.random() < 0.5 else HashWrite("hdel", key, (b"f",))
        elif op < 0.75:
            cmd = Rename(key, other)
        elif op < 0.8:
            cmd = Copy(key, other, True) if key != other else Tick()
        elif op < 0.85:
            cmd = Delete((key,))
        elif op < 0.9:
            cmd = IncrBy(key, 1)
        elif op < 0.95:
            cmd = Tick()
        else:
            cmd = Transaction((Ttl("pttl", key), Get(other), DbSize(), Keys(b"*")))
        yield now, cmd


@pytest.mark.parametrize("seed", range(4))
def test_two_replicas_fed_the_same_entries_expire_the_same_keys_at_the_same_indexes(seed):
    rng = random.Random(seed)
    a, b = Clocked(), Clocked()
    reads = [Get(b"k%d" % i) for i in range(12)] + [Ttl("pttl", b"k%d" % i) for i in range(12)] + [
        DbSize(), Keys(b"*"), Scan(0, None, 5)]
    for at, cmd in random_workload(rng, 800):
        assert a(cmd, at) == b(cmd, at)
        assert [a.read(op) for op in reads] == [b.read(op) for op in reads]
        assert a.machine.snapshot() == b.machine.snapshot()
        if rng.random() < 0.05:  # one replica restarts from the other's snapshot
            b.machine.restore(a.machine.snapshot())
    a.machine.check()
    assert a.machine.expiry_count() > 0


def test_the_snapshot_carries_expiries_and_old_snapshots_have_none(m):
    m(Set(b"k", b"v", expire=10_000))
    m(Set(b"p", b"v"))
    copy = KVMachine()
    copy.restore(m.machine.snapshot())
    assert copy.read(Ttl("pttl", b"k")) == 10_000 and copy.read(Ttl("pttl", b"p")) == -1
    assert copy.snapshot() == m.machine.snapshot()


def test_the_expiry_index_counts_what_is_due():
    from kvd.kv.expiry import Expiries

    rng = random.Random(5)
    exp = Expiries()
    for i in range(3000):
        exp.set(b"k%d" % rng.randrange(2000), rng.randrange(1, 5000))
        if rng.random() < 0.2:
            exp.drop(b"k%d" % rng.randrange(2000))
    ats = sorted(exp.get(k) for k in list(exp._at))
    for now in (0, 1, 17, 2500, 4999, 5000, 10 ** 18):
        assert exp.count_due(now) == sum(1 for at in ats if at <= now) == len(exp.due(now))
    assert exp.first_at() == ats[0]


def test_a_version_4_snapshot_still_restores_with_no_expiries():
    from tests.kv.old_snapshots import downgrade

    m = Clocked()
    m(Set(b"k", b"v"))
    old = downgrade(m.machine.snapshot(), 4)
    assert old[4] == 4
    machine = KVMachine()
    machine.restore(old)
    assert machine.read(Get(b"k")) == b"v" and machine.expiry_count() == 0


def test_a_killed_script_applies_no_expiry():
    pytest.importorskip("lupa")
    m = Clocked()
    m(Set(b"k", b"v", expire=5_000))
    body = b"redis.call('PERSIST', KEYS[1]) redis.call('SET', KEYS[2], 'x', 'EX', 9) while true do end"
    assert "Script killed" in m(Script("eval", body, (b"k", b"n"), (), 1 << 20)).message
    assert m.read(Ttl("pttl", b"k")) == 5_000 and m.read(Get(b"n")) is None
    m.machine.check()
