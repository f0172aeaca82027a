"""Tests for kvd.resp.commands: the command table, argument validation and Redis's error texts."""

import pytest

from kvd.kv.commands import INT64_MAX, INT64_MIN, DbSize, Delete, Exists, Get, IncrBy, Keys, MGet, MSet, Scan, Set
from kvd.resp.commands import COMMANDS, Admin, Read, Write, command_info, parse_request
from kvd.resp.encoder import SimpleString
from kvd.resp.errors import CommandError, RespError


def req(line):
    return parse_request(line.split() if isinstance(line, bytes) else list(line))


def err(message, prefix="ERR"):
    return CommandError(prefix, message)


@pytest.mark.parametrize(
    "args,expected",
    [
        (b"GET k", Read(Get(b"k"))),
        (b"get k", Read(Get(b"k"))),
        (b"gEt k", Read(Get(b"k"))),
        (b"SET k v", Write(Set(b"k", b"v"))),
        (b"DEL a b a", Write(Delete((b"a", b"b", b"a")))),
        (b"EXISTS a b", Read(Exists((b"a", b"b")))),
        (b"MGET a b", Read(MGet((b"a", b"b")))),
        (b"MSET a 1 b 2", Write(MSet(((b"a", b"1"), (b"b", b"2"))))),
        (b"INCR n", Write(IncrBy(b"n", 1))),
        (b"DECR n", Write(IncrBy(b"n", -1))),
        (b"INCRBY n -7", Write(IncrBy(b"n", -7))),
        (b"DECRBY n 7", Write(IncrBy(b"n", -7))),
        (b"DECRBY n -7", Write(IncrBy(b"n", 7))),
        (b"KEYS user:*", Read(Keys(b"user:*"))),
        (b"SCAN 0", Read(Scan(0, None, 10))),
        (b"SCAN 17 MATCH a* COUNT 100", Read(Scan(17, b"a*", 100))),
        (b"scan 17 count 5 match b?", Read(Scan(17, b"b?", 5))),
        (b"SCAN 0 TYPE string", Read(Scan(0, None, 10, "string"))),
        (b"SCAN 0 TYPE HASH", Read(Scan(0, None, 10, "hash"))),
        (b"SCAN 0 TYPE zset", Read(Scan(0, None, 10, "other"))),
        (b"SCAN 18446744073709551615", Read(Scan(2**64 - 1, None, 10))),
        (b"DBSIZE", Read(DbSize())),
        (b"PING", Admin("ping")),
        (b"PING hello", Admin("ping", (b"hello",))),
        (b"ECHO hi", Admin("echo", (b"hi",))),
        (b"INFO", Admin("info")),
        (b"INFO server replication", Admin("info", (b"server", b"replication"))),
        (b"ROLE", Admin("role")),
        (b"SELECT 0", Admin("select", (b"0",))),
        (b"QUIT", Admin("quit")),
        (b"READONLY", Admin("readonly")),
        (b"READWRITE", Admin("readwrite")),
        (b"COMMAND", Admin("command")),
        (b"COMMAND COUNT", Admin("command|count")),
        (b"command docs", Admin("command|docs")),
        (b"COMMAND DOCS get set", Admin("command|docs", (b"get", b"set"))),
        (b"COMMAND INFO get", Admin("command|info", (b"get",))),
        (b"CLIENT SETNAME worker-1", Admin("client|setname", (b"worker-1",))),
        (b"client getname", Admin("client|getname")),
        (b"CLIENT ID", Admin("client|id")),
        (b"CLIENT INFO", Admin("client|info")),
        (b"CLIENT SETINFO lib-name redis-py", Admin("client|setinfo", (b"LIB-NAME", b"redis-py"))),
        (b"CLIENT SETINFO LIB-VER 8.1.0", Admin("client|setinfo", (b"LIB-VER", b"8.1.0"))),
        (b"KVD.MEMBERS", Admin("kvd.members")),
        (b"kvd.members", Admin("kvd.members")),
    ],
)
def test_requests_map_to_typed_requests(args, expected):
    """Each supported command, in any case, becomes the right Write, Read or Admin request."""
    assert req(args) == expected


