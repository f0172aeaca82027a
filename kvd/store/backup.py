# -*- test-case-name: tests.store.test_backup -*-
"""
Backup files of a node's applied state, and the two offline operations on a
stopped node's data dir: seeding a new one-node cluster from a backup
(``seed_from_backup``) and turning a survivor into a one-node cluster when a
majority is lost for good (``force_new_cluster``).

A backup file is the very stream a joining follower is sent
(kvd.store.state ``StateStream``: records ``kind(1) klen(4) key vlen(4)
value``, every value sealed with its CRC32C; the state record, the client
sessions with expiry's and the script cache's NUL-named records, the keys,
the hash fields), between a header and a trailer:

    magic  b"KVDBACKUP" (9)  version u16  header length u32  header (JSON)  header CRC32C u32
    body   the state stream, as many bytes as the trailer says
    magic  b"KVDBKEND" (8)   record count u64  body length u64  body CRC32C u32

The header (JSON) names the cluster and node it came from, the applied index
and its term, the configuration then, the key count and when it was taken
(the taking node's wall clock, for people; nothing reads it).  Every number a
reader needs to check the file is in it: a flipped bit anywhere (header,
body, trailer), a truncated file or a file of another version is refused
with a message that says which, before anything is written.

No part of a file is ever held whole: the writer takes pieces of the state
stream, the reader hands out pieces of the body while it checks them.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import json
import os
import struct
from typing import BinaryIO, Callable, Iterator, Optional, Tuple

from kvd.raft.messages import Configuration, Entry, EntryKind, HardState, Snapshot
from kvd.store import checksum
from kvd.store.schema import CorruptRecord, stream_records

MAGIC = b"KVDBACKUP"
TRAILER_MAGIC = b"KVDBKEND"
FORMAT_VERSION = 1
_HEAD = struct.Struct(">HI")  # version, header length
_TRAILER = struct.Struct(">8sQQI")  # magic, record count, body length, body crc
_U32 = struct.Struct(">I")
#: A header longer than this is not ours (it holds a few names and numbers).
MAX_HEADER_BYTES = 1 << 20
#: Bytes read from a file at a time.
READ_BYTES = 256 * 1024


class BackupError(Exception):
    """The file is not a complete, intact kvd backup of a version this build reads; the message says why."""


# ================================================================ writing
def header_bytes(header: dict) -> bytes:
    """What a file starts with, for ``header`` (JSON-able)."""
    payload = json.dumps(header, sort_keys=True).encode("utf-8")
    return MAGIC + _HEAD.pack(FORMAT_VERSION, len(payload)) + payload + _U32.pack(checksum.crc(payload))


def trailer_bytes(count: int, length: int, crc: int) -> bytes:
    return _TRAILER.pack(TRAILER_MAGIC, count, length, crc)


def make_header(cluster_id: str, node_id: str, snapshot: Snapshot, key_count: int, taken_ms: int) -> dict:
    config = snapshot.config
    return {
        "format": FORMAT_VERSION,
        "cluster_id": cluster_id,
        "node_id": node_id,
        "index": snapshot.index,
        "term": snapshot.term,
        "voters": list(config.voters),
        "learners": list(config.learners),
        "key_count": key_count,
        "taken_ms": taken_ms,
    }


class BackupWriter:
    """
    A backup file as pieces: the header, then the state ``stream``'s pieces,
    then the trailer (``read(n)`` returns b"" at the end).  The stream is
    closed when it ends, and by ``close``.
    """

    def __init__(self, header: dict, stream) -> None:
        self.header = header
        self.stream = stream
        self._pending = header_bytes(header)
        self._length = 0
        self._ended = False

    def read(self, max_bytes: int) -> bytes:
        if self._pending:
            out, self._pending = self._pending, b""
            return out
        if self._ended:
            return b""
        piece = self.stream.read(max_bytes)
        if piece:
            self._length += len(piece)
            return piece
        self._ended = True
        self.stream.close()
        return trailer_bytes(self.stream.count, self._length, self.stream.crc)

    def close(self) -> None:
        self.stream.close()


# ================================================================ asking a node for one
#: The HTTP path a node serves its backup at (kvd.discovery.backup).
HTTP_PATH = "/v1/backup"
#: The Authorization scheme: the request is signed with the cluster CA's key.
AUTH_SCHEME = "KVD-CA-Signature"
#: Seconds a signed request stays valid either side of the node's clock.
AUTH_WINDOW_S = 300


def signed_message(node_id: str, timestamp: int, nonce: str) -> bytes:
    """What a backup request signs: the node asked, when, and a nonce (the node takes each once)."""
    return b"kvd-backup-v1\n%s\n%d\n%s" % (node_id.encode("utf-8"), timestamp, nonce.encode("ascii"))


# ================================================================ reading
class BackupReader:
    """
    Reads and checks a backup file from ``f`` (a binary file object):
    ``header`` once constructed, then ``body()`` yields the body in pieces,
    checking records, length and checksum as it goes; it raises
    ``BackupError`` at the first thing wrong, after the last piece at the
    latest.  ``count`` and ``crc`` are the trailer's once ``body()`` is done.
    """

    def __init__(self, f: BinaryIO, name: str = "the backup") -> None:
        self.f = f
        self.name = name
        self.count = 0
        self.crc = 0
        self.length = 0
        head = self._read_exact(len(MAGIC) + _HEAD.size, "its header")
        if head[: len(MAGIC)] != MAGIC:
            raise BackupError(f"{name} is not a kvd backup (it does not start with {MAGIC.decode()})")
        version, size = _HEAD.unpack_from(head, len(MAGIC))
        if version != FORMAT_VERSION:
            raise BackupError(f"{name} has backup format version {version}; this kvd reads version {FORMAT_VERSION} only")
        if size > MAX_HEADER_BYTES:
            raise BackupError(f"{name} has a damaged header (it claims {size} bytes)")
        payload = self._read_exact(size + _U32.size, "its header")
        header, (crc,) = payload[:size], _U32.unpack_from(payload, size)
        if checksum.crc(header) != crc:
            raise BackupError(f"{name} has a damaged header (checksum mismatch)")
        try:
            self.header = json.loads(header.decode("utf-8"))
            for field in ("cluster_id", "node_id", "index", "term", "key_count"):
                self.header[field]
        except (ValueError, KeyError, TypeError) as e:
            raise BackupError(f"{name} has a header kvd cannot read ({e})") from None

    def _read_exact(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise BackupError(f"{self.name} is truncated: it ends inside {what}")
        return data

    def body(self, piece_bytes: int = READ_BYTES) -> Iterator[bytes]:
        """The body in pieces, each checked before it is handed out (the last one with the trailer)."""
        tail = b""  # the last bytes read, which may be the trailer
        records = _RecordCounter(self.name)
        crc = 0
        length = 0
        while True:
            data = self.f.read(piece_bytes)
            if not data:
                break
            data = tail + data
            # The last bytes of the file are the trailer, whatever comes before (a body may hold its magic).
            piece, tail = data[:-_TRAILER.size], data[-_TRAILER.size:]
            if piece:
                records.feed(piece)
                crc = checksum.crc_update(crc, piece)
                length += len(piece)
                yield piece
        if len(tail) < _TRAILER.size or tail[:8] != TRAILER_MAGIC:
            raise BackupError(f"{self.name} is truncated (or damaged at its end): "
                              f"it ends after {length + len(tail)} bytes of body without its trailer")
        _, count, want_length, want_crc = _TRAILER.unpack(tail)
        if length != want_length:
            raise BackupError(f"{self.name} is damaged: its body has {length} bytes, its trailer says {want_length}")
        if crc != want_crc:
            raise BackupError(f"{self.name} is damaged: body checksum mismatch ({crc:08x}, the trailer says {want_crc:08x})")
        records.end()
        if records.count != count:
            raise BackupError(f"{self.name} is damaged: {records.count} records, its trailer says {count}")
        self.count, self.crc, self.length = count, crc, length


class _RecordCounter:
    """Splits the body into its records and checks each value's seal, in bounded memory (one record at most)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        for kind, _key_start, value_start, end in stream_records(buffer):
            if kind not in (1, 2, 3, 4) or (kind == 1) != (self.count == 0):
                raise BackupError(f"{self.name} is damaged: record {self.count} has kind {kind} out of place")
            try:
                checksum.unseal(memoryview(buffer)[value_start:end], f"record {self.count}")
            except CorruptRecord as e:
                raise BackupError(f"{self.name} is damaged: {e}") from None
            self.count += 1
            pos = end
        del buffer[:pos]

    def end(self) -> None:
        if self._buffer:
            raise BackupError(f"{self.name} is damaged: its body ends inside a record")
        if self.count == 0:
            raise BackupError(f"{self.name} is damaged: its body holds no state record")


