"""
The DNS authority and server of kvd.discovery.dns, without sockets: a fake node's view
in, DNS messages out (decoded with dnspython, an independent implementation).
"""

from __future__ import annotations

import random
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.names import dns as tdns
from twisted.names import error

from kvd.discovery.dns import ClusterAuthority, NoLeader, OutsideDomain, TCPProtocol, UDPProtocol, make_dns, node_label, normalize_domain
from tests.discovery.fakes import FakeNode, member


@pytest.fixture
def node():
    n = FakeNode()
    n.set_leader("127.0.0.1:7002")
    return n


def lookup(node, name, qtype, domain="kvd"):
    return ClusterAuthority(node.view, domain).lookup(name.encode(), qtype)


def records(section):
    return sorted((r.name.name.decode(), r.type, str(r.payload)) for r in section)


# ================================================================ the authority
def test_leader_has_an_a_record_and_an_srv_with_its_client_port(node):
    answers, authority, additional = lookup(node, "leader.kvd", tdns.SRV)
    assert [(r.type, r.payload.port, r.payload.target.name, r.ttl) for r in answers] == [(tdns.SRV, 7002, b"127-0-0-1-7002.node.kvd", 0)]
    assert [(r.name.name, r.payload.dottedQuad()) for r in additional] == [(b"127-0-0-1-7002.node.kvd", "127.0.0.1")]
    answers, _, _ = lookup(node, "leader.kvd.", tdns.A)
    assert [(r.name.name, r.payload.dottedQuad(), r.ttl, r.auth) for r in answers] == [(b"leader.kvd", "127.0.0.1", 0, True)]


def test_answers_follow_leadership_as_it_changes(node):
    assert lookup(node, "leader.kvd", tdns.SRV)[0][0].payload.port == 7002
    node.set_leader("127.0.0.1:7003")
    assert lookup(node, "leader.kvd", tdns.SRV)[0][0].payload.port == 7003


def test_no_leader_is_servfail_never_a_stale_leader(node):
    node.leader = None  # e.g. the leader went quiet: live_leader() no longer vouches for it
    node.core.leader = "127.0.0.1:7002"
    with pytest.raises(NoLeader):
        lookup(node, "leader.kvd", tdns.A)
    assert isinstance(NoLeader("x"), error.DNSServerError)


def test_voters_are_srv_records_with_the_leader_first_and_addresses_in_additional(node):
    answers, _, additional = lookup(node, "_kvd._tcp.kvd", tdns.SRV)
    assert sorted((r.payload.priority, r.payload.port) for r in answers) == [(0, 7002), (1, 7001), (1, 7003)]
    assert {r.name.name for r in additional} == {b"127-0-0-1-%d.node.kvd" % p for p in (7001, 7002, 7003)}
    learners, _, additional = lookup(node, "_kvd-learner._tcp.kvd", tdns.SRV)
    assert [(r.payload.port, r.payload.target.name) for r in learners] == [(7004, b"10-0-0-4-7004.node.kvd")]
    assert [r.payload.dottedQuad() for r in additional] == ["10.0.0.4"]


def test_membership_changes_show_at_once(node):
    node.core.config = node.core.config.with_voter("10.0.0.4:7004")
    answers, _, _ = lookup(node, "_kvd._tcp.kvd", tdns.SRV)
    assert sorted(r.payload.port for r in answers) == [7001, 7002, 7003, 7004]
    assert lookup(node, "_kvd-learner._tcp.kvd", tdns.SRV)[0] == []
    node.core.config = node.core.config.without("127.0.0.1:7003")
    assert sorted(r.payload.port for r in lookup(node, "_kvd._tcp.kvd", tdns.SRV)[0]) == [7001, 7002, 7004]
    with pytest.raises(error.AuthoritativeDomainError):
        lookup(node, "127-0-0-1-7003.node.kvd", tdns.A)


def test_node_names_and_labels(node):
    assert node_label("127.0.0.1:7001") == "127-0-0-1-7001"
    assert node_label("N1") == "n1" and node_label("::1:7001") == "1-7001"
    answers, _, _ = lookup(node, "10-0-0-4-7004.NODE.Kvd.", tdns.A)
    assert [r.payload.dottedQuad() for r in answers] == ["10.0.0.4"]
    with pytest.raises(error.AuthoritativeDomainError):
        lookup(node, "nobody.node.kvd", tdns.A)
    with pytest.raises(error.AuthoritativeDomainError):
        lookup(node, "x.leader.kvd", tdns.A)


def test_outside_the_domain_is_refused(node):
    for name in ("example.com", "kvd.example.com", "evilkvd", "leader.kvdx", ""):
        with pytest.raises(OutsideDomain):
            lookup(node, name, tdns.A)
    authority = ClusterAuthority(node.view)
    with pytest.raises(OutsideDomain):
        authority.lookup(b"leader.kvd", tdns.A, cls=tdns.CH)  # CHAOS class (version.bind and the like)
    with pytest.raises(OutsideDomain):
        authority.lookup(b"leader.\xff.kvd", tdns.A)


