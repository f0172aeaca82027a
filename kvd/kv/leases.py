# -*- test-case-name: tests.kv.test_leases -*-
"""
Leases (etcd's model): a time to live shared by keys, renewed by keepalives.

``KVD.LEASE GRANT ttl`` makes a lease whose id is the index of the entry that
granted it (unique, and the same on every replica); it expires at the entry's
log time plus ``ttl``.  ``KEEPALIVE`` moves its expiry to the keepalive's log
time plus ``ttl``; ``REVOKE`` ends it at once.  ``SET k v LEASE id`` attaches
a key to a live lease; a key is attached to at most one lease and then has no
time to live of its own (kvd.kv.expiry): setting one (EXPIRE, SET EX, GETEX
EX) or dropping it (PERSIST, a SET without LEASE or KEEPTTL, MSET) detaches
the key, and deleting the key (DEL, GETDEL, FLUSHALL...) detaches it.  INCR,
APPEND, the hash writes and SET KEEPTTL keep it attached; RENAME and COPY
attach the destination to the source's lease (inside a script, which sees no
lease, they give it the lease's expiry as its own TTL).  TTL/PTTL/EXPIRETIME
of an attached key answer its lease's.

Time is the log's only, as for keys' expiries: a lease whose expiry is at or
before the time of the entry being applied is dead for that entry, on every
replica alike, and so are its keys (absent to every read, as an expired key
is).  A dead lease is not found by KEEPALIVE, REVOKE, TTL, LIST nor SET; its
keys are deleted through the log in bounded steps (``reclaim``, earliest
expiry first, keys in key order), so every replica deletes the same keys at
the same index, and the lease is dropped with its last key.  A read whose
key's lease expires between the log's time and the node's clock first moves
the log's time on (a Tick), as for expiry (``KVMachine.needs_time``).

Leader changes (etcd's promote).  A new leader proposes ``PROMOTE`` first: it
extends every lease alive at the log's time *before* its entry to at least
the entry's stamp plus the lease's ttl, so that the election gap does not
cut off a client that kept its lease alive through the old leader.  It is
applied before that entry moves the log's time on (kvd.kv.machine).

State.  ``Leases``: id -> ``Lease`` (ttl, expiry, attached keys), key -> id,
and an index in expiry order.  In the in-memory snapshot (version 6), and for
a durable keyspace one record per lease (``LEASE_RECORD``) and one per
attached key (``LEASE_KEY_RECORD``) among the client sessions, as expiry's
``TTL_RECORD``.  Old data dirs and snapshots hold none.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Dict, Iterator, List, Optional, Tuple

from kvd.kv.codec import INT64_MAX, Reader, Writer
from kvd.kv.keyspace import _SortedChunks

#: A durable keyspace keeps each lease under this prefix and its id (8 bytes, big-endian), among the sessions.
LEASE_RECORD = b"\x00lease:"
#: ... and each attached key's lease under this prefix and the key.
LEASE_KEY_RECORD = b"\x00lkey:"
#: etcd's bound on a lease's ttl (MaxLeaseTTL), in seconds.
MAX_TTL_S = 9_000_000_000
_INLINE_KEY = 480


def lease_record_name(lease_id: int) -> bytes:
    return LEASE_RECORD + lease_id.to_bytes(8, "big")


def key_record_name(key: bytes) -> bytes:
    """The record of ``key``'s lease (at most 511 bytes, an LMDB key)."""
    if len(key) > _INLINE_KEY:
        key = key[:_INLINE_KEY] + blake2b(key, digest_size=16).digest()
    return LEASE_KEY_RECORD + key


def encode_lease(ttl_ms: int, expiry_ms: int) -> bytes:
    w = Writer()
    w.uint(ttl_ms)
    w.uint(expiry_ms)
    return w.getvalue()


def decode_lease(name: bytes, data: bytes) -> Tuple[int, int, int]:
    """(id, ttl_ms, expiry_ms) of a lease record."""
    lease_id = int.from_bytes(name[len(LEASE_RECORD):], "big")
    r = Reader(bytes(data))
    ttl_ms, expiry_ms = r.uint(), r.uint()
    r.expect_end()
    return lease_id, ttl_ms, expiry_ms


def encode_key(key: bytes, lease_id: int) -> bytes:
    w = Writer()
    w.uint(lease_id)
    w.blob(key)
    return w.getvalue()


def decode_key(data: bytes) -> Tuple[bytes, int]:
    """(key, lease id) of an attached key's record."""
    r = Reader(bytes(data))
    lease_id = r.uint()
    key = r.blob()
    r.expect_end()
    return key, lease_id


def _until(now_ms: int, ttl_ms: int) -> int:
    """``now_ms`` plus ``ttl_ms``, at most INT64_MAX (a leader's clock far in the future must not poison an entry)."""
    return min(INT64_MAX, now_ms + ttl_ms)


def _entry(lease_id: int, expiry_ms: int) -> bytes:
    return expiry_ms.to_bytes(8, "big") + lease_id.to_bytes(8, "big")


