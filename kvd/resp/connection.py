# -*- test-case-name: tests.resp.test_protocol -*-
"""
Per-connection state, and the commands answered from it alone.

A ``Connection`` is what an executor sees of a connection: ``id``, ``name``
(CLIENT SETNAME), ``readonly`` (READONLY/READWRITE, which an executor may
use to allow possibly stale reads from a follower), the peer address and
the client library's self-description.

PING, ECHO, SELECT, QUIT, READONLY, READWRITE, CLIENT ... and COMMAND ...
concern the connection or the static command table, so the protocol answers
them itself with ``execute_local`` and never bothers the executor (nor the
cluster) with them; they still take their turn in the pipeline.
CLIENT LIST sees every connection of the port (``registry``); CLIENT REPLY
OFF/SKIP answer ``NO_REPLY`` and mark the connection so that the protocol
writes nothing for the requests they silence (``dispatched``/``after_dispatch``,
Redis's resetClient order). COMMAND is kvd.resp.introspect's.

Transactions.  Between MULTI and EXEC a connection queues what it is sent
(``queue``): each valid command answers ``+QUEUED``, and one that is refused
(unknown, arity, syntax, permissions, or not allowed in a transaction) answers
its error and flags the transaction, so that EXEC answers ``EXECABORT``.
EXEC (kvd.resp.protocol) proposes the queued reads and writes as one
``Transaction`` log entry, with the versions of the keys WATCHed since the
last EXEC/DISCARD/UNWATCH; local commands queued (PING, ECHO, UNWATCH ...)
are answered in their places when the entry's results come back.

Authentication (kvd.resp.auth): when the node has users, a new connection
may only run AUTH, HELLO (with its AUTH option) and QUIT; everything else
answers Redis's ``-NOAUTH Authentication required.``.  Once authenticated, a
request beyond the user's role answers ``-NOPERM`` (``required_role``).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from kvd.kv.commands import KvTxn, Lease, ScriptGet, Transaction, command_keys, command_size, parse_int64
from kvd.kv.results import OK
from kvd.resp.auth import (
    ADMIN, DEFAULT_USER, HELLO_NOAUTH_MESSAGE, NO_PASSWORD_MESSAGE, NOAUTH_MESSAGE, READONLY, READWRITE,
    WRONGPASS_MESSAGE, User, Users,
)
from kvd.resp import introspect
from kvd.resp.commands import COMMANDS, Admin, Read, Write, request_name, spec_of
from kvd.limits import LIMITS
from kvd.resp.encoder import PONG, QUEUED, RespMap, Verbatim
from kvd.resp.errors import RespError

LOCAL_COMMANDS = frozenset({
    "auth", "hello", "ping", "echo", "select", "quit", "readonly", "readwrite",
    "client|setname", "client|getname", "client|id", "client|info", "client|setinfo", "client|list", "client|reply",
    "command", "command|count", "command|docs", "command|info", "command|list", "command|getkeys",
    "command|getkeysandflags",
    "multi", "exec", "discard", "watch", "unwatch",
})

# What runs at once inside MULTI rather than being queued (as in Redis).
TRANSACTION_CONTROL = frozenset({"multi", "exec", "discard", "watch", "quit"})
EXEC_ABORT = RespError("EXECABORT", "Transaction discarded because of previous errors.")
NOT_IN_MULTI = RespError("ERR", "Command not allowed inside a transaction")
#: A transaction's entry holds writes (scripts too) and the reads it can replay: not SCRIPT EXISTS.
SCRIPT_IN_MULTI = RespError("ERR", "kvd does not run SCRIPT EXISTS inside MULTI yet")
LEASE_IN_MULTI = RespError("ERR", "KVD.LEASE GRANT, KEEPALIVE and REVOKE are not allowed inside MULTI")
#: KVD.TXN is a transaction of its own (one log entry, kvd.kv.txn): a MULTI cannot hold one.
KV_TXN_IN_MULTI = RespError("ERR", "KVD.TXN cannot run inside MULTI: it is a transaction of its own")
#: Admin commands the executor answers that may be queued: answered in their place after the entry applies.
QUEUEABLE_ADMIN = frozenset({"time", "info", "role", "config|get", "config|resetstat", "kvd.members", "kvd.cluster"})
#: Local commands that may be queued (the others change how the connection talks or who it is).
QUEUEABLE_LOCAL = LOCAL_COMMANDS - TRANSACTION_CONTROL - frozenset({"auth", "hello", "client|reply"})


class NoReply:
    """What CLIENT REPLY OFF and SKIP answer: nothing at all (kvd.resp.protocol writes no bytes for it)."""

    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY = NoReply()


def command_name(args: List[bytes]) -> Optional[str]:
    """The full name of the command ``args`` call ("get", "client|info"), None for an unknown one: CLIENT's cmd=."""
    if not args:
        return None
    spec = COMMANDS.get(args[0].lower())
    if spec is None:
        return None
    if spec.subcommands and len(args) > 1:
        sub = spec_of("%s|%s" % (spec.name, args[1].lower().decode("ascii", "replace")))
        if sub is not None:
            return sub.name
    return spec.name


