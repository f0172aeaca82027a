# -*- test-case-name: tests.sim.test_durable -*-
"""
The durable keyspace of a simulated node: the contract of
kvd.store.state.LmdbState (the applied state on disk beside the log), kept
in memory on the node's ``SimDisk`` so that the simulator checks the rules
the node's storage lives by.

The image.  The state's part of a disk image (``StateImage``) is two slots
(applied index, clock, keys, client sessions), the number of the live one,
and the staging record of a stream being received into the other one
(slot, stream id, complete).  Every change is an *op* carried by a write of
the disk, applied to the image the node reads (``SimDisk.visible``, like
LMDB's committed pages) when it is written and to the durable image when
that write is synced or survives a crash, so a crash keeps exactly the ops
of the writes it keeps:

- ``flush`` rides on every write of the Ready loop and on every compaction
  (the overlay of applied-but-unwritten keys, the changed sessions, the
  applied index and clock), so the state on disk never gets ahead of the log
  it was applied from;
- ``install`` rides on the write that persists a received snapshot: the
  staged slot becomes live in the same write that records the snapshot and
  drops the log;
- ``stage-*`` are writes of their own, unsynced (the receiver's staging
  transactions): a crash may keep any prefix of them, a half-written slot
  that only the next stream's ``begin`` clears.

Streams.  ``open_stream`` copies the live slot as it is written now (what an
LMDB read transaction sees: later flushes, compactions and installs do not
change it) and serializes it as records ``kind key value`` in a fixed order;
``begin`` returns a writer that parses the pieces, writes them in batches and,
on ``finish(count, crc)``, marks the stream complete and returns the token
the InstallSnapshot carries.  ``StagingBusy`` while a complete stream waits
for its install (until ``settle_staging``).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import struct
import zlib
from typing import Dict, Iterator, List, Optional, Tuple

from kvd.kv.hashes import PendingHash
from kvd.kv.keyspace import Keyspace, Overlay, scan_position
from kvd.kv.revisions import pack_meta, unpack_meta
from kvd.sim.invariants import Violation

FLUSH, INSTALL, STAGE_BEGIN, STAGE_RECORDS, STAGE_DONE = "flush", "install", "stage-begin", "stage-records", "stage-done"
#: A hash is a KIND_HASH record (mod index, field count, meta) followed by one KIND_FIELD record per field
#: (field, value), as LmdbState keeps a header and one record per field; a KIND_KV record is (mod index, meta,
#: value), the meta (kvd.kv.revisions) packed as LmdbState packs it.
KIND_STATE, KIND_SESSION, KIND_KV, KIND_HASH, KIND_FIELD = 1, 2, 3, 4, 5
_HEAD = struct.Struct(">BI")
_U32 = struct.Struct(">I")
_STATE = struct.Struct(">QQQQ")  # applied index, clock, deleted_at (kvd.kv.keyspace), revision
_MOD = struct.Struct(">Q")  # a KIND_KV record's value starts with its key's mod index
_TOKEN = b"sim-stream:"

#: Records per staging write.
STAGE_BATCH = 3


class StateError(Exception):
    """The state cannot do what was asked (see the message)."""


class StagingBusy(StateError):
    """A received snapshot is waiting to be installed: another stream cannot start now."""


# ============================================================ the image
class Slot:
    """One copy of the applied state."""

    __slots__ = ("applied", "clock", "keys", "sessions", "base", "receiving_hash")

    def __init__(self) -> None:
        self.applied = 0
        self.clock = 0
        self.keys = Keyspace()
        self.sessions: Dict[bytes, bytes] = {}
        #: The applied index it was received at (0: built by applying the log here).
        self.base = 0
        #: (key, mod index, meta) of the hash whose KIND_FIELD records a stream is writing.
        self.receiving_hash: Optional[tuple] = None

    def copy(self) -> "Slot":
        s = Slot()
        s.applied, s.clock, s.base = self.applied, self.clock, self.base
        s.keys = Keyspace.from_items(self.keys.records_in_order())
        s.keys.deleted_at = self.keys.deleted_at
        s.keys.revision = self.keys.revision
        s.sessions = dict(self.sessions)
        return s

    def records(self) -> List[Tuple[int, bytes, bytes]]:
        """The slot as a stream's records, in a fixed order: equal slots give equal records."""
        out = [(KIND_STATE, b"", _STATE.pack(self.applied, self.clock, self.keys.deleted_at, self.keys.revision))]
        out += [(KIND_SESSION, cid, self.sessions[cid]) for cid in sorted(self.sessions)]
        for k, v, mod, meta in self.keys.records_in_order():
            if isinstance(v, list):
                out.append((KIND_HASH, k, _MOD.pack(mod) + _MOD.pack(len(v)) + pack_meta(meta)))
                out += [(KIND_FIELD, field, value) for field, value in v]
            else:
                out.append((KIND_KV, k, _MOD.pack(mod) + pack_meta(meta) + v))
        return out


