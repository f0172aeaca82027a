# -*- test-case-name: tests.store.test_state -*-
"""
The applied key/value state on disk, in the node's LMDB environment beside
the Raft log, as etcd keeps its state in bbolt: a restart opens it and
replays only the log after its applied index, and a snapshot is a read
transaction streamed to the follower.

``LmdbState`` is the durable keyspace of ``kvd.kv.machine.KVMachine``.
Applying an entry changes an in-memory overlay of pending writes; the
storage (kvd.store.lmdb) calls ``flush`` inside each of its write
transactions, and every ``FLUSH_KEYS`` keys or ``FLUSH_WRITES`` writes (and
at every compaction) the keys, the client sessions and the applied index
reach the disk in the same transaction and under the same sync as the log
entries that follow them (the log is always ahead of the state, so a crash
loses nothing the log cannot replay).  Reads look at the overlay, then at
LMDB.

Two slots.  The state lives in slot 0 or 1 (sub-databases ``kv.N`` and
``sessions.N``, a record ``state.N`` in ``meta`` with the applied index,
the clock and the key count; ``state.slot`` names the live one).  A
snapshot streamed from the leader is written into the other slot in
bounded transactions while the live one keeps serving; once complete and
verified it is swapped in by the very transaction that records the Raft
snapshot and drops the log (``install``), so a crash leaves either the old
state and log or the new ones.

Keys: ``kv.N`` is keyed by the key's SCAN position (8 bytes, kvd.kv.keyspace)
then the key, so LMDB's order is SCAN order.  LMDB keys are at most 511
bytes: a longer key is stored under its first ``_INLINE_KEY`` bytes and a
BLAKE2b digest of the whole, with the whole key kept in the record.  Every
record is sealed with a CRC32C (kvd.store.checksum) and checked when read; a
mismatch raises ``CorruptStorage`` and tells ``on_failure`` (the node
fail-stops: a wrong value is never served).

Versions (WATCH, kvd.kv.keyspace): a value record holds its key's mod index
(layouts 2 and 3 below); records of layouts 0 and 1, written before mod
indexes existed, are still read, with mod index 0.  The state record holds
``deleted_at`` after the key count (32 bytes; 24-byte records of before
read as ``deleted_at`` 0, which is safe: every WATCH reads a later index).
An older kvd reading layouts 2 and 3 takes them for corrupt records.

Revisions (kvd.kv.revisions): a key's meta (create revision, mod revision,
version) rides in the same record, after the mod index, as three varints
(``meta``: a length byte and the varints, kvd.kv.revisions ``pack_meta``,
4-10 bytes for a store below 2**21 revisions; layouts 6-9, the
only ones written now); records of layouts 0-5 read as meta (0, 0, 0).
The state record holds the store's revision after ``deleted_at`` (40
bytes; records of 32 or 24 bytes read as revision 0).

    layout 0  value                          (key inline in the LMDB key)
    layout 1  klen(4) key value              (a long key)
    layout 2  mod(8) value
    layout 3  mod(8) klen(4) key value
    layout 4  mod(8) count(8)                a hash's header: its field count
    layout 5  mod(8) count(8) klen(4) key    (a long key)
    layout 6  mod(8) meta value
    layout 7  mod(8) meta klen(4) key value
    layout 8  mod(8) count(8) meta           a hash's header
    layout 9  mod(8) count(8) meta klen(4) key

Hashes (kvd.kv.hashes).  A hash is its header record in ``kv.N`` (so SCAN,
KEYS, DBSIZE, RANDOMKEY see it once, like any key) and one record per field
in ``hf.N``, keyed by a 16-byte BLAKE2b digest of the hash's key then the
field's ``field_key`` (its position, then the field, cut and digested past
``INLINE_FIELD``): a hash's fields are contiguous and in field order, HSET
of one field writes that field's record and the header, nothing else.  A
field record is ``0x00 value`` or ``0x01 flen(4) field value`` (a long
field).  (Two keys whose 128-bit digests collide would share one set of
field records: not guarded against, as the long keys' digests are not.)
Deleting or replacing a hash deletes its field records in the next
flush (``_drop_fields``: one LMDB delete per field, in that flush's
transaction); FLUSHDB drops ``hf.N`` whole.  Data dirs of before hashes
have no ``hf.N``: it is created empty when opened, and every record they
hold is a string.

The stream a snapshot travels as is a run of records ``kind(1) klen(4)
key vlen(4) value`` with the values exactly as stored (sealed, so the
receiver checks each one): the state, the sessions, ``kv.N``, then the
field records (kind 4, in ``hf.N`` order), then a count and a CRC32C of all
the bytes.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import struct
from hashlib import blake2b
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import lmdb

from kvd.kv.hashes import HASH, INLINE_FIELD, PendingHash, field_key
from kvd.kv.codec import CodecError
from kvd.kv.keyspace import Overlay, scan_position
from kvd.kv.revisions import NO_META, Meta, meta_end, pack_meta, unpack_meta
from kvd.store import checksum
from kvd.store.lmdb import CorruptStorage
from kvd.store.schema import CorruptRecord, pack_stream_record, stream_records

#: Key bytes stored in the LMDB key as they are; longer keys are cut there and digested.
_INLINE_KEY = 480
_DIGEST = 16

_STATE = struct.Struct(">QQQQQ")  # applied index, clock ms, key count, deleted_at, revision
_STATE_V2 = struct.Struct(">QQQQ")  # before revisions: no revision
_STATE_V1 = struct.Struct(">QQQ")  # before mod indexes: no deleted_at
_STAGING = struct.Struct(">BQB")  # slot, stream id, complete
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

KIND_STATE, KIND_SESSION, KIND_KV, KIND_FIELD = 1, 2, 3, 4
_HASH_PREFIX = 16

META_SLOT = b"state.slot"
META_STAGING = b"state.staging"

#: Bytes of records written per transaction while a snapshot is received.
STAGE_TXN_BYTES = 1 << 20
#: The overlay is flushed once it holds this many keys ...
FLUSH_KEYS = 1024
#: ... or after this many writes of the log without a flush (what a restart applies again).
FLUSH_WRITES = 16


class StateError(Exception):
    """The stored state cannot be used (see the message)."""


class StagingBusy(StateError):
    """A received snapshot is waiting to be installed: another stream cannot start now."""


def _db_names(slot: int) -> Tuple[bytes, bytes]:
    return b"kv.%d" % slot, b"sessions.%d" % slot


def _fields_name(slot: int) -> bytes:
    return b"hf.%d" % slot


def hash_prefix(key: bytes) -> bytes:
    """Where the fields of the hash at ``key`` are stored in ``hf.N``: under this prefix."""
    return blake2b(key, digest_size=_HASH_PREFIX, person=b"kvd hash fields").digest()


def _field_record(field: bytes, value: bytes) -> bytes:
    if len(field) <= INLINE_FIELD:
        return checksum.seal(b"\x00" + value)
    return checksum.seal(b"\x01" + _U32.pack(len(field)) + field + value)


def _header_record(key: bytes, mod: int, count: int, meta: Meta) -> bytes:
    if len(key) <= _INLINE_KEY:
        return checksum.seal(b"\x08" + _U64.pack(mod) + _U64.pack(count) + pack_meta(meta))
    return checksum.seal(b"\x09" + _U64.pack(mod) + _U64.pack(count) + pack_meta(meta) + _U32.pack(len(key)) + key)


def _state_key(slot: int) -> bytes:
    return b"state.%d" % slot


def lmdb_key(key: bytes) -> bytes:
    """Where ``key`` is stored: its SCAN position, then the key (or its head and digest when long)."""
    position = scan_position(key).to_bytes(8, "big")
    if len(key) <= _INLINE_KEY:
        return position + key
    return position + key[:_INLINE_KEY] + blake2b(key, digest_size=_DIGEST).digest()


def _position(dbkey: bytes) -> int:
    return int.from_bytes(dbkey[:8], "big")


def _kv_record(key: bytes, value: bytes, mod: int, meta: Meta) -> bytes:
    if len(key) <= _INLINE_KEY:
        return checksum.seal(b"\x06" + _U64.pack(mod) + pack_meta(meta) + value)
    return checksum.seal(b"\x07" + _U64.pack(mod) + pack_meta(meta) + _U32.pack(len(key)) + key + value)


class LmdbState(Overlay):
    """The durable keyspace: see the module docstring."""

    durable = True

    def __init__(self, flush_keys: int = FLUSH_KEYS, flush_writes: int = FLUSH_WRITES) -> None:
        self.flush_keys = flush_keys
        self.flush_writes = flush_writes
        self._writes_since_flush = 0
        self.path = "?"
        self._env: Optional[lmdb.Environment] = None
        self._meta = None
        self._dbs: Dict[bytes, object] = {}
        self._slot = 0
        self._machine = None
        #: Whether the machine has loaded the stored state (before that, nothing is flushed).
        self.loaded = False
        self._reset_overlay(0)
        self._flushing = False  # ``flush`` wrote into the transaction being committed
        self._staging: Optional["_StagingWriter"] = None
        self._staged_complete: Optional[int] = None  # stream id of a complete stream awaiting install
        self._scrub_at: Tuple[int, bytes] = (0, b"")
        #: Whole passes of ``scrub`` over the live state since it was opened.
        self.scrub_passes = 0
        #: Called with the error when a stored record is corrupt (the node fail-stops).
        self.on_failure: Optional[Callable[[Exception], None]] = None

    # ------------------------------------------------------------ wiring

    def bind(self, machine) -> None:
        """The machine whose applied index and sessions are flushed with the keys."""
        self._machine = machine

    def opened(self, env: lmdb.Environment, meta_db, path: str, grow_map: Callable[[], None]) -> None:
        """Called by the storage once its environment is open: the state opens its own databases."""
        self._env = env
        self.grow_map = grow_map
        self._meta = meta_db
        self.path = path
        for slot in (0, 1):
            for name in _db_names(slot) + (_fields_name(slot),):
                self._dbs[name] = env.open_db(name)
        with env.begin() as txn:
            raw = txn.get(META_SLOT, db=meta_db)
            self._slot = 0 if raw is None else self._unseal(raw, "state slot")[0]
            applied, clock, count, deleted_at, revision = self._read_state(txn, self._slot)
        if self._slot not in (0, 1):
            raise self._corrupt(StateError(f"state slot {self._slot} is neither 0 nor 1"))
        self._count = count
        self.deleted_at = deleted_at
        self.revision = revision
        self._forget_pending()
        self._flushing = False
        self._writes_since_flush = 0
        self._scrub_at = (0, b"")
        self.loaded = False
        self._staging = None
        self._staged_complete = None

    def closed(self) -> None:
        self._staging = None
        self._env = None
        self.loaded = False

    @property
    def _kv(self):
        return self._dbs[_db_names(self._slot)[0]]

    @property
    def _sessions(self):
        return self._dbs[_db_names(self._slot)[1]]

    @property
    def _fields(self):
        return self._dbs[_fields_name(self._slot)]

    # ------------------------------------------------------- the machine's view

    def load(self) -> Tuple[int, int, List[Tuple[bytes, bytes]]]:
        """(applied index, clock ms, [(client id, encoded session)]) of the live slot."""
        env = self._require_env()
        self._forget_pending()
        with env.begin() as txn:
            applied, clock, count, deleted_at, revision = self._read_state(txn, self._slot)
            sessions = [(bytes(k), self._unseal(v, f"session of client {bytes(k)!r}"))
                        for k, v in txn.cursor(db=self._sessions)]
        self._count = count
        self.deleted_at = deleted_at
        self.revision = revision
        self.loaded = True
        return applied, clock, sessions

    def _stored(self, key: bytes) -> Optional[bytes]:
        dbkey = lmdb_key(key)
        with self._require_env().begin(db=self._kv) as txn:
            raw = txn.get(dbkey)
        if raw is None:
            return None
        stored_key, value = self._decode_kv(dbkey, raw)
        return value if stored_key == key else None

    def _stored_with_meta(self, key: bytes):
        """(value or HASH, meta) of the stored key, (None, None) if not stored: one read where a put needs both."""
        dbkey = lmdb_key(key)
        with self._require_env().begin(db=self._kv) as txn:
            raw = txn.get(dbkey)
        if raw is None:
            return None, None
        stored_key, value, _, meta = self._decode_kv_full(dbkey, raw)
        return (value, meta) if stored_key == key else (None, None)

    def _stored_mod(self, key: bytes) -> Optional[int]:
        dbkey = lmdb_key(key)
        with self._require_env().begin(db=self._kv) as txn:
            raw = txn.get(dbkey)
        if raw is None:
            return None
        stored_key, _, mod = self._decode_kv_mod(dbkey, raw)
        return mod if stored_key == key else None

    def _stored_rev(self, key: bytes) -> Optional[Meta]:
        dbkey = lmdb_key(key)
        with self._require_env().begin(db=self._kv) as txn:
            raw = txn.get(dbkey)
        if raw is None:
            return None
        stored_key, _, _, meta = self._decode_kv_full(dbkey, raw)
        return meta if stored_key == key else None

    def _stored_header(self, key: bytes) -> Optional[Tuple[int, int]]:
        """(mod index, field count) of the stored hash at ``key``, None if no hash is stored there."""
        dbkey = lmdb_key(key)
        with self._require_env().begin(db=self._kv) as txn:
            raw = txn.get(dbkey)
        if raw is None:
            return None
        return self._decode_header(dbkey, raw, key)

    def _stored_hlen(self, key: bytes) -> int:
        header = self._stored_header(key)
        return 0 if header is None else header[1]

    def _stored_field(self, key: bytes, field: bytes) -> Optional[bytes]:
        dbkey = hash_prefix(key) + field_key(field)
        with self._require_env().begin(db=self._fields) as txn:
            raw = txn.get(dbkey)
        if raw is None:
            return None
        stored_field, value = self._decode_field(dbkey, raw)
        return value if stored_field == field else None

    def _stored_fields_from(self, key: bytes, start: bytes) -> Iterator[Tuple[bytes, bytes, bytes]]:
        """(field key, field, value) of the stored hash at ``key`` from ``start`` on; read in one transaction."""
        prefix = hash_prefix(key)
        n = len(prefix)
        with self._require_env().begin(db=self._fields) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix + start):
                return
            for dbkey, raw in cur.iternext():
                if dbkey[:n] != prefix:
                    return
                dbkey = bytes(dbkey)
                field, value = self._decode_field(dbkey, raw)
                yield dbkey[n:], field, value

    def _merged_from(self, start: int) -> Iterator[Tuple[int, bytes]]:
        """LMDB's keys from SCAN position ``start`` on, merged with the overlay's (which wins for a key in both)."""
        first = start.to_bytes(8, "big")
        overlay = sorted(item for item in ((lmdb_key(k), k, v) for k, v in self._pending.items()) if item[0] >= first)
        shadowed = {k for _, k, _ in overlay}
        i = 0
        if self._cleared:  # FLUSHDB: what is stored is gone, only the overlay's writes since count
            for dbkey, key, value in overlay:
                if value is not None:
                    yield _position(dbkey), key
            return
        with self._require_env().begin(db=self._kv) as txn:
            cur = txn.cursor()
            if cur.set_range(first):
                for dbkey in cur.iternext(keys=True, values=False):
                    dbkey = bytes(dbkey)
                    while i < len(overlay) and overlay[i][0] < dbkey:
                        if overlay[i][2] is not None:
                            yield _position(overlay[i][0]), overlay[i][1]
                        i += 1
                    key = self._key_of(dbkey, cur)
                    if key in shadowed:
                        continue  # the overlay's entry (same LMDB key) is yielded in its turn
                    yield _position(dbkey), key
        for dbkey, key, value in overlay[i:]:
            if value is not None:
                yield _position(dbkey), key

    def _key_of(self, dbkey: bytes, cur) -> bytes:
        if len(dbkey) <= 8 + _INLINE_KEY:
            return dbkey[8:]
        return self._decode_kv(dbkey, cur.value())[0]

    # ------------------------------------------------------- writes (the storage's)

    def flush(self, txn, force: bool = False) -> None:
        """
        Write the overlay, the changed sessions and the applied index into
        ``txn`` (the storage's), once the overlay holds ``flush_keys`` keys or
        ``flush_writes`` writes of the log went by without it (or ``force``:
        a compaction).  Between two flushes the log alone holds the newest
        applied writes, and a restart applies them again: at most
        ``flush_writes`` batches.  A batch of a thousand keys rather than each
        log write's few hundred makes a B-tree page written carry more of
        them (keys land in hash order, all over the tree).  Measured with
        fsync (300K random SETs of 1 KiB in writes of 256, storage alone):
        a flush per write 29.7K keys/s falling to 25K; 1024 keys or 16
        writes 46K keys/s, the slowest write 9 ms; 4096 or 64, 35K, 40 ms.
        """
        if self._machine is None:
            return
        self._writes_since_flush += 1
        pending_writes = len(self._pending) + self._field_writes
        if not force and pending_writes < self.flush_keys and self._writes_since_flush < self.flush_writes:
            return
        self._flushing = True
        applied, clock, sessions = self._machine.durable_changes()
        kv, sess, fields = self._kv, self._sessions, self._fields
        if self._cleared:
            # FLUSHDB: the stored keys go whole (LMDB frees their pages), not key by key.
            txn.drop(kv, delete=False)
            txn.drop(fields, delete=False)
        for key in self._drop_fields:  # hashes deleted or replaced: their stored fields go, one by one
            prefix = hash_prefix(key)
            cur = txn.cursor(db=fields)
            found = cur.set_range(prefix)
            while found and bytes(cur.key()[:len(prefix)]) == prefix:
                found = cur.delete()
        for key, value in self._pending.items():
            dbkey = lmdb_key(key)
            if value is None:
                txn.delete(dbkey, db=kv)
            elif isinstance(value, PendingHash):
                txn.put(dbkey, _header_record(key, self._pending_mod[key], value.count, self._pending_rev[key]), db=kv)
                prefix = hash_prefix(key)
                for field, item in value.fields.items():
                    if item is None:
                        txn.delete(prefix + field_key(field), db=fields)
                    else:
                        txn.put(prefix + field_key(field), _field_record(field, item), db=fields)
            else:
                txn.put(dbkey, _kv_record(key, value, self._pending_mod[key], self._pending_rev[key]), db=kv)
        for client_id, data in sessions.items():
            if data is None:
                txn.delete(client_id, db=sess)
            else:
                txn.put(client_id, checksum.seal(data), db=sess)
        txn.put(_state_key(self._slot), checksum.seal(_STATE.pack(applied, clock, self._count, self.deleted_at, self.revision)),
                db=self._meta)

    def committed(self) -> None:
        """The transaction ``flush`` was given has committed."""
        if not self._flushing:
            return
        self._flushing = False
        self._writes_since_flush = 0
        self._forget_pending()
        if self._machine is not None:
            self._machine.durable_flushed()

    def install(self, txn, token: bytes) -> None:
        """
        Swap in the staged slot named by ``token`` (a received snapshot's
        data) inside the storage's transaction.  The machine reloads it once
        the transaction has committed (``KVMachine.restore``).
        """
        stream_id = _token_stream(token)
        raw = txn.get(META_STAGING, db=self._meta)
        if raw is None:
            raise StateError("a snapshot is to be installed but no state was received for it")
        slot, staged_id, complete = _STAGING.unpack(self._unseal(raw, "staging record"))
        if staged_id != stream_id or not complete or slot == self._slot:
            raise StateError(
                f"the snapshot names stream {stream_id}, the staged state is stream {staged_id} "
                f"({'complete' if complete else 'incomplete'})"
            )
        txn.put(META_SLOT, checksum.seal(bytes((slot,))), db=self._meta)
        txn.delete(META_STAGING, db=self._meta)

    def installed(self) -> None:
        """After ``install``'s transaction committed: the other slot is live now."""
        with self._require_env().begin() as txn:
            raw = txn.get(META_SLOT, db=self._meta)
        self._slot = self._unseal(raw, "state slot")[0]
        self._scrub_at = (0, b"")
        self._forget_pending()
        self._staged_complete = None

    def settle_staging(self) -> None:
        """A complete stream that was not installed by now never will be: let the next one in."""
        self._staged_complete = None

    # ------------------------------------------------------- scrubbing

    def scrub(self, max_records: int) -> bool:
        """
        Verify the checksums of the next ``max_records`` stored records of
        the live slot (sessions, then keys, then hash fields), resuming where the last call
        stopped; True once a whole pass is done.  A value nobody reads is
        checked too, within minutes, without a restart having to read the
        whole state (which would make restarts as slow as the data is big).
        """
        env = self._require_env()
        cursor_db, position = self._scrub_at
        order = [self._sessions, self._kv, self._fields]
        if cursor_db not in (0, 1, 2):
            cursor_db, position = 0, b""
        left = max_records
        with env.begin() as txn:
            while left > 0:
                cur = txn.cursor(db=order[cursor_db])
                found = cur.set_range(position) if position else cur.first()
                while found and left > 0:
                    key, value = bytes(cur.key()), cur.value()
                    if cursor_db == 0:
                        self._unseal(value, f"session of client {key!r}")
                    elif cursor_db == 1:
                        self._decode_kv(key, value)
                    else:
                        self._decode_field(key, value)
                    left -= 1
                    found = cur.next()
                    position = bytes(cur.key()) if found else b""
                if found:
                    break
                if cursor_db == 2:
                    self._scrub_at = (0, b"")
                    self.scrub_passes += 1
                    return True
                cursor_db, position = cursor_db + 1, b""
        self._scrub_at = (cursor_db, position)
        return False

    # ------------------------------------------------------- snapshot streams

    def open_stream(self, min_index: int) -> "StateStream":
        """A consistent read of the live state, as a stream; its applied index must reach ``min_index``."""
        return StateStream(self, min_index)

    def begin(self, stream_id: int) -> "_StagingWriter":
        """Start receiving stream ``stream_id`` into the other slot (``StagingBusy`` while one awaits install)."""
        if self._staged_complete is not None:
            raise StagingBusy("a received snapshot is waiting to be installed")
        if self._staging is not None:
            self._staging.abandoned = True
        self._staging = _StagingWriter(self, stream_id, 1 - self._slot)
        return self._staging

    # ------------------------------------------------------- internals

    def _read_state(self, txn, slot: int) -> Tuple[int, int, int, int, int]:
        """(applied index, clock ms, key count, deleted_at, revision) of ``slot``."""
        raw = txn.get(_state_key(slot), db=self._meta)
        if raw is None:
            return 0, 0, 0, 0, 0
        payload = self._unseal(raw, f"state record of slot {slot}")
        if len(payload) == _STATE_V1.size:
            return _STATE_V1.unpack(payload) + (0, 0)
        if len(payload) == _STATE_V2.size:
            return _STATE_V2.unpack(payload) + (0,)
        if len(payload) != _STATE.size:
            raise self._corrupt(CorruptRecord(f"state record of slot {slot} has {len(payload)} bytes"))
        return _STATE.unpack(payload)

    def _decode_kv(self, dbkey: bytes, raw) -> Tuple[bytes, bytes]:
        key, value, _, _ = self._decode_kv_full(dbkey, raw, want_meta=False)
        return key, value

    def _decode_header(self, dbkey: bytes, raw, key: bytes) -> Optional[Tuple[int, int]]:
        """(mod index, field count) if the record at ``dbkey`` is the header of the hash at ``key``, else None."""
        record = self._unseal(raw, f"value at {bytes(dbkey[8:40])!r}")
        if record[:1] not in (b"\x04", b"\x05", b"\x08", b"\x09"):
            return None
        stored_key, _, mod, _ = self._decode_kv_full(dbkey, raw, record)
        if stored_key != key:
            return None
        return mod, _U64.unpack_from(record, 9)[0]

    def _decode_field(self, dbkey: bytes, raw) -> Tuple[bytes, bytes]:
        """(field, value) of a field record."""
        record = self._unseal(raw, f"hash field at {bytes(dbkey[:40])!r}")
        layout = record[:1]
        if layout == b"\x00" and len(dbkey) <= _HASH_PREFIX + 8 + INLINE_FIELD:
            return bytes(dbkey[_HASH_PREFIX + 8:]), record[1:]
        if layout == b"\x01" and len(record) >= 5:
            (n,) = _U32.unpack_from(record, 1)
            if len(record) >= 5 + n:
                return record[5:5 + n], record[5 + n:]
        raise self._corrupt(CorruptRecord(f"hash field record at {bytes(dbkey[:40])!r} has an unknown layout"))

    def _decode_kv_mod(self, dbkey: bytes, raw) -> Tuple[bytes, object, int]:
        """(key, value or HASH, mod index) of a value record (see the module docstring for its layouts)."""
        return self._decode_kv_full(dbkey, raw, want_meta=False)[:3]

    def _decode_kv_full(self, dbkey: bytes, raw, record: Optional[bytes] = None,
                        want_meta: bool = True) -> Tuple[bytes, object, int, Meta]:
        """
        (key, value or HASH, mod index, meta) of a value record (see the module docstring for its layouts);
        the meta is None unless ``want_meta`` (a read of the value skips it).
        """
        if record is None:
            record = self._unseal(raw, f"value at {bytes(dbkey[8:40])!r}")
        layout = record[:1]
        if layout in (b"\x06", b"\x07", b"\x08", b"\x09"):
            return self._decode_with_meta(dbkey, record, layout, want_meta)
        return self._decode_before_meta(dbkey, record, layout) + (NO_META,)

    def _decode_with_meta(self, dbkey: bytes, record: bytes, layout: bytes,
                          want_meta: bool) -> Tuple[bytes, object, int, Meta]:
        """Layouts 6-9: the mod index, a hash's count, the meta (kvd.kv.revisions), then as layouts 2-5."""
        head = 17 if layout in (b"\x08", b"\x09") else 9
        try:
            if len(record) <= head:
                raise CodecError("record too short")
            if want_meta:
                meta, pos = unpack_meta(record, head)
            else:
                meta, pos = None, meta_end(record, head)
                if pos > len(record):
                    raise CodecError("truncated revision meta")
        except CodecError:
            raise self._corrupt(CorruptRecord(f"value record at {bytes(dbkey[8:40])!r} has a malformed revision"))
        mod = _U64.unpack_from(record, 1)[0]
        if layout == b"\x06":
            return bytes(dbkey[8:]), record[pos:], mod, meta
        if layout == b"\x08" and len(record) == pos:
            return bytes(dbkey[8:]), HASH, mod, meta
        if len(record) >= pos + 4:
            (n,) = _U32.unpack_from(record, pos)
            if layout == b"\x07":
                return record[pos + 4:pos + 4 + n], record[pos + 4 + n:], mod, meta
            if len(record) == pos + 4 + n:
                return record[pos + 4:], HASH, mod, meta
        raise self._corrupt(CorruptRecord(f"value record at {bytes(dbkey[8:40])!r} is malformed"))

    def _decode_before_meta(self, dbkey: bytes, record: bytes, layout: bytes) -> Tuple[bytes, object, int]:
        """Layouts 0-5, written before revisions."""
        if layout == b"\x04" and len(record) == 17:
            return bytes(dbkey[8:]), HASH, _U64.unpack_from(record, 1)[0]
        if layout == b"\x05" and len(record) >= 21:
            (n,) = _U32.unpack_from(record, 17)
            return record[21:21 + n], HASH, _U64.unpack_from(record, 1)[0]
        if layout == b"\x02" and len(record) >= 9:
            return bytes(dbkey[8:]), record[9:], _U64.unpack_from(record, 1)[0]
        if layout == b"\x03" and len(record) >= 13:
            (n,) = _U32.unpack_from(record, 9)
            return record[13:13 + n], record[13 + n:], _U64.unpack_from(record, 1)[0]
        if layout == b"\x00":
            return bytes(dbkey[8:]), record[1:], 0
        if layout == b"\x01" and len(record) >= 5:
            (n,) = _U32.unpack_from(record, 1)
            return record[5:5 + n], record[5 + n:], 0
        raise self._corrupt(CorruptRecord(f"value record at {bytes(dbkey[8:40])!r} has an unknown layout"))

    def _unseal(self, raw, what: str) -> bytes:
        try:
            return checksum.unseal(raw, f"{what} in {self.path}")
        except CorruptRecord as e:
            raise self._corrupt(e) from None

    def _corrupt(self, error: Exception) -> Exception:
        failure = CorruptStorage(str(error))
        if self.on_failure is not None:
            self.on_failure(failure)
        return failure

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StateError("the state's storage is not open")
        return self._env


def make_token(stream_id: int) -> bytes:
    return b"kvd-stream:" + stream_id.to_bytes(8, "big")


def _token_stream(token: bytes) -> int:
    token = bytes(token)
    if not token.startswith(b"kvd-stream:") or len(token) != 19:
        raise StateError(f"a snapshot to install does not name a received stream ({token[:24]!r})")
    return int.from_bytes(token[11:], "big")


class StateStream:
    """
    A snapshot being read: one LMDB read transaction (a consistent view that
    later writes do not change), read out in pieces of bounded size.
    """

    def __init__(self, state: LmdbState, min_index: int) -> None:
        env = state._require_env()
        self._txn = env.begin()
        slot = state._slot
        raw_state = self._txn.get(_state_key(slot), db=state._meta)
        applied, _, self.key_count, _, _ = state._read_state(self._txn, slot)
        if applied < min_index:
            self._txn.abort()
            raise StateError(f"the state on disk is at index {applied}, the snapshot at {min_index}")
        self.applied_index = applied
        kv, sessions = (state._dbs[name] for name in _db_names(slot))
        self._records = self._iter(raw_state, sessions, kv, state._dbs[_fields_name(slot)])
        self._buffer = bytearray()
        self.count = 0
        self.crc = 0
        self.done = False

    def _iter(self, raw_state, sessions_db, kv_db, fields_db) -> Iterator[bytes]:
        yield pack_stream_record(KIND_STATE, b"", raw_state if raw_state is not None else checksum.seal(_STATE.pack(0, 0, 0, 0, 0)))
        for db, kind in ((sessions_db, KIND_SESSION), (kv_db, KIND_KV), (fields_db, KIND_FIELD)):
            for key, value in self._txn.cursor(db=db):
                yield pack_stream_record(kind, key, value)

    def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` more of the stream; b"" at its end (then ``count`` and ``crc`` are final)."""
        buffer = self._buffer
        while len(buffer) < max_bytes and not self.done:
            record = next(self._records, None)
            if record is None:
                self.done = True
                self.close()
                break
            self.count += 1
            buffer += record
        piece = bytes(buffer[:max_bytes])
        del buffer[:max_bytes]
        self.crc = checksum.crc_update(self.crc, piece)
        return piece

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None


class _StagingWriter:
    """Receives one stream into the non-live slot, in transactions of ``STAGE_TXN_BYTES``."""

    def __init__(self, state: LmdbState, stream_id: int, slot: int) -> None:
        self.state = state
        self.stream_id = stream_id
        self.slot = slot
        self.abandoned = False
        self._buffer = bytearray()
        self._batch: List[Tuple[int, bytes, bytes]] = []
        self._batch_bytes = 0
        self.count = 0
        self.crc = 0
        self._seen_state = False
        self._clear()

    def _write(self, apply) -> None:
        env = self.state._require_env()
        while True:
            try:
                with env.begin(write=True) as txn:
                    apply(txn)
                return
            except lmdb.MapFullError:
                self.state.grow_map()

    def _clear(self) -> None:
        kv_name, sessions_name = _db_names(self.slot)
        state = self.state

        def apply(txn) -> None:
            txn.drop(state._dbs[kv_name], delete=False)
            txn.drop(state._dbs[sessions_name], delete=False)
            txn.drop(state._dbs[_fields_name(self.slot)], delete=False)
            txn.delete(_state_key(self.slot), db=state._meta)
            txn.put(META_STAGING, checksum.seal(_STAGING.pack(self.slot, self.stream_id, 0)), db=state._meta)

        self._write(apply)

    def feed(self, data: bytes) -> None:
        """More of the stream; records are checked and written in bounded transactions."""
        self._check_live()
        self.crc = checksum.crc_update(self.crc, data)
        buffer = self._buffer
        buffer += data
        pos = 0
        for kind, key_start, value_start, end in stream_records(buffer):
            self._record(kind, bytes(buffer[key_start:value_start - 4]), bytes(buffer[value_start:end]))
            pos = end
        del buffer[:pos]
        if self._batch_bytes >= STAGE_TXN_BYTES:
            self._write_batch()

    def _record(self, kind: int, key: bytes, value: bytes) -> None:
        checksum.unseal(value, f"received snapshot record {self.count}")  # CorruptRecord: the stream is refused
        if kind == KIND_STATE:
            if self._seen_state or key:
                raise CorruptRecord("received snapshot has a second or malformed state record")
            self._seen_state = True
        elif kind not in (KIND_SESSION, KIND_KV, KIND_FIELD) or not self._seen_state:
            raise CorruptRecord(f"received snapshot record of kind {kind} out of place")
        self.count += 1
        self._batch.append((kind, key, value))
        self._batch_bytes += len(key) + len(value)

    def _write_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        state = self.state
        kv_db, sessions_db = (state._dbs[name] for name in _db_names(self.slot))
        fields_db = state._dbs[_fields_name(self.slot)]

        def apply(txn) -> None:
            for kind, key, value in batch:
                if kind == KIND_KV:
                    txn.put(key, value, db=kv_db, append=True)
                elif kind == KIND_FIELD:
                    txn.put(key, value, db=fields_db, append=True)
                elif kind == KIND_SESSION:
                    txn.put(key, value, db=sessions_db)
                else:
                    txn.put(_state_key(self.slot), value, db=state._meta)

        self._write(apply)

    def finish(self, count: int, crc: int) -> bytes:
        """The stream ended with ``count`` records of checksum ``crc``: verify, complete, and name it."""
        self._check_live()
        if self._buffer:
            raise CorruptRecord(f"received snapshot ends inside a record ({len(self._buffer)} bytes left)")
        if count != self.count or crc != self.crc:
            raise CorruptRecord(
                f"received snapshot has {self.count} records (crc {self.crc:08x}), "
                f"the sender sent {count} (crc {crc:08x})"
            )
        self._write_batch()
        state = self.state

        def apply(txn) -> None:
            txn.put(META_STAGING, checksum.seal(_STAGING.pack(self.slot, self.stream_id, 1)), db=state._meta)

        self._write(apply)
        state._staging = None
        state._staged_complete = self.stream_id
        return make_token(self.stream_id)

    def abort(self) -> None:
        """The stream broke off: what was staged is garbage, cleared by the next one."""
        if self.state._staging is self:
            self.state._staging = None
        self.abandoned = True

    def _check_live(self) -> None:
        if self.abandoned:
            raise StateError(f"snapshot stream {self.stream_id} was replaced by a newer one")
