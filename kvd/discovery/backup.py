# -*- test-case-name: tests.discovery.test_backup -*-
"""
``GET /v1/backup`` on the node's HTTP port: this node's applied state as a
backup file (kvd.store.backup), streamed from one LMDB read transaction.

Consistency: the file is the state on this node's disk at one applied index
(``NodeService.open_snapshot_stream``, the very read a joining follower is
streamed): every entry up to that index and nothing after, a state every
replica passes through, named with its index and term in the header.  That
index is a linearizable point: the node first serves a ReadIndex read (so it
has applied every write acknowledged before the request, on a follower too)
and then takes a snapshot, whose compaction flushes the applied state to disk
(``NodeService.backup_point``); the stream then reads at least that index.

Bounded memory: a pull producer writes one piece of at most ``PIECE_BYTES``
at a time, when the connection has sent the last; one backup runs at a time
per node (each holds a read transaction, which keeps LMDB from reusing the
pages it reads).

Who may pull it: the HTTP port is open to anyone who reaches it, so the
request must be signed with the cluster CA's private key (what mgmt.py keeps
in KVD_HOME/tls/ca.key; the join token is the same key), ECDSA P-256 over
``signed_message(node id, unix time, nonce)``, in an ``Authorization:
KVD-CA-Signature ts=..,nonce=..,sig=..`` header.  The node checks it with
the CA certificate it already trusts for its peers (``--peer-ca``), refuses
a time more than ``AUTH_WINDOW_S`` from its own clock and a nonce it has seen
within that window.  A node without peer TLS (``--insecure-peers``) has no
CA and refuses every backup.  The body is not encrypted: anyone who can
watch the network path sees the data (as they see the client port's).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import base64
import re
from typing import Callable, Dict, Optional, Tuple

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer
from twisted.internet.interfaces import IPullProducer

from kvd.store.backup import AUTH_SCHEME, AUTH_WINDOW_S, BackupWriter, make_header, signed_message

#: Bytes of the file written to the connection at a time.
PIECE_BYTES = 256 * 1024
#: Nonces remembered (each for AUTH_WINDOW_S); past this many the oldest go.
MAX_NONCES = 10000

_AUTH = re.compile(r"^%s ts=(\d{1,12}),nonce=([0-9a-f]{16,64}),sig=([A-Za-z0-9_=-]{16,200})$" % re.escape(AUTH_SCHEME))

_log = Logger()


class CaVerifier:
    """Checks a request's signature against the cluster CA certificate (PEM bytes)."""

    def __init__(self, ca_pem: bytes, node_id: str, now: Callable[[], float]) -> None:
        from cryptography import x509

        self.public_key = x509.load_pem_x509_certificate(ca_pem).public_key()
        self.node_id = node_id
        self.now = now
        self._nonces: Dict[str, float] = {}

    def check(self, header: Optional[bytes]) -> Optional[str]:
        """None if ``header`` (the Authorization value) is a valid, fresh signature; else why not."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        if not header:
            return "a backup must be signed with the cluster CA (Authorization: %s ...; mgmt.py does it)" % AUTH_SCHEME
        match = _AUTH.match(header.decode("ascii", "replace"))
        if match is None:
            return "malformed Authorization header"
        ts, nonce, sig = int(match.group(1)), match.group(2), match.group(3)
        now = self.now()
        if abs(now - ts) > AUTH_WINDOW_S:
            return "the signed time is %ds away from this node's clock (at most %ds)" % (abs(now - ts), AUTH_WINDOW_S)
        try:
            signature = base64.urlsafe_b64decode(sig.encode("ascii"))
            self.public_key.verify(signature, signed_message(self.node_id, ts, nonce), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, TypeError):
            return "the signature is not the cluster CA's (or was made for another node)"
        self._forget_old(now)
        if nonce in self._nonces:
            return "this signed request was used before"
        self._nonces[nonce] = now
        return None

    def _forget_old(self, now: float) -> None:
        for nonce, seen in list(self._nonces.items()):
            if now - seen > 2 * AUTH_WINDOW_S or len(self._nonces) > MAX_NONCES:
                del self._nonces[nonce]


@implementer(IPullProducer)
class _Pump:
    """Writes a BackupWriter's pieces to a request, one each time the connection asks."""

    def __init__(self, request, writer: BackupWriter, done: Callable[[], None]) -> None:
        self.request = request
        self.writer = writer
        self.done = done
        self.finished = False

    def resumeProducing(self) -> None:
        if self.finished:
            return
        try:
            piece = self.writer.read(PIECE_BYTES)
        except Exception as e:  # a corrupt record, a storage error: the client sees a cut file and refuses it
            _log.error("backup stream failed: {error}", error="%s: %s" % (type(e).__name__, e))
            self._end()
            self.request.unregisterProducer()
            self.request.channel.transport.abortConnection()
            return
        if piece:
            self.request.write(piece)
            return
        self._end()
        self.request.unregisterProducer()
        self.request.finish()

    def stopProducing(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self.finished:
            self.finished = True
            self.writer.close()
            self.done()


class BackupResource(resource.Resource):
    """
    ``source(min_index) -> (Snapshot, StateStream)``: the node's consistent
    read (``NodeService.open_snapshot_stream``); ``verifier``: a CaVerifier,
    or None when the node has no CA (every request refused).
    """

    isLeaf = True

    def __init__(self, view, point: Callable[[], object], source: Callable[[int], Tuple[object, object]],
                 verifier: Optional[CaVerifier], wall_ms: Callable[[], int]) -> None:
        super().__init__()
        self.view = view
        self.point = point
        self.source = source
        self.verifier = verifier
        self.wall_ms = wall_ms
        self.running = False

    def render_GET(self, request):
        request.setHeader(b"cache-control", b"no-store")
        if self.verifier is None:
            return self._refuse(request, 403, "this node has no cluster CA (--insecure-peers): it serves no backup")
        why = self.verifier.check(request.getHeader(b"authorization"))
        if why is not None:
            _log.warn("refused a backup request from {peer}: {why}", peer=str(request.getClientAddress()), why=why)
            return self._refuse(request, 401, why)
        if not self.view.started or self.view.stopping:
            return self._refuse(request, 503, "this node is not serving (starting, stopping or fail-stopped)")
        if self.running:
            return self._refuse(request, 503, "a backup of this node is already running; try again when it is done")
        self.running = True
        gone = []  # the client went away while the point was being taken
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        point = self.point()
        point.addCallback(lambda index: self._start(request, index, gone))
        point.addErrback(lambda failure: self._failed(request, failure, gone))
        return server.NOT_DONE_YET

    def _failed(self, request, failure, gone) -> None:
        self.running = False
        if not gone and not request.finished:
            request.write(self._refuse(request, 503, "cannot take a consistent point now: %s" % failure.getErrorMessage()))
            request.finish()

    def _start(self, request, index: int, gone) -> None:
        if gone or request.finished:
            self.running = False
            return
        try:
            snapshot, stream = self.source(index)
        except Exception as e:
            self._failed(request, Failure(e), gone)
            return
        header = make_header(self.view.cluster_id, self.view.node_id, snapshot, stream.key_count, self.wall_ms())
        writer = BackupWriter(header, stream)
        _log.info("backup of {node} at index {index} (term {term}) started", node=self.view.node_id,
                  index=snapshot.index, term=snapshot.term)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"x-kvd-backup-index", str(snapshot.index).encode())
        request.registerProducer(_Pump(request, writer, self._done), False)

    def render_HEAD(self, request):
        request.setHeader(b"allow", b"GET")
        return self._refuse(request, 405, "a backup is a GET")

    def _done(self) -> None:
        self.running = False

    @staticmethod
    def _refuse(request, status: int, why: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (why + "\n").encode("utf-8")
