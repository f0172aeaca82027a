"""`twistd kvd`'s --dns-port, --http-port and --domain, and the listeners makeService adds."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from kvd.discovery.http import OptionalPort
from kvd.discovery.services import resolve_port
from kvd.tap import Options, makeService


def parse(*args):
    o = Options()
    o.parseOptions(list(args) + ["--insecure-peers"])  # peer TLS: tests/wire/test_tls.py
    return o


def test_ports_follow_the_client_port_by_default(tmp_path):
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path))
    assert (o["dns-port"], o["dns-port-required"]) == (27001, False)
    assert (o["http-port"], o["http-port-required"]) == (37001, False)
    assert o["domain"] == "kvd"


def test_explicit_ports_zero_and_bad_values(tmp_path):
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path), "--dns-port", "8600", "--http-port", "0", "--domain", "Cluster.Example.")
    assert (o["dns-port"], o["dns-port-required"]) == (8600, True)
    assert o["http-port"] == 0 and o["domain"] == "cluster.example"
    for bad in (["--dns-port", "x"], ["--http-port", "70000"], ["--dns-port", "-1"], ["--domain", "a..b"]):
        with pytest.raises(usage.UsageError):
            parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path), *bad)
    # Past 65535 by the rule: off (the node says so in its log), not an error.
    o = parse("--listen", "127.0.0.1:40000", "--peer-port", "41000", "--data-dir", str(tmp_path))
    assert o["dns-port"] == 60000 and o["http-port"] is None
    assert resolve_port(None, 50000, 20000, "--dns-port") == (None, False)


def test_the_config_file_takes_the_new_keys(tmp_path):
    conf = tmp_path / "kvd.conf"
    conf.write_text("[kvd]\nlisten = 127.0.0.1:7100\ndns-port = 8600\nhttp-port = 8500\ndomain = dc1.kvd\n")
    o = parse("--config", str(conf), "--data-dir", str(tmp_path / "d"))
    assert (o["dns-port"], o["http-port"], o["domain"]) == (8600, 8500, "dc1.kvd")


class UDPMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock has no listenUDP: record the calls."""

    def __init__(self):
        super().__init__()
        self.udp = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udp.append((port, protocol, interface))
        return self.listenTCP(0, None)  # any object with stopListening


def test_make_service_listens_on_udp_and_tcp_for_dns_and_on_http(tmp_path):
    from kvd.discovery.dns import UDPProtocol

    reactor = UDPMemoryReactor()
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path), "--bind", "0.0.0.0")
    top = makeService(o, reactor=reactor)
    discovery = top.getServiceNamed("discovery")
    assert [s.what for s in discovery] == ["DNS (UDP)", "DNS (TCP)", "HTTP"]
    for s in discovery:
        s.startService()
    assert [(port, type(protocol), interface) for port, protocol, interface in reactor.udp] == [(27001, UDPProtocol, "0.0.0.0")]
    tcp = sorted((port, interface) for port, _, _, interface in reactor.tcpServers if port)
    assert tcp == [(27001, "0.0.0.0"), (37001, "0.0.0.0")]
    for s in discovery:
        s.stopService()


def test_zero_turns_services_off(tmp_path):
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path), "--dns-port", "0", "--http-port", "0")
    top = makeService(o, reactor=MemoryReactorClock())
    assert list(top.getServiceNamed("discovery")) == []


def test_a_derived_port_in_use_is_skipped_but_an_explicit_one_stops_the_node():
    def busy():
        raise CannotListenError("127.0.0.1", 27001, OSError("address in use"))

    optional = OptionalPort("DNS (UDP)", busy, 27001, "--dns-port", required=False)
    optional.privilegedStartService()
    optional.startService()
    assert optional.port is None and optional.running
    optional.stopService()
    required = OptionalPort("DNS (UDP)", busy, 27001, "--dns-port", required=True)
    with pytest.raises(CannotListenError):
        required.privilegedStartService()


def test_a_real_port_in_use(tmp_path):
    """With the real reactor's listenTCP: a busy derived port is skipped."""
    from twisted.internet import reactor

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        from twisted.web.server import Site
        from twisted.web.resource import Resource

        service = OptionalPort("HTTP", lambda: reactor.listenTCP(port, Site(Resource()), interface="127.0.0.1"), port, "--http-port", required=False)
        service.startService()
        assert service.port is None
        service.stopService()
    finally:
        holder.close()
