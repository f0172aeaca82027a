"""
Workloads over groups of keys, each operation one log entry touching several
keys of one group atomically, checked by kvd.check.txn (a group is one
register holding a map):

- ``txn``: MULTI/EXEC transactions: a read of two or three keys (GETs or one
  MGET queued), an atomic write of two or three (SETs or one MSET), a
  read-then-write of two keys in one entry, and WATCH-based compare-and-set:
  ``WATCH x y``, ``MGET x y``, ``MULTI``, ``SET x ..``, ``SET y ..``,
  ``EXEC``.  An EXEC that answers nil is a definite "did not happen" (its MGET
  is still checked, as a read); it is counted (``aborted``), so a run must show
  real contention.
- ``script``: Lua scripts through EVAL, EVALSHA (loaded once with SCRIPT LOAD
  at the start, so the replicated script cache is exercised under faults) and
  EVAL_RO: a read-modify-write of two keys that also INCRs the group's counter
  and returns the old values and the new count; a compare-and-set of two keys
  on the first's value, answering whether it applied and the old values; a
  read of the whole group.
- ``kvtxn``: KVD.TXN (kvd.kv.txn), each one entry: a compare-and-swap
  transfer of two keys (``IF VALUE a = <seen> VALUE b = <seen> THEN SET a ..
  SET b .. GET c ELSE GET a GET b``; ``MISSING k`` for a key not seen yet),
  a blind write of two or three keys, a read of the whole group.  The ELSE
  branch reads the values that made the compare fail, so a failed transfer
  is checked too; a transfer that applied half, or a read that sees half of
  one, leaves no linearization (kvd.check.txn ``orelse``).

Each group is ``<prefix><slot>-<generation>`` with keys ``.a .b .c`` (and
``.n``, the scripts' counter); a slot moves to a fresh generation after
``ops_per_group`` ops or ``info_per_group`` unknown outcomes, which keeps each
group's history short and its unresolved writes few (the checker's search
grows with both), as the register workload does with keys.  Every written
value is unique (``<client>-<n>``).

Outcomes follow the register workload (kvd.jepsen.workload): a failure
before EXEC (WATCH, MGET, connecting) is ``fail`` -- nothing that writes was
sent; -NOLEADER / -TRYAGAIN is ``fail``; -TIMEOUT, a lost connection or a
timeout after EXEC or EVAL was sent is ``info`` (unknown); any other error or
an unexpected reply is ``info`` and counted in ``unexpected`` (a run with any
is an anomaly).  A connection that saw anything but a clean answer is closed
and replaced, so no WATCH or MULTI state outlives an op.

``split=True`` is a planted bug, to show the checker has teeth: the same ops
are run as separate commands (no MULTI, no WATCH, no script, no KVD.TXN) and
recorded as if they had been atomic.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from typing import Dict, List, Optional, Tuple

from kvd.check.linear import FAIL, INFO, OK
from kvd.check.txn import TXN, group_of
from kvd.errors import Code
from kvd.jepsen.workload import ClientThreads, History
from kvd.resp.client import Connection, Indeterminate, NotSent, ReplyError, Simple

FIELDS = ("a", "b", "c")
COUNTER = "n"

RMW_LUA = """
local out = {}
for i = 1, #KEYS - 1 do out[i] = redis.call('GET', KEYS[i]) end
out[#KEYS] = redis.call('INCR', KEYS[#KEYS])
for i = 1, #KEYS - 1 do redis.call('SET', KEYS[i], ARGV[i]) end
return out
"""

CAS_LUA = """
local out = {0}
for i = 1, #KEYS do out[i + 1] = redis.call('GET', KEYS[i]) end
if out[2] == ARGV[1] then
  for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1]) end
  out[1] = 1
end
return out
"""

READ_LUA = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('GET', KEYS[i]) end
return out
"""

SCRIPTS = {"script-rmw": RMW_LUA, "script-cas": CAS_LUA, "script-read": READ_LUA}
SHAS = {kind: hashlib.sha1(body.encode()).hexdigest() for kind, body in SCRIPTS.items()}


class Unexpected(Exception):
    """A reply the workload cannot explain: recorded as unknown, and counted."""


def _text(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes) and not isinstance(value, Simple):
        return value.decode()
    raise Unexpected("not a value: %r" % (value,))


def _ok(reply, what: str) -> None:
    if not (isinstance(reply, Simple) and reply == b"OK"):
        raise Unexpected("%s answered %r" % (what, reply))


