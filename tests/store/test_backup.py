"""
Backup files (kvd.store.backup): what a node writes reads back identical;
a flipped bit anywhere, a cut at any point, another version or another
kind of file is refused with a message that says which, before anything is
written; a data dir seeded from a backup holds the same keys, hashes, TTLs
and scripts; ``force_new_cluster`` makes a survivor the one voter on its
own log.
"""

import hashlib
import io
import os

import pytest

from kvd.kv.commands import Get, HashRead, HashWrite, Script, ScriptGet, Set, Ttl
from kvd.kv.machine import KVMachine
from kvd.raft.core import RaftCore, RaftSettings
from kvd.raft.messages import Configuration, Entry, EntryKind, HardState, Snapshot
from kvd.store import backup
from kvd.store.backup import BackupError, BackupReader, BackupWriter, make_header
from kvd.store.lmdb import LmdbStorage
from kvd.store.state import LmdbState
from tests.store.test_state import Node, scan_all

SCRIPT = b"return 1"


def loaded_node(path, keys=300):
    node = Node(path)
    for i in range(keys):
        node.apply(Set(b"key-%d" % i, b"value-%d" % i * 20))
    for i in range(20):
        node.apply(HashWrite("hset", b"hash-%d" % i, tuple(x for f in range(5) for x in (b"f%d" % f, b"v%d-%d" % (i, f)))))
    for i in range(20):
        node.apply(Set(b"ttl-%d" % i, b"t", expire=100_000 + i))
    node.apply(Script("load", SCRIPT))
    node.flush()
    return node


def backup_bytes(node) -> bytes:
    stream = node.state.open_stream(0)
    snapshot = Snapshot(stream.applied_index, 3, Configuration.make(voters=["a", "b", "c"]), b"")
    writer = BackupWriter(make_header("cl", "a", snapshot, stream.key_count, 0), stream)
    out = bytearray()
    while True:
        piece = writer.read(7000)
        if not piece:
            return bytes(out)
        out += piece


def check(data: bytes, piece_bytes: int = 4096) -> BackupReader:
    reader = BackupReader(io.BytesIO(data), "f")
    for _ in reader.body(piece_bytes):
        pass
    return reader


@pytest.fixture
def node(tmp_path):
    n = loaded_node(str(tmp_path / "src"))
    yield n
    n.close()


def test_a_backup_reads_back_with_its_header_and_counts(node):
    data = backup_bytes(node)
    reader = check(data)
    assert reader.header["cluster_id"] == "cl" and reader.header["index"] == node.machine.applied_index
    assert reader.header["term"] == 3 and reader.header["voters"] == ["a", "b", "c"]
    assert reader.header["key_count"] == 340
    assert reader.count > 340  # the state record, sessions (expiry's and scripts' records among them), keys, fields
    # Read in pieces of any size, it is the same.
    assert check(data, 1).count == reader.count == check(data, 1 << 20).count


def test_every_flipped_bit_is_refused(node):
    data = backup_bytes(node)
    # Every byte of the header and trailer, and a spread of the body's.
    positions = list(range(0, 120)) + list(range(len(data) - 28, len(data))) + list(range(120, len(data) - 28, 97))
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        with pytest.raises(BackupError) as caught:
            check(bytes(damaged))
        assert "f " in str(caught.value) or str(caught.value).startswith("f ")


def test_every_truncation_is_refused(node):
    data = backup_bytes(node)
    for cut in list(range(0, 200)) + list(range(len(data) - 200, len(data))) + list(range(200, len(data), 311)):
        with pytest.raises(BackupError, match="truncated|damaged"):
            check(data[:cut])
    with pytest.raises(BackupError, match="truncated"):
        check(data[:-1])
    with pytest.raises(BackupError):
        check(data + b"x")  # something after the trailer: the end is not a trailer


def test_another_version_or_kind_of_file_is_named():
    with pytest.raises(BackupError, match="not a kvd backup"):
        check(b"REDIS0011" + b"\0" * 100)
    header = backup.header_bytes({"cluster_id": "c", "node_id": "n", "index": 1, "term": 1, "key_count": 0})
    future = header[:9] + (2).to_bytes(2, "big") + header[11:]
    with pytest.raises(BackupError, match="version 2; this kvd reads version 1"):
        check(future)
    with pytest.raises(BackupError, match="truncated"):
        check(b"")


