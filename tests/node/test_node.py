"""
NodeService over Twisted's fake clock: three real nodes (core, LMDB, KV
machine) wired by an in-memory network (tests/node/fakes.py).
"""

import pytest
from twisted.python.failure import Failure

from kvd.kv.commands import Delete, Get, IncrBy, Set
from kvd.kv.results import OK
from kvd.errors import KvdError
from tests.node.fakes import leaders, make_cluster, make_node, run




def result_of(clock, d, seconds=5):
    out = []
    d.addBoth(out.append)
    run(clock, seconds)
    assert out, "no answer within %s fake seconds" % seconds
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def test_one_leader_is_elected(cluster):
    """Three nodes from a static initial cluster elect exactly one leader, known to all."""
    clock, network = cluster
    (leader,) = leaders(network)
    for node in network.nodes.values():
        assert node.core.leader == leader.config.node_id


def test_write_on_follower_is_readable_everywhere(cluster):
    """A follower forwards the write to the leader; every node then reads it linearizably."""
    clock, network = cluster
    follower = next(n for n in network.nodes.values() if not n.core.is_leader())
    assert result_of(clock, follower.submit(Set(b"k", b"v"))) is OK
    for node in network.nodes.values():
        assert result_of(clock, node.read(Get(b"k"))) == b"v"


def test_batched_writes_share_one_append(cluster):
    """Commands submitted in one reactor turn travel in one AppendEntries per follower."""
    clock, network = cluster
    (leader,) = leaders(network)
    network.sent.clear()
    ds = [leader.submit(IncrBy(b"n", 1)) for _ in range(50)]
    run(clock, 1)
    assert [d.result for d in ds] == list(range(1, 51))
    appends = [m for m in network.sent if type(m).__name__ == "AppendEntries" and m.entries]
    assert len(appends) == 2, appends  # one per follower for all 50 entries
    assert sum(len(m.entries) for m in appends) == 100


def test_minority_fails_fast_with_noleader(cluster):
    """An isolated follower answers NOLEADER (certainly not applied), not a hang."""
    clock, network = cluster
    follower = next(n for n in network.nodes.values() if not n.core.is_leader())
    network.isolate(follower.config.node_id)
    run(clock, 5)  # its leader's heartbeats stop; pre-vote keeps it from disturbing anyone
    with pytest.raises(KvdError) as e:
        result_of(clock, follower.submit(Set(b"x", b"1")), seconds=10)
    assert e.value.code in ("NOLEADER", "TIMEOUT")
    with pytest.raises(KvdError):
        result_of(clock, follower.read(Get(b"x")), seconds=10)


def test_isolated_leader_never_serves_a_stale_read(cluster):
    """An old leader cut off from the majority cannot confirm a read; the majority moves on."""
    clock, network = cluster
    (old,) = leaders(network)
    assert result_of(clock, old.submit(Set(b"k", b"1"))) is OK
    network.isolate(old.config.node_id)
    read = old.read(Get(b"k"))
    run(clock, 5)
    (new,) = [n for n in leaders(network) if n is not old]
    assert result_of(clock, new.submit(Set(b"k", b"2"))) is OK
    with pytest.raises(KvdError):
        result_of(clock, read, seconds=10)
    network.heal()
    run(clock, 5)
    assert result_of(clock, old.read(Get(b"k"))) == b"2"


def test_leader_loss_elects_a_new_one_and_keeps_writes(cluster, tmp_path):
    """Stopping the leader (graceful: it transfers leadership) keeps the cluster writable."""
    clock, network = cluster
    (leader,) = leaders(network)
    assert result_of(clock, leader.submit(Set(b"a", b"1"))) is OK
    d = leader.stopService()
    run(clock, 3)
    assert d.called
    (new,) = leaders(network)
    assert new is not leader
    assert result_of(clock, new.submit(Set(b"b", b"2"))) is OK
    assert result_of(clock, new.read(Get(b"a"))) == b"1"


def test_restart_recovers_from_lmdb(tmp_path):
    """A whole cluster stopped and started again on its data dirs has every acknowledged write."""
    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    for i in range(20):
        leader.submit(Set(b"k%d" % i, b"v%d" % i))
    run(clock, 2)
    assert result_of(clock, leader.submit(Delete((b"k0",)))) == 1
    for node in list(network.nodes.values()):
        node.stopService()
        run(clock, 2)
    initial = {nid: str(n.config.address) for nid, n in network.nodes.items()}
    for i, nid in enumerate(sorted(initial)):
        network.nodes[nid] = make_node(tmp_path, network, nid, initial, seed=10 + i)
        network.nodes[nid].startService()
    run(clock, 5)
    (leader,) = leaders(network)
    assert result_of(clock, leader.read(Get(b"k0"))) is None
    assert result_of(clock, leader.read(Get(b"k19"))) == b"v19"


