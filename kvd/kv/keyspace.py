# -*- test-case-name: tests.kv.test_machine -*-
"""
The keyspace: a dict for point lookups plus an ordered index for SCAN.

SCAN order.  Keys are kept sorted by ``(position(key), key)`` where
``position`` is a 63-bit BLAKE2b hash of the key, never 0.  A SCAN cursor is
simply the position to resume from, so it:

* fits in a signed 64-bit integer (redis-cli and most clients parse cursors
  as 64-bit numbers; a cursor that encodes the key itself would not fit);
* is exact under concurrent change: a key present for a whole iteration has a
  fixed position, the cursor only moves forward, so it is returned exactly
  once, whatever is inserted or deleted between calls (Redis only promises
  "at least once");
* means the same thing on every replica and after a snapshot restore, since
  the hash is keyed by nothing but the bytes of the key, so a client can keep
  iterating after a failover.

A plain lexicographic order cannot give all three with a 64-bit cursor: an
index into the sorted keys shifts when earlier keys are deleted (keys are
missed), and a key prefix makes batches unbounded when many keys share it.
KEYS still answers in lexicographic order, since it visits every key anyway.

The index.  ``_SortedChunks`` is a list of sorted chunks of at most
``2 * load`` entries plus the list of each chunk's maximum (the layout of
``sortedcontainers.SortedList``).  Adding or removing one key costs a bisect
over the chunk maxima and a memmove inside one chunk, O(log n + load), so a
SET of a new key into a million-key store does not touch a million pointers,
and SCAN is a bisect plus a walk of ``count`` entries: nothing is ever
re-sorted in steady state.  Entries are ``position.to_bytes(8) + key``, one
bytes object each, so comparisons are a single memcmp.

Versions (WATCH).  Every keyspace keeps, with each key, its mod index: the
log index of its last write, ``write_index`` when it was put (the machine
sets ``write_index`` before applying an entry).  ``deleted_at`` is the
index of the last entry that deleted a key (FLUSHDB of a non-empty keyspace
included).  See kvd.kv.commands for how a transaction's WATCH uses them.

Revisions (kvd.kv.revisions): every keyspace also keeps the store's
``revision`` and each key's meta (create revision, mod revision, version),
``rev_meta``; a write with an explicit ``mod`` (a load) takes an explicit
meta too.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from hashlib import blake2b
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from kvd.kv.glob import Pattern
from kvd.kv.hashes import HASH, INLINE_FIELD, HashOverlay, PendingHash, field_key
from kvd.kv.revisions import NO_META, Meta, Stamper, next_meta

_MASK63 = (1 << 63) - 1
MAX_CURSOR = _MASK63


def scan_position(key: bytes) -> int:
    """Where ``key`` sits in SCAN order: an integer in [1, 2**63 - 1]."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "big") & _MASK63 or 1


def _entry(key: bytes) -> bytes:
    return scan_position(key).to_bytes(8, "big") + key


