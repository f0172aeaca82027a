"""Tests for kvd.kv.machine (and the keyspace under it): semantics, sessions, SCAN, snapshots."""

import random

import pytest

from kvd.kv.codec import CodecError
from kvd.kv.commands import (
    INT64_MAX, INT64_MIN, DbSize, Delete, Envelope, Exists, Get, IncrBy, Keys, MGet, MSet, Scan, Set, Transaction,
    Versions,
    encode_envelope,
)
from kvd.kv.keyspace import MAX_CURSOR, Keyspace, _SortedChunks, scan_position
from kvd.kv.machine import KVMachine
from kvd.kv.results import ERR_NOT_INTEGER, ERR_OVERFLOW, ERR_SESSION_EXPIRED, ERR_STALE_SEQ, OK, KVError


class Driver:
    """Feeds a machine through the log the way a node would: envelopes at increasing indexes."""

    def __init__(self, machine=None, client_id=b"client-1", stamp_ms=1000):
        self.machine = machine or KVMachine(session_ttl_ms=10_000)
        self.client_id = client_id
        self.seq = 0
        self.ack_below = 1
        self.stamp_ms = stamp_ms

    def next_index(self):
        return self.machine.applied_index + 1

    def propose(self, command, seq=None, ack_below=None, stamp_ms=None, client_id=None):
        if seq is None:
            self.seq += 1
            seq = self.seq
        env = Envelope(
            client_id if client_id is not None else self.client_id,
            seq,
            self.ack_below if ack_below is None else ack_below,
            self.stamp_ms if stamp_ms is None else stamp_ms,
            command,
        )
        return self.machine.apply(self.next_index(), encode_envelope(env))

    def __call__(self, command, **kw):
        """Propose, then acknowledge the response as a well-behaved client would."""
        result = self.propose(command, **kw)
        self.ack_below = self.seq + 1
        return result

    def read(self, op):
        return self.machine.read(op)


@pytest.fixture
def kv():
    return Driver()


# -------------------------------------------------------------------- SET


def test_set_and_get(kv):
    """SET stores arbitrary bytes under arbitrary bytes and answers OK."""
    assert kv(Set(b"\x00k\r\n", b"\xffv")) is OK
    assert kv.read(Get(b"\x00k\r\n")) == b"\xffv"
    assert kv.read(Get(b"missing")) is None


def test_set_nx_only_creates(kv):
    """NX sets a missing key and answers nil, leaving the value alone, when the key exists."""
    assert kv(Set(b"k", b"1", cond="NX")) is OK
    assert kv(Set(b"k", b"2", cond="NX")) is None
    assert kv.read(Get(b"k")) == b"1"


def test_set_xx_only_overwrites(kv):
    """XX does nothing to a missing key and overwrites an existing one."""
    assert kv(Set(b"k", b"1", cond="XX")) is None
    assert kv.read(Get(b"k")) is None
    kv(Set(b"k", b"1"))
    assert kv(Set(b"k", b"2", cond="XX")) is OK
    assert kv.read(Get(b"k")) == b"2"


def test_set_ifeq_is_compare_and_set(kv):
    """IFEQ sets only when the current value equals the comparison value, and never creates a key."""
    assert kv(Set(b"k", b"new", ifeq=b"old")) is None
    assert kv.read(Get(b"k")) is None
    kv(Set(b"k", b"old"))
    assert kv(Set(b"k", b"new", ifeq=b"other")) is None
    assert kv.read(Get(b"k")) == b"old"
    assert kv(Set(b"k", b"new", ifeq=b"old")) is OK
    assert kv.read(Get(b"k")) == b"new"


def test_set_get_returns_old_value_whether_or_not_it_set(kv):
    """With GET, SET answers the previous value (nil if none), also when a condition blocked it."""
    assert kv(Set(b"k", b"1", get=True)) is None
    assert kv(Set(b"k", b"2", get=True)) == b"1"
    assert kv(Set(b"k", b"3", cond="NX", get=True)) == b"2"
    assert kv.read(Get(b"k")) == b"2"
    assert kv(Set(b"k", b"4", ifeq=b"nope", get=True)) == b"2"
    assert kv(Set(b"k", b"5", ifeq=b"2", get=True)) == b"2"
    assert kv.read(Get(b"k")) == b"5"


# ------------------------------------------------------------ DEL / MSET


