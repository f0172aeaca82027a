# -*- test-case-name: tests.store.test_lmdb -*-
"""Tests for kvd.store.lmdb and kvd.store.schema."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kvd.raft.messages import Configuration, Entry, EntryKind, HardState, Snapshot
from kvd.store import bench, schema
from kvd.store.lmdb import (
    CorruptStorage,
    DataDirMismatch,
    LmdbStorage,
    StorageError,
    StorageFull,
    UnsupportedFormat,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KiB = 1 << 10
MiB = 1 << 20


def make_entries(first, last, term=1, size=10):
    return [
        Entry(index=i, term=term, kind=EntryKind.NORMAL, data=bytes([i % 256]) * size) for i in range(first, last + 1)
    ]


def make_config():
    return Configuration.make(["n1", "n2", "n3"], ["n4"], {"n1": "127.0.0.1:7001", "n4": "127.0.0.4:7001"})


@pytest.fixture
def storage(tmp_path):
    s = LmdbStorage(str(tmp_path / "node"), sync=False)
    s.open("c1", "n1")
    yield s
    s.close()


# ------------------------------------------------------------------ schema


def test_schema_entry_round_trip_all_kinds():
    """Entries of every kind, empty and binary data, survive encode/decode."""
    rng = random.Random(7)
    for kind in EntryKind:
        for data in (b"", b"\x00\xff" * 3, bytes(rng.getrandbits(8) for _ in range(300))):
            entry = Entry(index=rng.randrange(1, 1 << 63), term=rng.randrange(0, 1 << 63), kind=kind, data=data)
            assert schema.decode_entry(schema.encode_entry(entry)) == entry


def test_schema_hard_state_and_snapshot_round_trip():
    """Hard states with and without a (non-ASCII) vote, and snapshots, round-trip."""
    for hs in (HardState(), HardState(term=5, vote="n2", commit=9), HardState(term=1, vote="nœud-é", commit=0)):
        assert schema.decode_hard_state(schema.encode_hard_state(hs)) == hs
    snap = Snapshot(index=42, term=7, config=make_config(), data=b"state" * 100)
    assert schema.decode_snapshot(schema.encode_snapshot(snap)) == snap


def test_schema_log_keys_sort_in_index_order():
    """Big-endian keys make LMDB's byte order equal to index order."""
    indexes = [1, 2, 255, 256, 65536, 1 << 40]
    keys = [schema.log_key(i) for i in indexes]
    assert sorted(keys) == keys
    assert [schema.log_index(k) for k in keys] == indexes


def test_schema_rejects_corrupt_records():
    """Truncated or nonsensical records raise CorruptRecord, not garbage."""
    good = schema.encode_entry(Entry(index=1, term=1, data=b"x"))
    with pytest.raises(schema.CorruptRecord):
        schema.decode_entry(good[:5])
    with pytest.raises(schema.CorruptRecord):
        schema.decode_entry(good[:16] + b"\x09" + b"x")  # unknown kind
    with pytest.raises(schema.CorruptRecord):
        schema.decode_hard_state(schema.encode_hard_state(HardState(term=1))[:-1] + b"\x02")
    with pytest.raises(schema.CorruptRecord):
        schema.decode_snapshot(schema.encode_snapshot(Snapshot(index=1, config=make_config()))[:30])
    with pytest.raises(ValueError):
        schema.encode_entry(Entry(index=-1, term=1))


# ----------------------------------------------------------------- storage


def test_fresh_storage_loads_empty(storage):
    """A new data dir restores the zero hard state, no snapshot, no entries."""
    restored = storage.load()
    assert restored.hard_state == HardState()
    assert restored.snapshot is None
    assert restored.entries == []


def test_save_and_load_round_trip(storage):
    """A saved hard state and entries of every kind come back identically."""
    entries = [
        Entry(index=1, term=1, kind=EntryKind.NOOP),
        Entry(index=2, term=1, kind=EntryKind.CONFIG, data=make_config().encode()),
        Entry(index=3, term=2, kind=EntryKind.NORMAL, data=b"\x00set k v\xff"),
    ]
    hs = HardState(term=2, vote="n3", commit=2)
    storage.save(hs, entries, None, sync=True)
    restored = storage.load()
    assert restored.hard_state == hs
    assert restored.entries == entries
    assert restored.snapshot is None


