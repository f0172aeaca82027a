"""Tests for kvd.resp.protocol, kvd.resp.connection and kvd.resp.encoder, over StringTransport (no sockets)."""

import gc

import pytest
from redis._parsers.encoders import Encoder
from redis.connection import Connection, _RESP2Parser
from redis.exceptions import ResponseError
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from kvd.kv.commands import Envelope, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.kv.results import OK, KVError
from kvd.resp.commands import COMMANDS, Admin, Read, Write
from kvd.resp.encoder import PONG, SimpleString, encode, encode_error
from kvd.resp.errors import RespError
from kvd.resp.protocol import RespFactory

# ----------------------------------------------------------------- helpers


class ScriptedExecutor:
    """Records every request; answers with a Deferred the test fires, or via ``handler``."""

    def __init__(self, handler=None):
        self.handler = handler
        self.calls = []
        self.deferreds = []

    def execute(self, request, connection):
        self.calls.append((request, connection))
        if self.handler is not None:
            return self.handler(request, connection)
        d = Deferred()
        self.deferreds.append(d)
        return d


class MachineExecutor:
    """A single-node stand-in for the real node: writes applied straight to a KVMachine."""

    def __init__(self):
        self.machine = KVMachine()
        self.seq = 0

    def execute(self, request, connection):
        if isinstance(request, Write):
            self.seq += 1
            env = Envelope(b"test", self.seq, self.seq, 0, request.command)
            return self.machine.apply(self.machine.applied_index + 1, encode_envelope(env))
        if isinstance(request, Read):
            return self.machine.read(request.op)
        if request.name == "info":
            return "# Server\r\nkvd_version:test\r\n"
        if request.name == "role":
            return [b"master", self.machine.applied_index, []]
        raise RespError("ERR", "unsupported %s" % request.name)


def connect(executor, **kw):
    factory = RespFactory(executor, **kw)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def packed(*args):
    """The bytes redis-py itself sends for a command."""
    return b"".join(Connection().pack_command(*args))


class _Socket:
    def __init__(self, data):
        self.data = data

    def recv(self, n):
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def settimeout(self, timeout):
        pass


class _ConnectionStub:
    def __init__(self, data):
        self._sock = _Socket(data)
        self.socket_timeout = None
        self.encoder = Encoder("utf-8", "strict", False)


def redis_py_replies(data, count):
    """Decode ``count`` replies with redis-py's own RESP2 parser."""
    parser = _RESP2Parser(socket_read_size=65536)
    parser.on_connect(_ConnectionStub(data))
    replies = [parser.read_response() for _ in range(count)]
    assert parser._buffer.unread_bytes() == 0 and parser._sock.data == b""
    return replies


@pytest.fixture
def logged():
    events = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# ----------------------------------------------------------------- encoder


@pytest.mark.parametrize(
    "value,wire",
    [
        (OK, b"+OK\r\n"),
        (PONG, b"+PONG\r\n"),
        (b"hi", b"$2\r\nhi\r\n"),
        (b"", b"$0\r\n\r\n"),
        (b"a\r\nb", b"$4\r\na\r\nb\r\n"),
        (bytearray(b"x"), b"$1\r\nx\r\n"),
        ("é", b"$2\r\n\xc3\xa9\r\n"),
        (None, b"$-1\r\n"),
        (0, b":0\r\n"),
        (-42, b":-42\r\n"),
        (True, b":1\r\n"),
        ([], b"*0\r\n"),
        ([b"a", None, 1, [b"b", []]], b"*4\r\n$1\r\na\r\n$-1\r\n:1\r\n*2\r\n$1\r\nb\r\n*0\r\n"),
        ((b"t",), b"*1\r\n$1\r\nt\r\n"),
        (KVError("ERR value is not an integer or out of range"), b"-ERR value is not an integer or out of range\r\n"),
        (RespError("NOLEADER", "no leader"), b"-NOLEADER no leader\r\n"),
    ],
)
def test_encoder(value, wire):
    """Every reply shape encodes to the exact RESP2 bytes."""
    assert encode(value) == wire


def test_encoder_keeps_lines_single():
    """CR and LF inside errors and simple strings become spaces so a reply cannot break framing."""
    assert encode(RespError("ERR", "a\r\nb")) == b"-ERR a  b\r\n"
    assert encode(SimpleString("x\ny")) == b"+x y\r\n"
    assert encode_error("ERR", "bad\rthing") == b"-ERR bad thing\r\n"


def test_encoder_restores_raw_client_bytes():
    """Bytes carried in error text via surrogateescape go back to the client unchanged."""
    assert encode(RespError("ERR", b"'\xff'".decode("utf-8", "surrogateescape"))) == b"-ERR '\xff'\r\n"


