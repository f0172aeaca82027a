"""
A minimal Redis-protocol client whose failures say exactly how far a request
got, so each operation gets the right outcome:

- ``NotSent``: the connection could not be made (refused, unreachable,
  connect timeout): nothing was sent, the command certainly did not run;
- ``Indeterminate``: the request may have reached the node but no reply came
  (socket timeout, reset, EOF, a protocol error): unknown;
- ``ReplyError``: the node answered with an error (``code`` is its first word);
- otherwise the reply: bytes, int, None (nil), a list, or ``Simple("OK")``.

No retries, no pooling, no handshake: one command, one reply.  redis-py would
do the same job but retries by default and runs commands of its own on
connect; this keeps every byte on the wire the harness's own.
"""

from __future__ import annotations

import select
import socket
from typing import List, Optional


class NotSent(Exception):
    pass


class Indeterminate(Exception):
    pass


class ReplyError(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text
        self.code = text.split(" ", 1)[0] if text else ""


class Simple(str):
    """A simple-string reply (+OK)."""


def encode(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Connection:
    def __init__(self, host: str, port: int, timeout: float, connect_timeout: float = 1.0, setup=()):
        self.setup = list(setup)  # commands run on every new connection before the first request
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.sock: Optional[socket.socket] = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    def connect(self) -> None:
        if self.sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as e:
            raise NotSent("cannot connect to %s:%d: %s" % (self.host, self.port, e)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        self.sock = sock
        self.buf = b""
        for command in self.setup:
            try:
                self.sock.sendall(encode(command))
                reply = self._reply()
            except (OSError, ValueError, IndexError) as e:
                self.close()
                raise NotSent("setup %s failed: %s" % (command[0], e)) from None
            if isinstance(reply, ReplyError):
                self.close()
                raise NotSent("setup %s refused: %s" % (command[0], reply.text))

    def _stale(self) -> bool:
        """Before sending: has the node already closed this connection (e.g. it was restarted)?"""
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return False
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) is not None  # EOF, or bytes nobody asked for
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def send(self, *args) -> None:
        """Connect if needed and send one command (NotSent only when the connection failed)."""
        if self.sock is not None and self._stale():
            self.close()  # nothing was sent on it: a fresh connection keeps the outcome certain
        self.connect()
        try:
            self.sock.sendall(encode(args))
        except OSError as e:
            self.close()
            raise Indeterminate("send failed: %s" % e) from None

    def receive(self, timeout: Optional[float] = None):
        """Read one reply; any trouble closes the connection and is Indeterminate."""
        try:
            if timeout is not None:
                self.sock.settimeout(timeout)
            reply = self._reply()
            if timeout is not None:
                self.sock.settimeout(self.timeout)
        except (OSError, ValueError, IndexError) as e:
            self.close()
            raise Indeterminate("no reply: %s" % (e.__class__.__name__ if str(e) == "" else e)) from None
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def call(self, *args):
        self.send(*args)
        return self.receive()

    # ------------------------------------------------------------ parsing
    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                return line
            self._fill()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise OSError("connection closed by the node")
        self.buf += data

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return Simple(rest.decode("utf-8", "replace"))
        if kind == b"-":
            return ReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            items: List[object] = []
            for _ in range(n):
                items.append(self._reply())
            return items
        raise ValueError("unexpected reply %r" % line[:40])


def parse_info(text: bytes) -> dict:
    out = {}
    for line in text.decode("utf-8", "replace").splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out
