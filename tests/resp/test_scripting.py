"""
Lua scripts at the client port: EVAL/EVALSHA/EVAL_RO/EVALSHA_RO and SCRIPT
LOAD/EXISTS/FLUSH/KILL parsed as Redis 7 does, EVALSHA resolved by the
executor, and the replies compared with a real redis-server's, RESP2 and RESP3.
"""

import hashlib

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.executor import ClientExecutor, _evalshas
from kvd.kv.commands import Script, ScriptGet
from kvd.kv.results import KVError
from kvd.limits import LIMITS
from kvd.resp.auth import READONLY, READWRITE
from kvd.resp.commands import Read, Write, command_info, parse_request, request_name, shape_reply
from kvd.resp.connection import Connection, required_role
from kvd.resp.errors import CommandError
from kvd.resp.protocol import RespFactory
from tests.resp.test_everyday import _kvd_replies, _redis_replies, redis_server  # noqa: F401 (a fixture)
from tests.resp.test_protocol import MachineExecutor

V = LIMITS.value_bytes


def sha(body):
    return hashlib.sha1(body.encode() if isinstance(body, str) else body).hexdigest()


def req(*args):
    return parse_request([a.encode() if isinstance(a, str) else a for a in args])


def test_parsing():
    assert req("EVAL", "return 1", "2", "a", "b", "c") == Write(Script("eval", b"return 1", (b"a", b"b"), (b"c",), V),
                                                                 name="eval")
    assert req("evalsha", "ABCDEF", "0") == Write(Script("evalsha", b"abcdef", (), (), V), name="evalsha")
    assert req("EVAL_RO", "x", "0", "a") == Write(Script("eval_ro", b"x", (), (b"a",), V), name="eval_ro")
    assert req("EVALSHA_RO", "x", "1", "k").command.op == "evalsha_ro"
    assert req("EVAL", "x", "-1") == CommandError("ERR", "Number of keys can't be negative")
    assert req("EVAL", "x", "2", "a") == CommandError("ERR", "Number of keys can't be greater than number of args")
    assert req("EVAL", "x", "y") == CommandError("ERR", "value is not an integer or out of range")
    assert req("EVAL", "x") == CommandError("ERR", "wrong number of arguments for 'eval' command")
    assert req("SCRIPT", "LOAD", "b") == Write(Script("load", b"b"), name="script|load")
    assert req("SCRIPT", "FLUSH") == req("script", "flush", "async") == Write(Script("flush"), name="script|flush")
    assert req("SCRIPT", "FLUSH", "x") == CommandError("ERR", "SCRIPT FLUSH only support SYNC|ASYNC option")
    assert req("SCRIPT", "EXISTS", "AB", "cd") == Read(ScriptGet((b"ab", b"cd")), "script|exists", "exists")
    assert shape_reply(req("SCRIPT", "EXISTS", "a", "b"), [b"body", None]) == [1, 0]
    assert req("SCRIPT", "EXISTS") == CommandError("ERR", "wrong number of arguments for 'script|exists' command")
    assert req("EVAL", "x", "1", b"k" * 600).message.startswith("key of 600 bytes is over the limit")
    # The node's value limit travels in the entry, as for APPEND.
    assert parse_request([b"EVAL", b"x", b"0"], 100).command.max_len == 100
    assert [request_name(req(*c)) for c in (("EVAL", "x", "0"), ("SCRIPT", "LOAD", "x"), ("EVALSHA_RO", "x", "0"))] == [
        "eval", "script|load", "evalsha_ro"]
    assert command_info(b"eval")[1] == -3 and command_info(b"script|load")[1] == 3


def test_roles():
    for args in (("EVAL_RO", "x", "0"), ("EVALSHA_RO", "x", "0"), ("SCRIPT", "EXISTS", "x")):
        assert required_role(req(*args)) == READONLY, args
    for args in (("EVAL", "x", "0"), ("EVALSHA", "x", "0"), ("SCRIPT", "LOAD", "x"), ("SCRIPT", "FLUSH")):
        assert required_role(req(*args)) == READWRITE, args


