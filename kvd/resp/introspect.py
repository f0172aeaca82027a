# -*- test-case-name: tests.resp.test_everyday_more -*-
"""
COMMAND and its subcommands: what the command table (kvd.resp.commands) says
about every command kvd runs, in Redis 7's shapes.

* ``COMMAND`` / ``COMMAND INFO [name ...]``: Redis 7's ten fields per command
  (name, arity, flags, first key, last key, key step, ACL categories, tips,
  key specs, subcommands); an unknown name answers nil in its place.
* ``COMMAND COUNT``: the top-level commands; ``COMMAND LIST [FILTERBY
  PATTERN p | ACLCAT c | MODULE m]``: their names and their subcommands'.
* ``COMMAND DOCS [name ...]``: a map of name to summary and group (what
  redis-cli shows; kvd keeps no argument grammar, so no ``arguments``).
* ``COMMAND GETKEYS`` / ``GETKEYSANDFLAGS``: the keys a command line names,
  found by its key specs, with Redis's errors.

The key specs and ACL categories are Redis 7.0's for the commands Redis has
(tests.resp.test_everyday_more compares them with a redis-server); a command
without an entry here gets specs built from its first/last/step and the
categories its flags imply, so a command added to the table is described
(and its keys found) without touching this module.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import fnmatch
from typing import Dict, List, Optional, Tuple

from kvd.kv.commands import parse_int64, write_keys
from kvd.kv.txn import TxnSyntaxError, parse as parse_kv_txn
from kvd.resp.commands import COMMANDS, CommandSpec, spec_of
from kvd.resp.encoder import RespMap, SimpleString
from kvd.resp.errors import RespError

#: Redis's ACL categories in the order it lists them (its category bits).
CATEGORY_ORDER = ("keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
                  "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous",
                  "connection", "transaction", "scripting")

#: Each command's group (Redis's docs group; also its ACL category where Redis has one of that name).
GROUPS: Dict[str, str] = {}
for _group, _names in {
    "string": "get set mget mset incr decr incrby decrby incrbyfloat setnx getset getdel append setrange msetnx "
              "strlen getrange substr setex psetex getex",
    "generic": "del exists unlink rename renamenx copy type randomkey keys scan expire pexpire expireat pexpireat "
               "persist ttl pttl expiretime pexpiretime",
    "server": "time flushdb flushall dbsize info role config command",
    "connection": "ping hello auth echo select quit readonly readwrite client",
    "transactions": "multi exec discard watch unwatch",
    "scripting": "eval evalsha eval_ro evalsha_ro script",
    "kvd": "kvd.members kvd.cluster kvd.join kvd.remove kvd.lease kvd.txn kvd.get kvd.revision kvd.watch kvd.unwatch",
    # The hash commands (branch hashes), described ahead of their merge into the table.
    "hash": "hset hmset hsetnx hdel hincrby hincrbyfloat hget hmget hgetall hkeys hvals hexists hlen hstrlen hscan "
            "hrandfield",
    "pubsub": "publish subscribe psubscribe unsubscribe punsubscribe pubsub spublish ssubscribe sunsubscribe",
}.items():
    GROUPS.update((name, _group) for name in _names.split())

#: ACL categories Redis gives beyond those flags and groups imply.
_EXTRA_CATEGORIES = {
    "keys": ("keyspace", "dangerous"), "info": ("dangerous",), "role": ("admin", "dangerous"),
    "flushdb": ("keyspace", "dangerous"), "flushall": ("keyspace", "dangerous"),
    "del": ("keyspace",), "exists": ("keyspace",), "unlink": ("keyspace",), "rename": ("keyspace",),
    "renamenx": ("keyspace",), "copy": ("keyspace",), "type": ("keyspace",), "randomkey": ("keyspace",),
    "scan": ("keyspace",), "dbsize": ("keyspace",), "command|*": ("connection",),
}
_EXTRA_CATEGORIES.update((name, ("keyspace",)) for name in (
    "expire", "pexpire", "expireat", "pexpireat", "persist", "ttl", "pttl", "expiretime", "pexpiretime"))
#: Commands only kvd's roles make admin (a readwrite user may not wipe the store): Redis's categories kept.
_ADMIN_BY_KVD = {"flushdb", "flushall"}
#: Groups that are ACL categories of their commands (generic commands are not in one; server ones neither).
_GROUP_CATEGORY = {"string": "string", "connection": "connection", "transactions": "transaction",
                   "scripting": "scripting", "hash": "hash", "pubsub": "pubsub"}
#: Top-level commands Redis puts in no group category although their group has one.
_NO_GROUP_CATEGORY = {"client", "script", "config", "pubsub"}

#: Key specs as Redis 7.0 has them: (flags, begin index, lastkey, keystep) per key argument group; or, for
#: the scripts, (flags, begin index, None, None): the number of keys at that index, the keys after it.
_RANGE = Tuple[str, int, Optional[int], Optional[int]]
KEY_SPECS: Dict[str, Tuple[_RANGE, ...]] = {
    "get": (("RO access", 1, 0, 1),), "set": (("RW access update variable_flags", 1, 0, 1),),
    "del": (("RM delete", 1, -1, 1),), "unlink": (("RM delete", 1, -1, 1),), "exists": (("RO", 1, -1, 1),),
    "mget": (("RO access", 1, -1, 1),), "mset": (("OW update", 1, -1, 2),), "msetnx": (("OW insert", 1, -1, 2),),
    "incr": (("RW access update", 1, 0, 1),), "decr": (("RW access update", 1, 0, 1),),
    "incrby": (("RW access update", 1, 0, 1),), "decrby": (("RW access update", 1, 0, 1),),
    "incrbyfloat": (("RW access update", 1, 0, 1),), "getset": (("RW access update", 1, 0, 1),),
    "setnx": (("OW insert", 1, 0, 1),), "getdel": (("RW access delete", 1, 0, 1),),
    "append": (("RW insert", 1, 0, 1),), "setrange": (("RW update", 1, 0, 1),), "strlen": (("RO", 1, 0, 1),),
    "getrange": (("RO access", 1, 0, 1),), "substr": (("RO access", 1, 0, 1),), "type": (("RO", 1, 0, 1),),
    "rename": (("RW access delete", 1, 0, 1), ("OW update", 2, 0, 1)),
    "renamenx": (("RW access delete", 1, 0, 1), ("OW insert", 2, 0, 1)),
    "copy": (("RO access", 1, 0, 1), ("OW update", 2, 0, 1)),
    "watch": (("RO", 1, -1, 1),),
    "eval": (("RW access update", 2, None, None),), "evalsha": (("RW access update", 2, None, None),),
    "eval_ro": (("RO access", 2, None, None),), "evalsha_ro": (("RO access", 2, None, None),),
    # Hashes (see GROUPS).
    "hset": (("RW update", 1, 0, 1),), "hmset": (("RW update", 1, 0, 1),), "hsetnx": (("RW insert", 1, 0, 1),),
    "hdel": (("RW delete", 1, 0, 1),), "hincrby": (("RW access update", 1, 0, 1),),
    "hincrbyfloat": (("RW access update", 1, 0, 1),), "hget": (("RO access", 1, 0, 1),),
    "hmget": (("RO access", 1, 0, 1),), "hgetall": (("RO access", 1, 0, 1),), "hkeys": (("RO access", 1, 0, 1),),
    "hvals": (("RO access", 1, 0, 1),), "hexists": (("RO", 1, 0, 1),), "hlen": (("RO", 1, 0, 1),),
    "hstrlen": (("RO", 1, 0, 1),), "hscan": (("RO access", 1, 0, 1),), "hrandfield": (("RO access", 1, 0, 1),),
    # Expiry (kvd.kv.expiry).
    "setex": (("OW update", 1, 0, 1),), "psetex": (("OW update", 1, 0, 1),), "getex": (("RW access update", 1, 0, 1),),
    "expire": (("RW update", 1, 0, 1),), "pexpire": (("RW update", 1, 0, 1),), "expireat": (("RW update", 1, 0, 1),),
    "pexpireat": (("RW update", 1, 0, 1),), "persist": (("RW update", 1, 0, 1),), "ttl": (("RO access", 1, 0, 1),),
    "pttl": (("RO access", 1, 0, 1),), "expiretime": (("RO access", 1, 0, 1),),
    "pexpiretime": (("RO access", 1, 0, 1),),
    # Shard channels: Redis 7.0 routes on the channel, which is no key.
    "spublish": (("not_key", 1, 0, 1),), "ssubscribe": (("not_key", 1, -1, 1),),
    "sunsubscribe": (("not_key", 1, -1, 1),),
}

#: COMMAND DOCS' summaries (Redis's words where kvd does what Redis does).
SUMMARIES = {
    "ping": "Returns the server's liveliness response.", "echo": "Returns the given string.",
    "hello": "Handshakes with the Redis server.", "auth": "Authenticates the connection.",
    "get": "Returns the string value of a key.", "set": "Sets the string value of a key (NX, XX, GET, IFEQ, EX, PX, EXAT, PXAT, KEEPTTL).",
    "del": "Deletes one or more keys.", "unlink": "Deletes one or more keys.",
    "exists": "Determines whether one or more keys exist.", "mget": "Atomically returns the string values of "
    "one or more keys.", "mset": "Atomically creates or modifies the string values of one or more keys.",
    "msetnx": "Atomically sets the values of one or more keys only when all keys don't exist.",
    "incr": "Increments the integer value of a key by one.", "decr": "Decrements the integer value of a key by one.",
    "incrby": "Increments the integer value of a key by a number.",
    "decrby": "Decrements a number from the integer value of a key.",
    "incrbyfloat": "Increment the floating point value of a key by a number.",
    "setnx": "Set the string value of a key only when the key doesn't exist.",
    "getset": "Returns the previous string value of a key after setting it to a new value.",
    "getdel": "Returns the string value of a key after deleting the key.",
    "append": "Appends a string to the value of a key. Creates the key if it doesn't exist.",
    "setrange": "Overwrites a part of a string value with another by an offset.",
    "strlen": "Returns the length of a string value.", "getrange": "Returns a substring of the string stored at a key.",
    "substr": "Returns a substring from a string value.", "type": "Determines the type of value stored at a key.",
    "rename": "Renames a key and overwrites the destination.",
    "renamenx": "Renames a key only when the target key name doesn't exist.", "copy": "Copies the value of a key "
    "to a new key.", "randomkey": "Returns a random key name from the database.",
    "keys": "Returns all key names that match a pattern.", "scan": "Iterates over the key names in the database.",
    "dbsize": "Returns the number of keys in the database.", "time": "Returns the server time.",
    "flushdb": "Removes all keys from the current database.", "flushall": "Removes all keys from all databases.",
    "info": "Returns information and statistics about the server.", "role": "Returns the replication role.",
    "select": "Changes the selected database (kvd has database 0 only).", "quit": "Closes the connection.",
    "readonly": "Lets this connection read from a follower without the leader (possibly stale).",
    "readwrite": "Makes this connection's reads linearizable again.",
    "multi": "Starts a transaction.", "exec": "Executes all commands in a transaction.",
    "discard": "Discards a transaction.", "watch": "Monitors changes to keys to determine the execution of a "
    "transaction.", "unwatch": "Forgets about watched keys of a transaction.",
    "config": "A container for server configuration commands.", "command": "Returns detailed information about "
    "all commands.", "script": "A container for Lua scripts management commands.",
    "client": "A container for client connection commands.",
    "eval": "Executes a server-side Lua script.", "evalsha": "Executes a server-side Lua script by SHA1 digest.",
    "eval_ro": "Executes a read-only server-side Lua script.",
    "evalsha_ro": "Executes a read-only server-side Lua script by SHA1 digest.",
    "kvd.members": "kvd: the cluster's members as JSON.", "kvd.cluster": "kvd: the cluster's id.",
    "kvd.join": "kvd: adds a node to the cluster.", "kvd.remove": "kvd: removes a node from the cluster.",
    "kvd.lease": "kvd: leases (etcd's): GRANT, KEEPALIVE, REVOKE, TTL, LIST; SET k v LEASE id attaches a key.",
    "kvd.txn": "kvd: etcd-style multi-key compare-and-swap: IF compares THEN ops ELSE ops, one log entry.",
    "kvd.get": "kvd: a string's value, WITHREV with its create revision, mod revision and version; "
               "SERIALIZABLE from this node's own state (as READONLY).",
    "kvd.revision": "kvd: the store's revision (how many log entries changed a key).",
    "kvd.watch": "kvd: etcd's watch: a stream of every change under a prefix, with its revision, FROMREV to resume.",
    "kvd.unwatch": "kvd: ends the connection's KVD.WATCH.",
    "hset": "Creates or modifies the value of a field in a hash.", "hmset": "Sets the values of multiple fields.",
    "hsetnx": "Sets the value of a field in a hash only when the field doesn't exist.",
    "hdel": "Deletes one or more fields and their values from a hash.",
    "hincrby": "Increments the integer value of a field in a hash by a number.",
    "hincrbyfloat": "Increments the floating point value of a field by a number.",
    "hget": "Returns the value of a field in a hash.", "hmget": "Returns the values of all fields in a hash.",
    "hgetall": "Returns all fields and values in a hash.", "hkeys": "Returns all fields in a hash.",
    "hvals": "Returns all values in a hash.", "hexists": "Determines whether a field exists in a hash.",
    "hlen": "Returns the number of fields in a hash.", "hstrlen": "Returns the length of the value of a field.",
    "hscan": "Iterates over fields and values of a hash.", "hrandfield": "Returns one or more random fields "
    "from a hash.",
    "setex": "Set the value and expiration of a key.", "psetex": "Set the value and expiration in milliseconds "
    "of a key.", "getex": "Get the value of a key and optionally set its expiration.",
    "expire": "Set a key's time to live in seconds.", "pexpire": "Set a key's time to live in milliseconds.",
    "expireat": "Set the expiration for a key as a UNIX timestamp.",
    "pexpireat": "Set the expiration for a key as a UNIX timestamp specified in milliseconds.",
    "persist": "Remove the expiration from a key.", "ttl": "Get the time to live for a key in seconds.",
    "pttl": "Get the time to live for a key in milliseconds.",
    "expiretime": "Get the expiration Unix timestamp for a key.",
    "pexpiretime": "Get the expiration Unix timestamp for a key in milliseconds.",
    "publish": "Posts a message to a channel (through the log: every node's subscribers get it).",
    "subscribe": "Listens for messages published to channels.",
    "psubscribe": "Listens for messages published to channels that match one or more patterns.",
    "unsubscribe": "Stops listening to messages posted to channels.",
    "punsubscribe": "Stops listening to messages published to channels that match one or more patterns.",
    "pubsub": "A container for Pub/Sub commands.",
    "spublish": "Post a message to a shard channel (kvd is one shard: every node's shard subscribers get it).",
    "ssubscribe": "Listens for messages published to shard channels.",
    "sunsubscribe": "Stops listening to messages posted to shard channels.",
}


def categories(spec: CommandSpec) -> List[str]:
    name = spec.name.split("|")[0]
    flags = set(spec.flags)
    wanted = set(_EXTRA_CATEGORIES.get(spec.name, ())) | set(_EXTRA_CATEGORIES.get(name + "|*", ()))
    if "readonly" in flags and not name.startswith("eval"):
        wanted.add("read")
    if "write" in flags:
        wanted.add("write")
    if "admin" in flags and spec.name not in _ADMIN_BY_KVD:
        wanted.update(("admin", "dangerous"))
    wanted.add("fast" if "fast" in flags else "slow")
    group_category = _GROUP_CATEGORY.get(GROUPS.get(name, ""))
    if group_category and ("|" in spec.name or name not in _NO_GROUP_CATEGORY):
        wanted.add(group_category)
    return ["@" + c for c in CATEGORY_ORDER if c in wanted]


def key_specs(spec: CommandSpec) -> Tuple[_RANGE, ...]:
    """The spec's key specs: Redis's, or one range from its first/last/step."""
    if spec.name in KEY_SPECS:
        return KEY_SPECS[spec.name]
    if spec.first_key <= 0:
        return ()
    flags = "RO access" if "readonly" in spec.flags else "RW update"
    last = spec.last_key - spec.first_key if spec.last_key >= 0 else spec.last_key
    return ((flags, spec.first_key, last, spec.step),)


def _key_spec_reply(ks: _RANGE) -> list:
    flags, begin, last, step = ks
    if last is None:
        find = [b"type", b"keynum", b"spec", [b"keynumidx", 0, b"firstkey", 1, b"keystep", 1]]
    else:
        find = [b"type", b"range", b"spec", [b"lastkey", last, b"keystep", step, b"limit", 0]]
    return [b"flags", [SimpleString(f) for f in flags.split()],
            b"begin_search", [b"type", b"index", b"spec", [b"index", begin]],
            b"find_keys", find]


def _flags(spec: CommandSpec) -> List[SimpleString]:
    flags = list(spec.flags)
    if any(ks[2] is None for ks in key_specs(spec)) and "movablekeys" not in flags:
        flags.append("movablekeys")
    return [SimpleString(f) for f in flags]


def info(spec: CommandSpec) -> list:
    """One command as an entry of Redis 7's COMMAND INFO."""
    return [spec.name.encode(), spec.arity, _flags(spec), spec.first_key, spec.last_key, spec.step,
            [SimpleString(c) for c in categories(spec)], [], [_key_spec_reply(ks) for ks in key_specs(spec)],
            [info(sub) for sub in spec.subcommands]]


