# -*- test-case-name: tests.store.test_lmdb -*-
"""
The on-disk layout of a node's LMDB environment and the binary codec for
the records stored in it.

Three named sub-databases live in one environment:

* ``meta``: small records keyed by the ``META_*`` constants (identity stamp,
  format version, hard state);
* ``log``: one record per Raft entry, keyed by the entry index as a
  big-endian u64 so that LMDB's byte order is index order;
* ``snapshot``: at most one record (``SNAPSHOT_KEY``), the latest snapshot.

Records are packed with ``struct`` (never pickle: a data directory must not
be able to run code when it is read).  Every decoder validates lengths and
raises ``CorruptRecord`` rather than returning garbage.

On disk every value above is sealed with its CRC32C (kvd.store.checksum):
kvd.store.lmdb seals what these encoders return and unseals before decoding,
so a record the disk changed is refused, never decoded.  Format version 1
had no checksums; kvd.store.lmdb refuses a version 1 data dir at open.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import struct
from typing import Iterator, Optional, Tuple

from kvd.raft.messages import Configuration, Entry, EntryKind, HardState, Snapshot

#: Bumped whenever a record layout below changes incompatibly.
#: 1: unsealed records.  2: every record sealed with its CRC32C (kvd.store.checksum).
FORMAT_VERSION = 2

DB_META = b"meta"
DB_LOG = b"log"
DB_SNAPSHOT = b"snapshot"
#: Named databases used by the environment (LMDB needs the count up front): these
#: three and the applied state's two slots of three (kvd.store.state), and one spare.
MAX_DBS = 10

META_FORMAT_VERSION = b"format_version"
META_CLUSTER_ID = b"cluster_id"
META_NODE_ID = b"node_id"
META_HARD_STATE = b"hard_state"

SNAPSHOT_KEY = b"current"

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
# index, term, kind; the data follows.  The index is repeated in the value
# (it is also the key) so that a record can be checked against its key.
_ENTRY_HEAD = struct.Struct(">QQB")
# term, commit, has_vote; the vote (UTF-8) follows when has_vote is 1.
_HARD_STATE_HEAD = struct.Struct(">QQB")
# index, term, configuration length; configuration then data follow.
_SNAPSHOT_HEAD = struct.Struct(">QQI")

_MAX_U64 = (1 << 64) - 1


class CorruptRecord(ValueError):
    """A stored record cannot be decoded."""


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value <= _MAX_U64:
        raise ValueError(f"{name}={value} does not fit in an unsigned 64-bit field")


# ------------------------------------------------------------------ log keys


def log_key(index: int) -> bytes:
    """The ``log`` key of the entry at ``index``."""
    _check_u64("index", index)
    return _U64.pack(index)


def log_index(key: bytes) -> int:
    """Inverse of :func:`log_key`."""
    if len(key) != _U64.size:
        raise CorruptRecord(f"log key of {len(key)} bytes, expected {_U64.size}")
    return _U64.unpack(key)[0]


# ------------------------------------------------------------------- entries


def encode_entry(entry: Entry) -> bytes:
    _check_u64("index", entry.index)
    _check_u64("term", entry.term)
    return _ENTRY_HEAD.pack(entry.index, entry.term, int(entry.kind)) + bytes(entry.data)


def decode_entry(value: bytes) -> Entry:
    value = bytes(value)
    if len(value) < _ENTRY_HEAD.size:
        raise CorruptRecord(f"entry record of {len(value)} bytes is shorter than its header")
    index, term, kind = _ENTRY_HEAD.unpack_from(value)
    try:
        kind = EntryKind(kind)
    except ValueError:
        raise CorruptRecord(f"entry {index} has unknown kind {kind}") from None
    return Entry(index=index, term=term, kind=kind, data=value[_ENTRY_HEAD.size :])


# ---------------------------------------------------------------- hard state


def encode_hard_state(hard_state: HardState) -> bytes:
    _check_u64("term", hard_state.term)
    _check_u64("commit", hard_state.commit)
    if hard_state.vote is None:
        return _HARD_STATE_HEAD.pack(hard_state.term, hard_state.commit, 0)
    return _HARD_STATE_HEAD.pack(hard_state.term, hard_state.commit, 1) + hard_state.vote.encode("utf-8")


def decode_hard_state(value: bytes) -> HardState:
    value = bytes(value)
    if len(value) < _HARD_STATE_HEAD.size:
        raise CorruptRecord(f"hard state record of {len(value)} bytes is shorter than its header")
    term, commit, has_vote = _HARD_STATE_HEAD.unpack_from(value)
    rest = value[_HARD_STATE_HEAD.size :]
    if has_vote == 0:
        if rest:
            raise CorruptRecord("hard state without a vote has trailing bytes")
        vote: Optional[str] = None
    elif has_vote == 1:
        try:
            vote = rest.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptRecord("hard state vote is not UTF-8") from None
    else:
        raise CorruptRecord(f"hard state has_vote flag is {has_vote}")
    return HardState(term=term, vote=vote, commit=commit)


# ------------------------------------------------------------------ snapshot


def encode_snapshot(snapshot: Snapshot) -> bytes:
    _check_u64("index", snapshot.index)
    _check_u64("term", snapshot.term)
    config = snapshot.config.encode()
    return _SNAPSHOT_HEAD.pack(snapshot.index, snapshot.term, len(config)) + config + bytes(snapshot.data)


def decode_snapshot(value: bytes) -> Snapshot:
    value = bytes(value)
    if len(value) < _SNAPSHOT_HEAD.size:
        raise CorruptRecord(f"snapshot record of {len(value)} bytes is shorter than its header")
    index, term, config_len = _SNAPSHOT_HEAD.unpack_from(value)
    start = _SNAPSHOT_HEAD.size
    if len(value) < start + config_len:
        raise CorruptRecord("snapshot record is shorter than its configuration")
    try:
        config = Configuration.decode(value[start : start + config_len])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptRecord(f"snapshot configuration cannot be decoded: {e}") from None
    return Snapshot(index=index, term=term, config=config, data=value[start + config_len :])


# -------------------------------------------------------------- meta scalars


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(value: bytes) -> int:
    if len(value) != _U32.size:
        raise CorruptRecord(f"u32 record of {len(value)} bytes")
    return _U32.unpack(bytes(value))[0]


# ------------------------------------------------------ snapshot stream records
# A streamed snapshot (kvd.store.state) and a backup file's body (kvd.store.backup)
# are the same sequence of records: kind (u8), key length (u32), key, value length
# (u32), value; each value sealed with its CRC32C.

_STREAM_HEAD = struct.Struct(">BI")


def pack_stream_record(kind: int, key, value) -> bytes:
    return _STREAM_HEAD.pack(kind, len(key)) + bytes(key) + _U32.pack(len(value)) + bytes(value)


def stream_records(buffer) -> Iterator[Tuple[int, int, int, int]]:
    """
    The whole records at the front of ``buffer`` (bytes that arrived so far),
    as ``(kind, key_start, value_start, end)`` offsets; a partial record at the
    end stops it, to be completed by the next bytes.  The caller drops
    ``buffer[:end]`` of the last one once done with them.
    """
    pos, n, head = 0, len(buffer), _STREAM_HEAD.size
    while n - pos >= head:
        kind, klen = _STREAM_HEAD.unpack_from(buffer, pos)
        if n - pos < head + klen + _U32.size:
            return
        (vlen,) = _U32.unpack_from(buffer, pos + head + klen)
        value_start = pos + head + klen + _U32.size
        end = value_start + vlen
        if end > n:
            return
        yield kind, pos + head, value_start, end
        pos = end
