"""
docker/healthcheck.py without Docker: which ports it asks, how it judges /v1/health and
INFO raft, and that it falls back to INFO raft when HTTP is off or refuses.  Fake HTTP and
RESP servers on loopback stand in for a node.  (The image's real checks on real
containers: tests/docker/test_image_first_contact.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "docker", "healthcheck.py")


@pytest.fixture(scope="module")
def hc():
    spec = importlib.util.spec_from_file_location("kvd_healthcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ports_come_from_the_nodes_command_line(hc, tmp_path):
    """--listen/--bind/--http-port (or the config file) after `kvd`; the HTTP port is client + 30000 unless given, None when off."""
    cmdline = ["/opt/kvd/bin/python", "/opt/kvd/bin/twistd", "--nodaemon", "-l", "/dev/null", "--pidfile=", "kvd",
               "--listen", "node2:7002", "--bind", "0.0.0.0", "--data-dir", "/data"]
    assert hc.plan(hc.node_argv(cmdline), {}) == ("127.0.0.1", 7002, 37002)  # twistd's own -l is not --listen
    assert hc.plan(["--listen", "n:7001", "--http-port", "0"], {}) == ("n", 7001, None)
    assert hc.plan(["--listen=n:7001", "--bind=10.0.0.5", "--http-port=8080"], {}) == ("10.0.0.5", 7001, 8080)
    assert hc.plan(["--listen", "n:40000", "--bind", "::"], {}) == ("127.0.0.1", 40000, None)  # 70000 is past 65535: HTTP off
    conf = tmp_path / "kvd.conf"
    conf.write_text("[kvd]\nlisten = n:7005\nbind = 0.0.0.0\nhttp-port = 9000\n")
    assert hc.plan(["--config", str(conf)], {}) == ("127.0.0.1", 7005, 9000)
    assert hc.plan(["--listen", "n:7001"], {"KVD_HEALTHCHECK_ADDR": "127.0.0.9:7100"}) == ("127.0.0.9", 7100, 37100)


def test_info_raft_is_judged_as_v1_health(hc):
    """A leader id and commit - applied <= 1000 is serving; no leader, or further behind, is not."""
    ok, why = hc.judge_info({"raft_leader_id": "n1:7001", "raft_role": "follower", "raft_commit_index": "1500", "raft_applied_index": "500"})
    assert ok, why
    ok, why = hc.judge_info({"raft_leader_id": "", "raft_role": "candidate", "raft_commit_index": "7", "raft_applied_index": "7"})
    assert not ok and "no leader" in why
    ok, why = hc.judge_info({"raft_leader_id": "", "raft_role": "joining", "raft_commit_index": "0", "raft_applied_index": "0"})
    assert not ok and "joining" in why
    ok, why = hc.judge_info({"raft_leader_id": "n1:7001", "raft_role": "follower", "raft_commit_index": "1502", "raft_applied_index": "501"})
    assert not ok and "behind" in why


class FakeNode:
    """An HTTP port answering /v1/health with ``health`` and a client port answering INFO raft with ``info``."""

    def __init__(self, health=None, info=None):
        self.health, self.info = health, info
        self.asked = []
        self.http = self.client = None
        if health is not None:
            node = self

            class Handler(BaseHTTPRequestHandler):
                def do_GET(self):
                    node.asked.append("http " + self.path)
                    status, body = node.health
                    data = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

                def log_message(self, *args):
                    pass

            self.http = HTTPServer(("127.0.0.1", 0), Handler)
            threading.Thread(target=self.http.serve_forever, daemon=True).start()
        if info is not None:
            self.client = socket.socket()
            self.client.bind(("127.0.0.1", 0))
            self.client.listen(5)
            threading.Thread(target=self._serve_resp, daemon=True).start()

    def _serve_resp(self):
        while True:
            try:
                conn, _ = self.client.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(1024)
                self.asked.append("resp " + " ".join(part for part in request.decode().split("\r\n")[2::2]))
                text = "".join("%s:%s\r\n" % kv for kv in self.info.items()).encode()
                conn.sendall(b"$%d\r\n%s\r\n" % (len(text), text))

    @property
    def http_port(self):
        return self.http.server_address[1] if self.http else None

    @property
    def client_port(self):
        return self.client.getsockname()[1] if self.client else closed_port()

    def close(self):
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        if self.client:
            self.client.close()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake():
    made = []

    def make(**kwargs):
        node = FakeNode(**kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


LEADER = {"raft_leader_id": "n1:7001", "raft_role": "follower", "raft_commit_index": "10", "raft_applied_index": "10"}


def test_v1_health_decides_when_http_answers(hc, fake):
    """200 is healthy, 503 is not (with the node's reason); INFO raft is not asked then."""
    node = fake(health=(503, {"healthy": False, "reason": "no leader: this node cannot reach a leader"}), info=LEADER)
    ok, why = hc.check("127.0.0.1", node.client_port, node.http_port)
    assert not ok and "no leader" in why and "503" in why
    node.health = (200, {"healthy": True, "leader": "n1:7001", "applied_index": 10, "lag": 0})
    ok, why = hc.check("127.0.0.1", node.client_port, node.http_port)
    assert ok and "n1:7001" in why
    assert node.asked == ["http /v1/health", "http /v1/health"]


def test_info_raft_when_http_is_off_or_refuses(hc, fake):
    """--http-port 0, or nothing on the HTTP port: INFO raft on the client port decides."""
    node = fake(info=dict(LEADER, raft_leader_id="", raft_role="candidate"))
    for http_port in (None, closed_port()):
        ok, why = hc.check("127.0.0.1", node.client_port, http_port)
        assert not ok and "no leader" in why and "INFO raft" in why, why
    node.info = LEADER
    ok, why = hc.check("127.0.0.1", node.client_port, None)
    assert ok, why
    assert node.asked == ["resp INFO raft"] * 3
    ok, why = hc.check("127.0.0.1", closed_port(), None)  # nothing at all: not healthy
    assert not ok


def test_the_script_is_fast_and_needs_only_the_standard_library(tmp_path):
    """python -I -S (no site-packages, no kvd): it runs, finds no node, says so in one line and exits 1, well within 3s."""
    env = {"PATH": os.environ.get("PATH", ""), "KVD_HEALTHCHECK_ADDR": "127.0.0.1:%d" % closed_port()}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-I", "-S", SCRIPT], capture_output=True, text=True, timeout=30, env=env, cwd=str(tmp_path))
    took = time.monotonic() - started
    assert done.returncode == 1 and done.stderr == "" and len(done.stdout.strip().splitlines()) == 1, (done.stdout, done.stderr)
    assert took < 2.5, took