def verify_file(path: str) -> dict:
    """Read the whole file at ``path`` and check it; its header, or ``BackupError``."""
    try:
        with open(path, "rb") as f:
            reader = BackupReader(f, path)
            for _ in reader.body():
                pass
    except OSError as e:
        raise BackupError(f"cannot read {path}: {e.strerror or e}") from None
    header = dict(reader.header)
    header["records"], header["body_bytes"] = reader.count, reader.length
    return header


# ================================================================ offline operations on a data dir
def _open(data_dir: str, cluster_id: str, node_id: str):
    from kvd.store.lmdb import LmdbStorage
    from kvd.store.state import LmdbState

    state = LmdbState()
    storage = LmdbStorage(data_dir, state=state)
    storage.open(cluster_id, node_id)
    return storage, state


def seed_from_backup(path: str, data_dir: str, cluster_id: str, node_id: str, member_address: str,
                     progress: Optional[Callable[[int], None]] = None) -> dict:
    """
    Make ``data_dir`` (which must not exist or be empty) the data of node
    ``node_id``, the one voter of a new cluster ``cluster_id``, holding the
    state of the backup at ``path``: the state goes in as a received snapshot
    would (``LmdbState.begin``: staged, checked, swapped in by the Raft
    snapshot record), at the backup's index and term, with a configuration of
    this node alone.  The file is checked whole first; the header is returned.
    """
    header = verify_file(path)
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise BackupError(f"{data_dir} is not empty: a restore makes a new node, it does not overwrite one")
    storage, state = _open(data_dir, cluster_id, node_id)
    try:
        with open(path, "rb") as f:
            reader = BackupReader(f, path)
            writer = state.begin(1)
            done = 0
            for piece in reader.body():
                writer.feed(piece)
                done += len(piece)
                if progress is not None:
                    progress(done)
            token = writer.finish(reader.count, reader.crc)
        index, term = int(reader.header["index"]), int(reader.header["term"])
        config = Configuration.make(voters=[node_id], addresses={node_id: member_address})
        storage.save(HardState(term=term, vote=None, commit=index), [], Snapshot(index, term, config, token), sync=True)
    finally:
        storage.close()
    return header


