# -*- test-case-name: tests.resp.test_commands -*-
"""
The command table: from a request's arguments to a typed request.

``parse_request(args)`` returns one of

* ``Write(command)``: a kvd.kv write command, to be proposed to Raft;
* ``Read(op)``: a kvd.kv read op;
* ``Admin(name, args)``: everything else, ``name`` being Redis's lower-case
  full name (``"ping"``, ``"client|setname"``, ``"kvd.members"``) and
  ``args`` the arguments after it;
* ``CommandError``: the reply for a request that is wrong on its face, with
  Redis's exact texts for unknown commands, arity and syntax errors.

Validation that needs no state happens here (integers, SET option clashes,
SELECT's database, client names), so executors only see sane requests.
The table also answers COMMAND COUNT/INFO/LIST.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from kvd.kv.commands import (
    INT64_MIN, KEY_TYPES, MAX_STRING_BYTES, Append, Copy, DbSize, Delete, Exists, FlushAll, Get, GetDel, GetRange,
    HashRead, HashWrite, IncrBy, Keys, KeyType, MGet, MSet, MSetNX, RandomKey, ReadOp, Rename, Scan, Script,
    ScriptGet, Set, SetRange, StrLen, WriteCommand, command_keys, command_size, float_increment_error, parse_int64,
    read_keys, write_keys,
)
from kvd.kv.commands import (
    EXPIRE_GT, EXPIRE_LT, EXPIRE_NX, EXPIRE_XX, INT64_MAX, Expire, GetEx, IncrByFloat, Publish, RevRead, Ttl,
)
from kvd.kv.commands import LEASE_MAX_TTL_S, Lease, LeaseRead
from kvd.kv.txn import TxnSyntaxError, parse as parse_kv_txn
from kvd.kv.results import OK, KVError
from kvd.limits import LIMITS
from kvd.resp.encoder import RespMap, RespPairs, SimpleString
from kvd.resp.errors import CommandError, Rejected


@dataclass(frozen=True)
class Write:
    """
    A write command; ``name`` is the Redis command when it is not the
    command's own (SETNX is a Set), ``reply`` how its result is shaped for
    the client (a key of ``REPLY_SHAPES``; None: as it is).
    """

    command: WriteCommand
    name: Optional[str] = None
    reply: Optional[str] = None


@dataclass(frozen=True)
class Read:
    """
    A read op; ``name`` and ``reply`` as for ``Write``.  ``serializable``: the request itself asks to be
    answered from the node's own applied state, as any read on a READONLY connection is (KVD.GET ...
    SERIALIZABLE, etcd's per-request Range option), for clients that cannot send READONLY first.
    """

    op: ReadOp
    name: Optional[str] = None
    reply: Optional[str] = None
    serializable: bool = False


def _as_bool(result):
    """SETNX: the Set's OK (set) or nil (not set) as Redis's 1 or 0."""
    return 1 if result is OK else 0 if result is None else result


def _as_type(result):
    """TYPE: the key's type name (b"string", b"hash", b"none") as a status reply."""
    return SimpleString(result.decode()) if isinstance(result, bytes) else result


def _as_exists(result):
    """SCRIPT EXISTS: each script's body (or None) as 1 (or 0)."""
    return [0 if body is None else 1 for body in result]


def _as_map(result):
    """HGETALL: the flat [field, value, ...] as a map (RESP3; a flat array in RESP2)."""
    return RespMap(tuple(zip(result[0::2], result[1::2]))) if isinstance(result, list) else result


def _as_pairs(result):
    """HRANDFIELD ... WITHVALUES: [[field, value], ...] as RESP3 pairs (a flat array in RESP2)."""
    return RespPairs(tuple(tuple(pair) for pair in result)) if isinstance(result, list) else result


#: How a result becomes the reply of a request whose ``reply`` names it; errors pass through.
REPLY_SHAPES: Dict[str, Callable[[Any], Any]] = {"bool": _as_bool, "type": _as_type, "exists": _as_exists,
                                                 "map": _as_map, "pairs": _as_pairs}


def shape_reply(request, result):
    """The reply to ``request`` (a Write or a Read) from the machine's ``result``."""
    shape = getattr(request, "reply", None)
    if isinstance(result, KVError) and result.message == "ERR invalid expire time in 'set' command":
        # SETEX and PSETEX are Sets: an expiry that overflows the log's time (found when applied) names them.
        return KVError("ERR invalid expire time in '%s' command" % (request_name(request),))
    if shape is None or isinstance(result, KVError):
        return result
    return REPLY_SHAPES[shape](result)


@dataclass(frozen=True)
class Admin:
    name: str
    args: Tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        if self.name in SECRET_ARGS:  # never a password in a log line
            return "Admin(%r, <%d arguments hidden>)" % (self.name, len(self.args))
        return "Admin(%r, %r)" % (self.name, self.args)


#: Commands whose arguments may hold a password.
SECRET_ARGS = frozenset({"auth", "hello"})


Request = Union[Write, Read, Admin]
Parsed = Union[Request, CommandError]


def _text(data: bytes) -> str:
    """Client bytes inside an error message, kept byte for byte (see kvd.resp.encoder)."""
    return data.decode("utf-8", "surrogateescape")


#: One write is one Raft entry that every node must store, send and apply in one go: an MSET or DEL of
#: more keys, or more bytes as encoded in the log, than this is refused before it is proposed (split it
#: into several).  A key longer than ``key_bytes`` is refused by every command.  From kvd.limits.
MAX_WRITE_KEYS = LIMITS.command_keys
MAX_WRITE_BYTES = LIMITS.command_bytes
MAX_KEY_BYTES = LIMITS.key_bytes

