# -*- test-case-name: tests.node.test_cli -*-
"""
Talking to one kvd node over its client port (the Redis protocol), for
mgmt.py: a small connection wrapper, the mapping of every failure to a
CliError of the right kind, value formatting, and the client role's
commands (read, write, update, delete).

Every request goes through kvd.resp.client (the package's one client of
the Redis protocol), which gives every reply exactly as the node sent it:
``-MOVED host:port`` (from KVD.JOIN/KVD.REMOVE) and every other error reply
arrive as their whole line; there are no retries and no handshake, so one
command is one request and a timeout means exactly "this one request's
outcome is unknown", while a connection that could not be made means "not
sent".

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from kvd.errors import Code
from kvd.address import AddressError, split_host_port
from kvd.cli.errors import (
    NO_QUORUM,
    SERVER_ERROR,
    TIMEOUT,
    UNREACHABLE,
    USAGE,
    CliError,
    key_not_found,
)
from kvd.resp.client import Connection, Indeterminate, NotSent, ReplyError, parse_info

#: Seconds to wait for a TCP connection: a live node on loopback or a LAN answers at once.
CONNECT_TIMEOUT_S = 2.0
#: Seconds to wait for an answer: more than the node's own request timeout
#: (5 s by default) so the node's -TIMEOUT/-NOLEADER reaches us before ours fires.
DEFAULT_TIMEOUT_S = 10.0
#: Keys per SCAN page and GETs per pipelined batch in ``read`` of every key.
PAGE_SIZE = 1000

HELP_LIST = "see: python3 mgmt.py -r server -c list"


def normalize_host(text: str) -> Tuple[str, int, str]:
    """``"127.0.0.1:7001"`` -> (host, port, "host:port"); ``"7001"`` means 127.0.0.1.  Bad input is a USAGE error."""
    try:
        host, port = split_host_port(text)
    except AddressError as e:
        raise CliError(USAGE, "bad -h %r: %s; write it as host:port, e.g. 127.0.0.1:7001" % (text, e)) from None
    return host, port, "%s:%d" % (host, port)


#: Where to dial a node id instead of the id itself: ``"node1:7001"`` -> ``("127.0.0.1", 27001)``.
#: Only ``use_routes`` changes it (``mgmt.py --docker`` routes to the containers' published ports).
_routes: Dict[str, Tuple[str, int]] = {}


def use_routes(routes: Dict[str, Tuple[str, int]]) -> None:
    """From now on, dial each node id in ``routes`` at the address it maps to (and no other id specially)."""
    _routes.clear()
    _routes.update(routes)


def dial_address(address: str) -> Tuple[str, int]:
    """Where to connect for a node's address (its route, if it has one); a USAGE CliError for a bad address."""
    host, port, normal = normalize_host(address)
    return _routes.get(normal, (host, port))


def routed(address: str) -> bool:
    """True when ``address`` (a node id) is dialled through a route."""
    return address in _routes


class NodeClient:
    """One connection to one node; every failure comes out as a CliError."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.host, self.port, self.address = normalize_host(address)
        self.host, self.port = _routes.get(self.address, (self.host, self.port))
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self._conn: Optional[Connection] = None

    # ------------------------------------------------------------ plumbing
    def _connection(self) -> Connection:
        if self._conn is None:
            conn = Connection(self.host, self.port, timeout=self.timeout, connect_timeout=self.connect_timeout)
            try:
                conn.connect()
            except NotSent as e:
                raise unreachable(self.address, e) from None
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, *args):
        """Send one command; return its reply or raise CliError."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence]) -> List:
        """
        Send several commands in one write and read their replies in order
        (the node answers in order); one network round trip per batch.
        """
        try:
            replies = self._connection().pipeline(commands)
        except NotSent as e:  # the node closed our idle connection and does not take a new one
            self.close()
            raise unreachable(self.address, e) from None
        except Indeterminate as e:
            self.close()
            if e.timed_out:
                raise CliError(
                    TIMEOUT,
                    "no answer from %s within %gs: the outcome is unknown (a write may or may not have been applied); "
                    "read the key to check, or retry with a longer --timeout" % (self.address, self.timeout),
                ) from None
            raise CliError(
                TIMEOUT,
                "the connection to %s broke before it answered (%s): the outcome is unknown; %s"
                % (self.address, _short(e), HELP_LIST),
            ) from None
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise node_error(self.address, reply.text)
        return replies

    def raw_error(self, *args) -> Tuple[object, Optional[str]]:
        """Like call, but an error reply is returned as text ``(None, "CODE message")`` instead of raised."""
        try:
            return self._connection().call(*args), None
        except ReplyError as e:
            return None, e.text
        except NotSent as e:
            self.close()
            raise unreachable(self.address, e) from None
        except Indeterminate as e:
            self.close()
            if e.timed_out:
                raise CliError(TIMEOUT, "no answer from %s within %gs: the outcome is unknown" % (self.address, self.timeout)) from None
            raise CliError(TIMEOUT, "the connection to %s broke before it answered (%s)" % (self.address, _short(e))) from None

    # ------------------------------------------------------------ node views
    def ping(self) -> bool:
        return self.call("PING") in (b"PONG", "PONG")

    def info(self, section: str = "raft") -> Dict[str, str]:
        return parse_info(self.call("INFO", section))

    def members(self) -> List[dict]:
        raw = self.call("KVD.MEMBERS")
        try:
            rows = json.loads(to_text(raw))
        except ValueError:
            raise CliError(SERVER_ERROR, "%s answered KVD.MEMBERS with something that is not JSON: %r" % (self.address, raw[:80])) from None
        if not isinstance(rows, list):
            raise CliError(SERVER_ERROR, "%s answered KVD.MEMBERS with %r, not a list" % (self.address, type(rows).__name__))
        return rows


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else error.__class__.__name__


