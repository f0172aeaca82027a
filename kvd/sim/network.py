# -*- test-case-name: tests.sim.test_sim -*-
"""
The simulated network between Raft cores: every message gets a delivery
time drawn from a seeded generator, and may be lost, duplicated, delayed
far beyond its peers (so it is reordered), or cut by a partition.

A partition is a set of blocked directed links (src, dst): a symmetric
partition blocks both directions, a one-way partition only one.  A link is
checked when a message is sent and again when it would be delivered, so a
partition that forms while a message is in flight also drops it.

All randomness comes from the ``random.Random`` handed in (a child of the
run's seed); the network never reads a clock: ``now`` is passed in.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import FrozenSet, List, Set, Tuple

Link = Tuple[str, str]


@dataclass
class NetworkFaults:
    """Per-run fault rates (drawn per seed: 'swarm testing')."""

    loss: float = 0.0  # probability a message is dropped
    dup: float = 0.0  # probability a message is delivered twice
    reorder: float = 0.0  # probability a message gets a long extra delay
    delay_min: int = 1  # time units (1 unit ~ 1 ms)
    delay_max: int = 10
    reorder_delay_max: int = 150


class SimNetwork:
    def __init__(self, rng: random.Random, faults: NetworkFaults):
        self.rng = rng
        self.faults = faults
        self.blocked: Set[Link] = set()
        self.sent = 0
        self.dropped = 0

    # ------------------------------------------------------------ partitions
    def partition(self, groups: List[FrozenSet[str]], one_way: bool = False) -> None:
        """
        Cut every link between different groups; with ``one_way`` only the
        links from an earlier group to a later one (so replies still flow the
        other way, or requests do but replies do not).
        """
        for i, g in enumerate(groups):
            for j, h in enumerate(groups):
                if i == j or (one_way and j < i):
                    continue
                for a in sorted(g):
                    for b in sorted(h):
                        self.blocked.add((a, b))

    def cut(self, src: str, dst: str) -> None:
        self.blocked.add((src, dst))

    def heal(self) -> None:
        self.blocked.clear()

    def connected(self, src: str, dst: str) -> bool:
        return (src, dst) not in self.blocked

    # ------------------------------------------------------------ delivery
    def plan(self, src: str, dst: str, now: int) -> List[int]:
        """The times at which a message sent now from src to dst arrives (empty if lost)."""
        self.sent += 1
        f = self.faults
        rng = self.rng
        if not self.connected(src, dst) or (f.loss and rng.random() < f.loss):
            self.dropped += 1
            return []
        times = [now + self._delay()]
        if f.dup and rng.random() < f.dup:
            times.append(now + self._delay())
        return times

    def _delay(self) -> int:
        f = self.faults
        d = self.rng.randint(f.delay_min, f.delay_max)
        if f.reorder and self.rng.random() < f.reorder:
            d += self.rng.randint(1, f.reorder_delay_max)
        return d
