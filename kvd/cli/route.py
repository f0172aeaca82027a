# -*- test-case-name: tests.discovery.test_route -*-
"""
Routing for mgmt.py: which node to talk to when ``-h`` is left out.

Candidates, in order:

1. DNS, when ``--dns HOST:PORT`` or ``$KVD_DNS`` names a server for the
   cluster's domain (any kvd node's DNS port, or a resolver that forwards the
   domain to one; ``$KVD_DOMAIN``, default ``kvd``): ``leader.kvd.`` first,
   then the voters of ``_kvd._tcp.kvd.`` in SRV priority order;
2. the nodes this machine started (KVD_HOME): the recorded seed, then every
   node whose process is alive.

The first candidate that answers PING is used; any member serves client
commands (followers forward writes to the leader).

The DNS client here is a small stdlib one (one question, UDP then TCP when
the answer is truncated), so the CLI needs no DNS library.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from kvd.address import AddressError, split_host_port
from kvd.cli.errors import UNREACHABLE, USAGE, CliError

#: Seconds to wait for a DNS answer.
DNS_TIMEOUT_S = 2.0
#: Seconds a candidate has to answer PING.
PROBE_CONNECT_S = 0.5
PROBE_TIMEOUT_S = 2.0

TYPE_A, TYPE_AAAA, TYPE_SRV = 1, 28, 33
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class DNSError(Exception):
    pass


# ================================================================ a tiny DNS client
def build_query(name: str, qtype: int, ident: int) -> bytes:
    labels = [part for part in name.rstrip(".").split(".") if part]
    qname = b"".join(struct.pack("!B", len(p.encode("idna"))) + p.encode("idna") for p in labels) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def _read_name(data: bytes, offset: int, depth: int = 0) -> Tuple[str, int]:
    labels = []
    while True:
        if offset >= len(data):
            raise DNSError("name runs past the packet")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if depth > 20 or offset + 1 >= len(data):
                raise DNSError("bad compression pointer")
            pointer = struct.unpack("!H", data[offset : offset + 2])[0] & 0x3FFF
            rest, _ = _read_name(data, pointer, depth + 1)
            labels.append(rest)
            return ".".join(l for l in labels if l), offset + 2
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        labels.append(data[offset : offset + length].decode("ascii", "replace"))
        offset += length


def parse_response(data: bytes, ident: int) -> dict:
    """{"rcode", "truncated", "answers": [(name, type, rdata)], "additional": [...]}; rdata decoded for A, AAAA, SRV."""
    if len(data) < 12:
        raise DNSError("short answer")
    rid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
    if rid != ident or not flags & 0x8000:
        raise DNSError("not the answer to our question")
    offset = 12
    for _ in range(qd):
        _, offset = _read_name(data, offset)
        offset += 4
    sections: Dict[str, list] = {"answers": [], "authority": [], "additional": []}
    for section, count in (("answers", an), ("authority", ns), ("additional", ar)):
        for _ in range(count):
            name, offset = _read_name(data, offset)
            if offset + 10 > len(data):
                raise DNSError("record runs past the packet")
            rtype, _, _, rdlength = struct.unpack("!HHIH", data[offset : offset + 10])
            offset += 10
            rdata = data[offset : offset + rdlength]
            if rtype == TYPE_A and rdlength == 4:
                value = socket.inet_ntop(socket.AF_INET, rdata)
            elif rtype == TYPE_AAAA and rdlength == 16:
                value = socket.inet_ntop(socket.AF_INET6, rdata)
            elif rtype == TYPE_SRV and rdlength >= 7:
                priority, weight, port = struct.unpack("!HHH", rdata[:6])
                target, _ = _read_name(data, offset + 6)
                value = (priority, weight, port, target)
            else:
                value = rdata
            sections[section].append((name.lower(), rtype, value))
            offset += rdlength
    return dict(rcode=flags & 0xF, truncated=bool(flags & 0x0200), **sections)


def query(server: Tuple[str, int], name: str, qtype: int, timeout_s: float = DNS_TIMEOUT_S) -> dict:
    """Ask server one question over UDP, and again over TCP if the answer was truncated."""
    ident = random.randrange(1, 65535)
    packet = build_query(name, qtype, ident)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(packet, server)
            while True:
                data, source = s.recvfrom(65535)
                if source[1] == server[1]:
                    break
        except OSError as e:
            raise DNSError("no answer from %s:%d (%s)" % (server[0], server[1], e)) from None
    answer = parse_response(data, ident)
    if not answer["truncated"]:
        return answer
    try:
        with socket.create_connection(server, timeout=timeout_s) as s:
            s.sendall(struct.pack("!H", len(packet)) + packet)
            data = _recv_exact(s, struct.unpack("!H", _recv_exact(s, 2))[0])
    except OSError as e:
        raise DNSError("no answer over TCP from %s:%d (%s)" % (server[0], server[1], e)) from None
    return parse_response(data, ident)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise OSError("connection closed")
        out += chunk
    return out


def srv_addresses(answer: dict) -> List[str]:
    """host:port of every SRV answer, best priority first, using the additional section's addresses."""
    addresses: Dict[str, str] = {}
    for name, rtype, value in answer["additional"] + answer["answers"]:
        if rtype in (TYPE_A, TYPE_AAAA):
            addresses.setdefault(name.rstrip("."), value)
    out = []
    for _, rtype, value in sorted((a for a in answer["answers"] if a[1] == TYPE_SRV), key=lambda a: a[2][0]):
        priority, weight, port, target = value
        host = addresses.get(target.lower().rstrip("."), target.rstrip("."))
        out.append("%s:%d" % (host, port))  # host:port splits at the last colon, so IPv6 needs no brackets
    return out


