"""
Lease reads over real nodes on the fake clock (``twistd kvd --lease-reads``,
RaftSettings.lease_reads): the leader answers reads by its lease, INFO says
so, and a leader cut off from the others stops serving once its lease lapses,
so it never answers with a value a new leader has since overwritten.
"""

import pytest

from kvd.errors import KvdError
from kvd.kv.commands import Get, Set
from kvd.kv.results import OK
from tests.node.conftest import running_cluster
from tests.node.fakes import leaders, run
from tests.node.test_expiry import answer
from tests.node.test_leases import _cut_off


@pytest.fixture
def lease_cluster(tmp_path):
    yield from running_cluster(tmp_path, prepare=lambda node: setattr(node.config, "lease_reads", True))


def test_reads_are_served_by_the_lease_and_info_tells(lease_cluster):
    clock, network = lease_cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    assert answer(clock, leader.submit(Set(b"k", b"v1"))) is OK
    served = leader.core.lease_reads_served
    assert answer(clock, leader.read(Get(b"k"))) == b"v1"
    assert answer(clock, follower.read(Get(b"k"))) == b"v1"  # asked of the leader, answered by its lease
    assert leader.core.lease_reads_served == served + 2
    info = leader.view.info()
    assert info["raft_read_mode"] == "lease" and info["raft_lease_reads"] == served + 2


def test_without_the_option_info_tells_readindex(cluster):
    clock, network = cluster
    (leader,) = leaders(network)
    assert answer(clock, leader.read(Get(b"k"))) is None
    assert leader.view.info()["raft_read_mode"] == "readindex" and leader.core.lease_reads_served == 0


def test_a_leader_cut_off_never_answers_with_an_overwritten_value(lease_cluster):
    clock, network = lease_cluster
    (old,) = leaders(network)
    assert answer(clock, old.submit(Set(b"k", b"old"))) is OK
    _cut_off(network, old.config.node_id)
    for _ in range(50):  # the two others elect a leader (the old one has not heard of it)
        run(clock, 0.1)
        if len(leaders(network)) == 2:
            break
    (new,) = [n for n in leaders(network) if n is not old]
    assert answer(clock, new.submit(Set(b"k", b"new"))) is OK
    assert old.core.is_leader()  # it still believes it leads, but its lease has lapsed
    stale = old.read(Get(b"k"))
    outcome = []
    stale.addBoth(outcome.append)
    run(clock, 6)  # past the request timeout
    assert len(outcome) == 1 and outcome[0] != b"old"
    assert isinstance(outcome[0].value, KvdError)



def test_a_leader_paused_past_its_lease_does_not_answer_by_it_before_its_timer_runs(lease_cluster):
    """
    A process paused (SIGSTOP, a VM pause) handles the requests that piled up before its timer runs: the
    node counts the time that passed (RaftCore.catch_up) before a read, so the lease that ran out in the
    pause answers nothing; the read takes a ReadIndex round.
    """
    clock, network = lease_cluster
    (leader,) = leaders(network)
    assert answer(clock, leader.submit(Set(b"k", b"v1"))) is OK
    served = leader.core.lease_reads_served
    assert answer(clock, leader.read(Get(b"k"))) == b"v1"
    assert leader.core.lease_reads_served == served + 1  # the lease holds
    # The pause: time moves on and no timer of any node runs.
    clock.rightNow += leader.config.tick_s * (leader.core.options.election_ticks + 4)
    read = leader.read(Get(b"k"))
    assert leader.core.lease_reads_served == served + 1  # not by the lease
    assert answer(clock, read) == b"v1"  # but by a heartbeat round, once the others answer
