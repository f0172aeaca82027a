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


# ------------------------------------------------------------------------ CLIENT

def _all_replies(data):
    """Every reply in ``data`` (kvd's transport: all of it is there)."""
    from tests.resp.test_everyday import _read_reply

    out, pos = [], 0
    while pos < len(data):
        reply, pos = _read_reply(data, pos)
        out.append(reply)
    return out


END = [("CLIENT", "REPLY", "ON"), ("ECHO", "end-of-batch")]


def _redis_until_end(conn):
    """redis-server's replies up to END's echo (CLIENT REPLY OFF/SKIP answer nothing: the count is unknown)."""
    from tests.resp.test_everyday import _read_reply

    buf = b""
    while True:
        chunk = conn.recv(65536)
        assert chunk, "redis-server closed the connection"
        buf += chunk
        out, pos = [], 0
        while True:
            got = _read_reply(buf, pos)
            if got is None:
                break
            reply, pos = got
            out.append(reply)
        if out and out[-1] == (b"$", b"end-of-batch") and pos == len(buf):
            return out


def _both(redis_conn, proto, transport, batch):
    from tests.resp.test_protocol import packed

    batch = list(batch) + END
    data = b"".join(packed(*c) for c in batch)
    transport.clear()
    proto.dataReceived(data)
    ours = _all_replies(transport.value())
    redis_conn.sendall(data)
    return ours, _redis_until_end(redis_conn)


def _client_command(rng):
    return rng.choice([
        ("CLIENT", "REPLY", "OFF"), ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "REPLY", "ON"), ("client", "reply", "skip"),
        ("CLIENT", "REPLY", "foo"), ("CLIENT", "REPLY"), ("CLIENT", "REPLY", "ON", "x"), ("PING",), ("ECHO", "hi"),
        ("SET", "a", "1"), ("GET", "a"), ("INCRBYFLOAT", "a", "x"), ("NOSUCHCOMMAND",), ("GET",),
        ("CLIENT", "GETNAME"), ("CLIENT", "SETNAME", rng.choice(["n1", "", "a b", "x\ny"])), ("CLIENT", "GETNAME", "x"),
        ("CLIENT", "INFO", "x"), ("CLIENT", "ID", "x"), ("CLIENT", "SETNAME"), ("CLIENT", "LIST", "x"),
        ("CLIENT", "LIST", "ID", "x"), ("CLIENT", "LIST", "ID"), ("CLIENT", "LIST", "ID", "999999", "-1"),
        ("CLIENT", "LIST", "TYPE", rng.choice(["foo", "pubsub", "master", "replica", "slave", "PUBSUB"])),
        ("CLIENT", "LIST", "TYPE"), ("CLIENT", "LIST", "TYPE", "normal", "x"), ("CLIENT", "NOSUCH"),
    ])


@pytest.mark.parametrize("protocol", [2, 3])
def test_client_replies_match_a_real_redis_server(redis_server, protocol):  # noqa: F811
    """Random CLIENT REPLY/SETNAME/GETNAME/LIST (errors, silences) with other commands: as Redis 7 answers."""
    rng = random.Random(7 + protocol)
    _, proto, transport = kvd_connection()
    setup = [("FLUSHALL",), ("HELLO", str(protocol))]
    _redis_replies(redis_server, setup)
    _kvd_replies(proto, transport, setup[1:])
    silenced = 0
    for _ in range(40):
        batch = [_client_command(rng) for _ in range(10)]
        ours, theirs = _both(redis_server, proto, transport, batch)
        assert ours == theirs, "\n".join(map(repr, (batch, ours, theirs)))
        silenced += len(batch) + len(END) - len(ours)
    assert silenced > 40
    _both(redis_server, proto, transport, [("CLIENT", "SETNAME", "")])


def _fields(line):
    assert line.endswith(b"\n") and line.count(b"\n") == 1, line
    return [tuple(f.split(b"=", 1)) for f in line[:-1].split(b" ")]