class Lease:
    __slots__ = ("ttl_ms", "expiry_ms", "keys", "doomed")

    def __init__(self, ttl_ms: int, expiry_ms: int):
        self.ttl_ms = ttl_ms
        self.expiry_ms = expiry_ms
        self.keys = set()
        #: Once dead: its keys in key order, as ``reclaim`` deletes them (a dead lease gains no key, so the
        #: order is fixed; built at its first reclaim, a function of the state, the same on every replica).
        self.doomed: Optional[List[bytes]] = None


class Leases:
    """
    The leases and the keys attached to them.  ``dirty_leases``/``dirty_keys``: what changed since the durable
    keyspace last flushed (None: in memory).
    """

    def __init__(self, leases=(), attached=(), durable: bool = False):
        self._leases: Dict[int, Lease] = {}
        self._of: Dict[bytes, int] = {}
        self._order = _SortedChunks(256)
        self.dirty_leases = set() if durable else None
        self.dirty_keys = set() if durable else None
        for lease_id, ttl_ms, expiry_ms in leases:
            self._put(lease_id, ttl_ms, expiry_ms)
        for key, lease_id in attached:
            self.attach(key, lease_id)
        if durable:
            self.dirty_leases.clear()
            self.dirty_keys.clear()

    def __len__(self) -> int:
        return len(self._leases)

    def attached_count(self) -> int:
        return len(self._of)

    # ------------------------------------------------------------ leases
    def _put(self, lease_id: int, ttl_ms: int, expiry_ms: int) -> None:
        if not 0 < lease_id <= INT64_MAX or not 0 < ttl_ms <= INT64_MAX or not 0 <= expiry_ms <= INT64_MAX:
            raise ValueError("lease out of range: %d %d %d" % (lease_id, ttl_ms, expiry_ms))
        lease = self._leases.get(lease_id)
        if lease is None:
            lease = self._leases[lease_id] = Lease(ttl_ms, expiry_ms)
        else:
            self._order.remove(_entry(lease_id, lease.expiry_ms))
            lease.ttl_ms, lease.expiry_ms = ttl_ms, expiry_ms
        self._order.add(_entry(lease_id, expiry_ms))
        if self.dirty_leases is not None:
            self.dirty_leases.add(lease_id)

    def _drop(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        self._order.remove(_entry(lease_id, lease.expiry_ms))
        if self.dirty_leases is not None:
            self.dirty_leases.add(lease_id)

    def get(self, lease_id: int) -> Optional[Lease]:
        """The lease, alive or dead (not reclaimed yet)."""
        return self._leases.get(lease_id)

    def live(self, lease_id: int, now_ms: int) -> Optional[Lease]:
        """The lease if it is alive at ``now_ms``, else None (unknown, revoked, or expired)."""
        lease = self._leases.get(lease_id)
        return lease if lease is not None and lease.expiry_ms > now_ms else None

    def live_ids(self, now_ms: int) -> List[int]:
        return [i for i in sorted(self._leases) if self._leases[i].expiry_ms > now_ms]

    def grant(self, lease_id: int, ttl_ms: int, now_ms: int) -> None:
        if lease_id in self._leases:
            raise ValueError("lease %d exists" % (lease_id,))
        self._put(lease_id, ttl_ms, _until(now_ms, ttl_ms))

    def keepalive(self, lease_id: int, now_ms: int) -> bool:
        """Reset a live lease's expiry to ``now_ms`` plus its ttl; False if it is not alive."""
        lease = self.live(lease_id, now_ms)
        if lease is None:
            return False
        self._put(lease_id, lease.ttl_ms, _until(now_ms, lease.ttl_ms))
        return True

    def revoke(self, lease_id: int, now_ms: int) -> bool:
        """End a live lease now: its keys are dead at once, deleted by ``reclaim``; False if it is not alive."""
        lease = self.live(lease_id, now_ms)
        if lease is None:
            return False
        self._put(lease_id, lease.ttl_ms, now_ms)
        return True

    def promote(self, before_ms: int, stamp_ms: int) -> int:
        """Extend every lease alive at ``before_ms`` to at least ``stamp_ms`` plus its ttl; how many."""
        n = 0
        for lease_id in sorted(self._leases):
            lease = self._leases[lease_id]
            if lease.expiry_ms > before_ms:
                n += 1
                if _until(stamp_ms, lease.ttl_ms) > lease.expiry_ms:
                    self._put(lease_id, lease.ttl_ms, _until(stamp_ms, lease.ttl_ms))
        return n

    # -------------------------------------------------------------- keys
    def lease_of(self, key: bytes) -> Optional[int]:
        return self._of.get(key)

    def expiry_of(self, key: bytes) -> Optional[int]:
        """The expiry of ``key``'s lease, None if it has none."""
        lease_id = self._of.get(key)
        return None if lease_id is None else self._leases[lease_id].expiry_ms

    def dead(self, key: bytes, now_ms: int) -> bool:
        lease_id = self._of.get(key)
        return lease_id is not None and self._leases[lease_id].expiry_ms <= now_ms

    def attach(self, key: bytes, lease_id: int) -> None:
        old = self._of.get(key)
        if old == lease_id:
            return
        if old is not None:
            self._leases[old].keys.discard(key)
        self._leases[lease_id].keys.add(key)
        self._of[key] = lease_id
        if self.dirty_keys is not None:
            self.dirty_keys.add(key)

    def detach(self, key: bytes) -> bool:
        lease_id = self._of.pop(key, None)
        if lease_id is None:
            return False
        self._leases[lease_id].keys.discard(key)
        if self.dirty_keys is not None:
            self.dirty_keys.add(key)
        return True

    def detach_all(self) -> None:
        """Every key detached (FLUSHALL): the leases stay."""
        if self.dirty_keys is not None:
            self.dirty_keys.update(self._of)
        self._of = {}
        for lease in self._leases.values():
            lease.keys = set()

    # ------------------------------------------------------ dead leases
    def _dead_leases(self, now_ms: int) -> Iterator[Tuple[int, Lease]]:
        """The dead leases, earliest expiry first."""
        for entry in self._order:
            if int.from_bytes(entry[:8], "big") > now_ms:
                return
            lease_id = int.from_bytes(entry[8:], "big")
            yield lease_id, self._leases[lease_id]

    def dead_key_count(self, now_ms: int) -> int:
        """How many keys are attached to dead leases (stored, but absent to reads)."""
        return sum(len(lease.keys) for _, lease in self._dead_leases(now_ms))

    def dead_count(self, now_ms: int) -> int:
        """Dead leases and their keys: what ``reclaim`` has left to do."""
        return sum(1 + len(lease.keys) for _, lease in self._dead_leases(now_ms))

    def reclaim(self, keyspace, now_ms: int, limit: int) -> List[bytes]:
        """
        Delete up to ``limit`` keys of dead leases from ``keyspace`` (earliest expiry first, then key order),
        dropping each dead lease with its last key (a lease counts as one step); the keys deleted.
        """
        deleted: List[bytes] = []
        budget = limit
        done = []
        for lease_id, lease in self._dead_leases(now_ms):
            if budget <= 0:
                break
            if lease.doomed is None:
                lease.doomed = sorted(lease.keys, reverse=True)  # popped from the end: key order
            doomed = lease.doomed
            while doomed and budget > 0:
                key = doomed.pop()
                if key not in lease.keys:  # detached since it died (a write purged it): not this lease's now
                    continue
                self.detach(key)
                keyspace.delete(key)
                deleted.append(key)
                budget -= 1
            if not lease.keys and budget > 0:
                done.append(lease_id)
                budget -= 1
        for lease_id in done:
            self._drop(lease_id)
        return deleted

    def first_at(self) -> Optional[int]:
        """The earliest expiry of a lease (dead or alive), None if there is none."""
        for entry in self._order:
            return int.from_bytes(entry[:8], "big")
        return None

    def any_between(self, low_ms: int, high_ms: int, with_keys: bool = True) -> bool:
        """Whether some lease (with keys attached, unless not ``with_keys``) expires in (low_ms, high_ms]."""
        for entry in self._order.iter_from((low_ms + 1).to_bytes(8, "big")):
            if int.from_bytes(entry[:8], "big") > high_ms:
                return False
            if not with_keys or self._leases[int.from_bytes(entry[8:], "big")].keys:
                return True
        return False

    # ------------------------------------------------------------ state
    def items(self) -> Iterator[Tuple[int, int, int]]:
        """(id, ttl_ms, expiry_ms) in id order: equal states give equal sequences."""
        for lease_id in sorted(self._leases):
            lease = self._leases[lease_id]
            yield lease_id, lease.ttl_ms, lease.expiry_ms

    def attached(self) -> Iterator[Tuple[bytes, int]]:
        """(key, lease id) in key order."""
        of = self._of
        for key in sorted(of):
            yield key, of[key]

    def durable_changes(self, changed: dict) -> None:
        """Put the records changed since the last flush into ``changed`` (record name -> bytes, None: gone)."""
        for lease_id in self.dirty_leases:
            lease = self._leases.get(lease_id)
            changed[lease_record_name(lease_id)] = (
                None if lease is None else encode_lease(lease.ttl_ms, lease.expiry_ms))
        for key in self.dirty_keys:
            lease_id = self._of.get(key)
            changed[key_record_name(key)] = None if lease_id is None else encode_key(key, lease_id)

    def flushed(self) -> None:
        self.dirty_leases.clear()
        self.dirty_keys.clear()

    def check(self, keyspace, expiries) -> None:
        self._order.check()
        assert sorted(self._order) == sorted(_entry(i, l.expiry_ms) for i, l in self._leases.items()), \
            "lease index out of sync"
        for key, lease_id in self._of.items():
            assert key in self._leases[lease_id].keys, "lease %d misses its key %r" % (lease_id, key)
            assert keyspace.get(key) is not None, "a lease holds a missing key %r" % (key,)
            assert expiries.get(key) is None, "key %r has both a lease and an expiry" % (key,)
        assert sum(len(l.keys) for l in self._leases.values()) == len(self._of), "lease keys out of sync"
