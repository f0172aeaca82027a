# -*- test-case-name: tests.jepsen.test_txn_check -*-
"""
Linearizability of multi-key operations: MULTI/EXEC transactions, WATCH-based
compare-and-set, and Lua scripts, each of which kvd applies as one log entry.

The object is a *group* of keys, not a key: every operation of the workloads
(kvd.jepsen.multikey) touches keys of one group only, so the group's whole
state (a map key -> value) is one register, and an operation is one atomic
step on it.  Linearizability is local (Herlihy & Wing), so each group is
checked on its own, with the same search as single registers
(kvd.check.linear.search).  A transaction that read half of another's writes
finds no state in which to linearize; so do two compare-and-sets that both
succeed from the same old value.

A ``TxnOp`` is a sequence of micro-operations applied in order at one point:

- ``("r", key, value)``: a read inside the entry (a GET queued in MULTI, a
  ``redis.call('GET')`` in a script); checked only for an ``ok`` outcome
  (an unknown outcome's reply was never seen);
- ``("w", key, value)``: a write; ``("del", key, count)`` a delete
  (``count`` None when not known);
- ``("incr", key, value)``: INCR; ``value`` is the new value when known.

and two ways to be conditional:

- ``guard`` (WATCH): the keys WATCHed and the values the client read after
  WATCHing them (one MGET, before EXEC), known whatever EXEC answered.  EXEC
  applies only if no watched key changed since the WATCH, so an applied
  transaction's point has exactly those values.  ``ok`` and ``applied``: the
  guard holds at the point and the writes take effect; ``ok`` and not
  ``applied`` (EXEC answered nil): a definite "did not happen", but the
  MGET's reads were real: it is a read-only op whose guard holds at its point;
  unknown outcome: at its point, the writes take effect iff the guard holds
  (otherwise it is a no-op -- and "never" is the same as "at the very end").
- ``cond`` (a script's own compare): ``(key, expected)`` evaluated on the
  state at the op's point; the writes take effect iff it holds.  ``ok``: the
  script said whether it did (``applied``), which must agree.
- ``orelse`` (KVD.TXN, kvd.kv.txn): two branches.  ``conds`` (key, expected
  value; None: the key is missing), all evaluated on the state at the op's
  point, choose ``micro`` (all hold) or ``orelse`` (the ELSE ops), each
  applied whole, its reads checked for an ``ok`` outcome; ``applied`` says
  which branch the node answered it took, which must agree.

Register operations of kvd.check.linear (the nemesis's read-backs, the
final reads, the stale-read probe) are converted into one-micro-op TxnOps of
the group their key belongs to (``group_of``), so one history checks as one.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from kvd.check.linear import (
    CAS, DEFAULT_MEMO_LIMIT, DELETE, FAIL, INFO, INVALID, OK, OUTCOMES, READ, VALID, WRITE,
    CheckResult, KeyResult, Op, check_each, search,
)

TXN = "txn"
MICRO = ("r", "w", "del", "incr")


def group_of(key: str) -> str:
    """The group a key belongs to: what comes before its last dot (``t0-3.a`` -> ``t0-3``), else the key itself."""
    return key.rsplit(".", 1)[0] if "." in key else key


@dataclass(frozen=True)
class TxnOp:
    index: int
    process: object
    key: str                      # the group
    kind: str                     # what the client did, for reports: "read", "write", "cas", "script-rmw" ...
    micro: Tuple[tuple, ...] = ()
    guard: Tuple[Tuple[str, object], ...] = ()
    cond: Optional[Tuple[str, object]] = None
    applied: Optional[bool] = None
    outcome: str = OK
    invoke: float = 0.0
    complete: Optional[float] = None
    node: str = ""
    conds: Tuple[Tuple[str, object], ...] = ()
    orelse: Optional[Tuple[tuple, ...]] = None

    f = TXN

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError("unknown outcome %r" % (self.outcome,))
        if self.outcome != INFO and (self.complete is None or self.complete < self.invoke):
            raise ValueError("op %d: a known outcome needs a completion time at or after its invocation" % self.index)
        for m in self.micro + (self.orelse or ()):
            if m[0] not in MICRO:
                raise ValueError("op %d: unknown micro-operation %r" % (self.index, m))
        if self.conds and self.orelse is None:
            raise ValueError("op %d: compares (conds) need an ELSE branch (orelse, maybe empty)" % self.index)
        conditional = self.guard or self.cond is not None or self.orelse is not None
        if self.outcome == OK and conditional and self.applied is None:
            raise ValueError("op %d: a conditional op that answered must say whether it applied" % self.index)

    def writes(self) -> bool:
        return any(m[0] != "r" for m in self.micro + (self.orelse or ()))

    def taken(self) -> Tuple[tuple, ...]:
        """The micro-operations of the branch an ``ok`` op answered it took (both when it has one)."""
        if self.orelse is None or self.outcome != OK:
            return self.micro
        return self.micro if self.applied else self.orelse

    def describe(self) -> str:
        parts = []
        if self.guard:
            parts.append("WATCH " + " ".join("%s=%r" % kv for kv in self.guard))
        if self.cond is not None:
            parts.append("IF %s==%r" % self.cond)
        if self.orelse is not None:
            parts.append("IF " + " ".join("%s==%r" % kv for kv in self.conds))
        for m in self.micro + ((("else",),) if self.orelse is not None else ()) + (self.orelse or ()):
            if m[0] == "else":
                parts.append("ELSE")
                continue
            if m[0] == "r":
                parts.append("GET %s%s" % (m[1], " -> %r" % (m[2],) if self.outcome == OK else ""))
            elif m[0] == "w":
                parts.append("SET %s %r" % (m[1], m[2]))
            elif m[0] == "del":
                parts.append("DEL %s" % m[1] + (" -> %r" % (m[2],) if self.outcome == OK and m[2] is not None else ""))
            else:
                parts.append("INCR %s%s" % (m[1], " -> %r" % (m[2],) if self.outcome == OK else ""))
        if self.outcome == OK and self.applied is not None:
            parts.append("-> %s" % ("applied" if self.applied else "not applied"))
        end = "?" if self.complete is None else "%.3f" % self.complete
        return "#%d %s %s: %s [%s] by %s%s [%.3f, %s]" % (
            self.index, self.key, self.kind, "; ".join(parts), self.outcome, self.process,
            (" via %s" % self.node) if self.node else "", self.invoke, end,
        )


def from_register(op: Op) -> TxnOp:
    """A single-key op of kvd.check.linear as a TxnOp of its key's group."""
    if op.f == READ:
        micro = (("r", op.key, op.result),)
        cond = applied = None
    elif op.f == WRITE:
        micro, cond, applied = (("w", op.key, op.value),), None, None
    elif op.f == DELETE:
        micro, cond, applied = (("del", op.key, op.result),), None, None
    elif op.f == CAS:
        micro, cond = (("w", op.key, op.value[1]),), (op.key, op.value[0])
        applied = bool(op.result) if op.outcome == OK else None
    else:
        raise ValueError("op %d: unknown function %r" % (op.index, op.f))
    return TxnOp(op.index, op.process, group_of(op.key), op.f, micro, (), cond, applied, op.outcome,
                 op.invoke, op.complete, op.node)


