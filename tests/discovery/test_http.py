"""
The HTTP resources of kvd.discovery.http and the cluster view of kvd.discovery.cluster_view,
without sockets: DummyRequest in, status, headers and JSON out.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from kvd.discovery.http import make_root
from kvd.discovery.cluster_view import ClusterView, InfoError, _InfoProtocol
from kvd.discovery.metrics import NodeMetrics
from tests.discovery.fakes import FakeNode


class Fetcher:
    """Answers INFO raft for the other members from a dict; None means the member is down."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []
        self.pending = None  # set to a list to hold answers back

    def __call__(self, host, port):
        self.calls.append((host, port))
        info = self.answers.get("%s:%d" % (host, port))
        d = defer.Deferred()
        if self.pending is not None:
            self.pending.append((d, info))
        else:
            self._fire(d, info)
        return d

    @staticmethod
    def _fire(d, info):
        if info is None:
            d.errback(InfoError("connection refused"))
        else:
            d.callback(info)

    def release(self):
        pending, self.pending = self.pending, None
        for d, info in pending:
            self._fire(d, info)


def info_of(role, term=3, commit=10, applied=10, last=12, leader="127.0.0.1:7002"):
    return {"raft_role": role, "raft_term": term, "raft_commit_index": commit, "raft_applied_index": applied, "raft_last_index": last, "raft_leader_id": leader}


@pytest.fixture
def node():
    n = FakeNode()
    n.set_leader("127.0.0.1:7002")
    return n


@pytest.fixture
def fetcher():
    return Fetcher({"127.0.0.1:7002": info_of("leader", commit=12, applied=12), "127.0.0.1:7003": None, "10.0.0.4:7004": info_of("learner", applied=4)})


@pytest.fixture
def root(node, fetcher):
    metrics = NodeMetrics(process=False).attach(node.view)
    return make_root(node.view, metrics, cluster_view=ClusterView(node.view, reactor=None, fetch=fetcher, cache_s=0))


def get(root, path, args=None):
    segments = [s.encode() for s in path.lstrip("/").split("/")]
    request = DummyRequest(segments)
    request.args = args or {}
    child = getChildForRequest(root, request)
    result = child.render(request)
    if isinstance(result, bytes):
        request.write(result)
        request.finish()
    assert request.finished, "%s did not finish" % path
    request.body = b"".join(request.written)
    request.status = request.responseCode or 200
    return request


def header(request, name):
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def as_json(request):
    assert header(request, "content-type") == "application/json"
    assert header(request, "cache-control") == "no-store"
    return json.loads(request.body)


def test_leader_is_the_live_leaders_client_address(root, node):
    assert as_json(get(root, "/v1/status/leader")) == "127.0.0.1:7002"
    node.leader = None
    assert as_json(get(root, "/v1/status/leader")) == ""


def test_peers_are_the_voters(root, node):
    assert as_json(get(root, "/v1/status/peers")) == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]


def test_health_is_200_with_a_leader_and_caught_up(root, node):
    r = get(root, "/v1/health")
    body = as_json(r)
    assert r.status == 200 and body["healthy"] and body["leader"] == "127.0.0.1:7002" and body["lag"] == 0


def test_health_is_503_without_a_leader(root, node):
    node.leader = None
    r = get(root, "/v1/health")
    assert r.status == 503 and "no leader" in as_json(r)["reason"]


def test_health_is_503_when_behind_by_more_than_the_bound(root, node):
    node.cluster_commit = node.core.applied + 1001
    r = get(root, "/v1/health")
    assert r.status == 503 and as_json(r)["reason"].startswith("behind") and as_json(r)["lag"] == 1001
    node.cluster_commit = node.core.applied + 1000
    assert get(root, "/v1/health").status == 200
    assert get(root, "/v1/health", {b"max_lag": [b"5"]}).status == 503
    assert get(root, "/v1/health", {b"max_lag": [b"many"]}).status == 400


def test_health_is_503_while_stopping_or_starting(root, node):
    node.stopping = True
    assert get(root, "/v1/health").status == 503
    node.stopping = False
    node.core = None
    r = get(root, "/v1/health")
    assert r.status == 503 and as_json(r)["reason"] == "starting"


