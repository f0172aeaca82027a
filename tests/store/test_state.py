"""
The applied state on disk (kvd.store.state): the same answers as the
in-memory keyspace, kept across a restart without replaying the log,
streamed to another store and swapped in, and never serving a corrupt value.
"""

import random

import pytest

from kvd.kv.commands import Delete, Envelope, Get, IncrBy, Keys, MSet, Scan, Set, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.raft.messages import Configuration, HardState, Snapshot
from kvd.store.lmdb import CorruptStorage, LmdbStorage
from kvd.store.schema import CorruptRecord
from kvd.store.state import STAGE_TXN_BYTES, LmdbState, StagingBusy, StateError, lmdb_key


class Node:
    """A machine on an LmdbState inside an LmdbStorage, fed envelopes as the Ready loop would."""

    def __init__(self, path, client=b"c1", **state_options):
        self.path = path
        state_options.setdefault("flush_writes", 1)  # every write flushes, unless a test says otherwise
        self.state = LmdbState(**state_options)
        self.storage = LmdbStorage(path, sync=False, state=self.state)
        self.machine = KVMachine(session_ttl_ms=10_000, keyspace=self.state)
        self.storage.open("cluster", "node")
        self.machine.reload()
        self.client = client
        self.seq = 0

    def apply(self, command):
        self.seq += 1
        env = Envelope(self.client, self.seq, self.seq, 1000 + self.seq, command)
        return self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))

    def flush(self):
        """What the next Ready's write does: the state rides with it (a synced one: a commit-only change waits for one)."""
        self.storage.save(HardState(term=1), [], None, sync=True)

    def close(self):
        self.storage.close()


def reference_apply(machine, seq, command, client=b"c1"):
    env = Envelope(client, seq, seq, 1000 + seq, command)
    return machine.apply(machine.applied_index + 1, encode_envelope(env))


def random_commands(rng, n, keys=40):
    names = [b"k%d" % i for i in range(keys)] + [b"long-" + b"x" * 600 + b"%d" % i for i in range(3)]
    for _ in range(n):
        op = rng.random()
        key = rng.choice(names)
        if op < 0.5:
            yield Set(key, b"v%d" % rng.randrange(1000))
        elif op < 0.7:
            yield Delete((key, rng.choice(names)))
        elif op < 0.85:
            yield IncrBy(b"n%d" % rng.randrange(5), rng.randrange(-5, 5))
        else:
            yield MSet(tuple((rng.choice(names), b"m%d" % rng.randrange(100)) for _ in range(3)))


def scan_all(machine, count):
    cursor, seen = 0, []
    while True:
        cursor_bytes, keys = machine.read(Scan(cursor, None, count))
        seen.extend(keys)
        cursor = int(cursor_bytes)
        if cursor == 0:
            return seen


@pytest.mark.parametrize("seed", range(3))
def test_same_answers_as_the_memory_keyspace_flushed_or_not(tmp_path, seed):
    rng = random.Random(seed)
    node, memory = Node(str(tmp_path / "a")), KVMachine(session_ttl_ms=10_000)
    for seq, command in enumerate(random_commands(rng, 400), 1):
        assert node.apply(command) == reference_apply(memory, seq, command)
        if rng.random() < 0.3:
            node.flush()  # part of the state on disk, part in the overlay
        if seq % 50 == 0:
            for key in [b"k%d" % i for i in range(40)] + [b"n1"]:
                assert node.machine.read(Get(key)) == memory.read(Get(key))
            assert len(node.state) == len(memory)
            assert node.machine.read(Keys(b"*")) == memory.read(Keys(b"*"))
            assert node.machine.read(Keys(b"k1*")) == memory.read(Keys(b"k1*"))
            for count in (1, 7, 100):
                assert scan_all(node.machine, count) == scan_all(memory, count)
    node.state.check()
    node.close()


