"""
Random sequences of string and hash commands (kvd.kv commands), and a full
dump of a machine's keys, for comparing keyspaces: memory, LMDB flushed or
not, across restarts and streamed snapshots, the simulator's model.
"""

from kvd.kv.commands import (
    Copy, Delete, FlushAll, Get, HashRead, HashWrite, IncrBy, KeyType, Keys, MSet, Rename, Scan, Set,
)

LONG_FIELD = b"F" * 700  # past INLINE_FIELD: stored under its head and digest
KEYS = [b"h%d" % i for i in range(6)] + [b"s1", b"long-" + b"k" * 600]
FIELDS = [b"f%d" % i for i in range(12)] + [b"", LONG_FIELD, LONG_FIELD[:-1] + b"G"]
VALUES = [b"", b"v", b"12", b"-3", b"1.5", b"\x00\xff", b"x" * 300]


def random_hash_commands(rng, n, flushall=True):
    """Writes (and reads, to be answered alike) over a few keys: hashes and strings on the same keys."""
    for _ in range(n):
        key, other = rng.choice(KEYS), rng.choice(KEYS)
        field = rng.choice(FIELDS)
        r = rng.random()
        if r < 0.35:
            pairs = []
            for _ in range(rng.randrange(1, 4)):
                pairs += [rng.choice(FIELDS), rng.choice(VALUES)]
            yield HashWrite(rng.choice(["hset", "hmset"]), key, tuple(pairs))
        elif r < 0.5:
            yield HashWrite("hdel", key, tuple(rng.choice(FIELDS) for _ in range(rng.randrange(1, 4))))
        elif r < 0.55:
            yield HashWrite("hsetnx", key, (field, rng.choice(VALUES)))
        elif r < 0.6:
            yield HashWrite("hincrby", key, (field, b"%d" % rng.randrange(-9, 10)))
        elif r < 0.63:
            yield HashWrite("hincrbyfloat", key, (field, rng.choice([b"0.1", b"-2.5", b"1e3", b"3"])))
        elif r < 0.7:
            yield Set(key, rng.choice(VALUES))
        elif r < 0.75:
            yield Delete((key, other))
        elif r < 0.78:
            yield Rename(key, other, rng.random() < 0.5)
        elif r < 0.81 and key != other:
            yield Copy(key, other, rng.random() < 0.5)
        elif r < 0.83:
            yield IncrBy(key, 1)
        elif r < 0.85:
            yield MSet(((key, b"m"), (other, b"n")))
        elif r < 0.86 and flushall:
            yield FlushAll()
        else:
            yield rng.choice([
                HashRead("hgetall", key), HashRead("hget", key, (field,)), HashRead("hlen", key),
                HashRead("hscan", key, (b"0", b"COUNT", b"3")), HashRead("hmget", key, (field, b"f1")),
                Get(key), KeyType(key), HashRead("hstrlen", key, (field,)), HashRead("hexists", key, (field,)),
            ])


def dump(machine):
    """Every key with its type and value (a hash: its fields in order), the key count, SCAN and KEYS."""
    out = {}
    for key in machine.read(Keys(b"*")):
        kind = machine.read(KeyType(key))
        if kind == b"hash":
            out[key] = (kind, machine.read(HashRead("hgetall", key)), machine.read(HashRead("hlen", key)))
        else:
            out[key] = (kind, machine.read(Get(key)))
    cursor, scanned = 0, []
    while True:
        cursor_text, keys = machine.read(Scan(cursor, None, 3))
        scanned += keys
        cursor = int(cursor_text)
        if not cursor:
            break
    return out, machine.key_count(), scanned


def scan_fields(machine, key, count):
    """Every field of an HSCAN iteration with COUNT ``count``, in order."""
    cursor, seen = b"0", []
    while True:
        cursor, items = machine.read(HashRead("hscan", key, (cursor, b"COUNT", b"%d" % count)))
        seen += items
        if cursor == b"0":
            return seen
