"""
Expiry at the client port (kvd.kv.expiry) against a real redis-server 7: the
same replies, RESP2 and RESP3, for sequences that cannot race the wall clock
(large TTLs, TTL's rounding to seconds, absolute times in the past or far in
the future, short PX values only behind an explicit wait).
"""

import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.kv.commands import Envelope, Tick, encode_envelope
from kvd.resp.commands import Read as ReadRequest, Write as WriteRequest
from kvd.resp.protocol import RespFactory
from tests.resp.test_everyday import _kvd_replies, _redis_replies, redis_server  # noqa: F401
from tests.resp.test_protocol import MachineExecutor


class ClockedExecutor(MachineExecutor):
    """
    As a node: entries stamped with the (test's) wall clock, and a read whose keys' expiry lies between the
    log's time and now first applies a Tick (kvd.node.reads).
    """

    def stamp(self, command):
        self.seq += 1
        env = Envelope(b"test", self.seq, self.seq, int(time.time() * 1000), command)
        return self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))

    def execute(self, request, connection):
        if isinstance(request, WriteRequest):
            return self.stamp(request.command)
        if isinstance(request, ReadRequest) and self.machine.needs_time(request.op, int(time.time() * 1000)):
            self.stamp(Tick())
        return super().execute(request, connection)


FAR = "4102444800"  # 2100-01-01, in seconds

