"""Tests for kvd.resp.parser: incremental RESP2 multibulk and inline request parsing."""

import random

import pytest
from redis.connection import PythonRespSerializer

import kvd.resp.parser
from kvd.resp.parser import ProtocolError, PyRespParser, RespParser, split_inline_args


def feed_bytewise(parser, data):
    out = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i:i + 1]))
    return out


def fatal(message):
    return ProtocolError("Protocol error: " + message, recoverable=False)


# -------------------------------------------------------------- multibulk


def test_multibulk_request():
    """A standard RESP array of bulk strings becomes a list of byte strings."""
    assert RespParser().feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n") == [[b"SET", b"k", b"hello"]]


def test_multibulk_is_binary_safe():
    """Bulk payloads may contain CR, LF, NUL and any byte; lengths, not delimiters, frame them."""
    payload = b"a\r\nb\x00\xff*$"
    data = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(payload), payload)
    assert RespParser().feed(data) == [[b"GET", payload]]


def test_empty_bulk_argument():
    """A zero-length bulk is an empty argument, not a missing one."""
    assert RespParser().feed(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n") == [[b"GET", b""]]


def test_every_split_point_gives_the_same_requests():
    """Feeding a pipeline one byte at a time yields exactly what feeding it whole yields."""
    data = (
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        b"PING\r\n"
        b"*3\r\n$3\r\nSET\r\n$2\r\n\r\n\r\n$0\r\n\r\n"
        b"set a \"b c\"\n"
        b"*0\r\n"
        b"\r\n"
        b"*1\r\n$4\r\nPING\r\n"
    )
    whole = RespParser().feed(data)
    assert whole == [[b"GET", b"k"], [b"PING"], [b"SET", b"\r\n", b""], [b"set", b"a", b"b c"], [b"PING"]]
    assert feed_bytewise(RespParser(), data) == whole


def test_null_and_empty_arrays_are_ignored():
    """*0 and *-1 are empty requests that Redis silently skips; parsing continues after them."""
    assert RespParser().feed(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n") == [[b"PING"]]


def test_many_pipelined_requests_in_one_feed():
    """A large pipeline in one read is fully parsed, in order."""
    data = b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(1000))
    requests = RespParser().feed(data)
    assert [r[1] for r in requests] == [b"%d" % i for i in range(1000)]


def test_partial_request_is_held_and_buffer_compacts():
    """A partial request waits for more data; consumed bytes are not kept around."""
    parser = RespParser()
    assert parser.feed(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$10\r\nabc") == [[b"PING"]]
    assert parser.buffered <= len(b"abc")
    assert parser.feed(b"defghij\r\n") == [[b"GET", b"abcdefghij"]]
    assert parser.buffered == 0


def test_large_bulk_in_small_chunks():
    """A 1 MiB value trickling in 1 KiB at a time arrives intact."""
    value = random.Random(1).randbytes(1024 * 1024)
    data = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (len(value), value)
    parser = RespParser()
    out = []
    for i in range(0, len(data), 1024):
        out.extend(parser.feed(data[i:i + 1024]))
    assert out == [[b"SET", b"k", value]]


# --------------------------------------------------------- bad multibulk


@pytest.mark.parametrize(
    "data,message",
    [
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*-2\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*\r\n", "invalid multibulk length"),
        (b"*1\n", "invalid multibulk length"),  # a header must end in CRLF
        (b"*99999999999999999999999\r\n", "invalid multibulk length"),
        (b"*1" + b"1" * 40, "too big mbulk count string"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$1.5\r\n", "invalid bulk length"),
        (b"*1\r\n$99999999999999999999\r\n", "invalid bulk length"),
        (b"*1\r\n$" + b"9" * 40, "too big bulk count string"),
        (b"*1\r\nPING\r\n", "expected '$', got 'P'"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n$4\r\nPINGxx", "expected CRLF after bulk data"),
        (b"*2\r\n$3\r\nGET\r\n\x16\x03\x01", "expected '$', got '\x16'"),
        (b"*2\r\n$3\r\nGET\r\n\xff", "expected '$', got '\udcff'"),  # the raw byte goes back
    ],
)
def test_bad_multibulk_is_fatal(data, message):
    """Each malformed multibulk gives Redis's error text and stops the parser for good."""
    parser = RespParser()
    assert parser.feed(data) == [fatal(message)]
    assert parser.failed
    assert parser.feed(b"*1\r\n$4\r\nPING\r\n") == []


def over_limit(size, limit):
    return ProtocolError(
        "value of %d bytes is over this node's limit of %d bytes (--value-max-bytes); the command was not run"
        % (size, limit),
        recoverable=True,
    )


def test_bulk_over_limit_is_skipped_and_answered():
    """An oversized value is an error for its request only: the rest of it is skipped, parsing goes on."""
    parser = RespParser(max_bulk_bytes=100)
    assert parser.feed(b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$101\r\n") == []
    assert parser.feed(b"x" * 60) == []
    assert parser.buffered == 0  # skipped as it arrives, never buffered
    assert parser.feed(b"x" * 41 + b"\r\n$2\r\nNX\r\n*1\r\n$4\r\nPING\r\n") == [
        over_limit(101, 100), [b"PING"]]
    assert not parser.failed
    ok = RespParser(max_bulk_bytes=100)
    assert ok.feed(b"*1\r\n$100\r\n" + b"x" * 100 + b"\r\n") == [[b"x" * 100]]


def test_oversized_bulk_skipped_byte_by_byte():
    """The skip survives any split of the input, including inside the CRLF after the payload."""
    data = b"*2\r\n$3\r\nSET\r\n$12\r\n" + b"y" * 12 + b"\r\nPING\r\n"
    parser = RespParser(max_bulk_bytes=10)
    items = []
    for i in range(len(data)):
        items += parser.feed(data[i:i + 1])
    assert items == [over_limit(12, 10), [b"PING"]]


def test_default_limit_admits_a_one_mebibyte_value():
    """The default bulk limit lets a full 1 MiB value through and refuses one byte more (not fatally)."""
    parser = RespParser()
    assert parser.feed(b"*1\r\n$%d\r\n" % (1024 * 1024)) == []
    big = RespParser()
    assert big.feed(b"*1\r\n$%d\r\n" % (1024 * 1024 + 1) + b"z" * (1024 * 1024 + 1) + b"\r\n") == [
        over_limit(1024 * 1024 + 1, 1024 * 1024)]


def test_bulk_over_the_framing_bound_is_fatal():
    """A bulk length past the framing bound (Redis's proto-max-bulk-len) is not trusted: fatal; under it, skipped."""
    parser = RespParser(max_bulk_bytes=10, max_request_bytes=1000, max_bulk_length=5000)
    assert parser.feed(b"*1\r\n$5001\r\n") == [fatal("invalid bulk length")]
    skipped = RespParser(max_bulk_bytes=10, max_request_bytes=1000, max_bulk_length=5000)
    assert skipped.feed(b"*1\r\n$5000\r\n" + b"x" * 5000 + b"\r\n*1\r\n$4\r\nPING\r\n") == [
        over_limit(5000, 10), [b"PING"]]
    assert RespParser().feed(b"*1\r\n$%d\r\n" % (512 * 1024 * 1024 + 1)) == [fatal("invalid bulk length")]


def test_too_many_args_is_fatal():
    """An argument count above max_args is refused at the header, as Redis does."""
    parser = RespParser(max_args=3)
    assert parser.feed(b"*4\r\n") == [fatal("invalid multibulk length")]
    assert RespParser(max_args=3).feed(b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n") == [[b"a", b"b", b"c"]]


def test_request_size_limit():
    """
    The sum of a request's bulks is bounded even when each bulk is within its own limit: past it the
    rest of the request is skipped unbuffered and one recoverable error answers it (a command too big
    for one log entry); the next request parses as usual.
    """
    parser = RespParser(max_bulk_bytes=10, max_request_bytes=15)
    assert parser.feed(b"*3\r\n$10\r\n0123456789\r\n$10\r\n") == []
    assert parser.buffered <= 15 + 64  # nothing of the request is kept
    error = ProtocolError("request of at least 20 bytes is over this node's limit of 15 bytes for one command; "
                          "the command was not run: split it", recoverable=True)
    assert parser.feed(b"0123456789\r\n$3\r\nabc\r\n*1\r\n$4\r\nPING\r\n") == [error, [b"PING"]]
    exact = RespParser(max_bulk_bytes=10, max_request_bytes=15)
    assert exact.feed(b"*2\r\n$10\r\n0123456789\r\n$5\r\n01234\r\n") == [[b"0123456789", b"01234"]]


def test_requests_before_a_fatal_error_are_still_returned():
    """Good requests that precede the garbage in the same read are delivered, then the error."""
    items = RespParser().feed(b"*1\r\n$4\r\nPING\r\nPING\r\n*x\r\n*1\r\n$4\r\nPING\r\n")
    assert items == [[b"PING"], [b"PING"], fatal("invalid multibulk length")]


# ---------------------------------------------------------------- inline


@pytest.mark.parametrize(
    "line,args",
    [
        (b"SET k v", [b"SET", b"k", b"v"]),
        (b"  SET \t k   v  ", [b"SET", b"k", b"v"]),
        (b'SET k "hello world"', [b"SET", b"k", b"hello world"]),
        (b'SET k "a\\nb\\r\\t\\b\\a"', [b"SET", b"k", b"a\nb\r\t\b\x07"]),
        (b'SET k "\\x00\\xff\\x41"', [b"SET", b"k", b"\x00\xffA"]),
        (b'SET k "\\xZZ"', [b"SET", b"k", b"xZZ"]),  # not hex: the backslash just escapes 'x'
        (b'SET k "say \\"hi\\""', [b"SET", b"k", b'say "hi"']),
        (b"SET k 'it\\'s'", [b"SET", b"k", b"it's"]),
        (b"SET k 'no \\n escapes'", [b"SET", b"k", b"no \\n escapes"]),
        (b'SET k ""', [b"SET", b"k", b""]),
        (b'SET a"b c"d', None),  # a closing quote must be followed by a space
        (b'SET k a"b c"', [b"SET", b"k", b"ab c"]),
        (b'SET k "unterminated', None),
        (b"SET k 'unterminated", None),
        (b'SET k "ends in backslash\\', None),
        (b"caf\xc3\xa9 \xff", [b"caf\xc3\xa9", b"\xff"]),
        (b"", []),
    ],
)
def test_split_inline_args_like_redis_cli(line, args):
    """Inline splitting follows sdssplitargs: quotes, escapes, and unbalanced-quote detection."""
    assert split_inline_args(line) == args


def test_inline_lines_with_lf_or_crlf():
    """Inline commands end at LF, with an optional CR before it."""
    assert RespParser().feed(b"PING\nECHO a\r\nGET k\n") == [[b"PING"], [b"ECHO", b"a"], [b"GET", b"k"]]


def test_empty_inline_lines_are_ignored():
    """Blank lines (as a telnet user hitting enter) produce nothing."""
    assert RespParser().feed(b"\r\n\n   \r\n\t\nPING\r\n") == [[b"PING"]]


def test_unbalanced_quotes_are_recoverable():
    """An unbalanced inline line is reported and parsing resumes at the next line."""
    parser = RespParser()
    items = parser.feed(b'SET k "oops\r\nPING\r\n')
    assert items == [ProtocolError("Protocol error: unbalanced quotes in request", recoverable=True), [b"PING"]]
    assert not parser.failed


def test_inline_over_limit_is_fatal_even_without_newline():
    """A line that outgrows the limit is refused as soon as it does, not when (if ever) it ends."""
    parser = RespParser(max_inline_bytes=100)
    assert parser.feed(b"A" * 100) == []
    assert parser.feed(b"A") == [fatal("too big inline request")]
    parser = RespParser(max_inline_bytes=100)
    assert parser.feed(b"A" * 150 + b"\r\n") == [fatal("too big inline request")]


def test_inline_at_the_limit_is_fine():
    """A line of exactly max_inline_bytes is accepted."""
    line = b"ECHO " + b"x" * 95
    assert RespParser(max_inline_bytes=100).feed(line + b"\n") == [[b"ECHO", b"x" * 95]]


def test_too_many_inline_args_is_recoverable():
    """An inline line with too many words is refused, and the next line is still served."""
    parser = RespParser(max_args=3)
    items = parser.feed(b"a b c d\nPING\n")
    assert items == [ProtocolError("Protocol error: too many arguments in inline request", recoverable=True),
                     [b"PING"]]


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x02\x00", b"GET \x00k\n", b"\x1b[A\n", b"SET k \x7f\n"])
def test_binary_garbage_inline_is_fatal_immediately(garbage):
    """Control bytes in an inline request end the stream at once, newline or not (e.g. a TLS hello)."""
    parser = RespParser()
    assert parser.feed(garbage) == [fatal("binary data in inline request")]
    assert parser.failed


def test_tabs_and_high_bytes_are_text():
    """Tabs and non-ASCII bytes (UTF-8 text) are not mistaken for binary garbage."""
    assert RespParser().feed(b"SET\tk\tJos\xc3\xa9\r\n") == [[b"SET", b"k", b"Jos\xc3\xa9"]]


# ------------------------------------------------------- interop and fuzz


def test_round_trip_with_redis_py_serializer():
    """Whatever redis-py's own serializer packs, including large and binary args, parses back exactly."""
    rng = random.Random(42)
    serializer = PythonRespSerializer(buffer_cutoff=6000, encode=lambda v: v)
    commands = []
    for _ in range(200):
        n = rng.randint(1, 6)
        args = [b"CMD"] + [rng.randbytes(rng.choice([0, 1, 10, 7000])) for _ in range(n)]
        commands.append(args)
    data = b"".join(b"".join(serializer.pack(*cmd)) for cmd in commands)
    parser = RespParser()
    out = []
    for i in range(0, len(data), 4096):
        out.extend(parser.feed(data[i:i + 4096]))
    assert out == commands


def test_fuzz_never_raises():
    """Random bytes produce only requests and ProtocolErrors, and nothing after a fatal one."""
    rng = random.Random(3)
    pieces = [b"*", b"$", b"\r\n", b"\n", b"1", b"-1", b"3", b"abc", b'"', b"'", b"\\x4", b" ", b"\x00", b"PING"]
    for _ in range(3000):
        parser = RespParser(max_inline_bytes=64, max_bulk_bytes=16, max_args=4)
        seen_fatal = False
        for _ in range(rng.randint(1, 10)):
            chunk = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
            if rng.random() < 0.2:
                chunk += bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 8)))
            items = parser.feed(chunk)
            assert not (seen_fatal and items)
            for item in items:
                if isinstance(item, ProtocolError):
                    assert item.message.startswith("Protocol error: ")
                    seen_fatal = seen_fatal or not item.recoverable
                else:
                    assert isinstance(item, list) and item and all(isinstance(a, bytes) for a in item)
        assert parser.failed == seen_fatal


# ------------------------------------------------------------- hiredis

needs_hiredis = pytest.mark.skipif(not RespParser.use_hiredis, reason="hiredis cannot be imported")


@pytest.fixture
def hiredis_reads(monkeypatch):
    """The bytes hiredis's results were used for, one number per attempt."""
    used = []
    read = kvd.resp.parser._hiredis_requests

    def spy(buf, pos, max_args):
        requests, size = read(buf, pos, max_args)
        used.append(size)
        return requests, size

    monkeypatch.setattr(kvd.resp.parser, "_hiredis_requests", spy)
    return used


def set_request(i):
    return b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$100\r\n%s\r\n" % (i, b"v" * 100)


@needs_hiredis
def test_hiredis_reads_complete_requests(hiredis_reads):
    """A read of whole requests is hiredis's; a request cut by the read's end is the Python code's."""
    pipeline = b"".join(set_request(i) for i in range(16))
    parser = RespParser()
    assert parser.feed(pipeline) == [[b"SET", b"key:%012d" % i, b"v" * 100] for i in range(16)]
    assert hiredis_reads == [len(pipeline)]
    assert parser.feed(set_request(16) + set_request(17)[:20]) == [[b"SET", b"key:000000000016", b"v" * 100]]
    assert hiredis_reads[-1] == len(set_request(16)) and parser.buffered <= 20
    # The rest of the cut request completes in Python, and hiredis reads the requests after it.
    assert parser.feed(set_request(17)[20:] + set_request(18)) == [
        [b"SET", b"key:000000000017", b"v" * 100], [b"SET", b"key:000000000018", b"v" * 100]]
    assert hiredis_reads[-1] == len(set_request(18))


@needs_hiredis
@pytest.mark.parametrize("data", [
    b"*1\r\n+PING\r\n",  # a simple string where a bulk must be
    b"*1\r\n(123\r\n",  # RESP3 big number
    b"*1\r\n=8\r\ntxt:PING\r\n",  # RESP3 verbatim string
    b"*2\r\n$3\r\nGET\r\n:1\r\n",
    b"*2\r\n$3\r\nGET\r\n#t\r\n",
    b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nk\r\n",  # nested array
    b"*1\r\n$-1\r\n",
    b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n",  # hiredis does not look at the CRLF after a bulk
    b"~1\r\n$4\r\nPING\r\n",  # RESP3 set: inline lines to Redis
    b">1\r\n$4\r\nPING\r\n",
    b"%1\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"%1\r\n*0\r\n$1\r\nb\r\n",  # a map keyed by a list: Python refuses it inside hiredis
    b"*1\r\n$4\r\nPING\r\n*-1\r\n*0\r\n*1\r\n$4\r\nPING\r\n",
    b"*1\r\n$4\r\nPING\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
])
def test_what_hiredis_reads_beyond_redis_requests_means_what_it_means_to_redis(data):
    """hiredis reads replies, a wider grammar: whatever it returns differently from the Python code is not used."""
    expected = PyRespParser().feed(data)
    assert RespParser().feed(data) == expected
    assert feed_bytewise(RespParser(), data) == expected


def test_lists_fit_refuses_huge_and_many_declared_lists():
    """The check before hiredis reads: no aggregate header of 100 or more, nor more slots than bytes."""
    def fits(data):
        return kvd.resp.parser._lists_fit(bytearray(data), 0, len(data))

    assert fits(b"".join(set_request(i) for i in range(16)))
    for header in (b"*", b"~", b">", b"%", b"|"):
        assert not fits(b"*2\r\n$3\r\nGET\r\n" + header + b"4294967295\r\n")
        assert not fits(header + b"100\r\n" + b"$1\r\nx\r\n" * 100)
    assert not fits(b"*10\r\n*10\r\n*10\r\n$1\r\nx\r\n")  # 10-99 slots: one list per 100 bytes
    assert fits(b"*10\r\n" + b"$10\r\n0123456789\r\n" * 10)


@needs_hiredis
def test_nested_lists_cost_a_bounded_multiple_of_their_bytes(hiredis_reads):
    """A read of nothing but list headers makes hiredis allocate some 40 bytes per byte at most."""
    import tracemalloc

    data = b"*9\r\n" * 16000  # 64,000 bytes, every header nested in the one before
    tracemalloc.start()
    try:
        parser = RespParser()
        tracemalloc.reset_peak()
        assert parser.feed(data) == [fatal("expected '$', got '*'")]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hiredis_reads == [0]  # read by hiredis, its result not used
    assert peak < 40 * len(data)


@needs_hiredis
def test_hiredis_and_python_parsers_agree():
    """On random pipelines, valid and broken, split anywhere: the same requests, errors, state and buffer."""
    rng = random.Random(7)
    pieces = [b"*", b"$", b"\r\n", b"\n", b"1", b"-1", b"3", b"0", b"99", b"abc", b'"', b" ", b"\x00", b"PING",
              b"+", b":", b"~", b">", b"%", b"|", b"(", b"=", b"#t", b"_"]

    def request():
        return b"*%d\r\n" % rng.randint(0, 5) if rng.random() < 0.1 else b"".join(
            [b"*%d\r\n" % 3] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in (b"SET", b"k", rng.randbytes(rng.randint(0, 40)))])

    def chunk():
        kind = rng.random()
        if kind < 0.5:
            return request()
        if kind < 0.6:
            return b"PING\r\n"
        if kind < 0.8:
            broken = bytearray(request())
            at = rng.randrange(len(broken))
            broken[at:at + 1] = rng.choice(pieces)
            return bytes(broken)
        return b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))

    def run(parser_class, data, cuts, limits):
        parser = parser_class(**limits)
        items = [item for start, end in zip([0] + cuts, cuts + [len(data)]) for item in parser.feed(data[start:end])]
        return items, parser.failed, parser.buffered

    for _ in range(3000):
        data = b"".join(chunk() for _ in range(rng.randint(1, 8)))
        limits = rng.choice([{}, dict(max_args=2), dict(max_bulk_bytes=16, max_request_bytes=40)])
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 3))))
        assert run(RespParser, data, cuts, limits) == run(PyRespParser, data, cuts, limits), (data, cuts, limits)
