# -*- test-case-name: tests.store.test_checksum -*-
"""
Checksums on every record kvd keeps on disk, so that a disk that lies (a
flipped bit, a torn or misdirected write) is caught when the record is read,
never served.

A sealed record is the payload followed by the CRC32C of the payload, four
bytes little-endian.  CRC32C (the Castagnoli polynomial, as in iSCSI, ext4,
etcd's WAL) is computed by the ``crc32c`` package, which uses the CPU's
instruction where there is one.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import crc32c

from kvd.store.schema import CorruptRecord

_CRC_BYTES = 4


def crc(payload) -> int:
    """The CRC32C of ``payload`` (bytes-like)."""
    return crc32c.crc32c(payload)


def crc_update(value: int, data) -> int:
    """The CRC32C of what ``value`` was the CRC32C of, followed by ``data`` (a stream's running checksum)."""
    return crc32c.crc32c(data, value)


def seal(payload: bytes) -> bytes:
    """``payload`` with its checksum appended."""
    return bytes(payload) + crc32c.crc32c(payload).to_bytes(_CRC_BYTES, "little")


def unseal(record, what: str) -> bytes:
    """
    The payload of a sealed ``record``; ``CorruptRecord`` naming ``what`` when
    the record is too short or its checksum does not match.
    """
    view = memoryview(record)
    if len(view) < _CRC_BYTES:
        raise CorruptRecord(f"{what}: record of {len(view)} bytes is shorter than its checksum")
    payload = view[:-_CRC_BYTES]
    stored = int.from_bytes(view[-_CRC_BYTES:], "little")
    if crc32c.crc32c(payload) != stored:
        raise CorruptRecord(f"{what}: checksum mismatch (the bytes read are not the bytes written)")
    return bytes(payload)
