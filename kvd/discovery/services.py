# -*- test-case-name: tests.discovery.test_services -*-
"""
How kvd.tap adds routing and observability to a node: the DNS server (UDP
and TCP), the HTTP port (status API, /metrics, the cluster page) and the
metrics wrappers around storage, state machine and client port.

Ports follow the client port P unless given:

    DNS   P + 20000  (--dns-port N; 0 turns it off)
    HTTP  P + 30000  (--http-port N; 0 turns it off)

A port that only follows from the rule is optional: if it is past 65535 or
cannot be opened, the node runs without that service and says so in its
log.  A port given explicitly must open, or the node does not start.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Optional, Tuple

from twisted.application import service
from twisted.logger import Logger

from kvd.discovery.dns import DNS_PORT_OFFSET, make_dns, normalize_domain
from kvd.discovery.http import HTTP_PORT_OFFSET, OptionalPort, make_site

_log = Logger()


def resolve_port(raw, client_port: int, offset: int, option: str) -> Tuple[Optional[int], bool]:
    """
    ``--dns-port``/``--http-port`` -> (port, required).  Unset: client port +
    offset, not required, None when that is past 65535.  ``0``: off (port 0).
    Raises ValueError for anything else that is not a port.
    """
    if raw is None or str(raw).strip() == "":
        port = client_port + offset
        return (port if port <= 65535 else None), False
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise ValueError("%s must be a port number (0 turns it off)" % option) from None
    if not 0 <= port <= 65535:
        raise ValueError("%s %d is out of range 0-65535" % (option, port))
    return port, port != 0


def check_options(options) -> None:
    """Fill options["dns-port"], ["http-port"] (int or None), their "-required" flags and ["domain"]; ValueError if bad."""
    client_port = options["address"].client_port
    for name, offset in (("dns-port", DNS_PORT_OFFSET), ("http-port", HTTP_PORT_OFFSET)):
        options[name], options[name + "-required"] = resolve_port(options[name], client_port, offset, "--" + name)
    options["domain"] = normalize_domain(options["domain"] or "kvd")


def make_metrics():
    """A NodeMetrics, or None when prometheus_client is missing (then /metrics says so)."""
    try:
        from kvd.discovery.metrics import NodeMetrics
    except ImportError:
        _log.warn("metrics are off: prometheus_client is not installed")
        return None
    return NodeMetrics()


def make_backup(node, options, reactor):
    """/v1/backup's resource (kvd.discovery.backup), checking requests against the peer CA (``--peer-ca``)."""
    import time

    from kvd.discovery.backup import BackupResource, CaVerifier

    verifier = None
    ca_path = options.get("peer-ca") if not options.get("insecure-peers") else None
    if ca_path:
        with open(ca_path, "rb") as f:
            verifier = CaVerifier(f.read(), node.view.node_id, reactor.seconds)
    return BackupResource(node.view, node.backup_point, node.open_snapshot_stream, verifier, lambda: int(time.time() * 1000))


def _interface(bind: str) -> str:
    return (bind or "").strip("[]")


def add_services(top: service.MultiService, node, options, metrics, reactor) -> None:
    """
    Add the DNS and HTTP listeners of ``node`` to ``top`` as one child
    service named "discovery" (after the node: they read its state).
    """
    if metrics is not None:
        metrics.attach(node.view)
    group = service.MultiService()
    group.setName("discovery")
    group.setServiceParent(top)
    interface = _interface(options["bind"])
    dns_port = options["dns-port"]
    if dns_port is None:
        _log.warn("DNS is off: client port + {offset} is past 65535; pass --dns-port", offset=DNS_PORT_OFFSET)
    elif dns_port:
        factory, udp = make_dns(node.view, options["domain"], metrics)
        required = options["dns-port-required"]
        OptionalPort("DNS (UDP)", lambda: reactor.listenUDP(dns_port, udp, interface=interface), dns_port, "--dns-port", required).setServiceParent(group)
        OptionalPort("DNS (TCP)", lambda: reactor.listenTCP(dns_port, factory, interface=interface), dns_port, "--dns-port", required).setServiceParent(group)
    http_port = options["http-port"]
    if http_port is None:
        _log.warn("HTTP is off: client port + {offset} is past 65535; pass --http-port", offset=HTTP_PORT_OFFSET)
    elif http_port:
        users = options.get("client-users")  # kvd.resp.auth.Users: the cluster page asks the others with its password
        site = make_site(node.view, metrics, reactor, info_auth=getattr(users, "internal_credentials", None),
                         info_tls_ca=options.get("client-tls-ca"), backup=make_backup(node, options, reactor))
        OptionalPort("HTTP", lambda: reactor.listenTCP(http_port, site, interface=interface), http_port, "--http-port", options["http-port-required"]).setServiceParent(group)