#: CLIENT LIST TYPE's names (Redis's getClientTypeByName); kvd's connections are "normal" or "pubsub" ones.
CLIENT_TYPES = frozenset({b"normal", b"master", b"replica", b"slave", b"pubsub"})


class Queued:
    """What a connection in MULTI has queued, and the keys it WATCHes (which outlive a transaction)."""

    def __init__(self) -> None:
        self.requests: List[Any] = []
        self.flagged = False  # a command was refused: EXEC answers EXECABORT
        self.ops: List[Any] = []  # the reads' and writes' ops, for the log entry
        self.size = 0  # their encoded bytes so far, as command_size counts them
        self.keys = 0
        self.too_big = False  # over kvd.limits: EXEC refuses, and what follows is not even kept

    def add(self, request) -> None:
        op = getattr(request, "command", None) or getattr(request, "op", None)
        if op is not None:
            probe = Transaction((op,))
            self.size += command_size(probe) - 3
            self.keys += command_keys(probe)
            if self.size + 16 > LIMITS.command_bytes or self.keys > LIMITS.command_keys:
                self.too_big = True
        if self.too_big:
            self.requests, self.ops = [], []
            return
        self.requests.append(request)
        if op is not None:
            self.ops.append(op)


# What a connection may run before it has authenticated.
NO_AUTH_COMMANDS = frozenset({"auth", "hello", "quit"})
NOAUTH = RespError("NOAUTH", NOAUTH_MESSAGE)
WRONGPASS = RespError("WRONGPASS", WRONGPASS_MESSAGE)


def required_role(request) -> str:
    """The least role that may run ``request``: reads, writes, or admin (KVD.*, CONFIG, FLUSHDB/FLUSHALL)."""
    if isinstance(request, Write):
        spec = spec_of(request_name(request))
        if spec is not None and "readonly" in spec.flags:  # EVAL_RO: a write to the log that writes nothing
            return READONLY
        return ADMIN if spec is not None and "admin" in spec.flags else READWRITE
    if isinstance(request, Read):
        return READONLY
    if request.name.startswith("kvd.") and request.name not in ("kvd.watch", "kvd.unwatch"):  # a watch reads
        return ADMIN
    spec = spec_of(request.name)
    if spec is not None and "admin" in spec.flags:
        return ADMIN
    if spec is not None and "write" in spec.flags:
        return READWRITE
    return READONLY


