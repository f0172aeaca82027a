"""
KVD.TXN, KVD.GET [WITHREV] [SERIALIZABLE] and KVD.REVISION at the client
port: parsed by the command table (kvd.resp.commands, the grammar of
kvd.kv.txn), answered through the protocol on a KVMachine, refused inside
MULTI and scripts, and described by COMMAND (GETKEYS finds KVD.TXN's keys
wherever they are).  A SERIALIZABLE read reaches the node as a READONLY
connection's read does (tests/node/test_executor.py: on a cut-off follower).
"""

import random

from twisted.internet import defer

from kvd.executor import ClientExecutor
from kvd.kv.commands import Compare, Get, KvTxn, RevRead, TxnOp
from kvd.resp.commands import Read, Write, parse_request, request_name
from kvd.resp.connection import Connection, required_role
from kvd.resp.auth import READONLY, READWRITE
from kvd.resp.errors import CommandError
from tests.resp.test_protocol import MachineExecutor, connect, redis_py_replies
from tests.resp.test_everyday import _kvd_replies, _redis_replies, redis_server  # noqa: F401


def req(*args):
    return parse_request([a if isinstance(a, bytes) else a.encode() for a in args])


def test_parse():
    assert req("KVD.TXN", "IF", "VERSION", "k", "=", "0", "THEN", "SET", "k", "v") == Write(
        KvTxn((Compare("version", b"k", "=", number=0),), (TxnOp("set", b"k", b"v"),)), "kvd.txn")
    assert req("kvd.get", "k") == Read(Get(b"k"), "kvd.get")
    assert req("KVD.GET", "k", "withrev") == Read(RevRead("getrev", b"k"), "kvd.get")
    assert req("KVD.GET", "k", "serializable") == Read(Get(b"k"), "kvd.get", serializable=True)
    for options in (("WITHREV", "SERIALIZABLE"), ("Serializable", "withrev")):
        assert req("KVD.GET", "k", *options) == Read(RevRead("getrev", b"k"), "kvd.get", serializable=True)
    assert required_role(req("KVD.GET", "k", "SERIALIZABLE")) == READONLY  # a reader may read locally, as READONLY
    assert req("KVD.REVISION") == Read(RevRead("revision"), "kvd.revision")
    assert request_name(req("KVD.TXN", "THEN")) == "kvd.txn"
    assert required_role(req("KVD.TXN", "THEN")) == READWRITE
    for args, message in [
        (("KVD.TXN",), "ERR wrong number of arguments for 'kvd.txn' command"),
        (("KVD.TXN", "IF", "EXISTS", "k"), "ERR KVD.TXN syntax error: expected THEN after the compares"),
        (("KVD.TXN", "THEN", "SET", "k"), "ERR KVD.TXN syntax error: THEN op 1 (SET): too few arguments"),
        (("KVD.GET", "k", "WITHREVS"), "ERR syntax error"),
        (("KVD.GET", "k", "WITHREV", "x"), "ERR syntax error"),
        (("KVD.GET", "k", "SERIALISABLE"), "ERR syntax error"),
        (("KVD.GET", "k", "SERIALIZABLE", "SERIALIZABLE"), "ERR syntax error"),
        (("KVD.GET", "k", "WITHREV", "SERIALIZABLE", "WITHREV"), "ERR syntax error"),
        (("KVD.REVISION", "x"), "ERR wrong number of arguments for 'kvd.revision' command"),
    ]:
        got = req(*args)
        assert isinstance(got, CommandError) and str(got) == message, (args, got)
    # The key and entry limits apply to every key a KVD.TXN names, in either branch.
    long_key = "k" * 100_000
    assert "key of 100000 bytes" in str(req("KVD.TXN", "THEN", "GET", "a", "ELSE", "DEL", long_key))


def test_replies_on_the_wire():
    proto, transport = connect(MachineExecutor())
    commands = [
        ("KVD.TXN", "THEN", "SET", "a", "1", "SET", "b", "2"),
        ("KVD.TXN", "IF", "VALUE", "a", "=", "1", "MOD", "b", ">", "1", "THEN", "DEL", "a", "ELSE", "GET", "a",
         "GET", "nope"),
        ("KVD.GET", "a", "WITHREV"), ("KVD.GET", "nope", "WITHREV"), ("KVD.GET", "a"), ("KVD.REVISION",),
        ("HSET", "h", "f", "v"), ("KVD.GET", "h", "WITHREV"),
        ("KVD.TXN", "IF", "VALUE", "h", "=", "v", "THEN", "DEL", "a"),
        ("KVD.TXN", "IF", "VALUE", "a", "<", "1", "THEN", "DEL", "a"),
    ]
    transport.clear()
    proto.dataReceived(b"".join(_pack(*c) for c in commands))
    replies = redis_py_replies(transport.value(), len(commands))
    assert replies[:6] == [[1, [b"OK", b"OK"], 1], [0, [b"1", None], 1], [b"1", 1, 1, 1], None, b"1", 1]
    assert str(replies[7]).startswith("WRONGTYPE") and str(replies[8]).startswith("WRONGTYPE KVD.TXN compare VALUE h")
    assert replies[9] == [0, [], 2]


def test_serializable_replies_on_the_wire():
    proto, transport = connect(MachineExecutor())
    got = _kvd_replies(proto, transport, [("SET", "a", "1"), ("KVD.GET", "a", "SERIALIZABLE"),
                                          ("KVD.GET", "a", "SERIALIZABLE", "WITHREV"), ("KVD.GET", "nope", "SERIALIZABLE"),
                                          ("KVD.GET", "a", "STALE")])
    assert got[1:4] == [(b"$", b"1"), (b"*", [(b"$", b"1"), (b":", b"1"), (b":", b"1"), (b":", b"1")]), (b"$", None)]
    assert got[4] == (b"-", b"ERR syntax error")