def classify(e: ReplyError, sent_write: bool) -> Tuple[str, str]:
    """(outcome, error) for an error reply; 'unexpected ...' errors count against the run."""
    if e.code in (Code.NOLEADER.value, Code.TRYAGAIN.value):
        return FAIL, e.text
    if not sent_write:
        return FAIL, ("unexpected error: " + e.text) if e.code != Code.TIMEOUT.value else e.text
    if e.code == Code.TIMEOUT.value:
        return INFO, e.text
    return INFO, "unexpected error: " + e.text


class GroupWorkload(ClientThreads):
    """Clients running multi-key ops on a few contended groups of keys (see the module's docstring)."""

    STOP_TIMEOUTS = 4
    PREFIX = "g"
    MIX: Tuple[Tuple[str, float], ...] = ()
    FIELDS = FIELDS

    def __init__(self, cluster, history: History, seed: int, clients: int = 5, groups: int = 3,
                 ops_per_group: int = 150, timeout_s: float = 4.0, think_s: float = 0.01, info_per_group: int = 5,
                 split: bool = False):
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.n_clients = clients
        self.ops_per_group = ops_per_group
        self.info_per_group = info_per_group
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.split = split
        self.lock = threading.Lock()
        self.slots = [[0, 0, 0] for _ in range(groups)]  # [generation, ops issued, unknown outcomes]
        self.groups_used: List[str] = []
        self.keys_used: List[str] = []
        self.recent: Dict[str, deque] = {}
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        self.unexpected: List[str] = []
        #: kind -> {"ok": n, "fail": n, "info": n, "aborted": n, "applied": n}
        self.stats: Dict[str, Dict[str, int]] = {}

    # ------------------------------------------------------------ running
    def keys_of(self, group: str) -> List[str]:
        return ["%s.%s" % (group, f) for f in self.FIELDS]

    def _group(self, rng: random.Random) -> str:
        with self.lock:
            slot = rng.randrange(len(self.slots))
            gen, issued, infos = self.slots[slot]
            if issued >= self.ops_per_group or infos >= self.info_per_group:
                gen, issued, infos = gen + 1, 0, 0
            self.slots[slot] = [gen, issued + 1, infos]
            group = "%s%d-%d" % (self.PREFIX, slot, gen)
            if group not in self.groups_used:
                self.groups_used.append(group)
                for key in self.keys_of(group):
                    self.recent[key] = deque(maxlen=4)
                    self.keys_used.append(key)
            return group

    def _unknown(self, group: str) -> None:
        slot, gen = (int(x) for x in group[len(self.PREFIX):].split("-"))
        with self.lock:
            if self.slots[slot][0] == gen:
                self.slots[slot][2] += 1

    def _pick(self, rng: random.Random) -> str:
        x = rng.random()
        for kind, p in self.MIX:
            if x < p:
                return kind
            x -= p
        return self.MIX[0][0]

    def _seen(self, key: str, value) -> None:
        if value is not None:
            with self.lock:
                self.recent.setdefault(key, deque(maxlen=4)).append(value)

    def _expected(self, rng: random.Random, key: str, name: str) -> str:
        with self.lock:
            seen = list(self.recent.get(key, ()))
        return rng.choice(seen) if seen else "%s-none" % name

    def _count(self, kind: str, what: str) -> None:
        with self.lock:
            row = self.stats.setdefault(kind, {"ok": 0, "fail": 0, "info": 0, "aborted": 0, "applied": 0})
            row[what] += 1

    def _client(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + i)
        name = "c%d" % i
        counter = [0]

        def fresh() -> str:
            counter[0] += 1
            return "%s-%d" % (name, counter[0])

        def step(node, conn):
            group = self._group(rng)
            spec = self.spec(rng, group, self._pick(rng), name, fresh)
            outcome, error = self.run_op(conn, name, node.id, group, spec)
            if error.startswith("unexpected"):
                with self.lock:
                    self.unexpected.append("%s via %s: %s" % (spec["kind"], node.id, error))
            if outcome == INFO:
                self._unknown(group)
            return outcome, outcome == OK and not error

        self.run_client(rng, step)

    def run_op(self, conn: Connection, process: str, node: str, group: str, spec: dict) -> Tuple[str, str]:
        """Run one op, recorded in the history: (outcome, error)."""
        rec = self.history.invoke(process, group, TXN, spec, node)
        sent_write = [False]
        try:
            if self.split:
                result = self.run_split(conn, spec, sent_write)
            else:
                result = self.run_atomic(conn, spec, sent_write)
            outcome, error = OK, ""
        except NotSent as e:
            result, outcome, error = None, FAIL, str(e)
        except Indeterminate as e:
            result, outcome, error = None, (INFO if sent_write[0] else FAIL), str(e)
        except ReplyError as e:
            result = None
            outcome, error = classify(e, sent_write[0])
        except Unexpected as e:
            result, outcome, error = None, (INFO if sent_write[0] else FAIL), "unexpected reply: %s" % e
        except Exception as e:  # a bug of the workload's own: never a silent client thread death
            result, outcome, error = None, INFO, "unexpected exception: %r" % (e,)
        self.history.complete(rec, outcome, result, error)
        kind = spec["kind"]
        self._count(kind, outcome)
        if outcome == OK:
            if result.get("applied") is False:
                self._count(kind, "aborted")
            elif result.get("applied"):
                self._count(kind, "applied")
            reads = iter(result["reads"])
            applied = result.get("applied") is not False
            taken = spec["micro"]
            if spec.get("orelse") is not None:  # KVD.TXN: the reads are those of the branch it took
                taken, applied = (spec["micro"], True) if result.get("applied") else (spec["orelse"], False)
            for m in taken:
                if m[0] in ("r", "incr"):
                    self._seen(m[1], next(reads))
                elif m[0] == "w" and applied and (spec.get("cond") is None or result.get("applied")):
                    self._seen(m[1], m[2])
            for key, value in spec.get("guard") or []:
                self._seen(key, value)
        return outcome, error

    # ------------------------------------------------------------ the planted bug
    def run_split(self, conn: Connection, spec: dict, sent_write: list) -> dict:
        """The op as separate commands, recorded as if atomic (a planted bug)."""
        reads = []
        if spec.get("guard"):
            keys = [k for k, _ in spec["guard"]]
            values = conn.call("MGET", *keys)
            spec["guard"] = [[k, _text(v)] for k, v in zip(keys, values)]
        do_writes = True
        if spec.get("cond") is not None:
            key, expected = spec["cond"]
            do_writes = _text(conn.call("GET", key)) == expected
        for m in spec["micro"]:
            if m[0] == "r":
                reads.append(_text(conn.call("GET", m[1])))
            elif m[0] == "incr":
                sent_write[0] = True
                reads.append(_text(conn.call("INCR", m[1])))
            elif m[0] == "w" and do_writes:
                sent_write[0] = True
                _ok(conn.call("SET", m[1], m[2]), "SET")
        applied = None
        if spec.get("guard"):
            applied = True
        elif spec.get("cond") is not None:
            applied = do_writes
        return {"reads": reads, "applied": applied}

    def run_atomic(self, conn: Connection, spec: dict, sent_write: list) -> dict:
        raise NotImplementedError

    def spec(self, rng: random.Random, group: str, kind: str, name: str, fresh) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------ after the run
    def final_reads(self, attempts: int = 5, timeout_s: float = 5.0) -> Dict[str, Optional[str]]:
        """
        After the clients stop and the cluster heals: a read of each group,
        all its keys in one MULTI/EXEC, through every member (process "final"
        in the history).  Returns key -> value (the first ok answer).
        """
        final: Dict[str, Optional[str]] = {}
        for node in list(self.cluster.members):
            for group in list(self.groups_used):
                keys = self.keys_of(group)
                spec = {"kind": "final", "micro": [["r", k, None] for k in keys]}
                for _ in range(attempts):
                    conn = node.connection(timeout_s)
                    try:
                        outcome, error = self.run_op_plain(conn, node.id, group, spec, final)
                    finally:
                        conn.close()
                    if outcome == OK:
                        break
                    time.sleep(0.2)
        return final

    def run_op_plain(self, conn, node_id, group, spec, final) -> Tuple[str, str]:
        rec = self.history.invoke("final", group, TXN, spec, node_id)
        sent = [False]
        try:
            result = TxnWorkload.run_atomic(self, conn, spec, sent)
        except NotSent as e:
            self.history.complete(rec, FAIL, None, str(e))
            return FAIL, str(e)
        except Indeterminate as e:
            self.history.complete(rec, INFO, None, str(e))
            return INFO, str(e)
        except ReplyError as e:
            outcome, error = classify(e, True)
            self.history.complete(rec, outcome, None, error)
            return outcome, error
        except Unexpected as e:
            self.history.complete(rec, INFO, None, "unexpected reply: %s" % e)
            return INFO, str(e)
        self.history.complete(rec, OK, result)
        for m, value in zip(spec["micro"], result["reads"]):
            final.setdefault(m[1], value)
        return OK, ""

    def summary(self) -> str:
        with self.lock:
            rows = sorted(self.stats.items())
        def conditional(kind, row):
            if kind == "cas":
                return "%d applied, %d aborted (EXEC nil), " % (row["applied"], row["aborted"])
            if kind in ("script-cas", "kvtxn-transfer"):
                return "%d applied, %d compare failed, " % (row["applied"], row["aborted"])
            return ""
        return ", ".join("%s %d ok (%s%d failed, %d unknown)" % (kind, row["ok"], conditional(kind, row), row["fail"], row["info"])
                         for kind, row in rows)