def test_encoder_refuses_unknown_types():
    """A value that has no RESP form is a TypeError, not garbage on the wire."""
    with pytest.raises(TypeError):
        encode(object())
    with pytest.raises(TypeError):
        encode([1.5])


def test_encoder_output_parses_with_redis_py():
    """redis-py's own parser reads back what we encode, including nesting, nil and errors."""
    data = encode([b"a", None, 7, [b"x\r\ny"]]) + encode(OK) + encode(KVError("WRONGTYPE nope"))
    first, second, third = redis_py_replies(data, 3)
    assert first == [b"a", None, 7, [b"x\r\ny"]]
    assert second == b"OK"
    assert isinstance(third, ResponseError) and "WRONGTYPE nope" in str(third)


# ------------------------------------------------------------- basic flow


def test_registers_as_streaming_producer():
    """The protocol is the transport's streaming producer, so the transport can pause it."""
    proto, transport = connect(ScriptedExecutor())
    assert transport.producer is proto and transport.streaming is True


def test_inline_and_multibulk_requests():
    """Both request syntaxes are served on the same connection."""
    proto, transport = connect(ScriptedExecutor())
    proto.dataReceived(b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING \"a b\"\n")
    assert transport.value() == b"+PONG\r\n$2\r\nhi\r\n$3\r\na b\r\n"


def test_round_trip_with_redis_py_against_a_machine():
    """Commands packed by redis-py, run on a real KVMachine, decode with redis-py to the expected values."""
    proto, transport = connect(MachineExecutor())
    commands = [
        ("SET", "k", "v"),
        ("GET", "k"),
        ("SET", "k", "w", "IFEQ", "nope", "GET"),
        ("SET", "k", "w", "IFEQ", "v"),
        ("GET", "k"),
        ("INCR", "n"),
        ("INCRBY", "n", 41),
        ("DECR", "n"),
        ("MSET", "a", "1", "b", b"\x00\xff"),
        ("MGET", "a", "b", "zz"),
        ("EXISTS", "a", "a", "zz"),
        ("KEYS", "*"),
        ("DBSIZE",),
        ("INCR", "k"),
        ("DEL", "a", "b", "zz"),
        ("SCAN", 0, "COUNT", 1000),
        ("SET", "k", "x", "NX"),
        ("GETX",),
        ("INFO",),
        ("SELECT", 1),
    ]
    proto.dataReceived(b"".join(packed(*c) for c in commands))
    replies = redis_py_replies(transport.value(), len(commands))
    assert replies[:13] == [
        b"OK", b"v", b"v", b"OK", b"w", 1, 42, 41, b"OK", [b"1", b"\x00\xff", None], 2,
        [b"a", b"b", b"k", b"n"], 4,
    ]
    assert isinstance(replies[13], ResponseError) and "not an integer" in str(replies[13])
    assert replies[14] == 2
    assert replies[15][0] == b"0" and sorted(replies[15][1]) == [b"k", b"n"]
    assert replies[16] is None
    assert isinstance(replies[17], ResponseError) and "unknown command 'GETX'" in str(replies[17])
    assert replies[18].startswith(b"# Server")
    assert str(replies[19]) == "DB index is out of range"


def test_requests_reach_the_executor_with_the_session():
    """Reads, writes and node-level admin commands go to the executor with this connection's connection."""
    executor = ScriptedExecutor(lambda request, connection: OK)
    proto, transport = connect(executor)
    proto.dataReceived(b"GET k\r\nSET k v\r\nINFO server\r\nROLE\r\nKVD.MEMBERS\r\n")
    assert [type(r).__name__ for r, _ in executor.calls] == ["Read", "Write", "Admin", "Admin", "Admin"]
    assert [r.name for r, _ in executor.calls[2:]] == ["info", "role", "kvd.members"]
    assert all(s is proto.connection for _, s in executor.calls)
    assert transport.value() == b"+OK\r\n" * 5


