"""
Lua scripts in the key/value machine (kvd.kv.script): the entry's codec,
Redis's conversions, the sandbox, the bounds, the replicated script cache, on
the in-memory keyspace and on LMDB.
"""

import hashlib
import time

import pytest

from kvd.kv import script
from kvd.kv.commands import (
    CodecError, Envelope, Get, Script, ScriptGet, Set, command_size, decode_envelope, encode_envelope,
)
from kvd.kv.machine import KVMachine
from kvd.kv.results import OK, KVError, StatusText

V = 1 << 20


def sha(body: bytes) -> bytes:
    return hashlib.sha1(body).hexdigest().encode()


class Runner:
    def __init__(self, machine=None):
        self.machine = machine or KVMachine()
        self.seq = 0

    def apply(self, command):
        self.seq += 1
        env = Envelope(b"c/1", self.seq, self.seq, 0, command)
        return self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))

    def eval(self, body, keys=(), args=(), op="eval"):
        if isinstance(body, str):
            body = body.encode()
        return self.apply(Script(op, body, tuple(keys), tuple(args), V))

    def get(self, key):
        return self.machine.read(Get(key))


@pytest.fixture
def r():
    return Runner()


def test_codec_round_trip_and_size():
    for cmd in (Script("eval", b"return 1", (b"k",), (b"a", b""), V), Script("flush"), Script("load", b"x"),
                Script("evalsha_ro", b"b" * 300, (), tuple(b"%d" % i for i in range(200)), 5)):
        data = encode_envelope(Envelope(b"c", 1, 1, 0, cmd))
        assert decode_envelope(data).command == cmd
        assert command_size(cmd) == len(data) - len(encode_envelope(Envelope(b"c", 1, 1, 0, Set(b"", b"")))) + 4
    from kvd.kv.commands import Transaction

    txn = Transaction((Set(b"k", b"v"), Script("eval", b"return 1", (b"k",), (), V), Get(b"k")), ((b"k", True, 3),))
    assert decode_envelope(encode_envelope(Envelope(b"c", 1, 1, 0, txn))).command == txn
    bad = bytearray(encode_envelope(Envelope(b"c", 1, 1, 0, Script("flush"))))
    bad[bad.index(13) + 1] = 9  # an unknown op
    with pytest.raises(CodecError):
        decode_envelope(bytes(bad))
    with pytest.raises(ValueError):
        Script("run")
    with pytest.raises(TypeError):
        Script("eval", "text")


def test_keys_argv_and_writes(r):
    assert r.eval("return redis.call('set', KEYS[1], ARGV[1])", [b"k"], [b"v"]) is OK
    assert r.get(b"k") == b"v"
    assert r.eval("return {KEYS[1], KEYS[2], ARGV[1], #KEYS, #ARGV}", [b"a", b"b"], [b"x"]) == [b"a", b"b", b"x", 2, 1]
    # Reads see the script's own earlier writes, in order.
    assert r.eval("redis.call('set','n','5'); redis.call('incrby','n',3); redis.call('append','n','1');"
                  "redis.call('del','k'); return {redis.call('get','n'), redis.call('exists','k'), "
                  "redis.call('strlen','n'), redis.call('type','n'), redis.call('type','k')}") == [
        b"81", 0, 2, StatusText("string"), StatusText("none")]
    assert r.get(b"n") == b"81" and r.get(b"k") is None


