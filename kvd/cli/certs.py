# -*- test-case-name: tests.wire.test_tls -*-
"""
The cluster's certificates: a CA per cluster and one certificate per node,
made with ``cryptography`` (ECDSA P-256), private keys written 0600.

A node's identity is its certificate's subject common name (CN): the node id
(``127.0.0.1:7001``, ``node1:7001``).  Peers check it (kvd.wire.tls) against
the node id the Hello claims and the one they meant to dial.  The CA's key
mints identities: whoever holds it can be any node of the cluster.

Layout, under a directory (``$KVD_HOME/tls`` for mgmt.py, ``/certs`` in the
container)::

    ca.crt  ca.key                the cluster CA (ca.key 0600)
    nodes/<id>/peer.crt peer.key  a node's certificate and key (made by ensure_node)

Also a small command line, used by the container's entrypoint::

    python -m kvd.cli.certs node --dir /certs --node node1:7001   # prints the three paths

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import sys
import zlib
from typing import Optional, Tuple

#: How long generated certificates last.  Rotation is a restart with a new one.
CA_DAYS = 3650
NODE_DAYS = 825

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
PEER_CERT = "peer.crt"
PEER_KEY = "peer.key"

#: ``start`` prints this prefix before a join token.
TOKEN_PREFIX = "kvdjoin1."


class CertError(Exception):
    """A certificate cannot be made or read; one line for the user."""


def _crypto():
    # Imported on use: `mgmt.py --help` and the client role never pay for it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` 0600 whatever the umask, atomically (a crash leaves no half file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(cluster: str = "kvd") -> Tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, private key PEM)."""
    x509, hashes, serialization, ec, NameOID, _ = _crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ("kvd CA %s" % cluster)[:64])])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def make_node_cert(ca_cert_pem: bytes, ca_key_pem: bytes, node_id: str) -> Tuple[bytes, bytes]:
    """A certificate for ``node_id`` (its subject CN) signed by the CA: (certificate PEM, key PEM)."""
    x509, hashes, serialization, ec, NameOID, EKU = _crypto()
    if not node_id or len(node_id) > 64:
        raise CertError("a node id must be 1 to 64 characters to be a certificate's CN: %r" % node_id)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    # The host part as a SAN too, so that ordinary tools (openssl s_client) accept the certificate;
    # kvd itself reads only the CN.
    host = node_id.rpartition(":")[0].strip("[]") or node_id
    try:
        alt = [x509.IPAddress(ipaddress.ip_address(host))]
    except ValueError:
        alt = [x509.DNSName(host)] if re.fullmatch(r"[A-Za-z0-9.-]+", host) else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH, EKU.CLIENT_AUTH]), critical=False)
    )
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def node_dir_name(node_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", node_id.replace(":", "-"))


class CertDir:
    """One directory holding a cluster CA, and node certificates it signs."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    @property
    def ca_cert(self) -> str:
        return os.path.join(self.root, CA_CERT)

    @property
    def ca_key(self) -> str:
        return os.path.join(self.root, CA_KEY)

    def has_ca(self) -> bool:
        return os.path.exists(self.ca_cert) and os.path.exists(self.ca_key)

    def ensure_ca(self, cluster: str = "kvd") -> bool:
        """Make the CA unless it exists (under a lock: several processes may race); True if made now."""
        os.makedirs(self.root, exist_ok=True)
        try:
            os.chmod(self.root, 0o700)
        except OSError:
            pass
        with _Lock(os.path.join(self.root, ".lock")):
            if self.has_ca():
                return False
            cert, key = make_ca(cluster)
            write_private(self.ca_key, key)
            write_private(self.ca_cert, cert)
            return True

    def node_paths(self, node_id: str, directory: Optional[str] = None) -> Tuple[str, str]:
        where = directory or os.path.join(self.root, "nodes", node_dir_name(node_id))
        return os.path.join(where, PEER_CERT), os.path.join(where, PEER_KEY)

    def ensure_node(self, node_id: str, directory: Optional[str] = None, renew: bool = False) -> Tuple[str, str]:
        """
        (cert path, key path) of ``node_id``'s certificate in ``directory`` (default
        ``nodes/<id>`` here), made from this CA unless a valid one for that id is there.
        """
        cert_path, key_path = self.node_paths(node_id, directory)
        if not renew and os.path.exists(key_path) and certificate_fits(cert_path, self.ca_cert, node_id):
            return cert_path, key_path
        if not self.has_ca():
            raise CertError("no cluster CA in %s to make a certificate for %s" % (self.root, node_id))
        with open(self.ca_cert, "rb") as f:
            ca_cert = f.read()
        with open(self.ca_key, "rb") as f:
            ca_key = f.read()
        cert, key = make_node_cert(ca_cert, ca_key, node_id)
        write_private(key_path, key)
        write_private(cert_path, cert)
        return cert_path, key_path

    # ------------------------------------------------------------ join tokens
    def token(self) -> str:
        """The CA (certificate and key) as one line: whoever has it can make a member's certificate."""
        with open(self.ca_cert, "rb") as f:
            cert = f.read().decode("ascii")
        with open(self.ca_key, "rb") as f:
            key = f.read().decode("ascii")
        blob = zlib.compress(json.dumps({"ca": cert, "key": key}).encode("ascii"), 9)
        return TOKEN_PREFIX + base64.urlsafe_b64encode(blob).decode("ascii").rstrip("=")

    def install_token(self, token: str) -> None:
        """Write the CA a join token carries here (refusing a different CA already here)."""
        token = token.strip()
        if not token.startswith(TOKEN_PREFIX):
            raise CertError("not a kvd join token (it starts with %s)" % TOKEN_PREFIX)
        body = token[len(TOKEN_PREFIX):]
        try:
            data = json.loads(zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))
            cert, key = data["ca"].encode("ascii"), data["key"].encode("ascii")
        except Exception:
            raise CertError("the join token is damaged (copy it whole)") from None
        if self.has_ca():
            with open(self.ca_cert, "rb") as f:
                if f.read().strip() != cert.strip():
                    raise CertError("%s already holds another cluster's CA; use another KVD_HOME" % self.root)
            return
        os.makedirs(self.root, exist_ok=True)
        write_private(self.ca_key, key)
        write_private(self.ca_cert, cert)


