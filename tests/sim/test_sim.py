"""
The simulator over the real core: a fixed list of seeds must pass every
invariant (CI runs this on every landing), and a seed replays exactly.

A failure prints the command that replays it:
``python -m kvd.sim --seed N --nodes K --trace``.
"""

import pytest

from kvd.sim.__main__ import main
from kvd.sim.invariants import Checker, Violation
from kvd.sim.cluster import ALL_FAULTS, SimCluster, SimOptions, run_one

# Sized so that tests/sim stays well under a minute and a half on a 2-core machine.
SEEDS_3 = range(0, 120)
# 80-89: the real core must pass them, and since the loop batches the inputs that
# waited behind a write, they hold the five-node runs in which a core committing an
# earlier term's entry by counting (Figure 8; tests/sim/test_mutations.py) is caught.
SEEDS_5 = list(range(1000, 1030)) + list(range(80, 90))
# A membership-churn profile: five voters, partitions, membership changes,
# slow disks and reordering only (no crash storms drowning the elections).
MEMBERSHIP_FAULTS = frozenset(["partition", "membership", "slowdisk", "reorder"])
SEEDS_MEMBERSHIP = range(170, 200)


def _check(seeds, nodes, faults=None):
    failures = []
    for seed in seeds:
        r = run_one(SimOptions(seed=seed, nodes=nodes, **({"faults": faults} if faults is not None else {})))
        if not r.ok:
            failures.append("seed %d: %s: %s\n  python -m kvd.sim --seed %d --nodes %d --trace\n%s"
                            % (seed, r.invariant, r.detail, seed, nodes, "\n".join(r.trace[-30:])))
    return failures


def test_seeds_pass_with_three_nodes():
    """Every seed of the CI list passes all safety invariants and the liveness check, with three founders."""
    failures = _check(SEEDS_3, 3)
    assert failures == [], "\n\n".join(failures[:3])


def test_seeds_pass_with_five_nodes():
    """The same with five founders."""
    failures = _check(SEEDS_5, 5)
    assert failures == [], "\n\n".join(failures[:3])


def test_seeds_pass_under_membership_churn():
    """The membership-churn profile passes too."""
    failures = _check(SEEDS_MEMBERSHIP, 5, MEMBERSHIP_FAULTS)
    assert failures == [], "\n\n".join(failures[:3])


def test_same_seed_gives_a_byte_identical_trace():
    """Two runs of one seed produce the same trace, byte for byte; another seed does not."""

    def trace(seed):
        c = SimCluster(SimOptions(seed=seed, trace_keep=0))
        c.run()
        return "\n".join(c.trace_lines()).encode()

    first, second, other = trace(7), trace(7), trace(8)
    assert len(first) > 10000
    assert first == second
    assert first != other


def test_the_runs_exercise_the_faults():
    """The seed list is not idle: across it there are crashes, partitions, membership changes, snapshots, reads and writes."""
    totals = {}
    for seed in range(0, 30):
        r = run_one(SimOptions(seed=seed))
        for k, v in r.stats.items():
            totals[k] = totals.get(k, 0) + v
    for key in ("crashes", "partitions", "config_changes", "compactions", "installs", "leaders", "acks", "reads", "pauses"):
        assert totals.get(key, 0) > 0, key
    assert totals["acks"] > 30 * 20


def test_command_line_runs_seeds_and_reports(capsys):
    """`python -m kvd.sim --seed S --runs N` runs N seeds, exits 0 when all pass and prints runs per second."""
    assert main(["--seed", "3", "--runs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 0 failed" in out and "runs/s" in out


def test_command_line_exits_nonzero_and_shows_the_failure(capsys, monkeypatch):
    """A failing seed is printed with its invariant, the last events and a replay command, and the exit status is 1."""

    def broken(self, node, incarnation, term, core):
        raise Violation("one leader per term", "planted by the test")

    monkeypatch.setattr(Checker, "on_leader", broken)
    assert main(["--seed", "5", "--runs", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL seed 5: one leader per term: planted by the test" in out
    assert "replay: python -m kvd.sim --seed 5" in out


def test_faults_option_restricts_the_mix():
    """--faults none gives a run with no crash, partition or membership change, which still passes."""
    r = run_one(SimOptions(seed=11, faults=frozenset()))
    assert r.ok
    assert r.stats["crashes"] == r.stats["partitions"] == r.stats["config_changes"] == 0
    assert set(ALL_FAULTS) >= {"loss", "dup", "reorder", "partition", "crash", "membership", "snapshot", "slowdisk"}


def test_a_violation_raised_by_the_simulated_disk_still_ends_the_run():
    """The loop fail-stops on a storage error; the simulator's disk raises the checker's Violations, which must not be
    swallowed as a mere storage failure."""
    from kvd.sim import disk as sim_disk
    from kvd.sim.invariants import Violation

    original = sim_disk.SimDisk.write

    def write(self, *args, **kwargs):
        raise Violation("disk", "planted")

    sim_disk.SimDisk.write = write
    try:
        r = run_one(SimOptions(seed=1))
    finally:
        sim_disk.SimDisk.write = original
    assert not r.ok and r.invariant == "disk", (r.invariant, r.detail)
