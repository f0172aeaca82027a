"""
Expiry over real nodes on the fake clock (kvd.kv.expiry, kvd.node.reads): a
read after a key's expiry never returns it, on the leader or a follower, even
when no entry was written since (the log's time is stale); expired keys are
reclaimed through the log, identically on every node.
"""

from twisted.python.failure import Failure

from kvd.kv.commands import DbSize, Exists, Get, Keys, Set, Ttl
from kvd.kv.results import OK
from kvd.node.service import NodeService
from tests.node.fakes import leaders, run


def answer(clock, d, seconds=5.0):
    out = []
    d.addBoth(out.append)
    waited = 0.0
    while not out and waited < seconds:
        clock.advance(0.01)
        clock.advance(0)
        waited += 0.01
    assert out, "no answer within %s fake seconds" % seconds
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def test_no_read_after_expiry_on_any_node_with_a_stale_log_time(cluster, monkeypatch):
    """No entry is written after the SET: a read still sees the key gone once its expiry passes."""
    monkeypatch.setattr(NodeService, "_reclaim_expired", lambda self, now: None)  # only the reads move time on
    clock, network = cluster
    (leader,) = leaders(network)
    assert answer(clock, leader.submit(Set(b"k", b"v", expire=3000))) is OK
    assert answer(clock, leader.submit(Set(b"forever", b"v"))) is OK
    for node in network.nodes.values():
        assert answer(clock, node.read(Get(b"k"))) == b"v"
        assert answer(clock, node.read(Ttl("ttl", b"k"))) in (2, 3)
    run(clock, 10)  # no writes: every machine's log time is 10 s behind
    for node in network.nodes.values():
        assert node.machine.read(Get(b"k")) == b"v"  # what the stale log time alone would answer
    ticks = sum(node.stats["read_ticks"] for node in network.nodes.values())
    followers = [n for n in network.nodes.values() if n is not leader]
    for node in followers + [leader]:
        assert answer(clock, node.read(Get(b"k"))) is None
        assert answer(clock, node.read(Exists((b"k", b"forever")))) == 1
        assert answer(clock, node.read(Keys(b"*"))) == [b"forever"]
        assert answer(clock, node.read(DbSize())) == 1
        assert answer(clock, node.read(Ttl("pttl", b"k"))) == -2
    assert sum(node.stats["read_ticks"] for node in network.nodes.values()) > ticks


def test_expired_keys_are_reclaimed_through_the_log_on_every_node(cluster):
    """The leader's Ticks delete expired keys; every node ends at the same state, at the same index."""
    clock, network = cluster
    (leader,) = leaders(network)
    n = 700  # more than two Ticks' worth (RECLAIM_PER_TICK): the leader goes on while keys are left
    ds = [leader.submit(Set(b"k%d" % i, b"v", expire=1000 + i % 3)) for i in range(n)]
    assert answer(clock, leader.submit(Set(b"keep", b"v", expire=10 ** 9))) is OK
    assert all(answer(clock, d) is OK for d in ds)
    run(clock, 1.5)
    states = set()
    for node in network.nodes.values():
        machine = node.machine
        assert machine.expiry_count() == 1 and machine.key_count() == 1
        assert all(machine._keyspace.get(b"k%d" % i) is None for i in range(n))  # deleted, not just hidden
        states.add((machine.applied_index, machine.expiry_count(), len(machine._keyspace)))
    assert len(states) == 1