class StateImage:
    """The state's part of a disk image."""

    __slots__ = ("live", "slots", "staging")

    def __init__(self) -> None:
        self.live = 0
        self.slots = [Slot(), Slot()]
        #: (slot, stream id, complete, crc) of the stream in the non-live slot, if any.
        self.staging: Optional[Tuple[int, int, bool, int]] = None

    def copy(self) -> "StateImage":
        image = StateImage()
        image.live, image.staging = self.live, self.staging
        image.slots = [s.copy() for s in self.slots]
        return image

    def apply(self, op: tuple, node_id: str, durable: bool) -> None:
        kind = op[0]
        if kind == FLUSH:
            _, slot_no, applied, clock, kv, mods, metas, deleted_at, revision, sessions, cleared = op
            slot = self.slots[slot_no]
            slot.applied, slot.clock = applied, clock
            if cleared:  # FLUSHDB: LmdbState drops the stored keys whole
                slot.keys = Keyspace()
            for key, value in kv.items():
                if value is None:
                    slot.keys.delete(key)
                elif isinstance(value, PendingHash):  # a hash's header and the fields written
                    if value.fresh:
                        slot.keys.delete(key)
                    for field, item in value.fields.items():
                        if item is None:
                            slot.keys.hdel(key, field)
                        else:
                            slot.keys.hset(key, field, item, mods[key], metas[key])
                    slot.keys.set_mod(key, mods[key], metas[key])
                    if slot.keys.hlen(key) != value.count:
                        raise Violation("state flush", "%s: hash %r has %d fields, its header says %d"
                                        % (node_id, key, slot.keys.hlen(key), value.count))
                else:
                    slot.keys.put(key, value, mods[key], metas[key])
            slot.keys.deleted_at = deleted_at
            slot.keys.revision = revision
            for cid, data in sessions.items():
                if data is None:
                    slot.sessions.pop(cid, None)
                else:
                    slot.sessions[cid] = data
        elif kind == INSTALL:
            _, slot_no, stream_id = op
            staging = self.staging
            if staging is None or staging[0] != slot_no or staging[1] != stream_id or not staging[2] or slot_no == self.live:
                raise Violation("snapshot install", "%s: %s image installs stream %d into slot %d, but the staging record is %r (live slot %d)"
                                % (node_id, "durable" if durable else "written", stream_id, slot_no, staging, self.live))
            crc = _crc_of(self.slots[slot_no].records())
            if crc != staging[3]:
                raise Violation("snapshot install", "%s: %s image installs stream %d, but its slot does not hold what was received "
                                "(a half-written stream)" % (node_id, "durable" if durable else "written", stream_id))
            self.live = slot_no
            self.staging = None
        elif kind == STAGE_BEGIN:
            _, slot_no, stream_id = op
            self.slots[slot_no] = Slot()
            self.staging = (slot_no, stream_id, False, 0)
        elif kind == STAGE_RECORDS:
            _, slot_no, records = op
            slot = self.slots[slot_no]
            for kind_, key, value in records:
                if kind_ == KIND_STATE:
                    slot.applied, slot.clock, slot.keys.deleted_at, slot.keys.revision = _STATE.unpack(value)
                    slot.base = slot.applied
                elif kind_ == KIND_SESSION:
                    slot.sessions[key] = value
                elif kind_ == KIND_HASH:
                    slot.receiving_hash = (key, _MOD.unpack_from(value)[0], unpack_meta(value, 2 * _MOD.size)[0])
                elif kind_ == KIND_FIELD:
                    hash_key, mod, meta = slot.receiving_hash
                    slot.keys.hset(hash_key, key, value, mod, meta)
                else:
                    meta, pos = unpack_meta(value, _MOD.size)
                    slot.keys.put(key, value[pos:], _MOD.unpack_from(value)[0], meta)
        elif kind == STAGE_DONE:
            _, slot_no, stream_id, crc = op
            self.staging = (slot_no, stream_id, True, crc)
        else:
            raise AssertionError("unknown state op %r" % (kind,))


def _pack(kind: int, key: bytes, value: bytes) -> bytes:
    return _HEAD.pack(kind, len(key)) + key + _U32.pack(len(value)) + value


