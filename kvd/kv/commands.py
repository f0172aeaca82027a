# -*- test-case-name: tests.kv.test_commands -*-
"""
The commands of the key/value machine and the codec of what goes in the log.

Write commands (``Set``, ``Delete``, ``MSet``, ``IncrBy``, ``GetDel``,
``Append``, ``SetRange``, ``MSetNX``, ``Rename``, ``Copy``, ``FlushAll``,
``Transaction``, ``Script``, ``HashWrite``, ``IncrByFloat``, ``Expire``, ``GetEx``, ``Tick``, ``Lease``, ``KvTxn``,
``Publish``) change the state (``Tick`` and ``Publish`` only the log's time and the sessions) and are proposed to Raft
inside an ``Envelope``; read ops (``Get``, ``MGet``, ``Exists``, ``Keys``,
``Scan``, ``DbSize``, ``StrLen``, ``GetRange``, ``RandomKey``, ``Versions``,
``ScriptGet``, ``HashRead``, ``KeyType``, ``Ttl``, ``LeaseRead``, ``RevRead``) are served by ``KVMachine.read`` and never logged on their
own.  A ``Transaction`` (MULTI ... EXEC) is one entry holding write commands and
read ops, applied in order at one index, with the versions of the keys its
client WATCHed: if one of them changed, nothing is applied (nil).  A
``Script`` is a Lua script's run or a change of the script cache
(kvd.kv.script).  Each is
a frozen dataclass that validates itself, so an invalid command cannot be
built, encoded or decoded.

The envelope carries the exactly-once bookkeeping of the Raft thesis §6.3:
``client_id`` and ``seq`` name the command, ``ack_below`` tells the machine
that every response with a smaller seq has reached the client, and
``stamp_ms`` is the proposing leader's clock, the only time the machine sees.
Sequence numbers start at 1 and ``ack_below`` starts at 1 (nothing received).

Wire format, version 1 (all integers varints, see kvd.kv.codec)::

    version=1  client_id:blob  seq  ack_below  stamp_ms  tag:byte  body
    tag 1 Set     key:blob value:blob flags:byte [ifeq:blob]
                  flags: bits 0-1 cond (0 none, 1 NX, 2 XX), bit 2 IFEQ, bit 3 GET
    tag 2 Delete  n keys...
    tag 3 MSet    n (key value)...
    tag 4 IncrBy  key:blob delta:zigzag
    tag 5 GetDel  key:blob
    tag 6 Append  key:blob value:blob max_len
    tag 7 SetRange key:blob offset value:blob max_len
    tag 8 MSetNX  n (key value)...
    tag 9 Rename  src:blob dst:blob nx:byte (0 RENAME, 1 RENAMENX)
    tag 10 Copy   src:blob dst:blob replace:byte (0 or 1)
    tag 11 FlushAll (no body: FLUSHDB and FLUSHALL, kvd has one database)
    tag 12 Transaction  n_watched (key:blob exists:byte index)...  n (op)...
                  each op a write command as above (tags 1-11) or a read op:
    tag 32 Get key   33 MGet n keys...   34 Exists n keys...   35 Keys pattern
    tag 36 Scan cursor count flags:byte [match] [type:byte]   37 DbSize   38 StrLen key
                  flags: bit 0 a MATCH follows, bit 1 a TYPE (0 string, 1 hash, 2 another: none) follows
    tag 39 GetRange key start:zigzag end:zigzag   40 RandomKey position
    tag 13 Script op:byte body:blob n keys... n args... max_len
    tag 14 HashWrite op:byte key:blob n args...
                  op: 0 HSET, 1 HMSET, 2 HSETNX, 3 HDEL, 4 HINCRBY, 5 HINCRBYFLOAT (kvd.kv.hashes)
    tag 41 HashRead op:byte key:blob n args...   (a read op, inside a transaction)
                  op: 0 HGET, 1 HMGET, 2 HGETALL, 3 HKEYS, 4 HVALS, 5 HEXISTS, 6 HLEN, 7 HSTRLEN,
                  8 HSCAN (args: cursor, options...), 9 HRANDFIELD (args: position[, count[, WITHVALUES]])
    tag 42 KeyType key   (TYPE)
                  op: 0 EVAL, 1 EVAL_RO, 2 SCRIPT LOAD, 3 SCRIPT FLUSH, 4 EVALSHA, 5 EVALSHA_RO
                  (EVALSHA carries the body too; see kvd.kv.script)

A watched key's version (``Versions``, what WATCH reads, linearizably) is
(exists, index): for a key that exists, the log index of its last write
(its mod index, kept with the key by every keyspace; 0 for a key stored
before mod indexes existed); for a missing key, the applied index of the
read.  At apply, an existing key is unchanged iff it still exists with the
same mod index (a deleted and re-created key has a new one); a missing key
is unchanged iff it is still missing and no key was deleted after that
index (the keyspace's ``deleted_at``: one number, so a deletion of any
other key also counts -- conservative, never wrong the other way).
A transaction's replies are bounded (kvd.kv.machine ``TXN_REPLY_BYTES``).

``max_len`` is the longest value the proposing node allows (its
``--value-max-bytes``): it travels in the entry so that every replica refuses
an APPEND or SETRANGE that would grow a value past it the same way, whatever
its own setting.

Expiry (kvd.kv.expiry): SET's flags gain bit 4 KEEPTTL, bit 5 "an expiry
in ms from the entry's stamp follows" and bit 6 "a Unix time in ms follows"
(``expire:uint`` after ``ifeq``)::

    tag 65 Expire  op:byte key:blob when:zigzag flags:byte
                  op: 0 EXPIRE, 1 PEXPIRE, 2 EXPIREAT, 3 PEXPIREAT, 4 PERSIST; flags: 1 NX, 2 XX, 4 GT, 8 LT
    tag 66 GetEx   key:blob flags:byte [expire:uint]   flags: 1 relative ms, 2 Unix ms, 4 PERSIST
    tag 67 Tick    (no body: carries the leader's clock into the log)
    tag 43 Ttl     op:byte key:blob   (a read op) op: 0 TTL, 1 PTTL, 2 EXPIRETIME, 3 PEXPIRETIME

Leases (kvd.kv.leases): SET's flags gain bit 7 "a lease id follows" (``lease:uint``
after ``ifeq``; it excludes bits 4-6)::

    tag 68 Lease      op:byte [id] [ttl_s]
                  op: 0 GRANT ttl_s, 1 KEEPALIVE id, 2 REVOKE id, 3 PROMOTE (a new leader's, no body)
    tag 44 LeaseRead  op:byte [id flags:byte]   (a read op)
                  op: 0 TTL id flags (bit 0: KEYS, the attached keys too), 1 LIST

Revisions and KVD.TXN (kvd.kv.revisions, kvd.kv.txn)::

    tag 69 KvTxn   n (cmp)...  n (op)...  n (op)...     IF compares THEN ops ELSE ops
                  cmp: target:byte op:byte key:blob then value:blob (VALUE) or n:uint (VERSION, CREATE,
                       MOD; EXISTS and MISSING have neither)
                       target: 0 VALUE, 1 VERSION, 2 CREATE, 3 MOD, 4 EXISTS, 5 MISSING; op: 0 =, 1 !=, 2 <, 3 >
                  op: 0 SET key:blob value:blob, 1 DEL key:blob, 2 GET key:blob
    tag 45 RevRead op:byte [key:blob]   (a read op) op: 0 KVD.GET key WITHREV, 1 KVD.REVISION

Pub/sub (kvd.kv.events): PUBLISH goes through the log, so that every node
delivers every message to its subscribers in log order::

    tag 70 Publish flags:byte channel:blob message:blob   (changes no key)
                  flags: bit 0 a shard channel's message (SPUBLISH)

INCRBYFLOAT is tag 64, ``key:blob increment:blob``: the increment as the
client sent it, parsed (and refused) when the entry is applied
(kvd.kv.longdouble).  Inside a transaction tags 32-63 are read ops, so
write tags are 1-31 and 64 up.

Keys and values are arbitrary bytes; neither pickle nor JSON is involved.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from kvd.kv import longdouble
from kvd.kv.codec import INT64_MAX, INT64_MIN, U64_MAX, CodecError, Reader, Writer

__all__ = [
    "CodecError", "Set", "Delete", "MSet", "IncrBy", "GetDel", "Append", "SetRange", "MSetNX", "Rename", "Copy",
    "FlushAll", "IncrByFloat", "Script", "ScriptGet", "Envelope", "Get", "MGet", "Exists", "Keys", "Scan", "DbSize", "StrLen", "GetRange", "RandomKey",
    "WriteCommand", "ReadOp", "WRITE_COMMANDS", "READ_OPS", "ENVELOPE_VERSION",
    "encode_envelope", "decode_envelope", "parse_int64", "INT64_MIN", "INT64_MAX", "command_size", "command_keys",
    "write_keys", "MAX_STRING_BYTES", "Transaction", "Versions", "TXN_READ_OPS", "read_keys",
    "HashWrite", "HashRead", "KeyType", "HASH_WRITE_OPS", "HASH_READ_OPS", "KEY_TYPES", "SCAN_TYPES",
    "float_increment_error", "Expire", "GetEx", "Tick", "Ttl", "EXPIRE_OPS", "TTL_OPS",
    "EXPIRE_NX", "EXPIRE_XX", "EXPIRE_GT", "EXPIRE_LT", "Lease", "LeaseRead", "LEASE_OPS", "LEASE_READ_OPS",
    "Compare", "TxnOp", "KvTxn", "RevRead", "TXN_TARGETS", "TXN_CMP_OPS", "TXN_OP_NAMES", "REV_READ_OPS", "Publish",
]

ENVELOPE_VERSION = 1

#: Redis's largest string (512 MB, proto-max-bulk-len's ceiling): SETRANGE's offset stays below it.
MAX_STRING_BYTES = 512 * 1024 * 1024


def parse_int64(data: bytes) -> Optional[int]:
    """
    Redis's ``string2ll``: a canonical signed 64-bit decimal, or None.  No
    sign '+', no leading zeros, no spaces, no "-0"; what INCR accepts as a
    stored value and what commands accept as integer arguments.
    """
    if not 0 < len(data) <= 20:
        return None
    if data == b"0":
        return 0
    digits = data[1:] if data[:1] == b"-" else data
    if not digits.isdigit() or digits[0] == 0x30:
        return None
    value = int(data)
    return value if INT64_MIN <= value <= INT64_MAX else None


def float_increment_error(data: bytes) -> Optional[str]:
    """What Redis answers (after "ERR ") for an INCRBYFLOAT/HINCRBYFLOAT increment it refuses, else None."""
    if longdouble.parse(data) is not None:
        return None
    return "value is NaN or Infinity" if longdouble.is_infinity(data) else "value is not a valid float"


def _bytes(name: str, value) -> None:
    if not isinstance(value, bytes):
        raise TypeError("%s must be bytes, not %s" % (name, type(value).__name__))


def _int(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("%s must be an int, not %s" % (name, type(value).__name__))
    if not low <= value <= high:
        raise ValueError("%s out of range: %d" % (name, value))


def _key_tuple(obj, name: str, allow_empty: bool = False) -> None:
    keys = getattr(obj, name)
    if isinstance(keys, (bytes, str)):
        raise TypeError("%s must be a sequence of bytes, not a single %s" % (name, type(keys).__name__))
    keys = tuple(keys)
    if not keys and not allow_empty:
        raise ValueError("%s must not be empty" % (name,))
    for k in keys:
        _bytes("each of " + name, k)
    object.__setattr__(obj, name, keys)


# ------------------------------------------------------------------ writes


@dataclass(frozen=True)
class Set:
    """
    SET key value [NX|XX|IFEQ ifeq] [GET] [EX|PX|EXAT|PXAT|KEEPTTL|LEASE id]; IFEQ excludes NX and XX, as in
    Valkey 8.1.  ``expire`` is in milliseconds (EX's seconds times 1000), from the entry's log time unless
    ``expire_at`` (then a Unix time); ``keepttl`` keeps the key's time to live (or lease), else a SET drops it
    (kvd.kv.expiry); ``lease`` attaches the key to that live lease (kvd.kv.leases).
    """

    key: bytes
    value: bytes
    cond: Optional[str] = None
    ifeq: Optional[bytes] = None
    get: bool = False
    expire: Optional[int] = None
    expire_at: bool = False
    keepttl: bool = False
    lease: Optional[int] = None

    def __post_init__(self):
        _bytes("key", self.key)
        _bytes("value", self.value)
        if self.lease is not None:
            _int("lease", self.lease, 1, INT64_MAX)
            if self.expire is not None or self.keepttl:
                raise ValueError("LEASE excludes an expiry and KEEPTTL")
        if self.cond not in (None, "NX", "XX"):
            raise ValueError("cond must be None, 'NX' or 'XX', not %r" % (self.cond,))
        if self.ifeq is not None:
            _bytes("ifeq", self.ifeq)
            if self.cond is not None:
                raise ValueError("IFEQ cannot be combined with NX or XX")
        for name in ("get", "expire_at", "keepttl"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError("%s must be a bool" % (name,))
        if self.expire is not None:
            _int("expire", self.expire, 1, INT64_MAX)
            if self.keepttl:
                raise ValueError("KEEPTTL excludes an expiry")
        elif self.expire_at:
            raise ValueError("expire_at needs an expire")


@dataclass(frozen=True)
class Delete:
    keys: Tuple[bytes, ...]

    def __post_init__(self):
        _key_tuple(self, "keys")


@dataclass(frozen=True)
class MSet:
    """Every pair is set or none is: one log entry."""

    pairs: Tuple[Tuple[bytes, bytes], ...]

    def __post_init__(self):
        _pairs(self)


@dataclass(frozen=True)
class IncrBy:
    """INCR, DECR, INCRBY, DECRBY: add ``delta`` to the integer stored at ``key``."""

    key: bytes
    delta: int

    def __post_init__(self):
        _bytes("key", self.key)
        _int("delta", self.delta, INT64_MIN, INT64_MAX)


def _pairs(obj) -> None:
    if isinstance(obj.pairs, (bytes, str)):
        raise TypeError("pairs must be a sequence of (key, value)")
    pairs = tuple(tuple(p) for p in obj.pairs)
    if not pairs:
        raise ValueError("pairs must not be empty")
    for p in pairs:
        if len(p) != 2:
            raise ValueError("each pair must be (key, value)")
        _bytes("key", p[0])
        _bytes("value", p[1])
    object.__setattr__(obj, "pairs", pairs)


@dataclass(frozen=True)
class GetDel:
    """GETDEL key: the value (or nil), and the key deleted."""

    key: bytes

    def __post_init__(self):
        _bytes("key", self.key)


@dataclass(frozen=True)
class Append:
    """APPEND key value: the new length; a result longer than ``max_len`` is refused, nothing changed."""

    key: bytes
    value: bytes
    max_len: int

    def __post_init__(self):
        _bytes("key", self.key)
        _bytes("value", self.value)
        _int("max_len", self.max_len, 0, MAX_STRING_BYTES)


@dataclass(frozen=True)
class SetRange:
    """SETRANGE key offset value: overwrite from ``offset``, zero-padding; the new length."""

    key: bytes
    offset: int
    value: bytes
    max_len: int

    def __post_init__(self):
        _bytes("key", self.key)
        _int("offset", self.offset, 0, MAX_STRING_BYTES - 1)
        _bytes("value", self.value)
        _int("max_len", self.max_len, 0, MAX_STRING_BYTES)


@dataclass(frozen=True)
class MSetNX:
    """MSETNX: every pair is set, if none of the keys exists (1), or nothing is (0)."""

    pairs: Tuple[Tuple[bytes, bytes], ...]

    def __post_init__(self):
        _pairs(self)


@dataclass(frozen=True)
class Rename:
    """RENAME src dst (OK, or ERR no such key); with ``nx``, RENAMENX (1, or 0 if dst exists)."""

    src: bytes
    dst: bytes
    nx: bool = False

    def __post_init__(self):
        _bytes("src", self.src)
        _bytes("dst", self.dst)
        if not isinstance(self.nx, bool):
            raise TypeError("nx must be a bool")


@dataclass(frozen=True)
class Copy:
    """COPY src dst [REPLACE]: 1 if copied, 0 if src is missing or dst exists (without REPLACE)."""

    src: bytes
    dst: bytes
    replace: bool = False

    def __post_init__(self):
        _bytes("src", self.src)
        _bytes("dst", self.dst)
        if not isinstance(self.replace, bool):
            raise TypeError("replace must be a bool")
        if self.src == self.dst:
            raise ValueError("COPY's source and destination are the same key")


@dataclass(frozen=True)
class IncrByFloat:
    """
    INCRBYFLOAT key increment: Redis 7's x87 long double sum, stored and answered as text
    (kvd.kv.longdouble).  ``increment`` is the client's bytes: it is parsed (and refused) when the
    entry is applied, after the stored value, in Redis's order.
    """

    key: bytes
    increment: bytes

    def __post_init__(self):
        _bytes("key", self.key)
        _bytes("increment", self.increment)


@dataclass(frozen=True)
class FlushAll:
    """FLUSHDB and FLUSHALL: every key deleted.  The keyspace drops them whole (``clear``), not key by key."""


#: Script's operations, by their code in the log (tag 13).
SCRIPT_OPS = ("eval", "eval_ro", "load", "flush", "evalsha", "evalsha_ro")


@dataclass(frozen=True)
class Script:
    """
    A Lua script's run (EVAL, EVAL_RO, and EVALSHA/EVALSHA_RO with the body
    the proposing node found for the SHA), or a change of the replicated
    script cache (SCRIPT LOAD of ``body``, SCRIPT FLUSH): kvd.kv.script.
    ``max_len`` is the proposing node's value limit, as for Append.
    """

    op: str
    body: bytes = b""
    keys: Tuple[bytes, ...] = ()
    args: Tuple[bytes, ...] = ()
    max_len: int = 0

    def __post_init__(self):
        if self.op not in SCRIPT_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(SCRIPT_OPS), self.op))
        _bytes("body", self.body)
        _key_tuple(self, "keys", allow_empty=True)
        _key_tuple(self, "args", allow_empty=True)
        _int("max_len", self.max_len, 0, MAX_STRING_BYTES)


#: HashWrite's operations, by their code in the log (tag 14).
HASH_WRITE_OPS = ("hset", "hmset", "hsetnx", "hdel", "hincrby", "hincrbyfloat")


@dataclass(frozen=True)
class HashWrite:
    """
    A write of fields of the hash at ``key`` (kvd.kv.hashes): HSET/HMSET
    ``args`` = field value ..., HSETNX field value, HDEL field ..., HINCRBY
    field delta (a canonical int64), HINCRBYFLOAT field increment (a float
    Redis's strtold accepts, checked when applied: kvd.kv.longdouble).
    """

    op: str
    key: bytes
    args: Tuple[bytes, ...]

    def __post_init__(self):
        if self.op not in HASH_WRITE_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(HASH_WRITE_OPS), self.op))
        _bytes("key", self.key)
        _key_tuple(self, "args")
        n = len(self.args)
        if self.op in ("hset", "hmset") and n % 2:
            raise ValueError("%s needs field value pairs" % (self.op.upper(),))
        if self.op in ("hsetnx", "hincrby", "hincrbyfloat") and n != 2:
            raise ValueError("%s needs a field and a value" % (self.op.upper(),))
        if self.op == "hincrby" and parse_int64(self.args[1]) is None:
            raise ValueError("HINCRBY's increment must be a canonical 64-bit integer")
        if self.op == "hincrbyfloat" and float_increment_error(self.args[1]) is not None:
            raise ValueError("HINCRBYFLOAT's increment must be a finite float")


#: Expire's operations, by their code in the log (tag 65): the first four set a time to live, PERSIST drops it.
EXPIRE_OPS = ("expire", "pexpire", "expireat", "pexpireat", "persist")
#: Expire's conditions (Redis 7's options), as bits.
EXPIRE_NX, EXPIRE_XX, EXPIRE_GT, EXPIRE_LT = 1, 2, 4, 8


@dataclass(frozen=True)
class Expire:
    """
    EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT key when [NX|XX|GT|LT], and PERSIST key (``when`` 0, no flags):
    ``when`` is the client's integer (seconds or milliseconds, relative or a Unix time, by ``op``),
    converted and checked for overflow when the entry is applied, against the log's time (kvd.kv.expiry).
    """

    op: str
    key: bytes
    when: int = 0
    flags: int = 0

    def __post_init__(self):
        if self.op not in EXPIRE_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(EXPIRE_OPS), self.op))
        _bytes("key", self.key)
        _int("when", self.when, INT64_MIN, INT64_MAX)
        _int("flags", self.flags, 0, 15)
        if self.flags & EXPIRE_NX and self.flags & (EXPIRE_XX | EXPIRE_GT | EXPIRE_LT):
            raise ValueError("NX and XX, GT or LT options at the same time are not compatible")
        if self.flags & EXPIRE_GT and self.flags & EXPIRE_LT:
            raise ValueError("GT and LT options at the same time are not compatible")
        if self.op == "persist" and (self.when or self.flags):
            raise ValueError("PERSIST takes no time and no option")


@dataclass(frozen=True)
class GetEx:
    """
    GETEX key [EX|PX|EXAT|PXAT|PERSIST]: the string's value, its time to live set (``expire`` in
    milliseconds, from the log's time unless ``expire_at``), dropped (``persist``) or left alone.
    """

    key: bytes
    expire: Optional[int] = None
    expire_at: bool = False
    persist: bool = False

    def __post_init__(self):
        _bytes("key", self.key)
        if not isinstance(self.expire_at, bool) or not isinstance(self.persist, bool):
            raise TypeError("expire_at and persist must be bools")
        if self.expire is not None:
            _int("expire", self.expire, 1, INT64_MAX)
            if self.persist:
                raise ValueError("PERSIST excludes an expiry")
        elif self.expire_at:
            raise ValueError("expire_at needs an expire")


@dataclass(frozen=True)
class Tick:
    """
    No change of any key: an entry that carries the leader's clock into the log, so that reads and the
    reclaiming of expired keys see the time move on an idle cluster (kvd.kv.expiry).
    """


#: Lease's operations, by their code in the log (tag 68).
LEASE_OPS = ("grant", "keepalive", "revoke", "promote")


@dataclass(frozen=True)
class Lease:
    """
    KVD.LEASE GRANT ttl (``ttl`` seconds; the lease's id is the entry's index), KEEPALIVE id, REVOKE id, and
    PROMOTE, which a new leader proposes (kvd.kv.leases).  Not inside a transaction or a script: one grant per
    entry keeps ids unique.
    """

    op: str
    id: int = 0
    ttl: int = 0

    def __post_init__(self):
        if self.op not in LEASE_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(LEASE_OPS), self.op))
        _int("id", self.id, 0, INT64_MAX)
        _int("ttl", self.ttl, 0, INT64_MAX)
        if self.op == "grant" and (self.id or not 1 <= self.ttl <= LEASE_MAX_TTL_S):
            raise ValueError("GRANT takes a ttl of 1 to %d seconds and no id" % (LEASE_MAX_TTL_S,))
        if self.op in ("keepalive", "revoke") and (not self.id or self.ttl):
            raise ValueError("%s takes a lease id only" % (self.op.upper(),))
        if self.op == "promote" and (self.id or self.ttl):
            raise ValueError("PROMOTE takes nothing")


#: etcd's bound on a lease's ttl (MaxLeaseTTL), in seconds (kvd.kv.leases).
LEASE_MAX_TTL_S = 9_000_000_000


#: KvTxn's compare targets and operators, by their code in the log (tag 69).
TXN_TARGETS = ("value", "version", "create", "mod", "exists", "missing")
TXN_CMP_OPS = ("=", "!=", "<", ">")
#: KvTxn's operations, by their code in the log.
TXN_OP_NAMES = ("set", "del", "get")


@dataclass(frozen=True)
class Compare:
    """
    One compare of KVD.TXN (kvd.kv.txn): ``target`` of ``key`` ``op`` ``value`` (VALUE: bytes) or
    ``number`` (VERSION, CREATE, MOD: an unsigned integer); EXISTS and MISSING take neither.
    """

    target: str
    key: bytes
    op: str = "="
    value: bytes = b""
    number: int = 0

    def __post_init__(self):
        if self.target not in TXN_TARGETS:
            raise ValueError("target must be one of %s, not %r" % (", ".join(TXN_TARGETS), self.target))
        if self.op not in TXN_CMP_OPS:
            raise ValueError("op must be one of %s, not %r" % (" ".join(TXN_CMP_OPS), self.op))
        _bytes("key", self.key)
        _bytes("value", self.value)
        _int("number", self.number, 0, U64_MAX)
        if self.target != "value" and self.value:
            raise ValueError("only a VALUE compare takes a value")
        if self.target in ("value", "exists", "missing") and self.number:
            raise ValueError("only VERSION, CREATE and MOD compares take a number")
        if self.target in ("exists", "missing") and self.op != "=":
            raise ValueError("EXISTS and MISSING take no operator")


@dataclass(frozen=True)
class TxnOp:
    """One operation of KVD.TXN: SET key value, DEL key or GET key."""

    op: str
    key: bytes
    value: bytes = b""

    def __post_init__(self):
        if self.op not in TXN_OP_NAMES:
            raise ValueError("op must be one of %s, not %r" % (", ".join(TXN_OP_NAMES), self.op))
        _bytes("key", self.key)
        _bytes("value", self.value)
        if self.op != "set" and self.value:
            raise ValueError("only SET takes a value")


@dataclass(frozen=True)
class KvTxn:
    """
    KVD.TXN: if every compare holds, ``success``'s ops are applied, else ``failure``'s, in one log entry
    (kvd.kv.txn); the answer is [1 or 0, [each op's reply], the store's revision after it].
    """

    compares: Tuple[Compare, ...] = ()
    success: Tuple[TxnOp, ...] = ()
    failure: Tuple[TxnOp, ...] = ()

    def __post_init__(self):
        for name, kind in (("compares", Compare), ("success", TxnOp), ("failure", TxnOp)):
            items = getattr(self, name)
            if isinstance(items, (bytes, str)):
                raise TypeError("%s must be a sequence" % (name,))
            items = tuple(items)
            for item in items:
                if not isinstance(item, kind):
                    raise TypeError("each of %s must be a %s" % (name, kind.__name__))
            object.__setattr__(self, name, items)


@dataclass(frozen=True)
class Publish:
    """
    PUBLISH: no change of any key; applying it hands the message to the machine's events (kvd.kv.events), which
    each node delivers to its own subscribers, so that every subscriber sees messages in log order.
    """

    channel: bytes
    message: bytes
    shard: bool = False  # SPUBLISH: for the subscribers of the shard channel (SSUBSCRIBE), a namespace apart

    def __post_init__(self):
        _bytes("channel", self.channel)
        _bytes("message", self.message)
        if not isinstance(self.shard, bool):
            raise TypeError("shard must be a bool")


SIMPLE_WRITES = (Set, Delete, MSet, IncrBy, GetDel, Append, SetRange, MSetNX, Rename, Copy, FlushAll, HashWrite,
                 IncrByFloat, Expire, GetEx, Tick, Publish)


@dataclass(frozen=True)
class Transaction:
    """
    MULTI ... EXEC: ``ops`` (write commands and read ops, not transactions)
    applied in order in one log entry; the result is the list of their
    results, or None (EXEC's nil) when a key of ``watched`` -- (key, exists,
    index) as ``Versions`` read it -- changed since, and then nothing is applied.
    """

    ops: tuple
    watched: Tuple[Tuple[bytes, bool, int], ...] = ()

    def __post_init__(self):
        if isinstance(self.ops, (bytes, str)):
            raise TypeError("ops must be a sequence of commands")
        ops = tuple(self.ops)
        for op in ops:
            if not isinstance(op, SIMPLE_WRITES + TXN_READ_OPS + (Script,)):  # a script runs at its place
                raise TypeError("a transaction cannot hold %s" % (type(op).__name__,))
        object.__setattr__(self, "ops", ops)
        watched = tuple(tuple(w) for w in self.watched)
        for w in watched:
            if len(w) != 3:
                raise ValueError("each watched key must be (key, exists, index)")
            _bytes("watched key", w[0])
            if not isinstance(w[1], bool):
                raise TypeError("exists must be a bool")
            _int("watched index", w[2], 0, U64_MAX)
        object.__setattr__(self, "watched", watched)


WriteCommand = Union[Set, Delete, MSet, IncrBy, GetDel, Append, SetRange, MSetNX, Rename, Copy, FlushAll, Transaction,
                     Script, HashWrite, IncrByFloat, Expire, GetEx, Tick, Lease, KvTxn, Publish]
WRITE_COMMANDS = SIMPLE_WRITES + (Transaction, Script, Lease, KvTxn)


@dataclass(frozen=True)
class Envelope:
    """What is proposed to Raft: a write command and its exactly-once bookkeeping."""

    client_id: bytes
    seq: int
    ack_below: int
    stamp_ms: int
    command: WriteCommand

    def __post_init__(self):
        _bytes("client_id", self.client_id)
        _int("seq", self.seq, 0, U64_MAX)
        _int("ack_below", self.ack_below, 0, U64_MAX)
        _int("stamp_ms", self.stamp_ms, 0, U64_MAX)
        if not isinstance(self.command, WRITE_COMMANDS):
            raise TypeError("command must be a write command, not %s" % (type(self.command).__name__,))


# ------------------------------------------------------------------- reads


@dataclass(frozen=True)
class Get:
    key: bytes

    def __post_init__(self):
        _bytes("key", self.key)


@dataclass(frozen=True)
class MGet:
    keys: Tuple[bytes, ...]

    def __post_init__(self):
        _key_tuple(self, "keys")


@dataclass(frozen=True)
class Exists:
    """How many of ``keys`` exist, counting a repeated key each time (as Redis does)."""

    keys: Tuple[bytes, ...]

    def __post_init__(self):
        _key_tuple(self, "keys")


@dataclass(frozen=True)
class Keys:
    pattern: bytes

    def __post_init__(self):
        _bytes("pattern", self.pattern)


#: The types a key may have, as TYPE names them (their codes in the log: their index).
KEY_TYPES = ("string", "hash")
#: What SCAN's TYPE may name: a key type, or "other" (a type of Redis's kvd has not: no key matches).
SCAN_TYPES = KEY_TYPES + ("other",)


@dataclass(frozen=True)
class Scan:
    """SCAN cursor [MATCH match] [COUNT count] [TYPE type]: ``type`` one of KEY_TYPES or None (every key)."""

    cursor: int = 0
    match: Optional[bytes] = None
    count: int = 10
    type: Optional[str] = None

    def __post_init__(self):
        _int("cursor", self.cursor, 0, U64_MAX)
        if self.match is not None:
            _bytes("match", self.match)
        _int("count", self.count, 1, INT64_MAX)
        if self.type is not None and self.type not in SCAN_TYPES:
            raise ValueError("type must be one of %s, not %r" % (", ".join(SCAN_TYPES), self.type))


@dataclass(frozen=True)
class DbSize:
    pass


@dataclass(frozen=True)
class StrLen:
    key: bytes

    def __post_init__(self):
        _bytes("key", self.key)


@dataclass(frozen=True)
class GetRange:
    """GETRANGE key start end (and SUBSTR): inclusive, negative counts from the end, as Redis 7."""

    key: bytes
    start: int
    end: int

    def __post_init__(self):
        _bytes("key", self.key)
        _int("start", self.start, INT64_MIN, INT64_MAX)
        _int("end", self.end, INT64_MIN, INT64_MAX)


@dataclass(frozen=True)
class RandomKey:
    """
    RANDOMKEY: the first key at or after SCAN position ``position`` (wrapping
    around), nil if there is none.  The caller draws the position; the
    machine itself draws nothing.
    """

    position: int = 0

    def __post_init__(self):
        _int("position", self.position, 0, U64_MAX)


@dataclass(frozen=True)
class ScriptGet:
    """The bodies of the scripts of these SHA1s (lower-case hex) in the replicated cache, None where unknown."""

    shas: Tuple[bytes, ...]

    def __post_init__(self):
        _key_tuple(self, "shas")


@dataclass(frozen=True)
class Versions:
    """WATCH: for each key [1, its mod index] if it exists, else [0, the applied index]; see the module docstring."""

    keys: Tuple[bytes, ...]

    def __post_init__(self):
        _key_tuple(self, "keys")


#: HashRead's operations, by their code in the log (tag 41).
HASH_READ_OPS = ("hget", "hmget", "hgetall", "hkeys", "hvals", "hexists", "hlen", "hstrlen", "hscan", "hrandfield")
_HASH_READ_ARGS = {"hget": (1, 1), "hmget": (1, None), "hgetall": (0, 0), "hkeys": (0, 0), "hvals": (0, 0),
                   "hexists": (1, 1), "hlen": (0, 0), "hstrlen": (1, 1), "hscan": (1, None), "hrandfield": (1, 3)}


@dataclass(frozen=True)
class HashRead:
    """
    A read of the hash at ``key`` (kvd.kv.hashes).  HSCAN's ``args`` are the
    cursor (decimal) and its options as the client gave them (MATCH, COUNT:
    Redis reads them after the key's checks, so does the machine); HRANDFIELD's
    a position drawn by the caller (decimal; the machine draws nothing), the
    count (decimal) if any, and b"WITHVALUES" if asked.
    """

    op: str
    key: bytes
    args: Tuple[bytes, ...] = ()

    def __post_init__(self):
        if self.op not in HASH_READ_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(HASH_READ_OPS), self.op))
        _bytes("key", self.key)
        _key_tuple(self, "args", allow_empty=True)
        low, high = _HASH_READ_ARGS[self.op]
        if len(self.args) < low or (high is not None and len(self.args) > high):
            raise ValueError("%s takes %s arguments, not %d" % (self.op.upper(), (low, high), len(self.args)))
        if self.op == "hscan":
            cursor = self.args[0]
            if not cursor.isdigit() or len(cursor) > 20 or int(cursor) > U64_MAX:
                raise ValueError("HSCAN's cursor must be an unsigned 64-bit decimal")
        if self.op == "hrandfield":
            position = self.args[0]
            if not position.isdigit() or len(position) > 20 or int(position) > U64_MAX:
                raise ValueError("HRANDFIELD's position must be an unsigned 64-bit decimal")
            if len(self.args) > 1 and parse_int64(self.args[1]) is None:
                raise ValueError("HRANDFIELD's count must be a 64-bit integer")
            if len(self.args) > 2 and self.args[2] != b"WITHVALUES":
                raise ValueError("HRANDFIELD's third argument can only be WITHVALUES")


@dataclass(frozen=True)
class KeyType:
    """TYPE key: the type's name (KEY_TYPES) as a status, or none."""

    key: bytes

    def __post_init__(self):
        _bytes("key", self.key)


#: Ttl's operations, by their code in the log (tag 43).
TTL_OPS = ("ttl", "pttl", "expiretime", "pexpiretime")


@dataclass(frozen=True)
class Ttl:
    """TTL, PTTL, EXPIRETIME, PEXPIRETIME key: -2 if there is no such key, -1 if it has no time to live."""

    op: str
    key: bytes

    def __post_init__(self):
        if self.op not in TTL_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(TTL_OPS), self.op))
        _bytes("key", self.key)


#: LeaseRead's operations, by their code in the log (tag 44).
LEASE_READ_OPS = ("ttl", "list")


@dataclass(frozen=True)
class LeaseRead:
    """KVD.LEASE TTL id [KEYS] (granted ttl, remaining ttl, and the attached keys if ``keys``), KVD.LEASE LIST."""

    op: str
    id: int = 0
    keys: bool = False

    def __post_init__(self):
        if self.op not in LEASE_READ_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(LEASE_READ_OPS), self.op))
        _int("id", self.id, 0, INT64_MAX)
        if not isinstance(self.keys, bool):
            raise TypeError("keys must be a bool")
        if self.op == "ttl" and not self.id:
            raise ValueError("TTL takes a lease id")
        if self.op == "list" and (self.id or self.keys):
            raise ValueError("LIST takes nothing")