def test_a_name_without_the_asked_type_is_an_empty_answer_with_the_soa(node):
    answers, authority, _ = lookup(node, "leader.kvd", tdns.TXT)
    assert answers == [] and [r.type for r in authority] == [tdns.SOA]
    assert authority[0].payload.minimum == 0
    answers, authority, _ = lookup(node, "node.kvd", tdns.A)
    assert answers == [] and authority
    answers, _, _ = lookup(node, "kvd", tdns.SOA)
    assert [r.type for r in answers] == [tdns.SOA]
    assert answers[0].payload.mname.name == b"127-0-0-1-7001.node.kvd"
    answers, _, _ = lookup(node, "kvd", tdns.NS)
    assert [r.payload.name.name for r in answers] == [b"127-0-0-1-7001.node.kvd"]


def test_any_gives_every_record_of_the_name(node):
    answers, _, additional = lookup(node, "leader.kvd", tdns.ALL_RECORDS)
    assert sorted(r.type for r in answers) == [tdns.A, tdns.SRV]


def test_host_names_become_cnames_and_ipv6_aaaa():
    node = FakeNode(
        node_id="db1.example:7001",
        voters=["db1.example:7001", "[::1]:7002"],
        learners=[],
        addresses={"db1.example:7001": member("db1.example", 7001), "[::1]:7002": member("::1", 7002)},
    )
    node.set_leader("db1.example:7001")
    answers, _, _ = lookup(node, "leader.kvd", tdns.A)
    assert [(r.type, r.payload.name.name) for r in answers] == [(tdns.CNAME, b"db1.example")]
    srv, _, additional = lookup(node, "leader.kvd", tdns.SRV)
    assert srv[0].payload.target.name == b"db1.example"  # an SRV target is never a CNAME
    assert additional == []
    answers, _, _ = lookup(node, "1-7002.node.kvd", tdns.AAAA)
    assert [r.type for r in answers] == [tdns.AAAA]


def test_domains():
    assert normalize_domain("KVD.") == "kvd" and normalize_domain("dc1.Example") == "dc1.example"
    for bad in ("", ".", "a..b", "a b", "-x", "x" * 300):
        with pytest.raises(ValueError):
            normalize_domain(bad)
    node = FakeNode()
    node.set_leader("127.0.0.1:7001")
    assert lookup(node, "leader.dc1.example", tdns.A, domain="dc1.example.")[0]
    with pytest.raises(OutsideDomain):
        lookup(node, "leader.kvd", tdns.A, domain="dc1.example")


def test_the_resolver_interface_answers_in_deferreds(node):
    authority = ClusterAuthority(node.view)
    results = []
    authority.lookupService(b"_kvd._tcp.kvd").addCallback(results.append)
    assert len(results[0][0]) == 3
    failures = []
    authority.lookupAddress(b"nope.kvd").addErrback(failures.append)
    assert failures[0].check(error.AuthoritativeDomainError)


# ================================================================ the server
class FakeUDPTransport:
    def __init__(self):
        self.sent = []

    def write(self, data, address):
        self.sent.append((data, address))


@pytest.fixture
def udp(node):
    factory, protocol = make_dns(node.view)
    protocol.transport = FakeUDPTransport()
    return protocol


@pytest.fixture
def logged_errors():
    errors = []

    def observer(event):
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield errors
    globalLogPublisher.removeObserver(observer)


def ask_udp(udp, wire):
    before = len(udp.transport.sent)
    udp.datagramReceived(wire, ("127.0.0.1", 5353))
    sent = udp.transport.sent[before:]
    assert len(sent) <= 1
    return dns.message.from_wire(sent[0][0]) if sent else None


def test_udp_answers_decode_with_dnspython(udp):
    response = ask_udp(udp, dns.message.make_query("leader.kvd.", "SRV").to_wire())
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA and response.flags & dns.flags.QR and response.flags & dns.flags.RD
    assert not response.flags & dns.flags.RA  # no recursion
    (srv,) = response.answer
    assert [(r.port, str(r.target)) for r in srv] == [(7002, "127-0-0-1-7002.node.kvd.")]
    assert [str(r) for rrset in response.additional for r in rrset] == ["127.0.0.1"]


def test_udp_rcodes(udp, node):
    assert ask_udp(udp, dns.message.make_query("nothing.kvd.", "A").to_wire()).rcode() == dns.rcode.NXDOMAIN
    nx = ask_udp(udp, dns.message.make_query("nothing.kvd.", "A").to_wire())
    assert nx.authority and nx.authority[0].rdtype == dns.rdatatype.SOA
    assert ask_udp(udp, dns.message.make_query("example.com.", "A").to_wire()).rcode() == dns.rcode.REFUSED
    node.leader = None
    assert ask_udp(udp, dns.message.make_query("leader.kvd.", "A").to_wire()).rcode() == dns.rcode.SERVFAIL
    status = dns.message.make_query("leader.kvd.", "A")
    status.set_opcode(dns.opcode.STATUS)
    assert ask_udp(udp, status.to_wire()).rcode() == dns.rcode.NOTIMP


