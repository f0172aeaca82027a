# -*- test-case-name: tests.kv.test_script -*-
"""
Lua scripts (EVAL, EVALSHA, EVAL_RO, SCRIPT LOAD/FLUSH) applied by the
key/value machine, with Redis 7's semantics, on the Lua 5.1 that Redis
embeds (lupa's ``lupa.lua51``).

One log entry, one run.  A ``Script`` entry carries the script's body (an
EVALSHA's too: the proposing node looked it up), its KEYS and ARGV.  Every
replica applies it in a fresh Lua runtime, so nothing of an earlier script
survives into the next, and the result depends only on the state and the
entry:

* the sandbox has Lua's base library without ``loadstring``, ``load``,
  ``dofile``, ``loadfile``, ``require``, ``module``, ``getfenv``,
  ``setfenv``, ``collectgarbage``, ``gcinfo``, ``newproxy``; ``string``,
  ``table``, ``math`` without ``random``/``randomseed``; no ``os``, ``io``,
  ``debug``, ``coroutine`` (a coroutine would run outside the instruction
  hook), ``package``, nor lupa's ``python``.  Reading an undefined global
  or writing any global fails with Redis's texts.  ``cjson`` (encode,
  decode, null) answers as Redis's lua-cjson 2.1, written in Lua here so that
  it runs under the bounds (``cjson.encode(-0)`` gives ``0``), and so does
  ``cmsgpack`` (pack, unpack, unpack_one, unpack_limit, as lua-cmsgpack 0.4);
  no ``bit`` or ``struct`` (Redis has them; lupa's Lua has not);
* ``redis.call``/``redis.pcall`` run kvd's own commands (kvd.resp.commands'
  table, so the same parsing and errors as at the client port) on the
  machine: the string, hash and key commands, PING, ECHO, SELECT 0.  TIME,
  RANDOMKEY, HRANDFIELD, KEYS, SCAN, DBSIZE, SCRIPT and the admin commands (FLUSHDB,
  FLUSHALL: EVAL needs only the readwrite role) are refused (TIME,
  RANDOMKEY and HRANDFIELD would make replicas differ);
* the work is bounded by a count of Lua VM instructions (a debug hook every
  ``HOOK_EVERY`` instructions; each ``redis.call`` counts ``CALL_UNITS``
  such steps): a script over ``MAX_UNITS`` steps is stopped, wherever it
  is, and answers ``ERR Script killed ...``.  The count is the same on every
  replica, so every replica stops it at the same point;
* memory is bounded by the runtime's allocator (``MAX_MEMORY`` bytes), and
  the values a script writes by ``MAX_WRITE_BYTES``.

What a script writes goes to a buffer (``Buffer``) its own reads see.  When
the script ends, normally or with an error (Redis keeps the writes made
before a runtime error), the buffer is applied to the keyspace in the order
written.  A script stopped by the instruction or memory bound applies
nothing: its error says so.

Inside MULTI, a Script is one op of the transaction's entry (kvd.kv.commands
``Transaction``), run at its place like any write.

The script cache is replicated machine state (``KVMachine._scripts``): EVAL
of a script that compiles and SCRIPT LOAD add to it, SCRIPT FLUSH empties
it, all through the log.  An EVALSHA entry whose SHA is no longer in the
cache when it is applied (a SCRIPT FLUSH came first) answers NOSCRIPT, as it
would have on one Redis.

Replies follow Redis's conversions: a Lua number is an integer (truncated),
a string a bulk string, true 1, false and nil nil, ``{ok=...}`` a status,
``{err=...}`` an error, a table an array up to its first nil; arrays nest at
most ``MAX_DEPTH`` deep (the session table's bound on results).

A call into Lua's C library runs without the hook: pattern matching, which
backtracks, is refused when its estimated cost (``MAX_PATTERN_COST``) is too
high, so a long subject with several quantifiers answers an error (a literal
pattern is bounded by subject length times pattern length).  Memory accounting is
lupa's, so every node must run the same lupa and Lua build for kills by the
memory bound to agree (the instruction bound depends on the Lua build only).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, List, Optional

import lupa.lua51 as lua

from kvd.kv.commands import INT64_MAX, INT64_MIN, Script, ScriptGet
from kvd.kv.hashes import HASH, HashOverlay, PendingHash
from kvd.kv.results import OK, KVError, Result, StatusText

# The bound on what a session remembers of one entry's reply, and its measure (a transaction's too).
from kvd.kv.machine import TXN_REPLY_BYTES, _reply_bytes as reply_bytes  # noqa: E402
from kvd.resp.commands import COMMANDS, Admin, Read, Write, parse_request, shape_reply
from kvd.resp.encoder import RespMap, SimpleString
from kvd.resp.errors import RespError

#: The instruction hook runs every this many Lua VM instructions: one step of the budget.
HOOK_EVERY = 1000
#: Steps one script may take: 10M instructions, measured on the 2-core machine at 37 ms for a plain loop and
#: at most 0.2 s for the slowest kinds of instruction (endless tail calls, errors caught by pcall), so the node
#: goes on answering heartbeats in time.
MAX_UNITS = 10_000
#: Steps each redis.call/pcall (and each error a pcall catches) costs: a command takes about 7 us, two steps
#: of Lua; more with many arguments (a step per 16) or long ones (a step per 64 KiB).
CALL_UNITS = 2
#: Bytes the Lua runtime of one script may allocate.
#: Lua 5.1's collector slows down near a full heap: a table of 1 KB strings filling 8 MiB takes 0.11 s to
#: fail, 16 MiB 0.27 s, 32 MiB 1.7 s and 64 MiB 18 s (measured on the 2-core machine): the node would stall.
MAX_MEMORY = 8 * 1024 * 1024
#: Steps of Lua's pattern matching (C, unseen by the hook) one string.find/match/gmatch/gsub may take, as
#: estimated from its subject's length and its pattern's quantifiers (about 0.1 s).
MAX_PATTERN_COST = 2e8
#: Bytes of keys and values one script may write.
MAX_WRITE_BYTES = 16 * 1024 * 1024
#: Arrays in a script's reply nest inside the top one at most this deep (kvd.kv.results keeps results of depth 8).
MAX_DEPTH = 7

ERR_NOSCRIPT = KVError("NOSCRIPT No matching script. Please use EVAL.")


def sha1hex(body: bytes) -> bytes:
    return hashlib.sha1(body).hexdigest().encode()


class Buffer(HashOverlay):
    """
    A script's writes over the keyspace: reads see them, ``commit`` applies
    them in the order written, dropping the buffer applies nothing.  A hash's
    writes are kept field by field (kvd.kv.hashes ``PendingHash``).
    """

    def __init__(self, base, max_bytes: Optional[int] = None):
        self.base = base  # the machine's view (kvd.kv.expiry): expired keys are absent
        self.writes: Dict[bytes, Optional[bytes]] = {}
        #: Expiries set (Unix ms) or dropped (None) by the script, applied after its writes.
        self.expiries: Dict[bytes, Optional[int]] = {}
        self.cleared = False
        self.max_bytes = MAX_WRITE_BYTES if max_bytes is None else max_bytes
        self.bytes = 0
        #: The key events and messages of the script's writes (kvd.kv.events), the machine's once committed.
        self.events: list = []

    def get(self, key: bytes):
        if key in self.writes:
            value = self.writes[key]
            return HASH if isinstance(value, PendingHash) else value
        return None if self.cleared else self.base.get(key)

    # HashOverlay's hooks: the keyspace below is the machine's
    def _hash_writes(self) -> dict:
        return self.writes

    def _hash_hidden(self) -> bool:
        return self.cleared

    def _below_field(self, key, field):
        return self.base.hget(key, field)

    def _below_hlen(self, key):
        return self.base.hlen(key)

    def _below_fields_from(self, key, start):
        return self.base.hfields_from(key, start)

    def _hash_written(self, key: bytes, size: int) -> None:
        self.bytes += len(key) + size
        if self.bytes > self.max_bytes:
            raise _OverBudget("ERR Script killed: its writes are over kvd's limit of %d bytes in one script; "
                              "nothing it wrote was applied" % (self.max_bytes,))
        self.writes[key] = self.writes.pop(key)  # the commit order is the order of the last writes

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def put(self, key: bytes, value: bytes) -> None:
        self.bytes += len(key) + len(value)
        if self.bytes > self.max_bytes:
            raise _OverBudget("ERR Script killed: its writes are over kvd's limit of %d bytes in one script; "
                              "nothing it wrote was applied" % (self.max_bytes,))
        self.writes.pop(key, None)  # the commit order is the order of the last writes
        self.writes[key] = value

    def delete(self, key: bytes) -> bool:
        existed = self.get(key) is not None
        if existed or not self.cleared:
            self.writes.pop(key, None)
            self.writes[key] = None
        self.expiries[key] = None
        return existed

    def clear(self) -> None:
        self.cleared = True
        self.writes.clear()
        self.expiries.clear()

    def expire_at(self, key: bytes) -> Optional[int]:
        if self.get(key) is None:
            return None
        if key in self.expiries:
            return self.expiries[key]
        return None if self.cleared else self.base.expire_at(key)

    def set_expire(self, key: bytes, at_ms: Optional[int]) -> None:
        if at_ms is not None and at_ms <= self.base.now_ms:
            self.delete(key)
        elif at_ms is None or self.get(key) is not None:
            self.expiries[key] = at_ms

    def commit(self) -> None:
        if self.cleared:
            self.base.clear()
        for key, value in self.writes.items():
            if value is None:
                self.base.delete(key)
            elif isinstance(value, PendingHash):
                if value.fresh:
                    self.base.delete(key)
                for field, item in value.fields.items():
                    if item is None:
                        self.base.hdel(key, field)
                    else:
                        self.base.hset(key, field, item)
            else:
                self.base.put(key, value)
        for key, at_ms in self.expiries.items():
            self.base.set_expire(key, at_ms)
        self.base.events.extend(self.events)  # after any "expired" of a key the script overwrote, as in Redis


class _OverBudget(Exception):
    """The script went over a bound: it stops, and nothing it wrote is applied."""


class CallError(Exception):
    """An error reply of redis.call: a Lua error whose text is ``args[0]`` (bytes)."""


class LibraryError(Exception):
    """An error of a library function (cjson): Lua's error text, to be given the script's line as position."""


def _unwrap(error):
    """
    (text, positioned) of a Python exception raised through Lua (a redis.call error, a library's error, a
    bug in a callback), or None for any other Lua error value.
    """
    if isinstance(error, CallError):
        return error.args[0], False
    if isinstance(error, LibraryError):
        return error.args[0], True
    if isinstance(error, BaseException):
        return ("ERR %s" % (error,)).encode("utf-8", "surrogateescape"), False
    return None


class _CFunction:
    """A Lua function seen by Lua as a C function (a Python callable): a call of it is never a tail call."""

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        # A Lua pcall of the library function: its values, or its error value as it is.
        result = self.function(*args)
        ok, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if ok:
            return values
        value = values[0] if values else b""
        raise LibraryError(value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape"))


def _no_attributes(obj, name, setting):
    raise AttributeError("scripts cannot reach Python objects' attributes")


# The trusted part, run in each fresh runtime before the user's script: it builds the sandbox and returns the
# function that runs the script under the hook.  Its arguments: the Python dispatcher, the budget.
_BOOT = r"""
local py_call, py_pcall, unwrap, sha1hex, max_units, hook_every, call_units, state, as_c_function = ...
-- The string library as Lua has it, for the trusted code below (the sandbox's is wrapped further down).
local raw_find, raw_gsub, raw_sub = string.find, string.gsub, string.sub
local debug_sethook, debug_getinfo = debug.sethook, debug.getinfo
local loadstring, setfenv, setmetatable, rawget, rawset, type, error, tostring, xpcall, select =
      loadstring, setfenv, setmetatable, rawget, rawset, type, error, tostring, xpcall, select
local string_format, math_floor = string.format, math.floor

local KILLED = {}
local function killer()
    error(KILLED)
end
local function hook()
    local units = state.units + 1  -- each redis.call adds its own steps (kvd.kv.script CALL_UNITS)
    state.units = units
    if units > max_units then
        state.killed = true
        debug_sethook(killer, "", 1)  -- from now on every instruction fails: pcall cannot catch it for good
        error(KILLED)
    end
end

local function copy(t, drop)
    local c = {}
    for k, v in pairs(t) do
        if not (drop and drop[k]) then c[k] = v end
    end
    return c
end

-- Lua's pattern matching is C the hook does not see, and backtracks: string.find of 400 bytes with '.-.-.-b'
-- takes 8 s.  A pattern with q quantifiers on n bytes may take about n^(q+1)/(q+1)! steps; over
-- max_pattern_cost the call is refused.  The string table itself is changed, so ("s"):find(...) is too.
local string_sub, tostring_, math_min = string.sub, tostring, math.min
local function quantifiers(p)
    local q, i, n = 0, 1, #p
    while i <= n do
        local c = string_sub(p, i, i)
        if c == "%" then
            i = i + 2
        elseif c == "[" then
            i = i + 1
            if string_sub(p, i, i) == "^" then i = i + 1 end
            if string_sub(p, i, i) == "]" then i = i + 1 end
            while i <= n and string_sub(p, i, i) ~= "]" do
                if string_sub(p, i, i) == "%" then i = i + 1 end
                i = i + 1
            end
            i = i + 1
        else
            if c == "*" or c == "+" or c == "-" or c == "?" then q = q + 1 end
            i = i + 1
        end
    end
    return q
end
local function check_pattern(s, p, plain)
    local ts, tp = type(s), type(p)
    if (ts ~= "string" and ts ~= "number") or (tp ~= "string" and tp ~= "number") then return end
    s, p = tostring_(s), tostring_(p)
    local q = plain and 0 or quantifiers(p)
    if q == 0 then  -- a literal, compared at each position: n * m (memcmp, when plain: some 16 times faster)
        if (#s + 1) * #p / (plain and 16 or 1) > state.max_pattern_cost then
            error("kvd: a pattern of " .. #p .. " bytes on " .. #s .. " bytes could run too long", 3)
        end
        return
    end
    local cost, n = 1, #s + 1
    for k = 1, math_min(q, 8) + 1 do cost = cost * n / k end
    if cost > state.max_pattern_cost then
        error("kvd: a pattern with " .. q .. " quantifiers on " .. #s .. " bytes could run too long", 3)
    end
end
for _, name in ipairs({"find", "match", "gmatch", "gsub"}) do
    local f = string[name]
    if name == "find" then
        string[name] = function(s, p, init, plain) check_pattern(s, p, plain); return f(s, p, init, plain) end
    else
        string[name] = function(s, p, ...) check_pattern(s, p, false); return f(s, p, ...) end
    end
end

-- string.rep loops in C once per copy, even of an empty string (1e9 copies of '' take 2.3 s): copies past the
-- memory bound are refused before the loop.
local string_rep, tonumber_ = string.rep, tonumber
string.rep = function(s, n)
    local count = tonumber_(n)
    if count and (type(s) == "string" or type(s) == "number") then
        if count * math.max(#tostring_(s), 1) > state.max_memory then
            state.out_of_memory = true  -- as if the allocation had failed: the script is stopped
            error("not enough memory", 2)
        end
    end
    return string_rep(s, n)
end

local env = {}
for _, name in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawset",
                       "select", "tonumber", "tostring", "type", "unpack", "xpcall", "setmetatable",
                       "getmetatable", "_VERSION"}) do
    env[name] = _G[name]
end
env.string = copy(string, {dump = true})
env.table = copy(table)
env.math = copy(math, {random = true, randomseed = true})
env._G = env

-- An error of redis.call (a Python exception, kvd.kv.script.CallError) as the user's pcall sees it: its text.
local lua_pcall, lua_xpcall = pcall, xpcall
local where
local function tidy(e)
    local text = unwrap(e)  -- as Redis: a library's error caught by pcall has no position
    if text then return text end
    return e
end
local function tidy_all(ok, ...)
    if ok then return ok, ... end
    state.units = state.units + call_units  -- an error caught costs as much as a command
    return false, tidy((...))
end
env.pcall = function(f, ...)
    state.units = state.units + 1  -- a protected call is a C call: nested ones cost more than their instructions
    return tidy_all(lua_pcall(f, ...))
end
env.xpcall = function(f, h)
    state.units = state.units + 1
    return lua_xpcall(f, function(e)
        state.units = state.units + call_units
        return h(tidy(e))
    end)
end

-- The Python functions themselves (C functions to Lua): a script's "return redis.call(...)" keeps its line.
local redis = {}
redis.call = py_call
redis.pcall = py_pcall
redis.error_reply = function(e)
    if type(e) ~= "string" then error("wrong number or type of arguments") end
    return {err = e}
end
redis.status_reply = function(s)
    if type(s) ~= "string" then error("wrong number or type of arguments") end
    return {ok = s}
end
redis.sha1hex = function(s)
    if type(s) ~= "string" and type(s) ~= "number" then error("wrong number or type of arguments") end
    return sha1hex(tostring(s))
end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
redis.log = function(level, ...)
    if select("#", ...) < 1 then error("redis.log() requires two arguments or more.") end
end
redis.setresp = function(v)
    if v ~= 2 then error("kvd: only RESP2 replies from scripts (redis.setresp(2))") end
end
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE, redis.REPL_REPLICA, redis.REPL_ALL = 0, 1, 2, 2, 3
redis.set_repl = function() end
redis.replicate_commands = function() return true end
redis.breakpoint = function() return false end
redis.debug = function() end
env.redis = redis

-- cjson, as Redis embeds lua-cjson 2.1: written in Lua here, so it runs under the hook and the memory bound.
local cjson_null = newproxy(false)
local cjson = {null = cjson_null}
local string_format, string_char, table_concat, math_floor, math_huge =
      string.format, string.char, table.concat, math.floor, math.huge
local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["/"] = "\\/", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                 ["\r"] = "\\r", ["\t"] = "\\t", ["\127"] = "\\u007f"}
for i = 0, 31 do
    local c = string_char(i)
    if not escapes[c] then escapes[c] = string_format("\\u%04x", i) end
end
local function encode_string(s)
    return '"' .. raw_gsub(s, '[%c"\\/]', escapes) .. '"'
end
local function encode_number(n)
    if n ~= n or n == math_huge or n == -math_huge then
        error("Cannot serialise number: must not be NaN or Inf", 0)
    end
    return string_format("%.14g", n)
end
local function encode_value(v, depth, out)
    local t = type(v)
    if v == nil or v == cjson_null then
        out[#out + 1] = "null"
    elseif t == "boolean" then
        out[#out + 1] = v and "true" or "false"
    elseif t == "number" then
        out[#out + 1] = encode_number(v)
    elseif t == "string" then
        out[#out + 1] = encode_string(v)
    elseif t == "table" then
        depth = depth + 1
        if depth > 1000 then error("Cannot serialise, excessive nesting (" .. depth .. ")", 0) end
        local max, items, array = 0, 0, true
        for k in pairs(v) do
            if type(k) == "number" and k > 0 and math_floor(k) == k then
                if k > max then max = k end
                items = items + 1
            else
                array = false
                break
            end
        end
        if array and max > items * 2 and max > 10 then
            error("Cannot serialise table: excessively sparse array", 0)
        end
        if array and max > 0 then
            out[#out + 1] = "["
            for i = 1, max do
                if i > 1 then out[#out + 1] = "," end
                encode_value(v[i], depth, out)
            end
            out[#out + 1] = "]"
        else
            out[#out + 1] = "{"
            local first = true
            for k, item in pairs(v) do
                local kt = type(k)
                if kt == "number" then
                    k = encode_number(k)
                elseif kt ~= "string" then
                    error("Cannot serialise table: table key must be a number or string", 0)
                end
                if not first then out[#out + 1] = "," end
                first = false
                out[#out + 1] = encode_string(k)
                out[#out + 1] = ":"
                encode_value(item, depth, out)
            end
            out[#out + 1] = "}"
        end
    else
        error("Cannot serialise " .. t .. ": type not supported", 0)
    end
end
local function encode(...)
    if select("#", ...) ~= 1 then error("bad argument #1 to 'encode' (expected 1 argument)", 2) end
    local out = {}
    encode_value((...), 0, out)
    return table_concat(out)
end

local function utf8(code)
    if code < 0x80 then return string_char(code) end
    if code < 0x800 then return string_char(0xC0 + math_floor(code / 64), 0x80 + code % 64) end
    if code < 0x10000 then
        return string_char(0xE0 + math_floor(code / 4096), 0x80 + math_floor(code / 64) % 64, 0x80 + code % 64)
    end
    return string_char(0xF0 + math_floor(code / 262144), 0x80 + math_floor(code / 4096) % 64,
                       0x80 + math_floor(code / 64) % 64, 0x80 + code % 64)
end
local string_sub, string_find = raw_sub, raw_find
local unescapes = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}
local function decode(text)
    if type(text) ~= "string" then error("bad argument #1 to 'decode' (string expected)", 2) end
    local pos = 1
    local tokens = {["{"] = "T_OBJ_BEGIN", ["}"] = "T_OBJ_END", ["["] = "T_ARR_BEGIN", ["]"] = "T_ARR_END",
                    [","] = "T_COMMA", [":"] = "T_COLON", ['"'] = "T_STRING"}
    local function found()
        local c = string_sub(text, pos, pos)
        if c == "" then return "T_END" end
        if tokens[c] then return tokens[c] end
        if string_find(text, "^-?%d", pos) then return "T_NUMBER" end
        if string_sub(text, pos, pos + 3) == "true" or string_sub(text, pos, pos + 4) == "false" then
            return "T_BOOLEAN"
        end
        if string_sub(text, pos, pos + 3) == "null" then return "T_NULL" end
        return "invalid token"
    end
    local function fail(what)
        error("Expected " .. what .. " but found " .. found() .. " at character " .. pos, 0)
    end
    local function skip()
        pos = string_find(text, "[^ \t\r\n]", pos) or #text + 1
    end
    local value
    local function decode_string()
        local parts, start = {}, pos + 1
        while true do
            local stop = string_find(text, '["\\]', start)
            if not stop then pos = #text + 1; fail("string end") end
            parts[#parts + 1] = string_sub(text, start, stop - 1)
            if string_sub(text, stop, stop) == '"' then
                pos = stop + 1
                return table_concat(parts)
            end
            local c = string_sub(text, stop + 1, stop + 1)
            if c == "u" then
                local code = tonumber_(string_sub(text, stop + 2, stop + 5), 16)
                if not code then pos = stop; fail("unicode escape") end
                start = stop + 6
                if code >= 0xD800 and code < 0xDC00 and string_sub(text, start, start + 1) == "\\u" then
                    local low = tonumber_(string_sub(text, start + 2, start + 5), 16)
                    if low and low >= 0xDC00 and low < 0xE000 then
                        code = 0x10000 + (code - 0xD800) * 1024 + (low - 0xDC00)
                        start = start + 6
                    end
                end
                parts[#parts + 1] = utf8(code)
            elseif unescapes[c] then
                parts[#parts + 1] = unescapes[c]
                start = stop + 2
            else
                pos = stop; fail("escape sequence")
            end
        end
    end
    value = function(depth)
        if depth > 1000 then error("Found too many nested data structures (" .. depth .. ") at character " .. pos, 0) end
        skip()
        local c = string_sub(text, pos, pos)
        if c == "{" then
            local t = {}
            pos = pos + 1
            skip()
            if string_sub(text, pos, pos) == "}" then pos = pos + 1; return t end
            while true do
                skip()
                if string_sub(text, pos, pos) ~= '"' then fail("object key string") end
                local k = decode_string()
                skip()
                if string_sub(text, pos, pos) ~= ":" then fail("colon") end
                pos = pos + 1
                t[k] = value(depth + 1)
                skip()
                c = string_sub(text, pos, pos)
                pos = pos + 1
                if c == "}" then return t end
                if c ~= "," then pos = pos - 1; fail("comma or object end") end
            end
        elseif c == "[" then
            local t, n = {}, 0
            pos = pos + 1
            skip()
            if string_sub(text, pos, pos) == "]" then pos = pos + 1; return t end
            while true do
                n = n + 1
                t[n] = value(depth + 1)
                skip()
                c = string_sub(text, pos, pos)
                pos = pos + 1
                if c == "]" then return t end
                if c ~= "," then pos = pos - 1; fail("comma or array end") end
            end
        elseif c == '"' then
            return decode_string()
        elseif string_sub(text, pos, pos + 3) == "true" then
            pos = pos + 4; return true
        elseif string_sub(text, pos, pos + 4) == "false" then
            pos = pos + 5; return false
        elseif string_sub(text, pos, pos + 3) == "null" then
            pos = pos + 4; return cjson_null
        else
            local s, e = string_find(text, "^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
            local n = s and tonumber_(string_sub(text, s, e))
            if not n then fail("value") end
            pos = e + 1
            return n
        end
    end
    local result = value(1)
    skip()
    if pos <= #text then fail("the end") end
    return result
end
for _, name in ipairs({"encode_sparse_array", "encode_max_depth", "decode_max_depth", "encode_number_precision",
                       "encode_keep_buffer", "encode_invalid_numbers", "decode_invalid_numbers"}) do
    cjson[name] = function() end
end
-- Through Python, so that to Lua they are C functions, as Redis's are: "return cjson.encode(t)" is then not a
-- tail call, and an error names the script's line.
-- (Python passes a Lua number back as it came, except -0, which comes back as 0.)
local raw_pcall = pcall
local function c_function(impl)
    return as_c_function(function(...)
        return (function(ok, ...)
            if not ok and ... == "not enough memory" then state.out_of_memory = true end
            return ok, ...
        end)(raw_pcall(impl, ...))
    end)
end
cjson.encode, cjson.decode = c_function(encode), c_function(decode)
env.cjson = cjson

-- cmsgpack, as Redis embeds lua-cmsgpack 0.4: in Lua here too, under the bounds, called as C functions.
local math_frexp, math_ldexp, math_abs = math.frexp, math.ldexp, math.abs
local string_byte = string.byte
local function be(n, bytes)  -- a non-negative integer as ``bytes`` big-endian bytes
    local out = {}
    for i = bytes, 1, -1 do
        out[i] = string_char(n % 256)
        n = math_floor(n / 256)
    end
    return table_concat(out)
end
local function ieee(x, single)  -- a finite, infinite or NaN number as IEEE 754 bytes
    local ebits, mbits, bias = 11, 52, 1023
    if single then ebits, mbits, bias = 8, 23, 127 end
    local sign = 0
    if x < 0 or (x == 0 and 1 / x < 0) then sign = 1; x = -x end
    local e, m
    if x ~= x then
        e, m = 2 ^ ebits - 1, 2 ^ (mbits - 1)
        sign = 1
    elseif x == math_huge then
        e, m = 2 ^ ebits - 1, 0
    elseif x == 0 then
        e, m = 0, 0
    else
        local f, exp = math_frexp(x)  -- x = f * 2^exp, 0.5 <= f < 1
        e = exp + bias - 1
        if e <= 0 then  -- subnormal
            m = math_floor(math_ldexp(x, bias - 1 + mbits) + 0.5)
            e = 0
        else
            m = math_floor((f * 2 - 1) * 2 ^ mbits + 0.5)
        end
    end
    if single then return be(sign * 2 ^ 31 + e * 2 ^ 23 + m, 4) end
    -- two 32-bit words: the 64 bits do not fit a double's mantissa
    return be(sign * 2 ^ 31 + e * 2 ^ 20 + math_floor(m / 4294967296), 4) .. be(m % 4294967296, 4)
end
local function float32_equal(x)  -- does x survive a round trip through float32?
    if x ~= x or x == math_huge or x == -math_huge or x == 0 then return true end
    local f, exp = math_frexp(math_abs(x))
    if exp > 128 or exp < -125 then return false end
    local scaled = f * 2 ^ 24
    return scaled == math_floor(scaled)
end
local pack_value
local function pack_int(n, out)
    if n >= 0 then
        if n <= 127 then out[#out + 1] = string_char(n)
        elseif n <= 0xff then out[#out + 1] = "\204" .. be(n, 1)
        elseif n <= 0xffff then out[#out + 1] = "\205" .. be(n, 2)
        elseif n <= 0xffffffff then out[#out + 1] = "\206" .. be(n, 4)
        else out[#out + 1] = "\207" .. be(math_floor(n / 4294967296), 4) .. be(n % 4294967296, 4) end
    else
        if n >= -32 then out[#out + 1] = string_char(256 + n)
        elseif n >= -128 then out[#out + 1] = "\208" .. be(256 + n, 1)
        elseif n >= -32768 then out[#out + 1] = "\209" .. be(65536 + n, 2)
        elseif n >= -2147483648 then out[#out + 1] = "\210" .. be(4294967296 + n, 4)
        else  -- two 32-bit words: 2^64 + n is not exact in a double
            local hi = math_floor(n / 4294967296)
            out[#out + 1] = "\211" .. be(hi + 4294967296, 4) .. be(n - hi * 4294967296, 4)
        end
    end
end
pack_value = function(v, depth, out)
    local t = type(v)
    if t == "string" then
        local n = #v
        if n < 32 then out[#out + 1] = string_char(0xa0 + n)
        elseif n <= 0xff then out[#out + 1] = "\217" .. be(n, 1)
        elseif n <= 0xffff then out[#out + 1] = "\218" .. be(n, 2)
        else out[#out + 1] = "\219" .. be(n, 4) end
        out[#out + 1] = v
    elseif t == "boolean" then
        out[#out + 1] = v and "\195" or "\194"
    elseif t == "number" then
        if v == math_floor(v) and v >= -9223372036854775808 and v < 9223372036854775808 then
            pack_int(v, out)
        elseif float32_equal(v) then
            out[#out + 1] = "\202" .. ieee(v, true)
        else
            out[#out + 1] = "\203" .. ieee(v, false)
        end
    elseif t == "table" and depth < 16 then
        local max, count, array = 0, 0, true
        for k in pairs(v) do
            count = count + 1
            if type(k) == "number" and k > 0 and k == math_floor(k) then
                if k > max then max = k end
            else
                array = false
            end
        end
        if array and max ~= count then array = false end
        if array then
            if count < 16 then out[#out + 1] = string_char(0x90 + count)
            elseif count <= 0xffff then out[#out + 1] = "\220" .. be(count, 2)
            else out[#out + 1] = "\221" .. be(count, 4) end
            for i = 1, count do pack_value(v[i], depth + 1, out) end
        else
            if count < 16 then out[#out + 1] = string_char(0x80 + count)
            elseif count <= 0xffff then out[#out + 1] = "\222" .. be(count, 2)
            else out[#out + 1] = "\223" .. be(count, 4) end
            for k, item in pairs(v) do
                pack_value(k, depth + 1, out)
                pack_value(item, depth + 1, out)
            end
        end
    else
        out[#out + 1] = "\192"
    end
end
local function pack(...)
    local n = select("#", ...)
    if n == 0 then error("bad argument #0 to 'pack' (MessagePack pack needs input.)", 0) end
    local out, args = {}, {...}
    for i = 1, n do pack_value(args[i], 0, out) end
    return table_concat(out)
end

local function unpack_values(s, limit, offset)
    local pos, n = offset + 1, #s
    local function need(count)
        if pos + count - 1 > n then error("Missing bytes in input.", 0) end
    end
    local function uint(bytes)
        need(bytes)
        local v = 0
        for i = pos, pos + bytes - 1 do v = v * 256 + string_byte(s, i) end
        pos = pos + bytes
        return v
    end
    local function int(bytes)
        if bytes == 8 then  -- as C's (double) of an int64: the high word signed, then one rounding
            local hi = int(4)
            return hi * 4294967296 + uint(4)
        end
        local v = uint(bytes)
        local half = 2 ^ (8 * bytes - 1)
        if v >= half then v = v - 2 * half end
        return v
    end
    local function uint64()
        local hi = uint(4)
        return hi * 4294967296 + uint(4)
    end
    local function float(bytes)
        local ebits, mbits, bias = 11, 52, 1023
        if bytes == 4 then ebits, mbits, bias = 8, 23, 127 end
        local hi = uint(4)
        local sign = hi >= 2 ^ 31 and -1 or 1
        hi = hi % 2 ^ 31
        local e, m
        if bytes == 4 then
            e, m = math_floor(hi / 2 ^ 23), hi % 2 ^ 23
        else
            e, m = math_floor(hi / 2 ^ 20), (hi % 2 ^ 20) * 4294967296 + uint(4)
        end
        if e == 2 ^ ebits - 1 then
            if m == 0 then return sign * math_huge end
            return 0 / 0
        end
        if e == 0 then return sign * math_ldexp(m, 1 - bias - mbits) end
        return sign * math_ldexp(m + 2 ^ mbits, e - bias - mbits)
    end
    local function str(len)
        need(len)
        local v = raw_sub(s, pos, pos + len - 1)
        pos = pos + len
        return v
    end
    local value
    local function array(count)
        local t = {}
        for i = 1, count do t[i] = value() end
        return t
    end
    local function map(count)
        local t = {}
        for _ = 1, count do
            local k = value()
            local v = value()
            if k ~= nil then t[k] = v end
        end
        return t
    end
    value = function()
        need(1)
        local c = string_byte(s, pos)
        pos = pos + 1
        if c <= 0x7f then return c end
        if c <= 0x8f then return map(c - 0x80) end
        if c <= 0x9f then return array(c - 0x90) end
        if c <= 0xbf then return str(c - 0xa0) end
        if c >= 0xe0 then return c - 256 end
        if c == 0xc0 then return nil end
        if c == 0xc2 then return false end
        if c == 0xc3 then return true end
        if c == 0xd9 then return str(uint(1)) end
        if c == 0xda then return str(uint(2)) end
        if c == 0xdb then return str(uint(4)) end
        if c == 0xca then return float(4) end
        if c == 0xcb then return float(8) end
        if c == 0xcc then return uint(1) end
        if c == 0xcd then return uint(2) end
        if c == 0xce then return uint(4) end
        if c == 0xcf then return uint64() end
        if c == 0xd0 then return int(1) end
        if c == 0xd1 then return int(2) end
        if c == 0xd2 then return int(4) end
        if c == 0xd3 then return int(8) end
        if c == 0xdc then return array(uint(2)) end
        if c == 0xdd then return array(uint(4)) end
        if c == 0xde then return map(uint(2)) end
        if c == 0xdf then return map(uint(4)) end
        error("Bad data format in input.", 0)
    end
    local results, count = {}, 0
    if limit == 0 and offset == 0 then limit = math_huge end  -- unpack: everything
    while pos <= n and count < limit do
        count = count + 1
        results[count] = value()
    end
    return results, count, pos - 1
end
local cmsgpack = {}
cmsgpack.pack = c_function(pack)
-- unpack answers several values: the C function gives a table and its length; the Lua side spreads it.
local function unpack_full(s, limit, offset)
    if type(s) ~= "string" then error("bad argument #1 to 'unpack' (string expected)", 0) end
    limit, offset = math_floor(tonumber_(limit) or 0), math_floor(tonumber_(offset) or 0)
    if offset < 0 or limit < 0 then
        error("Invalid request to unpack with offset of " .. offset .. " and limit of " .. limit .. ".", 0)
    end
    if offset > #s then error("Start offset " .. offset .. " greater than input length " .. #s .. ".", 0) end
    local results, count, used = unpack_values(s, limit, offset)
    if limit == 0 and offset == 0 then return unpack(results, 1, count) end  -- everything, and no offset
    return used < #s and used or -1, unpack(results, 1, count)
end
cmsgpack.unpack = c_function(function(s) return unpack_full(s, 0, 0) end)
cmsgpack.unpack_one = c_function(function(s, offset) return unpack_full(s, 1, offset) end)
cmsgpack.unpack_limit = c_function(unpack_full)
env.cmsgpack = cmsgpack

local function protect(t)
    setmetatable(t, {
        __index = function(_, name)
            error("Script attempted to access nonexistent global variable '" .. tostring(name) .. "'", 2)
        end,
        __newindex = function() error("Attempt to modify a readonly table", 2) end,
        __metatable = false,
    })
end

-- The innermost line of the user's script on the stack: Redis's "on @user_script:N."
where = function()
    for level = 2, 64 do
        local info = debug_getinfo(level, "Sl")
        if not info then break end
        if info.source == "@user_script" and info.currentline >= 0 then return info.currentline end
    end
    return 0
end

local function handler(e)
    if e == KILLED then return e end
    local line = where()
    local text, positioned = unwrap(e)
    if positioned then return {err = "ERR user_script:" .. line .. ": " .. text, line = line} end
    if text then return {err = text, line = line} end
    if type(e) == "table" and type(rawget(e, "err")) == "string" then
        return {err = rawget(e, "err"), line = line}
    end
    return {err = "ERR " .. tostring(e), line = line}
end

-- Lua's value as a flat list of (tag, value): n nil, i number, b bulk, s status, e error, a array (count).
local function flatten(v, out, depth)
    local t = type(v)
    if t == "string" then
        out[#out + 1] = "b"; out[#out + 1] = v
    elseif t == "number" then
        out[#out + 1] = "i"; out[#out + 1] = v
    elseif t == "boolean" then
        if v then out[#out + 1] = "i"; out[#out + 1] = 1 else out[#out + 1] = "n"; out[#out + 1] = false end
    elseif t == "table" then
        local e = rawget(v, "err")
        if type(e) == "string" then
            out[#out + 1] = "e"; out[#out + 1] = e; return
        end
        local ok = rawget(v, "ok")
        if type(ok) == "string" then
            out[#out + 1] = "s"; out[#out + 1] = ok; return
        end
        if depth > state.max_depth then error({err = "ERR reached lua stack limit"}) end
        local at = #out + 1
        out[at] = "a"; out[at + 1] = 0
        local n = 0
        while true do
            local item = rawget(v, n + 1)
            if item == nil then break end
            n = n + 1
            flatten(item, out, depth + 1)
        end
        out[at + 1] = n
    else
        out[#out + 1] = "n"; out[#out + 1] = false
    end
end

local function compile(body)
    -- Lua 5.1 has no bytecode verifier: a precompiled chunk could corrupt memory (Redis refuses them too).
    if string.byte(body, 1) == 27 then return false, "user_script:1: unexpected symbol near 'char(27)'" end
    local f, err = loadstring(body, "@user_script")
    if not f then return false, err end
    return true, f
end

local function run(body, keys, argv)
    local ok, f = compile(body)
    if not ok then return false, {compile = f} end
    env.KEYS, env.ARGV = keys, argv
    protect(env)
    setfenv(f, env)
    debug_sethook(hook, "", hook_every)
    local out = {}
    local ok, result = xpcall(function() flatten(f(), out, 0) end, handler)
    debug_sethook()
    if ok then return true, out end
    return false, result
end

return run, compile
"""


def _argument(value) -> bytes:
    """A redis.call argument as Redis takes it: a string as it is, a number as its shortest text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e17:
            return b"%d" % int(value)
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            exp = int(exponent)
            text = "%se%s%02d" % (mantissa.replace(".0", "") if mantissa.endswith(".0") else mantissa,
                                  "+" if exp >= 0 else "-", abs(exp))
        return text.encode()
    return b"%d" % value


def _integer(number) -> int:
    """A Lua number as C's (long long) cast on x86-64: truncated, INT64_MIN when it does not fit."""
    if isinstance(number, int):
        return number if INT64_MIN <= number <= INT64_MAX else INT64_MIN
    if math.isnan(number) or math.isinf(number):
        return INT64_MIN
    value = int(number)
    return value if INT64_MIN <= value <= INT64_MAX else INT64_MIN


#: The reads a script may run: those whose answer is the same on every replica (not RANDOMKEY, HRANDFIELD)
#: and bounded (not KEYS, SCAN, DBSIZE: as before).
_SCRIPT_READS = frozenset((b"get", b"mget", b"exists", b"strlen", b"getrange", b"substr", b"type", b"hget", b"hmget",
                           b"hgetall", b"hkeys", b"hvals", b"hexists", b"hlen", b"hstrlen", b"hscan",
                           b"ttl", b"pttl", b"expiretime", b"pexpiretime"))


class _Run:
    """One script's run: the dispatcher ``redis.call`` reaches, on the machine and a buffer."""

    def __init__(self, machine, cmd: Script, read_only: bool):
        self.machine = machine
        self.cmd = cmd
        self.read_only = read_only
        self.buffer = Buffer(machine.view())
        self.runtime = None
        self.state = None
        self.over: Optional[str] = None

    def call(self, *args):
        """redis.call: the reply as a Lua value, or CallError (a Lua error the script may catch)."""
        kind, value = self.dispatch(args)
        if kind:
            raise CallError(value)
        return value

    def pcall(self, *args):
        """redis.pcall: the reply as a Lua value, an error as {err=...}."""
        kind, value = self.dispatch(args)
        if kind:
            return self.runtime.table_from({b"err": value})
        return value

    def dispatch(self, args):
        """(0, value converted for Lua) or (1, error text)."""
        # A command costs steps by its arguments too: a copy of a 1 MiB value is not free.
        self.state[b"units"] += CALL_UNITS + len(args) // 16 + sum(len(a) for a in args if isinstance(a, bytes)) // 65536
        if not args:
            return 1, b"ERR Please specify at least one argument for this redis lib call"
        try:
            argv = [_argument(a) for a in args]
        except TypeError:
            return 1, b"ERR Lua redis lib command arguments must be strings or integers"
        for arg in argv:
            if len(arg) > self.cmd.max_len:
                return 1, (b"ERR value of %d bytes is over this node's limit of %d bytes (--value-max-bytes)"
                           % (len(arg), self.cmd.max_len))
        if self.over is not None:
            return 1, self.over.encode()
        try:
            result = self.execute(argv)
        except _OverBudget as e:
            self.over = str(e)
            return 1, self.over.encode()
        if isinstance(result, (KVError, RespError)):
            text = result.message if isinstance(result, KVError) else "%s %s" % (result.prefix, result.message)
            return 1, text.encode("utf-8", "surrogateescape")
        return 0, self.to_lua(result)

    def execute(self, argv: List[bytes]):
        name = argv[0].lower()
        spec = COMMANDS.get(name)
        if spec is None:
            return KVError("ERR Unknown Redis command called from script")
        if not spec.arity_ok(len(argv)):
            return KVError("ERR Wrong number of args calling Redis command from script")
        if "noscript" in spec.flags:
            return KVError("ERR This Redis command is not allowed from script")
        if "admin" in spec.flags:  # a user who may run EVAL need not be allowed FLUSHALL
            return KVError("ERR kvd does not run %s inside scripts: it needs the admin role"
                           % (spec.name.upper(),))
        request = parse_request(argv, self.cmd.max_len)
        if isinstance(request, RespError):
            return request
        if isinstance(request, (Write, Read)) and isinstance(getattr(request, "command", None) or request.op,
                                                             (Script, ScriptGet)):
            return KVError("ERR This Redis command is not allowed from script")
        if isinstance(request, Write):
            if self.read_only:
                return KVError("ERR Write commands are not allowed from read-only scripts.")
            result = self.machine._execute(request.command, self.buffer)
            return shape_reply(request, result)
        if isinstance(request, Read):
            if name in _SCRIPT_READS:
                return shape_reply(request, self.machine.read(request.op, self.buffer))
            return KVError("ERR kvd does not run %s inside scripts" % (name.decode().upper(),))
        if isinstance(request, Admin):
            if request.name == "ping":
                return request.args[0] if request.args else SimpleString("PONG")
            if request.name == "echo":
                return request.args[0]
            if request.name == "select":
                return OK
        return KVError("ERR This Redis command is not allowed from script")

    def to_lua(self, value):
        if value is None:
            return False
        if value is OK:
            return self.runtime.table_from({b"ok": b"OK"})
        if isinstance(value, SimpleString):
            return self.runtime.table_from({b"ok": value.text.encode()})
        if isinstance(value, (bytes, int)):
            return value
        if isinstance(value, list):
            return self.runtime.table_from([self.to_lua(item) for item in value])
        if isinstance(value, RespMap):  # HGETALL: a flat array, as Redis hands a RESP2 script
            return self.runtime.table_from([self.to_lua(item) for pair in value.pairs for item in pair])
        raise TypeError("no Lua value for %r" % (value,))


_boot_chunk: Optional[bytes] = None


def _boot() -> bytes:
    """_BOOT compiled once per process (a Lua 5.1 binary chunk of our own): parsing it took half of a short EVAL."""
    global _boot_chunk
    if _boot_chunk is None:
        compiler = lua.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
        _boot_chunk = compiler.eval(b"string.dump(assert(loadstring(...)))", _BOOT.encode())
    return _boot_chunk


def _new_runtime(run: Optional[_Run]):
    runtime = lua.LuaRuntime(encoding=None, register_eval=False, register_builtins=False,
                             unpack_returned_tuples=True, max_memory=MAX_MEMORY, attribute_filter=_no_attributes)
    runtime.execute(b"python = nil")
    state = runtime.table_from({b"killed": False, b"max_depth": MAX_DEPTH, b"units": 0,
                                b"max_pattern_cost": MAX_PATTERN_COST, b"max_memory": MAX_MEMORY,
                                b"out_of_memory": False})
    if run is not None:
        run.runtime, run.state = runtime, state
        call, pcall = run.call, run.pcall
    else:
        call = pcall = None
    boot = runtime.execute(_boot(), call, pcall, _unwrap, sha1hex, MAX_UNITS, HOOK_EVERY, CALL_UNITS, state,
                           _CFunction)
    return runtime, state, boot


def compile_error(body: bytes) -> Optional[KVError]:
    """Redis's error for a script that does not compile, or None."""
    try:
        runtime, _, (run_fn, compile_fn) = _new_runtime(None)
        ok, err = compile_fn(body)
    except lua.LuaMemoryError:
        return _killed_memory()
    if not ok:
        return KVError("ERR Error compiling script (new function): %s" % (_text(err),))
    return None


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def execute(machine, cmd: Script) -> Result:
    """Apply one Script entry on ``machine`` (kvd.kv.machine.KVMachine): its result, for every replica the same."""
    if cmd.op == "flush":
        machine.script_flush()
        return OK
    sha = sha1hex(cmd.body)
    if cmd.op == "load":
        error = compile_error(cmd.body)
        if error is not None:
            return error
        machine.script_add(sha, cmd.body)
        return sha
    if cmd.op in ("evalsha", "evalsha_ro"):
        if machine.script_body(sha) is None:
            return ERR_NOSCRIPT
    return _run(machine, cmd, sha, read_only=cmd.op in ("eval_ro", "evalsha_ro"))


def _run(machine, cmd: Script, sha: bytes, read_only: bool) -> Result:
    run = _Run(machine, cmd, read_only)
    suffix = " script: %s, on @user_script:%%d." % (sha.decode(),)
    runtime, state, (run_fn, _) = _new_runtime(run)
    failed = None
    try:
        keys = runtime.table_from(list(cmd.keys))
        argv = runtime.table_from(list(cmd.args))
        ok, out = run_fn(cmd.body, keys, argv)
    except lua.LuaError as e:  # LuaMemoryError too
        failed = e
    finally:
        # Lua aborts the process when an allocation fails outside a protected call: the reads of what the
        # script left below must not meet the limit it may have reached.
        runtime.set_max_memory(0)
    if state[b"killed"]:
        return _killed_steps()
    if run.over is not None:
        return KVError(run.over)
    if state[b"out_of_memory"]:
        return _killed_memory()
    if failed is not None:
        if isinstance(failed, lua.LuaMemoryError) or "not enough memory" in str(failed):
            return _killed_memory()
        # Never raise out of an apply: every replica would stop at this entry.  Nothing was written.
        return KVError("ERR the script failed outside its sandbox: %s" % (_text(str(failed)),))
    if state[b"killed"]:
        return _killed_steps()
    if run.over is not None:
        return KVError(run.over)
    if not ok:
        if not lua.lua_type(out) == "table":  # Lua 5.1 gives "not enough memory" past any handler
            if b"not enough memory" in bytes(out if isinstance(out, bytes) else str(out).encode()):
                return _killed_memory()
            raise RuntimeError("script failed with %r" % (out,))
        if out[b"compile"] is not None:
            return KVError("ERR Error compiling script (new function): %s" % (_text(out[b"compile"]),))
        message = _text(out[b"err"])
        if message == "ERR not enough memory":
            return _killed_memory()
        machine.script_add(sha, cmd.body)
        run.buffer.commit()  # Redis keeps what a script wrote before its error
        return KVError(message + suffix % (out[b"line"],))
    machine.script_add(sha, cmd.body)
    result = _unflatten(out)
    run.buffer.commit()
    size = reply_bytes(result)
    if size > TXN_REPLY_BYTES:  # the session keeps it, and a follower's forward carries it back
        return KVError("ERR the script's reply of about %d bytes is over %d bytes; what it wrote was applied"
                       % (size, TXN_REPLY_BYTES))
    return result


def _killed_steps() -> KVError:
    return KVError("ERR Script killed: it ran over kvd's limit of %d Lua instructions (Redis would be BUSY); "
                   "nothing it wrote was applied" % (MAX_UNITS * HOOK_EVERY,))


def _killed_memory() -> KVError:
    return KVError("ERR Script killed: it used more than kvd's limit of %d bytes of Lua memory; "
                   "nothing it wrote was applied" % (MAX_MEMORY,))


def _unflatten(out) -> Result:
    items = []
    i = 1
    while True:
        tag = out[i]
        if tag is None:
            break
        items.append((tag, out[i + 1]))
        i += 2
    pos = 0

    def one():
        nonlocal pos
        tag, value = items[pos]
        pos += 1
        if tag == b"b":
            return value
        if tag == b"i":
            return _integer(value)
        if tag == b"n":
            return None
        if tag == b"s":
            return OK if value == b"OK" else StatusText(_text(value))
        if tag == b"e":
            return KVError(_text(value))
        return [one() for _ in range(int(value))]

    return one()

