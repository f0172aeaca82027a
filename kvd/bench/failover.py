"""
Failover, as a client sees it: under a light write load, kill -9 the leader
and time how long until a write through a survivor is acknowledged; restart
the killed node, wait until the cluster is whole again, repeat.

Membership changes (``measure_membership``): remove the leader (KVD.REMOVE
sent to it) and time, from its answer, until a survivor leads and until a
write through a survivor is acknowledged; then wipe the removed node, start it
again at the same address and time KVD.JOIN until it is listed as a voter.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Dict, List, Optional

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


def _whole(cluster, before: str):
    """Wait for every member up behind one leader: (the leader, the others)."""
    ok, why = cluster.wait_healthy(60.0)
    if not ok:
        raise RuntimeError("the cluster did not become whole again before %s: %s" % (before, why))
    leader = cluster.leader(20.0)
    if leader is None:
        raise RuntimeError("no leader before %s" % before)
    return leader, [n for n in cluster.members if n is not leader]


def measure(cluster, kills: int, limit_s: float = 30.0, log=print) -> List[Optional[float]]:
    load = _Background(cluster)
    load.start()
    times: List[Optional[float]] = []
    try:
        for i in range(kills):
            leader, survivors = _whole(cluster, "kill %d" % (i + 1))
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


def _voter(cluster, node_id: str) -> bool:
    leader = cluster.leader()
    info = (leader.info(timeout=2.0) or {}) if leader is not None else {}
    return node_id in str(info.get("raft_voters", "")).split(",")


def _until(check, limit_s: float, every_s: float = 0.005) -> Optional[float]:
    """Seconds until ``check()`` holds (polled every ``every_s``), or None after ``limit_s``."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        if check():
            return time.monotonic() - started
        time.sleep(every_s)
    return None


def measure_membership(cluster, rounds: int, limit_s: float = 30.0, log=print) -> List[Dict[str, Optional[float]]]:
    """Each round: remove the leader, then re-add it (wiped) at the same address; the times of each step."""
    load = _Background(cluster)
    load.start()
    out: List[Dict[str, Optional[float]]] = []
    try:
        for i in range(rounds):
            leader, survivors = _whole(cluster, "round %d" % (i + 1))
            answer = leader.call("KVD.REMOVE", leader.id, timeout=limit_s)
            removed = time.monotonic()
            new_leader = _until(lambda: cluster.leader(among=survivors) is not None, limit_s)
            write = first_write_after(survivors, "bench:membership:%d" % i, removed, limit_s)
            with cluster.lock:
                cluster.members.remove(leader)
            leader.kill()
            data = os.path.join(leader.dir, "data")
            shutil.rmtree(data, ignore_errors=True)
            leader.start(60.0)
            asked = time.monotonic()
            joined, detail = cluster.join(leader, limit_s)
            if not joined or _until(lambda: _voter(cluster, leader.id), limit_s, 0.01) is None:
                raise RuntimeError("%s did not rejoin as a voter: %s" % (leader.id, detail))
            took = time.monotonic() - asked
            with cluster.lock:
                cluster.members.append(leader)
            row = {"leader_after_s": new_leader, "write_after_s": write, "join_to_voter_s": took}
            out.append(row)
            log("round %2d of %d: removed leader %s (%s) -> a survivor leads after %s, first write after %s; "
                "re-added wiped at the same address: voter after %s" % (
                    i + 1, rounds, leader.id, answer.decode() if isinstance(answer, bytes) else answer,
                    _s(new_leader), _s(write), _s(took)))
    finally:
        load.stopped.set()
        load.join(5)
    return out


def _s(value: Optional[float]) -> str:
    return "%.3f s" % value if value is not None else "never"
