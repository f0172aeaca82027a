"""
Peer TLS with real processes (issue 12): a three-node cluster whose peers run mutual TLS keeps serving a
client while an attacker on 127.0.0.1, who knows the cluster id, connects to the peer ports without a
certificate, with a certificate for another node than it claims, and with a member's certificate but a
forged src; and a node restarted with a new certificate from the same CA rejoins.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time

import pytest

from kvd.cli.certs import CertDir
from kvd.jepsen.attacker import box as _box
from kvd.jepsen.attacker import closed_soon, hello, read_box
from kvd.raft import messages as m
from kvd.wire import codec
from tests.system.nodes import Cluster, wait_for

pytestmark = pytest.mark.system

PEER_OFFSET = 10000


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path), 3)
    c.start()
    yield c
    print(c.logs())
    c.destroy()


def tls_client(certs: CertDir, node_id: str, directory: str, port: int):
    cert, key = certs.ensure_node(node_id, directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(certs.ca_cert)
    context.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = context.wrap_socket(raw)
    return sock


class Writer(threading.Thread):
    """A client writing through a follower and reading back, the whole time: every answer is recorded."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.node = node
        self.stop = threading.Event()
        self.ok = 0
        self.errors = []

    def run(self):
        client = self.node.client(socket_timeout=5)
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                client.set("k", str(i))
                assert client.get("k") == str(i).encode()
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - recorded, asserted on below
                self.errors.append(repr(e))
            time.sleep(0.02)


def test_a_cluster_keeps_serving_while_an_attacker_without_the_right_certificate_connects(cluster, tmp_path):
    leader = cluster.leader()
    follower, other = cluster.followers()
    term = leader.info()["raft_term"]
    writer = Writer(follower)
    writer.start()
    try:
        victim_port = follower.port + PEER_OFFSET

        # 1. No certificate, plain AMP with the public cluster id and the leader's id: the port speaks TLS only.
        with socket.create_connection(("127.0.0.1", victim_port), timeout=5) as sock:
            sock.sendall(hello("systest", leader.id))
            assert read_box(sock) == {}

        # 2. A TLS client without a certificate: the handshake is refused.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", victim_port), timeout=5) as raw:
            try:
                with context.wrap_socket(raw) as sock:
                    sock.sendall(hello("systest", leader.id))
                    assert read_box(sock) == {}
            except (ssl.SSLError, ConnectionError):
                pass  # refused during the handshake

        # 3. A certificate of another CA, for the leader's id.
        evil = CertDir(str(tmp_path / "evil"))
        evil.ensure_ca("evil")
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError, AssertionError)):
            sock = tls_client(evil, leader.id, str(tmp_path / "evil-node"), victim_port)
            sock.sendall(hello("systest", leader.id))
            assert read_box(sock) != {}

        # 4. A valid certificate (the cluster's CA) for a non-member, claiming to be the leader: refused.
        certs = CertDir(os.path.join(str(tmp_path), "tls"))
        with tls_client(certs, "127.0.0.1:1", str(tmp_path / "stranger"), victim_port) as sock:
            sock.sendall(hello("systest", leader.id))
            answer = read_box(sock)
            assert answer.get(b"_error_code") == b"HELLO_REFUSED", answer
            assert b"certificate is for '127.0.0.1:1'" in answer.get(b"_error_description", b""), answer

        # 5. A member's certificate (other's), Hello as itself (accepted), then a vote with a higher term
        #    that claims to come from the leader: dropped with the connection; the term does not move.
        with tls_client(certs, other.id, other.dir, victim_port) as sock:
            sock.sendall(hello("systest", other.id))
            answer = read_box(sock)
            assert answer.get(b"accepted") == b"True", answer
            forged = m.RequestVote(term=term + 5, src=leader.id, dst=follower.id, last_log_index=10**6, last_log_term=term + 5)
            for name, box in codec.message_frames(forged, 1):
                sock.sendall(_box(name, dict(box), ask=False))
            assert closed_soon(sock, 10), "the victim did not drop the forging connection"

        time.sleep(1.0)  # a few heartbeats and client rounds with the attack over
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.errors == [] and writer.ok > 10, (writer.ok, writer.errors[:5])
    assert cluster.leader() is leader
    assert follower.info()["raft_term"] == term
    assert follower.info()["raft_peer_security"] == "mutual-tls"
    log = open(follower.logfile).read()
    assert "refusing Hello" in log and "claims src %r on a connection opened by %r" % (leader.id, other.id) in log


def test_a_node_restarted_with_a_new_certificate_from_the_same_ca_rejoins(cluster, tmp_path):
    follower = cluster.followers()[0]
    follower.stop()
    certs = CertDir(os.path.join(str(tmp_path), "tls"))
    cert_path, _ = certs.node_paths(follower.id, follower.dir)
    old = open(cert_path, "rb").read()
    certs.ensure_node(follower.id, follower.dir, renew=True)
    assert open(cert_path, "rb").read() != old
    leader = cluster.leader(among=[n for n in cluster.nodes if n is not follower])
    leader.client().set("after", "rotation")
    follower.start()
    cluster.caught_up(follower)
    wait_for(lambda: follower.client().get("after") == b"rotation", 10, "the rotated node to serve the new key")


def test_insecure_peers_is_a_warned_choice_and_info_says_so(tmp_path):
    """A node started with --insecure-peers logs a warning and reports raft_peer_security:insecure."""
    c = Cluster(str(tmp_path), 1, ["--insecure-peers"])
    try:
        c.start()
        node = c.nodes[0]
        assert node.info()["raft_peer_security"] == "insecure"
        assert "--insecure-peers: peer connections are plaintext and unauthenticated" in open(node.logfile).read()
    finally:
        c.destroy()