def test_health_is_503_the_moment_storage_has_failed_and_says_why(root, node):
    assert get(root, "/v1/health").status == 200
    node.failure = OSError(28, "No space left on device")
    node.failure_reason = "storage failed in data dir /d: OSError: [Errno 28] No space left on device"
    r = get(root, "/v1/health")
    assert r.status == 503 and not as_json(r)["healthy"]
    assert as_json(r)["reason"] == "fail-stopped: " + node.failure_reason


def test_head_has_no_body(root):
    request = DummyRequest([b"v1", b"health"])
    request.method = b"HEAD"
    child = getChildForRequest(root, request)
    child.render(request)
    assert request.finished and b"".join(request.written) == b""


def test_the_page_and_its_files(root):
    page = get(root, "/")
    assert header(page, "content-type").startswith("text/html")
    assert b'<script src="/app.js"' in page.body and b"viewport" in page.body
    assert "default-src 'self'" in header(page, "content-security-policy")
    assert header(get(root, "/app.js"), "content-type").startswith("text/javascript")
    assert b"/v1/cluster" in get(root, "/app.js").body
    assert header(get(root, "/app.css"), "content-type").startswith("text/css")
    assert get(root, "/etc/passwd").status == 404
    assert get(root, "/static/../kvd/dns.py").status == 404


def test_cluster_view_puts_every_members_numbers_together(root, fetcher):
    view = as_json(get(root, "/v1/cluster"))
    assert view["leader"] == "127.0.0.1:7002" and view["leader_address"] == "127.0.0.1:7002"
    rows = {m["id"]: m for m in view["members"]}
    assert rows["127.0.0.1:7001"]["self"] and rows["127.0.0.1:7001"]["up"] and rows["127.0.0.1:7001"]["role"] == "follower"
    assert rows["127.0.0.1:7002"]["leader"] and rows["127.0.0.1:7002"]["role"] == "leader"
    assert rows["127.0.0.1:7003"]["up"] is False and rows["127.0.0.1:7003"]["term"] is None and rows["127.0.0.1:7003"]["lag"] is None
    assert rows["10.0.0.4:7004"]["voter"] is False and rows["10.0.0.4:7004"]["lag"] == 8
    assert view["commit"] == 12 and rows["127.0.0.1:7001"]["lag"] == 2
    assert sorted(fetcher.calls) == [("10.0.0.4", 7004), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]  # never itself


def test_cluster_view_on_the_leader_adds_replication_progress(node, fetcher):
    node.set_leader("127.0.0.1:7001")
    node.core.progress = {"127.0.0.1:7002": {"match": 12, "active": True}, "127.0.0.1:7003": {"match": 3, "active": False}}
    view = ClusterView(node.view, reactor=None, fetch=fetcher, cache_s=0)
    result = []
    view.get().addCallback(result.append)
    rows = {m["id"]: m for m in result[0]["members"]}
    assert rows["127.0.0.1:7003"]["replicating"] is False and rows["127.0.0.1:7003"]["match_index"] == 3
    assert rows["127.0.0.1:7001"]["leader"]


def test_concurrent_page_requests_share_one_round_and_a_round_is_reused(node, fetcher):
    now = [100.0]
    view = ClusterView(node.view, reactor=None, fetch=fetcher, cache_s=0.5, clock=lambda: now[0])
    fetcher.pending = []
    first, second = [], []
    view.get().addCallback(first.append)
    view.get().addCallback(second.append)
    assert len(fetcher.calls) == 3 and not first
    fetcher.release()
    assert first and first == second
    view.get()
    assert len(fetcher.calls) == 3  # cached
    now[0] += 1
    view.get()
    assert len(fetcher.calls) == 6


def answer_to(data: bytes):
    """What an _InfoProtocol makes of ``data`` from the node: the INFO text, None while incomplete, or the InfoError."""
    protocol = _InfoProtocol()
    protocol.makeConnection(StringTransport())
    got = []
    protocol.done.addBoth(got.append)
    protocol.dataReceived(data)
    if not got:
        return None
    if isinstance(got[0], Failure):
        return got[0].value
    return got[0]


