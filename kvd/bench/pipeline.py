"""
Pipelined writers for ``make bench-data``: ``clients`` connections, each a
thread that sends ``depth`` SETs in one write and reads their replies, then
the next batch, as ``redis-benchmark -P`` does.  redis-benchmark itself cannot
load N *distinct* keys (its ``-r`` draws them at random), hence this.

Keys and values are a function of an index (``key(i)``, ``value(i, size)``),
so a reader can check any loaded key.  Where the indexes come from is a
source: ``Keys`` (each of a range once, a failed write retried up to
``attempts`` times) or ``Cycle`` (round and round a range until stopped, for
"throughput over a window").  Every load ends by its source running dry, its
``stop`` event, or its deadline; a write waits at most ``timeout_s`` for its
reply.

A write that is not acknowledged (an error reply, or a connection that failed
before the reply came) is counted by cause and, for ``Keys``, tried again later.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from kvd.resp.client import Connection, Indeterminate, NotSent, ReplyError

#: Seconds a thread waits after a connection failure before it connects again.
RECONNECT_PAUSE_S = 0.2


def key(i: int, prefix: str = "d") -> bytes:
    return b"%s:%010d" % (prefix.encode(), i)


def value(i: int, size: int) -> bytes:
    """``size`` bytes that start with the index, so that a value read back can be checked."""
    head = b"v%010d:" % i
    if size <= len(head):
        return head[:size]
    filler = _FILLER.get(size)
    if filler is None:
        filler = _FILLER[size] = bytes((97 + (j * 7) % 26) for j in range(size))
    return head + filler[: size - len(head)]


_FILLER: Dict[int, bytes] = {}


class Keys:
    """Each index of [start, stop) once; a failed one goes to the back, up to ``attempts`` tries in all."""

    def __init__(self, start: int, stop: int, attempts: int = 5):
        self.next = start
        self.stop = stop
        self.attempts = attempts
        self.retry: List[int] = []
        self.tries: Dict[int, int] = {}
        self.given_up = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> List[int]:
        with self.lock:
            out = []
            while self.retry and len(out) < n:
                out.append(self.retry.pop())
            take = min(n - len(out), self.stop - self.next)
            out.extend(range(self.next, self.next + take))
            self.next += take
            return out

    def failed(self, indexes: Sequence[int]) -> None:
        with self.lock:
            for i in indexes:
                tries = self.tries.get(i, 1) + 1
                if tries > self.attempts:
                    self.given_up += 1
                    self.tries.pop(i, None)
                else:
                    self.tries[i] = tries
                    self.retry.append(i)


class Cycle:
    """Round and round [start, stop) until stopped: a steady write load that does not grow the data."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.next = start
        self.given_up = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> List[int]:
        with self.lock:
            out = []
            for _ in range(n):
                out.append(self.next)
                self.next = self.start if self.next + 1 >= self.stop else self.next + 1
            return out

    def failed(self, indexes: Sequence[int]) -> None:
        pass


class Load:
    """One load: threads writing what ``source`` gives through ``target`` until it runs dry, ``stop`` or ``deadline``."""

    def __init__(self, target: Tuple[str, int], source, size: int, clients: int, depth: int, prefix: str = "d",
                 timeout_s: float = 15.0, on_acked: Optional[Callable[[int], None]] = None):
        self.target = target
        self.source = source
        self.size = size
        self.clients = clients
        self.depth = depth
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.on_acked = on_acked
        self.stop = threading.Event()
        self.acked = 0
        self.failed = 0
        self.causes: Counter = Counter()
        self.last_acked: Optional[int] = None  # an index certainly written (for a read back)
        self.seconds = 0.0
        self._lock = threading.Lock()

    def run(self, deadline: float) -> "Load":
        """Write until done (blocking); ``deadline`` is time.monotonic()'s."""
        started = time.monotonic()
        threads = [threading.Thread(target=self._writer, args=(deadline,), daemon=True, name="bench-writer-%d" % i)
                   for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + self.timeout_s + 5.0)
        self.stop.set()
        self.seconds = time.monotonic() - started
        return self

    def start(self, deadline: float) -> threading.Thread:
        """Run in the background; ``self.stop.set()`` and join the thread to end it."""
        thread = threading.Thread(target=self.run, args=(deadline,), daemon=True, name="bench-load")
        thread.start()
        return thread

    @property
    def ops_per_s(self) -> float:
        return self.acked / self.seconds if self.seconds > 0 else 0.0

    def _writer(self, deadline: float) -> None:
        conn = Connection(self.target[0], self.target[1], timeout=self.timeout_s, connect_timeout=2.0)
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                batch = self.source.take(self.depth)
                if not batch:
                    return
                commands = [("SET", key(i, self.prefix), value(i, self.size)) for i in batch]
                try:
                    replies = conn.pipeline(commands)
                except (NotSent, Indeterminate) as e:
                    self._count(batch, [], "connection: %s" % type(e).__name__)
                    self.stop.wait(RECONNECT_PAUSE_S)
                    continue
                ok = [i for i, r in zip(batch, replies) if not isinstance(r, ReplyError)]
                bad = [(i, r) for i, r in zip(batch, replies) if isinstance(r, ReplyError)]
                self._count([i for i, _ in bad], ok, None, [r.code for _, r in bad])
        finally:
            conn.close()

    def _count(self, failed: List[int], ok: List[int], cause: Optional[str], codes: Sequence[str] = ()) -> None:
        with self._lock:
            self.acked += len(ok)
            if ok:
                self.last_acked = ok[-1]
            self.failed += len(failed)
            if cause is not None:
                self.causes[cause] += len(failed)
            for code in codes:
                self.causes[code] += 1
        if failed:
            self.source.failed(failed)
        if ok and self.on_acked is not None:
            self.on_acked(len(ok))


class Progress:
    """
    When each tenth of a load of ``total`` keys was acknowledged, counting only
    the time the load ran (``resume``/``pause`` around each part): the load
    rate of each tenth.
    """

    def __init__(self, total: int, parts: int = 10, on_tenth: Optional[Callable[[int, int, float, float], None]] = None):
        self.total = total
        self.on_tenth = on_tenth  # (percent, keys, keys/s in that part, active seconds so far), as each is reached
        self.parts = parts
        self.done = 0
        self.active_s = 0.0
        self._since: Optional[float] = None
        self._marks: List[Tuple[int, float]] = []  # (keys acknowledged, active seconds) at each tenth
        self._lock = threading.Lock()

    def resume(self) -> None:
        self._since = time.monotonic()

    def pause(self) -> None:
        if self._since is not None:
            self.active_s += time.monotonic() - self._since
            self._since = None

    def _active(self) -> float:
        return self.active_s + (time.monotonic() - self._since if self._since is not None else 0.0)

    def acked(self, n: int) -> None:
        with self._lock:
            self.done += n
            while len(self._marks) < self.parts and self.done >= self.total * (len(self._marks) + 1) / self.parts:
                self._marks.append((self.done, self._active()))
                if self.on_tenth is not None:
                    percent, rate = self.rates()[-1]
                    self.on_tenth(percent, self.done, rate, self._marks[-1][1])

    def rates(self) -> List[Tuple[int, float]]:
        """(percent of the keys, keys/s within that tenth) for each tenth reached."""
        out, keys_before, t_before = [], 0, 0.0
        for n, (keys, t) in enumerate(self._marks):
            out.append(((n + 1) * 100 // self.parts, (keys - keys_before) / (t - t_before) if t > t_before else 0.0))
            keys_before, t_before = keys, t
        return out
