"""
The clients and the history they record.

Each client thread loops: pick one of a few active keys and a random target
node, pick GET / SET / SET ... IFEQ / DEL, record the invocation time, send,
record the completion time and the outcome:

- ``ok``: the node answered (the reply is the result);
- ``fail``: certainly not applied: -NOLEADER, -TRYAGAIN, or the connection
  could not be made (nothing was sent);
- ``info``: unknown: -TIMEOUT, a socket timeout, a lost connection, or any
  other error reply (counted apart: none is expected).

Every value is written once (``<client>-<n>``), so a value names its write.
Each key slot moves on to a fresh key after ``ops_per_key`` operations, or
once ``info_per_key`` of its writes have unknown outcomes, which keeps each
key's history short and its unresolved writes few (each may take effect at
any later point: the checker's search grows with them), while the keys in use
stay few and contended, as Jepsen's independent keys do.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
from typing import Dict, List, Optional

from kvd.errors import Code
from kvd.check.linear import CAS, DELETE, FAIL, INFO, OK, READ, WRITE, Op
from kvd.check.txn import TXN, TxnOp
from kvd.resp.client import Connection, Indeterminate, NotSent, ReplyError, Simple


class History:
    """Operations and nemesis events, timed by one monotonic clock from the run's start."""

    def __init__(self):
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.ops: List[dict] = []
        self.events: List[dict] = []
        self.header: dict = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def invoke(self, process: str, key: str, f: str, value=None, node: str = "") -> dict:
        with self.lock:
            rec = {"type": "op", "index": len(self.ops), "process": process, "key": key, "f": f, "value": value,
                   "node": node, "outcome": None, "result": None, "invoke": None, "complete": None}
            self.ops.append(rec)
            rec["invoke"] = self.now()
        return rec

    def complete(self, rec: dict, outcome: str, result=None, error: str = "") -> None:
        now = self.now()
        rec["outcome"] = outcome
        rec["result"] = result if outcome == OK else None
        rec["complete"] = None if outcome == INFO else now
        rec["seen"] = now  # when the client gave up or got its answer (for reading the file)
        if error:
            rec["error"] = error

    def event(self, nemesis: str, action: str, detail: str = "") -> dict:
        with self.lock:
            rec = {"type": "nemesis", "time": self.now(), "nemesis": nemesis, "action": action, "detail": detail}
            self.events.append(rec)
        return rec

    def finished_ops(self) -> List[dict]:
        """Every op; one still waiting for its answer (a client that could not be stopped) counts as unknown."""
        out = []
        for r in self.ops:
            if r["outcome"] is None and r["invoke"] is not None:
                r = dict(r, outcome=INFO, complete=None, error="no answer before the run ended")
            out.append(r)
        return out

    def counts(self) -> Dict[str, int]:
        out = {OK: 0, FAIL: 0, INFO: 0}
        for r in self.finished_ops():
            out[r["outcome"]] += 1
        return out

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            if self.header:
                f.write(json.dumps(dict(self.header, type="run")) + "\n")
            rows = sorted(self.finished_ops(), key=lambda r: r["invoke"])
            rows += self.events
            rows.sort(key=lambda r: r["invoke"] if r["type"] == "op" else r["time"])
            for r in rows:
                f.write(json.dumps(r) + "\n")


def to_txn_op(rec: dict) -> TxnOp:
    """A multi-key op (kvd.jepsen.multikey): its spec in ``value``, its reads and whether it applied in ``result``."""
    spec, ok = rec["value"], rec["outcome"] == OK
    result = rec.get("result") or {}
    reads = iter(result.get("reads") or ())

    def filled(ops, answered: bool):
        return tuple((m[0], m[1], next(reads, None) if answered else None) if m[0] in ("r", "incr") else tuple(m)
                     for m in ops)

    branches = spec.get("orelse") is not None  # KVD.TXN: the reads are the taken branch's
    micro = filled(spec["micro"], ok and (not branches or result.get("applied") is True))
    orelse = filled(spec["orelse"], ok and result.get("applied") is False) if branches else None
    guard = tuple((k, v) for k, v in spec.get("guard") or ())
    cond = tuple(spec["cond"]) if spec.get("cond") is not None else None
    conds = tuple((k, v) for k, v in spec.get("conds") or ())
    return TxnOp(rec["index"], rec["process"], rec["key"], spec["kind"], micro, guard, cond,
                 result.get("applied") if ok else None, rec["outcome"], rec["invoke"], rec["complete"],
                 rec.get("node", ""), conds, orelse)