SEQUENCE = [
    ("SET", "k", "v", "EX", "1000"), ("TTL", "k"), ("PERSIST", "k"), ("TTL", "k"), ("PERSIST", "k"),
    ("PERSIST", "nokey"), ("TTL", "nokey"), ("PTTL", "nokey"), ("EXPIRETIME", "nokey"), ("PEXPIRETIME", "k"),
    ("EXPIRE", "k", "100", "XX"), ("EXPIRE", "k", "100", "GT"), ("EXPIRE", "k", "100", "LT"),
    ("EXPIRE", "k", "200", "NX"), ("EXPIRE", "k", "200", "GT"), ("EXPIRE", "k", "50", "lt"), ("TTL", "k"),
    ("EXPIRE", "k", "300", "xx", "gt"), ("TTL", "k"), ("PEXPIRE", "k", "400000", "LT"), ("TTL", "k"),
    ("EXPIRE", "k", "1", "NX", "XX"), ("EXPIRE", "k", "1", "GT", "LT"), ("EXPIRE", "k", "1", "foo"),
    ("EXPIRE", "k", "x"), ("EXPIRE", "k", "9223372036854775807"), ("PEXPIRE", "k", "9223372036854775807"),
    ("EXPIRE", "k", "-9223372036854775"), ("SET", "k", "v"), ("EXPIRE", "k", "-9223372036854776"),
    ("EXPIRE", "nokey", "10"), ("EXPIRE", "k"), ("TTL",), ("PERSIST", "k", "x"),
    ("EXPIREAT", "k", FAR), ("EXPIRETIME", "k"), ("PEXPIRETIME", "k"), ("PEXPIREAT", "k", FAR + "123"),
    ("EXPIRETIME", "k"), ("PEXPIRETIME", "k"), ("PEXPIREAT", "k", FAR + "700"), ("EXPIRETIME", "k"),
    ("EXPIREAT", "k", "9223372036854775"), ("EXPIREAT", "k", "9223372036854776"),
    ("EXPIREAT", "k", "1"), ("GET", "k"), ("TTL", "k"), ("EXISTS", "k"),
    ("SET", "k", "v"), ("EXPIRE", "k", "0"), ("GET", "k"), ("SET", "k", "v"), ("PEXPIRE", "k", "-5"),
    ("EXISTS", "k"),
    ("SET", "k", "v", "PXAT", "1"), ("GET", "k"), ("SET", "k", "v", "EXAT", "1", "GET"), ("EXISTS", "k"),
    ("SET", "k", "v", "EX", "0"), ("SET", "k", "v", "EX", "-5"), ("SET", "k", "v", "PX", "abc"),
    ("SET", "k", "v", "EX", "10", "PX", "10"), ("SET", "k", "v", "KEEPTTL", "EX", "10"),
    ("SET", "k", "v", "EX", "10", "KEEPTTL"), ("SET", "k", "v", "EX"), ("SET", "k", "v", "EX", "9223372036854776"),
    ("SET", "k", "v", "PX", "9223372036854775807"), ("SET", "k", "v", "EXAT", FAR), ("EXPIRETIME", "k"),
    ("SET", "k", "v", "PXAT", FAR + "001", "NX"), ("SET", "k", "v2", "PXAT", FAR + "001", "XX", "GET"),
    ("PEXPIRETIME", "k"), ("SET", "k", "v", "EX", "10", "EX", "20"), ("TTL", "k"),
    ("SETEX", "k", "100", "v"), ("TTL", "k"), ("SETEX", "k", "0", "v"), ("SETEX", "k", "x", "v"),
    ("SETEX", "k", "9223372036854775807", "v"), ("PSETEX", "k", "100000", "v"), ("TTL", "k"),
    ("PSETEX", "k", "-1", "v"), ("SETEX", "k", "1"), ("SETEX", "k", "9223372036854775", "v"),
    ("PSETEX", "k", "9223372036854775807", "v"), ("GETEX", "k", "PX", "9223372036854775807"),
    ("SET", "k", "v", "EX", "100"), ("SET", "k", "v2", "KEEPTTL"), ("TTL", "k"), ("SET", "k", "v3"), ("TTL", "k"),
    ("SET", "n", "1", "EX", "100"), ("INCR", "n"), ("TTL", "n"), ("APPEND", "n", "0"), ("TTL", "n"),
    ("INCRBYFLOAT", "n", "1.5"), ("SETRANGE", "n", "0", "9"), ("TTL", "n"), ("GETSET", "n", "5"), ("TTL", "n"),
    ("MSET", "n", "1"), ("EXPIRE", "n", "100"), ("MSET", "n", "2"), ("TTL", "n"),
    ("SET", "a", "1", "EX", "100"), ("SET", "b", "2"), ("RENAME", "a", "b"), ("TTL", "b"), ("TTL", "a"),
    ("COPY", "b", "c"), ("TTL", "c"), ("SET", "d", "x"), ("RENAME", "d", "c"), ("TTL", "c"),
    ("SET", "d", "x", "EX", "300"), ("RENAMENX", "d", "e"), ("TTL", "e"), ("COPY", "b", "e", "REPLACE"),
    ("TTL", "e"), ("DEL", "e"), ("SET", "e", "1"), ("TTL", "e"), ("GETDEL", "b"), ("SET", "b", "1"), ("TTL", "b"),
    ("HSET", "h", "f", "1"), ("EXPIRE", "h", "100"), ("HSET", "h", "g", "2"), ("HINCRBY", "h", "f", "1"),
    ("TTL", "h"), ("HDEL", "h", "f", "g"), ("TTL", "h"), ("HSET", "h", "f", "1"), ("TTL", "h"),
    ("GETEX", "nokey"), ("GETEX", "nokey", "EX", "10"), ("SET", "k", "v"), ("GETEX", "k", "EX", "100"), ("TTL", "k"),
    ("GETEX", "k"), ("TTL", "k"), ("GETEX", "k", "PERSIST"), ("TTL", "k"), ("GETEX", "k", "PX", "100000"),
    ("TTL", "k"), ("GETEX", "k", "EXAT", FAR), ("EXPIRETIME", "k"), ("GETEX", "k", "PXAT", FAR + "999"),
    ("PEXPIRETIME", "k"), ("GETEX", "k", "EX", "0"), ("GETEX", "k", "EX", "10", "PX", "10"),
    ("GETEX", "k", "PERSIST", "EX", "10"), ("GETEX", "k", "EX", "10", "PERSIST"), ("GETEX", "k", "FOO"),
    ("GETEX", "k", "EX"), ("GETEX", "k", "KEEPTTL"), ("GETEX", "k", "EX", "x"), ("GETEX", "h"),
    ("GETEX", "h", "PERSIST"), ("GETEX", "k", "PERSIST", "PERSIST"), ("GETEX", "k", "EXAT", "1"), ("GET", "k"),
    ("EXPIRE", "h", "100"), ("TYPE", "h"), ("PERSIST", "h"), ("TTL", "h"),
]