def test_local_commands_do_not_reach_the_executor():
    """Connection-level commands are answered by the protocol itself."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"PING\r\nECHO x\r\nSELECT 0\r\nREADONLY\r\nCLIENT ID\r\nCOMMAND COUNT\r\nCOMMAND DOCS nosuch\r\n")
    assert executor.calls == []
    assert transport.value() == (
        b"+PONG\r\n$1\r\nx\r\n+OK\r\n+OK\r\n:%d\r\n:%d\r\n*0\r\n" % (proto.connection.id, len(COMMANDS)))


# --------------------------------------------------------------- connections


def test_readonly_and_readwrite_toggle_the_session():
    """READONLY marks the connection so the executor may serve follower reads; READWRITE clears it."""
    seen = []
    executor = ScriptedExecutor(lambda request, connection: seen.append(connection.readonly) or None)
    proto, transport = connect(executor)
    proto.dataReceived(b"GET k\r\nREADONLY\r\nGET k\r\nREADWRITE\r\nGET k\r\n")
    assert seen == [False, True, False]


def test_client_name_and_info():
    """CLIENT SETNAME/GETNAME round-trip and CLIENT INFO describes the connection."""
    proto, transport = connect(ScriptedExecutor())
    proto.dataReceived(b"CLIENT GETNAME\r\nCLIENT SETNAME app-1\r\nCLIENT GETNAME\r\nCLIENT INFO\r\n")
    replies = redis_py_replies(transport.value(), 4)
    assert replies[:3] == [None, b"OK", b"app-1"]
    assert b"name=app-1" in replies[3] and b"addr=192.168.1.1:54321" in replies[3]
    assert replies[3].startswith(b"id=%d " % proto.connection.id)


def test_each_connection_gets_its_own_session_id():
    """Client ids are unique per factory."""
    factory = RespFactory(ScriptedExecutor())
    a = factory.buildProtocol(None)
    b = factory.buildProtocol(None)
    assert a.connection.id != b.connection.id


def test_redis_py_connect_handshake():
    """The CLIENT SETINFO calls redis-py makes on connect get the answers it expects; an unknown HELLO version is refused."""
    proto, transport = connect(ScriptedExecutor())
    proto.dataReceived(
        packed("CLIENT", "SETINFO", "LIB-NAME", "redis-py")
        + packed("CLIENT", "SETINFO", "LIB-VER", "8.1.0")
        + packed("HELLO", 4)
    )
    first, second, third = redis_py_replies(transport.value(), 3)
    assert first == second == b"OK"
    assert isinstance(third, ResponseError) and "protocol version is not supported" in str(third)
    assert transport.value().splitlines()[2].startswith(b"-NOPROTO ")
    assert proto.connection.lib_name == b"redis-py" and proto.connection.lib_ver == b"8.1.0"
    assert proto.connection.protocol == 2


def test_hello_3_switches_to_resp3():
    """HELLO 3 answers a RESP3 map and later nils are RESP3 nulls; HELLO 2 answers a flat array."""
    proto, transport = connect(ScriptedExecutor())
    proto.dataReceived(packed("HELLO", 2))
    assert transport.value().startswith(b"*14\r\n$6\r\nserver\r\n")
    transport.clear()
    proto.dataReceived(packed("HELLO", 3, "SETNAME", "me"))
    reply = transport.value()
    assert reply.startswith(b"%7\r\n$6\r\nserver\r\n") and b"$5\r\nproto\r\n:3\r\n" in reply
    assert proto.connection.protocol == 3 and proto.connection.name == b"me"
    transport.clear()
    proto.dataReceived(packed("CLIENT", "GETNAME") + packed("CLIENT", "SETNAME", "") + packed("CLIENT", "GETNAME"))
    assert transport.value() == b"$2\r\nme\r\n+OK\r\n_\r\n"


def test_command_info_reply():
    """COMMAND INFO answers redis-cli-compatible entries and nil for unknown names."""
    proto, transport = connect(ScriptedExecutor())
    proto.dataReceived(packed("COMMAND", "INFO", "get", "nope"))
    (reply,) = redis_py_replies(transport.value(), 1)
    assert reply[0][:2] == [b"get", 2] and reply[1] is None


# ------------------------------------------------------------- pipelining


def test_replies_stay_in_order_when_deferreds_fire_out_of_order():
    """Pipelined replies are written in request order whatever order the executor finishes in."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"GET a\r\nGET b\r\nPING\r\nGET c\r\n")
    d_a, d_b, d_c = executor.deferreds
    d_c.callback(b"C")
    d_b.callback(b"B")
    assert transport.value() == b""
    d_a.callback(b"A")
    assert transport.value() == b"$1\r\nA\r\n$1\r\nB\r\n+PONG\r\n$1\r\nC\r\n"
    assert proto.inflight == 0


