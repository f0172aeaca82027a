"""
mgmt.py without -h (kvd.cli.route): its small DNS client against kvd.discovery.dns
over real loopback sockets (kvd.discovery.dns answers synchronously, so a plain thread
serves it without a reactor), and the choice among candidates.
"""

from __future__ import annotations

import socket
import struct
import threading

import dns.message
import pytest
from twisted.internet.testing import StringTransport

from kvd.cli import route as cli_route
from kvd.cli.errors import UNREACHABLE, USAGE, CliError
from kvd.cli.home import Home
from kvd.discovery.dns import TCPProtocol, make_dns
from tests.discovery.fakes import FakeNode, member


class ThreadedDNS:
    """kvd.discovery.dns's UDP and TCP protocols behind real sockets on 127.0.0.1, served by a thread."""

    def __init__(self, node):
        self.factory, self.udp = make_dns(node.view)
        # One port number for UDP and TCP: the kernel picks a free UDP port,
        # which TCP may hold already (another test's connection); pick again.
        for attempt in range(50):
            self.usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.usock.bind(("127.0.0.1", 0))
            self.port = self.usock.getsockname()[1]
            self.tsock = socket.socket()
            self.tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tsock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.usock.close()
                self.tsock.close()
        else:
            raise AssertionError("no port free for both UDP and TCP after 50 tries")
        self.tsock.listen(4)
        self.tcp_questions = 0
        sock = self.usock

        class Transport:
            def write(self, data, address):
                sock.sendto(data, address)

        self.udp.transport = Transport()
        self.stopped = False
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True), threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def _serve_udp(self):
        self.usock.settimeout(0.1)
        while not self.stopped:
            try:
                data, address = self.usock.recvfrom(65535)
            except OSError:
                continue
            self.udp.datagramReceived(data, address)

    def _serve_tcp(self):
        self.tsock.settimeout(0.1)
        while not self.stopped:
            try:
                conn, _ = self.tsock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                self.tcp_questions += 1
                protocol = TCPProtocol(self.factory)
                transport = StringTransport()
                protocol.makeConnection(transport)
                head = conn.recv(2)
                (length,) = struct.unpack("!H", head)
                body = b""
                while len(body) < length:
                    body += conn.recv(length - len(body))
                protocol.dataReceived(head + body)
                conn.sendall(transport.value())
                protocol.connectionLost(None)

    def close(self):
        self.stopped = True
        for t in self.threads:
            t.join(2)
        self.usock.close()
        self.tsock.close()


@pytest.fixture
def node():
    n = FakeNode()
    n.set_leader("127.0.0.1:7002")
    return n


@pytest.fixture
def server(node):
    s = ThreadedDNS(node)
    yield s
    s.close()


def test_the_query_is_a_valid_dns_message():
    message = dns.message.from_wire(cli_route.build_query("leader.kvd", cli_route.TYPE_SRV, 4242))
    assert message.id == 4242 and str(message.question[0].name) == "leader.kvd." and message.question[0].rdtype == 33


def test_the_leader_then_the_voters_over_real_udp(server):
    found = cli_route.dns_candidates("127.0.0.1:%d" % server.port, "kvd")
    assert found == ["127.0.0.1:7002", "127.0.0.1:7001", "127.0.0.1:7003"]
    answer = cli_route.query(("127.0.0.1", server.port), "nothing.kvd", cli_route.TYPE_SRV)
    assert answer["rcode"] == 3


def test_without_a_leader_dns_still_names_the_voters(server, node):
    node.leader = None
    found = cli_route.dns_candidates("127.0.0.1:%d" % server.port, "kvd")
    assert sorted(found) == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def test_a_truncated_answer_is_asked_again_over_tcp():
    voters = ["10.1.0.%d:7001" % i for i in range(1, 31)]
    node = FakeNode(node_id=voters[0], voters=voters, learners=[], addresses={v: member(v.rpartition(":")[0], 7001) for v in voters})
    node.set_leader(voters[0])
    server = ThreadedDNS(node)
    try:
        answer = cli_route.query(("127.0.0.1", server.port), "_kvd._tcp.kvd", cli_route.TYPE_SRV)
        assert len(cli_route.srv_addresses(answer)) == 30 and server.tcp_questions == 1
        assert cli_route.srv_addresses(answer)[0] == "10.1.0.1:7001"  # the leader's priority is 0
    finally:
        server.close()


