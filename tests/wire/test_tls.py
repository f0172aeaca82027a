# -*- test-case-name: tests.wire.test_tls -*-
"""
Peer TLS (kvd.wire.tls, kvd.cli.certs and the transport's checks in kvd.wire.peers): mutual TLS 1.3 over
in-memory connections (real handshakes, no sockets), attacked the ways issue 12 names: no certificate, a
certificate of another CA, a valid certificate for another node than the Hello claims, a forged src, a
listener that is not the node dialled.  Also the `twistd kvd` options and the certificate files.
"""

from __future__ import annotations

import os
import stat

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from kvd.cli.certs import CertDir, CertError, certificate_fits, make_ca
from kvd.raft import messages as m
from kvd.tap import Options, makeService
from kvd.wire import codec
from kvd.wire.tls import PeerTLS, PeerTLSError, is_tls

from tests.helpers import LogCapture
from tests.wire.test_peers import Node
from tests.wire.test_peers import accept as accept_plain


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def ca(tmp_path):
    certs = CertDir(str(tmp_path / "ca"))
    certs.ensure_ca("c1")
    return certs


@pytest.fixture
def other_ca(tmp_path):
    certs = CertDir(str(tmp_path / "other"))
    certs.ensure_ca("evil")
    return certs


def tls_for(certs: CertDir, node_id: str, directory=None) -> PeerTLS:
    cert, key = certs.ensure_node(node_id, directory)
    return PeerTLS(cert, key, certs.ca_cert)


class TLSNode(Node):
    """A test node whose transport runs over mutual TLS; ``listener`` is what its peer port serves."""

    def __init__(self, node_id, reactor, tls, **kwargs):
        super().__init__(node_id, reactor, tls=tls, **kwargs)
        self.listener = self.transport.listening_factory()
        self.server = self.listener.wrappedFactory  # the PeerServerFactory behind TLS


def accept(reactor, listener, attempt=-1):
    """test_peers.accept, then pump until quiet: TLS batches small writes to the next reactor turn."""
    pump = accept_plain(reactor, listener, attempt, flush=False)
    settle(reactor, pump)
    return pump


def settle(reactor, pump):
    """Move bytes and run the clock's due calls (TLS writes wait for the next reactor turn) until quiet."""
    for _ in range(1000):
        pump.flush()
        due = [call for call in reactor.getDelayedCalls() if call.getTime() <= reactor.seconds()]
        if not due:
            return
        reactor.advance(0)
    raise AssertionError("the connection did not settle")


def test_members_link_up_over_tls13_and_messages_flow(reactor, ca):
    """Two members with certificates of the cluster CA: the link comes up over TLS 1.3 and messages arrive."""
    a = TLSNode("a", reactor, tls_for(ca, "a"))
    b = TLSNode("b", reactor, tls_for(ca, "b"))
    assert a.transport.dial("b")
    pump = accept(reactor, b.listener)
    assert a.transport.is_connected("b")
    server = b.server.inbound["a"]
    assert is_tls(server.transport) and server.certified_id == "a"
    assert server.transport.getHandle().get_protocol_version_name() == "TLSv1.3"
    vote = m.RequestVote(term=2, src="a", dst="b", last_log_index=0, last_log_term=0)
    a.transport.send(vote)
    settle(reactor, pump)
    assert b.received == [vote]


def test_a_caller_without_a_certificate_is_refused(reactor, ca):
    """A plaintext caller that knows the cluster id: its Hello never gets through, nothing is delivered."""
    stranger = Node("a", reactor)  # no tls: speaks plain AMP to a TLS port
    b = TLSNode("b", reactor, tls_for(ca, "b"))
    stranger.transport.dial("b")
    pump = accept(reactor, b.listener)
    settle(reactor, pump)
    assert pump.closed
    assert not stranger.transport.is_connected("b")
    assert b.server.inbound == {} and b.received == []