#: CLIENT INFO fields whose values differ for reasons that are not differences (ids, ports, sizes, fds, times).
VARYING = {b"id", b"addr", b"laddr", b"fd", b"age", b"idle", b"qbuf", b"qbuf-free", b"argv-mem", b"rbs", b"rbp",
           b"obl", b"tot-mem", b"multi-mem"}


def test_client_info_has_redis_fields_in_redis_order(redis_server):  # noqa: F811
    """Every field Redis 7.0 shows, in its order (and 7.2's lib-name, lib-ver after them); the others' values alike."""
    _, proto, transport = kvd_connection()
    batch = [("HELLO", "2"), ("CLIENT", "SETNAME", "me"), ("SET", "k", "v"), ("READWRITE",), ("CLIENT", "INFO")]
    ours = _kvd_replies(proto, transport, batch)[-1][1]
    theirs = _redis_replies(redis_server, batch)[-1][1]
    _redis_replies(redis_server, [("CLIENT", "SETNAME", "")])
    mine, redis = _fields(ours), _fields(theirs)
    names = [k for k, _ in redis]
    assert [k for k, _ in mine][:len(names)] == names
    assert [k for k, _ in mine][len(names):] == [k for k in (b"lib-name", b"lib-ver") if k not in names]
    mine_values = dict(mine)
    for key, value in redis:
        if key not in VARYING:
            assert mine_values[key] == value, (key, mine_values[key], value)
    assert mine_values[b"id"] == b"%d" % proto.connection.id and mine_values[b"addr"] == b"192.168.1.1:54321"  # StringTransport's peer
    assert mine_values[b"name"] == b"me" and mine_values[b"cmd"] == b"client|info" and mine_values[b"multi"] == b"-1"


def test_client_list_shows_each_connection_as_redis_does(redis_server):  # noqa: F811
    """A connection in MULTI with two queued commands, seen from another: flags=x multi=2, as Redis shows it."""
    import socket


    factory, a, a_transport = kvd_connection()
    b = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    b_transport = StringTransport()
    b.makeConnection(b_transport)
    port = redis_server.getpeername()[1]
    other = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        multi = [("CLIENT", "SETNAME", "txn"), ("MULTI",), ("SET", "x", "1"), ("INCRBYFLOAT", "x", "2")]
        _redis_replies(other, multi)
        _kvd_replies(b, b_transport, multi)
        theirs = _redis_replies(redis_server, [("CLIENT", "LIST")])[0][1]
        ours = _kvd_replies(a, a_transport, [("CLIENT", "LIST")])[0][1]
        their_lines = [dict(_fields(line + b"\n")) for line in theirs.split(b"\n")[:-1]]
        our_lines = [dict(_fields(line + b"\n")) for line in ours.split(b"\n")[:-1]]
        assert [line[b"id"] for line in our_lines] == [b"%d" % a.connection.id, b"%d" % b.connection.id]
        their_txn = [line for line in their_lines if line[b"name"] == b"txn"][0]
        our_txn = our_lines[1]
        for key in (b"name", b"flags", b"multi", b"cmd", b"db", b"sub", b"psub", b"user", b"resp", b"redir"):
            assert our_txn[key] == their_txn[key], key
        assert our_txn[b"flags"] == b"x" and our_txn[b"multi"] == b"2" and our_txn[b"cmd"] == b"incrbyfloat"
        assert int(our_txn[b"multi-mem"]) > 0 and our_lines[0][b"cmd"] == b"client|list"
        # ID and TYPE filters.
        only_b = _kvd_replies(a, a_transport, [("CLIENT", "LIST", "ID", str(b.connection.id), "12345")])[0][1]
        assert only_b.startswith(b"id=%d " % b.connection.id) and only_b.count(b"\n") == 1
        assert _kvd_replies(a, a_transport, [("CLIENT", "LIST", "TYPE", "normal")])[0][1].count(b"\n") == 2
        b.connectionLost(None)
        assert _kvd_replies(a, a_transport, [("CLIENT", "LIST")])[0][1].count(b"\n") == 1
        assert _kvd_replies(a, a_transport, [("CLIENT", "LIST", "ID", str(b.connection.id))]) == [(b"$", b"")]
    finally:
        other.close()


