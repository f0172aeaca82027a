# -*- test-case-name: tests.discovery.test_http -*-
"""
``NodeView``: everything the rest of kvd may read about a running node, and
nothing it could change it with.  The client port's INFO and KVD.MEMBERS,
DNS, the HTTP status API and the metrics read the node through this one
object, never through its Raft core, its configuration or its storage, so
that the node is free to rearrange its insides.

Every method answers from this node's own current state: no I/O, no waiting.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from kvd.address import AddressError, MemberAddress
from kvd.raft.messages import Role


class NodeView:
    def __init__(self, node):
        self._node = node

    # ------------------------------------------------------------ who this node is
    @property
    def node_id(self) -> str:
        return self._node.config.node_id

    @property
    def cluster_id(self) -> str:
        return self._node.config.cluster_id

    @property
    def address(self) -> MemberAddress:
        """This node's own advertised address (client and peer ports)."""
        return self._node.config.address

    @property
    def started(self) -> bool:
        """False until the node has opened its storage and built its core."""
        return self._node.core is not None

    @property
    def stopping(self) -> bool:
        """Shutting down, or fail-stopped on a storage error (see ``failure``): not serving."""
        return bool(self._node.stopping) or self._node.failure is not None

    @property
    def failure(self) -> Optional[str]:
        """Why this node fail-stopped (a storage error, or another failure of its Raft loop), or None."""
        return self._node.failure_reason

    # ------------------------------------------------------------ Raft state
    def role(self) -> str:
        """The role as the log names it (pre-candidate too), or learner / joining for a non-voter."""
        core = self._node.core
        if core.role is Role.FOLLOWER and self.node_id not in core.config.members:
            return "learner" if core.config.members else "joining"
        return core.role.value

    def is_leader(self) -> bool:
        return self.started and self._node.core.is_leader()

    @property
    def term(self) -> int:
        return self._node.core.term

    @property
    def commit_index(self) -> int:
        return self._node.core.commit

    @property
    def applied_index(self) -> int:
        return self._node.core.applied

    @property
    def last_index(self) -> int:
        return self._node.core.log.last_index()

    @property
    def first_index(self) -> int:
        return self._node.core.log.first_index()

    @property
    def snapshot_index(self) -> int:
        return self._node.core.latest_snapshot.index

    def leader_id(self) -> Optional[str]:
        """The leader this node last heard of (maybe gone quiet: see ``live_leader``)."""
        return self._node.core.leader if self.started else None

    def live_leader(self) -> Optional[str]:
        """
        The leader this node can vouch for right now, or None: itself while it
        leads, else the leader it has heard from within an election timeout.
        A follower whose leader has gone quiet stops naming it at once, before
        its own election timer fires (DNS and /v1/status/leader use this, so a
        dead leader is never handed out).
        """
        core = self._node.core
        if core is None or core.leader is None:
            return None
        if core.leader == self.node_id:
            return core.leader if core.is_leader() else None
        if core.election_elapsed >= self._node.config.election_ticks:
            return None
        return core.leader

    def leader_commit(self) -> int:
        """The commit index of the cluster as far as this node knows (its own when it leads)."""
        core = self._node.core
        if core is None:
            return 0
        return max(core.commit, self._node.leader_commit_seen)

    # ------------------------------------------------------------ membership
    def voters(self) -> List[str]:
        return list(self._node.core.config.voters) if self.started else []

    def learners(self) -> List[str]:
        return list(self._node.core.config.learners) if self.started else []

    def members(self) -> List[str]:
        return list(self._node.core.config.members) if self.started else []

    def address_of(self, node_id: Optional[str]) -> Optional[MemberAddress]:
        """A node's address: from the configuration, else this node's own, else what it told us; None if unknown."""
        if node_id is None:
            return None
        node = self._node
        text = node.core.config.address_of(node_id) if node.core is not None else None
        if not text and node_id == self.node_id:
            return self.address
        text = text or node.membership.pending_joins.get(node_id) or node.advertised.get(node_id)
        try:
            return MemberAddress.parse(text) if text else None
        except (AddressError, ValueError):
            return None

    def client_address(self, node_id: Optional[str]) -> str:
        """``host:port`` of a node's client port, or "" if unknown."""
        address = self.address_of(node_id)
        return address.client if address is not None else ""

    def progress(self) -> Dict[str, dict]:
        """On the leader, each peer's replication progress ({"match", "active", ...}); else empty."""
        if not self.is_leader():
            return {}
        return dict(self._node.core.status()["progress"])

    def members_text(self) -> str:
        core = self._node.core
        return ", ".join(["%s (voter)" % v for v in core.config.voters] + ["%s (learner)" % v for v in core.config.learners])

    def waiting_for(self) -> str:
        """For a node that belongs to no cluster yet: what it waits for, and how to form one."""
        return self._node.membership.waiting_for()

    # ------------------------------------------------------------ the edges
    def peer_connected(self, node_id: str) -> bool:
        """True while this node's outgoing link to ``node_id`` is up."""
        peers = self._node.peers
        return bool(peers is not None and hasattr(peers, "is_connected") and peers.is_connected(node_id))

    def storage_stats(self) -> Dict[str, int]:
        """The store's own numbers (entries, bytes used, map size); empty if it cannot tell now (stopping, failed)."""
        return self._node.storage_stats()

    def stats(self) -> Dict[str, int]:
        """Event counters since the node started (leader changes, elections, proposals, reads, snapshots)."""
        return dict(self._node.stats)

    def lease_reads(self) -> int:
        """Read indexes this node answered as leader by its lease, without a heartbeat round (--lease-reads)."""
        return self._node.core.lease_reads_served

    def key_count(self) -> int:
        return self._node.machine.key_count()

    def expiry_count(self) -> int:
        """How many keys have an expiry (kvd.kv.expiry), their own or their lease's (kvd.kv.leases): INFO's expires."""
        machine = self._node.machine
        count = getattr(machine, "expiry_count", None)
        attached = getattr(machine, "attached_count", None)
        return (count() if callable(count) else 0) + (attached() if callable(attached) else 0)

    @property
    def config(self):
        """The node's settings (read-only by convention: NodeSettings)."""
        return self._node.config

    # ------------------------------------------------------------ reports
    def member_rows(self) -> List[dict]:
        """KVD.MEMBERS: the membership as this node sees it (a leader adds replication progress)."""
        core = self._node.core
        progress = self.progress()
        leader = self.live_leader()  # a leader we have stopped hearing from is not named
        out = []
        for node_id in core.config.members:
            address = MemberAddress.parse(core.config.address_of(node_id))
            row = {
                "id": node_id,
                "client": address.client,
                "peer": address.peer,
                "voter": node_id in core.config.voters,
                "leader": node_id == leader,
            }
            if node_id == self.node_id:
                row["match"] = core.log.last_index()
                row["up"] = True
            elif node_id in progress:
                row["match"] = progress[node_id]["match"]
                row["up"] = progress[node_id]["active"]
            out.append(row)
        return out

    def info(self) -> Dict[str, object]:
        """INFO raft: this node's Raft numbers, by Redis-style field names."""
        core = self._node.core
        stats = self._node.stats
        return {
            "raft_node_id": self.node_id,
            "raft_cluster_id": self.cluster_id,
            "raft_role": self.role(),
            "raft_term": core.term,
            "raft_leader": self.client_address(core.leader),
            "raft_leader_id": core.leader or "",
            "raft_commit_index": core.commit,
            "raft_applied_index": core.applied,
            "raft_last_index": core.log.last_index(),
            "raft_first_index": core.log.first_index(),
            "raft_snapshot_index": core.latest_snapshot.index,
            "raft_members": ",".join(core.config.members),
            "raft_voters": ",".join(core.config.voters),
            "raft_learners": ",".join(core.config.learners),
            "raft_client_address": self.address.client,
            "raft_peer_address": self.address.peer,
            "raft_leader_changes": stats["leader_changes"],
            "raft_elections": stats["elections"],
            "raft_proposals": stats["proposals"],
            "raft_reads": stats["reads"],
            # lease: --lease-reads (the leader answers reads by its lease while it holds one); readindex: a round each
            "raft_read_mode": "lease" if core.options.lease_reads else "readindex",
            "raft_lease_reads": self.lease_reads(),
            "raft_snapshots": stats["snapshots"],
        }