def test_a_certificate_of_another_ca_is_refused(reactor, ca, other_ca):
    """A certificate for a member's id, signed by another CA: the handshake fails, the member's link stays."""
    a = TLSNode("a", reactor, tls_for(ca, "a"))
    b = TLSNode("b", reactor, tls_for(ca, "b"))
    a.transport.dial("b")
    accept(reactor, b.listener)
    real = b.server.inbound["a"]
    forger = TLSNode("a", reactor, tls_for(other_ca, "a", str(other_ca.root) + "/a"))
    forger.transport.dial("b")
    pump = accept(reactor, b.listener)
    settle(reactor, pump)
    assert pump.closed and not forger.transport.is_connected("b")
    assert b.server.inbound["a"] is real


def test_a_hello_claiming_another_member_than_the_certificate_is_refused(reactor, ca):
    """c holds a valid certificate, but for c; claiming to be a is refused, and a's link is not displaced."""
    a = TLSNode("a", reactor, tls_for(ca, "a"))
    b = TLSNode("b", reactor, tls_for(ca, "b"))
    a.transport.dial("b")
    real_pump = accept(reactor, b.listener)
    real = b.server.inbound["a"]
    liar = TLSNode("a", reactor, tls_for(ca, "c"))  # claims "a" in its Hello, shows c's certificate
    with LogCapture() as logs:
        liar.transport.dial("b")
        pump = accept(reactor, b.listener)
        settle(reactor, pump)
    assert pump.closed and not liar.transport.is_connected("b")
    assert b.server.inbound["a"] is real and not real._dropping
    assert any("Hello claims node id 'a', the caller's certificate is for 'c'" in line for line in logs.messages(LogLevel.warn))
    # The real a still gets through.
    vote = m.RequestVote(term=2, src="a", dst="b", last_log_index=0, last_log_term=0)
    a.transport.send(vote)
    settle(reactor, real_pump)
    assert b.received == [vote]


def test_a_forged_src_from_an_authenticated_peer_is_dropped_and_logged(reactor, ca):
    """c is a member with its own certificate; a message from it claiming src a is not delivered."""
    b = TLSNode("b", reactor, tls_for(ca, "b"))
    c = TLSNode("c", reactor, tls_for(ca, "c"))
    c.transport.dial("b")
    pump = accept(reactor, b.listener)
    forged = m.TimeoutNow(term=7, src="a", dst="b")
    with LogCapture() as logs:
        c.transport._links["b"].protocol.write_frames(codec.message_frames(forged, 1), bounded=False)
        settle(reactor, pump)
    assert b.received == []
    assert pump.closed
    assert any("claims src 'a' on a connection opened by 'c'" in line for line in logs.messages(LogLevel.warn))


