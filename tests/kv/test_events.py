"""
The machine's events (kvd.kv.events): PUBLISH's messages and Redis 7's keyspace events, produced at apply,
the same on every replica, for the entry applied last only; and the notify-keyspace-events flags.
"""

import pytest

from kvd.kv import events as ev
from kvd.kv.commands import (
    Append, Copy, Delete, Envelope, Expire, FlushAll, GetDel, GetEx, HashWrite, IncrBy, IncrByFloat, MSet, MSetNX,
    Publish, Rename, Script, Set, SetRange, Tick, Transaction, Get, decode_envelope, encode_envelope, command_size,
)
from kvd.kv.events import KeyEvent, Message
from kvd.kv.machine import KVMachine
from tests.kv.test_expiry import Clocked


@pytest.fixture
def m():
    return Clocked()


def events(m, command, at=None):
    m(command, at=at)
    return m.machine.events


def test_publish_round_trips_with_tag_70_and_changes_no_key(m):
    env = Envelope(b"c", 1, 1, 5, Publish(b"ch", b"\x00msg"))
    data = encode_envelope(env)
    assert decode_envelope(data) == env
    assert data[-len(b"\x00\x02ch\x04\x00msg") - 1:] == b"\x46\x00\x02ch\x04\x00msg"  # tag 70, flags 0
    assert command_size(Publish(b"ch", b"\x00msg")) == len(data) - len(encode_envelope(Envelope(b"c", 1, 1, 5, Tick()))) + 1
    assert m(Publish(b"ch", b"hello")) == 0
    assert m.machine.events == [Message(b"ch", b"hello")]
    after = KVMachine()
    after.restore(m.machine.snapshot())
    assert after.key_count() == 0 and after.events == []  # events are output, never state


def test_spublish_is_a_shard_channels_message(m):
    env = Envelope(b"c", 1, 1, 5, Publish(b"ch", b"m", shard=True))
    assert decode_envelope(encode_envelope(env)) == env
    assert m(Publish(b"ch", b"m", shard=True)) == 0
    assert m.machine.events == [Message(b"ch", b"m", True)]


def test_events_are_those_of_the_last_entry_only(m):
    assert events(m, Set(b"k", b"v")) == [KeyEvent("$", b"set", b"k")]
    assert events(m, Get(b"k") and Tick()) == []
    m.machine.apply_noop(m.machine.applied_index + 1)
    assert m.machine.events == []


def test_string_and_generic_events_as_redis_names_them(m):
    assert events(m, Set(b"k", b"1", expire=10_000)) == [ev.string(b"set", b"k"), ev.generic(b"expire", b"k")]
    assert events(m, Set(b"k", b"1", cond="NX")) == []
    assert events(m, Set(b"p", b"1", expire=1, expire_at=True)) == [  # a time past: as Redis 7.0, then gone
        ev.string(b"set", b"p"), ev.generic(b"expire", b"p"), ev.expired(b"p")]
    assert events(m, IncrBy(b"k", 2)) == [ev.string(b"incrby", b"k")]
    assert events(m, IncrBy(b"s", 1)) == [ev.string(b"incrby", b"s")]
    assert events(m, IncrByFloat(b"k", b"1.5")) == [ev.string(b"incrbyfloat", b"k")]
    assert events(m, IncrByFloat(b"k", b"x")) == []
    assert events(m, SetRange(b"k", 0, b"9", 100)) == [ev.string(b"setrange", b"k")]
    assert events(m, SetRange(b"k", 0, b"", 100)) == []
    assert events(m, MSet(((b"a", b"1"), (b"b", b"2")))) == [ev.string(b"set", b"a"), ev.string(b"set", b"b")]
    assert events(m, MSetNX(((b"a", b"1"), (b"c", b"2")))) == []
    assert events(m, MSetNX(((b"c", b"1"),))) == [ev.string(b"set", b"c")]
    assert events(m, Delete((b"a", b"nokey", b"a", b"b"))) == [ev.generic(b"del", b"a"), ev.generic(b"del", b"b")]
    assert events(m, Rename(b"c", b"d")) == [ev.generic(b"rename_from", b"c"), ev.generic(b"rename_to", b"d")]
    assert events(m, Rename(b"d", b"d")) == []
    assert events(m, Copy(b"d", b"e")) == [ev.generic(b"copy_to", b"e")]
    assert events(m, Expire("expire", b"e", 100)) == [ev.generic(b"expire", b"e")]
    assert events(m, Expire("persist", b"e")) == [ev.generic(b"persist", b"e")]
    assert events(m, Expire("expire", b"e", -1)) == [ev.generic(b"del", b"e")]
    assert events(m, GetEx(b"d", 5000)) == [ev.generic(b"expire", b"d")]
    assert events(m, GetEx(b"d", persist=True)) == [ev.generic(b"persist", b"d")]
    assert events(m, GetDel(b"d")) == [ev.generic(b"del", b"d")]
    assert events(m, GetDel(b"d")) == []
    assert events(m, FlushAll()) == [ev.Flushed()]  # no Redis channel carries it: KVD.WATCH's (kvd.kv.watch)
    assert events(m, FlushAll()) == []  # of an empty store: no revision, nothing


def test_append_event(m):
    assert events(m, Append(b"k", b"x", 100)) == [ev.string(b"append", b"k")]
    assert events(m, Append(b"k", b"x", 1)) == []  # over max_len: refused, nothing changed


