"""
A node under hostile or failing input, over the fake cluster (tests/node/fakes.py):
forged peer messages are refused and the cluster keeps serving; a storage
failure in the Ready loop fail-stops the node with one log line.
"""

from twisted.internet import task
from twisted.logger import Logger

from kvd.discovery.http import health_view
from kvd.kv.commands import Get, Set
from kvd.kv.results import OK
from kvd.raft.messages import MAX_TERM, AppendEntries, Entry, EntryKind, Heartbeat, RequestVote, TimeoutNow
from kvd.store.lmdb import StorageFull
from tests.node.fakes import leaders, make_cluster, run
from tests.node.test_node import result_of


class Captured:
    """A log observer that keeps every event."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def at(self, level_name):
        return [e for e in self.events if e["log_level"].name == level_name]


def capture_log(node):
    captured = Captured()
    node.log = Logger(namespace="kvd.node", observer=captured)
    return captured


def test_a_forged_vote_with_a_huge_term_leaves_the_cluster_working(cluster):
    """The RequestVote with term 2^64-1 that used to brick a cluster: refused by every node, which keep serving."""
    clock, network = cluster
    (leader,) = leaders(network)
    terms = {n.config.node_id: n.core.term for n in network.nodes.values()}
    ids = sorted(network.nodes)
    for node in network.nodes.values():
        me = node.config.node_id
        other = next(i for i in ids if i != me)
        for term in ((1 << 64) - 1, MAX_TERM + 1, 1 << 70):
            node.message_received(RequestVote(term, other, me, 1 << 64, term, True))
            node.message_received(RequestVote(term, other, me, 10, 1, False))
        # In range, but a term no election could follow: one message may not take a node there.
        node.message_received(Heartbeat(MAX_TERM, other, me, 0))
    run(clock, 3)
    assert {n.config.node_id: n.core.term for n in network.nodes.values()} == terms
    assert leaders(network) == [leader]
    for node in network.nodes.values():
        assert node.core.status()["refused"] == {"malformed": 6, "term_jump": 1}
        assert node.stats["refused"] == 7
        assert node.replica.failed is None
    assert result_of(clock, leader.submit(Set(b"k", b"v"))) is OK
    for node in network.nodes.values():
        assert result_of(clock, node.read(Get(b"k"))) == b"v"


def test_forged_timeout_now_and_appends_from_a_non_leader_are_refused_and_logged(cluster):
    clock, network = cluster
    (leader,) = leaders(network)
    follower, other = [n for n in network.nodes.values() if n is not leader]
    captured = capture_log(follower)
    me, them, term = follower.config.node_id, other.config.node_id, follower.core.term
    follower.message_received(TimeoutNow(term, them, me))
    follower.message_received(TimeoutNow(term + 5, leader.config.node_id, me))
    last = follower.core.log.last_index()
    evil = Entry(last + 1, term, EntryKind.NORMAL, b"evil")
    follower.message_received(AppendEntries(term, them, me, last, follower.core.log.last_term(), (evil,), last + 1))
    follower.message_received(Heartbeat(term, them, me, last))
    run(clock, 3)
    assert leaders(network) == [leader] and follower.core.term == term
    assert follower.core.status()["refused"] == {"timeout_now": 2, "second_leader": 2}
    warned = [e for e in captured.at("warn") if "refused" in e["log_format"]]
    assert sorted(e["reason"] for e in warned) == ["second_leader", "timeout_now"]
    (second,) = [e for e in warned if e["reason"] == "second_leader"]
    assert "Heartbeat from %r, term %d" % (them, term) in second["log_format"].format(**second)
    assert result_of(clock, leader.submit(Set(b"k", b"v"))) is OK
    assert result_of(clock, follower.read(Get(b"k"))) == b"v"


def break_disk(node, error):
    calls = []

    def write(hard_state, entries, snapshot, sync, done):
        calls.append(1)
        raise error

    node.storage.write = write
    return calls


def test_a_storage_failure_fail_stops_the_node_with_one_log_line(tmp_path):
    """A full disk: one critical line naming the data dir and the error, the node stops, no busy loop; the others serve on."""
    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    victim = next(n for n in network.nodes.values() if n is not leader)
    captured = capture_log(victim)
    calls = break_disk(victim, StorageFull("LMDB map of %s is full" % victim.config.data_dir))
    d = leader.submit(Set(b"k", b"v"))
    run(clock, 0.2)
    assert victim.failure is not None
    assert victim.view.stopping and victim.config.data_dir in victim.view.failure
    status, body = health_view(victim.view)
    assert status == 503 and not body["healthy"]
    run(clock, 5)
    assert not victim.running  # stopped (task.Clock cannot stop a reactor: the node stops its service)
    (line,) = captured.at("critical")
    text = line["log_format"].format(**line)
    assert victim.config.data_dir in text and "StorageFull" in text and "stopping" in text
    assert len(calls) == 1  # no retry, no "ready() called twice without advance()" loop
    assert not captured.at("error")
    assert result_of(clock, d) is OK  # the other two are a majority
    assert result_of(clock, leader.submit(Set(b"k2", b"v2"))) is OK
    for node in network.nodes.values():
        if node.running:
            node.stopService()
    run(clock, 3)


class StoppableClock(task.Clock):
    """A fake reactor: has stop(), as the real one does."""

    running = True

    def __init__(self):
        super().__init__()
        self.stopped = 0

    def stop(self):
        self.stopped += 1
        self.running = False


def test_on_a_reactor_the_failure_stops_the_reactor(tmp_path):
    """On a clock that is a reactor, fail-stop is reactor.stop(): twistd then stops every service and exits."""
    clock, network = make_cluster(tmp_path, n=1, clock=StoppableClock())
    (node,) = network.nodes.values()
    node.startService()
    run(clock, 2)
    assert node.core.is_leader()
    capture_log(node)
    break_disk(node, OSError(28, "No space left on device"))
    node.submit(Set(b"k", b"v"))
    run(clock, 2)
    assert clock.stopped == 1 and node.failure is not None
    node.stopService()  # what twistd does next
    run(clock, 1)
    assert not node.running


def test_any_failure_inside_the_raft_loop_fail_stops_the_node_once(tmp_path):
    """Not only the disk: a machine that raises while applying leaves a Ready half done; the node logs it once
    (with the traceback) and stops instead of repeating 'ready() called twice without advance()'."""
    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    victim = next(n for n in network.nodes.values() if n is not leader)
    captured = capture_log(victim)
    calls = []

    def apply(index, data):
        calls.append(index)
        raise RuntimeError("corrupt state machine")

    victim.machine.apply = apply
    assert result_of(clock, leader.submit(Set(b"k", b"v"))) is OK
    run(clock, 5)
    assert not victim.running and len(calls) == 1
    (line,) = captured.at("critical")
    assert "corrupt state machine" in line["log_format"].format(**line) and line["log_failure"] is not None
    assert "the Raft loop failed" in victim.view.failure
    assert result_of(clock, leader.submit(Set(b"k2", b"v2"))) is OK
    for node in network.nodes.values():
        if node.running:
            node.stopService()
    run(clock, 3)
