"""
Revisions (kvd.kv.revisions) and KVD.TXN (kvd.kv.txn) in the key/value
machine: the store's revision and each key's (create, mod, version) through
every kind of write, KVD.TXN's compares and branches, its grammar, and the
state carried by a snapshot (version 6, older ones still read) and by the
durable keyspace (LMDB records, a restart, a streamed snapshot).
"""

import random

import pytest

from kvd.kv.codec import CodecError
from kvd.kv.commands import (
    Append, Compare, Copy, Delete, Envelope, Expire, FlushAll, Get, GetDel, HashWrite, IncrBy, KvTxn, MSet, MSetNX,
    Rename, RevRead, Set, Tick, Transaction, TxnOp, decode_envelope, encode_envelope,
)
from kvd.kv.hashes import WRONGTYPE
from kvd.kv.machine import KVMachine
from kvd.kv.results import OK, KVError
from kvd.kv.revisions import next_meta, pack_meta, unpack_meta
from kvd.kv.txn import TxnSyntaxError, parse
from tests.kv.hash_workload import KEYS, random_hash_commands
from tests.kv.old_snapshots import downgrade


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

    def rev(self):
        return self.machine.read(RevRead("revision"))

    def meta(self, key):
        """(create, mod, version) of ``key`` (a string's or a hash's), None if missing."""
        return self.machine.view().rev_meta(key)


@pytest.fixture
def m():
    return Clocked()


def txn(text):
    """A KvTxn from a command line as redis-cli would split it (no quoting needed in these tests)."""
    return parse(text.encode().split())


# ------------------------------------------------------------------ the numbering


def test_each_changing_entry_is_one_revision_and_versions_count_writes(m):
    assert m.rev() == 0 and m.meta(b"a") is None
    m(Set(b"a", b"1"))
    assert m.rev() == 1 and m.meta(b"a") == (1, 1, 1)
    m(Set(b"a", b"2"))
    assert m.rev() == 2 and m.meta(b"a") == (1, 2, 2)
    assert m.machine.read(RevRead("getrev", b"a")) == [b"2", 1, 2, 2]
    # Entries that change nothing: a losing SET NX, a GETDEL of nothing, a Tick, a read-only MULTI.
    assert m(Set(b"a", b"x", cond="NX")) is None
    m(GetDel(b"nope"))
    m(Tick())
    m(Transaction((Get(b"a"),)))
    m(Delete((b"nope",)))
    assert m.rev() == 2
    # One MULTI of three writes is one revision; a key written twice in it gains one version.
    m(Transaction((Set(b"a", b"3"), Set(b"b", b"1"), Append(b"a", b"!", 1 << 20))))
    assert m.rev() == 3 and m.meta(b"a") == (1, 3, 3) and m.meta(b"b") == (3, 3, 1)
    # Deleted, then created again: a new create revision, version 1.
    m(Delete((b"a",)))
    assert m.rev() == 4 and m.meta(b"a") is None
    m(IncrBy(b"a", 5))
    assert m.rev() == 5 and m.meta(b"a") == (5, 5, 1)
    m.machine.check()


def test_every_kind_of_write_moves_versions(m):
    m(MSet(((b"x", b"1"), (b"y", b"1"))))
    assert m.rev() == 1 and m.meta(b"x") == m.meta(b"y") == (1, 1, 1)
    assert m(MSetNX(((b"x", b"2"), (b"z", b"2")))) == 0 and m.rev() == 1
    m(Rename(b"x", b"y"))  # y (a string) is overwritten: changed, not created; x is gone
    assert m.rev() == 2 and m.meta(b"x") is None and m.meta(b"y") == (1, 2, 2)
    m(Rename(b"y", b"w"))  # a new key
    assert m.rev() == 3 and m.meta(b"w") == (3, 3, 1)
    m(Copy(b"w", b"c"))
    assert m.rev() == 4 and m.meta(b"c") == (4, 4, 1) and m.meta(b"w") == (3, 3, 1)
    # Hashes: one HSET of two fields is one version; HDEL of the last field deletes the key.
    m(HashWrite("hset", b"h", (b"f", b"1", b"g", b"2")))
    assert m.rev() == 5 and m.meta(b"h") == (5, 5, 1)
    m(HashWrite("hdel", b"h", (b"f",)))
    assert m.meta(b"h") == (5, 6, 2)
    assert m(HashWrite("hsetnx", b"h", (b"g", b"x"))) == 0 and m.rev() == 6
    m(HashWrite("hdel", b"h", (b"g",)))
    assert m.rev() == 7 and m.meta(b"h") is None
    # KVD.GET WITHREV of a hash is WRONGTYPE, as GET.
    m(HashWrite("hset", b"h", (b"f", b"1")))
    assert m.machine.read(RevRead("getrev", b"h")) == WRONGTYPE
    # A change of the time to live is a write of the key (as WATCH sees it).
    m(Expire("expire", b"c", 10))
    assert m.rev() == 9 and m.meta(b"c") == (4, 9, 2)
    m(FlushAll())
    assert m.rev() == 10 and m.meta(b"c") is None and m.meta(b"w") is None
    m(FlushAll())  # an empty store: nothing changes
    assert m.rev() == 10
    m.machine.check()