class _SortedChunks:
    """A sorted multiset of bytes in chunks; see the module docstring."""

    __slots__ = ("_load", "_chunks", "_maxes", "_len")

    def __init__(self, load: int = 512):
        self._load = load
        self._chunks: List[List[bytes]] = []
        self._maxes: List[bytes] = []
        self._len = 0

    @classmethod
    def from_sorted(cls, entries: List[bytes], load: int = 512) -> "_SortedChunks":
        self = cls(load)
        for i in range(0, len(entries), load):
            chunk = entries[i:i + load]
            self._chunks.append(chunk)
            self._maxes.append(chunk[-1])
        self._len = len(entries)
        return self

    def __len__(self) -> int:
        return self._len

    def add(self, entry: bytes) -> None:
        if not self._maxes:
            self._chunks.append([entry])
            self._maxes.append(entry)
            self._len = 1
            return
        pos = bisect_right(self._maxes, entry)
        if pos == len(self._maxes):
            pos -= 1
            self._chunks[pos].append(entry)
            self._maxes[pos] = entry
        else:
            insort(self._chunks[pos], entry)
        self._len += 1
        chunk = self._chunks[pos]
        if len(chunk) > 2 * self._load:
            tail = chunk[self._load:]
            del chunk[self._load:]
            self._maxes[pos] = chunk[-1]
            self._chunks.insert(pos + 1, tail)
            self._maxes.insert(pos + 1, tail[-1])

    def remove(self, entry: bytes) -> None:
        pos = bisect_left(self._maxes, entry)
        if pos == len(self._maxes):
            raise KeyError(entry)
        chunk = self._chunks[pos]
        idx = bisect_left(chunk, entry)
        if chunk[idx] != entry:
            raise KeyError(entry)
        del chunk[idx]
        self._len -= 1
        if not chunk:
            del self._chunks[pos]
            del self._maxes[pos]
            return
        self._maxes[pos] = chunk[-1]
        # Merge a chunk that has shrunk a lot into its successor so that mass
        # deletions do not leave a long tail of tiny chunks to walk over.
        if len(chunk) < self._load // 4 and pos + 1 < len(self._chunks):
            chunk.extend(self._chunks[pos + 1])
            del self._chunks[pos + 1]
            del self._maxes[pos]
            if len(chunk) > 2 * self._load:
                tail = chunk[self._load:]
                del chunk[self._load:]
                self._chunks.insert(pos + 1, tail)
                self._maxes.insert(pos, chunk[-1])
            # else the merged chunk's max is the successor's, already in place

    def iter_from(self, start: bytes) -> Iterator[bytes]:
        """Entries >= start, in order.  The structure must not change meanwhile."""
        pos = bisect_left(self._maxes, start)
        if pos == len(self._maxes):
            return
        chunk = self._chunks[pos]
        yield from chunk[bisect_left(chunk, start):]
        for i in range(pos + 1, len(self._chunks)):
            yield from self._chunks[i]

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            yield from chunk

    def check(self) -> None:
        """Assert the invariants; for tests."""
        flat = list(self)
        assert flat == sorted(flat), "entries out of order"
        assert len(flat) == self._len, "length out of sync"
        assert self._maxes == [c[-1] for c in self._chunks], "maxes out of sync"
        assert all(self._chunks), "empty chunk"


class _MemHash:
    """A hash in memory: its fields, and their field keys in order (kvd.kv.hashes)."""

    __slots__ = ("fields", "index", "long")

    def __init__(self):
        self.fields: Dict[bytes, bytes] = {}
        self.index = _SortedChunks(64)
        #: field key -> field, for the fields too long to be read back from their field key.
        self.long: Dict[bytes, bytes] = {}

    def set(self, field: bytes, value: bytes) -> bool:
        new = field not in self.fields
        if new:
            fk = field_key(field)
            self.index.add(fk)
            if len(field) > INLINE_FIELD:
                self.long[fk] = field
        self.fields[field] = value
        return new

    def delete(self, field: bytes) -> bool:
        if field not in self.fields:
            return False
        del self.fields[field]
        fk = field_key(field)
        self.index.remove(fk)
        self.long.pop(fk, None)
        return True

    def items_from(self, start: bytes = b"") -> Iterator[Tuple[bytes, bytes, bytes]]:
        fields, long = self.fields, self.long
        for fk in self.index.iter_from(start):
            field = long[fk] if len(fk) > 8 + INLINE_FIELD else fk[8:]
            yield fk, field, fields[field]

    def pairs(self) -> List[Tuple[bytes, bytes]]:
        return [(field, value) for _, field, value in self.items_from()]


def _hash_of(pairs) -> _MemHash:
    h = _MemHash()
    for field, value in pairs:
        h.set(field, value)
    return h


