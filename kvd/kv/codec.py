# -*- test-case-name: tests.kv.test_commands -*-
"""
Building blocks of kvd's binary formats (log entries, results, snapshots).

Unsigned integers are LEB128 varints, signed ones zigzag varints, byte
strings a varint length then the bytes.  Decoding is strict: truncation,
trailing bytes, over-long varints and out-of-range values all raise
``CodecError`` and nothing else, because these bytes come from the Raft log,
the network or disk and must never crash the node that reads them.  Encoding
is canonical (one byte string per value) so that equal states produce equal
snapshots.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import List

U64_MAX = (1 << 64) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

_SMALL = [bytes((i,)) for i in range(128)]


class CodecError(ValueError):
    """Malformed, truncated or unknown-version input."""


class Writer:
    __slots__ = ("_parts",)

    def __init__(self):
        self._parts: List[bytes] = []

    def byte(self, value: int) -> None:
        self._parts.append(bytes((value,)))

    def raw(self, data: bytes) -> None:
        self._parts.append(data)

    def uint(self, value: int) -> None:
        if value < 0x80:
            if value < 0:
                raise ValueError("uint cannot encode a negative number")
            self._parts.append(_SMALL[value])
            return
        out = bytearray()
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
        self._parts.append(bytes(out))

    def sint(self, value: int) -> None:
        self.uint(value << 1 if value >= 0 else ((-value) << 1) - 1)

    def blob(self, data: bytes) -> None:
        self.uint(len(data))
        self._parts.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError("expected bytes, got %s" % (type(data).__name__,))
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        if self._pos >= len(self._data):
            raise CodecError("truncated input")
        b = self._data[self._pos]
        self._pos += 1
        return b

    def raw(self, n: int) -> bytes:
        if n > self.remaining:
            raise CodecError("truncated input")
        start = self._pos
        self._pos += n
        return self._data[start:self._pos]

    def uint(self, limit: int = U64_MAX) -> int:
        data, pos = self._data, self._pos
        if pos < len(data) and data[pos] < 0x80:
            value = data[pos]
            self._pos = pos + 1
        else:
            value = shift = 0
            while True:
                if pos >= len(data):
                    raise CodecError("truncated varint")
                b = data[pos]
                pos += 1
                value |= (b & 0x7F) << shift
                if not b & 0x80:
                    if b == 0 and shift:
                        raise CodecError("over-long varint")
                    break
                shift += 7
                if shift > 63:
                    raise CodecError("varint too long")
            self._pos = pos
        if value > limit:
            raise CodecError("integer %d out of range" % (value,))
        return value

    def sint(self, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
        zz = self.uint()
        value = (zz >> 1) ^ -(zz & 1)
        if not low <= value <= high:
            raise CodecError("integer %d out of range" % (value,))
        return value

    def blob(self) -> bytes:
        return self.raw(self.uint())

    def count(self, min_item_bytes: int = 1) -> int:
        """A repetition count, refused when the remaining input cannot hold it."""
        n = self.uint()
        if n * min_item_bytes > self.remaining:
            raise CodecError("count %d exceeds the remaining input" % (n,))
        return n

    def expect_end(self) -> None:
        if self._pos != len(self._data):
            raise CodecError("%d trailing bytes" % (self.remaining,))
