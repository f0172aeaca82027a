# -*- test-case-name: tests.node.test_cli -*-
"""
Talking to one kvd node over its client port (the Redis protocol), for
mgmt.py: a small connection wrapper, the mapping of every failure to a
CliError of the right kind, value formatting, and the client role's
commands (read, write, update, delete).

We use redis-py's low-level ``redis.Connection`` rather than ``redis.Redis``
because we need every reply exactly as the node sent it:

- ``-MOVED host:port`` (from KVD.JOIN/KVD.REMOVE) must reach us as text;
  redis-py's own parser would try to parse it as a Redis Cluster redirect
  ("MOVED slot host:port") and fail.  Our parser maps no error prefix to a
  special class, so every error is a ResponseError carrying the whole line.
- No retries, no HELLO (redis-py 8 speaks RESP3 by default), no CLIENT
  SETINFO: one command is one request, so a timeout means exactly "this one
  request's outcome is unknown".

Allowed imports: the standard library, redis, kvd.cli_errors, kvd.address.
"""

from __future__ import annotations

import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kvd.address import AddressError, split_host_port
from kvd.cli_errors import (
    NO_QUORUM,
    SERVER_ERROR,
    TIMEOUT,
    UNREACHABLE,
    USAGE,
    CliError,
    key_not_found,
)

try:  # redis >= 5 keeps its parsers here
    from redis._parsers import _RESP2Parser as _BaseParser
except ImportError:  # pragma: no cover - older redis-py
    from redis.connection import PythonParser as _BaseParser  # type: ignore


class _PlainErrorParser(_BaseParser):
    """RESP2 parser that turns every error reply into a plain ResponseError with the full text."""

    EXCEPTION_CLASSES: dict = {}


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
#: Filled by ``mgmt.py --docker`` (kvd.cli_docker) with the containers' published ports.
ROUTES: Dict[str, Tuple[str, int]] = {}


class NodeClient:
    """One connection to one node; every failure comes out as a CliError."""

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S):
        self.host, self.port, self.address = normalize_host(address)
        self.host, self.port = ROUTES.get(self.address, (self.host, self.port))
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self._conn: Optional[redis.Connection] = None

    # ------------------------------------------------------------ plumbing
    def _connection(self) -> redis.Connection:
        if self._conn is not None:
            return self._conn
        kwargs = dict(
            host=self.host,
            port=self.port,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.connect_timeout,
            parser_class=_PlainErrorParser,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            driver_info=None,
        )
        try:
            conn = redis.Connection(**kwargs)
        except TypeError:  # pragma: no cover - redis-py before 7 has no driver_info
            del kwargs["driver_info"]
            conn = redis.Connection(lib_name=None, lib_version=None, **kwargs)
        try:
            conn.connect()
        except (redis.RedisError, OSError) as e:
            raise unreachable(self.address, e) from None
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.disconnect()
            except Exception:  # closing a dead socket must never mask the real outcome
                pass
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
        conn = self._connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            replies = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as e:
                    replies.append(e)
        except redis.TimeoutError:
            self.close()
            raise CliError(
                TIMEOUT,
                "no answer from %s within %gs: the outcome is unknown (a write may or may not have been applied); "
                "read the key to check, or retry with a longer --timeout" % (self.address, self.timeout),
            ) from None
        except (redis.ConnectionError, OSError) as e:
            self.close()
            raise CliError(
                TIMEOUT,
                "the connection to %s broke before it answered (%s): the outcome is unknown; %s"
                % (self.address, _short(e), HELP_LIST),
            ) from None
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise node_error(self.address, str(reply))
        return replies

    def raw_error(self, *args) -> Tuple[object, Optional[str]]:
        """Like call, but an error reply is returned as text ``(None, "CODE message")`` instead of raised."""
        conn = self._connection()
        try:
            conn.send_command(*args)
            return conn.read_response(), None
        except redis.ResponseError as e:
            return None, str(e)
        except redis.TimeoutError:
            self.close()
            raise CliError(TIMEOUT, "no answer from %s within %gs: the outcome is unknown" % (self.address, self.timeout)) from None
        except (redis.ConnectionError, OSError) as e:
            self.close()
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
    if code in ("NOLEADER", "TRYAGAIN"):
        return CliError(
            NO_QUORUM,
            "no leader at %s right now, so the command was NOT applied (%s %s); a majority of the voters must be up: "
            "restart stopped nodes (%s) and retry" % (address, code, rest or "no quorum", HELP_LIST),
        )
    if code == "TIMEOUT":
        return CliError(
            TIMEOUT,
            "%s timed out, the outcome is unknown (%s %s); read the key to check, and %s" % (address, code, rest or "no commit in time", HELP_LIST),
        )
    return CliError(SERVER_ERROR, "%s answered with an error: %s" % (address, text))


def parse_info(raw) -> Dict[str, str]:
    """INFO's ``key:value`` lines -> dict (section headers and blank lines skipped)."""
    out: Dict[str, str] = {}
    for line in to_text(raw).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key] = value
    return out


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

