"""
Pub/sub over real nodes on the fake clock (kvd.kv.events, kvd.node.service):
every node hands the same events, in log order, to its subscribers; an
expired key's event is produced on every node; a restart's replay delivers
nothing again.
"""

from kvd.kv import events as ev
from kvd.kv.commands import Publish, Set
from kvd.kv.results import OK
from tests.node.fakes import leaders, make_cluster, make_node, run
from tests.node.test_expiry import answer


def listen(network):
    heard = {}
    for node_id, node in network.nodes.items():
        heard[node_id] = []
        node.on_events = heard[node_id].extend
    return heard


def test_every_node_delivers_the_same_messages_in_log_order(cluster):
    clock, network = cluster
    heard = listen(network)
    (leader,) = leaders(network)
    followers = [n for n in network.nodes.values() if n is not leader]
    ds = [followers[i % 2].submit(Publish(b"ch", b"%d" % i)) for i in range(10)]
    ds.append(leader.submit(Publish(b"ch", b"leader")))
    assert all(answer(clock, d) == 0 for d in ds)  # the machine's 0; the client port answers its own count
    run(clock, 1)
    sequences = {tuple(h) for h in heard.values()}
    assert len(sequences) == 1
    (sequence,) = sequences
    assert sorted(sequence) == sorted(ev.Message(b"ch", m) for m in [b"%d" % i for i in range(10)] + [b"leader"])


def test_an_expired_key_gives_its_event_on_every_node(cluster):
    clock, network = cluster
    heard = listen(network)
    (leader,) = leaders(network)
    assert answer(clock, leader.submit(Set(b"k", b"v", expire=500))) is OK
    run(clock, 3)  # the leader's Tick reclaims it, through the log
    for node_id, events in heard.items():
        assert events[:2] == [ev.string(b"set", b"k"), ev.generic(b"expire", b"k")], node_id
        assert ev.expired(b"k") in events, node_id


def test_a_restart_does_not_deliver_the_replayed_entries_again(tmp_path):
    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    assert answer(clock, leader.submit(Publish(b"ch", b"before"))) == 0
    run(clock, 1)
    for node in list(network.nodes.values()):
        node.stopService()
        run(clock, 1)
    initial = {nid: str(n.config.address) for nid, n in network.nodes.items()}
    heard = {}
    for i, nid in enumerate(sorted(initial)):
        node = network.nodes[nid] = make_node(tmp_path, network, nid, initial, seed=10 + i)
        heard[nid] = []
        node.on_events = heard[nid].extend
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    assert all(node.machine.applied_index > 2 for node in network.nodes.values())  # the log was applied again
    assert answer(clock, leader.submit(Publish(b"ch", b"after"))) == 0
    run(clock, 1)
    for nid, events in heard.items():
        assert events == [ev.Message(b"ch", b"after")], nid
    for node in network.nodes.values():
        node.stopService()
    run(clock, 2)


def test_a_failing_subscriber_does_not_stop_the_node(cluster):
    clock, network = cluster
    (leader,) = leaders(network)

    def broken(events):
        raise RuntimeError("a subscriber's bug")

    for node in network.nodes.values():
        node.on_events = broken
    assert answer(clock, leader.submit(Publish(b"ch", b"m"))) == 0
    assert answer(clock, leader.submit(Set(b"k", b"v"))) is OK
    assert all(node.failure is None for node in network.nodes.values())
