"""
Transactions (MULTI/EXEC as one log entry, tag 12) and the key versions WATCH
reads: the codec, and applying them on the memory keyspace and on the
durable one (LMDB), flushed or not, restarted, and streamed as a snapshot.
"""

import random

import pytest

from kvd.kv.codec import CodecError, Writer
from kvd.kv.commands import (
    Append, Copy, DbSize, Delete, Envelope, Exists, FlushAll, Get, GetDel, GetRange, IncrBy, Keys, MGet, MSet,
    MSetNX, RandomKey, Rename, Scan, Set, SetRange, StrLen, Transaction, Versions, command_keys, command_size,
    decode_envelope, encode_envelope, write_keys,
)
from kvd.kv.machine import KVMachine
from kvd.kv.results import OK, KVError

NOT_INT = KVError("ERR value is not an integer or out of range")

ALL_OPS = (
    Set(b"a", b"1"), Set(b"a", b"2", cond="NX", get=True), Set(b"a", b"3", ifeq=b"2"), Delete((b"a", b"b")),
    MSet(((b"a", b"1"), (b"b", b"2"))), IncrBy(b"n", -7), GetDel(b"a"), Append(b"a", b"x", 100),
    SetRange(b"a", 3, b"yz", 100), MSetNX(((b"c", b"3"),)), Rename(b"a", b"d", nx=True), Copy(b"d", b"e", True),
    FlushAll(), Get(b"a"), MGet((b"a", b"b")), Exists((b"a", b"a")), Keys(b"*"), Scan(5, b"k*", 3), Scan(0),
    DbSize(), StrLen(b"a"), GetRange(b"a", -3, 2**40), RandomKey(12345),
)


def envelope(cmd, seq=1):
    return Envelope(b"client", seq, seq, 1000, cmd)


def test_codec_round_trip_of_every_op_inside_a_transaction():
    txn = Transaction(ALL_OPS, ((b"w", True, 7), (b"x" * 600, False, 2**40)))
    data = encode_envelope(envelope(txn))
    assert decode_envelope(data) == envelope(txn)
    # command_size is the command's bytes inside the envelope, computed without encoding it.
    assert command_size(txn) == len(data) - len(encode_envelope(envelope(FlushAll()))) + 1
    assert command_keys(txn) == 2 + sum(command_keys(op) if not hasattr(op, "pattern") and isinstance(
        op, (Set, Delete, MSet, IncrBy, GetDel, Append, SetRange, MSetNX, Rename, Copy, FlushAll))
        else max(1, len(getattr(op, "keys", ()) or ((op.key,) if hasattr(op, "key") else ()))) for op in ALL_OPS)
    assert write_keys(txn)[:2] == (b"w", b"x" * 600)
    empty = Transaction(())
    assert decode_envelope(encode_envelope(envelope(empty))).command == empty


def test_transactions_are_validated():
    with pytest.raises(TypeError):
        Transaction((Transaction(()),))  # not nested
    with pytest.raises(TypeError):
        Transaction((Versions((b"a",)),))  # WATCH's read is not an op of a transaction
    with pytest.raises(TypeError):
        Transaction((), ((b"a", 1, 2),))  # exists is a bool
    with pytest.raises(ValueError):
        Transaction((), ((b"a", True),))


def _raw(*parts):
    w = Writer()
    w.byte(1)
    w.blob(b"c")
    w.uint(1)
    w.uint(1)
    w.uint(0)
    for kind, value in parts:
        getattr(w, kind)(value)
    return w.getvalue()


@pytest.mark.parametrize("parts,message", [
    ((("byte", 12), ("uint", 0), ("uint", 1), ("byte", 12), ("uint", 0), ("uint", 0)), "unknown command tag 12"),
    ((("byte", 32), ("blob", b"k")), "unknown command tag 32"),  # a read op alone is not a write
    ((("byte", 12), ("uint", 1), ("blob", b"k"), ("byte", 2), ("uint", 0), ("uint", 0)), "watched-key flag"),
    ((("byte", 12), ("uint", 0), ("uint", 1), ("byte", 36), ("uint", 0), ("uint", 1), ("byte", 4)), "SCAN flag"),
    ((("byte", 12), ("uint", 0), ("uint", 1), ("byte", 63)), "unknown read op tag 63"),
    ((("byte", 12), ("uint", 0), ("uint", 2), ("byte", 37)), "exceeds the remaining input"),
    ((("byte", 12), ("uint", 0), ("uint", 1), ("byte", 32)), "truncated"),
    ((("byte", 12), ("uint", 0), ("uint", 1), ("byte", 36), ("uint", 0), ("uint", 0), ("byte", 0)), "count"),
])
def test_malformed_transactions_are_refused(parts, message):
    with pytest.raises(CodecError, match=message):
        decode_envelope(_raw(*parts))


