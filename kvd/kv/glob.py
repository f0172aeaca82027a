# -*- test-case-name: tests.kv.test_glob -*-
"""
Redis glob patterns (KEYS, SCAN MATCH) on bytes.

The pattern is parsed exactly as Redis's ``stringmatchlen`` parses it (``*``,
``?``, ``[abc]``, ``[^a]``, ``[a-z]`` with reversed ranges swapped, ``\\``
escapes, an unterminated ``[`` running to the end of the pattern, a trailing
lone ``\\`` matching itself), into a list of tokens that each match exactly
one byte, plus stars.  Because every non-star token consumes one byte, the
classic greedy match with backtracking to the last star is exact and runs in
O(len(pattern) * len(key)) with no recursion: patterns such as ``*a*a*a*a*b``
cannot blow up (the Redis CVE-2022-36021 shape) nor hit Python's recursion
limit.  ``fnmatch`` is not used: it works on str, treats ``[!a]`` as negation
and has no backslash escapes.

Matching splits the tokens at the stars into segments of fixed length.  The
first segment is matched at the start of the key, the last at its end, and
each one in between at its leftmost place after the previous one (which is
exact, since every segment has a fixed length).  A segment of plain bytes is
found with ``bytes.find`` and one with ``?`` or classes with a compiled
regular expression of single-byte classes (no repetition, so no
backtracking), both in C.  Only a floating segment with classes can cost
more than linear time, up to its length × the key's; that cost (for a
segment over ``SHORT_SEGMENT`` tokens: below that it is a small constant) is counted
against a budget per compiled pattern (one per KEYS or SCAN request,
``DEFAULT_BUDGET``), and a pattern that runs out raises ``PatternTooCostly``
instead of freezing the node: ``KEYS "*"+"a"*8000+"b"`` against a 16 KB key
takes microseconds, and ``*[ab]...`` shapes are refused once over budget.  A
pattern without wildcards (an exact key, or a prefix and one final ``*``)
needs no compiling and may be as long as a key; one with wildcards is capped
at ``MAX_PATTERN_BYTES``, since compiling costs about a microsecond a byte.

Bytes are compared as unsigned values; Redis compares range bounds as C
``char``, which is signed on most platforms, so ranges that straddle 0x80
differ.  Redis also never lets a non-empty pattern match the empty key (its
loop stops when the key runs out); here ``*`` and ``**`` match it, which is
what Redis's own special case for a bare ``*`` in KEYS and SCAN does anyway.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple, Union

_ANY = frozenset(range(256))
_STAR = None  # token for '*'; every other token is a frozenset of byte values

Token = Optional[frozenset]

#: Work one compiled pattern may do (segment length × key bytes searched, for segments with classes).
DEFAULT_BUDGET = 50_000_000
#: Longest pattern with wildcards (compiling one costs about a microsecond a byte); a pattern without
#: any is an exact key and may be as long as a key.
MAX_PATTERN_BYTES = 16 * 1024
_SPECIALS = (b"*", b"?", b"[", b"\\")
#: A segment this long or shorter is counted as one step per key byte searched.
SHORT_SEGMENT = 16


class PatternTooCostly(Exception):
    """A pattern used up its budget: the request is refused rather than freezing the node."""

    def __init__(self, pattern: bytes, budget: int, message: str = ""):
        super().__init__(message or (
            "pattern is too costly to match against these keys (over %d steps of work); "
            "use fewer '?' and '[...]' between '*' or a shorter pattern" % budget
        ))
        self.pattern = pattern
        self.budget = budget


def _tokenize(pattern: bytes) -> List[Token]:
    tokens: List[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # '*'
            if not tokens or tokens[-1] is not _STAR:
                tokens.append(_STAR)
            i += 1
        elif c == 0x3F:  # '?'
            tokens.append(_ANY)
            i += 1
        elif c == 0x5B:  # '['
            token, i = _parse_class(pattern, i + 1)
            tokens.append(token)
        elif c == 0x5C and i + 1 < n:  # '\' escapes the next byte
            tokens.append(frozenset((pattern[i + 1],)))
            i += 2
        else:
            tokens.append(frozenset((c,)))
            i += 1
    return tokens


def _parse_class(pattern: bytes, i: int):
    """Parse a ``[...]`` body starting just after the '['; return (token, next index)."""
    n = len(pattern)
    negate = i < n and pattern[i] == 0x5E  # '^'
    if negate:
        i += 1
    members = set()
    while i < n:
        c = pattern[i]
        if c == 0x5C and n - i >= 2:
            members.add(pattern[i + 1])
            i += 2
        elif c == 0x5D:  # ']'
            i += 1
            break
        elif n - i >= 3 and pattern[i + 1] == 0x2D:  # 'a-z'
            lo, hi = sorted((c, pattern[i + 2]))
            members.update(range(lo, hi + 1))
            i += 3
        else:
            members.add(c)
            i += 1
    token = frozenset(members)
    return (_ANY - token if negate else token), i


def _class_regex(token: frozenset) -> bytes:
    if len(token) == 256:
        return b"."
    if not token:
        return b"(?!)"
    if len(token) == 1:
        return re.escape(bytes(token))
    if len(token) > 128:
        return b"[^" + b"".join(re.escape(bytes((b,))) for b in sorted(_ANY - token)) + b"]"
    return b"[" + b"".join(re.escape(bytes((b,))) for b in sorted(token)) + b"]"


class _Segment:
    """Tokens between two stars: a literal (found with bytes.find) or a regex of single-byte classes."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, tokens: List[frozenset]):
        self.length = len(tokens)
        self.literal: Optional[bytes] = None
        self.regex = None
        if all(len(t) == 1 for t in tokens):
            self.literal = bytes(next(iter(t)) for t in tokens)
        else:
            self.regex = re.compile(b"".join(_class_regex(t) for t in tokens), re.DOTALL)

    def at(self, key: bytes, pos: int) -> bool:
        if self.literal is not None:
            return key.startswith(self.literal, pos)
        return self.regex.match(key, pos) is not None