class ScriptExecutor(MachineExecutor):
    """MachineExecutor with the node's EVALSHA: the body looked up (kvd.executor.ClientExecutor._evalsha)."""

    _evalsha = ClientExecutor._evalsha

    def __init__(self):
        super().__init__()
        self.node = self
        self.reads = []

    def submit(self, command):
        return defer.succeed(MachineExecutor.execute(self, Write(command), None))

    def read(self, op, linearizable=True):
        self.reads.append((op, linearizable))
        return defer.succeed(self.machine.read(op))

    def execute(self, request, connection):
        if isinstance(request, Write) and _evalshas(request.command):
            return self._evalsha(request.command, connection)
        if getattr(request, "name", None) == "script|kill":
            return ClientExecutor._admin_script_kill(self, ())
        return super().execute(request, connection)


def test_evalsha_looks_the_body_up_linearizably_only_when_this_node_lacks_it():
    executor = ScriptExecutor()
    connection = Connection(1)
    body = "return 'hi'"
    results = []
    executor.execute(req("EVALSHA", sha(body), "0"), connection).addBoth(results.append)
    assert str(results[-1].message).startswith("NOSCRIPT")
    assert [lin for _, lin in executor.reads] == [False, True]
    executor.execute(req("SCRIPT", "LOAD", body), connection)
    executor.reads.clear()
    executor.execute(req("EVALSHA", sha(body).upper(), "0"), connection).addBoth(results.append)
    assert results[-1] == b"hi" and [lin for _, lin in executor.reads] == [False]
    connection.readonly = True  # READONLY: this node's cache only
    executor.reads.clear()
    executor.execute(req("EVALSHA", sha("other"), "0"), connection).addBoth(results.append)
    assert results[-1].message.startswith("NOSCRIPT") and [lin for _, lin in executor.reads] == [False]
    assert executor.execute(req("EVALSHA", "abc", "0"), connection).message.startswith("NOSCRIPT")


LOADED = "return 'loaded ' .. ARGV[1]"