def test_verify_file_refuses_what_is_missing(tmp_path):
    with pytest.raises(BackupError, match="cannot read"):
        backup.verify_file(str(tmp_path / "nope"))


def open_machine(path, cluster, node_id):
    state = LmdbState()
    storage = LmdbStorage(path, sync=False, state=state)
    machine = KVMachine(session_ttl_ms=10_000, keyspace=state)
    storage.open(cluster, node_id)
    machine.reload()
    return storage, machine


def contents(machine):
    keys = sorted(scan_all(machine, 100))
    out = {}
    for key in keys:
        if key.startswith(b"hash-"):
            out[key] = sorted(machine.read(HashRead("hgetall", key)))
        else:
            out[key] = (machine.read(Get(key)), machine.read(Ttl("pexpiretime", key)))
    return out, machine.read(ScriptGet((hashlib.sha1(SCRIPT).hexdigest().encode(),)))


def test_a_seeded_data_dir_holds_the_same_state_as_a_new_cluster(node, tmp_path):
    path = str(tmp_path / "b.kvdb")
    with open(path, "wb") as f:
        f.write(backup_bytes(node))
    target = str(tmp_path / "new")
    header = backup.seed_from_backup(path, target, "new-cluster", "n9", "127.0.0.1:1:2")
    assert header["index"] == node.machine.applied_index
    storage, machine = open_machine(target, "new-cluster", "n9")
    try:
        restored = storage.load()
        assert restored.snapshot.index == header["index"] and restored.snapshot.term == 3
        assert restored.snapshot.config.voters == ("n9",) and restored.hard_state.term == 3
        assert contents(machine) == contents(node.machine)
        assert contents(machine)[1] == [SCRIPT]
        assert len(contents(machine)[0]) == 340
    finally:
        storage.close()


def test_a_restore_refuses_a_damaged_file_and_writes_nothing(node, tmp_path):
    path = str(tmp_path / "b.kvdb")
    data = bytearray(backup_bytes(node))
    data[len(data) // 2] ^= 1
    with open(path, "wb") as f:
        f.write(bytes(data))
    target = str(tmp_path / "new")
    with pytest.raises(BackupError, match="damaged"):
        backup.seed_from_backup(path, target, "c", "n", "a:1:2")
    assert not os.path.exists(target)


def test_a_restore_never_overwrites_a_data_dir(node, tmp_path):
    path = str(tmp_path / "b.kvdb")
    with open(path, "wb") as f:
        f.write(backup_bytes(node))
    with pytest.raises(BackupError, match="not empty"):
        backup.seed_from_backup(path, node.path, "c", "n", "a:1:2")


def test_force_new_cluster_keeps_the_log_and_makes_the_node_its_only_voter(tmp_path):
    path = str(tmp_path / "survivor")
    three = Configuration.make(voters=["a", "b", "c"], addresses={"a": "h:1:2", "b": "h:3:4", "c": "h:5:6"})
    storage = LmdbStorage(path, sync=False)
    storage.open("cl", "a")
    entries = [Entry(1, 1, EntryKind.CONFIG, three.encode())] + [Entry(i, 2, EntryKind.NORMAL, b"x") for i in range(2, 8)]
    storage.save(HardState(term=4, vote="b", commit=5), entries, None, sync=True)
    storage.close()
    kept, old = backup.force_new_cluster(path, "cl", "a", "ignored:0:0")
    assert old == three and kept["last_index"] == 7 and kept["commit_index"] == 5
    storage = LmdbStorage(path, sync=False)
    storage.open("cl", "a")
    restored = storage.load()
    storage.close()
    assert [e.index for e in restored.entries] == list(range(1, 9))  # the whole log kept, one entry more
    last = restored.entries[-1]
    assert last.kind is EntryKind.CONFIG and last.term == 4
    import random

    core = RaftCore("a", RaftSettings(), random.Random(1), restored.hard_state, restored.snapshot, restored.entries)
    assert core.config.voters == ("a",) and core.config.address_of("a") == "h:1:2"


def test_force_new_cluster_refuses_a_node_that_never_joined(tmp_path):
    path = str(tmp_path / "empty")
    storage = LmdbStorage(path, sync=False)
    storage.open("cl", "a")
    storage.close()
    with pytest.raises(BackupError, match="no cluster state"):
        backup.force_new_cluster(path, "cl", "a", "h:1:2")