def _segments(tokens: List[Token]) -> Tuple[List[_Segment], bool, bool]:
    """(segments, anchored at the start, anchored at the end)."""
    segments: List[_Segment] = []
    current: List[frozenset] = []
    for token in tokens:
        if token is _STAR:
            if current:
                segments.append(_Segment(current))
            current = []
        else:
            current.append(token)
    if current:
        segments.append(_Segment(current))
    start = bool(tokens) and tokens[0] is not _STAR
    end = bool(tokens) and tokens[-1] is not _STAR
    return segments, start, end


class Pattern:
    """A compiled glob pattern; ``matches(key)`` is the only operation (PatternTooCostly once over budget)."""

    __slots__ = ("source", "_tokens", "_literal", "_prefix", "_segments", "_start", "_end", "_stars", "budget", "spent")

    def __init__(self, source: bytes, budget: int = DEFAULT_BUDGET):
        if not isinstance(source, bytes):
            raise TypeError("pattern must be bytes")
        self.source = source
        self.budget = budget
        self.spent = 0
        self._literal: Optional[bytes] = None
        self._prefix: Optional[bytes] = None
        starred = source.endswith(b"*")
        body = source[:-1] if starred else source
        if not any(special in body for special in _SPECIALS):  # no wildcard: no tokens needed, any length
            if starred:
                self._prefix = body
            else:
                self._literal = source
            self._tokens, self._segments, self._start, self._end, self._stars = [], [], False, False, True
            return
        if len(source) > MAX_PATTERN_BYTES:
            raise PatternTooCostly(source, budget, "pattern of %d bytes is over the limit of %d bytes for a pattern "
                                                   "with wildcards" % (len(source), MAX_PATTERN_BYTES))
        self._tokens = _tokenize(source)
        self._segments, self._start, self._end = _segments(self._tokens)
        self._stars = any(t is _STAR for t in self._tokens)
        # Fast paths for the overwhelmingly common shapes: "exact" and "prefix*".
        singles = [t for t in self._tokens if t is not _STAR]
        plain = all(len(t) == 1 for t in singles)
        stars = len(self._tokens) - len(singles)
        self._literal: Optional[bytes] = None
        self._prefix: Optional[bytes] = None
        if plain and stars == 0:
            self._literal = bytes(next(iter(t)) for t in singles)
        elif plain and stars == 1 and self._tokens[-1] is _STAR:
            self._prefix = bytes(next(iter(t)) for t in singles)

    @property
    def literal(self) -> Optional[bytes]:
        """The only key this pattern can match, when it has no wildcard at all."""
        return self._literal

    def matches(self, key: bytes) -> bool:
        if self._literal is not None:
            return key == self._literal
        if self._prefix is not None:
            return key.startswith(self._prefix)
        return self._match_segments(key)

    def _match_segments(self, key: bytes) -> bool:
        segments, n = self._segments, len(key)
        if not self._stars:  # one segment, the whole key
            return not segments and n == 0 or (len(segments) == 1 and segments[0].length == n and segments[0].at(key, 0))
        lo, hi = 0, len(segments)
        pos, end = 0, n
        if self._start:
            first = segments[0]
            if first.length > n or not first.at(key, 0):
                return False
            pos, lo = first.length, 1
        if self._end and hi > lo:
            last = segments[-1]
            end = n - last.length
            if end < pos or not last.at(key, end):
                return False
            hi -= 1
        for segment in segments[lo:hi]:
            if segment.literal is not None:
                found = key.find(segment.literal, pos, end)
                if found < 0:
                    return False
                pos = found + segment.length
            else:
                # A short segment costs at most a few steps a byte; only long ones can cost length × key.
                self.spent += max(1, end - pos) * (segment.length if segment.length > SHORT_SEGMENT else 1)
                if self.spent > self.budget:
                    raise PatternTooCostly(self.source, self.budget)
                m = segment.regex.search(key, pos, end)
                if m is None:
                    return False
                pos = m.end()
        return True

    def __repr__(self) -> str:
        return "Pattern(%r)" % (self.source,)


def _match_tokens(tokens: List[Token], key: bytes) -> bool:
    ti = ki = 0
    star_ti = -1
    star_ki = 0
    nt, nk = len(tokens), len(key)
    while ki < nk:
        token = tokens[ti] if ti < nt else False
        if token is _STAR:
            star_ti, star_ki = ti, ki
            ti += 1
        elif token is not False and key[ki] in token:
            ti += 1
            ki += 1
        elif star_ti >= 0:
            # Let the last star swallow one more byte and retry from there.
            star_ki += 1
            ki = star_ki
            ti = star_ti + 1
        else:
            return False
    while ti < nt and tokens[ti] is _STAR:
        ti += 1
    return ti == nt


def compile_pattern(pattern: Union[bytes, Pattern]) -> Pattern:
    return pattern if isinstance(pattern, Pattern) else Pattern(pattern)


def glob_match(pattern: bytes, key: bytes) -> bool:
    """Whether ``key`` matches the Redis glob ``pattern``."""
    return Pattern(pattern).matches(key)