COMMANDS = [
    ("EVAL", "return redis.call('set', KEYS[1], ARGV[1])", "1", "k", "v"),
    ("EVAL", "return redis.call('get', KEYS[1])", "1", "k"),
    ("EVAL", "return {1, 2.9, -2.9, true, false, 'x', nil, 5}", "0"),
    ("EVAL", "return {1, {2, false, 3}, 'a', {}}", "0"),
    ("EVAL", "return {ok='FINE'}", "0"),
    ("EVAL", "return redis.status_reply('OK')", "0"),
    ("EVAL", "return redis.error_reply('MY error')", "0"),
    ("EVAL", "return redis.error_reply('ERR x')", "0"),
    ("EVAL", "return {err=5}", "0"),
    ("EVAL", "return 3.99", "0"),
    ("EVAL", "return -3.99", "0"),
    ("EVAL", "return nil", "0"),
    ("EVAL", "return false", "0"),
    ("EVAL", "return true", "0"),
    ("EVAL", "return redis.call('incr', KEYS[1])", "1", "k"),
    ("EVAL", "return redis.pcall('incr', KEYS[1])", "1", "k"),
    ("EVAL", "local e = redis.pcall('incr', KEYS[1]); return e.err", "1", "k"),
    ("EVAL", "local ok = pcall(redis.call, 'incr', KEYS[1]); return tostring(ok)", "1", "k"),
    ("EVAL", "return 1 + nil", "0"),
    ("EVAL", "\nlocal a = 1\nreturn 1 + nil", "0"),
    ("EVAL", "\nlocal a = 1\nreturn redis.call('incr', 'k')", "0"),
    ("EVAL", "return x", "0"),
    ("EVAL", "x = 1", "0"),
    ("EVAL", "error('boom')", "0"),
    ("EVAL", "error({err='X Y'})", "0"),
    ("EVAL", "return redis.call('nosuch')", "0"),
    ("EVAL", "return redis.pcall('nosuch')", "0"),
    ("EVAL", "return redis.call('get')", "0"),
    ("EVAL", "return redis.call({})", "0"),
    ("EVAL", "return redis.call()", "0"),
    ("EVAL", "return redis.call('eval', 'return 1', '0')", "0"),
    ("EVAL", "return 1 +", "0"),
    ("EVAL", "\x1bLuaQ\x00", "0"),
    ("SCRIPT", "LOAD", "\x1bLuaQ"),
    ("EVAL", "return redis.sha1hex('abc')", "0"),
    ("EVAL", "return redis.call('mget', KEYS[1], 'nope', KEYS[2])", "2", "k", "k2"),
    ("EVAL", "redis.call('set','a','1'); redis.call('incr','a'); error('boom')", "0"),
    ("GET", "a"),
    ("EVAL", "return redis.call('incrby', KEYS[1], ARGV[1])", "1", "n", "5"),
    ("EVAL", "return redis.call('decr', KEYS[1])", "1", "n"),
    ("EVAL", "return {redis.call('setnx','s','1'), redis.call('setnx','s','2'), redis.call('getset','s','3'), "
             "redis.call('getdel','s'), redis.call('exists','s')}", "0"),
    ("EVAL", "return redis.call('type', KEYS[1])", "1", "k"),
    ("EVAL", "return redis.call('type', 'nope')", "0"),
    ("EVAL", "return redis.call('ping')", "0"),
    ("EVAL", "return redis.call('echo', ARGV[1])", "0", "hi"),
    ("EVAL", "return #KEYS + #ARGV", "2", "a", "b", "c"),
    ("EVAL", "redis.call('set', 'f', 1.5); redis.call('set', 'i', 7); return {redis.call('get', 'f'), "
             "redis.call('get', 'i')}", "0"),
    ("EVAL", "return {redis.call('append', 'ap', 'x'), redis.call('append', 'ap', 'yz'), redis.call('strlen', 'ap'),"
             " redis.call('getrange', 'ap', 0, 1), redis.call('setrange', 'ap', 5, 'q')}", "0"),
    ("EVAL", "return {redis.call('rename', 'ap', 'ap2'), redis.call('renamenx', 'ap2', 'k'), "
             "redis.call('copy', 'ap2', 'ap3'), redis.call('del', 'ap2', 'ap3', 'nope')}", "0"),
    ("EVAL", "return {redis.call('mset', 'm1', '1', 'm2', '2'), redis.call('msetnx', 'm1', 'x', 'm3', '3')}", "0"),
    ("EVAL", "return redis.call('set', 'k', 'v2', 'GET')", "0"),
    ("EVAL", "return redis.call('set', 'k', 'v3', 'XX', 'NX')", "0"),
    ("EVAL", "local t = {} for i = 1, 5 do t[i] = redis.call('incr', 'counter') end return t", "0"),
    ("EVAL", "return string.format('%d-%s', 5, 'x') .. table.concat({'a', 'b'}, ',')", "0"),
    ("EVAL", "return tostring(math.floor(2.5)) .. tostring(#'abc')", "0"),
    # cjson (Redis's lua-cjson; kvd's in Lua)
    ("EVAL", "return cjson.encode({1, 2, 3, 'x', true, false})", "0"),
    ("EVAL", "return cjson.encode({a = {b = 1.5}})", "0"),
    ("EVAL", "return cjson.encode({})", "0"),
    ("EVAL", "return cjson.encode('a/b\\n\"x\\127\\1\\31 \\200')", "0"),
    ("EVAL", "return cjson.encode({1, nil, 3})", "0"),
    ("EVAL", "return {cjson.encode(1e300), cjson.encode(0.1), cjson.encode(123456789012345678)}", "0"),
    ("EVAL", "return cjson.encode(cjson.null)", "0"),
    ("EVAL", "return cjson.encode({[1] = 1, [100] = 2})", "0"),
    ("EVAL", "return cjson.encode({[1.5] = 1})", "0"),
    ("EVAL", "return cjson.encode(function() end)", "0"),
    ("EVAL", "return cjson.encode(1/0)", "0"),
    ("EVAL", "local t = cjson.decode(ARGV[1]) return {t.a[1], t.a[2], tostring(t.a[3].b == cjson.null), t.c, "
             "t.d, tostring(t.e), t.f, #t.a}", "0",
     '{"a": [1, 2.5e1, {"b": null}], "c": "\\u00e9\\ud83d\\ude00\\n\\/", "d": -7, "e": false, "f": ""}'),
    ("EVAL", "return cjson.decode('[1, 2')", "0"),
    ("EVAL", "return cjson.decode('{\"a\" 1}')", "0"),
    ("EVAL", "return cjson.decode('nul')", "0"),
    ("EVAL", "return cjson.decode('[] x')", "0"),
    ("EVAL", "return cjson.encode(cjson.decode('[[[],{}],\"\\\\u0041\"]'))", "0"),
    ("EVAL", "return cjson.decode('null') == cjson.null and 1 or 0", "0"),
    ("EVAL", "return cjson.decode(' 17 ')", "0"),
    ("EVAL", "local t = {} t[1] = t return cjson.encode(t)", "0"),
    ("EVAL", "return cjson.decode(string.rep('[', 1100))", "0"),
    ("EVAL", "local ok, e = pcall(cjson.decode, '{') return e", "0"),
    # cmsgpack (Redis's lua-cmsgpack 0.4; kvd's in Lua)
    ("EVAL", "return cmsgpack.pack(0, 1, -1, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, -32, -33, "
             "-128, -129, -32768, -32769, -2147483648, -2147483649, 2^53, -2^53)", "0"),
    ("EVAL", "return cmsgpack.pack(1.5, 0.1, -2.25, 1e300, 3.4e38, 1e-310, 1/0, -1/0, 2^64)", "0"),
    ("EVAL", "return cmsgpack.pack('', 'abc', string.rep('x', 31), string.rep('x', 32), string.rep('y', 255), "
             "string.rep('z', 256), string.rep('w', 65536))", "0"),
    ("EVAL", "return cmsgpack.pack(true, false, nil, {}, {1, 2, 3}, {a = 1}, {1, nil, 3}, {{{}}})", "0"),
    ("EVAL", "local t = {} for i = 1, 20 do t[i] = i end return cmsgpack.pack(t)", "0"),
    ("EVAL", "local t = {} for i = 1, 20 do t['k' .. i] = i end return #cmsgpack.pack(t)", "0"),
    ("EVAL", "local t = {} local c = t for i = 1, 20 do c[1] = {} c = c[1] end return cmsgpack.pack(t)", "0"),
    ("EVAL", "return cmsgpack.pack()", "0"),
    ("EVAL", "return cjson.encode({cmsgpack.unpack(cmsgpack.pack(1, -1, 300, -300, 70000, -70000, 5000000000, "
             "-5000000000, 1.5, 0.1, 'abc', true, false, {1, 2}, {a = 'b'}, string.rep('q', 40)))})", "0"),
    ("EVAL", "return cjson.encode({cmsgpack.unpack(ARGV[1])})", "0",
     b"\x83\xa4name\xa3Joe\xa3age\x1e\xa4tags\x92\xa1x\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"),
    ("EVAL", "return cmsgpack.unpack(ARGV[1])", "0", b"\xc4\x01x"),
    ("EVAL", "return cmsgpack.unpack(ARGV[1])", "0", b"\xc1"),
    ("EVAL", "return cmsgpack.unpack(ARGV[1])", "0", b"\xcd\x01"),
    ("EVAL", "local message = cmsgpack.unpack(ARGV[1]) return 'hello ' .. message['name']", "0",
     b"\x81\xa4name\xa3Joe"),
    ("EVAL", "return {cmsgpack.unpack_one(cmsgpack.pack(1, 2, 3))}", "0"),
    ("EVAL", "return {cmsgpack.unpack_one(cmsgpack.pack(1, 2, 3), 2)}", "0"),
    ("EVAL", "return {cmsgpack.unpack_limit(cmsgpack.pack(1, 2, 3), 2)}", "0"),
    ("EVAL", "return {cmsgpack.unpack_limit(cmsgpack.pack(1, 2, 3), 0, 1)}", "0"),
    ("EVAL", "return {cmsgpack.unpack('')}", "0"),
    ("EVAL", "return {cmsgpack.unpack_limit(cmsgpack.pack(1, 2, 3), 0, 0)}", "0"),
    ("EVAL", "return {cmsgpack.unpack_one(cmsgpack.pack(1, 2, 3), 9)}", "0"),
    ("EVAL", "return cjson.encode({cmsgpack.unpack(cmsgpack.pack(2^60, -2^60, 2^64, 0.1, -2.5e-300, 1e-310))})", "0"),
    ("SCRIPT", "LOAD", LOADED),
    ("SCRIPT", "LOAD", "return +"),
    ("EVALSHA", sha(LOADED), "0", "x"),
    ("EVALSHA", sha(LOADED).upper(), "0", "y"),
    ("EVALSHA", "ffff", "0"),
    ("EVALSHA", "f" * 40, "0"),
    ("SCRIPT", "EXISTS", sha(LOADED), "ffff", sha("return redis.call('ping')"), sha("return 1 +")),
    ("EVAL_RO", "return redis.call('get', KEYS[1])", "1", "k"),
    ("EVAL_RO", "return redis.call('set', KEYS[1], 'x')", "1", "k"),
    ("EVAL_RO", "return redis.pcall('incr', KEYS[1])", "1", "k"),
    ("EVALSHA_RO", sha(LOADED), "0", "z"),
    # Scripts inside MULTI: queued, run in their place at EXEC (an unknown SHA answers NOSCRIPT there).
    ("MULTI",),
    ("EVAL", "return redis.call('incr', KEYS[1])", "1", "tx"),
    ("EVALSHA", sha(LOADED), "0", "t"),
    ("SET", "tx2", "v"),
    ("EVALSHA", "f" * 40, "0"),
    ("EVAL", "return redis.call('incr', 'tx2')", "0"),
    ("SCRIPT", "LOAD", "return 'in multi'"),
    ("EVAL_RO", "return redis.call('get', 'tx')", "0"),
    ("EXEC",),
    ("EVALSHA", sha("return 'in multi'"), "0"),
    ("MULTI",),
    ("EVAL", "return 1 +", "0"),
    ("EVAL", "return 1", "x"),
    ("EXEC",),
    ("GET", "tx"),
    ("EVAL", "return 1", "-1"),
    ("EVAL", "return 1", "2", "a"),
    ("EVAL", "return 1", "x"),
    ("EVAL", "return 1"),
    ("SCRIPT", "FLUSH"),
    ("SCRIPT", "EXISTS", sha(LOADED)),
    ("EVALSHA", sha(LOADED), "0", "x"),
    ("SCRIPT", "FLUSH", "ASYNC"),
    ("SCRIPT", "FLUSH", "bad"),
    ("SCRIPT", "KILL"),
    ("SCRIPT", "LOAD"),
    ("MGET", "k", "a", "n", "f", "i", "counter", "ap", "ap2", "ap3", "m1", "m3", "s"),
]


