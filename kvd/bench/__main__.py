"""
``python -m kvd.bench [--short] [--etcd] [--json FILE]``: the loads
(kvd.bench.loads) on a three-node cluster of its own, each followed by the
same load on etcd with ``--etcd`` (kvd.bench.etcd), with the ratio, and on one
redis-server with fsync always with ``--redis`` (kvd.bench.redis_server); ``--profile`` adds where each node
spent its time (kvd.bench.profile); ``python -m kvd.bench failover [--kills N]``:
leader kills under light load (kvd.bench.failover); ``python -m kvd.bench data
[--keys N --value-bytes S]``: issue 13's figures at scale (kvd.bench.data); ``python -m kvd.bench soak
[--soak-seconds N]``: a full write load for ten minutes, counting elections.  Everything runs on
loopback addresses 127.x.y.z, is bounded in requests and time, and the nodes
(started by PID, with the defaults a user gets: 50 ms ticks, 8-tick election
timeout, fsync on) are killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence, Tuple

from kvd.bench import etcd as etcd_bench
from kvd.bench import data, failover, loads, procs, profile, redispy
from kvd.bench import redis_server as redis_bench
from kvd.jepsen.cluster import ProcessCluster


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout.strip()
    except OSError:
        return ""


def _machine() -> str:
    return "%s, %d cores, Python %s" % (platform.platform(), os.cpu_count() or 0, platform.python_version())


def _cluster(run_dir: str, tick_ms: int = 50, election_ticks: int = 8, node_args: Sequence[str] = (),
             peer_tls: bool = True) -> ProcessCluster:
    cluster = ProcessCluster(run_dir, n=3, tick_ms=tick_ms, election_ticks=election_ticks, request_timeout_s=5.0,
                             cluster_id="bench", extra_args=tuple(node_args), peer_tls=peer_tls)
    cluster.start(60.0)
    ok, why = cluster.wait_healthy(60.0)
    if not ok:
        raise RuntimeError("the bench cluster did not come up: %s" % why)
    return cluster


def _node_args(args) -> Tuple[str, ...]:
    """The twistd kvd options every node of the run gets beyond the bench's own."""
    extra = tuple(args.node_arg or ())
    if getattr(args, "stall_trace_ms", None):
        extra += ("--stall-trace-ms", str(args.stall_trace_ms))
    return extra


def _chosen_loads(args) -> list:
    """The loads ``--loads`` names (1-based numbers in LOADS' order), all of them by default."""
    if not getattr(args, "loads", None):
        return list(loads.LOADS)
    try:
        numbers = [int(n) for n in args.loads.split(",") if n.strip()]
    except ValueError:
        raise SystemExit("--loads takes numbers from 1 to %d, comma-separated" % len(loads.LOADS))
    if not numbers or any(not 1 <= n <= len(loads.LOADS) for n in numbers):
        raise SystemExit("--loads takes numbers from 1 to %d, comma-separated" % len(loads.LOADS))
    return [loads.LOADS[n - 1] for n in numbers]