def test_no_dns_server_answering_means_no_dns_candidates():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        assert cli_route.dns_candidates("127.0.0.1:%d" % s.getsockname()[1], "kvd", timeout_s=0.2) == []
    finally:
        s.close()
    with pytest.raises(CliError) as e:
        cli_route.dns_candidates("nonsense", "kvd")
    assert e.value.code == USAGE


def test_malformed_answers_are_errors_not_crashes():
    for bad in (b"", b"\x00" * 5, struct.pack("!HHHHHH", 1, 0x8000, 0, 1, 0, 0) + b"\xc0\x0c"):
        with pytest.raises(cli_route.DNSError):
            cli_route.parse_response(bad, 1)


def make_home(tmp_path, seed=None):
    home = Home(str(tmp_path / "home"))
    if seed:
        home.save_seed(seed, "c")
    return home


def test_find_member_prefers_dns_then_kvd_home(tmp_path, server, monkeypatch):
    monkeypatch.delenv("KVD_DNS", raising=False)
    home = make_home(tmp_path, seed="127.0.0.1:7009")
    tried = []

    def probe(address):
        tried.append(address)
        return address in ("127.0.0.1:7001", "127.0.0.1:7009")

    assert cli_route.find_member(home, "127.0.0.1:%d" % server.port, probe=probe) == "127.0.0.1:7001"
    assert tried == ["127.0.0.1:7002", "127.0.0.1:7001"]  # the leader first; it was down
    monkeypatch.setenv("KVD_DNS", "127.0.0.1:%d" % server.port)
    tried.clear()
    assert cli_route.find_member(home, probe=probe) == "127.0.0.1:7001"
    monkeypatch.delenv("KVD_DNS")
    assert cli_route.find_member(home, probe=probe) == "127.0.0.1:7009"  # the recorded seed


def test_find_member_says_what_to_do_when_nothing_answers(tmp_path, monkeypatch):
    monkeypatch.delenv("KVD_DNS", raising=False)
    with pytest.raises(CliError) as e:
        cli_route.find_member(make_home(tmp_path), probe=lambda a: True)
    assert e.value.code == USAGE and "pass -h HOST:PORT" in e.value.message
    with pytest.raises(CliError) as e:
        cli_route.find_member(make_home(tmp_path, seed="127.0.0.1:7009"), probe=lambda a: False)
    assert e.value.code == UNREACHABLE and "127.0.0.1:7009" in e.value.message


def test_client_commands_without_h_go_through_dns(tmp_path, server, monkeypatch, capsys):
    """mgmt.py -r client -c read -k K --dns ...: the CLI asks DNS, then talks to the member it names."""
    from kvd.cli import mgmt as cli
    from kvd.cli import client as cli_client

    monkeypatch.setenv("KVD_HOME", str(tmp_path / "empty-home"))
    seen = []

    class FakeClient:
        def __init__(self, address, timeout):
            seen.append(address)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def call(self, *args):
            return b"blue"

    monkeypatch.setattr(cli_route, "_ping", lambda address: address == "127.0.0.1:7002")
    monkeypatch.setattr(cli_client, "NodeClient", FakeClient)
    code = cli.main(["-r", "client", "-c", "read", "-k", "color", "--dns", "127.0.0.1:%d" % server.port])
    out = capsys.readouterr()
    assert (code, out.out) == (0, "blue\n"), out.err
    assert seen == ["127.0.0.1:7002"]
    code = cli.main(["-r", "client", "-c", "read", "-k", "color"])
    err = capsys.readouterr().err
    assert code == USAGE and "no -h given" in err
