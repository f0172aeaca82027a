"""kvd.discovery.metrics: the scrape-time numbers of a fake node and the counting wrappers."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from kvd.discovery.metrics import NodeMetrics
from tests.discovery.fakes import FakeNode


def scrape(metrics):
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_a_follower_exports_its_raft_numbers():
    node = FakeNode()
    node.set_leader("127.0.0.1:7002")
    node.peers.connected = {"127.0.0.1:7002"}
    s = scrape(NodeMetrics(process=False).attach(node.view))
    assert value(s, "kvd_raft_role", role="follower") == 1 and value(s, "kvd_raft_role", role="leader") == 0
    assert value(s, "kvd_raft_term") == 3 and value(s, "kvd_raft_commit_index") == 10 and value(s, "kvd_raft_applied_index") == 10
    assert value(s, "kvd_raft_has_leader") == 1 and value(s, "kvd_raft_is_leader") == 0
    assert value(s, "kvd_raft_leader_changes_total") == 2 and value(s, "kvd_raft_elections_total") == 1
    assert value(s, "kvd_raft_proposals_total") == 7 and value(s, "kvd_raft_reads_total") == 3
    assert value(s, "kvd_raft_lease_reads_total") == 0
    assert value(s, "kvd_raft_snapshots_taken_total") == 1 and value(s, "kvd_raft_snapshots_installed_total") == 0
    assert value(s, "kvd_raft_peer_connected", peer="127.0.0.1:7002") == 1
    assert value(s, "kvd_raft_peer_connected", peer="127.0.0.1:7003") == 0
    assert value(s, "kvd_raft_log_entries") == 12 and value(s, "kvd_storage_used_bytes") == 4096
    assert value(s, "kvd_raft_voters") == 3 and value(s, "kvd_raft_learners") == 1
    assert value(s, "kvd_node_info", node_id="127.0.0.1:7001", cluster_id="test", client_address="127.0.0.1:7001") == 1
    assert not any(name == "kvd_raft_peer_lag_entries" for name, _ in s)  # a follower knows no progress


def test_the_reads_a_leader_answered_by_its_lease_are_counted_at_scrape_time():
    """kvd_raft_lease_reads_total is the core's count (INFO raft's raft_lease_reads), read at each scrape."""
    node = FakeNode()
    metrics = NodeMetrics(process=False).attach(node.view)
    node.core.lease_reads_served = 5
    assert value(scrape(metrics), "kvd_raft_lease_reads_total") == 5
    node.core.lease_reads_served = 9
    assert value(scrape(metrics), "kvd_raft_lease_reads_total") == 9
    assert node.view.info()["raft_lease_reads"] == 9


def test_the_leader_exports_replication_lag_per_peer():
    node = FakeNode()
    node.set_leader("127.0.0.1:7001")
    node.core.log.last = 50
    node.core.progress = {"127.0.0.1:7002": {"match": 50, "active": True}, "127.0.0.1:7003": {"match": 20, "active": False}}
    s = scrape(NodeMetrics(process=False).attach(node.view))
    assert value(s, "kvd_raft_peer_lag_entries", peer="127.0.0.1:7002") == 0
    assert value(s, "kvd_raft_peer_lag_entries", peer="127.0.0.1:7003") == 30
    assert value(s, "kvd_raft_peer_active", peer="127.0.0.1:7003") == 0
    assert value(s, "kvd_raft_peer_match_index", peer="127.0.0.1:7002") == 50


def test_a_broken_view_does_not_break_the_scrape():
    node = FakeNode()
    node.role_name = lambda: 1 / 0
    s = scrape(NodeMetrics(process=False).attach(node.view))
    assert value(s, "kvd_raft_commits_total") == 0  # the event counters are still there


def test_wrappers_time_syncs_and_applies_and_count_commits():
    metrics = NodeMetrics(process=False)

    class Storage:
        saved = []

        def save(self, hard_state, entries, snapshot, sync):
            self.saved.append(sync)

        def stats(self):
            return {}

    class Machine:
        applied_index = 0

        def apply(self, index, data):
            self.applied_index = index
            return b"ok"

        def apply_noop(self, index):
            self.applied_index = index

    storage = metrics.timed_storage(Storage())
    storage.save(None, [], None, sync=True)
    storage.save(None, [], None, sync=False)
    storage.save(None, [], None, True)
    machine = metrics.counted_machine(Machine())
    assert machine.apply(1, b"x") == b"ok"
    machine.apply_noop(2)
    assert machine.applied_index == 2 and storage.saved == [True, False, True]
    s = scrape(metrics)
    assert value(s, "kvd_storage_sync_seconds_count") == 2
    assert value(s, "kvd_apply_seconds_count") == 1
    assert value(s, "kvd_raft_commits_total") == 2


def test_the_client_port_counts_connections_and_bytes():
    metrics = NodeMetrics(process=False)

    class Echo(Protocol):
        def dataReceived(self, data):
            self.transport.write(data + b"!")

    factory = metrics.counting_factory(Factory.forProtocol(Echo))
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"hello")
    assert transport.value() == b"hello!"
    s = scrape(metrics)
    assert value(s, "kvd_client_connections") == 1 and value(s, "kvd_client_connections_accepted_total") == 1
    assert value(s, "kvd_client_received_bytes_total") == 5 and value(s, "kvd_client_sent_bytes_total") == 6
    protocol.connectionLost(None)
    assert value(scrape(metrics), "kvd_client_connections") == 0
    assert factory.protocol is not None and factory.wrappedFactory.protocol is Echo