def test_conversions(r):
    r.eval("redis.call('set','k','v')")
    assert r.eval("return {1, 2.9, -2.9, true, false, 'x', nil, 5}") == [1, 2, -2, 1, None, b"x"]
    assert r.eval("return 3.99") == 3 and r.eval("return -3.99") == -3
    assert r.eval("return 1e20") == -2**63  # C's cast of an out-of-range double on x86-64, as Redis
    assert r.eval("return nil") is None and r.eval("return false") is None and r.eval("return true") == 1
    assert r.eval("return {ok='FINE'}") == StatusText("FINE")
    assert r.eval("return redis.status_reply('OK')") is OK
    assert r.eval("return redis.error_reply('MY error')") == KVError("MY error")
    assert r.eval("return {err=5}") == [] and r.eval("return {ok=5, 7}") == [7]
    assert r.eval("return {{1, {2}}, {}}") == [[1, [2]], []]
    # Redis's replies inside Lua: status -> {ok=...}, nil -> false, arrays -> tables.
    assert r.eval("local s = redis.call('set','a','1'); return {type(s), s.ok}") == [b"table", b"OK"]
    assert r.eval("return {redis.call('get','nope') == false, redis.call('mget','a','nope','k')}") == [
        1, [b"1", None, b"v"]]
    assert r.eval("return redis.call('ping')") == StatusText("PONG")
    assert r.eval("return redis.call('echo', 'e')") == b"e"
    assert r.eval("return redis.sha1hex('abc')") == b"a9993e364706816aba3e25717850c26c9cd0d89d"
    # Numbers as arguments: their shortest text.
    r.eval("redis.call('set','f', 1.5); redis.call('set','i', 7); redis.call('set','e', 1e20)")
    assert (r.get(b"f"), r.get(b"i"), r.get(b"e")) == (b"1.5", b"7", b"1e+20")


def test_errors(r):
    r.eval("redis.call('set','foo','bar')")
    s = sha(b"return redis.call('incr','foo')").decode()
    assert r.eval("return redis.call('incr','foo')") == KVError(
        "ERR value is not an integer or out of range script: %s, on @user_script:1." % s)
    body = "\nlocal a = 1\nreturn 1 + nil"
    assert r.eval(body) == KVError("ERR user_script:3: attempt to perform arithmetic on a nil value script: "
                                   "%s, on @user_script:3." % sha(body.encode()).decode())
    assert r.eval("return redis.pcall('incr','foo')") == KVError("ERR value is not an integer or out of range")
    assert r.eval("local e = redis.pcall('incr','foo'); return e.err") == b"ERR value is not an integer or out of range"
    assert r.eval("local ok, e = pcall(redis.call, 'incr', 'foo'); return {tostring(ok), e}") == [
        b"false", b"ERR value is not an integer or out of range"]
    assert r.eval("return redis.call('nosuch')").message.startswith("ERR Unknown Redis command called from script ")
    assert r.eval("return redis.call('get')").message.startswith(
        "ERR Wrong number of args calling Redis command from script ")
    assert r.eval("return redis.call('eval', 'return 1', 0)").message.startswith(
        "ERR This Redis command is not allowed from script ")
    assert r.eval("return redis.call({})").message.startswith(
        "ERR Lua redis lib command arguments must be strings or integers ")
    assert r.eval("return redis.call()").message.startswith(
        "ERR Please specify at least one argument for this redis lib call ")
    assert r.eval("return redis.call('time')").message.startswith("ERR This Redis command is not allowed")
    assert r.eval("return redis.call('keys', '*')").message.startswith("ERR kvd does not run KEYS inside scripts")
    assert r.eval("error({err='X Y'})").message.startswith("X Y script: ")
    assert r.eval("error('boom')").message.startswith("ERR user_script:1: boom script: ")
    assert r.eval("return 1 +") == KVError(
        "ERR Error compiling script (new function): user_script:1: unexpected symbol near '<eof>'")
    assert r.eval("return redis.call('set','k','v')", op="eval_ro").message.startswith(
        "ERR Write commands are not allowed from read-only scripts. script: ")
    assert r.eval("return redis.call('get','foo')", op="eval_ro") == b"bar"


def test_writes_before_a_runtime_error_stay_applied(r):
    """Redis's rule: no rollback."""
    assert r.eval("redis.call('set','a','1'); redis.call('incr','a'); error('boom')").message.startswith("ERR")
    assert r.get(b"a") == b"2"
    assert r.eval("redis.call('set','b','1'); return redis.call('incr','nan-' .. redis.call('set','c','x').ok)") == 1
    assert r.eval("redis.call('set','c','x'); return redis.call('incr', 'c')").message.startswith("ERR value")
    assert r.get(b"b") == b"1" and r.get(b"c") == b"x"


@pytest.mark.parametrize("name", ["os", "io", "require", "loadstring", "load", "dofile", "loadfile", "debug",
                                  "getfenv", "setfenv", "coroutine", "package", "python", "collectgarbage",
                                  "module", "newproxy", "gcinfo"])
