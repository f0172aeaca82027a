"""
The watch workload: KVD.WATCH streams through random nodes while the nemesis
kills, pauses and partitions them, checked by kvd.check.watches.

Writers (``clients`` threads) set unique values on a few keys under
``w:`` with ``KVD.TXN THEN SET k v``, which answers the write's revision,
each through a node picked at random.  Watchers (``WATCHERS`` threads) run
``KVD.WATCH "" [FROMREV n]`` (every key: each revision of the store is in
the stream, so a gap shows in one stream alone) through a random node and
read its pushes; on any error, cancel (a snapshot installed), lost
connection or silence for a request timeout, and now and then on purpose,
they reconnect to another node with ``FROMREV`` the last revision seen + 1
(or the start the node answered, before any push).  Only a ``compacted``
answer makes a watcher start again without FROMREV (a new segment, which
the checker allows only then): a node's history starts at its restart, so a
watcher behind every node's history cannot resume exactly.

After the faults (``final_reads``) the store's final revision is read
linearizably, the watchers run until each has seen it (bounded), and every
key is read through a node, for the suite's convergence check.

``planted=True`` is a planted bug, to show the checker has teeth: after
every resume the watchers drop the first push they get, unrecorded, so
their streams show what a node that left out the first change of every
FROMREV replay would show.  (Planted in the client, not the node: no test
switch in what ships.)

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Dict, List, Optional

from kvd.check.watches import CAUGHT_UP, EVENT, FAIL, FINAL, INFO, OK, OPEN, PREFIX, WRITE
from kvd.jepsen.workload import ClientThreads, History, outcome_of
from kvd.resp.client import Connection, Indeterminate, NotSent, ReplyError

WATCHERS = 3
#: A watcher reconnects on purpose after a push with this probability (resumes are then tested without faults).
RECONNECT_SHARE = 0.03
#: How long the watchers may take to reach the final revision after the faults.
CATCH_UP_S = 60.0


def _text(value) -> Optional[str]:
    return None if value is None else bytes(value).decode("utf-8", "backslashreplace")


def _write_reply(reply):
    """(outcome, revision, error) of KVD.TXN THEN SET's answer [1, [OK], revision]."""
    if isinstance(reply, list) and len(reply) == 3 and reply[0] == 1 and isinstance(reply[2], int):
        return OK, reply[2], ""
    return INFO, None, "unexpected reply %r" % (reply,)