@pytest.mark.parametrize("protocol", [2, 3])
def test_replies_match_a_real_redis_server(redis_server, protocol):  # noqa: F811
    """Every command of COMMANDS answers as Redis 7 does: the same reply type and bytes, errors included."""
    factory = RespFactory(ScriptExecutor())
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    setup = [("FLUSHALL",), ("SCRIPT", "FLUSH"), ("HELLO", str(protocol))]
    _redis_replies(redis_server, setup)
    _kvd_replies(proto, transport, setup[2:])
    ours = _kvd_replies(proto, transport, COMMANDS)
    theirs = _redis_replies(redis_server, COMMANDS)
    mismatches = [(c, a, b) for c, a, b in zip(COMMANDS, ours, theirs) if a != b]
    assert mismatches == []
    assert len(ours) == len(COMMANDS) > 70


def test_scripts_inside_multi_are_queued_but_not_script_exists():
    """A transaction's entry holds scripts like writes; SCRIPT EXISTS (a read it cannot replay) is refused."""
    from kvd.resp.connection import SCRIPT_IN_MULTI

    connection = Connection(1)
    connection.in_multi = True
    assert connection.queue(req("SCRIPT", "EXISTS", "a")) == SCRIPT_IN_MULTI and connection.queued.flagged
    connection = Connection(1)
    connection.in_multi = True
    for args in (("EVAL", "return 1", "0"), ("EVALSHA", "a" * 40, "0"), ("SCRIPT", "LOAD", "x"),
                 ("EVAL_RO", "return 1", "0"), ("GET", "k")):
        connection.queue(req(*args))
    assert not connection.queued.flagged and len(connection.queued.ops) == 5


def test_evalsha_inside_a_transaction_is_resolved_before_it_is_proposed():
    executor = ScriptExecutor()
    connection = Connection(1)
    executor.execute(req("SCRIPT", "LOAD", "return 'a'"), connection)
    executor.reads.clear()
    from kvd.kv.commands import Transaction

    txn = Transaction((Script("evalsha", sha("return 'a'").encode()), Script("evalsha", b"f" * 40),
                       Script("evalsha", b"short"), Script("eval", b"return 2")))
    results = []
    executor.execute(Write(txn, "exec"), connection).addBoth(results.append)
    assert results[-1] == [b"a", KVError("NOSCRIPT No matching script. Please use EVAL."),
                           KVError("NOSCRIPT No matching script. Please use EVAL."), 2]
    assert executor.reads == [(ScriptGet((sha("return 'a'").encode(), b"f" * 40)), False),
                              (ScriptGet((b"f" * 40,)), True)]