def test_partial_progress_is_flushed_as_soon_as_possible():
    """Once the head of the pipeline is answered, its reply goes out without waiting for later ones."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"GET a\r\nGET b\r\n")
    executor.deferreds[0].callback(None)
    assert transport.value() == b"$-1\r\n"


def test_already_fired_deferreds_in_a_long_pipeline():
    """Thousands of synchronously fired Deferreds are handled iteratively, in order, without recursion."""
    proto, transport = connect(ScriptedExecutor(lambda request, connection: succeed(request.op.key)), max_inflight=10)
    proto.dataReceived(b"".join(b"GET %d\r\n" % i for i in range(5000)))
    assert transport.value() == b"".join(b"$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(5000))


# ----------------------------------------------------------------- errors


def test_resp_errors_from_the_executor():
    """RespError raised or failed by the executor is sent as -PREFIX message, connection kept."""
    def handler(request, connection):
        if request.op.key == b"sync":
            raise RespError("NOLEADER", "no leader elected yet")
        return fail(RespError("TRYAGAIN", "leadership changed"))

    proto, transport = connect(ScriptedExecutor(handler))
    proto.dataReceived(b"GET sync\r\nGET async\r\n")
    assert transport.value() == b"-NOLEADER no leader elected yet\r\n-TRYAGAIN leadership changed\r\n"
    assert not transport.disconnecting


def test_kv_errors_are_sent_as_errors():
    """A KVError result from the machine is an error reply, not a bulk string."""
    proto, transport = connect(ScriptedExecutor(lambda r, s: KVError("ERR value is not an integer or out of range")))
    proto.dataReceived(b"INCR k\r\n")
    assert transport.value() == b"-ERR value is not an integer or out of range\r\n"


@pytest.mark.parametrize("mode", ["raise", "fail", "unencodable"])
def test_unexpected_errors_become_internal_error_and_are_logged(mode, logged):
    """Executor bugs give -ERR internal error, are logged with the traceback, and the connection lives on."""
    def handler(request, connection):
        if request.name == "ping":
            return None
        if mode == "raise":
            raise ZeroDivisionError("boom")
        if mode == "fail":
            return fail(ZeroDivisionError("boom"))
        return {"not": "encodable"}

    proto, transport = connect(ScriptedExecutor(handler))
    proto.dataReceived(b"INFO\r\nPING\r\n")
    assert transport.value() == b"-ERR internal error\r\n+PONG\r\n"
    assert not transport.disconnecting
    logged_failures = [e for e in logged if "log_failure" in e]
    assert len(logged_failures) == 1
    expected = TypeError if mode == "unencodable" else ZeroDivisionError
    assert logged_failures[0]["log_failure"].check(expected)
    assert logged_failures[0]["request"] == Admin("info")


@pytest.mark.parametrize(
    "data,reply",
    [
        (b"*abc\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*-5\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$-3\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$x\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$99999999999999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\n$600000000\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*1\r\nGET\r\n", b"-ERR Protocol error: expected '$', got 'G'\r\n"),
        (b"*9999999\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"x" * 70000, b"-ERR Protocol error: too big inline request\r\n"),
        (b"\x16\x03\x01\x00\xa5\x01", b"-ERR Protocol error: binary data in inline request\r\n"),
    ],
)
def test_fatal_protocol_errors_reply_then_close(data, reply):
    """Unrecoverable input gets Redis's -ERR Protocol error text and the connection is closed."""
    executor = ScriptedExecutor(lambda r, s: OK)
    proto, transport = connect(executor, max_inflight=10)
    proto._parser.max_args = 1000  # so that *9999999 is too many
    proto.dataReceived(b"PING\r\n" + data)
    proto.dataReceived(b"PING\r\n")  # after the error nothing more is read
    assert transport.value() == b"+PONG\r\n" + reply
    assert transport.disconnecting
    assert transport.producer is None  # unregistered, so loseConnection is not held up
    assert executor.calls == []


def test_unbalanced_quotes_reply_and_continue():
    """An unbalanced inline line is an error, but the connection keeps serving the next lines."""
    proto, transport = connect(ScriptedExecutor())
    proto.dataReceived(b'SET k "v\r\nPING\r\n')
    assert transport.value() == b"-ERR Protocol error: unbalanced quotes in request\r\n+PONG\r\n"
    assert not transport.disconnecting


def test_fatal_error_waits_for_earlier_replies():
    """A fatal error queued behind a pending request closes only after that request's reply is sent."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"GET k\r\n*x\r\n")
    assert transport.value() == b"" and not transport.disconnecting
    executor.deferreds[0].callback(b"v")
    assert transport.value() == b"$1\r\nv\r\n-ERR Protocol error: invalid multibulk length\r\n"
    assert transport.disconnecting


def test_command_errors_do_not_reach_the_executor():
    """Arity and unknown-command errors are answered locally with Redis's texts."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"GET\r\nfoo bar\r\n")
    assert transport.value() == (b"-ERR wrong number of arguments for 'get' command\r\n"
                                 b"-ERR unknown command 'foo', with args beginning with: 'bar' \r\n")
    assert executor.calls == []


# ------------------------------------------------------------------- QUIT