def test_an_expired_key_reads_as_gone_and_its_reclaim_is_a_revision(m):
    m(Set(b"t", b"v", expire=1_000))
    assert m.rev() == 1 and m.meta(b"t") == (1, 1, 1)
    m(Tick(), at=m.now + 5_000)  # reclaimed by the Tick: a deletion, a revision
    assert m.meta(b"t") is None and m.rev() == 2
    m(Set(b"t", b"again"))
    assert m.meta(b"t") == (3, 3, 1)


def test_meta_helpers():
    assert next_meta(None, 7) == (7, 7, 1)
    assert next_meta((7, 7, 1), 7) == (7, 7, 1)
    assert next_meta((7, 7, 1), 9) == (7, 9, 2)
    for meta in [(0, 0, 0), (1, 2, 3), (2 ** 64 - 1, 2 ** 40, 127)]:
        packed = pack_meta(meta)
        assert unpack_meta(b"xx" + packed + b"tail", 2) == (meta, 2 + len(packed))
    rng = random.Random(3)
    for bits in (7, 8, 14, 15, 21, 64):  # the fast paths give exactly the plain varints
        for _ in range(300):
            meta = (rng.randrange(1 << bits), rng.randrange(1 << bits), rng.randrange(300))
            plain = bytearray()
            for value in meta:
                while value >= 0x80:
                    plain.append((value & 0x7F) | 0x80)
                    value >>= 7
                plain.append(value)
            assert pack_meta(meta) == bytes((len(plain),)) + plain
            assert unpack_meta(pack_meta(meta), 0) == (meta, len(plain) + 1)
    assert len(pack_meta((100_000, 100_000, 5))) == 8 and pack_meta((1, 2, 3)) == b"\x03\x01\x02\x03"
    for bad in (b"", b"\x80\x80", b"\x03\x01\x02", b"\x04\x01\x02\x03\x04", b"\x03\x81\x01\x02"):
        with pytest.raises(CodecError):
            unpack_meta(bad, 0)


# ------------------------------------------------------------------ KVD.TXN


def test_txn_compares_choose_the_branch_and_answer_the_revision(m):
    assert m(txn("THEN SET a 10 SET b 0")) == [1, [OK, OK], 1]
    # A compare-and-swap transfer: both keys or neither.
    move = txn("IF VALUE a = 10 VERSION b = 1 THEN SET a 7 SET b 3 GET b ELSE GET a")
    assert m(move) == [1, [OK, OK, b"3"], 2]
    assert m(move) == [0, [b"7"], 2]  # the compare fails now: ELSE, no revision
    assert m.machine.read(Get(b"a")) == b"7" and m.machine.read(Get(b"b")) == b"3"
    cases = {
        "VALUE a = 7": 1, "VALUE a != 7": 0, "VALUE a < 8": 1, "VALUE a > 69": 1,  # bytewise, as etcd
        "VALUE a > 7": 0,
        "VALUE missing = x": 0, "VALUE missing != x": 0,  # a missing key's value compares false, as in etcd
        "VERSION a = 2": 1, "VERSION a > 1": 1, "VERSION a < 2": 0, "VERSION missing = 0": 1,
        "CREATE a = 1": 1, "CREATE missing = 0": 1, "CREATE a != 1": 0,
        "MOD a = 2": 1, "MOD b < 2": 0, "MOD missing = 0": 1,
        "EXISTS a": 1, "EXISTS missing": 0, "MISSING missing": 1, "MISSING a": 0,
    }
    for compare, expected in cases.items():
        assert m(txn("IF %s THEN" % compare)) == [expected, [], 2], compare
    assert m(txn("IF EXISTS a MISSING a THEN SET z 1")) == [0, [], 2]  # all compares must hold
    assert m(txn("IF EXISTS a THEN DEL a DEL a GET a")) == [1, [1, 0, None], 3]
    m.machine.check()


