# -*- test-case-name: tests.kv.test_hashes -*-
"""
Redis hashes: what HSET, HGET, HSCAN ... do to a keyspace, and how a
keyspace that buffers writes over another one (the durable state's overlay,
a Lua script's buffer) keeps a hash's fields.

A key holds a string or a hash.  Every keyspace answers ``get(key)`` with
the string's bytes, ``HASH`` for a hash (a marker: a hash is never read
whole by accident), or None; and keeps a hash's fields itself, one by one
(``hget``, ``hset``, ``hdel``, ``hlen``, ``hfields_from``), so that writing
one field never copies or rewrites the others: in memory a dict per hash,
on disk one LMDB record per field (kvd.store.state).

Field order.  A hash's fields are ordered by ``field_key``: the field's
SCAN position (kvd.kv.keyspace ``scan_position``, 8 bytes) then the field
(its first ``INLINE_FIELD`` bytes and a digest when longer): the order
LMDB keeps them in, so that HGETALL, HKEYS, HVALS and HSCAN answer the same
order on every replica, from memory or disk.  (Redis answers a small hash in
insertion order and a large one in its table's order; neither is promised.)
HSCAN's cursor is a position, as SCAN's: a field present for a whole
iteration is returned exactly once.  A hash of at most
``SMALL_HASH`` fields is answered whole by one HSCAN call, cursor 0, as
Redis answers its small (listpack) hashes.

Overlays.  ``HashOverlay`` is the part of a write buffer that holds hashes:
a key's pending state is None (deleted), bytes (a string) or a
``PendingHash`` -- the fields written since the buffer began (None for a
deleted field), the hash's field count, and whether the fields below it
(``fresh`` False) still count, or the key was (re)created as a hash since
(``fresh`` True: whatever was below is gone).

Errors and replies are Redis 7's (t_hash.c).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Dict, Iterator, List, Optional, Tuple

from kvd.kv import longdouble
from kvd.kv.commands import INT64_MAX, INT64_MIN, HashRead, HashWrite, parse_int64
from kvd.kv.glob import Pattern, PatternTooCostly
from kvd.kv.results import ERR_NOT_INTEGER, OK, KVError, Result


class _Hash:
    """The type of ``HASH``: what ``get`` answers for a key that holds a hash."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HASH"

    def __bool__(self) -> bool:  # a hash is there: never read as "missing"
        return True


HASH = _Hash()

WRONGTYPE = KVError("WRONGTYPE Operation against a key holding the wrong kind of value")
ERR_HASH_NOT_INTEGER = KVError("ERR hash value is not an integer")
ERR_HASH_NOT_FLOAT = KVError("ERR hash value is not a float")
ERR_NOT_FLOAT = KVError("ERR value is not a valid float")
ERR_NAN_INCR = KVError("ERR value is NaN or Infinity")
ERR_NAN_RESULT = KVError("ERR increment would produce NaN or Infinity")
ERR_OVERFLOW = KVError("ERR increment or decrement would overflow")
ERR_SYNTAX = KVError("ERR syntax error")

#: Field bytes kept as they are in a field's key; a longer field is cut there and digested
#: (kvd.store.state keeps fields under a 16-byte digest of their hash's key: 16 + 8 + 448 + 16 < 511).
INLINE_FIELD = 448
_DIGEST = 16
#: HSCAN answers a hash of at most this many fields whole, cursor 0 (Redis's hash-max-listpack-entries).
SMALL_HASH = 128
_MASK63 = (1 << 63) - 1


