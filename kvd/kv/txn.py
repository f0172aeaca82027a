# -*- test-case-name: tests.kv.test_revisions -*-
"""
KVD.TXN: etcd's multi-key compare-and-swap, one log entry (kvd.kv.commands ``KvTxn``, tag 69).

Grammar (keywords in any case; every compare and op has a fixed number of
arguments, so a key or value spelled like a keyword is read as a key or value)::

    KVD.TXN [IF cmp [cmp ...]] THEN [op ...] [ELSE op [op ...]]
    cmp := VALUE key (= | != | < | >) value     bytewise; false for a missing key, whatever the operator
         | VERSION key (= | != | < | >) n       writes since it was created; 0 for a missing key
         | CREATE key (= | != | < | >) n        the revision that created it; 0 for a missing key
         | MOD key (= | != | < | >) n           the revision that last changed it; 0 for a missing key
         | EXISTS key | MISSING key
    op  := SET key value | DEL key | GET key

No IF: the compares are all true.  The answer is ``[1 or 0, [replies], revision]``: 1 if every compare held
and THEN's ops were applied, 0 if ELSE's were; each op's reply (SET: OK, DEL: 0 or 1, GET: the value or
nil); the store's revision after the transaction (kvd.kv.revisions: one transaction is one revision,
or none if it changed nothing).  A VALUE compare of a hash answers WRONGTYPE naming the compare and
applies nothing; a GET of a hash answers WRONGTYPE as its reply, the other ops still apply (as in
MULTI/EXEC).  A SET drops the key's time to live, as SET does.  Every op applies at the entry's index:
no replica, no reader, sees a transaction half done.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import List, Sequence, Union

from kvd.kv import events as ev
from kvd.kv.codec import U64_MAX
from kvd.kv.commands import TXN_CMP_OPS, Compare, KvTxn, TxnOp
from kvd.kv.hashes import HASH, WRONGTYPE
from kvd.kv.results import OK, KVError

__all__ = ["parse", "apply", "TxnSyntaxError"]

_ARITY = {"value": 3, "version": 3, "create": 3, "mod": 3, "exists": 1, "missing": 1}
_OP_ARITY = {"set": 2, "del": 1, "get": 1}


class TxnSyntaxError(ValueError):
    """KVD.TXN's arguments do not follow the grammar; the message says where."""


def _number(token: bytes, where: str) -> int:
    if not token.isdigit() or len(token) > 20 or int(token) > U64_MAX:
        raise TxnSyntaxError("%s: %r is not an unsigned integer" % (where, token.decode("utf-8", "replace")))
    return int(token)


def parse(args: Sequence[bytes]) -> KvTxn:
    """KVD.TXN's arguments (after the command name) as a ``KvTxn``; TxnSyntaxError if they are not one."""
    args = list(args)
    i, n = 0, len(args)
    compares: List[Compare] = []
    if i < n and args[i].lower() == b"if":
        i += 1
        while i < n and args[i].lower() != b"then":
            target = args[i].decode("latin-1").lower()
            where = "compare %d (%s)" % (len(compares) + 1, args[i].decode("utf-8", "replace"))
            if target not in _ARITY:
                raise TxnSyntaxError("%s: expected VALUE, VERSION, CREATE, MOD, EXISTS or MISSING" % (where,))
            if i + _ARITY[target] >= n:
                raise TxnSyntaxError("%s: too few arguments" % (where,))
            key = args[i + 1]
            if _ARITY[target] == 1:
                compares.append(Compare(target, key))
            else:
                op = args[i + 2].decode("latin-1")
                if op not in TXN_CMP_OPS:
                    raise TxnSyntaxError("%s: the operator must be =, !=, < or >" % (where,))
                operand = args[i + 3]
                if target == "value":
                    compares.append(Compare(target, key, op, value=operand))
                else:
                    compares.append(Compare(target, key, op, number=_number(operand, where)))
            i += 1 + _ARITY[target]
        if not compares:
            raise TxnSyntaxError("IF needs at least one compare")
    if i >= n or args[i].lower() != b"then":
        raise TxnSyntaxError("expected THEN" + (" after the compares" if compares else ""))
    i += 1
    branches: List[List[TxnOp]] = [[], []]
    branch = 0
    while i < n:
        name = args[i].decode("latin-1").lower()
        if name == "else" and branch == 0:
            branch = 1
            i += 1
            if i >= n:
                raise TxnSyntaxError("ELSE needs at least one op")
            continue
        where = "%s op %d (%s)" % ("ELSE" if branch else "THEN", len(branches[branch]) + 1,
                                   args[i].decode("utf-8", "replace"))
        if name not in _OP_ARITY:
            raise TxnSyntaxError("%s: expected SET, DEL or GET" % (where,))
        if i + _OP_ARITY[name] >= n:
            raise TxnSyntaxError("%s: too few arguments" % (where,))
        value = args[i + 2] if name == "set" else b""
        branches[branch].append(TxnOp(name, args[i + 1], value))
        i += 1 + _OP_ARITY[name]
    return KvTxn(tuple(compares), tuple(branches[0]), tuple(branches[1]))


def _holds(op: str, left, right) -> bool:
    return left == right if op == "=" else left != right if op == "!=" else left < right if op == "<" else left > right


def _compare(ks, c: Compare) -> Union[bool, KVError]:
    value = ks.get(c.key)
    if c.target == "exists":
        return value is not None
    if c.target == "missing":
        return value is None
    if c.target == "value":
        if value is HASH:
            return KVError("WRONGTYPE KVD.TXN compare VALUE %s: the key holds a hash, not a string"
                           % (c.key.decode("utf-8", "replace"),))
        return value is not None and _holds(c.op, value, c.value)
    meta = ks.rev_meta(c.key) if value is not None else None
    create, mod, version = meta if meta is not None else (0, 0, 0)
    actual = version if c.target == "version" else create if c.target == "create" else mod
    return _holds(c.op, actual, c.number)


def apply(ks, cmd: KvTxn):
    """Apply ``cmd`` to ``ks`` (the machine's view, kvd.kv.expiry): the answer described above."""
    succeeded = True
    for c in cmd.compares:
        held = _compare(ks, c)
        if isinstance(held, KVError):
            return held
        succeeded = succeeded and held
    replies = []
    for op in cmd.success if succeeded else cmd.failure:
        if op.op == "set":
            ks.put(op.key, op.value)
            ks.set_expire(op.key, None)
            ks.events.append(ev.string(b"set", op.key))  # as SET's (kvd.kv.events)
            replies.append(OK)
        elif op.op == "del":
            deleted = ks.delete(op.key)
            if deleted:
                ks.events.append(ev.generic(b"del", op.key))
            replies.append(1 if deleted else 0)
        else:
            value = ks.get(op.key)
            replies.append(WRONGTYPE if value is HASH else value)
    return [1 if succeeded else 0, replies, ks.revision]