def test_sandbox_has_no(r, name):
    assert r.eval("return %s" % name).message.startswith(
        "ERR user_script:1: Script attempted to access nonexistent global variable '%s'" % name)


def test_bytecode_is_refused(r):
    """Lua 5.1 loads precompiled chunks without checking them: one could corrupt the node's memory."""
    import lupa.lua51 as lua

    bytecode = lua.LuaRuntime(encoding=None).eval("string.dump(function() return 1 end)")
    for body in (bytecode, b"\x1bLua"):
        assert r.eval(body) == KVError(
            "ERR Error compiling script (new function): user_script:1: unexpected symbol near 'char(27)'")
        assert r.apply(Script("load", body)).message.startswith("ERR Error compiling script")


def test_sandbox(r):
    assert r.eval("return {type(math.random), type(math.randomseed), type(string.dump), type(math.floor)}") == [
        b"nil", b"nil", b"nil", b"function"]
    assert r.eval("x = 1").message.startswith("ERR user_script:1: Attempt to modify a readonly table")
    assert r.eval("function f() end").message.startswith("ERR user_script:1: Attempt to modify a readonly table")
    assert r.eval("return rawget(_G, 'x')") is None
    assert r.eval("setmetatable(_G, nil)").message.startswith("ERR user_script:1: cannot change a protected")
    assert r.eval("return redis.call.__class__").message.startswith("ERR")
    assert r.eval("return tostring(redis.call):sub(1, 3)") != b"<bu"  # no Python builtins reachable
    # Each script runs in a fresh runtime: nothing one leaves behind reaches the next.
    r.eval("string.upper = nil; table.insert = nil")
    assert r.eval("return {string.upper('a'), type(table.insert)}") == [b"A", b"function"]


def test_an_endless_loop_is_stopped_and_applies_nothing(r):
    for body in ("redis.call('set','k','1'); while true do end",
                 "redis.call('set','k','1'); while true do pcall(function() while true do end end) end",
                 "redis.call('set','k','1'); local n = 0; while true do n = n + redis.call('strlen', 'k') end",
                 "redis.call('set','k','1'); local f; f = function() return pcall(f) end; while true do f() end"):
        start = time.monotonic()
        result = r.eval(body)
        assert time.monotonic() - start < 2.0
        assert result.message.startswith("ERR Script killed: it ran over kvd's limit of"), (body, result)
        assert r.get(b"k") is None
    assert r.eval("local n = 0; for i = 1, 100000 do n = n + i end; return n") == 5000050000


def test_costly_patterns_are_refused(r):
    """Lua's pattern matching backtracks in C, unseen by the hook: 400 bytes and '.-.-.-b' took 8 s."""
    for body in ("return string.find(string.rep('a', 400), '.-.-.-b')",
                 "return (string.rep('a', 400)):match('.-.-.-b')",
                 "return string.gsub(string.rep('a', 100000), '.-b', '')",
                 "return string.find(string.rep('a', 2e6), string.rep('a', 1e6) .. 'b', 1, true)",
                 "return string.find(string.rep('a', 2e6), string.rep('a', 1e5) .. 'b')"):
        start = time.monotonic()
        result = r.eval(body)
        assert time.monotonic() - start < 0.5
        assert "could run too long" in result.message, (body, result)
    assert r.eval("return {string.gsub('a b  c', '%s+', ' ')}") == [b"a b c", 2]
    assert r.eval("return {string.find(string.rep('a', 100000) .. 'b', 'b', 1, true)}") == [100001, 100001]
    assert r.eval("return {('key:12'):match('^(%a+):(%d+)$')}") == [b"key", b"12"]
    assert r.eval("local n = 0 for w in string.gmatch('one two three', '%a+') do n = n + 1 end return n") == 3
    assert r.eval("return string.find('[x]*', '[*]')") == 4


def test_string_rep_past_the_memory_bound_is_refused_before_its_loop(r):
    """string.rep loops in C once per copy, even of '' (1e9 copies took 2.3 s)."""
    start = time.monotonic()
    assert r.eval("return string.rep('', 1e9)").message.startswith("ERR Script killed: it used more than")
    assert r.eval("redis.call('set', 'k', 'v'); local ok = pcall(string.rep, 'ab', 5e6); return 1").message.startswith(
        "ERR Script killed: it used more than")  # even caught: it would have failed for memory
    assert r.get(b"k") is None
    assert time.monotonic() - start < 0.5
    assert r.eval("return {#string.rep('ab', 1000), string.rep('x', 0), string.rep(5, 2)}") == [2000, b"", b"55"]


