"""
DNS, HTTP, routing and the cluster page on a real three-node cluster
(twistd processes on 127.0.0.1): dnspython over UDP and TCP, malformed
packets, the status API and /metrics, mgmt.py without -h, and headless
Chromium watching the page while the leader is killed.

One cluster serves the whole module; the tests run in file order and the
last one kills the leader.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.system.conftest import _bindable, _ephemeral_low, free_client_ports
from tests.system.nodes import REPO, Node, wait_for

pytestmark = pytest.mark.system


def _udp_bindable(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_service_ports(n: int, taken) -> list:
    """n ports free for TCP and UDP, below the ephemeral range when possible."""
    low = _ephemeral_low()
    rng = random.Random()
    out = []
    for _ in range(5000):
        port = rng.randrange(12000, max(12001, low - 10000)) if low - 10000 > 12000 else rng.randrange(20000, 60000)
        if port in out or port in taken:
            continue
        if _bindable(port) and _udp_bindable(port):
            out.append(port)
        if len(out) == n:
            return out
    raise RuntimeError("no free ports")


class DiscoveryCluster:
    def __init__(self, home: str):
        clients = free_client_ports(3)
        taken = set(clients) | {p + 10000 for p in clients}
        services = free_service_ports(6, taken)
        initial = ",".join("127.0.0.1:%d" % p for p in clients)
        self.nodes = []
        for i, port in enumerate(clients):
            node = Node(home, port, initial, ["--dns-port", str(services[2 * i]), "--http-port", str(services[2 * i + 1])])
            node.dns_port, node.http_port = services[2 * i], services[2 * i + 1]
            self.nodes.append(node)

    def start(self):
        for node in self.nodes:
            node.start()

    def up(self):
        return [n for n in self.nodes if n.running()]

    def leader(self, among=None, timeout_s=20, not_=None):
        among = among or self.up()

        def agreed():
            infos = [n.info() for n in among]
            leaders = {i["raft_leader"] for i in infos}
            if len(leaders) == 1 and "" not in leaders and (not_ is None or not_.id not in leaders):
                return next(n for n in self.nodes if n.id in leaders)
            return None

        return wait_for(agreed, timeout_s, "one leader agreed by %s" % [n.id for n in among])

    def destroy(self):
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = DiscoveryCluster(str(tmp_path_factory.mktemp("discovery")))
    try:
        c.start()
        c.leader()
        yield c
    finally:
        c.destroy()


def ask(node, name, rdtype, tcp=False, timeout=2.0):
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=node.dns_port, timeout=timeout)


def srv_ports(response):
    return sorted(r.port for rrset in response.answer for r in rrset if rrset.rdtype == dns.rdatatype.SRV)


def http(node, path, timeout=5.0):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (node.http_port, path), timeout=timeout) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()


# ================================================================ DNS
def test_every_node_names_the_leader_over_udp_and_tcp(cluster):
    leader = cluster.leader()
    for node in cluster.nodes:
        udp = ask(node, "leader.kvd.", "SRV")
        assert udp.rcode() == dns.rcode.NOERROR and srv_ports(udp) == [leader.port]
        assert [str(r) for rrset in udp.additional for r in rrset] == ["127.0.0.1"]
        tcp = ask(node, "_kvd._tcp.kvd.", "SRV", tcp=True)
        assert srv_ports(tcp) == sorted(n.port for n in cluster.nodes)
        assert all(rrset.ttl == 0 for rrset in tcp.answer)
    node = cluster.nodes[0]
    assert ask(node, "leader.kvd.", "A").answer[0][0].address == "127.0.0.1"
    assert ask(node, "127-0-0-1-%d.node.kvd." % node.port, "A").answer[0][0].address == "127.0.0.1"
    assert ask(node, "nobody.node.kvd.", "A").rcode() == dns.rcode.NXDOMAIN
    assert ask(node, "example.com.", "A").rcode() == dns.rcode.REFUSED
    assert ask(node, "_kvd-learner._tcp.kvd.", "SRV").answer == []


def test_malformed_packets_do_not_stop_the_node(cluster):
    node = cluster.nodes[1]
    rng = random.Random(3)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        good = dns.message.make_query("leader.kvd.", "SRV").to_wire()
        junk = [b"", b"\xff" * 3, b"\x00" * 12 + b"\xc0\x0c"] + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 512))) for _ in range(200)]
        for packet in junk + [good[: rng.randrange(len(good))] for _ in range(50)]:
            s.sendto(packet, ("127.0.0.1", node.dns_port))
    finally:
        s.close()
    for payload in (b"\x00\x05hello", b"\xff\xff" + b"x" * 100, b"\x00"):
        with socket.create_connection(("127.0.0.1", node.dns_port), timeout=2) as c:
            c.sendall(payload)

    def answers():
        # A burst can fill the socket's receive buffer for a moment and a
        # datagram sent then is lost, as UDP allows: ask again, like a resolver.
        try:
            return ask(node, "leader.kvd.", "SRV", timeout=0.3).rcode() == dns.rcode.NOERROR
        except dns.exception.Timeout:
            return False

    wait_for(answers, 5, "%s to answer DNS after the junk" % node.id)
    assert ask(node, "leader.kvd.", "SRV", tcp=True).rcode() == dns.rcode.NOERROR
    assert node.client().ping() and node.running()


# ================================================================ HTTP
def test_the_status_api_and_metrics(cluster):
    leader = cluster.leader()
    for node in cluster.nodes:
        status, kind, body = http(node, "/v1/status/leader")
        assert (status, kind, json.loads(body)) == (200, "application/json", leader.id)
        assert json.loads(http(node, "/v1/status/peers")[2]) == sorted(n.id for n in cluster.nodes)
        wait_for(lambda: http(node, "/v1/health")[0] == 200, 10, "%s healthy" % node.id)
    leader.client().set("metered", "yes")
    from prometheus_client.parser import text_string_to_metric_families

    status, kind, body = http(leader, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples if not s.labels}
    assert samples["kvd_raft_is_leader"] == 1 and samples["kvd_raft_proposals_total"] >= 1
    assert samples["kvd_storage_sync_seconds_count"] >= 1 and samples["kvd_client_connections_accepted_total"] >= 1
    view = json.loads(http(cluster.nodes[0], "/v1/cluster")[2])
    assert {m["id"]: m["up"] for m in view["members"]} == {n.id: True for n in cluster.nodes}
    assert http(cluster.nodes[0], "/")[0] == 200


def test_mgmt_without_h_finds_a_member_through_dns(cluster, tmp_path):
    env = dict(os.environ, KVD_HOME=str(tmp_path / "elsewhere"))
    dns_server = "127.0.0.1:%d" % cluster.nodes[2].dns_port
    mgmt = [sys.executable, os.path.join(REPO, "mgmt.py")]
    done = subprocess.run(mgmt + ["-r", "client", "-c", "write", "-k", "routed", "-v", "by-dns", "--dns", dns_server], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "OK\n", done.stderr
    env["KVD_DNS"] = dns_server
    done = subprocess.run(mgmt + ["-r", "client", "-c", "read", "-k", "routed"], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "by-dns\n"), done.stderr
    done = subprocess.run(mgmt + ["-r", "server", "-c", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(n["id"] for n in json.loads(done.stdout)["nodes"]) == sorted(n.id for n in cluster.nodes)


# ================================================================ the page, and a leader killed under it
def chromium(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -r requirements.txt)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-dev-shm-usage", "--window-size=390,844"):
        options.add_argument(arg)
    options.add_argument("--user-data-dir=%s" % (tmp_path / "chromium-profile"))
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def test_the_page_shows_a_killed_leader_and_its_successor(cluster, tmp_path):
    from selenium.webdriver.common.by import By

    browser = chromium(tmp_path)
    try:
        old = cluster.leader()
        watcher = next(n for n in cluster.nodes if n is not old)
        browser.get("http://127.0.0.1:%d/" % watcher.http_port)

        def page():
            rows = {r.get_attribute("data-node"): (r.get_attribute("data-status"), r.get_attribute("data-role")) for r in browser.find_elements(By.CSS_SELECTOR, "#members tbody tr")}
            return rows, browser.find_element(By.ID, "leader").get_attribute("data-leader")

        wait_for(lambda: page() == ({n.id: ("up", "leader" if n is old else "follower") for n in cluster.nodes}, old.id), 10, "the page to show the cluster")
        # Readable on a phone: nothing sticks out sideways at 390 px.
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")

        old.kill()
        survivors = [n for n in cluster.nodes if n is not old]
        # Ask a survivor's DNS for the leader all through the election: once it
        # has stopped naming the dead leader it never names it again.
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and seen[-3:] != ["new"] * 3:
            try:
                response = ask(watcher, "leader.kvd.", "SRV", timeout=0.3)
            except dns.exception.Timeout:
                continue
            if response.rcode() != dns.rcode.NOERROR:
                seen.append(dns.rcode.to_text(response.rcode()))
            else:
                seen.append("old" if srv_ports(response) == [old.port] else "new")
            time.sleep(0.02)
        assert seen[-3:] == ["new"] * 3, seen
        assert "old" not in seen[next(i for i, a in enumerate(seen) if a != "old") :], seen
        assert set(seen) <= {"old", "new", "SERVFAIL"}, seen
        new = cluster.leader(among=survivors, not_=old)

        def shown():
            rows, leader = page()
            return rows.get(old.id, ("",))[0] == "down" and leader == new.id and rows.get(new.id) == ("up", "leader")

        wait_for(shown, 10, "the page to show the old leader down and the new one leading")
        assert browser.find_element(By.ID, "no-leader").get_attribute("hidden") is not None
        # DNS on every survivor names the new leader; no one hands out the dead one.
        for node in survivors:
            assert srv_ports(ask(node, "leader.kvd.", "SRV")) == [new.port]
            assert http(node, "/v1/health")[0] == 200
    finally:
        browser.quit()
