# -*- test-case-name: tests.sim.test_leases -*-
"""
Leases in the simulator (kvd.kv.leases), with ``SimOptions(leases=True)``.

The workload: one more client, ``LeaseClient``, grants a lease of 1-3 s, attaches
its own keys to it (``SET Lk v LEASE id``), keeps it alive for a while, then
stops (or revokes it) and lets it expire, and reads its keys on any node
meanwhile; then grants another.  Each node stamps entries with its own clock,
skewed from the others by up to ``MAX_SKEW`` when the seed draws the "skew"
fault, and a new leader proposes PROMOTE first (as kvd.node.service does).

The checks:

- **lease reference** (``LeaseModel``, fed the applied history by
  kvd.sim.invariants): each lease's expiry at every index, computed from the
  entries alone (grant, keepalive, revoke, promote, the log's time), so the
  machine's answer to every lease command must be the model's, and a read of
  an attached key at an index whose log time has reached its lease's expiry
  must answer nil (the register's linearizable-read check);
- **lease deletion** (``Checker.on_lease_state``): after each entry, every
  node's leases and attached keys, and which of the lease keys it still
  stores, are the same at the same index: a replica that deletes a lease's
  keys at another index than the others fails the run.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from bisect import bisect_right
from hashlib import blake2b
from typing import Dict, List, Optional

from kvd.kv.commands import Lease, Set
from kvd.kv.machine import ERR_LEASE_NOT_FOUND
from kvd.kv.results import OK

#: The keys the lease client attaches (no other client writes them).
LEASE_KEYS = (b"L0", b"L1", b"L2")
#: How far a node's clock (its stamps) may be from the simulation's time, with the "skew" fault (ms).
MAX_SKEW = 700


class _LeaseHistory:
    """One lease's ttl and its expiry after each index that changed it."""

    __slots__ = ("ttl_ms", "idx", "expiry")

    def __init__(self, ttl_ms: int):
        self.ttl_ms = ttl_ms
        self.idx: List[int] = []
        self.expiry: List[int] = []

    def set(self, index: int, expiry_ms: int) -> None:
        self.idx.append(index)
        self.expiry.append(expiry_ms)

    def at(self, index: int) -> Optional[int]:
        """The expiry once entry ``index`` is applied (None before the grant)."""
        i = bisect_right(self.idx, index)
        return self.expiry[i - 1] if i else None


class LeaseModel:
    """The leases as the applied history defines them (kvd.kv.leases' rules, written again without its code)."""

    def __init__(self):
        self.leases: Dict[int, _LeaseHistory] = {}
        self.granted = 0
        self.expired_reads = 0  # reads of an attached key answered nil because its lease had expired

    def _alive(self, lease_id: int, index: int, now_ms: int) -> Optional[_LeaseHistory]:
        h = self.leases.get(lease_id)
        if h is None:
            return None
        expiry = h.at(index)
        return h if expiry is not None and expiry > now_ms else None

    def promote(self, index: int, before_ms: int, stamp_ms: int) -> None:
        """Before the entry's effect and whether it is a duplicate: the machine promotes in ``apply`` itself."""
        for h in self.leases.values():
            expiry = h.at(index - 1)
            if expiry is not None and expiry > before_ms and stamp_ms + h.ttl_ms > expiry:
                h.set(index, stamp_ms + h.ttl_ms)

    def apply(self, index: int, cmd, now_ms: int, put) -> object:
        """The result of a lease command or a SET ... LEASE at ``index`` (log time ``now_ms``); ``put`` writes a key."""
        if isinstance(cmd, Set):
            if self._alive(cmd.lease, index - 1, now_ms) is None:
                return ERR_LEASE_NOT_FOUND
            put(cmd.key, (cmd.value, ("lease", cmd.lease)))
            return OK
        if cmd.op == "grant":
            h = self.leases[index] = _LeaseHistory(cmd.ttl * 1000)
            h.set(index, now_ms + h.ttl_ms)
            self.granted += 1
            return index
        if cmd.op == "promote":
            return sum(1 for lease_id in self.leases if self._alive(lease_id, index, now_ms) is not None)
        h = self._alive(cmd.id, index - 1, now_ms)
        if h is None:
            return ERR_LEASE_NOT_FOUND
        if cmd.op == "keepalive":
            h.set(index, now_ms + h.ttl_ms)
            return h.ttl_ms // 1000
        h.set(index, now_ms)  # revoke: dead from this entry on
        return OK

    def alive_at(self, lease_id: int, index: int, now_ms: int) -> bool:
        return self._alive(lease_id, index, now_ms) is not None


def lease_state(machine) -> bytes:
    """A digest of a machine's leases, attached keys, and which lease keys it stores: equal at equal indexes."""
    h = blake2b(digest_size=16)
    leases = machine._leases
    h.update(repr(list(leases.items())).encode())
    h.update(repr(list(leases.attached())).encode())
    h.update(repr([machine._keyspace.get(k) is not None for k in LEASE_KEYS]).encode())
    return h.digest()


class LeaseClient:
    """
    The lease workload's decisions, for a SimClient (kvd.sim.cluster): ``next_op`` the next operation, ``acked``
    learns from a write's answer.  Its own rng, so the other clients' draws are unchanged.
    """

    def __init__(self, rng):
        self.rng = rng
        self.lease_id: Optional[int] = None
        self.keepalives_left = 0

    def next_op(self, seq: int):
        """(kind, cmd or key, keys) of the next operation; seq: the write's seq if it is a write."""
        rng = self.rng
        if self.lease_id is None:
            return "write", Lease("grant", ttl=rng.choice((1, 2, 3))), []
        r = rng.random()
        if r < 0.3:
            return "read", rng.choice(LEASE_KEYS), None
        if r < 0.55:
            key = rng.choice(LEASE_KEYS)
            return "write", Set(key, b"L.%d" % seq, lease=self.lease_id), [key]
        if r < 0.9:
            if self.keepalives_left <= 0:
                return None  # no more keepalives: the lease expires, a SET then hears "not found"
            self.keepalives_left -= 1
            return "write", Lease("keepalive", id=self.lease_id), []
        if r < 0.92:
            lease_id, self.lease_id = self.lease_id, None
            return "write", Lease("revoke", id=lease_id), []
        return None

    def acked(self, cmd, result) -> None:
        if isinstance(cmd, Lease) and cmd.op == "grant" and isinstance(result, int):
            self.lease_id = result
            self.keepalives_left = self.rng.choice((0, 3, 10, 30))
        elif result == ERR_LEASE_NOT_FOUND:
            self.lease_id = None