def test_client_age_idle_and_id():
    factory, proto, transport = kvd_connection()
    clock = [1000.0]
    proto.connection.now = lambda: clock[0]
    proto.connection.created = proto.connection.last_active = 1000.0
    clock[0] = 1100.5
    fields = dict(_fields(_kvd_replies(proto, transport, [("CLIENT", "INFO")])[0][1]))
    assert fields[b"age"] == b"100" and fields[b"idle"] == b"0"
    proto.connection.last_active = 1090.0
    fields = dict(_fields(proto.connection.client_info()))
    assert fields[b"age"] == b"100" and fields[b"idle"] == b"10"
    assert _kvd_replies(proto, transport, [("CLIENT", "ID")]) == [(b":", b"%d" % proto.connection.id)]
    assert fields[b"fd"] == b"-1" and fields[b"events"] == b"r" and fields[b"flags"] == b"N"


def test_client_reply_is_refused_inside_multi():
    """Redis lets a transaction switch replies off in the middle of EXEC's array; kvd refuses it at queue time."""
    _, proto, transport = kvd_connection()
    replies = _kvd_replies(proto, transport, [("MULTI",), ("CLIENT", "REPLY", "OFF"), ("EXEC",)])
    assert replies == [(b"+", b"OK"), (b"-", b"ERR Command not allowed inside a transaction"),
                       (b"-", b"EXECABORT Transaction discarded because of previous errors.")]


def test_client_list_needs_the_admin_role():
    from kvd.resp.auth import ADMIN

    assert required_role(req("CLIENT", "LIST")) == ADMIN and required_role(req("CLIENT", "INFO")) != ADMIN


def test_info_clients_counts_open_connections():
    from kvd.server_info import ServerInfo

    factory, a, _ = kvd_connection()
    b = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    b.makeConnection(StringTransport())
    info = ServerInfo(None, lambda: 0.0, factory.connections)
    fields = dict(info._clients(None))
    assert fields["connected_clients"] == 2 and fields["blocked_clients"] == 0
    assert list(fields)[:8] == ["connected_clients", "cluster_connections", "maxclients",
                                "client_recent_max_input_buffer", "client_recent_max_output_buffer",
                                "blocked_clients", "tracking_clients", "clients_in_timeout_table"]
    a.dataReceived(b"*2\r\n$3\r\nGET\r\n$10\r\nabc")  # a partial request waits in the parser
    assert dict(info._clients(None))["client_recent_max_input_buffer"] > 0
    b.connectionLost(None)
    assert dict(info._clients(None))["connected_clients"] == 1


# ----------------------------------------------------------------------- COMMAND

def _plain(reply):
    """A parsed reply without its types (RESP3 maps as flat lists, as RESP2 has them)."""
    kind, value = reply
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


#: Where kvd's flags differ from Redis 7.0's, on purpose.
FLAG_DIFFERENCES = {
    b"flushdb": "admin: kvd's roles keep a readwrite user from wiping the store",
    b"flushall": "admin, as FLUSHDB",
}


