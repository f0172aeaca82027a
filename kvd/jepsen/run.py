"""
One run, start to verdict:

1. start a cluster of ``nodes`` founders on fresh loopback addresses;
2. run the clients, and the nemesis schedule alongside, for ``seconds``;
3. heal everything (filters off, pauses resumed, dead members restarted),
   let the clients run a little longer, stop them;
4. wait until every member agrees on a leader and has applied its commit
   index; read every key ever used through every member (linearizable GETs,
   recorded in the history) and through each node's own state (READONLY);
5. kill every node, write the history, check linearizability and
   durability.

An anomaly (not linearizable, undecided, not durable, a cluster that did not
recover, a harness error) keeps the run's directory: history.jsonl,
every node's kvd.log and data.  A clean run's directory is deleted unless
``keep`` is set.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from kvd.check.durability import check_durability
from kvd.check import expiry as expiry_check
from kvd.check import locks as locks_check
from kvd.check import txn as txn_check
from kvd.check import watches as watch_check
from kvd.check.linear import INFO, VALID, check
from kvd.jepsen.cluster import ProcessCluster
from kvd.jepsen.expiry import ExpiryWorkload
from kvd.jepsen.locks import LockWorkload
from kvd.jepsen.watches import WatchWorkload
from kvd.jepsen.multikey import WORKLOADS, convergence
from kvd.jepsen.nemesis import PROBE_KEY, Nemesis, needs_netfilter, run_schedule
from kvd.jepsen.netfilter import Netfilter
from kvd.jepsen.workload import History, Workload, final_reads, local_reads, to_op


@dataclass
class RunConfig:
    nemeses: List[str]
    seconds: float = 60.0
    nodes: int = 3
    clients: int = 5
    keys: int = 4
    ops_per_key: int = 200
    order: str = "random"          # or "cycle": the nemeses in the order given
    rounds: int = 0                # >0: stop after this many passes over the nemeses (seconds is then a cap)
    combine: float = 0.0           # fraction of faults that get a second, concurrent one
    fault_s: Tuple[float, float] = (2.0, 4.0)
    quiet_s: Tuple[float, float] = (2.0, 4.0)
    settle_s: float = 3.0          # clients keep running this long after the heal
    seed: Optional[int] = None
    out_dir: str = ".kvd/jepsen"
    keep: bool = False
    check_budget_s: float = 120.0
    tick_ms: int = 50
    election_ticks: int = 10
    request_timeout_s: float = 3.0
    client_timeout_s: float = 4.0
    think_s: float = 0.01
    # Small, so that snapshots, compaction and catch-up by snapshot happen under faults too.
    snapshot_entries: int = 400
    snapshot_keep_entries: int = 100
    label: str = ""
    planted_stale_reads: bool = False  # clients read with READONLY: the checker must find stale reads
    # "register" (GET/SET/SET IFEQ/DEL per key), "txn" (MULTI/EXEC, WATCH CAS), "script" (EVAL/EVALSHA) or
    # "kvtxn" (KVD.TXN): the last three run on groups of keys (``keys`` groups, ``ops_per_key`` ops each) and are
    # checked by kvd.check.txn; "expiry" (SET PX / GET, kvd.jepsen.expiry) is checked by kvd.check.expiry;
    # "watch" (KVD.WATCH streams across reconnects, kvd.jepsen.watches) by kvd.check.watches; "locks" (mgmt.py's
    # lock recipe and fenced writes, kvd.jepsen.locks; ``keys`` locks) by kvd.check.locks.
    workload: str = "register"
    # txn/script ops run as separate commands (the checker must find torn ops); expiry: writes recorded with a
    # third of their ttl (the checker must find reads "after expiry"); watch: the watchers drop the first push after
    # every resume, as if a node left out the first change of every FROMREV replay (the checker must find the gaps);
    # locks: taken with SET without NX (the checker must find two holders at one token).
    planted_split: bool = False


@dataclass
class RunResult:
    dir: str
    history: str
    seconds: float
    ops: int
    counts: Dict[str, int]
    events: Dict[str, int]
    verdict: str
    check_seconds: float
    durability: List[str] = field(default_factory=list)
    healthy: bool = True
    health_detail: str = ""
    errors: List[str] = field(default_factory=list)
    probes: Dict[str, int] = field(default_factory=dict)
    report: str = ""
    kept: bool = False
    phases: Dict[str, float] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)
    workload: str = "register"
    stats: Dict[str, Dict[str, int]] = field(default_factory=dict)  # multi-key workloads: per kind of op
    stats_line: str = ""

    @property
    def anomaly(self) -> bool:
        return self.verdict != VALID or bool(self.durability) or not self.healthy or bool(self.errors)

    def line(self, label: str = "") -> str:
        ok, failed, unknown = self.counts.get("ok", 0), self.counts.get("fail", 0), self.counts.get(INFO, 0)
        events = ", ".join("%s %d" % kv for kv in sorted(self.events.items())) or "none"
        parts = [
            "%s%.0fs" % ((label + " ") if label else "", self.seconds),
            "ops %d (ok %d, failed %d, unknown %d, %.0f ops/s)" % (self.ops, ok, failed, unknown, self.ops / max(self.seconds, 1e-9)),
            "nemesis %d (%s)" % (sum(self.events.values()), events)
            + ("" if not self.skipped else " skipped %s" % ", ".join("%s %d" % kv for kv in sorted(self.skipped.items()))),
            "linearizable: %s (%.1fs)" % (self.verdict, self.check_seconds),
            "durable: %s" % ("yes" if not self.durability else "NO (%d)" % len(self.durability)),
        ]
        if self.stats_line:
            parts.insert(2, "%s: %s" % (self.workload, self.stats_line))
        if self.probes.get("sent"):
            parts.append("stale-read probes %d/%d answered" % (self.probes.get("answered", 0), self.probes["sent"]))
        if not self.healthy:
            parts.append("recovered: NO (%s)" % self.health_detail)
        if self.errors:
            parts.append("harness errors: %d" % len(self.errors))
        text = "; ".join(parts)
        if self.anomaly:
            text += " -> ANOMALY, history and node logs kept in %s" % self.dir
        elif self.kept:
            text += " (kept in %s)" % self.dir
        return text


def run_once(cfg: RunConfig, index: int = 1) -> RunResult:
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(os.path.join(cfg.out_dir, "%s-run%d-%s" % (stamp, index, cfg.label or "-".join(cfg.nemeses)[:60] or "none")))
    os.makedirs(run_dir, exist_ok=True)
    history = History()
    history.header = {"config": {k: v for k, v in asdict(cfg).items()}, "seed": seed, "started": stamp}
    errors: List[str] = []
    netfilter = Netfilter() if needs_netfilter(cfg.nemeses) else None
    cluster = None
    workload = None
    nemesis = None
    healthy, health_detail = False, "not reached"
    final: Dict[str, Optional[str]] = {}
    replicas: Dict[str, Dict[str, Optional[str]]] = {}
    started = time.monotonic()
    workload_seconds = 0.0
    phases: Dict[str, float] = {}

    def phase(name):
        phases[name] = round(time.monotonic() - started - sum(phases.values()), 1)
    try:
        if netfilter is not None:
            netfilter.setup()
        cluster = ProcessCluster(run_dir, cfg.nodes, rng, cfg.tick_ms, cfg.election_ticks, cfg.request_timeout_s,
                          cluster_id="jepsen-%d" % seed, snapshot_entries=cfg.snapshot_entries,
                          snapshot_keep_entries=cfg.snapshot_keep_entries)
        cluster.start()
        phase("start")
        if cfg.workload == "register":
            workload = Workload(cluster, history, seed, cfg.clients, cfg.keys, cfg.ops_per_key, cfg.client_timeout_s,
                                cfg.think_s, stale_reads=cfg.planted_stale_reads)
        else:
            workload = dict(WORKLOADS, expiry=ExpiryWorkload, watch=WatchWorkload, locks=LockWorkload)[cfg.workload](
                cluster, history, seed, cfg.clients, cfg.keys, cfg.ops_per_key, cfg.client_timeout_s, cfg.think_s,
                split=cfg.planted_split)
        nemesis = Nemesis(cluster, history, rng, netfilter, min_members=min(3, cfg.nodes), max_members=max(5, cfg.nodes),
                          keys=lambda: list(workload.keys_used))
        history.t0 = time.monotonic()
        t_start = time.monotonic()
        workload.start()
        try:
            run_schedule(nemesis, cfg.nemeses, time.monotonic() + cfg.seconds, rng, cfg.order, cfg.rounds,
                         cfg.fault_s, cfg.quiet_s, cfg.combine)
        finally:
            nemesis.heal_all()
        time.sleep(cfg.settle_s)
        if not workload.stop():
            errors.append("a client did not finish its last operation in time")
        workload_seconds = time.monotonic() - t_start
        phase("workload")
        healthy, health_detail = cluster.wait_healthy(60.0)
        phase("recover")
        keys = list(workload.keys_used) + ([PROBE_KEY] if nemesis.probe_seq else [])
        if cfg.workload == "register":
            final = final_reads(cluster, history, keys)
        else:
            final = workload.final_reads()
            if nemesis.probe_seq:
                final.update(final_reads(cluster, history, [PROBE_KEY]))
        missing = [k for k in keys if k not in final]
        if missing:
            healthy, health_detail = False, "no final read answered for %d key(s), e.g. %s" % (len(missing), missing[0])
        else:
            settled, detail = cluster.wait_healthy(30.0)
            replicas = local_reads(cluster, keys)
            if not settled:
                healthy, health_detail = False, "after the final reads: " + detail
        phase("final reads")
        errors.extend(nemesis.problems)
        errors.extend(workload.unexpected)
        errors.extend(getattr(workload, "leftovers", ()))
    except BaseException as e:
        errors.append("harness error: %s\n%s" % (e, traceback.format_exc()))
        if isinstance(e, KeyboardInterrupt):
            raise
    finally:
        if workload is not None:
            workload.stop()
        if netfilter is not None:
            netfilter.close()
        if cluster is not None:
            try:
                cluster.close()
            except Exception as e:
                errors.append("teardown: %s" % e)
        history_path = os.path.join(run_dir, "history.jsonl")
        history.write(history_path)
        phase("teardown")

    if cfg.workload == "expiry":
        ops = [expiry_check.from_record(r) for r in history.finished_ops() if r["key"] != PROBE_KEY]
    elif cfg.workload == "locks":
        ops = [locks_check.from_record(r) for r in history.finished_ops() if r["key"] != PROBE_KEY]
    elif cfg.workload == "watch":
        ops = [r for r in history.finished_ops() if r["key"] != PROBE_KEY]
    else:
        ops = [to_op(r) for r in history.finished_ops()]
    if cfg.workload in ("expiry", "locks"):
        result = (expiry_check if cfg.workload == "expiry" else locks_check).check_history(ops)
        phase("check")
        durability = convergence(final, replicas) if final else []
    elif cfg.workload == "watch":
        result = watch_check.check_history(ops)
        phase("check")
        durability = convergence(final, replicas) if final else []
    elif cfg.workload == "register":
        result = check(ops, budget_s=cfg.check_budget_s)
        phase("check")
        durability = check_durability(ops, final, replicas) if final else []
    else:
        # The final reads are ops of the history, after every other op: a lost
        # acknowledged write makes them, hence the history, not linearizable.
        result = txn_check.check(ops, budget_s=cfg.check_budget_s)
        phase("check")
        durability = convergence(final, replicas) if final else []
    counts = history.counts()
    events: Dict[str, int] = dict(nemesis.started) if nemesis else {}
    res = RunResult(
        dir=run_dir, history=history_path, seconds=workload_seconds or (time.monotonic() - started), ops=len(ops),
        counts=counts, events=events, verdict=result.verdict, check_seconds=result.seconds, durability=durability,
        healthy=healthy, health_detail=health_detail, errors=errors, probes=dict(nemesis.probes) if nemesis else {},
        report=result.report(), phases=phases, skipped=dict(nemesis.skipped) if nemesis else {},
        workload=cfg.workload,
        stats={k: dict(v) for k, v in getattr(workload, "stats", {}).items()},
        stats_line=workload.summary() if hasattr(workload, "summary") else "",
    )
    with open(os.path.join(run_dir, "summary.txt"), "w") as f:
        f.write(res.line(cfg.label) + "\n\nphases (s): %s\n\n" % phases + res.report + "\n")
        for p in durability:
            f.write("durability: %s\n" % p)
        for e in errors:
            f.write("error: %s\n" % e)
        if not healthy:
            f.write("recovery: %s\n" % health_detail)
    if res.anomaly or cfg.keep:
        res.kept = True
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res
