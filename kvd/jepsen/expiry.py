"""
The expiry workload: keys that expire while the nemesis kills, pauses and
partitions the nodes, checked by kvd.check.expiry.

Each client loops over a few key slots, as the register workload does
(kvd.jepsen.workload): a fifth of its ops are ``SET k v PX ttl`` (every
value unique), the rest ``GET k``, each through a node picked at random; few
enough writes that a value often lives to its expiry, so reads come close to
it on both sides.  A key's ttl
is a function of its name, 300-1500 ms, the same for every write of it (the
checker's "no early disappearance" rule needs that), so keys expire all
through a run, during faults as well as between them.  A key slot moves to a
fresh key after ``ops_per_key`` ops.

After the run the final reads (``final_reads``) wait out the longest ttl and
read every key through every member, linearizably (recorded, so the checker
sees them) and from each node's own state with READONLY: every key must be
gone everywhere (``leftovers``), which the leader's reclaiming Ticks make
true on every replica.

``planted=True`` is a planted bug, to show the checker has teeth: writes are
recorded with a third of the ttl they were sent with, so reads that find a
value between the two look like reads after expiry.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from typing import Dict, List, Optional

from kvd.check.expiry import FAIL, INFO, OK, READ, WRITE
from kvd.jepsen.workload import ClientThreads, History, interpret, outcome_of
from kvd.resp.client import Connection

TTL_MIN_MS, TTL_MAX_MS = 300, 1500
WRITE_SHARE = 0.2


def ttl_ms(key: str) -> int:
    return TTL_MIN_MS + zlib.crc32(key.encode()) % (TTL_MAX_MS - TTL_MIN_MS + 1)


def run_op(conn: Connection, f: str, key: str, value: Optional[str], ttl: Optional[int]):
    """(outcome, result, error) of one op on a connection (errors as the register workload's)."""
    if f == WRITE:
        return outcome_of(lambda: conn.call("SET", key, value, "PX", str(ttl)), lambda reply: interpret(WRITE, reply))
    return outcome_of(lambda: conn.call("GET", key), lambda reply: interpret(READ, reply))


class ExpiryWorkload(ClientThreads):
    THREAD_NAME = "expiry"

    def __init__(self, cluster, history: History, seed: int, clients: int = 5, keys: int = 4, ops_per_key: int = 200,
                 timeout_s: float = 4.0, think_s: float = 0.01, split: bool = False):
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.n_clients = clients
        self.ops_per_key = ops_per_key
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.planted = split
        self.lock = threading.Lock()
        self.slots = [[0, 0] for _ in range(keys)]  # [generation, ops issued]
        self.keys_used: List[str] = []
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        self.unexpected: List[str] = []
        # Reads count those that found a value and those that found none: a run needs many of both to show anything.
        self.stats: Dict[str, Dict[str, int]] = {WRITE: {OK: 0, FAIL: 0, INFO: 0},
                                                 READ: {OK: 0, FAIL: 0, INFO: 0, "found": 0, "empty": 0}}
        self.leftovers: List[str] = []

    def _key(self, rng: random.Random) -> str:
        with self.lock:
            slot = rng.randrange(len(self.slots))
            gen, issued = self.slots[slot]
            if issued >= self.ops_per_key:
                gen, issued = gen + 1, 0
            self.slots[slot] = [gen, issued + 1]
            key = "x%d-%d" % (slot, gen)
            if key not in self.keys_used:
                self.keys_used.append(key)
            return key

    def op(self, conn: Connection, process: str, node_id: str, key: str, f: str, value: Optional[str]) -> str:
        """Run and record one op; its outcome."""
        ttl = ttl_ms(key) if f == WRITE else None
        recorded = [value, ttl // 3 if self.planted else ttl] if f == WRITE else None
        rec = self.history.invoke(process, key, f, recorded, node_id)
        outcome, result, error = run_op(conn, f, key, value, ttl)
        self.history.complete(rec, outcome, result, error)
        with self.lock:
            self.stats[f][outcome] += 1
            if f == READ and outcome == OK:
                self.stats[READ]["found" if result is not None else "empty"] += 1
            if error.startswith("unexpected"):
                self.unexpected.append("%s via %s: %s" % (f, node_id, error))
        return outcome

    def _client(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        name = "c%d" % i
        n = 0

        def step(node, conn):
            nonlocal n
            key = self._key(rng)
            f = WRITE if rng.random() < WRITE_SHARE else READ
            value = None
            if f == WRITE:
                n += 1
                value = "%s-%d" % (name, n)
            outcome = self.op(conn, name, node.id, key, f, value)
            return outcome, outcome == OK  # a connection that saw trouble is replaced

        self.run_client(rng, step)

    def final_reads(self, attempts: int = 5, timeout_s: float = 5.0, settle_s: float = 15.0) -> Dict[str, Optional[str]]:
        """
        Once the longest ttl has passed: every key through every member (recorded), then each node's own
        state until no node holds any key (up to ``settle_s``); what is still held is in ``leftovers``.
        """
        time.sleep(TTL_MAX_MS / 1000.0)
        final: Dict[str, Optional[str]] = {}
        for node in list(self.cluster.members):
            conn = node.connection(timeout_s)
            try:
                for key in self.keys_used:
                    for _ in range(attempts):
                        if self.op(conn, "final", node.id, key, READ, None) == OK:
                            final.setdefault(key, None)
                            break
                        conn.close()
                        conn = node.connection(timeout_s)
                        time.sleep(0.2)
            finally:
                conn.close()
        deadline = time.monotonic() + settle_s
        while True:
            held = self._held_anywhere(timeout_s)
            if not held or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.leftovers = ["node %s still holds expired key %s = %r" % (node, key, value)
                          for node, key, value in held]
        return final

    def _held_anywhere(self, timeout_s: float) -> list:
        held = []
        for node in list(self.cluster.members):
            conn = node.connection(timeout_s, [("READONLY",)])
            try:
                for key in self.keys_used:
                    value = conn.call("GET", key)
                    if value is not None:
                        held.append((node.id, key, value))
            except Exception as e:
                held.append((node.id, "*", "unreadable: %s" % e))
            finally:
                conn.close()
        return held

    def summary(self) -> str:
        w, r = self.stats[WRITE], self.stats[READ]
        return "writes %d ok/%d failed/%d unknown, reads %d ok (%d found a value, %d none)/%d failed/%d unknown" % (
            w[OK], w[FAIL], w[INFO], r[OK], r["found"], r["empty"], r[FAIL], r[INFO])
