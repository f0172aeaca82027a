"""
Hashes in the durable state (kvd.store.state): the same answers as the
in-memory keyspace, flushed or not, across a restart and a streamed
snapshot; one record per field, so HSET of one field writes one field;
a deleted hash's fields dropped; corrupt fields never served; data dirs of
before hashes still open.
"""

import random

import lmdb
import pytest

from kvd.kv.commands import READ_OPS, Delete, FlushAll, HashRead, HashWrite, Rename, Set
from kvd.kv.machine import KVMachine
from kvd.raft.messages import Configuration, HardState, Snapshot
from kvd.store.lmdb import CorruptStorage
from kvd.store.state import hash_prefix
from tests.kv.hash_workload import LONG_FIELD, dump, random_hash_commands, scan_fields
from tests.store.test_state import Node, reference_apply, stream_into


def _fields_db(node):
    return node.state._fields


def _field_records(node):
    with node.state._env.begin(db=_fields_db(node)) as txn:
        return [bytes(k) for k, _ in txn.cursor()]


@pytest.mark.parametrize("seed", range(4))
def test_same_answers_as_memory_flushed_or_not_and_after_a_restart(tmp_path, seed):
    rng = random.Random(seed)
    flush_keys = rng.choice([2, 1024])  # 2: the flush comes from a field count too
    node = Node(str(tmp_path / "a"), flush_keys=flush_keys, flush_writes=rng.choice([1, 4]))
    memory = KVMachine(session_ttl_ms=10_000)
    for seq, command in enumerate(random_hash_commands(rng, 500), 1):
        if isinstance(command, READ_OPS):
            assert node.machine.read(command) == memory.read(command), command
        else:
            assert node.apply(command) == reference_apply(memory, seq, command), command
        if rng.random() < 0.3:
            node.flush()  # part of the state on disk, part in the overlay
        if seq % 50 == 0:
            assert dump(node.machine) == dump(memory)
            node.state.check()
    assert dump(node.machine) == dump(memory)
    _counted_flush(node)
    node.close()
    again = Node(str(tmp_path / "a"), client=b"c2")
    assert again.machine.applied_index == memory.applied_index
    assert dump(again.machine) == dump(memory)
    again.state.check()
    again.close()


def test_a_restart_keeps_hashes_and_their_mod_index(tmp_path):
    node = Node(str(tmp_path / "a"))
    write = HashWrite("hset", b"h", (b"a", b"1", b"b", b"2", LONG_FIELD, b"long"))
    node.apply(write)
    node.apply(HashWrite("hset", b"k" * 600, (b"a", b"1")))  # a long key's header (layout 5)
    node.flush()
    mod = node.state.mod_index(b"h")
    node.close()
    memory = KVMachine()
    reference_apply(memory, 1, write)
    again = Node(str(tmp_path / "a"))
    assert again.machine.read(HashRead("hgetall", b"h")) == memory.read(HashRead("hgetall", b"h"))
    assert len(again.machine.read(HashRead("hgetall", b"h"))) == 6
    assert again.machine.read(HashRead("hget", b"h", (LONG_FIELD,))) == b"long"
    assert again.machine.read(HashRead("hget", b"h", (LONG_FIELD[:-1] + b"X",))) is None
    assert again.machine.read(HashRead("hlen", b"k" * 600)) == 1
    assert again.state.mod_index(b"h") == mod == 1
    assert again.machine.key_count() == 2
    again.close()


class _CountingTxn:
    """A write transaction that counts the records a flush puts and deletes."""

    def __init__(self, txn):
        self.txn, self.puts, self.deletes = txn, [], []

    def put(self, key, value, db=None, **kw):
        self.puts.append(bytes(key))
        return self.txn.put(key, value, db=db, **kw)

    def delete(self, key, db=None):
        self.deletes.append(bytes(key))
        return self.txn.delete(key, db=db)

    def __getattr__(self, name):
        return getattr(self.txn, name)


def _counted_flush(node):
    with node.state._env.begin(write=True) as txn:
        counting = _CountingTxn(txn)
        node.state.flush(counting, force=True)
    node.state.committed()
    return counting


def test_hset_of_one_field_writes_that_field_and_the_header_only(tmp_path):
    node = Node(str(tmp_path / "a"), flush_keys=100_000, flush_writes=100_000)
    node.apply(HashWrite("hset", b"big", tuple(x for i in range(2000) for x in (b"f%d" % i, b"v%d" % i))))
    first = _counted_flush(node)
    assert len([k for k in first.puts if k.startswith(hash_prefix(b"big"))]) == 2000
    node.apply(HashWrite("hset", b"big", (b"f7", b"new")))
    node.apply(HashWrite("hincrby", b"big", (b"n", b"5")))
    node.apply(HashWrite("hdel", b"big", (b"f8",)))
    second = _counted_flush(node)
    fields = [k for k in second.puts if k.startswith(hash_prefix(b"big"))]
    assert len(fields) == 2 and len(second.deletes) == 1  # f7 and n written, f8 deleted: nothing else
    assert len(second.puts) == 2 + 1 + 2  # the two fields, the header, the client's session and the state record
    assert node.machine.read(HashRead("hlen", b"big")) == 2000
    node.apply(HashWrite("hset", b"big", (b"f9", b"w")))  # unflushed: WATCH still sees the write
    assert node.state.mod_index(b"big") == node.machine.applied_index
    node.close()


