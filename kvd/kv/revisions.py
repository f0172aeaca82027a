# -*- test-case-name: tests.kv.test_revisions -*-
"""
Revisions, etcd's MVCC numbering, kept by every keyspace.

The store's ``revision`` counts the log entries that changed a key: the
first change (put, delete, a hash field, FLUSHDB of a non-empty store, a
reclaimed expired key) an entry makes bumps it by one, later changes by the
same entry do not, so one MULTI/EXEC or KVD.TXN is one revision.  An entry
that changes nothing (a GET inside MULTI, a SET NX that lost, a Tick with
nothing to reclaim) leaves it alone.  A change of a key's time to live is a
write of the key (kvd.kv.machine ``_touch``, as WATCH sees it), so it counts.

Each key carries its *meta* ``(create_revision, mod_revision, version)``:
the revision that created it, the one that last changed it, and how many
revisions changed it since it was created (1 when created).  A deleted key
has none; written again it is created anew (version 1).  A key replaced
whole by RENAME or COPY over it is changed (version + 1) when it was a
string, and created anew when it was a hash (the hash is deleted, then its
fields copied in).  Keys and stores from before revisions read as meta
``(0, 0, 0)`` and revision 0.

How a keyspace keeps it: the machine sets ``write_index`` (the entry's log
index) before applying an entry; ``Stamper.bump`` turns the first change
under a new ``write_index`` into a new revision.  The meta travels with each
key's mod index: in the snapshot (kvd.kv.machine, version 6) and in the
durable record of the key (kvd.store.state layouts 6-9, ``pack_meta``: a
length byte and three varints, 4 to 10 bytes for a store below 2**21
revisions; the length lets a reader of the value skip the meta unread).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Optional, Tuple

from kvd.kv.codec import CodecError

__all__ = ["Meta", "NO_META", "next_meta", "pack_meta", "unpack_meta", "meta_end", "Stamper"]

#: (create_revision, mod_revision, version)
Meta = Tuple[int, int, int]
#: What a key stored before revisions existed reads as.
NO_META: Meta = (0, 0, 0)


def next_meta(old: Optional[Meta], revision: int) -> Meta:
    """A key's meta once written at ``revision``; ``old`` is its meta before (None: it did not exist)."""
    if old is None:
        return (revision, revision, 1)
    if old[1] == revision:  # already changed by this entry: one revision, one version
        return old
    return (old[0], revision, old[2] + 1)


class Stamper:
    """
    The bump-once-per-entry rule, mixed into a keyspace that has
    ``write_index``, ``revision`` and ``_rev_at`` (the write index of the
    last bump; -1 after a load: no entry has been applied since).
    """

    __slots__ = ()

    def bump(self) -> int:
        """The revision of the entry being applied, made if this is its first change."""
        if self._rev_at != self.write_index:
            self.revision += 1
            self._rev_at = self.write_index
        return self.revision


def pack_meta(meta: Meta) -> bytes:
    """A length byte, then three unsigned LEB128 varints: what a durable record adds to a key for its meta."""
    create, mod, version = meta
    if create < 0x80 and mod < 0x80 and version < 0x80:
        return bytes((3, create, mod, version))
    if 0x80 <= create < 0x4000 and 0x80 <= mod < 0x4000 and version < 0x80:  # two bytes each
        return bytes((5, (create & 0x7F) | 0x80, create >> 7, (mod & 0x7F) | 0x80, mod >> 7, version))
    out = bytearray(1)
    for value in meta:
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    out[0] = len(out) - 1
    return bytes(out)


def meta_end(data, offset: int) -> int:
    """Where ``pack_meta``'s bytes at ``offset`` end, without decoding them."""
    return offset + 1 + data[offset]


def unpack_meta(data, offset: int) -> Tuple[Meta, int]:
    """(meta, offset past it) of ``pack_meta``'s bytes at ``offset``; CodecError if truncated or malformed."""
    if offset >= len(data):
        raise CodecError("truncated revision meta")
    end = offset + 1 + data[offset]
    if end > len(data):
        raise CodecError("truncated revision meta")
    if end - offset == 4:  # the common case: three one-byte varints
        a, b, c = data[offset + 1:end]
        if a < 0x80 and b < 0x80 and c < 0x80:
            return (a, b, c), end
    if end - offset > 31:  # three varints of at most 10 bytes each
        raise CodecError("revision meta too long")
    values = []
    value = shift = 0
    for b in data[offset + 1:end]:
        value |= (b & 0x7F) << shift
        if b & 0x80:
            shift += 7
        else:
            values.append(value)
            value = shift = 0
    if len(values) != 3 or shift:
        raise CodecError("revision meta of the wrong length")
    return (values[0], values[1], values[2]), end
