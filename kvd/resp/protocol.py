# -*- test-case-name: tests.resp.test_protocol -*-
"""
The Redis client port: RESP2 and inline requests in, replies out, in order.

``RespFactory(executor)`` builds one ``RespProtocol`` per connection.  Each
parsed request becomes, in arrival order, a reply slot; local commands (see
kvd.resp.connection) and errors fill theirs at once, everything else goes to

    executor.execute(request, connection) -> reply value, or a Deferred firing with one

where ``request`` is a ``Write``, ``Read`` or non-local ``Admin`` from
kvd.resp.commands.  Replies are written as soon as every earlier slot is
filled, so pipelined requests get their answers in order even when their
Deferreds fire out of order.  A ``RespError`` or a ``kvd.errors.KvdError``
(raised or as a failure) is sent as ``-PREFIX message``; any other exception is logged and sent as
``-ERR internal error``: the connection survives executor bugs.

Backpressure, so that no client can grow the node's memory without bound:

* at most ``max_inflight`` slots per connection; when that many are waiting
  the protocol stops reading from the socket (``transport.pauseProducing``)
  and resumes when they drain to half, keeping already-parsed requests in a
  backlog no bigger than one read;
* the protocol is registered as a streaming producer of the transport's
  output: when a client does not read its replies, the transport pauses us,
  and we stop dispatching requests and stop reading new ones until it
  resumes us;
* output is bounded by ``output_limit`` bytes (Redis's
  client-output-buffer-limit): a reply bigger than that is not built and
  answers an error instead (an MGET of one 1 MiB key 400 times), and a client
  that lets more than that pile up unread (replies of requests already
  running when the transport paused us) is disconnected and logged;
* at most ``maxclients`` connections at once: one more is answered Redis's
  ``-ERR max number of clients reached`` and closed;
* all connections together hold at most ``maxmemory_clients`` bytes of
  partial requests and unread replies (Redis 7's maxmemory-clients): a
  connection that grows the total past it, holding more than
  ``EVICT_MIN_BYTES`` itself, is disconnected and logged;
* a wrong password is logged (once per connection), and after
  ``MAX_AUTH_FAILURES`` of them the connection is closed: guessing needs a
  new connection every few tries.

Transactions (see kvd.resp.connection): WATCH is a read of the keys'
versions (``Versions``, always linearizable), EXEC a write of one
``Transaction`` entry; for the ordering below they count as a read and a
write, and the commands queued between MULTI and EXEC wait for nothing.

QUIT and fatal protocol errors reply, then close once every earlier reply has
been written.

CLIENT REPLY OFF/SKIP (kvd.resp.connection): a silenced request keeps its
slot, so order is kept, but its reply is not written.

Out-of-band messages (``push``): pub/sub's messages (kvd.resp.pubsub), and
anything else a node streams to a connection, are written as RESP3 pushes
(``>``) or, in RESP2, plain arrays, in order with the replies: after every
reply already made (a SUBSCRIBE's confirmation precedes its messages), ahead
of the replies still running (Redis too pushes while a command runs, before
its reply).  A connection with
subscriptions is bounded by Redis's pubsub output limit (``PubSubLimit``,
hard and soft) besides ``output_limit``.  In RESP2 a subscribed connection
may only run (P)SUBSCRIBE, (P)UNSUBSCRIBE, PING and QUIT (Redis's error
otherwise), and its PING answers ``["pong", message]``.

Cross-protocol requests: a web page can make a browser POST to this port, and
each line of the HTTP request would be a command.  As Redis does, a request
that looks like HTTP (``POST``, ``Host:``, ``GET /path HTTP/1.1``) closes the
connection at once, without a reply; nothing parsed with it or after it runs,
and the attempt is logged.  After the connection is lost, results still arriving from the
executor are dropped (the executor's work is not cancelled: a write may
commit anyway, as with Redis).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kvd.errors import KvdError
from kvd.kv.commands import Publish, Transaction, Versions, command_keys, command_size
from kvd.kv.results import OK, KVError
from kvd.limits import LIMITS
from kvd.resp.commands import Admin, Read, Write, parse_request, request_name, shape_reply
from kvd.resp.encoder import NIL_ARRAY, Push, RespMap, SimpleString, encode, encode_error
from kvd.resp.errors import Rejected, RespError
from kvd.resp.parser import DEFAULT_MAX_BULK_BYTES, ProtocolError, RespParser
from kvd.push import push_now
from kvd.resp.budget import TurnBudget
from kvd.resp.connection import EXEC_ABORT, NO_REPLY, Connection, execute_local, is_local
from kvd.resp.pubsub import PubSubHub, PubSubLimit, Subscriptions
from kvd.resp.watch import WATCHING_COMMANDS, WatchHub, parse_watch_args
from kvd.kv.glob import PatternTooCostly

DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_MAXCLIENTS = 10000
DEFAULT_OUTPUT_LIMIT = 64 * 1024 * 1024
DEFAULT_MAXMEMORY_CLIENTS = 1024 * 1024 * 1024
#: Wrong passwords one connection may send before it is closed (each is logged at the first and the last).
MAX_AUTH_FAILURES = 10
#: A connection holding less than this is never evicted for the total.
EVICT_MIN_BYTES = 64 * 1024
MAXCLIENTS_REPLY = encode_error("ERR", "max number of clients reached")


class ClientMemory:
    """Bytes held for all connections of one port (partial requests, unread replies) and their cap (0: none)."""

    def __init__(self, limit: int = DEFAULT_MAXMEMORY_CLIENTS):
        self.limit = limit
        self.used = 0
INTERNAL_ERROR = encode_error("ERR", "internal error")


class _Parsed:
    """A request already parsed (while deciding whether it must wait)."""

    __slots__ = ("request", "args")

    def __init__(self, request, args):
        self.request = request
        self.args = args


class _Slot:
    """The place of one reply in the pipeline (or of an out-of-band message written after the replies owed)."""

    __slots__ = ("data", "close_after", "silent", "pushed")

    def __init__(self):
        self.data: Optional[bytes] = None
        self.close_after = False
        self.silent = False  # CLIENT REPLY OFF or SKIP: its reply is not written
        self.pushed = False  # a message pushed while replies were owed: counted in the pubsub limit


#: What a RESP2 connection with subscriptions may run (Redis's pubsub context; kvd has no RESET nor shard channels).
SUBSCRIBED_COMMANDS = frozenset({"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "ssubscribe",
                                 "sunsubscribe", "ping", "quit"})
PUBSUB_COMMANDS = frozenset({"subscribe", "psubscribe", "unsubscribe", "punsubscribe", "ssubscribe", "sunsubscribe",
                             "pubsub|channels",
                             "pubsub|numsub", "pubsub|numpat", "pubsub|help", "pubsub|shardchannels",
                             "pubsub|shardnumsub"})
PUBSUB_HELP = [SimpleString(line) for line in (
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
)]


def reply_size(value, limit: int) -> int:
    """About how many bytes ``value`` encodes to; stops counting once past ``limit``."""
    if not isinstance(value, (list, tuple, RespMap)):  # one value (most replies): no stack
        return len(value) + 16 if isinstance(value, (bytes, bytearray, memoryview, str)) else 24
    size = 0
    stack = [value]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, (bytes, bytearray, memoryview, str)):
            size += len(item) + 16
        elif isinstance(item, (list, tuple)):
            size += 16
            stack.extend(item)
        elif isinstance(item, RespMap):
            size += 16
            for pair in item.pairs:
                stack.extend(pair)
        else:
            size += 24
    return size


def _fileno(transport) -> int:
    """The socket's file descriptor under ``transport`` (TLS wraps TCP), -1 if there is none (tests)."""
    for _ in range(3):
        fileno = getattr(transport, "fileno", None)
        if callable(fileno):
            try:
                return int(fileno())
            except Exception:
                return -1
        transport = getattr(transport, "transport", None)
    return -1


