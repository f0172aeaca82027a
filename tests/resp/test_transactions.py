"""
MULTI / EXEC / DISCARD / WATCH / UNWATCH at the client port, on a KVMachine:
Redis 7's replies (RESP2 and RESP3), and the replies of a real redis-server
compared with kvd's for random sequences with transactions.
"""

import random

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.limits import LIMITS
from kvd.resp.protocol import RespFactory
from tests.resp.test_everyday import _kvd_replies, _random_command, _redis_replies, redis_server  # noqa: F401
from tests.resp.test_protocol import MachineExecutor, packed


def client(protocol=2, executor=None):
    executor = executor or MachineExecutor()
    proto = RespFactory(executor).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    if protocol == 3:
        proto.dataReceived(packed("HELLO", "3"))

    def send(*lines):
        transport.clear()
        proto.dataReceived(b"".join(packed(*line.split()) for line in lines))
        return transport.value()

    return send, executor


@pytest.mark.parametrize("lines,expected", [
    (["MULTI", "SET a 1", "INCR a", "SET b x", "INCR b", "GET b", "EXEC"],
     b"+OK\r\n" + b"+QUEUED\r\n" * 5 + b"*5\r\n+OK\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n"
     b"$1\r\nx\r\n"),
    (["EXEC", "DISCARD"], b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n"),
    (["MULTI", "MULTI", "SET a 1", "EXEC"], b"+OK\r\n-ERR MULTI calls can not be nested\r\n+QUEUED\r\n*1\r\n+OK\r\n"),
    (["MULTI", "WATCH a", "UNWATCH", "EXEC"], b"+OK\r\n-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n*1\r\n+OK\r\n"),
    (["MULTI", "FOO", "SET a 1", "EXEC", "GET a"],
     b"+OK\r\n-ERR unknown command 'FOO', with args beginning with: \r\n+QUEUED\r\n"
     b"-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n"),
    (["MULTI", "SET a", "EXEC"],
     b"+OK\r\n-ERR wrong number of arguments for 'set' command\r\n"
     b"-EXECABORT Transaction discarded because of previous errors.\r\n"),
    # A wrong argument is Redis's runtime error: queued, answered in its place, the rest applied.
    (["MULTI", "SET a 1 BAD", "SET a 2", "GETRANGE a x 1", "EXEC"],
     b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n-ERR syntax error\r\n+OK\r\n"
     b"-ERR value is not an integer or out of range\r\n"),
    (["MULTI", "SET a 1", "DISCARD", "GET a"], b"+OK\r\n+QUEUED\r\n+OK\r\n$-1\r\n"),
    (["MULTI", "EXEC"], b"+OK\r\n*0\r\n"),
    (["MULTI", "PING", "ECHO hi", "SETNX a 1", "TYPE a", "EXEC"],
     b"+OK\r\n" + b"+QUEUED\r\n" * 4 + b"*4\r\n+PONG\r\n$2\r\nhi\r\n:1\r\n+string\r\n"),
    (["MULTI", "KVD.JOIN a b", "SET a 1", "EXEC", "GET a"],
     b"+OK\r\n-ERR Command not allowed inside a transaction\r\n+QUEUED\r\n"
     b"-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n"),
    (["SET z 1", "WATCH z", "SET z 1", "MULTI", "SET y 1", "EXEC", "GET y"],
     b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n$-1\r\n"),
    (["SET z 1", "WATCH z", "SETNX z 2", "MULTI", "SET y 1", "EXEC"],
     b"+OK\r\n+OK\r\n:0\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"),
    (["WATCH z", "SET z 1", "DEL z", "MULTI", "SET y 1", "EXEC"], b"+OK\r\n+OK\r\n:1\r\n+OK\r\n+QUEUED\r\n*-1\r\n"),
    (["WATCH z", "DEL z", "MULTI", "SET y 1", "EXEC"], b"+OK\r\n:0\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n"),
    (["SET z a", "WATCH z", "WATCH z", "UNWATCH", "SET z b", "MULTI", "EXEC"], b"+OK\r\n" * 6 + b"*0\r\n"),
    # EXEC and DISCARD end the WATCH: the next transaction runs.
    (["SET z a", "WATCH z", "SET z b", "MULTI", "EXEC", "SET z c", "MULTI", "EXEC"],
     b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n*-1\r\n+OK\r\n+OK\r\n*0\r\n"),
    (["SET z a", "WATCH z", "MULTI", "DISCARD", "SET z c", "MULTI", "GET z", "EXEC"],
     b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n$1\r\nc\r\n"),
    # The first WATCH of a key counts: watching it again later does not forget a change in between.
    (["SET z a", "WATCH z", "SET z b", "WATCH z", "MULTI", "EXEC"], b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n*-1\r\n"),
])
def test_transaction_replies(lines, expected):
    send, _ = client()
    assert send(*lines) == expected


def test_resp3_nil_for_a_broken_watch():
    send, _ = client(protocol=3)
    assert send("WATCH a", "SET a 2", "MULTI", "GET a", "EXEC") == b"+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n_\r\n"
    assert send("MULTI", "GET nothing", "EXEC") == b"+OK\r\n+QUEUED\r\n*1\r\n_\r\n"


def test_a_transaction_is_one_log_entry():
    send, executor = client()
    before = executor.machine.applied_index
    send("MULTI", "SET a 1", "GET a", "INCR n", "MGET a n", "EXEC")
    assert executor.machine.applied_index == before + 1


def test_a_transaction_over_the_entry_limit_is_refused_at_exec_and_applies_nothing():
    send, executor = client()
    value = "v" * (LIMITS.value_bytes - 100)
    lines = ["MULTI"] + ["SET k%d %s" % (i, value) for i in range(LIMITS.command_bytes // LIMITS.value_bytes + 1)]
    replies = send(*lines, "EXEC", "DBSIZE")
    assert replies.count(b"+QUEUED") == len(lines) - 1
    assert b"-ERR the transaction is over the limit of %d bytes" % LIMITS.command_bytes in replies
    assert replies.endswith(b"nothing was run\r\n:0\r\n")
    assert executor.machine.applied_index == 0


def test_a_failed_watch_read_makes_exec_answer_nil():
    class Failing(MachineExecutor):
        def execute(self, request, connection):
            if getattr(request, "name", None) == "watch":
                from kvd.errors import Code, KvdError
                raise KvdError(Code.TRYAGAIN, "no leader")
            return super().execute(request, connection)

    send, executor = client(executor=Failing())
    assert send("WATCH a", "MULTI", "SET a 1", "EXEC", "GET a") == \
        b"-TRYAGAIN no leader\r\n+OK\r\n+QUEUED\r\n*-1\r\n$-1\r\n"


def test_permissions_are_checked_at_queue_time():
    from kvd.resp.auth import READONLY, User, Users, digest

    users = Users({"reader": User("reader", READONLY, digest(b"pw"))})
    proto = RespFactory(MachineExecutor(), users=users).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(packed("AUTH", "reader", "pw") + packed("MULTI") + packed("GET", "a") + packed("SET", "a", "1")
                       + packed("EXEC"))
    assert transport.value() == (b"+OK\r\n+OK\r\n+QUEUED\r\n-NOPERM User reader has no permissions to run the 'set' "
                                 b"command\r\n-EXECABORT Transaction discarded because of previous errors.\r\n")


# ------------------------------------------------------ kvd against redis-server

DELETING = {"DEL", "UNLINK", "GETDEL", "RENAME", "RENAMENX", "FLUSHDB", "FLUSHALL"}


def _transaction_block(rng, exists):
    """
    WATCH some keys, run a few commands, then MULTI ... EXEC (or DISCARD).
    ``exists(keys)`` tells which keys exist now.  kvd's version of a missing
    key is "no key deleted since" (kvd.kv.commands), stricter than Redis's:
    while a watched key is missing, the commands before EXEC delete nothing,
    so that both must agree (tests/kv/test_transactions.py covers the rest).
    """
    keys = ["a", "b", "c", "d"]
    block = []
    watched = rng.sample(keys, rng.randrange(0, 3))
    avoid_deletes = False
    if watched:
        block.append(("WATCH",) + tuple(watched))
        avoid_deletes = not all(exists(watched))
        if rng.random() < 0.1:
            block.append(("UNWATCH",))
            avoid_deletes = False
    for _ in range(rng.randrange(0, 3)):
        command = _random_command(rng)
        while avoid_deletes and command[0] in DELETING:
            command = _random_command(rng)
        block.append(command)
    block.append(("MULTI",))
    for _ in range(rng.randrange(0, 5)):
        r = rng.random()
        if r < 0.04:
            block.append(("NOSUCHCOMMAND", "x"))
        elif r < 0.07:
            block.append(("WATCH", "a"))
        elif r < 0.1:
            block.append(("MULTI",))
        elif r < 0.13:
            block.append(("PING",))
        else:
            block.append(_random_command(rng))
    block.append(("EXEC",) if rng.random() < 0.85 else ("DISCARD",))
    return block


@pytest.mark.parametrize("protocol", [2, 3])
def test_transactions_match_a_real_redis_server(redis_server, protocol):  # noqa: F811
    """Random single-client sequences with MULTI/EXEC/DISCARD/WATCH/UNWATCH: every reply is Redis 7's."""
    rng = random.Random(1500 + protocol)
    proto = RespFactory(MachineExecutor()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    setup = [("FLUSHALL",), ("HELLO", str(protocol))]
    _redis_replies(redis_server, setup)
    _kvd_replies(proto, transport, setup[1:])

    def exists(keys):
        replies = _redis_replies(redis_server, [("EXISTS", k) for k in keys])
        assert replies == _kvd_replies(proto, transport, [("EXISTS", k) for k in keys])
        return [r == (b":", b"1") for r in replies]

    executed = aborted_by_watch = 0
    for _ in range(150):
        batch = _transaction_block(rng, exists)
        ours = _kvd_replies(proto, transport, batch)
        theirs = _redis_replies(redis_server, batch)
        for command, a, b in zip(batch, ours, theirs):
            if command[0] == "RANDOMKEY":
                assert (a[1] is None) == (b[1] is None), (command, a, b)
                continue
            if command[0] == "EXEC" and any(c[0] == "RANDOMKEY" for c in batch):
                assert len(a[1] or ()) == len(b[1] or ()), (batch, a, b)
                continue
            assert a == b, (batch, command, a, b)
        if batch[-1] == ("EXEC",):
            executed += ours[-1][0] == b"*" and ours[-1][1] is not None
            aborted_by_watch += ours[-1] in ((b"*", None), (b"_", b""))
        state = [("DBSIZE",)] + [("GET", k) for k in "abcd"]
        assert _kvd_replies(proto, transport, state) == _redis_replies(redis_server, state)
    assert executed > 50 and aborted_by_watch > 5, (executed, aborted_by_watch)
