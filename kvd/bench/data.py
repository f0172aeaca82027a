"""
``make bench-data`` (``python -m kvd.bench data``): issue 13's figures, data at
scale.  On three nodes of its own (fsync on, mutual TLS, twistd kvd's
timing), it loads N keys of S bytes (1M of 1 KiB by default) through
pipelined connections to the leader and reports, each with its number:

- the load rate of each tenth of the keys, the elections and failed writes
  during the load;
- a follower killed (SIGKILL) and started again, to its first answered GET,
  at a tenth of the keys and at all of them;
- the resident memory of each node holding the data;
- a fourth node joining until it is a voter: how long, the snapshot's bytes
  per second (keys and values loaded / that time), the peak memory of the
  sender (leader) and the receiver, elections meanwhile;
- the write throughput while that node catches up, against the same load
  just before it;
- a fifth node joining with no write load: the snapshot's transfer alone;
- the longest reactor stall of each node (kvd.node.stall, read through INFO by
  kvd.bench.watch) during the load, during its snapshots and compactions, and
  during the join.

It reads the nodes only through their client ports and /proc, so it measures
whatever storage the nodes have.  Every step is bounded (``--max-seconds``
for the whole run, a timeout for each wait); a figure a step could not
measure prints ``-`` with the reason.  Nothing here judges the figures:
the issue's targets are printed beside them.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from kvd.bench import pipeline
from kvd.bench.watch import Watch, rss_kib
from kvd.jepsen.cluster import PEER_OFFSET, ProcessCluster, _bindable, wait_until
from kvd.resp.client import Indeterminate, NotSent, ReplyError

MIB = 1024 * 1024
#: How long to look for the leader: a node serializing a large snapshot in its reactor answers nothing meanwhile.
LEADER_WAIT_S = 120.0


@dataclass
class Settings:
    keys: int = 1_000_000
    value_bytes: int = 1024
    clients: int = 8
    pipeline: int = 32
    baseline_s: float = 10.0
    join_timeout_s: float = 300.0
    restart_timeout_s: float = 300.0
    max_seconds: float = 7200.0
    snapshot_entries: int = 10000  # twistd kvd's defaults
    snapshot_keep_entries: int = 1000
    tick_ms: int = 50
    election_ticks: int = 8
    port: Optional[int] = None
    node_args: Tuple[str, ...] = ()  # more twistd kvd options for every node (diagnostics)

    @classmethod
    def short(cls, **overrides) -> "Settings":
        """A few thousand small keys, snapshots every few hundred entries: proves the harness works, in seconds."""
        base = dict(keys=2000, value_bytes=100, clients=4, pipeline=16, baseline_s=2.0, join_timeout_s=60.0,
                    restart_timeout_s=60.0, max_seconds=240.0, snapshot_entries=500, snapshot_keep_entries=100)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


class BenchCluster(ProcessCluster):
    """The fault suite's process cluster; with ``port``, every node's client port is that one (on its own 127.x.y.i)."""

    def __init__(self, run_dir: str, port: Optional[int] = None, **kwargs):
        self.fixed_port = port
        super().__init__(run_dir, **kwargs)

    def _choose_addresses(self, hosts: int) -> Tuple[str, int]:
        if self.fixed_port is None:
            return super()._choose_addresses(hosts)
        for _ in range(200):
            prefix = "127.%d.%d." % (self.rng.randrange(16, 250), self.rng.randrange(0, 256))
            if all(_bindable(prefix + str(i), self.fixed_port) and _bindable(prefix + str(i), self.fixed_port + PEER_OFFSET)
                   for i in range(1, hosts + 1)):
                return prefix, self.fixed_port
        raise RuntimeError("no free loopback addresses for port %d" % self.fixed_port)


# ================================================================ the report
class Report:
    """Figures as they are measured: one line each, printed at once; then a table of all."""

    def __init__(self, log=print):
        self.log = log
        self.rows: List[Tuple[str, str, str]] = []  # (label, value text, the target)
        self.figures: Dict[str, object] = {}

    def figure(self, key: str, label: str, value, text: str, target: str = "", detail: str = "", **extra) -> None:
        """``value`` for --json, ``text`` for the line and the table, ``detail`` for the line only."""
        self.figures[key] = value
        for k, v in extra.items():
            self.figures["%s_%s" % (key, k)] = v
        self.rows.append((label, text, target))
        self.log("%-42s %s%s" % (label + ":", text, "  (%s)" % detail if detail else ""), flush=True)

    def missing(self, key: str, label: str, why: str, target: str = "") -> None:
        self.figure(key, label, None, "-", target, why)

    def table(self) -> None:
        if not self.rows:
            return
        width = max(len(r[0]) for r in self.rows)
        vwidth = max(len(r[1]) for r in self.rows)
        self.log("")
        self.log("%-*s  %-*s  %s" % (width, "figure", vwidth, "measured", "issue 13's target"))
        self.log("%s  %s  %s" % ("-" * width, "-" * vwidth, "-" * 17))
        for label, text, target in self.rows:
            self.log(("%-*s  %-*s  %s" % (width, label, vwidth, text, target)).rstrip())


def _size(n: float) -> str:
    return "%.1f MiB" % (n / MIB) if n >= MIB else "%.0f KiB" % (n / 1024.0)


def _mib(kib: Optional[int]) -> str:
    return "-" if kib is None else "%.0f MiB" % (kib / 1024.0)


def _ms(ms: Optional[float]) -> str:
    return "-" if ms is None else "%.0f ms" % ms


# ================================================================ cluster numbers
def counters(nodes, timeout_s: float = 60.0) -> Tuple[int, int]:
    """
    (elections the nodes started, summed; the highest term any of them is in),
    from INFO raft; a node that is busy is asked again (a missing count would
    read as elections undone).
    """
    elections, term = 0, 0
    for n in nodes:
        info = wait_until(lambda: n.info(timeout=5.0) if n.alive() else {"dead": 1}, timeout_s, 0.2) or {}
        elections += int(info.get("raft_elections", 0) or 0)
        term = max(term, int(info.get("raft_term", 0) or 0))
    return elections, term


@dataclass
class Restart:
    node_id: str
    ping_s: Optional[float] = None  # to the first PING answered
    serve_s: Optional[float] = None  # to the first GET answered with the loaded value
    why: str = ""  # when it did not serve


def restart_to_serving(cluster, key: bytes, expected: bytes, timeout_s: float) -> Restart:
    """
    Kill -9 a follower, start it again, and time until it answers PING and a
    GET of ``key`` through it (a linearizable read) returns ``expected``.
    """
    leader = cluster.leader(LEADER_WAIT_S)
    if leader is None:
        raise RuntimeError("no leader before the restart")
    node = next(n for n in cluster.members if n is not leader)
    node.kill()
    started = time.monotonic()
    node.launch()
    out = Restart(node.id)
    while time.monotonic() - started < timeout_s:
        if not node.alive():
            out.why = "%s exited while starting: %s" % (node.id, node.tail(node.stderr, 3).strip())
            return out
        try:
            if out.ping_s is None and node.call("PING", timeout=1.0) == b"PONG":
                out.ping_s = time.monotonic() - started
            if node.call("GET", key, timeout=2.0) == expected:
                out.serve_s = time.monotonic() - started
                return out
        except (NotSent, Indeterminate, ReplyError, OSError):
            pass
        time.sleep(0.02)
    out.why = "%s did not serve within %g s" % (node.id, timeout_s)
    return out


def voter(cluster, node_id: str) -> bool:
    leader = cluster.leader()
    if leader is None:
        return False
    info = leader.info(timeout=2.0) or {}
    return node_id in str(info.get("raft_voters", "")).split(",")


# ================================================================ the run
class DataBench:
    def __init__(self, settings: Settings, run_dir: str, log=print):
        self.s = settings
        self.run_dir = run_dir
        self.report = Report(log)
        self.log = log
        self.deadline = time.monotonic() + settings.max_seconds
        self.cluster: Optional[BenchCluster] = None
        self.watch = Watch()
        self.progress = pipeline.Progress(settings.keys, on_tenth=self._tenth)
        self.load_spans: List[Tuple[float, float]] = []
        self.join_span: Optional[Tuple[float, float]] = None
        self.stopped_early = ""

    # ------------------------------------------------------------ helpers
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def out_of_time(self, step: str) -> bool:
        if self.left() > 5.0:
            return False
        if not self.stopped_early:
            self.stopped_early = step
        return True

    def settle(self, why: str) -> None:
        ok, reason = self.cluster.wait_healthy(max(5.0, min(300.0, self.left())))
        if not ok:
            raise RuntimeError("the cluster did not settle %s: %s" % (why, reason))

    def data_bytes(self, keys: int) -> int:
        return keys * (len(pipeline.key(0)) + self.s.value_bytes)

    def _tenth(self, percent: int, keys: int, rate: float, active_s: float) -> None:
        self.log("  loading: %3d%% (%d keys) after %.1f s, %.0f keys/s in this tenth" % (percent, keys, active_s, rate), flush=True)

    # ------------------------------------------------------------ steps
    def start(self) -> None:
        s = self.s
        self.cluster = BenchCluster(self.run_dir, port=s.port, n=3, tick_ms=s.tick_ms, election_ticks=s.election_ticks,
                                    request_timeout_s=5.0, cluster_id="bench", snapshot_entries=s.snapshot_entries,
                                    snapshot_keep_entries=s.snapshot_keep_entries, extra_args=s.node_args)
        self.cluster.start(60.0)
        self.settle("after it started")
        for node in self.cluster.members:
            self.watch.add(node)

    def writers(self, source, prefix: str) -> pipeline.Load:
        leader = self.cluster.leader(LEADER_WAIT_S)
        if leader is None:
            raise RuntimeError("no leader to write through")
        return pipeline.Load((leader.host, leader.port), source, self.s.value_bytes, self.s.clients, self.s.pipeline,
                             prefix=prefix, on_acked=self.progress.acked if prefix == "d" else None)

    def load(self, start: int, stop: int) -> pipeline.Load:
        load = self.writers(pipeline.Keys(start, stop), "d")
        t0 = time.time()
        self.progress.resume()
        load.run(self.deadline)
        self.progress.pause()
        self.load_spans.append((t0, time.time()))
        return load

    def steady(self) -> pipeline.Load:
        """A write load that does not grow the data: new values for the same few keys, round and round."""
        return self.writers(pipeline.Cycle(0, max(1000, self.s.keys // 10)), "t")

    def restart(self, key: str, loaded: int, index: Optional[int], target: str) -> None:
        label = "restart to serving, %d keys" % loaded
        if index is None:
            self.report.missing(key, label, "no key was loaded", target)
            return
        if self.out_of_time(label):
            self.report.missing(key, label, "--max-seconds reached", target)
            return
        done = restart_to_serving(self.cluster, pipeline.key(index), pipeline.value(index, self.s.value_bytes),
                                  min(self.s.restart_timeout_s, max(5.0, self.left())))
        if done.serve_s is None:
            self.report.missing(key, label, done.why, target)
        else:
            ping = "-" if done.ping_s is None else "%.2f s" % done.ping_s
            self.report.figure(key, label, round(done.serve_s, 3), "%.2f s" % done.serve_s, target,
                               "kill -9 of follower %s, then a GET through it; PING after %s" % (done.node_id, ping),
                               keys=loaded, ping_s=None if done.ping_s is None else round(done.ping_s, 3))
        self.settle("after the restart")

    def run(self) -> dict:
        s, r = self.s, self.report
        self.start()
        members = list(self.cluster.members)

        # ---- the load, in two parts, with a restart at a tenth of the keys between them
        tenth = max(1, s.keys // 10)
        e0, term0 = counters(members)
        first = self.load(0, tenth)
        e1, term1 = counters(members)
        self.restart("restart_tenth_s", first.acked, first.last_acked, "<= 2 s, as with all")
        e2, term2 = counters(members)
        second = None if self.out_of_time("the rest of the load") else self.load(tenth, s.keys)
        e3, term3 = counters(members)
        loads = [first] + ([second] if second else [])
        acked = sum(x.acked for x in loads)
        failed = sum(x.failed for x in loads)
        given_up = sum(x.source.given_up for x in loads)
        causes: Dict[str, int] = {}
        for x in loads:
            for c, n in x.causes.items():
                causes[c] = causes.get(c, 0) + n
        seconds = self.progress.active_s
        rate = acked / seconds if seconds else 0.0
        r.figure("load_keys_per_s", "load rate, all keys", round(rate, 1), "%.0f keys/s" % rate, "steady",
                 "%d of %d keys of %d bytes in %.1f s; %d connections, %d pipelined each" % (
                     acked, s.keys, s.value_bytes, seconds, s.clients, s.pipeline), keys=acked, seconds=round(seconds, 2))
        rates = self.progress.rates()
        r.figure("load_keys_per_s_by_tenth", "load rate by tenth of the keys", [round(v, 1) for _, v in rates],
                 " ".join("%.0f" % v for _, v in rates) + " keys/s", "steady", "10%, 20%, ... 100%")
        elections, terms = (e1 - e0) + (e3 - e2), (term1 - term0) + (term3 - term2)
        r.figure("load_elections", "elections during the load", elections, "%d" % elections, "0",
                 "the term rose by %d" % terms, terms=terms)
        r.figure("load_failed_writes", "failed writes during the load", failed, "%d" % failed, "0",
                 "each tried again; %d keys given up after 5 tries%s" % (
                     given_up, "; " + ", ".join("%s %d" % kv for kv in sorted(causes.items())) if causes else ""),
                 given_up=given_up, causes=causes)

        # ---- memory holding the data
        rss = {n.id: rss_kib(n.pid) for n in members}
        r.figure("rss_after_load_mib", "RSS of each node holding the data", {k: (v or 0) // 1024 for k, v in rss.items()},
                 " ".join(_mib(v) for v in rss.values()), "<= 1.5 GiB for 1 GiB",
                 "%s of keys and values" % _size(self.data_bytes(acked)))

        # ---- restart with all the keys
        last = second.last_acked if second is not None and second.last_acked is not None else first.last_acked
        self.restart("restart_all_s", acked, last, "<= 2 s")

        # ---- a fourth node joins; write throughput without, then with the snapshot being sent
        if self.out_of_time("the join"):
            for key, label in (("write_ops_baseline", "write throughput, no snapshot"), ("join_s", "new node to voter")):
                r.missing(key, label, "--max-seconds reached")
        else:
            self.join(members, acked)
            if self.out_of_time("the join with no load"):
                r.missing("quiet_join_s", "new node to voter, no write load", "--max-seconds reached")
            else:
                self.quiet_join(acked)

        self.stalls(members)
        r.table()
        if self.stopped_early:
            self.log("stopped at --max-seconds (%g s) before %s: the figures after it are not measured" % (
                s.max_seconds, self.stopped_early))
        return r.figures

    def join(self, members, acked: int) -> None:
        s, r = self.s, self.report
        base = self.steady().run(min(self.deadline, time.monotonic() + s.baseline_s))
        r.figure("write_ops_baseline", "write throughput, no snapshot", round(base.ops_per_s, 1), "%.0f ops/s" % base.ops_per_s,
                 "", "%.1f s, %d failed" % (base.seconds, base.failed))
        leader = self.cluster.leader(LEADER_WAIT_S)
        if leader is None:
            raise RuntimeError("no leader before the join")
        new = self.cluster.new_node()
        new.start(60.0)
        self.watch.add(new)
        e0, term0 = counters(members)
        load = self.steady()
        limit = min(s.join_timeout_s, max(5.0, self.left()))
        t0, started = time.time(), time.monotonic()
        background = load.start(started + limit + 10.0)
        try:
            ok, why = self.cluster.join(new, min(60.0, limit))
            became = ok and wait_until(lambda: voter(self.cluster, new.id), max(1.0, limit - (time.monotonic() - started)), 0.05)
            took = time.monotonic() - started
        finally:
            load.stop.set()
            background.join(30.0)
        t1 = time.time()
        self.join_span = (t0, t1)
        e1, term1 = counters(members)
        if became:
            with self.cluster.lock:
                self.cluster.members.append(new)
            info = new.info(timeout=5.0) or {}
            index = info.get("raft_snapshot_index")
            r.figure("join_s", "new node to voter", round(took, 3), "%.2f s" % took, "",
                     "KVD.JOIN to listed as a voter; %s" % ("caught up by a snapshot at index %s" % index if index
                                                            else "caught up by the log alone"))
            size = self.data_bytes(acked)
            rate = size / took / 1e6
            r.figure("snapshot_mb_per_s", "snapshot transfer rate", round(rate, 3), "%.1f MB/s" % rate, ">= 50 MB/s",
                     "%s of keys and values / %.2f s" % (_size(size), took))
        else:
            r.missing("join_s", "new node to voter", why if not ok else "not a voter within %g s" % limit)
            r.missing("snapshot_mb_per_s", "snapshot transfer rate", "the node did not become a voter", ">= 50 MB/s")
        sender = self.watch.peak_rss_kib(leader.id, t0, t1)
        receiver = self.watch.peak_rss_kib(new.id, t0, t1)
        hwm = rss_kib(new.pid, "VmHWM")
        r.figure("join_peak_rss_mib", "peak RSS during the join, sender/receiver",
                 {"sender": None if sender is None else sender // 1024, "receiver": None if receiver is None else receiver // 1024},
                 "%s %s" % (_mib(sender), _mib(receiver)), "bounded",
                 "sender: the leader %s; the receiver's VmHWM %s" % (leader.id, _mib(hwm)),
                 receiver_hwm=None if hwm is None else hwm // 1024)
        r.figure("join_elections", "elections during the join", e1 - e0, "%d" % (e1 - e0), "0 leader changes",
                 "the term rose by %d" % (term1 - term0), terms=term1 - term0)
        during = load.acked / load.seconds if load.seconds else 0.0
        r.figure("write_ops_during_snapshot", "write throughput, snapshot being sent", round(during, 1), "%.0f ops/s" % during,
                 "", "%.1f s, %d failed" % (load.seconds, load.failed))
        if base.ops_per_s:
            ratio = during / base.ops_per_s
            r.figure("write_ratio", "throughput with / without the snapshot", round(ratio, 3), "%.0f%%" % (ratio * 100), ">= 70%")
        else:
            r.missing("write_ratio", "throughput with / without the snapshot", "no write succeeded without it", ">= 70%")

    def quiet_join(self, acked: int) -> None:
        """
        One more node joins while nothing is written: the snapshot's transfer on
        its own, apart from the CPU the write load takes from the sender in
        ``join`` (two cores for four nodes and the load generator).
        """
        s, r = self.s, self.report
        new = self.cluster.new_node()
        new.start(60.0)
        self.watch.add(new)
        limit = min(s.join_timeout_s, max(5.0, self.left()))
        started = time.monotonic()
        ok, why = self.cluster.join(new, min(60.0, limit))
        became = ok and wait_until(lambda: voter(self.cluster, new.id), max(1.0, limit - (time.monotonic() - started)), 0.05)
        took = time.monotonic() - started
        if not became:
            r.missing("quiet_join_s", "new node to voter, no write load", why if not ok else "not a voter within %g s" % limit)
            r.missing("quiet_snapshot_mb_per_s", "snapshot transfer rate, no write load", "the node did not become a voter",
                      ">= 50 MB/s")
            return
        with self.cluster.lock:
            self.cluster.members.append(new)
        r.figure("quiet_join_s", "new node to voter, no write load", round(took, 3), "%.2f s" % took, "",
                 "a fifth node, KVD.JOIN to listed as a voter")
        size = self.data_bytes(acked)
        rate = size / took / 1e6
        r.figure("quiet_snapshot_mb_per_s", "snapshot transfer rate, no write load", round(rate, 3), "%.1f MB/s" % rate,
                 ">= 50 MB/s", "%s of keys and values / %.2f s" % (_size(size), took))

    def stalls(self, members) -> None:
        r, w = self.report, self.watch
        phases = (("stall_load_ms", "max reactor stall, load"), ("stall_compaction_ms", "max reactor stall, compaction"),
                  ("stall_snapshot_ms", "max reactor stall, join (snapshot)"))
        if not w.meter_seen:
            for key, label in phases:
                r.missing(key, label, "the nodes' INFO has no reactor_stall_per_second", "<= 50 ms")
            return
        # The join (or the load) may have ended after the nodes' last INFO: their seconds come with the next one.
        w.sampled_since(time.time(), 15.0)
        nodes = list(members) + [n for n in self.cluster.nodes if n not in members]
        compactions = {n.id: w.compactions(n.id, 0.0, time.time()) for n in nodes}
        spans = {"stall_load_ms": lambda n: self.load_spans, "stall_compaction_ms": lambda n: compactions[n.id],
                 "stall_snapshot_ms": lambda n: [self.join_span] if self.join_span else []}
        for key, label in phases:
            per_node = {n.id: w.stall_ms(n.id, spans[key](n)) for n in nodes}
            seen = [v for v in per_node.values() if v is not None]
            if not seen:
                r.missing(key, label, "no compaction seen" if key == "stall_compaction_ms" else "not measured", "<= 50 ms")
                continue
            r.figure(key, label, max(seen), _ms(max(seen)), "<= 50 ms",
                     "by node: " + ", ".join("%s %s" % (i, _ms(v)) for i, v in per_node.items()), per_node=per_node)


def run(settings: Settings, run_dir: str, log=print) -> dict:
    bench = DataBench(settings, run_dir, log)
    try:
        figures = bench.run()
    finally:
        bench.watch.close()
        if bench.cluster is not None:
            bench.cluster.close()
    figures["stopped_early_before"] = bench.stopped_early or None
    return figures