def test_snapshot_and_catch_up(tmp_path):
    """A node that was down while the log was compacted catches up by snapshot."""
    clock, network = make_cluster(tmp_path, snapshot_entries=20, snapshot_keep_entries=0)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    lagger = next(n for n in network.nodes.values() if n is not leader)
    network.isolate(lagger.config.node_id)
    run(clock, 3)  # long enough to count as down: the log is then compacted past it (not held for it)
    for i in range(100):
        leader.submit(Set(b"k%d" % i, b"v%d" % i))
    run(clock, 3)
    assert leader.core.latest_snapshot.index > 50
    network.heal()
    run(clock, 5)
    assert lagger.core.applied >= leader.core.commit - 1
    assert lagger.machine.read(Get(b"k99")) == b"v99"
    assert lagger.stats.get("snapshots_installed", 0) >= 1


def test_a_follower_that_is_up_is_sent_entries_not_a_snapshot(tmp_path):
    """Compaction keeps the log from the match index of a follower that is up and a little behind."""
    clock, network = make_cluster(tmp_path, snapshot_entries=20, snapshot_keep_entries=0)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    slow = next(n for n in network.nodes.values() if n is not leader)
    network.isolate(slow.config.node_id)  # away for less than an election timeout: still counted as up
    for i in range(100):
        leader.submit(Set(b"k%d" % i, b"v%d" % i))
    clock.advance(0)
    run(clock, 0.1)
    assert leader.core.latest_snapshot.index > 50
    assert leader.core.log.first_index() <= slow.core.applied + 1  # what it misses is still in the log
    network.heal()
    run(clock, 5)
    assert slow.machine.read(Get(b"k99")) == b"v99"
    assert slow.stats.get("snapshots_installed", 0) == 0


def test_a_peer_streamed_a_snapshot_keeps_the_log_while_it_catches_up(tmp_path):
    """
    After a stream the log is kept from the stream's index, then from the
    receiver's match while it rises; once it stops rising for
    CATCH_UP_STALL_S the log is compacted past it (it will get a snapshot).
    """
    from kvd.node.service import CATCH_UP_STALL_S

    clock, network = make_cluster(tmp_path, snapshot_entries=20, snapshot_keep_entries=0)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    joiner = next(n for n in network.nodes.values() if n is not leader)
    network.isolate(joiner.config.node_id)
    run(clock, 3)  # long enough to count as down: followers_floor does not hold the log for it
    streamed_at = leader.core.applied
    streams = {joiner.config.node_id: streamed_at}
    leader.peers.recent_streams = lambda: dict(streams)
    for i in range(100):
        leader.submit(Set(b"k%d" % i, b"v%d" % i))
    run(clock, 1)
    assert leader.core.latest_snapshot.index > streamed_at + 50  # compactions happened...
    assert leader.core.log.first_index() <= streamed_at + 1  # ...but not past the stream
    streams.clear()  # the stream ended long ago; the receiver's match does not rise
    run(clock, CATCH_UP_STALL_S + 1)
    for i in range(100, 200):
        leader.submit(Set(b"k%d" % i, b"v%d" % i))
    run(clock, 1)
    assert leader.core.log.first_index() > streamed_at + 1


def test_exactly_once_when_a_forward_is_retried(cluster):
    """The same envelope forwarded twice (a retry after a lost answer) is applied once."""
    clock, network = cluster
    from kvd.kv.commands import Envelope, encode_envelope

    (leader,) = leaders(network)
    env = encode_envelope(Envelope(b"client-x", 1, 1, 0, IncrBy(b"n", 5)))
    first = result_of(clock, leader.forwarded("someone", env))
    second = result_of(clock, leader.forwarded("someone", env))
    assert first == second
    assert result_of(clock, leader.read(Get(b"n"))) == b"5"


def test_leader_removes_itself_and_steps_down(cluster):
    """Removing the leader answers once committed; the leader steps down and the other two carry on."""
    clock, network = cluster
    (leader,) = leaders(network)
    assert result_of(clock, leader.remove(leader.config.node_id)) == "removed"
    run(clock, 5)
    (new,) = leaders(network)
    assert new is not leader
    assert leader.config.node_id not in new.core.config.members
    assert result_of(clock, new.submit(Set(b"after", b"1"))) is OK


