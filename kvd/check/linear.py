# -*- test-case-name: tests.jepsen.test_linear -*-
"""
A linearizability checker for histories of a key/value store whose keys are
independent registers (GET, SET, SET ... IFEQ, DEL).

The search is Wing & Gong's, with Lowe's just-in-time linearization and
memoization, as Porcupine (github.com/anishathalye/porcupine) implements it:

- each operation becomes a call entry (at its invocation time) and a return
  entry (at its completion time) in one list sorted by time;
- walking the list, a call whose operation the model accepts in the current
  state is *lifted* (it and its return are unlinked) and the walk restarts
  from the head; reaching a return entry means an operation that had to take
  effect by now did not, so the search backtracks to the last lifted call
  and tries the next candidate;
- a cache of (set of linearized operations, state) pairs prunes every
  configuration already explored; the history is linearizable iff the list
  can be emptied.

Linearizability is local (Herlihy & Wing), so a history over independent keys
is linearizable iff each key's sub-history is: the check runs per key.

Outcomes:

- ``ok``: the operation took effect once, between invocation and completion,
  with the result the client saw;
- ``fail``: it certainly did not take effect (-NOLEADER, -TRYAGAIN, connection
  refused); it is left out;
- ``info``: unknown (timeout, lost connection, -TIMEOUT).  It may have taken
  effect at any time after its invocation, or never: its completion is
  infinitely late and any result is accepted.  An unknown read tells nothing
  and is left out.

Verdicts are ``valid``, ``invalid`` (with an explanation of one key that has
no linearization) and ``unknown`` (the time budget or the memo limit ran out
before every key was decided).  Running out is never a pass.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

READ, WRITE, CAS, DELETE = "read", "write", "cas", "delete"
FUNCTIONS = (READ, WRITE, CAS, DELETE)
OK, FAIL, INFO = "ok", "fail", "info"
OUTCOMES = (OK, FAIL, INFO)

VALID, INVALID, UNKNOWN = "valid", "invalid", "unknown"

#: Memo entries one key may use before its check gives up with "unknown".
DEFAULT_MEMO_LIMIT = 2_000_000


@dataclass(frozen=True)
class Op:
    """
    One client operation.

    ``value``: the new value of a write, ``(expected, new)`` of a
    compare-and-set, None for reads and deletes.  ``result`` (ok outcomes
    only): what a read returned (None: no such key), whether a
    compare-and-set applied (True/False), how many keys a delete removed
    (0/1, or None when not recorded).  ``complete`` is None for an unknown
    outcome.
    """

    index: int
    process: object
    key: str
    f: str
    value: object = None
    outcome: str = OK
    result: object = None
    invoke: float = 0.0
    complete: Optional[float] = None
    node: str = ""

    def __post_init__(self):
        if self.f not in FUNCTIONS:
            raise ValueError("unknown function %r" % (self.f,))
        if self.outcome not in OUTCOMES:
            raise ValueError("unknown outcome %r" % (self.outcome,))
        if self.outcome != INFO and (self.complete is None or self.complete < self.invoke):
            raise ValueError("op %d: a known outcome needs a completion time at or after its invocation" % self.index)
        if self.f == CAS and not (isinstance(self.value, tuple) and len(self.value) == 2):
            raise ValueError("op %d: a compare-and-set's value is (expected, new)" % self.index)

    def effect(self) -> Tuple[bool, object]:
        """(whether this op may change the register, the value it leaves when it does)."""
        if self.f == WRITE:
            return True, self.value
        if self.f == CAS:
            return (self.outcome == INFO or bool(self.result)), self.value[1]
        if self.f == DELETE:
            return True, None
        return False, None

    def describe(self) -> str:
        if self.f == READ:
            what = "GET -> %r" % (self.result,) if self.outcome == OK else "GET"
        elif self.f == WRITE:
            what = "SET %r" % (self.value,)
        elif self.f == CAS:
            what = "SET %r IFEQ %r" % (self.value[1], self.value[0])
            if self.outcome == OK:
                what += " -> %s" % ("OK" if self.result else "nil")
        else:
            what = "DEL" + (" -> %r" % (self.result,) if self.outcome == OK and self.result is not None else "")
        end = "?" if self.complete is None else "%.3f" % self.complete
        return "#%d %s %s [%s] by %s%s [%.3f, %s]" % (
            self.index, self.key, what, self.outcome, self.process, (" via %s" % self.node) if self.node else "", self.invoke, end,
        )


def step(state, op: Op) -> Tuple[bool, object]:
    """The register model: (does ``op`` fit ``state``, the state after it)."""
    known = op.outcome == OK
    f = op.f
    if f == READ:
        return op.result == state, state
    if f == WRITE:
        return True, op.value
    if f == CAS:
        expected, new = op.value
        applies = state is not None and state == expected
        if not known:
            return True, (new if applies else state)
        if op.result:
            return applies, new
        return not applies, state
    # DELETE
    if known and op.result is not None and op.result != (0 if state is None else 1):
        return False, None
    return True, None


@dataclass
class KeyResult:
    key: str
    verdict: str
    ops: int
    seconds: float = 0.0
    explanation: str = ""


@dataclass
class CheckResult:
    verdict: str
    keys: List[KeyResult] = field(default_factory=list)
    seconds: float = 0.0
    ops: int = 0

    @property
    def anomalies(self) -> List[KeyResult]:
        return [k for k in self.keys if k.verdict == INVALID]

    @property
    def undecided(self) -> List[KeyResult]:
        return [k for k in self.keys if k.verdict == UNKNOWN]

    def summary(self) -> str:
        text = "%s (%d ops over %d keys in %.1fs" % (self.verdict, self.ops, len(self.keys), self.seconds)
        if self.anomalies:
            text += "; %d key(s) not linearizable" % len(self.anomalies)
        if self.undecided:
            text += "; %d key(s) undecided" % len(self.undecided)
        return text + ")"

    def report(self) -> str:
        lines = [self.summary()]
        for k in self.anomalies + self.undecided:
            lines.append("key %s: %s (%d ops, %.1fs)" % (k.key, k.verdict, k.ops, k.seconds))
            if k.explanation:
                lines.extend("  " + line for line in k.explanation.splitlines())
        return "\n".join(lines)


class _OutOfBudget(Exception):
    pass


def _relevant(ops: Iterable[Op]) -> List[Op]:
    """Drop what cannot matter: failed ops, and reads with unknown outcome."""
    return [op for op in ops if op.outcome != FAIL and not (op.f == READ and op.outcome == INFO)]


def _never_written(ops: List[Op]) -> Optional[str]:
    """A quick, exact pre-check with a plain explanation: a read of a value no operation could have written."""
    written = {op.effect()[1] for op in ops if op.effect()[0]}
    written.add(None)
    for op in ops:
        if op.f == READ and op.result not in written:
            return "read of a value never written: %s" % op.describe()
    return None


def check_key(key: str, ops: List[Op], deadline: float, clock: Callable[[], float] = time.monotonic,
              memo_limit: int = DEFAULT_MEMO_LIMIT) -> KeyResult:
    started = clock()
    ops = _relevant(ops)
    result = KeyResult(key, VALID, len(ops))
    if not ops:
        return result
    problem = _never_written(ops)
    if problem:
        result.verdict, result.explanation, result.seconds = INVALID, problem, clock() - started
        return result
    result.verdict, result.explanation = search(ops, step, None, deadline, clock, memo_limit, "register")
    result.seconds = clock() - started
    return result


def search(ops, step_fn: Callable[[object, object], Tuple[bool, object]], initial, deadline: float,
           clock: Callable[[], float] = time.monotonic, memo_limit: int = DEFAULT_MEMO_LIMIT,
           what: str = "state") -> Tuple[str, str]:
    """
    The search itself, for any model: ``ops`` have ``invoke``, ``complete``
    (None: unknown, infinitely late) and ``describe()``; ``step_fn(state,
    op)`` answers (fits, next state), with hashable states; ``initial`` is the
    state before the first op.  Returns (verdict, explanation).
    """
    # Entries 1..2n; 0 is the list head, -1 the end.  Calls sort before
    # returns at equal times (the more permissive reading of a tie).
    n = len(ops)
    if not n:
        return VALID, ""
    events = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        events.append((math.inf if op.complete is None else op.complete, 1, i))
    events.sort()
    size = 2 * n + 1
    is_call = [False] * size
    op_of = [0] * size
    match = [0] * size
    call_entry = [0] * n
    return_entry = [0] * n
    for e, (_, kind, i) in enumerate(events, start=1):
        op_of[e] = i
        if kind == 0:
            is_call[e] = True
            call_entry[i] = e
        else:
            return_entry[i] = e
    for i in range(n):
        match[call_entry[i]] = return_entry[i]
    nxt = list(range(1, size)) + [-1]
    prv = [-1] + list(range(0, size - 1))

    def lift(e):
        p, q = prv[e], nxt[e]
        nxt[p] = q
        if q != -1:
            prv[q] = p
        r = match[e]
        p, q = prv[r], nxt[r]
        nxt[p] = q
        if q != -1:
            prv[q] = p

    def unlift(e):
        r = match[e]
        p, q = prv[r], nxt[r]
        nxt[p] = r
        if q != -1:
            prv[q] = r
        p, q = prv[e], nxt[e]
        nxt[p] = e
        if q != -1:
            prv[q] = e

    cache = set()
    stack: List[Tuple[int, object]] = []
    state = initial
    linearized = 0
    best_depth = -1
    best = None  # (stuck op, state, linearized ops in order)
    e = nxt[0]
    steps = 0
    try:
        while nxt[0] != -1:
            steps += 1
            if steps & 0x3FF == 0 and (clock() > deadline or len(cache) > memo_limit):
                raise _OutOfBudget()
            if is_call[e]:
                i = op_of[e]
                fits, new_state = step_fn(state, ops[i])
                if fits:
                    marked = linearized | (1 << i)
                    memo = (marked, new_state)
                    if memo not in cache:
                        cache.add(memo)
                        stack.append((e, state))
                        state = new_state
                        linearized = marked
                        lift(e)
                        e = nxt[0]
                        continue
                e = nxt[e]
            else:
                # The operation returning here was not linearized before its
                # completion: undo the last choice.
                if len(stack) > best_depth:
                    best_depth = len(stack)
                    best = (ops[op_of[e]], state, [ops[op_of[c]] for c, _ in stack[-6:]])
                if not stack:
                    break
                e, state = stack.pop()
                linearized &= ~(1 << op_of[e])
                unlift(e)
                e = nxt[e]
    except _OutOfBudget:
        return UNKNOWN, "undecided after %d steps and %d memo entries (time budget or memo limit)" % (steps, len(cache))
    if nxt[0] == -1:
        return VALID, ""
    stuck, at_state, recent = best
    lines = [
        "no linearization: at best %d of %d ops linearize; then the %s holds %r and this op cannot take effect before it completes:"
        % (best_depth, n, what, at_state),
        "  " + stuck.describe(),
        "the last ops of that longest linearizable prefix:",
    ]
    lines += ["  " + op.describe() for op in recent] or ["  (none)"]
    return INVALID, "\n".join(lines)


def by_key(ops: Iterable[Op]) -> Dict[str, List[Op]]:
    keys: Dict[str, List[Op]] = {}
    for op in ops:
        keys.setdefault(op.key, []).append(op)
    return keys


def check(ops: Iterable[Op], budget_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
          memo_limit: int = DEFAULT_MEMO_LIMIT) -> CheckResult:
    """
    Check a whole history within ``budget_s`` seconds: ``valid`` only when
    every key is decided linearizable, ``invalid`` when any key is not,
    ``unknown`` otherwise.
    """
    return check_each(list(ops), check_key, budget_s, clock, memo_limit)


def check_each(ops: List, check_one: Callable, budget_s: float, clock: Callable[[], float],
               memo_limit: int) -> CheckResult:
    """
    ``ops`` split by ``op.key``, each part decided by ``check_one(key, ops,
    deadline, clock, memo_limit) -> KeyResult`` within one budget: ``valid``
    only when every part is, ``invalid`` when any is not, ``unknown`` otherwise.
    """
    started = clock()
    deadline = started + budget_s
    keys = by_key(ops)
    out = CheckResult(VALID, ops=len(ops))
    # Small keys first: the budget decides as many keys as it can.
    for key in sorted(keys, key=lambda k: (len(keys[k]), k)):
        if clock() > deadline:
            out.keys.append(KeyResult(key, UNKNOWN, len(keys[key]), 0.0, "not checked: the time budget ran out"))
            continue
        out.keys.append(check_one(key, keys[key], deadline, clock, memo_limit))
    if out.anomalies:
        out.verdict = INVALID
    elif out.undecided:
        out.verdict = UNKNOWN
    out.seconds = clock() - started
    return out
