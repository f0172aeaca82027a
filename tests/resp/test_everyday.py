"""
Issue 15's commands at the client port: parsing (Redis 7's error texts), the
reply shapes (SETNX's integer, TYPE's status), permissions, TIME, and the
replies of a real redis-server compared with kvd's for random sequences.
"""

import shutil
import socket

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.bench.redispy import RedisServer
from kvd.kv.commands import (
    KeyType,
    MAX_STRING_BYTES, Append, Copy, Delete, Exists, FlushAll, GetDel, GetRange, MSetNX, RandomKey, Rename, Set,
    SetRange, StrLen,
)
from kvd.kv.results import OK, KVError
from kvd.limits import LIMITS
from kvd.resp.auth import ADMIN, READONLY, READWRITE, User
from kvd.resp.commands import Admin, Read, Write, parse_request, request_name, shape_reply
from kvd.resp.connection import Connection, required_role
from kvd.resp.encoder import SimpleString, encode
from kvd.resp.errors import CommandError
from kvd.resp.protocol import RespFactory
from tests.resp.test_protocol import MachineExecutor, packed

V = LIMITS.value_bytes


def req(line, **kw):
    return parse_request(line.split() if isinstance(line, bytes) else list(line), **kw)


def err(message):
    return CommandError("ERR", message)


def arity(name):
    return err("wrong number of arguments for '%s' command" % name)


NOT_INT = err("value is not an integer or out of range")
TOO_LONG = err("string exceeds maximum allowed size (proto-max-bulk-len)")


@pytest.mark.parametrize(
    "args,expected",
    [
        (b"SETNX k v", Write(Set(b"k", b"v", cond="NX"), "setnx", "bool")),
        (b"GETSET k v", Write(Set(b"k", b"v", get=True), "getset")),
        (b"UNLINK a b a", Write(Delete((b"a", b"b", b"a")), "unlink")),
        (b"GETDEL k", Write(GetDel(b"k"))),
        (b"APPEND k v", Write(Append(b"k", b"v", V))),
        (b"SETRANGE k 5 v", Write(SetRange(b"k", 5, b"v", V))),
        (b"setrange k 0 v", Write(SetRange(b"k", 0, b"v", V))),
        (b"MSETNX a 1 b 2", Write(MSetNX(((b"a", b"1"), (b"b", b"2"))))),
        (b"RENAME a b", Write(Rename(b"a", b"b"), "rename")),
        (b"RENAMENX a b", Write(Rename(b"a", b"b", nx=True), "renamenx")),
        (b"RENAME a a", Write(Rename(b"a", b"a"), "rename")),
        (b"COPY a b", Write(Copy(b"a", b"b"))),
        (b"COPY a b REPLACE", Write(Copy(b"a", b"b", replace=True))),
        (b"copy a b db 0 replace", Write(Copy(b"a", b"b", replace=True))),
        (b"COPY a b REPLACE DB 0 REPLACE", Write(Copy(b"a", b"b", replace=True))),
        (b"STRLEN k", Read(StrLen(b"k"))),
        (b"GETRANGE k 0 -1", Read(GetRange(b"k", 0, -1), "getrange")),
        (b"SUBSTR k -3 9", Read(GetRange(b"k", -3, 9), "substr")),
        (b"TYPE k", Read(KeyType(b"k"), "type", "type")),
        (b"TIME", Admin("time")),
        (b"FLUSHDB", Write(FlushAll(), "flushdb")),
        (b"flushdb async", Write(FlushAll(), "flushdb")),
        (b"FLUSHALL SYNC", Write(FlushAll(), "flushall")),
        (b"FLUSHALL", Write(FlushAll(), "flushall")),
        (b"FLUSHDB foo", err("syntax error")),
        (b"FLUSHDB sync async", err("syntax error")),
        (b"FLUSHALL bad", err("syntax error")),
        # errors, with Redis 7's texts
        (b"SETNX k", arity("setnx")),
        (b"SETNX k v x", arity("setnx")),
        (b"GETSET k", arity("getset")),
        (b"UNLINK", arity("unlink")),
        (b"GETDEL", arity("getdel")),
        (b"APPEND k", arity("append")),
        (b"SETRANGE k 1", arity("setrange")),
        (b"SETRANGE k x v", NOT_INT),
        (b"SETRANGE k 1.5 v", NOT_INT),
        (b"SETRANGE k -1 v", err("offset is out of range")),
        (b"SETRANGE k 536870912 v", TOO_LONG),
        (b"SETRANGE k 536870911 vv", TOO_LONG),
        (b"MSETNX a", arity("msetnx")),
        (b"MSETNX a 1 b", arity("msetnx")),
        (b"RENAME a", arity("rename")),
        (b"RENAMENX a b c", arity("renamenx")),
        (b"COPY a", arity("copy")),
        (b"COPY a a", err("source and destination objects are the same")),
        (b"COPY a b DB", err("syntax error")),
        (b"COPY a b DB x", NOT_INT),
        (b"COPY a b DB 1", err("DB index is out of range")),
        (b"COPY a b FOO", err("syntax error")),
        (b"STRLEN", arity("strlen")),
        (b"GETRANGE k 0", arity("getrange")),
        (b"SUBSTR k 0", arity("substr")),
        (b"GETRANGE k x 1", NOT_INT),
        (b"GETRANGE k 1 9223372036854775808", NOT_INT),
        (b"TYPE", arity("type")),
        (b"TYPE a b", arity("type")),
        (b"RANDOMKEY x", arity("randomkey")),
        (b"TIME x", arity("time")),
    ],
)
def test_parse(args, expected):
    assert req(args) == expected


