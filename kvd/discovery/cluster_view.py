# -*- test-case-name: tests.discovery.test_http -*-
"""
The cluster as one node sees it, for the cluster page (``GET /v1/cluster``).

A node knows its own numbers; a follower does not know the others' terms,
indexes or whether they are up.  So the node asks every other member for
``INFO raft`` on that member's client port (the Redis protocol: the one
port every member's address names), all at once, each bounded by a short
timeout, and puts the answers together:

    {"node": "127.0.0.1:7001", "cluster_id": "kvd", "leader": "127.0.0.1:7002",
     "leader_address": "127.0.0.1:7002", "term": 4, "commit": 120,
     "members": [{"id": ..., "client": ..., "voter": true, "up": true,
                  "role": "leader", "term": 4, "commit_index": 120,
                  "applied_index": 120, "last_index": 120, "lag": 0,
                  "self": false, "leader": true}, ...]}

A member that does not answer in time is ``"up": false`` with its numbers
unknown (null).  Concurrent requests share one round of questions and a
round is reused for ``CACHE_S``, so many open pages cost the cluster no
more than one.

It asks from the reactor, without a thread: a Twisted protocol feeds the
bytes to kvd.resp.client's reply reader and INFO parser, the same ones every
blocking client of kvd uses.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from typing import Dict, List, Optional

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from kvd.resp.client import INCOMPLETE, BadReply, ReplyError, ReplyReader, Simple, encode, parse_info

#: Seconds to wait for one member's INFO.
INFO_TIMEOUT_S = 1.0
#: Seconds a gathered view is reused.
CACHE_S = 0.4
#: Largest INFO reply we accept.
INFO_MAX_BYTES = 64 * 1024

_log = Logger()


class InfoError(Exception):
    pass


class _InfoProtocol(Protocol):
    """
    Sends ``INFO raft`` and reads one RESP bulk string with kvd.resp.client's
    reader (the package's one), fed from the reactor: nothing here blocks.
    """

    def __init__(self, auth=None):
        """``auth``: (user or None, password) to send ``AUTH`` with first, for a node that requires it."""
        self.done: defer.Deferred = defer.Deferred()
        self.reader = ReplyReader(max_bytes=INFO_MAX_BYTES)
        self.auth = auth
        self._auth_pending = bool(auth)

    def connectionMade(self):
        if self.auth:
            user, password = self.auth
            self.transport.write(encode(("AUTH", password) if user is None else ("AUTH", user, password)))
        self.transport.write(encode(("INFO", "raft")))

    def dataReceived(self, data):
        if self.done.called:
            return
        try:
            self.reader.feed(data)
            reply = self.reader.get()
            if self._auth_pending and reply is not INCOMPLETE:
                self._auth_pending = False
                if isinstance(reply, ReplyError):
                    self._finish(failure=InfoError("AUTH refused: %s" % reply.text))
                    return
                reply = self.reader.get()
        except BadReply as e:
            self._finish(failure=InfoError("unexpected answer: %s" % e))
            return
        if reply is INCOMPLETE:
            return
        if isinstance(reply, ReplyError):
            self._finish(failure=InfoError(reply.text))
        elif reply is None:
            self._finish(failure=InfoError("no answer"))
        elif not isinstance(reply, bytes) or isinstance(reply, Simple):
            self._finish(failure=InfoError("unexpected answer %r" % (reply,)))
        else:
            self._finish(result=reply)

    def _finish(self, result=None, failure=None):
        if not self.done.called:
            if failure is not None:
                self.done.errback(failure)
            else:
                self.done.callback(result)
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        if not self.done.called:
            self.done.errback(InfoError("connection closed before the answer"))


class _OneShot(Factory):
    noisy = False  # one connection per member per page refresh: not worth a log line

    def __init__(self, protocol):
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance


def fetch_info(reactor, host: str, port: int, timeout_s: float = INFO_TIMEOUT_S, auth=None, tls_ca=None) -> defer.Deferred:
    """
    INFO raft of the node at host:port as a dict (after ``AUTH`` with ``auth``, if given; over TLS verified
    against ``tls_ca``, a twisted.internet.ssl.Certificate, if given); fails after timeout_s.
    """
    protocol = _InfoProtocol(auth)
    endpoint = HostnameEndpoint(reactor, host.strip("[]"), port, timeout=timeout_s)
    if tls_ca is not None:
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(host.strip("[]"), trustRoot=tls_ca), endpoint)
    connecting = endpoint.connect(_OneShot(protocol))

    def connected(_):
        return protocol.done

    d = connecting.addCallback(connected)
    d.addTimeout(timeout_s, reactor, onTimeoutCancel=lambda *_: _abort(protocol))
    d.addCallback(parse_info)
    return d


def _abort(protocol: _InfoProtocol):
    if protocol.transport is not None:
        protocol.transport.abortConnection()
    raise InfoError("no answer in time")


class ClusterView:
    """Gathers and caches the cluster as seen from a node's ``view`` (kvd.node.NodeView, or a stand-in)."""

    def __init__(self, view, reactor, fetch=None, cache_s: float = CACHE_S, clock=time.monotonic, auth=None, tls_ca=None):
        self.view = view
        self.reactor = reactor
        self.fetch = fetch or (lambda host, port: fetch_info(reactor, host, port, auth=auth, tls_ca=tls_ca))
        self.cache_s = cache_s
        self.clock = clock
        self._last: Optional[dict] = None
        self._last_at = 0.0
        self._waiting: Optional[List[defer.Deferred]] = None

    def get(self) -> defer.Deferred:
        if self._last is not None and self.clock() - self._last_at < self.cache_s:
            return defer.succeed(self._last)
        d: defer.Deferred = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        self._gather().addBoth(self._deliver)
        return d

    def _deliver(self, result):
        waiting, self._waiting = self._waiting or [], None
        if isinstance(result, dict):
            self._last, self._last_at = result, self.clock()
        for d in waiting:
            if isinstance(result, dict):
                d.callback(result)
            else:
                d.errback(result)

    def _members(self) -> List[tuple]:
        view = self.view
        members, voters = view.members(), view.voters()
        out = []
        ids = list(members)
        if view.node_id not in ids:
            ids.append(view.node_id)
        for node_id in sorted(ids):
            address = view.address_of(node_id) if node_id in members or node_id == view.node_id else None
            out.append((node_id, address, node_id in voters, node_id in members))
        return out

    @defer.inlineCallbacks
    def _gather(self):
        me = self.view.node_id
        members = self._members()
        asks = {}
        for node_id, address, _, _ in members:
            if node_id != me and address is not None:
                asks[node_id] = defer.maybeDeferred(self.fetch, address.host, address.client_port)
        answers: Dict[str, Optional[dict]] = {}
        for node_id, d in asks.items():
            try:
                answers[node_id] = yield d
            except Exception:
                answers[node_id] = None
        return self.assemble(members, answers)

    def assemble(self, members, answers: Dict[str, Optional[dict]]) -> dict:
        view = self.view
        me = view.node_id
        own = view.info()
        leader = view.live_leader()
        progress = view.progress()
        rows = []
        for node_id, address, voter, member in members:
            info = own if node_id == me else answers.get(node_id)
            row = {
                "id": node_id,
                "client": address.client if address is not None else None,
                "voter": voter,
                "member": member,
                "self": node_id == me,
                "leader": node_id == leader,
                "up": info is not None,
                "role": None,
                "term": None,
                "commit_index": None,
                "applied_index": None,
                "last_index": None,
                "leader_id": None,
            }
            if info is not None:
                row.update(
                    role=info.get("raft_role") or None,
                    term=_int(info.get("raft_term")),
                    commit_index=_int(info.get("raft_commit_index")),
                    applied_index=_int(info.get("raft_applied_index")),
                    last_index=_int(info.get("raft_last_index")),
                    leader_id=info.get("raft_leader_id") or None,
                )
            if node_id in progress:
                row["replicating"] = bool(progress[node_id]["active"])
                row["match_index"] = progress[node_id]["match"]
            rows.append(row)
        commits = [r["commit_index"] for r in rows if r["commit_index"] is not None] + [view.leader_commit()]
        cluster_commit = max(commits)
        for row in rows:
            row["lag"] = None if row["applied_index"] is None else max(0, cluster_commit - row["applied_index"])
        leader_address = next((r["client"] for r in rows if r["id"] == leader), None)
        return {
            "node": me,
            "cluster_id": view.cluster_id,
            "role": own.get("raft_role"),
            "leader": leader,
            "leader_address": leader_address,
            "term": own.get("raft_term"),
            "commit": cluster_commit,
            "voters": sum(1 for r in rows if r["voter"]),
            "members": rows,
            "time": time.time(),
        }


def _int(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