# ------------------------------------------------------------------ applying


class Memory:
    def __init__(self):
        self.machine = KVMachine(session_ttl_ms=10_000)
        self.seq = 0

    def apply(self, command):
        self.seq += 1
        env = Envelope(b"c1", self.seq, self.seq, 1000 + self.seq, command)
        return self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))

    def watch(self, *keys):
        if not keys:
            return ()
        return tuple((k, bool(e), i) for k, (e, i) in zip(keys, self.machine.read(Versions(keys))))

    def flush(self):
        pass


def durable(tmp_path):
    from tests.store.test_state import Node

    class Durable(Node):
        watch = Memory.watch

    return Durable(str(tmp_path / "d"))


@pytest.fixture(params=["memory", "lmdb"])
def node(request, tmp_path):
    n = Memory() if request.param == "memory" else durable(tmp_path)
    yield n
    if request.param == "lmdb":
        n.close()


def test_a_transaction_applies_in_order_and_does_not_roll_back(node):
    node.apply(Set(b"s", b"text"))
    result = node.apply(Transaction((Set(b"a", b"1"), IncrBy(b"a", 1), IncrBy(b"s", 1), Get(b"a"), MGet((b"a", b"s")),
                                     Exists((b"a", b"zz")), Append(b"s", b"!", 100), DbSize())))
    assert result == [OK, 2, NOT_INT, b"2", [b"2", b"text"], 1, 5, 2]
    assert node.machine.read(Get(b"s")) == b"text!"


@pytest.mark.parametrize("between,expected_ok", [
    ([], True),
    ([Set(b"w", b"old")], False),  # the same value again is still a write
    ([Set(b"w", b"x", cond="NX")], True),  # a SETNX that sets nothing writes nothing
    ([Delete((b"w",)), Set(b"w", b"old")], False),  # deleted and re-created: a new mod index
    ([IncrBy(b"w", 1)], True),  # an INCR of a non-integer fails and writes nothing
    ([Rename(b"w", b"w")], True),
    ([Copy(b"w", b"w2")], True),  # w is only read
    ([Copy(b"other", b"w", True)], False),
    ([Set(b"other", b"1")], True),
    ([FlushAll()], False),
    ([Transaction((Set(b"w", b"x"),))], False),  # another transaction's write
    ([Transaction((Get(b"w"),))], True),
])
def test_watch_of_an_existing_key(node, between, expected_ok):
    node.apply(Set(b"w", b"old"))
    node.apply(Set(b"other", b"0"))
    watched = node.watch(b"w")
    assert watched[0][1] is True
    for command in between:
        node.apply(command)
        node.flush()
    result = node.apply(Transaction((Set(b"out", b"1"),), watched))
    assert result == ([OK] if expected_ok else None)
    assert node.machine.read(Get(b"out")) == (b"1" if expected_ok else None)


@pytest.mark.parametrize("between,expected_ok", [
    ([], True),
    ([Delete((b"w",))], True),  # deleting a missing key deletes nothing
    ([Set(b"w", b"1")], False),
    ([Set(b"w", b"1"), Delete((b"w",))], False),  # created and deleted again
    ([Set(b"w", b"1"), FlushAll()], False),
    ([GetDel(b"w")], True),
    ([Set(b"other", b"1")], True),
    # Conservative: a missing key's version is "no key deleted since", so any deletion counts.
    ([Delete((b"other",))], False),
])
def test_watch_of_a_missing_key(node, between, expected_ok):
    node.apply(Set(b"other", b"0"))
    watched = node.watch(b"w")
    assert watched[0][1] is False
    for command in between:
        node.apply(command)
    result = node.apply(Transaction((Get(b"w"),), watched))
    assert (result is not None) == expected_ok


def test_a_failed_watch_applies_nothing_and_the_retry_is_answered_the_same(node):
    node.apply(Set(b"w", b"1"))
    watched = node.watch(b"w")
    node.apply(Set(b"w", b"2"))
    txn = Transaction((Set(b"w", b"3"), Delete((b"w",))), watched)
    env = Envelope(b"c1", 99, 1, 5000, txn)
    index = node.machine.applied_index + 1
    assert node.machine.apply(index, encode_envelope(env)) is None
    assert node.machine.apply(index + 1, encode_envelope(env)) is None  # exactly once: the remembered answer
    assert node.machine.read(Get(b"w")) == b"2"


