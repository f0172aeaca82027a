"""
A disk that lies, with real processes (issue 13): a value flipped inside a
stopped follower's data.mdb, the file truncated to half, a disk that fills
up under a running node.  Each must fail-stop the node (one line naming the
data dir and the error, a non-zero exit status, never SIGBUS), the others
must never serve the corrupt value, and ``mgmt.py -r server -c rebuild``
must bring the node back from the others.

The faulty node is started in the foreground (``twistd -n``), so that its
exit status is the test's to read; the others run as daemons.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request

import pytest
import redis

from tests.system.conftest import free_client_ports, wait_for as wait_until
from tests.system.nodes import REPO, TWISTD, Cluster, Node, wait_for

pytestmark = pytest.mark.system

#: Exit status of a node whose storage failed while it ran (kvd.node.service.EXIT_STORAGE).
EXIT_STORAGE = 74
ORIGINAL = b"the-original-value:" + b"0123456789abcdef" * 4


def flip_in_file(path: str, needle: bytes, offset: int = 7, count: int = 5) -> int:
    """Flip ``count`` bytes inside every copy of ``needle`` in the file, as a lying disk would; how many copies."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        found, start = 0, 0
        for _ in range(1000):  # bounded: a data file holds few copies of one value
            at = data.find(needle, start)
            if at < 0:
                break
            for i in range(at + offset, at + offset + count):
                data[i] ^= 0x55
            found += 1
            start = at + len(needle)
        f.seek(0)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return found