def test_keys_and_values_are_binary():
    """Arguments are passed through as bytes, untouched, including CR LF and NUL."""
    assert req([b"SET", b"k\r\n\x00", b"\xff\x00"]) == Write(Set(b"k\r\n\x00", b"\xff\x00"))


# ---------------------------------------------------------------- SET


@pytest.mark.parametrize(
    "args,expected",
    [
        (b"SET k v NX", Set(b"k", b"v", cond="NX")),
        (b"SET k v xx", Set(b"k", b"v", cond="XX")),
        (b"SET k v GET", Set(b"k", b"v", get=True)),
        (b"SET k v NX GET", Set(b"k", b"v", cond="NX", get=True)),
        (b"SET k v GET XX", Set(b"k", b"v", cond="XX", get=True)),
        (b"SET k v IFEQ old", Set(b"k", b"v", ifeq=b"old")),
        (b"SET k v ifeq old GET", Set(b"k", b"v", ifeq=b"old", get=True)),
        (b"SET k v GET IFEQ old", Set(b"k", b"v", ifeq=b"old", get=True)),
        (b"SET k v IFEQ NX", Set(b"k", b"v", ifeq=b"NX")),  # the word after IFEQ is its value
        (b"SET k v NX NX", Set(b"k", b"v", cond="NX")),
        (b"SET k v KEEPTTL", Set(b"k", b"v", keepttl=True)),
        (b"SET k v EX 10", Set(b"k", b"v", expire=10000)),
        (b"SET k v px 10 GET", Set(b"k", b"v", get=True, expire=10)),
        (b"SET k v EXAT 10 NX", Set(b"k", b"v", cond="NX", expire=10000, expire_at=True)),
        (b"SET k v PXAT 10", Set(b"k", b"v", expire=10, expire_at=True)),
        (b"SET k v EX 1 EX 2", Set(b"k", b"v", expire=2000)),
    ],
)
def test_set_options(args, expected):
    """SET's options combine as in Valkey 8.1, in any order and case."""
    assert req(args) == Write(expected)


@pytest.mark.parametrize(
    "args",
    [b"SET k v NX XX", b"SET k v XX NX", b"SET k v NX IFEQ a", b"SET k v IFEQ a XX", b"SET k v IFEQ a IFEQ b",
     b"SET k v IFEQ", b"SET k v BOGUS", b"SET k v GETX", b"SET k v EX 1 PX 2", b"SET k v EX 1 KEEPTTL",
     b"SET k v KEEPTTL PXAT 1", b"SET k v EX", b"SET k v PERSIST"],
)
def test_set_option_clashes_are_syntax_errors(args):
    """NX with XX, IFEQ with NX/XX, a repeated IFEQ or a missing IFEQ value are refused like Valkey."""
    assert req(args) == err("syntax error")


@pytest.mark.parametrize("args,message", [
    (b"SET k v EX 0", "invalid expire time in 'set' command"),
    (b"SET k v PX -1", "invalid expire time in 'set' command"),
    (b"SET k v EX 9223372036854776", "invalid expire time in 'set' command"),
    (b"SET k v EX x", "value is not an integer or out of range"),
    (b"SETEX k 0 v", "invalid expire time in 'setex' command"),
    (b"PSETEX k 0 v", "invalid expire time in 'psetex' command"),
    (b"GETEX k EX 0", "invalid expire time in 'getex' command"),
    (b"GETEX k EX 1 PERSIST", "syntax error"),
    (b"EXPIRE k 1 NX XX", "NX and XX, GT or LT options at the same time are not compatible"),
    (b"EXPIRE k 1 GT LT", "GT and LT options at the same time are not compatible"),
    (b"EXPIRE k 1 foo", "Unsupported option foo"),
    (b"EXPIRE k x", "value is not an integer or out of range"),
    (b"EXPIRE k 9223372036854776", "invalid expire time in 'expire' command"),
])
def test_expiry_errors(args, message):
    """Expiry arguments are refused with Redis 7's texts."""
    assert req(args) == err(message)


# -------------------------------------------------------------- arity