class TxnWorkload(GroupWorkload):
    """MULTI/EXEC transactions and WATCH compare-and-set."""

    PREFIX = "t"
    MIX = (("read", 0.25), ("write", 0.2), ("rmw", 0.15), ("cas", 0.4))

    def spec(self, rng, group, kind, name, fresh) -> dict:
        keys = self.keys_of(group)
        if kind == "read":
            chosen = rng.sample(keys, rng.choice((2, 3)))
            return {"kind": kind, "micro": [["r", k, None] for k in chosen], "compact": rng.random() < 0.5}
        if kind == "write":
            chosen = rng.sample(keys, rng.choice((2, 3)))
            return {"kind": kind, "micro": [["w", k, fresh()] for k in chosen], "compact": rng.random() < 0.5}
        if kind == "rmw":
            micro = []
            for k in rng.sample(keys, 2):
                micro += [["r", k, None], ["w", k, fresh()]]
            return {"kind": kind, "micro": micro}
        chosen = rng.sample(keys, 2)
        return {"kind": kind, "guard": [[k, None] for k in chosen], "micro": [["w", k, fresh()] for k in chosen]}

    def run_atomic(self, conn: Connection, spec: dict, sent_write: list) -> dict:
        guarded = bool(spec.get("guard"))
        watching = None
        if guarded:
            keys = [k for k, _ in spec["guard"]]
            _ok(conn.call("WATCH", *keys), "WATCH")
            watching = conn.sock  # the connection that holds the WATCH
            values = conn.call("MGET", *keys)
            if not isinstance(values, list) or len(values) != len(keys):
                raise Unexpected("MGET answered %r" % (values,))
            spec["guard"] = [[k, _text(v)] for k, v in zip(keys, values)]
        # The queued commands: runs of reads as one MGET and of writes as one MSET when "compact".
        commands: List[tuple] = []  # (command, number of micro-ops it covers, what)
        micro = spec["micro"]
        i = 0
        while i < len(micro):
            f = micro[i][0]
            j = i + 1
            if spec.get("compact") and f in ("r", "w"):
                while j < len(micro) and micro[j][0] == f:
                    j += 1
            run = micro[i:j]
            if f == "r":
                commands.append(("GET", run[0][1]) if len(run) == 1 else ("MGET",) + tuple(m[1] for m in run))
            elif f == "w":
                commands.append(("SET", run[0][1], run[0][2]) if len(run) == 1
                                else ("MSET",) + tuple(x for m in run for x in (m[1], m[2])))
            else:
                commands.append(("INCR", run[0][1]))
            i = j
        sent_write[0] = True  # from here on EXEC may have been sent
        conn.send_many([("MULTI",)] + commands + [("EXEC",)])
        if guarded and conn.sock is not watching:
            # The node had closed the connection (a restart) and the client
            # reopened it to send: that connection never WATCHed, so the
            # transaction ran unguarded.  Record what really ran.
            spec["guard"], spec["unguarded"] = [], True
            guarded = False
        _ok(conn.receive(), "MULTI")
        for _ in commands:
            r = conn.receive()  # an error reply (refused at queue time) is raised: EXEC then answers EXECABORT
            if not (isinstance(r, Simple) and r == b"QUEUED"):
                raise Unexpected("a queued command answered %r" % (r,))
        result = conn.receive()
        if result is None:
            if not guarded:
                raise Unexpected("EXEC answered nil without WATCH")
            return {"reads": [], "applied": False}
        if not isinstance(result, list) or len(result) != len(commands):
            raise Unexpected("EXEC answered %r for %d commands" % (result, len(commands)))
        reads = []
        for command, reply in zip(commands, result):
            if isinstance(reply, ReplyError):
                raise Unexpected("%s inside EXEC answered %s" % (command[0], reply.text))
            if command[0] == "GET":
                reads.append(_text(reply))
            elif command[0] == "MGET":
                if not isinstance(reply, list) or len(reply) != len(command) - 1:
                    raise Unexpected("MGET inside EXEC answered %r" % (reply,))
                reads += [_text(v) for v in reply]
            elif command[0] == "INCR":
                if not isinstance(reply, int):
                    raise Unexpected("INCR inside EXEC answered %r" % (reply,))
                reads.append(str(reply))
            else:
                _ok(reply, command[0] + " inside EXEC")
        return {"reads": reads, "applied": True if guarded else None}


