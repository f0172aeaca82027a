"""
mgmt.py's backup, restore and recover without a cluster: what each needs,
and every refusal that must come before anything is touched (one line, its
exit code, nothing written or started).  The real thing, with processes,
is tests/system/test_backup.py.
"""

from __future__ import annotations

import os

import pytest

from kvd.cli import errors as cli_errors
from kvd.cli.home import Home
from kvd.store import backup as store_backup
from tests.node.test_cli import closed_port, run_cli


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("KVD_HOME", str(path))
    return Home(str(path))


def backup_file(path, body_records=1):
    """A small, valid backup file (one state record)."""
    from kvd.store import checksum

    value = checksum.seal(b"\0" * 32)
    body = bytes([1]) + (0).to_bytes(4, "big") + len(value).to_bytes(4, "big") + value
    header = {"cluster_id": "old", "node_id": "n", "index": 0, "term": 0, "key_count": 0}
    with open(path, "wb") as f:
        f.write(store_backup.header_bytes(header) + body + store_backup.trailer_bytes(1, len(body), checksum.crc(body)))
    return str(path)


@pytest.mark.parametrize("args, needs", [
    (["-c", "backup", "-h", "127.0.0.1:7001"], "-f <file>"),
    (["-c", "backup", "-f", "x"], "-h <host>"),
    (["-c", "restore", "-f", "x"], "-h <host>"),
    (["-c", "recover"], "-h <host>"),
])
def test_each_command_says_what_it_needs(capsys, home, args, needs):
    code, _, err = run_cli(capsys, "-r", "server", *args)
    assert code == cli_errors.USAGE and len(err) == 1 and needs in err[0]


def test_the_flag_is_recover_s_only(capsys, home):
    code, _, err = run_cli(capsys, "-r", "server", "-c", "restart", "-h", "127.0.0.1:7001", "--force-new-cluster")
    assert code == cli_errors.USAGE and "does not take --force-new-cluster" in err[0]


def test_help_lists_the_three_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for line in ("-c backup -h <host> -f <file>", "-c restore -f <file> -h <host>", "-c recover -h <host> --force-new-cluster"):
        assert line in out


def test_backup_never_overwrites_a_file(capsys, home, tmp_path):
    existing = tmp_path / "b.kvdb"
    existing.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "-r", "server", "-c", "backup", "-h", "127.0.0.1:7001", "-f", str(existing))
    assert code == cli_errors.USAGE and "never overwrites" in err[0]
    assert existing.read_bytes() == b"precious"


def test_backup_without_the_cluster_ca_says_where_it_looked(capsys, home, tmp_path):
    code, _, err = run_cli(capsys, "-r", "server", "-c", "backup", "-h", "127.0.0.1:7001", "-f", str(tmp_path / "b"))
    assert code == cli_errors.LOCAL_STATE and "ca.key" in err[0]
    assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "b.part")


@pytest.mark.parametrize("damage, says", [
    (lambda data: data[:-5], "truncated"),
    (lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:], "damaged"),
    (lambda data: b"not a backup at all", "not a kvd backup"),
])
def test_restore_refuses_a_bad_file_and_changes_nothing(capsys, home, tmp_path, damage, says):
    good = backup_file(tmp_path / "good.kvdb")
    bad = tmp_path / "bad.kvdb"
    with open(good, "rb") as f:
        bad.write_bytes(damage(f.read()))
    code, _, err = run_cli(capsys, "-r", "server", "-c", "restore", "-f", str(bad), "-h", "127.0.0.1:7001")
    assert code == cli_errors.USAGE and len(err) == 1 and says in err[0] and "nothing was changed" in err[0]
    assert not os.path.exists(home.root)


def test_restore_of_a_missing_file_is_named(capsys, home, tmp_path):
    code, _, err = run_cli(capsys, "-r", "server", "-c", "restore", "-f", str(tmp_path / "nope"), "-h", "127.0.0.1:7001")
    assert code == cli_errors.USAGE and "cannot read" in err[0]