def _address(addr) -> str:
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    return str(addr) if host is None else "%s:%s" % (host, port)


HTTP_METHODS = frozenset(b"GET HEAD POST PUT DELETE OPTIONS PATCH CONNECT TRACE".split())


def looks_like_http(args: List[bytes]) -> bool:
    """A request line or header of HTTP: ``POST ...``, ``Host: ...``, ``GET /path HTTP/1.1``."""
    first = args[0].upper()
    if first in (b"POST", b"HOST:"):
        return True
    return first in HTTP_METHODS and len(args) == 3 and args[-1].upper().startswith(b"HTTP/")


@implementer(IPushProducer)
class RespProtocol(Protocol):
    log = Logger()

    def __init__(self, executor, connection: Connection, max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 parser: Optional[RespParser] = None, output_limit: int = DEFAULT_OUTPUT_LIMIT):
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.executor = executor
        self.output_limit = output_limit
        self._unsent = 0  # bytes written since the transport last had room (see _write)
        self._held = 0  # this connection's share of the factory's ClientMemory
        self._auth_failures_seen = 0
        self.connection = connection
        self.max_inflight = max_inflight
        self._resume_below = max(1, max_inflight // 2)
        self._parser = parser or RespParser()
        self._pending: Deque[_Slot] = deque()
        self._backlog: Deque[Any] = deque()  # parsed, not yet dispatched
        self._dispatching = False
        self._closing = False  # QUIT or a fatal error is queued: read nothing more
        self._lost = False
        self._output_paused = False  # the transport paused us: the client is not reading
        self._input_paused = False  # we paused the transport: it is not reading
        self._producing = False  # registered as the transport's producer
        # Redis runs one connection's commands in order.  Reads may run
        # together, and so may writes (the log keeps their order), but a read
        # must not overtake an earlier write on the connection, nor a write an
        # earlier read: a switch between the two waits for the running ones.
        self._running_kind: Optional[type] = None
        self._running = 0
        self._pushed_owed = 0  # bytes of pushed messages waiting behind owed replies
        self._over_soft_since: Optional[float] = None  # when the unread pushes went over the soft pubsub limit

    # ------------------------------------------------------- connection

    def connectionMade(self):
        connections = getattr(self.factory, "connections", None)
        if connections is not None:
            connections[self.connection.id] = self.connection
            self.connection.registry = connections
        self.connection.now = getattr(self.factory, "now", time.time)
        self.connection.created = self.connection.last_active = self.connection.now()
        self.connection.io = self._io_fields
        self.connection.push = self.push
        self.connection.peer = _address(self.transport.getPeer())
        self.connection.local = _address(self.transport.getHost())
        self.transport.registerProducer(self, True)
        self._producing = True

    def connectionLost(self, reason=None):
        connections = getattr(self.factory, "connections", None)
        if connections is not None:
            connections.pop(self.connection.id, None)
        if self.connection.subscriptions is not None:
            self.connection.subscriptions.close()
        self._lost = True
        for callback in self.connection.on_lost:
            try:
                callback()
            except Exception:
                self.log.failure("a stream of {connection!r} failed at its end", connection=self.connection)
        self.connection.on_lost = []
        self._pending.clear()
        self._backlog.clear()
        self._producing = False
        memory = getattr(self.factory, "memory", None)
        if memory is not None:
            memory.used -= self._held
        self._held = 0

    def dataReceived(self, data: bytes):
        if self._closing or self._lost:
            return
        items = self._parser.feed(data)
        if not self._account():
            return
        if any(isinstance(item, list) and looks_like_http(item) for item in items):
            self._refuse_http()
            return
        self._backlog.extend(items)
        self._pump()

    def _refuse_http(self):
        self.log.warn(
            "Possible SECURITY ATTACK detected: a client at {peer} sent an HTTP request to the Redis port "
            "(a cross-protocol attack from a web page?); connection closed, nothing run",
            peer=self.connection.peer,
        )
        self._closing = True
        self._backlog.clear()
        self._close()

    # ------------------------------------------- IPushProducer (our output)

    def pauseProducing(self):
        self._output_paused = True
        self._update_input()

    def resumeProducing(self):
        self._output_paused = False
        self._pump()

    def stopProducing(self):
        self._output_paused = True
        self._producing = False

    # --------------------------------------------------------- pipeline

    @property
    def inflight(self) -> int:
        """Replies owed to the client, answered or not, oldest first."""
        return len(self._pending)

    def _pump(self):
        """Dispatch what the limits allow, write what is ready, and adjust reading."""
        if self._dispatching or self._lost:
            return
        self._dispatching = True
        try:
            while self._backlog and not self._closing and not self._output_paused:
                if len(self._pending) >= self.max_inflight:
                    # Answered slots only leave the queue when written.
                    self._flush()
                    if len(self._pending) >= self.max_inflight:
                        break
                    continue
                if self._must_wait(self._backlog[0]):
                    break
                budget = self.factory.budget
                if budget is not None and not budget.take():
                    budget.park(self)
                    break
                self._dispatch(self._backlog.popleft())
            self._flush()
        finally:
            self._dispatching = False
        self._update_input()

    def resume_after_budget(self):
        """A new reactor turn: go on with what waited for the turn budget (kvd.resp.budget)."""
        if not self._lost:
            self._pump()

    def _must_wait(self, item) -> bool:
        if isinstance(item, list):
            item = self._backlog[0] = _Parsed(self._parse(item), item)
        kind = self._kind(item.request) if isinstance(item, _Parsed) else None
        if kind not in (Read, Write):
            return False
        if self._running and self._running_kind is not kind:
            return True
        self._running_kind = kind
        return False

    def _kind(self, request):
        """Read or Write for the ordering of a connection's requests (WATCH reads, EXEC writes), else None."""
        in_multi = self.connection.in_multi
        if isinstance(request, Admin):
            if request.name == "exec" and in_multi:
                return Write
            if request.name == "watch" and not in_multi:
                return Read
            return None
        if in_multi:
            return None  # queued, not run
        return type(request)

    def _io_fields(self) -> dict:
        """What CLIENT INFO shows of this connection's I/O (kvd.resp.connection ``client_info``)."""
        return {
            "fd": _fileno(self.transport),
            "qbuf": self._parser.buffered,
            "omem": self._unsent if self._output_paused else 0,
            "events": ("" if self._input_paused else "r") + ("w" if self._output_paused else ""),
            "closing": self._closing,
        }

    def _dispatch(self, item):
        args = item.args if isinstance(item, _Parsed) else item if isinstance(item, list) else None
        self.connection.dispatched(args)
        slot = None
        try:
            slot = self._dispatch_one(item)
        finally:
            silent = self.connection.after_dispatch()
            if slot is not None:
                slot.silent = slot.silent or silent

    def _dispatch_one(self, item) -> _Slot:
        slot = _Slot()
        self._pending.append(slot)
        if isinstance(item, ProtocolError):
            slot.data = encode_error("ERR", item.message)
            self.connection.flag()
            if not item.recoverable:
                self._close_after(slot)
            return slot
        request = item
        try:
            request = item.request if isinstance(item, _Parsed) else self._parse(item)
            refused = None if isinstance(request, RespError) else self.connection.refuses(request)
            in_multi = self.connection.in_multi
            control = isinstance(request, Admin) and request.name in ("multi", "exec", "discard", "watch", "quit")
            if isinstance(request, RespError) and in_multi and not isinstance(request, Rejected):
                # Redis queues a command whose arguments are wrong and answers the error at EXEC.
                slot.data = encode(self.connection.queue(request))
            elif isinstance(request, RespError):
                slot.data = encode(request)
                self.connection.flag()
            elif refused is not None:
                slot.data = encode(refused)
                if not control:
                    self.connection.flag()
            elif self._watching_refuses(request):
                slot.data = encode_error("ERR", "Can't execute '%s': only KVD.UNWATCH / PING / QUIT are allowed while "
                                                "watching (KVD.WATCH)" % request_name(request))
            elif self._subscribed_refuses(request):
                slot.data = encode_error("ERR", "Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING "
                                                "/ QUIT / RESET are allowed in this context" % request_name(request))
            elif in_multi and not control:
                slot.data = encode(self.connection.queue(request))
            elif in_multi and request.name == "exec":
                self._exec(slot)
            elif isinstance(request, Admin) and request.name in ("kvd.watch", "kvd.unwatch") and not in_multi:
                self._kv_watch(slot, request)
            elif isinstance(request, Admin) and request.name == "watch" and not in_multi:
                self._watch(slot, request.args)
            elif isinstance(request, Admin) and (request.name in PUBSUB_COMMANDS or request.name == "ping"
                                                 and self._subscribed() and self.connection.protocol == 2):
                slot.data = self._pubsub(request)
            elif isinstance(request, Write) and isinstance(request.command, Publish):
                channel, shard = request.command.channel, request.command.shard
                self._execute(slot, request, lambda result: result if isinstance(result, KVError)
                              else self.hub.receivers(channel, shard))
            elif is_local(request):
                value = execute_local(request, self.connection)
                if value is NO_REPLY:
                    slot.data, slot.silent = b"", True
                else:
                    slot.data = encode(value, self.connection.protocol == 3)
                if request.name == "quit":
                    self._close_after(slot)
            else:
                self._execute(slot, request)
        except Exception:
            # Our own bug: same treatment as an executor's, the connection survives.
            self._fill_failure(slot, Failure(), request)
        if self.connection.auth_failures:
            self._auth_failed(slot)
        return slot

    # ------------------------------------------------------------ pub/sub

    @property
    def hub(self) -> PubSubHub:
        hub = getattr(self.factory, "pubsub", None)
        if hub is None:  # a protocol built without a factory (tests): a registry of its own
            hub = self.__dict__.setdefault("_own_hub", PubSubHub())
        return hub

    def _subscribed(self) -> bool:
        subs = self.connection.subscriptions
        return subs is not None and subs.total > 0

    def _subscribed_refuses(self, request) -> bool:
        """RESP2's pubsub context: a subscribed connection runs only SUBSCRIBED_COMMANDS."""
        if self.connection.protocol != 2 or not self._subscribed():
            return False
        return not (isinstance(request, Admin) and request.name in SUBSCRIBED_COMMANDS)

    def _pubsub(self, request: Admin) -> bytes:
        """The reply bytes of a pub/sub command: one confirmation per channel for (P)(UN)SUBSCRIBE."""
        resp3 = self.connection.protocol == 3
        name, args = request.name, request.args
        hub = self.hub
        if name == "ping":  # RESP2, subscribed: Redis answers an array
            return encode([b"pong", args[0] if args else b""])
        if name == "pubsub|channels":
            try:
                return encode(hub.channel_names(args[0] if args else None), resp3)
            except PatternTooCostly as e:
                return encode_error("ERR", str(e))
        if name == "pubsub|numsub":
            return encode(hub.numsub(args), resp3)
        if name == "pubsub|numpat":
            return encode(hub.numpat(), resp3)
        if name == "pubsub|help":
            return encode(PUBSUB_HELP, resp3)
        if name == "pubsub|shardchannels":
            try:
                return encode(hub.shard_channel_names(args[0] if args else None), resp3)
            except PatternTooCostly as e:
                return encode_error("ERR", str(e))
        if name == "pubsub|shardnumsub":
            return encode(hub.shard_numsub(args), resp3)
        subs = self.connection.subscriptions
        if subs is None:
            subs = self.connection.subscriptions = Subscriptions(hub, self.push)
        try:
            confirmations = getattr(subs, name)(args)
        except PatternTooCostly as e:
            return encode_error("ERR", "%s; nothing was subscribed" % (e,))
        return b"".join(encode(c, resp3) for c in confirmations)

    # ------------------------------------------------------------ KVD.WATCH

    @property
    def watches(self) -> WatchHub:
        hub = getattr(self.factory, "watches", None)
        if hub is None:  # a protocol built without a factory (tests): a hub of its own
            hub = self.__dict__.setdefault("_own_watches", WatchHub())
        return hub

    def _watching_refuses(self, request) -> bool:
        """A connection with an open watch runs only WATCHING_COMMANDS (kvd.resp.watch)."""
        watch = self.connection.kv_watch
        if watch is None or watch.ended:
            return False
        return not (isinstance(request, Admin) and request.name in WATCHING_COMMANDS)

    def _kv_watch(self, slot: _Slot, request: Admin) -> None:
        """KVD.WATCH / KVD.UNWATCH (kvd.resp.watch): the reply goes in ``slot`` before the replay is pushed."""
        resp3 = self.connection.protocol == 3
        current = self.connection.kv_watch
        if current is not None and current.ended:  # cancelled by the node (kvd.resp.watch): not watching
            current = self.connection.kv_watch = None
        if request.name == "kvd.unwatch":
            if current is not None:
                current.close()
                self.connection.kv_watch = None
            slot.data = encode([b"unwatched", current.prefix if current is not None else None], resp3)
            return
        if current is not None:
            slot.data = encode_error("ERR", "this connection is watching already: KVD.UNWATCH first")
            return
        try:
            prefix, from_revision = parse_watch_args(request.args)

            def reply(start: int) -> None:
                slot.data = encode([b"watching", start], resp3)  # pushes go after the last reply made

            watch = self.watches.open(prefix, from_revision, self.push, reply)
        except RespError as e:
            slot.data = encode(e)
            return
        if self._lost:
            watch.close()
            return
        self.connection.kv_watch = watch
        self.connection.on_lost.append(watch.close)

    def push(self, items) -> None:
        """
        Write an out-of-band message: ``items`` as a RESP3 push (``>``) or a RESP2 array, after the replies
        owed so far (at once if none).  The connection's stream API (pub/sub, and whatever else streams).
        """
        if self._lost or self._closing:
            return
        data = encode(Push(tuple(items)), self.connection.protocol == 3)
        # After the last reply already made (a SUBSCRIBE's confirmation comes before its messages), before the
        # replies still running (as Redis, which pushes while a command runs, before that command's reply).
        pending = self._pending
        last_made = next((i for i in range(len(pending) - 1, -1, -1) if pending[i].data is not None), None)
        if last_made is None:
            self._write(data)
        else:
            slot = _Slot()
            slot.data, slot.pushed = data, True
            pending.insert(last_made + 1, slot)
            self._pushed_owed += len(data)
        if not self._lost and not self._closing:
            self._check_pubsub_limit()

    def _check_pubsub_limit(self) -> None:
        """Redis's client-output-buffer-limit pubsub: unread pushes over hard, or over soft for long, disconnect."""
        limit: PubSubLimit = getattr(self.factory, "pubsub_limit", None) or PubSubLimit()
        held = (self._unsent if self._output_paused else 0) + self._pushed_owed
        reason = None
        if limit.hard and held > limit.hard:
            reason = "over the hard limit of %d bytes" % limit.hard
        elif limit.soft and held > limit.soft:
            now = self.connection.now()
            if self._over_soft_since is None:
                self._over_soft_since = now
            elif now - self._over_soft_since >= limit.soft_seconds:
                reason = "over the soft limit of %d bytes for %d s" % (limit.soft, limit.soft_seconds)
        else:
            self._over_soft_since = None
        if reason is not None:
            self.log.warn(
                "Subscriber {connection!r} closed: {held} bytes of messages wait for it to read, {reason} "
                "(client-output-buffer-limit pubsub)", connection=self.connection, held=held, reason=reason)
            self._abort()

    def _parse(self, args):
        # The parser's bulk limit is the node's --value-max-bytes: APPEND and SETRANGE carry it.
        return parse_request(args, self._parser.max_bulk_bytes)

    def _auth_failed(self, slot: _Slot):
        """A wrong password: logged once per connection; too many and the connection is closed (guessing)."""
        failures = self.connection.auth_failures
        if failures == self._auth_failures_seen:
            return
        self._auth_failures_seen = failures
        if failures == 1 or failures >= MAX_AUTH_FAILURES:
            self.log.warn(
                "Wrong password from client {connection!r} ({failures} on this connection{closing})",
                connection=self.connection, failures=failures,
                closing="; closed" if failures >= MAX_AUTH_FAILURES else "",
            )
        if failures >= MAX_AUTH_FAILURES:
            self._close_after(slot)

    def _close_after(self, slot: _Slot):
        slot.close_after = True
        self._closing = True
        self._backlog.clear()

    def _execute(self, slot: _Slot, request, reply=None):
        """Run ``request`` on the executor; ``reply``, if given, turns its result into the reply (else shape_reply)."""
        try:
            result = self.executor.execute(request, self.connection)
        except Exception:
            self._fill_failure(slot, Failure(), request)
            return
        if isinstance(result, Deferred):
            if isinstance(request, (Read, Write)):
                self._running += 1
                result.addBoth(self._finished)
            if reply is not None:
                result.addCallback(reply)
            result.addCallbacks(
                self._deferred_result, self._deferred_failure,
                callbackArgs=(slot, None if reply else request), errbackArgs=(slot, request),
            )
        else:
            if reply is not None:
                try:
                    result = reply(result)
                except Exception:
                    self._fill_failure(slot, Failure(), request)
                    return
            self._fill(slot, result, None if reply else request)

    # ------------------------------------------------------- transactions

    def _watch(self, slot: _Slot, keys):
        """WATCH: read the keys' versions linearizably, keep them for EXEC; a failed read makes EXEC answer nil."""
        connection = self.connection
        request = Read(Versions(tuple(keys)), "watch")

        def watched(result):
            if isinstance(result, KVError):
                connection.watch_failed = True
                return result
            connection.watch(keys, result)
            return OK

        def failed(failure):
            connection.watch_failed = True
            return failure

        try:
            result = self.executor.execute(request, connection)
        except Exception:
            connection.watch_failed = True
            self._fill_failure(slot, Failure(), request)
            return
        if isinstance(result, Deferred):
            self._running += 1
            result.addBoth(self._finished)
            result.addCallbacks(watched, failed)
            result.addCallbacks(self._deferred_result, self._deferred_failure,
                                callbackArgs=(slot, None), errbackArgs=(slot, request))
        else:
            self._fill(slot, watched(result), None)

    def _exec(self, slot: _Slot):
        """EXEC: the queued reads and writes as one Transaction entry, the other queued commands around it."""
        connection = self.connection
        queued, watched, watch_failed = connection.end_transaction()
        if queued.flagged:
            slot.data = encode(EXEC_ABORT)
            return
        txn = Transaction(tuple(queued.ops), tuple((k, e, i) for k, (e, i) in watched.items()))
        size, keys = command_size(txn), command_keys(txn)
        if queued.too_big or size > LIMITS.command_bytes or keys > LIMITS.command_keys:
            slot.data = encode_error("ERR", "the transaction is over the limit of %d bytes or %d keys in one write "
                                            "(at least %d bytes, %d keys); it was discarded: nothing was run"
                                     % (LIMITS.command_bytes, LIMITS.command_keys, max(size, queued.size),
                                        max(keys, queued.keys)))
            return
        if watch_failed:
            slot.data = encode(NIL_ARRAY, connection.protocol == 3)
            return
        requests = queued.requests

        def replies(results):
            if results is None:
                return NIL_ARRAY
            if isinstance(results, KVError):
                return results
            results = iter(results)
            out = []
            for request in requests:
                if isinstance(request, RespError):
                    out.append(request)
                    continue
                if isinstance(request, (Read, Write)):
                    out.append(shape_reply(request, next(results)))
                    continue
                try:
                    if is_local(request):
                        out.append(execute_local(request, connection))
                    else:
                        value = self.executor.execute(request, connection)
                        if isinstance(value, Deferred):  # not among QUEUEABLE_ADMIN's
                            value = RespError("ERR", "%s cannot run inside a transaction" % request.name.upper())
                        out.append(value)
                except (RespError, KvdError) as e:
                    out.append(e)
            return out

        if not txn.ops and not txn.watched:
            self._fill(slot, replies([]), None)  # nothing to apply or check: no log entry
            return
        self._execute(slot, Write(txn, "exec"), replies)

    def _finished(self, result):
        self._running -= 1
        return result

    def _deferred_result(self, result, slot: _Slot, request):
        self._fill(slot, result, request)
        self._pump()

    def _deferred_failure(self, failure: Failure, slot: _Slot, request):
        self._fill_failure(slot, failure, request)
        self._pump()

    def _fill(self, slot: _Slot, result, request):
        if result is NIL_ARRAY:
            slot.data = encode(result, self.connection.protocol == 3)
            return
        try:
            if isinstance(request, (Read, Write)):
                result = shape_reply(request, result)
            size = reply_size(result, self.output_limit)
            if size > self.output_limit:
                slot.data = encode_error("ERR", "the reply is over this node's client output limit of %d bytes "
                                                "(--client-output-limit); ask for fewer or smaller values" % self.output_limit)
                return
            slot.data = encode(result, self.connection.protocol == 3)
        except Exception:
            self._fill_failure(slot, Failure(), request)

    def _fill_failure(self, slot: _Slot, failure: Failure, request):
        if failure.check(RespError, KvdError):
            slot.data = encode(failure.value)
            return
        self.log.failure(
            "Executor failed on {request!r} from {connection!r}", failure=failure, request=request, connection=self.connection
        )
        slot.data = INTERNAL_ERROR

    def _flush(self):
        ready: List[bytes] = []
        pending = self._pending
        while pending and pending[0].data is not None:
            slot = pending.popleft()
            if slot.pushed:
                self._pushed_owed -= len(slot.data)
            if not slot.silent:
                ready.append(slot.data)
            if slot.close_after:
                self._write(b"".join(ready))
                self._close()
                return
        if ready:
            self._write(b"".join(ready))

    def _write(self, data: bytes):
        # While the transport has not paused us its buffer is small (under
        # its bufferSize); once paused, whatever we still write piles up.
        if not self._output_paused:
            self._unsent = 0
        self._unsent += len(data)
        if self._unsent > self.output_limit:
            self.log.warn(
                "Client {connection!r} closed: {size} bytes of replies are waiting for it to read, over the "
                "client output limit of {limit} bytes (--client-output-limit)",
                connection=self.connection, size=self._unsent, limit=self.output_limit,
            )
            self._abort()
            return
        if not self._account():
            return
        self.transport.write(data)
        self.factory.unpushed[self] = None

    def _account(self) -> bool:
        """Report the bytes held for this connection; False when it was evicted for the total of all."""
        memory = getattr(self.factory, "memory", None)
        if memory is None:
            return True
        held = self._parser.buffered + self._unsent
        memory.used += held - self._held
        self._held = held
        if memory.limit and memory.used > memory.limit and held >= EVICT_MIN_BYTES:
            self.log.warn(
                "Client {connection!r} closed: it holds {held} bytes and all clients together {used}, over "
                "--maxmemory-clients {limit}",
                connection=self.connection, held=held, used=memory.used, limit=memory.limit,
            )
            self._abort()
            return False
        return True

    def _abort(self):
        """Drop the connection now: nothing more is read, run or written."""
        self._closing = True
        self._backlog.clear()
        self._pending.clear()
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        abort = getattr(self.transport, "abortConnection", None)
        (abort or self.transport.loseConnection)()

    def _close(self):
        self._pending.clear()
        # A registered but paused producer would keep the transport open
        # after loseConnection (it waits for us to resume), so unregister.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _update_input(self):
        if self._lost or self._closing:
            return
        busy = len(self._pending)
        if not self._input_paused:
            if self._output_paused or self._backlog or busy >= self.max_inflight:
                self._input_paused = True
                self.transport.pauseProducing()
        elif not self._output_paused and not self._backlog and busy < self._resume_below:
            self._input_paused = False
            self.transport.resumeProducing()


class RespFactory(Factory):
    """
    Builds the Redis port's protocols; ``executor`` serves every connection.
    ``value_max_bytes`` bounds every bulk argument (so keys and values);
    ``parser_factory``, when given, overrides it with a parser of its own.
    """

    def __init__(self, executor, max_inflight: int = DEFAULT_MAX_INFLIGHT,
                 value_max_bytes: int = DEFAULT_MAX_BULK_BYTES, parser_factory=None, users=None,
                 maxclients: int = DEFAULT_MAXCLIENTS, output_limit: int = DEFAULT_OUTPUT_LIMIT,
                 maxmemory_clients: int = DEFAULT_MAXMEMORY_CLIENTS, pubsub: Optional[PubSubHub] = None,
                 pubsub_limit: Optional[PubSubLimit] = None, watches: Optional[WatchHub] = None):
        self.executor = executor
        #: The node's open KVD.WATCHes and their history (kvd.resp.watch): the node feeds it each revision.
        self.watches = watches if watches is not None else WatchHub()
        #: The node's pub/sub registry (kvd.resp.pubsub): the node hands it each applied entry's events.
        self.pubsub = pubsub if pubsub is not None else PubSubHub()
        self.pubsub_limit = pubsub_limit or PubSubLimit()
        self.users = users  # kvd.resp.auth.Users, or None: no authentication
        self.maxclients = maxclients
        self.output_limit = output_limit
        self.memory = ClientMemory(maxmemory_clients)
        self.max_inflight = max_inflight
        self.value_max_bytes = value_max_bytes
        self.parser_factory = parser_factory or (lambda: RespParser(max_bulk_bytes=self.value_max_bytes))
        self._ids = itertools.count(1)
        self.now = time.time  # CLIENT INFO's age= and idle=
        self.connections: Dict[int, Connection] = {}  # open connections by id (INFO clients)
        #: Requests dispatched per reactor turn over all connections (kvd.resp.budget); None: no bound.
        self.budget: Optional[TurnBudget] = None
        #: Connections written to since ``push_replies`` last ran, in order.
        self.unpushed: Dict[RespProtocol, None] = {}

    def push_replies(self) -> None:
        """
        Hand every reply written since the last call to the kernel now (kvd.push),
        not at the reactor's next turn: the node calls it once a Ready has
        answered its proposals and reads, before it sends the followers the
        commit index (kvd.replica).
        """
        unpushed, self.unpushed = self.unpushed, {}
        for protocol in unpushed:
            push_now(protocol.transport)

    def buildProtocol(self, addr):
        if len(self.connections) >= self.maxclients:
            return _TooManyClients()
        connection = Connection(next(self._ids), peer=_address(addr), users=self.users)
        protocol = RespProtocol(self.executor, connection, self.max_inflight, self.parser_factory(), self.output_limit)
        protocol.factory = self
        return protocol


class _TooManyClients(Protocol):
    """One connection over --maxclients: Redis's error, then closed."""

    log = Logger()

    def connectionMade(self):
        self.log.warn("Connection from {peer} refused: max number of clients reached (--maxclients)",
                      peer=_address(self.transport.getPeer()))
        self.transport.write(MAXCLIENTS_REPLY)
        self.transport.loseConnection()