def test_resp_bulk_parsing():
    """The answer must be one bulk string (kvd.resp.client's reader; its INFO parser: tests/resp/test_client.py)."""
    assert answer_to(b"$5\r\nhel") is None
    assert answer_to(b"$5\r\nhello\r\n") == b"hello"
    assert answer_to(b"$0\r\n\r\n") == b""
    for bad in (b"-ERR nope\r\n", b"+OK\r\n", b"$x\r\n", b"$-1\r\n", b"$9999999\r\n" + b"x" * 70000):
        assert isinstance(answer_to(bad), InfoError), bad[:20]


def test_the_info_protocol_asks_and_reads_one_answer():
    protocol = _InfoProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b"*2\r\n$4\r\nINFO\r\n$4\r\nraft\r\n"
    got = []
    protocol.done.addCallback(got.append)
    payload = b"raft_role:follower\r\n"
    protocol.dataReceived(b"$%d\r\n" % len(payload))
    protocol.dataReceived(payload + b"\r\n")
    assert got == [payload] and transport.disconnecting
    broken = _InfoProtocol()
    broken.makeConnection(StringTransport())
    failures = []
    broken.done.addErrback(failures.append)
    broken.connectionLost(None)
    assert failures and failures[0].check(InfoError)


def test_the_info_protocol_authenticates_first_when_given_a_password():
    """A cluster whose client ports need a password: the page's INFO raft is preceded by AUTH."""
    protocol = _InfoProtocol(auth=(None, "pw"))
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$4\r\nINFO\r\n$4\r\nraft\r\n"
    got = []
    protocol.done.addCallback(got.append)
    protocol.dataReceived(b"+O")
    protocol.dataReceived(b"K\r\n$3\r\nab")
    protocol.dataReceived(b"c\r\n")
    assert got == [b"abc"]
    refused = _InfoProtocol(auth=("u", "bad"))
    refused.makeConnection(StringTransport())
    failures = []
    refused.done.addErrback(failures.append)
    refused.dataReceived(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    assert "AUTH refused: WRONGPASS" in str(failures[0].value)


def test_the_node_gives_the_page_its_own_password(tmp_path):
    from kvd.resp.auth import Users

    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    assert Users.load(str(secret), None, environ={}).internal_credentials == (None, "pw")
    assert Users.load(None, None, environ={}).internal_credentials is None
    assert "pw" not in repr(Users.load(str(secret), None, environ={}))


# ------------------------------------------------- read-only: no request bodies
def _channel():
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock

    from kvd.discovery.http import make_site

    n = FakeNode()
    n.set_leader("127.0.0.1:7002")
    clock = Clock()
    site = make_site(n.view, None, reactor=clock)
    site.reactor = clock
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


@pytest.mark.parametrize("head,status", [
    (b"POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n", b"405"),
    (b"PUT /v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"405"),
    (b"DELETE /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n", b"413"),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", b"413"),
])
def test_request_bodies_are_refused_without_being_read(head, status):
    """The HTTP port is read-only: a body (or a method that sends one) is refused after the headers, and the
    body that follows is neither buffered nor spooled to disk."""
    channel, transport = _channel()
    channel.dataReceived(head)
    assert transport.value().startswith(b"HTTP/1.1 " + status + b" ")
    assert transport.disconnecting
    assert channel.requests == [] or not channel.requests[-1].content
    for _ in range(100):
        channel.dataReceived(b"x" * 65536)  # 6.5 MB of body: dropped as it arrives
    request = channel.requests[-1] if channel.requests else None
    content = getattr(request, "content", None)
    assert content is None or len(content.getvalue() if hasattr(content, "getvalue") else b"") == 0
    assert transport.value().count(b"HTTP/1.1") == 1


def test_a_plain_get_still_works_on_the_read_only_channel():
    channel, transport = _channel()
    channel.dataReceived(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    assert not transport.disconnecting
