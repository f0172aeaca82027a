# -*- test-case-name: tests.store.test_lmdb -*-
"""
Durable storage of one node's Raft state (hard state, log, snapshot) in an
LMDB environment.

Every mutation is one LMDB write transaction, so a crash at any instant
leaves either all of a ``save`` or none of it.  Durability (fsync) is paid at
most once per call, never per entry.  One exception: a hard state whose only
change is its commit index is kept in memory and written with the next
transaction (or a clean ``close``); a crash may lose it, which Raft allows.

How syncing works (measured with ``python -m kvd.store.bench``):

* ``sync_mode="ordered"`` (the default): the environment keeps LMDB's data
  flush at commit but skips the separate meta-page flush (``metasync=False``);
  when the caller asks for durability, one ``env.sync(True)`` after the
  commit flushes the meta page.  LMDB documents this mode as keeping the
  database consistent across an OS crash or power loss; a ``sync=False``
  save can be lost by such a crash but never corrupts the file.
* ``sync_mode="single"``: the environment is opened with ``sync=False,
  metasync=False`` and only ``env.sync(True)`` flushes.  One flush instead of
  two, and just as durable once ``save`` returns, but while a commit is not yet
  flushed (a ``sync=False`` save, or a power cut in the middle of the flush)
  LMDB may find a meta page pointing at unwritten pages unless the
  filesystem preserves write order.
* ``sync=False`` on the constructor turns all flushing off (tests, the
  simulator): process crashes still lose nothing committed, OS crashes may.

One write at a time: the Ready loop issues the next only once the last has
completed (LMDB forbids concurrent write transactions anyway).  Given a
``deliver`` (the node passes ``reactor.callFromThread``), the loop's writes
run on a writer thread (kvd.store.writer) and complete later; everything
else (open, load, compaction, a snapshot installed from the leader, reads)
stays on the caller's thread.

Permissions: the data directory is made ``0700`` and LMDB's files ``0600``
whatever the process umask (set explicitly on every open, so a directory or
file created by an older version, or under a permissive umask, is tightened):
the log holds every key and value.

A disk that lies is caught, never served: every record is sealed with its
CRC32C (kvd.store.checksum) when written and checked when read, and a
mismatch raises ``CorruptStorage`` naming the data dir and the record.
``open`` also refuses a ``data.mdb`` shorter than its meta page says
(LMDB maps the file: reading a page past its end would kill the process
with SIGBUS, no message) and a data dir of format version 1 (no
checksums).  The node turns each of these, and any LMDB or I/O error, into a
fail-stop (kvd.node.service).

It implements the Raft core's ``Storage`` protocol (kvd.raft.storage), as the
simulator's disk does, so the one Ready loop (kvd.replica) runs on either.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import lmdb

from kvd.raft.messages import Entry, HardState, Snapshot
from kvd.raft.storage import Restored
from kvd.store import schema
from kvd.store.checksum import seal, unseal
from kvd.store.schema import CorruptRecord
from kvd.store.writer import Deliver, WriterThread

MiB = 1 << 20
GiB = 1 << 30

SYNC_MODES = ("ordered", "single")

#: The data directory's mode, and that of the files in it.
DIR_MODE = 0o700
FILE_MODE = 0o600


class StorageError(Exception):
    """Base class of every error raised by this module."""


class DataDirMismatch(StorageError):
    """The data directory was stamped by another cluster or another node."""


class StorageFull(StorageError):
    """The LMDB map cannot grow any further (``map_size_max_bytes``)."""


class CorruptStorage(StorageError):
    """The stored state is internally inconsistent, fails its checksum, or cannot be decoded."""


class UnsupportedFormat(StorageError):
    """The data dir was written by another storage format version."""


class LmdbStorage:
    """
    One node's Raft storage in one LMDB environment (a directory holding
    ``data.mdb`` and ``lock.mdb``).
    """

    def __init__(
        self,
        path: str,
        *,
        map_size_bytes: int = 64 * MiB,
        map_size_max_bytes: int = 8 * GiB,
        sync: bool = True,
        sync_mode: str = "ordered",
        state=None,
        deliver: Optional[Deliver] = None,
    ) -> None:
        if map_size_bytes <= 0 or map_size_max_bytes < map_size_bytes:
            raise ValueError(
                f"need 0 < map_size_bytes ({map_size_bytes}) <= map_size_max_bytes ({map_size_max_bytes})"
            )
        if sync_mode not in SYNC_MODES:
            raise ValueError(f"sync_mode must be one of {SYNC_MODES}, not {sync_mode!r}")
        self.path = os.fspath(path)
        self._initial_map_size = map_size_bytes
        self._max_map_size = map_size_max_bytes
        self._sync = sync
        self._sync_mode = sync_mode
        self._env: Optional[lmdb.Environment] = None
        self._db_meta = self._db_log = self._db_snapshot = None
        self._map_size = map_size_bytes
        #: A hard state that differs from the stored one only in its commit index, not
        #: written yet: it rides with the next transaction (see ``save``).
        self._pending_hard: Optional[HardState] = None
        #: The term and vote last written, to tell a commit-only change.
        self._stored_term_vote: Optional[Tuple[int, Optional[str]]] = None
        #: The applied key/value state kept beside the log (kvd.store.state.LmdbState), if any:
        #: flushed inside every write transaction, swapped in by a received snapshot.
        self.state = state
        #: Where writes of the Ready loop run when ``deliver`` is given (kvd.store.writer).
        self._writer: Optional[WriterThread] = WriterThread(deliver) if deliver is not None else None

    # ------------------------------------------------------------ lifecycle

    def open(self, cluster_id: str, node_id: str) -> None:
        """
        Open (creating if needed) the environment and check that it belongs to
        ``cluster_id``/``node_id``; a fresh directory is stamped with both.
        """
        if self._env is not None:
            raise StorageError(f"storage at {self.path} is already open")
        os.makedirs(self.path, mode=DIR_MODE, exist_ok=True)
        # makedirs' mode is masked by the umask, and an existing dir keeps its own.
        # A directory we may write but do not own (a shared bind mount) cannot
        # be changed: it stays as its owner made it.
        try:
            _chmod(self.path, DIR_MODE)
        except PermissionError:
            pass
        # LMDB does not remember a grown map size and the file only holds the
        # pages in use, so leave headroom over it: a big store then does not
        # start with a MapFullError on its first write.
        data_file = os.path.join(self.path, "data.mdb")
        existing = os.path.getsize(data_file) if os.path.exists(data_file) else 0
        if existing == 0 and os.path.exists(data_file):
            # LMDB would take an empty file for a new environment: a node that has voted would
            # start afresh, having forgotten its vote and log (LMDB writes its meta pages as it
            # creates the file, so only a truncation leaves one empty).
            raise CorruptStorage(f"data dir {self.path}: data.mdb is empty (the file was truncated)")
        map_size = max(self._initial_map_size, min(2 * existing, self._max_map_size), existing)
        if self._sync and self._sync_mode == "ordered":
            env_sync, env_metasync = True, False
        else:
            env_sync, env_metasync = False, False
        try:
            env = lmdb.open(
                self.path,
                map_size=map_size,
                max_dbs=schema.MAX_DBS,
                subdir=True,
                sync=env_sync,
                metasync=env_metasync,
                # Our values are read once at load; readahead only wastes page
                # cache on a large log.
                readahead=False,
                mode=FILE_MODE,
            )
        except (lmdb.InvalidError, lmdb.CorruptedError) as e:  # the meta pages themselves are cut or garbled
            raise CorruptStorage(f"data dir {self.path}: data.mdb cannot be opened: {e}") from None
        try:
            # Before any page is read: only the meta pages have been (by read(2), not the map).
            self._check_file_size(env, data_file)
            for name in os.listdir(self.path):
                if name.endswith(".mdb"):
                    _chmod(os.path.join(self.path, name), FILE_MODE)
            self._db_meta = env.open_db(schema.DB_META)
            self._db_log = env.open_db(schema.DB_LOG)
            self._db_snapshot = env.open_db(schema.DB_SNAPSHOT)
            self._env = env
            self._map_size = env.info()["map_size"]
            self._write(lambda txn: self._stamp(txn, cluster_id, node_id), sync=True)
            if self.state is not None:
                self.state.opened(env, self._db_meta, self.path, self._grow_map)
        except BaseException:
            self._env = None
            env.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()  # a write under way completes first (what it said it would write, it writes)
        if self._env is not None and self._pending_hard is not None:
            try:
                self._write(lambda txn: None, sync=False, with_state=False)  # a clean stop keeps the last commit index
            except Exception:
                pass  # it need not be durable (``save``); a failing disk is told by the write that failed
        if self.state is not None:
            self.state.closed()
        if self._env is not None:
            self._env.close()
            self._env = None
        self._pending_hard = None
        self._stored_term_vote = None

    def _check_file_size(self, env: lmdb.Environment, data_file: str) -> None:
        """CorruptStorage if ``data.mdb`` ends before the last page its meta page says is in use."""
        page_size = env.stat()["psize"]
        needed = (env.info()["last_pgno"] + 1) * page_size
        size = os.path.getsize(data_file)
        if size < needed:
            raise CorruptStorage(
                f"data dir {self.path}: data.mdb is {size} bytes, shorter than the {needed} bytes "
                f"its meta page says are in use (the file was truncated)"
            )

    def _stamp(self, txn, cluster_id: str, node_id: str) -> None:
        meta = self._db_meta
        version = txn.get(schema.META_FORMAT_VERSION, db=meta)
        stored_cluster = txn.get(schema.META_CLUSTER_ID, db=meta)
        stored_node = txn.get(schema.META_NODE_ID, db=meta)
        if version is None and stored_cluster is None and stored_node is None:
            txn.put(schema.META_FORMAT_VERSION, seal(schema.encode_u32(schema.FORMAT_VERSION)), db=meta)
            txn.put(schema.META_CLUSTER_ID, seal(cluster_id.encode("utf-8")), db=meta)
            txn.put(schema.META_NODE_ID, seal(node_id.encode("utf-8")), db=meta)
            return
        if version is None or stored_cluster is None or stored_node is None:
            raise CorruptStorage(f"data dir {self.path} has a partial identity stamp")
        version = self._read_format_version(version)
        if version != schema.FORMAT_VERSION:
            raise UnsupportedFormat(
                f"data dir {self.path} has storage format version {version}"
                + (" (records without checksums)" if version == 1 else "")
                + f", this build reads version {schema.FORMAT_VERSION} only: "
                + (f"upgrade it with the node stopped (python -m kvd.store.upgrade {self.path}), or " if version == 1 else "")
                + "rebuild this node from the others (wipe its data dir and join it again)"
            )
        stored_cluster = self._unseal(stored_cluster, "cluster id").decode("utf-8", "replace")
        stored_node = self._unseal(stored_node, "node id").decode("utf-8", "replace")
        if stored_cluster != cluster_id:
            raise DataDirMismatch(
                f"data dir {self.path} belongs to cluster {stored_cluster!r}, "
                f"but this node is configured for cluster {cluster_id!r}"
            )
        if stored_node != node_id:
            raise DataDirMismatch(
                f"data dir {self.path} belongs to node {stored_node!r}, "
                f"but this node is configured as {node_id!r}"
            )

    def _read_format_version(self, value) -> int:
        """The stamped format version: a bare u32 (version 1 wrote it unsealed), else sealed."""
        try:
            if len(value) == 4:
                return schema.decode_u32(value)
            return schema.decode_u32(unseal(value, "format version"))
        except CorruptRecord as e:
            raise CorruptStorage(f"data dir {self.path}: {e}") from None

    def _unseal(self, value, what: str) -> bytes:
        """The payload of a sealed record; CorruptStorage naming the data dir and ``what`` if it fails its checksum."""
        try:
            return unseal(value, what)
        except CorruptRecord as e:
            raise CorruptStorage(f"data dir {self.path}: {e}") from None

    # ----------------------------------------------------------------- reads

    def load(self) -> Restored:
        """The hard state, snapshot and post-snapshot log, as last committed."""
        env = self._require_open()
        with env.begin() as txn:
            hard_state = self._pending_hard or self._read_hard_state(txn)
            snapshot = self._read_snapshot(txn)
            base = snapshot.index if snapshot is not None else 0
            entries: List[Entry] = []
            cursor = txn.cursor(db=self._db_log)
            if cursor.set_range(schema.log_key(base + 1)):
                for key, value in cursor:
                    entries.append(self._decode_entry(key, value))
        if entries:
            expected = base + 1
            for entry in entries:
                if entry.index != expected:
                    raise CorruptStorage(
                        f"log in {self.path} has a gap: expected index {expected}, found {entry.index}"
                    )
                expected += 1
        return Restored(hard_state=hard_state, snapshot=snapshot, entries=entries)

    def snapshot(self) -> Optional[Snapshot]:
        """The stored snapshot, if any."""
        env = self._require_open()
        with env.begin() as txn:
            return self._read_snapshot(txn)

    def stats(self) -> Dict[str, int]:
        """Numbers for metrics; cheap (no scan of the log)."""
        env = self._require_open()
        with env.begin() as txn:
            count = txn.stat(self._db_log)["entries"]
            cursor = txn.cursor(db=self._db_log)
            first = schema.log_index(cursor.key()) if cursor.first() else 0
            last = schema.log_index(cursor.key()) if cursor.last() else 0
            snapshot = self._read_snapshot(txn)
        info = env.info()
        page_size = env.stat()["psize"]
        return {
            "entries": count,
            "first_index": first,
            "last_index": last,
            "snapshot_index": snapshot.index if snapshot is not None else 0,
            "map_size": info["map_size"],
            "map_size_max": self._max_map_size,
            "bytes_used": (info["last_pgno"] + 1) * page_size,
        }

    # ---------------------------------------------------------------- writes

    def save(
        self,
        hard_state: Optional[HardState],
        entries: Sequence[Entry],
        snapshot: Optional[Snapshot],
        sync: bool,
    ) -> None:
        """
        Persist one batch in one transaction, flushed once if ``sync``.

        In order: a ``snapshot`` (installed from the leader) replaces the
        stored one and discards the whole log; ``entries`` replace any stored
        entry at or after ``entries[0].index`` (a conflicting suffix); the
        ``hard_state`` replaces the stored one.  Entries must be contiguous
        and continue the log (or the snapshot) without a gap: anything else is
        a caller bug and raises ``ValueError`` with nothing written.
        """
        apply = self._batch(hard_state, entries, snapshot, sync)
        if apply is None:
            return
        state = self._state_to_flush()
        self._transact(apply, sync=sync, state=state)
        self._saved(hard_state, snapshot, state)

    def write(
        self,
        hard_state: Optional[HardState],
        entries: Sequence[Entry],
        snapshot: Optional[Snapshot],
        sync: bool,
        done: Callable[..., None],
    ) -> None:
        """
        The Ready loop's write (kvd.raft.storage.Storage).  With a writer
        thread (``deliver`` given) the transaction and its flush run there and
        ``done(error)`` comes later on the caller's thread; a snapshot
        installed from the leader is still written here, at once (it is rare,
        and it swaps the state the reactor reads).  Without one: ``save``,
        then ``done()``.
        """
        if self._writer is None or snapshot is not None:
            self.save(hard_state, entries, snapshot, sync)
            done()
            return
        apply = self._batch(hard_state, entries, snapshot, sync)
        if apply is None:
            done()
            return
        state = self._state_to_flush()
        self._on_writer(lambda: self._transact(apply, sync=sync, state=state),
                        lambda: self._saved(hard_state, None, state), done)

    def _on_writer(self, work: Callable[[], None], after: Callable[[], None], done: Callable[..., None]) -> None:
        """``work()`` on the writer thread; back on ours, ``after()`` then ``done()``, or ``done(error)``."""

        def then(error: Optional[BaseException]) -> None:
            if error is not None:
                done(error)
                return
            after()
            done()

        self._writer.submit(work, then)

    def _batch(
        self,
        hard_state: Optional[HardState],
        entries: Sequence[Entry],
        snapshot: Optional[Snapshot],
        sync: bool,
    ) -> Optional[Callable[[object], None]]:
        """What ``save`` writes, as a function of the transaction; None if nothing needs a transaction now."""
        entries = list(entries)
        _check_contiguous(entries)

        def apply(txn) -> None:
            if snapshot is not None:
                self._check_snapshot_not_older(txn, snapshot)
                if self.state is not None:
                    self.state.install(txn, snapshot.data)
                txn.put(schema.SNAPSHOT_KEY, seal(schema.encode_snapshot(self._snapshot_record(snapshot))), db=self._db_snapshot)
                txn.drop(self._db_log, delete=False)
            if entries:
                self._append(txn, entries)
            if hard_state is not None:
                txn.put(schema.META_HARD_STATE, seal(schema.encode_hard_state(hard_state)), db=self._db_meta)

        if hard_state is None and not entries and snapshot is None:
            return None
        if not entries and snapshot is None and not sync and self._commit_only(hard_state):
            # Only the commit index moved.  Raft needs it nowhere on disk (a restarted node
            # learns it again from the leader, and the applied state keeps its own index),
            # yet a transaction of its own costs a flush of the data file, on the path of
            # every reply: it is written with the next transaction instead.
            self._pending_hard = hard_state
            return None
        return apply

    def _saved(self, hard_state: Optional[HardState], snapshot: Optional[Snapshot], state) -> None:
        """After a batch's transaction committed (and was flushed if asked)."""
        self._committed(state)
        if hard_state is not None:
            self._stored_term_vote = (hard_state.term, hard_state.vote)
        if snapshot is not None and self.state is not None:
            self.state.installed()

    def compact(self, snapshot: Snapshot, done: Optional[Callable[..., None]] = None) -> None:
        """
        Store a locally taken snapshot and drop the entries it covers; with a
        writer thread and ``done``, there (dropping ten thousand entries and
        flushing the state is the longest write the node makes), ``done(error
        or nothing)`` later; else here and now, then ``done()``.
        """

        def apply(txn) -> None:
            self._check_snapshot_not_older(txn, snapshot)
            txn.put(schema.SNAPSHOT_KEY, seal(schema.encode_snapshot(self._snapshot_record(snapshot))), db=self._db_snapshot)
            cursor = txn.cursor(db=self._db_log)
            if not cursor.first():
                return
            while cursor.key() and schema.log_index(cursor.key()) <= snapshot.index:
                if not cursor.delete():
                    break

        # The state must reach the snapshot's index before the log below it goes.
        if self._writer is None or done is None:
            self._write(apply, sync=True, flush_state=True)
            if done is not None:
                done()
            return
        state = self._state_to_flush()
        self._on_writer(lambda: self._transact(apply, sync=True, state=state, flush_state=True),
                        lambda: self._committed(state), done)

    # -------------------------------------------------------------- internals

    def _append(self, txn, entries: List[Entry]) -> None:
        first = entries[0].index
        cursor = txn.cursor(db=self._db_log)
        if cursor.set_range(schema.log_key(first)):
            while cursor.delete():
                pass
        if cursor.last():
            expected = schema.log_index(cursor.key()) + 1
        else:
            snapshot = self._read_snapshot(txn)
            expected = (snapshot.index if snapshot is not None else 0) + 1
        if first != expected:
            raise ValueError(
                f"entries starting at index {first} do not continue the stored log, "
                f"whose next index is {expected}"
            )
        for entry in entries:
            # append=True: keys are known to be past the end, which lets
            # LMDB skip the tree search.
            txn.put(schema.log_key(entry.index), seal(schema.encode_entry(entry)), db=self._db_log, append=True)

    def _snapshot_record(self, snapshot: Snapshot) -> Snapshot:
        """What is stored of a snapshot: with a state on disk, its data is there, not here (a stream's name is not kept)."""
        return snapshot if self.state is None else dataclasses.replace(snapshot, data=b"")

    def _check_snapshot_not_older(self, txn, snapshot: Snapshot) -> None:
        current = self._read_snapshot(txn)
        if current is not None and snapshot.index < current.index:
            raise ValueError(
                f"snapshot at index {snapshot.index} is older than the stored one at {current.index}"
            )

    def _write(self, apply: Callable[[object], None], *, sync: bool, flush_state: bool = False, with_state: bool = True) -> None:
        """``apply`` in one write transaction (with the applied state's flush), here and now."""
        state = self._state_to_flush() if with_state else None
        self._transact(apply, sync=sync, state=state, flush_state=flush_state)
        self._committed(state)

    def _state_to_flush(self):
        """The applied state that rides with the next transaction, if there is one (kvd.store.state)."""
        return self.state if self.state is not None and self.state.loaded else None

    def _transact(self, apply: Callable[[object], None], *, sync: bool, state, flush_state: bool = False) -> None:
        """
        Run ``apply`` in one write transaction, growing the map and retrying
        the whole transaction when LMDB runs out of room.  An exception aborts
        the transaction, so nothing of a failed attempt is ever visible.
        May run on the writer thread (kvd.store.writer): it changes nothing
        the reactor thread reads until ``_committed``, which runs on that one.
        """
        env = self._require_open()
        while True:
            try:
                with env.begin(write=True) as txn:
                    if state is not None:
                        state.flush(txn, force=flush_state)  # the applied state rides with the log (kvd.store.state)
                    pending = self._pending_hard
                    if pending is not None:
                        txn.put(schema.META_HARD_STATE, seal(schema.encode_hard_state(pending)), db=self._db_meta)
                    apply(txn)  # a hard state of its own replaces the pending one
                break
            except lmdb.MapFullError:
                self._grow_map()
            except lmdb.MapResizedError:
                # Another handle grew the map; adopt its size and retry.
                env.set_mapsize(0)
                self._map_size = env.info()["map_size"]
        if sync and self._sync:
            env.sync(True)

    def _committed(self, state) -> None:
        self._pending_hard = None
        if state is not None:
            state.committed()

    def _grow_map(self) -> None:
        env = self._require_open()
        current = env.info()["map_size"]
        if current >= self._max_map_size:
            raise StorageFull(
                f"LMDB map of {self.path} is full at {current} bytes and may not grow beyond "
                f"map_size_max_bytes={self._max_map_size}; compact the log or raise the limit"
            )
        new_size = min(current * 2, self._max_map_size)
        env.set_mapsize(new_size)
        self._map_size = new_size

    def _commit_only(self, hard_state: HardState) -> bool:
        """``hard_state`` has the stored term and vote (so it differs, if at all, in its commit index)."""
        if self._stored_term_vote is None:
            env = self._require_open()
            with env.begin() as txn:
                stored = self._read_hard_state(txn)
            self._stored_term_vote = (stored.term, stored.vote)
        return (hard_state.term, hard_state.vote) == self._stored_term_vote

    def _read_hard_state(self, txn) -> HardState:
        value = txn.get(schema.META_HARD_STATE, db=self._db_meta)
        if value is None:
            return HardState()
        try:
            return schema.decode_hard_state(unseal(value, "hard state"))
        except CorruptRecord as e:
            raise CorruptStorage(f"data dir {self.path}: {e}") from None

    def _read_snapshot(self, txn) -> Optional[Snapshot]:
        value = txn.get(schema.SNAPSHOT_KEY, db=self._db_snapshot)
        if value is None:
            return None
        try:
            return schema.decode_snapshot(unseal(value, "snapshot"))
        except CorruptRecord as e:
            raise CorruptStorage(f"data dir {self.path}: {e}") from None

    def _decode_entry(self, key: bytes, value: bytes) -> Entry:
        try:
            index = schema.log_index(key)
            entry = schema.decode_entry(unseal(value, "log entry %d" % index))
        except CorruptRecord as e:
            raise CorruptStorage(f"data dir {self.path}: {e}") from None
        if entry.index != index:
            raise CorruptStorage(f"data dir {self.path}: log record under key {index} holds entry {entry.index}")
        return entry

    def _require_open(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"storage at {self.path} is not open")
        return self._env


def _chmod(path: str, mode: int) -> None:
    """Set ``path``'s permission bits to ``mode`` unless they already are (no write needed then)."""
    if os.stat(path).st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def _check_contiguous(entries: List[Entry]) -> None:
    for before, after in zip(entries, entries[1:]):
        if after.index != before.index + 1:
            raise ValueError(f"entries are not contiguous: index {after.index} follows {before.index}")
