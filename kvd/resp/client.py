# -*- test-case-name: tests.resp.test_client -*-
"""
kvd's one client of the Redis protocol: a blocking connection to one node,
the incremental RESP2 reply reader under it, and the parser of INFO replies.
mgmt.py (kvd.cli.client), the Jepsen harness (kvd.jepsen), the Docker helpers
(kvd.cli.docker_ops, on the host and, through ``docker exec``, inside a
container) and the cluster page (kvd.discovery.cluster_view, which feeds the reader from
a Twisted protocol so the reactor never blocks) all use it.  The only other
copy is docker/healthcheck.py's few lines, which must run without kvd
installed (its docstring says why).

Every request ends in exactly one of these, so a caller can tell whether a
command ran:

- ``NotSent``: no connection could be made (refused, unreachable, connect
  timeout, a failed setup command): the command certainly did not run;
- ``Indeterminate``: it may have reached the node but no reply came (socket
  timeout -- ``timed_out`` is then True --, reset, EOF, bytes that are not a
  RESP2 reply): the outcome is unknown, and the connection is closed;
- ``ReplyError``: the node answered ``-CODE message``; ``code`` is its first
  word (``NOLEADER``, ``TRYAGAIN``, ``TIMEOUT``, ``MOVED``, ``ERR``...) and
  ``text`` the whole line, exactly as sent;
- otherwise the reply: ``Simple`` (a ``+OK`` simple string, a bytes subclass so
  it compares equal to ``b"OK"``), bytes (a bulk string), int, None (nil) or a
  list of these.

``NotSent`` and ``Indeterminate`` are ``ConnectionError``s, so code that only
cares that "the network failed" can catch ``OSError``.

Why not redis-py (a dependency, and it speaks RESP): it cannot give these
outcomes through its public API.  Its parser maps error prefixes to exception
classes and rewrites some of them (``ERR`` is stripped, ``MOVED``/``ASK`` are
parsed as Redis Cluster redirects ``MOVED slot host:port``), so the node's
code survives only by subclassing a private parser (``redis._parsers.
_RESP2Parser``, ``redis.connection.PythonParser`` before 5: it moved within the
4.5-8 range setup.py allows); it returns simple and bulk strings alike, which
the linearizability checker must tell apart; it raises the same
``ConnectionError`` whether connecting failed (nothing sent) or the reply was
lost (unknown); what it sends on connect (HELLO, CLIENT SETINFO) and how it
retries change with its version; and its parser reads from a socket, while
the cluster page must feed bytes from the reactor.  RESP2 replies take a
hundred lines to read, so they are read here, once.  No retries, no pooling,
no handshake: one command is one request, and every byte on the wire is the
caller's.  (The tests still talk to nodes with redis-py: an independent
client checks the server.)

    with Connection("127.0.0.1", 7001, timeout=5.0) as conn:
        conn.call("SET", "k", "v")            # Simple(b'OK')
        parse_info(conn.call("INFO", "raft"))  # {"raft_role": "leader", ...}

Passwords (kvd.resp.auth): a connection authenticates with ``AUTH`` before
anything else when it has credentials: ``auth=(user or None, password)``,
or by default those of the environment (``credentials_from_env``):
``KVD_PASSWORD``, or the first line of the file ``KVD_PASSWORD_FILE`` names,
with the user ``KVD_USER`` (Redis's ``default`` when unset).  So mgmt.py and
every other tool built on this client work against a node that requires a
password, without it ever being on a command line.  Likewise
``KVD_TLS_CACERT`` (a CA file, PEM) makes every connection TLS, verified
against that CA, for a node started with ``--tls-cert``; ``tls=`` overrides.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ENV_PASSWORD = "KVD_PASSWORD"
ENV_PASSWORD_FILE = "KVD_PASSWORD_FILE"
ENV_USER = "KVD_USER"
ENV_TLS_CACERT = "KVD_TLS_CACERT"
FROM_ENV = object()  # Connection's default ``auth``: read the environment


def tls_from_env(environ: Mapping[str, str] = os.environ) -> Optional[ssl.SSLContext]:
    """A TLS context that trusts the CA in $KVD_TLS_CACERT, or None (plain TCP)."""
    path = environ.get(ENV_TLS_CACERT)
    if not path:
        return None
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as e:
        raise NotSent("cannot use the CA file %s ($%s): %s" % (path, ENV_TLS_CACERT, e))


def credentials_from_env(environ: Mapping[str, str] = os.environ) -> Optional[Tuple[Optional[str], str]]:
    """(user or None, password) from KVD_PASSWORD / KVD_PASSWORD_FILE and KVD_USER, or None."""
    password = environ.get(ENV_PASSWORD)
    path = environ.get(ENV_PASSWORD_FILE)
    if not password and path:
        try:
            with open(path, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise NotSent("cannot read the password file %s ($%s): %s" % (path, ENV_PASSWORD_FILE, e.strerror or e))
    if not password:
        return None
    return environ.get(ENV_USER) or None, password

#: Longest status, error or length line we wait for before calling the stream garbage.
MAX_LINE_BYTES = 64 * 1024
#: Deepest nesting of arrays we accept (kvd nests two deep at most).
MAX_DEPTH = 32


class NotSent(ConnectionError):
    """No connection: the command was certainly not sent."""


class Indeterminate(ConnectionError):
    """The command may have been sent but no reply came: its outcome is unknown."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class ReplyError(Exception):
    """An error reply, ``-CODE message``: ``code`` is its first word, ``text`` the whole line."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text
        self.code = text.split(" ", 1)[0] if text else ""

    def __eq__(self, other) -> bool:
        return isinstance(other, ReplyError) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return "ReplyError(%r)" % self.text


class BadReply(ValueError):
    """Bytes that are not a RESP2 reply (or a reply larger than the reader accepts)."""


class Simple(bytes):
    """A simple-string reply (``+OK``): equal to the same bytes, but told apart from a bulk string by type."""

    def __new__(cls, value=b""):
        return super().__new__(cls, value.encode("utf-8") if isinstance(value, str) else value)

    def __repr__(self) -> str:
        return "Simple(%r)" % bytes(self)


#: What :meth:`ReplyReader.get` returns while a reply is still incomplete.
INCOMPLETE = object()


# ---------------------------------------------------------------- requests
def arg_bytes(value) -> bytes:
    """The bytes a command argument is sent as: bytes as they are, str as UTF-8, a number as its digits."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):  # an int, but surely a mistake
        raise TypeError("a command argument cannot be a bool: %r" % value)
    if isinstance(value, (int, float)):
        return repr(value).encode("ascii")
    raise TypeError("a command argument must be bytes, str, int or float, not %s" % type(value).__name__)


