"""
Checkers for histories recorded by clients of a real cluster (kvd.jepsen):
``linear`` decides linearizability of a key/value register history,
``durability`` checks acknowledged writes against the final state; ``txn``, ``watches``,
``expiry`` and ``locks`` check the multi-key, watch, expiry and locks workloads.

Pure: no I/O, no threads; the only clock read is the time budget's.
"""
