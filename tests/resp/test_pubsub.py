"""
Pub/sub at the client port (kvd.resp.pubsub): SUBSCRIBE and friends, RESP2's
subscribed mode and RESP3's pushes, PUBSUB, keyspace notifications, the
pubsub output limit; and the same sequences against a real redis-server 7,
compared byte for byte where kvd and Redis agree.

Without sockets: every connection is a StringTransport on one factory; the
executor applies writes to a KVMachine and hands each entry's events to the
factory's hub, as the node does (kvd.node.service).
"""

import socket

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.bench.redispy import RedisServer
from kvd.kv.commands import Envelope, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.resp import pubsub
from kvd.resp.commands import Read, Write
from kvd.resp.encoder import RespMap
from kvd.resp.errors import RespError
from kvd.resp.protocol import RespFactory
from kvd.resp.pubsub import PubSubLimit
from tests.resp.test_protocol import packed


class HubExecutor:
    """A one-node stand-in: writes applied to a KVMachine, their events delivered to the port's hub."""

    def __init__(self):
        self.machine = KVMachine()
        self.seq = 0
        self.hub = None  # the factory's, once built

    def execute(self, request, connection):
        if isinstance(request, Write):
            self.seq += 1
            env = Envelope(b"test", self.seq, self.seq, 1_000_000, request.command)
            result = self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))
            self.hub.deliver(self.machine.events)
            return result
        if isinstance(request, Read):
            return self.machine.read(request.op)
        if request.name == "config|set":
            return pubsub.config_set(self.hub, request.args)
        if request.name == "config|get":
            return RespMap((("notify-keyspace-events", self.hub.notify_text()),))
        raise RespError("ERR", "unsupported %s" % request.name)


class Kvd:
    """Connections to one kvd client port (no sockets)."""

    def __init__(self, **kw):
        self.executor = HubExecutor()
        self.factory = RespFactory(self.executor, **kw)
        self.executor.hub = self.factory.pubsub
        self.conns = {}

    def connect(self, name):
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + len(self.conns)))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.conns[name] = (proto, transport)
        return proto, transport

    def send(self, name, *command) -> bytes:
        proto, transport = self.conns[name]
        proto.dataReceived(packed(*command))
        return self.take(name)

    def take(self, name) -> bytes:
        _, transport = self.conns[name]
        data = transport.value()
        transport.clear()
        return data


class Redis:
    """Connections to a real redis-server; what a connection received up to a PING marker it sends after."""

    def __init__(self, port):
        self.port = port
        self.conns = {}
        self.n = 0

    def connect(self, name):
        self.conns[name] = socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def send(self, name, *command) -> bytes:
        self.conns[name].sendall(packed(*command))
        return self.take(name)

    def take(self, name) -> bytes:
        """Everything before the reply to a PING with a fresh marker (Redis runs a connection's commands in order)."""
        self.n += 1
        marker = b"marker%d" % self.n
        conn = self.conns[name]
        conn.sendall(packed("PING", marker))
        buf = b""
        while not buf.endswith(marker + b"\r\n"):
            chunk = conn.recv(65536)
            assert chunk, "redis-server closed the connection"
            buf += chunk
        # The marker's reply: $N marker (RESP2 unsubscribed, RESP3) or *2 pong marker (RESP2 subscribed).
        tail = b"$%d\r\n%s\r\n" % (len(marker), marker)
        buf = buf[:-len(tail)]
        return buf[:-len(b"*2\r\n$4\r\npong\r\n")] if buf.endswith(b"*2\r\n$4\r\npong\r\n") else buf

    def close(self):
        for conn in self.conns.values():
            conn.close()


def kvd_take(k: Kvd, name) -> bytes:
    """kvd's side of Redis.take: the connection's bytes so far (a PING's reply would be the same on both)."""
    return k.take(name)


@pytest.fixture(scope="module")
def redis_port():
    with RedisServer() as server:  # fails (not skips) when redis-server is missing: apt-get install redis-server
        yield server.port