def docs(spec: CommandSpec) -> RespMap:
    name = spec.name.split("|")[0]
    summary = SUMMARIES.get(spec.name) or SUMMARIES.get(name, "") if "|" not in spec.name else (
        "The %s subcommand of %s." % (spec.name.split("|")[1].upper(), name.upper()))
    pairs = [("summary", summary), ("group", GROUPS.get(name, "server"))]
    if spec.subcommands:
        pairs.append(("subcommands", RespMap(tuple((sub.name, docs(sub)) for sub in spec.subcommands))))
    return RespMap(tuple(pairs))


def all_specs():
    """Every command and subcommand of the table, containers first."""
    for spec in COMMANDS.values():
        yield spec
        yield from spec.subcommands


def command(name: str, args) -> object:
    """The reply to COMMAND (``name`` "command" or "command|...") with ``args`` after the subcommand."""
    if name in ("command", "command|info"):
        if not args:
            return [info(spec) for spec in COMMANDS.values()]
        return [None if spec is None else info(spec) for spec in (_lookup(a) for a in args)]
    if name == "command|count":
        return len(COMMANDS)
    if name == "command|docs":
        specs = list(COMMANDS.values()) if not args else [s for s in (_lookup(a) for a in args) if s is not None]
        return RespMap(tuple((spec.name, docs(spec)) for spec in specs))
    if name == "command|list":
        return _list(args)
    if name in ("command|getkeys", "command|getkeysandflags"):
        found = getkeys(list(args))
        if name == "command|getkeys":
            return [key for key, _ in found]
        return [[key, [SimpleString(f) for f in flags.split()]] for key, flags in found]
    raise ValueError("not a COMMAND subcommand: %r" % (name,))


