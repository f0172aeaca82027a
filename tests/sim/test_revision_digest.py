"""
The simulator's replica digest (kvd.sim.invariants ``machine_digest``) covers
revisions: two machines with the same keys and values but a different store
revision, or a key with another (create, mod, version), digest differently,
so a replica that numbered a write differently is caught at the index.
"""

from kvd.kv.commands import Envelope, Set, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.sim.invariants import machine_digest


def _apply(machine, seq, command):
    env = Envelope(b"c", seq, seq, 1000, command)
    return machine.apply(machine.applied_index + 1, encode_envelope(env))


def test_the_digest_sees_revisions_and_versions():
    a, b = KVMachine(), KVMachine()
    _apply(a, 1, Set(b"k", b"v"))
    _apply(b, 1, Set(b"k", b"v"))
    assert machine_digest(a) == machine_digest(b)
    b._keyspace.revision += 1  # the same keys and values, another revision
    assert machine_digest(a) != machine_digest(b)
    b._keyspace.revision -= 1
    b._keyspace.set_rev(b"k", (1, 1, 2))  # another version of one key
    assert machine_digest(a) != machine_digest(b)


def test_a_durable_replica_that_forgets_stored_versions_is_caught():
    """Planted: a put over a key already flushed to the disk takes it for a new one (version 1 again)."""
    from kvd.kv.keyspace import Overlay
    from kvd.sim.cluster import SimOptions, run_one
    from tests.sim.mutations import patched

    def _stored_with_meta(self, key):
        value = self._stored(key)
        return (value, None)

    with patched(Overlay, "_stored_with_meta", _stored_with_meta):
        for seed in range(20):
            r = run_one(SimOptions(seed=seed, state="durable", flush_skip=0.0))
            if not r.ok:
                break
        else:
            raise AssertionError("the planted bug survived 20 seeds")
    assert "digest" in r.detail or "state" in r.invariant, (r.invariant, r.detail)