def test_txn_wrong_types_answer_errors_and_apply_nothing_for_a_compare(m):
    m(HashWrite("hset", b"h", (b"f", b"v")))
    m(Set(b"k", b"1"))
    before = m.rev()
    result = m(txn("IF EXISTS k VALUE h = v THEN SET k 2"))
    assert isinstance(result, KVError) and result.message.startswith("WRONGTYPE KVD.TXN compare VALUE h")
    assert m.rev() == before and m.machine.read(Get(b"k")) == b"1"
    # VERSION of a hash is fine; GET of a hash answers WRONGTYPE in its place and the other ops apply.
    assert m(txn("IF VERSION h = 1 THEN GET h SET k 2")) == [1, [WRONGTYPE, OK], before + 1]
    # SET replaces a hash, as SET does, and drops a time to live.
    m(Expire("expire", b"k", 100))
    assert m(txn("THEN SET h s SET k 3")) == [1, [OK, OK], before + 3]
    assert m.machine.read(Get(b"h")) == b"s" and m.meta(b"h") == (1, before + 3, 2)
    assert m.machine.expiry_count() == 0


def test_txn_is_one_entry_in_the_codec_and_refused_inside_multi():
    cmd = KvTxn((Compare("value", b"k", "!=", value=b"\x00v"), Compare("mod", b"k", "<", number=2 ** 64 - 1),
                 Compare("missing", b"m")), (TxnOp("set", b"k", b""), TxnOp("del", b"k")), (TxnOp("get", b"k"),))
    env = Envelope(b"c", 1, 1, 5, cmd)
    assert decode_envelope(encode_envelope(env)) == env
    for op in (RevRead("getrev", b"k"), RevRead("revision")):
        env = Envelope(b"c", 1, 1, 5, Transaction((op, Set(b"k", b"v"))))
        assert decode_envelope(encode_envelope(env)) == env
    with pytest.raises(TypeError):
        Transaction((cmd,))
    with pytest.raises(ValueError):
        Compare("exists", b"k", "<")
    with pytest.raises(ValueError):
        TxnOp("get", b"k", b"value")
    with pytest.raises(CodecError):  # a KvTxn nested in a Transaction is not a valid entry
        decode_envelope(b"\x01\x01c\x01\x01\x05\x0c\x00\x01\x45\x00\x00\x00")


def test_revision_reads_inside_multi_see_the_transaction_so_far(m):
    m(Set(b"a", b"1"))
    assert m(Transaction((Set(b"a", b"2"), RevRead("getrev", b"a"), RevRead("revision")))) == [
        OK, [b"2", 1, 2, 2], 2]


# ------------------------------------------------------------------ the grammar