def run_loads(args) -> dict:
    loads.redis_benchmark()  # fail early, with the install line
    chosen = _chosen_loads(args)  # and on a wrong --loads, before anything is started
    run_dir = tempfile.mkdtemp(prefix="kvd-bench-")
    etcd = None
    if args.etcd:
        problem = etcd_bench.tools_problem()
        if problem:
            raise RuntimeError("--etcd %s" % problem)
        etcd = etcd_bench.EtcdCluster(os.path.join(run_dir, "etcd"))
        os.makedirs(etcd.dir, exist_ok=True)
        etcd.start()
    redis = None
    if args.redis:
        problem = redis_bench.tools_problem()
        if problem:
            raise RuntimeError("--redis %s" % problem)
        redis = redis_bench.RedisServer(os.path.join(run_dir, "redis"))
        redis.start()
    cluster = _cluster(run_dir, args.tick_ms, args.election_ticks, _node_args(args), not args.insecure_peers)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": _commit(), "machine": _machine(),
           "short": args.short, "peers": "plaintext" if args.insecure_peers else "mutual TLS", "loads": []}
    print("kvd bench (%s) on %s; commit %s; 3 nodes, fsync on, peers over %s%s" % (
        out["date"], out["machine"], out["commit"] or "?", out["peers"], "; SHORT form" if args.short else ""))
    width = max([34] + [len(load.name) for load in chosen])  # the name column of the printed lines
    etcd_seen = {}  # (connections, mode) -> ops/s of each etcd load run so far
    try:
        for load in chosen:
            leader = cluster.leader(20.0)
            if leader is None:
                raise RuntimeError("no leader before %r" % load.name)
            target = leader if load.target == "leader" else next(n for n in cluster.members if n is not leader)
            ordered = [leader] + [n for n in cluster.members if n is not leader]
            pids = {n.id: n.pid for n in ordered}
            before = procs.snapshot(pids)
            elections_before = _elections(ordered)
            recording = profile.Recording(pids, run_dir, str(len(out["loads"]))) if args.profile else None
            result = loads.run(target.host, target.port, load, args.short)
            cpu = procs.used(before, procs.snapshot(pids), [n.id for n in ordered])
            profiles = recording.stop() if recording is not None else None
            elections = _elections(ordered) - elections_before
            requests = load.short_requests if args.short else load.requests
            row = {"load": load.name, "target": target.id, "ops_per_s": result.ops_per_s, "p50_ms": result.p50_ms,
                   "p99_ms": result.p99_ms, "p999_ms": result.p999_ms, "errors_shown": result.errors,
                   "seconds": result.seconds, "cpu_s_per_node_leader_first": [cpu[n.id] for n in ordered],
                   "cpu_s_per_10k_ops_leader_first": [_per_10k(cpu[n.id], requests) for n in ordered],
                   "elections": elections,
                   # the whole cluster's CPU per write is what caps throughput when its members share few cores
                   "cpu_s_per_10k_ops_all_nodes": _per_10k(_total(cpu.values()), requests)}
            if etcd is not None and load.etcd is not None:
                url = etcd.leader_url() if load.target == "leader" else etcd.follower_url()
                e_pids = {str(pid): pid for pid in etcd.pids()}
                e_before = procs.snapshot(e_pids)
                e = etcd_bench.wrk(url, load.etcd[0], max(2, int(round(result.seconds))), load.etcd[1], run_dir)
                e_cpu = procs.used(e_before, procs.snapshot(e_pids), list(e_pids))
                e_seconds = max(2, int(round(result.seconds)))
                row["etcd"] = {"ops_per_s": e.ops_per_s, "p50_ms": e.p50_ms, "p99_ms": e.p99_ms, "errors": e.errors,
                               "cpu_s_per_member": list(e_cpu.values()),
                               # wrk reports a rate, not a count: the requests are rate x the seconds it ran
                               "cpu_s_per_10k_ops_all_members": _per_10k(_total(e_cpu.values()),
                                                                         int(e.ops_per_s * e_seconds))}
                row["ratio_kvd_to_etcd"] = round(result.ops_per_s / e.ops_per_s, 2) if e.ops_per_s else None
                etcd_seen[load.etcd] = e.ops_per_s
                if load.etcd_linearizable is not None:
                    row.update(_versus_etcd_linearizable(result.ops_per_s, etcd_seen.get(load.etcd_linearizable)))
            if redis is not None and load.target == "leader":
                r_before = procs.snapshot({"redis": redis.pid})
                r = loads.run(redis.host, redis.port, load, args.short)
                r_cpu = procs.used(r_before, procs.snapshot({"redis": redis.pid}), ["redis"])["redis"]
                row["redis_aof_always"] = {"ops_per_s": r.ops_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                                           "cpu_s": r_cpu}
                row["ratio_kvd_to_redis"] = round(result.ops_per_s / r.ops_per_s, 3) if r.ops_per_s else None
            if profiles is not None:
                row["profile_us_per_request"] = {
                    name: {"%s/%s" % key: round(1e6 * n / profile.RATE_HZ / requests, 1)
                           for key, n in profiles[name].samples.items()} for name in pids}
            out["loads"].append(row)
            print("%-*s %9.0f ops/s   p50 %6s ms  p99 %6s ms  p999 %6s ms   CPU s/node (leader first) %s"
                  "   per 10K ops %s%s" % (
                width, load.name, result.ops_per_s, _ms(result.p50_ms), _ms(result.p99_ms), _ms(result.p999_ms),
                " ".join("-" if c is None else "%.1f" % c for c in row["cpu_s_per_node_leader_first"]),
                " ".join("-" if c is None else "%.1f" % c for c in row["cpu_s_per_10k_ops_leader_first"]),
                ("   errors shown: %d" % result.errors if result.errors else "")
                + ("   ELECTIONS during the load: %d" % elections if elections else "")), flush=True)
            if "etcd" in row:
                e = row["etcd"]
                print("%-*s %9.0f ops/s   p50 %6s ms  p99 %6s ms                  kvd/etcd = %.2fx%s"
                      "   CPU s per 10K ops, all members: kvd %s, etcd %s%s" % (
                          width, "  etcd, the same load", e["ops_per_s"], _ms(e["p50_ms"]), _ms(e["p99_ms"]),
                          row["ratio_kvd_to_etcd"] or 0, _linearizable_note(row), _cpu(row["cpu_s_per_10k_ops_all_nodes"]),
                          _cpu(e["cpu_s_per_10k_ops_all_members"]),
                          "   etcd errors: %d" % e["errors"] if e["errors"] else ""), flush=True)
            if "redis_aof_always" in row:
                r = row["redis_aof_always"]
                print("%-*s %9.0f ops/s   p50 %6s ms  p99 %6s ms                  kvd/redis = %.3fx" % (
                    width, "  Redis, one node, AOF fsync always", r["ops_per_s"], _ms(r["p50_ms"]), _ms(r["p99_ms"]),
                    row["ratio_kvd_to_redis"] or 0), flush=True)
            if profiles is not None:
                print("  where the time goes (py-spy, us per request; reactor and writer threads):")
                for line in profile.table(profiles, requests, result.seconds, [n.id for n in ordered]):
                    print(line, flush=True)
    finally:
        cluster.close()
        if etcd is not None:
            etcd.close()
        if redis is not None:
            redis.close()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return out


