"""
The simulator drives expiry (kvd.kv.expiry): a fifth of the register writes
carry an expiry, decided from the leaders' stamps; the reference register
model knows the log's time at every index, so a read that returns a key past
its expiry, or replicas (memory or durable) that expire differently, fail the run.
"""

import pytest

from kvd.sim.cluster import SimCluster, SimOptions, run_one


@pytest.mark.parametrize("state", ["memory", "durable"])
def test_reads_after_expiry_are_checked_in_both_state_models(state):
    expired = 0
    for seed in range(3):
        cluster = SimCluster(SimOptions(seed=seed, state=state))
        cluster.run()
        expired += cluster.checker.expired_reads
    assert expired > 0


def test_a_machine_that_never_expires_is_caught(monkeypatch):
    monkeypatch.setattr("kvd.kv.expiry.View._dead", lambda self, key: False)
    monkeypatch.setattr("kvd.kv.expiry.View.reclaim", lambda self, limit: 0)
    results = [run_one(SimOptions(seed=seed, state="durable")) for seed in range(3)]
    assert any(not r.ok for r in results)
    assert {r.invariant for r in results if not r.ok} <= {"linearizable read", "state-machine safety", "exactly once"}