#: RevRead's operations, by their code in the log (tag 45).
REV_READ_OPS = ("getrev", "revision")


@dataclass(frozen=True)
class RevRead:
    """KVD.GET key WITHREV (op "getrev": [value, create, mod, version], nil if missing) or KVD.REVISION."""

    op: str
    key: bytes = b""

    def __post_init__(self):
        if self.op not in REV_READ_OPS:
            raise ValueError("op must be one of %s, not %r" % (", ".join(REV_READ_OPS), self.op))
        _bytes("key", self.key)
        if self.op == "revision" and self.key:
            raise ValueError("KVD.REVISION names no key")


ReadOp = Union[Get, MGet, Exists, Keys, Scan, DbSize, StrLen, GetRange, RandomKey, Versions, ScriptGet, HashRead,
               KeyType, Ttl, LeaseRead, RevRead]
#: The read ops a transaction may hold.
TXN_READ_OPS = (Get, MGet, Exists, Keys, Scan, DbSize, StrLen, GetRange, RandomKey, HashRead, KeyType, Ttl,
                LeaseRead, RevRead)
READ_OPS = TXN_READ_OPS + (Versions, ScriptGet)


def read_keys(op) -> Tuple[bytes, ...]:
    """The keys a read op names (for the key length limit)."""
    if isinstance(op, (Get, StrLen, GetRange, HashRead, KeyType, Ttl)):
        return (op.key,)
    if isinstance(op, RevRead):
        return (op.key,) if op.op == "getrev" else ()
    if isinstance(op, (MGet, Exists, Versions)):
        return op.keys
    return ()


