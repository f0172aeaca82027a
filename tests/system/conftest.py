"""
Fixtures for system tests: real kvd nodes (twistd daemons) driven through
mgmt.py as a subprocess, exactly as a user types it.

- ``free_client_ports(n)``: client ports on 127.0.0.1 whose peer port
  (client + 10000) is free too.
- ``mgmt``: a private KVD_HOME, a runner for ``python mgmt.py ...`` with a
  bounded runtime per call, a ``wait_for`` poller, and a finalizer that
  SIGKILLs every node the test started (pids read from the pidfiles under its
  KVD_HOME, checked to be kvd nodes) even when the test fails, after
  printing the tail of each node's log (pytest shows it for failed tests).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import pytest

from kvd.jepsen.cluster import _bindable as _bindable_on, _ephemeral_low
from kvd.cli.home import looks_like_node, pid_alive, read_pid, wait_gone

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MGMT = os.path.join(REPO, "mgmt.py")

#: Longest any single mgmt.py call may take before the test fails (none should come close).
CALL_TIMEOUT_S = 120.0


def _bindable(port: int) -> bool:
    return _bindable_on("127.0.0.1", port)


def free_client_ports(n: int) -> List[int]:
    """
    n client ports whose peer ports (+10000) are free as well.  Both stay
    below the ephemeral range when it allows, so that an outgoing connection
    between nodes cannot take a port a restarted node needs; otherwise fall
    back to ports the kernel hands out (bind to port 0).
    """
    ports: List[int] = []
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(5000):  # bounded search
        if len(ports) == n:
            return ports
        if low - 10000 > 12000:
            port = rng.randrange(12000, low - 10000)
        else:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
        if port in ports or port + 10000 > 65535:
            continue
        if _bindable(port) and _bindable(port + 10000):
            ports.append(port)
    raise RuntimeError("could not find %d free client/peer port pairs on 127.0.0.1" % n)


@dataclass
class Result:
    args: List[str]
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return "mgmt.py %s -> exit %d in %.1fs\nstdout: %s\nstderr: %s" % (" ".join(self.args), self.code, self.seconds, self.out.strip(), self.err.strip())


class Mgmt:
    """Runs mgmt.py with one KVD_HOME, like a user would."""

    def __init__(self, home: str):
        self.home = home
        self.env = dict(os.environ, KVD_HOME=home)
        self.log: List[Result] = []

    def run(self, *args: str, timeout: float = CALL_TIMEOUT_S) -> Result:
        argv = [str(a) for a in args]
        started = time.monotonic()
        try:
            done = subprocess.run([sys.executable, MGMT] + argv, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail("mgmt.py %s hung for more than %gs" % (" ".join(argv), timeout))
        result = Result(argv, done.returncode, done.stdout, done.stderr, time.monotonic() - started)
        self.log.append(result)
        # The CLI's promise: a failure is one line, never a traceback.
        assert "Traceback" not in result.err, str(result)
        if result.code != 0:
            assert len(result.err.strip().splitlines()) == 1, "a failure must be one line:\n%s" % result
        return result

    def ok(self, *args: str, timeout: float = CALL_TIMEOUT_S) -> Result:
        result = self.run(*args, timeout=timeout)
        assert result.code == 0, str(result)
        return result

    def cluster(self, host: Optional[str] = None) -> dict:
        """``list --json`` (exit 0, or 3 when nobody answers)."""
        args = ["-r", "server", "-c", "list", "--json"] + (["-h", host] if host else [])
        result = self.run(*args)
        assert result.code in (0, 3), str(result)
        return json.loads(result.out) if result.out.strip() else {"nodes": [], "leader": None}

    # ------------------------------------------------------------ cleanup
    def pidfiles(self) -> List[str]:
        found = []
        for top in ("nodes", "removed"):
            base = os.path.join(self.home, top)
            if os.path.isdir(base):
                for name in sorted(os.listdir(base)):
                    found.append(os.path.join(base, name, "twistd.pid"))
        return found

    def kill_all(self) -> List[int]:
        killed = []
        for pidfile in self.pidfiles():
            pid = read_pid(pidfile)
            node_id = _node_id_from_dir(os.path.basename(os.path.dirname(pidfile)))
            if pid is not None and pid_alive(pid) and (node_id is None or looks_like_node(pid, node_id)):
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        for pid in killed:
            wait_gone(pid, 10.0)
        return killed

    def print_logs(self, lines: int = 40) -> None:
        for pidfile in self.pidfiles():
            log = os.path.join(os.path.dirname(pidfile), "kvd.log")
            if os.path.exists(log):
                with open(log, errors="replace") as f:
                    tail = f.read().splitlines()[-lines:]
                print("==== %s (last %d lines)\n%s" % (log, len(tail), "\n".join(tail)))
        print("==== mgmt.py calls")
        for result in self.log:
            print(result)


def _node_id_from_dir(name: str) -> Optional[str]:
    # "127.0.0.1-7001" or, under removed/, "127.0.0.1-7001-20240101-120000"
    parts = name.split("-")
    if len(parts) >= 2 and parts[1].isdigit():
        return "%s:%s" % (parts[0], parts[1])
    return None


@pytest.fixture
def mgmt(tmp_path):
    runner = Mgmt(str(tmp_path / "kvd-home"))
    try:
        yield runner
    finally:
        runner.print_logs()
        runner.kill_all()


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.2):
    """Poll condition until it returns something truthy; fail with `what` and the last value at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail("timed out after %gs waiting for %s (last: %r)" % (timeout, what, last))
        time.sleep(poll)


@pytest.fixture
def cluster(tmp_path):
    """``make(n=3, extra=None)``: a started cluster of real twistd nodes (tests/system/nodes.py), killed at the end."""
    from tests.system.nodes import Cluster

    clusters = []

    def make(n=3, extra=None):
        c = Cluster(str(tmp_path), n, extra)
        clusters.append(c)
        c.start()
        return c

    yield make
    for c in clusters:
        print(c.logs())  # pytest shows captured output only when the test failed
        c.destroy()