class ReadRecorder(MachineExecutor):
    """The node's executor (kvd.executor.ClientExecutor) on a KVMachine, recording how each read was asked for."""

    execute = ClientExecutor.execute

    def __init__(self):
        super().__init__()
        self.node = self
        self.linearizable = []

    def read(self, op, linearizable=True):
        self.linearizable.append(linearizable)
        return defer.succeed(self.machine.read(op))


def test_serializable_is_a_local_read_as_on_a_readonly_connection():
    executor, connection = ReadRecorder(), Connection(1)
    for args in (("KVD.GET", "k"), ("KVD.GET", "k", "SERIALIZABLE"), ("KVD.GET", "k", "WITHREV", "SERIALIZABLE"),
                 ("GET", "k")):
        executor.execute(req(*args), connection)
    assert executor.linearizable == [True, False, False, True]  # the option is the request's, not the connection's
    connection.readonly = True
    executor.execute(req("KVD.GET", "k"), connection)
    assert executor.linearizable[-1] is False


def test_refused_inside_multi_and_scripts():
    proto, transport = connect(MachineExecutor())
    got = _kvd_replies(proto, transport, [("MULTI",), ("KVD.TXN", "THEN", "SET", "a", "1"), ("KVD.REVISION",),
                                          ("EXEC",), ("GET", "a"),
                                          ("EVAL", "return redis.call('KVD.TXN', 'THEN', 'SET', 'a', '1')", "0")])
    assert got[0] == (b"+", b"OK")
    assert got[1] == (b"-", b"ERR KVD.TXN cannot run inside MULTI: it is a transaction of its own")
    assert got[2] == (b"+", b"QUEUED")
    assert got[3][0] == b"-" and got[3][1].startswith(b"EXECABORT")
    assert got[4] == (b"$", None)
    assert got[5][0] == b"-" and b"not allowed from script" in got[5][1]


def test_revision_reads_run_inside_multi():
    proto, transport = connect(MachineExecutor())
    got = _kvd_replies(proto, transport, [("SET", "a", "0"), ("MULTI",), ("SET", "a", "1"), ("KVD.GET", "a", "WITHREV"),
                                          ("KVD.REVISION",), ("EXEC",)])
    assert got[1:5] == [(b"+", b"OK")] + [(b"+", b"QUEUED")] * 3
    assert got[5] == (b"*", [(b"+", b"OK"), (b"*", [(b"$", b"1"), (b":", b"1"), (b":", b"2"), (b":", b"2")]),
                             (b":", b"2")])


def test_command_describes_them():
    proto, transport = connect(MachineExecutor())
    got = _kvd_replies(proto, transport, [
        ("COMMAND", "GETKEYS", "KVD.TXN", "IF", "VALUE", "a", "=", "x", "EXISTS", "b", "THEN", "SET", "c", "1",
         "ELSE", "DEL", "a"),
        ("COMMAND", "GETKEYS", "KVD.TXN", "IF", "THEN"),
        ("COMMAND", "INFO", "kvd.txn", "kvd.get", "kvd.revision"),
    ])
    assert got[0] == (b"*", [(b"$", b"a"), (b"$", b"b"), (b"$", b"c")])
    assert got[1] == (b"-", b"ERR KVD.TXN syntax error: IF needs at least one compare")
    names = [info[1][0] for info in got[2][1]]
    assert names == [(b"$", b"kvd.txn"), (b"$", b"kvd.get"), (b"$", b"kvd.revision")]


def _pack(*args):
    from tests.resp.test_protocol import packed

    return packed(*args)


def test_txn_ops_answer_as_redis_answers_them_inside_multi(redis_server):  # noqa: F811
    """
    Redis has no KVD.TXN, but it has its ops: a KVD.TXN's THEN (or ELSE) replies are what a redis-server
    answers for the same SET/DEL/GET inside MULTI/EXEC, and the state after is the same (random sequences,
    wrong types included); KVD.GET without WITHREV is GET.
    """
    rng = random.Random(16)
    proto, transport = connect(MachineExecutor())
    keys = ["x", "y", "z", "h"]
    _redis_replies(redis_server, [("FLUSHALL",)])
    _kvd_replies(proto, transport, [("FLUSHALL",)])
    for round_ in range(150):
        if rng.random() < 0.1:  # a hash under one of the keys: GET answers WRONGTYPE in its place, SET replaces it
            command = ("HSET", "h", "f", "1")
            assert _redis_replies(redis_server, [command]) == _kvd_replies(proto, transport, [command])
        ops = []
        for _ in range(rng.randrange(1, 5)):
            k = rng.choice(keys)
            ops.append(rng.choice([("SET", k, rng.choice(["", "v", "w%d" % round_])), ("DEL", k), ("GET", k)]))
        use_else = rng.random() < 0.3
        head = ("KVD.TXN", "IF", "MISSING", "nope", "EXISTS", "nope", "THEN", "ELSE") if use_else else ("KVD.TXN", "THEN")
        (kvd,) = _kvd_replies(proto, transport, [head + tuple(w for op in ops for w in op)])
        theirs = _redis_replies(redis_server, [("MULTI",)] + ops + [("EXEC",)])
        assert theirs[-1][0] == b"*", theirs
        assert kvd[0] == b"*" and kvd[1][0] == (b":", b"0" if use_else else b"1"), (ops, kvd)
        assert kvd[1][1] == theirs[-1], (ops, kvd, theirs)
        assert _kvd_replies(proto, transport, [("KVD.GET", k) for k in keys]) == _redis_replies(
            redis_server, [("GET", k) for k in keys])
