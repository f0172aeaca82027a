# -*- test-case-name: tests.discovery.test_http -*-
"""
The node's HTTP port (``twisted.web``): a status API for tools and load
balancers, Prometheus metrics and a live cluster page.

    GET /                   the cluster page (kvd/discovery/static/: plain HTML, CSS and JS, no build step)
    GET /v1/status/leader   JSON string: the live leader's client address, "" when there is none
    GET /v1/status/peers    JSON list: the voters' client addresses
    GET /v1/status/node     JSON object: this node's INFO raft numbers
    GET /v1/health          200 when this node knows a live leader and has applied up to the
                            cluster's commit index within HEALTH_MAX_LAG entries
                            (?max_lag=N to choose), 503 otherwise; JSON says why
    GET /v1/backup          this node's applied state as a backup file, to a request signed with
                            the cluster CA's key (kvd.discovery.backup)
    GET /v1/cluster         JSON: every member's role, term, indexes, lag and up/down (the page polls it)
    GET /metrics            Prometheus text format

Port rule: the HTTP port is the client port + 30000 (``HTTP_PORT_OFFSET``)
unless ``--http-port`` says otherwise; ``--http-port 0`` turns HTTP off.

The port is read-only: a method other than GET or HEAD answers 405, and a
request that announces a body (``Content-Length`` over 0, or chunked) answers
413; both close the connection without reading the body (``ReadOnlyChannel``),
so no client can make the node buffer or spool anything.

Everything here only reads the node, through its ``NodeView`` (kvd.node.view).  No request is logged (the page polls
every second); errors are.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, Tuple

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web import http, pages, resource, server

from kvd.discovery.cluster_view import ClusterView

#: HTTP port = client port + this, unless --http-port is given.
HTTP_PORT_OFFSET = 30000
#: /v1/health: how many entries a node's applied index may trail the cluster's commit index.
HEALTH_MAX_LAG = 1000
#: Seconds an idle HTTP connection stays open.
HTTP_IDLE_TIMEOUT_S = 30

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {
    b"": ("index.html", "text/html; charset=utf-8"),
    b"index.html": ("index.html", "text/html; charset=utf-8"),
    b"app.js": ("app.js", "text/javascript; charset=utf-8"),
    b"app.css": ("app.css", "text/css; charset=utf-8"),
}

_log = Logger()


# ================================================================ the views
def leader_view(view) -> str:
    return view.client_address(view.live_leader())


def peers_view(view) -> list:
    return [a for a in (view.client_address(v) for v in view.voters()) if a]


def health_view(view, max_lag: int = HEALTH_MAX_LAG) -> Tuple[int, dict]:
    """(HTTP status, body): 200 while this node can serve, 503 with the reason otherwise."""
    if not view.started:
        return 503, {"healthy": False, "reason": "starting"}
    leader = view.live_leader()
    cluster_commit = view.leader_commit()
    applied = view.applied_index
    lag = max(0, cluster_commit - applied)
    body = {
        "node": view.node_id,
        "role": view.role(),
        "term": view.term,
        "leader": leader,
        "leader_address": view.client_address(leader) or None,
        "applied_index": applied,
        "commit_index": cluster_commit,
        "lag": lag,
        "max_lag": max_lag,
    }
    if view.failure:
        reason = "fail-stopped: %s" % view.failure
    elif view.stopping:
        reason = "stopping"
    elif leader is None:
        reason = "no leader: this node cannot reach a leader (election in progress, or no quorum)"
    elif lag > max_lag:
        reason = "behind: applied %d, the cluster has committed %d" % (applied, cluster_commit)
    else:
        reason = None
    body["healthy"] = reason is None
    if reason:
        body["reason"] = reason
    return (200 if reason is None else 503), body


# ================================================================ resources
def _no_cache(request):
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")


class JSONResource(resource.Resource):
    """GET (and HEAD) answers ``view(request)``: (status, object), or a Deferred of it."""

    isLeaf = True

    def __init__(self, view: Callable):
        super().__init__()
        self.view = view

    def render_GET(self, request):
        d = defer.maybeDeferred(self.view, request)
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def write(result):
            if finished[0]:
                return
            status, body = result
            data = json.dumps(body, sort_keys=True).encode() + b"\n"
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            _no_cache(request)
            request.setHeader(b"content-length", b"%d" % len(data))
            if request.method != b"HEAD":
                request.write(data)
            request.finish()

        def failed(failure):
            _log.failure("HTTP {path} failed", failure, path=request.path)
            if not finished[0]:
                write((500, {"error": "internal error: %s" % failure.getErrorMessage()}))

        d.addCallback(write).addErrback(failed)
        return server.NOT_DONE_YET


class MetricsResource(resource.Resource):
    isLeaf = True

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        _no_cache(request)
        if self.metrics is None:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"metrics are off: prometheus_client is not installed\n"
        request.setHeader(b"content-type", self.metrics.content_type.encode())
        return self.metrics.render()


class StaticResource(resource.Resource):
    """The page's few files, read once; nothing else on disk is reachable."""

    isLeaf = True

    def __init__(self, name: str, content_type: str):
        super().__init__()
        with open(os.path.join(STATIC_DIR, name), "rb") as f:
            self.data = f.read()
        self.content_type = content_type.encode()

    def render_GET(self, request):
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return self.data