def test_setrange_with_an_empty_value_takes_any_offset():
    """Redis writes nothing for an empty value, so it checks no length: any offset >= 0 parses."""
    parsed = req([b"SETRANGE", b"k", b"9223372036854775807", b""])
    assert isinstance(parsed, Write) and parsed.command.value == b"" and parsed.command.offset == MAX_STRING_BYTES - 1


def test_the_node_value_limit_rides_in_append_and_setrange():
    """parse_request's value_max_bytes (--value-max-bytes) is the entry's max_len; SETRANGE past it is refused."""
    assert req(b"APPEND k v", value_max_bytes=10) == Write(Append(b"k", b"v", 10))
    assert req(b"SETRANGE k 7 abc", value_max_bytes=10) == Write(SetRange(b"k", 7, b"abc", 10))
    assert req(b"SETRANGE k 8 abc", value_max_bytes=10) == TOO_LONG
    assert req([b"SETRANGE", b"k", b"8", b""], value_max_bytes=10).command.max_len == 10


def test_randomkey_draws_its_position_at_the_port():
    positions = {req(b"RANDOMKEY").op.position for _ in range(20)}
    assert len(positions) > 1 and all(0 <= p < 2**63 for p in positions)
    assert all(isinstance(req(b"RANDOMKEY"), Read) and isinstance(req(b"RANDOMKEY").op, RandomKey) for _ in range(3))


def test_long_keys_are_refused_by_every_new_command():
    long = b"k" * (LIMITS.key_bytes + 1)
    for args in ([b"SETNX", long, b"v"], [b"GETDEL", long], [b"APPEND", long, b"v"], [b"SETRANGE", long, b"0", b"v"],
                 [b"MSETNX", b"a", b"1", long, b"2"], [b"RENAME", b"a", long], [b"RENAMENX", long, b"a"],
                 [b"COPY", b"a", long], [b"STRLEN", long], [b"GETRANGE", long, b"0", b"1"], [b"TYPE", long]):
        parsed = req(args)
        assert isinstance(parsed, CommandError) and "over the limit" in str(parsed), args


def test_msetnx_of_too_many_keys_is_refused():
    args = [b"MSETNX"] + [b"k"] * (2 * (LIMITS.command_keys + 1))
    assert "MSETNX of 10001 keys is over the limit" in str(req(args))