class WatchWorkload(ClientThreads):
    THREAD_NAME = "watch-writer"

    def __init__(self, cluster, history: History, seed: int, clients: int = 5, keys: int = 4, ops_per_key: int = 200,
                 timeout_s: float = 4.0, think_s: float = 0.01, split: bool = False, watchers: int = WATCHERS):
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.n_clients = clients
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.planted = split
        self.keys_used: List[str] = ["%s%d" % (PREFIX, i) for i in range(keys)]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        self.n_watchers = watchers
        self.watch_threads: List[threading.Thread] = []
        self.watch_stop = threading.Event()  # the watchers' end: after the catch-up, or a harness error
        self.final_revision: Optional[int] = None
        self.unexpected: List[str] = []
        self.stats: Dict[str, Dict[str, int]] = {
            WRITE: {OK: 0, FAIL: 0, INFO: 0},
            "watch": {"opens": 0, "pushes": 0, "compacted": 0, "cancelled": 0, "lost": 0, "refused": 0}}

    # ------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        for i in range(self.n_watchers):
            t = threading.Thread(target=self._watcher, args=(i,), name="kvdj-watcher-%d" % i, daemon=True)
            self.watch_threads.append(t)
            t.start()

    def stop(self) -> bool:
        """The writers stop; the watchers go on until ``final_reads`` has them catch up (a second stop ends them)."""
        if self.stopping.is_set():
            self.watch_stop.set()
        return super().stop()

    # ------------------------------------------------------------ writers
    def _client(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        name = "c%d" % i
        n = 0

        def step(node, conn):
            nonlocal n
            key = rng.choice(self.keys_used)
            n += 1
            value = "%s-%d" % (name, n)
            rec = self.history.invoke(name, key, WRITE, value, node.id)
            outcome, revision, error = outcome_of(lambda: conn.call("KVD.TXN", "THEN", "SET", key, value),
                                                  _write_reply)
            self.history.complete(rec, outcome, revision, error)
            with self.lock:
                self.stats[WRITE][outcome] += 1
                if error.startswith("unexpected"):
                    self.unexpected.append("write via %s: %s" % (node.id, error))
            return outcome, outcome == OK

        self.run_client(rng, step)

    # ------------------------------------------------------------ watchers
    def _watcher(self, i: int) -> None:
        rng = random.Random(self.seed * 7919 + i)
        name = "w%d" % i
        state = {"next": None, "last": None, "done": False}  # FROMREV of the next open; last revision seen
        while not self.watch_stop.is_set() and not state["done"]:
            targets = self.cluster.targets()
            if not targets:
                time.sleep(0.1)
                continue
            node = rng.choice(targets)
            conn = node.connection(self.timeout_s)
            try:
                self._session(conn, rng, name, node.id, state)
            except Exception as e:  # the harness's own trouble: said, and the watcher goes on elsewhere
                with self.lock:
                    self.unexpected.append("watcher %s via %s: %r" % (name, node.id, e))
                time.sleep(0.1)
            finally:
                conn.close()

    def _caught_up(self, name: str, state: dict) -> bool:
        final = self.final_revision
        nxt = state["next"]
        if final is None or nxt is None or nxt <= final:
            return False
        rec = self.history.invoke(name, "*", CAUGHT_UP, final)
        self.history.complete(rec, OK, state["last"])
        state["done"] = True
        return True

    def _session(self, conn: Connection, rng: random.Random, name: str, node_id: str, state: dict) -> None:
        """One KVD.WATCH on one node, until an error or a reconnect on purpose."""
        fromrev = state["next"]
        # The planted bug: the first push after every resume is dropped unrecorded, as if the node had left it out;
        # not once the writers have stopped, or a watcher whose dropped push was the last would never catch up.
        drop_one = self.planted and fromrev is not None and state["last"] is not None and not self.stopping.is_set()
        args = ["KVD.WATCH", ""] + ([] if fromrev is None else ["FROMREV", str(fromrev)])
        rec = self.history.invoke(name, "*", OPEN, fromrev, node_id)
        try:
            conn.send(*args)
            reply = conn.receive()
        except ReplyError as e:
            self.history.complete(rec, FAIL, None, e.text)
            self._count("compacted" if "compacted" in e.text else "refused")
            if "compacted" in e.text:
                state["next"] = None  # no node can resume it exactly: a new segment from the present
            time.sleep(0.05)
            return
        except NotSent as e:
            self.history.complete(rec, FAIL, None, str(e))
            time.sleep(0.05)
            return
        except Indeterminate as e:
            self.history.complete(rec, INFO, None, str(e))
            return
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == b"watching" and isinstance(reply[1], int)):
            self.history.complete(rec, INFO, None, "unexpected reply %r" % (reply,))
            with self.lock:
                self.unexpected.append("watch open via %s: unexpected reply %r" % (node_id, reply))
            return
        self.history.complete(rec, OK, reply[1])
        self._count("opens")
        state["next"] = reply[1]
        while not self.watch_stop.is_set():
            if self._caught_up(name, state):
                return
            try:
                push = conn.receive(timeout=self.timeout_s)
            except (Indeterminate, ReplyError):
                self._count("lost")
                return
            if isinstance(push, list) and push and push[0] == b"watch-cancelled":
                self._count("cancelled")
                return
            if not (isinstance(push, list) and len(push) == 3 and push[0] == b"watch"):
                with self.lock:
                    self.unexpected.append("watch via %s: unexpected push %r" % (node_id, push))
                return
            if drop_one:
                drop_one = False
                continue
            revision, batch = push[1], [[_text(kind), _text(key), _text(value)] for kind, key, value in push[2]]
            rec = self.history.invoke(name, "*", EVENT, [revision, batch], node_id)
            self.history.complete(rec, OK, None)
            self._count("pushes")
            state["next"], state["last"] = revision + 1, revision
            if rng.random() < RECONNECT_SHARE:
                return

    def _count(self, what: str) -> None:
        with self.lock:
            self.stats["watch"][what] += 1

    # ------------------------------------------------------------ the end
    def final_reads(self, attempts: int = 20, timeout_s: float = 5.0) -> Dict[str, Optional[str]]:
        """The final revision (linearizable), the watchers caught up to it, then every key read once."""
        final: Dict[str, Optional[str]] = {}
        revision = self._read_final(attempts, timeout_s)
        if revision is not None:
            self.final_revision = revision
            deadline = time.monotonic() + CATCH_UP_S
            for t in self.watch_threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in self.watch_threads):
                self.unexpected.append("a watcher did not reach the final revision %d in %.0f s"
                                       % (revision, CATCH_UP_S))
        self.watch_stop.set()
        for key in self.keys_used:
            for _ in range(attempts):
                node = random.choice(list(self.cluster.members))
                try:
                    final[key] = _text(node.call("GET", key, timeout=timeout_s))
                    break
                except (ReplyError, ConnectionError):
                    time.sleep(0.2)
        return final

    def _read_final(self, attempts: int, timeout_s: float) -> Optional[int]:
        for _ in range(attempts):
            node = random.choice(list(self.cluster.members))
            rec = self.history.invoke("final", "*", FINAL, None, node.id)
            try:
                revision = node.call("KVD.REVISION", timeout=timeout_s)
            except (ReplyError, ConnectionError) as e:
                self.history.complete(rec, FAIL if isinstance(e, (ReplyError, NotSent)) else INFO, None, str(e))
                time.sleep(0.2)
                continue
            self.history.complete(rec, OK, revision)
            return revision
        self.unexpected.append("the final revision could not be read")
        return None

    def summary(self) -> str:
        w, s = self.stats[WRITE], self.stats["watch"]
        return ("writes %d ok/%d failed/%d unknown, watches %d opened (%d compacted, %d refused), %d revisions pushed, "
                "%d cancelled, %d lost" % (w[OK], w[FAIL], w[INFO], s["opens"], s["compacted"], s["refused"],
                                           s["pushes"], s["cancelled"], s["lost"]))