def _lookup(name: bytes) -> Optional[CommandSpec]:
    return spec_of(name.lower().decode("utf-8", "replace"))


def _list(args) -> list:
    names = [spec.name for spec in all_specs()]
    if not args:
        return [n.encode() for n in names]
    if len(args) != 3 or args[0].lower() != b"filterby":
        raise RespError("ERR", "syntax error")
    kind, value = args[1].lower(), args[2]
    if kind == b"module":
        return []  # kvd has no modules
    if kind == b"aclcat":
        wanted = "@" + value.lower().decode("utf-8", "replace")
        return [spec.name.encode() for spec in all_specs() if wanted in categories(spec)]
    if kind == b"pattern":
        pattern = value.lower().decode("utf-8", "surrogateescape")
        return [n.encode() for n in names if fnmatch.fnmatchcase(n, pattern)]
    raise RespError("ERR", "syntax error")


def getkeys(argv: List[bytes]) -> List[Tuple[bytes, str]]:
    """COMMAND GETKEYS's keys of a command line, each with its key spec's flags; Redis's errors."""
    spec = COMMANDS.get(argv[0].lower())
    if spec is not None and spec.subcommands and len(argv) > 1:
        spec = spec_of("%s|%s" % (spec.name, argv[1].lower().decode("utf-8", "replace")))
    if spec is None:
        raise RespError("ERR", "Invalid command specified")
    if not spec.arity_ok(len(argv)):
        raise RespError("ERR", "Invalid number of arguments specified for command")
    if spec.name == "kvd.txn":  # keys anywhere in its grammar (kvd.kv.txn): the parsed transaction names them
        try:
            return [(key, "RW access update") for key in dict.fromkeys(write_keys(parse_kv_txn(argv[1:])))]
        except TxnSyntaxError as e:
            raise RespError("ERR", "KVD.TXN syntax error: %s" % (e,)) from None
    specs = key_specs(spec)
    if not specs:
        raise RespError("ERR", "The command has no key arguments")
    keys = []
    for flags, begin, last, step in specs:
        if begin >= len(argv):
            continue
        if last is None:  # numkeys at ``begin``, the keys after it
            count = parse_int64(argv[begin])
            if count is None or count < 0 or begin + count >= len(argv):
                continue
            keys += [(key, flags) for key in argv[begin + 1:begin + 1 + count]]
            continue
        if "variable_flags" in flags:  # SET: reads the old value only with GET (Redis's setGetKeys)
            flags = "RW access update" if any(a.upper() == b"GET" for a in argv[3:]) else "OW update"
        end = begin + last if last >= 0 else len(argv) + last
        keys += [(argv[i], flags) for i in range(begin, min(end, len(argv) - 1) + 1, step)]
    return keys
