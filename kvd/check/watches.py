"""
The watch workload's checker (kvd.jepsen.watches): etcd's watch guarantee,
from the history alone.  Writers set unique values under the workload's
prefix with ``KVD.TXN THEN SET`` (which answers the write's revision);
watchers run ``KVD.WATCH "" [FROMREV n]`` through random nodes and reconnect
(to another node, ``FROMREV`` the last revision seen + 1) on every error, a
cancel, a lost connection, and now and then on purpose.  The watch is of
every key (prefix ``""``), so every revision of the store is in every stream:
a stream's revisions must be consecutive, which needs no other watcher to
find a gap.

Records (kvd.jepsen.workload ``History``): ``write`` (key, value; result:
the revision), ``open`` (value: FROMREV or None; result: the first revision
the node will push; a failed open's error says why, e.g. ``compacted``),
``event`` (one push: value ``[revision, [[kind, key, value]...]]``),
``caught-up`` (result: the last revision the watcher saw when it passed the
run's final revision) and ``final`` (result: the store's final revision,
read linearizably after the faults).

What must hold:

- **no duplicate, in order**: each watcher's revisions strictly increase,
  across reconnects and nodes;
- **no gap**: within a *segment* (the pushes from one open without FROMREV,
  continued by every open ``FROMREV last + 1`` after it), revisions are
  consecutive, and the first push after an open is its FROMREV (or the
  start it answered); a new segment starts only after the node said
  ``compacted`` (an open without FROMREV otherwise is the harness's bug);
- **one history**: every watcher that saw a revision saw the same changes
  in it (on whichever node it was watching);
- **acknowledged writes seen**: a write answered with revision r is, in
  every stream that covers r, a ``put`` of its key with its value at r;
- **no phantom**: every change under the prefix is a ``put`` of a value
  some write of that key sent, and not one that certainly failed;
- **caught up**: after the faults every watcher reaches the final revision.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Tuple

from kvd.check.linear import FAIL, INFO, INVALID, OK, VALID, CheckResult, KeyResult

WRITE, OPEN, EVENT, CAUGHT_UP, FINAL = "write", "open", "event", "caught-up", "final"
#: The keys the writers use; changes of other keys (the nemesis's probe) count as revisions only.
PREFIX = "w:"
#: At most this many problems listed per watcher (the first ones tell the story).
MAX_LISTED = 20


def _batch_key(batch) -> Tuple[tuple, ...]:
    return tuple(tuple(change) for change in batch)


def check(records: Iterable[dict]) -> Dict[str, List[str]]:
    """Every violation, by the watcher (or "writes") it is about; an empty list: that one keeps the rules."""
    records = list(records)
    writes = [r for r in records if r["f"] == WRITE]
    watchers: Dict[str, List[dict]] = defaultdict(list)
    final: Optional[int] = None
    for r in records:
        if r["f"] in (OPEN, EVENT, CAUGHT_UP):
            watchers[r["process"]].append(r)
        elif r["f"] == FINAL and r["outcome"] == OK:
            final = r["result"]
    sent: Dict[str, Dict[str, str]] = defaultdict(dict)  # key -> value -> outcome of the write that sent it
    acked: Dict[int, Tuple[str, str]] = {}
    problems: Dict[str, List[str]] = {"writes": []}
    for w in writes:
        sent[w["key"]][w["value"]] = w["outcome"]
        if w["outcome"] == OK:
            rev = w["result"]
            if rev in acked:
                problems["writes"].append("two acknowledged writes answered revision %d: %r and %r"
                                          % (rev, acked[rev], (w["key"], w["value"])))
            acked[rev] = (w["key"], w["value"])
    seen_at: Dict[int, Tuple[tuple, str]] = {}  # revision -> (its changes, the first watcher that saw them)
    for name in sorted(watchers):
        out = problems[name] = []
        covered = _check_stream(name, watchers[name], final, out, seen_at, sent)
        for rev, (key, value) in sorted(acked.items()):
            if any(lo <= rev <= hi for lo, hi in covered) and rev in seen_at:
                changes = seen_at[rev][0]
                if ("put", key, value) not in changes:
                    out.append("acknowledged write %s=%s at revision %d is not in the stream, which has %r there"
                               % (key, value, rev, changes))
    return problems


def _check_stream(name: str, recs: List[dict], final: Optional[int], out: List[str],
                  seen_at: Dict[int, Tuple[tuple, str]], sent: Dict[str, Dict[str, str]]) -> List[Tuple[int, int]]:
    """One watcher's rules; the revision ranges its segments cover (for the acknowledged writes)."""
    covered: List[Tuple[int, int]] = []
    last: Optional[int] = None  # the last revision pushed to this watcher
    expect: Optional[int] = None  # the revision the next push must have (None: a segment not started yet)
    seg_lo: Optional[int] = None
    compacted = True  # the first open starts a segment
    caught_up = False
    for r in recs:
        if r["f"] == OPEN:
            if r["outcome"] != OK:
                if "compacted" in (r.get("error") or ""):
                    compacted = True
                continue
            fromrev, start = r["value"], r["result"]
            if fromrev is None:
                if not compacted:
                    out.append("open #%d without FROMREV while no node said compacted" % r["index"])
                if seg_lo is not None and last is not None:
                    covered.append((seg_lo, last))
                seg_lo, compacted = start, False
                if last is not None and start <= last:
                    out.append("open #%d starts at revision %d, not after the last seen %d" % (r["index"], start, last))
            elif start != fromrev:
                out.append("open #%d FROMREV %d answered start %d" % (r["index"], fromrev, start))
            elif expect is not None and fromrev != expect:
                out.append("open #%d FROMREV %d where %d was due (the harness resumes at the last seen + 1)"
                           % (r["index"], fromrev, expect))
            expect = start
        elif r["f"] == EVENT:
            rev, batch = r["value"]
            changes = _batch_key(batch)
            if last is not None and rev <= last:
                out.append("revision %d pushed after %d (a duplicate or out of order), event #%d" % (rev, last, r["index"]))
            elif expect is not None and rev != expect:
                out.append("gap: revision %d pushed where %d was due (revisions %d-%d missed), event #%d"
                           % (rev, expect, expect, rev - 1, r["index"]))
            last = rev if last is None else max(last, rev)
            expect = rev + 1
            if seg_lo is None:
                seg_lo = rev
            if rev in seen_at:
                if seen_at[rev][0] != changes:
                    out.append("revision %d is %r here, %r for %s" % (rev, changes, seen_at[rev][0], seen_at[rev][1]))
            else:
                seen_at[rev] = (changes, name)
            for kind, key, value in changes:
                if not key.startswith(PREFIX):
                    continue
                if kind != "put":
                    out.append("revision %d: %s of %s, which no writer does" % (rev, kind, key))
                elif value not in sent.get(key, {}):
                    out.append("revision %d: %s=%s was never written (a phantom)" % (rev, key, value))
                elif sent[key][value] == FAIL:
                    out.append("revision %d: %s=%s is from a write that certainly failed" % (rev, key, value))
        elif r["f"] == CAUGHT_UP and r["outcome"] == OK:
            caught_up = True
    if seg_lo is not None and last is not None:
        covered.append((seg_lo, last))
    if final is not None and not caught_up:
        out.append("did not catch up with the final revision %d (last seen %s)" % (final, last))
    return covered


def check_history(records: Iterable[dict]) -> CheckResult:
    """The verdict in the fault suite's terms (kvd.check.linear): every watcher valid, or those that are not."""
    started = time.monotonic()
    records = list(records)
    problems = check(records)
    counts: Dict[str, int] = defaultdict(int)
    for r in records:
        counts["writes" if r["f"] == WRITE else r["process"]] += 1
    out = CheckResult(VALID, ops=len(records))
    for name in sorted(problems):
        found = problems[name]
        listed = found[:MAX_LISTED] + (["... %d more" % (len(found) - MAX_LISTED)] if len(found) > MAX_LISTED else [])
        out.keys.append(KeyResult(name, INVALID if found else VALID, counts.get(name, 0), 0.0, "\n".join(listed)))
        if found:
            out.verdict = INVALID
    out.seconds = time.monotonic() - started
    return out


__all__ = ["WRITE", "OPEN", "EVENT", "CAUGHT_UP", "FINAL", "PREFIX", "check", "check_history", "OK", "FAIL", "INFO"]