class ScriptWorkload(GroupWorkload):
    """Lua scripts, each one log entry: read-modify-write with a counter, compare-and-set, read."""

    PREFIX = "s"
    MIX = (("script-rmw", 0.35), ("script-cas", 0.35), ("script-read", 0.3))
    FIELDS = FIELDS + (COUNTER,)

    def prepare(self) -> None:
        """SCRIPT LOAD every script once (through the log: EVALSHA then works on any node)."""
        deadline = time.monotonic() + 30.0
        loaded = set()
        while time.monotonic() < deadline and len(loaded) < len(SCRIPTS):
            for node in self.cluster.targets():
                for kind, body in SCRIPTS.items():
                    if kind in loaded:
                        continue
                    try:
                        conn = node.connection(self.timeout_s)
                        try:
                            sha = conn.call("SCRIPT", "LOAD", body)
                        finally:
                            conn.close()
                    except (ConnectionError, ReplyError):
                        continue
                    if _text(sha) != SHAS[kind]:
                        self.unexpected.append("SCRIPT LOAD of %s answered %r, not %s" % (kind, sha, SHAS[kind]))
                    loaded.add(kind)
            if len(loaded) < len(SCRIPTS):
                time.sleep(0.5)
        if len(loaded) < len(SCRIPTS):
            self.unexpected.append("SCRIPT LOAD did not succeed within 30s: %s" % sorted(set(SCRIPTS) - loaded))

    def spec(self, rng, group, kind, name, fresh) -> dict:
        keys = self.keys_of(group)
        strings, counter = keys[:-1], keys[-1]
        how = "EVALSHA" if rng.random() < 0.5 else "EVAL"
        if kind == "script-rmw":
            chosen = rng.sample(strings, 2)
            micro = [["r", k, None] for k in chosen] + [["incr", counter, None]] + [["w", k, fresh()] for k in chosen]
            return {"kind": kind, "micro": micro, "how": how}
        if kind == "script-cas":
            chosen = rng.sample(strings, 2)
            micro = [["r", k, None] for k in chosen] + [["w", k, fresh()] for k in chosen]
            return {"kind": kind, "micro": micro, "cond": [chosen[0], self._expected(rng, chosen[0], name)], "how": how}
        how = rng.choice(("EVAL_RO", "EVALSHA_RO", how))
        return {"kind": kind, "micro": [["r", k, None] for k in keys], "how": how}

    def run_atomic(self, conn: Connection, spec: dict, sent_write: list) -> dict:
        kind, micro = spec["kind"], spec["micro"]
        if kind == "script-rmw":
            keys = [m[1] for m in micro if m[0] == "r"] + [m[1] for m in micro if m[0] == "incr"]
            argv = [m[2] for m in micro if m[0] == "w"]
        elif kind == "script-cas":
            keys = [m[1] for m in micro if m[0] == "r"]
            argv = [spec["cond"][1]] + [m[2] for m in micro if m[0] == "w"]
        else:
            keys, argv = [m[1] for m in micro], []
        how = spec["how"]
        body = SHAS[kind] if how.startswith("EVALSHA") else SCRIPTS[kind]
        sent_write[0] = True
        reply = conn.call(how, body, len(keys), *keys, *argv)
        if not isinstance(reply, list):
            raise Unexpected("%s answered %r" % (how, reply))
        if kind == "script-cas":
            if len(reply) != 1 + len(keys) or reply[0] not in (0, 1):
                raise Unexpected("%s answered %r" % (how, reply))
            return {"reads": [_text(v) for v in reply[1:]], "applied": bool(reply[0])}
        if len(reply) != len(keys):
            raise Unexpected("%s answered %r for %d keys" % (how, reply, len(keys)))
        return {"reads": [_text(v) for v in reply], "applied": None}