def test_command_info_matches_redis_for_every_command_both_have(redis_server):  # noqa: F811
    """Arity, key positions, ACL categories and key specs (what GETKEYS and cluster clients use) as Redis 7.0's."""
    from kvd.resp.commands import COMMANDS

    names = [name.decode() for name in COMMANDS]
    _, proto, transport = kvd_connection()
    ours = _plain(_kvd_replies(proto, transport, [("COMMAND", "INFO") + tuple(names)])[0])
    theirs = _plain(_redis_replies(redis_server, [("COMMAND", "INFO") + tuple(names)])[0])
    compared, flag_differences = 0, []
    for name, mine, redis in zip(names, ours, theirs):
        assert mine is not None and mine[0] == name.encode()
        if redis is None:
            assert name.startswith("kvd."), name
            continue
        compared += 1
        assert mine[1] == redis[1] and mine[3:6] == redis[3:6], (name, mine, redis)
        assert mine[6] == redis[6], (name, mine[6], redis[6])
        assert mine[8] == [[x for i, x in enumerate(ks) if not (ks[0] == b"notes" and i < 2)] for ks in redis[8]], name
        if name.encode() not in FLAG_DIFFERENCES and not mine[9] and mine[2] != redis[2]:
            flag_differences.append((name, mine[2], redis[2]))
        their_subs = {sub[0]: sub for sub in redis[9]}
        for sub in mine[9]:
            if sub[0] == b"client|setinfo":  # Redis 7.2's (redis-py sends it on connect); the server here is 7.0
                continue
            assert sub[0] in their_subs, sub[0]
            assert sub[1] == their_subs[sub[0]][1] and sub[3:6] == their_subs[sub[0]][3:6], (sub, their_subs[sub[0]])
    assert compared == len(COMMANDS) - sum(1 for name in COMMANDS if name.startswith(b"kvd."))  # Redis has none
    assert flag_differences == [], "\n".join(map(repr, flag_differences))
    count = _kvd_replies(proto, transport, [("COMMAND", "COUNT")])[0]
    assert count == (b":", b"%d" % len(COMMANDS))
    assert _plain(_kvd_replies(proto, transport, [("COMMAND",)])[0]) == ours


GETKEYS = [
    ("set", "a", "b"), ("SET", "a", "b", "NX", "GET"), ("mset", "a", "1", "b", "2"), ("msetnx", "a", "1", "b", "2"),
    ("eval", "x", "2", "k1", "k2", "a"), ("eval", "x", "0"), ("evalsha_ro", "x", "1", "k"), ("eval", "x", "3", "k"),
    ("eval", "x", "-1"), ("eval", "x", "y", "z"), ("get", "a", "b"), ("client", "info"), ("client", "nosuch"),
    ("foo", "x"), ("watch", "a", "b", "c"), ("copy", "a", "b", "REPLACE"), ("rename", "a", "b"),
    ("renamenx", "a", "b"), ("config", "get", "x"), ("msetnx", "a"), ("GET", "A"), ("del", "a", "b", "a"),
    ("incrbyfloat", "k", "1"), ("getrange", "k", "0", "1"), ("ping", "x"), ("exists", "a", "b"),
    ("setrange", "k", "0", "v"), ("append", "k", "v"), ("getdel", "k"), ("type", "k"), ("unlink", "a"),
]


