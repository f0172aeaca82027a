"""
Leases in the machine (kvd.kv.leases): granted, kept alive, revoked and expired from the log's time only, so
two replicas fed the same entries delete a lease's keys at the same index with the same replies.
"""

import random

import pytest

from kvd.kv.codec import CodecError
from kvd.kv.commands import (
    Copy, DbSize, Delete, Envelope, Exists, Expire, FlushAll, Get, GetEx, IncrBy, Keys, Lease, LeaseRead, MSet,
    Rename, Scan, Script, Set, Tick, Transaction, Ttl, decode_envelope, encode_envelope,
)
from kvd.kv.expiry import READ_MARGIN_MS, RECLAIM_PER_ENTRY, RECLAIM_PER_TICK
from kvd.kv.machine import KVMachine
from kvd.kv.results import OK, KVError

from tests.kv.test_expiry import Clocked

NOT_FOUND = "ERR lease not found"


@pytest.fixture
def m():
    return Clocked()


def grant(m, ttl_s):
    lease_id = m(Lease("grant", ttl=ttl_s))
    assert lease_id == m.machine.applied_index  # the granting entry's index: the same on every replica
    return lease_id


def test_codec_round_trips_the_lease_commands():
    for cmd in [Lease("grant", ttl=10), Lease("keepalive", id=7), Lease("revoke", id=1 << 40), Lease("promote"),
                Set(b"k", b"v", lease=3), Set(b"k", b"v", cond="XX", get=True, ifeq=None, lease=9),
                Transaction((LeaseRead("ttl", 5, True), LeaseRead("list"), Set(b"k", b"v", lease=5)))]:
        env = Envelope(b"c", 1, 1, 5, cmd)
        assert decode_envelope(encode_envelope(env)) == env


@pytest.mark.parametrize("build", [
    lambda: Lease("grant", ttl=0), lambda: Lease("grant", id=3, ttl=5), lambda: Lease("keepalive"),
    lambda: Lease("revoke", id=2, ttl=1), lambda: Lease("promote", id=1), lambda: Lease("other"),
    lambda: Set(b"k", b"v", lease=0), lambda: Set(b"k", b"v", lease=2, expire=10),
    lambda: Set(b"k", b"v", lease=2, keepttl=True), lambda: LeaseRead("ttl"), lambda: LeaseRead("list", 3),
    lambda: Transaction((Lease("grant", ttl=5),)),  # one grant per entry: ids are indexes
])
def test_invalid_lease_commands_cannot_be_built(build):
    with pytest.raises((TypeError, ValueError)):
        build()


def test_bad_lease_bytes_are_refused_not_raised():
    env = encode_envelope(Envelope(b"c", 1, 1, 5, Lease("keepalive", id=7)))
    tag = env.index(bytes([68]))
    for bad in (env[:tag + 1] + b"\x09" + env[tag + 2:], env[:-1], env + b"\x00"):
        with pytest.raises(CodecError):
            decode_envelope(bad)
    m = KVMachine()
    assert isinstance(m.apply(1, env[:-1]), KVError)  # an applied entry answers an error, nothing changes
    assert m.lease_count() == 0


def test_grant_keepalive_ttl_list_revoke(m):
    a = grant(m, 10)
    b = grant(m, 60)
    assert m.read(LeaseRead("list")) == [a, b]
    assert m.read(LeaseRead("ttl", a)) == [10, 10]
    m(Set(b"k1", b"v", lease=a), at=m.now + 3_000)
    m(Set(b"k2", b"v", lease=a))
    assert m.read(LeaseRead("ttl", a, True)) == [10, 7, [b"k1", b"k2"]]
    assert m(Lease("keepalive", id=a)) == 10  # from this entry's log time
    assert m.read(LeaseRead("ttl", a)) == [10, 10]
    assert m.read(Ttl("pttl", b"k1")) == 10_000  # an attached key's TTL is its lease's
    assert m(Lease("revoke", id=a)) is OK
    assert m.read(Get(b"k1")) is None and m.read(Exists((b"k1", b"k2"))) == 0
    assert m.read(LeaseRead("list")) == [b]
    for op in (Lease("keepalive", id=a), Lease("revoke", id=a), Set(b"x", b"v", lease=a), Lease("keepalive", id=999)):
        assert m(op) == KVError(NOT_FOUND), op
    assert m.read(LeaseRead("ttl", a)) == KVError(NOT_FOUND)
    assert m.read(Get(b"x")) is None  # SET with an unknown lease writes nothing
    m.machine.check()