# ------------------------------------------------------------------- codec

_TAG_SET, _TAG_DELETE, _TAG_MSET, _TAG_INCRBY = 1, 2, 3, 4
_TAG_GETDEL, _TAG_APPEND, _TAG_SETRANGE, _TAG_MSETNX, _TAG_RENAME, _TAG_COPY = 5, 6, 7, 8, 9, 10
_TAG_FLUSHALL = 11
_TAG_SCRIPT = 13
_TAG_TRANSACTION = 12
#: Read ops' tags end below this (inside a transaction a tag in 32-63 is a read); writes go on from it.
_TAG_READ_END = 64
_TAG_INCRBYFLOAT = 64
_TAG_GET, _TAG_MGET, _TAG_EXISTS, _TAG_KEYS, _TAG_SCAN, _TAG_DBSIZE = 32, 33, 34, 35, 36, 37
_TAG_STRLEN, _TAG_GETRANGE, _TAG_RANDOMKEY = 38, 39, 40
_TAG_HASH_WRITE, _TAG_HASH_READ, _TAG_KEY_TYPE = 14, 41, 42
_TAG_EXPIRE, _TAG_GETEX, _TAG_TICK, _TAG_TTL = 65, 66, 67, 43
_TAG_LEASE, _TAG_LEASE_READ = 68, 44
_TAG_KV_TXN, _TAG_REV_READ = 69, 45
_TAG_PUBLISH = 70
_FLAG_KEEPTTL, _FLAG_EXPIRE, _FLAG_EXPIRE_AT, _FLAG_LEASE = 0x10, 0x20, 0x40, 0x80
_LEASE_READ_KEYS = 0x01
_GETEX_EXPIRE, _GETEX_EXPIRE_AT, _GETEX_PERSIST = 0x01, 0x02, 0x04
_SCAN_MATCH, _SCAN_TYPE = 0x01, 0x02
_COND_CODE = {None: 0, "NX": 1, "XX": 2}
_CODE_COND = {v: k for k, v in _COND_CODE.items()}
_FLAG_IFEQ, _FLAG_GET = 0x04, 0x08


