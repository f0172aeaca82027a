"""
KVD.WATCH's history (kvd.kv.watch): the changes each revision made, derived from the machine's events, and the
bounded ring a watch replays from a revision.  The random test replays every kind of write through a history
and rebuilds the store from it alone: a write path that changed a key without an event naming it fails it.
"""

import random

import pytest

from kvd.kv.commands import (
    Append, Compare, Copy, Delete, Expire, FlushAll, GetDel, GetEx, HashWrite, IncrBy, IncrByFloat, KvTxn, Lease,
    MSet, MSetNX, Publish, Rename, Script, Set, SetRange, Tick, Transaction, TxnOp,
)
from kvd.kv.hashes import HASH
from kvd.kv.machine import KVMachine
from kvd.kv.watch import DELETE, FLUSH, HASH_KIND, PUT, Change, Compacted, WatchHistory, changes_of
from tests.kv.test_expiry import Clocked


class Fed(Clocked):
    """A machine whose every applied entry feeds a WatchHistory, as the node does (kvd.node.service)."""

    def __init__(self, history=None):
        super().__init__(KVMachine())
        self.history = history if history is not None else WatchHistory()

    def __call__(self, command, at=None):
        before = self.machine.view().revision
        result = super().__call__(command, at)
        after = self.machine.view().revision
        if after != before:
            self.history.record(after, changes_of(self.machine.events, self.machine.view().ks, after))
        return result


def test_one_change_per_key_in_first_touch_order_with_its_final_state():
    m = Fed()
    m(Transaction((Set(b"a", b"1"), Set(b"b", b"2"), Set(b"a", b"3"), Delete((b"b",)))))
    assert m.history.since(1) == [Change(1, PUT, b"a", b"3"), Change(1, DELETE, b"b")]
    m(Set(b"a", b"1", cond="NX"))  # lost: no revision, nothing recorded
    assert m.history.revision == 1 and len(m.history) == 2


def test_hash_flush_rename_and_expired_keys():
    m = Fed()
    m(HashWrite("hset", b"h", (b"f", b"v")))
    m(MSet(((b"x", b"1"), (b"y", b"2"))))
    m(Rename(b"x", b"z"))
    m(FlushAll())
    m(Set(b"t", b"v", expire=100))
    m(Tick(), at=m.now + 1000)  # the leader's tick reclaims the expired key: a revision of its own
    assert [(c.revision, c.kind, c.key, c.value) for c in m.history.since(1)] == [
        (1, HASH_KIND, b"h", None), (2, PUT, b"x", b"1"), (2, PUT, b"y", b"2"), (3, DELETE, b"x", None),
        (3, PUT, b"z", b"1"), (4, FLUSH, b"", None), (5, PUT, b"t", b"v"), (6, DELETE, b"t", None)]
    m(FlushAll())  # of an empty store: no revision
    assert m.history.revision == 6


def test_since_filters_by_prefix_and_a_flush_reaches_every_prefix():
    m = Fed()
    m(MSet(((b"app:1", b"a"), (b"other", b"b"))))
    m(Set(b"app:2", b"c"))
    m(FlushAll())
    assert [(c.revision, c.key) for c in m.history.since(1, b"app:")] == [(1, b"app:1"), (2, b"app:2"), (3, b"")]
    assert [c.revision for c in m.history.since(2, b"app:")] == [2, 3]
    assert m.history.since(4, b"app:") == [] and m.history.since(99) == []  # the future: nothing yet


def test_bounds_drop_whole_revisions_and_compacted_says_what_is_left():
    h = WatchHistory(max_changes=3)
    for rev in range(1, 4):
        h.record(rev, [Change(rev, PUT, b"k%d" % rev, b"v"), Change(rev, PUT, b"j%d" % rev, b"v")])
    assert h.oldest == 3 and len(h) == 2  # revision 3's two changes, never half of one
    with pytest.raises(Compacted, match="revision 2 is compacted, oldest available is 3"):
        h.since(2)
    h.record(4, [Change(4, PUT, b"big", b"x" * 10)])
    assert h.oldest == 3 and [c.revision for c in h.since(3)] == [3, 3, 4]
    small = WatchHistory(max_bytes=1)
    small.record(1, [Change(1, PUT, b"k", b"x" * 1000)])
    assert small.oldest == 1 and len(small) == 1  # the newest revision stays, whatever it costs
    small.record(2, [Change(2, PUT, b"k", b"y")])
    assert small.oldest == 2 and small.since(2) == [Change(2, PUT, b"k", b"y")]


