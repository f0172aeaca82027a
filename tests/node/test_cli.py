"""
Unit tests of mgmt.py's CLI that need no cluster: argument checking, the
help text, exit codes, the KVD_HOME layout, process helpers, value
formatting, and the client/server commands against a scripted fake node (a
thread speaking just enough of the Redis protocol).

The CLI is run in-process through kvd.cli.mgmt (fast) except where the
thing under test is mgmt.py itself (re-executing into the venv).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from kvd.cli import mgmt as cli
from kvd.cli import client as cli_client
from kvd.cli import errors as cli_errors
from kvd.cli import home as cli_home
from kvd.cli import server as cli_server
from kvd.cli.errors import CliError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- helpers
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_cli(capsys, *args):
    """Run the CLI in-process; return (exit code, stdout, stderr lines)."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def bulk(value) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items) -> bytes:
    out = b"*%d\r\n" % len(items)
    for item in items:
        out += array(item) if isinstance(item, list) else bulk(item)
    return out


class FakeNode:
    """A thread that answers RESP commands with ``handler(args) -> reply bytes``; records what it got."""

    def __init__(self, handler):
        self.handler = handler
        self.seen = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                args = []
                for _ in range(int(line[1:])):
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2])
                self.seen.append(args)
                conn.sendall(self.handler(args))
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture
def fake_nodes():
    started = []

    def make(handler):
        node = FakeNode(handler)
        started.append(node)
        return node

    yield make
    for node in started:
        node.close()


class DictStore:
    """A handler that behaves like a kvd node's key/value commands (SCAN pages of two keys)."""

    def __init__(self, data=None):
        self.data = dict(data or {})

    def __call__(self, args):
        cmd = args[0].upper()
        if cmd == b"PING":
            return b"+PONG\r\n"
        if cmd == b"GET":
            return bulk(self.data.get(args[1]))
        if cmd == b"SET":
            flags = [a.upper() for a in args[3:]]
            if b"XX" in flags and args[1] not in self.data:
                return bulk(None)
            self.data[args[1]] = args[2]
            return b"+OK\r\n"
        if cmd == b"DEL":
            return b":%d\r\n" % (1 if self.data.pop(args[1], None) is not None else 0)
        if cmd == b"SCAN":
            keys = sorted(self.data, reverse=True)  # not sorted the way we print them
            start = int(args[1])
            page = keys[start : start + 2]
            cursor = str(start + 2) if start + 2 < len(keys) else "0"
            return array([cursor, page])
        return b"-ERR unknown command '%s'\r\n" % cmd


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private KVD_HOME for one test."""
    path = tmp_path / "kvd-home"
    monkeypatch.setenv("KVD_HOME", str(path))
    return cli_home.Home(str(path))


# ---------------------------------------------------------------- help and arguments
def test_help_prints_usage_and_the_seed_table_verbatim(capsys):
    """--help prints the seed's usage line, option block and every row of its table (argument and description on one line)."""
    code, out, err = run_cli(capsys, "--help")
    assert code == 0 and err == []
    assert out.startswith("Usage: python3 mgmt.py -r <role> -c <command> [-h <host>] [-k <key>] [-v <value>]\n")
    assert "Help:  Run the management system to control and execute tasks." in out
    for flag, text in [("-r", "Role to be defined."), ("-c", "Command to be executed."), ("-h", "Host name, including address and port."), ("-k", "Key to be stored."), ("-v", "Value corresponding to the key.")]:
        assert "      %s                %s" % (flag, text) in out
    lines = out.splitlines()
    for arguments, description in cli.SEED_TABLE:
        assert any(line.startswith(arguments + " ") and line.rstrip().endswith("   " + description) for line in lines), arguments
    assert len(cli.SEED_TABLE) == 11


def test_help_lists_every_exit_code(capsys):
    """--help lists each exit code with its meaning, so scripts can rely on them."""
    _, out, _ = run_cli(capsys, "--help")
    for code, text in cli_errors.EXIT_CODES:
        assert "  %d  %s" % (code, text) in out
    assert len({code for code, _ in cli_errors.EXIT_CODES}) == len(cli_errors.EXIT_CODES)


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "no arguments"),
        (["-r", "wizard", "-c", "read"], "unknown role"),
        (["-r", "server"], "missing -c"),
        (["-c", "read", "-h", "127.0.0.1:7001"], "missing -r"),
        (["-r", "server", "-c", "read", "-h", "127.0.0.1:7001"], "belongs to -r client"),
        (["-r", "client", "-c", "write", "-h", "127.0.0.1:7001", "-k", "a"], "needs -v <value>"),
        (["-r", "client", "-c", "delete", "-h", "127.0.0.1:7001"], "needs -k <key>"),
        (["-r", "client", "-c", "read", "-h", "127.0.0.1:7001", "-v", "x"], "does not take -v"),
        (["-r", "server", "-c", "kill"], "needs -h <host>"),
        (["-r", "server", "-c", "start", "-h", "127.0.0.1:7001", "--seed", "127.0.0.1:7002"], "does not take --seed"),
        (["-r", "server", "-c", "start", "-h", "127.0.0.1:7001", "--expect", "0"], "--expect"),
        (["-r", "client", "-c", "read", "-h", "not-an-address"], "host:port"),
        (["-r", "server", "-c", "start", "-h", "127.0.0.1:60000"], "peer port"),
        (["-r", "client", "-c", "read", "-h"], "requires an argument"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, home, args, words):
    """Every kind of bad argument is exit code 2 and exactly one line on stderr saying what is wrong."""
    code, out, err = run_cli(capsys, *args)
    assert code == cli_errors.USAGE
    assert out == ""
    assert len(err) == 1 and err[0].startswith("error: ")
    assert words in err[0]


