# -*- test-case-name: tests.store.test_lmdb -*-
"""
Measure the latency of one durable ``LmdbStorage.save`` per batch, so that
the cost of fsync in the reactor thread can be judged.

    python -m kvd.store.bench [--dir DIR] [--rounds N] [--entry-bytes B]

For each sync mode and batch size (1, 16, 128 entries of 100 bytes) it
saves ``rounds`` batches (entries plus a hard state, ``sync=True``) and prints
p50/p90/p99/max latency in milliseconds and the entry throughput.  Run it on
the disk the data directory will live on (``--dir``): a tmpfs or a
write-back cache makes fsync look free.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import List, Sequence

from kvd.raft.messages import Entry, HardState
from kvd.store.lmdb import LmdbStorage

BATCH_SIZES = (1, 16, 128)

# (label, constructor keywords)
MODES = (
    ("ordered (default)", {"sync": True, "sync_mode": "ordered"}),
    ("single flush", {"sync": True, "sync_mode": "single"}),
    ("no fsync", {"sync": False}),
)


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    position = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[position]


def run_one(directory: str, options: dict, batch: int, rounds: int, entry_bytes: int) -> List[float]:
    """Latencies in seconds of ``rounds`` saves of ``batch`` entries each."""
    path = tempfile.mkdtemp(prefix="kvd-bench-", dir=directory)
    storage = LmdbStorage(path, **options)
    try:
        storage.open("bench", "n1")
        payload = os.urandom(entry_bytes)
        index = 0
        latencies = []
        for _ in range(rounds):
            entries = [Entry(index=index + i + 1, term=1, data=payload) for i in range(batch)]
            index += batch
            hard_state = HardState(term=1, vote="n1", commit=index)
            start = time.perf_counter()
            storage.save(hard_state, entries, None, sync=True)
            latencies.append(time.perf_counter() - start)
        return latencies
    finally:
        storage.close()
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to create the scratch environments")
    parser.add_argument("--rounds", type=int, default=300, help="saves per batch size and mode")
    parser.add_argument("--entry-bytes", type=int, default=100, help="payload bytes per entry")
    args = parser.parse_args(list(argv) or None)

    print(f"scratch dir: {os.path.abspath(args.dir)}; {args.rounds} saves per row; {args.entry_bytes}-byte entries")
    print(f"{'mode':18} {'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'entries/s':>10}")
    for label, options in MODES:
        for batch in BATCH_SIZES:
            latencies = sorted(run_one(args.dir, options, batch, args.rounds, args.entry_bytes))
            throughput = batch * len(latencies) / sum(latencies)
            print(
                f"{label:18} {batch:>5} "
                f"{_percentile(latencies, 0.5) * 1e3:8.3f} {_percentile(latencies, 0.9) * 1e3:8.3f} "
                f"{_percentile(latencies, 0.99) * 1e3:8.3f} {latencies[-1] * 1e3:8.3f} {throughput:10.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