def test_a_restart_opens_the_state_and_skips_nothing(tmp_path):
    node = Node(str(tmp_path / "a"))
    for i in range(100):
        node.apply(Set(b"k%d" % i, b"v%d" % i))
    node.flush()
    node.apply(Set(b"after-flush", b"x"))  # applied, not flushed: the log would replay it
    node.close()

    again = Node(str(tmp_path / "a"))
    assert again.machine.applied_index == 100
    assert again.machine.read(Get(b"k42")) == b"v42"
    assert again.machine.read(Get(b"after-flush")) is None
    assert len(again.state) == 100
    # The session survived: the same (client, seq) answers from memory, not applied twice.
    assert again.machine.session_count == 1
    again.close()


def test_the_state_is_flushed_in_batches_and_a_restart_applies_the_rest_again(tmp_path):
    """Between flushes the log alone holds the newest applied writes; a restart starts from the last flush."""
    node = Node(str(tmp_path / "a"), flush_keys=10, flush_writes=3)
    for i in range(4):
        node.apply(Set(b"k%d" % i, b"v"))
        node.flush()  # four log writes of one key each: the third flushes (3 writes), the fourth does not
    node.close()
    again = Node(str(tmp_path / "a"), client=b"c2", flush_keys=10, flush_writes=3)
    assert again.machine.applied_index == 3  # k3 is applied again from the log after the restart
    assert again.machine.read(Get(b"k2")) == b"v" and again.machine.read(Get(b"k3")) is None
    for i in range(3, 15):
        again.apply(Set(b"k%d" % i, b"v"))  # 12 keys in the overlay: over flush_keys
    again.flush()
    again.close()
    assert Node(str(tmp_path / "a")).machine.applied_index == 15


def test_a_compaction_always_flushes(tmp_path):
    node = Node(str(tmp_path / "a"), flush_keys=1000, flush_writes=1000)
    node.apply(Set(b"k", b"v"))
    node.flush()
    node.storage.compact(Snapshot(1, 1, Configuration(), b""))
    node.close()
    assert Node(str(tmp_path / "a")).machine.applied_index == 1


def test_a_long_key_round_trips(tmp_path):
    node = Node(str(tmp_path / "a"))
    long_key = b"k" * 5000
    node.apply(Set(long_key, b"value"))
    node.flush()
    assert node.machine.read(Get(long_key)) == b"value"
    assert node.machine.read(Get(b"k" * 4999 + b"j")) is None
    assert node.machine.read(Keys(b"k*")) == [long_key]
    assert scan_all(node.machine, 10) == [long_key]
    node.close()


def stream_into(source, target, min_index=1, piece=60 * 1024, stream_id=7):
    stream = source.state.open_stream(min_index)
    writer = target.state.begin(stream_id)
    while True:
        data = stream.read(piece)
        if not data:
            break
        writer.feed(data)
    return writer.finish(stream.count, stream.crc), stream


def test_a_streamed_snapshot_is_swapped_in_whole(tmp_path):
    leader, follower = Node(str(tmp_path / "leader"), b"c1"), Node(str(tmp_path / "follower"), b"c2")
    for i in range(3000):
        leader.apply(Set(b"key-%d" % i, b"%d" % i * 50))  # > STAGE_TXN_BYTES in all: several staging transactions
    leader.flush()
    follower.apply(Set(b"only-on-follower", b"1"))
    follower.flush()
    token, stream = stream_into(leader, follower, min_index=2000)
    assert stream.applied_index == 3000
    # Until installed, the follower serves its own state.
    assert follower.machine.read(Get(b"only-on-follower")) == b"1"
    snapshot = Snapshot(2000, 1, Configuration.make(voters={"n1": "x"}, addresses={"n1": "127.0.0.1:1:2"}), token)
    follower.storage.save(HardState(term=1, commit=2000), [], snapshot, sync=True)
    follower.machine.restore(token)
    assert follower.machine.applied_index == 3000  # newer than the snapshot's index: entries up to it are skipped
    assert follower.machine.read(Get(b"key-2999")) == b"2999" * 50
    assert follower.machine.read(Get(b"only-on-follower")) is None
    assert len(follower.state) == 3000
    assert scan_all(follower.machine, 100) == scan_all(leader.machine, 100)
    follower.close()
    reopened = Node(str(tmp_path / "follower"))
    assert reopened.machine.applied_index == 3000 and len(reopened.state) == 3000
    reopened.close()
    leader.close()