def test_unreachable_node_exits_3_with_a_hint(capsys):
    """A client command to a closed port is exit 3, one line naming the address and what to try."""
    port = closed_port()
    started = time.monotonic()
    code, out, err = run_cli(capsys, "-r", "client", "-c", "read", "-h", "127.0.0.1:%d" % port, "-k", "a")
    assert code == cli_errors.UNREACHABLE
    assert out == "" and len(err) == 1
    assert "127.0.0.1:%d" % port in err[0] and "-c list" in err[0]
    assert time.monotonic() - started < 5, "a refused connection must fail fast"


def test_mgmt_py_runs_as_a_script_and_prints_one_line_on_failure():
    """mgmt.py run like a user runs it: help exits 0, an unreachable node exits 3 with one stderr line and no traceback."""
    done = subprocess.run([sys.executable, os.path.join(REPO, "mgmt.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Arguments" in done.stdout
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "mgmt.py"), "-r", "client", "-c", "write", "-h", "127.0.0.1:%d" % closed_port(), "-k", "a", "-v", "b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_mgmt_py_reexecutes_into_the_venv_or_says_to_install():
    """Without its packages importable (python -S), mgmt.py either re-executes with .venv's python or prints one line with exit 9."""
    done = subprocess.run([sys.executable, "-S", os.path.join(REPO, "mgmt.py"), "--help"], capture_output=True, text=True, timeout=60)
    # Under -S even the venv's own python has no site-packages (and no venv
    # sys.prefix), so mgmt.py must hand over to .venv/bin/python when it exists.
    if os.path.exists(os.path.join(REPO, ".venv", "bin", "python")):
        assert done.returncode == 0 and "Arguments" in done.stdout
    else:
        assert done.returncode == cli_errors.NOT_INSTALLED
        assert "make install" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    env = dict(os.environ, KVD_MGMT_REEXEC="1")  # what a second, failed exec would see
    done = subprocess.run([sys.executable, "-S", os.path.join(REPO, "mgmt.py"), "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == cli_errors.NOT_INSTALLED
    assert done.stderr.count("\n") == 1 and "make install" in done.stderr


def test_system_python3_reexecutes_into_the_venv():
    """`python3 mgmt.py --help` with a python3 outside the venv works when .venv exists (the README's promise)."""
    python3 = shutil.which("python3", path=os.defpath + os.pathsep + os.environ.get("PATH", ""))
    venv_python = os.path.join(REPO, ".venv", "bin", "python")
    if python3 is None or not os.path.exists(venv_python):
        pytest.skip("needs a python3 on PATH and the repo's .venv")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([python3, "-S", os.path.join(REPO, "mgmt.py"), "--help"], capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert done.returncode == 0, done.stderr
    assert "-r client -c update -h <host> -k <key> -v <value>" in done.stdout


# ---------------------------------------------------------------- KVD_HOME
def test_default_home_follows_the_environment(monkeypatch, tmp_path):
    """KVD_HOME wins (made absolute); without it the default is <repo>/.kvd."""
    monkeypatch.setenv("KVD_HOME", str(tmp_path / "x"))
    assert cli_home.default_home() == str(tmp_path / "x")
    monkeypatch.delenv("KVD_HOME")
    assert cli_home.default_home() == os.path.join(REPO, ".kvd")


def test_node_record_layout_and_round_trip(home):
    """A node's pidfile, log and data live in one directory named by its address; the record survives save/load."""
    rec = home.new_record(id="127.0.0.1:7001", host="127.0.0.1", client_port=7001, peer_port=17001, cluster_id="kvd-1", kind="seed", expect=3, tick_ms=50)
    home.save(rec)
    base = os.path.join(home.root, "nodes", "127.0.0.1-7001")
    assert rec.directory == base
    assert rec.pidfile == os.path.join(base, "twistd.pid")
    assert rec.logfile == os.path.join(base, "kvd.log")
    assert rec.data_dir == os.path.join(base, "data")
    assert rec.member_address == "127.0.0.1:7001:17001"
    with open(os.path.join(base, "node.json")) as f:
        stored = json.load(f)
    assert stored["cluster_id"] == "kvd-1" and "home" not in stored
    loaded = home.record("127.0.0.1:7001")
    assert loaded == rec and loaded.home == home.root
    assert [r.id for r in home.records()] == ["127.0.0.1:7001"]
    assert home.record("127.0.0.1:7002") is None


def test_seed_record_and_archive(home):
    """start records the seed; remove archives a node's directory so it is no longer listed."""
    assert home.seed() is None
    home.save_seed("127.0.0.1:7001", "kvd-abc")
    assert home.seed() == {"seed": "127.0.0.1:7001", "cluster_id": "kvd-abc"}
    rec = home.new_record(id="127.0.0.1:7002", host="127.0.0.1", client_port=7002, peer_port=17002, cluster_id="kvd-abc", kind="join")
    home.save(rec)
    target = home.archive(rec)
    assert os.path.exists(os.path.join(target, "node.json"))
    assert target.startswith(os.path.join(home.root, "removed", "127.0.0.1-7002-"))
    assert home.records() == []


def test_a_corrupt_record_is_a_local_state_error(home):
    """A node.json that is not JSON is reported (exit 8) with its path, not a traceback."""
    os.makedirs(os.path.join(home.nodes_dir, "127.0.0.1-7001"))
    with open(os.path.join(home.nodes_dir, "127.0.0.1-7001", "node.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CliError) as caught:
        home.records()
    assert caught.value.code == cli_errors.LOCAL_STATE and "node.json" in caught.value.message


def test_dir_names_are_safe_for_ipv6():
    """An IPv6 address makes a file name without colons."""
    assert cli_home.dir_name("127.0.0.1:7001") == "127.0.0.1-7001"
    assert ":" not in cli_home.dir_name("::1:7001")


def test_twistd_command_line_per_kind(home):
    """A seed waits for N founders (--bootstrap-expect), a one-node seed is its own founder, a joiner has neither."""
    common = dict(host="127.0.0.1", client_port=7001, peer_port=17001, cluster_id="kvd-1", tick_ms=50, election_ticks=10)
    seed = home.new_record(id="127.0.0.1:7001", kind="seed", expect=3, **common)
    argv = seed.twistd_argv("/py")
    assert argv[:3] == ["/py", "-c", cli_home.TWISTD_MAIN]
    assert "--pidfile=%s" % seed.pidfile in argv and "--logfile=%s" % seed.logfile in argv
    after_kvd = argv[argv.index("kvd") + 1 :]
    assert after_kvd[after_kvd.index("--listen") + 1] == "127.0.0.1:7001"
    assert after_kvd[after_kvd.index("--cluster-id") + 1] == "kvd-1"
    assert after_kvd[after_kvd.index("--data-dir") + 1] == seed.data_dir
    assert after_kvd[after_kvd.index("--tick-ms") + 1] == "50"
    assert after_kvd[after_kvd.index("--bootstrap-expect") + 1] == "3"
    lone = home.new_record(id="127.0.0.1:7001", kind="seed", expect=1, **common)
    assert "--initial-cluster" in lone.twistd_argv("/py") and "--bootstrap-expect" not in lone.twistd_argv("/py")
    joiner = home.new_record(id="127.0.0.1:7001", kind="join", seed="127.0.0.1:7000", **common)
    assert "--initial-cluster" not in joiner.twistd_argv("/py") and "--bootstrap-expect" not in joiner.twistd_argv("/py")



def test_nodes_run_with_their_peer_certificate(home):
    """Every node mgmt.py starts gets --peer-cert/--peer-key (its directory) and --peer-ca (KVD_HOME/tls)."""
    rec = home.new_record(id="127.0.0.1:7001", host="127.0.0.1", client_port=7001, peer_port=17001, cluster_id="c", kind="seed", expect=3)
    argv = rec.twistd_argv("/py")
    assert argv[argv.index("--peer-cert") + 1] == os.path.join(rec.directory, "peer.crt")
    assert argv[argv.index("--peer-key") + 1] == os.path.join(rec.directory, "peer.key")
    assert argv[argv.index("--peer-ca") + 1] == os.path.join(home.root, "tls", "ca.crt")
    cli_server.ensure_peer_certificate(rec)
    from kvd.wire.tls import PeerTLS

    assert PeerTLS(rec.peer_cert, rec.peer_key, rec.peer_ca).identity == "127.0.0.1:7001"
    assert oct(os.stat(rec.peer_key).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.join(home.root, "tls", "ca.key")).st_mode & 0o777) == "0o600"


def test_a_joiner_in_another_kvd_home_needs_the_cluster_ca(capsys, home, tmp_path):
    """Without the CA (no token, no seed here) a joiner is refused with the way out; a token installs the CA."""
    rec = home.new_record(id="127.0.0.1:7002", host="127.0.0.1", client_port=7002, peer_port=17002, cluster_id="c", kind="join")
    with pytest.raises(cli_errors.CliError, match="--token-file"):
        cli_server.ensure_peer_certificate(rec)
    from kvd.cli.certs import CertDir

    elsewhere = CertDir(str(tmp_path / "seed-home" / "tls"))
    elsewhere.ensure_ca("c")
    token_file = tmp_path / "join-token"
    token_file.write_text(elsewhere.token() + "\n")
    from kvd.cli import mgmt as cli_mgmt

    cli_server.install_join_token(home, cli_mgmt.join_token(str(token_file)))
    cli_server.ensure_peer_certificate(rec)
    assert open(rec.peer_ca, "rb").read() == open(elsewhere.ca_cert, "rb").read()
    code, _, err = run_cli(capsys, "-r", "server", "-c", "join", "-h", "127.0.0.1:7002", "--token-file", str(tmp_path / "missing"))
    assert code == cli_errors.USAGE and "cannot read --token-file" in err[0]


def test_a_join_from_a_kvd_home_without_the_ca_records_nothing(capsys, home, fake_nodes):
    """join --seed of a running cluster from a fresh KVD_HOME, with no token: exit 8 naming the token, nothing recorded."""
    seed = fake_nodes(lambda args: bulk(b"kvd-x") if args[0].upper() == b"KVD.CLUSTER" else b"-ERR no\r\n")
    code, _, err = run_cli(capsys, "-r", "server", "-c", "join", "-h", "127.0.0.1:7002", "--seed", seed.address)
    assert code == cli_errors.LOCAL_STATE and len(err) == 1 and "--token-file" in err[0]
    assert home.records() == []

# ---------------------------------------------------------------- processes
def test_pid_helpers_see_live_dead_and_zombie_processes(tmp_path):
    """pid_alive: True for us, False for a reaped child and for an unreaped (zombie) one; read_pid rejects garbage."""
    assert cli_home.pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    if os.path.isdir("/proc/self"):
        # Not reaped yet: a zombie must count as dead (PID 1 in a container may never reap it).
        while cli_home.pid_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not cli_home.pid_alive(child.pid)
    child.wait(timeout=10)
    assert not cli_home.pid_alive(child.pid)
    pidfile = tmp_path / "p.pid"
    pidfile.write_text("garbage\n")
    assert cli_home.read_pid(str(pidfile)) is None
    pidfile.write_text("%d\n" % os.getpid())
    assert cli_home.read_pid(str(pidfile)) == os.getpid()
    assert cli_home.read_pid(str(tmp_path / "missing.pid")) is None


def test_a_pidfile_pointing_at_another_program_is_not_ours(home):
    """A recycled pid (a live process that is not this kvd node) is never reported as the node, so never signalled."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc")
    rec = home.new_record(id="127.0.0.1:7001", host="127.0.0.1", client_port=7001, peer_port=17001, cluster_id="c", kind="seed", expect=3)
    home.save(rec)
    with open(rec.pidfile, "w") as f:
        f.write("%d\n" % os.getpid())
    assert rec.pid() == os.getpid()
    assert rec.running_pid() is None


def test_port_free_sees_a_listener():
    """port_free is False while something listens and True once it is gone."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    assert not cli_home.port_free("127.0.0.1", port)
    s.close()
    assert cli_home.port_free("127.0.0.1", port)


def test_kill_and_stop_of_a_stopped_node_say_so(capsys, home):
    """kill/stop of a recorded node that is not running exit 0 with a note; of an unknown node exit 8."""
    rec = home.new_record(id="127.0.0.1:7001", host="127.0.0.1", client_port=7001, peer_port=17001, cluster_id="c", kind="seed", expect=3)
    home.save(rec)
    for command in ("kill", "stop"):
        code, out, err = run_cli(capsys, "-r", "server", "-c", command, "-h", "127.0.0.1:7001")
        assert code == 0 and "not running" in out and err == []
    code, out, err = run_cli(capsys, "-r", "server", "-c", "kill", "-h", "127.0.0.1:7009")
    assert code == cli_errors.LOCAL_STATE and len(err) == 1 and "KVD_HOME" in err[0]


def test_start_on_a_busy_port_fails_cleanly_and_records_nothing(capsys, home):
    """start on a port another program holds is exit 6, one line, and leaves KVD_HOME without a record."""
    s = socket.socket()
    for port in random.Random().sample(range(12000, 22000), 200):  # a peer port (+10000) must exist
        try:
            s.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    s.listen(1)
    try:
        code, out, err = run_cli(capsys, "-r", "server", "-c", "start", "-h", "127.0.0.1:%d" % port)
    finally:
        s.close()
    assert code == cli_errors.PROCESS and len(err) == 1 and "in use" in err[0]
    assert home.records() == [] and home.seed() is None


def test_start_twice_is_refused(capsys, home):
    """A node already started from this KVD_HOME is not started again over its data: restart is the way (exit 8)."""
    rec = home.new_record(id="127.0.0.1:7001", host="127.0.0.1", client_port=7001, peer_port=17001, cluster_id="c", kind="seed", expect=3)
    home.save(rec)
    os.makedirs(rec.data_dir)
    with open(os.path.join(rec.data_dir, "data.mdb"), "wb") as f:
        f.write(b"x")
    code, _, err = run_cli(capsys, "-r", "server", "-c", "start", "-h", "127.0.0.1:7001")
    assert code == cli_errors.LOCAL_STATE and "-c restart" in err[0]
    assert cli_server.has_data(rec)


def test_join_without_a_seed_is_a_usage_error(capsys, home):
    """join with no recorded seed and no --seed says to pass --seed (exit 2)."""
    code, _, err = run_cli(capsys, "-r", "server", "-c", "join", "-h", "127.0.0.1:7002")
    assert code == cli_errors.USAGE and "--seed" in err[0]


def test_join_with_an_unreachable_seed_exits_3(capsys, home):
    """join through a seed that does not answer is exit 3 and starts nothing."""
    code, _, err = run_cli(capsys, "-r", "server", "-c", "join", "-h", "127.0.0.1:7002", "--seed", "127.0.0.1:%d" % closed_port())
    assert code == cli_errors.UNREACHABLE and len(err) == 1 and "seed" in err[0]
    assert home.records() == []


# ---------------------------------------------------------------- values
def test_values_print_as_text_with_escapes_for_binary():
    """UTF-8 prints as itself; other bytes as backslash escapes; argv bytes round-trip through surrogateescape."""
    assert cli_client.to_text("héllo".encode()) == "héllo"
    assert cli_client.to_text(b"a\xffb") == "a\\xffb"
    assert cli_client.to_text(None) == ""
    assert cli_client.to_bytes("a\udcffb") == b"a\xffb"
    assert cli_client.to_bytes("é") == "é".encode()


def test_format_pairs_text_and_json():
    """read of every key prints key: value lines, or one JSON object; an empty store says so."""
    pairs = [(b"a", b"1"), (b"b", b"\xff")]
    assert cli_client.format_pairs(pairs, False) == "a: 1\nb: \\xff"
    assert json.loads(cli_client.format_pairs(pairs, True)) == {"a": "1", "b": "\\xff"}
    assert cli_client.format_pairs([], False) == "(no keys)"
    assert json.loads(cli_client.format_pairs([], True)) == {}


def test_parse_info_reads_key_value_lines():
    """INFO's text becomes a dict; headers and blank lines are skipped; values keep their colons."""
    raw = b"# Raft\r\nraft_role:leader\r\nraft_leader:127.0.0.1:7001\r\n\r\nraft_term:3\r\n"
    assert cli_client.parse_info(raw) == {"raft_role": "leader", "raft_leader": "127.0.0.1:7001", "raft_term": "3"}


@pytest.mark.parametrize(
    "reply, code",
    [
        ("NOLEADER no leader", cli_errors.NO_QUORUM),
        ("TRYAGAIN leadership moved", cli_errors.NO_QUORUM),
        ("TIMEOUT not committed in time", cli_errors.TIMEOUT),
        ("ERR value too large", cli_errors.SERVER_ERROR),
    ],
)
def test_node_errors_map_to_kinds(reply, code):
    """Error replies map to their exit codes and keep the node's words."""
    error = cli_client.node_error("127.0.0.1:7001", reply)
    assert error.code == code
    assert reply.split(" ", 1)[1] in error.message
    if code == cli_errors.NO_QUORUM:
        assert "NOT applied" in error.message


# ---------------------------------------------------------------- client role against a fake node
def test_client_commands_against_a_fake_node(capsys, fake_nodes):
    """write, read -k, update, delete and read-all do the right commands and print the right things."""
    store = DictStore()
    node = fake_nodes(store)
    h = node.address
    assert run_cli(capsys, "-r", "client", "-c", "write", "-h", h, "-k", "k1", "-v", "v1")[:2] == (0, "OK\n")
    assert run_cli(capsys, "-r", "client", "-c", "read", "-h", h, "-k", "k1")[:2] == (0, "v1\n")
    assert run_cli(capsys, "-r", "client", "-c", "update", "-h", h, "-k", "k1", "-v", "v2")[:2] == (0, "OK\n")
    assert store.data[b"k1"] == b"v2"
    assert [b"SET", b"k1", b"v2", b"XX"] in node.seen, "update must be one atomic SET ... XX"
    assert run_cli(capsys, "-r", "client", "-c", "delete", "-h", h, "-k", "k1")[:2] == (0, "OK\n")
    assert store.data == {}


def test_missing_keys_exit_1(capsys, fake_nodes):
    """read -k, update and delete of a missing key print `key not found` and exit 1; update creates nothing."""
    store = DictStore()
    h = fake_nodes(store).address
    for args in (["read", "-h", h, "-k", "nope"], ["update", "-h", h, "-k", "nope", "-v", "x"], ["delete", "-h", h, "-k", "nope"]):
        code, out, err = run_cli(capsys, "-r", "client", "-c", *args)
        assert code == cli_errors.KEY_NOT_FOUND
        assert out == "" and err == ["error: key not found: nope"]
    assert store.data == {}


def test_read_all_pages_through_scan_and_sorts(capsys, fake_nodes):
    """read of every key follows SCAN cursors across pages and prints keys sorted; --json gives an object."""
    store = DictStore({b"b": b"2", b"a": b"1", b"d": b"4", b"c": b"\xff", b"e": b"5"})
    node = fake_nodes(store)
    code, out, _ = run_cli(capsys, "-r", "client", "-c", "read", "-h", node.address)
    assert code == 0
    assert out.splitlines() == ["a: 1", "b: 2", "c: \\xff", "d: 4", "e: 5"]
    assert sum(1 for cmd in node.seen if cmd[0] == b"SCAN") == 3
    code, out, _ = run_cli(capsys, "-r", "client", "-c", "read", "-h", node.address, "--json")
    assert json.loads(out) == {"a": "1", "b": "2", "c": "\\xff", "d": "4", "e": "5"}


@pytest.mark.parametrize(
    "reply, code, words",
    [
        (b"-NOLEADER no leader: this node cannot reach a majority\r\n", cli_errors.NO_QUORUM, "NOT applied"),
        (b"-TRYAGAIN the node is shutting down\r\n", cli_errors.NO_QUORUM, "majority"),
        (b"-TIMEOUT the outcome is unknown\r\n", cli_errors.TIMEOUT, "unknown"),
        (b"-ERR value too large\r\n", cli_errors.SERVER_ERROR, "value too large"),
    ],
)
def test_write_errors_exit_codes(capsys, fake_nodes, reply, code, words):
    """A write refused with NOLEADER/TRYAGAIN is exit 4, TIMEOUT exit 5, anything else exit 7, each one line."""
    h = fake_nodes(lambda args: reply).address
    got, out, err = run_cli(capsys, "-r", "client", "-c", "write", "-h", h, "-k", "k", "-v", "v")
    assert got == code and out == "" and len(err) == 1 and words in err[0]


def test_a_silent_node_times_out_with_unknown_outcome(capsys, fake_nodes):
    """A node that never answers is exit 5 after --timeout, saying the outcome is unknown (bounded wait)."""

    def silent(args):
        time.sleep(3)
        return b"+OK\r\n"

    h = fake_nodes(silent).address
    started = time.monotonic()
    code, _, err = run_cli(capsys, "-r", "client", "-c", "write", "-h", h, "-k", "k", "-v", "v", "--timeout", "0.5")
    assert code == cli_errors.TIMEOUT and "unknown" in err[0]
    assert time.monotonic() - started < 2.5


def test_binary_values_round_trip_from_the_command_line(capsys, fake_nodes):
    """A value given as non-UTF-8 argv bytes is stored as those bytes and printed with escapes."""
    store = DictStore()
    h = fake_nodes(store).address
    assert run_cli(capsys, "-r", "client", "-c", "write", "-h", h, "-k", "bin", "-v", "x\udcfey")[0] == 0
    assert store.data[b"bin"] == b"x\xfey"
    assert run_cli(capsys, "-r", "client", "-c", "read", "-h", h, "-k", "bin")[1] == "x\\xfey\n"


# ---------------------------------------------------------------- server role against fake nodes
def test_membership_requests_follow_moved_to_the_leader(fake_nodes):
    """KVD.JOIN sent to a follower that answers -MOVED is re-sent to the leader it names."""
    leader = fake_nodes(lambda args: bulk("joining"))
    follower = fake_nodes(lambda args: b"-MOVED %s\r\n" % leader.address.encode())
    answered, status = cli_server.leader_request([follower.address], ("KVD.JOIN", "127.0.0.1:7009", "127.0.0.1:7009:17009"), timeout_s=5)
    assert (answered, status) == (leader.address, "joining")
    assert leader.seen == [[b"KVD.JOIN", b"127.0.0.1:7009", b"127.0.0.1:7009:17009"]]


def test_membership_requests_retry_without_a_leader_then_give_up(fake_nodes):
    """NOLEADER is retried until the deadline, then reported as no quorum (exit 4): bounded, never a hang."""
    node = fake_nodes(lambda args: b"-NOLEADER no leader yet\r\n")
    started = time.monotonic()
    with pytest.raises(CliError) as caught:
        cli_server.leader_request([node.address], ("KVD.REMOVE", "127.0.0.1:7009"), timeout_s=1.0)
    assert caught.value.code == cli_errors.NO_QUORUM
    assert len(node.seen) >= 2 and time.monotonic() - started < 3


def _cluster_handler(me, members, info):
    def handler(args):
        cmd = args[0].upper()
        if cmd == b"KVD.MEMBERS":
            return bulk(json.dumps(members))
        if cmd == b"INFO":
            text = "# Raft\r\n" + "".join("%s:%s\r\n" % kv for kv in info[me].items())
            return bulk(text)
        if cmd == b"PING":
            return b"+PONG\r\n"
        return b"-ERR unknown\r\n"

    return handler


def test_list_shows_each_member_with_its_state(capsys, home, fake_nodes):
    """list asks any member for KVD.MEMBERS, prefers the leader's view for up/down, and shows INFO of each member."""
    nodes = [fake_nodes(lambda args: b"-ERR not yet\r\n") for _ in range(3)]
    ids = [n.address for n in nodes]
    members = [
        {"id": ids[0], "client": ids[0], "peer": "127.0.0.1:1", "voter": True, "leader": True, "match": 9, "up": True},
        {"id": ids[1], "client": ids[1], "peer": "127.0.0.1:2", "voter": True, "leader": False, "match": 9, "up": True},
        {"id": ids[2], "client": ids[2], "peer": "127.0.0.1:3", "voter": True, "leader": False, "match": 5, "up": False},
    ]
    info = {a: {"raft_role": role, "raft_term": "4", "raft_last_index": "9", "raft_commit_index": "9", "raft_applied_index": "9", "raft_cluster_id": "kvd-t"} for a, role in zip(ids, ["leader", "follower", "follower"])}
    for node in nodes:
        node.handler = _cluster_handler(node.address, members, info)
    nodes[2].close()  # down: the leader says so, and INFO cannot reach it
    code, out, err = run_cli(capsys, "-r", "server", "-c", "list", "-h", ids[1])
    assert code == 0 and err == []
    assert out.splitlines()[0] == "cluster kvd-t: leader %s, 3 voter(s), quorum 2" % ids[0]
    header = out.splitlines()[1].split()
    assert header[:4] == ["NODE", "ADDRESS", "ROLE", "STATUS"] and "APPLIED" in header
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows[ids[0]][2:4] == ["leader", "up"]
    assert rows[ids[1]][2:4] == ["follower", "up"]
    assert rows[ids[2]][3] == "down"
    assert any(cmd[0] == b"KVD.MEMBERS" for cmd in nodes[0].seen), "list must ask the leader for its view"
    code, out, _ = run_cli(capsys, "-r", "server", "-c", "list", "-h", ids[1], "--json")
    view = json.loads(out)
    assert view["leader"] == ids[0] and view["quorum"] == 2
    assert [n["status"] for n in view["nodes"]] == ["up", "up", "down"]


def test_list_does_not_name_a_dead_leader(capsys, home, fake_nodes):
    """Right after the leader is killed a follower's view still flags it: the header must not name it."""
    nodes = [fake_nodes(lambda args: b"-ERR not yet\r\n") for _ in range(3)]
    ids = [n.address for n in nodes]
    members = [{"id": a, "client": a, "peer": "127.0.0.1:%d" % i, "voter": True, "leader": i == 0}
               for i, a in enumerate(ids)]
    info = {a: {"raft_role": "follower", "raft_term": "4", "raft_cluster_id": "kvd-t"} for a in ids}
    for node in nodes:
        node.handler = _cluster_handler(node.address, members, info)
    nodes[0].close()  # the leader is dead
    code, out, _ = run_cli(capsys, "-r", "server", "-c", "list", "-h", ids[1])
    assert out.splitlines()[0] == "cluster kvd-t: leader none, 3 voter(s), quorum 2"
    code, out, _ = run_cli(capsys, "-r", "server", "-c", "list", "-h", ids[1], "--json")
    assert json.loads(out)["leader"] is None


def test_list_shows_recorded_nodes_that_are_stopped(capsys, home, fake_nodes):
    """Nodes started from KVD_HOME that no member lists (and that do not run) appear as stopped, not members."""
    leader = fake_nodes(lambda args: b"-ERR\r\n")
    members = [{"id": leader.address, "client": leader.address, "peer": "127.0.0.1:1", "voter": True, "leader": True, "up": True, "match": 1}]
    leader.handler = _cluster_handler(leader.address, members, {leader.address: {"raft_role": "leader", "raft_term": "1"}})
    rec = home.new_record(id="127.0.0.1:7007", host="127.0.0.1", client_port=7007, peer_port=17007, cluster_id="c", kind="join")
    home.save(rec)
    code, out, _ = run_cli(capsys, "-r", "server", "-c", "list", "-h", leader.address, "--json")
    nodes = {n["id"]: n for n in json.loads(out)["nodes"]}
    assert code == 0
    assert nodes["127.0.0.1:7007"]["status"] == "stopped" and nodes["127.0.0.1:7007"]["member"] is False
    assert nodes[leader.address]["role"] == "leader"


def test_list_with_nothing_answering_exits_3(capsys, home):
    """list when no node answers prints the local nodes (stopped) and one error line, exit 3."""
    rec = home.new_record(id="127.0.0.1:%d" % closed_port(), host="127.0.0.1", client_port=1, peer_port=2, cluster_id="c", kind="seed", expect=3)
    home.save(rec)
    code, out, err = run_cli(capsys, "-r", "server", "-c", "list")
    assert code == cli_errors.UNREACHABLE and len(err) == 1
    assert rec.id in out and "stopped" in out


def test_remove_of_a_leader_that_times_out_is_confirmed_by_the_others(capsys, home, fake_nodes):
    """A leader removing itself may answer TIMEOUT; remove then asks the other members and succeeds once they no longer list it."""
    state = {"removed": False}
    leader = fake_nodes(lambda args: b"-ERR\r\n")
    other = fake_nodes(lambda args: b"-ERR\r\n")

    def member_rows():
        rows = [{"id": other.address, "client": other.address, "peer": "127.0.0.1:1", "voter": True, "leader": state["removed"]}]
        if not state["removed"]:
            rows.append({"id": leader.address, "client": leader.address, "peer": "127.0.0.1:2", "voter": True, "leader": True})
        return rows

    def leader_handler(args):
        if args[0] == b"KVD.REMOVE":
            state["removed"] = True  # committed by the others, but this node never learns it
            return b"-TIMEOUT membership change not committed in time\r\n"
        return bulk(json.dumps(member_rows()))

    def other_handler(args):
        if args[0] == b"KVD.REMOVE":
            return b"-MOVED %s\r\n" % leader.address.encode()
        return bulk(json.dumps(member_rows()))

    leader.handler, other.handler = leader_handler, other_handler
    home.save_seed(other.address, "c")
    code, out, err = run_cli(capsys, "-r", "server", "-c", "remove", "-h", leader.address)
    assert code == 0, err
    assert "removed %s" % leader.address in out and "stepped down" in out
    assert [b"KVD.REMOVE", leader.address.encode()] in leader.seen


def test_remove_of_a_node_that_is_no_longer_a_member_just_cleans_up(capsys, home, fake_nodes):
    """remove of a node the leader no longer lists sends no KVD.REMOVE, and archives its local directory."""
    leader = fake_nodes(lambda args: b"-ERR\r\n")
    leader.handler = lambda args: bulk(json.dumps([{"id": leader.address, "client": leader.address, "peer": "x:1", "voter": True, "leader": True}]))
    rec = home.new_record(id="127.0.0.1:%d" % closed_port(), host="127.0.0.1", client_port=1, peer_port=2, cluster_id="c", kind="join")
    home.save(rec)
    home.save_seed(leader.address, "c")
    code, out, err = run_cli(capsys, "-r", "server", "-c", "remove", "-h", rec.id)
    assert code == 0, err
    assert "not a member" in out and "moved to" in out
    assert not any(cmd[0] == b"KVD.REMOVE" for cmd in leader.seen)
    assert home.records() == []


# ---------------------------------------------------------------- --docker (no engine needed)
def test_docker_mode_arguments_without_docker(capsys, monkeypatch):
    from kvd.cli import docker as cli_docker
    from kvd.cli import docker_ops

    monkeypatch.delenv("KVD_DOCKER", raising=False)
    assert cli.docker_project(None) is None
    assert cli.docker_project("") == "kvd"  # a bare --docker
    assert cli.docker_project("proj") == "proj"
    monkeypatch.setenv("KVD_DOCKER", "fromenv")
    assert cli.docker_project(None) == "fromenv"
    assert cli.docker_project("") == "fromenv"

    # -h of start/join: name:port is the id (published on 127.0.0.1:port); IP:port names node<port>.
    assert cli_docker.plan_node("node1:7001") == ("node1", "node1:7001", ("127.0.0.1", 7001))
    assert cli_docker.plan_node("127.0.0.1:7005") == ("node7005", "node7005:7005", ("127.0.0.1", 7005))
    with pytest.raises(CliError) as e:
        cli_docker.plan_node("node1:60000")
    assert e.value.code == cli_errors.USAGE

    # What --docker does not do is a usage error, before Docker is asked anything.
    asked = []
    monkeypatch.setattr(docker_ops, "engine_problem", lambda *a, **k: asked.append(1) or "the docker command is not installed")
    code, out, err = run_cli(capsys, "--docker", "-r", "client", "-c", "read", "--dns", "127.0.0.1:27001")
    assert code == cli_errors.USAGE and len(err) == 1
    assert asked == []

    # No Docker: one line, exit PROCESS; with the flag bare, and through $KVD_DOCKER alone.
    for args in (["--docker", "p", "-r", "server", "-c", "start", "-h", "node1:7001"], ["--docker", "-r", "server", "-c", "list"], ["-r", "server", "-c", "kill", "-h", "node1:7001"],
                 ["--docker", "p", "-r", "server", "-c", "remove", "-h", "node1:7001"]):
        code, out, err = run_cli(capsys, *args)
        assert code == cli_errors.PROCESS and len(err) == 1 and "Docker" in err[0] and "not installed" in err[0], (args, err)
    assert len(asked) == 4


# ---------------------------------------------------------------- rebuild (refusals: nothing is touched)
def _corrupt_node(home, cluster_id="c"):
    rec = home.new_record(id="127.0.0.1:%d" % closed_port(), host="127.0.0.1", client_port=1, peer_port=2, cluster_id=cluster_id, kind="seed", expect=3)
    home.save(rec)
    os.makedirs(rec.data_dir)
    with open(os.path.join(rec.data_dir, "data.mdb"), "wb") as f:
        f.write(b"the corrupt data")
    return rec


def test_rebuild_without_another_member_is_refused_and_touches_nothing(capsys, home):
    rec = _corrupt_node(home)
    code, out, err = run_cli(capsys, "-r", "server", "-c", "rebuild", "-h", rec.id)
    assert code == cli_errors.USAGE and len(err) == 1 and "--seed" in err[0], err
    assert os.path.exists(os.path.join(rec.data_dir, "data.mdb"))


def test_rebuild_when_no_member_answers_is_refused_and_touches_nothing(capsys, home):
    rec = _corrupt_node(home)
    code, out, err = run_cli(capsys, "-r", "server", "-c", "rebuild", "-h", rec.id, "--seed", "127.0.0.1:%d" % closed_port())
    assert code == cli_errors.UNREACHABLE and len(err) == 1, err
    assert os.path.exists(os.path.join(rec.data_dir, "data.mdb")) and home.record(rec.id).kind == "seed"


def test_rebuild_from_another_cluster_is_refused_and_touches_nothing(capsys, home, fake_nodes):
    rec = _corrupt_node(home, cluster_id="mine")
    other = fake_nodes(lambda args: bulk("theirs") if args[0] == b"KVD.CLUSTER" else b"-ERR\r\n")
    code, out, err = run_cli(capsys, "-r", "server", "-c", "rebuild", "-h", rec.id, "--seed", other.address)
    assert code == cli_errors.LOCAL_STATE and len(err) == 1 and "theirs" in err[0] and "nothing was changed" in err[0], err
    assert os.path.exists(os.path.join(rec.data_dir, "data.mdb"))
    assert not any(cmd[0] == b"KVD.REMOVE" for cmd in other.seen)


def test_rebuild_is_in_the_help_and_refused_with_docker(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "-r server -c rebuild -h <host>" in out
    code, out, err = run_cli(capsys, "--docker", "p", "-r", "server", "-c", "rebuild", "-h", "node1:7001")
    assert code == cli_errors.USAGE and len(err) == 1 and "rebuild does not go with --docker" in err[0], err
