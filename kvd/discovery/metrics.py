# -*- test-case-name: tests.discovery.test_metrics -*-
"""
Prometheus metrics of one node (``GET /metrics`` on the HTTP port), in the
text exposition format of ``prometheus_client``.

Each node has its own registry (never the process-global one), so several
nodes in one process (tests) do not mix.  Two kinds of numbers:

- read from the node at scrape time (a custom collector): role, term, commit,
  applied and last index, members, leader changes, elections, proposals and
  reads (those answered by a lease too), snapshots taken and installed, per-peer connection state, and on
  the leader each peer's match index and replication lag, log size;
- counted as things happen, by thin wrappers installed in kvd.tap around the
  storage (sync latency), the state machine (apply latency, commits) and the
  client port's factory (connections, bytes in and out; plain integers read
  at scrape time, as these move on every request), and by the DNS server
  (answers by rcode, dropped packets).

The wrappers only time and count; they change nothing the node sees.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

_log = Logger()

ROLES = ("leader", "follower", "pre-candidate", "candidate", "learner", "joining")
RCODES = {dns.OK: "NOERROR", dns.EFORMAT: "FORMERR", dns.ESERVER: "SERVFAIL", dns.ENAME: "NXDOMAIN", dns.ENOTIMP: "NOTIMP", dns.EREFUSED: "REFUSED"}

SYNC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
APPLY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1)


class NodeMetrics:
    """The registry of one node, its event counters and the wrappers that feed them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, process: bool = True):
        self.registry = CollectorRegistry(auto_describe=False)
        self.view = None
        r = self.registry
        self.sync_seconds = Histogram(
            "kvd_storage_sync_seconds", "Seconds to write and fsync one batch of Raft state (one LMDB transaction).", buckets=SYNC_BUCKETS, registry=r
        )
        self.apply_seconds = Histogram(
            "kvd_apply_seconds", "Seconds to apply one committed entry to the key/value state machine.", buckets=APPLY_BUCKETS, registry=r
        )
        # Counted on every request: plain integers, exported at scrape time (a prometheus_client
        # Counter takes a lock per increment, about 1 us each, several times per request).
        self.counts = EventCounts()
        r.register(_EventCountCollector(self.counts))
        self.dns_queries = Counter("kvd_dns_answers", "DNS answers sent, by response code.", ["rcode"], registry=r)
        self.dns_drops = Counter("kvd_dns_dropped", "DNS packets dropped or answered FORMERR because they could not be decoded, and responses sent to us.", registry=r)
        r.register(_NodeCollector(self))
        if process:
            try:
                ProcessCollector(registry=r)
            except Exception:  # pragma: no cover - no /proc: fine without
                pass

    def attach(self, view) -> "NodeMetrics":
        """Read the node's numbers at each scrape through ``view`` (kvd.node.NodeView)."""
        self.view = view
        return self

    def watch_reactor(self, meter) -> None:
        """Export a reactor stall meter's numbers (kvd.node.stall.StallMeter) at each scrape."""
        self.registry.register(_StallCollector(meter))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------ DNS hooks
    def dns_answered(self, rcode: int) -> None:
        self.dns_queries.labels(RCODES.get(rcode, str(rcode))).inc()

    def dns_dropped(self) -> None:
        self.dns_drops.inc()

    # ------------------------------------------------------------ wrappers
    def timed_storage(self, storage) -> "TimedStorage":
        return TimedStorage(storage, self)

    def counted_machine(self, machine) -> "CountedMachine":
        return CountedMachine(machine, self)

    def counting_factory(self, factory) -> "CountingFactory":
        return CountingFactory(factory, self)


class TimedStorage:
    """The node's storage, with each synced save timed (everything else passes through)."""

    def __init__(self, storage, metrics: NodeMetrics):
        self._storage = storage
        self._metrics = metrics

    def save(self, *args, **kwargs):
        sync = kwargs.get("sync", args[3] if len(args) > 3 else False)
        if not sync:
            return self._storage.save(*args, **kwargs)
        started = time.perf_counter()
        try:
            return self._storage.save(*args, **kwargs)
        finally:
            self._metrics.sync_seconds.observe(time.perf_counter() - started)

    def write(self, hard_state, entries, snapshot, sync, done):
        if not sync:
            return self._storage.write(hard_state, entries, snapshot, sync, done)
        started = time.perf_counter()

        def timed_done(error=None):
            # From issue to completion: on the writer thread that includes waiting for it.
            self._metrics.sync_seconds.observe(time.perf_counter() - started)
            if error is None:
                done()
            else:
                done(error)

        return self._storage.write(hard_state, entries, snapshot, sync, timed_done)

    def __getattr__(self, name):
        return getattr(self._storage, name)


