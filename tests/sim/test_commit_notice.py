"""
Deferred commit notices in the simulator (``python -m kvd.sim
--defer-commit-notice``, RaftSettings.defer_commit_notice, the node's
default): a leader tells its followers of a new commit index with its next
append or heartbeat, or at its next tick; every invariant must hold under the
faults, and the healed cluster must still converge (the liveness phase).

A failure prints the command that replays it:
``python -m kvd.sim --seed N --nodes K --defer-commit-notice --trace``.
"""

from kvd.sim.cluster import SimOptions, run_one

SEEDS_3 = range(0, 120)
SEEDS_5 = range(1000, 1030)


def test_deferred_commit_notices_pass_every_invariant_under_all_faults():
    results = [run_one(SimOptions(seed=s, defer_commit_notice=True)) for s in SEEDS_3]
    results += [run_one(SimOptions(seed=s, nodes=5, defer_commit_notice=True)) for s in SEEDS_5]
    failures = ["seed %d: %s: %s\n  python -m kvd.sim --seed %d --nodes %d --defer-commit-notice --trace"
                % (r.seed, r.invariant, r.detail, r.seed, 5 if r.seed >= 1000 else 3) for r in results if not r.ok]
    assert failures == []
    # The timer path ran (a commit no append carried), not only the appends that carry it.
    assert sum(r.stats.get("commit_notices", 0) for r in results) > 100