def test_deleting_or_replacing_a_hash_drops_its_fields(tmp_path):
    node = Node(str(tmp_path / "a"))
    for key in (b"a", b"b", b"c", b"d"):
        node.apply(HashWrite("hset", key, (b"x", b"1", b"y", b"2", LONG_FIELD, b"3")))
    node.flush()
    assert len(_field_records(node)) == 12
    node.apply(Delete((b"a",)))
    node.apply(Set(b"b", b"a string now"))
    node.apply(Rename(b"c", b"c2"))
    node.apply(HashWrite("hdel", b"d", (b"x", b"y", LONG_FIELD)))  # the last field takes the hash with it
    node.flush()
    records = _field_records(node)
    assert len(records) == 3 and all(r.startswith(hash_prefix(b"c2")) for r in records)
    assert node.machine.read(HashRead("hgetall", b"b")).message.startswith("WRONGTYPE")
    assert node.machine.key_count() == 2
    # Deleted then created again before a flush: the old fields do not come back.
    node.apply(HashWrite("hset", b"c2", (b"z", b"9")))
    node.apply(Delete((b"c2",)))
    node.apply(HashWrite("hset", b"c2", (b"w", b"8")))
    node.flush()
    assert node.machine.read(HashRead("hgetall", b"c2")) == [b"w", b"8"]
    assert len(_field_records(node)) == 1
    node.apply(FlushAll())
    node.apply(HashWrite("hset", b"e", (b"k", b"v")))
    node.flush()
    assert len(_field_records(node)) == 1 and node.machine.read(HashRead("hgetall", b"e")) == [b"k", b"v"]
    node.close()


def test_hscan_pages_a_big_hash_partly_flushed(tmp_path):
    node = Node(str(tmp_path / "a"), flush_keys=100_000, flush_writes=100_000)
    memory = KVMachine(session_ttl_ms=10_000)
    first = HashWrite("hset", b"h", tuple(x for i in range(300) for x in (b"f%d" % i, b"v")))
    assert node.apply(first) == reference_apply(memory, 1, first) == 300
    node.flush()
    _counted_flush(node)
    second = HashWrite("hset", b"h", tuple(x for i in range(250, 400) for x in (b"f%d" % i, b"w")))
    assert node.apply(second) == reference_apply(memory, 2, second) == 100
    for count in (1, 7, 1000):
        paged = scan_fields(node.machine, b"h", count)
        assert paged == scan_fields(memory, b"h", count)
        assert len(paged) == 800 and len(set(paged[0::2])) == 400
    assert node.machine.read(HashRead("hgetall", b"h")) == memory.read(HashRead("hgetall", b"h"))
    node.close()


def test_a_streamed_snapshot_carries_the_fields(tmp_path):
    leader, follower = Node(str(tmp_path / "leader"), b"c1"), Node(str(tmp_path / "follower"), b"c2")
    leader.apply(HashWrite("hset", b"big", tuple(x for i in range(3000) for x in (b"f%d" % i, b"%d" % i * 200))))
    leader.apply(HashWrite("hset", b"k" * 600, (LONG_FIELD, b"1")))
    leader.apply(Set(b"s", b"string"))
    leader.flush()
    follower.apply(HashWrite("hset", b"big", (b"only-here", b"1")))
    follower.flush()
    token, stream = stream_into(leader, follower, min_index=2)
    snapshot = Snapshot(3, 1, Configuration.make(voters={"n1": "x"}, addresses={"n1": "127.0.0.1:1:2"}), token)
    follower.storage.save(HardState(term=1, commit=3), [], snapshot, sync=True)
    follower.machine.restore(token)
    assert dump(follower.machine) == dump(leader.machine)
    assert follower.machine.read(HashRead("hget", b"big", (b"only-here",))) is None
    follower.close()
    reopened = Node(str(tmp_path / "follower"))
    assert dump(reopened.machine) == dump(leader.machine)
    assert reopened.state.scrub(10_000)
    reopened.close()
    leader.close()


def test_a_corrupt_field_is_never_served_and_the_scrub_finds_it(tmp_path):
    node = Node(str(tmp_path / "a"))
    node.apply(HashWrite("hset", b"h", (b"a", b"1", b"b", b"2")))
    node.flush()
    with node.state._env.begin(write=True, db=_fields_db(node)) as txn:
        key = [bytes(k) for k, _ in txn.cursor()][0]
        raw = bytearray(txn.get(key))
        raw[-1] ^= 0xFF
        txn.put(key, bytes(raw))
    failures = []
    node.state.on_failure = failures.append
    with pytest.raises(CorruptStorage):
        node.state.scrub(100)
    with pytest.raises(CorruptStorage):
        node.machine.read(HashRead("hgetall", b"h"))
    assert failures
    node.close()


def test_a_data_dir_of_before_hashes_opens_and_takes_hashes(tmp_path):
    """No hf.N databases (a data dir written before hashes): every record is a string, and hashes work."""
    node = Node(str(tmp_path / "a"))
    node.apply(Set(b"k", b"v"))
    node.flush()
    node.close()
    env = lmdb.open(str(tmp_path / "a"), max_dbs=10, subdir=True)
    with env.begin(write=True) as txn:
        for name in (b"hf.0", b"hf.1"):
            txn.drop(env.open_db(name, txn=txn), delete=True)
    env.close()
    again = Node(str(tmp_path / "a"), client=b"c2")
    assert again.machine.read(HashRead("hget", b"k", (b"f",))).message.startswith("WRONGTYPE")
    assert again.apply(HashWrite("hset", b"h", (b"f", b"v"))) == 1
    again.flush()
    again.close()
    third = Node(str(tmp_path / "a"))
    assert third.machine.read(HashRead("hgetall", b"h")) == [b"f", b"v"]
    third.close()