def encode_envelope(env: Envelope) -> bytes:
    if not isinstance(env, Envelope):
        raise TypeError("expected an Envelope, not %s" % (type(env).__name__,))
    w = Writer()
    w.byte(ENVELOPE_VERSION)
    w.blob(env.client_id)
    w.uint(env.seq)
    w.uint(env.ack_below)
    w.uint(env.stamp_ms)
    _encode_command(w, env.command)
    return w.getvalue()


def _encode_command(w: Writer, cmd) -> None:
    if isinstance(cmd, Set):
        w.byte(_TAG_SET)
        w.blob(cmd.key)
        w.blob(cmd.value)
        flags = _COND_CODE[cmd.cond] | (_FLAG_IFEQ if cmd.ifeq is not None else 0) | (_FLAG_GET if cmd.get else 0)
        flags |= _FLAG_KEEPTTL if cmd.keepttl else 0
        if cmd.expire is not None:
            flags |= _FLAG_EXPIRE_AT if cmd.expire_at else _FLAG_EXPIRE
        flags |= _FLAG_LEASE if cmd.lease is not None else 0
        w.byte(flags)
        if cmd.ifeq is not None:
            w.blob(cmd.ifeq)
        if cmd.expire is not None:
            w.uint(cmd.expire)
        if cmd.lease is not None:
            w.uint(cmd.lease)
    elif isinstance(cmd, Lease):
        w.byte(_TAG_LEASE)
        w.byte(LEASE_OPS.index(cmd.op))
        if cmd.op in ("keepalive", "revoke"):
            w.uint(cmd.id)
        elif cmd.op == "grant":
            w.uint(cmd.ttl)
    elif isinstance(cmd, Expire):
        w.byte(_TAG_EXPIRE)
        w.byte(EXPIRE_OPS.index(cmd.op))
        w.blob(cmd.key)
        w.sint(cmd.when)
        w.byte(cmd.flags)
    elif isinstance(cmd, GetEx):
        w.byte(_TAG_GETEX)
        w.blob(cmd.key)
        flags = _GETEX_PERSIST if cmd.persist else 0
        if cmd.expire is not None:
            flags |= _GETEX_EXPIRE_AT if cmd.expire_at else _GETEX_EXPIRE
        w.byte(flags)
        if cmd.expire is not None:
            w.uint(cmd.expire)
    elif isinstance(cmd, Tick):
        w.byte(_TAG_TICK)
    elif isinstance(cmd, Publish):
        w.byte(_TAG_PUBLISH)
        w.byte(1 if cmd.shard else 0)
        w.blob(cmd.channel)
        w.blob(cmd.message)
    elif isinstance(cmd, Delete):
        w.byte(_TAG_DELETE)
        w.uint(len(cmd.keys))
        for k in cmd.keys:
            w.blob(k)
    elif isinstance(cmd, (MSet, MSetNX)):
        w.byte(_TAG_MSET if isinstance(cmd, MSet) else _TAG_MSETNX)
        w.uint(len(cmd.pairs))
        for k, v in cmd.pairs:
            w.blob(k)
            w.blob(v)
    elif isinstance(cmd, IncrBy):
        w.byte(_TAG_INCRBY)
        w.blob(cmd.key)
        w.sint(cmd.delta)
    elif isinstance(cmd, IncrByFloat):
        w.byte(_TAG_INCRBYFLOAT)
        w.blob(cmd.key)
        w.blob(cmd.increment)
    elif isinstance(cmd, GetDel):
        w.byte(_TAG_GETDEL)
        w.blob(cmd.key)
    elif isinstance(cmd, Append):
        w.byte(_TAG_APPEND)
        w.blob(cmd.key)
        w.blob(cmd.value)
        w.uint(cmd.max_len)
    elif isinstance(cmd, SetRange):
        w.byte(_TAG_SETRANGE)
        w.blob(cmd.key)
        w.uint(cmd.offset)
        w.blob(cmd.value)
        w.uint(cmd.max_len)
    elif isinstance(cmd, (Rename, Copy)):
        w.byte(_TAG_RENAME if isinstance(cmd, Rename) else _TAG_COPY)
        w.blob(cmd.src)
        w.blob(cmd.dst)
        w.byte(int(cmd.nx if isinstance(cmd, Rename) else cmd.replace))
    elif isinstance(cmd, FlushAll):
        w.byte(_TAG_FLUSHALL)
    elif isinstance(cmd, HashWrite):
        w.byte(_TAG_HASH_WRITE)
        w.byte(HASH_WRITE_OPS.index(cmd.op))
        w.blob(cmd.key)
        w.uint(len(cmd.args))
        for arg in cmd.args:
            w.blob(arg)
    elif isinstance(cmd, Script):
        w.byte(_TAG_SCRIPT)
        w.byte(SCRIPT_OPS.index(cmd.op))
        w.blob(cmd.body)
        for seq in (cmd.keys, cmd.args):
            w.uint(len(seq))
            for item in seq:
                w.blob(item)
        w.uint(cmd.max_len)
    elif isinstance(cmd, KvTxn):
        w.byte(_TAG_KV_TXN)
        _encode_kv_txn(w, cmd)
    elif isinstance(cmd, Transaction):
        w.byte(_TAG_TRANSACTION)
        w.uint(len(cmd.watched))
        for key, exists, index in cmd.watched:
            w.blob(key)
            w.byte(int(exists))
            w.uint(index)
        w.uint(len(cmd.ops))
        for op in cmd.ops:
            if isinstance(op, TXN_READ_OPS):
                _encode_read(w, op)
            else:
                _encode_command(w, op)
    else:
        raise TypeError("not a write command: %s" % (type(cmd).__name__,))