def certificate_fits(cert_path: str, ca_path: str, node_id: str) -> bool:
    """Is ``cert_path`` a current certificate for ``node_id`` signed by the CA in ``ca_path``?"""
    x509 = _crypto()[0]
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(ca_path, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return False
    if cert.issuer != ca.subject or common_name(cert) != node_id:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    remaining = cert.not_valid_after_utc - _now()
    return remaining > datetime.timedelta(days=30)


def common_name(cert) -> Optional[str]:
    """The subject CN of a ``cryptography`` certificate, or None."""
    x509, _, _, _, NameOID, _ = _crypto()
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None


class _Lock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the lock


def main(argv=None) -> int:
    """``python -m kvd.cli.certs node --dir DIR --node ID [--out DIR]``: make what is missing, print the paths."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kvd.cli.certs", description="kvd's cluster CA and node certificates")
    sub = parser.add_subparsers(dest="what", required=True)
    node = sub.add_parser("node", help="make the CA (if missing) and this node's certificate (if missing or stale)")
    node.add_argument("--dir", required=True, help="the CA's directory (shared by the cluster's nodes)")
    node.add_argument("--node", required=True, help="the node id (its certificate's CN)")
    node.add_argument("--out", help="where the node's peer.crt and peer.key go (default DIR/nodes/<id>)")
    node.add_argument("--cluster", default="kvd", help="the cluster's name, for the CA's CN")
    args = parser.parse_args(argv)
    try:
        certs = CertDir(args.dir)
        certs.ensure_ca(args.cluster)
        cert, key = certs.ensure_node(args.node, args.out)
    except (CertError, OSError) as e:
        print("kvd: cannot make the peer certificate: %s" % e, file=sys.stderr)
        return 1
    print("--peer-cert %s --peer-key %s --peer-ca %s" % (cert, key, certs.ca_cert))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