def test_a_stream_that_lies_is_refused(tmp_path):
    leader, follower = Node(str(tmp_path / "leader")), Node(str(tmp_path / "follower"))
    for i in range(10):
        leader.apply(Set(b"k%d" % i, b"v"))
    leader.flush()
    stream = leader.state.open_stream(1)
    data = bytearray(stream.read(1 << 20))
    data[-3] ^= 1  # inside the last record's sealed value
    writer = follower.state.begin(1)
    with pytest.raises(CorruptRecord, match="checksum"):
        writer.feed(bytes(data))
    # A wrong count or checksum at the end is refused too.
    stream = leader.state.open_stream(1)
    writer = follower.state.begin(2)
    writer.feed(stream.read(1 << 20))
    with pytest.raises(Exception, match="records"):
        writer.finish(stream.count + 1, stream.crc)
    # And a snapshot naming no complete stream is never installed.
    snapshot = Snapshot(5, 1, Configuration(), b"kvd-stream:" + (2).to_bytes(8, "big"))
    with pytest.raises(StateError):
        follower.storage.save(HardState(term=1, commit=5), [], snapshot, sync=True)
    follower.close()
    leader.close()


def test_a_complete_stream_waits_for_its_install(tmp_path):
    leader, follower = Node(str(tmp_path / "leader")), Node(str(tmp_path / "follower"))
    leader.apply(Set(b"k", b"v"))
    leader.flush()
    stream_into(leader, follower)
    with pytest.raises(StagingBusy):
        follower.state.begin(8)
    follower.state.settle_staging()  # the core did not take it
    follower.state.begin(9)
    follower.close()
    leader.close()


def test_a_corrupt_value_is_never_served(tmp_path):
    node = Node(str(tmp_path / "a"))
    node.apply(Set(b"victim", b"the right value"))
    node.flush()
    failures = []
    node.state.on_failure = failures.append
    env = node.storage._env
    kv = node.state._kv
    with env.begin(write=True, db=kv) as txn:
        raw = bytearray(txn.get(lmdb_key(b"victim")))
        raw[3] ^= 0x10
        txn.put(lmdb_key(b"victim"), bytes(raw))
    with pytest.raises(CorruptStorage, match="checksum"):
        node.machine.read(Get(b"victim"))
    assert len(failures) == 1 and isinstance(failures[0], CorruptStorage)
    node.close()


def test_stage_batches_are_bounded():
    assert STAGE_TXN_BYTES <= 4 << 20


def test_the_scrub_finds_a_corrupt_value_nobody_reads(tmp_path):
    node = Node(str(tmp_path / "a"))
    for i in range(250):
        node.apply(Set(b"k%d" % i, b"v%d" % i))
    node.flush()
    failures = []
    node.state.on_failure = failures.append
    passes = 0
    for _ in range(10):  # 250 keys and a session, 100 records a step: a pass every 3 steps
        passes += node.state.scrub(100)
    assert passes == 3 and not failures
    with node.storage._env.begin(write=True, db=node.state._kv) as txn:
        raw = bytearray(txn.get(lmdb_key(b"k200")))
        raw[2] ^= 1
        txn.put(lmdb_key(b"k200"), bytes(raw))
    with pytest.raises(CorruptStorage, match="checksum"):
        for _ in range(3):
            node.state.scrub(100)
    assert len(failures) == 1
    node.close()