def test_reset_and_a_missed_revision_and_no_history():
    h = WatchHistory(revision=10)
    assert h.oldest == 11 and h.since(11) == []
    with pytest.raises(Compacted):
        h.since(10)
    with pytest.raises(ValueError):
        h.record(13, [])  # a gap: the node resets its history and cancels its watches
    h.reset(20)
    assert (h.revision, h.oldest, len(h)) == (20, 21, 0)
    none = WatchHistory(max_changes=0)
    none.record(1, [Change(1, PUT, b"k", b"v")])
    assert none.oldest == 2 and len(none) == 0
    with pytest.raises(ValueError):
        WatchHistory(max_changes=-1)


def _random_write(rng, m, keys, leases):
    key, other = rng.choice(keys), rng.choice(keys)
    value = rng.choice([b"", b"v", b"12", b"x" * 40])
    r = rng.random()
    if r < 0.12:
        return Set(key, value, expire=rng.choice([None, 5, 500]))
    if r < 0.18:
        return Set(key, value, cond=rng.choice(["NX", "XX"]))
    if r < 0.24:
        return Delete((key, other))
    if r < 0.28:
        return MSet(((key, value), (other, b"m")))
    if r < 0.31:
        return MSetNX(((key, value), (other, b"n")))
    if r < 0.35:
        return IncrBy(key, rng.randrange(-3, 4))
    if r < 0.38:
        return IncrByFloat(key, b"1.5")
    if r < 0.42:
        return Append(key, b"a", 1 << 20)
    if r < 0.45:
        return SetRange(key, rng.randrange(0, 5), b"zz", 1 << 20)
    if r < 0.48:
        return GetDel(key)
    if r < 0.52:
        return GetEx(key, persist=True) if rng.random() < 0.3 else GetEx(key, rng.choice([None, 10]))
    if r < 0.57:
        if rng.random() < 0.3:
            return Expire("persist", key)
        return Expire(rng.choice(["expire", "pexpire"]), key, rng.choice([-1, 0, 1, 300]))
    if r < 0.6:
        return Rename(key, other, rng.random() < 0.5)
    if r < 0.63 and key != other:
        return Copy(key, other, rng.random() < 0.5)
    if r < 0.7:
        return HashWrite(rng.choice(["hset", "hdel", "hincrby"]), key, (b"f", b"1"))
    if r < 0.74:
        return Transaction((Set(key, value), Delete((other,)), Set(other, b"t")))
    if r < 0.77:
        return KvTxn((Compare("value", key, "=", value),), (TxnOp("set", key, b"ok"), TxnOp("del", other)),
                     (TxnOp("set", other, b"no"),))
    if r < 0.8:
        return Script("eval", b"redis.call('SET', KEYS[1], ARGV[1]); redis.call('DEL', KEYS[2]); return 1",
                      (key, other), (value,), 1 << 20)
    if r < 0.83:
        return Tick()
    if r < 0.85:
        return Lease("grant", ttl=1)
    if r < 0.89 and leases:
        return Set(key, value, lease=rng.choice(leases))
    if r < 0.9 and leases:
        return Lease("revoke", id=rng.choice(leases))
    if r < 0.91:
        return FlushAll()
    if r < 0.93:
        return Publish(b"ch", b"m")
    return Set(key, value)


def _replay(changes):
    """The store as the history tells it: key -> bytes (a string) or HASH."""
    state = {}
    for change in changes:
        if change.kind == FLUSH:
            state.clear()
        elif change.kind == DELETE:
            state.pop(change.key, None)
        else:
            state[change.key] = HASH if change.kind == HASH_KIND else change.value
    return state


@pytest.mark.parametrize("seed", range(6))
def test_a_random_mix_of_every_write_is_rebuilt_from_the_history_alone(seed):
    rng = random.Random(seed)
    m = Fed()
    keys = [b"k%d" % i for i in range(5)]
    leases = []
    for _ in range(400):
        cmd = _random_write(rng, m, keys, leases)
        result = m(cmd, at=m.now + rng.choice([0, 1, 50, 400]))
        if isinstance(cmd, Lease) and cmd.op == "grant" and isinstance(result, int):
            leases.append(result)
        ks = m.machine.view().ks
        truth = {k: ks.get(k) for k in keys if ks.get(k) is not None}
        assert _replay(m.history.since(1)) == {k: (v if v is HASH else bytes(v)) for k, v in truth.items()}
    revisions = [c.revision for c in m.history.since(1)]
    assert revisions == sorted(revisions) and set(revisions) == set(range(1, m.history.revision + 1))


def test_the_history_keeps_records_the_garbage_collector_does_not_track():
    """A full collection walks every tracked object: a hundred thousand changes kept as NamedTuples made most of a leader's."""
    import gc

    history = WatchHistory(max_changes=1000)
    for revision in range(1, 101):
        history.record(revision, [Change(revision, PUT, b"k%d" % revision, b"v"), Change(revision, DELETE, b"d", None)])
    gc.collect()
    assert not any(gc.is_tracked(stored) for stored in history._changes)
    assert history.since(100) == [Change(100, PUT, b"k100", b"v"), Change(100, DELETE, b"d", None)]
