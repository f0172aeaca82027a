"""
Real kvd nodes as twistd processes on 127.0.0.1, for tests of the node
itself (the CLI's own story test drives nodes through mgmt.py instead).

Every wait is a bounded poll of an observable condition; every process is
ended by its own PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import redis

from kvd.cli.certs import CertDir
from tests.system.conftest import free_client_ports

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"]


def peer_tls_args(home: str, node_id: str, directory: str, cluster: str = "systest") -> List[str]:
    """--peer-cert/--peer-key/--peer-ca for ``node_id``: a certificate in ``directory`` from the CA in ``home``/tls."""
    certs = CertDir(os.path.join(home, "tls"))
    certs.ensure_ca(cluster)
    cert, key = certs.ensure_node(node_id, directory)
    return ["--peer-cert", cert, "--peer-key", key, "--peer-ca", certs.ca_cert]


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``condition`` until it returns something true; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # a node that is still starting refuses connections
            last_error = e
        time.sleep(interval_s)
    raise AssertionError("timed out after %.0fs waiting for %s (last error: %r)" % (timeout_s, what, last_error))


class Node:
    def __init__(self, home: str, port: int, initial: str, extra: List[str]):
        self.port = port
        self.id = "127.0.0.1:%d" % port
        self.dir = os.path.join(home, str(port))
        os.makedirs(self.dir, exist_ok=True)
        self.pidfile = os.path.join(self.dir, "twistd.pid")
        self.logfile = os.path.join(self.dir, "kvd.log")
        self.args = ["--listen", self.id, "--data-dir", os.path.join(self.dir, "data"), "--initial-cluster", initial,
                     "--tick-ms", "50", "--election-ticks", "10", "--cluster-id", "systest"] + extra
        if "--insecure-peers" not in extra:
            self.args += peer_tls_args(home, self.id, self.dir)
        self.pid: Optional[int] = None

    def start(self):
        cmd = TWISTD + ["--pidfile", self.pidfile, "--logfile", self.logfile, "kvd"] + self.args
        if not self.running() and os.path.exists(self.pidfile):
            # twistd would take a killed, not yet reaped daemon (a zombie) for a live one.
            os.unlink(self.pidfile)
        done = subprocess.run(cmd, cwd=REPO, timeout=60, capture_output=True, text=True)
        assert done.returncode == 0, "twistd failed to start %s: %s%s" % (self.id, done.stdout, done.stderr)
        self.pid = int(wait_for(lambda: open(self.pidfile).read().strip(), 20, "pidfile of %s" % self.id))
        wait_for(lambda: self.client().ping(), 20, "%s to answer PING" % self.id)

    def running(self) -> bool:
        """Alive and not a zombie (a killed daemon may wait a while to be reaped)."""
        if self.pid is None:
            return False
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def signal(self, sig):
        os.kill(self.pid, sig)

    def kill(self):
        """SIGKILL: a crash, no goodbye."""
        if self.running():
            self.signal(signal.SIGKILL)
            wait_for(lambda: not self.running(), 10, "%s to die" % self.id)
        self.pid = None

    def stop(self):
        if self.running():
            self.signal(signal.SIGTERM)
            wait_for(lambda: not self.running(), 30, "%s to stop" % self.id)
        self.pid = None

    def client(self, **kw) -> redis.Redis:
        options = dict(socket_timeout=10, socket_connect_timeout=2)
        options.update(kw)
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def info(self) -> Dict[str, object]:
        return self.client().info("raft")

    def log_tail(self, n=40) -> str:
        try:
            with open(self.logfile) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"


class Cluster:
    def __init__(self, home: str, n: int = 3, extra: Optional[List[str]] = None):
        ports = free_client_ports(n)
        initial = ",".join("127.0.0.1:%d" % p for p in ports)
        self.nodes = [Node(home, p, initial, list(extra or [])) for p in ports]

    def start(self):
        for node in self.nodes:
            node.start()
        return self.leader()

    def up(self) -> List[Node]:
        return [n for n in self.nodes if n.running()]

    def leader(self, timeout_s: float = 20, among: Optional[List[Node]] = None) -> Node:
        """The node that every running node agrees leads (bounded wait)."""
        among = among or self.up()

        def agreed():
            leaders = {n.info()["raft_leader"] for n in among}
            roles = [n for n in among if n.info()["raft_role"] == "leader"]
            if len(leaders) == 1 and len(roles) == 1 and roles[0].id in leaders:
                return roles[0]
            return None

        return wait_for(agreed, timeout_s, "one agreed leader among %s" % [n.id for n in among])

    def followers(self) -> List[Node]:
        leader = self.leader()
        return [n for n in self.up() if n is not leader]

    def caught_up(self, node: Node, timeout_s: float = 30):
        leader = self.leader()

        def done():
            return node.info()["raft_applied_index"] >= leader.info()["raft_commit_index"]

        wait_for(done, timeout_s, "%s to catch up with %s" % (node.id, leader.id))

    def destroy(self):
        for node in self.nodes:
            node.kill()

    def logs(self) -> str:
        return "\n".join("=== %s\n%s" % (n.id, n.log_tail()) for n in self.nodes)