def test_reply_shapes():
    setnx, type_ = req(b"SETNX k v"), req(b"TYPE k")
    assert shape_reply(setnx, OK) == 1 and shape_reply(setnx, None) == 0
    assert shape_reply(type_, b"string") == SimpleString("string") and shape_reply(type_, b"none") == SimpleString("none")
    assert shape_reply(type_, b"hash") == SimpleString("hash")
    error = KVError("ERR boom")
    assert shape_reply(setnx, error) is error and shape_reply(type_, error) is error
    assert shape_reply(req(b"GETSET k v"), b"old") == b"old"
    assert encode(shape_reply(type_, b"string"), resp3=True) == b"+string\r\n"


def test_roles_and_names():
    """Readonly users may run the new reads and TIME, not the new writes; NOPERM names the command the client sent."""
    for line in (b"STRLEN k", b"GETRANGE k 0 1", b"SUBSTR k 0 1", b"TYPE k", b"RANDOMKEY", b"TIME"):
        assert required_role(req(line)) == READONLY, line
    for line in (b"SETNX k v", b"GETSET k v", b"UNLINK k", b"GETDEL k", b"APPEND k v", b"SETRANGE k 0 v",
                 b"MSETNX k v", b"RENAME a b", b"RENAMENX a b", b"COPY a b"):
        assert required_role(req(line)) == READWRITE, line
    names = {line: request_name(req(line)) for line in (b"SETNX k v", b"UNLINK k", b"SUBSTR k 0 1", b"TYPE k",
                                                        b"GETDEL k", b"MSETNX a 1", b"RENAMENX a b", b"RANDOMKEY")}
    assert names == {b"SETNX k v": "setnx", b"UNLINK k": "unlink", b"SUBSTR k 0 1": "substr", b"TYPE k": "type",
                     b"GETDEL k": "getdel", b"MSETNX a 1": "msetnx", b"RENAMENX a b": "renamenx",
                     b"RANDOMKEY": "randomkey"}
    connection = Connection(1)
    connection.user = User("reader", READONLY, b"")
    assert "'setnx' command" in str(connection.refuses(req(b"SETNX k v")))
    assert connection.refuses(req(b"TYPE k")) is None
    connection.user = User("writer", READWRITE, b"")
    assert connection.refuses(req(b"COPY a b")) is None
    for line in (b"FLUSHDB", b"FLUSHALL ASYNC"):
        assert required_role(req(line)) == ADMIN
        assert "'%s' command" % line.split()[0].lower().decode() in str(connection.refuses(req(line)))
    connection.user = User("admin", ADMIN, b"")
    assert connection.refuses(req(b"COPY a b")) is None and connection.refuses(req(b"FLUSHDB")) is None


def test_time_is_the_nodes_clock():
    from kvd.executor import ClientExecutor

    class Clock:
        def seconds(self):
            return 1700000000.25

    executor = ClientExecutor.__new__(ClientExecutor)
    executor.node = type("Node", (), {"clock": Clock()})()
    assert executor.execute(req(b"TIME"), Connection(1)) == [b"1700000000", b"250000"]


# ------------------------------------------------------ kvd against redis-server

REDIS_SERVER = shutil.which("redis-server")


