"""
The locks workload's checker (kvd.jepsen.locks): clients take a lock (a
lease, ``SET lock:L <holder> NX LEASE id`` and a read of the key's create
revision, the **token**, plus a read of the protected register ``reg:L``,
all in one MULTI/EXEC), write the register fenced (``KVD.TXN IF CREATE
lock:L = token THEN GET reg:L SET reg:L <value>``: the GET shows the value
each write replaced), and release.  Every written value starts with its
writer's token (``<token>:<writer>``), so the token of any value is known,
even of a write whose answer was lost.

A lease can expire under a holder that does not know it yet (a paused or cut
off node, a slow client), so two clients may *believe* they hold the lock at
once; what must hold is what the fencing token promises:

- **one holder per token**: no two acquisitions answered with the same token;
- **tokens follow real time**: an acquisition that began after another one
  was answered has a larger token;
- **fenced writes in token order**: every applied write replaced a value
  whose token is not larger than its own (a stale holder's write never lands
  after a newer holder's), and replaced a value that was written and not
  refused;
- **no write after a newer holder took the lock**: the writes that follow the
  register's value read when a token was taken all have at least that token;
- **no lost write**: no two applied writes replaced the same value (the one
  replaced first would be lost); the register's final value (read by every
  member after the run) is a written value that no applied write replaced.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from kvd.check.linear import FAIL, INFO, INVALID, OK, VALID, CheckResult, KeyResult

ACQUIRE, WRITE, READ = "acquire", "write", "read"
#: The process of the reads after the run (kvd.jepsen.locks ``final_reads``).
FINAL = "final"


@dataclass(frozen=True)
class LockOp:
    index: int
    process: str
    key: str                      # the lock's name
    f: str                        # acquire, write or read
    outcome: str
    invoke: float
    complete: Optional[float]
    value: Optional[str] = None   # acquire: the holder; write: the value written
    token: Optional[int] = None   # acquire: the token taken (None: not acquired); write: the writer's token
    read: Optional[str] = None    # acquire: the register when the lock was taken; read: the value read
    applied: Optional[bool] = None  # write: the fencing compare held
    prev: Optional[str] = None    # write: the value it replaced
    node: str = ""


def token_of(value: str) -> int:
    return int(value.split(":", 1)[0])


def from_record(rec: dict) -> LockOp:
    """A history record of kvd.jepsen.locks as a LockOp."""
    ok = rec["outcome"] == OK
    result = rec.get("result") if ok else None
    f = rec["f"]
    common = dict(index=rec["index"], process=rec["process"], key=rec["key"], f=f, outcome=rec["outcome"],
                  invoke=rec["invoke"], complete=rec["complete"], node=rec.get("node", ""))
    if f == ACQUIRE:
        return LockOp(value=rec["value"], token=result["token"] if result else None,
                      read=result["read"] if result else None, **common)
    if f == WRITE:
        return LockOp(value=rec["value"], token=token_of(rec["value"]),
                      applied=bool(result["applied"]) if result else None, prev=result["prev"] if result else None,
                      **common)
    return LockOp(read=result, **common)


def check(ops: Iterable[LockOp]) -> List[str]:
    """Every violation found, one line each."""
    by_key: Dict[str, List[LockOp]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    out: List[str] = []
    for key in sorted(by_key):
        out.extend(check_lock(key, by_key[key]))
    return out


def check_history(ops: Iterable[LockOp]) -> CheckResult:
    """The verdict in the fault suite's terms (kvd.check.linear): every lock valid, or the ones that are not."""
    started = time.monotonic()
    by_key: Dict[str, List[LockOp]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    out = CheckResult(VALID, ops=sum(len(v) for v in by_key.values()))
    for key in sorted(by_key):
        problems = check_lock(key, by_key[key])
        out.keys.append(KeyResult(key, INVALID if problems else VALID, len(by_key[key]), 0.0, "\n".join(problems)))
        if problems:
            out.verdict = INVALID
    out.seconds = time.monotonic() - started
    return out


def _name(op: LockOp) -> str:
    return "%s (%s via %s at %.3f-%s)" % (op.value, op.process, op.node or "?", op.invoke,
                                         "?" if op.complete is None else "%.3f" % op.complete)


def check_lock(key: str, ops: List[LockOp]) -> List[str]:
    out: List[str] = []
    taken = [op for op in ops if op.f == ACQUIRE and op.outcome == OK and op.token is not None]

    # One holder per token.
    by_token: Dict[int, LockOp] = {}
    for a in taken:
        other = by_token.setdefault(a.token, a)
        if other is not a:
            out.append("%s: token %d taken twice: by %s and by %s" % (key, a.token, _name(other), _name(a)))

    # Tokens follow real time: a later acquisition (invoked after another was answered) has a larger token.
    done = sorted(taken, key=lambda a: a.complete)
    for b in taken:
        for a in done:
            if a.complete >= b.invoke:
                break
            if a.token >= b.token:
                out.append("%s: %s took token %d after %s had taken token %d" % (
                    key, _name(b), b.token, _name(a), a.token))
                break

    writes = {op.value: op for op in ops if op.f == WRITE}
    applied = [w for w in writes.values() if w.outcome == OK and w.applied]

    def known(value: Optional[str], what: str) -> bool:
        if value is None:
            return True
        w = writes.get(value)
        if w is None:
            out.append("%s: %s %r, a value never written" % (key, what, value))
            return False
        if w.outcome == FAIL or (w.outcome == OK and not w.applied):
            out.append("%s: %s %r, whose write was %s" % (
                key, what, value, "refused by its fence" if w.outcome == OK else "not applied"))
            return False
        return True

    # Fenced writes in token order, and no two replacing one value.
    replaced_by: Dict[Optional[str], LockOp] = {}
    for w in sorted(applied, key=lambda w: w.invoke):
        if known(w.prev, "write %s replaced" % _name(w)) and w.prev is not None and token_of(w.prev) > w.token:
            out.append("%s: stale write %s at token %d landed after %r of token %d" % (
                key, _name(w), w.token, w.prev, token_of(w.prev)))
        first = replaced_by.setdefault(w.prev, w)
        if first is not w:
            out.append("%s: %s and %s both replaced %r: one of them was lost" % (
                key, _name(first), _name(w), w.prev))

    # No write of an older token after a newer holder took the lock.
    for a in taken:
        if not known(a.read, "acquisition %s at token %d read" % (_name(a), a.token)):
            continue
        if a.read is not None and token_of(a.read) > a.token:
            out.append("%s: %s at token %d read %r, written by a later holder" % (key, _name(a), a.token, a.read))
        value, steps = a.read, 0
        while value in replaced_by and steps <= len(applied):
            w, steps = replaced_by[value], steps + 1
            if w.token >= a.token:
                break
            out.append("%s: write %s at token %d landed after %s took token %d" % (
                key, _name(w), w.token, _name(a), a.token))
            value = w.value

    # Reads (the nemesis's read-backs during the run, the final reads after it): a written value, not refused;
    # the final reads find the last one.
    for r in ops:
        if r.f == READ and r.outcome == OK and r.process != FINAL:
            known(r.read, "%s's read %s found" % (r.process, _name(r)))
        elif r.f == READ and r.outcome == OK:
            if r.read is None and applied:
                out.append("%s: the final read %s found no value, after %d applied writes" % (
                    key, _name(r), len(applied)))
            elif known(r.read, "the final read %s found" % _name(r)) and r.read in replaced_by:
                out.append("%s: the final read %s found %r, which %s had replaced" % (
                    key, _name(r), r.read, _name(replaced_by[r.read])))
    return out


__all__ = ["ACQUIRE", "WRITE", "READ", "FINAL", "LockOp", "from_record", "check", "check_history", "token_of",
           "OK", "INFO", "FAIL"]
