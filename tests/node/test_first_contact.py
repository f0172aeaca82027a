"""
What a new user meets first (issue 10), over the fake clock: INFO on a node
wired as twistd wires it, follower reads whose ReadIndex request was lost,
writes forwarded to a leader that is then cut off, and deadlines that follow
the request timeout.
"""

import pytest
from twisted.python.failure import Failure

from kvd.kv.commands import Get, IncrBy, Set
from kvd.discovery.metrics import NodeMetrics
from kvd.errors import KvdError
from kvd.raft.messages import ReadIndexRequest
from tests.node.conftest import running_cluster
from tests.node.fakes import leaders, make_cluster, run
from tests.node.test_executor import ask, client_of


def answer_of(clock, d, seconds):
    """Advance up to ``seconds`` of fake time; the answer and the fake seconds it took (or None, None)."""
    out = []
    d.addBoth(out.append)
    start = clock.seconds()
    step = 0.05
    for _ in range(int(seconds / step)):
        clock.advance(step)
        clock.advance(0)
        if out:
            return out[0], clock.seconds() - start
    return None, None


@pytest.fixture
def wired_cluster(tmp_path):
    """The fake cluster with each machine behind the metrics wrapper, as kvd.tap builds a node."""

    def wrap(node):
        node.machine = NodeMetrics(process=False).counted_machine(node.machine)

    yield from running_cluster(tmp_path, wrap)


def test_info_answers_every_section_on_a_node_wired_like_twistd(wired_cluster):
    """Plain INFO, INFO all, INFO keyspace, INFO server ... answer (the keyspace section used to raise)."""
    clock, network = wired_cluster
    (leader,) = leaders(network)
    proto, t = client_of(leader)
    assert ask(clock, proto, t, b"SET a 1\r\nSET b 2\r\n") == b"+OK\r\n+OK\r\n"
    for request in (b"INFO", b"INFO all", b"INFO default", b"INFO everything"):
        reply = ask(clock, proto, t, request + b"\r\n")
        assert reply.startswith(b"$"), reply[:80]
        for header in (b"# Server", b"# Clients", b"# Memory", b"# Persistence", b"# Stats", b"# Replication",
                       b"# CPU", b"# Cluster", b"# Keyspace", b"# Raft"):
            assert header in reply, (request, header)
        assert b"db0:keys=2,expires=0,avg_ttl=0" in reply
    keyspace = ask(clock, proto, t, b"INFO keyspace\r\n")
    assert b"# Keyspace\r\ndb0:keys=2" in keyspace and b"# Server" not in keyspace
    server = ask(clock, proto, t, b"INFO server clients\r\n")
    assert b"redis_version:7.0.0" in server and b"connected_clients:" in server and b"# Raft" not in server
    replication = ask(clock, proto, t, b"INFO replication\r\n")
    assert b"role:master" in replication and b"connected_slaves:2" in replication


def test_config_get_answers_what_kvd_does(wired_cluster):
    """CONFIG GET for what redis-benchmark and clients ask: one pair per matching key, glob patterns too."""
    clock, network = wired_cluster
    (leader,) = leaders(network)
    proto, t = client_of(leader)
    assert ask(clock, proto, t, b"CONFIG GET save\r\n") == b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
    assert ask(clock, proto, t, b"CONFIG GET appendonly\r\n") == b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    assert ask(clock, proto, t, b"CONFIG GET MAXMEMORY\r\n") == b"*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n"
    both = ask(clock, proto, t, b"CONFIG GET save appendfsync\r\n")
    assert both.startswith(b"*4\r\n") and b"appendfsync" in both
    assert b"maxmemory-policy" in ask(clock, proto, t, b"CONFIG GET maxmemory*\r\n")
    assert ask(clock, proto, t, b"CONFIG GET nosuchthing\r\n") == b"*0\r\n"
    assert ask(clock, proto, t, b"CONFIG SET save 60\r\n").startswith(b"-ERR CONFIG SET is not supported")


def test_config_resetstat_starts_the_stats_from_zero(wired_cluster):
    """CONFIG RESETSTAT used to answer +OK and reset nothing (redis-py's test_config_resetstat found it)."""
    clock, network = wired_cluster
    (leader,) = leaders(network)
    proto, t = client_of(leader)
    assert ask(clock, proto, t, b"SET a 1\r\nSET b 2\r\nGET a\r\n") == b"+OK\r\n+OK\r\n$1\r\n1\r\n"

    def processed():
        reply = ask(clock, proto, t, b"INFO stats\r\n")
        return int(reply.split(b"total_commands_processed:")[1].split(b"\r\n")[0])

    assert processed() >= 3
    assert ask(clock, proto, t, b"CONFIG RESETSTAT\r\n") == b"+OK\r\n"
    assert processed() == 0
    assert ask(clock, proto, t, b"SET c 3\r\n") == b"+OK\r\n"
    assert processed() == 1