def test_quit_replies_ok_then_closes_and_ignores_the_rest():
    """QUIT answers +OK after earlier replies, closes, and later pipelined requests are never run."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"GET a\r\nQUIT\r\nGET b\r\n")
    assert len(executor.calls) == 1 and not transport.disconnecting
    executor.deferreds[0].callback(b"A")
    assert transport.value() == b"$1\r\nA\r\n+OK\r\n"
    assert transport.disconnecting and transport.producer is None
    proto.dataReceived(b"GET c\r\n")
    assert len(executor.calls) == 1


# -------------------------------------------------------- connection loss


def test_results_after_connection_lost_are_dropped_safely(logged):
    """Deferreds firing after the client left write nothing, raise nothing, and leave no unhandled errors."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"GET a\r\nGET b\r\nGET c\r\n")
    proto.connectionLost(None)
    executor.deferreds[1].callback(b"B")
    executor.deferreds[0].errback(RespError("TIMEOUT", "late"))
    executor.deferreds[2].callback(b"C")
    proto.dataReceived(b"PING\r\n")
    assert transport.value() == b""
    del executor.deferreds[:]
    gc.collect()
    assert not [e for e in logged if "Unhandled" in str(e.get("log_format", ""))]


def test_bugs_after_connection_lost_are_still_logged(logged):
    """An unexpected executor failure is logged even when nobody is left to receive the reply."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(b"GET a\r\n")
    proto.connectionLost(None)
    executor.deferreds[0].errback(KeyError("bug"))
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [KeyError]


# ----------------------------------------------------------- backpressure


def test_inflight_limit_pauses_reading_and_resumes_when_drained():
    """At most max_inflight requests run at once; reading stops at the limit and resumes at half."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor, max_inflight=4)
    proto.dataReceived(b"".join(b"GET k%d\r\n" % i for i in range(10)))
    assert len(executor.calls) == 4
    assert transport.producerState == "paused"

    executor.deferreds[0].callback(b"0")
    assert len(executor.calls) == 5  # one slot freed, one more dispatched from the backlog
    assert transport.producerState == "paused"

    for i in range(1, 6):
        executor.deferreds[i].callback(b"%d" % i)
    assert len(executor.calls) == 10  # the backlog is empty now, 4 still in flight
    assert transport.producerState == "paused"
    executor.deferreds[6].callback(b"6")
    executor.deferreds[7].callback(b"7")
    assert proto.inflight == 2 and transport.producerState == "paused"
    executor.deferreds[8].callback(b"8")
    assert proto.inflight == 1 and transport.producerState == "producing"
    executor.deferreds[9].callback(b"9")
    assert transport.value() == b"".join(b"$1\r\n%d\r\n" % i for i in range(10))


def test_reading_resumes_only_below_half_the_limit():
    """Hysteresis: after pausing at the limit, reading resumes once in-flight drops below half."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor, max_inflight=4)
    proto.dataReceived(b"GET a\r\nGET b\r\nGET c\r\nGET d\r\n")
    assert transport.producerState == "paused"
    executor.deferreds[0].callback(None)
    executor.deferreds[1].callback(None)
    assert proto.inflight == 2 and transport.producerState == "paused"
    executor.deferreds[2].callback(None)
    assert proto.inflight == 1 and transport.producerState == "producing"


def test_client_not_reading_replies_stops_request_processing():
    """When the transport pauses us (its write buffer is full), no requests run and reading stops."""
    executor = ScriptedExecutor(lambda r, s: b"x" * 10)
    proto, transport = connect(executor)
    proto.pauseProducing()  # what Twisted does when the client does not read
    assert transport.producerState == "paused"
    proto.dataReceived(b"GET a\r\nGET b\r\n")  # bytes already read before the pause took effect
    assert executor.calls == [] and transport.value() == b""

    proto.resumeProducing()
    assert len(executor.calls) == 2
    assert transport.value() == b"$10\r\nxxxxxxxxxx\r\n" * 2
    assert transport.producerState == "producing"


def test_client_that_never_reads_cannot_make_us_work_unboundedly():
    """A transport whose buffer stays full pauses us after each write: dispatch stops at each pause."""
    class FullTransport(StringTransport):
        """Pauses its producer on every write, as a TCP transport does once its buffer is over the limit."""

        def write(self, data):
            StringTransport.write(self, data)
            if self.producer is not None:
                self.producer.pauseProducing()

    executor = ScriptedExecutor(lambda r, s: b"y" * 20)
    proto = RespFactory(executor, max_inflight=2).buildProtocol(None)
    transport = FullTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"GET a\r\n" * 10)
    assert len(executor.calls) == 2  # one batch, written, then paused
    assert transport.producerState == "paused"
    proto.dataReceived(b"GET a\r\n" * 10)  # stragglers while paused only join the backlog
    assert len(executor.calls) == 2
    proto.resumeProducing()
    assert len(executor.calls) == 4
    assert transport.value() == b"$20\r\n" + b"y" * 20 + b"\r\n" + (b"$20\r\n" + b"y" * 20 + b"\r\n") * 3


def test_max_inflight_must_be_positive():
    """A zero in-flight limit would deadlock the connection, so it is refused."""
    with pytest.raises(ValueError):
        connect(ScriptedExecutor(), max_inflight=0)


def test_bugs_in_local_handling_do_not_drop_the_connection(logged, monkeypatch):
    """Even a failure inside the protocol's own command handling becomes -ERR internal error."""
    import kvd.resp.protocol as protocol

    def broken(request, connection):
        raise RuntimeError("local bug")

    monkeypatch.setattr(protocol, "execute_local", broken)
    proto, transport = connect(ScriptedExecutor(lambda r, s: OK))
    proto.dataReceived(b"PING\r\nGET k\r\n")
    assert transport.value() == b"-ERR internal error\r\n+OK\r\n"
    assert not transport.disconnecting
    assert [e["log_failure"].type for e in logged if "log_failure" in e] == [RuntimeError]