class _Tree(resource.Resource):
    """A node of the URL tree; unknown paths are 404."""

    def getChild(self, path, request):
        return pages.notFound()


def make_root(view, metrics=None, reactor=None, cluster_view: Optional[ClusterView] = None,
              info_auth=None, info_tls_ca=None, backup: Optional[resource.Resource] = None) -> resource.Resource:
    """The URL tree over a node's ``view`` (kvd.node.NodeView); ``info_auth``: (user, password) for the
    other members' client ports, when they require a password; ``info_tls_ca``: the CA of their TLS."""
    if cluster_view is None:
        if reactor is None:
            from twisted.internet import reactor
        cluster_view = ClusterView(view, reactor, auth=info_auth, tls_ca=info_tls_ca)

    def health(request):
        max_lag = HEALTH_MAX_LAG
        raw = request.args.get(b"max_lag", [None])[0]
        if raw is not None:
            try:
                max_lag = max(0, int(raw))
            except ValueError:
                return 400, {"error": "max_lag must be a whole number"}
        return health_view(view, max_lag)

    def node_info(request):
        if not view.started:
            return 503, {"error": "starting"}
        return 200, view.info()

    def cluster(request):
        if not view.started:
            return 503, {"error": "starting"}
        return cluster_view.get().addCallback(lambda view: (200, view))

    root = _Tree()
    for name, (filename, content_type) in STATIC_FILES.items():
        root.putChild(name, StaticResource(filename, content_type))
    root.putChild(b"metrics", MetricsResource(metrics))
    v1 = _Tree()
    root.putChild(b"v1", v1)
    status = _Tree()
    v1.putChild(b"status", status)
    status.putChild(b"leader", JSONResource(lambda request: (200, leader_view(view))))
    status.putChild(b"peers", JSONResource(lambda request: (200, peers_view(view))))
    status.putChild(b"node", JSONResource(node_info))
    v1.putChild(b"health", JSONResource(health))
    v1.putChild(b"cluster", JSONResource(cluster))
    if backup is not None:
        v1.putChild(b"backup", backup)
    return root


_REFUSALS = {
    405: b"Method Not Allowed", 413: b"Content Too Large",
}


class ReadOnlyChannel(http.HTTPChannel):
    """
    An HTTPChannel that refuses, as soon as the headers are in and before any
    of it is read, a request with a body (413) or a method other than GET and
    HEAD (405), and then closes the connection.  Twisted would otherwise
    buffer the body in memory or spool it to a temporary file, without limit.
    """

    def allHeadersReceived(self):
        method = getattr(self, "_command", b"")
        if method not in (b"GET", b"HEAD"):
            status = 405
        elif self.length != 0:  # a Content-Length over 0, or None: chunked
            status = 413
        else:
            return super().allHeadersReceived()
        reason = _REFUSALS[status]
        body = b"%d %s: this port is read-only and takes no request body\n" % (status, reason)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Allow: GET, HEAD\r\nConnection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        # Read nothing more: the body (raw mode) and anything after it are dropped.
        self.length = None
        self.rawDataReceived = self.lineReceived = lambda *args: None
        self.dataReceived = lambda *args: None
        self.loseConnection()


class QuietSite(server.Site):
    """A Site that logs no request (the page polls every second) and takes no request body."""

    noisy = False
    protocol = ReadOnlyChannel

    def log(self, request):
        pass


def make_site(view, metrics=None, reactor=None, info_auth=None, info_tls_ca=None, backup=None) -> QuietSite:
    root = make_root(view, metrics, reactor, info_auth=info_auth, info_tls_ca=info_tls_ca, backup=backup)
    site = QuietSite(root, timeout=HTTP_IDLE_TIMEOUT_S, reactor=reactor)
    site.displayTracebacks = False
    return site


# ================================================================ listening
class OptionalPort(service.Service):
    """
    Listens on one port while running.  A port the operator asked for
    (``required``) must open or the node does not start; a port that only
    follows from the client port by the rule is optional: when it cannot open
    the node runs without it and says so in its log.
    """

    def __init__(self, what: str, listen: Callable[[], object], port: int, option: str, required: bool):
        self.what = what
        self.listen = listen
        self.port_number = port
        self.option = option
        self.required = required
        self.port = None
        self._tried = False

    def privilegedStartService(self):
        # Bind early (before twistd drops privileges), as strports services do.
        self._open()
        super().privilegedStartService()

    def startService(self):
        self._open()
        super().startService()

    def _open(self):
        if self._tried:
            return
        self._tried = True
        try:
            self.port = self.listen()
            _log.info("{what} listening on port {port}", what=self.what, port=self.port_number)
        except CannotListenError as e:
            if self.required:
                raise
            _log.warn(
                "{what} is off: cannot listen on port {port} ({error}); pass {option} to choose another port, or {option} 0",
                what=self.what,
                port=self.port_number,
                error=e.socketError if e.socketError else e,
                option=self.option,
            )

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        self._tried = False
        if port is not None:
            return port.stopListening()