def test_joiner_learns_its_peers_and_becomes_a_voter(cluster, tmp_path):
    """A node started empty is added as a learner, catches up and is promoted to voter."""
    clock, network = cluster
    (leader,) = leaders(network)
    for i in range(30):
        leader.submit(Set(b"k%d" % i, b"v"))
    run(clock, 1)
    joiner = make_node(tmp_path, network, "127.0.0.1:7009", None, seed=9)
    network.nodes[joiner.config.node_id] = joiner
    joiner.startService()
    assert result_of(clock, leader.join(joiner.config.node_id, str(joiner.config.address))) == "joining"
    run(clock, 5)
    assert joiner.config.node_id in leader.core.config.voters
    assert joiner.core.applied >= leader.core.commit - 1
    assert joiner.machine.read(Get(b"k29")) == b"v"


def test_write_on_a_cut_off_leader_times_out_as_unknown(cluster):
    """A write proposed by a leader that then loses its majority ends in TIMEOUT (outcome unknown), never OK."""
    clock, network = cluster
    (leader,) = leaders(network)
    network.isolate(leader.config.node_id)
    d = leader.submit(Set(b"lost", b"1"))
    with pytest.raises(KvdError) as e:
        result_of(clock, d, seconds=leader.config.request_timeout_s + 1)
    assert e.value.code == "TIMEOUT"
    assert not leader.replica.proposals  # the sweep forgot it


def test_a_removed_node_is_no_longer_dialled(cluster):
    """Once a removal is applied, every remaining node closes its link to the removed one (no redialling
    forever, no backoff for a node re-added at the same address)."""
    clock, network = cluster
    (leader,) = leaders(network)
    victim = next(n for n in network.nodes.values() if n is not leader)
    vid = victim.config.node_id
    assert vid in leader.peers.dialled()
    assert result_of(clock, leader.remove(vid)) == "removed"
    run(clock, 2)
    for node in network.nodes.values():
        if node is not victim:
            assert vid not in node.peers.dialled(), node.config.node_id
    assert vid in leader.peers.forgotten  # the leader had a link to it, and closed it


def test_every_member_links_to_a_new_member_at_once(cluster, tmp_path):
    """A follower sends only to its leader; it still dials a node added to the configuration, so that
    node can reach it at once (for a vote, when a removed leader hands over to it)."""
    clock, network = cluster
    (leader,) = leaders(network)
    followers = [n for n in network.nodes.values() if n is not leader]
    joiner = make_node(tmp_path, network, "127.0.0.1:7009", None, seed=9)
    network.nodes[joiner.config.node_id] = joiner
    joiner.startService()
    assert result_of(clock, leader.join(joiner.config.node_id, str(joiner.config.address))) == "joining"
    run(clock, 2)
    for node in followers:
        assert joiner.config.node_id in node.peers.redialled, node.config.node_id
    assert {n.config.node_id for n in followers} <= set(joiner.peers.redialled)


def test_the_session_acknowledges_below_its_lowest_unanswered_write_in_logarithmic_time():
    """ack_below is the lowest seq still waiting: a heap with lazy removal (min() over thousands of clients' writes was linear)."""
    import heapq
    from types import SimpleNamespace

    from kvd.node.session import ClientSession

    session = ClientSession(SimpleNamespace(config=SimpleNamespace(node_id="n1")))
    for seq in range(1, 6):
        session.outstanding_seqs.add(seq)
        heapq.heappush(session._lowest, seq)
    assert session._ack_below() == 1
    session.outstanding_seqs -= {1, 3}
    assert session._ack_below() == 2
    session.outstanding_seqs.discard(2)
    assert session._ack_below() == 4 and session._lowest[0] == 4


def test_followers_learn_a_commit_from_the_next_append_or_the_notice_timer(cluster):
    """RaftSettings.defer_commit_notice: no empty append at once; the node's timer sends one after commit_notice_s."""
    clock, network = cluster
    (leader,) = leaders(network)
    followers = [n for n in network.nodes.values() if n is not leader]
    network.sent.clear()
    d = leader.submit(Set(b"k", b"v"))
    for _ in range(20):
        clock.advance(0)  # every message of the write, without letting time pass
    assert d.called and d.result is OK
    index = leader.core.commit
    empty = lambda: [m for m in network.sent if type(m).__name__ == "AppendEntries" and not m.entries]
    assert empty() == [] and all(f.core.commit < index for f in followers)
    clock.advance(leader.config.commit_notice_s)
    for _ in range(5):
        clock.advance(0)
    assert sorted(m.dst for m in empty() if m.commit == index) == sorted(f.config.node_id for f in followers)
    assert all(f.core.commit == index for f in followers)
