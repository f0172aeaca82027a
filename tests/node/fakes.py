"""
An in-process cluster of real NodeServices over Twisted's fake clock: real
core, real LMDB (in a tmp dir), real KV machine, and an in-memory peer
network that delivers through ``clock.callLater(0)`` and can cut links.
No sockets, no wall clock, no sleeps.
"""

from typing import Dict, Set, Tuple

from twisted.internet import defer, task
from twisted.python.failure import Failure

from kvd.address import MemberAddress
from kvd.kv.machine import KVMachine
from kvd.node import NodeSettings, NodeService
from kvd.store.lmdb import LmdbStorage
from kvd.wire.errors import ForwardError


class FakeNetwork:
    def __init__(self, clock: task.Clock):
        self.clock = clock
        self.nodes: Dict[str, NodeService] = {}
        self.cut: Set[Tuple[str, str]] = set()
        self.sent = []
        self.forwarded = []  # (from, to) of every forwarded command

    def reachable(self, src, dst) -> bool:
        node = self.nodes.get(dst)
        return node is not None and node.running and (src, dst) not in self.cut

    def isolate(self, node_id):
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def heal(self):
        self.cut = set()


class FakePeers:
    def __init__(self, network: FakeNetwork, node_id: str):
        self.network = network
        self.node_id = node_id
        self.links = set()  # peers this node keeps a link to
        self.forgotten = []
        self.redialled = []

    def dialled(self):
        return list(self.links)

    def forget(self, node_id):
        self.links.discard(node_id)
        self.forgotten.append(node_id)

    def redial(self, node_id):
        self.links.add(node_id)
        self.redialled.append(node_id)

    def send_many(self, messages):
        for m in messages:
            self.links.add(m.dst)  # as PeerTransport: a send keeps a link to its peer
            self.network.sent.append(m)
            if self.network.reachable(m.src, m.dst):
                target = self.network.nodes[m.dst]
                self.network.clock.callLater(0, _deliver, self.network, target, m)

    def forward(self, node_id, payload, timeout=10.0):
        """As PeerTransport.forward: the answer, or TIMEOUT after ``timeout`` seconds (a late answer is dropped)."""
        if not self.network.reachable(self.node_id, node_id):
            return defer.fail(ForwardError("TRYAGAIN", "no connection to %s" % node_id))
        self.network.forwarded.append((self.node_id, node_id))
        answer = defer.Deferred()

        def settle(outcome):
            if timer.active():
                timer.cancel()
            if not answer.called:
                answer.callback(outcome) if not isinstance(outcome, Failure) else answer.errback(outcome)

        def time_out():
            if not answer.called:
                answer.errback(ForwardError("TIMEOUT", "no answer from %s within %gs" % (node_id, timeout)))

        timer = self.network.clock.callLater(timeout, time_out)
        self.network.nodes[node_id].forwarded(self.node_id, payload).addBoth(settle)
        return answer

    def stop(self):
        return None


def _deliver(network, target, message):
    if network.reachable(message.src, message.dst):
        target.message_received(message)


def make_cluster(tmp_path, n=3, clock=None, **config_overrides):
    clock = clock or task.Clock()
    network = FakeNetwork(clock)
    addresses = {"127.0.0.1:%d" % (7001 + i): str(MemberAddress.from_client("127.0.0.1:%d" % (7001 + i))) for i in range(n)}
    for i, node_id in enumerate(sorted(addresses)):
        network.nodes[node_id] = make_node(tmp_path, network, node_id, addresses, seed=i, **config_overrides)
    return clock, network


def make_node(tmp_path, network, node_id, initial_cluster, seed=0, **overrides):
    import random

    config = NodeSettings(
        node_id=node_id,
        cluster_id="test",
        address=MemberAddress.from_client(node_id),
        data_dir=str(tmp_path / node_id.replace(":", "-")),
        initial_cluster=initial_cluster,
        tick_s=0.1,
        **overrides,
    )
    node = NodeService(config, LmdbStorage(config.data_dir, sync=False), KVMachine(), network.clock, random.Random(seed))
    node.peers = FakePeers(network, node_id)
    return node


def run(clock, seconds, step=0.05):
    """Advance fake time in small steps so callLater(0) deliveries interleave with ticks."""
    for _ in range(int(seconds / step)):
        clock.advance(step)
        clock.advance(0)


def leaders(network):
    return [n for n in network.nodes.values() if n.running and n.core.is_leader()]