def to_op(rec: dict):
    """The checker's op for a history record: an Op (one register) or a TxnOp (a multi-key op)."""
    if rec["f"] == TXN:
        return to_txn_op(rec)
    value = rec["value"]
    if rec["f"] == CAS:
        value = tuple(value)
    return Op(rec["index"], rec["process"], rec["key"], rec["f"], value, rec["outcome"], rec.get("result"),
              rec["invoke"], rec["complete"], rec.get("node", ""))


def read_history(path: str):
    """(header, ops, events) from a history file."""
    header, ops, events = {}, [], []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["type"] == "op":
                ops.append(to_op(rec))
            elif rec["type"] == "nemesis":
                events.append(rec)
            else:
                header = rec
    return header, ops, events


def command_for(f: str, key: str, value) -> tuple:
    if f == READ:
        return ("GET", key)
    if f == WRITE:
        return ("SET", key, value)
    if f == CAS:
        return ("SET", key, value[1], "IFEQ", value[0])
    return ("DEL", key)


def interpret(f: str, reply):
    """(outcome, result, error) for a reply to f."""
    if f == READ:
        if reply is None or (isinstance(reply, bytes) and not isinstance(reply, Simple)):
            return OK, (None if reply is None else reply.decode()), ""
    elif f == WRITE:
        if isinstance(reply, Simple) and reply == b"OK":
            return OK, None, ""
    elif f == CAS:
        if isinstance(reply, Simple) and reply == b"OK":
            return OK, True, ""
        if reply is None:
            return OK, False, ""
    elif f == DELETE:
        if isinstance(reply, int) and reply in (0, 1):
            return OK, reply, ""
    return INFO, None, "unexpected reply %r" % (reply,)


def execute(conn: Connection, f: str, key: str, value):
    """Run one operation on a connection: (outcome, result, error)."""
    return outcome_of(lambda: conn.call(*command_for(f, key, value)), lambda reply: interpret(f, reply))


def outcome_of(call, interpret_reply):
    """``interpret_reply(call())``, or the (outcome, None, error) that the exception ``call`` raised means."""
    try:
        return interpret_reply(call())
    except NotSent as e:
        return FAIL, None, str(e)
    except ReplyError as e:
        if e.code in (Code.NOLEADER, Code.TRYAGAIN):
            return FAIL, None, e.text
        if e.code == Code.TIMEOUT:
            return INFO, None, e.text
        return INFO, None, "unexpected error: " + e.text
    except Indeterminate as e:
        return INFO, None, str(e)


class ClientThreads:
    """
    The clients of a workload: ``n_clients`` threads each running
    ``self._client(i)`` until ``stopping`` is set, most of them through
    ``run_client``.  Subclasses set ``cluster``, ``n_clients``, ``timeout_s``,
    ``think_s``, ``stopping`` and ``threads``.
    """

    THREAD_NAME = "client"
    #: ``stop`` waits this many request timeouts (plus 5 s) for the clients' last operations.
    STOP_TIMEOUTS = 3

    def prepare(self) -> None:
        """Anything to do once before the clients start."""

    def start(self) -> None:
        self.prepare()
        for i in range(self.n_clients):
            t = threading.Thread(target=self._client, args=(i,), name="kvdj-%s-%d" % (self.THREAD_NAME, i), daemon=True)
            self.threads.append(t)
            t.start()

    def run_client(self, rng: random.Random, step, setup=()) -> None:
        """
        The loop of one client thread, until ``stopping``: pick a live node
        (``rng``), reuse this thread's connection to it, run one operation
        with ``step(node, conn)`` -> (outcome, keep the connection?), then
        back off briefly after a refusal (a down node refuses at once: do not
        spin on it) or think for up to ``2 * think_s``.
        """
        conns: Dict[str, Connection] = {}
        try:
            while not self.stopping.is_set():
                targets = self.cluster.targets()
                if not targets:
                    time.sleep(0.1)
                    continue
                node = rng.choice(targets)
                conn = conns.get(node.id)
                if conn is None:
                    conn = conns[node.id] = node.connection(self.timeout_s, setup)
                outcome, keep = step(node, conn)
                if not keep:
                    conns.pop(node.id).close()
                if outcome == FAIL:
                    time.sleep(0.05)
                elif self.think_s:
                    time.sleep(rng.uniform(0, 2 * self.think_s))
        finally:
            for conn in conns.values():
                conn.close()

    def stop(self) -> bool:
        """Stop the clients; True when every one has finished its last operation."""
        self.stopping.set()
        deadline = time.monotonic() + self.timeout_s * self.STOP_TIMEOUTS + 5
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