def test_a_caller_that_never_says_hello_is_cut_off(reactor, ca):
    """A connection that completes no TLS handshake and no Hello (a held-open socket) is aborted after the deadline."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import Protocol

    from tests.helpers import connect

    b = TLSNode("b", reactor, tls_for(ca, "b"))
    server = b.listener.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001))
    pump = connect(Protocol(), server)
    with LogCapture() as logs:
        reactor.advance(b.server.hello_timeout_s - 1)
        assert not (pump.server_transport.disconnecting or pump.server_transport.disconnected)
        reactor.advance(2)
    assert pump.server_transport.disconnecting or pump.server_transport.disconnected
    assert any("no Hello within" in line for line in logs.messages(LogLevel.warn))
    assert b.server.connections == set() or all(p._dropping for p in b.server.connections)


def test_a_listener_whose_certificate_is_not_the_node_dialled_is_dropped(reactor, ca):
    """b's address answers with c's certificate (while claiming to be b): a does not take it as its link to b."""
    a = TLSNode("a", reactor, tls_for(ca, "a"))
    impostor = TLSNode("b", reactor, tls_for(ca, "c"))
    with LogCapture() as logs:
        a.transport.dial("b")
        pump = accept(reactor, impostor.listener)
        settle(reactor, pump)
    assert not a.transport.is_connected("b")
    assert any("certificate is for 'c', not 'b'" in line for line in logs.messages(LogLevel.error))


def test_a_rotated_certificate_from_the_same_ca_is_accepted(reactor, ca, tmp_path):
    """A node that comes back with a new certificate (new key) from the same CA links up again."""
    b = TLSNode("b", reactor, tls_for(ca, "b"))
    first = tls_for(ca, "a")
    old = open(first.cert_path, "rb").read()
    ca.ensure_node("a", renew=True)
    second = tls_for(ca, "a")
    assert second.cert_path == first.cert_path and open(second.cert_path, "rb").read() != old
    a = TLSNode("a", reactor, second)
    a.transport.dial("b")
    accept(reactor, b.listener)
    assert a.transport.is_connected("b") and b.server.inbound["a"].certified_id == "a"


# ---------------------------------------------------------------- twistd kvd options


def parse(*argv):
    options = Options()
    options.parseOptions(["--listen", "127.0.0.1:7001"] + list(argv))
    return options


def test_a_node_without_peer_security_refuses_to_start_with_one_line(tmp_path):
    o = parse("--data-dir", str(tmp_path / "d"))
    with pytest.raises(SystemExit) as e:
        makeService(o, reactor=MemoryReactorClock())
    text = str(e.value)
    assert "\n" not in text and "--peer-cert" in text and "--insecure-peers" in text
    assert not os.path.exists(tmp_path / "d" / "data.mdb")  # refused before the store was opened


def test_peer_tls_options_go_together(ca):
    cert, key = ca.ensure_node("127.0.0.1:7001")
    with pytest.raises(usage.UsageError, match="missing --peer-ca"):
        parse("--peer-cert", cert, "--peer-key", key)
    with pytest.raises(usage.UsageError, match="--insecure-peers does not go with"):
        parse("--peer-cert", cert, "--peer-key", key, "--peer-ca", ca.ca_cert, "--insecure-peers")


def test_a_certificate_for_another_node_or_a_bad_file_is_refused(tmp_path, ca, other_ca):
    cert, key = ca.ensure_node("127.0.0.1:7002")
    o = parse("--peer-cert", cert, "--peer-key", key, "--peer-ca", ca.ca_cert, "--data-dir", str(tmp_path / "d"))
    with pytest.raises(SystemExit, match="is for node '127.0.0.1:7002', this node is '127.0.0.1:7001'"):
        makeService(o, reactor=MemoryReactorClock())
    cert, key = ca.ensure_node("127.0.0.1:7001")
    o = parse("--peer-cert", cert, "--peer-key", key, "--peer-ca", other_ca.ca_cert, "--data-dir", str(tmp_path / "d"))
    with pytest.raises(SystemExit, match="not signed by --peer-ca"):
        makeService(o, reactor=MemoryReactorClock())
    with pytest.raises(PeerTLSError, match="cannot read the --peer-key"):
        PeerTLS(cert, str(tmp_path / "missing.key"), ca.ca_cert)
    with pytest.raises(PeerTLSError, match="not a PEM certificate"):
        PeerTLS(key, key, ca.ca_cert)


def test_a_node_with_certificates_listens_over_tls(tmp_path, ca):
    cert, key = ca.ensure_node("127.0.0.1:7001")
    o = parse("--peer-cert", cert, "--peer-key", key, "--peer-ca", ca.ca_cert, "--data-dir", str(tmp_path / "d"))
    top = makeService(o, reactor=MemoryReactorClock())
    node = next(iter(top))
    assert node.peers.tls is not None and node.peers.tls.identity == "127.0.0.1:7001"
    assert isinstance(node.peers.listening_factory(), TLSMemoryBIOFactory)


def test_insecure_peers_is_explicit_and_warned(tmp_path):
    o = parse("--insecure-peers", "--data-dir", str(tmp_path / "d"))
    with LogCapture() as logs:
        top = makeService(o, reactor=MemoryReactorClock())
    assert next(iter(top)).peers.tls is None
    assert any("--insecure-peers" in line and "plaintext" in line for line in logs.messages(LogLevel.warn))


def test_insecure_peers_in_a_config_file(tmp_path):
    conf = tmp_path / "kvd.conf"
    conf.write_text("[kvd]\nlisten = 127.0.0.1:7100\ninsecure-peers = yes\n")
    o = Options()
    o.parseOptions(["--config", str(conf)])
    assert o["insecure-peers"]


# ---------------------------------------------------------------- certificate files


def test_keys_are_private_and_certificates_are_reused_until_stale(tmp_path, ca):
    cert, key = ca.ensure_node("127.0.0.1:7001", str(tmp_path / "n1"))
    for path in (cert, key, ca.ca_key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = open(cert, "rb").read()
    assert ca.ensure_node("127.0.0.1:7001", str(tmp_path / "n1")) == (cert, key)
    assert open(cert, "rb").read() == before
    assert certificate_fits(cert, ca.ca_cert, "127.0.0.1:7001")
    assert not certificate_fits(cert, ca.ca_cert, "127.0.0.1:7002")
    # A new CA (the cluster was re-made): the old certificate no longer fits and is replaced.
    new_cert, new_key = make_ca("c1")
    open(ca.ca_cert, "wb").write(new_cert)
    open(ca.ca_key, "wb").write(new_key)
    assert not certificate_fits(cert, ca.ca_cert, "127.0.0.1:7001")
    ca.ensure_node("127.0.0.1:7001", str(tmp_path / "n1"))
    assert certificate_fits(cert, ca.ca_cert, "127.0.0.1:7001")


def test_a_join_token_carries_the_ca(tmp_path, ca, other_ca):
    token = ca.token()
    there = CertDir(str(tmp_path / "there"))
    there.install_token(token)
    assert open(there.ca_cert, "rb").read() == open(ca.ca_cert, "rb").read()
    assert stat.S_IMODE(os.stat(there.ca_key).st_mode) == 0o600
    there.install_token(token)  # again: fine
    with pytest.raises(CertError, match="another cluster's CA"):
        there.install_token(other_ca.token())
    with pytest.raises(CertError, match="damaged"):
        there.install_token(token[:-20])
    with pytest.raises(CertError, match="not a kvd join token"):
        there.install_token("hello")


def test_a_node_id_too_long_for_a_cn_is_a_clear_error(ca):
    with pytest.raises(CertError, match="1 to 64 characters"):
        ca.ensure_node("n" * 65 + ":7001")


def test_the_certs_command_line(tmp_path, capsys):
    from kvd.cli.certs import main

    assert main(["node", "--dir", str(tmp_path / "shared"), "--node", "node1:7001", "--out", str(tmp_path / "n1")]) == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "--peer-cert" and out[1] == str(tmp_path / "n1" / "peer.crt")
    assert PeerTLS(out[1], out[3], out[5]).identity == "node1:7001"


def test_a_batch_leaves_at_once_without_waiting_for_the_next_reactor_turn(reactor, ca):
    """
    send_many pushes its records out before returning: the Ready loop writes to
    disk right after it, and TLS's own batching (a callLater(0)) would hold the
    batch until that write is over.
    """
    a = TLSNode("a", reactor, tls_for(ca, "a"))
    b = TLSNode("b", reactor, tls_for(ca, "b"))
    assert a.transport.dial("b")
    pump = accept(reactor, b.listener)
    votes = [m.RequestVote(term=t, src="a", dst="b", last_log_index=0, last_log_term=0) for t in (2, 3)]
    a.transport.send(votes[0])
    pump.flush()  # no reactor turn: a plain send is still in TLS's buffer
    assert b.received == []
    settle(reactor, pump)
    assert b.received == votes[:1]
    a.transport.send_many(votes[1:])
    pump.flush()  # still no reactor turn
    assert b.received == votes