def test_grammar():
    assert txn("THEN") == KvTxn()
    assert txn("then set k v else del k") == KvTxn((), (TxnOp("set", b"k", b"v"),), (TxnOp("del", b"k"),))
    # Keys and values that look like keywords are keys and values: every compare and op has a fixed arity.
    assert txn("IF VALUE THEN = ELSE THEN SET ELSE THEN GET IF") == KvTxn(
        (Compare("value", b"THEN", "=", value=b"ELSE"),), (TxnOp("set", b"ELSE", b"THEN"), TxnOp("get", b"IF")))
    assert txn("IF MOD k > 18446744073709551615 THEN").compares[0].number == 2 ** 64 - 1
    bad = {
        "": "expected THEN", "IF THEN": "at least one compare", "IF EXISTS k": "expected THEN",
        "IF SIZE k = 1 THEN": "compare 1 (SIZE): expected VALUE", "IF VALUE k = THEN": "expected THEN after the compares",  # THEN was the value
        "IF VALUE k =": "compare 1 (VALUE): too few",
        "IF VERSION k = -1 THEN": "not an unsigned integer", "IF VERSION k = 18446744073709551616 THEN": "unsigned",
        "IF VALUE k <= v THEN": "operator", "THEN SET k": "THEN op 1 (SET): too few",
        "THEN GET k PUT k v": "THEN op 2 (PUT): expected SET", "THEN ELSE": "ELSE needs at least one op",
        "THEN GET k ELSE GET k ELSE GET k": "ELSE op 2 (ELSE)", "SET k v": "expected THEN",
    }
    for text, message in bad.items():
        with pytest.raises(TxnSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
            txn(text)


# ------------------------------------------------------------------ state that must survive


def _random_writes(rng, n):
    """The hash workload's writes with KVD.TXNs among them."""
    for cmd in random_hash_commands(rng, n):
        if rng.random() < 0.15:
            key, other = rng.choice(KEYS), rng.choice(KEYS)
            yield KvTxn((Compare(rng.choice(["version", "mod", "create"]), key, rng.choice(["=", "<", ">", "!="]),
                                 number=rng.randrange(4)),),
                        (TxnOp("set", key, b"t"), TxnOp("del", other)), (TxnOp("set", other, b"e"),))
        yield cmd


def _revisions(machine):
    return machine.read(RevRead("revision")), {key: machine.read(RevRead("getrev", key)) for key in KEYS}


def test_a_snapshot_carries_revisions_and_older_ones_read_as_zero():
    rng = random.Random(5)
    m = Clocked()
    for cmd in _random_writes(rng, 300):
        if type(cmd).__name__ not in ("Get", "HashRead", "KeyType"):
            m(cmd)
    assert m.rev() > 100
    restored = KVMachine()
    restored.restore(m.machine.snapshot())
    assert _revisions(restored) == _revisions(m.machine)
    assert restored.snapshot() == m.machine.snapshot()
    restored.check()
    old = KVMachine()
    old.restore(downgrade(m.machine.snapshot(), 5))
    revision, metas = _revisions(old)
    assert revision == 0
    assert all(v is None or v == WRONGTYPE or v[1:] == [0, 0, 0] for v in metas.values())
    # Writes go on from revision 0 there: a key written is at revision 1.
    later = Clocked(old)
    later.seq = 10_000  # past what the snapshot's session of client c remembers
    later(Set(KEYS[0], b"x"))
    assert later.meta(KEYS[0]) in ((1, 1, 1), (0, 1, 1))  # created now, or an old key changed


@pytest.mark.parametrize("seed", range(3))
def test_the_durable_keyspace_keeps_the_same_revisions_flushed_or_not_restarted_and_streamed(tmp_path, seed):
    from tests.store.test_state import Node, reference_apply, stream_into

    rng = random.Random(seed)
    node, memory = Node(str(tmp_path / "a"), flush_writes=3), KVMachine(session_ttl_ms=10_000)
    seq = 0
    for cmd in _random_writes(rng, 400):
        if type(cmd).__name__ in ("Get", "HashRead", "KeyType"):
            assert node.machine.read(cmd) == memory.read(cmd)
            continue
        seq += 1
        assert node.apply(cmd) == reference_apply(memory, seq, cmd)
        if rng.random() < 0.4:
            node.flush()  # part of the state in LMDB, part in the overlay
        if seq % 40 == 0:
            assert _revisions(node.machine) == _revisions(memory)
    node.flush()
    assert _revisions(node.machine) == _revisions(memory)
    node.state.check()
    # A compaction flushes everything; a restart reads the revision and the metas from the records.
    node.state.flush_writes = 1
    node.apply(Set(b"last", b"1"))
    reference_apply(memory, seq + 1, Set(b"last", b"1"))
    node.flush()
    applied = node.machine.applied_index
    node.close()
    again = Node(str(tmp_path / "a"), client=b"c2")
    assert again.machine.applied_index == applied
    assert _revisions(again.machine) == _revisions(memory)
    # A streamed snapshot carries them to another store.
    other = Node(str(tmp_path / "b"), client=b"c3")
    from kvd.raft.messages import Configuration, HardState, Snapshot

    token, _ = stream_into(again, other)
    snapshot = Snapshot(applied, 1, Configuration.make(voters={"n1": "x"}, addresses={"n1": "127.0.0.1:1:2"}), token)
    other.storage.save(HardState(term=1, commit=applied), [], snapshot, sync=True)
    other.machine.restore(token)
    assert _revisions(other.machine) == _revisions(memory)
    again.close()
    other.close()


def test_records_written_before_revisions_read_as_meta_zero(tmp_path):
    from kvd.store import checksum
    from kvd.store.state import lmdb_key
    from tests.store.test_state import Node

    node = Node(str(tmp_path / "a"))
    node.apply(Set(b"new", b"1"))
    node.flush()
    with node.storage._env.begin(write=True, db=node.state._kv) as t:  # a layout 2 record: mod 9, no meta
        t.put(lmdb_key(b"old"), checksum.seal(b"\x02" + (9).to_bytes(8, "big") + b"v"))
    node.state._count += 1
    assert node.machine.read(RevRead("getrev", b"old")) == [b"v", 0, 0, 0]
    assert node.machine.read(RevRead("getrev", b"new")) == [b"1", 1, 1, 1]
    node.apply(Set(b"old", b"w"))  # written now: changed (version 0 + 1), at the store's next revision
    assert node.machine.read(RevRead("getrev", b"old")) == [b"w", 0, 2, 1]
    node.close()
