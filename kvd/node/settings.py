"""
``NodeSettings``: a node's settings, as ``twistd kvd`` options give them (kvd.tap).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from kvd.address import MemberAddress
from kvd.limits import LIMITS


@dataclass
class NodeSettings:
    node_id: str
    cluster_id: str
    address: MemberAddress
    data_dir: str
    initial_cluster: Optional[Dict[str, str]] = None  # node id -> host:client:peer, for a static bootstrap
    bootstrap_expect: int = 0  # >0: this is a seed that forms the cluster once this many nodes have joined
    tick_s: float = 0.1
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    lease_reads: bool = False  # --lease-reads: linearizable reads by the leader's lease (RaftSettings.lease_reads)
    commit_notice_s: float = 0.002  # --commit-notice-ms: RaftSettings.defer_commit_notice's timer; 0: no deferral
    sync: bool = True
    snapshot_entries: int = 10000
    snapshot_keep_entries: int = 1000
    request_timeout_s: float = 5.0
    value_max_bytes: int = LIMITS.value_bytes  # --value-max-bytes, checked against kvd.limits by kvd.tap