class Connection:
    def __init__(self, id: int, peer: str = "", local: str = "", users: Optional[Users] = None):
        self.id = id
        # None until AUTH when the node has users; with none, everyone is the default admin.
        self.users = users
        self.user: Optional[User] = None
        self.authenticated = users is None or not users.required
        self.auth_failures = 0  # wrong passwords sent on this connection
        self.peer = peer
        self.local = local
        self.name: Optional[bytes] = None
        self.readonly = False
        self.lib_name: Optional[bytes] = None
        self.lib_ver: Optional[bytes] = None
        self.protocol = 2  # HELLO 3 switches the connection to RESP3
        self.in_multi = False  # between MULTI and EXEC/DISCARD: commands are queued
        self.queued = Queued()
        #: WATCHed keys: key -> (exists, index) as first read (kvd.kv.commands Versions).
        self.watched: Dict[bytes, Tuple[bool, int]] = {}
        #: A WATCH failed (its read did not complete): the next EXEC must not run (it answers nil).
        self.watch_failed = False
        # CLIENT REPLY: OFF answers nothing until ON; SKIP (when not OFF) answers nothing to the next command.
        self.reply_off = False
        self.reply_skip = False  # the command being dispatched answers nothing
        self.reply_skip_next = False  # the command after this one answers nothing
        # For CLIENT INFO / LIST (kvd.resp.protocol sets them): every open connection by id, the clock,
        # and what the connection's protocol holds (a callable answering a dict of CLIENT's io fields).
        self.registry: Optional[Mapping[int, "Connection"]] = None
        self.now: Callable[[], float] = time.time
        self.created = self.last_active = self.now()
        self.last_command = "NULL"  # Redis's cmd= before any
        self.io: Optional[Callable[[], Dict[str, Any]]] = None
        #: Its channels and patterns (kvd.resp.pubsub.Subscriptions), from its first (P)SUBSCRIBE on.
        self.subscriptions = None
        #: Out-of-band messages to this connection, for whatever streams to it (pub/sub; an executor may use it):
        #: ``push(items)`` writes them as a RESP3 push or a RESP2 array, in order with the replies
        #: (kvd.resp.protocol ``RespProtocol.push``); ``on_lost`` callables run once the connection is gone.
        self.push: Optional[Callable[[Any], None]] = None
        self.on_lost: List[Callable[[], None]] = []
        #: Its open KVD.WATCH (kvd.resp.watch.Watch), or None; one per connection.
        self.kv_watch = None

    def refuses(self, request) -> Optional[RespError]:
        """The error for a request this connection must not run now (no AUTH yet, its role, inside MULTI), else None."""
        if not self.authenticated and not (isinstance(request, Admin) and request.name in NO_AUTH_COMMANDS):
            return NOAUTH
        if self.user is not None and not self.user.may(required_role(request)):
            return RespError("NOPERM", "User %s has no permissions to run the '%s' command" % (
                self.user.name, request_name(request)))
        return None

    def queue(self, request) -> Any:
        """Inside MULTI: queue ``request`` (a parsed, not refused request) and return the reply (QUEUED or an error)."""
        if isinstance(request, RespError):  # answered in its place at EXEC, as Redis does
            self.queued.add(request)
            return QUEUED
        if isinstance(request, Admin) and request.name not in QUEUEABLE_LOCAL | QUEUEABLE_ADMIN:
            self.queued.flagged = True
            return NOT_IN_MULTI
        if isinstance(getattr(request, "op", None), ScriptGet):
            self.queued.flagged = True
            return SCRIPT_IN_MULTI
        if isinstance(getattr(request, "command", None), Lease):  # one grant per entry keeps lease ids unique
            self.queued.flagged = True
            return LEASE_IN_MULTI
        if isinstance(getattr(request, "command", None), KvTxn):
            self.queued.flagged = True
            return KV_TXN_IN_MULTI
        self.queued.add(request)
        return QUEUED

    def flag(self) -> None:
        """A command was refused inside MULTI: EXEC will answer EXECABORT."""
        if self.in_multi:
            self.queued.flagged = True

    def end_transaction(self) -> Tuple["Queued", Dict[bytes, Tuple[bool, int]], bool]:
        """EXEC or DISCARD: what was queued and watched (then forgotten: both also UNWATCH)."""
        queued, watched, failed = self.queued, self.watched, self.watch_failed
        self.in_multi = False
        self.queued = Queued()
        self.unwatch()
        return queued, watched, failed

    def watch(self, keys, versions) -> None:
        """A WATCH's read came back: keep each key's first version (a key watched again keeps its older one)."""
        for key, (exists, index) in zip(keys, versions):
            self.watched.setdefault(key, (bool(exists), index))

    def unwatch(self) -> None:
        self.watched = {}
        self.watch_failed = False

    def client_info(self) -> bytes:
        """
        One line of Redis's CLIENT INFO / CLIENT LIST (7.2's fields, in its order).  Fields kvd has no
        counterpart for take the value Redis shows when there is nothing:
        argv-mem, rbs, rbp, obl, oll 0 (no preallocated buffers, no reply list), redir -1 (no tracking).
        """
        now = self.now()
        io = self.io() if self.io is not None else {}
        subs = self.subscriptions
        flags = "".join(flag for flag, on in (
            ("x", self.in_multi), ("d", self.watch_failed), ("c", io.get("closing", False)),
            ("r", self.readonly), ("P", subs is not None and subs.total > 0)) if on) or "N"
        multi_mem = self.queued.size if self.in_multi else 0
        qbuf, omem = io.get("qbuf", 0), io.get("omem", 0)
        fields = (
            (b"id", b"%d" % self.id),
            (b"addr", self.peer.encode()),
            (b"laddr", self.local.encode()),
            (b"fd", b"%d" % io.get("fd", -1)),
            (b"name", self.name or b""),
            (b"age", b"%d" % max(0, int(now - self.created))),
            (b"idle", b"%d" % max(0, int(now - self.last_active))),
            (b"flags", flags.encode()),
            (b"db", b"0"),
            (b"sub", b"%d" % (len(subs.channels) if subs is not None else 0)),
            (b"psub", b"%d" % (len(subs.patterns) if subs is not None else 0)),
            (b"ssub", b"%d" % (len(subs.shard_channels) if subs is not None else 0)),
            (b"multi", b"%d" % (len(self.queued.requests) if self.in_multi else -1)),
            (b"qbuf", b"%d" % qbuf),
            (b"qbuf-free", b"0"),
            (b"argv-mem", b"0"),
            (b"multi-mem", b"%d" % multi_mem),
            (b"rbs", b"0"),
            (b"rbp", b"0"),
            (b"obl", b"0"),
            (b"oll", b"0"),
            (b"omem", b"%d" % omem),
            (b"tot-mem", b"%d" % (qbuf + omem + multi_mem)),
            (b"events", io.get("events", "r").encode()),
            (b"cmd", self.last_command.encode()),
            (b"user", (self.user.name if self.user is not None else DEFAULT_USER).encode("utf-8", "surrogateescape")),
            (b"redir", b"-1"),
            (b"resp", b"%d" % self.protocol),
            (b"lib-name", self.lib_name or b""),
            (b"lib-ver", self.lib_ver or b""),
        )
        return b" ".join(k + b"=" + v for k, v in fields) + b"\n"

    def dispatched(self, args: Optional[List[bytes]]) -> None:
        """A request is about to run (``args`` as sent; None for a protocol error): noted for CLIENT INFO."""
        self.last_active = self.now()
        name = command_name(args) if args is not None else None
        if name is not None:
            self.last_command = name

    def after_dispatch(self) -> bool:
        """
        Whether the request just dispatched answers nothing, by CLIENT REPLY as the request left it (OFF, or
        SKIP of the command before; ON itself answers OK); then, as Redis's resetClient, a CLIENT REPLY SKIP
        just run silences the next command.
        """
        silent = self.reply_off or self.reply_skip
        self.reply_skip = False
        if self.reply_skip_next:
            self.reply_skip_next = False
            self.reply_skip = True
        return silent

    def __repr__(self) -> str:
        return "<Connection id=%d peer=%s name=%r readonly=%s>" % (self.id, self.peer, self.name, self.readonly)