def test_questions_that_are_not_exactly_one_get_formerr(udp):
    two = dns.message.make_query("leader.kvd.", "A")
    two.question.append(dns.message.make_query("kvd.", "SOA").question[0])
    assert ask_udp(udp, two.to_wire()).rcode() == dns.rcode.FORMERR
    none = struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0)
    response = ask_udp(udp, none)
    assert response.rcode() == dns.rcode.FORMERR and response.id == 7


def test_responses_are_never_answered(udp):
    response = dns.message.make_response(dns.message.make_query("leader.kvd.", "A"))
    assert ask_udp(udp, response.to_wire()) is None


def test_big_answers_are_truncated_over_udp_unless_the_asker_allows_more():
    voters = ["10.1.%d.%d:7001" % (i // 250, i % 250) for i in range(30)]
    node = FakeNode(node_id=voters[0], voters=voters, learners=[], addresses={v: member(v.rpartition(":")[0], 7001) for v in voters})
    node.set_leader(voters[0])
    factory, udp = make_dns(node.view)
    udp.transport = FakeUDPTransport()
    plain = ask_udp(udp, dns.message.make_query("_kvd._tcp.kvd.", "SRV").to_wire())
    assert plain.flags & dns.flags.TC and not plain.answer
    edns = ask_udp(udp, dns.message.make_query("_kvd._tcp.kvd.", "SRV", use_edns=0, payload=4096).to_wire())
    assert edns.flags & dns.flags.TC  # 30 voters do not fit 1232 bytes either
    assert edns.edns == 0 and edns.payload == 1232
    small = FakeNode()
    small.set_leader("127.0.0.1:7001")
    _, udp = make_dns(small.view)
    udp.transport = FakeUDPTransport()
    assert not ask_udp(udp, dns.message.make_query("_kvd._tcp.kvd.", "SRV", use_edns=0).to_wire()).flags & dns.flags.TC
    # Over TCP the whole answer goes out.
    tcp = TCPProtocol(factory)
    transport = StringTransport()
    tcp.makeConnection(transport)
    wire = dns.message.make_query("_kvd._tcp.kvd.", "SRV").to_wire()
    tcp.dataReceived(struct.pack("!H", len(wire)) + wire)
    data = transport.value()
    (length,) = struct.unpack("!H", data[:2])
    response = dns.message.from_wire(data[2 : 2 + length])
    assert not response.flags & dns.flags.TC and len(list(response.answer[0])) == 30
    tcp.connectionLost(None)


def test_garbage_never_raises_and_gets_formerr_or_nothing(udp, logged_errors):
    rng = random.Random(7)
    good = dns.message.make_query("_kvd._tcp.kvd.", "SRV", use_edns=0).to_wire()
    packets = [b"", b"\x00", b"\xff" * 11, b"\x00" * 12 + b"\xc0\x0c" * 4, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"]
    packets += [good[:n] for n in range(len(good))]
    packets += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600))) for _ in range(300)]
    for _ in range(700):
        mutated = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        packets.append(bytes(mutated))
    for wire in packets:
        udp.datagramReceived(wire, ("127.0.0.1", 5353))
    for data, _ in udp.transport.sent:
        dns.message.from_wire(data, ignore_trailing=True)  # every answer we sent is well formed
        assert data[2] & 0x80  # QR set: an answer
    assert logged_errors == []
    assert ask_udp(udp, good).rcode() == dns.rcode.NOERROR  # and it still answers


def test_an_unwritable_address_is_ignored(node):
    class Refusing:
        def write(self, data, address):
            raise OSError("EPERM")

    _, udp = make_dns(node.view)
    udp.transport = Refusing()
    udp.datagramReceived(dns.message.make_query("leader.kvd.", "A").to_wire(), ("255.255.255.255", 0))


def test_tcp_garbage_and_oversize(node, logged_errors):
    factory, _ = make_dns(node.view)
    tcp = TCPProtocol(factory)
    transport = StringTransport()
    tcp.makeConnection(transport)
    tcp.dataReceived(struct.pack("!H", 3) + b"abc")  # too short for a header: dropped, connection closed
    assert transport.disconnecting
    tcp.connectionLost(None)
    tcp = TCPProtocol(factory)
    transport = StringTransport()
    tcp.makeConnection(transport)
    junk = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x05abc"
    tcp.dataReceived(struct.pack("!H", len(junk)) + junk)
    response = dns.message.from_wire(transport.value()[2:])
    assert response.rcode() == dns.rcode.FORMERR and response.id == 9
    tcp.connectionLost(None)
    assert factory.connections == []
    assert logged_errors == []


def test_tcp_connections_are_capped(node):
    from kvd.discovery import dns as kdns

    factory, _ = make_dns(node.view)
    protocols = []
    for _ in range(kdns.TCP_MAX_CONNECTIONS):
        p = factory.buildProtocol(None)
        p.makeConnection(StringTransport())
        protocols.append(p)
    assert factory.buildProtocol(None) is None
    for p in protocols:
        p.connectionLost(None)
    assert factory.buildProtocol(None) is not None
