"""
The loads of ``make bench``, driven by Redis's own ``redis-benchmark`` (a C
load generator: never the bottleneck on this scale), and what it prints,
parsed: requests per second and the latency distribution, from which p50,
p99 and p99.9 are read.

A load is (name, which node, redis-benchmark arguments, requests in the
full and in the short form).  Keys are random among 100,000 (``-r``),
values 100 bytes (``-d``), as issue 14's table measured.  The arguments
are ``-t`` and redis-benchmark's own commands, or a command of kvd's after
the options (redis-benchmark runs one given on its command line, with
``__rand_int__`` replaced as in its own keys ``key:__rand_int__``): the
READONLY read is ``KVD.GET ... SERIALIZABLE``, since redis-benchmark cannot
send READONLY on each of its connections first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Sequence


@dataclass(frozen=True)
class Load:
    name: str
    target: str  # "leader" or "follower"
    args: Sequence[str]
    requests: int
    short_requests: int
    etcd: Optional[tuple] = None  # (wrk connections, a kvd.bench.etcd mode) for the same load on etcd, if it has one
    #: A local read's other etcd figure: the ``etcd`` of the run's linearizable read load, which it is divided by
    #: too, since issue 14's "READONLY reads >= 10x etcd" may mean etcd's serializable reads or its default ones.
    etcd_linearizable: Optional[tuple] = None


LOADS = [
    Load("SET, 1 client, to the leader", "leader", ["-t", "set", "-c", "1"], 3000, 200, (1, "put")),
    Load("SET, 16 clients", "leader", ["-t", "set", "-c", "16"], 20000, 400, (16, "put")),
    Load("SET, 64 clients", "leader", ["-t", "set", "-c", "64"], 40000, 800, (64, "put")),
    Load("SET, 64 clients, to a follower", "follower", ["-t", "set", "-c", "64"], 20000, 800, (64, "put")),
    Load("GET (linearizable), 64 clients", "leader", ["-t", "get", "-c", "64"], 60000, 800, (64, "range")),
    Load("GET READONLY (serializable), 64 clients, to a follower", "follower",
         ["-c", "64", "KVD.GET", "key:__rand_int__", "SERIALIZABLE"], 100000, 2000, (64, "range-serializable"),
         etcd_linearizable=(64, "range")),
    Load("SET, 50 clients pipelined x16", "leader", ["-t", "set", "-c", "50", "-P", "16"], 100000, 1600),
]


@dataclass
class Result:
    ops_per_s: float
    p50_ms: Optional[float]
    p99_ms: Optional[float]
    p999_ms: Optional[float]
    errors: int
    seconds: float


_PERCENTILE = re.compile(r"^\s*([0-9.]+)% <= ([0-9.]+) milliseconds")
_THROUGHPUT = re.compile(r"throughput summary: ([0-9.]+) requests per second")
_COMPLETED = re.compile(r"(\d+) requests completed in ([0-9.]+) seconds")


def redis_benchmark() -> str:
    found = shutil.which("redis-benchmark")
    if found is None:
        raise RuntimeError("redis-benchmark is not installed: apt-get install redis-tools (make bench installs it as root)")
    return found


def run(host: str, port: int, load: Load, short: bool, timeout_s: float = 600.0) -> Result:
    requests = load.short_requests if short else load.requests
    argv = [redis_benchmark(), "-h", host, "-p", str(port), "-n", str(requests), "-r", "100000", "-d", "100", "-e"]
    argv += list(load.args)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError("redis-benchmark failed (%d): %s" % (done.returncode, (done.stderr or done.stdout)[-400:]))
    return parse(done.stdout + "\n" + done.stderr)


def parse(text: str) -> Result:
    """redis-benchmark's report (the default, non-quiet one) -> Result."""
    points: List[tuple] = []
    for line in text.replace("\r", "\n").splitlines():
        m = _PERCENTILE.match(line)
        if m:
            points.append((float(m.group(1)), float(m.group(2))))
    throughput = _THROUGHPUT.search(text)
    completed = _COMPLETED.search(text)
    if throughput is None or completed is None:
        raise RuntimeError("cannot read redis-benchmark's report: %r" % text[-400:])

    def at(percent: float) -> Optional[float]:
        for p, ms in points:
            if p >= percent:
                return ms
        return points[-1][1] if points else None

    errors = sum(1 for line in text.splitlines() if line.startswith("Error from server"))
    return Result(float(throughput.group(1)), at(50.0), at(99.0), at(99.9), errors, float(completed.group(2)))