def encode(args: Sequence) -> bytes:
    """One command as a RESP2 multibulk: ``encode(("GET", "k"))`` -> ``b"*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n"``."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = arg_bytes(a)
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# ---------------------------------------------------------------- replies
class ReplyReader:
    """
    RESP2 replies from a byte stream, without I/O: ``feed(data)``, then
    ``get()`` until it returns INCOMPLETE.  An error reply comes out as a
    ReplyError *value* (the replies after it are still good); bytes that are
    not RESP2 raise BadReply, after which the stream cannot be trusted.
    """

    def __init__(self, max_bytes: Optional[int] = None):
        self.max_bytes = max_bytes  # None: no limit on a reply's size
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        if self.max_bytes is not None and len(self._buf) > self.max_bytes:
            raise BadReply("reply larger than %d bytes" % self.max_bytes)

    def get(self):
        """The next complete reply, or INCOMPLETE (nothing is consumed until a reply is whole)."""
        reply, end = self._parse(self._pos, 0)
        if reply is not INCOMPLETE:
            self._pos = end
        return reply

    def pending(self) -> int:
        """Bytes received and not yet returned as a reply."""
        return len(self._buf) - self._pos

    def _parse(self, pos: int, depth: int):
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_LINE_BYTES:
                raise BadReply("no line end within %d bytes" % MAX_LINE_BYTES)
            return INCOMPLETE, pos
        kind, line, after = buf[pos : pos + 1], bytes(buf[pos + 1 : end]), end + 2
        if kind == b"+":
            return Simple(line), after
        if kind == b"-":
            return ReplyError(line.decode("utf-8", "replace")), after
        if kind == b":":
            return _number(line), after
        if kind == b"$":
            n = _number(line)
            if n == -1:
                return None, after
            if n < 0 or (self.max_bytes is not None and n > self.max_bytes):
                raise BadReply("bad bulk length %d" % n)
            if len(buf) < after + n + 2:
                return INCOMPLETE, pos
            if buf[after + n : after + n + 2] != b"\r\n":
                raise BadReply("bulk string of %d bytes not followed by CRLF" % n)
            return bytes(buf[after : after + n]), after + n + 2
        if kind == b"*":
            n = _number(line)
            if n == -1:
                return None, after
            if n < 0 or depth >= MAX_DEPTH:
                raise BadReply("bad array (length %d, depth %d)" % (n, depth))
            items: List[object] = []
            for _ in range(n):
                item, after = self._parse(after, depth + 1)
                if item is INCOMPLETE:
                    return INCOMPLETE, pos
                items.append(item)
            return items, after
        raise BadReply("unexpected reply %r" % bytes(buf[pos : min(end, pos + 40)]))


def _number(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise BadReply("bad number %r" % line[:40]) from None


# ---------------------------------------------------------------- the connection
def _connect_failure(host: str, port: int, error: OSError) -> str:
    # Worded as redis-py words it, which mgmt.py printed before this module existed.
    if isinstance(error, socket.timeout):
        return "Timeout connecting to %s:%d" % (host, port)
    if error.errno is not None and error.strerror:
        return "Error %s connecting to %s:%d. %s." % (error.errno, host, port, error.strerror)
    return "Error connecting to %s:%d. %s" % (host, port, error)


class Connection:
    """
    One TCP connection to one node, opened on first use and reopened after
    the node closed it.  ``timeout`` bounds every wait for a reply's bytes,
    ``connect_timeout`` the TCP connect; ``setup`` commands (e.g.
    ``[("READONLY",)]``) run on every new connection before the first request.
    """

    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float = 1.0, setup: Sequence[Sequence] = (),
                 auth=FROM_ENV, tls=FROM_ENV):
        self.host = host.strip("[]")
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.setup = list(setup)
        self.auth = credentials_from_env() if auth is FROM_ENV else auth
        # An ssl.SSLContext, or None for plain TCP; by default from $KVD_TLS_CACERT.
        self.tls = tls_from_env() if tls is FROM_ENV else tls
        self.sock: Optional[socket.socket] = None
        self._reader = ReplyReader()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._reader = ReplyReader()

    def connect(self) -> None:
        """Open the connection if it is not open; NotSent when that fails."""
        if self.sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as e:
            raise NotSent(_connect_failure(self.host, self.port, e)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except (OSError, ssl.SSLError) as e:
                sock.close()
                raise NotSent("TLS with %s:%d failed: %s" % (self.host, self.port, e)) from None
        sock.settimeout(self.timeout)
        self.sock = sock
        self._reader = ReplyReader()
        setup = list(self.setup)
        if self.auth:
            user, password = self.auth
            setup.insert(0, ("AUTH", password) if user is None else ("AUTH", user, password))
        for command in setup:
            try:
                self._write(encode(command))
                reply = self._read()
            except Indeterminate as e:
                raise NotSent("setup %s failed: %s" % (command[0], e)) from None
            if isinstance(reply, ReplyError):
                self.close()
                raise NotSent("setup %s refused: %s" % (command[0], reply.text))

    def _stale(self) -> bool:
        """
        Before sending: is the idle connection readable?  Then the node closed it
        (say, it restarted), reset it, or sent bytes no request of ours asked for.
        """
        try:
            if hasattr(select, "poll"):  # no FD_SETSIZE limit
                poller = select.poll()
                poller.register(self.sock, select.POLLIN | select.POLLERR | select.POLLHUP)
                return bool(poller.poll(0))
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def send(self, *args) -> None:
        """Send one command (connecting if needed)."""
        self.send_many([args])

    def send_many(self, commands: Sequence[Sequence]) -> None:
        """Send several commands in one write; NotSent only when no connection could be made."""
        data = b"".join(encode(c) for c in commands)
        if self.sock is not None and self._stale():
            self.close()  # nothing was sent on it: a fresh connection keeps the outcome certain
        self.connect()
        self._write(data)

    def receive(self, timeout: Optional[float] = None):
        """Read one reply (waiting up to ``timeout`` for it instead of ``self.timeout``); an error reply is raised."""
        if self.sock is None:
            raise Indeterminate("not connected: nothing to read")
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            reply = self._read()
        finally:
            if timeout is not None and self.sock is not None:
                self.sock.settimeout(self.timeout)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def call(self, *args):
        """Send one command and return its reply (an error reply is raised as ReplyError)."""
        self.send(*args)
        return self.receive()

    def pipeline(self, commands: Sequence[Sequence]) -> List[object]:
        """
        Send several commands in one write and read their replies in order;
        an error reply is *returned* in its place, as a ReplyError.
        """
        self.send_many(commands)
        return [self._read() for _ in commands]

    # ------------------------------------------------------------ the socket
    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except socket.timeout:
            self.close()
            raise Indeterminate("send timed out", timed_out=True) from None
        except OSError as e:
            self.close()
            raise Indeterminate("send failed: %s" % e) from None

    def _read(self):
        """One reply (a ReplyError is returned); any trouble closes the connection and is Indeterminate."""
        try:
            while True:
                reply = self._reader.get()
                if reply is not INCOMPLETE:
                    return reply
                data = self.sock.recv(65536)
                if not data:
                    raise Indeterminate("connection closed by the node")
                self._reader.feed(data)
        except Indeterminate:
            self.close()
            raise
        except socket.timeout:
            waited = self.sock.gettimeout() if self.sock is not None else self.timeout
            self.close()
            raise Indeterminate("no reply within %gs" % waited, timed_out=True) from None
        except BadReply as e:
            self.close()
            raise Indeterminate("not a RESP2 reply: %s" % e) from None
        except OSError as e:
            self.close()
            raise Indeterminate("connection lost: %s" % (e if str(e) else e.__class__.__name__)) from None


# ---------------------------------------------------------------- INFO
def parse_info(raw, numbers: bool = False) -> Dict[str, object]:
    """
    INFO's ``key:value`` lines -> dict, values as text (``numbers``: integers
    as int); section headers (``# Raft``), blank lines and lines without a
    colon are skipped, and a value keeps any colons of its own
    (``raft_leader_id:127.0.0.1:7001``).
    """
    if raw is None:
        text = ""
    elif isinstance(raw, (bytes, bytearray)):
        text = bytes(raw).decode("utf-8", "backslashreplace")
    else:
        text = str(raw)
    out: Dict[str, object] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        out[key] = int(value) if numbers and value.lstrip("-").isdigit() else value
    return out
