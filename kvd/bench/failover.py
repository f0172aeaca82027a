"""
Failover, as a client sees it: under a light write load, kill -9 the leader
and time how long until a write through a survivor is acknowledged; restart
the killed node, wait until the cluster is whole again, repeat.
"""

from __future__ import annotations

import threading
import time
from typing import List, Optional

from kvd.resp.client import Indeterminate, NotSent, ReplyError

LIGHT_LOAD_INTERVAL_S = 0.05  # one background write every 50 ms: "light load"


class _Background(threading.Thread):
    """A light write load through every member in turn; its outcomes do not matter, only its presence."""

    def __init__(self, cluster):
        super().__init__(daemon=True, name="bench-light-load")
        self.cluster = cluster
        self.stopped = threading.Event()
        self.sent = 0

    def run(self) -> None:
        i = 0
        while not self.stopped.wait(LIGHT_LOAD_INTERVAL_S):
            members = [n for n in self.cluster.members if n.alive()]
            if not members:
                continue
            node = members[i % len(members)]
            i += 1
            try:
                node.call("SET", "bench:light:%d" % (i % 100), "x" * 100, timeout=1.0)
                self.sent += 1
            except (NotSent, Indeterminate, ReplyError, OSError):
                pass


def first_write_after(survivors, key: str, started: float, limit_s: float) -> Optional[float]:
    """Seconds from ``started`` until a SET through one of ``survivors`` is acknowledged, or None."""
    deadline = started + limit_s
    while time.monotonic() < deadline:
        for node in survivors:
            try:
                if node.call("SET", key, "v", timeout=min(6.0, max(0.5, deadline - time.monotonic()))) == b"OK":
                    return time.monotonic() - started
            except (NotSent, Indeterminate, ReplyError, OSError):
                continue
        time.sleep(0.01)
    return None


def measure(cluster, kills: int, limit_s: float = 30.0, log=print) -> List[Optional[float]]:
    load = _Background(cluster)
    load.start()
    times: List[Optional[float]] = []
    try:
        for i in range(kills):
            ok, why = cluster.wait_healthy(60.0)
            if not ok:
                raise RuntimeError("the cluster did not become whole again before kill %d: %s" % (i + 1, why))
            leader = cluster.leader(20.0)
            if leader is None:
                raise RuntimeError("no leader before kill %d" % (i + 1))
            survivors = [n for n in cluster.members if n is not leader]
            started = time.monotonic()
            leader.kill()
            took = first_write_after(survivors, "bench:failover:%d" % i, started, limit_s)
            times.append(took)
            log("kill %2d of %d: leader %s -> first acknowledged write after %s" % (
                i + 1, kills, leader.id, "%.3f s" % took if took is not None else "none within %g s" % limit_s))
            leader.start(60.0)
    finally:
        load.stopped.set()
        load.join(5)
    return times


def summary(times: List[Optional[float]]) -> dict:
    done = sorted(t for t in times if t is not None)
    if not done:
        return {"kills": len(times), "failed": len(times)}

    def pct(p: float) -> float:
        return done[min(len(done) - 1, int(round(p / 100.0 * (len(done) - 1))))]

    return {"kills": len(times), "failed": len(times) - len(done), "min_s": done[0], "median_s": pct(50),
            "p90_s": pct(90), "p99_s": pct(99), "max_s": done[-1]}
