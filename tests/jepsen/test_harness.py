"""
The harness's pieces that need no cluster: outcomes from replies and errors,
the RESP client (kvd.resp.client) against a scripted socket, the history file, nemesis names
and partition cuts.
"""

import socket
import threading

import pytest

from kvd.check.linear import CAS, DELETE, FAIL, INFO, OK, READ, WRITE
from kvd.jepsen.nemesis import ALL, expand
from kvd.jepsen.netfilter import cut
from kvd.resp.client import Connection, Indeterminate, NotSent, Simple, encode
from kvd.jepsen.workload import History, command_for, execute, interpret, read_history


def test_commands():
    assert command_for(READ, "k", None) == ("GET", "k")
    assert command_for(WRITE, "k", "v") == ("SET", "k", "v")
    assert command_for(CAS, "k", ["old", "new"]) == ("SET", "k", "new", "IFEQ", "old")
    assert command_for(DELETE, "k", None) == ("DEL", "k")
    assert encode(("GET", "k")) == b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


def test_replies_become_results():
    assert interpret(READ, b"v") == (OK, "v", "")
    assert interpret(READ, None) == (OK, None, "")
    assert interpret(WRITE, Simple("OK")) == (OK, None, "")
    assert interpret(CAS, Simple("OK")) == (OK, True, "")
    assert interpret(CAS, None) == (OK, False, "")
    assert interpret(DELETE, 1) == (OK, 1, "")
    # Anything else is unknown, and flagged.
    outcome, _, error = interpret(WRITE, b"weird")
    assert outcome == INFO and error.startswith("unexpected")


class ScriptedNode:
    """A listening socket that answers each command with the next scripted bytes (None: say nothing)."""

    def __init__(self, replies):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.replies = list(replies)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn:
            for reply in self.replies:
                conn.recv(65536)
                if reply is None:
                    conn.recv(65536)  # hold the connection until the client gives up
                    return
                conn.sendall(reply)

    def close(self):
        self.server.close()


@pytest.mark.parametrize("reply, f, expected", [
    (b"+OK\r\n", WRITE, (OK, None)),
    (b"$1\r\nv\r\n", READ, (OK, "v")),
    (b"$-1\r\n", CAS, (OK, False)),
    (b":1\r\n", DELETE, (OK, 1)),
    (b"-NOLEADER no leader\r\n", WRITE, (FAIL, None)),
    (b"-TRYAGAIN moved\r\n", CAS, (FAIL, None)),
    (b"-TIMEOUT unknown\r\n", WRITE, (INFO, None)),
    (b"-ERR something\r\n", WRITE, (INFO, None)),
])
def test_outcomes_over_a_socket(reply, f, expected):
    node = ScriptedNode([reply])
    conn = Connection("127.0.0.1", node.port, timeout=2.0)
    try:
        value = ["a", "b"] if f == CAS else ("v" if f == WRITE else None)
        outcome, result, _ = execute(conn, f, "k", value)
        assert (outcome, result) == expected
    finally:
        conn.close()
        node.close()


def test_no_reply_is_unknown_and_no_connection_is_failed():
    node = ScriptedNode([None])
    conn = Connection("127.0.0.1", node.port, timeout=0.3)
    try:
        assert execute(conn, WRITE, "k", "v")[0] == INFO
    finally:
        conn.close()
        node.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    refused = Connection("127.0.0.1", port, timeout=0.3)
    with pytest.raises(NotSent):
        refused.call("PING")
    assert execute(refused, WRITE, "k", "v")[0] == FAIL
    with pytest.raises(Indeterminate):
        node = ScriptedNode([b"+OK\r"])  # a torn reply, then EOF
        conn = Connection("127.0.0.1", node.port, timeout=1.0)
        try:
            conn.call("SET", "k", "v")
        finally:
            conn.close()
            node.close()


def test_history_round_trip(tmp_path):
    h = History()
    h.header = {"seed": 1}
    a = h.invoke("c0", "k", WRITE, "v", "n1")
    b = h.invoke("c1", "k", CAS, ["v", "w"], "n2")
    c = h.invoke("c2", "k", READ, None, "n3")
    h.complete(a, OK)
    h.complete(b, INFO, error="timeout")
    h.complete(c, OK, "v")
    h.event("kill-leader", "start", "SIGKILL n1")
    path = str(tmp_path / "history.jsonl")
    h.write(path)
    header, ops, events = read_history(path)
    assert header["seed"] == 1 and len(events) == 1
    by_index = {op.index: op for op in ops}
    assert by_index[0].outcome == OK and by_index[0].complete is not None
    assert by_index[1].value == ("v", "w") and by_index[1].complete is None
    assert by_index[2].result == "v"
    assert h.counts() == {OK: 2, FAIL: 0, INFO: 1}


def test_nemesis_names_and_cuts():
    assert expand("all") == list(ALL)
    assert expand("kill-leader,pause") == ["kill-leader", "pause-leader", "pause-random"]
    with pytest.raises(ValueError):
        expand("meteor")
    assert sorted(cut([["a"], ["b", "c"]])) == [("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")]


def test_a_connection_the_node_closed_is_replaced_before_sending():
    """A node restart closes old connections; the next request goes on a fresh one and keeps a certain outcome."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(2)
    port = server.getsockname()[1]

    def serve():
        first, _ = server.accept()
        first.recv(65536)
        first.sendall(b"+OK\r\n")
        first.close()  # as a killed node's kernel would
        second, _ = server.accept()
        second.recv(65536)
        second.sendall(b"$1\r\nv\r\n")
        second.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    conn = Connection("127.0.0.1", port, timeout=2.0)
    try:
        assert execute(conn, WRITE, "k", "v")[0] == OK
        t.join(0.5)  # let the server close the first connection
        assert execute(conn, READ, "k", None) == (OK, "v", "")
    finally:
        conn.close()
        server.close()


def test_a_node_is_ready_when_it_answers_pong_and_its_info_has_numbers(tmp_path):
    """The harness's own asks go through kvd.resp.client too: +PONG is ready, INFO raft's numbers are ints."""
    from types import SimpleNamespace

    from kvd.jepsen.cluster import Node
    from tests.resp.test_client import ScriptedNode

    info = b"# Raft\r\nraft_role:leader\r\nraft_term:7\r\nraft_leader_id:127.0.0.1:1\r\n"
    server = ScriptedNode(lambda args: b"+PONG\r\n" if args[0] == b"PING" else b"$%d\r\n%s\r\n" % (len(info), info))
    try:
        node = Node(SimpleNamespace(dir=str(tmp_path)), "127.0.0.1", server.port, founder=True)
        node.proc = SimpleNamespace(poll=lambda: None, pid=0)  # "alive"
        node.wait_ready(2.0)
        assert node.info() == {"raft_role": "leader", "raft_term": 7, "raft_leader_id": "127.0.0.1:1"}
    finally:
        server.close()