class Keyspace(Stamper):
    """
    Keys to values, with SCAN and KEYS; no notion of sessions or logs.  A
    value is bytes (a string) or a hash (kvd.kv.hashes: ``get`` answers
    ``HASH``, the fields are read and written one by one).
    """

    __slots__ = ("_data", "_index", "_mods", "_revs", "write_index", "deleted_at", "revision", "_rev_at")

    def __init__(self, load: int = 512):
        self._data: Dict[bytes, bytes] = {}
        self._mods: Dict[bytes, int] = {}
        self._revs: Dict[bytes, Meta] = {}
        self._index = _SortedChunks(load)
        self.write_index = 0
        self.deleted_at = 0
        self.revision = 0
        self._rev_at = -1

    @classmethod
    def from_items(cls, items: Iterable[tuple], load: int = 512) -> "Keyspace":
        """
        Bulk-load (key, value), (key, value, mod index) or (key, value, mod index, meta) items; last value
        wins for repeated keys.  O(n) for input already in SCAN order.
        """
        self = cls(load)
        data, mods, revs = self._data, self._mods, self._revs
        for item in items:
            data[item[0]] = _hash_of(item[1]) if isinstance(item[1], list) else item[1]
            mods[item[0]] = item[2] if len(item) > 2 else 0
            revs[item[0]] = item[3] if len(item) > 3 else NO_META
        entries = [_entry(k) for k in data]
        entries.sort()  # Timsort: linear when the input came from items_in_order()
        self._index = _SortedChunks.from_sorted(entries, load)
        return self

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def get(self, key: bytes):
        """The string's bytes, ``HASH`` for a hash, None if there is no such key."""
        value = self._data.get(key)
        return HASH if isinstance(value, _MemHash) else value

    def mod_index(self, key: bytes) -> Optional[int]:
        """The log index of the last write of ``key``, None if it does not exist."""
        return self._mods.get(key)

    def rev_meta(self, key: bytes) -> Optional[Meta]:
        """(create revision, mod revision, version) of ``key``, None if it does not exist."""
        return self._revs.get(key)

    def _stamp(self, key: bytes, existed: bool, mod: Optional[int], meta: Optional[Meta]) -> None:
        """``key`` was written: its mod index and meta, this entry's unless given (a load)."""
        if mod is None:
            self._mods[key] = self.write_index
            self._revs[key] = next_meta(self._revs.get(key) if existed else None, self.bump())
        else:
            self._mods[key] = mod
            self._revs[key] = NO_META if meta is None else meta

    def put(self, key: bytes, value: bytes, mod: Optional[int] = None, meta: Optional[Meta] = None) -> None:
        existed = key in self._data
        if not existed:
            self._index.add(_entry(key))
        self._data[key] = value
        self._stamp(key, existed, mod, meta)

    # ------------------------------------------------------------ hashes (kvd.kv.hashes)

    def set_mod(self, key: bytes, mod: int, meta: Optional[Meta] = None) -> None:
        self._stamp(key, True, mod, meta)

    def set_rev(self, key: bytes, meta: Meta) -> None:
        """Give the existing ``key`` this meta rather than the one its writes made: a load."""
        self._revs[key] = meta

    def hget(self, key: bytes, field: bytes) -> Optional[bytes]:
        value = self._data.get(key)
        return value.fields.get(field) if isinstance(value, _MemHash) else None

    def hlen(self, key: bytes) -> int:
        value = self._data.get(key)
        return len(value.fields) if isinstance(value, _MemHash) else 0

    def hset(self, key: bytes, field: bytes, value: bytes, mod: Optional[int] = None,
             meta: Optional[Meta] = None) -> bool:
        h = self._data.get(key)
        if not isinstance(h, _MemHash):
            self.put(key, b"", mod, meta)
            h = self._data[key] = _MemHash()
        else:
            self._stamp(key, True, mod, meta)
        return h.set(field, value)

    def hdel(self, key: bytes, field: bytes) -> bool:
        h = self._data.get(key)
        if not isinstance(h, _MemHash) or not h.delete(field):
            return False
        self._stamp(key, True, None, None)
        if not h.fields:
            self.delete(key)
        return True

    def hfields_from(self, key: bytes, start: bytes = b"") -> Iterator[Tuple[bytes, bytes, bytes]]:
        h = self._data.get(key)
        return h.items_from(start) if isinstance(h, _MemHash) else iter(())

    def clear(self) -> None:
        """Every key gone (FLUSHDB): new empty containers, the old ones freed whole."""
        if self._data:
            self.deleted_at = self.write_index
            self.bump()
        self._data = {}
        self._mods = {}
        self._revs = {}
        self._index = _SortedChunks(self._index._load)

    def delete(self, key: bytes) -> bool:
        if key not in self._data:
            return False
        del self._data[key]
        del self._mods[key]
        del self._revs[key]
        self._index.remove(_entry(key))
        self.deleted_at = self.write_index
        self.bump()
        return True

    def scan(self, cursor: int, match: Optional[Pattern], count: int) -> Tuple[int, List[bytes]]:
        """
        Visit up to ``count`` keys from ``cursor`` on; return (next cursor,
        the visited keys that match).  As in Redis, COUNT bounds the work, not
        the reply, so a MATCH can yield an empty page with a non-zero cursor.
        Keys sharing a position (a 63-bit collision) are never split across
        pages, so a page may exceed ``count`` by those.  Cursor 0 starts and
        ends an iteration.
        """
        if cursor > MAX_CURSOR:
            return 0, []
        found: List[bytes] = []
        visited = 0
        last = b""
        for entry in self._index.iter_from(cursor.to_bytes(8, "big")):
            position = entry[:8]
            if visited >= count and position != last:
                return int.from_bytes(position, "big"), found
            visited += 1
            last = position
            key = entry[8:]
            if match is None or match.matches(key):
                found.append(key)
        return 0, found

    def keys(self, pattern: Pattern) -> List[bytes]:
        """Every key matching ``pattern``, sorted bytewise."""
        literal = pattern.literal
        if literal is not None:
            return [literal] if literal in self._data else []
        return sorted(k for k in self._data if pattern.matches(k))

    def items_in_order(self) -> Iterator[Tuple[bytes, object]]:
        """(key, value) pairs in SCAN order: a function of the key set alone (a hash's value: its (field, value) list)."""
        for key, value, _, _ in self.records_in_order():
            yield key, value

    def records_in_order(self) -> Iterator[Tuple[bytes, object, int, Meta]]:
        """
        (key, value, mod index, meta) in SCAN order; a hash's value is the list of its (field, value) in
        field order.
        """
        data, mods, revs = self._data, self._mods, self._revs
        for entry in self._index:
            key = entry[8:]
            value = data[key]
            yield key, value.pairs() if isinstance(value, _MemHash) else value, mods[key], revs[key]

    def check(self) -> None:
        """Assert the index matches the dict; for tests."""
        self._index.check()
        assert sorted(e[8:] for e in self._index) == sorted(self._data), "index and data disagree"
        assert self._mods.keys() == self._data.keys(), "mod indexes and data disagree"
        assert self._revs.keys() == self._data.keys(), "revision metas and data disagree"
        assert all(m[1] <= self.revision for m in self._revs.values()), "a key changed after the store's revision"
        for value in self._data.values():
            if isinstance(value, _MemHash):
                value.index.check()
                assert value.fields, "an empty hash"
                assert sorted(value.index) == sorted(field_key(f) for f in value.fields), "hash index and fields disagree"