def test_value_size_limit_is_configurable():
    """value_max_bytes bounds bulk arguments: at the limit is served; one byte over gets -ERR naming the
    limit, runs nothing, and the connection goes on serving."""
    executor = ScriptedExecutor(lambda r, s: OK)
    proto, transport = connect(executor, value_max_bytes=10)
    proto.dataReceived(packed("SET", "k", "x" * 10))
    assert transport.value() == b"+OK\r\n"
    transport.clear()
    proto.dataReceived(packed("SET", "k", "x" * 11) + packed("GET", "k"))
    assert transport.value() == (
        b"-ERR value of 11 bytes is over this node's limit of 10 bytes (--value-max-bytes); "
        b"the command was not run\r\n+OK\r\n"
    )
    assert not transport.disconnecting
    assert [type(r).__name__ for r, _ in executor.calls] == ["Write", "Read"]


def test_commands_over_the_limits_are_refused_before_the_executor_and_the_connection_goes_on():
    """
    kvd.limits at the client port: an MSET one byte over one command's bytes,
    one with too many keys, a key over the key limit (in a write and a read)
    and a request past the parser's bound each answer -ERR without reaching
    the executor (so nothing is proposed); the largest allowed MSET and the
    requests after the refused ones run, in order, on the same connection.
    """
    from kvd.limits import LIMITS
    from tests.test_limits import largest_mset

    executor = ScriptedExecutor(lambda r, s: OK)
    proto, transport = connect(executor)
    largest = [x for pair in largest_mset().pairs for x in pair]
    proto.dataReceived(packed("MSET", *largest))
    proto.dataReceived(packed("MSET", *(largest[:-1] + [largest[-1] + b"v"])))
    proto.dataReceived(packed("MSET", *[b"k"] * 2 * (LIMITS.command_keys + 1)))
    proto.dataReceived(packed("SET", b"k" * (LIMITS.key_bytes + 1), b"v") + packed("GET", b"k" * (LIMITS.key_bytes + 1)))
    proto.dataReceived(packed("MSET", *largest * 2))  # past the parser's bound: skipped, not buffered
    proto.dataReceived(packed("SET", b"k" * LIMITS.key_bytes, b"v") + packed("GET", b"k" * LIMITS.key_bytes))
    replies = transport.value().split(b"\r\n")
    assert replies[0] == b"+OK"
    assert replies[1] == (b"-ERR MSET of %d bytes is over the limit of %d bytes in one write; the command was not "
                          b"run: split it" % (LIMITS.command_bytes + 1, LIMITS.command_bytes))
    assert replies[2].startswith(b"-ERR MSET of %d keys is over the limit of" % (LIMITS.command_keys + 1))
    key_error = b"-ERR key of 512 bytes is over the limit of 511 bytes; the command was not run"
    assert replies[3:5] == [key_error, key_error]
    assert replies[5].startswith(b"-ERR request of at least ") and b"for one command" in replies[5]
    assert replies[6:8] == [b"+OK", b"+OK"]
    assert not transport.disconnecting
    assert [type(r.command).__name__ if isinstance(r, Write) else type(r).__name__ for r, _ in executor.calls] == [
        "MSet", "Set", "Read"]


def test_a_transaction_reaches_the_executor_as_one_write_at_exec():
    """redis-py's default pipeline (MULTI, SET, INCR, PING, EXEC): each command answers QUEUED, nothing
    reaches the executor until EXEC, which is one Write of a Transaction; PING is answered in its place."""
    from kvd.kv.commands import IncrBy, Set, Transaction

    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(packed("MULTI") + packed("SET", "a", 1) + packed("INCR", "n") + packed("PING") + packed("EXEC"))
    assert transport.value() == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n"
    [(request, _)] = executor.calls
    assert request.command == Transaction((Set(b"a", b"1"), IncrBy(b"n", 1)))
    executor.deferreds[0].callback([OK, 1])
    assert transport.value().endswith(b"*3\r\n+OK\r\n:1\r\n+PONG\r\n")
    transport.clear()
    proto.dataReceived(packed("MULTI") + packed("MULTI") + packed("DISCARD") + packed("SET", "a", 1))
    assert transport.value() == b"+OK\r\n-ERR MULTI calls can not be nested\r\n+OK\r\n"
    assert len(executor.calls) == 2


