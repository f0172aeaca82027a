"""
Leases over real nodes on the fake clock (kvd.kv.leases, kvd.node.service): a lease outlives a leader change
(the new leader's PROMOTE), and a lease that is no longer kept alive deletes its keys through the log, on every
node at the same index.
"""

from kvd.kv.commands import Get, Lease, LeaseRead, Set
from kvd.kv.results import OK, KVError
from kvd.node.service import NodeService
from tests.node.fakes import leaders, run
from tests.node.test_expiry import answer


def _cut_off(network, *node_ids):
    network.cut = set()
    for node_id in node_ids:
        for other in network.nodes:
            if other != node_id:
                network.cut |= {(node_id, other), (other, node_id)}


def _election_gap(clock, network, old):
    """No majority anywhere for 2.5 s, then the two others elect a leader (the old one stays cut off)."""
    other = next(n for n in network.nodes.values() if n is not old)
    _cut_off(network, old.config.node_id, other.config.node_id)
    run(clock, 2.5)
    _cut_off(network, old.config.node_id)
    run(clock, 3)
    (new,) = [n for n in leaders(network) if n is not old]
    return new


def _states(network):
    """(applied index, keys stored, leases) of every running node: equal states at equal indexes."""
    return {n.config.node_id: (n.machine.applied_index, sorted(k for k, _, _ in n.machine._keyspace.records_in_order()),
                               list(n.machine._leases.items()))
            for n in network.nodes.values() if n.running}


def test_a_lease_kept_alive_through_the_old_leader_survives_the_election_gap(cluster):
    clock, network = cluster
    (old,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not old)
    lease_id = answer(clock, old.submit(Lease("grant", ttl=3)))
    assert answer(clock, follower.submit(Set(b"svc", b"up", lease=lease_id))) is OK
    assert answer(clock, old.submit(Lease("keepalive", id=lease_id))) == 3
    assert old.view.expiry_count() == 1  # INFO keyspace's expires: an attached key has its lease's
    new = _election_gap(clock, network, old)  # over 3 s without a leader: past the lease's expiry
    assert new.stats.get("lease_promotes") == 1
    assert answer(clock, new.read(Get(b"svc"))) == b"up"
    assert answer(clock, new.submit(Lease("keepalive", id=lease_id))) == 3
    for _ in range(4):  # kept alive through the new leader for longer than its ttl
        run(clock, 1.5)
        assert answer(clock, new.submit(Lease("keepalive", id=lease_id))) == 3
    assert answer(clock, new.read(Get(b"svc"))) == b"up"
    # The keepalives stop: the key disappears, through the log, on every node the majority has.
    run(clock, 4)
    for node in network.nodes.values():
        if node is not old:
            assert answer(clock, node.read(Get(b"svc"))) is None
            assert answer(clock, node.read(LeaseRead("ttl", lease_id))) == KVError("ERR lease not found")
    run(clock, 1)
    network.heal()
    run(clock, 3)  # the old leader catches up: the same state at the same index
    states = _states(network)
    assert len(set(map(repr, states.values()))) == 1, states
    assert next(iter(states.values()))[1:] == ([], [])  # deleted, not just hidden; the lease dropped


def test_without_promote_the_election_gap_would_cut_the_lease_off(cluster, monkeypatch):
    """The same history with the new leader's PROMOTE disabled loses the key: the test above can fail."""
    monkeypatch.setattr(NodeService, "_promote_leases", lambda self: None)
    clock, network = cluster
    (old,) = leaders(network)
    lease_id = answer(clock, old.submit(Lease("grant", ttl=3)))
    assert answer(clock, old.submit(Set(b"svc", b"up", lease=lease_id))) is OK
    assert answer(clock, old.submit(Lease("keepalive", id=lease_id))) == 3
    new = _election_gap(clock, network, old)
    assert answer(clock, new.read(Get(b"svc"))) is None
    assert answer(clock, new.submit(Lease("keepalive", id=lease_id))) == KVError("ERR lease not found")


def test_no_promote_without_leases(cluster):
    """A cluster that never used a lease gains no entry at a leader change."""
    clock, network = cluster
    (old,) = leaders(network)
    assert answer(clock, old.submit(Set(b"k", b"v"))) is OK
    run(clock, 1)
    new = _election_gap(clock, network, old)
    assert "lease_promotes" not in new.stats


def test_no_read_of_a_key_whose_lease_expired_with_a_stale_log_time(cluster, monkeypatch):
    """No entry after the lease's last keepalive: reads on every node still see its key gone once it expires."""
    monkeypatch.setattr(NodeService, "_reclaim_expired", lambda self, now: None)  # only the reads move time on
    clock, network = cluster
    (leader,) = leaders(network)
    lease_id = answer(clock, leader.submit(Lease("grant", ttl=3)))
    assert answer(clock, leader.submit(Set(b"k", b"v", lease=lease_id))) is OK
    for node in network.nodes.values():
        assert answer(clock, node.read(Get(b"k"))) == b"v"
    run(clock, 10)  # no writes: every machine's log time is 10 s behind
    for node in network.nodes.values():
        assert node.machine.read(Get(b"k")) == b"v"  # what the stale log time alone would answer
    for node in network.nodes.values():
        assert answer(clock, node.read(Get(b"k"))) is None
        assert answer(clock, node.read(LeaseRead("list"))) == []
        assert answer(clock, node.read(LeaseRead("ttl", lease_id))) == KVError("ERR lease not found")
