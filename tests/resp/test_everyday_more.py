"""
The rest of issue 15's everyday commands at the client port, against a real
redis-server where one is installed: INCRBYFLOAT (every reply compared, RESP2
and RESP3, also inside MULTI and from Lua), CLIENT (fields and shapes
compared where values cannot be: ids, addresses, ages) and COMMAND (the
table covers every command the parser accepts; GETKEYS as Redis).
"""

import random

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.kv.commands import IncrByFloat
from kvd.resp.commands import Write, parse_request, request_name
from kvd.resp.connection import required_role
from kvd.resp.auth import READWRITE
from kvd.resp.protocol import RespFactory
from tests.resp.test_everyday import _kvd_replies, _redis_replies, redis_server  # noqa: F401
from tests.resp.test_protocol import MachineExecutor


def req(*args):
    return parse_request([a if isinstance(a, bytes) else a.encode() for a in args])


def test_incrbyfloat_parses_to_one_write():
    assert req("INCRBYFLOAT", "k", "1.5") == Write(IncrByFloat(b"k", b"1.5"))
    assert req("incrbyfloat", "k", "not a float") == Write(IncrByFloat(b"k", b"not a float"))  # refused when applied
    assert str(req("INCRBYFLOAT", "k")) == "ERR wrong number of arguments for 'incrbyfloat' command"
    assert request_name(req("INCRBYFLOAT", "k", "1")) == "incrbyfloat"
    assert required_role(req("INCRBYFLOAT", "k", "1")) == READWRITE


def kvd_connection():
    factory = RespFactory(MachineExecutor())
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    return factory, proto, transport


NUMBERS = ["0", "1", "-1", "1.5", "-2.25", "0.1", "3.0e3", "1e-3", ".5", "5.", "+7", "-0", "1e20", "-1e-20",
           "123456789.123456789", "0x1p-2", "0X1.8P1", "9007199254740993", "1.7976931348623157e308", "1e4000",
           "3.4e-4000", "inf", "-inf", "Infinity", "nan", "1e5000", "1e-5000", "abc", "", " 1", "1 ", "1e", "0x",
           "1.2.3", "--1", "1\x00", "0.3333333333333333333333333"]


def _random_command(rng):
    k = rng.choice(["a", "b", "c"])
    return rng.choice([
        ("INCRBYFLOAT", k, rng.choice(NUMBERS)), ("INCRBYFLOAT", k, rng.choice(NUMBERS)),
        ("INCRBYFLOAT", k, "%.*g" % (rng.randrange(1, 25), rng.uniform(-1e6, 1e6))),
        ("INCRBYFLOAT", k, "%de%d" % (rng.randrange(-99, 99), rng.randrange(-30, 30))),
        ("SET", k, rng.choice(NUMBERS)), ("GET", k), ("INCRBY", k, "3"), ("INCR", k), ("APPEND", k, "5"),
        ("INCRBYFLOAT", k), ("INCRBYFLOAT", k, "1", "2"), ("DEL", k),
        ("EVAL", "return redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])", "1", k, rng.choice(NUMBERS)),
        ("EVAL", "return redis.pcall('INCRBYFLOAT', KEYS[1], ARGV[1])", "1", k, rng.choice(NUMBERS)),
    ])


@pytest.mark.parametrize("protocol", [2, 3])
def test_incrbyfloat_replies_match_a_real_redis_server(redis_server, protocol):  # noqa: F811
    """Random INCRBYFLOATs (also in MULTI and Lua) mixed with string commands: every reply as Redis 7's."""
    rng = random.Random(40 + protocol)
    _, proto, transport = kvd_connection()
    setup = [("FLUSHALL",), ("HELLO", str(protocol))]
    _redis_replies(redis_server, setup)
    _kvd_replies(proto, transport, setup[1:])
    compared = errors = 0
    for i in range(60):
        batch = [_random_command(rng) for _ in range(8)]
        if i % 5 == 0:
            batch = [("MULTI",)] + batch + [("EXEC",)]
        ours = _kvd_replies(proto, transport, batch)
        theirs = _redis_replies(redis_server, batch)
        for command, a, b in zip(batch, ours, theirs):
            if command[0] == "EVAL" and a[0] == b[0] == b"-":  # Lua error texts name the script differently
                assert a[1].split(b" ")[0] == b[1].split(b" ")[0], (command, a, b)
                continue
            assert a == b, (command, a, b)
            compared += 1
            errors += a[0] == b"-"
        state = [("GET", k) for k in "abc"]
        assert _kvd_replies(proto, transport, state) == _redis_replies(redis_server, state)
    assert compared > 400 and errors > 20