def compare(redis_port, steps, protocols=None):
    """Run ``steps`` ((connection, command...) or ("-", connection) to hear one out) on both; compare each step."""
    r, k = Redis(redis_port), Kvd()
    try:
        names = sorted({step[0] for step in steps if step[0] != "-"} | {step[1] for step in steps if step[0] == "-"})
        for name in names:
            r.connect(name)
            k.connect(name)
        for name, protocol in (protocols or {}).items():
            r.send(name, "HELLO", str(protocol))  # the servers' HELLO maps differ (version, id): not compared
            k.send(name, "HELLO", str(protocol))
        r.send("pub", "CONFIG", "SET", "notify-keyspace-events", "")
        r.send("pub", "FLUSHALL")
        for step in steps:
            if step[0] == "-":
                got_r, got_k = r.take(step[1]), kvd_take(k, step[1])
            else:
                got_r, got_k = r.send(*step), k.send(*step)
            # What else each connection heard meanwhile (a message published by another).
            others = [(n, r.take(n), kvd_take(k, n)) for n in names if n != step[0] and step[0] != "-"]
            assert got_k == got_r, "%r: kvd %r, Redis %r" % (step, got_k, got_r)
            for n, other_r, other_k in others:
                assert other_k == other_r, "%r, heard by %s: kvd %r, Redis %r" % (step, n, other_k, other_r)
    finally:
        r.send("pub", "CONFIG", "SET", "notify-keyspace-events", "")
        r.close()


SUBSCRIBED_MODE = [
    ("sub", "UNSUBSCRIBE"), ("sub", "PUNSUBSCRIBE"),
    ("sub", "SUBSCRIBE", "a", "b", "a"), ("sub", "GET", "x"), ("sub", "CLIENT", "ID"), ("sub", "PING"),
    ("sub", "PING", "hi"), ("sub", "PUBLISH", "a", "m"), ("sub", "FOO"), ("sub", "GET"), ("sub", "PUBSUB", "NUMPAT"),
    ("sub", "SET", "k", "v"), ("sub", "HELLO", "3"), ("sub", "MULTI"), ("sub", "SUBSCRIBE"),
    ("pub", "PUBLISH", "a", "hello"), ("pub", "PUBLISH", "b", "\x00\xff"), ("pub", "PUBLISH", "zz", "nobody"),
    ("sub", "PSUBSCRIBE", "a*", "b?"), ("pub", "PUBLISH", "a", "both"), ("pub", "PUBLISH", "bc", "pattern"),
    ("pub", "PUBSUB", "NUMSUB", "a", "b", "c"), ("pub", "PUBSUB", "NUMSUB"), ("pub", "PUBSUB", "NUMPAT"),
    ("pub", "PUBSUB", "CHANNELS", "a"), ("pub", "PUBSUB", "CHANNELS", "b*"), ("pub", "PUBSUB", "CHANNELS", "x*"),
    ("pub", "PUBSUB", "SHARDCHANNELS"), ("pub", "PUBSUB", "SHARDNUMSUB", "a"),
    ("pub", "PUBSUB", "HELP"), ("pub", "PUBSUB", "FOO"), ("pub", "PUBSUB", "CHANNELS", "a", "b"),
    ("pub", "PUBSUB"), ("pub", "PUBSUB", "NUMPAT", "x"), ("pub", "PUBLISH", "a"), ("pub", "PUBLISH", "a", "b", "c"),
    ("sub", "UNSUBSCRIBE", "z"), ("sub", "PUNSUBSCRIBE", "a*"), ("sub", "PUNSUBSCRIBE", "b?"),
    ("sub", "UNSUBSCRIBE", "b"), ("pub", "PUBLISH", "b", "gone"), ("sub", "UNSUBSCRIBE"), ("sub", "UNSUBSCRIBE"),
    ("sub", "GET", "x"), ("pub", "PUBLISH", "a", "after"), ("pub", "PUBSUB", "NUMPAT"),
    ("sub", "SUBSCRIBE", "c"), ("sub", "QUIT"),
]

SHARD_CHANNELS = [
    ("sub", "SUNSUBSCRIBE"), ("sub", "SSUBSCRIBE", "a", "b"), ("sub", "SUBSCRIBE", "a"), ("sub", "GET", "x"),
    ("pub", "SPUBLISH", "a", "m"), ("pub", "PUBLISH", "a", "n"), ("pub", "SPUBLISH", "zz", "nobody"),
    ("pub", "PUBSUB", "SHARDCHANNELS", "a"), ("pub", "PUBSUB", "SHARDCHANNELS", "x*"),
    ("pub", "PUBSUB", "SHARDNUMSUB", "a", "z"), ("pub", "PUBSUB", "NUMSUB", "a"),
    ("pub", "PUBSUB", "SHARDCHANNELS", "a", "b"), ("sub", "SUNSUBSCRIBE", "a"), ("sub", "UNSUBSCRIBE"),
    ("sub", "GET", "x"), ("sub", "SUNSUBSCRIBE"), ("sub", "SUNSUBSCRIBE"), ("sub", "SSUBSCRIBE"),
    ("sub", "GET", "x"), ("pub", "SPUBLISH", "b", "gone"),
]