def test_keys_disappear_when_the_log_time_passes_the_lease(m):
    a = grant(m, 5)
    m(Set(b"k", b"v", lease=a))
    m(Set(b"other", b"v"))
    m(Tick(), at=m.now + 4_999)
    assert m.read(Get(b"k")) == b"v" and m.read(DbSize()) == 2
    m(Tick(), at=m.now + 1)  # exactly at expiry: dead, and this Tick reclaims it
    assert m.read(Get(b"k")) is None and m.read(DbSize()) == 1 and m.read(Keys(b"*")) == [b"other"]
    assert m.machine.lease_count() == 0 and m.machine.check() is None
    assert m(Lease("keepalive", id=a)) == KVError(NOT_FOUND)


def test_a_dead_lease_hides_its_keys_before_they_are_reclaimed():
    m = Clocked()
    a = grant(m, 1)
    for i in range(RECLAIM_PER_TICK + 40):
        m(Set(b"k%04d" % i, b"v", lease=a))
    m.now += 1_000
    machine = m.machine
    # No entry applied since the lease died: every key still stored, and already absent at this log time.
    view = machine.view()
    view.now_ms = m.now
    assert len(view) == 0 and view.scan(0, None, 1000)[1] == [] and view.get(b"k0000") is None
    m(Tick())
    assert machine._keyspace.__len__() == 40 and machine.key_count() == 0  # bounded: a Tick's batch
    assert machine.expired_count(m.now) == 41  # 40 keys and the lease itself
    m(Set(b"x", b"y"))
    assert machine._keyspace.__len__() == 40 - RECLAIM_PER_ENTRY + 1  # and x
    m(Tick())
    assert machine.lease_count() == 0 and machine.key_count() == 1 and machine.expired_count(m.now) == 0
    machine.check()


def test_set_without_lease_detaches_and_del_detaches(m):
    a = grant(m, 5)
    m(Set(b"k", b"v", lease=a))
    m(Set(b"k", b"w"))  # like SET without KEEPTTL drops a TTL
    m(Set(b"j", b"v", lease=a))
    m(Set(b"j", b"w", keepttl=True))  # KEEPTTL keeps the lease
    m(Set(b"d", b"v", lease=a))
    assert m(Delete((b"d",))) == 1
    m(Set(b"d", b"again"))
    assert m.read(LeaseRead("ttl", a, True)) == [5, 5, [b"j"]]
    m(Tick(), at=m.now + 5_000)
    assert m.read(Get(b"k")) == b"w" and m.read(Get(b"j")) is None and m.read(Get(b"d")) == b"again"
    m.machine.check()


def test_expiry_and_lease_replace_each_other(m):
    a = grant(m, 100)
    m(Set(b"k", b"v", expire=5_000))
    m(Set(b"k", b"v", lease=a))  # the lease replaces the TTL
    assert m.read(Ttl("ttl", b"k")) == 100
    assert m(Expire("expire", b"k", 7, 1)) == 0  # NX: the key has a time to live (its lease's)
    assert m(Expire("expire", b"k", 7)) == 1  # its own TTL replaces the lease
    assert m.read(LeaseRead("ttl", a, True)) == [100, 100, []] and m.read(Ttl("ttl", b"k")) == 7
    m(Set(b"p", b"v", lease=a))
    assert m(Expire("persist", b"p")) == 1  # PERSIST detaches: the key lives on
    m(Set(b"g", b"v", lease=a))
    assert m(GetEx(b"g", 2_000)) == b"v"
    m(IncrBy(b"n", 1))
    m(Set(b"n", b"1", lease=a))
    assert m(IncrBy(b"n", 1)) == 2  # INCR keeps the lease, as it keeps a TTL
    assert m.read(LeaseRead("ttl", a, True))[2] == [b"n"]
    m(Tick(), at=m.now + 100_000)
    assert [m.read(Get(k)) for k in (b"k", b"p", b"g", b"n")] == [None, b"v", None, None]
    m.machine.check()


def test_rename_copy_mset_flushall(m):
    a = grant(m, 10)
    m(Set(b"src", b"v", lease=a))
    m(Rename(b"src", b"dst"))
    m(Copy(b"dst", b"cp"))
    m(Set(b"ms", b"v", lease=a))
    m(MSet(((b"ms", b"w"),)))
    assert m.read(LeaseRead("ttl", a, True))[2] == [b"cp", b"dst"]
    m(Set(b"f", b"v", lease=a))
    m(FlushAll())
    assert m.read(LeaseRead("ttl", a, True)) == [10, 10, []]  # the lease outlives its keys
    m(Set(b"r", b"v", lease=a))
    m(Tick(), at=m.now + 10_000)
    assert m.read(DbSize()) == 0
    m.machine.check()


