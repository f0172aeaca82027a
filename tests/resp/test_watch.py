"""
KVD.WATCH at the client port (kvd.resp.watch): the reply then the pushes, FROMREV replays and waits, compacted,
watch mode, UNWATCH, a snapshot's cancel, the output limit, both protocols.  Without sockets: StringTransports
on one factory whose executor applies writes to a KVMachine and feeds the factory's WatchHub, as the node does.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.kv.commands import Envelope, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.kv.watch import WatchHistory, changes_of
from kvd.resp.commands import Read, Write
from kvd.resp.errors import RespError
from kvd.resp.protocol import RespFactory
from kvd.resp.pubsub import PubSubLimit
from kvd.resp.watch import WatchHub
from tests.resp.test_protocol import packed


class FeedingExecutor:
    """A one-node stand-in: writes applied to a KVMachine, each revision's changes fed to the port's watches."""

    def __init__(self):
        self.machine = KVMachine()
        self.seq = 0
        self.watches = None  # the factory's

    def execute(self, request, connection):
        if isinstance(request, Write):
            self.seq += 1
            before = self.machine.view().revision
            env = Envelope(b"test", self.seq, self.seq, 1_000_000, request.command)
            result = self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))
            view = self.machine.view()
            if view.revision != before:
                self.watches.applied(view.revision, changes_of(self.machine.events, view.ks, view.revision))
            return result
        if isinstance(request, Read):
            return self.machine.read(request.op)
        raise RespError("ERR", "unsupported %s" % request.name)


class Port:
    def __init__(self, history=None, **kw):
        self.executor = FeedingExecutor()
        self.factory = RespFactory(self.executor, watches=WatchHub(history if history is not None else WatchHistory()), **kw)
        self.executor.watches = self.factory.watches
        self.conns = {}

    def connect(self, name, resp3=False):
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + len(self.conns)))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.conns[name] = (proto, transport)
        if resp3:
            self.send(name, "HELLO", "3")
        return proto, transport

    def send(self, name, *command):
        """The replies and pushes the command made, decoded."""
        proto, transport = self.conns[name]
        proto.dataReceived(packed(*command))
        return self.take(name)

    def take(self, name):
        _, transport = self.conns[name]
        data = transport.value()
        transport.clear()
        return _decode(data)


def _decode(data: bytes):
    """RESP2/RESP3 replies and pushes as Python values: a tiny decoder for what these tests see."""
    out, pos = [], 0

    def one(pos):
        kind, end = data[pos:pos + 1], data.index(b"\r\n", pos)
        head = data[pos + 1:end]
        pos = end + 2
        if kind in (b"+",):
            return head, pos
        if kind == b"-":
            return ("ERR!", head), pos
        if kind == b":":
            return int(head), pos
        if kind == b"_":
            return None, pos
        if kind == b"$":
            n = int(head)
            if n < 0:
                return None, pos
            return data[pos:pos + n], pos + n + 2
        if kind in (b"*", b">"):
            n = int(head)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = one(pos)
                items.append(item)
            return (items if kind == b"*" else ("push", items)), pos
        if kind == b"%":
            items = []
            for _ in range(2 * int(head)):
                item, pos = one(pos)
                items.append(item)
            return ("map", items), pos
        raise AssertionError("unexpected RESP %r" % data[pos - 1:])

    while pos < len(data):
        value, pos = one(pos)
        out.append(value)
    return out


def test_a_watch_answers_its_start_then_pushes_each_change_under_its_prefix_in_order():
    p = Port()
    p.connect("w")
    p.connect("c")
    assert p.send("w", "KVD.WATCH", "app:") == [[b"watching", 1]]
    p.send("c", "SET", "app:a", "1")
    p.send("c", "SET", "other", "x")  # revision 2: not under the prefix
    p.send("c", "MSET", "app:b", "2", "app:a", "3")
    p.send("c", "DEL", "app:b")
    p.send("c", "HSET", "app:h", "f", "v")
    assert p.take("w") == [[b"watch", 1, [[b"put", b"app:a", b"1"]]],
                           [b"watch", 3, [[b"put", b"app:b", b"2"], [b"put", b"app:a", b"3"]]],
                           [b"watch", 4, [[b"del", b"app:b", None]]], [b"watch", 5, [[b"hash", b"app:h", None]]]]
    p.send("c", "FLUSHALL")
    assert p.take("w") == [[b"watch", 6, [[b"flush", b"", None]]]]


def test_fromrev_replays_the_history_then_goes_live_and_a_future_revision_waits():
    p = Port()
    p.connect("c")
    for i in range(1, 5):
        p.send("c", "SET", "k%d" % i, "v%d" % i)
    p.connect("w")
    assert p.send("w", "KVD.WATCH", "", "FROMREV", "3") == [
        [b"watching", 3], [b"watch", 3, [[b"put", b"k3", b"v3"]]], [b"watch", 4, [[b"put", b"k4", b"v4"]]]]
    p.send("c", "SET", "k5", "v5")
    assert p.take("w") == [[b"watch", 5, [[b"put", b"k5", b"v5"]]]]
    p.connect("future")
    assert p.send("future", "KVD.WATCH", "", "FROMREV", "7") == [[b"watching", 7]]
    p.send("c", "SET", "k6", "v6")
    assert p.take("future") == []
    p.send("c", "SET", "k7", "v7")
    assert p.take("future") == [[b"watch", 7, [[b"put", b"k7", b"v7"]]]]


def test_a_compacted_revision_answers_an_error_that_says_so_and_opens_no_watch():
    p = Port(history=WatchHistory(max_changes=2))
    p.connect("c")
    for i in range(1, 6):
        p.send("c", "SET", "k", "v%d" % i)
    p.connect("w")
    assert p.send("w", "KVD.WATCH", "", "FROMREV", "2") == [
        ("ERR!", b"ERR compacted: revision 2 is compacted, oldest available is 4")]
    assert len(p.factory.watches) == 0
    assert p.send("w", "GET", "k") == [b"v5"]  # not in watch mode
    assert p.send("w", "KVD.WATCH", "", "FROMREV", "4")[:2] == [[b"watching", 4], [b"watch", 4, [[b"put", b"k", b"v4"]]]]


def test_bad_arguments_answer_errors_and_the_connection_goes_on():
    p = Port()
    p.connect("w")
    for args in [("KVD.WATCH", "p", "FROMREV"), ("KVD.WATCH", "p", "FROM", "1"), ("KVD.WATCH", "p", "FROMREV", "0"),
                 ("KVD.WATCH", "p", "FROMREV", "-1"), ("KVD.WATCH", "p", "FROMREV", "x"),
                 ("KVD.WATCH", "p", "FROMREV", "99999999999999999999"), ("KVD.WATCH",), ("KVD.UNWATCH", "x")]:
        reply = p.send("w", *args)
        assert len(reply) == 1 and reply[0][0] == "ERR!", (args, reply)
    assert p.send("w", "PING") == [b"PONG"]


def test_watch_mode_allows_only_unwatch_ping_quit_and_unwatch_ends_it():
    p = Port()
    p.connect("w")
    p.connect("c")
    p.send("w", "KVD.WATCH", "k")
    reply = p.send("w", "GET", "k")
    assert reply[0][0] == "ERR!" and b"only KVD.UNWATCH / PING / QUIT" in reply[0][1]
    assert p.send("w", "KVD.WATCH", "j")[0][1].startswith(b"ERR this connection is watching already")
    assert p.send("w", "PING") == [b"PONG"]
    assert p.send("w", "KVD.UNWATCH") == [[b"unwatched", b"k"]]
    assert len(p.factory.watches) == 0
    p.send("c", "SET", "k", "v")
    assert p.take("w") == []
    assert p.send("w", "GET", "k") == [b"v"]
    assert p.send("w", "KVD.UNWATCH") == [[b"unwatched", None]]


def test_inside_multi_kvd_watch_is_refused():
    p = Port()
    p.connect("w")
    p.send("w", "MULTI")
    assert p.send("w", "KVD.WATCH", "k")[0][0] == "ERR!"
    assert p.send("w", "EXEC")[0][0] == "ERR!"  # EXECABORT
    assert len(p.factory.watches) == 0


def test_resp3_gets_pushes_and_a_reset_cancels_every_watch():
    p = Port()
    p.connect("w", resp3=True)
    p.connect("c")
    assert p.send("w", "KVD.WATCH", "") == [[b"watching", 1]]
    p.send("c", "SET", "k", "v")
    assert p.take("w") == [("push", [b"watch", 1, [[b"put", b"k", b"v"]]])]
    p.factory.watches.reset(40, "a snapshot was installed at index 90: resume with FROMREV")
    assert p.take("w") == [("push", [b"watch-cancelled", b"",
                                     b"a snapshot was installed at index 90: resume with FROMREV"])]
    assert len(p.factory.watches) == 0 and p.factory.watches.history.oldest == 41
    assert dict(p.factory.watches.info()) == {  # INFO stats' fields (kvd.server_info)
        "kvd_watches": 0, "kvd_watches_cancelled": 1, "kvd_watch_history_revision": 40,
        "kvd_watch_history_oldest": 41, "kvd_watch_history_changes": 0, "kvd_watch_history_bytes": 0}
    assert p.send("w", "PING") == [b"PONG"]  # no longer watching: anything runs, a new watch may start
    assert p.send("w", "KVD.WATCH", "", "FROMREV", "1") == [
        ("ERR!", b"ERR compacted: revision 1 is compacted, oldest available is 41")]


def test_a_closed_connection_ends_its_watch():
    p = Port()
    proto, _ = p.connect("w")
    p.send("w", "KVD.WATCH", "")
    assert len(p.factory.watches) == 1
    proto.connectionLost(None)
    assert len(p.factory.watches) == 0


def test_a_watcher_that_does_not_read_is_disconnected_past_the_hard_limit():
    p = Port(pubsub_limit=PubSubLimit(hard=10_000, soft=0))
    proto, transport = p.connect("w")
    p.connect("c")
    p.send("w", "KVD.WATCH", "")
    proto.pauseProducing()  # the client is not reading
    for i in range(200):  # bounded: 200 changes of 100 bytes go past 10 000 bytes
        p.send("c", "SET", "k", "x" * 100)
        if transport.disconnecting:
            break
    assert transport.disconnecting and i < 100
    proto.connectionLost(None)
    assert len(p.factory.watches) == 0


def test_a_watch_needs_only_the_read_role():
    from kvd.resp.commands import Admin
    from kvd.resp.connection import READONLY, required_role

    assert required_role(Admin("kvd.watch", (b"",))) == READONLY
    assert required_role(Admin("kvd.unwatch", ())) == READONLY
    assert required_role(Admin("kvd.members", ())) != READONLY


def test_a_script_cannot_watch():
    p = Port()
    p.connect("c")
    reply = p.send("c", "EVAL", "return redis.call('KVD.WATCH', '')", "0")
    assert reply[0][0] == "ERR!" and b"script" in reply[0][1].lower(), reply
    assert len(p.factory.watches) == 0
