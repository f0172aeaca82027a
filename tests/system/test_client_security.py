"""
The client port of a real node (twistd) started with a password, users and TLS, as redis-cli, redis-py,
kvd's own client (mgmt.py's) and a web browser's POST reach it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import redis

from kvd.cli.certs import CertDir
from kvd.resp import client as resp_client
from tests.system.conftest import free_client_ports
from tests.system.nodes import REPO, TWISTD, Node, wait_for

pytestmark = pytest.mark.system

PASSWORD = "s3same-open"
USERS = "reader readonly >r-secret\nwriter readwrite >w-secret\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    home = str(tmp_path_factory.mktemp("clientsec"))
    port = free_client_ports(1)[0]
    node_id = "127.0.0.1:%d" % port
    secret = os.path.join(home, "requirepass")
    with open(secret, "w") as f:
        f.write(PASSWORD + "\n")
    users = os.path.join(home, "users")
    with open(users, "w") as f:
        f.write(USERS)
    certs = CertDir(os.path.join(home, "tls"))
    certs.ensure_ca("systest")
    cert, key = certs.ensure_node(node_id, os.path.join(home, "client-tls"))
    n = Node(home, port, node_id, ["--http-port", "0", "--dns-port", "0", "--requirepass-file", secret, "--users", users,
                                   "--tls-cert", cert, "--tls-key", key, "--maxclients", "20"])
    n.ca = certs.ca_cert
    cmd = TWISTD + ["--pidfile", n.pidfile, "--logfile", n.logfile, "kvd"] + n.args
    done = subprocess.run(cmd, cwd=REPO, timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    n.pid = int(wait_for(lambda: open(n.pidfile).read().strip(), 20, "pidfile"))
    wait_for(lambda: n.client(password=PASSWORD, ssl=True, ssl_ca_certs=n.ca).set("ready", "1"), 30, "the node to take a write")
    assert PASSWORD not in open("/proc/%d/cmdline" % n.pid).read()  # not on the command line that ps shows
    yield n
    n.stop()


def cli(node, *args, user=None, password=None):
    cmd = ["redis-cli", "-p", str(node.port), "--tls", "--cacert", node.ca]
    if user:
        cmd += ["--user", user]
    if password:
        cmd += ["--pass", password, "--no-auth-warning"]
    done = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=20)
    return (done.stdout + done.stderr).strip()


def test_redis_cli_with_tls_and_a_password(node):
    assert cli(node, "SET", "k", "v", password=PASSWORD) == "OK"
    assert cli(node, "GET", "k", password=PASSWORD) == "v"
    assert cli(node, "GET", "k") == "NOAUTH Authentication required."
    assert "AUTH failed: WRONGPASS" in cli(node, "GET", "k", password="wrong")


def test_redis_cli_users_and_roles(node):
    assert cli(node, "GET", "k", user="reader", password="r-secret") == "v"
    assert cli(node, "SET", "k", "x", user="reader", password="r-secret").startswith("NOPERM")
    assert cli(node, "KVD.MEMBERS", user="writer", password="w-secret").startswith("NOPERM")
    assert cli(node, "SET", "k2", "x", user="writer", password="w-secret") == "OK"


def test_redis_py_password_and_username(node):
    r = node.client(password=PASSWORD, ssl=True, ssl_ca_certs=node.ca)
    assert r.set("a", "1") and r.get("a") == b"1"
    r3 = node.client(username="reader", password="r-secret", protocol=3, ssl=True, ssl_ca_certs=node.ca)
    assert r3.get("a") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        r3.set("a", "2")
    with pytest.raises(redis.exceptions.AuthenticationError):
        node.client(password="nope", ssl=True, ssl_ca_certs=node.ca).ping()


def test_kvd_client_takes_the_password_and_ca_from_the_environment(node):
    env = {"KVD_PASSWORD": PASSWORD, "KVD_TLS_CACERT": node.ca}
    with resp_client.Connection("127.0.0.1", node.port, timeout=5, auth=resp_client.credentials_from_env(env),
                                tls=resp_client.tls_from_env(env)) as conn:
        assert conn.call("KVD.CLUSTER") == b"systest"
    with resp_client.Connection("127.0.0.1", node.port, timeout=5, auth=None, tls=resp_client.tls_from_env(env)) as conn:
        with pytest.raises(resp_client.ReplyError, match="NOAUTH"):
            conn.call("GET", "a")


def test_plaintext_and_http_get_nothing(node):
    """Without TLS nothing is understood; over TLS, a POST is closed without running its body."""
    import ssl

    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(b"AUTH " + PASSWORD.encode() + b"\r\nSET plain 1\r\n")
        s.settimeout(5)
        try:
            assert b"+OK" not in s.recv(100)
        except (ConnectionError, socket.timeout):
            pass
    context = ssl.create_default_context(cafile=node.ca)
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            body = b"AUTH %s\r\nSET posted 1\r\n" % PASSWORD.encode()
            s.sendall(b"POST / HTTP/1.1\r\nHost: evil\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            assert s.recv(100) == b""  # closed, no reply
    r = node.client(password=PASSWORD, ssl=True, ssl_ca_certs=node.ca)
    assert r.exists("plain", "posted") == 0
    assert "SECURITY ATTACK" in node.log_tail(200)


def test_maxclients(node):
    import ssl

    context = ssl.create_default_context(cafile=node.ca)
    held = []
    try:
        for _ in range(25):
            raw = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            held.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        time.sleep(0.3)
        last = held[-1]
        last.settimeout(5)
        assert last.recv(100) == b"-ERR max number of clients reached\r\n"
    finally:
        for s in held:
            s.close()


def test_info_and_config_tell_the_client_port_settings(node):
    r = node.client(password=PASSWORD, ssl=True, ssl_ca_certs=node.ca)
    clients = r.info("clients")
    assert clients["maxclients"] == 20 and clients["client_auth"] == "yes" and clients["client_tls"] == "yes"
    assert clients["client_output_limit"] == 64 * 1024 * 1024
    assert r.config_get("maxclients") == {"maxclients": "20"}


def test_the_cluster_page_asks_a_member_over_tls_with_the_password(node):
    """fetch_info (the cluster page's INFO raft of another member) through TLS verified by the CA, after AUTH."""
    script = """
import sys
from twisted.internet.task import react
from twisted.internet.ssl import Certificate
from kvd.discovery.cluster_view import fetch_info

def main(reactor):
    ca = Certificate.loadPEM(open(sys.argv[2], 'rb').read())
    d = fetch_info(reactor, '127.0.0.1', int(sys.argv[1]), auth=(None, sys.argv[3]), tls_ca=ca)
    return d.addCallback(lambda info: print(info['raft_role']))

react(main)
"""
    import sys

    run = subprocess.run([sys.executable, "-c", script, str(node.port), node.ca, PASSWORD], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert run.stdout.strip() == "leader", run.stdout + run.stderr
    wrong = subprocess.run([sys.executable, "-c", script, str(node.port), node.ca, "wrong"], cwd=REPO,
                           capture_output=True, text=True, timeout=30)
    assert "AUTH refused: WRONGPASS" in wrong.stdout + wrong.stderr
