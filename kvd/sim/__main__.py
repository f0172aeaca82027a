"""
python -m kvd.sim --seed S [--runs N] [--nodes K] [--faults a,b,...] [--state memory|durable|mixed] [--ticks T]
                   [--leases] [--lease-reads] [--lease-reads-mixed] [--defer-commit-notice] [--budget-s SECONDS]
                   [--trace]

Runs seeds S .. S+N-1 through the simulator; prints every failing seed with
the violated invariant and the last events before it, and exits 1 if any
failed.  ``--trace`` prints the whole trace of each run (use it with one
seed to replay a failure exactly).  The wall clock is read here only, for
the time budget and the runs-per-second report; the simulation never sees it.
"""

from __future__ import annotations

import argparse
import sys
import time

from kvd.sim.cluster import ALL_FAULTS, STATE_MODES, SimOptions, run_one


def parse_faults(text: str) -> frozenset:
    if text in ("all", ""):
        return frozenset(ALL_FAULTS)
    if text == "none":
        return frozenset()
    faults = frozenset(f.strip() for f in text.split(",") if f.strip())
    unknown = faults - set(ALL_FAULTS)
    if unknown:
        raise argparse.ArgumentTypeError("unknown faults: %s (known: %s)" % (",".join(sorted(unknown)), ",".join(ALL_FAULTS)))
    return faults


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvd.sim", description="Deterministic simulation of kvd's Raft core.")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--runs", type=int, default=1, help="number of seeds to run (default 1)")
    p.add_argument("--nodes", type=int, default=3, help="founding voters (default 3)")
    p.add_argument("--faults", type=parse_faults, default=frozenset(ALL_FAULTS), help="comma list from %s, or all/none" % ",".join(ALL_FAULTS))
    p.add_argument("--state", choices=STATE_MODES, default=SimOptions.state,
                   help="where the applied state lives: in memory, durable on the simulated disk (streamed snapshots), "
                        "or mixed: drawn per seed (default)")
    p.add_argument("--ticks", type=int, default=SimOptions.ticks, help="ticks of the faulty phase (default %d)" % SimOptions.ticks)
    p.add_argument("--liveness-ticks", type=int, default=SimOptions.liveness_ticks, help="bound on the healed phase")
    p.add_argument("--budget-s", type=float, default=0.0, help="stop starting new seeds after this many seconds")
    p.add_argument("--leases", action="store_true", help="drive leases too, with skewed node clocks (kvd.sim.leases)")
    p.add_argument("--lease-reads", action="store_true",
                   help="every node serves linearizable reads by its leader's lease (RaftSettings.lease_reads); "
                        "the skew fault keeps the clocks within the lease's margin")
    p.add_argument("--lease-reads-mixed", action="store_true",
                   help="lease reads on some nodes only, drawn per node (a forgotten option, a rolling restart): "
                        "the leaders that have it serve reads by lease; implies --lease-reads")
    p.add_argument("--defer-commit-notice", action="store_true",
                   help="every node's leader sends a new commit index with its next append or heartbeat, or at its "
                        "next tick (RaftSettings.defer_commit_notice, the node's default)")
    p.add_argument("--trace", action="store_true", help="print the whole trace of every run")
    p.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    args = p.parse_args(argv)

    started = time.monotonic()
    failed = []
    runs = 0
    for seed in range(args.seed, args.seed + args.runs):
        if args.budget_s and time.monotonic() - started > args.budget_s:
            print("time budget of %.0f s spent after %d runs" % (args.budget_s, runs))
            break
        opts = SimOptions(
            seed=seed,
            nodes=args.nodes,
            faults=args.faults,
            state=args.state,
            ticks=args.ticks,
            liveness_ticks=args.liveness_ticks,
            trace_keep=0 if args.trace else 30,
            leases=args.leases,
            lease_reads=args.lease_reads or args.lease_reads_mixed,
            lease_reads_mixed=args.lease_reads_mixed,
            defer_commit_notice=args.defer_commit_notice,
        )
        result = run_one(opts)
        runs += 1
        if args.trace:
            print("\n".join(result.trace))
        if result.ok:
            if not args.quiet and args.runs == 1:
                print("seed %d ok after %d ticks %s" % (seed, result.ticks, result.stats))
            continue
        failed.append(seed)
        print("FAIL seed %d: %s: %s" % (seed, result.invariant, result.detail))
        if not args.trace:
            for line in result.trace[-30:]:
                print("    " + line)
        flags = "".join(" --" + f.replace("_", "-") for f in ("leases", "lease_reads", "lease_reads_mixed", "defer_commit_notice") if getattr(args, f))
        print("    replay: python -m kvd.sim --seed %d --nodes %d --faults %s --state %s --ticks %d%s --trace"
              % (seed, args.nodes, ",".join(sorted(args.faults)) or "none", args.state, args.ticks, flags))
        sys.stdout.flush()
    elapsed = time.monotonic() - started
    print(
        "%d runs, %d failed%s; %.1f s, %.2f runs/s"
        % (runs, len(failed), (" (seeds %s)" % " ".join(map(str, failed))) if failed else "", elapsed, runs / elapsed if elapsed else 0.0)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
