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

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

from kvd.kv.commands import (
    INT64_MIN, DbSize, Delete, Exists, Get, IncrBy, Keys, MGet, MSet, ReadOp, Scan, Set, WriteCommand,
    command_keys, command_size, parse_int64,
)
from kvd.limits import LIMITS
from kvd.resp.encoder import SimpleString
from kvd.resp.errors import CommandError


@dataclass(frozen=True)
class Write:
    command: WriteCommand


@dataclass(frozen=True)
class Read:
    op: ReadOp


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


def wrong_arity(name: str) -> CommandError:
    return CommandError("ERR", "wrong number of arguments for '%s' command" % (name,))


def unknown_command(args: List[bytes]) -> CommandError:
    shown = b""
    for arg in args[1:]:
        if len(shown) >= 128:
            break
        shown += b"'" + arg[:128 - len(shown)] + b"' "
    return CommandError(
        "ERR", "unknown command '%s', with args beginning with: %s" % (_text(args[0][:128]), _text(shown))
    )


def _int_arg(data: bytes) -> Union[int, CommandError]:
    value = parse_int64(data)
    return NOT_INTEGER if value is None else value


# ------------------------------------------------------------- parsers


def _parse_set(args: List[bytes]) -> Parsed:
    cond: Optional[str] = None
    ifeq: Optional[bytes] = None
    get = False
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"NX" and cond != "XX" and ifeq is None:
            cond = "NX"
        elif opt == b"XX" and cond != "NX" and ifeq is None:
            cond = "XX"
        elif opt == b"GET":
            get = True
        elif opt == b"IFEQ" and cond is None and ifeq is None and i + 1 < len(args):
            i += 1
            ifeq = args[i]
        elif opt == b"KEEPTTL":
            pass  # there are no TTLs to keep
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT"):
            return CommandError("ERR", "key expiry (EX, PX, EXAT, PXAT) is not supported")
        else:
            return SYNTAX_ERROR
        i += 1
    return Write(Set(args[1], args[2], cond=cond, ifeq=ifeq, get=get))


def _parse_mset(args: List[bytes]) -> Parsed:
    if len(args) % 2 == 0:
        return wrong_arity("mset")
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


def _parse_scan(args: List[bytes]) -> Parsed:
    cursor_text = args[1]
    if not cursor_text.isdigit() or len(cursor_text) > 20 or int(cursor_text) > 2**64 - 1:
        return CommandError("ERR", "invalid cursor")
    match: Optional[bytes] = None
    count = 10
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
            if args[i + 1].lower() != b"string":
                return CommandError("ERR", "kvd only stores strings: TYPE must be 'string'")
        else:
            return SYNTAX_ERROR
        i += 2
    return Read(Scan(int(cursor_text), match, count))


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
    return wrong_arity("ping") if len(args) > 2 else Admin("ping", tuple(args[1:]))


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
    _spec("ping", -1, "fast stale", parse=_parse_ping),
    _spec("hello", -1, "noscript loading stale fast no_auth"),
    _spec("auth", -2, "noscript loading stale fast no_auth allow_busy", parse=_parse_auth),
    _spec("echo", 2, "fast stale"),
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
    _spec("keys", 2, "readonly", parse=lambda a: Read(Keys(a[1]))),
    _spec("scan", -2, "readonly", parse=_parse_scan),
    _spec("dbsize", 1, _R, parse=lambda a: Read(DbSize())),
    _spec("info", -1, "loading stale"),
    _spec("role", 1, "noscript loading stale fast"),
    _spec("select", 2, "loading stale fast", parse=_parse_select),
    _spec("quit", -1, "noscript loading stale fast"),
    _spec("readonly", 1, "loading stale fast"),
    _spec("readwrite", 1, "loading stale fast"),
    _spec("kvd.members", 1, "loading stale"),
    _spec("kvd.cluster", 1, "loading stale fast"),
    _spec("kvd.join", 3, "admin noscript"),
    _spec("kvd.remove", 2, "admin noscript"),
    # No transactions yet: a connection in MULTI runs nothing until EXEC or DISCARD (kvd.resp.connection).
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
    )),
    _spec("client", -2, "", subcommands=(
        _spec("client|setname", 3, "noscript loading stale", parse=_parse_client_setname),
        _spec("client|getname", 2, "noscript loading stale"),
        _spec("client|id", 2, "noscript loading stale"),
        _spec("client|info", 2, "noscript loading stale"),
        _spec("client|setinfo", 4, "noscript loading stale", parse=_parse_client_setinfo),
    )),
]

COMMANDS: Dict[bytes, CommandSpec] = {spec.name.encode(): spec for spec in _COMMANDS}
_SUBCOMMANDS: Dict[bytes, Dict[bytes, CommandSpec]] = {
    spec.name.encode(): {sub.name.split("|", 1)[1].encode(): sub for sub in spec.subcommands}
    for spec in _COMMANDS
    if spec.subcommands
}


def parse_request(args: List[bytes]) -> Parsed:
    if not args:
        return CommandError("ERR", "empty command")
    name = args[0].lower()
    spec = COMMANDS.get(name)
    if spec is None:
        return unknown_command(args)
    if not spec.arity_ok(len(args)):
        return wrong_arity(spec.name)
    if spec.subcommands and len(args) > 1:
        sub = _SUBCOMMANDS[name].get(args[1].lower())
        if sub is None:
            return CommandError(
                "ERR", "unknown subcommand '%s'. Try %s HELP." % (_text(args[1][:128]), spec.name.upper())
            )
        if not sub.arity_ok(len(args)):
            return wrong_arity(sub.name)
        return sub.parse(args)
    parsed = spec.parse(args)
    if isinstance(parsed, Write):
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
        return CommandError("ERR", "%s of %d keys is over the limit of %d keys in one write; "
                                   "the command was not run: split it" % (name.upper(), keys, MAX_WRITE_KEYS))
    size = command_size(command)
    if size > MAX_WRITE_BYTES:
        return CommandError("ERR", "%s of %d bytes is over the limit of %d bytes in one write; "
                                   "the command was not run: split it" % (name.upper(), size, MAX_WRITE_BYTES))
    if isinstance(command, MSet):
        return _key_too_long(k for k, _ in command.pairs)
    return _key_too_long(command.keys if isinstance(command, Delete) else (command.key,))


def _read_keys(op: ReadOp):
    if isinstance(op, Get):
        return (op.key,)
    return op.keys if isinstance(op, (MGet, Exists)) else ()


def _key_too_long(keys) -> Optional[CommandError]:
    for key in keys:
        if len(key) > MAX_KEY_BYTES:
            return CommandError("ERR", "key of %d bytes is over the limit of %d bytes; the command was not run"
                                       % (len(key), MAX_KEY_BYTES))
    return None


def spec_of(name: str) -> Optional[CommandSpec]:
    """The table entry of a request's full name ("get", "config|get"), or None."""
    container, _, sub = name.encode().partition(b"|")
    spec = COMMANDS.get(container)
    if spec is not None and sub:
        spec = _SUBCOMMANDS.get(container, {}).get(sub)
    return spec


_WRITE_NAMES = {"Set": "set", "MSet": "mset", "Delete": "del", "IncrBy": "incrby"}
_READ_NAMES = {"Get": "get", "MGet": "mget", "Exists": "exists", "Keys": "keys", "Scan": "scan", "DbSize": "dbsize"}


def request_name(request: Request) -> str:
    """The Redis name of a parsed request, for error messages ("set", "kvd.join")."""
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