def is_local(request) -> bool:
    return isinstance(request, Admin) and request.name in LOCAL_COMMANDS


def execute_local(request: Admin, connection: Connection) -> Any:
    """The reply to a local command; may change ``connection``."""
    name, args = request.name, request.args
    if name == "auth":
        return _auth(args[0] if len(args) == 2 else None, args[-1], connection)
    if name == "hello":
        return _hello(args, connection)
    if name == "ping":
        return args[0] if args else PONG
    if name == "echo":
        return args[0]
    if name in ("select", "quit"):
        return OK
    if name == "multi":
        if connection.in_multi:
            raise RespError("ERR", "MULTI calls can not be nested")
        connection.in_multi = True
        return OK
    if name in ("exec", "discard"):
        # EXEC inside MULTI is kvd.resp.protocol's (it goes through the log); here only what needs no log.
        if not connection.in_multi:
            raise RespError("ERR", "%s without MULTI" % name.upper())
        connection.end_transaction()
        if name == "exec":
            raise EXEC_ABORT
        return OK
    if name == "watch":
        if connection.in_multi:
            raise RespError("ERR", "WATCH inside MULTI is not allowed")
        raise ValueError("WATCH reads the keys' versions through the executor (kvd.resp.protocol)")
    if name == "unwatch":
        connection.unwatch()
        return OK
    if name in ("readonly", "readwrite"):
        connection.readonly = name == "readonly"
        return OK
    if name == "client|setname":
        connection.name = args[0] or None
        return OK
    if name == "client|getname":
        return connection.name
    if name == "client|id":
        return connection.id
    if name == "client|info":
        return Verbatim(connection.client_info())
    if name == "client|list":
        return Verbatim(_client_list(args, connection))
    if name == "client|reply":
        mode = args[0].lower()
        if mode == b"on":
            connection.reply_off = connection.reply_skip = connection.reply_skip_next = False
            return OK
        if mode == b"off":
            connection.reply_off = True
            return NO_REPLY
        if mode == b"skip":
            if not connection.reply_off:
                connection.reply_skip_next = True
            return NO_REPLY
        raise RespError("ERR", "syntax error")
    if name == "client|setinfo":
        if args[0] == b"LIB-NAME":
            connection.lib_name = args[1]
        else:
            connection.lib_ver = args[1]
        return OK
    if name == "command" or name.startswith("command|"):
        return introspect.command(name, args)
    raise ValueError("not a local command: %r" % (name,))