@pytest.mark.parametrize(
    "args,name",
    [
        (b"GET", "get"),
        (b"GET a b", "get"),
        (b"SET k", "set"),
        (b"DEL", "del"),
        (b"EXISTS", "exists"),
        (b"MGET", "mget"),
        (b"MSET k", "mset"),
        (b"MSET a 1 b", "mset"),
        (b"INCR", "incr"),
        (b"INCRBY n", "incrby"),
        (b"DECRBY n 1 2", "decrby"),
        (b"KEYS", "keys"),
        (b"SCAN", "scan"),
        (b"DBSIZE x", "dbsize"),
        (b"PING a b", "ping"),
        (b"ECHO", "echo"),
        (b"SELECT", "select"),
        (b"ROLE x", "role"),
        (b"CLIENT", "client"),
        (b"CLIENT SETNAME", "client|setname"),
        (b"CLIENT ID x", "client|id"),
        (b"COMMAND COUNT x", "command|count"),
        (b"KVD.MEMBERS x", "kvd.members"),
    ],
)
def test_wrong_arity_uses_redis_text(args, name):
    """Arity errors read exactly like Redis 7's, with the lower-case (sub)command name."""
    assert req(args) == err("wrong number of arguments for '%s' command" % name)


# ------------------------------------------------------ unknown commands


def test_unknown_command_text():
    """An unknown command echoes its name and args exactly as Redis formats them."""
    assert req(b"FOO a b") == err("unknown command 'FOO', with args beginning with: 'a' 'b' ")
    assert req(b"foo") == err("unknown command 'foo', with args beginning with: ")


def test_unknown_command_args_are_truncated():
    """Echoed arguments stop at 128 bytes, like Redis's formatting."""
    result = req([b"nope", b"x" * 100, b"y" * 100, b"z" * 10])
    assert result == err("unknown command 'nope', with args beginning with: '%s' '%s' " % ("x" * 100, "y" * 25))


def test_unknown_command_keeps_raw_bytes():
    """Non-UTF-8 bytes of an unknown command survive into the error for the encoder to send back."""
    result = req([b"\xff\xfe"])
    assert result.message.encode("utf-8", "surrogateescape").startswith(b"unknown command '\xff\xfe'")


def test_unknown_subcommand_text():
    """A bad subcommand gets Redis 7's 'Try X HELP.' text."""
    assert req(b"CLIENT KILL x") == err("unknown subcommand 'KILL'. Try CLIENT HELP.")
    assert req(b"command nope") == err("unknown subcommand 'nope'. Try COMMAND HELP.")


def test_hello_is_an_admin_request():
    """HELLO is parsed for the session to answer (it picks RESP2 or RESP3)."""
    assert req(b"HELLO 3") == Admin("hello", (b"3",))
    assert req(b"hello") == Admin("hello", ())


def test_empty_request():
    """An empty argument list (never produced by the parser) is an error, not an exception."""
    assert isinstance(parse_request([]), CommandError)


# ---------------------------------------------------------- integers


@pytest.mark.parametrize("args", [b"INCRBY n x", b"INCRBY n 1.5", b"INCRBY n +1", b"INCRBY n 01",
                                  b"DECRBY n 9223372036854775808", b"SELECT x"])
def test_non_integer_arguments(args):
    """Integer arguments must be canonical int64 decimals, with Redis's error otherwise."""
    assert req(args) == err("value is not an integer or out of range")


def test_incrby_extremes():
    """INCRBY takes the full int64 range; DECRBY of INT64_MIN cannot be negated and says so."""
    assert req(b"INCRBY n %d" % INT64_MIN) == Write(IncrBy(b"n", INT64_MIN))
    assert req(b"DECRBY n %d" % INT64_MAX) == Write(IncrBy(b"n", -INT64_MAX))
    assert req(b"DECRBY n %d" % INT64_MIN) == err("decrement would overflow")


def test_select_only_database_zero():
    """SELECT 0 is accepted; any other database is out of range, as for a cluster."""
    assert req(b"SELECT 0") == Admin("select", (b"0",))
    assert req(b"SELECT 1") == err("DB index is out of range")
    assert req(b"SELECT -1") == err("DB index is out of range")


# ---------------------------------------------------------------- SCAN


@pytest.mark.parametrize("cursor", [b"abc", b"-1", b"1.0", b" 1", b"18446744073709551616", b"1" * 21])
def test_scan_invalid_cursor(cursor):
    """Cursors are unsigned 64-bit decimals; anything else is 'invalid cursor'."""
    assert req([b"SCAN", cursor]) == err("invalid cursor")