def force_new_cluster(data_dir: str, cluster_id: str, node_id: str, member_address: str) -> Tuple[dict, Configuration]:
    """
    Rewrite the membership of a stopped node's data dir to this node alone
    (etcd's --force-new-cluster): keep its snapshot, state and whole log, and
    append one configuration entry naming only itself, in its current term.
    The latest configuration in a log rules as soon as it is appended
    (kvd.raft.core), so on start it is the only voter, elects itself and
    commits everything in its log, this entry included.

    Returns what the data dir held (indexes, term) and the configuration it
    had.  Entries the lost members had and this node lacks are lost; entries
    only this node had, never committed, are committed now.
    """
    storage, _ = _open(data_dir, cluster_id, node_id)
    try:
        restored = storage.load()
        hard, snapshot, entries = restored.hard_state, restored.snapshot, restored.entries
        if hard.term == 0 and snapshot is None and not entries:
            raise BackupError(f"{data_dir} holds no cluster state (the node never joined a cluster): nothing to recover")
        old = snapshot.config if snapshot is not None else Configuration()
        for entry in entries:
            if entry.kind is EntryKind.CONFIG:
                old = Configuration.decode(entry.data)
        last = entries[-1].index if entries else (snapshot.index if snapshot is not None else 0)
        last_term = entries[-1].term if entries else (snapshot.term if snapshot is not None else 0)
        address = old.address_of(node_id) or member_address
        config = Configuration.make(voters=[node_id], addresses={node_id: address})
        term = max(hard.term, last_term)
        storage.save(HardState(term=term, vote=hard.vote, commit=hard.commit), [Entry(last + 1, term, EntryKind.CONFIG, config.encode())], None, sync=True)
        state_index = storage.state.load()[0]
    finally:
        storage.close()
    kept = {
        "term": term,
        "commit_index": hard.commit,
        "last_index": last,
        "applied_on_disk": state_index,
        "snapshot_index": snapshot.index if snapshot is not None else 0,
        "config_index": last + 1,
    }
    return kept, old
