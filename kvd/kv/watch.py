# -*- test-case-name: tests.kv.test_watch -*-
"""
KVD.WATCH's history, the pure part: what each revision changed, and a
bounded ring of those changes that a watch replays from a revision
(etcd's watch: every change under a prefix, in log order, each with its
revision, resumable from a revision without a gap or a duplicate).

What one entry changed (``changes_of``).  The machine already names every
key an entry writes, in its key events (kvd.kv.events: ``set``, ``del``,
``expired``, ``hset``, ``rename_from``...) and, for FLUSHDB/FLUSHALL of a
non-empty store, a ``Flushed`` event (no Redis channel carries it).  So the
changes are derived after the entry is applied, from those events and the
keyspace as the entry left it, rather than by a hook in every write path of
both keyspaces (kvd.kv.keyspace's Keyspace and Overlay): a key named by
the entry shows its *final* state once, at the entry's revision, in the
order the entry first touched it -- ``put`` with its value (a string),
``hash`` for a hash (no value: a hash may be large, and a watch of a big
hash would copy it at every field written; read it with HGETALL), or
``del``.  A key an event names that the entry did not change (its
mod_revision is older) is left out.  ``Flushed`` comes first as one
``flush`` change with an empty key: every key was deleted at that
revision.  ``tests/kv/test_watch.py`` replays a random mix of every write
through a history and checks it rebuilds the store: no write path goes
unseen.

The ring (``WatchHistory``).  Changes are kept in revision order, bounded by
a count and by bytes (keys and values); the oldest revisions go first, a
revision always whole, so ``oldest`` -- the first revision a watch can start
from exactly -- is well defined.  A node starts its history at the revision
it loaded (``reset``: the entries a restart applies again are recorded, as
they are applied), and resets it when a snapshot is installed (it cannot
know what changed in between).  ``since(n, prefix)`` answers the changes
from revision ``n`` on under ``prefix``; ``n`` below ``oldest`` raises
``Compacted`` (etcd's ErrCompacted).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Iterable, List, NamedTuple, Optional

from kvd.kv.events import Flushed, KeyEvent
from kvd.kv.hashes import HASH

PUT, DELETE, HASH_KIND, FLUSH = b"put", b"del", b"hash", b"flush"
#: What a change costs besides its key and value (the tuple, the deque's slot), for the bytes bound.
CHANGE_OVERHEAD = 96

DEFAULT_MAX_CHANGES = 100_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class Change(NamedTuple):
    """One key's state after the entry of ``revision``: put (with ``value``), hash, del, or flush (all keys)."""

    revision: int
    kind: bytes
    key: bytes
    value: Optional[bytes] = None

    @property
    def size(self) -> int:
        return _size(self)


def _size(change: tuple) -> int:
    """What a change (a Change, or the plain tuple the history keeps) counts toward the bytes bound."""
    _, _, key, value = change
    return CHANGE_OVERHEAD + len(key) + (len(value) if value is not None else 0)


class Compacted(Exception):
    """A watch asked for a revision the history no longer holds (etcd's ErrCompacted)."""

    def __init__(self, revision: int, oldest: int):
        super().__init__("revision %d is compacted, oldest available is %d" % (revision, oldest))
        self.revision = revision
        self.oldest = oldest


def changes_of(events: Iterable, ks, revision: int) -> List[Change]:
    """
    The changes of the entry just applied at ``revision`` (the store's revision after it), from its
    ``events`` and ``ks``, the keyspace it left (the raw one: a key with a past expiry not yet reclaimed
    is still there, as it was written).  Call it only when the entry bumped the revision.
    """
    out: List[Change] = []
    seen = set()
    flushed = False
    for event in events:
        if isinstance(event, Flushed):
            flushed = True
        elif isinstance(event, KeyEvent) and event.key not in seen:
            seen.add(event.key)
    if flushed:
        out.append(Change(revision, FLUSH, b""))
    for event in events:
        if not isinstance(event, KeyEvent) or event.key not in seen:
            continue
        key = event.key
        seen.discard(key)  # first appearance only
        value = ks.get(key)
        if value is None:
            out.append(Change(revision, DELETE, key))
            continue
        meta = ks.rev_meta(key)
        if meta is not None and meta[1] not in (0, revision):
            continue  # named by an event, not changed by this entry (e.g. an expiry not given)
        if value is HASH:
            out.append(Change(revision, HASH_KIND, key))
        else:
            out.append(Change(revision, PUT, key, bytes(value)))
    return out


def matches(change: Change, prefix: bytes) -> bool:
    """Whether a watch of ``prefix`` sees ``change``: a flush is every key's."""
    return change.kind == FLUSH or change.key.startswith(prefix)


class WatchHistory:
    """The last changes, oldest first, within ``max_changes`` and ``max_bytes`` (at least the newest revision)."""

    def __init__(self, max_changes: int = DEFAULT_MAX_CHANGES, max_bytes: int = DEFAULT_MAX_BYTES,
                 revision: int = 0):
        if max_changes < 0 or max_bytes < 0:
            raise ValueError("the watch history's bounds must not be negative")
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        # Plain tuples, not Change: a tuple of ints and bytes is one the cyclic
        # garbage collector stops tracking, a NamedTuple never is.  A hundred
        # thousand changes kept here made most of what every full collection
        # walked (60-110 ms each, more than once a second on a loaded leader).
        self._changes: Deque[tuple] = deque()
        self.bytes = 0
        self.revision = revision  # the store's revision the history has reached
        self.oldest = revision + 1  # the first revision ``since`` answers exactly

    def __len__(self) -> int:
        return len(self._changes)

    def reset(self, revision: int) -> None:
        """Forget everything: the store is at ``revision`` (a start, a snapshot installed)."""
        self._changes.clear()
        self.bytes = 0
        self.revision = revision
        self.oldest = revision + 1

    def record(self, revision: int, changes: List[Change]) -> None:
        """The changes of the entry that made ``revision`` (the next one), then trim to the bounds."""
        if revision != self.revision + 1:  # a revision missed: the node resets the history and its watches
            raise ValueError("revision %d recorded after %d" % (revision, self.revision))
        self.revision = revision
        for change in changes:
            self._changes.append(tuple(change))
            self.bytes += change.size
        self._trim()

    def _trim(self) -> None:
        changes = self._changes
        if self.max_changes == 0:  # no history: every watch starts from the next revision
            changes.clear()
            self.bytes = 0
            self.oldest = self.revision + 1
            return
        while changes and (len(changes) > self.max_changes or self.bytes > self.max_bytes):
            first = changes[0][0]
            if first == self.revision:
                break  # the newest revision stays whole, whatever it costs
            while changes and changes[0][0] == first:
                self.bytes -= _size(changes.popleft())
            self.oldest = first + 1

    def since(self, revision: int, prefix: bytes = b"") -> List[Change]:
        """The changes under ``prefix`` from ``revision`` on, in order; ``Compacted`` if it is before ``oldest``."""
        if revision < self.oldest:
            raise Compacted(revision, self.oldest)
        if revision > self.revision:
            return []
        out = []
        for stored in reversed(self._changes):  # the recent end is what a resuming watch asks for
            change = Change._make(stored)
            if change.revision < revision:
                break
            if matches(change, prefix):
                out.append(change)
        out.reverse()
        return out
