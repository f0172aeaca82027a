# -*- test-case-name: tests.node.test_cli -*-
"""
KVD_HOME: where mgmt.py keeps the state of the nodes this machine started,
and the process helpers that act on them by pid.

Layout (one KVD_HOME per cluster; point KVD_HOME elsewhere to run several
clusters side by side)::

    $KVD_HOME/                      default: <repo>/.kvd
        seed.json                   the seed ``start`` recorded: address, cluster id
        tls/ca.crt, tls/ca.key      the cluster CA ``start`` made (kvd.cli.certs; the key 0600)
        nodes/<host>-<port>/        one directory per node, named by its client address
            node.json               the options it was started with (restart reuses them)
            twistd.pid              written by twistd while the node runs
            kvd.log                 twistd's log file
            peer.crt, peer.key      its peer certificate (CN = node id) from the CA, key 0600
            data/                   LMDB: Raft log, hard state, snapshots
        removed/<host>-<port>-<time>/   a node after ``remove``: kept for its log, never listed

We only ever signal a pid read from a pidfile under KVD_HOME, and only after
checking that the process is alive and (where /proc exists) is a kvd node
listening on the recorded address, so a stale pidfile whose pid the OS gave
to another program is never signalled.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from kvd.cli.errors import LOCAL_STATE, CliError

#: Where the repo is (mgmt.py's directory), when kvd runs from a checkout.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # kvd/cli/ -> the checkout
#: False when kvd was installed with pip (then REPO_ROOT is site-packages,
#: which also holds mgmt.py, but no setup.py): never keep state there.
IN_CHECKOUT = all(os.path.exists(os.path.join(REPO_ROOT, name)) for name in ("mgmt.py", "setup.py"))


#: twistd's main, run by the current interpreter.  (``python -m twisted`` is
#: ``twist``, the foreground runner: it has no --pidfile and never daemonizes.)
TWISTD_MAIN = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"


def default_home() -> str:
    """``$KVD_HOME`` if set, else ``<repo>/.kvd`` (or ``./.kvd`` when kvd is installed outside a checkout)."""
    env = os.environ.get("KVD_HOME")
    if env:
        return os.path.abspath(env)
    if IN_CHECKOUT:
        return os.path.join(REPO_ROOT, ".kvd")
    return os.path.abspath(".kvd")


def dir_name(node_id: str) -> str:
    """``"127.0.0.1:7001"`` -> ``"127.0.0.1-7001"``: safe as a file name on every OS (IPv6 colons too)."""
    host, _, port = node_id.rpartition(":")
    return re.sub(r"[^A-Za-z0-9._-]", "_", "%s-%s" % (host, port))


@dataclass
class NodeRecord:
    """What ``start``/``join`` started a node with; ``restart`` starts it again with exactly this."""

    id: str
    host: str
    client_port: int
    peer_port: int
    cluster_id: str
    kind: str  # "seed" (start) or "join"
    expect: int = 0  # seeds: founders to wait for
    seed: str = ""  # joiners: the node they joined through
    tick_ms: int = 50
    election_ticks: int = 8
    home: str = field(default="", repr=False)  # not stored: set on load

    @property
    def directory(self) -> str:
        return os.path.join(self.home, "nodes", dir_name(self.id))

    @property
    def pidfile(self) -> str:
        return os.path.join(self.directory, "twistd.pid")

    @property
    def logfile(self) -> str:
        return os.path.join(self.directory, "kvd.log")

    @property
    def data_dir(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def peer_cert(self) -> str:
        return os.path.join(self.directory, "peer.crt")

    @property
    def peer_key(self) -> str:
        return os.path.join(self.directory, "peer.key")

    @property
    def peer_ca(self) -> str:
        return os.path.join(self.home, "tls", "ca.crt")

    @property
    def record_path(self) -> str:
        return os.path.join(self.directory, "node.json")

    @property
    def member_address(self) -> str:
        """``host:client_port:peer_port``, as KVD.JOIN and a Raft configuration want it."""
        return "%s:%d:%d" % (self.host, self.client_port, self.peer_port)

    def to_json(self) -> dict:
        data = asdict(self)
        del data["home"]
        return data

    def twistd_argv(self, python: str) -> List[str]:
        """The command that runs this node as a twistd daemon (pidfile and log under its directory)."""
        argv = [
            python,
            "-c",
            TWISTD_MAIN,
            "--pidfile=%s" % self.pidfile,
            "--logfile=%s" % self.logfile,
            "kvd",
            "--listen",
            self.id,
            "--peer-port",
            str(self.peer_port),
            "--data-dir",
            self.data_dir,
            "--cluster-id",
            self.cluster_id,
            "--tick-ms",
            str(self.tick_ms),
            "--election-ticks",
            str(self.election_ticks),
            "--peer-cert",
            self.peer_cert,
            "--peer-key",
            self.peer_key,
            "--peer-ca",
            self.peer_ca,
        ]
        if self.kind == "seed" and self.expect == 1:
            # A one-node cluster needs nobody to join: it is its own founder.
            argv += ["--initial-cluster", self.id]
        elif self.kind == "seed":
            argv += ["--bootstrap-expect", str(self.expect)]
        return argv

    # ------------------------------------------------------------ process state
    def pid(self) -> Optional[int]:
        return read_pid(self.pidfile)

    def running_pid(self) -> Optional[int]:
        """The pid of this node's live process, or None (a stale pidfile counts as not running)."""
        pid = self.pid()
        if pid is None or not pid_alive(pid):
            return None
        if not looks_like_node(pid, self.id):
            return None
        return pid