def _crc_of(records) -> int:
    crc = 0
    for kind, key, value in records:
        crc = zlib.crc32(_pack(kind, key, value), crc)
    return crc


def make_token(stream_id: int) -> bytes:
    return _TOKEN + stream_id.to_bytes(8, "big")


def token_stream(token: bytes) -> int:
    token = bytes(token)
    if not token.startswith(_TOKEN) or len(token) != len(_TOKEN) + 8:
        raise StateError("a snapshot to install does not name a received stream (%r)" % (token[:24],))
    return int.from_bytes(token[len(_TOKEN):], "big")


# ============================================================ the keyspace
class SimState(Overlay):
    """The durable keyspace of ``kvd.kv.machine.KVMachine`` on a ``SimDisk``: see the module docstring."""

    durable = True

    def __init__(self, disk, skip_flush=lambda: False) -> None:
        self.disk = disk
        #: Whether the next flush waits for a later write (drawn by the cluster; LmdbState batches flushes).
        self.skip_flush = skip_flush
        self.skipped_flushes = 0
        self._flushing = False
        disk.attach_state(self)
        self._machine = None
        self.loaded = False
        self._reset_overlay(len(self._live.keys))
        self._staging: Optional["_Writer"] = None
        self._staged_complete: Optional[int] = None

    @property
    def _live(self) -> Slot:
        image = self.disk.visible
        return image.slots[image.live]

    @property
    def live_slot(self) -> int:
        return self.disk.visible.live

    # ------------------------------------------------------------ wiring
    def bind(self, machine) -> None:
        self._machine = machine

    def load(self) -> Tuple[int, int, List[Tuple[bytes, bytes]]]:
        live = self._live
        self._forget_pending()
        self._count = len(live.keys)
        self.deleted_at = live.keys.deleted_at
        self.revision = live.keys.revision
        self.loaded = True
        return live.applied, live.clock, sorted(live.sessions.items())

    # ------------------------------------------------------------ the machine's view
    def _stored(self, key: bytes) -> Optional[bytes]:
        return self._live.keys.get(key)

    def _stored_mod(self, key: bytes) -> Optional[int]:
        return self._live.keys.mod_index(key)

    def _stored_rev(self, key: bytes):
        return self._live.keys.rev_meta(key)

    def _stored_field(self, key: bytes, field: bytes) -> Optional[bytes]:
        return self._live.keys.hget(key, field)

    def _stored_hlen(self, key: bytes) -> int:
        return self._live.keys.hlen(key)

    def _stored_fields_from(self, key: bytes, start: bytes):
        return iter(list(self._live.keys.hfields_from(key, start)))

    def _merged_from(self, start: int) -> Iterator[Tuple[int, bytes]]:
        keys = set() if self._cleared else {e[8:] for e in self._live.keys._index}
        for k, v in self._pending.items():
            if v is None:
                keys.discard(k)
            else:
                keys.add(k)
        return iter(sorted(item for item in ((scan_position(k), k) for k in keys) if item[0] >= start))

    # ------------------------------------------------------------ writes (the disk's)
    def flush(self, ops: list, force: bool = False) -> None:
        """
        Add the overlay, the changed sessions and the applied index to a
        write's ``ops`` -- or, as LmdbState does between its batches, not
        (``skip_flush`` draws it; a compaction always flushes): the log alone
        then holds the newest applied writes, and a restart applies them again.
        """
        if self._machine is None:
            return
        if not force and self.skip_flush():
            self.skipped_flushes += 1
            return
        self._flushing = True
        applied, clock, sessions = self._machine.durable_changes()
        kv = {k: v.copy() if isinstance(v, PendingHash) else v for k, v in self._pending.items()}
        ops.append((FLUSH, self.disk.visible.live, applied, clock, kv, dict(self._pending_mod),
                    dict(self._pending_rev), self.deleted_at, self.revision, sessions, self._cleared))

    def committed(self) -> None:
        if not self._flushing:
            return
        self._flushing = False
        self._forget_pending()
        if self._machine is not None:
            self._machine.durable_flushed()

    def install(self, ops: list, token: bytes) -> None:
        """Swap in the staged slot named by ``token``, in the write that records the snapshot."""
        stream_id = token_stream(token)
        image = self.disk.visible
        staging = image.staging
        if staging is None or staging[1] != stream_id or not staging[2] or staging[0] == image.live:
            raise Violation("snapshot install", "%s: the snapshot names stream %d, the staged state is %r"
                            % (self.disk.node_id, stream_id, staging))
        ops.append((INSTALL, staging[0], stream_id))

    def installed(self) -> None:
        self._forget_pending()
        self._staged_complete = None
        self._count = len(self._live.keys)
        self.deleted_at = self._live.keys.deleted_at
        self.revision = self._live.keys.revision

    def settle_staging(self) -> None:
        self._staged_complete = None

    # ------------------------------------------------------------ streams
    def open_stream(self, min_index: int) -> "SimStream":
        live = self._live
        if live.applied < min_index:
            raise StateError("the state on disk is at index %d, the snapshot at %d" % (live.applied, min_index))
        return SimStream(live.copy())

    def begin(self, stream_id: int) -> "_Writer":
        if self._staged_complete is not None:
            raise StagingBusy("a received snapshot is waiting to be installed")
        if self._staging is not None:
            self._staging.abandoned = True
        self._staging = _Writer(self, stream_id, 1 - self.disk.visible.live)
        return self._staging

    @property
    def receiving(self) -> bool:
        """A stream is being written into the staging slot."""
        return self._staging is not None


