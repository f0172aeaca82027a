"""
``mgmt.py -r client -c lock`` on a real three-node cluster (kvd.cli.lock): commands run under one lock are
mutually exclusive with increasing fencing tokens; a holder paused (SIGSTOP) past its ttl loses the lock,
the next holder gets a larger token, and the paused holder's fenced write is refused when it resumes; a
lock not acquired in time is exit 5; the holder keeps its lock through a crash of the cluster's leader.

Each command is a small Python program (``CHILD``) that logs to a file and talks to the cluster with
redis-py; every wait is a bounded poll, every process is ended by its own id.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.system.conftest import MGMT, REPO
from tests.system.nodes import wait_for

pytestmark = pytest.mark.system

# The command run under the lock.  argv: node port, log file, mode, and for "wait" a file to wait for.
#  count: read the counter, sleep, write it + 1 with the fencing compare (a read-modify-write the lock protects)
#  wait:  log that it holds the lock, wait for the file, then write "resource" fenced; ignores SIGTERM so that
#         it still tries its write after it resumes (as a holder that does not notice in time would)
#  hold:  log that it holds the lock, then wait for the file
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    import redis
    port, log, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    token, key = int(os.environ["KVD_LOCK_TOKEN"]), os.environ["KVD_LOCK_KEY"]
    r = redis.Redis(port=port, socket_timeout=10)
    def note(**kw):
        with open(log, "a") as f:
            f.write(json.dumps(dict(kw, token=token, pid=os.getpid(), t=time.monotonic())) + "\\n")
    if mode == "count":
        note(event="start")
        n = int(r.get("counter") or 0)
        time.sleep(0.2)
        done = r.execute_command("KVD.TXN", "IF", "CREATE", key, "=", token, "THEN", "SET", "counter", n + 1)
        note(event="end", applied=done[0], n=n + 1)
    else:
        if mode == "wait":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        note(event="holding")
        for _ in range(1200):
            if os.path.exists(sys.argv[4]):
                break
            time.sleep(0.05)
        if mode == "wait":
            done = r.execute_command("KVD.TXN", "IF", "CREATE", key, "=", token, "THEN", "SET", "resource", "paused")
            note(event="fenced write", applied=done[0])
""")


def lock_cmd(node, name, log, mode, *extra, ttl=3, timeout=None, command="lock", holder=None):
    args = [sys.executable, MGMT, "-r", "client", "-c", command, "-h", node.id, "-k", name, "--ttl", str(ttl)]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if holder is not None:
        args += ["-v", holder]
    return args + ["--", sys.executable, "-c", CHILD, str(node.port), str(log), mode] + [str(e) for e in extra]