def run_foreground(node: Node, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """``twistd -n kvd ...`` of ``node`` to its end: its exit status and what it printed."""
    cmd = TWISTD + ["-n", "--pidfile", node.pidfile, "--logfile", node.logfile, "kvd"] + node.args
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


def assert_one_line_refusal(done: subprocess.CompletedProcess, data_dir: str, *phrases: str) -> str:
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode > 0, "exit status %d (negative: killed by a signal)\n%s" % (done.returncode, "\n".join(lines))
    assert len(lines) == 1, "not one line:\n%s" % "\n".join(lines)
    (line,) = lines
    assert data_dir in line and "Traceback" not in line, line
    for phrase in phrases:
        assert phrase in line, line
    return line


def data_dir(node: Node) -> str:
    return node.args[node.args.index("--data-dir") + 1]


def test_a_flipped_value_in_a_stopped_follower_fail_stops_it_and_is_never_served(cluster):
    c = cluster()
    leader = c.leader()
    assert leader.client().set(b"lie", ORIGINAL)
    victim = c.followers()[0]
    c.caught_up(victim)
    victim.stop()
    copies = flip_in_file(os.path.join(data_dir(victim), "data.mdb"), ORIGINAL)
    assert copies >= 1, "the value is not in the follower's data file"
    done = run_foreground(victim)
    line = assert_one_line_refusal(done, data_dir(victim), "checksum mismatch", "rebuild")
    assert "log entry" in line
    # The others serve the value that was written, linearizably, and go on taking writes.
    for node in c.nodes:
        if node is not victim:
            assert node.client().get(b"lie") == ORIGINAL
    assert c.leader().client().set(b"after", b"1")


def test_a_data_file_truncated_to_half_is_refused_at_start_without_sigbus(cluster):
    c = cluster()
    leader = c.leader()
    pipe = leader.client().pipeline(transaction=False)
    for i in range(300):
        pipe.set(b"t%d" % i, bytes([i % 256]) * 2048)
    assert all(pipe.execute())
    victim = c.followers()[0]
    c.caught_up(victim)
    victim.stop()
    data = os.path.join(data_dir(victim), "data.mdb")
    size = os.path.getsize(data)
    assert size > 512 * 1024
    os.truncate(data, size // 2)
    done = run_foreground(victim)
    assert done.returncode != -signal.SIGBUS
    assert_one_line_refusal(done, data_dir(victim), "truncated")
    for node in c.nodes:
        if node is not victim:
            assert node.client().get(b"t299") == bytes([299 % 256]) * 2048


@pytest.fixture
def small_disk():
    """A 6 MiB tmpfs (root only), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tempfile.mkdtemp(prefix="kvd-full-disk-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", where], capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(where)
        pytest.skip("cannot mount a tmpfs here: %s" % mounted.stderr.strip())
    try:
        yield where
    finally:
        if subprocess.run(["umount", where], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", where], capture_output=True)  # still busy: detach it now, freed once closed
        os.rmdir(where)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def health(http_port: int):
    """The status /v1/health answers, or None when nothing answers."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/health" % http_port, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


class HealthWatch(threading.Thread):
    """Polls /v1/health until told to stop (or 2000 polls): every status it saw, in order."""

    def __init__(self, http_port: int):
        super().__init__(daemon=True)
        self.http_port = http_port
        self.seen = []
        self.done = threading.Event()

    def run(self):
        for _ in range(2000):
            if self.done.is_set():
                return
            self.seen.append(health(self.http_port))
            self.done.wait(0.01)


def test_a_full_disk_fail_stops_the_node_with_one_line_and_a_non_zero_exit(tmp_path, small_disk):
    """The follower whose data dir is a small tmpfs: writes fill it, it fail-stops (status 74), the others go on."""
    c = Cluster(str(tmp_path), 3)
    victim = c.nodes[2]
    victim.args[victim.args.index("--data-dir") + 1] = os.path.join(small_disk, "data")
    http_port = free_port()
    victim.args += ["--http-port", str(http_port)]
    process = None
    try:
        for node in c.nodes[:2]:
            node.start()
        cmd = TWISTD + ["-n", "--pidfile", victim.pidfile, "--logfile", victim.logfile, "kvd"] + victim.args
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        victim.pid = process.pid
        leader = c.leader(timeout_s=30)
        wait_for(lambda: health(http_port) == 200, 30, "the victim to be healthy")
        watch = HealthWatch(http_port)
        watch.start()
        value = os.urandom(256 * 1024)
        client = leader.client()
        for i in range(200):  # 50 MiB at most; the tmpfs holds 6
            assert client.set(b"fill%d" % i, value)
            if process.poll() is not None:
                break
        wait_for(lambda: process.poll() is not None, 30, "the victim to exit")
        # The watch's next poll after the exit (the fill may end within one poll interval of the start).
        wait_for(lambda: any(status != 200 for status in watch.seen), 10, "the health watch to see the failure")
        watch.done.set()
        watch.join(10)
        # Healthy until the failure, then never again: 503 (if a poll fell in the instant before the
        # process ended) or nothing at all.
        first_unhealthy = next(i for i, status in enumerate(watch.seen) if status != 200)
        assert set(watch.seen[first_unhealthy:]) <= {503, None}, watch.seen
        assert watch.seen[-1] is None
        output = process.stdout.read().decode("utf-8", "replace")
        assert process.returncode == EXIT_STORAGE, (process.returncode, output)
        with open(victim.logfile, errors="replace") as f:
            log = f.read().splitlines()
        critical = [line for line in log if "storage failed" in line]
        assert len(critical) == 1, "\n".join(log[-30:])
        assert os.path.join(small_disk, "data") in critical[0] and "stopping the node" in critical[0], critical[0]
        assert not [line for line in log if "Traceback" in line], "\n".join(log[-30:])
        survivors = c.nodes[:2]
        assert c.leader(among=survivors).client().set(b"after", b"1")
        assert all(n.client().get(b"fill0") == value for n in survivors)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        victim.pid = None
        print(c.logs())
        c.destroy()


def _local(host: str) -> redis.Redis:
    """A connection that reads what ``host`` itself holds (READONLY)."""
    client = redis.Redis(host="127.0.0.1", port=int(host.rsplit(":", 1)[1]), socket_timeout=10)
    client.execute_command("READONLY")
    return client


def _holds(host: str, key: bytes, value: bytes) -> bool:
    try:
        return _local(host).get(key) == value
    except redis.RedisError:
        return False


def test_rebuild_brings_a_corrupted_node_back_and_it_serves_the_clusters_data(mgmt):
    """mgmt.py: the seed's copy of a value is flipped on disk; restart refuses it in one line; rebuild makes it a
    voter again holding every key, caught up by snapshot (the leader's log was compacted past what the wiped node
    has).  Then a running node (the leader) is rebuilt: rebuild stops it first."""
    ports = free_client_ports(3)
    hosts = ["127.0.0.1:%d" % p for p in ports]
    mgmt.ok("-r", "server", "-c", "start", "-h", hosts[0], "--tick-ms", "50")
    for host in hosts[1:]:
        mgmt.ok("-r", "server", "-c", "join", "-h", host)

    def voters():
        view = mgmt.cluster()
        return len([n for n in view["nodes"] if n["member"] and n["voter"] and n["status"] == "up"]) == 3 and view["leader"]

    wait_until(voters, 60, "three voters and a leader")
    victim = hosts[0]  # the seed: rebuild turns it into a joiner and points the recorded seed at a member
    writer = redis.Redis(host="127.0.0.1", port=int(hosts[1].rsplit(":", 1)[1]), socket_timeout=30)
    assert writer.set(b"lie", ORIGINAL)
    # Past one snapshot (every 10,000 entries by default): the rebuilt node must be sent one.
    for start in range(0, 10500, 500):
        pipe = writer.pipeline(transaction=False)
        for i in range(start, start + 500):
            pipe.set(b"k%d" % i, b"v%d" % i)
        assert all(pipe.execute())
    wait_until(lambda: _holds(victim, b"k10499", b"v10499"), 60, "the victim to catch up")
    mgmt.ok("-r", "server", "-c", "stop", "-h", victim)
    victim_dir = os.path.join(mgmt.home, "nodes", victim.replace(":", "-"))
    assert flip_in_file(os.path.join(victim_dir, "data", "data.mdb"), ORIGINAL) >= 1

    log_path = os.path.join(victim_dir, "kvd.log")
    before = os.path.getsize(log_path)
    refused = mgmt.run("-r", "server", "-c", "restart", "-h", victim)
    if refused.code != 0:  # the log still held the value: the start-up check refuses it
        assert refused.code == 6, str(refused)
        assert "checksum mismatch" in refused.err and "rebuild" in refused.err, str(refused)
    else:
        # The log was compacted: the value lives only in the applied state, which a
        # start does not read whole.  Reading it, or the scrub, fail-stops the node:
        # never the flipped bytes.
        with pytest.raises(redis.RedisError):
            value = _local(victim).get(b"lie")
            assert value is None, "served %r" % value  # (never reached: the read fails)

        def fail_stopped():
            with open(log_path, errors="replace") as f:
                f.seek(before)
                text = f.read()
            return "checksum mismatch" in text and "rebuild" in text and not _holds(victim, b"k0", b"v0")

        wait_until(fail_stopped, 30, "the victim to fail-stop on the flipped value")
        before = os.path.getsize(log_path)
    rebuilt = mgmt.ok("-r", "server", "-c", "rebuild", "-h", victim, timeout=180)
    assert "removed %s from the cluster" % victim in rebuilt.out, str(rebuilt)
    assert "is a voter again" in rebuilt.out, str(rebuilt)
    wait_until(lambda: _holds(victim, b"k10499", b"v10499"), 60, "the rebuilt node to hold the last key")
    assert _holds(victim, b"lie", ORIGINAL) and _holds(victim, b"k0", b"v0")
    with open(log_path, errors="replace") as f:
        f.seek(before)
        assert "installed a snapshot" in f.read()  # since the rebuild
    with open(os.path.join(mgmt.home, "seed.json")) as f:
        assert json.load(f)["seed"] != victim
    linear = redis.Redis(host="127.0.0.1", port=int(victim.rsplit(":", 1)[1]), socket_timeout=10)
    assert linear.get(b"lie") == ORIGINAL
    assert linear.set(b"after-rebuild", b"yes") and writer.get(b"after-rebuild") == b"yes"

    # A running node, the leader: rebuild stops it (by pid) before anything else.
    leader = wait_until(voters, 60, "three voters and a leader again")
    again = mgmt.ok("-r", "server", "-c", "rebuild", "-h", leader, timeout=180)
    assert "stopped node %s (pid" % leader in again.out and "is a voter again" in again.out, str(again)
    wait_until(lambda: _holds(leader, b"after-rebuild", b"yes"), 60, "the rebuilt leader to hold the data")
    wait_until(voters, 60, "three voters and a leader after both rebuilds")
    rows = {n["id"]: n for n in mgmt.cluster()["nodes"] if n["member"]}
    assert sorted(rows) == sorted(hosts) and all(rows[h]["voter"] for h in hosts), rows
