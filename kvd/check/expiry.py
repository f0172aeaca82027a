"""
The expiry workload's checker (kvd.jepsen.expiry): keys written only with
``SET k v PX ttl``, the same ttl for every write of one key, read with GET
through any node.  What must hold, each checked from the history's times
alone (the clients' monotonic clock; the nodes stamp entries with their wall
clocks, on the same machine, so durations agree):

- **no read after expiry**: a write's value lives until its entry's log time
  plus ttl, and its log time is before the write's answer, or before the
  answer of the first read that returned its value (whichever came first).
  A read invoked later than that plus ttl must not return the value;
- **no early disappearance**: a write answered before a read began, invoked
  less than ttl before the read ended, cannot have expired during the read,
  and neither can any later write of the key (its log time is later and its
  ttl the same): the read must find a value;
- **no stale read**: a read must not return a value overwritten by a write
  that began after the value's write was answered and was itself answered
  before the read began;
- **no phantom**: a read returns only values written to its key.

These are consequences of linearizability for a register whose values
expire; a history that breaks one is not linearizable.  ``TOLERANCE_S``
covers the log's time being whole milliseconds.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from kvd.check.linear import FAIL, INFO, INVALID, OK, READ, VALID, WRITE, CheckResult, KeyResult
#: Seconds of slack on each bound (entry stamps and expiries are whole milliseconds).
TOLERANCE_S = 0.005


@dataclass(frozen=True)
class ExpiryOp:
    index: int
    process: str
    key: str
    f: str
    value: Optional[str]      # a write's value
    ttl_ms: Optional[int]     # a write's time to live
    outcome: str
    result: Optional[str]     # a read's answer (None: no such key)
    invoke: float
    complete: Optional[float]
    node: str = ""


def from_record(rec: dict) -> ExpiryOp:
    """A history record of kvd.jepsen.expiry: a write's ``value`` is [value, ttl_ms]."""
    value, ttl = (rec["value"] if rec["f"] == WRITE else (None, None))
    return ExpiryOp(rec["index"], rec["process"], rec["key"], rec["f"], value, ttl, rec["outcome"],
                    rec.get("result") if rec["outcome"] == OK else None, rec["invoke"], rec["complete"],
                    rec.get("node", ""))


def _by_key(ops: Iterable[ExpiryOp]) -> Dict[str, List[ExpiryOp]]:
    by_key: Dict[str, List[ExpiryOp]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    return by_key


def check(ops: Iterable[ExpiryOp]) -> List[str]:
    """Every violation found, one line each (none: the history keeps the four rules)."""
    by_key = _by_key(ops)
    problems: List[str] = []
    for key in sorted(by_key):
        problems.extend(_check_key(key, by_key[key]))
    return problems


def check_history(ops: Iterable[ExpiryOp]) -> CheckResult:
    """The verdict in the fault suite's terms (kvd.check.linear): every key valid, or the ones that are not."""
    started = time.monotonic()
    by_key = _by_key(ops)
    out = CheckResult(VALID, ops=sum(len(v) for v in by_key.values()))
    for key in sorted(by_key):
        problems = _check_key(key, by_key[key])
        out.keys.append(KeyResult(key, INVALID if problems else VALID, len(by_key[key]), 0.0, "\n".join(problems)))
        if problems:
            out.verdict = INVALID
    out.seconds = time.monotonic() - started
    return out


def _check_key(key: str, ops: List[ExpiryOp]) -> List[str]:
    writes = {op.value: op for op in ops if op.f == WRITE and op.outcome != FAIL}
    reads = [op for op in ops if op.f == READ and op.outcome == OK]
    answered = [w for w in writes.values() if w.outcome == OK]
    first_seen: Dict[str, float] = {}
    for r in reads:
        if r.result is not None and r.result in writes:
            first_seen[r.result] = min(first_seen.get(r.result, r.complete), r.complete)
    out = []
    for r in reads:
        if r.result is None:
            for w in answered:
                if w.complete < r.invoke and w.invoke + w.ttl_ms / 1000.0 > r.complete + TOLERANCE_S:
                    out.append("key %s: %s read nothing via %s at %.3f-%.3fs, but %s (written at %.3f-%.3fs, px %d) "
                               "could not have expired by then" % (key, r.process, r.node, r.invoke, r.complete,
                                                                   w.value, w.invoke, w.complete, w.ttl_ms))
                    break
            continue
        w = writes.get(r.result)
        if w is None:
            out.append("key %s: %s read %r via %s, a value never written to it" % (key, r.process, r.result, r.node))
            continue
        stamped_by = min(t for t in (w.complete, first_seen.get(r.result)) if t is not None)
        if r.invoke > stamped_by + w.ttl_ms / 1000.0 + TOLERANCE_S:
            out.append("key %s: %s read %s via %s at %.3fs, after its expiry (logged by %.3fs, px %d: gone by %.3fs)"
                       % (key, r.process, r.result, r.node, r.invoke, stamped_by, w.ttl_ms,
                          stamped_by + w.ttl_ms / 1000.0))
            continue
        if w.complete is None:
            continue
        for w2 in answered:
            if w2.invoke > w.complete and w2.complete < r.invoke:
                out.append("key %s: %s read %s via %s at %.3fs, but %s overwrote it at %.3f-%.3fs" % (
                    key, r.process, r.result, r.node, r.invoke, w2.value, w2.invoke, w2.complete))
                break
    return out