def _incr(old) -> Tuple[bool, object]:
    if old is None:
        return True, "1"
    try:
        return True, str(int(old) + 1)
    except (TypeError, ValueError):
        return False, old


def step(state, op: TxnOp):
    """The group model: (does ``op`` fit ``state``, the state after it); a state is a sorted tuple of (key, value)."""
    values = dict(state)
    known = op.outcome == OK
    if op.guard:
        holds = all(values.get(k) == v for k, v in op.guard)
        if known and not holds:
            return False, state
        if not holds or (known and not op.applied):
            return True, state  # unknown and the guard fails here: a no-op; or aborted: a read, which fits
    if op.orelse is not None:  # KVD.TXN: the compares choose a branch, applied whole
        holds = all(values.get(k) == v for k, v in op.conds)
        if known and holds != bool(op.applied):
            return False, state
        return _apply(values, op.micro if holds else op.orelse, True, known, state)
    do_writes = True
    if op.cond is not None:
        do_writes = values.get(op.cond[0]) == op.cond[1]
        if known and do_writes != bool(op.applied):
            return False, state
    return _apply(values, op.micro, do_writes, known, state)


def _apply(values: dict, micro, do_writes: bool, known: bool, state):
    """``micro`` on ``values`` (reads checked when ``known``, writes skipped unless ``do_writes``): as ``step``."""
    for m in micro:
        f, key = m[0], m[1]
        if f == "r":
            if known and values.get(key) != m[2]:
                return False, state
        elif not do_writes:
            continue
        elif f == "w":
            values[key] = m[2]
        elif f == "del":
            if known and m[2] is not None and m[2] != (1 if key in values else 0):
                return False, state
            values.pop(key, None)
        else:  # incr
            fits, new = _incr(values.get(key))
            if not fits or (known and new != m[2]):
                return False, state
            values[key] = new
    return True, tuple(sorted(values.items()))


def _relevant(ops: Iterable[TxnOp]) -> List[TxnOp]:
    """Failed ops did not happen; an unknown op that writes nothing tells nothing."""
    return [op for op in ops if op.outcome != FAIL and not (op.outcome == INFO and not op.writes())]


def _never_written(ops: List[TxnOp]) -> Optional[str]:
    """A read of a value no op could have left (keys that are never INCRed): a plain explanation, found fast."""
    counters = {m[1] for op in ops for m in op.micro if m[0] == "incr"}
    written: Dict[str, set] = {}
    for op in ops:
        for m in op.micro + (op.orelse or ()):
            if m[0] == "w":
                written.setdefault(m[1], set()).add(m[2])
    for op in ops:
        seen = list(op.guard)
        if op.outcome == OK:
            seen += [(m[1], m[2]) for m in op.taken() if m[0] == "r"]
        for key, value in seen:
            if key not in counters and value is not None and value not in written.get(key, ()):
                return "read of a value never written: %s=%r in %s" % (key, value, op.describe())
    return None


def check_group(group: str, ops: List[TxnOp], deadline: float, clock: Callable[[], float] = time.monotonic,
                memo_limit: int = DEFAULT_MEMO_LIMIT) -> KeyResult:
    started = clock()
    ops = _relevant(ops)
    result = KeyResult(group, VALID, len(ops))
    problem = _never_written(ops) if ops else None
    if problem:
        result.verdict, result.explanation = INVALID, problem
    elif ops:
        result.verdict, result.explanation = search(ops, step, (), deadline, clock, memo_limit, "group")
    result.seconds = clock() - started
    return result


def check(ops: Iterable[object], budget_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
          memo_limit: int = DEFAULT_MEMO_LIMIT) -> CheckResult:
    """
    Check a history of TxnOps and register Ops within ``budget_s`` seconds,
    group by group: ``valid`` only when every group is decided linearizable,
    ``invalid`` when any is not, ``unknown`` otherwise.
    """
    ops = [op if isinstance(op, TxnOp) else from_register(op) for op in ops]
    return check_each(ops, check_group, budget_s, clock, memo_limit)