def test_save_hard_state_only_keeps_log(storage):
    """Saving only a hard state replaces it and leaves the log alone."""
    storage.save(HardState(term=1, vote="n1"), make_entries(1, 3), None, sync=False)
    storage.save(HardState(term=1, vote="n1", commit=3), [], None, sync=False)
    restored = storage.load()
    assert restored.hard_state == HardState(term=1, vote="n1", commit=3)
    assert [e.index for e in restored.entries] == [1, 2, 3]


def test_save_truncates_conflicting_suffix(storage):
    """Entries overwrite the stored suffix from their first index on, including later ones."""
    storage.save(None, make_entries(1, 5, term=1), None, sync=False)
    storage.save(None, make_entries(3, 4, term=2), None, sync=False)
    restored = storage.load()
    assert [(e.index, e.term) for e in restored.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_save_rejects_a_gap_and_writes_nothing(storage):
    """Entries that would leave a hole raise ValueError; the hard state of that batch is not written."""
    storage.save(HardState(term=1), make_entries(1, 3), None, sync=False)
    with pytest.raises(ValueError, match="next index is 4"):
        storage.save(HardState(term=9), make_entries(6, 7), None, sync=False)
    with pytest.raises(ValueError, match="not contiguous"):
        storage.save(None, [Entry(index=4, term=1), Entry(index=6, term=1)], None, sync=False)
    restored = storage.load()
    assert restored.hard_state == HardState(term=1)
    assert [e.index for e in restored.entries] == [1, 2, 3]


def test_first_entries_must_start_at_one(storage):
    """Without a snapshot the log starts at index 1."""
    with pytest.raises(ValueError, match="next index is 1"):
        storage.save(None, make_entries(2, 3), None, sync=False)
    assert storage.load().entries == []


def test_snapshot_install_drops_whole_log(storage):
    """Installing a snapshot discards every entry, even those past its index."""
    storage.save(HardState(term=1), make_entries(1, 10), None, sync=False)
    snap = Snapshot(index=5, term=3, config=make_config(), data=b"sm-state")
    storage.save(HardState(term=3, commit=5), [], snap, sync=True)
    restored = storage.load()
    assert restored.snapshot == snap
    assert restored.entries == []
    assert restored.hard_state == HardState(term=3, commit=5)
    assert storage.snapshot() == snap
    # The log continues right after the snapshot, and not before it.
    with pytest.raises(ValueError):
        storage.save(None, make_entries(5, 6, term=3), None, sync=False)
    storage.save(None, make_entries(6, 7, term=3), None, sync=False)
    assert [e.index for e in storage.load().entries] == [6, 7]


def test_snapshot_and_entries_in_one_batch(storage):
    """A snapshot followed by entries in the same save keeps the new entries."""
    storage.save(None, make_entries(1, 4), None, sync=False)
    snap = Snapshot(index=8, term=2, config=make_config())
    storage.save(HardState(term=2), make_entries(9, 10, term=2), snap, sync=True)
    restored = storage.load()
    assert restored.snapshot == snap
    assert [e.index for e in restored.entries] == [9, 10]


def test_compact_keeps_entries_after_snapshot(storage):
    """compact stores the snapshot and drops only the entries it covers."""
    storage.save(HardState(term=1, commit=10), make_entries(1, 10), None, sync=False)
    snap = Snapshot(index=4, term=1, config=make_config(), data=b"x" * 1000)
    storage.compact(snap)
    restored = storage.load()
    assert restored.snapshot == snap
    assert [e.index for e in restored.entries] == list(range(5, 11))
    stats = storage.stats()
    assert (stats["entries"], stats["first_index"], stats["last_index"], stats["snapshot_index"]) == (6, 5, 10, 4)


def test_older_snapshot_is_refused(storage):
    """A snapshot older than the stored one is a caller bug and changes nothing."""
    storage.save(None, make_entries(1, 10), None, sync=False)
    storage.compact(Snapshot(index=6, term=1, config=make_config()))
    with pytest.raises(ValueError, match="older"):
        storage.compact(Snapshot(index=3, term=1, config=make_config()))
    with pytest.raises(ValueError, match="older"):
        storage.save(None, [], Snapshot(index=3, term=1), sync=False)
    assert storage.snapshot().index == 6
    assert [e.index for e in storage.load().entries] == [7, 8, 9, 10]


def test_reopen_recovers_everything(tmp_path):
    """Closing and reopening the data dir restores hard state, snapshot and log."""
    path = str(tmp_path / "node")
    first = LmdbStorage(path)
    first.open("c1", "n1")
    snap = Snapshot(index=3, term=1, config=make_config(), data=b"snap")
    first.save(HardState(term=1, vote="n1"), make_entries(1, 6), None, sync=True)
    first.compact(snap)
    first.save(HardState(term=2, vote="n2", commit=6), make_entries(5, 7, term=2), None, sync=True)
    expected = first.load()
    first.close()

    second = LmdbStorage(path)
    second.open("c1", "n1")
    try:
        restored = second.load()
        assert restored == expected
        assert restored.hard_state == HardState(term=2, vote="n2", commit=6)
        assert [(e.index, e.term) for e in restored.entries] == [(4, 1), (5, 2), (6, 2), (7, 2)]
    finally:
        second.close()


class _SyncCountingEnv:
    """Delegates to an lmdb Environment, counting calls to sync()."""

    def __init__(self, env):
        self._env = env
        self.syncs = 0

    def sync(self, force=False):
        self.syncs += 1
        return self._env.sync(force)

    def __getattr__(self, name):
        return getattr(self._env, name)


def test_a_commit_only_change_rides_with_the_next_write_and_a_term_or_vote_change_never_waits(tmp_path):
    """No transaction (no flush of the data file) for a moved commit index alone; it is kept by the next write or a clean close."""
    path = str(tmp_path / "node")
    s = LmdbStorage(path, sync=True)
    s.open("c1", "n1")
    s.save(HardState(term=1, vote="n1"), make_entries(1, 3), None, sync=True)
    before = s._env.info()["last_txnid"]
    s.save(HardState(term=1, vote="n1", commit=2), [], None, sync=False)
    assert s._env.info()["last_txnid"] == before  # nothing written
    assert s.load().hard_state.commit == 2  # this handle knows it
    s.save(None, make_entries(4, 4), None, sync=True)
    assert s._env.info()["last_txnid"] == before + 1
    s.save(HardState(term=2, vote=None, commit=2), [], None, sync=False)  # a new term: written at once, even unsynced
    assert s._env.info()["last_txnid"] == before + 2
    s.save(HardState(term=2, vote=None, commit=4), [], None, sync=False)
    s._env.close()  # a crash: the commit index 4 is lost, which Raft allows; the rest is there
    s._env = None
    crashed = LmdbStorage(path, sync=True)
    crashed.open("c1", "n1")
    assert crashed.load().hard_state == HardState(term=2, vote=None, commit=2)
    crashed.save(HardState(term=2, vote=None, commit=4), [], None, sync=False)
    crashed.close()  # a clean close writes it
    again = LmdbStorage(path, sync=True)
    again.open("c1", "n1")
    restored = again.load()
    assert restored.hard_state == HardState(term=2, vote=None, commit=4)
    assert [e.index for e in restored.entries] == [1, 2, 3, 4]
    again.close()


def test_save_syncs_once_per_batch(tmp_path):
    """A 128-entry durable save flushes exactly once; a non-durable save never does."""
    s = LmdbStorage(str(tmp_path / "node"), sync=True)
    s.open("c1", "n1")
    spy = _SyncCountingEnv(s._env)
    s._env = spy
    try:
        s.save(HardState(term=1), make_entries(1, 128), None, sync=True)
        assert spy.syncs == 1
        s.save(HardState(term=1, commit=5), [], None, sync=False)
        assert spy.syncs == 1
        s.save(None, make_entries(129, 130), None, sync=True)
        assert spy.syncs == 2
    finally:
        s._env = spy._env
        s.close()


def test_sync_modes_are_durable_across_reopen(tmp_path):
    """Both sync modes write data that a reopen reads back."""
    for mode in ("ordered", "single"):
        path = str(tmp_path / mode)
        s = LmdbStorage(path, sync_mode=mode)
        s.open("c1", "n1")
        s.save(HardState(term=4), make_entries(1, 3), None, sync=True)
        s.close()
        s = LmdbStorage(path, sync_mode=mode)
        s.open("c1", "n1")
        assert s.load().hard_state.term == 4
        s.close()
    with pytest.raises(ValueError):
        LmdbStorage(str(tmp_path / "x"), sync_mode="sometimes")


def test_map_grows_when_full(tmp_path):
    """Writing more than the initial map doubles it transparently, and the size survives a reopen."""
    path = str(tmp_path / "node")
    s = LmdbStorage(path, map_size_bytes=256 * KiB, map_size_max_bytes=64 * MiB, sync=False)
    s.open("c1", "n1")
    index = 0
    for _ in range(8):  # 8 batches of 64 x 4 KiB = 2 MiB in total
        batch = [Entry(index=index + i + 1, term=1, data=os.urandom(4 * KiB)) for i in range(64)]
        index += 64
        s.save(HardState(term=1, commit=index), batch, None, sync=False)
    assert s.stats()["map_size"] >= 2 * MiB
    restored = s.load()
    assert len(restored.entries) == 512 and restored.hard_state.commit == 512
    s.close()

    s = LmdbStorage(path, map_size_bytes=256 * KiB, map_size_max_bytes=64 * MiB, sync=False)
    s.open("c1", "n1")
    stats = s.stats()
    # Reopened with headroom over the pages in use, not back at 256 KiB.
    assert stats["map_size"] >= 2 * stats["bytes_used"] > 2 * MiB
    assert len(s.load().entries) == 512
    s.save(None, make_entries(513, 600, size=4 * KiB), None, sync=False)
    assert s.stats()["last_index"] == 600
    s.close()


def test_storage_full_leaves_no_partial_write(tmp_path):
    """Past map_size_max_bytes save raises StorageFull and the previous state is intact."""
    s = LmdbStorage(str(tmp_path / "node"), map_size_bytes=256 * KiB, map_size_max_bytes=512 * KiB, sync=False)
    s.open("c1", "n1")
    try:
        s.save(HardState(term=1, commit=1), make_entries(1, 1), None, sync=False)
        batch = [Entry(index=i, term=2, data=b"y" * (100 * KiB)) for i in range(2, 12)]  # ~1 MiB
        with pytest.raises(StorageFull, match="map_size_max_bytes=524288"):
            s.save(HardState(term=2, commit=11), batch, None, sync=True)
        restored = s.load()
        assert restored.hard_state == HardState(term=1, commit=1)
        assert [e.index for e in restored.entries] == [1]
        # The store is still usable for batches that fit.
        s.save(HardState(term=2, commit=2), make_entries(2, 2, term=2), None, sync=False)
        assert [e.index for e in s.load().entries] == [1, 2]
    finally:
        s.close()


def test_data_dir_from_other_cluster_is_refused(tmp_path):
    """Opening with another cluster id raises DataDirMismatch naming both clusters."""
    path = str(tmp_path / "node")
    s = LmdbStorage(path)
    s.open("alpha", "n1")
    s.close()
    other = LmdbStorage(path)
    with pytest.raises(DataDirMismatch) as info:
        other.open("beta", "n1")
    assert "'alpha'" in str(info.value) and "'beta'" in str(info.value)
    # The failed open did not leave the env half-open: a correct open works.
    other.open("alpha", "n1")
    other.close()


def test_data_dir_from_other_node_is_refused(tmp_path):
    """Opening with another node id raises DataDirMismatch naming both node ids."""
    path = str(tmp_path / "node")
    s = LmdbStorage(path)
    s.open("alpha", "n1")
    s.close()
    with pytest.raises(DataDirMismatch) as info:
        LmdbStorage(path).open("alpha", "n2")
    assert "'n1'" in str(info.value) and "'n2'" in str(info.value)


def test_use_before_open_and_double_open(tmp_path):
    """Using a storage before open, or opening it twice, raises StorageError."""
    s = LmdbStorage(str(tmp_path / "node"))
    with pytest.raises(StorageError, match="not open"):
        s.load()
    s.open("c1", "n1")
    with pytest.raises(StorageError, match="already open"):
        s.open("c1", "n1")
    s.close()


def test_load_detects_a_gap(storage):
    """A log with a hole (which save never writes) is reported as corruption."""
    storage.save(None, make_entries(1, 5), None, sync=False)
    with storage._env.begin(write=True) as txn:
        txn.delete(schema.log_key(3), db=storage._db_log)
    with pytest.raises(CorruptStorage, match="gap"):
        storage.load()


# -------------------------------------------------------------- crash tests

_CHILD = textwrap.dedent(
    """
    import os, sys
    from kvd.raft.messages import Entry, HardState
    from kvd.store.lmdb import LmdbStorage

    path, mode, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = LmdbStorage(path, sync=(mode == "sync"))
    s.open("c1", "n1")
    index = 0
    for b in range(batches):
        entries = [Entry(index=index + i + 1, term=1 + b // 10, data=b"%d" % (index + i + 1) * 20)
                   for i in range(16)]
        index += 16
        # commit == last index in the same transaction: a torn batch would show.
        s.save(HardState(term=1 + b // 10, vote="n1", commit=index), entries, None, sync=(mode == "sync"))
        print(index, flush=True)
    # Leave without close(): like a crash after the last commit returned.
    os._exit(0)
    """
)


def _spawn_child(path, mode, batches):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, path, mode, str(batches)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )


def _check_consistent_prefix(path, at_least):
    s = LmdbStorage(path, sync=False)
    s.open("c1", "n1")
    try:
        restored = s.load()
    finally:
        s.close()
    indexes = [e.index for e in restored.entries]
    assert indexes == list(range(1, len(indexes) + 1))
    assert len(indexes) % 16 == 0, "a batch was torn"
    assert len(indexes) >= at_least
    assert restored.hard_state.commit == len(indexes)
    for e in restored.entries:
        assert e.data == b"%d" % e.index * 20
    return len(indexes)


def test_unsynced_writes_survive_process_exit(tmp_path):
    """Committed sync=False saves are visible to a fresh process after the writer dies without close()."""
    path = str(tmp_path / "node")
    child = _spawn_child(path, "nosync", 20)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()
    assert out.split()[-1] == b"320"
    assert _check_consistent_prefix(path, at_least=320) == 320


def test_sigkill_mid_loop_leaves_a_consistent_prefix(tmp_path):
    """SIGKILL while saving leaves whole batches only, at least every batch the child reported."""
    path = str(tmp_path / "node")
    child = _spawn_child(path, "sync", 100000)
    reported = 0
    deadline = time.monotonic() + 60
    try:
        while reported < 16 * 50 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reported = int(line)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert reported >= 16 * 50
    _check_consistent_prefix(path, at_least=reported)