@pytest.mark.parametrize("seed", range(3))
def test_durable_and_memory_agree_on_random_transactions(tmp_path, seed):
    rng = random.Random(seed)
    memory, lmdb = Memory(), durable(tmp_path)
    keys = [b"k%d" % i for i in range(6)]

    def op():
        r, k = rng.random(), rng.choice(keys)
        if r < 0.3:
            return Set(k, b"%d" % rng.randrange(3))
        if r < 0.45:
            return Delete((k,))
        if r < 0.55:
            return IncrBy(k, 1)
        if r < 0.6:
            return FlushAll()
        if r < 0.7:
            return Rename(k, rng.choice(keys))
        return rng.choice([Get(k), MGet((k, rng.choice(keys))), Exists((k,)), DbSize()])

    for step in range(300):
        watch = tuple(rng.sample(keys, rng.randrange(3)))
        watched_m, watched_l = memory.watch(*watch), lmdb.watch(*watch)
        assert watched_m == watched_l
        for _ in range(rng.randrange(3)):
            command = op()
            if not isinstance(command, (Get, MGet, Exists, DbSize)):
                assert memory.apply(command) == lmdb.apply(command)
        txn = Transaction(tuple(op() for _ in range(rng.randrange(4))), watched_m)
        assert memory.apply(txn) == lmdb.apply(txn)
        if rng.random() < 0.3:
            lmdb.flush()
    lmdb.state.check()
    assert lmdb.watch(*keys) == memory.watch(*keys)
    # After a restart the versions are the same: they are stored with the keys.
    lmdb.flush()
    applied = lmdb.machine.applied_index
    lmdb.close()
    from tests.store.test_state import Node
    again = Node(lmdb.path)
    assert again.machine.applied_index == applied
    assert Memory.watch(again, *keys) == memory.watch(*keys)
    assert again.state.deleted_at == memory.machine._keyspace.deleted_at
    # A snapshot of the memory machine carries them too.
    restored = KVMachine(session_ttl_ms=10_000)
    restored.restore(memory.machine.snapshot())
    assert restored.read(Versions(tuple(keys))) == memory.machine.read(Versions(tuple(keys)))
    again.close()


def test_versions_travel_in_a_streamed_snapshot(tmp_path):
    from tests.store.test_state import Node, stream_into

    leader, follower = durable(tmp_path), Node(str(tmp_path / "f"))
    for i in range(50):
        leader.apply(Set(b"k%d" % (i % 10), b"v"))
    leader.apply(Delete((b"k3",)))
    leader.flush()
    token, _ = stream_into(leader, follower, min_index=leader.machine.applied_index)
    with follower.storage._env.begin(write=True) as txn:
        follower.state.install(txn, token)
    follower.state.installed()
    follower.machine.restore(token)
    keys = tuple(b"k%d" % i for i in range(10))
    assert follower.machine.read(Versions(keys)) == [
        [0, follower.machine.applied_index] if k == b"k3" else v for k, v in zip(keys, leader.machine.read(Versions(keys)))]
    assert follower.state.deleted_at == leader.state.deleted_at == 51
    leader.close()
    follower.close()


def test_values_stored_before_mod_indexes_read_as_index_0(tmp_path):
    from kvd.store import checksum
    from kvd.store.state import lmdb_key

    node = durable(tmp_path)
    node.apply(Set(b"new", b"1"))
    node.flush()
    with node.storage._env.begin(write=True) as txn:  # as a kvd before mod indexes wrote them: layout 0
        txn.put(lmdb_key(b"old"), checksum.seal(b"\x00" + b"legacy"), db=node.state._kv)
    node.state._count += 1
    assert node.machine.read(Get(b"old")) == b"legacy"
    watched = node.watch(b"old", b"new")
    assert watched == ((b"old", True, 0), (b"new", True, 1))
    assert node.apply(Transaction((Get(b"old"),), watched)) == [b"legacy"]
    node.apply(Set(b"old", b"rewritten"))
    assert node.apply(Transaction((Get(b"old"),), watched)) is None
    node.close()


def test_a_transaction_keeps_at_most_txn_reply_bytes_of_replies(node):
    from kvd.kv.machine import TXN_REPLY_BYTES

    big = b"x" * (1024 * 1024)
    node.apply(Set(b"big", big))
    fit = TXN_REPLY_BYTES // (len(big) + 10)
    n = fit + 2
    result = node.apply(Transaction((Get(b"big"),) * n + (Set(b"after", b"1", get=True), GetDel(b"big"), Get(b"big"))))
    assert result[:fit] == [big] * fit
    assert all("this read was not answered" in r.message for r in result[fit:n])
    assert result[n] is None and "this write was applied, its reply dropped" in result[n + 1].message
    assert result[n + 2] is None
    assert node.machine.read(Get(b"after")) == b"1" and node.machine.read(Get(b"big")) is None