def _connect(protocol):
    factory = RespFactory(ClockedExecutor())
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    _kvd_replies(proto, transport, [("HELLO", str(protocol))])
    return proto, transport


@pytest.mark.parametrize("protocol", [2, 3])
def test_expiry_replies_match_a_real_redis_server(redis_server, protocol):  # noqa: F811
    proto, transport = _connect(protocol)
    _redis_replies(redis_server, [("FLUSHALL",), ("HELLO", str(protocol))])
    for i in range(0, len(SEQUENCE), 10):
        batch = SEQUENCE[i:i + 10]
        ours = _kvd_replies(proto, transport, batch)
        theirs = _redis_replies(redis_server, batch)
        for command, a, b in zip(batch, ours, theirs):
            assert a == b, (command, a, b)
    state = [("DBSIZE",), ("KEYS", "*")] + [("TTL", k) for k in "abcdehkn"]
    ours, theirs = _kvd_replies(proto, transport, state), _redis_replies(redis_server, state)
    ours[1], theirs[1] = sorted(ours[1][1]), sorted(theirs[1][1])
    assert ours == theirs


@pytest.mark.parametrize("protocol", [2, 3])
def test_short_expiries_after_a_wait_match_a_real_redis_server(redis_server, protocol):  # noqa: F811
    proto, transport = _connect(protocol)
    _redis_replies(redis_server, [("FLUSHALL",), ("HELLO", str(protocol))])
    setup = [("SET", "w", "v", "PX", "100"), ("PSETEX", "x", "100", "v"), ("SET", "y", "v"), ("PEXPIRE", "y", "100"),
             ("HSET", "h", "f", "1"), ("PEXPIRE", "h", "100"), ("SET", "z", "v", "EX", "1000"),
             ("SET", "g", "v"), ("GETEX", "g", "PX", "100")]
    assert _kvd_replies(proto, transport, setup) == _redis_replies(redis_server, setup)
    pttl = [("PTTL", "w")]
    for ours, theirs in zip(_kvd_replies(proto, transport, pttl), _redis_replies(redis_server, pttl)):
        assert ours[0] == theirs[0] == b":" and 0 < int(ours[1]) <= 100 and 0 < int(theirs[1]) <= 100
    time.sleep(0.3)
    after = [("GET", "w"), ("EXISTS", "w", "x", "y", "h", "z", "g"), ("HGET", "h", "f"), ("TYPE", "y"),
             ("TTL", "x"), ("PTTL", "g"), ("KEYS", "*"), ("DBSIZE",), ("MGET", "w", "x", "z"), ("INCR", "w"),
             ("TTL", "w"), ("APPEND", "x", "ab"), ("HSET", "y", "f", "1"), ("TTL", "y"),
             ("SCAN", "0", "COUNT", "100"), ("RANDOMKEY",)]
    ours, theirs = _kvd_replies(proto, transport, after), _redis_replies(redis_server, after)
    for command, a, b in zip(after, ours, theirs):
        if command[0] == "SCAN":
            assert sorted(a[1][1][1]) == sorted(b[1][1][1]), (a, b)
            continue
        if command[0] == "KEYS":
            assert sorted(a[1]) == sorted(b[1]), (a, b)
            continue
        if command[0] == "RANDOMKEY":  # any live key
            assert a[1] in (b"w", b"x", b"y", b"z") and b[1] in (b"w", b"x", b"y", b"z"), (a, b)
            continue
        assert a == b, (command, a, b)