class CountedMachine:
    """The node's state machine, with each applied entry counted and timed."""

    def __init__(self, machine, metrics: NodeMetrics):
        self._machine = machine
        self._metrics = metrics

    def apply(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self._machine.apply(*args, **kwargs)
        finally:
            self._metrics.apply_seconds.observe(time.perf_counter() - started)
            self._metrics.counts.commits += 1

    def apply_noop(self, *args, **kwargs):
        try:
            return self._machine.apply_noop(*args, **kwargs)
        finally:
            self._metrics.counts.commits += 1

    def __getattr__(self, name):
        return getattr(self._machine, name)


class _CountingProtocol(ProtocolWrapper):
    def makeConnection(self, transport):
        counts = self.factory.metrics.counts
        counts.connections += 1
        counts.connections_accepted += 1
        super().makeConnection(transport)

    def dataReceived(self, data):
        self.factory.metrics.counts.received_bytes += len(data)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data):
        self.factory.metrics.counts.sent_bytes += len(data)
        self.transport.write(data)

    def writeSequence(self, data):
        self.factory.metrics.counts.sent_bytes += sum(len(d) for d in data)
        self.transport.writeSequence(data)

    def connectionLost(self, reason):
        self.factory.metrics.counts.connections -= 1
        super().connectionLost(reason)


class CountingFactory(WrappingFactory):
    """Wraps the client port's factory to count connections and bytes."""

    protocol = _CountingProtocol
    noisy = False

    def __init__(self, wrapped, metrics: NodeMetrics):
        super().__init__(wrapped)
        self.metrics = metrics

    def __getattr__(self, name):
        # Let code that inspects the client factory (tests, tools) see the real one.
        if name == "wrappedFactory":
            raise AttributeError(name)
        return getattr(self.wrappedFactory, name)


