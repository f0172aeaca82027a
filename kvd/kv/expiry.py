# -*- test-case-name: tests.kv.test_expiry -*-
"""
Keys' times to live (Redis's EX/PX/EXPIRE...), decided from the log's time only.

Time.  Every entry carries ``stamp_ms``, the proposing leader's clock; the
machine's ``clock_ms`` is the largest stamp applied (monotonic whatever the
leaders' clocks).  A key whose expiry is at or before the time of the entry
being applied is gone for that entry, on every replica alike: the same key
expires at the same index everywhere.  No replica reads its own clock.

Reads (kvd.node.reads) are served at an applied index and see the keys as at
that index's log time, ``clock_ms``: the same answer on every replica at the
same index, and later indexes never see an earlier time, so expiry keeps reads
linearizable (a key that has disappeared never reappears).  So that an idle
cluster's stale log time does not keep a key alive past its expiry in real
time, a node about to serve a read asks ``needs_time``: if a key the read
looks at expires between the log's time and the node's clock (plus a margin
for skew), it first proposes a ``Tick`` (an entry with no change, stamped by
the leader, so *after* the read arrived) and serves the read once that entry
is applied.  A read never returns a key whose expiry the leader's clock had
passed when the read arrived (clock skew between nodes below ``READ_MARGIN_MS``).

State.  ``Expiries`` is key -> expiry (Unix ms) and an index in expiry order;
every key in it exists in the keyspace (deleting a key drops its expiry).  It
is machine state like the script cache: in the in-memory snapshot (version 5),
and for a durable keyspace one record per key among the client sessions
(``TTL_RECORD``), so the LMDB store, its snapshot stream and the simulator's
model of it carry it unchanged.  Old data dirs and snapshots hold none.

``View`` is the keyspace as the commands see it at one time: an expired key is
absent to every read (GET, EXISTS, TYPE, KEYS, SCAN, DBSIZE, RANDOMKEY, hash
reads, WATCH's versions), and a write that finds one deletes it first (as
Redis's lazy expiry).  DEL, GETDEL, FLUSHDB, RENAME's source and a hash's last
HDEL drop the expiry with the key; SET (without KEEPTTL), MSET, and RENAME's
and COPY's destination replace it; INCR, APPEND, SETRANGE, INCRBYFLOAT and the
hash writes keep it (Redis 7).

Reclaiming.  Applying any entry deletes up to ``RECLAIM_PER_ENTRY`` expired
keys (the earliest expiries first), a ``Tick`` up to ``RECLAIM_PER_TICK``,
through the log, identically everywhere; the leader proposes a Tick now and
then while keys it sees expired are left, back to back while each reclaims a full batch
(kvd.node.service).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from bisect import bisect_left
from hashlib import blake2b
from typing import Dict, Iterator, List, Optional, Tuple

from kvd.kv.codec import INT64_MAX, Reader, Writer
from kvd.kv.events import expired as expired_event
from kvd.kv.keyspace import _SortedChunks

#: A durable keyspace keeps each expiry as a record among the client sessions, under this prefix.
TTL_RECORD = b"\x00ttl:"
#: Expired keys deleted when any entry is applied, and when a Tick is.
RECLAIM_PER_ENTRY = 16
RECLAIM_PER_TICK = 256
#: A read whose keys expire before the node's clock plus this much first moves the log's time on (a Tick).
READ_MARGIN_MS = 1000
_INLINE_KEY = 480


def record_name(key: bytes) -> bytes:
    """The record a durable keyspace keeps ``key``'s expiry under (at most 511 bytes, an LMDB key)."""
    if len(key) > _INLINE_KEY:
        key = key[:_INLINE_KEY] + blake2b(key, digest_size=16).digest()
    return TTL_RECORD + key


def encode_record(key: bytes, at_ms: int) -> bytes:
    w = Writer()
    w.uint(at_ms)
    w.blob(key)
    return w.getvalue()


def decode_record(data: bytes) -> Tuple[bytes, int]:
    r = Reader(bytes(data))
    at_ms = r.uint()
    key = r.blob()
    r.expect_end()
    return key, at_ms


def _entry(key: bytes, at_ms: int) -> bytes:
    return at_ms.to_bytes(8, "big") + key