def _read_reply(buf, pos=0):
    """One RESP2/3 reply from ``buf`` at ``pos``: ((type byte, value), next pos), or None if incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    pos = end + 2
    if kind in (b"+", b"-", b":", b"_", b"#", b","):
        return (kind, line), pos
    if kind in (b"$", b"="):
        n = int(line)
        if n < 0:
            return (b"$", None), pos
        if len(buf) < pos + n + 2:
            return None
        return (kind, buf[pos:pos + n]), pos + n + 2
    if kind in (b"*", b"%", b"~"):
        n = int(line)
        if n < 0:
            return (b"*", None), pos
        items = []
        for _ in range(n * (2 if kind == b"%" else 1)):
            got = _read_reply(buf, pos)
            if got is None:
                return None
            item, pos = got
            items.append(item)
        return (kind, items), pos
    raise AssertionError("unexpected reply type %r" % kind)


def _replies(data, count):
    out, pos = [], 0
    for _ in range(count):
        got = _read_reply(data, pos)
        assert got is not None, "incomplete replies"
        reply, pos = got
        out.append(reply)
    assert pos == len(data)
    return out


@pytest.fixture(scope="module")
def redis_server():
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: the comparison with real Redis cannot run")
    with RedisServer() as server:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        yield conn
        conn.close()


def _redis_replies(conn, commands):
    data = b"".join(packed(*c) for c in commands)
    conn.sendall(data)
    buf = b""
    while True:
        pos, n = 0, 0
        while n < len(commands):
            got = _read_reply(buf, pos)
            if got is None:
                break
            pos, n = got[1], n + 1
        if n == len(commands):
            return _replies(buf, len(commands))
        chunk = conn.recv(65536)
        assert chunk, "redis-server closed the connection"
        buf += chunk


def _kvd_replies(proto, transport, commands):
    transport.clear()
    proto.dataReceived(b"".join(packed(*c) for c in commands))
    return _replies(transport.value(), len(commands))


def _random_command(rng):
    keys = ["a", "b", "c", "d"]
    k, k2 = rng.choice(keys), rng.choice(keys)
    v = rng.choice(["", "x", "hello", "12", "-3", "\x00\xff"])
    n = lambda: str(rng.randrange(-7, 8))  # noqa: E731
    return rng.choice([
        ("SET", k, v), ("GET", k), ("SETNX", k, v), ("GETSET", k, v), ("UNLINK", k, k2), ("DEL", k),
        ("STRLEN", k), ("GETRANGE", k, n(), n()), ("SUBSTR", k, n(), n()), ("TYPE", k), ("GETDEL", k),
        ("APPEND", k, v), ("SETRANGE", k, str(rng.randrange(0, 9)), v), ("SETRANGE", k, n(), v),
        ("MSETNX", k, v, k2, v), ("MSETNX", k, v), ("RENAME", k, k2), ("RENAMENX", k, k2), ("COPY", k, k2),
        ("COPY", k, k2, "REPLACE"), ("COPY", k, k2, "DB", "0"), ("EXISTS", k, k2), ("INCR", k), ("DBSIZE",),
        ("MSET", k, v, k2, v), ("SETNX", k), ("GETRANGE", k, "x", "1"), ("SETRANGE", k, "1.5", v),
        ("COPY", k, k2, "BAD"), ("MSETNX", k, v, k2), ("RANDOMKEY",), ("STRLEN",),
        rng.choice([("FLUSHDB",), ("FLUSHALL", "ASYNC"), ("FLUSHDB", "x"), ("GET", k)]),
    ])


@pytest.mark.parametrize("protocol", [2, 3])
def test_replies_match_a_real_redis_server(redis_server, protocol):
    """Random sequences of issue 15's commands: kvd (the port's parser on a KVMachine) answers as Redis 7 does."""
    import random

    rng = random.Random(15 + protocol)
    factory = RespFactory(MachineExecutor())
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    setup = [("FLUSHALL",), ("HELLO", str(protocol))]
    _redis_replies(redis_server, setup)
    _kvd_replies(proto, transport, setup[1:])
    compared = 0
    for _ in range(40):
        batch = [_random_command(rng) for _ in range(10)]
        ours = _kvd_replies(proto, transport, batch)
        theirs = _redis_replies(redis_server, batch)
        for command, a, b in zip(batch, ours, theirs):
            if command[0] == "RANDOMKEY":  # any key: both nil or both a key that exists in both
                assert (a[1] is None) == (b[1] is None), (command, a, b)
                continue
            assert a == b, (command, a, b)
            compared += 1
        state = [("DBSIZE",)] + [("GET", k) for k in "abcd"]
        assert _kvd_replies(proto, transport, state) == _redis_replies(redis_server, state)
    assert compared > 300
