# -*- test-case-name: tests.discovery.test_dns -*-
"""
Service discovery over DNS, as Consul answers it: every node is an
authoritative server for the cluster's domain (default ``kvd.``) and answers
from its own current view of the cluster, on UDP and TCP.

    leader.kvd.            A/AAAA and SRV (target, client port) of the current leader;
                           SERVFAIL while this node knows no live leader, so a
                           resolver moves on to another node.
    _kvd._tcp.kvd.         SRV of every voter with its client port (RFC 2782), the
                           leader at priority 0 and the others at 1; their
                           addresses go in the additional section.
    _kvd-learner._tcp.kvd. the same for learners.
    <node>.node.kvd.       A/AAAA of one member; <node> is its id with every
                           character outside [a-z0-9-] turned into "-"
                           (127.0.0.1:7001 -> 127-0-0-1-7001).
    kvd.                   SOA and NS (this node).

Every record has TTL 0: answers follow membership and leadership as they
change.  Names outside the domain are REFUSED (there is no recursion), unknown
names get NXDOMAIN with the SOA, a name without the asked type gets an empty
answer.  A member advertised by host name rather than address is a CNAME to
that name (and the SRV target is the name itself).

Nothing a packet holds can stop the node: undecodable packets get FORMERR
when their header is readable and are dropped otherwise, responses (QR=1) are
dropped (no reflection loops), a UDP answer too large for the asker is sent
truncated (TC) so it retries over TCP, and any error in answering becomes
SERVFAIL.

    dig @127.0.0.1 -p 27001 leader.kvd SRV

Port rule: the DNS port is the client port + 20000 (``DNS_PORT_OFFSET``)
unless ``--dns-port`` says otherwise; ``--dns-port 0`` turns DNS off.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns, error, server
from twisted.names.common import ResolverBase
from twisted.protocols.policies import TimeoutMixin

from kvd.address import MemberAddress

#: DNS port = client port + this, unless --dns-port is given (Consul's default is 8600).
DNS_PORT_OFFSET = 20000
DEFAULT_DOMAIN = "kvd"
#: Seconds an answer may be cached: none, so answers follow the cluster as it changes.
TTL = 0
#: Largest UDP answer for an asker that did not advertise a size (EDNS0).
UDP_PLAIN_MAX = 512
#: Largest UDP answer we ever send (the DNS flag day 2020 size: no fragmentation).
UDP_EDNS_MAX = 1232
#: Seconds an idle DNS-over-TCP connection may stay open, and how many may be open at once.
TCP_IDLE_TIMEOUT_S = 10.0
TCP_MAX_CONNECTIONS = 64

_log = Logger()

Records = Tuple[List[dns.RRHeader], List[dns.RRHeader], List[dns.RRHeader]]


def node_label(node_id: str) -> str:
    """A node id as one DNS label: ``"127.0.0.1:7001"`` -> ``"127-0-0-1-7001"``."""
    label = re.sub(r"[^a-z0-9-]+", "-", node_id.lower()).strip("-")
    return label[:63] or "node"


def normalize_domain(domain: str) -> str:
    """``"kvd."``, ``"KVD"`` -> ``"kvd"``; ``"dc1.kvd."`` -> ``"dc1.kvd"``.  Raises ValueError when not a domain name."""
    text = domain.strip().rstrip(".").lower()
    if not text or len(text) > 200 or not all(re.fullmatch(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", part) for part in text.split(".")):
        raise ValueError("%r is not a domain name (letters, digits and hyphens, labels joined by dots)" % domain)
    return text


def derived_port(client_port: int, offset: int) -> Optional[int]:
    """client port + offset, or None when that is past 65535."""
    port = client_port + offset
    return port if port <= 65535 else None


class NoLeader(error.DNSServerError):
    """This node knows no live leader right now: SERVFAIL, so the asker tries another node."""


class OutsideDomain(error.DNSQueryRefusedError):
    """A name this server is not authoritative for: REFUSED (no recursion)."""


class ClusterAuthority(ResolverBase):
    """
    The authority for ``domain``, answering from a node's current view
    (kvd.node.NodeView: ``node_id``, ``voters()``, ``learners()``,
    ``members()``, ``address_of()``, ``commit_index``, ``live_leader()``).

    ``lookup(name, type)`` answers synchronously with (answers, authority,
    additional) or raises: OutsideDomain (REFUSED),
    ``error.AuthoritativeDomainError`` (NXDOMAIN), NoLeader (SERVFAIL).
    The ResolverBase methods (``query``, ``lookupService``, ...) wrap it in
    Deferreds, as every twisted.names resolver does.
    """

    def __init__(self, view, domain: str = DEFAULT_DOMAIN, ttl: int = TTL):
        super().__init__()
        self.view = view
        self.domain = normalize_domain(domain)
        self.ttl = ttl

    # ------------------------------------------------------------ IResolver
    def _lookup(self, name, cls, type, timeout=None):
        try:
            return defer.succeed(self.lookup(name, type, cls))
        except Exception:
            return defer.fail()

    # ------------------------------------------------------------ answers
    def is_ours(self, name) -> bool:
        return self._relative(name) is not None

    def _relative(self, name) -> Optional[str]:
        """The part of name before the domain ("" for the apex), or None when outside it."""
        text = _name_text(name)
        if text is None:
            return None
        if text == self.domain:
            return ""
        if text.endswith("." + self.domain):
            return text[: -len(self.domain) - 1]
        return None

    def lookup(self, name, type: int, cls: int = dns.IN) -> Records:
        relative = self._relative(name)
        if relative is None:
            raise OutsideDomain("%r is outside %s." % (name, self.domain))
        if cls not in (dns.IN, dns.ANY):
            raise OutsideDomain("class %d is not served" % cls)
        owner = dns.Name(self._fqdn(relative))
        additional: List[dns.RRHeader] = []
        if relative == "":
            records = [self._soa()] + self._ns()
        elif relative == "leader":
            leader = self.view.live_leader()
            address = self._address(leader) if leader is not None else None
            if address is None:
                raise NoLeader("no live leader known to %s" % self.view.node_id)
            records = self._host_records(owner, address.host) + [self._srv(owner, leader, address, 0)]
        elif relative in ("_kvd._tcp", "_kvd-learner._tcp"):
            ids = self.view.voters() if relative == "_kvd._tcp" else self.view.learners()
            leader = self.view.live_leader()
            records = []
            for node_id in ids:
                address = self._address(node_id)
                if address is None:
                    continue
                records.append(self._srv(owner, node_id, address, 0 if node_id == leader else 1))
                records += self._host_records(owner, address.host)
        elif relative in ("node", "_tcp"):
            records = []  # names that exist only as parents of others: no data, not NXDOMAIN
        elif relative.endswith(".node") and relative.count(".") == 1:
            node_id = self._node_by_label(relative[: -len(".node")])
            if node_id is None:
                raise error.AuthoritativeDomainError(owner.name)
            records = self._host_records(owner, self._address(node_id).host)
        else:
            raise error.AuthoritativeDomainError(owner.name)
        answers = [r for r in records if type in (dns.ALL_RECORDS, r.type)]
        if not answers and type != dns.CNAME:
            answers = [r for r in records if r.type == dns.CNAME]
        if any(r.type == dns.SRV for r in answers):
            additional = self._srv_additional(answers)
            if type == dns.ALL_RECORDS:
                seen = {(r.name, r.type, r.payload) for r in answers}
                additional = [r for r in additional if (r.name, r.type, r.payload) not in seen]
        authority = [] if answers else [self._soa()]
        return answers, authority, additional

    def negative_authority(self) -> List[dns.RRHeader]:
        """What an NXDOMAIN carries in its authority section: the SOA (RFC 2308)."""
        return [self._soa()]

    # ------------------------------------------------------------ helpers
    def _fqdn(self, relative: str) -> bytes:
        return ("%s.%s" % (relative, self.domain) if relative else self.domain).encode("ascii")

    def _rr(self, owner, payload) -> dns.RRHeader:
        name = owner.name if isinstance(owner, dns.Name) else owner
        return dns.RRHeader(name=name, type=payload.TYPE, cls=dns.IN, ttl=self.ttl, payload=payload, auth=True)

    def _address(self, node_id: Optional[str]) -> Optional[MemberAddress]:
        if node_id is None or (node_id not in self.view.members() and node_id != self.view.node_id):
            return None
        return self.view.address_of(node_id)

    def _known_ids(self) -> List[str]:
        ids = self.view.members()
        if self.view.node_id not in ids:
            ids.append(self.view.node_id)
        return sorted(ids)

    def _node_by_label(self, label: str) -> Optional[str]:
        for node_id in self._known_ids():
            if node_label(node_id) == label and self._address(node_id) is not None:
                return node_id
        return None

    def _node_name(self, node_id: str) -> bytes:
        return self._fqdn("%s.node" % node_label(node_id))

    def _host_records(self, owner, host: str) -> List[dns.RRHeader]:
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return [self._rr(owner, dns.Record_CNAME(host.rstrip(".").encode("idna"), ttl=self.ttl))]
        if ip.version == 4:
            return [self._rr(owner, dns.Record_A(str(ip), ttl=self.ttl))]
        return [self._rr(owner, dns.Record_AAAA(str(ip), ttl=self.ttl))]

    def _target(self, node_id: str, address: MemberAddress) -> bytes:
        """An SRV target must own an address record, never be a CNAME (RFC 2782)."""
        host = address.host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return host.rstrip(".").encode("idna")
        return self._node_name(node_id)

    def _srv(self, owner, node_id: str, address: MemberAddress, priority: int) -> dns.RRHeader:
        return self._rr(owner, dns.Record_SRV(priority, 1, address.client_port, self._target(node_id, address), ttl=self.ttl))

    def _srv_additional(self, answers: Iterable[dns.RRHeader]) -> List[dns.RRHeader]:
        out: List[dns.RRHeader] = []
        targets = {r.payload.target.name for r in answers if r.type == dns.SRV}
        for node_id in self._known_ids():
            name = self._node_name(node_id)
            if name in targets:
                out += self._host_records(dns.Name(name), self._address(node_id).host)
        return out

    def _soa(self) -> dns.RRHeader:
        serial = (self.view.commit_index if self.view.started else 0) & 0xFFFFFFFF
        soa = dns.Record_SOA(
            mname=self._node_name(self.view.node_id),
            rname=self._fqdn("hostmaster"),
            serial=serial,
            refresh=60,
            retry=10,
            expire=600,
            minimum=self.ttl,  # negative answers are not cached either (RFC 2308)
            ttl=self.ttl,
        )
        return self._rr(dns.Name(self._fqdn("")), soa)

    def _ns(self) -> List[dns.RRHeader]:
        return [self._rr(dns.Name(self._fqdn("")), dns.Record_NS(self._node_name(self.view.node_id), ttl=self.ttl))]


def _name_text(name) -> Optional[str]:
    if isinstance(name, dns.Name):
        name = name.name
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(name, str):
        return None
    return name.rstrip(".").lower()


# ================================================================ the server
class ClusterDNSFactory(server.DNSServerFactory):
    """
    Answers queries from one ClusterAuthority and nothing else (no cache, no
    recursion).  ``on_answer(rcode)`` and ``on_drop()`` feed the metrics.
    """

    noisy = False

    def __init__(self, authority: ClusterAuthority, on_answer: Optional[Callable[[int], None]] = None, on_drop: Optional[Callable[[], None]] = None):
        super().__init__(authorities=[authority], verbose=0)
        self.authority = authority
        self.resolver = authority  # straight to the authority: its failures carry the rcode
        self.on_answer = on_answer or (lambda rcode: None)
        self.on_drop = on_drop or (lambda: None)

    def buildProtocol(self, addr):
        if len(self.connections) >= TCP_MAX_CONNECTIONS:
            return None  # the reactor closes the connection
        return TCPProtocol(self)

    # ------------------------------------------------------------ dispatch
    def messageReceived(self, message, proto, address=None):
        if message.answer:
            self.on_drop()  # a response is never answered: no loops between servers
            return
        try:
            if message.opCode != dns.OP_QUERY:
                self.reply(message, proto, address, dns.ENOTIMP)
            elif len(message.queries) != 1 or len(_opt_records(message)) > 1:
                self.reply(message, proto, address, dns.EFORMAT)
            else:
                self.handleQuery(message, proto, address)
        except Exception:
            _log.failure("DNS: answering {message!r} failed", message=message)

    def handleQuery(self, message, protocol, address):
        query = message.queries[0]
        d = defer.maybeDeferred(self.authority.lookup, query.name, query.type, query.cls)
        d.addCallbacks(
            lambda records: self.reply(message, protocol, address, dns.OK, *records),
            lambda failure: self._failed(failure, message, protocol, address),
        )
        d.addErrback(lambda failure: _log.failure("DNS: cannot send an answer", failure))
        return d

    def _failed(self, failure, message, protocol, address):
        # Most twisted.names errors derive from DomainError: test the specific ones first.
        if failure.check(error.DNSQueryRefusedError):
            self.reply(message, protocol, address, dns.EREFUSED)
        elif failure.check(error.DNSServerError):
            self.reply(message, protocol, address, dns.ESERVER)
        elif failure.check(error.AuthoritativeDomainError, error.DNSNameError):
            self.reply(message, protocol, address, dns.ENAME, [], self.authority.negative_authority(), [])
        else:
            _log.failure("DNS: looking up {query!r} failed", failure, query=message.queries[0])
            self.reply(message, protocol, address, dns.ESERVER)

    def reply(self, message, protocol, address, rcode, answers=(), authority=(), additional=()):
        query = message.queries[0] if message.queries else None
        ours = query is not None and self.authority.is_ours(query.name)
        response = dns.Message(id=message.id, answer=1, opCode=message.opCode, recDes=message.recDes, recAv=0, auth=int(ours and rcode in (dns.OK, dns.ENAME)), rCode=rcode)
        response.maxSize = 0  # twisted would cut the bytes mid-record; _encode truncates properly
        response.queries = list(message.queries[:1])
        response.answers = list(answers)
        response.authority = list(authority)
        response.additional = list(additional)
        opts = _opt_records(message)
        if opts:
            # Echo EDNS0 (RFC 6891): tell the asker the size we send at most.
            response.additional.append(dns.RRHeader(name=b"", type=dns.OPT, cls=UDP_EDNS_MAX, ttl=0, payload=dns.UnknownRecord(b"")))
        limit = None
        if address is not None:  # UDP
            limit = min(max(opts[0].cls, UDP_PLAIN_MAX), UDP_EDNS_MAX) if opts else UDP_PLAIN_MAX
        self.on_answer(rcode)
        protocol.send_response(response, address, limit)


def _opt_records(message) -> List[dns.RRHeader]:
    return [r for r in message.additional if r.type == dns.OPT]


def _encode(response: dns.Message, limit: Optional[int]) -> bytes:
    data = response.toStr()
    if limit is not None and len(data) > limit:
        # Too big for UDP: send the header and question with TC set; the
        # asker retries over TCP (RFC 1035 4.2.1, RFC 7766).
        response.trunc = 1
        keep_opt = [r for r in response.additional if r.type == dns.OPT]
        response.answers, response.authority, response.additional = [], [], keep_opt
        data = response.toStr()
    return data


def formerr_for(data: bytes) -> Optional[bytes]:
    """
    The FORMERR answer to an undecodable packet whose header is readable and
    says it is a query; None when it should just be dropped.
    """
    if len(data) < 12:
        return None
    ident, flags = struct.unpack("!HH", data[:4])
    if flags & 0x8000:
        return None  # a response: never answer one
    opcode = (flags >> 11) & 0xF
    rd = (flags >> 8) & 1
    return struct.pack("!HHHHHH", ident, 0x8000 | (opcode << 11) | (rd << 8) | dns.EFORMAT, 0, 0, 0, 0)


class UDPProtocol(dns.DNSDatagramProtocol):
    """DNS over UDP that survives anything a datagram holds."""

    noisy = False

    def datagramReceived(self, data, addr):
        try:
            message = dns.Message()
            try:
                message.fromStr(data)
            except Exception:
                self.controller.on_drop()
                answer = formerr_for(data)
                if answer is not None:
                    self._write(answer, addr)
                return
            self.controller.messageReceived(message, self, addr)
        except Exception:
            _log.failure("DNS: a datagram from {addr} could not be handled", addr=addr)

    def send_response(self, response, address, limit):
        self._write(_encode(response, limit), address)

    def _write(self, data: bytes, address) -> None:
        try:
            self.transport.write(data, address)
        except Exception:  # an address the kernel will not send to (port 0, broadcast, ...)
            pass


class TCPProtocol(dns.DNSProtocol, TimeoutMixin):
    """DNS over TCP (two-byte length prefix); idle connections are closed."""

    MAX_LENGTH = 65535

    def connectionMade(self):
        super().connectionMade()
        self.setTimeout(TCP_IDLE_TIMEOUT_S)

    def connectionLost(self, reason):
        self.setTimeout(None)
        super().connectionLost(reason)

    def stringReceived(self, data):
        self.resetTimeout()
        try:
            message = dns.Message()
            try:
                message.fromStr(data)
            except Exception:
                self.controller.on_drop()
                answer = formerr_for(data)
                if answer is not None:
                    self.sendString(answer)
                else:
                    self.transport.loseConnection()
                return
            self.controller.messageReceived(message, self)
        except Exception:
            _log.failure("DNS: a TCP message could not be handled")
            self.transport.loseConnection()

    def lengthLimitExceeded(self, length):
        self.transport.loseConnection()

    def send_response(self, response, address, limit):
        if self.transport is not None and self.connected:
            self.sendString(_encode(response, None))


def make_dns(view, domain: str = DEFAULT_DOMAIN, metrics=None) -> Tuple[ClusterDNSFactory, UDPProtocol]:
    """The TCP factory and the UDP protocol of one node's DNS server (``view``: kvd.node.NodeView)."""
    authority = ClusterAuthority(view, domain)
    kwargs = {}
    if metrics is not None:
        kwargs = dict(on_answer=metrics.dns_answered, on_drop=metrics.dns_dropped)
    factory = ClusterDNSFactory(authority, **kwargs)
    return factory, UDPProtocol(factory)


def srv_targets(answers: Sequence[dns.RRHeader]) -> List[Tuple[int, int, bytes]]:
    """(priority, port, target) of SRV answers, best first: a helper for tests and tools."""
    return sorted((r.payload.priority, r.payload.port, r.payload.target.name) for r in answers if r.type == dns.SRV)