# ================================================================ scrape-time numbers
def _gauge(name: str, doc: str, value, labels=None, label_values=None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    if labels:
        family.add_metric(label_values, value)
    else:
        family.add_metric([], value)
    return family


class EventCounts:
    """The node's event counters: plain integers, bumped by the reactor thread only."""

    __slots__ = ("commits", "connections", "connections_accepted", "received_bytes", "sent_bytes")

    def __init__(self) -> None:
        self.commits = self.connections = self.connections_accepted = self.received_bytes = self.sent_bytes = 0


class _EventCountCollector:
    def __init__(self, counts: EventCounts):
        self.counts = counts

    def collect(self) -> Iterator:
        c = self.counts
        yield CounterMetricFamily("kvd_raft_commits", "Log entries committed and applied on this node since it started.", value=c.commits)
        yield _gauge("kvd_client_connections", "Client (Redis protocol) connections open now.", c.connections)
        yield CounterMetricFamily("kvd_client_connections_accepted", "Client connections accepted since the node started.", value=c.connections_accepted)
        yield CounterMetricFamily("kvd_client_received_bytes", "Bytes received from clients on the client port.", value=c.received_bytes)
        yield CounterMetricFamily("kvd_client_sent_bytes", "Bytes sent to clients on the client port.", value=c.sent_bytes)


class _NodeCollector:
    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator:
        view = self.metrics.view
        if view is None or not view.started:
            return
        try:
            yield from self._collect(view)
        except Exception:
            # A scrape must never break the node; say so once per failure.
            _log.failure("metrics: collecting the node's numbers failed")

    def _collect(self, view) -> Iterator:
        info = GaugeMetricFamily("kvd_node_info", "This node's identity (value 1).", labels=["node_id", "cluster_id", "client_address"])
        info.add_metric([view.node_id, view.cluster_id, view.address.client], 1)
        yield info
        role = GaugeMetricFamily("kvd_raft_role", "1 for the role this node has now, 0 for the others.", labels=["role"])
        current = view.role()
        for name in ROLES:
            role.add_metric([name], 1 if name == current else 0)
        yield role
        leader = view.live_leader()
        yield _gauge("kvd_raft_has_leader", "1 while this node knows a live leader (itself included).", 1 if leader else 0)
        yield _gauge("kvd_raft_is_leader", "1 while this node is the leader.", 1 if leader == view.node_id else 0)
        yield _gauge("kvd_raft_term", "Current Raft term.", view.term)
        yield _gauge("kvd_raft_commit_index", "Highest log index this node knows to be committed.", view.commit_index)
        yield _gauge("kvd_raft_applied_index", "Highest log index applied to this node's state machine.", view.applied_index)
        yield _gauge("kvd_raft_leader_commit_index", "The cluster's commit index as far as this node knows (its own on the leader).", view.leader_commit())
        yield _gauge("kvd_raft_last_index", "Index of the last entry in this node's log.", view.last_index)
        yield _gauge("kvd_raft_snapshot_index", "Index covered by this node's latest snapshot.", view.snapshot_index)
        yield _gauge("kvd_raft_log_entries", "Entries in the log (after the latest snapshot).", max(0, view.last_index - view.first_index + 1))
        yield _gauge("kvd_raft_voters", "Voters in the configuration this node has.", len(view.voters()))
        yield _gauge("kvd_raft_learners", "Learners in the configuration this node has.", len(view.learners()))
        stats = view.stats()
        counters = [
            ("kvd_raft_leader_changes", "Times this node saw a new leader.", stats.get("new_leaders", stats.get("leader_changes", 0))),
            ("kvd_raft_state_changes", "Changes of this node's role, term or leader.", stats.get("leader_changes", 0)),
            ("kvd_raft_elections", "Elections this node started (it became a candidate).", stats.get("elections", 0)),
            ("kvd_raft_proposals", "Client commands this node proposed as leader.", stats.get("proposals", 0)),
            ("kvd_raft_reads", "Linearizable reads clients asked this node for (each by a ReadIndex round, or by the leader's lease with --lease-reads).",
             stats.get("reads", 0)),
            # From the core, as INFO raft's raft_lease_reads: the leader counts a follower's read it answers too.
            ("kvd_raft_lease_reads", "Read indexes this node answered as leader by its lease, without a heartbeat round (--lease-reads).",
             view.lease_reads()),
            ("kvd_raft_snapshots_taken", "Snapshots this node took of its state machine.", stats.get("snapshots", 0)),
            ("kvd_raft_snapshots_installed", "Snapshots this node installed from a leader.", stats.get("snapshots_installed", 0)),
        ]
        for name, doc, value in counters:
            yield CounterMetricFamily(name, doc, value=value)
        yield from self._peers(view)
        yield from self._storage(view)

    def _peers(self, view) -> Iterator:
        me = view.node_id
        peers = [p for p in view.members() if p != me]
        connected = GaugeMetricFamily("kvd_raft_peer_connected", "1 while this node's outgoing link to the peer is up.", labels=["peer"])
        for peer in peers:
            connected.add_metric([peer], 1 if view.peer_connected(peer) else 0)
        yield connected
        if not view.is_leader():
            return
        last = view.last_index
        active = GaugeMetricFamily("kvd_raft_peer_active", "Leader only: 1 if the peer answered within an election timeout.", labels=["peer"])
        match = GaugeMetricFamily("kvd_raft_peer_match_index", "Leader only: highest log index known to be on the peer.", labels=["peer"])
        lag = GaugeMetricFamily("kvd_raft_peer_lag_entries", "Leader only: entries the peer is behind the leader's log.", labels=["peer"])
        for peer, progress in view.progress().items():
            active.add_metric([peer], 1 if progress["active"] else 0)
            match.add_metric([peer], progress["match"])
            lag.add_metric([peer], max(0, last - progress["match"]))
        yield active
        yield match
        yield lag

    def _storage(self, view) -> Iterator:
        numbers = view.storage_stats()
        if not numbers:
            return
        yield _gauge("kvd_storage_log_entries", "Log entries stored on disk.", numbers.get("entries", 0))
        yield _gauge("kvd_storage_used_bytes", "Bytes the LMDB environment uses.", numbers.get("bytes_used", 0))
        yield _gauge("kvd_storage_map_bytes", "Size of the LMDB memory map.", numbers.get("map_size", 0))


class _StallCollector:
    """The reactor stall meter's readings: the longest stall since start and lately, stalls over each threshold."""

    def __init__(self, meter):
        self.meter = meter

    def collect(self) -> Iterator:
        m = self.meter
        yield _gauge("kvd_reactor_stall_max_seconds", "Longest reactor stall since the node started: how much later than its "
                     "interval a timer tick came (kvd.node.stall).", m.max_ms / 1000.0)
        yield _gauge("kvd_reactor_stall_recent_max_seconds", "Longest reactor stall of the last %d seconds." % m.recent_s,
                     m.recent_max_ms() / 1000.0)
        over = CounterMetricFamily("kvd_reactor_stalls", "Reactor stalls longer than the threshold, since the node started.",
                                   labels=["over_seconds"])
        for threshold in m.thresholds_ms:
            over.add_metric(["%g" % (threshold / 1000.0)], m.over[threshold])
        yield over