def run_failover(args) -> dict:
    run_dir = tempfile.mkdtemp(prefix="kvd-bench-failover-")
    cluster = _cluster(run_dir, args.tick_ms, args.election_ticks, _node_args(args), not args.insecure_peers)
    kills = 2 if args.short else args.kills
    rounds = 1 if args.short else args.membership_rounds
    print("kvd failover bench: %d leader kills (kill -9) under light load; 3 nodes, %d ms ticks, election after %d" % (
        kills, args.tick_ms, args.election_ticks))
    changes: list = []
    try:
        times = failover.measure(cluster, kills)
        if rounds:
            print("membership: %d rounds of removing the leader (KVD.REMOVE sent to it), then re-adding it wiped at the "
                  "same address" % rounds)
            changes = failover.measure_membership(cluster, rounds)
    finally:
        cluster.close()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    s = failover.summary(times)
    if "median_s" in s:
        print("time to the next acknowledged write: min %.3f  median %.3f  p90 %.3f  p99 %.3f  max %.3f s  (%d kills, %d without a write)" % (
            s["min_s"], s["median_s"], s["p90_s"], s["p99_s"], s["max_s"], s["kills"], s["failed"]))
    else:
        print("no write succeeded after any of the %d kills" % s["kills"])
    membership = {}
    for key, label in (("leader_after_s", "leader removed -> a survivor leads"),
                       ("write_after_s", "leader removed -> a write through a survivor"),
                       ("join_to_voter_s", "re-added at the same address -> voter")):
        m = failover.summary([row[key] for row in changes]) if changes else {}
        membership[key] = m
        if "median_s" in m:
            print("%-46s median %.3f  max %.3f s  (%d rounds, %d never)" % (label + ":", m["median_s"], m["max_s"], m["kills"], m["failed"]))
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": _commit(), "machine": _machine(),
            "failover": s, "times_s": times, "membership": membership, "membership_rounds": changes}