class Expiries:
    """key -> expiry in Unix ms, with the keys in expiry order; ``dirty``: keys changed since the last flush."""

    __slots__ = ("_at", "_order", "dirty")

    def __init__(self, items=(), durable: bool = False):
        self._at: Dict[bytes, int] = {}
        self._order = _SortedChunks(256)
        self.dirty = set() if durable else None
        for key, at_ms in items:
            self.set(key, at_ms)
        if self.dirty is not None:
            self.dirty.clear()

    def __len__(self) -> int:
        return len(self._at)

    def get(self, key: bytes) -> Optional[int]:
        return self._at.get(key)

    def set(self, key: bytes, at_ms: int) -> None:
        if not 0 <= at_ms <= INT64_MAX:
            raise ValueError("expiry out of range: %d" % (at_ms,))
        old = self._at.get(key)
        if old == at_ms:
            return
        if old is not None:
            self._order.remove(_entry(key, old))
        self._at[key] = at_ms
        self._order.add(_entry(key, at_ms))
        if self.dirty is not None:
            self.dirty.add(key)

    def drop(self, key: bytes) -> bool:
        old = self._at.pop(key, None)
        if old is None:
            return False
        self._order.remove(_entry(key, old))
        if self.dirty is not None:
            self.dirty.add(key)
        return True

    def drop_all(self) -> None:
        if self.dirty is not None:
            self.dirty.update(self._at)
        self._at = {}
        self._order = _SortedChunks(256)

    def expired(self, key: bytes, now_ms: int) -> bool:
        at_ms = self._at.get(key)
        return at_ms is not None and at_ms <= now_ms

    def due(self, now_ms: int, limit: Optional[int] = None) -> List[bytes]:
        """The keys expired at ``now_ms``, earliest first, at most ``limit``."""
        keys = []
        for entry in self._order:
            if int.from_bytes(entry[:8], "big") > now_ms or (limit is not None and len(keys) >= limit):
                break
            keys.append(entry[8:])
        return keys

    def count_due(self, now_ms: int) -> int:
        """How many keys have expired at ``now_ms``: a bisect per chunk of the index, not a walk of the keys."""
        if now_ms >= INT64_MAX:
            return len(self._at)
        bound = (now_ms + 1).to_bytes(8, "big")
        order = self._order
        pos = bisect_left(order._maxes, bound)
        n = sum(len(order._chunks[i]) for i in range(pos))
        if pos < len(order._chunks):
            n += bisect_left(order._chunks[pos], bound)
        return n

    def first_at(self) -> Optional[int]:
        """The earliest expiry, None if no key has one."""
        for entry in self._order:
            return int.from_bytes(entry[:8], "big")
        return None

    def any_between(self, low_ms: int, high_ms: int) -> bool:
        """Whether some key expires after ``low_ms`` and at or before ``high_ms``."""
        for entry in self._order.iter_from((low_ms + 1).to_bytes(8, "big")):
            return int.from_bytes(entry[:8], "big") <= high_ms
        return False

    def items(self) -> Iterator[Tuple[bytes, int]]:
        """(key, expiry) in key order: equal states give equal sequences."""
        at = self._at
        for key in sorted(at):
            yield key, at[key]

    def check(self, keyspace) -> None:
        self._order.check()
        assert sorted(self._order) == sorted(_entry(k, v) for k, v in self._at.items()), "expiry index out of sync"
        for key in self._at:
            assert keyspace.get(key) is not None, "expiry of a missing key %r" % (key,)


