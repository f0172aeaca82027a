# -*- test-case-name: tests.jepsen.test_durability -*-
"""
Durability: after a run, every acknowledged write is either present in the
final state or explained by a later write or delete.

The harness writes every value once (values are unique per run), so a final
value names the operation that wrote it.  For each key read at the end
(``final``: key -> value, None for no such key):

- the final value must have been written by an operation that did not fail
  (or be None);
- every acknowledged mutation (SET ok, SET IFEQ that answered OK, DEL ok)
  whose value is not the final one must be followed by some operation that
  leaves the final value and that could take effect after it: one that did
  not complete before the acknowledged one was invoked (unknown outcomes
  count, they may have taken effect late).  Otherwise that acknowledged
  write was lost.

``replicas`` (optional, key -> {node: value}) adds convergence: every node
must hold the same value as the final one once it has caught up.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from kvd.check.linear import FAIL, OK, Op, by_key


def check_durability(ops: Iterable[Op], final: Dict[str, object],
                     replicas: Optional[Dict[str, Dict[str, object]]] = None) -> List[str]:
    """Problems found (empty when durable); each a self-contained sentence."""
    problems: List[str] = []
    keys = by_key(op for op in ops if op.f != "read")
    for key in sorted(final):
        value = final[key]
        mutations = [op for op in keys.get(key, []) if op.outcome != FAIL and op.effect()[0]]
        producers = [op for op in mutations if op.effect()[1] == value]
        if value is not None and not producers:
            problems.append("key %s: final value %r was never written by an operation that did not fail" % (key, value))
            continue
        for op in mutations:
            if op.outcome != OK or op.effect()[1] == value:
                continue
            later = [p for p in producers if p is not op and (p.complete is None or p.complete > op.invoke)]
            if not later:
                problems.append(
                    "key %s: acknowledged %s was lost: the final value is %r and no operation that could follow it leaves that value"
                    % (key, op.describe(), value)
                )
    for key in sorted(replicas or {}):
        for node, held in sorted(replicas[key].items()):
            if key in final and held != final[key]:
                problems.append("key %s: node %s holds %r but the cluster's value is %r" % (key, node, held, final[key]))
    return problems