class Overlay(HashOverlay, Stamper):
    """
    What a durable keyspace (kvd.store.state, and the simulator's model of
    it, kvd.sim.state) keeps in memory: the writes applied since its last
    flush (``None`` for a deleted key) over what it has stored, and the key
    count.  Subclasses say how to read a stored value (``_stored``) and how
    to walk every live key in SCAN order (``_merged_from``); SCAN, KEYS and
    the count check are then the same for both.
    """

    def _reset_overlay(self, count: int) -> None:
        self._pending: Dict[bytes, Optional[bytes]] = {}
        #: The mod index of each key written in ``_pending`` (absent for a deleted one).
        self._pending_mod: Dict[bytes, int] = {}
        #: The meta (kvd.kv.revisions) of each key written in ``_pending`` (absent for a deleted one).
        self._pending_rev: Dict[bytes, Meta] = {}
        self.write_index = 0
        #: Kept with the applied index by subclasses (their state record), as ``deleted_at``.
        self.revision = 0
        self._rev_at = -1
        #: Kept with the applied index by subclasses (their state record); see Keyspace.
        self.deleted_at = 0
        self._count = count
        #: Every stored key is deleted (FLUSHDB), until the flush that drops them commits.
        self._cleared = False
        #: Keys whose stored hash fields are to be dropped by the next flush (the hash was deleted or replaced).
        self._drop_fields: set = set()
        #: Fields written since the last flush (a flush is due after as many as keys).
        self._field_writes = 0

    def _forget_pending(self) -> None:
        """The overlay's writes are on disk (or replaced by what is): forget them."""
        self._pending.clear()
        self._pending_mod.clear()
        self._pending_rev.clear()
        self._drop_fields = set()
        self._field_writes = 0
        self._cleared = False
        self._rev_at = -1

    def _stored(self, key: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def _stored_mod(self, key: bytes) -> Optional[int]:
        """The stored key's mod index, None if it is not stored."""
        raise NotImplementedError

    def _stored_rev(self, key: bytes) -> Optional[Meta]:
        """The stored key's meta (kvd.kv.revisions), None if it is not stored."""
        raise NotImplementedError

    def _stored_with_meta(self, key: bytes) -> Tuple[object, Optional[Meta]]:
        """(value or HASH, meta) of the stored key, (None, None) if it is not; subclasses may read once."""
        value = self._stored(key)
        return (None, None) if value is None else (value, self._stored_rev(key))

    def _stored_field(self, key: bytes, field: bytes) -> Optional[bytes]:
        """A field of the stored hash at ``key``."""
        raise NotImplementedError

    def _stored_hlen(self, key: bytes) -> int:
        raise NotImplementedError

    def _stored_fields_from(self, key: bytes, start: bytes) -> Iterator[Tuple[bytes, bytes, bytes]]:
        """(field key, field, value) of the stored hash at ``key`` from field key ``start`` on, in order."""
        raise NotImplementedError

    # HashOverlay's hooks
    def _hash_writes(self) -> dict:
        return self._pending

    def _hash_hidden(self) -> bool:
        return self._cleared

    def _below_field(self, key, field):
        return self._stored_field(key, field)

    def _below_hlen(self, key):
        return self._stored_hlen(key)

    def _below_fields_from(self, key, start):
        return self._stored_fields_from(key, start)

    def _hash_written(self, key: bytes, size: int) -> None:
        self._pending_mod[key] = self.write_index
        # created by this entry (``_hash_created``) or stored: then the meta before is the stored one
        old = self._pending_rev[key] if key in self._pending_rev else self._stored_rev(key)
        self._pending_rev[key] = next_meta(old, self.bump())
        self._field_writes += 1

    def _hash_created(self, key: bytes) -> None:
        self._count += 1
        self._pending_rev[key] = next_meta(None, self.bump())

    def _retire_fields(self, key: bytes) -> None:
        """The hash at ``key`` is deleted or replaced: its stored fields (if any) go at the next flush."""
        pending = self._pending.get(key)
        if not (isinstance(pending, PendingHash) and pending.fresh):
            self._drop_fields.add(key)

    def mod_index(self, key: bytes) -> Optional[int]:
        if key in self._pending:
            return None if self._pending[key] is None else self._pending_mod[key]
        if self._cleared:
            return None
        return self._stored_mod(key)

    def rev_meta(self, key: bytes) -> Optional[Meta]:
        """(create revision, mod revision, version) of ``key``, None if it does not exist."""
        if key in self._pending:
            return None if self._pending[key] is None else self._pending_rev[key]
        if self._cleared:
            return None
        return self._stored_rev(key)

    def set_rev(self, key: bytes, meta: Meta) -> None:
        """Give the (just written) ``key`` this meta rather than this entry's: a load (kvd.kv.machine copy_from)."""
        self._pending_rev[key] = meta

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def get(self, key: bytes):
        """The string's bytes, ``HASH`` for a hash, None: as ``Keyspace.get``."""
        if key in self._pending:
            value = self._pending[key]
            return HASH if isinstance(value, PendingHash) else value
        if self._cleared:
            return None
        return self._stored(key)

    def clear(self) -> None:
        """
        Every key gone (FLUSHDB), in constant work here: the overlay forgets
        its writes and hides what is stored, and the next flush drops the
        stored keys whole in its transaction (``_merged_from`` and the flush
        of a subclass honour ``_cleared``).
        """
        if self._count:
            self.deleted_at = self.write_index
            self.bump()
        self._pending.clear()
        self._pending_mod.clear()
        self._pending_rev.clear()
        self._drop_fields = set()  # the flush drops every stored field whole
        self._cleared = True
        self._count = 0

    def put(self, key: bytes, value: bytes) -> None:
        if key in self._pending:
            current = self._pending[key]
            current, old = (None, None) if current is None else (
                HASH if isinstance(current, PendingHash) else current, self._pending_rev[key])
        elif self._cleared:
            current, old = None, None
        else:
            current, old = self._stored_with_meta(key)
        if current is None:
            self._count += 1
        elif current is HASH:
            self._retire_fields(key)
        self._pending[key] = bytes(value)
        index = self.write_index
        self._pending_mod[key] = index
        # Stamper.bump and next_meta inlined: this is every durable write of a string.
        if self._rev_at != index:
            self.revision += 1
            self._rev_at = index
        revision = self.revision
        if old is None:
            self._pending_rev[key] = (revision, revision, 1)
        elif old[1] != revision:
            self._pending_rev[key] = (old[0], revision, old[2] + 1)
        else:
            self._pending_rev[key] = old

    def delete(self, key: bytes) -> bool:
        current = self.get(key)
        if current is None:
            return False
        if current is HASH:
            self._retire_fields(key)
        self._count -= 1
        self._pending[key] = None
        self._pending_mod.pop(key, None)
        self._pending_rev.pop(key, None)
        self.deleted_at = self.write_index
        self.bump()
        return True

    def _merged_from(self, start: int) -> Iterator[Tuple[int, bytes]]:
        """(SCAN position, key) of every live key at or after position ``start``, stored or pending, in SCAN order."""
        raise NotImplementedError

    def scan(self, cursor: int, match: Optional[Pattern], count: int) -> Tuple[int, List[bytes]]:
        """Exactly ``Keyspace.scan``'s contract, over what is stored and the overlay."""
        if cursor > MAX_CURSOR:
            return 0, []
        found: List[bytes] = []
        visited = 0
        last = -1
        for position, key in self._merged_from(cursor):
            if visited >= count and position != last:
                return position, found
            visited += 1
            last = position
            if match is None or match.matches(key):
                found.append(key)
        return 0, found

    def keys(self, pattern: Pattern) -> List[bytes]:
        """Every key matching ``pattern``, sorted bytewise."""
        literal = pattern.literal
        if literal is not None:
            return [literal] if self.get(literal) is not None else []
        return sorted(key for _, key in self._merged_from(0) if pattern.matches(key))

    def check(self) -> None:
        """Assert the key count matches the keys there are; for tests."""
        n = sum(1 for _ in self._merged_from(0))
        assert n == self._count, "key count %d, %d keys stored" % (self._count, n)
        for key, value in self._pending.items():
            if isinstance(value, PendingHash):
                fields = [f for _, f, _ in self.hfields_from(key)]
                assert len(fields) == len(set(fields)) == value.count > 0, "hash %r: %d fields, header says %d" % (
                    key, len(fields), value.count)