def test_set_lease_with_nx_xx_get(m):
    a = grant(m, 10)
    m(Set(b"k", b"old"))
    assert m(Set(b"k", b"new", cond="NX", lease=a)) is None  # not set: not attached
    assert m(Set(b"k", b"new", cond="XX", get=True, lease=a)) == b"old"
    assert m.read(LeaseRead("ttl", a, True))[2] == [b"k"]
    assert m(Set(b"z", b"new", lease=10 ** 12)) == KVError(NOT_FOUND)


def test_transaction_may_attach_and_read_leases(m):
    a = grant(m, 10)
    result = m(Transaction((Set(b"k", b"v", lease=a), LeaseRead("ttl", a, True), LeaseRead("list"),
                            Set(b"j", b"v", lease=12345))))
    assert result == [OK, [10, 10, [b"k"]], [a], KVError(NOT_FOUND)]


def test_scripts_may_not_attach():
    pytest.importorskip("lupa")
    m = Clocked()
    a = grant(m, 10)
    result = m(Script("eval", b"return redis.call('SET', KEYS[1], 'v', 'LEASE', ARGV[1])", (b"k",), (b"%d" % a,),
                      1 << 20))
    assert isinstance(result, KVError) and "LEASE" in result.message and m.read(Get(b"k")) is None
    result = m(Script("eval", b"return redis.call('KVD.LEASE', 'GRANT', '5')", (), (), 1 << 20))
    assert isinstance(result, KVError) and "not allowed from script" in result.message
    # A script's writes keep or drop the lease as they keep or drop a TTL.
    m(Set(b"s", b"v", lease=a))
    m(Script("eval", b"redis.call('APPEND', KEYS[1], 'x') return redis.call('DEL', KEYS[2])", (b"s", b"none"), (),
             1 << 20))
    assert m.read(LeaseRead("ttl", a, True))[2] == [b"s"]
    m(Script("eval", b"return redis.call('SET', KEYS[1], 'w')", (b"s",), (), 1 << 20))
    assert m.read(LeaseRead("ttl", a, True))[2] == []
    m.machine.check()


def test_promote_extends_live_leases_before_the_stamp_moves_time_on(m):
    a = grant(m, 10)
    b = grant(m, 2)
    m(Set(b"ka", b"v", lease=a))
    m(Set(b"kb", b"v", lease=b))
    start = m.now
    m(Tick(), at=start + 3_000)  # b is dead
    assert m.read(Get(b"kb")) is None
    # The new leader's first entry is 30 s later (a long election): a would be dead at that stamp.
    assert m(Lease("promote"), at=start + 30_000) == 1
    assert m.read(Get(b"ka")) == b"v" and m.read(LeaseRead("ttl", a)) == [10, 10]
    assert m.read(LeaseRead("list")) == [a]  # b stays dead
    # A promote never shortens a lease.
    m(Lease("keepalive", id=a), at=start + 35_000)
    m(Lease("promote"), at=start + 30_000)
    assert m.read(LeaseRead("ttl", a)) == [10, 10]
    m.machine.check()


def test_needs_time_sees_leases():
    m = Clocked()
    a = grant(m, 5)
    m(Set(b"k", b"v", lease=a))
    machine, now = m.machine, m.now
    soon = now + 5_000 - READ_MARGIN_MS
    assert not machine.needs_time(Get(b"k"), soon - 1)
    for op in (Get(b"k"), Exists((b"k",)), Keys(b"*"), Scan(), DbSize(), LeaseRead("ttl", a), LeaseRead("list")):
        assert machine.needs_time(op, soon), op
    assert not machine.needs_time(Get(b"other"), soon)
    assert machine.next_expiry() == now + 5_000


def test_snapshot_round_trip_and_versions_5_and_6_still_restore():
    from tests.kv.old_snapshots import downgrade

    m = Clocked()
    a = grant(m, 10)
    grant(m, 20)
    m(Set(b"k", b"v", lease=a))
    m(Set(b"e", b"v", expire=9_000))
    snap = m.machine.snapshot()
    other = KVMachine()
    other.restore(snap)
    assert other.snapshot() == snap and other.read(LeaseRead("ttl", a, True)) == [10, 10, [b"k"]]
    other.check()
    # Version 7 appends "n_leases (id ttl expiry)... n_attached (key id)..." to version 6's layout.
    plain = Clocked()
    plain(Set(b"k", b"v"))
    for version in (5, 6):
        restored = KVMachine()
        restored.restore(downgrade(plain.machine.snapshot(), version))
        assert restored.read(Get(b"k")) == b"v" and restored.lease_count() == 0


def test_snapshot_refuses_a_key_attached_to_a_missing_lease():
    import zlib

    m = Clocked()
    a = grant(m, 10)
    m(Set(b"k", b"v", lease=a))
    body = m.machine.snapshot()[:-4]
    # The last fields: n_attached=1, key b"k", id a.  Point the key at another id.
    tail = b"\x01\x01k" + bytes([a])
    assert body.endswith(tail)
    bad = body[:-1] + bytes([a + 1])
    with pytest.raises(CodecError, match="attaches"):
        KVMachine().restore(bad + zlib.crc32(bad).to_bytes(4, "big"))


