"""
Measure what the durable keyspace (kvd.store.state.LmdbState) costs per key
written, without the log's fsync: how many keys a second it applies and
flushes, and how big its records are.

    python -m kvd.store.state_bench [--keys N] [--value-bytes B] [--dir DIR]

It writes ``keys`` keys of ``value-bytes`` bytes twice (created, then
changed) through MSETs of 64 keys, one log entry each, the storage flushing
the state as a node does (every 16 writes or 1024 keys), and prints keys/s,
the CPU time per key, the key database's leaf pages and the mean stored
record.  Compare two checkouts on the same machine, alternating runs: the
wall-clock numbers move with load, the CPU time much less.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from kvd.kv.commands import Envelope, MSet, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.raft.messages import HardState
from kvd.store.lmdb import LmdbStorage
from kvd.store.state import LmdbState

BATCH = 64


def run(keys: int, value_bytes: int, directory: str) -> dict:
    path = tempfile.mkdtemp(prefix="state-bench-", dir=directory)
    try:
        state = LmdbState()
        storage = LmdbStorage(path, sync=False, state=state)
        machine = KVMachine(keyspace=state)
        storage.open("bench", "n1")
        machine.reload()
        seq = 0
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(2):  # created, then changed: the second pass reads each key's record back
            for start in range(0, keys, BATCH):
                seq += 1
                pairs = tuple((b"key-%010d" % i, b"v" * value_bytes) for i in range(start, min(keys, start + BATCH)))
                env = Envelope(b"bench", seq, seq, 1000 + seq, MSet(pairs))
                machine.apply(machine.applied_index + 1, encode_envelope(env))
                storage.save(HardState(term=1, commit=machine.applied_index), [], None, sync=True)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        with storage._env.begin() as txn:
            stat = txn.stat(state._kv)
            stored = sum(len(value) for _, value in txn.cursor(db=state._kv))
        storage.close()
        return {"keys_per_s": 2 * keys / seconds, "cpu_us_per_key": cpu / (2 * keys) * 1e6,
                "leaf_pages": stat["leaf_pages"], "record_bytes": stored / keys}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--dir", default=None, help="where the temporary store goes (default: the system's temp dir)")
    args = p.parse_args()
    result = run(args.keys, args.value_bytes, args.dir)
    print("%d key writes: %.0f keys/s, %.2f us of CPU per key; %d leaf pages, %.1f bytes per stored record"
          % (2 * args.keys, result["keys_per_s"], result["cpu_us_per_key"], result["leaf_pages"],
             result["record_bytes"]))


if __name__ == "__main__":
    main()