def _encode_kv_txn(w: Writer, cmd: KvTxn) -> None:
    w.uint(len(cmd.compares))
    for c in cmd.compares:
        w.byte(TXN_TARGETS.index(c.target))
        w.byte(TXN_CMP_OPS.index(c.op))
        w.blob(c.key)
        if c.target == "value":
            w.blob(c.value)
        elif c.target in ("version", "create", "mod"):
            w.uint(c.number)
    for ops in (cmd.success, cmd.failure):
        w.uint(len(ops))
        for op in ops:
            w.byte(TXN_OP_NAMES.index(op.op))
            w.blob(op.key)
            if op.op == "set":
                w.blob(op.value)


def _decode_kv_txn(r: Reader) -> KvTxn:
    compares = []
    for _ in range(r.count(3)):
        target, op = r.byte(), r.byte()
        if target >= len(TXN_TARGETS) or op >= len(TXN_CMP_OPS):
            raise CodecError("invalid KVD.TXN compare %d %d" % (target, op))
        target = TXN_TARGETS[target]
        key = r.blob()
        value = r.blob() if target == "value" else b""
        number = r.uint() if target in ("version", "create", "mod") else 0
        compares.append(Compare(target, key, TXN_CMP_OPS[op], value, number))
    branches = []
    for _ in range(2):
        ops = []
        for _ in range(r.count(2)):
            op = r.byte()
            if op >= len(TXN_OP_NAMES):
                raise CodecError("invalid KVD.TXN op %d" % (op,))
            key = r.blob()
            ops.append(TxnOp(TXN_OP_NAMES[op], key, r.blob() if op == 0 else b""))
        branches.append(tuple(ops))
    return KvTxn(tuple(compares), branches[0], branches[1])


