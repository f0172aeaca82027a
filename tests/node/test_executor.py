"""
The client port end to end without sockets: RESP bytes in through a
StringTransport, a three-node fake cluster behind it, RESP bytes out.
"""

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from kvd.executor import ClientExecutor
from kvd.resp.protocol import RespFactory
from tests.node.fakes import leaders, make_cluster, run




def client_of(node):
    proto = RespFactory(ClientExecutor(node)).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def ask(clock, proto, transport, data: bytes, seconds=2) -> bytes:
    transport.clear()
    proto.dataReceived(data)
    run(clock, seconds)
    return transport.value()


def test_inline_commands_through_a_follower(cluster):
    """Inline SET/GET/INCR/DEL typed at a follower behave like Redis."""
    clock, network = cluster
    follower = next(n for n in network.nodes.values() if not n.core.is_leader())
    proto, t = client_of(follower)
    assert ask(clock, proto, t, b"SET k v\r\nGET k\r\nSET k w NX\r\nINCR n\r\nINCR n\r\nDEL k n zz\r\nGET k\r\n") == (
        b"+OK\r\n$1\r\nv\r\n$-1\r\n:1\r\n:2\r\n:2\r\n$-1\r\n"
    )


def test_compare_and_set_with_ifeq(cluster):
    """SET ... IFEQ succeeds only against the current value (Valkey 8.1 semantics)."""
    clock, network = cluster
    (leader,) = leaders(network)
    proto, t = client_of(leader)
    assert ask(clock, proto, t, b"SET c 1\r\nSET c 2 IFEQ 0\r\nSET c 2 IFEQ 1\r\nGET c\r\n") == b"+OK\r\n$-1\r\n+OK\r\n$1\r\n2\r\n"


def test_info_role_members_and_cluster(cluster):
    """INFO has the Raft section; ROLE and KVD.MEMBERS describe the cluster."""
    clock, network = cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    proto, t = client_of(follower)
    info = ask(clock, proto, t, b"INFO raft\r\n")
    for field in (b"raft_role:follower", b"raft_term:", b"raft_leader:" + leader.config.node_id.encode(),
                  b"raft_commit_index:", b"raft_applied_index:", b"raft_members:"):
        assert field in info
    assert ask(clock, proto, t, b"ROLE\r\n").startswith(b"*5\r\n$5\r\nslave\r\n")
    members = ask(clock, proto, t, b"KVD.MEMBERS\r\n")
    rows = json.loads(members.split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0])
    assert sorted(r["id"] for r in rows) == sorted(network.nodes)
    assert [r["id"] for r in rows if r["leader"]] == [leader.config.node_id]
    assert ask(clock, proto, t, b"KVD.CLUSTER\r\n") == b"$4\r\ntest\r\n"


def test_readonly_connection_reads_locally(cluster):
    """READONLY serves from the node's own state even when it is cut off; the default refuses."""
    clock, network = cluster
    follower = next(n for n in network.nodes.values() if not n.core.is_leader())
    proto, t = client_of(follower)
    assert ask(clock, proto, t, b"SET k v\r\n") == b"+OK\r\n"
    run(clock, 1)
    network.isolate(follower.config.node_id)
    run(clock, 5)
    reply = ask(clock, proto, t, b"GET k\r\n", seconds=10)
    assert reply.startswith((b"-NOLEADER", b"-TIMEOUT")), reply
    assert ask(clock, proto, t, b"READONLY\r\nGET k\r\n") == b"+OK\r\n$1\r\nv\r\n"


def test_serializable_get_reads_locally_without_readonly(cluster):
    """
    KVD.GET ... SERIALIZABLE is READONLY for one request: no ReadIndex round (answered at once, counted as no
    linearizable read), served by a follower cut off from the leader; the connection's other reads stay linearizable.
    """
    clock, network = cluster
    follower = next(n for n in network.nodes.values() if not n.core.is_leader())
    proto, t = client_of(follower)
    assert ask(clock, proto, t, b"SET k v\r\n") == b"+OK\r\n"
    run(clock, 1)
    linearizable_reads = follower.stats["reads"]
    assert ask(clock, proto, t, b"KVD.GET k SERIALIZABLE\r\n", seconds=0) == b"$1\r\nv\r\n"
    assert follower.stats["reads"] == linearizable_reads
    assert ask(clock, proto, t, b"KVD.GET k\r\n") == b"$1\r\nv\r\n"
    assert follower.stats["reads"] == linearizable_reads + 1
    network.isolate(follower.config.node_id)
    run(clock, 5)
    assert follower.core.leader is None
    assert ask(clock, proto, t, b"KVD.GET k serializable\r\nKVD.GET k SERIALIZABLE WITHREV\r\n", seconds=0) == (
        b"$1\r\nv\r\n*4\r\n$1\r\nv\r\n:1\r\n:1\r\n:1\r\n")
    reply = ask(clock, proto, t, b"KVD.GET k\r\n", seconds=10)
    assert reply.startswith((b"-NOLEADER", b"-TIMEOUT")), reply


def test_join_before_and_after_bootstrap_errors(cluster):
    """KVD.JOIN sent to a follower after bootstrap points at the leader; a bad address is refused."""
    clock, network = cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    proto, t = client_of(follower)
    assert ask(clock, proto, t, b"KVD.JOIN x 127.0.0.1:7009:17009\r\n") == b"-MOVED " + leader.config.node_id.encode() + b"\r\n"
    assert ask(clock, proto, t, b"KVD.JOIN x junk\r\n").startswith(b"-ERR bad member address")
