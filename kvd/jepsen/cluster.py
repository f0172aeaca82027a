"""
The node processes of one run: ``twistd -n kvd`` children of this process,
each on its own loopback address 127.A.B.i (one client port P for all, peer
port P + 10000), with its log, pid file and LMDB data under the run's
directory.

Every process is started by one long-lived spawner thread and ended by its
own PID (SIGKILL, SIGTERM, SIGSTOP/SIGCONT); ``close()`` kills every node
this cluster ever started.  The spawner asks the kernel to SIGKILL a node
when the spawner thread dies (PR_SET_PDEATHSIG), so even a harness that is
itself killed leaves no node behind.  Every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

from kvd.cli.certs import CertDir
from kvd.errors import Code
from kvd.resp.client import Connection, Indeterminate, NotSent, ReplyError, parse_info

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"]
PEER_OFFSET = 10000
PR_SET_PDEATHSIG = 1


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child must not load libraries
except (OSError, AttributeError):
    _prctl = None


def _die_with_spawner():  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def wait_until(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.1):
    """Poll until condition() is true; return its value, or None at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


def _bindable(host: str, port: int) -> bool:
    s = socket.socket()
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class NodeProcessError(Exception):
    pass


def _text(reply) -> str:
    """A reply as text for a log line: bytes decoded, anything else as Python prints it."""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


class Node:
    def __init__(self, cluster: "ProcessCluster", host: str, port: int, founder: bool):
        self.cluster = cluster
        self.host = host
        self.port = port
        self.id = "%s:%d" % (host, port)
        self.member_address = "%s:%d:%d" % (host, port, port + PEER_OFFSET)
        self.founder = founder
        self.dir = os.path.join(cluster.dir, "nodes", "%s-%d" % (host, port))
        os.makedirs(self.dir, exist_ok=True)
        self.logfile = os.path.join(self.dir, "kvd.log")
        self.pidfile = os.path.join(self.dir, "twistd.pid")
        self.stderr = os.path.join(self.dir, "stderr.log")
        self.proc: Optional[subprocess.Popen] = None
        self.paused = False
        self.removed = False
        self.starts = 0

    def __repr__(self) -> str:
        return self.id

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> List[str]:
        c = self.cluster
        args = TWISTD + ["-n", "--pidfile", self.pidfile, "--logfile", self.logfile, "kvd",
                         "--listen", self.id, "--data-dir", os.path.join(self.dir, "data"), "--cluster-id", c.cluster_id,
                         "--tick-ms", str(c.tick_ms), "--election-ticks", str(c.election_ticks),
                         "--request-timeout", str(c.request_timeout_s),
                         "--snapshot-entries", str(c.snapshot_entries), "--snapshot-keep-entries", str(c.snapshot_keep_entries)]
        if self.founder:
            args += ["--initial-cluster", ",".join(n.id for n in c.founders)]
        if not c.peer_tls:
            return args + ["--insecure-peers"] + c.extra_args
        # Peers over mutual TLS, as a real cluster runs: a CA per run, a certificate per node.
        certs = CertDir(os.path.join(c.dir, "tls"))
        certs.ensure_ca(c.cluster_id)
        cert, key = certs.ensure_node(self.id, self.dir)
        return args + ["--peer-cert", cert, "--peer-key", key, "--peer-ca", certs.ca_cert] + c.extra_args

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start the process (returns at once; ``wait_ready`` waits for PING)."""
        if self.alive():
            return
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)  # ours, and its process is gone
        self.paused = False
        self.starts += 1
        self.proc = self.cluster.spawn(self.argv(), self.stderr)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready():
            if not self.alive():
                raise NodeProcessError("%s exited while starting (code %s): %s" % (self.id, self.proc.returncode, self.tail(self.stderr, 5)))
            return self.call("PING", timeout=1.0) == b"PONG"

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except NodeProcessError:
                raise
            except Exception:
                pass
            time.sleep(0.1)
        raise NodeProcessError("%s did not answer PING within %gs" % (self.id, timeout_s))

    def start(self, timeout_s: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout_s)

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                raise NodeProcessError("%s (pid %d) survived SIGKILL for 15s" % (self.id, self.proc.pid))
        self.paused = False

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (a graceful stop), SIGKILL if it takes too long."""
        if self.alive():
            if self.paused:
                self.resume()
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def connection(self, timeout: float, setup=()) -> Connection:
        return Connection(self.host, self.port, timeout=timeout, connect_timeout=min(timeout, 1.0), setup=setup)

    def call(self, *args, timeout: float = 2.0):
        conn = self.connection(timeout)
        try:
            return conn.call(*args)
        finally:
            conn.close()

    def info(self, timeout: float = 1.0) -> Optional[dict]:
        if not self.alive() or self.paused:
            return None
        try:
            return parse_info(self.call("INFO", "raft", timeout=timeout), numbers=True)
        except (NotSent, Indeterminate, ReplyError):
            return None

    @staticmethod
    def tail(path: str, n: int = 20) -> str:
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(none)"