def dns_candidates(server_text: str, domain: str, timeout_s: float = DNS_TIMEOUT_S) -> List[str]:
    """The leader, then every voter, as the DNS server at server_text names them."""
    try:
        server = split_host_port(server_text)
    except AddressError as e:
        raise CliError(USAGE, "bad DNS server %r: %s; write it as host:port, e.g. 127.0.0.1:27001" % (server_text, e)) from None
    server = (server[0].strip("[]"), server[1])
    domain = domain.strip(".") or "kvd"
    found: List[str] = []
    for name in ("leader.%s" % domain, "_kvd._tcp.%s" % domain):
        try:
            answer = query(server, name, TYPE_SRV, timeout_s)
        except DNSError:
            continue
        if answer["rcode"] == 0:
            found += srv_addresses(answer)
    return list(dict.fromkeys(found))


# ================================================================ choosing a node
def home_candidates(home) -> List[str]:
    """The recorded seed, then the nodes started from KVD_HOME that are running."""
    seed = home.seed() or {}
    records = home.records()
    out = [seed["seed"]] if seed.get("seed") else []
    out += [r.id for r in records if r.running_pid() is not None]
    return list(dict.fromkeys(out))


def _ping(address: str) -> bool:
    from kvd.cli.client import NodeClient

    try:
        with NodeClient(address, timeout=PROBE_TIMEOUT_S, connect_timeout=PROBE_CONNECT_S) as client:
            return client.ping()
    except CliError:
        return False


def find_member(home, dns_server: Optional[str] = None, domain: Optional[str] = None, probe: Optional[Callable[[str], bool]] = None) -> str:
    """A node that answers, for a client command given without -h; CliError when none does."""
    probe = probe or _ping
    dns_server = dns_server or os.environ.get("KVD_DNS") or None
    domain = domain or os.environ.get("KVD_DOMAIN") or "kvd"
    candidates: List[str] = []
    if dns_server:
        candidates += dns_candidates(dns_server, domain)
    candidates += [c for c in home_candidates(home) if c not in candidates]
    for candidate in candidates:
        if probe(candidate):
            return candidate
    where = "KVD_HOME=%s" % home.root + (" and DNS %s" % dns_server if dns_server else "")
    if not candidates:
        raise CliError(
            USAGE,
            "no -h given and no running node found in %s; pass -h HOST:PORT, or --dns HOST:PORT (a node's DNS port, client port + 20000)" % where,
        )
    raise CliError(UNREACHABLE, "no -h given and none of the nodes found in %s answers (tried %s); pass -h HOST:PORT" % (where, ", ".join(candidates)))


def candidates_for_list(home, dns_server: Optional[str] = None, domain: Optional[str] = None) -> Sequence[str]:
    """For ``list`` without -h when KVD_HOME knows no node: the members DNS names."""
    dns_server = dns_server or os.environ.get("KVD_DNS") or None
    if not dns_server:
        return []
    return dns_candidates(dns_server, domain or os.environ.get("KVD_DOMAIN") or "kvd")
