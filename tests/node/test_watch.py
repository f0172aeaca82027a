"""
KVD.WATCH's feed over real nodes on the fake clock (kvd.node.service, kvd.kv.watch): every node records the
same changes at the same revisions; a restart starts the history at the revision loaded and records what it
applies again; a snapshot installed resets it and cancels the node's watches.
"""

from kvd.kv.commands import Get, MSet, Set
from kvd.kv.results import OK
from kvd.kv.watch import PUT, Change, WatchHistory
from kvd.resp.watch import WatchHub
from tests.node.fakes import leaders, make_cluster, make_node, run
from tests.node.test_expiry import answer


def feed(network):
    hubs = {}
    for node_id, node in network.nodes.items():
        hubs[node_id] = node.watch_feed = WatchHub(WatchHistory())
    return hubs


def start(network, hubs=None):
    for node in network.nodes.values():
        if hubs is not None:
            node.watch_feed = hubs.setdefault(node.config.node_id, WatchHub(WatchHistory()))
        node.startService()


def stop(clock, network):
    for node in network.nodes.values():
        if node.running:
            node.stopService()
    run(clock, 2)


def test_every_node_records_the_same_changes_at_the_same_revisions(tmp_path):
    clock, network = make_cluster(tmp_path)
    hubs = feed(network)
    start(network)
    run(clock, 5)
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    ds = [follower.submit(Set(b"k%d" % (i % 3), b"v%d" % i)) for i in range(10)]
    ds.append(leader.submit(MSet(((b"a", b"1"), (b"b", b"2")))))
    assert all(answer(clock, d) is OK for d in ds)
    run(clock, 1)
    histories = {nid: hub.history.since(1) for nid, hub in hubs.items()}
    assert len({tuple(h) for h in histories.values()}) == 1
    (history,) = {tuple(h) for h in histories.values()}
    assert [c.revision for c in history] == list(range(1, 12)) + [11]
    assert history[-2:] == (Change(11, PUT, b"a", b"1"), Change(11, PUT, b"b", b"2"))
    stop(clock, network)


def test_a_restart_starts_the_history_at_the_revision_loaded(tmp_path):
    clock, network = make_cluster(tmp_path)
    start(network, {})
    run(clock, 5)
    (leader,) = leaders(network)
    for i in range(5):
        assert answer(clock, leader.submit(Set(b"k", b"v%d" % i))) is OK
    run(clock, 1)
    stop(clock, network)
    initial = {nid: str(n.config.address) for nid, n in network.nodes.items()}
    hubs = {}
    for i, nid in enumerate(sorted(initial)):
        network.nodes[nid] = make_node(tmp_path, network, nid, initial, seed=10 + i)
    start(network, hubs)
    run(clock, 5)
    (leader,) = leaders(network)
    assert answer(clock, leader.submit(Set(b"k", b"after"))) is OK
    run(clock, 1)
    for nid, hub in hubs.items():
        history = hub.history
        assert history.revision == 6, nid
        assert 1 <= history.oldest <= 6, nid  # from the revision loaded; entries applied again are recorded
        changes = history.since(history.oldest)
        assert [c.revision for c in changes] == list(range(history.oldest, 7)), nid
        assert changes[-1] == Change(6, PUT, b"k", b"after"), nid
    stop(clock, network)


def test_a_snapshot_installed_resets_the_history_and_cancels_the_watches(tmp_path):
    clock, network = make_cluster(tmp_path, snapshot_entries=20, snapshot_keep_entries=0)
    hubs = feed(network)
    start(network)
    run(clock, 5)
    (leader,) = leaders(network)
    lagger = next(n for n in network.nodes.values() if n is not leader)
    pushed = []
    hubs[lagger.config.node_id].open(b"", None, pushed.append, lambda start: None)
    network.isolate(lagger.config.node_id)
    run(clock, 3)
    for i in range(100):
        leader.submit(Set(b"k%d" % i, b"v%d" % i))
    run(clock, 3)
    network.heal()
    run(clock, 5)
    assert lagger.stats.get("snapshots_installed", 0) >= 1
    assert lagger.machine.read(Get(b"k99")) == b"v99"
    hub = hubs[lagger.config.node_id]
    assert pushed and pushed[0][0] == b"watch-cancelled" and b"snapshot" in pushed[0][2]
    assert len(hub) == 0 and hub.cancelled == 1
    assert hub.history.revision == 100 and hub.history.oldest > 1  # what came before the snapshot is unknown here
    stop(clock, network)