def _subscribed(connection: Connection) -> bool:
    subs = connection.subscriptions
    return subs is not None and subs.total > 0


def _client_list(args, connection: Connection) -> bytes:
    """CLIENT LIST [TYPE type] [ID id ...], parsed as Redis 7.0 does (one option, TYPE exactly alone)."""
    registry = connection.registry if connection.registry is not None else {connection.id: connection}
    if len(args) == 2 and args[0].lower() == b"type":
        if args[1].lower() not in CLIENT_TYPES:
            raise RespError("ERR", "Unknown client type '%s'" % args[1].decode("utf-8", "surrogateescape"))
        wanted = args[1].lower()
        # Redis's getClientType: a connection with a subscription is a pubsub client, the others normal ones.
        chosen = [i for i in sorted(registry) if (wanted == b"pubsub") == _subscribed(registry[i])] \
            if wanted in (b"normal", b"pubsub") else []
    elif len(args) > 1 and args[0].lower() == b"id":
        chosen = []
        for arg in args[1:]:
            client_id = parse_int64(arg)
            if client_id is None:
                raise RespError("ERR", "Invalid client ID")
            if client_id in registry:
                chosen.append(client_id)
    elif args:
        raise RespError("ERR", "syntax error")
    else:
        chosen = sorted(registry)
    return b"".join(registry[i].client_info() for i in chosen)


def _auth(user: Optional[bytes], password: bytes, connection: Connection) -> Any:
    """AUTH [user] password; a failure leaves the connection as it was (as Redis does)."""
    users = connection.users
    if users is None or not users.required:
        if user is None:
            raise RespError("ERR", NO_PASSWORD_MESSAGE)
        if user == DEFAULT_USER.encode():
            return OK  # Redis's default user without a password takes any
        raise WRONGPASS
    found = users.authenticate(user, password)
    if found is None:
        connection.auth_failures += 1
        raise WRONGPASS
    connection.user = found
    connection.authenticated = True
    return OK


def _hello(args, connection: Connection) -> Any:
    """HELLO [protover [AUTH user pass] [SETNAME name]]: choose RESP2 or RESP3."""
    if args:
        try:
            version = int(args[0])
        except ValueError:
            raise RespError("ERR", "Protocol version is not an integer or out of range")
        if version not in (2, 3):
            raise RespError("NOPROTO", "sorry, this protocol version is not supported")
    elif not connection.authenticated:
        raise RespError("NOAUTH", HELLO_NOAUTH_MESSAGE)
    if args:
        rest = list(args[1:])
        name = None
        credentials = None
        while rest:
            option = rest.pop(0).lower()
            if option == b"auth" and len(rest) >= 2:
                credentials = rest.pop(0), rest.pop(0)
            elif option == b"setname" and rest:
                name = rest.pop(0)
            else:
                raise RespError("ERR", "Syntax error in HELLO option '%s'" % option.decode("utf-8", "replace"))
        if credentials is not None:
            _auth(credentials[0], credentials[1], connection)
        elif not connection.authenticated:
            raise RespError("NOAUTH", HELLO_NOAUTH_MESSAGE)
        connection.protocol = version
        if name is not None:
            connection.name = name or None
    return RespMap((
        ("server", "redis"),
        ("version", "7.0.0"),
        ("proto", connection.protocol),
        ("id", connection.id),
        ("mode", "standalone"),
        ("role", "master"),
        ("modules", []),
    ))
