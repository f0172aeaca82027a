"""
Transactions across a three-node fake cluster (tests/node/fakes.py, LMDB
state): a WATCH through one node is broken by a write through another, and
a transaction is applied identically on every replica.
"""

from kvd.kv.commands import Get, Versions
from tests.node.fakes import leaders, run
from tests.node.test_executor import ask, client_of


def _nodes(network):
    (leader,) = leaders(network)
    followers = [n for n in network.nodes.values() if n is not leader]
    return leader, followers


def _read(clock, node, op):
    out = []
    node.read(op).addBoth(out.append)
    run(clock, 2)
    return out[0]


def test_watch_on_one_node_is_broken_by_a_write_through_another(cluster):
    clock, network = cluster
    leader, (a, b) = _nodes(network)
    pa, ta = client_of(a)
    pb, tb = client_of(b)
    assert ask(clock, pa, ta, b"SET balance 10\r\nWATCH balance\r\nGET balance\r\n") == b"+OK\r\n+OK\r\n$2\r\n10\r\n"
    assert ask(clock, pb, tb, b"SET balance 10\r\n") == b"+OK\r\n"  # the same value: still a write
    assert ask(clock, pa, ta, b"MULTI\r\nSET balance 20\r\nGET balance\r\nEXEC\r\nGET balance\r\n") == (
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*-1\r\n$2\r\n10\r\n")
    # Without a write in between, the same transaction runs, and every replica has its result.
    assert ask(clock, pa, ta, b"WATCH balance\r\nMULTI\r\nINCRBY balance 5\r\nGET balance\r\nEXEC\r\n") == (
        b"+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:15\r\n$2\r\n15\r\n")
    for node in network.nodes.values():
        assert _read(clock, node, Get(b"balance")) == b"15"
    # The versions WATCH reads are the same through every node (linearizable reads of one state).
    assert len({repr(_read(clock, node, Versions((b"balance", b"missing")))) for node in network.nodes.values()}) == 1


def test_watch_of_a_missing_key_is_broken_by_its_creation_through_the_leader(cluster):
    clock, network = cluster
    leader, (a, _) = _nodes(network)
    pa, ta = client_of(a)
    pl, tl = client_of(leader)
    assert ask(clock, pa, ta, b"READONLY\r\nWATCH lock\r\n") == b"+OK\r\n+OK\r\n"  # READONLY: WATCH still linearizable
    assert ask(clock, pl, tl, b"SET lock me\r\n") == b"+OK\r\n"
    assert ask(clock, pa, ta, b"MULTI\r\nSET lock you\r\nEXEC\r\n") == b"+OK\r\n+QUEUED\r\n*-1\r\n"
    assert ask(clock, pa, ta, b"WATCH other\r\nMULTI\r\nSET other you\r\nEXEC\r\n") == (
        b"+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n")
    for node in network.nodes.values():
        assert _read(clock, node, Get(b"lock")) == b"me"
        assert _read(clock, node, Get(b"other")) == b"you"