class ProcessCluster:
    def __init__(self, run_dir: str, n: int = 3, rng: Optional[random.Random] = None, tick_ms: int = 50,
                 election_ticks: int = 10, request_timeout_s: float = 3.0, cluster_id: str = "jepsen",
                 snapshot_entries: int = 10000, snapshot_keep_entries: int = 1000, extra_args: Sequence[str] = (),
                 peer_tls: bool = True):
        self.dir = run_dir
        #: Mutual TLS between the nodes (as a real cluster runs); False: plaintext peers (--insecure-peers), for a
        #: benchmark that compares with a store whose peers run in plaintext by default (etcd).
        self.peer_tls = peer_tls
        self.extra_args = list(extra_args)  # more twistd kvd options for every node (a benchmark's diagnostics)
        self.rng = rng or random.Random()
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.request_timeout_s = request_timeout_s
        self.cluster_id = cluster_id
        self.snapshot_entries = snapshot_entries
        self.snapshot_keep_entries = snapshot_keep_entries
        self.lock = threading.RLock()
        self._spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvdj-spawner")
        self.prefix, self.port = self._choose_addresses(n + 8)
        self.next_host = 1
        self.nodes: List[Node] = []  # every node ever started
        self.founders: List[Node] = []
        for _ in range(n):
            self.founders.append(self._new_node(founder=True))
        self.members: List[Node] = list(self.founders)  # the configuration, as far as we know
        self.lingering: List[Node] = []  # removed, still running for a moment: clients may still ask them

    # ------------------------------------------------------------ addresses and processes
    def _choose_addresses(self, hosts: int) -> Tuple[str, int]:
        low = _ephemeral_low()
        top = max(12001, low - PEER_OFFSET)
        for _ in range(200):
            prefix = "127.%d.%d." % (self.rng.randrange(16, 250), self.rng.randrange(0, 256))
            port = self.rng.randrange(12000, top) if top > 12000 + 100 else self.rng.randrange(20000, 55000)
            if all(_bindable(prefix + str(i), port) and _bindable(prefix + str(i), port + PEER_OFFSET) for i in range(1, hosts + 1)):
                return prefix, port
        raise NodeProcessError("no free loopback addresses and port found")

    def _new_node(self, founder: bool) -> Node:
        with self.lock:
            for _ in range(50):
                host = self.prefix + str(self.next_host)
                self.next_host += 1
                if _bindable(host, self.port) and _bindable(host, self.port + PEER_OFFSET):
                    node = Node(self, host, self.port, founder)
                    self.nodes.append(node)
                    return node
        raise NodeProcessError("no free address for a new node")

    def new_node(self) -> Node:
        """A node that will join the running cluster (not a founder)."""
        return self._new_node(founder=False)

    def spawn(self, argv: List[str], stderr_path: str) -> subprocess.Popen:
        def go():
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
            with open(stderr_path, "ab") as err:
                return subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                        preexec_fn=_die_with_spawner, start_new_session=True)

        return self._spawner.submit(go).result(timeout=60)

    def start(self, timeout_s: float = 60.0) -> Node:
        for node in self.founders:
            node.launch()
        for node in self.founders:
            node.wait_ready(timeout_s)
        leader = self.leader(timeout_s)
        if leader is None:
            raise NodeProcessError("no leader within %gs of starting" % timeout_s)
        return leader

    def close(self) -> None:
        """Kill every node this cluster started (by PID), then the spawner."""
        errors = []
        for node in self.nodes:
            try:
                node.kill()
            except Exception as e:
                errors.append(str(e))
        self._spawner.shutdown(wait=True)
        if errors:
            raise NodeProcessError("; ".join(errors))

    # ------------------------------------------------------------ views
    def targets(self) -> List[Node]:
        """Where clients send requests: the members, and removed nodes not yet stopped."""
        with self.lock:
            return list(self.members) + list(self.lingering)

    def leader(self, timeout_s: float = 0.0, among: Optional[List[Node]] = None) -> Optional[Node]:
        """The member that says it leads, with the highest term (polling up to timeout_s)."""

        def find():
            best = None
            for node in list(self.members if among is None else among):
                info = node.info()
                if info and info.get("raft_role") == "leader":
                    if best is None or info.get("raft_term", 0) > best[0]:
                        best = (info.get("raft_term", 0), node)
            return best[1] if best else None

        if timeout_s <= 0:
            return find()
        return wait_until(find, timeout_s, 0.1)

    def wait_healthy(self, timeout_s: float) -> Tuple[bool, str]:
        """Every member up, agreeing on one leader among them, and caught up with its commit index."""
        last = ["not checked"]

        def healthy():
            members = list(self.members)
            infos = {n.id: n.info(timeout=2.0) for n in members}
            down = [i for i, info in infos.items() if info is None]
            if down:
                last[0] = "no answer from %s" % ", ".join(down)
                return False
            leaders = {info.get("raft_leader_id") for info in infos.values()}
            if len(leaders) != 1 or "" in leaders or None in leaders:
                last[0] = "leaders disagree: %s" % {i: info.get("raft_leader_id") for i, info in infos.items()}
                return False
            leader_id = leaders.pop()
            if leader_id not in infos:
                last[0] = "leader %s is not a member we know" % leader_id
                return False
            commit = infos[leader_id]["raft_commit_index"]
            behind = [i for i, info in infos.items() if info.get("raft_applied_index", 0) < commit]
            if behind:
                last[0] = "behind the leader's commit index %d: %s" % (commit, ", ".join(behind))
                return False
            return True

        ok = wait_until(healthy, timeout_s, 0.25)
        return bool(ok), ("" if ok else last[0])

    def config_members(self, timeout_s: float = 5.0) -> Optional[List[str]]:
        """The membership according to the leader (ids), or None when no leader answers."""

        def ask():
            leader = self.leader()
            if leader is None:
                return None
            rows = json.loads(leader.call("KVD.MEMBERS", timeout=2.0))
            return [r["id"] for r in rows]

        return wait_until(ask, timeout_s, 0.2)

    # ------------------------------------------------------------ membership
    def _leader_request(self, args, deadline: float) -> Tuple[Optional[str], str]:
        """Send a membership command to the leader until it answers or the deadline passes: (reply, last error)."""
        last = "no leader"
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is None:
                time.sleep(0.2)
                continue
            try:
                return _text(leader.call(*args, timeout=max(1.0, min(15.0, deadline - time.monotonic())))), ""
            except ReplyError as e:
                last = e.text
                if e.code in (Code.NOLEADER, Code.TRYAGAIN, Code.MOVED) or "in progress" in e.text:
                    time.sleep(0.3)
                    continue
                return None, last
            except (NotSent, Indeterminate) as e:
                last = str(e)
                time.sleep(0.3)
        return None, last

    def join(self, node: Node, timeout_s: float = 20.0) -> Tuple[bool, str]:
        """KVD.JOIN through the leader; True once the leader lists the node."""
        deadline = time.monotonic() + timeout_s
        reply, error = self._leader_request(("KVD.JOIN", node.id, node.member_address), deadline)
        members = self.config_members(max(1.0, deadline - time.monotonic()))
        if members is not None and node.id in members:
            return True, reply or error
        return False, error or "joined but not listed"

    def remove(self, node: Node, timeout_s: float = 20.0) -> Tuple[bool, str]:
        """KVD.REMOVE through the leader; True once a leader no longer lists the node."""
        deadline = time.monotonic() + timeout_s
        reply, error = self._leader_request(("KVD.REMOVE", node.id), deadline)

        def gone():
            others = [n for n in self.members if n is not node]
            leader = self.leader(among=others)
            if leader is None:
                return False
            rows = json.loads(leader.call("KVD.MEMBERS", timeout=2.0))
            return node.id not in [r["id"] for r in rows]

        if wait_until(gone, max(1.0, deadline - time.monotonic()), 0.2):
            return True, reply or error
        return False, error or "still listed"

    # ------------------------------------------------------------ logs
    def log_paths(self) -> List[str]:
        return [n.logfile for n in self.nodes]