def test_hash_events(m):
    assert events(m, HashWrite("hset", b"h", (b"f", b"1", b"g", b"2"))) == [ev.hash_(b"hset", b"h")]
    assert events(m, HashWrite("hsetnx", b"h", (b"f", b"1"))) == []
    assert events(m, HashWrite("hsetnx", b"h", (b"x", b"1"))) == [ev.hash_(b"hset", b"h")]
    assert events(m, HashWrite("hincrby", b"h", (b"f", b"1"))) == [ev.hash_(b"hincrby", b"h")]
    assert events(m, HashWrite("hincrbyfloat", b"h", (b"f", b"1.5"))) == [ev.hash_(b"hincrbyfloat", b"h")]
    assert events(m, HashWrite("hdel", b"h", (b"nope",))) == []
    assert events(m, HashWrite("hdel", b"h", (b"f", b"g"))) == [ev.hash_(b"hdel", b"h")]
    assert events(m, HashWrite("hdel", b"h", (b"x",))) == [ev.hash_(b"hdel", b"h"), ev.generic(b"del", b"h")]
    m(Set(b"s", b"v"))
    assert events(m, HashWrite("hset", b"s", (b"f", b"1"))) == []  # WRONGTYPE


def test_expired_keys_give_expired_when_reclaimed_or_found_by_a_write(m):
    m(Set(b"a", b"1", expire=1000))
    m(Set(b"b", b"1", expire=1000))
    assert events(m, Tick(), at=m.now + 1000) == [ev.expired(b"a"), ev.expired(b"b")]
    m(Set(b"c", b"1", expire=1000))
    # A write naming an expired key reclaims it first (the entry's batch, or the write's own lookup): "expired"
    # comes before the write's event, as in Redis.
    assert events(m, Set(b"c", b"2"), at=m.now + 1000) == [ev.expired(b"c"), ev.string(b"set", b"c")]


def test_transactions_and_scripts_give_their_writes_events_in_order(m):
    assert events(m, Transaction((Set(b"a", b"1"), Publish(b"ch", b"m"), Delete((b"a",))))) == [
        ev.string(b"set", b"a"), Message(b"ch", b"m"), ev.generic(b"del", b"a")]
    body = b"redis.call('set', KEYS[1], 'v'); redis.call('publish', 'ch', ARGV[1]); return 1"
    assert events(m, Script("eval", body, (b"k",), (b"hi",), 100)) == [ev.string(b"set", b"k"), Message(b"ch", b"hi")]
    failing = b"redis.call('set', KEYS[1], 'v'); return redis.call('incr', KEYS[1])"
    m(Script("eval", failing, (b"k",), (), 100))
    assert m.machine.events == [ev.string(b"set", b"k")]  # Redis keeps what a script wrote before its error


def test_replicas_produce_the_same_events_at_the_same_index():
    a, b = Clocked(), Clocked()
    script = [Set(b"k", b"v", expire=500), Publish(b"c", b"1"), HashWrite("hset", b"h", (b"f", b"v")), Tick()]
    for cmd in script:
        a(cmd, at=a.now + 300)
        b(cmd, at=b.now + 300)
        assert a.machine.events == b.machine.events


def test_flags_parse_and_print_as_redis():
    assert ev.parse_flags(b"") == 0
    assert ev.parse_flags(b"KEA") is not None and ev.flags_text(ev.parse_flags(b"KEA")) == "AKE"
    assert ev.flags_text(ev.parse_flags(b"Eg$x")) == "g$xE"
    assert ev.flags_text(ev.parse_flags(b"g$lshzxetdKEmn")) == "AKEm"  # as redis-server 7.0.15 answers
    assert ev.parse_flags(b"Kq") is None
    assert ev.flags_text(ev.parse_flags(b"K")) == "K"


def test_channels_of_a_key_event():
    flags = ev.parse_flags(b"KEA")
    assert ev.channels(ev.string(b"set", b"k"), flags) == [
        (b"__keyspace@0__:k", b"set"), (b"__keyevent@0__:set", b"k")]
    assert ev.channels(ev.expired(b"k"), ev.parse_flags(b"Ex")) == [(b"__keyevent@0__:expired", b"k")]
    assert ev.channels(ev.expired(b"k"), ev.parse_flags(b"Eg")) == []
    assert ev.channels(ev.string(b"set", b"k"), ev.parse_flags(b"A")) == []  # neither K nor E


def test_kvd_txn_writes_and_a_lease_s_keys_have_their_events(m):
    """KVD.TXN's SET and DEL are SET's and DEL's events; a revoked or expired lease's keys are "expired"."""
    from kvd.kv.commands import Compare, KvTxn, Lease, TxnOp

    txn = KvTxn((Compare("missing", b"a"),), (TxnOp("set", b"a", b"1"), TxnOp("del", b"b"), TxnOp("get", b"a")))
    m(Set(b"b", b"x"))
    assert events(m, txn) == [KeyEvent("$", b"set", b"a"), KeyEvent("g", b"del", b"b")]
    lease = m(Lease("grant", ttl=10))
    m(Set(b"l1", b"v", lease=lease))
    m(Set(b"l2", b"v", lease=lease))
    assert events(m, Lease("revoke", id=lease)) == [ev.expired(b"l1"), ev.expired(b"l2")]
    lease = m(Lease("grant", ttl=1))
    m(Set(b"l3", b"v", lease=lease))
    assert events(m, Tick(), at=10_000_000) == [ev.expired(b"l3")]
