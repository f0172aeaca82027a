"""
Expiries on disk (kvd.kv.expiry records among the sessions of kvd.store.state):
the same answers as the in-memory machine flushed or not, across a restart,
and through a streamed snapshot.
"""

import random

import pytest

from kvd.kv.commands import (
    EXPIRE_GT, EXPIRE_NX, Delete, Envelope, Expire, Get, GetEx, HashWrite, Keys, DbSize, Rename, Set, Tick, Ttl,
    encode_envelope,
)
from kvd.kv.machine import KVMachine
from kvd.raft.messages import Configuration, HardState, Snapshot
from tests.store.test_state import Node, scan_all, stream_into


def stamped(node, command, now):
    node.seq += 1
    env = Envelope(node.client, node.seq, node.seq, now, command)
    return node.machine.apply(node.machine.applied_index + 1, encode_envelope(env))


def memory_apply(machine, seq, command, now, client=b"c1"):
    env = Envelope(client, seq, seq, now, command)
    return machine.apply(machine.applied_index + 1, encode_envelope(env))


KEYS = [b"k%d" % i for i in range(20)] + [b"long-" + b"x" * 600 + b"%d" % i for i in range(2)]


def commands(rng, n):
    now = 1_000_000
    for _ in range(n):
        now += rng.choice((0, 3, 40, 300))
        key, other = rng.choice(KEYS), rng.choice(KEYS)
        r = rng.random()
        if r < 0.3:
            cmd = Set(key, b"v%d" % rng.randrange(99), expire=rng.choice((None, 5, 200, 2000)))
        elif r < 0.45:
            cmd = Expire(rng.choice(("pexpire", "expire", "pexpireat")), key, rng.choice((-1, 100, 3, now + 50)),
                         rng.choice((0, EXPIRE_NX, EXPIRE_GT)))
        elif r < 0.5:
            cmd = Expire("persist", key)
        elif r < 0.6:
            cmd = GetEx(key, rng.choice((None, 100)))
        elif r < 0.7:
            cmd = HashWrite("hset", key, (b"f%d" % rng.randrange(3), b"1"))
        elif r < 0.75:
            cmd = HashWrite("hdel", key, (b"f%d" % rng.randrange(3),))
        elif r < 0.8:
            cmd = Rename(key, other)
        elif r < 0.85:
            cmd = Delete((key,))
        else:
            cmd = Tick()
        yield now, cmd


def same_reads(a, b):
    for key in KEYS:
        for op in (Get(key), Ttl("pttl", key)):
            ra, rb = a.read(op), b.read(op)
            assert repr(ra) == repr(rb), (op, ra, rb)
    assert a.read(Keys(b"*")) == b.read(Keys(b"*"))
    assert a.read(DbSize()) == b.read(DbSize())
    assert scan_all(a, 7) == scan_all(b, 7)


@pytest.mark.parametrize("seed", range(3))
def test_same_answers_as_memory_flushed_or_not_and_after_a_restart(tmp_path, seed):
    rng = random.Random(seed)
    node, memory = Node(str(tmp_path / "a")), KVMachine(session_ttl_ms=10_000)
    seq = 0
    for now, cmd in commands(rng, 500):
        seq += 1
        assert repr(stamped(node, cmd, now)) == repr(memory_apply(memory, seq, cmd, now))
        if rng.random() < 0.3:
            node.flush()
        if seq % 50 == 0:
            same_reads(node.machine, memory)
    assert memory.expiry_count() > 0
    node.flush()
    node.state.check()
    node.machine.check()
    node.close()
    again = Node(str(tmp_path / "a"))
    assert again.machine.applied_index == memory.applied_index
    assert again.machine.expiry_count() == memory.expiry_count()
    same_reads(again.machine, memory)
    again.machine.check()
    again.close()


def test_a_streamed_snapshot_carries_the_expiries(tmp_path):
    leader, follower = Node(str(tmp_path / "leader"), b"c1"), Node(str(tmp_path / "follower"), b"c2")
    for i in range(50):
        stamped(leader, Set(b"key-%d" % i, b"v", expire=10_000 + i if i % 2 else None), 1_000)
    stamped(leader, Set(b"k" * 500, b"v", expire=5_000), 1_000)
    leader.flush()
    stamped(follower, Set(b"key-1", b"other", expire=1), 1_000)
    follower.flush()
    token, stream = stream_into(leader, follower, min_index=1)
    snapshot = Snapshot(51, 1, Configuration.make(voters={"n1": "x"}, addresses={"n1": "127.0.0.1:1:2"}), token)
    follower.storage.save(HardState(term=1, commit=51), [], snapshot, sync=True)
    follower.machine.restore(token)
    assert follower.machine.expiry_count() == leader.machine.expiry_count() == 26
    assert follower.machine.read(Ttl("pttl", b"key-1")) == 10_001
    assert follower.machine.read(Ttl("pttl", b"key-2")) == -1
    assert follower.machine.read(Ttl("pttl", b"k" * 500)) == 5_000
    follower.machine.check()
    follower.close()
    reopened = Node(str(tmp_path / "follower"))
    assert reopened.machine.expiry_count() == 26
    assert reopened.machine.read(Ttl("pexpiretime", b"key-49")) == 11_049
    reopened.close()
    leader.close()