def test_cjson_runs_under_the_bounds(r):
    assert r.eval("return cjson.encode(cjson.decode(ARGV[1]))", args=[b'{"a":[1,2.5,"x",null,true]}']) == (
        b'{"a":[1,2.5,"x",null,true]}')
    assert r.eval("redis.call('set','k','1'); while true do cjson.decode(cjson.encode({1, {2}})) end").message.startswith(
        "ERR Script killed: it ran over")
    assert r.eval("local s = string.rep('x', 3e6) return #cjson.encode({s, s, s})").message.startswith(
        "ERR Script killed: it used more than")
    assert r.get(b"k") is None


def test_cmsgpack_runs_under_the_bounds(r):
    assert r.eval("return cmsgpack.pack({1, 'a', {b = true}})") == b"\x93\x01\xa1a\x81\xa1b\xc3"
    assert r.eval("local a, b = cmsgpack.unpack(ARGV[1]) return {a, b}", args=[b"\x05\xa1x"]) == [5, b"x"]
    assert r.eval("while true do cmsgpack.unpack(cmsgpack.pack({1, 2, 3})) end").message.startswith(
        "ERR Script killed: it ran over")
    assert r.eval("local t = {} for i = 1, 5e4 do t[i] = string.rep('x', 100) .. i end "
                  "return #cmsgpack.pack(t, t)").message.startswith("ERR Script killed: it used more than")


def test_memory_is_bounded_and_applies_nothing(r):
    for body in ("redis.call('set','k','1'); local t = {} for i=1,1e9 do t[i] = string.rep('x', 1000) .. i end",
                 "redis.call('set','k','1'); local s = 'x' while true do s = s .. s end",
                 "redis.call('set','k','1'); return string.rep('x', 1e9)"):
        start = time.monotonic()
        result = r.eval(body)
        assert time.monotonic() - start < 2.0
        assert result.message.startswith("ERR Script killed: it used more than"), (body, result)
        assert r.get(b"k") is None


def test_writes_are_bounded(r, monkeypatch):
    monkeypatch.setattr(script, "MAX_WRITE_BYTES", 1000)
    result = r.eval("redis.call('set','k','1'); for i = 1, 100 do pcall(redis.call, 'set', 'k' .. i, "
                    "string.rep('x', 100)) end; return 1")
    assert result.message.startswith("ERR Script killed: its writes are over")
    assert r.get(b"k") is None and r.get(b"k1") is None
    monkeypatch.setattr(script, "MAX_DEPTH", 2)
    assert r.eval("return {{{1}}}") == [[[1]]]
    assert r.eval("return {{{{1}}}}").message.startswith("ERR reached lua stack limit")


def test_a_value_over_the_node_limit_is_refused(r):
    result = r.apply(Script("eval", b"return redis.call('set', 'k', string.rep('x', 11))", (), (), 10))
    assert result.message.startswith("ERR value of 11 bytes is over this node's limit of 10 bytes")
    assert r.apply(Script("eval", b"return redis.call('append', 'k', string.rep('x', 10))", (), (), 10)) == 10


def test_the_script_cache(r):
    body = b"return 'hi'"
    assert r.apply(Script("load", body)) == sha(body)
    assert r.machine.read(ScriptGet((sha(body), b"0" * 40))) == [body, None]
    assert r.apply(Script("evalsha", body)) == b"hi"
    assert r.apply(Script("load", b"return +")).message.startswith("ERR Error compiling script")
    assert r.eval("return 2") == 2  # EVAL caches too (Redis does)
    assert r.machine.read(ScriptGet((sha(b"return 2"),))) == [b"return 2"]
    assert r.eval("error('x')").message.startswith("ERR")  # a runtime error: cached all the same
    assert r.machine.read(ScriptGet((sha(b"error('x')"),))) == [b"error('x')"]
    assert r.eval("return +").message.startswith("ERR Error compiling")  # not compiled: not cached
    assert r.machine.read(ScriptGet((sha(b"return +"),))) == [None]
    assert r.apply(Script("flush")) is OK
    assert r.machine.read(ScriptGet((sha(body),))) == [None]
    # An EVALSHA proposed with the body while a SCRIPT FLUSH went first answers NOSCRIPT, on every replica.
    assert r.apply(Script("evalsha", body)) == KVError("NOSCRIPT No matching script. Please use EVAL.")
    assert r.apply(Script("evalsha_ro", b"return 1")) == KVError("NOSCRIPT No matching script. Please use EVAL.")