def test_subscribed_mode_and_pubsub_match_a_real_redis_server(redis_port):
    compare(redis_port, SUBSCRIBED_MODE[:-1])


def test_shard_channels_match_a_real_redis_server(redis_port):
    compare(redis_port, SHARD_CHANNELS)


def test_resp3_pushes_match_a_real_redis_server(redis_port):
    compare(redis_port, [
        ("sub", "SUBSCRIBE", "a"), ("sub", "PSUBSCRIBE", "a*"), ("sub", "PING"), ("sub", "PING", "x"),
        ("sub", "GET", "x"), ("sub", "SET", "k", "v"), ("pub", "PUBLISH", "a", "hello"), ("pub", "PUBLISH", "ab", "x"),
        ("sub", "PUBLISH", "a", "to myself"), ("sub", "PUBSUB", "NUMSUB", "a"), ("sub", "UNSUBSCRIBE"),
        ("sub", "PUNSUBSCRIBE"), ("sub", "UNSUBSCRIBE"), ("pub", "PUBLISH", "a", "nobody"),
        ("sub", "SSUBSCRIBE", "s"), ("pub", "SPUBLISH", "s", "shard"), ("sub", "SUNSUBSCRIBE"),
    ], protocols={"sub": 3})


KEYSPACE = [
    ("pub", "CONFIG", "SET", "notify-keyspace-events", "KEA"), ("pub", "CONFIG", "GET", "notify-keyspace-events"),
    ("sub", "SUBSCRIBE", "__keyspace@0__:k"), ("sub", "PSUBSCRIBE", "__keyevent@0__:*"),
    ("pub", "SET", "k", "v"), ("pub", "SET", "k", "v", "NX"), ("pub", "EXPIRE", "k", "100"), ("pub", "PERSIST", "k"),
    ("pub", "PERSIST", "k"), ("pub", "SET", "k", "1", "EX", "100"), ("pub", "INCR", "k"),
    ("pub", "INCRBYFLOAT", "k", "1.5"), ("pub", "APPEND", "k", "0"), ("pub", "SETRANGE", "k", "0", "9"),
    ("pub", "SETRANGE", "k", "0", ""), ("pub", "GETEX", "k", "EX", "100"), ("pub", "GETEX", "k", "PERSIST"),
    ("pub", "RENAME", "k", "j"), ("pub", "RENAME", "j", "j"), ("pub", "RENAME", "j", "k"), ("pub", "COPY", "k", "c"),
    ("pub", "MSET", "k", "1", "j", "2"), ("pub", "MSETNX", "k", "1"), ("pub", "MSETNX", "m", "1"),
    ("pub", "DEL", "k", "j", "nokey"), ("pub", "SET", "k", "v"), ("pub", "GETDEL", "k"), ("pub", "GETDEL", "k"),
    ("pub", "HSET", "h", "f", "1", "g", "2"), ("pub", "HSETNX", "h", "f", "1"), ("pub", "HSETNX", "h", "x", "1"),
    ("pub", "HINCRBY", "h", "f", "2"), ("pub", "HINCRBYFLOAT", "h", "f", "0.5"), ("pub", "HDEL", "h", "nope"),
    ("pub", "HDEL", "h", "f", "g", "x"), ("pub", "SET", "k", "v"), ("pub", "EXPIRE", "k", "-1"),
    ("pub", "SETEX", "k", "100", "v"), ("pub", "GETSET", "k", "w"), ("pub", "SETNX", "k", "x"),
    ("pub", "FLUSHALL"), ("pub", "EXPIRE", "nokey", "10"),
    ("pub", "CONFIG", "SET", "notify-keyspace-events", "Eg"), ("pub", "CONFIG", "GET", "notify-keyspace-events"),
    ("pub", "SET", "k", "v"), ("pub", "DEL", "k"),
    ("pub", "CONFIG", "SET", "notify-keyspace-events", "K$"), ("pub", "SET", "k", "v"), ("pub", "DEL", "k"),
    ("pub", "CONFIG", "SET", "notify-keyspace-events", "Kq"), ("pub", "CONFIG", "GET", "notify-keyspace-events"),
    ("pub", "CONFIG", "SET", "notify-keyspace-events", "g$lshzxetdKEmn"),
    ("pub", "CONFIG", "GET", "notify-keyspace-events"),
    ("pub", "CONFIG", "SET", "notify-keyspace-events", ""), ("pub", "SET", "k", "quiet"),
]


def test_keyspace_notifications_match_a_real_redis_server(redis_port):
    compare(redis_port, KEYSPACE)


# ---------------------------------------------------------------- kvd only