def run_data(args) -> dict:
    given = dict(keys=args.keys, value_bytes=args.value_bytes, clients=args.clients, pipeline=args.pipeline,
                 baseline_s=args.baseline_seconds, join_timeout_s=args.join_timeout, restart_timeout_s=args.restart_timeout,
                 max_seconds=args.max_seconds, snapshot_entries=args.snapshot_entries,
                 snapshot_keep_entries=args.snapshot_keep_entries, port=args.port,
                 node_args=_node_args(args) or None)
    given.update(tick_ms=args.tick_ms, election_ticks=args.election_ticks)
    settings = data.Settings.short(**given) if args.short else data.Settings(**{k: v for k, v in given.items() if v is not None})
    run_dir = tempfile.mkdtemp(prefix="kvd-bench-data-")
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": _commit(), "machine": _machine(),
           "short": args.short, "settings": dict(settings.__dict__)}
    print("kvd bench data (%s) on %s; commit %s; 3 nodes, fsync on; %d keys of %d bytes%s" % (
        out["date"], out["machine"], out["commit"] or "?", settings.keys, settings.value_bytes,
        "; SHORT form" if args.short else ""), flush=True)
    try:
        out["figures"] = data.run(settings, run_dir)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print("run directory kept: %s" % run_dir)
    return out


def run_redis_py(args) -> dict:
    files = tuple(f if f.endswith(".py") else f + ".py" for f in args.files.split(",")) if args.files else redispy.FILES
    protocols = tuple(int(p) for p in args.protocols.split(","))
    targets = tuple(args.targets.split(","))
    log_dir = tempfile.mkdtemp(prefix="kvd-bench-redispy-logs-")
    print("pytest's output of each run goes to %s" % log_dir, flush=True)
    out = redispy.run(server=args.server, files=files, protocols=protocols, targets=targets, log_dir=log_dir)
    out.update(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), commit=_commit(), machine=_machine())
    if args.failures:
        with open(args.failures, "w") as f:
            for label, per_file in out["runs"].items():
                for name, counts in sorted(per_file.items()):
                    for test_id, error in counts["failures"]:
                        f.write("%s\t%s\t%s\n" % (label, test_id, error))
        print("failing tests written to %s" % args.failures)
    return out


def _versus_etcd_linearizable(kvd_ops_per_s: float, etcd_ops_per_s: Optional[float]) -> dict:
    """
    A local read load's figures against etcd's linearizable reads measured earlier in the same run (None when
    that load did not run, as with ``--loads`` without it): issue 14's "READONLY reads >= 10x etcd" either way.
    """
    ratio = round(kvd_ops_per_s / etcd_ops_per_s, 2) if etcd_ops_per_s else None
    return {"etcd_linearizable_ops_per_s": etcd_ops_per_s, "ratio_kvd_to_etcd_linearizable": ratio}


def _linearizable_note(row: dict) -> str:
    """The printed etcd line's second ratio, for a local read load (kvd.bench.loads ``etcd_linearizable``)."""
    if "ratio_kvd_to_etcd_linearizable" not in row:
        return ""
    if row["ratio_kvd_to_etcd_linearizable"] is None:
        return " (etcd's linearizable GET: not run)"
    return " (to etcd's linearizable GET, %.0f ops/s: %.2fx)" % (
        row["etcd_linearizable_ops_per_s"], row["ratio_kvd_to_etcd_linearizable"])


def _total(cpu_s) -> Optional[float]:
    """The sum of per-process CPU seconds; None if one of them could not be read."""
    values = list(cpu_s)
    return None if any(c is None for c in values) else sum(values)


def _cpu(value) -> str:
    return "-" if value is None else "%.2f" % value


