# -*- test-case-name: tests.wire.test_tls -*-
"""
Mutual TLS for the peer port: TLS 1.3 only, both ends present a certificate
signed by the cluster's CA (``--peer-ca``), and a node's identity is its
certificate's subject CN (the node id).

:class:`PeerTLS` loads the three PEM files once (a restart re-reads them: that
is rotation) and builds the OpenSSL context both ends use.  The peer
transport (kvd.wire.peers) wraps its listening and dialling factories with
:meth:`PeerTLS.server_factory` / :meth:`PeerTLS.client_factory`, and after the
handshake reads the peer's identity with :func:`peer_identity`; it then
refuses a Hello whose node id is not that identity, and a listener whose
identity is not the node it dialled.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol


class PeerTLSError(Exception):
    """The certificate files cannot be used; one line for the user."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PeerTLSError("cannot read the %s %s: %s" % (what, path, e.strerror or e)) from None


class PeerTLS:
    """This node's certificate, key and the cluster CA, as an OpenSSL context for both ends."""

    def __init__(self, cert_path: str, key_path: str, ca_path: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from OpenSSL import SSL, crypto

        self.cert_path, self.key_path, self.ca_path = cert_path, key_path, ca_path
        try:
            cert = x509.load_pem_x509_certificate(_read(cert_path, "--peer-cert"))
        except ValueError as e:
            raise PeerTLSError("--peer-cert %s is not a PEM certificate (%s)" % (cert_path, e)) from None
        try:
            key = serialization.load_pem_private_key(_read(key_path, "--peer-key"), password=None)
        except (ValueError, TypeError) as e:
            raise PeerTLSError("--peer-key %s is not an unencrypted PEM private key (%s)" % (key_path, e)) from None
        ca_pem = _read(ca_path, "--peer-ca")
        try:
            ca_certs = x509.load_pem_x509_certificates(ca_pem)
        except ValueError as e:
            raise PeerTLSError("--peer-ca %s is not a PEM certificate (%s)" % (ca_path, e)) from None
        self.identity = _common_name(cert)
        if not self.identity:
            raise PeerTLSError("--peer-cert %s has no subject CN (the node id)" % cert_path)
        try:
            self.options = ssl.CertificateOptions(
                privateKey=key,
                certificate=cert,
                verify=True,
                # The trust store takes only pyOpenSSL's certificates.
                caCerts=[crypto.X509.from_cryptography(ca) for ca in ca_certs],
                requireCertificate=True,
                raiseMinimumTo=ssl.TLSVersion.TLSv1_3,
                # No resumption: every connection shows its certificate.
                enableSessions=False,
                enableSessionTickets=False,
            )
            self.options.getContext()  # a key that does not match the certificate fails here
        except (SSL.Error, ValueError, TypeError) as e:
            raise PeerTLSError("--peer-key %s does not fit --peer-cert %s (%s)" % (key_path, cert_path, e)) from None
        if not any(_issued_by(cert, ca) for ca in ca_certs):
            raise PeerTLSError("--peer-cert %s is not signed by --peer-ca %s" % (cert_path, ca_path))

    def server_factory(self, wrapped, clock=None):
        """``wrapped`` behind TLS, the listening end; ``clock`` times the batching of small writes."""
        return TLSMemoryBIOFactory(self.options, False, wrapped, clock=clock)

    def client_factory(self, wrapped, clock=None):
        return TLSMemoryBIOFactory(self.options, True, wrapped, clock=clock)


def _issued_by(cert, ca) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:
        return False


def _common_name(cert) -> Optional[str]:
    """The one subject CN of a ``cryptography`` certificate, or None."""
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


def identity_of(x509) -> Optional[str]:
    """The node id a pyOpenSSL certificate (a peer's, after the handshake) names: its one subject CN, or None."""
    if x509 is None:
        return None
    try:
        return _common_name(x509.to_cryptography())
    except Exception:
        return None


def peer_identity(transport) -> Optional[str]:
    """The verified peer's node id on a TLS transport after its handshake; None without TLS."""
    if not is_tls(transport):
        return None
    try:
        return identity_of(transport.getPeerCertificate())
    except Exception:
        return None


def is_tls(transport) -> bool:
    """Is this connection a TLS one (kvd's peers wrap theirs with TLSMemoryBIOProtocol)?"""
    return isinstance(transport, TLSMemoryBIOProtocol)