# ------------------------------------------------------------------ bench


def test_bench_runs_and_reports_every_batch_size(tmp_path, capsys):
    """The benchmark prints one row per mode and batch size."""
    assert bench.main(["--dir", str(tmp_path), "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.split()[-1].isdigit() and "mode" not in line]
    assert len(rows) == len(bench.MODES) * len(bench.BATCH_SIZES)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("kvd-bench-")]


# ------------------------------------------------------------ permissions


@pytest.mark.parametrize("umask", [0, 0o022, 0o077])
def test_data_dir_is_0700_and_files_0600_whatever_the_umask(tmp_path, umask):
    """The log holds every key and value: only the node's user may read it, even under umask 0."""
    old = os.umask(umask)
    try:
        path = tmp_path / "deep" / "node"
        s = LmdbStorage(str(path), sync=False)
        s.open("c1", "n1")
        s.save(HardState(1, None, 0), make_entries(1, 3), None, sync=True)
        s.close()
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o7777 == 0o700
    files = sorted(os.listdir(path))
    assert files == ["data.mdb", "lock.mdb"]
    for name in files:
        assert os.stat(path / name).st_mode & 0o7777 == 0o600, name


def test_an_existing_permissive_data_dir_is_tightened_on_open(tmp_path):
    path = tmp_path / "node"
    old = os.umask(0)
    try:
        s = LmdbStorage(str(path), sync=False)
        s.open("c1", "n1")
        s.close()
        os.chmod(path, 0o777)
        for name in os.listdir(path):
            os.chmod(path / name, 0o666)
        s = LmdbStorage(str(path), sync=False)
        s.open("c1", "n1")
        s.close()
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o7777 == 0o700
    for name in os.listdir(path):
        assert os.stat(path / name).st_mode & 0o7777 == 0o600, name


# ------------------------------------------------------- a disk that can lie


def _flip_stored(storage, db, key, position=-6):
    """Change one byte of a stored record behind the store's back, as a lying disk would (the CRC stays)."""
    with storage._env.begin(write=True) as txn:
        record = bytearray(txn.get(key, db=db))
        record[position] ^= 0x01
        txn.put(key, bytes(record), db=db)


def test_every_record_is_sealed_with_its_crc32c(storage):
    """Log entries, hard state, snapshot and the identity stamp all end with the CRC32C of what precedes them."""
    from kvd.store.checksum import unseal

    storage.save(HardState(term=3, vote="n1", commit=2), make_entries(1, 4), None, sync=False)
    storage.compact(Snapshot(index=2, term=1, config=make_config(), data=b"machine"))
    with storage._env.begin() as txn:
        records = {
            "entry": (txn.get(schema.log_key(3), db=storage._db_log), schema.encode_entry(make_entries(3, 3)[0])),
            "hard state": (txn.get(schema.META_HARD_STATE, db=storage._db_meta),
                           schema.encode_hard_state(HardState(term=3, vote="n1", commit=2))),
            "snapshot": (txn.get(schema.SNAPSHOT_KEY, db=storage._db_snapshot),
                         schema.encode_snapshot(Snapshot(index=2, term=1, config=make_config(), data=b"machine"))),
            "version": (txn.get(schema.META_FORMAT_VERSION, db=storage._db_meta), schema.encode_u32(2)),
            "cluster": (txn.get(schema.META_CLUSTER_ID, db=storage._db_meta), b"c1"),
            "node": (txn.get(schema.META_NODE_ID, db=storage._db_meta), b"n1"),
        }
    for what, (stored, payload) in records.items():
        assert unseal(stored, what) == payload, what
        assert bytes(stored) != payload, what


@pytest.mark.parametrize("position", [0, 8, 17, -1, -6])
def test_a_flipped_byte_in_a_log_entry_is_refused_naming_dir_and_entry(storage, position):
    storage.save(HardState(term=1, commit=5), make_entries(1, 5, size=40), None, sync=False)
    _flip_stored(storage, storage._db_log, schema.log_key(4), position)
    with pytest.raises(CorruptStorage) as raised:
        storage.load()
    message = str(raised.value)
    assert storage.path in message and "log entry 4" in message, message
    assert "checksum mismatch" in message


def test_a_flipped_byte_in_the_hard_state_is_refused(storage):
    storage.save(HardState(term=7, vote="n2", commit=0), [], None, sync=False)
    _flip_stored(storage, storage._db_meta, schema.META_HARD_STATE, 3)
    with pytest.raises(CorruptStorage, match="hard state: checksum mismatch") as raised:
        storage.load()
    assert storage.path in str(raised.value)


def test_a_flipped_byte_in_the_snapshot_is_refused_by_load_and_stats(storage):
    storage.save(None, make_entries(1, 3), None, sync=False)
    storage.compact(Snapshot(index=3, term=1, config=make_config(), data=b"v" * 1000))
    _flip_stored(storage, storage._db_snapshot, schema.SNAPSHOT_KEY, 500)
    for read in (storage.load, storage.snapshot, storage.stats):
        with pytest.raises(CorruptStorage, match="snapshot: checksum mismatch"):
            read()


def test_a_record_shorter_than_its_checksum_is_refused(storage):
    storage.save(None, make_entries(1, 2), None, sync=False)
    with storage._env.begin(write=True) as txn:
        txn.put(schema.log_key(2), b"xy", db=storage._db_log)
    with pytest.raises(CorruptStorage, match="log entry 2: record of 2 bytes is shorter than its checksum"):
        storage.load()


@pytest.mark.parametrize("key", [schema.META_CLUSTER_ID, schema.META_NODE_ID, schema.META_FORMAT_VERSION])
def test_a_flipped_byte_in_the_identity_stamp_is_refused_at_open(tmp_path, key):
    path = str(tmp_path / "node")
    s = LmdbStorage(path, sync=False)
    s.open("c1", "n1")
    _flip_stored(s, s._db_meta, key, 0)
    s.close()
    with pytest.raises(CorruptStorage, match="checksum mismatch") as raised:
        LmdbStorage(path, sync=False).open("c1", "n1")
    assert path in str(raised.value)


def test_a_format_version_1_data_dir_is_refused_with_what_to_do(tmp_path):
    """Version 1 (no checksums) stamped a bare u32: refused with one message that says to rebuild."""
    import lmdb

    path = str(tmp_path / "node")
    s = LmdbStorage(path, sync=False)
    s.open("c1", "n1")
    s.close()
    env = lmdb.open(path, max_dbs=schema.MAX_DBS, subdir=True)
    with env.begin(write=True) as txn:
        meta = env.open_db(schema.DB_META, txn=txn)
        txn.put(schema.META_FORMAT_VERSION, schema.encode_u32(1), db=meta)
        txn.put(schema.META_CLUSTER_ID, b"c1", db=meta)
        txn.put(schema.META_NODE_ID, b"n1", db=meta)
    env.close()
    with pytest.raises(UnsupportedFormat) as raised:
        LmdbStorage(path, sync=False).open("c1", "n1")
    message = str(raised.value)
    assert "format version 1 (records without checksums)" in message and "version 2" in message
    assert "rebuild this node" in message and path in message
    assert "\n" not in message


def test_a_truncated_data_file_is_refused_at_open_without_sigbus(tmp_path):
    """data.mdb cut to half: open refuses it (checked in a child, so a SIGBUS would show as its signal)."""
    path = str(tmp_path / "node")
    s = LmdbStorage(path, sync=False)
    s.open("c1", "n1")
    for first in range(1, 2001, 100):
        s.save(HardState(term=1, commit=first + 99), make_entries(first, first + 99, size=200), None, sync=False)
    s.close()
    data = os.path.join(path, "data.mdb")
    os.truncate(data, os.path.getsize(data) // 2)
    child = textwrap.dedent(
        """
        import sys
        from kvd.store.lmdb import CorruptStorage, LmdbStorage
        s = LmdbStorage(sys.argv[1], sync=False)
        try:
            s.open("c1", "n1")
            s.load()
        except CorruptStorage as e:
            print(e)
            sys.exit(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", child, path], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT), cwd=REPO_ROOT)
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    assert "was truncated" in done.stdout and path in done.stdout


def test_a_data_file_of_the_size_its_meta_page_says_opens(tmp_path):
    """The size check does not refuse a healthy file (the boundary: exactly the pages in use)."""
    path = str(tmp_path / "node")
    s = LmdbStorage(path, sync=False)
    s.open("c1", "n1")
    s.save(HardState(term=1, commit=50), make_entries(1, 50, size=300), None, sync=False)
    used = s.stats()["bytes_used"]
    s.close()
    assert os.path.getsize(os.path.join(path, "data.mdb")) >= used
    s = LmdbStorage(path, sync=False)
    s.open("c1", "n1")
    assert len(s.load().entries) == 50
    s.close()


def _write_format1(path, hard_state, snapshot, entries, cluster_id="c1", node_id="n1"):
    """A data dir exactly as format 1 wrote it: the same databases, records without checksums."""
    import lmdb

    os.makedirs(path)
    env = lmdb.open(path, max_dbs=3, subdir=True)
    with env.begin(write=True) as txn:
        meta, log, snap = (env.open_db(name, txn=txn) for name in (schema.DB_META, schema.DB_LOG, schema.DB_SNAPSHOT))
        txn.put(schema.META_FORMAT_VERSION, schema.encode_u32(1), db=meta)
        txn.put(schema.META_CLUSTER_ID, cluster_id.encode(), db=meta)
        txn.put(schema.META_NODE_ID, node_id.encode(), db=meta)
        txn.put(schema.META_HARD_STATE, schema.encode_hard_state(hard_state), db=meta)
        if snapshot is not None:
            txn.put(schema.SNAPSHOT_KEY, schema.encode_snapshot(snapshot), db=snap)
        for entry in entries:
            txn.put(schema.log_key(entry.index), schema.encode_entry(entry), db=log)
    env.close()


def test_a_format_1_data_dir_is_upgraded_in_place_keeping_everything(tmp_path, capsys):
    from kvd.store import upgrade

    path = str(tmp_path / "node")
    from kvd.kv.commands import Envelope, Get, Set, encode_envelope
    from kvd.kv.machine import KVMachine
    from kvd.store.state import LmdbState

    hard_state = HardState(term=4, vote="n2", commit=12)
    blob = KVMachine()  # format 1 kept the applied state as this machine's snapshot blob
    for i in range(1, 6):
        blob.apply(i, encode_envelope(Envelope(b"client", i, i, 1000 + i, Set(b"k%d" % i, b"v%d" % i))))
    snapshot = Snapshot(index=5, term=2, config=make_config(), data=blob.snapshot())
    entries = make_entries(6, 14, term=3)
    _write_format1(path, hard_state, snapshot, entries)
    with pytest.raises(UnsupportedFormat, match="python -m kvd.store.upgrade %s" % path):
        LmdbStorage(path, sync=False).open("c1", "n1")
    assert upgrade.main([path]) == 0
    out = capsys.readouterr().out
    assert "upgraded %s to storage format 2" % path in out
    kept = out.split("the format 1 copy is ")[1].split(" ")[0]
    assert os.path.exists(os.path.join(kept, "data.mdb"))
    state = LmdbState()
    s = LmdbStorage(path, sync=False, state=state)
    machine = KVMachine(keyspace=state)
    s.open("c1", "n1")
    machine.reload()
    restored = s.load()
    assert restored.hard_state == hard_state and restored.entries == entries
    # The blob's state moved into the state's databases; the snapshot record keeps no data.
    assert restored.snapshot == dataclasses.replace(snapshot, data=b"")
    assert machine.applied_index == 5 and machine.session_count == 1
    assert [machine.read(Get(b"k%d" % i)) for i in range(1, 6)] == [b"v%d" % i for i in range(1, 6)]
    s.close()
    # Run again: nothing to upgrade, one line, the upgraded dir untouched.
    assert upgrade.main([path]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not of storage format 1" in err[0]


def test_the_upgrade_refuses_what_is_not_a_format_1_data_dir(tmp_path, capsys):
    from kvd.store import upgrade

    assert upgrade.main([str(tmp_path / "nothing")]) == 1
    assert "not a kvd data dir" in capsys.readouterr().err
    path = str(tmp_path / "gap")
    _write_format1(path, HardState(term=1, commit=3), None, make_entries(1, 2) + make_entries(4, 5))
    assert upgrade.main([path]) == 1
    assert "not contiguous at index 4" in capsys.readouterr().err
    assert not os.path.exists(path + ".upgrading")  # refused before anything was written
    assert os.path.exists(os.path.join(path, "data.mdb"))


def test_a_data_file_truncated_to_nothing_is_refused_not_taken_for_a_new_store(tmp_path):
    """LMDB would open an empty data.mdb as a fresh environment: the node would forget its vote and log."""
    path = str(tmp_path / "node")
    s = LmdbStorage(path, sync=False)
    s.open("c1", "n1")
    s.save(HardState(term=5, vote="n2", commit=1), make_entries(1, 1), None, sync=False)
    s.close()
    os.truncate(os.path.join(path, "data.mdb"), 0)
    with pytest.raises(CorruptStorage, match="data.mdb is empty") as raised:
        LmdbStorage(path, sync=False).open("c1", "n1")
    assert path in str(raised.value)
    for size in (100, 4096 + 100):  # inside the meta pages: LMDB itself cannot read them
        cut = str(tmp_path / ("cut%d" % size))
        s = LmdbStorage(cut, sync=False)
        s.open("c1", "n1")
        s.close()
        os.truncate(os.path.join(cut, "data.mdb"), size)
        with pytest.raises(CorruptStorage, match="data.mdb cannot be opened"):
            LmdbStorage(cut, sync=False).open("c1", "n1")