def _per_10k(cpu_s, ops: int):
    return None if cpu_s is None or not ops else round(cpu_s * 10000.0 / ops, 2)


def run_soak(args) -> dict:
    """
    Issue 14's "no leader change during 10 minutes of full write load": SET from
    64 clients to the leader, in rounds of redis-benchmark, until ``--soak-seconds``
    have passed; the elections every node counted (INFO raft_elections) before and
    after, and each round's figures.
    """
    loads.redis_benchmark()
    run_dir = tempfile.mkdtemp(prefix="kvd-bench-soak-")
    cluster = _cluster(run_dir, args.tick_ms, args.election_ticks, _node_args(args), not args.insecure_peers)
    seconds = 5.0 if args.short else float(args.soak_seconds)
    load = loads.Load("SET, 64 clients (soak)", "leader", ["-t", "set", "-c", "64"], 30000, 400)
    rounds: list = []
    print("kvd soak: SET from 64 clients to the leader for %.0f s; 3 nodes, fsync on" % seconds, flush=True)
    try:
        leader = cluster.leader(20.0)
        if leader is None:
            raise RuntimeError("no leader before the soak")
        ordered = [leader] + [n for n in cluster.members if n is not leader]
        pids = {n.id: n.pid for n in ordered}
        before, elections_before = procs.snapshot(pids), _elections(ordered)
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            result = loads.run(leader.host, leader.port, load, args.short)
            rounds.append({"ops_per_s": result.ops_per_s, "p99_ms": result.p99_ms, "errors_shown": result.errors,
                           "seconds": result.seconds})
            print("  %6.0f s: %7.0f ops/s  p99 %6s ms%s" % (
                time.monotonic() - started, result.ops_per_s, _ms(result.p99_ms),
                "   errors shown: %d" % result.errors if result.errors else ""), flush=True)
        took = time.monotonic() - started
        cpu = procs.used(before, procs.snapshot(pids), [n.id for n in ordered])
        elections = _elections(ordered) - elections_before
        still = cluster.leader(5.0)
    finally:
        cluster.close()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    ops = sum(r["ops_per_s"] * r["seconds"] for r in rounds)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": _commit(), "machine": _machine(),
           "seconds": round(took, 1), "ops": int(ops), "rounds": rounds, "elections": elections,
           "same_leader": still is not None and still.id == leader.id,
           "cpu_s_per_node_leader_first": [cpu[n.id] for n in ordered],
           "cpu_s_per_10k_ops_leader_first": [_per_10k(cpu[n.id], int(ops)) for n in ordered]}
    print("soak: %d SETs in %.0f s (%.0f ops/s), %d rounds, worst p99 %s ms; elections %d, leader %s; CPU s per 10K "
          "ops per node (leader first) %s" % (
              out["ops"], took, ops / took if took else 0, len(rounds),
              _ms(max((r["p99_ms"] for r in rounds if r["p99_ms"] is not None), default=None)), elections,
              "unchanged" if out["same_leader"] else "CHANGED",
              " ".join("-" if c is None else "%.2f" % c for c in out["cpu_s_per_10k_ops_leader_first"])), flush=True)
    return out


def _elections(nodes) -> int:
    """Elections the nodes have started so far (INFO raft_elections), summed: a change means a leader was lost."""
    total = 0
    for n in nodes:
        info = n.info(timeout=2.0) or {}
        total += int(info.get("raft_elections", 0) or 0)
    return total


