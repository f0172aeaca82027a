"""
/v1/backup (kvd.discovery.backup), without sockets: only a request signed
with the cluster CA's key for this node, fresh and never seen before, gets
the state; the file comes in bounded pieces after the consistent point, and
reads back as a checked backup; one backup at a time; a stream that fails
midway cuts the connection (the client sees a cut file, and refuses it).
"""

import base64
import io
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.web.test.requesthelper import DummyRequest

from kvd.cli.certs import make_ca
from kvd.discovery.backup import PIECE_BYTES, BackupResource, CaVerifier
from kvd.raft.messages import Configuration, Snapshot
from kvd.store import checksum
from kvd.store.backup import AUTH_SCHEME, BackupReader, signed_message

NOW = 1_800_000_000


class FakeStream:
    """A state stream of one state record and ``n`` pieces of records (sealed values, as the store's)."""

    def __init__(self, records=2000, fail_after=None):
        record = lambda kind, key, value: bytes([kind]) + len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value
        body = record(1, b"", checksum.seal(b"s" * 32))
        body += b"".join(record(3, b"k%05d" % i, checksum.seal(b"v" * 500)) for i in range(records))
        self.data = io.BytesIO(body)
        self.count = records + 1
        self.crc = 0
        self.key_count = records
        self.closed = False
        self.reads = []
        self.fail_after = fail_after

    def read(self, n):
        if self.fail_after is not None and len(self.reads) >= self.fail_after:
            raise OSError("disk gone")
        piece = self.data.read(n)
        self.reads.append(len(piece))
        self.crc = checksum.crc_update(self.crc, piece)
        return piece

    def close(self):
        self.closed = True


@pytest.fixture
def ca():
    cert, key = make_ca("test")
    return cert, serialization.load_pem_private_key(key, password=None)


def sign(key, node="127.0.0.1:7001", ts=NOW, nonce="ab" * 16):
    sig = key.sign(signed_message(node, ts, nonce), ec.ECDSA(hashes.SHA256()))
    return ("%s ts=%d,nonce=%s,sig=%s" % (AUTH_SCHEME, ts, nonce, base64.urlsafe_b64encode(sig).decode())).encode()


def make(ca, stream=None, point=None, verifier=True):
    view = SimpleNamespace(started=True, stopping=False, node_id="127.0.0.1:7001", cluster_id="kvd-x")
    stream = stream or FakeStream()
    asked = []

    def source(index):
        asked.append(index)
        return Snapshot(42, 7, Configuration.make(voters=["127.0.0.1:7001"]), b""), stream

    check = CaVerifier(ca[0], view.node_id, lambda: NOW) if verifier else None
    resource = BackupResource(view, point or (lambda: defer.succeed(42)), source, check, lambda: 5)
    return resource, stream, asked


def get(resource, authorization=None):
    request = DummyRequest([b""])
    request.channel = SimpleNamespace(transport=SimpleNamespace(aborted=False, abortConnection=lambda: setattr(request, "aborted", True)))
    request.aborted = False
    if authorization is not None:
        request.requestHeaders.addRawHeader(b"authorization", authorization)
    result = resource.render_GET(request)
    if isinstance(result, bytes):
        request.write(result)
    return request


def test_a_signed_request_gets_a_checked_backup_in_bounded_pieces(ca):
    resource, stream, asked = make(ca)
    request = get(resource, sign(ca[1]))
    assert request.finished and not request.aborted and request.responseCode in (None, 200)
    assert asked == [42]  # the stream is read from the consistent point's index on
    assert max(stream.reads) <= PIECE_BYTES and len(stream.reads) > 3
    assert max(len(w) for w in request.written) <= PIECE_BYTES
    reader = BackupReader(io.BytesIO(b"".join(request.written)), "b")
    assert sum(len(p) for p in reader.body()) > 2000 * 500
    assert reader.header["index"] == 42 and reader.header["term"] == 7 and reader.header["cluster_id"] == "kvd-x"
    assert reader.count == 2001 and stream.closed and not resource.running


@pytest.mark.parametrize("case", ["none", "garbled", "other key", "other node", "stale", "future"])
def test_a_request_not_signed_by_the_cluster_ca_for_this_node_now_is_refused(ca, case):
    resource, stream, asked = make(ca)
    other = ec.generate_private_key(ec.SECP256R1())
    header = {
        "none": None,
        "garbled": b"Basic dXNlcjpwYXNz",
        "other key": sign(other),
        "other node": sign(ca[1], node="127.0.0.1:7002"),
        "stale": sign(ca[1], ts=NOW - 301),
        "future": sign(ca[1], ts=NOW + 301),
    }[case]
    request = get(resource, header)
    assert request.responseCode == 401
    assert asked == [] and stream.reads == []


def test_a_signed_request_is_taken_once(ca):
    resource, _, _ = make(ca)
    header = sign(ca[1])
    assert get(resource, header).responseCode in (None, 200)
    again = get(resource, header)
    assert again.responseCode == 401 and b"used before" in b"".join(again.written)


def test_a_node_without_a_cluster_ca_serves_no_backup(ca):
    resource, stream, asked = make(ca, verifier=False)
    request = get(resource, sign(ca[1]))
    assert request.responseCode == 403 and asked == []


def test_one_backup_at_a_time_and_a_failed_point_is_a_503(ca):
    waiting = defer.Deferred()
    resource, stream, asked = make(ca, point=lambda: waiting)
    first = get(resource, sign(ca[1], nonce="01" * 16))
    assert not first.finished and resource.running
    second = get(resource, sign(ca[1], nonce="02" * 16))
    assert second.responseCode == 503 and b"already running" in b"".join(second.written)
    waiting.errback(RuntimeError("no leader"))
    assert first.responseCode == 503 and b"no leader" in b"".join(first.written) and not resource.running


def test_a_stream_that_fails_midway_cuts_the_connection(ca):
    resource, stream, _ = make(ca, stream=FakeStream(fail_after=2))
    request = get(resource, sign(ca[1]))
    assert request.aborted and not request.finished and stream.closed and not resource.running
    with pytest.raises(Exception, match="truncated"):
        for _ in BackupReader(io.BytesIO(b"".join(request.written)), "b").body():
            pass