def test_a_lost_read_index_request_is_asked_again(wired_cluster):
    """A follower's ReadIndex request dropped on the way (link not up yet) is re-sent, not left to time out."""
    clock, network = wired_cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    fid, lid = follower.config.node_id, leader.config.node_id
    network.cut.add((fid, lid))  # the follower's messages to the leader are lost
    d = follower.read(Get(b"k"))
    run(clock, 0.2)
    assert any(isinstance(m, ReadIndexRequest) and m.src == fid for m in network.sent)
    network.cut.discard((fid, lid))
    result, took = answer_of(clock, d, follower.config.request_timeout_s)
    assert result is None and took < 1.0, (result, took)


def test_link_up_to_the_leader_re_asks_at_once(wired_cluster):
    """When the link to the leader comes up, pending reads are asked again within that reactor turn."""
    clock, network = wired_cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    fid, lid = follower.config.node_id, leader.config.node_id
    network.cut.add((fid, lid))
    d = follower.read(Get(b"k"))
    clock.advance(0)
    network.cut.discard((fid, lid))
    before = len(network.sent)
    follower.peer_connected(lid)
    clock.advance(0)
    assert any(isinstance(m, ReadIndexRequest) and m.src == fid for m in network.sent[before:])
    result, took = answer_of(clock, d, 0.1)
    assert result is None and took is not None


def test_a_forward_to_a_leader_that_is_cut_off_goes_to_the_new_leader(wired_cluster):
    """INCR through a follower reaches the leader, which is then cut off: the follower re-sends it to the
    new leader as soon as there is one, and it is applied exactly once."""
    clock, network = wired_cluster
    (old,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not old)
    d = follower.submit(IncrBy(b"n", 1))
    assert network.forwarded[-1] == (follower.config.node_id, old.config.node_id)
    network.isolate(old.config.node_id)
    result, took = answer_of(clock, d, follower.config.request_timeout_s)
    assert result == 1, (result, took)
    (new,) = [n for n in leaders(network) if n is not old]
    # Sent again to the new leader, or proposed by the follower itself if it won the election.
    assert new is follower or (follower.config.node_id, new.config.node_id) in network.forwarded
    network.heal()
    run(clock, 5)
    for node in network.nodes.values():
        assert node.machine.read(Get(b"n")) == b"1"


@pytest.mark.parametrize("timeout_s", [1.0, 2.5])
def test_a_write_fails_within_the_request_timeout(tmp_path, timeout_s):
    """A follower that cannot reach a majority answers a write within --request-timeout, never later."""
    clock, network = make_cluster(tmp_path, request_timeout_s=timeout_s)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    network.isolate(follower.config.node_id)
    result, took = answer_of(clock, follower.submit(Set(b"x", b"1")), timeout_s * 3)
    assert isinstance(result, Failure) and result.check(KvdError), result
    assert result.value.code in ("NOLEADER", "TIMEOUT", "TRYAGAIN")
    assert took <= timeout_s + 0.11, took
    result, took = answer_of(clock, follower.read(Get(b"x")), timeout_s * 3)
    assert isinstance(result, Failure) and took <= timeout_s + 0.11, (result, took)
    for node in network.nodes.values():
        node.stopService()
    run(clock, 3)


def test_an_unformed_node_says_what_it_waits_for(tmp_path):
    """A node started with neither --initial-cluster nor a join answers NOLEADER saying how to form a cluster."""
    from tests.node.fakes import FakeNetwork, make_node
    from twisted.internet import task

    clock = task.Clock()
    network = FakeNetwork(clock)
    node = network.nodes["127.0.0.1:7001"] = make_node(tmp_path, network, "127.0.0.1:7001", None)
    node.startService()
    result, took = answer_of(clock, node.submit(Set(b"k", b"v")), 10)
    assert isinstance(result, Failure) and result.value.code == "NOLEADER"
    assert "not part of a cluster yet" in result.value.message and "--initial-cluster" in result.value.message
    assert "mgmt.py -r server -c join -h 127.0.0.1:7001" in result.value.message
    assert node.view.role() == "joining"
    node.stopService()


def test_info_says_pre_candidate_as_the_log_does(wired_cluster):
    """A follower cut off from the others campaigns with pre-votes: INFO says pre-candidate, not candidate."""
    clock, network = wired_cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    network.isolate(follower.config.node_id)
    run(clock, 3)
    assert follower.view.info()["raft_role"] == "pre-candidate"
    members = {m["id"]: m for m in follower.view.member_rows()}
    assert not any(m["leader"] for m in members.values())  # the leader it no longer hears is not named
