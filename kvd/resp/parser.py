# -*- test-case-name: tests.resp.test_parser -*-
"""
An incremental parser of Redis requests: RESP2 multibulk and inline commands.

``RespParser.feed(data)`` returns every request completed by ``data`` as a
list of byte strings, in order, interleaved with ``ProtocolError`` items for
bad input.  It does no I/O and keeps no more than one partial request.

Each error says whether the stream can be resynchronised:

* recoverable: the bad request was a whole inline line (unbalanced quotes,
  too many words); parsing continues with the next line;
* recoverable too: a well-framed bulk over ``max_bulk_bytes`` (a value too
  large for this node), or a well-framed request whose bulks add up to more
  than ``max_request_bytes`` (a command too large for one log entry); the
  rest of that request is skipped as it arrives, without being buffered, and
  one error stands for the whole request, so the client can go on;
* fatal: a bad multibulk header, a bulk length over ``max_bulk_length``
  (512 MiB, as Redis's proto-max-bulk-len), an oversized line, binary
  bytes where text was expected.  The framing can no longer be trusted, so
  the parser stops (later ``feed`` calls return nothing) and the connection
  should be closed after the error is sent, as Redis does.

The default limits come from kvd.limits: a request the parser lets through
is at most one command's worth of bytes.

Messages are Redis's own (``Protocol error: invalid bulk length`` ...).

Complete multibulk requests are read by hiredis (its C reader): a SET costs
about a third of the Python code's CPU time when each read brings one, a
seventh when reads bring 16 (``python -m kvd.resp.parser_bench``).
Everything else (inline lines, a request still arriving, anything malformed,
every error) is the Python code's, which alone decides what bytes mean.
hiredis reads replies, a wider grammar than requests, and knows none of our
limits, so what it returns is used only if, encoded as a client encodes
requests, it is exactly the bytes it read: then it is what the Python code
would have returned.  Before it reads, the input is checked to declare at
most a few list slots per byte (hiredis allocates a list when it reads its
header: ``*4294967295`` would be 32 GiB).  ``PyRespParser`` is the
Python code alone: what runs where hiredis cannot be imported, and the
benchmark's baseline.

Inline commands are split like redis-cli and Redis's ``sdssplitargs``:
words separated by spaces or tabs, ``"double quotes"`` with ``\\n \\r \\t
\\b \\a \\xHH`` escapes, ``'single quotes'`` with ``\\'``, and a closing quote
must be followed by a space or the end of the line.  Control bytes other than
tab and CR in an inline request mean the peer is not speaking text (a TLS
handshake, a binary protocol) and are rejected as soon as they arrive rather
than when a newline happens to come.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from kvd.kv.commands import parse_int64
from kvd.limits import BULK_FRAMING_BYTES, LIMITS

try:
    import hiredis
except ImportError:  # a dependency (setup.py); without it the Python code parses everything
    hiredis = None

DEFAULT_MAX_INLINE_BYTES = 64 * 1024
# Values are limited to 1 MiB; a key or a SET argument is never larger.
DEFAULT_MAX_BULK_BYTES = LIMITS.value_bytes
DEFAULT_MAX_ARGS = 1024 * 1024
# One command's worth (kvd.limits): anything bigger could never be run.
DEFAULT_MAX_REQUEST_BYTES = LIMITS.request_bytes
# "*<count>" and "$<length>" lines: 20 digits and a sign are plenty.
_MAX_HEADER_BYTES = 32


@dataclass(frozen=True)
class ProtocolError:
    message: str
    recoverable: bool


Item = Union[List[bytes], ProtocolError]

_CONTROL = bytes(b for b in range(256) if b < 0x20 and b not in (0x09, 0x0D) or b == 0x7F)
_TEXT = bytes(b for b in range(256) if b not in _CONTROL)
_SPACES = frozenset(b" \t\r\n\x0b\x0c")  # C isspace()
_ESCAPES = {ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("b"): 0x08, ord("a"): 0x07}
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DQUOTE, _SQUOTE, _BACKSLASH = 0x22, 0x27, 0x5C

_NEED_MORE = object()
_SKIP = object()


def _fatal(message: str) -> ProtocolError:
    return ProtocolError("Protocol error: " + message, recoverable=False)


# Every aggregate type byte hiredis knows (RESP2's array, RESP3's map, attribute, set, push) as '*', every
# digit as '0': "*00" then starts every aggregate header with a count of 10 or more, "*000" of 100 or more.
_LIST_HEADERS = bytes.maketrans(b"%|~>123456789", b"****000000000")
# hiredis reads at most this much at once: one read of Twisted's (a larger rest is a large request's).
_HIREDIS_MAX_BYTES = 64 * 1024


def _lists_fit(buf: bytearray, pos: int, size: int) -> bool:
    """
    Whether hiredis, which allocates a list's slots as soon as it reads its header (``*4294967295``:
    32 GiB), allocates at most some 40 bytes of lists per byte of the ``size`` at ``pos``: counts of
    0-9 anywhere (9 slots and the list, 128 bytes, for the 4 of "*9\\r\\n"), of 10-99 one per 100 bytes,
    none larger.  A digit after one of those bytes in a value counts too, which only makes it stricter.
    Requests of up to 9 arguments (of up to 99 in a pipeline of long ones) pass, the others are the
    Python code's.
    """
    headers = buf.translate(_LIST_HEADERS)
    return headers.find(b"*00", pos) < 0 or (
        headers.find(b"*000", pos) < 0 and 100 * headers.count(b"*00", pos) <= size)


class _Reader:
    """
    The process's one hiredis reader, shared by every parser: each use either leaves it at a request
    boundary with nothing pending, or replaces it, so no connection keeps hiredis's buffer (nor a
    request half read by it).  Sharing it is safe even between threads, as nothing it returns is used
    unless it re-encodes to exactly the caller's own bytes.
    """

    reader = hiredis.Reader(notEnoughData=_NEED_MORE) if hiredis is not None else None

    @classmethod
    def replace(cls) -> None:
        cls.reader = hiredis.Reader(notEnoughData=_NEED_MORE)


def _hiredis_requests(buf: bytearray, pos: int, max_args: int) -> Tuple[List[List[bytes]], int]:
    """
    The complete requests hiredis reads from ``pos`` (a list of bulk strings each, "*0" included), and
    the bytes they take; ``([], 0)`` unless, encoded as a client encodes them, they are exactly those
    bytes.  It stops before anything that is not an array, or has more than ``max_args`` items.
    """
    reader = _Reader.reader
    reader.feed(buf, pos)
    requests: List[List[bytes]] = []
    pending = True  # hiredis may hold part of a request
    try:
        while True:
            request = reader.gets()
            if request is _NEED_MORE:
                pending = False
                break
            if type(request) is not list or len(request) > max_args:
                break
            requests.append(request)
    except Exception:  # hiredis.ProtocolError, or one of its replies that Python refuses (a map keyed by a list)
        pass
    try:
        encoded = b"".join(map(hiredis.pack_command, map(tuple, requests)))
    except TypeError:  # an item that is not a string: an integer, a nil, an array ...
        encoded = None
    if encoded is None or not buf.startswith(encoded, pos):
        requests, encoded = [], b""
    if pending or len(encoded) != len(buf) - pos:
        _Reader.replace()
    return requests, len(encoded)


def split_inline_args(line: bytes) -> Optional[List[bytes]]:
    """Split an inline request like ``sdssplitargs``; None on unbalanced quotes."""
    if _DQUOTE not in line and _SQUOTE not in line:
        return line.split()
    args: List[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACES:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if i >= n:
                if in_double or in_single:
                    return None
                break
            c = line[i]
            if in_double:
                if c == _BACKSLASH and i + 3 < n and line[i + 1] == 0x78 and _HEX.issuperset(line[i + 2:i + 4]):
                    current.append(int(line[i + 2:i + 4], 16))
                    i += 4
                elif c == _BACKSLASH and i + 1 < n:
                    current.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                elif c == _DQUOTE:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        return None
                    i += 1
                    break
                else:
                    current.append(c)
                    i += 1
            elif in_single:
                if c == _BACKSLASH and i + 1 < n and line[i + 1] == _SQUOTE:
                    current.append(_SQUOTE)
                    i += 2
                elif c == _SQUOTE:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        return None
                    i += 1
                    break
                else:
                    current.append(c)
                    i += 1
            elif c in (0x20, 0x0A, 0x0D, 0x09):
                i += 1
                break
            elif c == _DQUOTE:
                in_double = True
                i += 1
            elif c == _SQUOTE:
                in_single = True
                i += 1
            else:
                current.append(c)
                i += 1
        args.append(bytes(current))


class RespParser:
    #: Whether complete multibulk requests are read by hiredis (see the module's docstring).
    use_hiredis = hiredis is not None

    def __init__(
        self,
        max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES,
        max_bulk_bytes: int = DEFAULT_MAX_BULK_BYTES,
        max_args: int = DEFAULT_MAX_ARGS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_bulk_length: int = BULK_FRAMING_BYTES,
    ):
        self.max_inline_bytes = max_inline_bytes
        self.max_bulk_bytes = max_bulk_bytes
        self.max_args = max_args
        self.max_request_bytes = max_request_bytes
        # Past this a length is broken framing, not a big request (skipping it would take forever).
        self.max_bulk_length = max(max_bulk_length, max_request_bytes)
        self._buf = bytearray()
        self._pos = 0
        # Bytes after _pos already searched for a newline (and checked for
        # binary data): keeps a line trickling in byte by byte linear.
        self._scanned = 0
        self._failed = False
        # The multibulk request being read: arguments still expected, those
        # read so far, their total size, and the length of the bulk whose
        # "$<len>" line has been read (-1 while expecting that line).
        self._expect = 0
        self._args: List[bytes] = []
        self._request_bytes = 0
        self._bulk_len = -1
        # A request with a bulk over max_bulk_bytes, or over max_request_bytes
        # in all: the error to answer once the rest of the request has been
        # skipped, and how much of the current bulk (with its CRLF) has been
        # skipped so far.
        self._oversized: Optional[ProtocolError] = None
        self._skipped = 0

    @property
    def failed(self) -> bool:
        """True once a fatal error was returned: the stream cannot be parsed further."""
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes held for a request not yet complete."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> List[Item]:
        if self._failed:
            return []
        self._buf += data
        out: List[Item] = []
        # hiredis at the first request boundary before a '*', once per feed: a rest it cannot read
        # (an inline line between requests) is the Python code's, not fed to hiredis again and again.
        fast = self.use_hiredis
        while True:
            if fast and self._expect == 0 and self._buf.startswith(b"*", self._pos):
                fast = False
                self._read_complete(out)
            item = self._next()
            if item is _NEED_MORE:
                break
            out.append(item)
            if isinstance(item, ProtocolError) and not item.recoverable:
                self._failed = True
                self._buf = bytearray()
                self._pos = 0
                return out
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        return out

    # ------------------------------------------------------------ internals

    def _read_complete(self, out: List[Item]) -> None:
        """Append the complete requests at the position that hiredis reads, and move past them."""
        buf, pos = self._buf, self._pos
        size = len(buf) - pos
        # Past the limits a request might be one to skip: the Python code's.
        if (size > _HIREDIS_MAX_BYTES or size > self.max_bulk_bytes or size > self.max_request_bytes
                or not _lists_fit(buf, pos, size)):
            return
        requests, used = _hiredis_requests(buf, pos, self.max_args)
        if used:
            out.extend(filter(None, requests))  # "*0" is an empty request, ignored
            self._pos += used
            self._scanned = 0

    def _next(self):
        while True:
            if self._expect == 0:
                if self._pos >= len(self._buf):
                    return _NEED_MORE
                if self._buf[self._pos] == 0x2A:  # '*'
                    item = self._multibulk_header()
                else:
                    item = self._inline()
                if item is _SKIP:
                    continue
                if item is not None:
                    return item
                # else a multibulk header was read: fall through to its bulks
            return self._bulks()

    def _line(self, limit: int, check_text: bool = False):
        """The next line without its '\\n', or _NEED_MORE, or None when longer than ``limit``."""
        buf, start = self._buf, self._pos
        scan_from = start + self._scanned
        nl = buf.find(b"\n", scan_from)
        end = len(buf) if nl < 0 else nl
        if check_text and bytes(buf[scan_from:end]).translate(None, _TEXT):
            return _fatal("binary data in inline request")
        if nl < 0:
            if end - start > limit:
                return None
            self._scanned = end - start
            return _NEED_MORE
        self._scanned = 0
        if nl - start > limit:
            return None
        self._pos = nl + 1
        return bytes(buf[start:nl])

    def _inline(self):
        line = self._line(self.max_inline_bytes, check_text=True)
        if line is None:
            return _fatal("too big inline request")
        if line is _NEED_MORE or isinstance(line, ProtocolError):
            return line
        if line.endswith(b"\r"):
            line = line[:-1]
        args = split_inline_args(line)
        if args is None:
            return ProtocolError("Protocol error: unbalanced quotes in request", recoverable=True)
        if not args:
            return _SKIP
        if len(args) > self.max_args:
            return ProtocolError("Protocol error: too many arguments in inline request", recoverable=True)
        return args

    def _header_number(self, too_big: str):
        """The number on a "*N" or "$N" line, _NEED_MORE, or a fatal ProtocolError."""
        line = self._line(_MAX_HEADER_BYTES)
        if line is None:
            return _fatal(too_big)
        if line is _NEED_MORE:
            return line
        if not line.endswith(b"\r"):
            return None
        return parse_int64(line[1:-1])

    def _multibulk_header(self):
        count = self._header_number("too big mbulk count string")
        if count is _NEED_MORE or isinstance(count, ProtocolError):
            return count
        if count is None or count < -1 or count > self.max_args:
            return _fatal("invalid multibulk length")
        if count <= 0:
            return _SKIP  # "*0" and "*-1" are empty requests, ignored as Redis does
        self._expect = count
        self._args = []
        self._request_bytes = 0
        self._bulk_len = -1
        self._oversized = None
        self._skipped = 0
        return None

    def _bulks(self):
        buf = self._buf
        while self._expect:
            if self._bulk_len < 0:
                if self._pos >= len(buf):
                    return _NEED_MORE
                first = buf[self._pos]
                if first != 0x24:  # '$'
                    shown = bytes((first,)).decode("utf-8", "surrogateescape")
                    return _fatal("expected '$', got '%s'" % (shown,))
                length = self._header_number("too big bulk count string")
                if length is _NEED_MORE or isinstance(length, ProtocolError):
                    return length
                if length is None or length < 0 or length > self.max_bulk_length:
                    return _fatal("invalid bulk length")
                self._request_bytes += length
                if self._oversized is None and (length > self.max_bulk_bytes
                                                or self._request_bytes > self.max_request_bytes):
                    # Framed correctly, only too big for us: skip the whole
                    # request without buffering it, answer an error, keep the
                    # connection (a client sees a reply, not a broken pipe).
                    self._oversized = self._too_big(length)
                    self._args = []
                self._bulk_len = length
            if self._oversized is not None:
                # Discard this bulk and its CRLF as they arrive.
                take = min(len(buf) - self._pos, self._bulk_len + 2 - self._skipped)
                self._pos += take
                self._skipped += take
                if self._skipped < self._bulk_len + 2:
                    return _NEED_MORE
                self._skipped = 0
                self._bulk_len = -1
                self._expect -= 1
                continue
            end = self._pos + self._bulk_len
            if len(buf) < end + 2:
                return _NEED_MORE
            if buf[end:end + 2] != b"\r\n":
                return _fatal("expected CRLF after bulk data")
            self._args.append(bytes(buf[self._pos:end]))
            self._pos = end + 2
            self._bulk_len = -1
            self._expect -= 1
        args, self._args = self._args, []
        if self._oversized is not None:
            error, self._oversized = self._oversized, None
            return error
        return args

    def _too_big(self, length: int) -> ProtocolError:
        if length > self.max_bulk_bytes:
            return ProtocolError(
                "value of %d bytes is over this node's limit of %d bytes (--value-max-bytes); "
                "the command was not run" % (length, self.max_bulk_bytes),
                recoverable=True,
            )
        return ProtocolError(
            "request of at least %d bytes is over this node's limit of %d bytes for one command; "
            "the command was not run: split it" % (self._request_bytes, self.max_request_bytes),
            recoverable=True,
        )


class PyRespParser(RespParser):
    """The Python code alone: what parses where hiredis cannot be imported, and the benchmark's baseline."""

    use_hiredis = False