def _encode_read(w: Writer, op) -> None:
    if isinstance(op, (Get, StrLen)):
        w.byte(_TAG_GET if isinstance(op, Get) else _TAG_STRLEN)
        w.blob(op.key)
    elif isinstance(op, (MGet, Exists)):
        w.byte(_TAG_MGET if isinstance(op, MGet) else _TAG_EXISTS)
        w.uint(len(op.keys))
        for k in op.keys:
            w.blob(k)
    elif isinstance(op, Keys):
        w.byte(_TAG_KEYS)
        w.blob(op.pattern)
    elif isinstance(op, Scan):
        w.byte(_TAG_SCAN)
        w.uint(op.cursor)
        w.uint(op.count)
        w.byte((0 if op.match is None else _SCAN_MATCH) | (0 if op.type is None else _SCAN_TYPE))
        if op.match is not None:
            w.blob(op.match)
        if op.type is not None:
            w.byte(SCAN_TYPES.index(op.type))
    elif isinstance(op, DbSize):
        w.byte(_TAG_DBSIZE)
    elif isinstance(op, GetRange):
        w.byte(_TAG_GETRANGE)
        w.blob(op.key)
        w.sint(op.start)
        w.sint(op.end)
    elif isinstance(op, RandomKey):
        w.byte(_TAG_RANDOMKEY)
        w.uint(op.position)
    elif isinstance(op, HashRead):
        w.byte(_TAG_HASH_READ)
        w.byte(HASH_READ_OPS.index(op.op))
        w.blob(op.key)
        w.uint(len(op.args))
        for arg in op.args:
            w.blob(arg)
    elif isinstance(op, KeyType):
        w.byte(_TAG_KEY_TYPE)
        w.blob(op.key)
    elif isinstance(op, Ttl):
        w.byte(_TAG_TTL)
        w.byte(TTL_OPS.index(op.op))
        w.blob(op.key)
    elif isinstance(op, LeaseRead):
        w.byte(_TAG_LEASE_READ)
        w.byte(LEASE_READ_OPS.index(op.op))
        if op.op == "ttl":
            w.uint(op.id)
            w.byte(_LEASE_READ_KEYS if op.keys else 0)
    elif isinstance(op, RevRead):
        w.byte(_TAG_REV_READ)
        w.byte(REV_READ_OPS.index(op.op))
        if op.op == "getrev":
            w.blob(op.key)
    else:
        raise TypeError("not a read op a transaction may hold: %s" % (type(op).__name__,))


