"""
A stand-in for kvd.node.NodeService whose state is set by hand (no reactor,
no storage, no sockets), read through the real NodeView as DNS, HTTP and the
metrics read a node; only the view's role, live leader and cluster commit
come straight from the fields the tests set.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, Optional

from kvd.address import MemberAddress
from kvd.node.view import NodeView
from kvd.raft.messages import Configuration


def member(host: str, port: int) -> str:
    return str(MemberAddress(host, port, port + 10000))


class FakeLog:
    def __init__(self, first=1, last=0):
        self.first, self.last = first, last

    def first_index(self):
        return self.first

    def last_index(self):
        return self.last


class FakeCore:
    def __init__(self, config: Configuration):
        self.config = config
        self.role = "follower"
        self.term = 3
        self.leader: Optional[str] = None
        self.commit = 10
        self.applied = 10
        self.log = FakeLog(1, 12)
        self.latest_snapshot = SimpleNamespace(index=0)
        self.progress: Dict[str, dict] = {}
        self.options = SimpleNamespace(lease_reads=False)
        self.lease_reads_served = 0

    def is_leader(self):
        return self.role == "leader"

    def status(self):
        return {"progress": dict(self.progress)}


class FakePeers:
    def __init__(self):
        self.connected = set()

    def is_connected(self, node_id):
        return node_id in self.connected


class FakeStorage:
    def stats(self):
        return {"entries": 12, "bytes_used": 4096, "map_size": 1 << 20}


class FakeNode:
    """Three voters on 127.0.0.1:7001-7003 plus a learner 10.0.0.4:7004; this node is 7001."""

    def __init__(self, node_id="127.0.0.1:7001", voters=None, learners=None, addresses=None):
        addresses = addresses or {
            "127.0.0.1:7001": member("127.0.0.1", 7001),
            "127.0.0.1:7002": member("127.0.0.1", 7002),
            "127.0.0.1:7003": member("127.0.0.1", 7003),
            "10.0.0.4:7004": member("10.0.0.4", 7004),
        }
        voters = voters if voters is not None else ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
        learners = learners if learners is not None else ["10.0.0.4:7004"]
        host, _, port = node_id.rpartition(":")
        self.config = SimpleNamespace(node_id=node_id, cluster_id="test", address=MemberAddress.from_client(node_id))
        self.core = FakeCore(Configuration.make(voters, learners, addresses))
        self.leader: Optional[str] = None  # what live_leader() answers
        self.cluster_commit = 10
        self.stopping = False
        self.failure = None  # NodeView.stopping reads it (a fail-stopped node)
        self.failure_reason = None  # NodeView.failure, /v1/health
        self.stats = {"leader_changes": 4, "elections": 1, "proposals": 7, "reads": 3, "snapshots": 1, "new_leaders": 2}
        self.peers = FakePeers()
        self.storage = FakeStorage()
        self.membership = SimpleNamespace(pending_joins={}, waiting_for=lambda: "")
        self.advertised: Dict[str, str] = {}
        self.view = FakeView(self)

    def storage_stats(self):
        return dict(self.storage.stats())

    def live_leader(self):
        return self.leader

    def leader_commit(self):
        return max(self.core.commit, self.cluster_commit)

    def role_name(self):
        return self.core.role

    def set_leader(self, node_id):
        self.leader = node_id
        self.core.leader = node_id
        self.core.role = "leader" if node_id == self.config.node_id else "follower"

    def info(self):
        core = self.core
        return {
            "raft_node_id": self.config.node_id,
            "raft_role": self.role_name(),
            "raft_term": core.term,
            "raft_leader_id": core.leader or "",
            "raft_commit_index": core.commit,
            "raft_applied_index": core.applied,
            "raft_last_index": core.log.last_index(),
        }


class FakeView(NodeView):
    """The real NodeView, but role, live leader and the cluster's commit are the fake's fields."""

    def role(self):
        return self._node.core.role

    def live_leader(self):
        return self._node.leader

    def leader_commit(self):
        return max(self._node.core.commit, self._node.cluster_commit)