def unreachable(address: str, error: BaseException) -> CliError:
    return CliError(
        UNREACHABLE,
        "cannot reach a node at %s (%s); is it running and is -h its client port? %s" % (address, _short(error), HELP_LIST),
    )


def node_error(address: str, text: str) -> CliError:
    """Map an error reply to its kind; the node's own words are kept."""
    code, _, rest = text.partition(" ")
    if code in (Code.NOLEADER, Code.TRYAGAIN):
        return CliError(
            NO_QUORUM,
            "no leader at %s right now, so the command was NOT applied (%s %s); a majority of the voters must be up: "
            "restart stopped nodes (%s) and retry" % (address, code, rest or "no quorum", HELP_LIST),
        )
    if code == Code.TIMEOUT:
        return CliError(
            TIMEOUT,
            "%s timed out, the outcome is unknown (%s %s); read the key to check, and %s" % (address, code, rest or "no commit in time", HELP_LIST),
        )
    if code in ("NOAUTH", "WRONGPASS", "NOPERM"):
        return CliError(
            SERVER_ERROR,
            "%s refused the command: %s; give mgmt.py the password in the environment: KVD_PASSWORD or "
            "KVD_PASSWORD_FILE (a file whose first line is it), and KVD_USER for a user other than default"
            % (address, text),
        )
    return CliError(SERVER_ERROR, "%s answered with an error: %s" % (address, text))


# ---------------------------------------------------------------- values
def to_text(value) -> str:
    """Bytes from the node -> printable text: UTF-8, with backslash escapes for bytes that are not."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def to_bytes(text: str) -> bytes:
    """A command-line argument -> the exact bytes the user typed (POSIX argv is decoded with surrogateescape)."""
    return text.encode("utf-8", errors="surrogateescape")


def format_pairs(pairs: Iterable[Tuple[bytes, bytes]], as_json: bool) -> str:
    pairs = list(pairs)
    if as_json:
        return json.dumps({to_text(k): to_text(v) for k, v in pairs}, indent=2, sort_keys=True, ensure_ascii=False)
    if not pairs:
        return "(no keys)"
    return "\n".join("%s: %s" % (to_text(k), to_text(v)) for k, v in pairs)


# ---------------------------------------------------------------- the client role
def read_key(client: NodeClient, key: str) -> bytes:
    value = client.call("GET", to_bytes(key))
    if value is None:
        raise key_not_found(key)
    return value


def scan_keys(client: NodeClient, page: int = PAGE_SIZE, max_pages: int = 10_000_000) -> List[bytes]:
    """Every key, through SCAN pages (a key may appear in two pages: SCAN promises at least once)."""
    keys = set()
    cursor = b"0"
    for _ in range(max_pages):  # bounded: a node that never returns cursor 0 cannot hang us
        reply = client.call("SCAN", cursor, "MATCH", "*", "COUNT", page)
        try:
            cursor, batch = reply[0], reply[1]
        except (TypeError, IndexError):
            raise CliError(SERVER_ERROR, "%s answered SCAN with %r, not [cursor, keys]" % (client.address, reply)) from None
        keys.update(batch)
        if cursor in (b"0", "0", 0):
            return sorted(keys)
    raise CliError(SERVER_ERROR, "%s's SCAN never finished after %d pages" % (client.address, max_pages))


def read_all(client: NodeClient, page: int = PAGE_SIZE) -> List[Tuple[bytes, bytes]]:
    """(key, value) for every key, sorted by key; GETs go in pipelined batches."""
    keys = scan_keys(client, page)
    pairs = []
    for start in range(0, len(keys), page):
        batch = keys[start : start + page]
        values = client.pipeline([("GET", k) for k in batch])
        # A key deleted between SCAN and GET is simply not there any more.
        pairs.extend((k, v) for k, v in zip(batch, values) if v is not None)
    return pairs


def write_key(client: NodeClient, key: str, value: str) -> None:
    reply = client.call("SET", to_bytes(key), to_bytes(value))
    if reply not in (b"OK", "OK", True):
        raise CliError(SERVER_ERROR, "%s answered SET with %r" % (client.address, reply))


def update_key(client: NodeClient, key: str, value: str) -> None:
    # XX makes "only if it exists" one atomic command: no read-then-write race.
    reply = client.call("SET", to_bytes(key), to_bytes(value), "XX")
    if reply is None:
        raise key_not_found(key)
    if reply not in (b"OK", "OK", True):
        raise CliError(SERVER_ERROR, "%s answered SET XX with %r" % (client.address, reply))


def delete_key(client: NodeClient, key: str) -> None:
    reply = client.call("DEL", to_bytes(key))
    if reply == 0:
        raise key_not_found(key)
    if not isinstance(reply, int):
        raise CliError(SERVER_ERROR, "%s answered DEL with %r" % (client.address, reply))