def test_delete_counts_removed_keys_once(kv):
    """DEL answers how many distinct keys it removed; a repeated key counts once."""
    kv(MSet([(b"a", b"1"), (b"b", b"2")]))
    assert kv(Delete([b"a", b"a", b"missing", b"b"])) == 2
    assert kv.read(DbSize()) == 0
    assert kv(Delete([b"a"])) == 0


def test_mset_sets_everything_last_pair_wins(kv):
    """MSET is one entry that sets every pair; a repeated key takes its last value."""
    assert kv(MSet([(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])) is OK
    assert kv.read(MGet([b"a", b"b", b"c"])) == [b"3", b"2", None]
    assert kv.read(DbSize()) == 2


# ---------------------------------------------------------------- INCRBY


def test_incr_creates_and_counts(kv):
    """INCRBY treats a missing key as 0, answers the new value and stores it as a decimal string."""
    assert kv(IncrBy(b"n", 1)) == 1
    assert kv(IncrBy(b"n", 41)) == 42
    assert kv(IncrBy(b"n", -50)) == -8
    assert kv.read(Get(b"n")) == b"-8"


@pytest.mark.parametrize("stored", [b"abc", b"", b" 1", b"01", b"1.5", b"+1", b"99999999999999999999"])
def test_incr_of_non_integer_is_an_error(kv, stored):
    """A value that is not a canonical int64 gives Redis's error and is left untouched."""
    kv(Set(b"n", stored))
    assert kv(IncrBy(b"n", 1)) == ERR_NOT_INTEGER
    assert ERR_NOT_INTEGER.message == "ERR value is not an integer or out of range"
    assert kv.read(Get(b"n")) == stored


@pytest.mark.parametrize("start,delta", [(INT64_MAX, 1), (INT64_MIN, -1), (-5, INT64_MIN), (1, INT64_MAX)])
def test_incr_overflow_is_an_error(kv, start, delta):
    """Leaving signed 64 bits is refused with Redis's message and the value is unchanged."""
    kv(Set(b"n", b"%d" % start))
    assert kv(IncrBy(b"n", delta)) == ERR_OVERFLOW
    assert ERR_OVERFLOW.message == "ERR increment or decrement would overflow"
    assert kv.read(Get(b"n")) == b"%d" % start


def test_incr_to_the_limits_is_fine(kv):
    """Reaching exactly INT64_MAX or INT64_MIN is not an overflow."""
    kv(Set(b"n", b"%d" % (INT64_MAX - 1)))
    assert kv(IncrBy(b"n", 1)) == INT64_MAX
    kv(Set(b"m", b"%d" % (INT64_MIN + 1)))
    assert kv(IncrBy(b"m", -1)) == INT64_MIN


# ------------------------------------------------------------------ reads


def test_exists_counts_repeats(kv):
    """EXISTS counts each mention of an existing key, as Redis does."""
    kv(Set(b"a", b"1"))
    assert kv.read(Exists([b"a", b"a", b"b"])) == 2


def test_keys_is_sorted_and_filtered(kv):
    """KEYS answers matching keys in bytewise order; a literal pattern is a point lookup."""
    kv(MSet([(b"user:2", b""), (b"user:10", b""), (b"job:1", b""), (b"user:1", b"")]))
    assert kv.read(Keys(b"user:*")) == [b"user:1", b"user:10", b"user:2"]
    assert kv.read(Keys(b"*")) == [b"job:1", b"user:1", b"user:10", b"user:2"]
    assert kv.read(Keys(b"user:?")) == [b"user:1", b"user:2"]
    assert kv.read(Keys(b"job:1")) == [b"job:1"]
    assert kv.read(Keys(b"job:2")) == []


def test_read_rejects_writes(kv):
    """Passing a write command to read() is a programming error, not a silent no-op."""
    with pytest.raises(TypeError):
        kv.read(Set(b"k", b"v"))


# ------------------------------------------------------------------- SCAN


def scan_all(read, count=10, match=None, between=None):
    cursor, seen, calls = 0, [], 0
    while True:
        next_cursor, keys = read(Scan(cursor, match, count))
        seen.extend(keys)
        calls += 1
        cursor = int(next_cursor)
        if cursor == 0:
            return seen, calls
        assert 0 < cursor <= MAX_CURSOR
        if between:
            between()


def test_scan_visits_every_key_once(kv):
    """A full SCAN returns each key exactly once, in pages bounded by COUNT."""
    keys = {b"key:%d" % i for i in range(1000)}
    kv(MSet([(k, b"v") for k in keys]))
    seen, calls = scan_all(kv.read, count=37)
    assert sorted(seen) == sorted(keys)
    assert calls == -(-1000 // 37)


def test_scan_page_size_follows_count(kv):
    """Each page but the last holds exactly COUNT keys when there is no MATCH."""
    kv(MSet([(b"%d" % i, b"") for i in range(50)]))
    cursor, keys = kv.read(Scan(0, None, 20))
    assert len(keys) == 20 and cursor != b"0"
    cursor, keys = kv.read(Scan(int(cursor), None, 20))
    assert len(keys) == 20
    cursor, keys = kv.read(Scan(int(cursor), None, 20))
    assert len(keys) == 10 and cursor == b"0"


def test_scan_cursor_is_a_bulk_decimal(kv):
    """The cursor comes back as a decimal bulk string, like Redis's reply."""
    kv(Set(b"k", b"v"))
    cursor, keys = kv.read(Scan(0, None, 10))
    assert cursor == b"0" and keys == [b"k"]


def test_scan_match_filters_after_counting(kv):
    """MATCH filters the visited keys, so pages may be short or empty but the union is complete."""
    kv(MSet([(b"a%d" % i, b"") for i in range(100)] + [(b"b%d" % i, b"") for i in range(100)]))
    seen, calls = scan_all(kv.read, count=10, match=b"a*")
    assert sorted(seen) == sorted(b"a%d" % i for i in range(100))
    assert calls == 20  # the work is bounded by COUNT, not by the number of matches


def test_scan_is_exact_under_concurrent_writes():
    """Keys present for the whole iteration come back exactly once despite inserts and deletes between pages."""
    kv = Driver()
    rng = random.Random(99)
    stable = [b"stable:%d" % i for i in range(500)]
    churn = [b"churn:%d" % i for i in range(500)]
    kv(MSet([(k, b"") for k in stable + churn]))

    def mutate():
        for _ in range(20):
            if rng.random() < 0.5:
                kv(Set(b"new:%d" % rng.randrange(10**9), b""))
            else:
                kv(Delete([rng.choice(churn)]))

    seen, _ = scan_all(kv.read, count=25, between=mutate)
    stable_seen = [k for k in seen if k.startswith(b"stable:")]
    assert sorted(stable_seen) == sorted(stable)
    assert len(seen) == len(set(seen))


def test_scan_cursor_survives_snapshot_and_other_replicas():
    """A cursor from one replica continues correctly on another built from a snapshot (failover)."""
    kv = Driver()
    kv(MSet([(b"k%d" % i, b"") for i in range(300)]))
    cursor, seen = kv.read(Scan(0, None, 100))
    replica = KVMachine(session_ttl_ms=10_000)
    replica.restore(kv.machine.snapshot())
    while cursor != b"0":
        cursor, keys = replica.read(Scan(int(cursor), None, 100))
        seen.extend(keys)
    assert sorted(seen) == sorted(b"k%d" % i for i in range(300))


def test_scan_with_cursor_beyond_range_ends(kv):
    """A cursor past the position space (e.g. redis-cli's 2**64-1) simply ends the iteration."""
    kv(Set(b"k", b"v"))
    assert kv.read(Scan(2**64 - 1, None, 10)) == [b"0", []]


def test_scan_positions_are_stable_and_nonzero():
    """Positions come from the key bytes alone, fit in 63 bits and never collide with cursor 0."""
    for key in [b"", b"a", b"\x00" * 10, b"x" * 1000]:
        pos = scan_position(key)
        assert 1 <= pos <= MAX_CURSOR
        assert pos == scan_position(bytes(key))


def test_scan_never_splits_colliding_positions(monkeypatch):
    """Keys sharing a position all come in one page, so the cursor never skips one of them."""
    import kvd.kv.keyspace as keyspace

    monkeypatch.setattr(keyspace, "scan_position", lambda key: 1 + key[0] % 3)
    ks = Keyspace(load=4)
    for i in range(30):
        ks.put(bytes((i,)) + b"x", b"")
    seen, cursor = [], 0
    while True:
        cursor, keys = ks.scan(cursor, None, 2)
        seen.extend(keys)
        if cursor == 0:
            break
    assert sorted(seen) == sorted(bytes((i,)) + b"x" for i in range(30))
    assert len(seen) == 30


# ---------------------------------------------------------- the index


def test_sorted_chunks_match_a_model_under_random_operations():
    """The chunked index stays sorted and consistent with a plain set through splits and merges."""
    rng = random.Random(5)
    chunks = _SortedChunks(load=4)
    model = set()
    for _ in range(5000):
        value = b"%03d" % rng.randrange(400)
        if value in model and rng.random() < 0.6:
            chunks.remove(value)
            model.discard(value)
        elif value not in model:
            chunks.add(value)
            model.add(value)
        if rng.random() < 0.01:
            chunks.check()
    chunks.check()
    assert list(chunks) == sorted(model)
    start = b"200"
    assert list(chunks.iter_from(start)) == sorted(v for v in model if v >= start)


def test_sorted_chunks_remove_missing_raises():
    """Removing an absent entry is reported instead of corrupting the index."""
    chunks = _SortedChunks(load=4)
    chunks.add(b"b")
    with pytest.raises(KeyError):
        chunks.remove(b"a")
    with pytest.raises(KeyError):
        chunks.remove(b"c")


def test_keyspace_index_follows_data_through_churn():
    """put/delete keep the dict and the SCAN index in agreement, overwrite does not duplicate."""
    rng = random.Random(3)
    ks = Keyspace(load=8)
    for _ in range(3000):
        key = b"%d" % rng.randrange(300)
        if rng.random() < 0.6:
            ks.put(key, b"v")
        else:
            ks.delete(key)
    ks.check()
    cursor, keys = ks.scan(0, None, 10**6)
    assert cursor == 0 and sorted(keys) == sorted(k for k, _ in ks.items_in_order())
    assert len(keys) == len(ks)


# ---------------------------------------------------------- exactly once


def test_retry_returns_cached_result_without_reapplying(kv):
    """A retried (client_id, seq) answers the first result and does not increment twice."""
    assert kv.propose(IncrBy(b"n", 1), seq=1) == 1
    assert kv.propose(IncrBy(b"n", 1), seq=1) == 1
    assert kv.read(Get(b"n")) == b"1"
    assert kv.propose(IncrBy(b"n", 1), seq=2) == 2


def test_retry_of_an_error_result_is_also_cached(kv):
    """Error results are responses too: a retry gets the same error, not a second attempt."""
    kv(Set(b"n", b"x"))
    first = kv.propose(IncrBy(b"n", 1), seq=10)
    kv.machine.apply(kv.next_index(), encode_envelope(Envelope(b"other", 1, 1, 1000, Set(b"n", b"1"))))
    assert first == ERR_NOT_INTEGER
    assert kv.propose(IncrBy(b"n", 1), seq=10) == ERR_NOT_INTEGER
    assert kv.read(Get(b"n")) == b"1"


def test_out_of_order_seqs_are_each_applied_once(kv):
    """Pipelined seqs may be committed out of order; each applies once and retries hit the cache."""
    assert kv.propose(IncrBy(b"n", 10), seq=3) == 10
    assert kv.propose(IncrBy(b"n", 1), seq=2) == 11
    assert kv.propose(IncrBy(b"n", 10), seq=3) == 10
    assert kv.read(Get(b"n")) == b"11"


def test_ack_below_forgets_and_refuses_old_seqs(kv):
    """After ack_below passes a seq, a retry of it is refused instead of being applied again."""
    kv.propose(IncrBy(b"n", 1), seq=1, ack_below=1)
    kv.propose(IncrBy(b"n", 1), seq=2, ack_below=2)
    assert kv.propose(IncrBy(b"n", 1), seq=1, ack_below=2) == ERR_STALE_SEQ
    assert kv.read(Get(b"n")) == b"2"


def test_ack_below_never_goes_backwards(kv):
    """A reordered envelope with an older ack_below cannot resurrect a forgotten seq."""
    kv.propose(IncrBy(b"n", 1), seq=1, ack_below=1)
    kv.propose(IncrBy(b"n", 1), seq=2, ack_below=2)
    assert kv.propose(IncrBy(b"n", 1), seq=1, ack_below=1) == ERR_STALE_SEQ
    assert kv.read(Get(b"n")) == b"2"


def test_sessions_are_per_client(kv):
    """The same seq from two clients is two commands."""
    kv.propose(IncrBy(b"n", 1), seq=1, client_id=b"a")
    kv.propose(IncrBy(b"n", 1), seq=1, client_id=b"b")
    assert kv.read(Get(b"n")) == b"2"
    assert kv.machine.session_count == 2


def test_session_expires_after_ttl_of_later_stamps(kv):
    """A session silent for more than session_ttl_ms of stamped time is forgotten, deterministically."""
    kv.propose(IncrBy(b"n", 1), seq=1, stamp_ms=1000, client_id=b"idle")
    kv.propose(Set(b"x", b""), seq=1, stamp_ms=11_000, client_id=b"busy")  # exactly ttl later: kept
    assert kv.machine.session_count == 2
    kv.propose(Set(b"x", b""), seq=2, stamp_ms=11_001, client_id=b"busy")  # now past the ttl
    assert kv.machine.session_count == 1
    # The idle client retries seq 1, already answered: the machine cannot tell, so it refuses.
    assert kv.propose(IncrBy(b"n", 1), seq=2, ack_below=2, stamp_ms=11_002, client_id=b"idle") == ERR_SESSION_EXPIRED
    assert ERR_SESSION_EXPIRED.code == "SESSIONEXPIRED"
    assert kv.read(Get(b"n")) == b"1"


def test_activity_keeps_a_session_alive(kv):
    """Each command refreshes its session, so a steadily active client never expires."""
    for i in range(1, 20):
        assert kv.propose(IncrBy(b"n", 1), seq=i, ack_below=i, stamp_ms=i * 5000) == i
    assert kv.machine.session_count == 1


def test_clock_never_goes_backwards(kv):
    """A leader with a slow clock cannot rewind time: the machine keeps the largest stamp seen."""
    kv.propose(Set(b"a", b""), stamp_ms=50_000, client_id=b"a")
    kv.propose(Set(b"b", b""), stamp_ms=100, client_id=b"b")
    assert kv.machine.clock_ms == 50_000
    kv.propose(Set(b"c", b""), stamp_ms=60_001, client_id=b"c")
    assert kv.machine.session_count == 1  # both a and b expired: b's activity counted at 50_000
    kv.machine.check()


def test_new_client_with_fresh_ack_is_accepted(kv):
    """An unknown client that has not received anything yet (ack_below <= 1) opens a session."""
    assert kv.propose(Set(b"k", b"v"), seq=1, ack_below=1, client_id=b"new") is OK
    assert kv.propose(Set(b"k", b"v"), seq=0, ack_below=0, client_id=b"zero-based") is OK


# ------------------------------------------------------------ log handling


def test_undecodable_entry_is_applied_as_an_error(kv):
    """Garbage in the log answers an error, never raises, and still advances the applied index."""
    result = kv.machine.apply(1, b"\xde\xad\xbe\xef")
    assert isinstance(result, KVError) and result.message.startswith("ERR undecodable command")
    assert kv.machine.applied_index == 1
    assert kv(Set(b"k", b"v")) is OK
    assert kv.machine.applied_index == 2


def test_noop_advances_applied_index(kv):
    """No-op and configuration entries move the applied index without touching data."""
    kv.machine.apply_noop(1)
    kv.machine.apply_noop(5)
    assert kv.machine.applied_index == 5
    assert kv.read(DbSize()) == 0


def test_entries_must_come_in_index_order(kv):
    """Applying an index twice or going backwards is a caller bug and raises ValueError."""
    kv(Set(b"k", b"v"))
    with pytest.raises(ValueError):
        kv.machine.apply(1, encode_envelope(Envelope(b"c", 9, 1, 0, Set(b"k", b"w"))))
    with pytest.raises(ValueError):
        kv.machine.apply_noop(0)
    assert kv.read(Get(b"k")) == b"v"


def test_session_ttl_must_be_positive():
    """A zero TTL would expire every session immediately; it is refused up front."""
    with pytest.raises(ValueError):
        KVMachine(session_ttl_ms=0)


# -------------------------------------------------------------- snapshots


def test_snapshot_round_trip_preserves_everything():
    """Restoring a snapshot reproduces data, applied index, clock and session dedupe."""
    kv = Driver()
    kv(MSet([(b"k%d" % i, b"v%d" % i) for i in range(100)]))
    assert kv.propose(IncrBy(b"n", 5), seq=50) == 5
    snap = kv.machine.snapshot()

    other = Driver(KVMachine(session_ttl_ms=10_000))
    other.machine.restore(snap)
    assert other.machine.applied_index == kv.machine.applied_index
    assert other.machine.clock_ms == kv.machine.clock_ms
    assert other.read(MGet([b"k0", b"k99", b"n"])) == [b"v0", b"v99", b"5"]
    assert other.machine.snapshot() == snap
    # The unacknowledged response survived: a retry after restore is not re-applied.
    assert other.propose(IncrBy(b"n", 5), seq=50) == 5
    assert other.read(Get(b"n")) == b"5"
    other.machine.check()


def test_snapshot_bytes_depend_on_state_not_history():
    """
    Two replicas reaching the same state by different insertion orders write identical snapshots.  The
    state includes each key's mod index (the index of its last write, for WATCH) and the index of the
    last deletion, so "the same state" means the same keys written at the same indexes.
    """
    def build(order):
        m = KVMachine()
        m.apply(1, encode_envelope(Envelope(b"c", 1, 1, 1000, MSet(tuple((k, b"v") for k in order)))))
        m.apply(2, encode_envelope(Envelope(b"c", 2, 2, 1000, Set(b"z", b"v"))))
        return m

    keys = [b"k%d" % i for i in range(200)]
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    a, b = build(keys), build(shuffled)
    assert a.snapshot() == b.snapshot()
    # Deleting then re-adding a key is a change WATCH must see: the snapshots differ now.
    a.apply(3, encode_envelope(Envelope(b"c", 3, 3, 1000, Delete([b"k1"]))))
    a.apply(4, encode_envelope(Envelope(b"c", 4, 4, 1000, Set(b"k1", b"v"))))
    b.apply(3, encode_envelope(Envelope(b"c", 3, 3, 1000, Set(b"k1", b"v"))))
    b.apply(4, encode_envelope(Envelope(b"c", 4, 4, 1000, Set(b"k2", b"v"))))
    assert a.read(Get(b"k1")) == b.read(Get(b"k1")) == b"v"
    assert a.snapshot() != b.snapshot()
    b.apply(5, encode_envelope(Envelope(b"c", 5, 5, 1000, Delete([b"nothing"]))))  # deletes nothing: no change
    assert a.read(Versions((b"k1", b"k2"))) == [[1, 4], [1, 1]]
    assert b.read(Versions((b"k1", b"k2"))) == [[1, 3], [1, 4]]


def test_empty_snapshot_round_trip():
    """A brand-new machine snapshots and restores too."""
    m = KVMachine()
    other = KVMachine()
    other.restore(m.snapshot())
    assert other.snapshot() == m.snapshot() and other.applied_index == 0


def test_corrupt_snapshot_is_refused_and_changes_nothing():
    """Bit flips, truncation and foreign bytes raise CodecError and leave the machine as it was."""
    kv = Driver()
    kv(MSet([(b"k%d" % i, b"v") for i in range(20)]))
    snap = kv.machine.snapshot()
    target = KVMachine()
    target.apply(1, encode_envelope(Envelope(b"t", 1, 1, 0, Set(b"mine", b"1"))))
    before = target.snapshot()
    rng = random.Random(11)
    bad_inputs = [b"", b"KVDS", snap[:-1], snap[:len(snap) // 2], b"XXXX" + snap[4:], snap + b"\x00"]
    for _ in range(300):
        flipped = bytearray(snap)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        bad_inputs.append(bytes(flipped))
    for _ in range(300):
        bad_inputs.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60))))
    for data in bad_inputs:
        with pytest.raises(CodecError):
            target.restore(data)
    assert target.snapshot() == before


def test_restore_rejects_valid_checksum_over_bad_structure():
    """Structure is validated even when the checksum matches (e.g. a snapshot from a buggy writer)."""
    import zlib

    body = b"KVDS\x01\x05\x00\x00\x02\x01k\x01v\x01k\x01v"  # the same key twice
    with pytest.raises(CodecError, match="repeats"):
        KVMachine().restore(body + zlib.crc32(body).to_bytes(4, "big"))
    body = b"KVDS\x08\x00\x00\x00\x00"  # version 8: not yet
    with pytest.raises(CodecError, match="version"):
        KVMachine().restore(body + zlib.crc32(body).to_bytes(4, "big"))


def test_restore_replaces_previous_state():
    """Restore is a replacement, not a merge: keys and sessions not in the snapshot are gone."""
    a = Driver()
    a(Set(b"a", b"1"))
    b = Driver(client_id=b"other")
    b(Set(b"b", b"1"))
    b(Set(b"c", b"1"))
    b.machine.restore(a.machine.snapshot())
    assert b.read(Keys(b"*")) == [b"a"]
    assert b.machine.session_count == 1
    assert b.machine.applied_index == 1
