"""
Lease reads in the simulator (``python -m kvd.sim --lease-reads``): every node
answers reads by its leader's lease (RaftSettings.lease_reads), and the reads
must still pass the linearizability checker under the faults (partitions,
crashes, pauses, loss, duplication, reordering and delays, membership
changes, clock rates within the lease's margin).  Planted lease bugs must be
caught on the same seeds (tests/sim/mutations.py, LEASE_MUTATIONS).  The same
holds with the option on some nodes only (``--lease-reads-mixed``).

A failure prints the command that replays it:
``python -m kvd.sim --seed N --nodes K --lease-reads --trace``.
"""

import pytest

from kvd.sim.cluster import SimOptions, run_one
from tests.sim.mutations import LEASE_MUTATIONS

# Sized so that each test stays under half a minute on a 2-core machine.
SEEDS_3 = range(0, 100)
SEEDS_5 = range(1000, 1020)
# Pauses only, on every seed: a paused leader, often cut off from its peers but not from its clients
# (the zombie of SimCluster.nemesis), is where a lease that outlives the followers' promise is stale.
PAUSES = frozenset(["pause"])
SEEDS_PAUSES = range(0, 60)


# Some nodes without the option (SimOptions.lease_reads_mixed).
SEEDS_MIXED_3 = range(0, 60)
SEEDS_MIXED_5 = range(1000, 1020)


def _run(seed, nodes=3, faults=None, swarm=True, mixed=False):
    extra = {"faults": faults} if faults is not None else {}
    return run_one(SimOptions(seed=seed, nodes=nodes, swarm=swarm, lease_reads=True, lease_reads_mixed=mixed, **extra))


def _failures(results, flag="--lease-reads"):
    return ["seed %d: %s: %s\n  python -m kvd.sim --seed %d --nodes %d %s --trace\n%s"
            % (r.seed, r.invariant, r.detail, r.seed, nodes, flag, "\n".join(r.trace[-30:])) for nodes, r in results if not r.ok]


def test_lease_reads_pass_every_invariant_under_all_faults():
    """Three and five founders, every fault the swarm draws: all invariants hold, linearizable reads included."""
    results = [(3, _run(s)) for s in SEEDS_3] + [(5, _run(s, nodes=5)) for s in SEEDS_5]
    assert _failures(results) == []
    reads = sum(r.stats["reads"] for _, r in results)
    served = sum(r.stats["lease_reads"] for _, r in results)
    assert reads > 500 and served > reads / 2, (reads, served)  # the lease answers most of them


def test_lease_reads_pass_under_pauses():
    """The seeds that catch the planted bugs below pass with the real core."""
    assert _failures([(3, _run(s, faults=PAUSES, swarm=False)) for s in SEEDS_PAUSES]) == []


def test_lease_reads_pass_with_the_option_on_some_nodes_only():
    """
    A forgotten option, a rolling restart: each node has it or not (drawn per
    node).  The leaders that have it serve by lease on the promise of the
    others, which keep it all the same; every invariant holds.
    """
    results = [(3, _run(s, mixed=True)) for s in SEEDS_MIXED_3] + [(5, _run(s, nodes=5, mixed=True)) for s in SEEDS_MIXED_5]
    assert _failures(results, "--lease-reads-mixed") == []
    without = sum(r.stats["nodes_without_lease_reads"] for _, r in results)
    served = sum(r.stats["lease_reads"] for _, r in results)
    assert without > len(results) and served > 100, (without, served)  # mixed indeed, and leases served


@pytest.mark.parametrize("name", sorted(LEASE_MUTATIONS))
def test_a_planted_lease_bug_is_caught(name):
    """A stale lease shows as a read that misses an acknowledged write, within the pause seeds."""
    with LEASE_MUTATIONS[name]():
        for seed in SEEDS_PAUSES:
            r = _run(seed, faults=PAUSES, swarm=False)
            if not r.ok:
                break
        else:
            pytest.fail("%s survived %d seeds" % (name, len(SEEDS_PAUSES)))
    assert r.invariant == "linearizable read", (seed, r.invariant, r.detail)
    assert _run(seed, faults=PAUSES, swarm=False).ok  # and the real core passes that seed

