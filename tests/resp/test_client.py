"""
kvd.resp.client, the package's one Redis client: the request encoding, the
incremental reply reader (every RESP2 type, fed in any pieces), the blocking
connection's exact outcomes against a scripted socket (reply, error reply
with its code, not sent, unknown), and the INFO parser.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kvd.resp.client import (
    INCOMPLETE,
    Connection,
    Indeterminate,
    NotSent,
    BadReply,
    ReplyError,
    ReplyReader,
    Simple,
    arg_bytes,
    encode,
    parse_info,
)


# ---------------------------------------------------------------- requests
def test_a_command_is_one_multibulk():
    assert encode(("GET", "k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert encode(("SCAN", b"0", "COUNT", 1000)) == b"*4\r\n$4\r\nSCAN\r\n$1\r\n0\r\n$5\r\nCOUNT\r\n$4\r\n1000\r\n"
    assert arg_bytes("é") == "é".encode() and arg_bytes(b"\xff") == b"\xff" and arg_bytes(1.5) == b"1.5"
    with pytest.raises(TypeError):
        arg_bytes(True)
    with pytest.raises(TypeError):
        arg_bytes(None)


# ---------------------------------------------------------------- replies
def replies_of(data: bytes, piece: int = 0):
    """Every reply in data, fed whole (piece 0) or ``piece`` bytes at a time."""
    reader = ReplyReader()
    out = []
    chunks = [data] if not piece else [data[i : i + piece] for i in range(0, len(data), piece)]
    for chunk in chunks:
        reader.feed(chunk)
        while True:
            reply = reader.get()
            if reply is INCOMPLETE:
                break
            out.append(reply)
    assert reader.pending() == 0
    return out


STREAM = (
    b"+OK\r\n"
    b"-MOVED 127.0.0.1:7002\r\n"
    b":-42\r\n"
    b"$5\r\nhe\r\no\r\n"
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b"*-1\r\n"
    b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n-ERR inside\r\n"
    b"*0\r\n"
)
EXPECTED = [
    b"OK",
    ReplyError("MOVED 127.0.0.1:7002"),
    -42,
    b"he\r\no",
    b"",
    None,
    None,
    [b"a", [1, None], ReplyError("ERR inside")],
    [],
]


@pytest.mark.parametrize("piece", [0, 1, 2, 7])
def test_every_reply_type_in_any_pieces(piece):
    """Simple, error, integer, bulk (CRLF inside is data), empty, nil, nil array, nested arrays: whole or byte by byte."""
    got = replies_of(STREAM, piece)
    assert got == EXPECTED
    assert isinstance(got[0], Simple) and not isinstance(got[3], Simple), "simple and bulk strings are told apart"


def test_simple_strings_are_bytes_that_know_they_are_simple():
    """Simple(b"OK") == b"OK" (what redis-py gives), yet its type says +OK; str is accepted for convenience."""
    assert Simple(b"OK") == b"OK" and Simple("OK") == b"OK" and Simple("OK") != "OK"
    assert repr(Simple(b"OK")) == "Simple(b'OK')"


def test_an_error_reply_keeps_its_code_and_every_word():
    e = ReplyError("ERR value too large")
    assert (e.code, e.text, str(e)) == ("ERR", "ERR value too large", "ERR value too large")
    assert ReplyError("NOLEADER no leader elected").code == "NOLEADER"
    assert ReplyError("").code == ""


@pytest.mark.parametrize("bad", [b"?what\r\n", b":x\r\n", b"$x\r\n", b"$-2\r\n", b"*-5\r\n", b"$2\r\nabcd\r\n", b"x" * 70000])
def test_bytes_that_are_not_resp2_raise(bad):
    reader = ReplyReader()
    with pytest.raises(BadReply):
        reader.feed(bad)
        reader.get()


def test_a_reader_can_bound_the_size_of_a_reply():
    reader = ReplyReader(max_bytes=100)
    with pytest.raises(BadReply):
        reader.feed(b"$1000\r\n")
        reader.get()  # refused by its header, before the bytes arrive
    reader = ReplyReader(max_bytes=100)
    with pytest.raises(BadReply):
        reader.feed(b"*100\r\n" + b":1\r\n" * 30)


# ---------------------------------------------------------------- the connection
class ScriptedNode:
    """
    Answers each command with ``handler(args)``: bytes, None (say nothing), or
    (bytes, True) to close the connection after them; records what it got.
    """

    def __init__(self, handler):
        self.handler = handler
        self.seen = []
        self.connections = 0
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                args = []
                for _ in range(int(line[1:])):
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2])
                self.seen.append(args)
                reply, close = self.handler(args), False
                if isinstance(reply, tuple):
                    reply, close = reply
                if reply:
                    conn.sendall(reply)
                if close:
                    return
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def close(self):
        self.server.close()


@pytest.fixture
def scripted():
    made = []

    def make(handler):
        node = ScriptedNode(handler)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def answers(table):
    return lambda args: table[args[0]]


def test_replies_and_error_replies_over_a_socket(scripted):
    node = scripted(answers({b"SET": b"+OK\r\n", b"GET": b"$1\r\nv\r\n", b"DEL": b":1\r\n", b"KVD.JOIN": b"-MOVED 127.0.0.1:7002\r\n"}))
    with Connection("127.0.0.1", node.port, timeout=2.0) as conn:
        assert conn.call("SET", "k", "v") == Simple(b"OK")
        assert conn.call("GET", "k") == b"v"
        assert conn.call("DEL", "k") == 1
        with pytest.raises(ReplyError) as caught:
            conn.call("KVD.JOIN", "x")
        assert (caught.value.code, caught.value.text) == ("MOVED", "MOVED 127.0.0.1:7002")
        assert conn.call("GET", "k") == b"v", "an error reply leaves the connection usable"
    assert node.connections == 1
    assert node.seen[0] == [b"SET", b"k", b"v"]


def test_a_pipeline_returns_error_replies_in_their_place(scripted):
    node = scripted(lambda args: b"-TRYAGAIN moved\r\n" if args[1] == b"b" else b"$1\r\n%s\r\n" % args[1])
    with Connection("127.0.0.1", node.port, timeout=2.0) as conn:
        assert conn.pipeline([("GET", "a"), ("GET", "b"), ("GET", "c")]) == [b"a", ReplyError("TRYAGAIN moved"), b"c"]


def test_no_connection_is_not_sent(scripted):
    """Refused: NotSent, an OSError, worded as redis-py words it (mgmt.py printed that before)."""
    port = closed_port()
    conn = Connection("127.0.0.1", port, timeout=1.0)
    with pytest.raises(NotSent) as caught:
        conn.call("PING")
    assert isinstance(caught.value, OSError)
    assert str(caught.value).startswith("Error ") and "connecting to 127.0.0.1:%d" % port in str(caught.value)


def test_silence_is_unknown_and_says_it_timed_out(scripted):
    node = scripted(lambda args: None)
    conn = Connection("127.0.0.1", node.port, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(Indeterminate) as caught:
        conn.call("SET", "k", "v")
    assert caught.value.timed_out and isinstance(caught.value, OSError)
    assert time.monotonic() - started < 2
    assert conn.sock is None, "a connection with a reply still owed is never reused"


def test_a_per_call_wait_overrides_the_timeout(scripted):
    node = scripted(lambda args: None)
    conn = Connection("127.0.0.1", node.port, timeout=30.0)
    conn.send("GET", "k")
    started = time.monotonic()
    with pytest.raises(Indeterminate):
        conn.receive(timeout=0.2)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("reply", [b"", b"+OK\r", b"$5\r\nab", b"?garbage\r\n"])
def test_a_lost_or_garbled_reply_is_unknown_not_a_timeout(scripted, reply):
    """Closed with no reply, a torn reply, or bytes that are not RESP2: unknown at once, and not called a timeout."""
    node = scripted(lambda args: (reply, True))
    conn = Connection("127.0.0.1", node.port, timeout=5.0)
    started = time.monotonic()
    with pytest.raises(Indeterminate) as caught:
        conn.call("SET", "k", "v")
    assert not caught.value.timed_out
    assert time.monotonic() - started < 2 and conn.sock is None


def test_setup_commands_run_on_every_new_connection(scripted):
    node = scripted(answers({b"READONLY": b"+OK\r\n", b"GET": b"$-1\r\n"}))
    with Connection("127.0.0.1", node.port, timeout=2.0, setup=[("READONLY",)]) as conn:
        assert conn.call("GET", "k") is None
    assert node.seen == [[b"READONLY"], [b"GET", b"k"]]
    refusing = scripted(answers({b"READONLY": b"-ERR unknown command\r\n"}))
    with pytest.raises(NotSent):
        Connection("127.0.0.1", refusing.port, timeout=2.0, setup=[("READONLY",)]).call("GET", "k")
    assert [b"GET", b"k"] not in refusing.seen


def test_a_connection_the_node_closed_is_replaced_before_sending(scripted):
    """A restarted node closed our idle connection: the next command goes on a fresh one (its outcome stays certain)."""
    calls = []

    def handler(args):
        calls.append(args)
        return b"+OK\r\n" if len(calls) == 1 else b"$1\r\nv\r\n"

    node = scripted(handler)
    with Connection("127.0.0.1", node.port, timeout=2.0) as conn:
        assert conn.call("SET", "k", "v") == b"OK"
        conn.sock.shutdown(socket.SHUT_RD)  # as if the node had closed its end
        assert conn.call("GET", "k") == b"v"
    assert node.connections == 2


# ---------------------------------------------------------------- INFO
def test_parse_info_reads_key_value_lines():
    """Headers, blank lines and lines without a colon are skipped; values keep their colons; text in, text out."""
    raw = b"# Raft\r\nraft_role:leader\r\nraft_leader:127.0.0.1:7001\r\n\r\nraft_term:3\r\n"
    assert parse_info(raw) == {"raft_role": "leader", "raft_leader": "127.0.0.1:7001", "raft_term": "3"}
    assert parse_info(raw.decode()) == parse_info(raw)
    assert parse_info(None) == {}


def test_parse_info_can_read_numbers():
    assert parse_info(b"# Raft\r\nraft_role:leader\r\nraft_term:4\r\nweird\r\n", numbers=True) == {"raft_role": "leader", "raft_term": 4}
    assert parse_info(b"a:-1\r\nb:1.5\r\nc:\r\n", numbers=True) == {"a": -1, "b": "1.5", "c": ""}


# ---------------------------------------------------------------- its users that need no node
def test_docker_helpers_ask_through_this_client_here_and_inside_a_container(scripted, monkeypatch):
    """kvd.cli.docker_ops.resp and exec_resp (its ``python -c`` script run here in place of ``docker exec``) agree byte for byte."""
    import subprocess
    import sys

    from kvd.cli import docker_ops

    def docker_exec_here(*args, timeout):
        assert args[:3] == ("exec", "c1", "python")
        done = subprocess.run([sys.executable, *args[3:]], capture_output=True, timeout=timeout, check=True)
        return done.stdout.decode().strip()

    monkeypatch.setattr(docker_ops, "docker", docker_exec_here)
    table = {b"READONLY": b"+OK\r\n", b"GET": b"$3\r\nv\xff\x00\r\n", b"SET": b"-NOLEADER no leader\r\n",
             b"SCAN": b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n", b"DEL": b":1\r\n"}
    node = scripted(answers(table))
    commands = [["READONLY"], ["GET", b"k\xff"], ["SET", "k", "é"], ["SCAN", 0], ["DEL", "k"]]
    here = docker_ops.resp_pipeline(("127.0.0.1", node.port), commands)
    inside = docker_ops.exec_resp_pipeline("c1", "127.0.0.1", node.port, commands)
    assert here == inside == [b"OK", b"v\xff\x00", docker_ops.RespError("NOLEADER no leader"), [b"0", [b"k"]], 1]
    assert isinstance(here[0], Simple) and isinstance(inside[0], Simple) and here[2].code == inside[2].code == "NOLEADER"
    assert node.seen[:5] == node.seen[5:] and node.seen[2] == [b"SET", b"k", "é".encode()]
    assert docker_ops.info(b"# Raft\r\nraft_role:leader\r\n") == {"raft_role": "leader"}
    with pytest.raises(OSError):
        docker_ops.resp(("127.0.0.1", closed_port()), "PING", timeout=1.0)