class SimStream:
    """A consistent read of a slot (copied when opened), read out in pieces."""

    def __init__(self, slot: Slot) -> None:
        self.applied_index = slot.applied
        self.key_count = len(slot.keys)
        records = slot.records()
        self.count = len(records)
        self._data = b"".join(_pack(*r) for r in records)
        self._pos = 0
        self.crc = 0
        self.done = False

    def read(self, max_bytes: int) -> bytes:
        piece = self._data[self._pos:self._pos + max_bytes]
        self._pos += len(piece)
        self.crc = zlib.crc32(piece, self.crc)
        if self._pos >= len(self._data):
            self.done = True
        return piece

    def close(self) -> None:
        self._data = b""


class _Writer:
    """Receives one stream into the non-live slot, in staging writes of ``STAGE_BATCH`` records."""

    def __init__(self, state: SimState, stream_id: int, slot: int) -> None:
        self.state = state
        self.stream_id = stream_id
        self.slot = slot
        self.abandoned = False
        self._buffer = b""
        self._batch: List[Tuple[int, bytes, bytes]] = []
        self.count = 0
        self.crc = 0
        self.record_crc = 0
        self._seen_state = False
        state.disk.put_state([(STAGE_BEGIN, slot, stream_id)])

    def feed(self, data: bytes) -> None:
        self._check_live()
        self.crc = zlib.crc32(data, self.crc)
        buffer = self._buffer + data
        pos = 0
        while len(buffer) - pos >= _HEAD.size:
            kind, klen = _HEAD.unpack_from(buffer, pos)
            vstart = pos + _HEAD.size + klen + 4
            if vstart > len(buffer):
                break
            (vlen,) = _U32.unpack_from(buffer, vstart - 4)
            if vstart + vlen > len(buffer):
                break
            key, value = buffer[pos + _HEAD.size:vstart - 4], buffer[vstart:vstart + vlen]
            if kind == KIND_STATE:
                if self._seen_state:
                    raise StateError("a second state record")
                self._seen_state = True
            elif kind not in (KIND_SESSION, KIND_KV, KIND_HASH, KIND_FIELD) or not self._seen_state:
                raise StateError("record of kind %d out of place" % kind)
            self.count += 1
            self._batch.append((kind, key, value))
            pos = vstart + vlen
        self._buffer = buffer[pos:]
        if len(self._batch) >= STAGE_BATCH:
            self._write_batch()

    def _write_batch(self) -> None:
        if self._batch:
            self.record_crc = zlib.crc32(b"".join(_pack(*r) for r in self._batch), self.record_crc)
            self.state.disk.put_state([(STAGE_RECORDS, self.slot, self._batch)])
            self._batch = []

    def finish(self, count: int, crc: int) -> bytes:
        self._check_live()
        if self._buffer or count != self.count or crc != self.crc:
            raise StateError("received %d records (crc %08x, %d bytes left over), the sender sent %d (crc %08x)"
                             % (self.count, self.crc, len(self._buffer), count, crc))
        self._write_batch()
        self.state.disk.put_state([(STAGE_DONE, self.slot, self.stream_id, self.record_crc)])
        self.state._staging = None
        self.state._staged_complete = self.stream_id
        return make_token(self.stream_id)

    def abort(self) -> None:
        if self.state._staging is self:
            self.state._staging = None
        self.abandoned = True

    def _check_live(self) -> None:
        if self.abandoned:
            raise StateError("snapshot stream %d was replaced by a newer one" % self.stream_id)