def test_publish_answers_this_nodes_receivers_and_messages_keep_log_order():
    k = Kvd()
    k.connect("a")
    k.connect("b")
    k.connect("p")
    k.send("a", "SUBSCRIBE", "ch")
    k.send("b", "PSUBSCRIBE", "c*")
    assert k.send("p", "PUBLISH", "ch", "1") == b":2\r\n"
    assert k.send("p", "PUBLISH", "ch", "2") == b":2\r\n"
    assert k.take("a") == b"".join(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\n%s\r\n" % n for n in (b"1", b"2"))
    assert k.take("b") == b"".join(b"*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$1\r\n%s\r\n" % n
                                   for n in (b"1", b"2"))


def test_a_message_waits_behind_the_replies_made_before_it():
    """
    A push never overtakes a reply already made (a SUBSCRIBE's confirmation waiting behind a write still
    running), and does not wait for replies still running (a PUBLISH's own, as Redis).
    """
    from twisted.internet.defer import Deferred

    from kvd.kv.results import OK

    k = Kvd()
    proto, transport = k.connect("a")
    k.send("a", "HELLO", "3")
    held = Deferred()
    real = k.executor.execute
    k.executor.execute = lambda request, connection: held if isinstance(request, Write) else real(request, connection)
    proto.dataReceived(packed("SET", "k", "v") + packed("SUBSCRIBE", "ch"))
    k.factory.pubsub.publish(b"ch", b"m")
    assert transport.value() == b""
    held.callback(OK)
    assert transport.value() == (b"+OK\r\n>3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
                                 b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nm\r\n")
    transport.clear()
    second = Deferred()
    k.executor.execute = lambda request, connection: second
    proto.dataReceived(packed("SET", "k", "w"))
    k.factory.pubsub.publish(b"ch", b"n")
    assert transport.value() == b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nn\r\n"
    second.callback(OK)
    assert transport.value().endswith(b"+OK\r\n")


def test_expired_event_reaches_subscribers():
    k = Kvd()
    k.connect("s")
    k.connect("p")
    k.send("p", "CONFIG", "SET", "notify-keyspace-events", "Ex")
    k.send("s", "SUBSCRIBE", "__keyevent@0__:expired")
    k.send("p", "SET", "k", "v", "PXAT", "1")  # the stand-in's log time is 1_000_000 ms: already past
    assert k.take("s") == b"*3\r\n$7\r\nmessage\r\n$22\r\n__keyevent@0__:expired\r\n$1\r\nk\r\n"


def test_a_closed_connection_leaves_its_channels():
    k = Kvd()
    proto, _ = k.connect("s")
    k.send("s", "SUBSCRIBE", "a", "b")
    k.send("s", "PSUBSCRIBE", "x*")
    hub = k.factory.pubsub
    assert hub.numsub([b"a", b"b"]) == [b"a", 1, b"b", 1] and hub.numpat() == 1
    proto.connectionLost(None)
    assert hub.channels == {} and hub.patterns == {}
    assert hub.publish(b"a", b"m") == 0


def test_client_info_shows_subscriptions():
    k = Kvd()
    k.connect("s")
    k.send("s", "HELLO", "3")
    k.send("s", "SUBSCRIBE", "a", "b")
    k.send("s", "PSUBSCRIBE", "x*")
    info = k.send("s", "CLIENT", "INFO")
    assert b" flags=P " in info and b" sub=2 psub=1 " in info


def test_a_costly_pattern_is_refused_and_subscribes_nothing():
    k = Kvd()
    k.connect("s")
    reply = k.send("s", "PSUBSCRIBE", "ok*", "[" + "*a" * 20000)
    assert reply.startswith(b"-ERR ") and b"nothing was subscribed" in reply
    assert k.factory.pubsub.numpat() == 0
    assert k.send("s", "GET", "x") == b"$-1\r\n"  # not in subscribed mode


def test_a_subscriber_that_does_not_read_is_disconnected_past_the_hard_limit():
    k = Kvd(pubsub_limit=PubSubLimit(hard=10_000, soft=0))
    proto, transport = k.connect("s")
    k.send("s", "SUBSCRIBE", "ch")
    proto.pauseProducing()  # the transport's buffer is full: the client is not reading
    for i in range(200):  # bounded: 200 messages of 100 bytes go past 10 000 bytes
        k.factory.pubsub.publish(b"ch", b"x" * 100)
        if transport.disconnecting:
            break
    assert transport.disconnecting and i < 100
    assert k.factory.pubsub.publish(b"ch", b"after") == 1  # still registered until connectionLost...
    proto.connectionLost(None)
    assert k.factory.pubsub.publish(b"ch", b"after") == 0


def test_a_subscriber_over_the_soft_limit_for_long_is_disconnected():
    k = Kvd(pubsub_limit=PubSubLimit(hard=0, soft=1_000, soft_seconds=60))
    now = [1000.0]
    k.factory.now = lambda: now[0]
    proto, transport = k.connect("s")
    k.send("s", "SUBSCRIBE", "ch")
    proto.pauseProducing()
    for _ in range(20):
        k.factory.pubsub.publish(b"ch", b"x" * 100)
    assert not transport.disconnecting  # over soft, but not for 60 s yet
    now[0] += 61
    k.factory.pubsub.publish(b"ch", b"y")
    assert transport.disconnecting


def test_config_set_refuses_other_parameters_and_bad_flags():
    k = Kvd()
    k.connect("p")
    assert k.send("p", "CONFIG", "SET", "maxmemory", "1").startswith(b"-ERR CONFIG SET is not supported")
    assert k.send("p", "CONFIG", "SET", "notify-keyspace-events", "Z") == (
        b"-ERR CONFIG SET failed (possibly related to argument 'notify-keyspace-events') - Invalid event class "
        b"character. Use 'Ag$lshzxeKEtmdn'.\r\n")
    assert k.factory.pubsub.flags == 0


def test_subscribe_inside_multi_is_refused_and_aborts_exec():
    k = Kvd()
    k.connect("s")
    assert k.send("s", "MULTI") == b"+OK\r\n"
    assert k.send("s", "SUBSCRIBE", "a") == b"-ERR Command not allowed inside a transaction\r\n"
    assert k.send("s", "EXEC").startswith(b"-EXECABORT")
    assert k.factory.pubsub.channels == {}


def test_publish_inside_multi_and_scripts_reaches_subscribers():
    k = Kvd()
    k.connect("s")
    k.connect("p")
    k.send("s", "SUBSCRIBE", "ch")
    k.send("p", "MULTI")
    k.send("p", "PUBLISH", "ch", "in multi")
    k.send("p", "EXEC")
    k.send("p", "EVAL", "return redis.call('publish', 'ch', 'in script')", "0")
    assert k.take("s") == (b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$8\r\nin multi\r\n"
                           b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$9\r\nin script\r\n")


def test_the_connection_push_api_streams_in_either_protocol_and_tells_the_end():
    """What KVD.WATCH-like streams use: connection.push (RESP3 push, RESP2 array) and connection.on_lost."""
    k = Kvd()
    proto, transport = k.connect("a")
    connection = proto.connection
    connection.push([b"watch", b"k", 7])
    assert k.take("a") == b"*3\r\n$5\r\nwatch\r\n$1\r\nk\r\n:7\r\n"
    k.send("a", "HELLO", "3")
    connection.push([b"watch", b"k", 8])
    assert k.take("a") == b">3\r\n$5\r\nwatch\r\n$1\r\nk\r\n:8\r\n"
    ended = []
    connection.on_lost.append(lambda: ended.append(True))
    proto.connectionLost(None)
    assert ended == [True]
    connection.push([b"watch", b"k", 9])  # after the end: dropped, no error
    assert k.take("a") == b""


def test_info_counts_channels_and_patterns():
    from kvd.executor import ClientExecutor
    from kvd.resp.pubsub import PubSubHub

    class View:
        config = None

        def stats(self):
            return {}

    class Node:
        view = View()
        clock = type("Clock", (), {"seconds": staticmethod(lambda: 0.0)})

    hub = PubSubHub()
    executor = ClientExecutor(Node(), pubsub=hub)
    subs = pubsub.Subscriptions(hub, lambda items: None)
    subs.subscribe((b"a", b"b"))
    subs.psubscribe((b"x*",))
    subs.ssubscribe((b"s",))
    stats = dict(executor.server_info._stats({}))
    assert (stats["pubsub_channels"], stats["pubsub_patterns"], stats["pubsubshard_channels"]) == (2, 1, 1)


def test_client_list_type_pubsub_lists_the_subscribed_connections():
    k = Kvd()
    k.connect("s")
    k.connect("p")
    k.send("s", "SSUBSCRIBE", "a")
    pubsub_list = k.send("p", "CLIENT", "LIST", "TYPE", "pubsub")
    normal_list = k.send("p", "CLIENT", "LIST", "TYPE", "normal")
    assert pubsub_list.count(b"id=") == 1 and b"flags=P" in pubsub_list and b"ssub=1" in pubsub_list
    assert normal_list.count(b"id=") == 1 and b"flags=N" in normal_list
