"""
What ``make bench-data`` watches on every node while it runs, in the
background, so that a figure can be read afterwards for any stretch of time:

- each node's reactor stalls by wall-clock second, from ``INFO server``'s
  ``reactor_stall_per_second`` (kvd.node.stall: the largest stall of each of the
  last 60 s), asked every ``interval_s``; the stalls of a phase are those of the
  seconds it overlaps;
- when a node took a snapshot and compacted its log: between two samples whose
  ``raft_snapshots`` or ``raft_snapshot_index`` differ;
- each node's resident memory (VmRSS of /proc/<pid>/status), every
  ``rss_interval_s``, so that the peak of a stretch is known.

A node that does not answer is simply not sampled then; a restarted node is
the same node id with a new pid.  Nothing here changes what the nodes do but
the few INFO requests a second.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from kvd.resp.client import Indeterminate, NotSent, ReplyError, parse_info


def rss_kib(pid: Optional[int], field: str = "VmRSS") -> Optional[int]:
    """A field of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak), or None."""
    if pid is None:
        return None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def parse_per_second(text) -> Dict[int, float]:
    """``reactor_stall_per_second``'s value (``first:ms,ms,...``) -> {wall second: largest stall in ms}; {} if unreadable."""
    first, _, values = str(text or "").partition(":")
    try:
        start = int(first)
        return {start + i: float(v) for i, v in enumerate(values.split(",")) if v != ""}
    except ValueError:
        return {}


@dataclass
class Sample:
    t: float  # time.time() when the answer came
    snapshots: Optional[int]
    snapshot_index: Optional[int]


class Watch:
    def __init__(self, interval_s: float = 0.5, rss_interval_s: float = 0.1):
        self.interval_s = interval_s
        self.rss_interval_s = rss_interval_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.nodes: List = []
        self.stalls: Dict[str, Dict[int, float]] = {}  # node id -> {wall second: largest stall, ms}
        self.samples: Dict[str, List[Sample]] = {}
        self.rss: Dict[str, List[Tuple[float, int]]] = {}  # node id -> [(time.time(), KiB)]
        self.meter_seen = False  # some node answered reactor_stall_per_second
        self._threads: List[threading.Thread] = []

    def add(self, node) -> None:
        """Watch ``node`` (a kvd.jepsen.cluster.Node) from now on."""
        with self.lock:
            if node in self.nodes:
                return
            self.nodes.append(node)
            self.stalls.setdefault(node.id, {})
            self.samples.setdefault(node.id, [])
            self.rss.setdefault(node.id, [])
        t = threading.Thread(target=self._info_loop, args=(node,), daemon=True, name="bench-watch-%s" % node.id)
        t.start()
        self._threads.append(t)
        if len(self._threads) == 1:
            r = threading.Thread(target=self._rss_loop, daemon=True, name="bench-watch-rss")
            r.start()
            self._threads.append(r)

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(15.0)

    # ------------------------------------------------------------ sampling
    def _info_loop(self, node) -> None:
        while not self.stop.is_set():
            if node.alive() and not node.paused:
                try:
                    info = parse_info(node.call("INFO", "server", "raft", timeout=10.0), numbers=True)
                except (NotSent, Indeterminate, ReplyError, OSError):
                    info = None
                if info is not None:
                    self._record(node.id, time.time(), info)
            self.stop.wait(self.interval_s)

    def _record(self, node_id: str, t: float, info: dict) -> None:
        per_second = parse_per_second(info.get("reactor_stall_per_second"))
        with self.lock:
            if per_second:
                self.meter_seen = True
            seen = self.stalls[node_id]
            for second, ms in per_second.items():
                if second <= t and ms > seen.get(second, -1.0):
                    seen[second] = ms
            self.samples[node_id].append(Sample(t, _int(info.get("raft_snapshots")), _int(info.get("raft_snapshot_index"))))

    def _rss_loop(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            with self.lock:
                nodes = list(self.nodes)
            for node in nodes:
                kib = rss_kib(node.pid) if node.alive() else None
                if kib is not None:
                    with self.lock:
                        self.rss[node.id].append((now, kib))
            self.stop.wait(self.rss_interval_s)

    # ------------------------------------------------------------ readings
    def sampled_since(self, t: float, timeout_s: float) -> bool:
        """
        Wait until every live watched node has answered INFO after ``t`` (a
        time.time()), at most ``timeout_s``: a phase that ends between two
        samples has its seconds read only by the next one.  False if some node
        did not answer in time (its figures then stop at its last sample).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                behind = [n for n in self.nodes if n.alive() and not n.paused
                          and not (self.samples.get(n.id) and self.samples[n.id][-1].t > t)]
            if not behind:
                return True
            if time.monotonic() >= deadline or self.stop.wait(self.interval_s / 5):
                return False

    def stall_ms(self, node_id: str, spans: List[Tuple[float, float]]) -> Optional[float]:
        """The largest stall of ``node_id`` in the seconds that overlap any of ``spans`` (time.time() pairs), or None."""
        with self.lock:
            seen = dict(self.stalls.get(node_id, {}))
        values = [ms for second, ms in seen.items() if any(second + 1 > a and second <= b for a, b in spans)]
        return max(values) if values else None

    def compactions(self, node_id: str, t0: float, t1: float) -> List[Tuple[float, float]]:
        """The stretches between two samples of ``node_id`` in [t0, t1] across which it took a snapshot and compacted."""
        with self.lock:
            samples = [s for s in self.samples.get(node_id, []) if t0 <= s.t <= t1]
        out = []
        for a, b in zip(samples, samples[1:]):
            # Either number rising (a restart starts the count of snapshots again from 0: not one).
            if (b.snapshot_index or 0) > (a.snapshot_index or 0) or (b.snapshots or 0) > (a.snapshots or 0):
                out.append((a.t, b.t))
        return out

    def peak_rss_kib(self, node_id: str, t0: float, t1: float) -> Optional[int]:
        with self.lock:
            values = [kib for t, kib in self.rss.get(node_id, []) if t0 <= t <= t1]
        return max(values) if values else None


def _int(value) -> Optional[int]:
    return value if isinstance(value, int) else None
