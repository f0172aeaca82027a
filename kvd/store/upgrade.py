# -*- test-case-name: tests.store.test_lmdb -*-
"""
Upgrade a stopped node's data dir from storage format 1 (records without
checksums) to the current format, in place:

    python -m kvd.store.upgrade DATA_DIR [DATA_DIR ...]

A node refuses a format 1 data dir.  One node of a cluster is best rebuilt
from the others (``mgmt.py -r server -c rebuild``), but a cluster whose
every node is of format 1 has no one to rebuild from: this keeps its data.

Format 1's records are read as they are (they carry no checksum to verify,
only the decoders' length checks), written through ``LmdbStorage`` into a
new directory beside the old one (so every record is sealed as the current
format wants), and the directories are then swapped: the old one is kept
as ``DATA_DIR.format1-<time>``, for the operator to delete.  A crash before
the swap leaves the old directory untouched.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from typing import List, Optional

import lmdb

from kvd.kv.machine import KVMachine
from kvd.store import schema
from kvd.store.lmdb import LmdbStorage, StorageError
from kvd.store.state import LmdbState

#: The named databases format 1 had (its environment was made with exactly these).
_FORMAT1_DBS = (schema.DB_META, schema.DB_LOG, schema.DB_SNAPSHOT)


class UpgradeError(StorageError):
    """The data dir is not one this tool can upgrade (said in one line)."""


def upgrade(path: str) -> str:
    """Upgrade the format 1 data dir ``path`` in place; returns where the old one was kept."""
    path = os.path.abspath(path)
    if not os.path.exists(os.path.join(path, "data.mdb")):
        raise UpgradeError("%s holds no data.mdb: not a kvd data dir" % path)
    cluster_id, node_id, hard_state, snapshot, entries = _read_format1(path)
    fresh = path + ".upgrading"
    if os.path.exists(fresh):
        shutil.rmtree(fresh)  # what an interrupted run left: the old dir is still the real one
    state = LmdbState()
    storage = LmdbStorage(fresh, sync=True, state=state)
    machine = KVMachine(keyspace=state)
    storage.open(cluster_id, node_id)
    try:
        machine.reload()
        if snapshot is not None:
            # Format 1 kept the applied state as a snapshot blob; now it lives
            # in the state's databases, and the snapshot record carries no data.
            blob = KVMachine()
            blob.restore(snapshot.data)
            machine.copy_from(blob)
            storage.compact(dataclasses.replace(snapshot, data=b""))  # the state is flushed with it
        storage.save(hard_state, entries, None, sync=True)
    finally:
        storage.close()
    kept = "%s.format1-%s" % (path, time.strftime("%Y%m%d-%H%M%S"))
    os.replace(path, kept)
    os.replace(fresh, path)
    return kept


def _read_format1(path: str):
    try:
        env = lmdb.open(path, max_dbs=len(_FORMAT1_DBS), subdir=True, readonly=True, lock=False)
    except lmdb.Error as e:
        raise UpgradeError("cannot open %s: %s" % (path, e)) from None
    try:
        with env.begin() as txn:
            try:
                meta, log, snap = (env.open_db(name, txn=txn, create=False) for name in _FORMAT1_DBS)
            except lmdb.NotFoundError:
                raise UpgradeError("%s lacks the databases of a kvd data dir" % path) from None
            version = txn.get(schema.META_FORMAT_VERSION, db=meta)
            if version is None or len(version) != 4 or schema.decode_u32(version) != 1:
                raise UpgradeError("%s is not of storage format 1 (nothing to upgrade)" % path)
            cluster_id = bytes(txn.get(schema.META_CLUSTER_ID, db=meta) or b"").decode("utf-8")
            node_id = bytes(txn.get(schema.META_NODE_ID, db=meta) or b"").decode("utf-8")
            if not cluster_id or not node_id:
                raise UpgradeError("%s has a partial identity stamp" % path)
            raw = txn.get(schema.META_HARD_STATE, db=meta)
            hard_state = schema.decode_hard_state(raw) if raw is not None else None
            raw = txn.get(schema.SNAPSHOT_KEY, db=snap)
            snapshot = schema.decode_snapshot(raw) if raw is not None else None
            entries = []
            base = snapshot.index if snapshot is not None else 0
            cursor = txn.cursor(db=log)
            if cursor.set_range(schema.log_key(base + 1)):
                for key, value in cursor:
                    entry = schema.decode_entry(value)
                    if entry.index != schema.log_index(key) or entry.index != base + 1 + len(entries):
                        raise UpgradeError("%s: the log is not contiguous at index %d" % (path, entry.index))
                    entries.append(entry)
    except schema.CorruptRecord as e:
        raise UpgradeError("%s: %s" % (path, e)) from None
    finally:
        env.close()
    return cluster_id, node_id, hard_state, snapshot, entries


def main(argv: Optional[List[str]] = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths or any(p.startswith("-") for p in paths):
        print("usage: python -m kvd.store.upgrade DATA_DIR [DATA_DIR ...]  (each node stopped)", file=sys.stderr)
        return 2
    for path in paths:
        try:
            kept = upgrade(path)
        except (StorageError, OSError) as e:
            print("kvd.store.upgrade: %s" % e, file=sys.stderr)
            return 1
        print("upgraded %s to storage format %d; the format 1 copy is %s (delete it once the node runs)"
              % (path, schema.FORMAT_VERSION, kept))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
