"""
Leases on disk (kvd.kv.leases records among the sessions of kvd.store.state): the same answers as the
in-memory machine, flushed or not, across a restart, and through a streamed snapshot.
"""

import random

import pytest

from kvd.kv.commands import (
    Delete, Expire, FlushAll, Get, Keys, DbSize, Lease, LeaseRead, Rename, Set, Tick, Ttl,
)
from kvd.kv.machine import KVMachine
from kvd.raft.messages import Configuration, HardState, Snapshot
from tests.store.test_expiry_state import memory_apply, stamped
from tests.store.test_state import Node, scan_all, stream_into

KEYS = [b"k%d" % i for i in range(12)] + [b"long-" + b"x" * 600 + b"%d" % i for i in range(2)]


def commands(rng, n):
    now = 1_000_000
    ids = []
    for index in range(1, n + 1):
        now += rng.choice((0, 30, 400, 1_500))
        key, other = rng.choice(KEYS), rng.choice(KEYS)
        lease_id = rng.choice(ids) if ids else 1
        r = rng.random()
        if r < 0.1:
            cmd = Lease("grant", ttl=rng.choice((1, 2, 4)))
            ids.append(index)  # the id is the granting entry's index (every command here is one entry)
        elif r < 0.25:
            cmd = Lease("keepalive", id=lease_id)
        elif r < 0.28:
            cmd = Lease("revoke", id=lease_id)
        elif r < 0.3:
            cmd = Lease("promote")
        elif r < 0.6:
            cmd = Set(key, b"v", lease=lease_id)
        elif r < 0.65:
            cmd = Rename(key, other)
        elif r < 0.7:
            cmd = Expire("pexpire", key, 500)
        elif r < 0.75:
            cmd = Delete((key,))
        elif r < 0.76:
            cmd = FlushAll()
        else:
            cmd = Tick()
        yield now, cmd


def same_reads(a, b):
    for key in KEYS:
        for op in (Get(key), Ttl("pttl", key)):
            assert repr(a.read(op)) == repr(b.read(op)), op
    for op in (Keys(b"*"), DbSize(), LeaseRead("list")):
        assert a.read(op) == b.read(op), op
    for lease_id in b.read(LeaseRead("list")):
        assert a.read(LeaseRead("ttl", lease_id, True)) == b.read(LeaseRead("ttl", lease_id, True))
    assert scan_all(a, 5) == scan_all(b, 5)


@pytest.mark.parametrize("seed", range(3))
def test_same_answers_as_memory_flushed_or_not_and_after_a_restart(tmp_path, seed):
    rng = random.Random(seed)
    node, memory = Node(str(tmp_path / "a")), KVMachine(session_ttl_ms=10 ** 9)
    seq = 0
    for now, cmd in commands(rng, 400):
        seq += 1
        assert repr(stamped(node, cmd, now)) == repr(memory_apply(memory, seq, cmd, now)), cmd
        if rng.random() < 0.3:
            node.flush()
        if seq % 40 == 0:
            same_reads(node.machine, memory)
            node.machine.check()
    # And a lease alive at the end, with keys (the random ones above mostly expired).
    lease_id = memory.applied_index + 1
    for cmd in (Lease("grant", ttl=60), Set(KEYS[0], b"v", lease=lease_id), Set(KEYS[-1], b"v", lease=lease_id)):
        seq += 1
        assert repr(stamped(node, cmd, now)) == repr(memory_apply(memory, seq, cmd, now))
    assert memory.lease_count() > 0 and memory._leases.attached_count() >= 2
    node.flush()
    node.state.check()
    node.close()
    again = Node(str(tmp_path / "a"))
    assert again.machine.applied_index == memory.applied_index
    assert again.machine.lease_count() == memory.lease_count()
    same_reads(again.machine, memory)
    again.machine.check()
    again.close()


def test_a_streamed_snapshot_carries_the_leases(tmp_path):
    leader, follower = Node(str(tmp_path / "leader"), b"c1"), Node(str(tmp_path / "follower"), b"c2")
    lease_id = stamped(leader, Lease("grant", ttl=30), 1_000)
    for i in range(20):
        stamped(leader, Set(b"key-%d" % i, b"v", lease=lease_id if i % 2 else None), 1_000)
    stamped(leader, Set(b"k" * 500, b"v", lease=lease_id), 1_000)
    leader.flush()
    index = leader.machine.applied_index
    token, stream = stream_into(leader, follower, min_index=1)
    snapshot = Snapshot(index, 1, Configuration.make(voters={"n1": "x"}, addresses={"n1": "127.0.0.1:1:2"}), token)
    follower.storage.save(HardState(term=1, commit=index), [], snapshot, sync=True)
    follower.machine.restore(token)
    assert follower.machine.read(LeaseRead("ttl", lease_id, True)) == [30, 30, sorted(
        [b"key-%d" % i for i in range(1, 20, 2)] + [b"k" * 500])]
    follower.machine.check()
    follower.close()
    reopened = Node(str(tmp_path / "follower"), b"c2")
    assert reopened.machine.read(LeaseRead("list")) == [lease_id]
    stamped(reopened, Tick(), 31_000)  # the lease expires on the follower as it would have on the leader
    assert reopened.machine.read(Get(b"key-1")) is None and reopened.machine.read(Get(b"key-2")) == b"v"
    reopened.flush()
    reopened.machine.check()
    reopened.close()
    leader.close()
