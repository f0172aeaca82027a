"""
Snapshots in the layouts of older kvds (kvd.kv.machine SNAPSHOT_VERSION's history), made from a current one:
what the tests of "an old snapshot still restores" feed the machine.
"""

import zlib

from kvd.kv.codec import Reader, Writer
from kvd.kv.machine import SNAPSHOT_MAGIC, _read_record, _read_session, encode_session


def downgrade(snapshot: bytes, version: int) -> bytes:
    """
    ``snapshot`` (the current version, 7) rewritten as version 6 (no leases), 5 (nor revisions) or 4 (nor
    expiries).  Leases must be none: a snapshot before version 7 cannot hold any.
    """
    assert version in (4, 5, 6)
    if version == 6:
        assert snapshot[4] == 7 and snapshot[:-4].endswith(b"\x00\x00"), "no leases, no attached keys"
        body = snapshot[:4] + b"\x06" + snapshot[5:-6]
        return body + zlib.crc32(body).to_bytes(4, "big")
    r = Reader(snapshot[:-4])
    assert r.raw(4) == SNAPSHOT_MAGIC and r.byte() == 7
    w = Writer()
    w.raw(SNAPSHOT_MAGIC)
    w.byte(version)
    w.uint(r.uint())  # applied index
    w.uint(r.uint())  # clock
    n = r.uint()
    w.uint(n)
    for _ in range(n):
        w.blob(r.blob())
        w.raw(encode_session(_read_session(r)))
    w.uint(r.uint())  # deleted_at
    r.uint()  # the revision: dropped
    n = r.uint()
    w.uint(n)
    for _ in range(n):
        key, value, mod, _ = _read_record(r, 6)
        w.blob(key)
        if isinstance(value, list):
            w.byte(1)
            w.uint(len(value))
            for field, item in value:
                w.blob(field)
                w.blob(item)
        else:
            w.byte(0)
            w.blob(value)
        w.uint(mod)
    n = r.uint()
    w.uint(n)
    for _ in range(n):
        w.blob(r.blob())
        w.blob(r.blob())
    n = r.uint()
    if version >= 5:
        w.uint(n)
    for _ in range(n):
        key, at_ms = r.blob(), r.uint()
        if version >= 5:
            w.blob(key)
            w.uint(at_ms)
    assert r.uint() == 0 and r.uint() == 0, "no leases, no attached keys"
    r.expect_end()
    body = w.getvalue()
    return body + zlib.crc32(body).to_bytes(4, "big")
