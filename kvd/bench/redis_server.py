"""
The single-node ceiling of ``make bench``'s table: a ``redis-server`` of the
bench's own with ``appendonly yes`` and ``appendfsync always`` (every write
flushed to its append-only file before the reply, as kvd's fsync on), loopback
only, in the run directory, on a port the kernel picked.  Redis is one process
with no replication, so its figures are what one machine's disk and loopback
allow a C server, not a rival to a three-node cluster.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional

from kvd.bench.etcd import free_port


def tools_problem() -> Optional[str]:
    if shutil.which("redis-server") is None:
        return "needs redis-server: apt-get install -y redis-server"
    return None


class RedisServer:
    def __init__(self, run_dir: str, host: str = "127.0.0.1"):
        self.dir = run_dir
        self.host = host
        self.port = free_port(host)
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout_s: float = 30.0) -> None:
        os.makedirs(self.dir, exist_ok=True)
        argv = ["redis-server", "--bind", self.host, "--port", str(self.port), "--dir", self.dir,
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--protected-mode", "no", "--logfile", os.path.join(self.dir, "redis.log")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited with %s (log in %s)" % (self.proc.returncode, self.dir))
            if self._pong():
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not answer PING within %gs (log in %s)" % (timeout_s, self.dir))

    def _pong(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