class View:
    """
    The keyspace as commands see it at log time ``now_ms``: the keyspace's methods, expired keys absent.
    A write through the view first deletes an expired key it names (only entries write, at apply time).
    ``events``: where the writes' key events go (kvd.kv.events; an expired key deleted is an "expired").
    """

    __slots__ = ("ks", "exp", "now_ms", "leases", "events")

    def __init__(self, ks, exp: Expiries, now_ms: int, leases=None, events: Optional[list] = None):
        self.ks = ks
        self.exp = exp
        self.now_ms = now_ms
        #: The keys' leases (kvd.kv.leases): a key attached to a dead lease is absent like an expired one.
        self.leases = leases if leases is not None else _NO_LEASES
        #: What applying produced for the node's subscribers (kvd.kv.events): a key found or reclaimed dead is "expired".
        self.events = [] if events is None else events

    @property
    def write_index(self) -> int:
        return self.ks.write_index

    @property
    def deleted_at(self) -> int:
        return self.ks.deleted_at

    def _dead(self, key: bytes) -> bool:
        at_ms = self.exp._at.get(key)
        if at_ms is not None:
            return at_ms <= self.now_ms
        return self.leases.dead(key, self.now_ms)

    def _mortal(self) -> bool:
        """Whether some key may be dead (has an expiry or a lease)."""
        return bool(len(self.exp) or self.leases.attached_count())

    def _purge(self, key: bytes) -> None:
        if self._dead(key):
            self.exp.drop(key)
            self.leases.detach(key)
            self.ks.delete(key)
            self.events.append(expired_event(key))

    # ------------------------------------------------------------- reads
    def get(self, key: bytes):
        return None if self._dead(key) else self.ks.get(key)

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        n = len(self.ks)
        if len(self.exp):  # a key has an expiry or a lease, never both (kvd.kv.leases)
            n -= self.exp.count_due(self.now_ms)
        return n - self.leases.dead_key_count(self.now_ms) if self.leases.attached_count() else n

    def mod_index(self, key: bytes) -> Optional[int]:
        return None if self._dead(key) else self.ks.mod_index(key)

    def rev_meta(self, key: bytes):
        """The key's (create revision, mod revision, version), kvd.kv.revisions; None if it is gone."""
        return None if self._dead(key) else self.ks.rev_meta(key)

    @property
    def revision(self) -> int:
        return self.ks.revision

    def hget(self, key: bytes, field: bytes):
        return None if self._dead(key) else self.ks.hget(key, field)

    def hlen(self, key: bytes) -> int:
        return 0 if self._dead(key) else self.ks.hlen(key)

    def hfields_from(self, key: bytes, start: bytes = b""):
        return iter(()) if self._dead(key) else self.ks.hfields_from(key, start)

    def scan(self, cursor: int, match, count: int):
        cursor, keys = self.ks.scan(cursor, match, count)
        if self._mortal():
            keys = [k for k in keys if not self._dead(k)]
        return cursor, keys

    def keys(self, pattern) -> List[bytes]:
        keys = self.ks.keys(pattern)
        return [k for k in keys if not self._dead(k)] if self._mortal() else keys

    def random_key(self, position: int) -> Optional[bytes]:
        """The first live key at or after SCAN position ``position``, wrapping around; None if there is none."""
        if not len(self):
            return None
        cursor, wrapped = position, False
        while True:
            cursor, keys = self.scan(cursor, None, 1)
            if keys:
                return keys[0]
            if cursor == 0:
                if wrapped:
                    return None
                wrapped = True

    def expire_at(self, key: bytes) -> Optional[int]:
        """The key's expiry (Unix ms), or its lease's; None if it has neither (or is gone)."""
        if self._dead(key):
            return None
        at_ms = self.exp.get(key)
        return self.leases.expiry_of(key) if at_ms is None else at_ms

    def lease_of(self, key: bytes) -> Optional[int]:
        """The id of the (live) key's lease, None if it has none."""
        return None if self._dead(key) else self.leases.lease_of(key)

    def attach(self, key: bytes, lease_id: int) -> None:
        """Attach the (live) key to a live lease: it loses its own expiry (kvd.kv.leases)."""
        if self.ks.get(key) is not None:
            self.exp.drop(key)
            self.leases.attach(key, lease_id)

    # ------------------------------------------------------------ writes
    def put(self, key: bytes, value: bytes) -> None:
        """Write a string; a live key keeps its time to live (the caller drops or sets it)."""
        self._purge(key)
        self.ks.put(key, value)

    def delete(self, key: bytes) -> bool:
        if self._dead(key):
            self._purge(key)
            return False
        self.exp.drop(key)
        self.leases.detach(key)
        return self.ks.delete(key)

    def clear(self) -> None:
        self.exp.drop_all()
        self.leases.detach_all()
        self.ks.clear()

    def hset(self, key: bytes, field: bytes, value: bytes) -> bool:
        self._purge(key)
        return self.ks.hset(key, field, value)

    def hdel(self, key: bytes, field: bytes) -> bool:
        self._purge(key)
        deleted = self.ks.hdel(key, field)
        if deleted and self.ks.get(key) is None:
            self.exp.drop(key)
            self.leases.detach(key)
        return deleted

    def set_expire(self, key: bytes, at_ms: Optional[int]) -> None:
        """
        Give the (live) key this expiry, or none; an expiry at or before now deletes it.  Either detaches
        the key from its lease: a key's own time to live replaces its lease's (kvd.kv.leases).
        """
        if at_ms is None:
            self.exp.drop(key)
            self.leases.detach(key)
        elif at_ms <= self.now_ms:
            self.delete(key)
        elif self.ks.get(key) is not None:
            self.leases.detach(key)
            self.exp.set(key, at_ms)

    def reclaim(self, limit: int) -> int:
        """
        Delete up to ``limit`` expired keys, earliest first, then with what is left of ``limit`` keys of
        dead leases (kvd.kv.leases ``reclaim``); how many keys.
        """
        keys = self.exp.due(self.now_ms, limit)
        for key in keys:
            self.exp.drop(key)
            self.ks.delete(key)
            self.events.append(expired_event(key))
        if len(keys) < limit and len(self.leases):
            dead = self.leases.reclaim(self.ks, self.now_ms, limit - len(keys))
            self.events.extend(expired_event(key) for key in dead)
            return len(keys) + len(dead)
        return len(keys)


class _NoLeases:
    """A View's leases when it is given none (tests of expiry alone): no key has one."""

    def __len__(self) -> int:
        return 0

    def attached_count(self) -> int:
        return 0

    def dead(self, key, now_ms) -> bool:
        return False

    def expiry_of(self, key):
        return None

    def lease_of(self, key):
        return None

    def detach(self, key) -> bool:
        return False

    def detach_all(self) -> None:
        pass

    def dead_key_count(self, now_ms) -> int:
        return 0


_NO_LEASES = _NoLeases()
