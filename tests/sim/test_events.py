"""
The simulator checks the machine's events (kvd.kv.events): every node must
produce the same messages and keyspace events (expired included) at the same
index, since each delivers them to its own subscribers.  A machine whose
events depend on the node that applies them is caught.
"""

import itertools

import pytest

from kvd.kv import events as ev
from kvd.sim.cluster import SimCluster, SimOptions, run_one


@pytest.mark.parametrize("state", ["memory", "durable"])
def test_replicas_produce_the_same_events_expired_included(state):
    cluster = SimCluster(SimOptions(seed=1, state=state))
    cluster.run()
    produced = [text for text in cluster.checker.events.values() if "expired" in text]
    assert produced, "no expired event in the run: the check would have nothing to compare"


def test_events_that_differ_between_replicas_are_caught(monkeypatch):
    counter = itertools.count()
    # A planted bug: each "set" event carries a number of the process's, so nodes applying one index disagree.
    monkeypatch.setattr("kvd.kv.machine.ev.string", lambda event, key: ev.KeyEvent("$", b"%s%d" % (event, next(counter)), key))
    results = [run_one(SimOptions(seed=seed, state="memory")) for seed in range(2)]
    failed = [r for r in results if not r.ok]
    assert failed and all(r.invariant == "state-machine safety" for r in failed)
    assert any("produces events" in r.detail for r in failed)
