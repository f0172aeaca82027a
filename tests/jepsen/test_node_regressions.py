"""
Regression tests for node bugs the Jepsen suite found, each reproduced over
the fake clock and network of tests/node (no processes needed).
"""

import pytest
from twisted.python.failure import Failure

from kvd.kv.commands import Get, Set
from kvd.kv.results import ERR_SESSION_EXPIRED, OK
from tests.node.conftest import cluster  # noqa: F401  (the shared fake-cluster fixture)
from tests.node.fakes import leaders, run


def outcome(clock, d, seconds=10):
    out = []
    d.addBoth(out.append)
    run(clock, seconds)
    assert out, "no answer within %s fake seconds" % seconds
    return out[0]


def test_writes_work_after_the_first_ones_failed_before_reaching_the_log(cluster):
    """
    Found by kill-leader: a restarted node answered NOLEADER to its first
    writes (no leader known yet), then SESSIONEXPIRED to every later one,
    forever.  Its session was never created in the machine (nothing of it
    reached the log), yet it told the machine it had had answers below seq
    2, which the machine reads as "a session you forgot".
    """
    clock, network = cluster
    follower = next(n for n in network.nodes.values() if not n.core.is_leader())
    network.isolate(follower.config.node_id)
    run(clock, 5)
    first = outcome(clock, follower.submit(Set(b"k", b"1")))
    assert isinstance(first, Failure) and first.value.code == "NOLEADER"
    network.heal()
    run(clock, 5)
    for value in (b"2", b"3"):
        result = outcome(clock, follower.submit(Set(b"k", value)))
        assert result is OK, result
    assert outcome(clock, follower.read(Get(b"k"))) == b"3"


def test_a_node_whose_session_expired_starts_a_new_one(cluster):
    """An expired session (idle past the machine's TTL) must not refuse the node's writes forever."""
    clock, network = cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    assert outcome(clock, follower.submit(Set(b"k", b"1"))) is OK
    # Forget the follower's session everywhere, as expiry would.
    for node in network.nodes.values():
        node.machine._sessions.pop(follower.session.client_id, None)
    result = outcome(clock, follower.submit(Set(b"k", b"2")))
    assert result is OK, result
    assert outcome(clock, leader.read(Get(b"k"))) == b"2"
    assert result != ERR_SESSION_EXPIRED
