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

Bytes are compared as unsigned values; Redis compares range bounds as C
``char``, which is signed on most platforms, so ranges that straddle 0x80
differ.  Redis also never lets a non-empty pattern match the empty key (its
loop stops when the key runs out); here ``*`` and ``**`` match it, which is
what Redis's own special case for a bare ``*`` in KEYS and SCAN does anyway.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import List, Optional, Union

_ANY = frozenset(range(256))
_STAR = None  # token for '*'; every other token is a frozenset of byte values

Token = Optional[frozenset]


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


class Pattern:
    """A compiled glob pattern; ``matches(key)`` is the only operation."""

    __slots__ = ("source", "_tokens", "_literal", "_prefix")

    def __init__(self, source: bytes):
        if not isinstance(source, bytes):
            raise TypeError("pattern must be bytes")
        self.source = source
        self._tokens = _tokenize(source)
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
        return _match_tokens(self._tokens, key)

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