@pytest.mark.parametrize("args,error", [
    (b"SCAN 0 COUNT 0", "syntax error"),
    (b"SCAN 0 COUNT -5", "syntax error"),
    (b"SCAN 0 COUNT x", "value is not an integer or out of range"),
    (b"SCAN 0 MATCH", "syntax error"),
    (b"SCAN 0 COUNT", "syntax error"),
    (b"SCAN 0 LIMIT 5", "syntax error"),
])
def test_scan_option_errors(args, error):
    """Bad SCAN options get Redis's errors."""
    assert req(args) == err(error)


def test_scan_type_of_a_type_kvd_has_not_matches_nothing():
    """Redis compares TYPE's name with each key's type: a name no key has (list, zset, nonsense) matches none."""
    assert req(b"SCAN 0 TYPE list") == Read(Scan(0, None, 10, "other"))


# -------------------------------------------------------------- CLIENT


@pytest.mark.parametrize("name", [b"has space", b"new\nline", b"tab\t", b"\x7f", "é".encode()])
def test_client_setname_rejects_special_characters(name):
    """Client names are printable ASCII without spaces, as Redis requires."""
    assert req([b"CLIENT", b"SETNAME", name]) == err(
        "Client names cannot contain spaces, newlines or special characters.")


def test_client_setname_empty_is_allowed():
    """An empty name clears the name."""
    assert req([b"CLIENT", b"SETNAME", b""]) == Admin("client|setname", (b"",))


def test_client_setinfo_rejects_unknown_attribute():
    """Only LIB-NAME and LIB-VER can be set."""
    assert req(b"CLIENT SETINFO color blue") == err("Unrecognized option 'color'")


# -------------------------------------------------------------- COMMAND


def test_command_info_shape():
    """COMMAND INFO entries follow Redis 7's 10-field layout, with key positions for clients that route."""
    info = command_info(b"mset")
    assert info[0] == b"mset" and info[1] == -3
    assert SimpleString("write") in info[2]
    assert info[3:6] == [1, -1, 2]
    assert len(info) == 10
    assert command_info(b"GET")[3:6] == [1, 1, 1]
    assert command_info(b"nope") is None


def test_command_info_for_subcommands():
    """Subcommands are described inside their container and addressable as 'client|id'."""
    client = command_info(b"client")
    assert [sub[0] for sub in client[9]] == [b"client|setname", b"client|getname", b"client|id", b"client|info",
                                               b"client|setinfo", b"client|list", b"client|reply"]
    assert command_info(b"client|id")[1] == 2
    assert command_info(b"client|nope") is None


def test_table_has_every_supported_command():
    """The table lists exactly the commands the brief asks for."""
    assert set(COMMANDS) == {
        b"ping", b"echo", b"get", b"set", b"del", b"exists", b"mget", b"mset", b"incr", b"decr", b"incrby",
        b"decrby", b"keys", b"scan", b"dbsize", b"info", b"role", b"select", b"command", b"quit", b"readonly",
        b"readwrite", b"client", b"kvd.members", b"kvd.cluster", b"kvd.join", b"kvd.remove", b"hello",
        b"config", b"multi", b"exec", b"discard", b"watch", b"unwatch", b"auth",
        # issue 15, the everyday commands
        b"setnx", b"getset", b"unlink", b"getdel", b"append", b"setrange", b"msetnx", b"rename", b"renamenx",
        b"copy", b"strlen", b"getrange", b"substr", b"type", b"randomkey", b"time", b"flushdb", b"flushall",
        # issue 15, Lua scripts
        b"eval", b"evalsha", b"eval_ro", b"evalsha_ro", b"script",
        # issue 15, the rest of the everyday commands
        b"incrbyfloat",
        # issue 15, hashes
        b"hset", b"hmset", b"hsetnx", b"hdel", b"hincrby", b"hincrbyfloat", b"hget", b"hmget", b"hgetall",
        b"hkeys", b"hvals", b"hexists", b"hlen", b"hstrlen", b"hscan", b"hrandfield",
        # issue 16, pub/sub
        b"publish", b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe", b"pubsub",
        b"spublish", b"ssubscribe", b"sunsubscribe",
        # issue 16, expiry
        b"setex", b"psetex", b"getex", b"expire", b"pexpire", b"expireat", b"pexpireat", b"persist", b"ttl",
        b"pttl", b"expiretime", b"pexpiretime",
        # issue 16, leases
        b"kvd.lease",
        # issue 16, revisions and KVD.TXN
        b"kvd.txn", b"kvd.get", b"kvd.revision",
        # issue 16, watches (kvd.resp.watch)
        b"kvd.watch", b"kvd.unwatch",
    }