@pytest.mark.parametrize("protocol", [2, 3])
def test_command_getkeys_list_docs_as_redis(redis_server, protocol):  # noqa: F811
    _, proto, transport = kvd_connection()
    batch = [("HELLO", str(protocol))]
    batch += [("COMMAND", "GETKEYS") + c for c in GETKEYS]
    batch += [("COMMAND", "GETKEYSANDFLAGS") + c for c in GETKEYS]
    batch += [("COMMAND", "GETKEYS", "get"), ("COMMAND", "GETKEYS"), ("COMMAND", "COUNT", "x"), ("COMMAND", "NOPE"),
              ("COMMAND", "LIST", "FILTERBY"), ("COMMAND", "LIST", "x"), ("COMMAND", "LIST", "FILTERBY", "foo", "x"),
              ("COMMAND", "LIST", "FILTERBY", "module", "x"), ("COMMAND", "INFO", "nosuch"),
              ("COMMAND", "DOCS", "nosuch"), ("HELLO", "2")]
    ours = _kvd_replies(proto, transport, batch)
    theirs = _redis_replies(redis_server, batch)
    for command, a, b in zip(batch[1:-1], ours[1:-1], theirs[1:-1]):
        if command[1] == "GETKEYSANDFLAGS" and protocol == 3:  # Redis answers the flags as a RESP3 set
            a, b = _plain(a), _plain(b)
        assert a == b, (command, a, b)
    # LIST: kvd's names (subcommands too) are a subset of Redis's, but for kvd's own.
    from kvd.resp.introspect import all_specs

    ours = set(_plain(_kvd_replies(proto, transport, [("COMMAND", "LIST")])[0]))
    theirs = set(_plain(_redis_replies(redis_server, [("COMMAND", "LIST")])[0]))
    assert ours == {spec.name.encode() for spec in all_specs()}
    assert {n for n in ours - theirs if not n.startswith(b"kvd.")} == {b"client|setinfo"}  # Redis 7.2's
    for pattern in ("ge*", "CLIENT|L*", "*|*", "s?t*"):
        ours = _plain(_kvd_replies(proto, transport, [("COMMAND", "LIST", "FILTERBY", "PATTERN", pattern)])[0])
        theirs = _plain(_redis_replies(redis_server, [("COMMAND", "LIST", "FILTERBY", "PATTERN", pattern)])[0])
        assert ours and {n for n in ours if not n.startswith(b"kvd.")} <= set(theirs) | {b"client|setinfo"}, pattern
    for category in ("string", "keyspace", "scripting", "transaction", "dangerous", "fast"):
        ours = _plain(_kvd_replies(proto, transport, [("COMMAND", "LIST", "FILTERBY", "ACLCAT", category)])[0])
        theirs = _plain(_redis_replies(redis_server, [("COMMAND", "LIST", "FILTERBY", "ACLCAT", category)])[0])
        mine = {n for n in ours if not n.startswith(b"kvd.")}
        assert mine and mine <= set(theirs) | {b"client|setinfo"}, category
        assert {n for n in set(theirs) & {s.name.encode() for s in all_specs()}} - mine <= {b"flushdb", b"flushall"}


def test_command_docs_describe_every_command():
    _, proto, transport = kvd_connection()
    docs = _plain(_kvd_replies(proto, transport, [("COMMAND", "DOCS")])[0])
    from kvd.resp.commands import COMMANDS

    assert docs[::2] == list(COMMANDS)
    for name, doc in zip(docs[::2], docs[1::2]):
        fields = dict(zip(doc[::2], doc[1::2]))
        assert fields[b"summary"] and fields[b"group"], name
    one = _plain(_kvd_replies(proto, transport, [("COMMAND", "DOCS", "incrbyfloat", "nosuch", "client")])[0])
    assert one[0] == b"incrbyfloat" and one[2] == b"client" and len(one) == 4
    client = dict(zip(one[3][::2], one[3][1::2]))
    assert client[b"subcommands"][::2][:2] == [b"client|setname", b"client|getname"]


def test_the_table_covers_every_command_the_parser_accepts():
    """Every name parse_request knows is in COMMAND (and the reverse); no unknown command sneaks past the table."""
    from kvd.resp.commands import COMMANDS, parse_request
    from kvd.resp.errors import CommandError
    from kvd.resp.introspect import GROUPS, KEY_SPECS, all_specs

    for spec in all_specs():
        assert spec.name.split("|")[0] in GROUPS, spec.name
        if spec.subcommands:
            continue
        words = [w.encode() for w in spec.name.split("|")]
        argv = words + [b"k"] * (max(spec.arity, -spec.arity) - len(words))
        parsed = parse_request(argv)
        assert not (isinstance(parsed, CommandError) and "unknown" in str(parsed)), spec.name
    assert parse_request([b"nosuchcommand"]) is not None and b"nosuchcommand" not in COMMANDS
    for name in KEY_SPECS:  # the hash commands are described ahead of their branch's merge
        assert name.encode() in COMMANDS or GROUPS[name] == "hash", name
    for name in (b"multi", b"exec", b"watch", b"eval", b"evalsha", b"script", b"incrbyfloat", b"client"):
        assert name in COMMANDS