def _position(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big") & _MASK63 or 1


def field_key(field: bytes) -> bytes:
    """Where ``field`` sits among its hash's fields (see the module docstring)."""
    head = _position(field).to_bytes(8, "big")
    if len(field) <= INLINE_FIELD:
        return head + field
    return head + field[:INLINE_FIELD] + blake2b(field, digest_size=_DIGEST).digest()


Field = Tuple[bytes, bytes, bytes]  # (field_key, field, value)


class PendingHash:
    """A hash's writes in an overlay: see the module docstring."""

    __slots__ = ("fresh", "fields", "count")

    def __init__(self, fresh: bool, count: int, fields: Optional[Dict[bytes, Optional[bytes]]] = None):
        self.fresh = fresh
        self.count = count
        self.fields: Dict[bytes, Optional[bytes]] = {} if fields is None else fields

    def copy(self) -> "PendingHash":
        return PendingHash(self.fresh, self.count, dict(self.fields))

    def __repr__(self) -> str:
        return "PendingHash(fresh=%r, count=%d, fields=%r)" % (self.fresh, self.count, self.fields)

    def __eq__(self, other) -> bool:
        return (isinstance(other, PendingHash) and (self.fresh, self.count, self.fields)
                == (other.fresh, other.count, other.fields))


def merge_fields(below: Iterator[Field], pending: Optional[PendingHash], start: bytes) -> Iterator[Field]:
    """The fields of ``below`` (in field-key order) with ``pending``'s writes over them, from ``start`` on."""
    over: List[Tuple[bytes, bytes, Optional[bytes]]] = []
    if pending is not None:
        over = sorted(item for item in ((field_key(f), f, v) for f, v in pending.fields.items()) if item[0] >= start)
    i = 0
    for item in below:
        fk = item[0]
        while i < len(over) and over[i][0] < fk:
            if over[i][2] is not None:
                yield over[i]
            i += 1
        if i < len(over) and over[i][0] == fk:
            continue  # written over: the pending write is yielded in its turn
        yield item
    for item in over[i:]:
        if item[2] is not None:
            yield item


def scan_fields(fields: Iterator[Field], cursor: int, count: int) -> Tuple[int, List[Field]]:
    """SCAN's paging over fields in field-key order from position ``cursor``: (next cursor, the fields visited)."""
    found: List[Field] = []
    last = b""
    for item in fields:
        position = item[0][:8]
        if len(found) >= count and position != last:
            return int.from_bytes(position, "big"), found
        last = position
        found.append(item)
    return 0, found


class HashOverlay:
    """
    The hashes of a write buffer over a keyspace below it.  A subclass
    provides ``_hash_writes`` (its key -> pending state dict),
    ``_hash_hidden`` (everything below is gone: FLUSHDB), ``get``, the
    reads of what is below (``_below_field``, ``_below_hlen``,
    ``_below_fields_from``) and what a write of a field entails
    (``_hash_written``, ``_hash_created``).
    """

    def _hash_writes(self) -> dict:
        raise NotImplementedError

    def _hash_hidden(self) -> bool:
        raise NotImplementedError

    def _below_field(self, key: bytes, field: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def _below_hlen(self, key: bytes) -> int:
        raise NotImplementedError

    def _below_fields_from(self, key: bytes, start: bytes) -> Iterator[Field]:
        raise NotImplementedError

    def _hash_written(self, key: bytes, size: int) -> None:
        """A field of ``key`` of ``size`` bytes (field and value) was written or deleted."""

    def _hash_created(self, key: bytes) -> None:
        """``key`` did not exist and is a hash now."""

    def _pending_hash(self, key: bytes) -> PendingHash:
        writes = self._hash_writes()
        pending = writes.get(key)
        if isinstance(pending, PendingHash):
            return pending
        if self.get(key) is None:
            pending = PendingHash(True, 0)
            self._hash_created(key)
        else:
            pending = PendingHash(False, self._below_hlen(key))
        writes[key] = pending
        return pending

    def hget(self, key: bytes, field: bytes) -> Optional[bytes]:
        writes = self._hash_writes()
        if key in writes:
            pending = writes[key]
            if not isinstance(pending, PendingHash):
                return None
            if field in pending.fields:
                return pending.fields[field]
            if pending.fresh:
                return None
        elif self._hash_hidden():
            return None
        return self._below_field(key, field)

    def hlen(self, key: bytes) -> int:
        writes = self._hash_writes()
        if key in writes:
            pending = writes[key]
            return pending.count if isinstance(pending, PendingHash) else 0
        if self._hash_hidden() or self.get(key) is not HASH:
            return 0
        return self._below_hlen(key)

    def hset(self, key: bytes, field: bytes, value: bytes) -> bool:
        """Set a field of the hash at ``key`` (created if missing; never a string); True if the field is new."""
        new = self.hget(key, field) is None
        pending = self._pending_hash(key)
        pending.fields[field] = bytes(value)
        if new:
            pending.count += 1
        self._hash_written(key, len(field) + len(value))
        return new

    def hdel(self, key: bytes, field: bytes) -> bool:
        """Delete a field; the hash goes with its last field.  True if the field was there."""
        if self.hget(key, field) is None:
            return False
        pending = self._pending_hash(key)
        if pending.fresh:
            del pending.fields[field]
        else:
            pending.fields[field] = None
        pending.count -= 1
        self._hash_written(key, len(field))
        if pending.count == 0:
            self.delete(key)
        return True

    def hfields_from(self, key: bytes, start: bytes = b"") -> Iterator[Field]:
        """(field key, field, value) of the hash at ``key``, in field-key order, from ``start`` on."""
        writes = self._hash_writes()
        pending = None
        if key in writes:
            pending = writes[key]
            if not isinstance(pending, PendingHash):
                return iter(())
            below = iter(()) if pending.fresh else self._below_fields_from(key, start)
        elif self._hash_hidden():
            return iter(())
        else:
            below = self._below_fields_from(key, start)
        return merge_fields(below, pending, start)


# ------------------------------------------------------------ the commands


def write(ks, cmd: HashWrite) -> Result:
    """Apply one hash write to ``ks`` (a keyspace with the hash methods above)."""
    if isinstance(ks.get(cmd.key), bytes):
        return WRONGTYPE
    key, args, op = cmd.key, cmd.args, cmd.op
    if op in ("hset", "hmset"):
        added = 0
        for i in range(0, len(args), 2):
            added += ks.hset(key, args[i], args[i + 1])
        return added if op == "hset" else OK
    if op == "hsetnx":
        if ks.hget(key, args[0]) is not None:
            return 0
        ks.hset(key, args[0], args[1])
        return 1
    if op == "hdel":
        return sum(1 for field in args if ks.hdel(key, field))
    if op == "hincrby":
        delta = parse_int64(args[1])
        old = ks.hget(key, args[0])
        current = 0 if old is None else parse_int64(old)
        if current is None:
            return ERR_HASH_NOT_INTEGER
        value = current + delta
        if not INT64_MIN <= value <= INT64_MAX:
            return ERR_OVERFLOW
        ks.hset(key, args[0], b"%d" % value)
        return value
    if op == "hincrbyfloat":
        incr = longdouble.parse(args[1])
        if incr is None:
            return ERR_NOT_FLOAT
        old = ks.hget(key, args[0])
        if old is not None and longdouble.is_infinity(old):
            return ERR_NAN_RESULT  # Redis reads a stored "inf" (strtold does), and inf + x is infinite
        current = (0, 1) if old is None else longdouble.parse(old)
        if current is None:
            return ERR_HASH_NOT_FLOAT
        value = longdouble.add(current, incr)
        if value is None:
            return ERR_NAN_RESULT
        text = longdouble.format_human(value)
        ks.hset(key, args[0], text)
        return text
    raise TypeError("not a hash write: %r" % (cmd,))


def read(ks, op: HashRead) -> Result:
    """Answer one hash read from ``ks``."""
    if isinstance(ks.get(op.key), bytes):
        return WRONGTYPE
    key, args, name = op.key, op.args, op.op
    if name == "hget":
        return ks.hget(key, args[0])
    if name == "hmget":
        return [ks.hget(key, field) for field in args]
    if name == "hexists":
        return 0 if ks.hget(key, args[0]) is None else 1
    if name == "hstrlen":
        value = ks.hget(key, args[0])
        return 0 if value is None else len(value)
    if name == "hlen":
        return ks.hlen(key)
    if name in ("hgetall", "hkeys", "hvals"):
        out: List[bytes] = []
        for _, field, value in ks.hfields_from(key):
            if name != "hvals":
                out.append(field)
            if name != "hkeys":
                out.append(value)
        return out
    if name == "hscan":
        return _hscan(ks, key, int(args[0]), args[1:])
    if name == "hrandfield":
        return _hrandfield(ks, key, int(args[0]), parse_int64(args[1]) if len(args) > 1 else None, len(args) > 2)
    raise TypeError("not a hash read: %r" % (op,))


def _hscan(ks, key: bytes, cursor: int, options) -> Result:
    """HSCAN: the options are read after the key's checks, as Redis's scanGenericCommand reads them."""
    size = ks.hlen(key)
    if not size:
        return [b"0", []]
    count, match, i = 10, None, 0
    while i < len(options):
        option = options[i].lower()
        if option == b"count" and len(options) - i >= 2:
            count = parse_int64(options[i + 1])
            if count is None:
                return ERR_NOT_INTEGER
            if count < 1:
                return ERR_SYNTAX
        elif option == b"match" and len(options) - i >= 2:
            match = options[i + 1]
        else:
            return ERR_SYNTAX
        i += 2
    try:
        pattern = None if match is None or match == b"*" else Pattern(match)
    except PatternTooCostly as e:
        return KVError("ERR " + str(e))
    if size <= SMALL_HASH:
        cursor, count = 0, SMALL_HASH
    if cursor > _MASK63:
        return [b"0", []]
    cursor, fields = scan_fields(ks.hfields_from(key, cursor.to_bytes(8, "big")), cursor, count)
    out: List[bytes] = []
    try:
        for _, field, value in fields:
            if pattern is None or pattern.matches(field):
                out += (field, value)
    except PatternTooCostly as e:
        return KVError("ERR " + str(e))
    return [b"%d" % cursor, out]


def _hrandfield(ks, key: bytes, position: int, count: Optional[int], withvalues: bool) -> Result:
    """
    HRANDFIELD: fields from SCAN position ``position`` on (drawn by the caller; wrapping around).  A
    negative count repeats: each pick at its own position, derived from ``position`` and its number.
    """
    size = ks.hlen(key)
    if count is None:
        if not size:
            return None
        return _field_at(ks, key, position)[1]
    if not size or count == 0:
        return []
    picks: List[Tuple[bytes, bytes]] = []
    if count > 0:
        start = (position & _MASK63).to_bytes(8, "big")
        for _, field, value in ks.hfields_from(key, start):
            if len(picks) >= count:
                break
            picks.append((field, value))
        if len(picks) < count:
            for fk, field, value in ks.hfields_from(key):
                if len(picks) >= min(count, size) or fk >= start:
                    break
                picks.append((field, value))
    else:
        for i in range(-count):
            seed = position.to_bytes(8, "big") + i.to_bytes(8, "big")
            _, field, value = _field_at(ks, key, int.from_bytes(blake2b(seed, digest_size=8).digest(), "big"))
            picks.append((field, value))
    if withvalues:
        return [[field, value] for field, value in picks]
    return [field for field, _ in picks]


def _field_at(ks, key: bytes, position: int) -> Field:
    start = (position & _MASK63).to_bytes(8, "big")
    for item in ks.hfields_from(key, start):
        return item
    for item in ks.hfields_from(key):
        return item
    raise KeyError(key)