class KvTxnWorkload(GroupWorkload):
    """KVD.TXN, one log entry each: compare-and-swap transfers between two keys, blind writes, reads."""

    PREFIX = "k"
    MIX = (("kvtxn-transfer", 0.5), ("kvtxn-write", 0.2), ("kvtxn-read", 0.3))

    def _seen_or_missing(self, rng: random.Random, key: str):
        with self.lock:
            seen = list(self.recent.get(key, ()))
        return rng.choice(seen) if seen else None

    def spec(self, rng, group, kind, name, fresh) -> dict:
        keys = self.keys_of(group)
        if kind == "kvtxn-read":
            return {"kind": kind, "micro": [["r", k, None] for k in keys]}
        if kind == "kvtxn-write":
            chosen = rng.sample(keys, rng.choice((2, 3)))
            return {"kind": kind, "micro": [["w", k, fresh()] for k in chosen]}
        a, b, c = rng.sample(keys, 3)
        return {"kind": kind, "conds": [[a, self._seen_or_missing(rng, a)], [b, self._seen_or_missing(rng, b)]],
                "micro": [["w", a, fresh()], ["w", b, fresh()], ["r", c, None]],
                "orelse": [["r", a, None], ["r", b, None]]}

    @staticmethod
    def _words(ops) -> List[str]:
        words: List[str] = []
        for m in ops:
            words += ["SET", m[1], m[2]] if m[0] == "w" else ["GET", m[1]]
        return words

    def run_atomic(self, conn: Connection, spec: dict, sent_write: list) -> dict:
        words: List[str] = []
        if spec.get("conds"):
            words.append("IF")
            for key, expected in spec["conds"]:
                words += ["MISSING", key] if expected is None else ["VALUE", key, "=", expected]
        words += ["THEN"] + self._words(spec["micro"])
        if spec.get("orelse"):
            words += ["ELSE"] + self._words(spec["orelse"])
        sent_write[0] = True
        reply = conn.call("KVD.TXN", *words)
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] in (0, 1) and isinstance(reply[1], list)
                and isinstance(reply[2], int)):
            raise Unexpected("KVD.TXN answered %r" % (reply,))
        succeeded = bool(reply[0])
        ops = spec["micro"] if succeeded else spec.get("orelse") or []
        if len(reply[1]) != len(ops) or (not succeeded and not spec.get("conds")):
            raise Unexpected("KVD.TXN answered %r for %d ops" % (reply, len(ops)))
        reads = []
        for m, answer in zip(ops, reply[1]):
            if isinstance(answer, ReplyError):
                raise Unexpected("KVD.TXN's %s %s answered %s" % (m[0], m[1], answer.text))
            if m[0] == "r":
                reads.append(_text(answer))
            else:
                _ok(answer, "KVD.TXN's SET")
        return {"reads": reads, "applied": succeeded if "orelse" in spec else None}

    def run_split(self, conn: Connection, spec: dict, sent_write: list) -> dict:
        """The planted bug: the compares, then each op, as separate commands, recorded as one KVD.TXN."""
        holds = all(_text(conn.call("GET", key)) == expected for key, expected in spec.get("conds") or ())
        reads = []
        for m in spec["micro"] if holds else spec.get("orelse") or []:
            if m[0] == "r":
                reads.append(_text(conn.call("GET", m[1])))
            else:
                sent_write[0] = True
                _ok(conn.call("SET", m[1], m[2]), "SET")
        return {"reads": reads, "applied": holds if "orelse" in spec else None}


WORKLOADS = {"txn": TxnWorkload, "script": ScriptWorkload, "kvtxn": KvTxnWorkload}


def convergence(final: Dict[str, Optional[str]], replicas: Dict[str, Dict[str, Optional[str]]]) -> List[str]:
    """Every node's own state holds the cluster's final value of every key (once caught up)."""
    problems = []
    for key in sorted(replicas):
        for node, held in sorted(replicas[key].items()):
            if key in final and held != final[key]:
                problems.append("key %s: node %s holds %r but the cluster's value is %r" % (key, node, held, final[key]))
    return problems


__all__ = ["GroupWorkload", "TxnWorkload", "ScriptWorkload", "KvTxnWorkload", "WORKLOADS", "convergence", "group_of"]
