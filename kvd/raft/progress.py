# -*- test-case-name: tests.raft.test_core -*-
"""
What a leader knows about each follower's log, and the flow control that
decides what it may send next (etcd's tracker.Progress, simplified).

A follower is in one of three states:

- PROBE: we do not know where its log matches ours; send one append at a
  time and wait for the answer (or a heartbeat reply) before the next.
- REPLICATE: its log matches up to ``match``; stream appends optimistically,
  advancing ``next`` as we send, with at most ``inflight_max`` unacknowledged
  appends in flight (pipelining under a window).
- SNAPSHOT: it needs a snapshot; send nothing else until it acknowledges the
  snapshot or we give up waiting and probe again.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Deque, Optional


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    def __init__(self, next_index: int, inflight_max: int):
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_ticks = 0
        self.inflight: Deque[int] = deque()  # last index of each append in flight
        self.inflight_max = inflight_max
        self.recent_active = False  # heard from within the current CheckQuorum window
        self.idle_ticks = 0  # leader ticks since this follower was last heard from
        # Lease reads: the leader's tick (``RaftCore.now``) when it sent the latest
        # heartbeat this follower acknowledged; None before the first.
        self.heartbeat_acked: Optional[int] = None

    def __repr__(self) -> str:
        return "Progress(%s match=%d next=%d inflight=%d)" % (self.state.value, self.match, self.next, len(self.inflight))

    def become_probe(self) -> None:
        # After a snapshot the follower holds everything up to it.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_ticks = 0
        self.inflight.clear()

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= self.inflight_max
        return True

    def sent(self, last_index: int, count: int) -> None:
        """Record an append carrying ``count`` entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflight.append(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def update(self, index: int) -> bool:
        """A success up to ``index`` arrived; True if it told us something new."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint_next: int) -> bool:
        """
        A rejection of an append at prev_index ``rejected`` arrived; move
        ``next`` back to ``hint_next``.  False if the rejection is stale.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale: we already know it matches there
            self.become_probe()
            self.next = max(self.match + 1, min(hint_next, rejected))
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        self.next = max(self.match + 1, min(hint_next, rejected))
        self.probe_sent = False
        return True