class Runner:
    """One mgmt.py lock process, in a session of its own so that it and its command can be paused together."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def pause(self, sig):
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s):
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("mgmt.py lock still running after %gs" % timeout_s)
        return self.proc.returncode, err

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=10)


@pytest.fixture
def runners():
    started = []

    def start(argv):
        started.append(Runner(argv))
        return started[-1]

    yield start
    for r in started:
        r.kill()


def events(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_commands_under_one_lock_never_overlap_and_tokens_increase(cluster, runners, tmp_path):
    c = cluster(3)
    log = tmp_path / "log"
    # Six contenders through all three nodes at once, each a read-modify-write of one counter.
    procs = [runners(lock_cmd(c.nodes[i % 3], "job", log, "count", timeout=60)) for i in range(6)]
    for p in procs:
        code, err = p.wait(90)
        assert code == 0, err
        assert "acquired lock:job, token" in err
    evs = events(log)
    starts = [e for e in evs if e["event"] == "start"]
    ends = {e["pid"]: e for e in evs if e["event"] == "end"}
    assert len(starts) == 6 and len(ends) == 6
    # In the order they ran: each began after the one before ended, with a larger token; every fenced write applied.
    starts.sort(key=lambda e: e["t"])
    for before, after in zip(starts, starts[1:]):
        assert ends[before["pid"]]["t"] < after["t"], "two commands held the lock at once: %s" % evs
        assert after["token"] > before["token"]
    assert all(e["applied"] == 1 for e in ends.values())
    assert sorted(e["n"] for e in ends.values()) == [1, 2, 3, 4, 5, 6]
    assert c.nodes[0].client().get("counter") == b"6"
    assert c.nodes[1].client().get("lock:job") is None  # released
    assert c.nodes[2].client().execute_command("KVD.LEASE", "LIST") == []  # and every lease revoked


def test_a_paused_holder_loses_the_lock_and_its_fenced_write_is_refused(cluster, runners, tmp_path):
    c = cluster(3)
    a_log, b_log, go = tmp_path / "a", tmp_path / "b", tmp_path / "go"
    a = runners(lock_cmd(c.nodes[0], "job", a_log, "wait", go, ttl=2))
    wait_for(lambda: events(a_log), 30, "the first holder to hold the lock")
    a_token = events(a_log)[0]["token"]
    a.pause(signal.SIGSTOP)  # the holder and its command, as a long GC pause or a stopped VM
    paused_at = time.monotonic()
    b = runners(lock_cmd(c.nodes[1], "job", b_log, "count", timeout=30, ttl=2))
    code, err = b.wait(60)
    assert code == 0, err
    took_over = time.monotonic() - paused_at
    b_end = [e for e in events(b_log) if e["event"] == "end"][0]
    assert b_end["token"] > a_token and b_end["applied"] == 1
    assert took_over > 1.5, "the lock changed hands %.1fs into a 2 s lease" % took_over
    go.write_text("go")
    a.pause(signal.SIGCONT)
    code, err = a.wait(60)
    assert code == 10, err  # lock lost
    assert "lock lost" in err or "the lock was lost" in err
    writes = [e for e in events(a_log) if e["event"] == "fenced write"]
    assert writes and writes[0]["applied"] == 0, events(a_log)  # the paused holder's write was refused
    assert c.nodes[2].client().get("resource") is None and c.nodes[2].client().get("counter") == b"1"


def test_lock_status_and_a_lock_not_acquired_in_time(cluster, runners, tmp_path):
    c = cluster(3)
    log, go = tmp_path / "log", tmp_path / "go"
    a = runners(lock_cmd(c.nodes[0], "job", log, "hold", go, holder="alpha"))
    wait_for(lambda: events(log), 30, "the holder to hold the lock")
    token = events(log)[0]["token"]
    status = subprocess.run([sys.executable, MGMT, "-r", "client", "-c", "lock-status", "-h", c.nodes[2].id, "-k", "job",
                             "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    held = json.loads(status.stdout)
    assert held["token"] == token and held["holder"].startswith("alpha/") and 0 < held["ttl"] <= 3
    started = time.monotonic()
    late = subprocess.run(lock_cmd(c.nodes[1], "job", tmp_path / "late", "count", timeout=1), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert late.returncode == 5, late.stderr
    assert "not acquired within 1s (held by alpha/" in late.stderr and len(late.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 15
    assert not (tmp_path / "late").exists()  # its command never ran
    go.write_text("go")
    code, err = a.wait(30)
    assert code == 0, err
    free = subprocess.run([sys.executable, MGMT, "-r", "client", "-c", "lock-status", "-h", c.nodes[1].id, "-k", "job"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert free.returncode == 1 and "lock job is free" in free.stderr


def test_a_waiter_stopped_by_sigterm_gives_its_lease_back(cluster, runners, tmp_path):
    """A supervisor's SIGTERM while mgmt.py lock waits: it exits 143 and revokes its lease (no lease left to expire)."""
    c = cluster(3)
    log, go = tmp_path / "log", tmp_path / "go"
    a = runners(lock_cmd(c.nodes[0], "job", log, "hold", go, holder="alpha", ttl=30))
    wait_for(lambda: events(log), 30, "the holder to hold the lock")
    leases = c.nodes[1].client()
    held = set(leases.execute_command("KVD.LEASE", "LIST"))
    assert len(held) == 1
    waiter = runners(lock_cmd(c.nodes[1], "job", tmp_path / "late", "count", holder="beta", ttl=30))
    wait_for(lambda: len(leases.execute_command("KVD.LEASE", "LIST")) == 2, 30, "the waiter to take a lease")
    waiter.proc.send_signal(signal.SIGTERM)
    code, err = waiter.wait(30)
    assert code == 128 + signal.SIGTERM, err
    assert set(leases.execute_command("KVD.LEASE", "LIST")) == held  # the waiter's lease is gone at once, not in 30 s
    assert not (tmp_path / "late").exists()  # its command never ran
    go.write_text("go")
    assert a.wait(30)[0] == 0


def test_the_leader_keeps_its_lock_through_a_crash_of_the_clusters_leader(cluster, runners, tmp_path):
    c = cluster(3)
    old = c.leader()
    log, go = tmp_path / "log", tmp_path / "go"
    # Through the node about to crash: the holder must move to another node to keep its lease alive.
    a = runners(lock_cmd(old, "primary", log, "hold", go, command="leader", holder="web-1", ttl=3))
    wait_for(lambda: events(log), 30, "web-1 to be elected")
    token = events(log)[0]["token"]
    old.kill()
    survivors = c.up()
    c.leader(among=survivors)
    crashed_at = time.monotonic()
    # Well past the ttl, the lock is still web-1's, at the same token.
    while time.monotonic() - crashed_at < 8:
        assert a.proc.poll() is None, a.wait(1)
        got = survivors[0].client().execute_command("KVD.GET", "lock:primary", "WITHREV")
        assert got is not None and got[0].startswith(b"web-1/") and got[1] == token
        time.sleep(0.5)
    go.write_text("go")
    code, err = a.wait(30)
    assert code == 0, err
    assert survivors[1].client().get("lock:primary") is None