def _uint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _blob_size(data: bytes) -> int:
    return _uint_size(len(data)) + len(data)


def command_size(cmd: WriteCommand) -> int:
    """
    The bytes ``cmd`` takes inside an encoded envelope (tag and body), computed
    without encoding it: what the command limits (kvd.limits) are checked
    against before a write is proposed, so an entry too big for the log is
    refused without copying it.
    """
    if isinstance(cmd, Set):
        size = 2 + _blob_size(cmd.key) + _blob_size(cmd.value)  # tag, flags
        size += _uint_size(cmd.expire) if cmd.expire is not None else 0
        size += _uint_size(cmd.lease) if cmd.lease is not None else 0
        return size + (_blob_size(cmd.ifeq) if cmd.ifeq is not None else 0)
    if isinstance(cmd, Expire):
        when = cmd.when
        return 3 + _blob_size(cmd.key) + _uint_size(when << 1 if when >= 0 else ((-when) << 1) - 1)
    if isinstance(cmd, GetEx):
        return 2 + _blob_size(cmd.key) + (_uint_size(cmd.expire) if cmd.expire is not None else 0)
    if isinstance(cmd, Tick):
        return 1
    if isinstance(cmd, Lease):
        return 2 + (_uint_size(cmd.id) if cmd.id else 0) + (_uint_size(cmd.ttl) if cmd.ttl else 0)
    if isinstance(cmd, Publish):
        return 2 + _blob_size(cmd.channel) + _blob_size(cmd.message)
    if isinstance(cmd, Delete):
        return 1 + _uint_size(len(cmd.keys)) + sum(_blob_size(k) for k in cmd.keys)
    if isinstance(cmd, (MSet, MSetNX)):
        return 1 + _uint_size(len(cmd.pairs)) + sum(_blob_size(k) + _blob_size(v) for k, v in cmd.pairs)
    if isinstance(cmd, IncrBy):
        delta = cmd.delta
        return 1 + _blob_size(cmd.key) + _uint_size(delta << 1 if delta >= 0 else ((-delta) << 1) - 1)
    if isinstance(cmd, IncrByFloat):
        return 1 + _blob_size(cmd.key) + _blob_size(cmd.increment)
    if isinstance(cmd, GetDel):
        return 1 + _blob_size(cmd.key)
    if isinstance(cmd, Append):
        return 1 + _blob_size(cmd.key) + _blob_size(cmd.value) + _uint_size(cmd.max_len)
    if isinstance(cmd, SetRange):
        return 1 + _blob_size(cmd.key) + _uint_size(cmd.offset) + _blob_size(cmd.value) + _uint_size(cmd.max_len)
    if isinstance(cmd, (Rename, Copy)):
        return 2 + _blob_size(cmd.src) + _blob_size(cmd.dst)
    if isinstance(cmd, FlushAll):
        return 1
    if isinstance(cmd, HashWrite):
        return 2 + _blob_size(cmd.key) + _uint_size(len(cmd.args)) + sum(_blob_size(a) for a in cmd.args)
    if isinstance(cmd, Script):
        return (2 + _blob_size(cmd.body) + _uint_size(len(cmd.keys)) + sum(_blob_size(k) for k in cmd.keys)
                + _uint_size(len(cmd.args)) + sum(_blob_size(a) for a in cmd.args) + _uint_size(cmd.max_len))
    if isinstance(cmd, KvTxn):
        w = Writer()
        _encode_kv_txn(w, cmd)
        return 1 + len(w.getvalue())
    if isinstance(cmd, Transaction):
        size = 1 + _uint_size(len(cmd.watched)) + _uint_size(len(cmd.ops))
        size += sum(_blob_size(k) + 1 + _uint_size(i) for k, _, i in cmd.watched)
        for op in cmd.ops:
            if isinstance(op, TXN_READ_OPS):
                w = Writer()
                _encode_read(w, op)
                size += len(w.getvalue())
            else:
                size += command_size(op)
        return size
    raise TypeError("not a write command: %s" % (type(cmd).__name__,))