def test_watch_is_a_read_and_exec_waits_for_it():
    """GET, WATCH, MULTI, SET, EXEC pipelined: the WATCH's versions are read (with the GET), EXEC only
    runs once they are back, and carries them."""
    from kvd.kv.commands import Set, Transaction, Versions

    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(packed("GET", "k") + packed("WATCH", "k", "j") + packed("MULTI") + packed("SET", "k", 1)
                       + packed("EXEC"))
    assert [r.op for r, _ in executor.calls][1] == Versions((b"k", b"j"))
    assert len(executor.calls) == 2
    executor.deferreds[1].callback([[1, 7], [0, 9]])
    assert len(executor.calls) == 2  # the GET still runs: EXEC, a write, waits
    executor.deferreds[0].callback(b"v")
    assert executor.calls[2][0].command == Transaction((Set(b"k", b"1"),), ((b"k", True, 7), (b"j", False, 9)))
    executor.deferreds[2].callback(None)
    assert transport.value() == b"$1\r\nv\r\n+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n"


def test_exec_and_discard_without_multi():
    """EXEC and DISCARD outside a transaction are errors with Redis's texts."""
    proto, transport = connect(ScriptedExecutor())
    proto.dataReceived(packed("EXEC") + packed("DISCARD") + packed("UNWATCH"))
    assert transport.value() == b"-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n+OK\r\n"


def test_factory_tracks_open_sessions():
    """The factory knows its open connections (INFO's connected_clients)."""
    factory = RespFactory(ScriptedExecutor())
    protos = [factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + i)) for i in range(3)]
    for p in protos:
        p.makeConnection(StringTransport())
    assert len(factory.connections) == 3
    protos[1].connectionLost(None)
    assert sorted(factory.connections) == [protos[0].connection.id, protos[2].connection.id]


def test_a_read_waits_for_an_earlier_write_on_the_connection():
    """Pipelined SET, SET, GET, SET: the writes run together, the GET only after them, the last SET after the GET."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(packed("SET", "a", 1) + packed("SET", "b", 2) + packed("GET", "a") + packed("SET", "a", 3))
    assert [type(r).__name__ for r, _ in executor.calls] == ["Write", "Write"]
    executor.deferreds[0].callback(OK)
    assert len(executor.calls) == 2  # one write still running
    executor.deferreds[1].callback(OK)
    assert [type(r).__name__ for r, _ in executor.calls] == ["Write", "Write", "Read"]
    executor.deferreds[2].callback(b"1")
    assert [type(r).__name__ for r, _ in executor.calls] == ["Write", "Write", "Read", "Write"]
    executor.deferreds[3].callback(OK)
    assert transport.value() == b"+OK\r\n+OK\r\n$1\r\n1\r\n+OK\r\n"


def test_admin_commands_do_not_wait_for_running_writes():
    """PING answers in its turn without holding later reads behind an unrelated barrier."""
    executor = ScriptedExecutor()
    proto, transport = connect(executor)
    proto.dataReceived(packed("GET", "a") + packed("PING") + packed("GET", "b"))
    assert [type(r).__name__ for r, _ in executor.calls] == ["Read", "Read"]


# ------------------------------------------------------ cross-protocol (HTTP)


@pytest.mark.parametrize("data", [
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:7001\r\nContent-Length: 18\r\n\r\nSET pwned 1\r\nGET x\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:7001\r\n\r\n",
    b"Host: evil\r\nSET pwned 1\r\n",
    b"*2\r\n$4\r\nPOST\r\n$1\r\n/\r\n",
    b"GET /x HTTP/1.0\r\n",
])
def test_http_requests_are_closed_at_once_and_run_nothing(data, logged):
    """A browser's POST to the Redis port (a cross-protocol attack) runs none of its lines: closed, no reply, logged."""
    executor = ScriptedExecutor(lambda r, s: OK)
    proto, transport = connect(executor)
    proto.dataReceived(data)
    assert executor.calls == []
    assert transport.value() == b""
    assert transport.disconnecting
    proto.dataReceived(b"SET later 1\r\n")
    assert executor.calls == []
    assert any("SECURITY ATTACK" in (e.get("log_format") or "") for e in logged)


def test_keys_that_look_like_http_words_are_fine():
    executor = ScriptedExecutor(lambda r, s: OK)
    proto, transport = connect(executor)
    proto.dataReceived(b"SET Host: 1\r\nGET HTTP/1.1\r\nSET k HTTP/1.1\r\n")
    assert len(executor.calls) == 3 and not transport.disconnecting


