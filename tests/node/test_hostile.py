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


def test_from_the_failure_on_health_is_503_and_the_node_serves_nothing(tmp_path):
    """In the same turn as the failure, before any stop: health says why, and no read (not even READONLY) or write runs."""
    from kvd.errors import KvdError
    from kvd.node.service import EXIT_STORAGE

    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    victim = next(n for n in network.nodes.values() if n is not leader)
    assert result_of(clock, leader.submit(Set(b"k", b"v"))) is OK
    assert health_view(victim.view)[0] == 200
    capture_log(victim)
    victim.replica._fail(OSError(5, "Input/output error"))  # the loop's own fail-stop, at this instant
    status, body = health_view(victim.view)
    assert status == 503 and body["reason"].startswith("fail-stopped: storage failed in data dir %s" % victim.config.data_dir)
    assert "Input/output error" in body["reason"]
    assert victim.exit_code == EXIT_STORAGE
    requests = (victim.read(Get(b"k")), victim.read(Get(b"k"), linearizable=False), victim.submit(Set(b"k", b"x")),
                victim.forwarded(leader.config.node_id, b"a write"), victim.join("127.0.0.1:7009", "127.0.0.1:7009:17009"),
                victim.remove(leader.config.node_id))
    for request in requests:
        out = []
        request.addBoth(out.append)
        assert out and out[0].check(KvdError), out
        assert "fail-stopped" in str(out[0].value)
    for node in network.nodes.values():
        if node.running:
            node.stopService()
    run(clock, 3)


def test_a_storage_error_in_a_read_outside_the_loop_fail_stops_too(tmp_path):
    """The stats the metrics and INFO read: an error there (a corrupt snapshot record, EIO) is a storage failure."""
    from kvd.store.lmdb import CorruptStorage

    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    victim = next(iter(network.nodes.values()))
    captured = capture_log(victim)
    assert victim.view.storage_stats()["entries"] >= 1

    def stats():
        raise CorruptStorage("data dir %s: snapshot: checksum mismatch" % victim.config.data_dir)

    victim.storage.stats = stats
    assert victim.view.storage_stats() == {}
    assert health_view(victim.view)[0] == 503 and "checksum mismatch" in victim.view.failure
    run(clock, 3)
    assert not victim.running
    (line,) = captured.at("critical")
    assert victim.config.data_dir in line["log_format"].format(**line)
    for node in network.nodes.values():
        if node.running:
            node.stopService()
    run(clock, 3)


def test_a_corrupt_store_at_start_is_one_line_and_a_storage_exit_status(tmp_path):
    """startService on a store whose log fails its checksum: one critical line, SystemExit(EXIT_STORAGE), no core."""
    import pytest

    from kvd.node.service import EXIT_STORAGE
    from kvd.store import schema

    clock, network = make_cluster(tmp_path, n=1)
    (node,) = network.nodes.values()
    node.startService()
    run(clock, 2)
    assert result_of(clock, node.submit(Set(b"k", b"v"))) is OK
    node.stopService()
    run(clock, 1)
    storage = node.storage
    storage.open("test", node.config.node_id)
    with storage._env.begin(write=True) as txn:
        key = schema.log_key(storage.load().entries[-1].index)
        record = bytearray(txn.get(key, db=storage._db_log))
        record[20] ^= 0x04
        txn.put(key, bytes(record), db=storage._db_log)
    storage.close()
    (again,) = make_cluster(tmp_path, n=1)[1].nodes.values()
    captured = capture_log(again)
    with pytest.raises(SystemExit) as raised:
        again.startService()
    assert raised.value.code == EXIT_STORAGE
    assert again.core is None
    (line,) = captured.at("critical")
    text = line["log_format"].format(**line)
    assert again.config.data_dir in text and "checksum mismatch" in text and "\n" not in text
