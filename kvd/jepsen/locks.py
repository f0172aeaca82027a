"""
The locks workload: clients take locks with mgmt.py's own recipe
(kvd.cli.lock: a lease, SET NX LEASE, the key's create revision as the
fencing token) while the nemesis kills, pauses and partitions the nodes, and
write what the lock protects fenced by the token; checked by kvd.check.locks.

Each client loops: pick one of ``keys`` locks (``lock:L<i>``, protecting the
register ``reg:L<i>``), take it through a random node (moving to the others
as ``kvd.cli.lock.Nodes`` does, up to ``ACQUIRE_TIMEOUT_S``; the entry that
takes it also reads the register), then make one to three fenced writes
``KVD.TXN IF CREATE lock:L<i> = <token> THEN GET reg:L<i> SET reg:L<i>
<token>:<writer>`` and release.  Between writes a holder sometimes waits
longer than the lease's ttl without renewing it, so some holders write after
their lease expired and another client took the lock: their writes must be
refused by the fence, which is what the checker's rules and the ``refused``
count show.

After the run ``final_reads`` reads every register through every member
(process "final", checked: the last written value).

``planted=True`` (``--planted-split``) is a planted bug, to show the checker
has teeth: the lock is taken with a SET *without* NX, so a second client
overwrites a held lock's key and gets the same token (the key's create
revision does not change when it is overwritten).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Dict, List, Optional

from kvd.check.locks import ACQUIRE, FAIL, FINAL, INFO, OK, READ, WRITE
from kvd.cli.lock import Lock, LockTimeout, Nodes, Unavailable, Unknown, fenced_write
from kvd.jepsen.workload import ClientThreads, History, execute
from kvd.resp.client import NotSent, ReplyError

#: The lease's ttl: short, so that faults (2-4 s) outlast it and holders lose their locks under them.
TTL_S = 2
#: How long one acquisition may wait for the lock before it gives up (recorded as not acquired).
ACQUIRE_TIMEOUT_S = 2.0
#: The share of holds that wait longer than the ttl between two writes, without renewing the lease.
STALE_SHARE = 0.15


def _text(value) -> Optional[str]:
    return None if value is None else value.decode("utf-8", "backslashreplace")


class PlantedLock(Lock):
    """The planted bug: SET without NX, so a held lock is taken again, at the same token."""

    def take_command(self) -> tuple:
        return ("SET", self.key, self.holder, "LEASE", self.lease)


class LockWorkload(ClientThreads):
    THREAD_NAME = "locks"

    def __init__(self, cluster, history: History, seed: int, clients: int = 5, keys: int = 2, ops_per_key: int = 0,
                 timeout_s: float = 4.0, think_s: float = 0.01, split: bool = False):
        self.cluster = cluster
        self.history = history
        self.seed = seed
        self.n_clients = clients
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.planted = split
        self.lock = threading.Lock()
        self.keys_used: List[str] = ["reg:L%d" % i for i in range(max(1, keys))]
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        self.unexpected: List[str] = []
        self.stats: Dict[str, Dict[str, int]] = {
            ACQUIRE: {"acquired": 0, "busy": 0, FAIL: 0, INFO: 0},
            WRITE: {"applied": 0, "refused": 0, FAIL: 0, INFO: 0},
        }

    # ------------------------------------------------------------ plumbing
    def _connect(self, address: str, timeout: float):
        for node in self.cluster.targets():
            if node.id == address:
                return node.connection(timeout)
        return _Gone(address)

    def _nodes(self, rng: random.Random) -> Optional[Nodes]:
        targets = self.cluster.targets()
        if not targets:
            return None
        rng.shuffle(targets)
        return Nodes([n.id for n in targets], self.timeout_s, connect=self._connect)

    def _count(self, f: str, what: str) -> None:
        with self.lock:
            self.stats[f][what] += 1

    # ------------------------------------------------------------ ops
    def acquire(self, nodes: Nodes, process: str, reg: str, holder: str) -> Optional[Lock]:
        """Take the lock of ``reg`` (recorded); the Lock when held."""
        lock_class = PlantedLock if self.planted else Lock
        lock = lock_class(nodes, reg[len("reg:"):], TTL_S, holder, reads=(reg,))
        rec = self.history.invoke(process, reg, ACQUIRE, holder, nodes.address)
        try:
            held = lock.acquire(ACQUIRE_TIMEOUT_S)
        except LockTimeout as e:
            if lock.unknown:
                outcome = INFO  # an attempt whose answer was lost may have taken it
            elif "did not answer" in str(e):
                outcome = FAIL
            else:
                outcome = OK
            self.history.complete(rec, outcome, None, str(e))
            self._count(ACQUIRE, "busy" if outcome == OK else outcome)
            return None
        except ReplyError as e:
            self.history.complete(rec, INFO, None, "unexpected error: " + e.text)
            with self.lock:
                self.unexpected.append("acquire via %s: %s" % (nodes.address, e.text))
            lock.give_up()
            return None
        self.history.complete(rec, OK, {"token": held.token, "read": _text(held.reads[0])})
        self._count(ACQUIRE, "acquired")
        return lock

    def write(self, nodes: Nodes, process: str, reg: str, token: int, value: str) -> str:
        """One fenced write (recorded); its outcome."""
        rec = self.history.invoke(process, reg, WRITE, value, nodes.address)
        cmd = fenced_write(reg[len("reg:"):], token, reg, value)
        cmd = cmd[:-3] + ("GET", reg) + cmd[-3:]  # ... THEN GET reg SET reg value: the value it replaces
        try:
            reply = nodes.call(*cmd)
        except Unavailable as e:
            self.history.complete(rec, FAIL, None, str(e))
            self._count(WRITE, FAIL)
            return FAIL
        except Unknown as e:
            self.history.complete(rec, INFO, None, str(e))
            self._count(WRITE, INFO)
            return INFO
        except ReplyError as e:
            reply = e
        try:
            applied, replies = reply[0], reply[1]
            result = {"applied": applied, "prev": _text(replies[0]) if applied == 1 else None}
            if applied not in (0, 1) or (applied == 1 and len(replies) != 2):
                raise ValueError
        except (TypeError, IndexError, KeyError, ValueError):
            self.history.complete(rec, INFO, None, "unexpected reply %r" % (reply,))
            with self.lock:
                self.unexpected.append("fenced write via %s: unexpected reply %r" % (nodes.address, reply))
            return INFO
        self.history.complete(rec, OK, result)
        self._count(WRITE, "applied" if applied else "refused")
        return OK

    def _client(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        name = "c%d" % i
        n = 0
        while not self.stopping.is_set():
            nodes = self._nodes(rng)
            if nodes is None:
                time.sleep(0.1)
                continue
            try:
                reg = rng.choice(self.keys_used)
                n += 1
                lock = self.acquire(nodes, name, reg, "%s-%d" % (name, n))
                if lock is None:
                    time.sleep(rng.uniform(0, 4 * self.think_s))
                    continue
                token = lock.held.token
                for w in range(rng.randint(1, 3)):
                    if w and rng.random() < STALE_SHARE:
                        time.sleep(TTL_S * rng.uniform(1.2, 2.0))  # not renewed: the lease may be gone by now
                    elif w:
                        time.sleep(rng.uniform(0, 2 * self.think_s))
                    n += 1
                    if self.write(nodes, name, reg, token, "%d:%s-%d" % (token, name, n)) == FAIL:
                        time.sleep(0.05)
                lock.release()
            finally:
                nodes.close()

    # ------------------------------------------------------------ after the run
    def final_reads(self, attempts: int = 5, timeout_s: float = 5.0) -> Dict[str, Optional[str]]:
        """Every register through every member, linearizably (process "final", recorded); key -> value."""
        final: Dict[str, Optional[str]] = {}
        for node in list(self.cluster.members):
            conn = node.connection(timeout_s)
            try:
                for reg in self.keys_used:
                    for _ in range(attempts):
                        rec = self.history.invoke(FINAL, reg, READ, None, node.id)
                        outcome, result, error = execute(conn, READ, reg, None)
                        self.history.complete(rec, outcome, result, error)
                        if outcome == OK:
                            final.setdefault(reg, result)
                            break
                        time.sleep(0.2)
            finally:
                conn.close()
        return final

    def summary(self) -> str:
        a, w = self.stats[ACQUIRE], self.stats[WRITE]
        return ("acquisitions %d taken/%d busy/%d failed/%d unknown, fenced writes %d applied/%d refused/%d failed/"
                "%d unknown" % (a["acquired"], a["busy"], a[FAIL], a[INFO], w["applied"], w["refused"], w[FAIL], w[INFO]))


class _Gone:
    """A connection to a node that left the cluster: nothing is ever sent."""

    def __init__(self, address: str):
        self.address = address

    def pipeline(self, commands):
        raise NotSent("%s is no longer a member" % self.address)

    def close(self) -> None:
        pass