def test_restore_wants_a_kvd_home_of_its_own(capsys, home, tmp_path):
    good = backup_file(tmp_path / "good.kvdb")
    home.save_seed("127.0.0.1:7001", "kvd-running")
    code, _, err = run_cli(capsys, "-r", "server", "-c", "restore", "-f", good, "-h", "127.0.0.1:7002")
    assert code == cli_errors.LOCAL_STATE and "kvd-running" in err[0] and "new KVD_HOME" in err[0]
    assert home.records() == []


def test_restore_founds_a_new_cluster_not_the_old_one(capsys, home, tmp_path):
    good = backup_file(tmp_path / "good.kvdb")
    code, _, err = run_cli(capsys, "-r", "server", "-c", "restore", "-f", good, "-h", "127.0.0.1:7002", "--cluster-id", "old")
    assert code == cli_errors.USAGE and "new id" in err[0]


def test_recover_refuses_without_the_flag_saying_what_may_be_lost(capsys, home):
    home.save(home.new_record(id="127.0.0.1:7001", host="127.0.0.1", client_port=7001, peer_port=17001,
                              cluster_id="kvd-x", kind="seed", expect=3))
    code, _, err = run_cli(capsys, "-r", "server", "-c", "recover", "-h", "127.0.0.1:7001")
    assert code == cli_errors.USAGE and len(err) == 1
    assert "lost for good" in err[0] and "--force-new-cluster" in err[0]


def test_recover_needs_a_node_of_this_kvd_home_with_data(capsys, home):
    port = next(p for p in (closed_port() for _ in range(1000)) if p + 10000 <= 65535)  # its peer port too
    node = "127.0.0.1:%d" % port
    code, _, err = run_cli(capsys, "-r", "server", "-c", "recover", "-h", node, "--force-new-cluster")
    assert code == cli_errors.LOCAL_STATE
    home.save(home.new_record(id=node, host="127.0.0.1", client_port=port, peer_port=port + 10000,
                              cluster_id="kvd-x", kind="seed", expect=3))
    code, _, err = run_cli(capsys, "-r", "server", "-c", "recover", "-h", node, "--force-new-cluster")
    assert code == cli_errors.LOCAL_STATE and "no data" in err[0]


def test_recover_refuses_while_another_member_runs_here(capsys, home, monkeypatch):
    from kvd.cli import home as cli_home

    port = next(p for p in (closed_port() for _ in range(1000)) if p + 10000 <= 65535)
    survivor, other = "127.0.0.1:%d" % port, "127.0.0.1:1"
    for node_id, client_port in ((survivor, port), (other, 1)):
        home.save(home.new_record(id=node_id, host="127.0.0.1", client_port=client_port, peer_port=client_port + 10000,
                                  cluster_id="kvd-x", kind="seed", expect=3))
    monkeypatch.setattr(cli_home.NodeRecord, "running_pid", lambda rec: 4242 if rec.id == other else None)
    code, _, err = run_cli(capsys, "-r", "server", "-c", "recover", "-h", survivor, "--force-new-cluster")
    assert code == cli_errors.LOCAL_STATE and other in err[0] and "may not be lost" in err[0]


def test_a_restore_that_fails_writing_keeps_no_half_data_dir(capsys, home, tmp_path, monkeypatch):
    good = backup_file(tmp_path / "good.kvdb")

    def disk_full(path, data_dir, *args, **kwargs):
        os.makedirs(data_dir)
        open(os.path.join(data_dir, "data.mdb"), "wb").close()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_backup, "seed_from_backup", disk_full)
    port = next(p for p in (closed_port() for _ in range(1000)) if p + 10000 <= 65535)
    code, _, err = run_cli(capsys, "-r", "server", "-c", "restore", "-f", good, "-h", "127.0.0.1:%d" % port)
    assert code == cli_errors.LOCAL_STATE and "No space left" in err[0]
    assert home.records() == [] and not os.listdir(os.path.join(home.root, "nodes"))
