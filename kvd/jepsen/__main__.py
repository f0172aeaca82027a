"""
The torture loop: runs until ``--duration`` seconds have passed, one
summary line per run; exit status 1 when any run found an anomaly.

    python -m kvd.jepsen --duration 600 --nemesis all
    python -m kvd.jepsen --duration 120 --nemesis partition-leader,kill-leader --run-seconds 30
    python -m kvd.jepsen --duration 60 --nemesis process --workload txn --run-seconds 20
    python -m kvd.jepsen check .kvd/jepsen/<run>/history.jsonl

Workloads: register (GET, SET, SET IFEQ, DEL on single keys), txn (MULTI/EXEC
across keys of a group, WATCH-based compare-and-set), script (EVAL/EVALSHA/
EVAL_RO scripts reading and writing several keys), kvtxn (KVD.TXN compare-and-
swap transfers between two keys, blind writes, reads); --keys is then the number
of key groups and --ops-per-key the ops per group.  expiry (SET PX, GET); locks
(mgmt.py's lock recipe, writes fenced by the token; --keys locks).

Nemeses: kill-leader kill-random stop-leader pause-leader pause-random crash-all
partition-random partition-leader bridge one-way membership; groups: all,
process, partitions, kill, pause, none.  Every run's line is also appended
to <out>/torture.log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from kvd.jepsen.nemesis import ALL, GROUPS, PARTITIONS, expand, needs_netfilter
from kvd.jepsen.netfilter import Netfilter
from kvd.jepsen.run import RunConfig, run_once


def _interrupt(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def check_file(argv) -> int:
    from kvd.check import txn
    from kvd.check.linear import VALID, check
    from kvd.jepsen.workload import read_history

    p = argparse.ArgumentParser(prog="python -m kvd.jepsen check", description="Check a history file for linearizability.")
    p.add_argument("history")
    p.add_argument("--budget", type=float, default=300.0, help="seconds before the verdict is 'unknown'")
    args = p.parse_args(argv)
    with open(args.history) as f:
        records = [json.loads(line) for line in f]
    header = next((r for r in records if r.get("type") not in ("op", "nemesis")), {})
    if header.get("config", {}).get("workload") == "watch":  # KVD.WATCH streams: kvd.check.watches
        from kvd.check import watches

        result = watches.check_history([r for r in records if r.get("type") == "op"])
    elif header.get("config", {}).get("workload") == "locks":  # locks and fenced writes: kvd.check.locks
        from kvd.check import locks

        result = locks.check_history(locks.from_record(r) for r in records
                                     if r.get("type") == "op" and r["key"] != "probe")
        print(result.report())
        return 0 if result.verdict == VALID else 1
    header, ops, events = read_history(args.history)
    multikey = any(isinstance(op, txn.TxnOp) for op in ops)
    result = (txn.check if multikey else check)(ops, budget_s=args.budget)
    print(result.report())
    return 0 if result.verdict == VALID else 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        return check_file(argv[1:])
    p = argparse.ArgumentParser(prog="python -m kvd.jepsen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=300.0, help="total seconds of runs (at least one run)")
    p.add_argument("--run-seconds", type=float, default=60.0, help="seconds of workload per run")
    p.add_argument("--runs", type=int, default=0, help="stop after this many runs (0: as many as fit the duration)")
    p.add_argument("--nemesis", default="all", help="comma-separated nemeses or groups (%s; %s)" % (", ".join(ALL), ", ".join(GROUPS)))
    p.add_argument("--combine", type=float, default=None, help="fraction of faults given a concurrent second one (default 0.25 with several nemeses)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--ops-per-key", type=int, default=200)
    p.add_argument("--seed", type=int, default=None, help="seed of the first run (run i uses seed + i - 1)")
    p.add_argument("--out", default=".kvd/jepsen", help="where runs are written (a clean run's directory is removed)")
    p.add_argument("--keep", action="store_true", help="keep every run's directory")
    p.add_argument("--check-budget", type=float, default=120.0)
    p.add_argument("--think-ms", type=float, default=10.0, help="mean pause between a client's operations")
    p.add_argument("--workload", choices=("register", "txn", "script", "kvtxn", "expiry", "watch", "locks"),
                   default="register",
                   help="what the clients do (txn: MULTI/EXEC and WATCH CAS; script: Lua scripts; "
                        "kvtxn: KVD.TXN compare-and-swap transfers; expiry: SET PX and GET; "
                        "watch: KVD.WATCH streams resumed across nodes while KVD.TXN writes; "
                        "locks: locks on leases, writes fenced by their token)")
    p.add_argument("--planted-split", action="store_true",
                   help="txn/script/kvtxn ops run as separate commands, recorded as atomic; expiry writes recorded "
                        "with a third of their ttl; watch: the nodes drop the first change of every FROMREV replay; "
                        "locks taken with SET without NX: a planted bug the checker must catch")
    p.add_argument("--planted-stale-reads", action="store_true", help="clients read with READONLY (stale reads allowed): a planted bug the checker must catch")
    p.add_argument("--snapshot-entries", type=int, default=400, help="nodes snapshot every this many entries (small: snapshots under faults)")
    p.add_argument("--fault-seconds", type=float, nargs=2, default=(2.0, 4.0), metavar=("MIN", "MAX"))
    p.add_argument("--quiet-seconds", type=float, nargs=2, default=(2.0, 4.0), metavar=("MIN", "MAX"))
    args = p.parse_args(argv)

    try:
        names = expand(args.nemesis)
    except ValueError as e:
        p.error(str(e))
    if needs_netfilter(names):
        ok, why = Netfilter.available()
        if not ok:
            explicit = [n for n in args.nemesis.split(",") if n.strip() in PARTITIONS or n.strip() == "partitions"]
            if explicit:
                print("partitions unavailable: %s" % why, file=sys.stderr)
                return 2
            names = [n for n in names if n not in PARTITIONS]
            print("note: partitions left out (%s)" % why, flush=True)
    combine = args.combine if args.combine is not None else (0.25 if len(names) > 1 else 0.0)
    signal.signal(signal.SIGTERM, _interrupt)

    print("torture: %s workload, nemeses %s, %gs per run, %gs in all, %d nodes, %d clients, %d %s" % (
        args.workload, ",".join(names) or "none", args.run_seconds, args.duration, args.nodes, args.clients, args.keys,
        "key groups" if args.workload in ("txn", "script", "kvtxn") else "locks" if args.workload == "locks" else "keys"),
        flush=True)
    deadline = time.monotonic() + args.duration
    runs = anomalies = 0
    try:
        while runs == 0 or (time.monotonic() < deadline - 10 and (args.runs == 0 or runs < args.runs)):
            runs += 1
            seconds = max(10.0, min(args.run_seconds, deadline - time.monotonic()))
            cfg = RunConfig(
                nemeses=names, seconds=seconds, nodes=args.nodes, clients=args.clients, keys=args.keys,
                ops_per_key=args.ops_per_key, combine=combine, seed=None if args.seed is None else args.seed + runs - 1,
                out_dir=args.out, keep=args.keep, check_budget_s=args.check_budget,
                snapshot_entries=args.snapshot_entries, snapshot_keep_entries=max(1, args.snapshot_entries // 4),
                fault_s=tuple(args.fault_seconds), quiet_s=tuple(args.quiet_seconds),
                planted_stale_reads=args.planted_stale_reads, think_s=args.think_ms / 1000.0,
                workload=args.workload, planted_split=args.planted_split,
                label=args.workload if args.workload != "register" else "",
            )
            result = run_once(cfg, runs)
            anomalies += result.anomaly
            line = "run %d: %s" % (runs, result.line())
            print(line, flush=True)
            with open(os.path.join(args.out, "torture.log"), "a") as log:
                log.write("%s [%s] %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), ",".join(names) or "none", line))
    except KeyboardInterrupt:
        print("interrupted after %d run(s); nodes stopped, filters removed" % runs, flush=True)
        return 130
    print("torture: %d run(s), %d with an anomaly" % (runs, anomalies), flush=True)
    return 1 if anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