class Home:
    """One KVD_HOME directory."""

    def __init__(self, root: Optional[str] = None):
        self.root = os.path.abspath(root or default_home())

    @property
    def nodes_dir(self) -> str:
        return os.path.join(self.root, "nodes")

    @property
    def tls_dir(self) -> str:
        """The cluster CA's directory (kvd.cli.certs.CertDir)."""
        return os.path.join(self.root, "tls")

    @property
    def seed_path(self) -> str:
        return os.path.join(self.root, "seed.json")

    def new_record(self, **kwargs) -> NodeRecord:
        return NodeRecord(home=self.root, **kwargs)

    def record(self, node_id: str) -> Optional[NodeRecord]:
        path = os.path.join(self.nodes_dir, dir_name(node_id), "node.json")
        return self._load(path)

    def require(self, node_id: str) -> NodeRecord:
        rec = self.record(node_id)
        if rec is None:
            raise CliError(
                LOCAL_STATE,
                "no node %s was started from KVD_HOME=%s; start it with -c start or -c join, "
                "or set KVD_HOME to the directory it was started from" % (node_id, self.root),
            )
        return rec

    def records(self) -> List[NodeRecord]:
        out = []
        try:
            names = sorted(os.listdir(self.nodes_dir))
        except FileNotFoundError:
            return []
        for name in names:
            rec = self._load(os.path.join(self.nodes_dir, name, "node.json"))
            if rec is not None:
                out.append(rec)
        return out

    def _load(self, path: str) -> Optional[NodeRecord]:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CliError(LOCAL_STATE, "cannot read %s (%s); fix or delete it" % (path, e)) from None
        known = {k: v for k, v in data.items() if k in NodeRecord.__dataclass_fields__ and k != "home"}
        try:
            return NodeRecord(home=self.root, **known)
        except TypeError as e:
            raise CliError(LOCAL_STATE, "%s is not a node record (%s); fix or delete it" % (path, e)) from None

    def save(self, rec: NodeRecord) -> None:
        os.makedirs(rec.directory, exist_ok=True)
        write_json(rec.record_path, rec.to_json())

    def archive(self, rec: NodeRecord) -> str:
        """Move a removed node's directory out of ``nodes/`` (its log stays readable)."""
        target = os.path.join(self.root, "removed", "%s-%s" % (dir_name(rec.id), time.strftime("%Y%m%d-%H%M%S")))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(rec.directory, target)
        return target

    # ------------------------------------------------------------ the seed
    def seed(self) -> Optional[dict]:
        try:
            with open(self.seed_path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise CliError(LOCAL_STATE, "cannot read %s (%s); fix or delete it" % (self.seed_path, e)) from None

    def save_seed(self, address: str, cluster_id: str) -> None:
        os.makedirs(self.root, exist_ok=True)
        write_json(self.seed_path, {"seed": address, "cluster_id": cluster_id})


def write_json(path: str, data) -> None:
    """Write atomically: a crash mid-write leaves the old file, never half a file."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- processes
def read_pid(pidfile: str) -> Optional[int]:
    try:
        with open(pidfile, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an unreaped corpse is dead to us)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as f:
            # "pid (comm) S ...": the state follows the last ')'.
            state = f.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know


def looks_like_node(pid: int, node_id: str) -> bool:
    """Is pid a kvd node listening on node_id?  Without /proc we cannot tell, so we trust the pidfile."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except FileNotFoundError:
        return not os.path.isdir("/proc/self")
    except OSError:
        return True
    return b"kvd" in argv and node_id.encode() in argv


def signal_pid(pid: int, sig: int) -> bool:
    """Send sig; False if the process was already gone."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pid: int, timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(poll_s)
    return not pid_alive(pid)


def port_free(host: str, port: int) -> bool:
    """Can we bind host:port right now?  (SO_REUSEADDR as twisted sets it, so TIME_WAIT does not count.)"""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


KILL = signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM
TERM = signal.SIGTERM