class Workload(ClientThreads):
    MIX = ((READ, 0.4), (WRITE, 0.2), (CAS, 0.3), (DELETE, 0.1))

    def __init__(self, cluster, history: History, seed: int, clients: int = 5, keys: int = 4, ops_per_key: int = 200,
                 timeout_s: float = 4.0, think_s: float = 0.01, info_per_key: int = 6, stale_reads: bool = False):
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.n_clients = clients
        self.ops_per_key = ops_per_key
        self.info_per_key = info_per_key
        # A planted bug, to show the checker has teeth: every connection asks
        # for READONLY, so reads come from the node's own, possibly stale, state.
        self.setup = [("READONLY",)] if stale_reads else []
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.lock = threading.Lock()
        self.slots = [[0, 0, 0] for _ in range(keys)]  # [generation, ops issued, writes with unknown outcome]
        self.keys_used: List[str] = []
        self.recent: Dict[str, deque] = {}
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        self.unexpected: List[str] = []

    def _key(self, rng: random.Random) -> str:
        with self.lock:
            slot = rng.randrange(len(self.slots))
            gen, issued, infos = self.slots[slot]
            if issued >= self.ops_per_key or infos >= self.info_per_key:
                gen, issued, infos = gen + 1, 0, 0
            self.slots[slot] = [gen, issued + 1, infos]
            key = "k%d-%d" % (slot, gen)
            if key not in self.recent:
                self.recent[key] = deque(maxlen=4)
                self.keys_used.append(key)
            return key

    def _unknown_write(self, key: str) -> None:
        slot, gen = (int(x) for x in key[1:].split("-"))
        with self.lock:
            if self.slots[slot][0] == gen:
                self.slots[slot][2] += 1

    def _saw(self, key: str, value) -> None:
        if value is not None:
            with self.lock:
                self.recent[key].append(value)

    def _pick(self, rng: random.Random) -> str:
        x = rng.random()
        for f, p in self.MIX:
            if x < p:
                return f
            x -= p
        return READ

    def _client(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        name = "c%d" % i
        n = 0

        def step(node, conn):
            nonlocal n
            key = self._key(rng)
            f = self._pick(rng)
            value = None
            if f == WRITE:
                n += 1
                value = "%s-%d" % (name, n)
            elif f == CAS:
                n += 1
                with self.lock:
                    seen = list(self.recent[key])
                expected = rng.choice(seen) if seen else "%s-none" % name
                value = [expected, "%s-%d" % (name, n)]
            rec = self.history.invoke(name, key, f, value, node.id)
            outcome, result, error = execute(conn, f, key, value)
            self.history.complete(rec, outcome, result, error)
            if error.startswith("unexpected"):
                with self.lock:
                    self.unexpected.append("%s via %s: %s" % (f, node.id, error))
            if outcome == INFO and f != READ:
                self._unknown_write(key)
            if outcome == OK:
                if f == READ:
                    self._saw(key, result)
                elif f == WRITE or (f == CAS and result):
                    self._saw(key, value if f == WRITE else value[1])
            return outcome, True

        self.run_client(rng, step, self.setup)


def final_reads(cluster, history: History, keys: List[str], attempts: int = 5, timeout_s: float = 5.0) -> Dict[str, Optional[str]]:
    """
    After the clients stop and the cluster heals: a linearizable GET of
    every key through every member, recorded in the history (process
    "final").  Returns key -> the value read (the first ok answer).
    """
    final: Dict[str, Optional[str]] = {}
    for node in list(cluster.members):
        conn = node.connection(timeout_s)
        try:
            for key in keys:
                for _ in range(attempts):
                    rec = history.invoke("final", key, READ, None, node.id)
                    outcome, result, error = execute(conn, READ, key, None)
                    history.complete(rec, outcome, result, error)
                    if outcome == OK:
                        final.setdefault(key, result)
                        break
                    time.sleep(0.2)
        finally:
            conn.close()
    return final


def local_reads(cluster, keys: List[str], timeout_s: float = 5.0) -> Dict[str, Dict[str, Optional[str]]]:
    """key -> {node: value} read with READONLY (each node's own state machine)."""
    out: Dict[str, Dict[str, Optional[str]]] = {k: {} for k in keys}
    for node in list(cluster.members):
        conn = node.connection(timeout_s)
        try:
            conn.call("READONLY")
            for key in keys:
                reply = conn.call("GET", key)
                out[key][node.id] = None if reply is None else reply.decode()
        except Exception as e:
            for key in keys:
                out[key].setdefault(node.id, "<unreadable: %s>" % e)
        finally:
            conn.close()
    return out
