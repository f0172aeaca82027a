"""Tests for kvd.kv.glob: Redis glob patterns on bytes."""

import random

import pytest

from kvd.kv.glob import Pattern, glob_match


def redis_stringmatch(pattern: bytes, string: bytes) -> bool:
    """A line-by-line port of Redis's recursive stringmatchlen, as the oracle."""
    p, s = 0, 0
    pl, sl = len(pattern), len(string)
    while pl - p and sl - s:
        c = pattern[p]
        if c == ord("*"):
            while pl - p > 1 and pattern[p + 1] == ord("*"):
                p += 1
            if pl - p == 1:
                return True
            while sl - s:
                if redis_stringmatch(pattern[p + 1:], string[s:]):
                    return True
                s += 1
            return False
        elif c == ord("?"):
            s += 1
        elif c == ord("["):
            p += 1
            negate = p < pl and pattern[p] == ord("^")
            if negate:
                p += 1
            match = False
            while True:
                if p < pl and pattern[p] == ord("\\") and pl - p >= 2:
                    p += 1
                    if pattern[p] == string[s]:
                        match = True
                elif p >= pl:
                    p -= 1
                    break
                elif pattern[p] == ord("]"):
                    break
                elif pl - p >= 3 and pattern[p + 1] == ord("-"):
                    lo, hi = sorted((pattern[p], pattern[p + 2]))
                    if lo <= string[s] <= hi:
                        match = True
                    p += 2
                else:
                    if pattern[p] == string[s]:
                        match = True
                p += 1
            if negate:
                match = not match
            if not match:
                return False
            s += 1
        else:
            if c == ord("\\") and pl - p >= 2:
                p += 1
            if pattern[p] != string[s]:
                return False
            s += 1
        p += 1
        if sl - s == 0:
            while p < pl and pattern[p] == ord("*"):
                p += 1
            break
    return pl - p == 0 and sl - s == 0


@pytest.mark.parametrize(
    "pattern,key,expected",
    [
        (b"*", b"anything", True),
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h*llo", b"heeeello", True),
        (b"h[ae]llo", b"hallo", True),
        (b"h[ae]llo", b"hillo", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hbllo", True),  # reversed ranges are swapped
        (b"h\\*llo", b"h*llo", True),
        (b"h\\*llo", b"hello", False),
        (b"[\\]]", b"]", True),
        (b"user:*", b"user:42", True),
        (b"user:*", b"use", False),
        (b"exact", b"exact", True),
        (b"exact", b"exact2", False),
        (b"a\\", b"a\\", True),  # trailing backslash matches itself
        (b"[abc", b"b", True),  # unterminated class runs to the end
        (b"\x00*\xff", b"\x00middle\xff", True),
        (b"[\x80-\xff]", b"\xc3", True),
    ],
)
def test_examples(pattern, key, expected):
    """Documented Redis glob behaviours hold on bytes, including escapes and odd classes."""
    assert glob_match(pattern, key) is expected


def test_agrees_with_redis_port_on_random_inputs():
    """Random small patterns and keys get the same verdict as a port of Redis's matcher."""
    rng = random.Random(1234)
    alphabet = b"ab*?[]^-\\"
    for _ in range(20000):
        pattern = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        key = bytes(rng.choice(b"ab]-^\\*") for _ in range(rng.randint(1, 6)))
        assert Pattern(pattern).matches(key) == redis_stringmatch(pattern, key), (pattern, key)


def test_pathological_pattern_is_fast():
    """The CVE-2022-36021 shape completes quickly instead of backtracking exponentially."""
    import time

    pattern = b"*a" * 40 + b"b"
    key = b"a" * 5000
    start = time.perf_counter()
    assert not glob_match(pattern, key)
    assert time.perf_counter() - start < 5.0


def test_many_stars_do_not_recurse():
    """Thousands of stars cannot hit Python's recursion limit (the matcher is iterative)."""
    pattern = b"*x" * 3000
    assert glob_match(pattern, b"x" * 3000)
    assert not glob_match(pattern, b"x" * 2999)


def test_literal_fast_path_is_exposed():
    """A pattern without wildcards reports the single key it can match; others do not."""
    assert Pattern(b"k\\*").literal == b"k*"
    assert Pattern(b"k*").literal is None
    assert Pattern(b"k?").literal is None


def test_rejects_str_patterns():
    """Patterns are bytes; a str is a programming error, not a silent mismatch."""
    with pytest.raises(TypeError):
        Pattern("abc")


def test_issue_12_pattern_against_a_16k_key_is_fast():
    """KEYS "*"+"a"*8000+"b" against one 16 KB key froze the node for 5.8 s (8000 x 16000 steps in Python)."""
    import time

    key = b"a" * 16000
    for pattern in (b"*" + b"a" * 8000 + b"b", b"*" + b"a" * 8000 + b"b*", b"a*" + b"a" * 8000 + b"b*a"):
        started = time.perf_counter()
        assert not Pattern(pattern).matches(key)
        assert time.perf_counter() - started < 0.2


def test_a_costly_pattern_is_refused_instead_of_freezing_the_node():
    import time

    from kvd.kv.glob import PatternTooCostly

    started = time.perf_counter()
    with pytest.raises(PatternTooCostly):
        Pattern(b"*" + b"[ab]" * 8000 + b"c*").matches(b"a" * 16000)
    pattern = Pattern(b"*" + b"?" * 1000 + b"c*")
    with pytest.raises(PatternTooCostly):
        for _ in range(10_000):
            pattern.matches(b"a" * 16000)  # the budget is per compiled pattern: one request
    assert time.perf_counter() - started < 1.0


def test_keys_and_scan_answer_an_error_for_a_costly_pattern():
    from kvd.kv.commands import Envelope, Keys, MSet, Scan, encode_envelope
    from kvd.kv.machine import KVMachine
    from kvd.kv.results import KVError

    machine = KVMachine()
    machine.apply(1, encode_envelope(Envelope(b"c", 1, 1, 0, MSet(((b"a" * 16000, b"v"), (b"k", b"v"))))))
    for op in (Keys(b"*" + b"?" * 8000 + b"b*"), Scan(0, b"*" + b"?" * 8000 + b"b*", 10)):
        reply = machine.read(op)
        assert isinstance(reply, KVError) and reply.message.startswith("ERR pattern is too costly")
    assert machine.read(Keys(b"*" + b"a" * 8000 + b"b")) == []
    assert machine.read(Keys(b"k*")) == [b"k"]


def test_honest_class_patterns_over_many_keys_stay_within_budget():
    pattern = Pattern(b"user:*:[0-9]?*")
    keys = [b"user:%d:%d7x" % (i, i % 10) for i in range(200_000)]
    assert sum(pattern.matches(k) for k in keys) == 200_000


def test_patterns_without_wildcards_may_be_long_and_wildcard_ones_are_capped():
    """An exact key or a prefix needs no compiling, whatever its length; a wildcard pattern is capped."""
    import time

    from kvd.kv.glob import MAX_PATTERN_BYTES, PatternTooCostly

    started = time.perf_counter()
    assert Pattern(b"k" * 1_000_000).literal == b"k" * 1_000_000
    assert Pattern(b"k" * 1_000_000 + b"*").matches(b"k" * 1_000_001)
    assert Pattern(b"?" * (MAX_PATTERN_BYTES - 1) + b"*").matches(b"x" * MAX_PATTERN_BYTES)
    with pytest.raises(PatternTooCostly, match="over the limit of 16384 bytes"):
        Pattern(b"*" + b"?" * MAX_PATTERN_BYTES)
    assert time.perf_counter() - started < 1.0
