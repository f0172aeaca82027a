"""
``NodeService.backup_point`` (what /v1/backup streams from), on the fake
clock with a durable machine: the state on disk lags the applied index by
the writes not yet flushed; after the point, a stream of the disk holds
every write acknowledged before it was asked, on the leader and on a
follower alike.
"""

import random

from twisted.internet import task

from kvd.address import MemberAddress
from kvd.kv.commands import Get, Set
from kvd.kv.machine import KVMachine
from kvd.node import NodeService, NodeSettings
from kvd.store.lmdb import LmdbStorage
from kvd.store.state import LmdbState
from tests.node.fakes import FakeNetwork, FakePeers, leaders, run


def durable_cluster(tmp_path, n):
    clock = task.Clock()
    network = FakeNetwork(clock)
    ids = ["127.0.0.1:%d" % (7001 + i) for i in range(n)]
    addresses = {i: str(MemberAddress.from_client(i)) for i in ids}
    for seed, node_id in enumerate(ids):
        config = NodeSettings(node_id=node_id, cluster_id="test", address=MemberAddress.from_client(node_id),
                              data_dir=str(tmp_path / node_id.replace(":", "-")), initial_cluster=addresses, tick_s=0.1)
        state = LmdbState()
        node = NodeService(config, LmdbStorage(config.data_dir, sync=False, state=state), KVMachine(keyspace=state),
                           clock, random.Random(seed))
        node.peers = FakePeers(network, node_id)
        network.nodes[node_id] = node
    for node in network.nodes.values():
        node.startService()
    run(clock, 3)
    return clock, network


def on_disk(node):
    stream = node.storage.state.open_stream(0)
    stream.close()
    return stream.applied_index


def test_the_point_flushes_every_acknowledged_write_to_disk(tmp_path):
    clock, network = durable_cluster(tmp_path, 3)
    leader = leaders(network)[0]
    follower = next(n for n in network.nodes.values() if n is not leader)
    done = []
    for i in range(5):  # fewer than a flush's worth of writes: the disk lags
        leader.submit(Set(b"k%d" % i, b"v")).addCallback(done.append)
        run(clock, 0.3)
    assert len(done) == 5
    acknowledged = leader.core.applied
    assert on_disk(leader) < acknowledged  # what the point is for: without it the stream would miss writes
    for node in (leader, follower):
        points = []
        node.backup_point().addCallback(points.append)
        run(clock, 2)
        assert points and points[0] >= acknowledged
        snapshot, stream = node.open_snapshot_stream(points[0])
        try:
            assert stream.applied_index >= acknowledged and snapshot.index == stream.applied_index
        finally:
            stream.close()
        assert node.machine.read(Get(b"k4")) == b"v"
    for node in network.nodes.values():
        node.stopService()