def _drive(seed):
    """A random mix of lease and key commands, stamped with a time that jumps: the replies and states."""
    rng = random.Random(seed)
    m = Clocked()
    ids, replies = [], []
    for _ in range(400):
        r = rng.random()
        key = b"k%d" % rng.randrange(12)
        m.now += rng.choice((0, 10, 300, 1_000, 4_000))
        if r < 0.1:
            ids.append(m(Lease("grant", ttl=rng.choice((1, 2, 5)))))
            continue
        lease_id = rng.choice(ids) if ids and rng.random() < 0.9 else 10 ** 9
        if r < 0.2:
            cmd = Lease("keepalive", id=lease_id)
        elif r < 0.25:
            cmd = Lease("revoke", id=lease_id)
        elif r < 0.3:
            cmd = Lease("promote")
        elif r < 0.55:
            cmd = Set(key, b"v", lease=lease_id)
        elif r < 0.65:
            cmd = rng.choice((Set(key, b"w"), Delete((key,)), Expire("expire", key, 3), Expire("persist", key),
                              Rename(key, b"k%d" % rng.randrange(12)), IncrBy(key, 1), Tick()))
        else:
            op = rng.choice((Get(key), DbSize(), Keys(b"*"), LeaseRead("list"), LeaseRead("ttl", lease_id, True)))
            replies.append(m.read(op))
            continue
        replies.append(m(cmd))
        m.machine.check()
    return replies, m.machine


def test_random_histories_are_deterministic_and_survive_a_snapshot():
    for seed in range(6):
        first, a = _drive(seed)
        second, b = _drive(seed)
        assert first == second and a.snapshot() == b.snapshot()
        copy = KVMachine()
        copy.restore(a.snapshot())
        copy.check()
        assert copy.snapshot() == a.snapshot()
        assert any(isinstance(r, KVError) and r.message == NOT_FOUND for r in first)


def test_an_attached_key_is_never_read_after_its_lease_expired():
    """Reference model: a key attached at log time t to a lease is absent once the log time reaches its expiry."""
    for seed in range(4):
        rng = random.Random(seed)
        m = Clocked()
        expiry = {}  # lease id -> expiry
        for _ in range(300):
            m.now += rng.choice((0, 200, 700))
            if rng.random() < 0.2 or not expiry:
                lease_id = m(Lease("grant", ttl=1))
                expiry[lease_id] = m.now + 1_000
            elif rng.random() < 0.3:
                lease_id = rng.choice(sorted(expiry))
                if m(Lease("keepalive", id=lease_id)) == 1:
                    expiry[lease_id] = m.now + 1_000
            else:
                key = b"k%d" % rng.randrange(6)
                lease_id = rng.choice(sorted(expiry))
                result = m(Set(key, b"v", lease=lease_id))
                assert (result is OK) == (expiry[lease_id] > m.now)
            for key in (b"k%d" % i for i in range(6)):
                lease_id = m.machine._leases.lease_of(key)
                if lease_id is not None and m.read(Get(key)) is not None:
                    assert expiry[lease_id] > m.now


def test_a_clock_far_in_the_future_does_not_poison_the_entry():
    from kvd.kv.codec import INT64_MAX

    m = Clocked()
    m.now = INT64_MAX - 5
    a = grant(m, 10)
    assert m.read(LeaseRead("ttl", a)) == [10, 0]  # its expiry is the largest time there is
    assert m(Lease("keepalive", id=a)) == 10 and m(Lease("promote")) == 1
    m.machine.check()
    other = KVMachine()
    other.restore(m.machine.snapshot())


def test_mangled_lease_entries_answer_errors_and_never_raise():
    """Every byte of a lease entry flipped, cut or extended: decode raises CodecError only, apply never raises."""
    rng = random.Random(7)
    envs = [encode_envelope(Envelope(b"c", 1, 1, 5, cmd)) for cmd in (
        Lease("grant", ttl=10), Lease("keepalive", id=3), Lease("promote"), Set(b"k", b"v", lease=3),
        Transaction((LeaseRead("ttl", 3, True), LeaseRead("list"))))]
    machine = KVMachine()
    for i in range(3000):
        data = bytearray(rng.choice(envs))
        how = rng.random()
        if how < 0.6:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif how < 0.8:
            del data[rng.randrange(len(data)):]
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        try:
            decode_envelope(bytes(data))
        except CodecError:
            pass
        machine.apply(machine.applied_index + 1, bytes(data))
    machine.check()