# ------------------------------------------------------ bounded output, maxclients


class _PausingTransport(StringTransport):
    """Pauses its producer on every write, as a TCP transport does once its buffer is over its size."""

    def write(self, data):
        StringTransport.write(self, data)
        if self.producer is not None:
            self.producer.pauseProducing()


def test_a_reply_over_the_output_limit_is_an_error_and_is_never_built():
    """MGET of a 1 MiB value 400 times: the 400 MB reply is refused, not encoded."""
    big = b"v" * (1024 * 1024)
    executor = ScriptedExecutor(lambda r, s: [big] * 400)
    proto, transport = connect(executor, output_limit=8 * 1024 * 1024)
    proto.dataReceived(packed("MGET", *(["k"] * 400)))
    assert transport.value().startswith(b"-ERR the reply is over this node's client output limit of 8388608 bytes")
    assert not transport.disconnecting
    proto.dataReceived(b"PING\r\n")
    assert transport.value().endswith(b"+PONG\r\n")


def test_the_default_output_limit_bounds_an_mget_of_a_big_key():
    from kvd.resp.protocol import DEFAULT_OUTPUT_LIMIT, reply_size

    big = b"v" * (1024 * 1024)
    assert reply_size([big] * 400, DEFAULT_OUTPUT_LIMIT) > DEFAULT_OUTPUT_LIMIT
    assert DEFAULT_OUTPUT_LIMIT < 400 * len(big)


def test_a_client_that_leaves_too_much_unread_is_disconnected(logged):
    """Replies of requests already running when the transport paused us pile up: over the limit, the client goes."""
    executor = ScriptedExecutor()
    proto = RespFactory(executor, output_limit=100_000).buildProtocol(None)
    transport = _PausingTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"GET k\r\n" * 10)
    assert len(executor.deferreds) == 10
    for d in executor.deferreds:
        d.callback(b"x" * 30_000)  # the first write pauses us; the rest pile up
    assert transport.disconnecting
    assert len(transport.value()) < 100_000 + 30_100
    assert any("client output limit" in (e.get("log_format") or "") for e in logged)


def test_output_written_while_the_client_reads_is_not_counted():
    executor = ScriptedExecutor(lambda r, s: b"x" * 30_000)
    proto, transport = connect(executor, output_limit=100_000)
    for _ in range(20):
        proto.dataReceived(b"GET k\r\n")
    assert not transport.disconnecting and transport.value().count(b"$30000") == 20


def test_maxclients_refuses_one_more_with_redis_error():
    factory = RespFactory(ScriptedExecutor(), maxclients=2)
    kept = []
    for port in (1, 2):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        proto.makeConnection(StringTransport())
        kept.append(proto)
    extra = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3))
    transport = StringTransport()
    extra.makeConnection(transport)
    assert transport.value() == b"-ERR max number of clients reached\r\n" and transport.disconnecting
    kept[0].connectionLost(None)
    again = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4))
    transport = StringTransport()
    again.makeConnection(transport)
    again.dataReceived(b"PING\r\n")
    assert transport.value() == b"+PONG\r\n"


def test_clients_together_are_capped_and_the_one_that_grows_past_the_cap_is_evicted(logged):
    """Partial requests of all connections count against --maxmemory-clients; the connection pushing the total
    over it (and holding a share worth evicting) is disconnected, the others keep going."""
    factory = RespFactory(ScriptedExecutor(lambda r, s: OK), maxmemory_clients=250_000)
    protos = []
    for port in (1, 2, 3):
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = StringTransport()
        proto.makeConnection(transport)
        protos.append((proto, transport))
    head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$200000\r\n"
    protos[0][0].dataReceived(head + b"x" * 100_000)
    protos[1][0].dataReceived(head + b"x" * 100_000)
    assert not protos[0][1].disconnecting and not protos[1][1].disconnecting
    protos[2][0].dataReceived(b"PING\r\n")  # a small client is never the one evicted
    assert protos[2][1].value() == b"+PONG\r\n"
    protos[1][0].dataReceived(b"x" * 60_000)
    assert protos[1][1].disconnecting and not protos[0][1].disconnecting
    assert any("maxmemory-clients" in (e.get("log_format") or "") for e in logged)
    protos[1][0].connectionLost(None)
    assert factory.memory.used == protos[0][0]._parser.buffered + len(b"+PONG\r\n")  # replies count until drained
    protos[0][0].dataReceived(b"x" * 100_000 + b"\r\n")  # completes: the memory is released
    assert protos[0][1].value() == b"+OK\r\n"
    assert factory.memory.used == len(b"+OK\r\n") + len(b"+PONG\r\n")