def _ms(value) -> str:
    return "-" if value is None else "%.2f" % value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvd.bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["loads", "failover", "data", "redis-py", "soak"], default="loads")
    parser.add_argument("--soak-seconds", type=float, default=600.0,
                        help="soak: how long the full write load lasts (default 600; --short: 5)")
    parser.add_argument("--short", action="store_true", help="a few requests per load: proves the bench works (CI)")
    parser.add_argument("--kills", type=int, default=20, help="failover: how many times to kill the leader")
    parser.add_argument("--membership-rounds", type=int, default=5,
                        help="failover: how many times to remove the leader and re-add it (0: none)")
    parser.add_argument("--etcd", action="store_true",
                        help="loads: after each kvd load, the same load on a 3-member etcd (Debian's etcd-server, via wrk)")
    parser.add_argument("--redis", action="store_true",
                        help="loads: after each kvd load to the leader, the same load on one redis-server with "
                        "appendfsync always (the single-node ceiling)")
    parser.add_argument("--profile", action="store_true",
                        help="loads: sample every node with py-spy during each load and print where the time goes "
                        "(installs py-spy from PyPI if missing; sampling costs the nodes a little CPU)")
    parser.add_argument("--loads", metavar="N,M",
                        help="loads: run only these loads, numbered from 1 in the order of the table (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON, to compare commits")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (node logs)")
    parser.add_argument("--tick-ms", type=int, default=50, help="the nodes' --tick-ms (default: twistd kvd's, 50)")
    parser.add_argument("--election-ticks", type=int, default=8, help="the nodes' --election-ticks (default: twistd kvd's, 8)")
    parser.add_argument("--insecure-peers", action="store_true",
                        help="kvd's nodes talk to each other in plaintext (twistd kvd --insecure-peers) instead of mutual "
                        "TLS: what etcd's defaults, which the --etcd comparison runs, do; an A/B of what peer TLS costs")
    parser.add_argument("--node-arg", action="append", metavar="OPTION",
                        help="one more twistd kvd option for every node, repeatable: an A/B of a node option "
                        "(e.g. --node-arg=--storage-writes=reactor)")
    group = parser.add_argument_group("data (issue 13's figures; --short: 2000 keys of 100 bytes)")
    group.add_argument("--keys", type=int, help="keys to load (default 1,000,000)")
    group.add_argument("--value-bytes", type=int, help="bytes of each value (default 1024)")
    group.add_argument("--clients", type=int, help="connections loading at once (default 8)")
    group.add_argument("--pipeline", type=int, help="SETs each connection sends before it reads their replies (default 32)")
    group.add_argument("--baseline-seconds", type=float, help="the write load without a snapshot lasts this long (default 10)")
    group.add_argument("--join-timeout", type=float, help="seconds a new node has to become a voter (default 300)")
    group.add_argument("--restart-timeout", type=float, help="seconds a restarted node has to serve (default 300)")
    group.add_argument("--max-seconds", type=float, help="the whole run ends by then; what is left is not measured (default 7200)")
    group.add_argument("--snapshot-entries", type=int, help="the nodes' --snapshot-entries (default: twistd kvd's, 10000)")
    group.add_argument("--snapshot-keep-entries", type=int, help="the nodes' --snapshot-keep-entries (default: twistd kvd's, 1000)")
    group.add_argument("--port", type=int, help="every node's client port, each on its own 127.x.y.i (default: a free one)")
    group.add_argument("--stall-trace-ms", type=int, help="the nodes log where their reactor was in every stall longer than this "
                       "(twistd kvd --stall-trace-ms; sampling costs a little CPU: a diagnostic run, not a figure)")
    group = parser.add_argument_group("redis-py (its own test suite against kvd: issue 15)")
    group.add_argument("--server", choices=["kvd", "redis"], default="kvd",
                       help="run the suite against a 3-node kvd (leader and follower) or a redis-server of its own")
    group.add_argument("--files", help="comma-separated test files of redis-py's tests/ (default: %s)" % ",".join(redispy.FILES))
    group.add_argument("--failures", metavar="FILE", help="write each failing test and its error, one per line")
    group.add_argument("--targets", default="leader,follower", help="which kvd nodes: leader,follower (default both)")
    group.add_argument("--protocols", default="2,3", help="RESP versions to run with (default 2,3)")
    args = parser.parse_args(argv)
    runs = {"failover": run_failover, "data": run_data, "loads": run_loads, "redis-py": run_redis_py, "soak": run_soak}
    try:
        out = runs[args.what](args)
    except RuntimeError as e:
        print("kvd bench: %s" % e, file=sys.stderr)
        return 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
        print("figures written to %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