def command_keys(cmd: WriteCommand) -> int:
    """
    How many keys ``cmd`` writes (repeats counted): what applying it costs.
    FlushAll names none: the keyspace drops its keys whole (``clear``).
    """
    if isinstance(cmd, (FlushAll, Tick, Publish)):
        return 0
    if isinstance(cmd, Lease):  # its keys are deleted by later entries, in bounded steps (kvd.kv.leases)
        return 1
    if isinstance(cmd, Transaction):
        # What applying it costs: each write's keys, each read's keys (at least one), each watched key.
        return len(cmd.watched) + sum(
            max(1, len(read_keys(op))) if isinstance(op, TXN_READ_OPS) else command_keys(op) for op in cmd.ops)
    if isinstance(cmd, Delete):
        return len(cmd.keys)
    if isinstance(cmd, KvTxn):  # each compare reads a key, each op (of either branch) touches one
        return max(1, len(cmd.compares) + len(cmd.success) + len(cmd.failure))
    if isinstance(cmd, (MSet, MSetNX)):
        return len(cmd.pairs)
    if isinstance(cmd, (Rename, Copy)):
        return 2
    if isinstance(cmd, Script):  # what it writes is known once it runs; kvd.kv.script bounds that
        return len(cmd.keys)
    if isinstance(cmd, HashWrite):  # one key, but each field written costs as much as a key
        return max(1, len(cmd.args) // 2 if cmd.op in ("hset", "hmset") else len(cmd.args) if cmd.op == "hdel" else 1)
    return 1


def write_keys(cmd: WriteCommand) -> Tuple[bytes, ...]:
    """Every key ``cmd`` names, in order, repeats kept (for the key length limit)."""
    if isinstance(cmd, Delete):
        return cmd.keys
    if isinstance(cmd, (MSet, MSetNX)):
        return tuple(k for k, _ in cmd.pairs)
    if isinstance(cmd, (Rename, Copy)):
        return (cmd.src, cmd.dst)
    if isinstance(cmd, (FlushAll, Tick, Lease, Publish)):
        return ()
    if isinstance(cmd, KvTxn):
        return tuple(c.key for c in cmd.compares) + tuple(op.key for op in cmd.success + cmd.failure)
    if isinstance(cmd, Script):
        return cmd.keys
    if isinstance(cmd, Transaction):
        keys = tuple(k for k, _, _ in cmd.watched)
        for op in cmd.ops:
            keys += read_keys(op) if isinstance(op, TXN_READ_OPS) else write_keys(op)
        return keys
    if isinstance(cmd, WRITE_COMMANDS):
        return (cmd.key,)
    raise TypeError("not a write command: %s" % (type(cmd).__name__,))


def decode_envelope(data: bytes) -> Envelope:
    """The inverse of ``encode_envelope``; raises ``CodecError`` and nothing else on bad input."""
    r = Reader(data)
    version = r.byte()
    if version != ENVELOPE_VERSION:
        raise CodecError("unknown envelope version %d" % (version,))
    client_id = r.blob()
    seq = r.uint()
    ack_below = r.uint()
    stamp_ms = r.uint()
    command = _decode_command(r)
    r.expect_end()
    try:
        return Envelope(client_id, seq, ack_below, stamp_ms, command)
    except (TypeError, ValueError) as e:
        raise CodecError("invalid envelope: %s" % (e,)) from None


def _decode_command(r: Reader, nested: bool = False) -> WriteCommand:
    tag = r.byte()
    try:
        if _TAG_GET <= tag < _TAG_READ_END and nested:
            return _decode_read(r, tag)
        if tag == _TAG_TRANSACTION and not nested:
            watched = []
            for _ in range(r.count(3)):
                key, exists = r.blob(), r.byte()
                if exists > 1:
                    raise CodecError("invalid watched-key flag %d" % (exists,))
                watched.append((key, bool(exists), r.uint()))
            ops = tuple(_decode_command(r, nested=True) for _ in range(r.count()))
            return Transaction(ops, tuple(watched))
        if tag == _TAG_SET:
            key, value, flags = r.blob(), r.blob(), r.byte()
            if ((flags & 0x03) not in _CODE_COND or (flags & _FLAG_EXPIRE and flags & _FLAG_EXPIRE_AT)
                    or (flags & _FLAG_LEASE and flags & (_FLAG_KEEPTTL | _FLAG_EXPIRE | _FLAG_EXPIRE_AT))):
                raise CodecError("invalid SET flags 0x%02x" % (flags,))
            ifeq = r.blob() if flags & _FLAG_IFEQ else None
            expire = r.uint() if flags & (_FLAG_EXPIRE | _FLAG_EXPIRE_AT) else None
            lease = r.uint() if flags & _FLAG_LEASE else None
            return Set(key, value, _CODE_COND[flags & 0x03], ifeq, bool(flags & _FLAG_GET), expire,
                       bool(flags & _FLAG_EXPIRE_AT), bool(flags & _FLAG_KEEPTTL), lease)
        if tag == _TAG_LEASE and not nested:
            op = r.byte()
            if op >= len(LEASE_OPS):
                raise CodecError("invalid lease op %d" % (op,))
            op = LEASE_OPS[op]
            if op in ("keepalive", "revoke"):
                return Lease(op, id=r.uint())
            return Lease(op, ttl=r.uint()) if op == "grant" else Lease(op)
        if tag == _TAG_EXPIRE:
            op = r.byte()
            if op >= len(EXPIRE_OPS):
                raise CodecError("invalid expire op %d" % (op,))
            return Expire(EXPIRE_OPS[op], r.blob(), r.sint(), r.byte())
        if tag == _TAG_GETEX:
            key, flags = r.blob(), r.byte()
            if flags & ~0x07 or (flags & _GETEX_EXPIRE and flags & _GETEX_EXPIRE_AT):
                raise CodecError("invalid GETEX flags 0x%02x" % (flags,))
            expire = r.uint() if flags & (_GETEX_EXPIRE | _GETEX_EXPIRE_AT) else None
            return GetEx(key, expire, bool(flags & _GETEX_EXPIRE_AT), bool(flags & _GETEX_PERSIST))
        if tag == _TAG_TICK:
            return Tick()
        if tag == _TAG_KV_TXN and not nested:
            return _decode_kv_txn(r)
        if tag == _TAG_PUBLISH:
            flags = r.byte()
            if flags > 1:
                raise CodecError("invalid PUBLISH flags %d" % (flags,))
            return Publish(r.blob(), r.blob(), bool(flags))
        if tag == _TAG_DELETE:
            return Delete(tuple(r.blob() for _ in range(r.count())))
        if tag == _TAG_MSET:
            return MSet(tuple((r.blob(), r.blob()) for _ in range(r.count(2))))
        if tag == _TAG_INCRBY:
            return IncrBy(r.blob(), r.sint())
        if tag == _TAG_INCRBYFLOAT:
            return IncrByFloat(r.blob(), r.blob())
        if tag == _TAG_GETDEL:
            return GetDel(r.blob())
        if tag == _TAG_APPEND:
            return Append(r.blob(), r.blob(), r.uint())
        if tag == _TAG_SETRANGE:
            return SetRange(r.blob(), r.uint(), r.blob(), r.uint())
        if tag == _TAG_MSETNX:
            return MSetNX(tuple((r.blob(), r.blob()) for _ in range(r.count(2))))
        if tag in (_TAG_RENAME, _TAG_COPY):
            src, dst, flag = r.blob(), r.blob(), r.byte()
            if flag > 1:
                raise CodecError("invalid %s flag %d" % ("RENAME" if tag == _TAG_RENAME else "COPY", flag))
            return Rename(src, dst, bool(flag)) if tag == _TAG_RENAME else Copy(src, dst, bool(flag))
        if tag == _TAG_FLUSHALL:
            return FlushAll()
        if tag == _TAG_HASH_WRITE:
            op = r.byte()
            if op >= len(HASH_WRITE_OPS):
                raise CodecError("invalid hash write op %d" % (op,))
            key = r.blob()
            return HashWrite(HASH_WRITE_OPS[op], key, tuple(r.blob() for _ in range(r.count())))
        if tag == _TAG_SCRIPT:
            op = r.byte()
            if op >= len(SCRIPT_OPS):
                raise CodecError("invalid script op %d" % (op,))
            body = r.blob()
            keys = tuple(r.blob() for _ in range(r.count()))
            args = tuple(r.blob() for _ in range(r.count()))
            return Script(SCRIPT_OPS[op], body, keys, args, r.uint())
    except (TypeError, ValueError) as e:
        if isinstance(e, CodecError):
            raise
        raise CodecError("invalid command: %s" % (e,)) from None
    raise CodecError("unknown command tag %d" % (tag,))


def _decode_read(r: Reader, tag: int):
    if tag == _TAG_GET:
        return Get(r.blob())
    if tag == _TAG_STRLEN:
        return StrLen(r.blob())
    if tag in (_TAG_MGET, _TAG_EXISTS):
        keys = tuple(r.blob() for _ in range(r.count()))
        return MGet(keys) if tag == _TAG_MGET else Exists(keys)
    if tag == _TAG_KEYS:
        return Keys(r.blob())
    if tag == _TAG_SCAN:
        cursor, count, flags = r.uint(), r.uint(), r.byte()
        if flags & ~(_SCAN_MATCH | _SCAN_TYPE):
            raise CodecError("invalid SCAN flags %d" % (flags,))
        match = r.blob() if flags & _SCAN_MATCH else None
        type_ = None
        if flags & _SCAN_TYPE:
            code = r.byte()
            if code >= len(SCAN_TYPES):
                raise CodecError("invalid SCAN type %d" % (code,))
            type_ = SCAN_TYPES[code]
        return Scan(cursor, match, count, type_)
    if tag == _TAG_DBSIZE:
        return DbSize()
    if tag == _TAG_GETRANGE:
        return GetRange(r.blob(), r.sint(), r.sint())
    if tag == _TAG_RANDOMKEY:
        return RandomKey(r.uint())
    if tag == _TAG_HASH_READ:
        op = r.byte()
        if op >= len(HASH_READ_OPS):
            raise CodecError("invalid hash read op %d" % (op,))
        key = r.blob()
        return HashRead(HASH_READ_OPS[op], key, tuple(r.blob() for _ in range(r.count())))
    if tag == _TAG_KEY_TYPE:
        return KeyType(r.blob())
    if tag == _TAG_REV_READ:
        op = r.byte()
        if op >= len(REV_READ_OPS):
            raise CodecError("invalid revision read op %d" % (op,))
        return RevRead(REV_READ_OPS[op], r.blob() if op == 0 else b"")
    if tag == _TAG_TTL:
        op = r.byte()
        if op >= len(TTL_OPS):
            raise CodecError("invalid TTL op %d" % (op,))
        return Ttl(TTL_OPS[op], r.blob())
    if tag == _TAG_LEASE_READ:
        op = r.byte()
        if op >= len(LEASE_READ_OPS):
            raise CodecError("invalid lease read op %d" % (op,))
        if LEASE_READ_OPS[op] == "list":
            return LeaseRead("list")
        lease_id, flags = r.uint(), r.byte()
        if flags & ~_LEASE_READ_KEYS:
            raise CodecError("invalid lease read flags %d" % (flags,))
        return LeaseRead("ttl", lease_id, bool(flags & _LEASE_READ_KEYS))
    raise CodecError("unknown read op tag %d" % (tag,))