def test_the_cache_is_in_snapshots(r):
    r.apply(Script("load", b"return 1"))
    r.eval("redis.call('set','k','v')")
    copy = KVMachine()
    copy.restore(r.machine.snapshot())
    assert copy.read(ScriptGet((sha(b"return 1"),))) == [b"return 1"]
    assert copy.snapshot() == r.machine.snapshot()
    assert copy.read(Get(b"k")) == b"v"
    old = KVMachine()  # a version-1 snapshot (before scripts) still restores
    import zlib

    body = b"KVDS\x01\x05\x00\x00\x01\x01k\x01v"
    old.restore(body + zlib.crc32(body).to_bytes(4, "big"))
    assert old.read(Get(b"k")) == b"v" and old._scripts == {}


def test_same_entries_same_results_and_state():
    """Determinism: two replicas applying the same scripts reach the same results and snapshots."""
    bodies = [
        "for i = 1, 50 do redis.call('set', 'k' .. i, i * 2) end return redis.call('mget', 'k1', 'k50', 'k51')",
        "local t = {} for k, v in pairs({a=1, b=2, c=3, d=4}) do t[#t+1] = k end table.sort(t) return t",
        "while true do redis.call('incr', 'n') end",
        "redis.call('del', 'k3'); return redis.call('exists', 'k1', 'k3')",
        "local s = '' for i = 1, 10000 do s = s .. i end return #s",
    ]
    a, b = Runner(), Runner()
    for body in bodies:
        assert a.eval(body) == b.eval(body)
    assert a.machine.snapshot() == b.machine.snapshot()
    assert a.get(b"n") is None


def test_sessions_remember_script_results(r):
    """A retried entry gets the remembered answer (a status other than OK too) without running again."""
    env = Envelope(b"c/1", 1, 1, 0, Script("eval", b"redis.call('incr','n'); return redis.status_reply('FINE')", (), (), V))
    data = encode_envelope(env)
    assert r.machine.apply(1, data) == StatusText("FINE")
    assert r.machine.apply(2, data) == StatusText("FINE")
    assert r.get(b"n") == b"1"
    copy = KVMachine()
    copy.restore(r.machine.snapshot())
    assert copy.apply(3, data) == StatusText("FINE")


def test_reserved_client_ids_are_refused(r):
    env = Envelope(b"\x00script:" + b"0" * 40, 1, 1, 0, Set(b"k", b"v"))
    assert r.machine.apply(1, encode_envelope(env)).message.startswith("ERR client ids starting with a NUL")
    assert r.get(b"k") is None