SYNTAX_ERROR = CommandError("ERR", "syntax error")
NOT_INTEGER = CommandError("ERR", "value is not an integer or out of range")
STRING_TOO_LONG = CommandError("ERR", "string exceeds maximum allowed size (proto-max-bulk-len)")


def wrong_arity(name: str) -> CommandError:
    return Rejected("ERR", "wrong number of arguments for '%s' command" % (name,))


def unknown_command(args: List[bytes]) -> CommandError:
    shown = b""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += b"'" + arg[:128 - len(shown)] + b"' "
    return Rejected(
        "ERR", "unknown command '%s', with args beginning with: %s" % (_text(args[0][:128]), _text(shown))
    )


def _int_arg(data: bytes) -> Union[int, CommandError]:
    value = parse_int64(data)
    return NOT_INTEGER if value is None else value


# ------------------------------------------------------------- parsers


_EXPIRE_UNITS = (b"EX", b"PX", b"EXAT", b"PXAT")


def _expire_arg(data: bytes, unit: bytes, name: str):
    """(milliseconds, absolute) of SET's or GETEX's expiry (Redis's getExpireMillisecondsOrReply), or the error."""
    value = parse_int64(data)
    if value is None:
        return NOT_INTEGER
    seconds = unit in (b"EX", b"EXAT")
    if value <= 0 or (seconds and value > INT64_MAX // 1000):
        return invalid_expire(name)
    return (value * 1000 if seconds else value), unit in (b"EXAT", b"PXAT")


def invalid_expire(name: str) -> CommandError:
    return CommandError("ERR", "invalid expire time in '%s' command" % (name,))


def _parse_set(args: List[bytes]) -> Parsed:
    cond: Optional[str] = None
    ifeq: Optional[bytes] = None
    get = keepttl = False
    unit = when = lease = None
    i = 3
    while i < len(args):
        opt = args[i].upper()
        more = i + 1 < len(args)
        if opt == b"NX" and cond != "XX" and ifeq is None:
            cond = "NX"
        elif opt == b"XX" and cond != "NX" and ifeq is None:
            cond = "XX"
        elif opt == b"GET":
            get = True
        elif opt == b"IFEQ" and cond is None and ifeq is None and i + 1 < len(args):
            i += 1
            ifeq = args[i]
        elif opt == b"KEEPTTL" and unit is None and lease is None:
            keepttl = True
        elif opt in _EXPIRE_UNITS and not keepttl and unit in (None, opt) and lease is None and more:
            unit, when = opt, args[i + 1]
            i += 1
        elif opt == b"LEASE" and not keepttl and unit is None and lease is None and more:
            i += 1
            lease = _lease_id(args[i])  # kvd's own option (kvd.kv.leases): attach the key to a lease
            if isinstance(lease, CommandError):
                return lease
        else:
            return SYNTAX_ERROR
        i += 1
    expire = expire_at = None
    if unit is not None:
        parsed = _expire_arg(when, unit, "set")
        if isinstance(parsed, CommandError):
            return parsed
        expire, expire_at = parsed
    return Write(Set(args[1], args[2], cond=cond, ifeq=ifeq, get=get, expire=expire, expire_at=bool(expire_at),
                     keepttl=keepttl, lease=lease))


INVALID_LEASE_ID = CommandError("ERR", "invalid lease id: a positive integer is expected")


def _lease_id(data: bytes):
    value = parse_int64(data)
    return INVALID_LEASE_ID if value is None or value <= 0 else value


def _parse_lease_grant(args: List[bytes]) -> Parsed:
    ttl = parse_int64(args[2])
    if ttl is None or not 1 <= ttl <= LEASE_MAX_TTL_S:
        return CommandError("ERR", "invalid lease TTL: an integer of 1 to %d seconds is expected" % (LEASE_MAX_TTL_S,))
    return Write(Lease("grant", ttl=ttl), "kvd.lease|grant")


def _parse_lease_id_op(op: str) -> Callable[[List[bytes]], Parsed]:
    def parse(args: List[bytes]) -> Parsed:
        lease_id = _lease_id(args[2])
        if isinstance(lease_id, CommandError):
            return lease_id
        return Write(Lease(op, id=lease_id), "kvd.lease|" + op)
    return parse


def _parse_lease_ttl(args: List[bytes]) -> Parsed:
    lease_id = _lease_id(args[2])
    if isinstance(lease_id, CommandError):
        return lease_id
    if len(args) > 4 or (len(args) == 4 and args[3].upper() != b"KEYS"):
        return SYNTAX_ERROR
    return Read(LeaseRead("ttl", lease_id, len(args) == 4), "kvd.lease|ttl")


def _parse_setex(name: str, unit: bytes) -> Callable[[List[bytes]], Parsed]:
    def parse(args: List[bytes]) -> Parsed:
        parsed = _expire_arg(args[2], unit, name)
        if isinstance(parsed, CommandError):
            return parsed
        return Write(Set(args[1], args[3], expire=parsed[0]), name)
    return parse


def _parse_getex(args: List[bytes]) -> Parsed:
    persist = False
    unit = when = None
    i = 2
    while i < len(args):
        opt = args[i].upper()
        if opt in _EXPIRE_UNITS and not persist and unit in (None, opt) and i + 1 < len(args):
            unit, when = opt, args[i + 1]
            i += 1
        elif opt == b"PERSIST" and unit is None:
            persist = True
        else:
            return SYNTAX_ERROR
        i += 1
    if unit is None:
        return Write(GetEx(args[1], persist=persist), "getex")
    parsed = _expire_arg(when, unit, "getex")
    if isinstance(parsed, CommandError):
        return parsed
    return Write(GetEx(args[1], parsed[0], parsed[1]), "getex")


_EXPIRE_FLAGS = {b"NX": EXPIRE_NX, b"XX": EXPIRE_XX, b"GT": EXPIRE_GT, b"LT": EXPIRE_LT}


def _parse_expire(name: str) -> Callable[[List[bytes]], Parsed]:
    """EXPIRE and kin as Redis 7's expireGenericCommand: the options first, then the integer."""
    def parse(args: List[bytes]) -> Parsed:
        flags = 0
        for arg in args[3:]:
            flag = _EXPIRE_FLAGS.get(arg.upper())
            if flag is None:
                return CommandError("ERR", "Unsupported option %s" % (_text(arg),))
            flags |= flag
        if flags & EXPIRE_NX and flags & (EXPIRE_XX | EXPIRE_GT | EXPIRE_LT):
            return CommandError("ERR", "NX and XX, GT or LT options at the same time are not compatible")
        if flags & EXPIRE_GT and flags & EXPIRE_LT:
            return CommandError("ERR", "GT and LT options at the same time are not compatible")
        when = _int_arg(args[2])
        if isinstance(when, CommandError):
            return when
        if name in ("expire", "expireat") and not -(INT64_MAX // 1000) <= when <= INT64_MAX // 1000:
            return invalid_expire(name)
        return Write(Expire(name, args[1], when, flags), name)
    return parse


def _odd_arity(name: str) -> CommandError:
    """An MSET's missing value: Redis's arity text, but found by the command itself (inside MULTI: at EXEC)."""
    return CommandError("ERR", wrong_arity(name).message)


def _parse_mset(args: List[bytes]) -> Parsed:
    if len(args) % 2 == 0:
        return _odd_arity("mset")
    return Write(MSet(tuple(zip(args[1::2], args[2::2]))))


def _parse_incrby(sign: int) -> Callable[[List[bytes]], Parsed]:
    def parse(args: List[bytes]) -> Parsed:
        delta = _int_arg(args[2])
        if isinstance(delta, CommandError):
            return delta
        if sign < 0 and delta == INT64_MIN:
            return CommandError("ERR", "decrement would overflow")
        return Write(IncrBy(args[1], sign * delta))

    return parse


def _parse_msetnx(args: List[bytes]) -> Parsed:
    if len(args) % 2 == 0:
        return _odd_arity("msetnx")
    return Write(MSetNX(tuple(zip(args[1::2], args[2::2]))))


def _parse_setrange(args: List[bytes]) -> Parsed:
    offset = _int_arg(args[2])
    if isinstance(offset, CommandError):
        return offset
    if offset < 0:
        return CommandError("ERR", "offset is out of range")
    if args[3] and offset + len(args[3]) > MAX_STRING_BYTES:
        return STRING_TOO_LONG
    # The node's own value limit replaces max_len in parse_request.
    return Write(SetRange(args[1], min(offset, MAX_STRING_BYTES - 1), args[3], LIMITS.value_bytes))


def _parse_getrange(args: List[bytes]) -> Parsed:
    start, end = _int_arg(args[2]), _int_arg(args[3])
    if isinstance(start, CommandError):
        return start
    if isinstance(end, CommandError):
        return end
    return Read(GetRange(args[1], start, end), name=args[0].lower().decode())


def _parse_rename(nx: bool) -> Callable[[List[bytes]], Parsed]:
    def parse(args: List[bytes]) -> Parsed:
        return Write(Rename(args[1], args[2], nx), name="renamenx" if nx else "rename")

    return parse


def _parse_copy(args: List[bytes]) -> Parsed:
    replace_ = False
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"REPLACE":
            replace_ = True
        elif opt == b"DB" and i + 1 < len(args):
            i += 1
            db = _int_arg(args[i])
            if isinstance(db, CommandError):
                return db
            if db != 0:  # kvd has one database, 0
                return CommandError("ERR", "DB index is out of range")
        else:
            return SYNTAX_ERROR
        i += 1
    if args[1] == args[2]:
        return CommandError("ERR", "source and destination objects are the same")
    return Write(Copy(args[1], args[2], replace_))


def _parse_flush(args: List[bytes]) -> Parsed:
    # FLUSHDB/FLUSHALL [ASYNC|SYNC]: one database, so both drop every key; the mode changes nothing here.
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        return SYNTAX_ERROR
    return Write(FlushAll(), args[0].lower().decode())


def _parse_eval(op: str) -> Callable[[List[bytes]], Parsed]:
    """
    EVAL/EVAL_RO/EVALSHA/EVALSHA_RO script numkeys key... arg...: a Script write (kvd.kv.script).  Until
    the executor resolves it, an EVALSHA's body is the SHA it names (lower-cased): the executor swaps in the
    body from the replicated cache, and the machine answers NOSCRIPT for a body whose SHA it does not cache.
    """

    def parse(args: List[bytes]) -> Parsed:
        numkeys = _int_arg(args[2])
        if isinstance(numkeys, CommandError):
            return numkeys
        if numkeys < 0:
            return CommandError("ERR", "Number of keys can't be negative")
        if numkeys > len(args) - 3:
            return CommandError("ERR", "Number of keys can't be greater than number of args")
        body = args[1].lower() if op.startswith("evalsha") else args[1]
        keys, argv = tuple(args[3:3 + numkeys]), tuple(args[3 + numkeys:])
        return Write(Script(op, body, keys, argv, LIMITS.value_bytes), name=op)

    return parse


def _parse_script_flush(args: List[bytes]) -> Parsed:
    if len(args) > 3 or (len(args) == 3 and args[2].upper() not in (b"ASYNC", b"SYNC")):
        return CommandError("ERR", "SCRIPT FLUSH only support SYNC|ASYNC option")
    return Write(Script("flush"), name="script|flush")


def _parse_randomkey(args: List[bytes]) -> Parsed:
    # The position is drawn here, outside the machine, which draws nothing.
    return Read(RandomKey(random.getrandbits(63)))


def _parse_scan(args: List[bytes]) -> Parsed:
    cursor_text = args[1]
    if not cursor_text.isdigit() or len(cursor_text) > 20 or int(cursor_text) > 2**64 - 1:
        return CommandError("ERR", "invalid cursor")
    match: Optional[bytes] = None
    count = 10
    type_: Optional[str] = None
    i = 2
    while i < len(args):
        opt = args[i].upper()
        if i + 1 >= len(args):
            return SYNTAX_ERROR
        if opt == b"MATCH":
            match = args[i + 1]
        elif opt == b"COUNT":
            count = _int_arg(args[i + 1])
            if isinstance(count, CommandError):
                return count
            if count < 1:
                return SYNTAX_ERROR
        elif opt == b"TYPE":
            # Redis compares type names without case; a type kvd does not have matches no key.
            type_ = args[i + 1].lower().decode("latin-1")
            type_ = type_ if type_ in KEY_TYPES else "other"
        else:
            return SYNTAX_ERROR
        i += 2
    return Read(Scan(int(cursor_text), match, count, type_))


# ------------------------------------------------------------- revisions and KVD.TXN (kvd.kv.txn)


def _parse_kvd_txn(args: List[bytes]) -> Parsed:
    """KVD.TXN [IF cmp...] THEN [op...] [ELSE op...]: the grammar is kvd.kv.txn's docstring."""
    try:
        return Write(parse_kv_txn(args[1:]), "kvd.txn")
    except TxnSyntaxError as e:
        return Rejected("ERR", "KVD.TXN syntax error: %s" % (e,))


_KVD_GET_OPTIONS = (b"WITHREV", b"SERIALIZABLE")


def _parse_kvd_get(args: List[bytes]) -> Parsed:
    """
    KVD.GET key [WITHREV] [SERIALIZABLE], the options in any order, each at most once: GET, or WITHREV
    [value, create revision, mod revision, version] (nil for a missing key); SERIALIZABLE reads this node's
    own state, as on a READONLY connection.
    """
    options = [a.upper() for a in args[2:]]
    if len(set(options)) != len(options) or any(o not in _KVD_GET_OPTIONS for o in options):
        return SYNTAX_ERROR
    op = RevRead("getrev", args[1]) if b"WITHREV" in options else Get(args[1])
    return Read(op, "kvd.get", serializable=b"SERIALIZABLE" in options)


# ------------------------------------------------------------- hashes (kvd.kv.hashes)


def _parse_hset(name: str) -> Callable[[List[bytes]], Parsed]:
    def parse(args: List[bytes]) -> Parsed:
        if len(args) % 2:
            return _odd_arity(name)
        return Write(HashWrite(name, args[1], tuple(args[2:])), name=name)

    return parse


def _parse_hincrby(args: List[bytes]) -> Parsed:
    delta = _int_arg(args[3])
    if isinstance(delta, CommandError):
        return delta
    return Write(HashWrite("hincrby", args[1], (args[2], args[3])), name="hincrby")


def _parse_hincrbyfloat(args: List[bytes]) -> Parsed:
    error = float_increment_error(args[3])
    if error is not None:
        return CommandError("ERR", error)
    return Write(HashWrite("hincrbyfloat", args[1], (args[2], args[3])), name="hincrbyfloat")


def _hash_read(op: str, shape: Optional[str] = None) -> Callable[[List[bytes]], Parsed]:
    def parse(args: List[bytes]) -> Parsed:
        return Read(HashRead(op, args[1], tuple(args[2:])), name=op, reply=shape)

    return parse


def _parse_hscan(args: List[bytes]) -> Parsed:
    # The options are read by the machine, after the key's checks (a missing key answers an empty scan, as Redis).
    cursor = args[2]
    if not cursor.isdigit() or len(cursor) > 20 or int(cursor) > 2**64 - 1:
        return CommandError("ERR", "invalid cursor")
    return Read(HashRead("hscan", args[1], (b"%d" % int(cursor),) + tuple(args[3:])), name="hscan")


#: HRANDFIELD with a negative count makes that many picks: kvd bounds the work of one read.
MAX_RANDFIELD_PICKS = 1_000_000


def _parse_hrandfield(args: List[bytes]) -> Parsed:
    position = b"%d" % random.getrandbits(63)  # drawn here, outside the machine, which draws nothing
    if len(args) == 2:
        return Read(HashRead("hrandfield", args[1], (position,)), name="hrandfield")
    count = _int_arg(args[2])
    if isinstance(count, CommandError):
        return count
    if count == INT64_MIN:
        return CommandError("ERR", "value is out of range")
    if len(args) > 4 or (len(args) == 4 and args[3].lower() != b"withvalues"):
        return SYNTAX_ERROR
    withvalues = len(args) == 4
    if withvalues and not -(2**62) <= count <= 2**62 - 1:
        return CommandError("ERR", "value is out of range")
    if count < -MAX_RANDFIELD_PICKS:
        return CommandError("ERR", "kvd answers HRANDFIELD with a negative count of at most %d picks"
                            % (MAX_RANDFIELD_PICKS,))
    extra = (b"%d" % count,) + ((b"WITHVALUES",) if withvalues else ())
    return Read(HashRead("hrandfield", args[1], (position,) + extra), name="hrandfield",
                reply="pairs" if withvalues else None)


def _parse_select(args: List[bytes]) -> Parsed:
    db = _int_arg(args[1])
    if isinstance(db, CommandError):
        return db
    if db != 0:
        return CommandError("ERR", "DB index is out of range")
    return Admin("select", (args[1],))


def _valid_name(value: bytes) -> bool:
    return all(0x21 <= b <= 0x7E for b in value)


def _parse_client_setname(args: List[bytes]) -> Parsed:
    if not _valid_name(args[2]):
        return CommandError("ERR", "Client names cannot contain spaces, newlines or special characters.")
    return Admin("client|setname", (args[2],))


def _parse_client_setinfo(args: List[bytes]) -> Parsed:
    attr = args[2].upper()
    if attr not in (b"LIB-NAME", b"LIB-VER"):
        return CommandError("ERR", "Unrecognized option '%s'" % (_text(args[2]),))
    if not _valid_name(args[3]):
        return CommandError("ERR", "%s cannot contain spaces, newlines or special characters." % (attr.decode(),))
    return Admin("client|setinfo", (attr, args[3]))


def _admin(name: str) -> Callable[[List[bytes]], Parsed]:
    depth = name.count("|") + 1  # how many leading words name the command

    def parse(args: List[bytes]) -> Parsed:
        return Admin(name, tuple(args[depth:]))

    return parse


def _parse_auth(args: List[bytes]) -> Parsed:
    # AUTH password | AUTH username password
    return SYNTAX_ERROR if len(args) > 3 else Admin("auth", tuple(args[1:]))


def _parse_ping(args: List[bytes]) -> Parsed:
    # PING is declared with arity -1 but takes at most one argument.
    return _odd_arity("ping") if len(args) > 2 else Admin("ping", tuple(args[1:]))


def _parse_pubsub_channels(name: str) -> Callable[[List[bytes]], Parsed]:
    def parse(args: List[bytes]) -> Parsed:
        # PUBSUB (SHARD)CHANNELS [pattern]: Redis's arity is -2, the handler refuses more than one pattern.
        if len(args) > 3:
            return CommandError("ERR", "unknown subcommand or wrong number of arguments for '%s'. Try PUBSUB HELP."
                                % _text(args[1]))
        return Admin(name, tuple(args[2:]))

    return parse


# --------------------------------------------------------------- table


@dataclass(frozen=True)
class CommandSpec:
    """One entry of the table, with Redis's arity convention: N exactly, -N at least N (name included)."""

    name: str
    arity: int
    flags: Tuple[str, ...]
    first_key: int
    last_key: int
    step: int
    parse: Callable[[List[bytes]], Parsed]
    subcommands: Tuple["CommandSpec", ...] = ()

    def arity_ok(self, argc: int) -> bool:
        return argc == self.arity if self.arity >= 0 else argc >= -self.arity

    def info(self) -> list:
        """This command as one entry of a Redis 7 COMMAND INFO reply."""
        return [
            self.name.encode(),
            self.arity,
            [SimpleString(f) for f in self.flags],
            self.first_key,
            self.last_key,
            self.step,
            [],
            [],
            [],
            [sub.info() for sub in self.subcommands],
        ]


def _spec(name, arity, flags, keys=(0, 0, 0), parse=None, subcommands=()):
    return CommandSpec(name, arity, tuple(flags.split()), keys[0], keys[1], keys[2], parse or _admin(name), subcommands)


_R, _W = "readonly fast", "write denyoom"

_COMMANDS = [
    _spec("ping", -1, "fast", parse=_parse_ping),
    _spec("hello", -1, "noscript loading stale fast no_auth allow_busy"),
    _spec("auth", -2, "noscript loading stale fast no_auth allow_busy", parse=_parse_auth),
    _spec("echo", 2, "loading stale fast"),
    _spec("get", 2, _R, (1, 1, 1), lambda a: Read(Get(a[1]))),
    _spec("set", -3, _W, (1, 1, 1), _parse_set),
    _spec("del", -2, "write", (1, -1, 1), lambda a: Write(Delete(tuple(a[1:])))),
    _spec("exists", -2, _R, (1, -1, 1), lambda a: Read(Exists(tuple(a[1:])))),
    _spec("mget", -2, _R, (1, -1, 1), lambda a: Read(MGet(tuple(a[1:])))),
    _spec("mset", -3, _W, (1, -1, 2), _parse_mset),
    _spec("incr", 2, _W + " fast", (1, 1, 1), lambda a: Write(IncrBy(a[1], 1))),
    _spec("decr", 2, _W + " fast", (1, 1, 1), lambda a: Write(IncrBy(a[1], -1))),
    _spec("incrby", 3, _W + " fast", (1, 1, 1), _parse_incrby(1)),
    _spec("decrby", 3, _W + " fast", (1, 1, 1), _parse_incrby(-1)),
    _spec("incrbyfloat", 3, _W + " fast", (1, 1, 1), lambda a: Write(IncrByFloat(a[1], a[2]))),
    _spec("setnx", 3, _W + " fast", (1, 1, 1), lambda a: Write(Set(a[1], a[2], cond="NX"), "setnx", "bool")),
    _spec("getset", 3, _W + " fast", (1, 1, 1), lambda a: Write(Set(a[1], a[2], get=True), "getset")),
    _spec("unlink", -2, "write fast", (1, -1, 1), lambda a: Write(Delete(tuple(a[1:])), "unlink")),
    _spec("getdel", 2, "write fast", (1, 1, 1), lambda a: Write(GetDel(a[1]))),
    _spec("append", 3, _W + " fast", (1, 1, 1), lambda a: Write(Append(a[1], a[2], LIMITS.value_bytes))),
    _spec("setrange", 4, _W, (1, 1, 1), _parse_setrange),
    _spec("msetnx", -3, _W, (1, -1, 2), _parse_msetnx),
    _spec("rename", 3, "write", (1, 2, 1), _parse_rename(False)),
    _spec("renamenx", 3, "write fast", (1, 2, 1), _parse_rename(True)),
    _spec("copy", -3, _W, (1, 2, 1), _parse_copy),
    _spec("strlen", 2, _R, (1, 1, 1), lambda a: Read(StrLen(a[1]))),
    _spec("getrange", 4, "readonly", (1, 1, 1), _parse_getrange),
    _spec("substr", 4, "readonly", (1, 1, 1), _parse_getrange),
    _spec("type", 2, _R, (1, 1, 1), lambda a: Read(KeyType(a[1]), "type", "type")),
    # Expiry (kvd.kv.expiry): decided from the log's time, the same on every replica.
    _spec("setex", 4, _W, (1, 1, 1), _parse_setex("setex", b"EX")),
    _spec("psetex", 4, _W, (1, 1, 1), _parse_setex("psetex", b"PX")),
    _spec("getex", -2, "write fast", (1, 1, 1), _parse_getex),
    _spec("expire", -3, "write fast", (1, 1, 1), _parse_expire("expire")),
    _spec("pexpire", -3, "write fast", (1, 1, 1), _parse_expire("pexpire")),
    _spec("expireat", -3, "write fast", (1, 1, 1), _parse_expire("expireat")),
    _spec("pexpireat", -3, "write fast", (1, 1, 1), _parse_expire("pexpireat")),
    _spec("persist", 2, "write fast", (1, 1, 1), lambda a: Write(Expire("persist", a[1]), "persist")),
    _spec("ttl", 2, _R, (1, 1, 1), lambda a: Read(Ttl("ttl", a[1]), "ttl")),
    _spec("pttl", 2, _R, (1, 1, 1), lambda a: Read(Ttl("pttl", a[1]), "pttl")),
    _spec("expiretime", 2, _R, (1, 1, 1), lambda a: Read(Ttl("expiretime", a[1]), "expiretime")),
    _spec("pexpiretime", 2, _R, (1, 1, 1), lambda a: Read(Ttl("pexpiretime", a[1]), "pexpiretime")),
    # Revisions (kvd.kv.revisions) and etcd's multi-key compare-and-swap (kvd.kv.txn): one log entry each.
    _spec("kvd.txn", -2, "write denyoom noscript movablekeys", parse=_parse_kvd_txn),
    _spec("kvd.get", -2, "readonly fast noscript", (1, 1, 1), _parse_kvd_get),
    _spec("kvd.revision", 1, "readonly fast noscript", parse=lambda a: Read(RevRead("revision"), "kvd.revision")),
    # KVD.WATCH prefix [FROMREV n] (kvd.resp.watch): the connection's stream of changes, served by the port.
    _spec("kvd.watch", -2, "readonly noscript loading stale"),
    _spec("kvd.unwatch", 1, "readonly noscript loading stale"),
    # Hashes (kvd.kv.hashes): each write one log entry, each field its own record on disk.
    _spec("hset", -4, _W + " fast", (1, 1, 1), _parse_hset("hset")),
    _spec("hmset", -4, _W + " fast", (1, 1, 1), _parse_hset("hmset")),
    _spec("hsetnx", 4, _W + " fast", (1, 1, 1),
          lambda a: Write(HashWrite("hsetnx", a[1], (a[2], a[3])), name="hsetnx")),
    _spec("hdel", -3, "write fast", (1, 1, 1), lambda a: Write(HashWrite("hdel", a[1], tuple(a[2:])), name="hdel")),
    _spec("hincrby", 4, _W + " fast", (1, 1, 1), _parse_hincrby),
    _spec("hincrbyfloat", 4, _W + " fast", (1, 1, 1), _parse_hincrbyfloat),
    _spec("hget", 3, _R, (1, 1, 1), _hash_read("hget")),
    _spec("hmget", -3, _R, (1, 1, 1), _hash_read("hmget")),
    _spec("hgetall", 2, "readonly", (1, 1, 1), _hash_read("hgetall", "map")),
    _spec("hkeys", 2, "readonly", (1, 1, 1), _hash_read("hkeys")),
    _spec("hvals", 2, "readonly", (1, 1, 1), _hash_read("hvals")),
    _spec("hexists", 3, _R, (1, 1, 1), _hash_read("hexists")),
    _spec("hlen", 2, _R, (1, 1, 1), _hash_read("hlen")),
    _spec("hstrlen", 3, _R, (1, 1, 1), _hash_read("hstrlen")),
    _spec("hscan", -3, "readonly", (1, 1, 1), _parse_hscan),
    _spec("hrandfield", -2, "readonly", (1, 1, 1), _parse_hrandfield),
    _spec("randomkey", 1, "readonly", parse=_parse_randomkey),
    _spec("time", 1, "loading stale fast"),
    # Redis's ACL puts these in @dangerous; kvd's roles have admin: a readwrite user may not wipe the store.
    _spec("flushdb", -1, "write admin", parse=_parse_flush),
    _spec("flushall", -1, "write admin", parse=_parse_flush),
    _spec("keys", 2, "readonly", parse=lambda a: Read(Keys(a[1]))),
    _spec("scan", -2, "readonly", parse=_parse_scan),
    _spec("dbsize", 1, _R, parse=lambda a: Read(DbSize())),
    _spec("info", -1, "loading stale"),
    _spec("role", 1, "noscript loading stale fast"),
    _spec("select", 2, "loading stale fast", parse=_parse_select),
    _spec("quit", -1, "noscript loading stale fast no_auth allow_busy"),
    _spec("readonly", 1, "loading stale fast"),
    _spec("readwrite", 1, "loading stale fast"),
    _spec("kvd.members", 1, "loading stale"),
    _spec("kvd.cluster", 1, "loading stale fast"),
    _spec("kvd.join", 3, "admin noscript"),
    _spec("kvd.remove", 2, "admin noscript"),
    # Leases (kvd.kv.leases, etcd's model): GRANT, KEEPALIVE and REVOKE are log entries of their own (not inside
    # MULTI nor a script: one grant per entry keeps ids unique); TTL and LIST are reads.
    _spec("kvd.lease", -2, "noscript", subcommands=(
        _spec("kvd.lease|grant", 3, "write noscript fast", parse=_parse_lease_grant),
        _spec("kvd.lease|keepalive", 3, "write noscript fast", parse=_parse_lease_id_op("keepalive")),
        _spec("kvd.lease|revoke", 3, "write noscript fast", parse=_parse_lease_id_op("revoke")),
        _spec("kvd.lease|ttl", -3, "readonly noscript fast", parse=_parse_lease_ttl),
        _spec("kvd.lease|list", 2, "readonly noscript fast", parse=lambda a: Read(LeaseRead("list"), "kvd.lease|list")),
    )),
    # Transactions: the connection queues (kvd.resp.connection), EXEC is one log entry (kvd.resp.protocol).
    _spec("multi", 1, "noscript loading stale fast allow_busy"),
    _spec("exec", 1, "noscript loading stale skip_slowlog"),
    _spec("discard", 1, "noscript loading stale fast allow_busy"),
    _spec("watch", -2, "noscript loading stale fast allow_busy", (1, -1, 1)),
    _spec("unwatch", 1, "noscript loading stale fast allow_busy"),
    _spec("config", -2, "", subcommands=(
        _spec("config|get", -3, "admin noscript loading stale"),
        _spec("config|set", -4, "admin noscript loading stale"),
        _spec("config|resetstat", 2, "admin noscript loading stale"),
        _spec("config|rewrite", 2, "admin noscript loading stale"),
    )),
    _spec("command", -1, "loading stale", subcommands=(
        _spec("command|count", 2, "loading stale"),
        _spec("command|docs", -2, "loading stale"),
        _spec("command|info", -2, "loading stale"),
        _spec("command|list", -2, "loading stale"),
        _spec("command|getkeys", -4, "loading stale"),
        _spec("command|getkeysandflags", -4, "loading stale"),
    )),
    # Lua scripts run as one log entry each (kvd.kv.script); EVAL_RO too, so its reads are linearizable.
    _spec("eval", -3, "noscript stale skip_monitor no_mandatory_keys movablekeys", parse=_parse_eval("eval")),
    _spec("evalsha", -3, "noscript stale skip_monitor no_mandatory_keys movablekeys",
          parse=_parse_eval("evalsha")),
    _spec("eval_ro", -3, "readonly noscript stale skip_monitor no_mandatory_keys movablekeys",
          parse=_parse_eval("eval_ro")),
    _spec("evalsha_ro", -3, "readonly noscript stale skip_monitor no_mandatory_keys movablekeys",
          parse=_parse_eval("evalsha_ro")),
    _spec("script", -2, "", subcommands=(
        _spec("script|load", 3, "noscript stale", parse=lambda a: Write(Script("load", a[2]), name="script|load")),
        _spec("script|exists", -3, "noscript stale",
              parse=lambda a: Read(ScriptGet(tuple(x.lower() for x in a[2:])), "script|exists", "exists")),
        _spec("script|flush", -2, "noscript stale", parse=_parse_script_flush),
        _spec("script|kill", 2, "noscript allow_busy"),
    )),
    # Pub/sub (kvd.resp.pubsub): PUBLISH through the log, the subscriptions the connection's own.
    _spec("publish", 3, "pubsub loading stale fast", parse=lambda a: Write(Publish(a[1], a[2]), "publish")),
    _spec("subscribe", -2, "pubsub noscript loading stale"),
    _spec("psubscribe", -2, "pubsub noscript loading stale"),
    _spec("unsubscribe", -1, "pubsub noscript loading stale"),
    _spec("punsubscribe", -1, "pubsub noscript loading stale"),
    # Shard channels (Redis 7): a namespace apart, as a standalone Redis 7 has them (kvd is one shard).
    _spec("spublish", 3, "pubsub loading stale fast", (1, 1, 1),
          lambda a: Write(Publish(a[1], a[2], shard=True), "spublish")),
    _spec("ssubscribe", -2, "pubsub noscript loading stale", (1, -1, 1)),
    _spec("sunsubscribe", -1, "pubsub noscript loading stale", (1, -1, 1)),
    _spec("pubsub", -2, "", subcommands=(
        _spec("pubsub|channels", -2, "pubsub loading stale", parse=_parse_pubsub_channels("pubsub|channels")),
        _spec("pubsub|numsub", -2, "pubsub loading stale"),
        _spec("pubsub|numpat", 2, "pubsub loading stale"),
        _spec("pubsub|shardchannels", -2, "pubsub loading stale",
              parse=_parse_pubsub_channels("pubsub|shardchannels")),
        _spec("pubsub|shardnumsub", -2, "pubsub loading stale"),
        _spec("pubsub|help", 2, "loading stale"),
    )),
    _spec("client", -2, "", subcommands=(
        _spec("client|setname", 3, "noscript loading stale", parse=_parse_client_setname),
        _spec("client|getname", 2, "noscript loading stale"),
        _spec("client|id", 2, "noscript loading stale"),
        _spec("client|info", 2, "noscript loading stale"),
        _spec("client|setinfo", 4, "noscript loading stale", parse=_parse_client_setinfo),
        _spec("client|list", -2, "admin noscript loading stale"),
        _spec("client|reply", 3, "noscript loading stale"),
    )),
]

COMMANDS: Dict[bytes, CommandSpec] = {spec.name.encode(): spec for spec in _COMMANDS}
_SUBCOMMANDS: Dict[bytes, Dict[bytes, CommandSpec]] = {
    spec.name.encode(): {sub.name.split("|", 1)[1].encode(): sub for sub in spec.subcommands}
    for spec in _COMMANDS
    if spec.subcommands
}


def parse_request(args: List[bytes], value_max_bytes: int = LIMITS.value_bytes) -> Parsed:
    """
    ``args`` as a typed request or an error.  ``value_max_bytes`` is the node's
    ``--value-max-bytes``: an APPEND or SETRANGE carries it in its log entry
    (every replica refuses a longer result the same way), and a SETRANGE that
    would write past it is refused here already.
    """
    if not args:
        return Rejected("ERR", "empty command")
    name = args[0].lower()
    spec = COMMANDS.get(name)
    if spec is None:
        return unknown_command(args)
    if not spec.arity_ok(len(args)):
        return wrong_arity(spec.name)
    if spec.subcommands and len(args) > 1:
        sub = _SUBCOMMANDS[name].get(args[1].lower())
        if sub is None:
            return Rejected(
                "ERR", "unknown subcommand '%s'. Try %s HELP." % (_text(args[1][:128]), spec.name.upper())
            )
        if not sub.arity_ok(len(args)):
            return wrong_arity(sub.name)
        return sub.parse(args)
    parsed = spec.parse(args)
    if isinstance(parsed, Write):
        command = parsed.command
        if isinstance(command, (Append, SetRange, Script)):
            if isinstance(command, SetRange) and command.value:
                if command.offset + len(command.value) > value_max_bytes:
                    return STRING_TOO_LONG
            parsed = replace(parsed, command=replace(command, max_len=min(value_max_bytes, MAX_STRING_BYTES)))
        return _write_too_big(spec.name, parsed.command) or parsed
    if isinstance(parsed, Read):
        return _key_too_long(_read_keys(parsed.op)) or parsed
    return parsed


def _write_too_big(name: str, command: WriteCommand) -> Optional[CommandError]:
    """
    The error for a write that would make a log entry over kvd.limits' bounds: too many keys (applying
    it would hold every node too long), a key too long to store, or too many bytes for one entry.
    """
    keys = command_keys(command)
    if keys > MAX_WRITE_KEYS:
        return Rejected("ERR", "%s of %d keys is over the limit of %d keys in one write; "
                                   "the command was not run: split it" % (name.upper(), keys, MAX_WRITE_KEYS))
    size = command_size(command)
    if size > MAX_WRITE_BYTES:
        return Rejected("ERR", "%s of %d bytes is over the limit of %d bytes in one write; "
                                   "the command was not run: split it" % (name.upper(), size, MAX_WRITE_BYTES))
    return _key_too_long(write_keys(command))


def _read_keys(op: ReadOp):
    return read_keys(op)


def _key_too_long(keys) -> Optional[CommandError]:
    for key in keys:
        if len(key) > MAX_KEY_BYTES:
            return Rejected("ERR", "key of %d bytes is over the limit of %d bytes; the command was not run"
                                       % (len(key), MAX_KEY_BYTES))
    return None


def spec_of(name: str) -> Optional[CommandSpec]:
    """The table entry of a request's full name ("get", "config|get"), or None."""
    container, _, sub = name.encode().partition(b"|")
    spec = COMMANDS.get(container)
    if spec is not None and sub:
        spec = _SUBCOMMANDS.get(container, {}).get(sub)
    return spec


_WRITE_NAMES = {"Set": "set", "MSet": "mset", "Delete": "del", "IncrBy": "incrby", "GetDel": "getdel",
                "Append": "append", "SetRange": "setrange", "MSetNX": "msetnx", "Rename": "rename", "Copy": "copy",
                "FlushAll": "flushall", "Script": "eval",
                "IncrByFloat": "incrbyfloat", "GetEx": "getex", "Tick": "kvd.tick", "Publish": "publish"}
_READ_NAMES = {"Get": "get", "MGet": "mget", "Exists": "exists", "Keys": "keys", "Scan": "scan", "DbSize": "dbsize",
               "StrLen": "strlen", "GetRange": "getrange", "RandomKey": "randomkey", "ScriptGet": "script|exists",
               "KeyType": "type"}


def request_name(request: Request) -> str:
    """The Redis name of a parsed request, for error messages ("set", "kvd.join")."""
    if isinstance(request, (Write, Read)) and request.name is not None:
        return request.name
    if isinstance(request, Write):
        kind = type(request.command).__name__
        return _WRITE_NAMES.get(kind, kind.lower())
    if isinstance(request, Read):
        kind = type(request.op).__name__
        return _READ_NAMES.get(kind, kind.lower())
    return request.name


def command_info(name: bytes) -> Optional[list]:
    """COMMAND INFO for one name ("get", "client|id"), or None if unknown."""
    container, _, sub = name.lower().partition(b"|")
    spec = COMMANDS.get(container)
    if spec is not None and sub:
        spec = _SUBCOMMANDS.get(container, {}).get(sub)
    return None if spec is None else spec.info()