def test_command_errors_are_resp_errors():
    """CommandError is a RespError, so the protocol sends both the same way."""
    assert isinstance(req(b"GET"), RespError)
    assert str(req(b"GET")) == "ERR wrong number of arguments for 'get' command"


def test_a_write_too_big_for_one_proposal_is_refused_before_it_is_proposed():
    from kvd.resp.commands import MAX_WRITE_BYTES, MAX_WRITE_KEYS

    refused = parse_request([b"MSET"] + [b"k", b"v"] * 200_000)
    assert isinstance(refused, CommandError)
    assert refused.message == ("MSET of 200000 keys is over the limit of %d keys in one write; "
                               "the command was not run: split it" % MAX_WRITE_KEYS)
    assert isinstance(parse_request([b"DEL"] + [b"k"] * (MAX_WRITE_KEYS + 1)), CommandError)
    big = [b"MSET"] + [b"k", b"v" * (1024 * 1024)] * (MAX_WRITE_BYTES // (1024 * 1024) + 1)
    assert "bytes in one write" in parse_request(big).message
    assert isinstance(parse_request([b"MSET"] + [b"k", b"v"] * MAX_WRITE_KEYS), Write)
    assert isinstance(parse_request([b"DEL"] + [b"k"] * MAX_WRITE_KEYS), Write)


def test_writes_are_measured_as_encoded_in_the_log():
    """
    The byte limit is the command's encoding (keys, values and their
    lengths), not its arguments: an MSET of exactly MAX_WRITE_BYTES encoded is
    a Write, one byte more is refused, whatever the arguments add up to.
    """
    from kvd.resp.commands import MAX_WRITE_BYTES
    from tests.test_limits import largest_mset

    args = [b"MSET"] + [x for pair in largest_mset().pairs for x in pair]
    assert sum(map(len, args)) < MAX_WRITE_BYTES
    assert isinstance(parse_request(args), Write)
    refused = parse_request(args[:-1] + [args[-1] + b"v"])
    assert refused.message == ("MSET of %d bytes is over the limit of %d bytes in one write; "
                               "the command was not run: split it" % (MAX_WRITE_BYTES + 1, MAX_WRITE_BYTES))
    assert "in one write" in parse_request([b"SET", b"k", b"v" * MAX_WRITE_BYTES]).message
    assert "in one write" in parse_request([b"SET", b"k", b"v", b"IFEQ", b"v" * MAX_WRITE_BYTES]).message


@pytest.mark.parametrize("args", [
    [b"SET", b"K", b"v"], [b"SET", b"K", b"v", b"GET"], [b"MSET", b"a", b"1", b"K", b"2"], [b"DEL", b"a", b"K"],
    [b"INCR", b"K"], [b"DECRBY", b"K", b"2"], [b"GET", b"K"], [b"MGET", b"a", b"K"], [b"EXISTS", b"K", b"a"],
])
def test_a_key_over_the_key_limit_is_refused_by_every_command(args):
    """No key longer than MAX_KEY_BYTES reaches the log or the store (an LMDB key holds 511 bytes); one at it does."""
    from kvd.resp.commands import MAX_KEY_BYTES

    at = parse_request([a.replace(b"K", b"k" * MAX_KEY_BYTES) if a == b"K" else a for a in args])
    assert isinstance(at, (Write, Read))
    over = parse_request([a.replace(b"K", b"k" * (MAX_KEY_BYTES + 1)) if a == b"K" else a for a in args])
    assert over == CommandError("ERR", "key of %d bytes is over the limit of %d bytes; the command was not run"
                                % (MAX_KEY_BYTES + 1, MAX_KEY_BYTES))