def test_durable_keyspace(tmp_path):
    """
    On LMDB: scripts give the same answers as in memory, and the script cache survives a restart and travels
    in a streamed snapshot (records beside the sessions).
    """
    from kvd.raft.messages import Configuration, HardState, Snapshot
    from tests.store.test_state import Node, stream_into

    node, memory = Node(str(tmp_path / "a")), Runner()
    memory.machine = KVMachine(session_ttl_ms=10_000)
    bodies = [b"redis.call('set', KEYS[1], ARGV[1]); return redis.call('get', KEYS[1])",
              b"redis.call('incr', 'n'); redis.call('set', 'x', '1'); error('late')",
              b"redis.call('set', 'gone', '1'); while true do end",
              b"return {redis.call('get', 'n'), redis.call('exists', 'x', 'gone')}"]
    for i, body in enumerate(bodies):
        cmd = Script("eval", body, (b"k%d" % i,), (b"v%d" % i,), V)
        ours = node.apply(cmd)
        memory.seq = node.seq - 1
        env = Envelope(b"c1", node.seq, node.seq, 1000 + node.seq, cmd)
        assert ours == memory.machine.apply(memory.machine.applied_index + 1, encode_envelope(env))
    assert node.machine.read(Get(b"gone")) is None and node.machine.read(Get(b"x")) == b"1"
    assert node.apply(Script("load", b"return 'loaded'")) == sha(b"return 'loaded'")
    node.apply(Script("load", b"return 'flushed later'"))
    node.flush()
    node.close()
    node = Node(str(tmp_path / "a"), b"c3")
    assert node.machine.read(ScriptGet((sha(b"return 'loaded'"), sha(bodies[0])))) == [b"return 'loaded'", bodies[0]]
    assert node.apply(Script("evalsha", b"return 'loaded'")) == b"loaded"
    # A flush reaches the disk too.
    node.apply(Script("flush"))
    node.apply(Script("load", b"return 'after'"))
    node.flush()
    other = Node(str(tmp_path / "b"), b"c2")
    token, _ = stream_into(node, other)
    snapshot = Snapshot(node.machine.applied_index, 1,
                        Configuration.make(voters={"n1": "x"}, addresses={"n1": "127.0.0.1:1:2"}), token)
    other.storage.save(HardState(term=1, commit=node.machine.applied_index), [], snapshot, sync=True)
    other.machine.restore(token)
    for machine in (node.machine, other.machine):
        assert machine.read(ScriptGet((sha(b"return 'loaded'"), sha(b"return 'after'")))) == [None, b"return 'after'"]
    node.close()
    other.close()
    node = Node(str(tmp_path / "a"), b"c4")
    assert node.machine.read(ScriptGet((sha(b"return 'loaded'"), sha(b"return 'after'")))) == [None, b"return 'after'"]
    assert node.machine.session_count == 2  # c1 and c3: the script records are not sessions
    node.close()


def test_commands_scripts_may_not_run(r):
    """SCRIPT inside a script, and the admin commands (EVAL needs only readwrite): refused, nothing flushed."""
    r.eval("redis.call('set','a','1')")
    assert r.eval("return redis.call('flushall')").message.startswith(
        "ERR kvd does not run FLUSHALL inside scripts: it needs the admin role")
    assert r.eval("return redis.pcall('flushdb')").message.startswith("ERR kvd does not run FLUSHDB")
    for call in ("'script', 'load', 'return 1'", "'script', 'flush'", "'script', 'exists', 'ab'",
                 "'evalsha', 'ab', 0", "'multi'", "'client', 'id'", "'config', 'get', 'x'"):
        assert r.eval("return redis.pcall(%s)" % call).message.startswith("ERR "), call
    assert r.eval("return redis.pcall('script', 'load', 'return 1')").message == (
        "ERR This Redis command is not allowed from script")
    assert r.machine.read(ScriptGet((sha(b"return 1"),))) == [None]
    assert r.get(b"a") == b"1"


def test_a_script_breaks_a_watch_on_the_keys_it_writes(r):
    """WATCH (kvd.kv.commands Versions) sees a script's writes: they carry the script's entry as mod index."""
    from kvd.kv.commands import Transaction, Versions

    r.eval("redis.call('set','w','1'); redis.call('set','other','1')")
    (seen,) = r.machine.read(Versions((b"w",)))
    (other,) = r.machine.read(Versions((b"other",)))
    r.eval("redis.call('set','w','2')")
    assert r.apply(Transaction((Set(b"x", b"1"),), ((b"w", bool(seen[0]), seen[1]),))) is None
    assert r.apply(Transaction((Set(b"x", b"1"),), ((b"other", bool(other[0]), other[1]),))) == [OK]
    assert r.get(b"x") == b"1"


def test_a_reply_over_the_session_bound_is_an_error(r, monkeypatch):
    from kvd.kv import machine

    monkeypatch.setattr(script, "TXN_REPLY_BYTES", 100)
    assert r.eval("redis.call('set','k','v'); return string.rep('x', 200)").message.startswith(
        "ERR the script's reply of about 210 bytes is over 100 bytes")
    assert r.get(b"k") == b"v"
    assert r.eval("return string.rep('x', 50)") == b"x" * 50
    assert machine.TXN_REPLY_BYTES >= 4 << 20
