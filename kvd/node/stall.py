# -*- test-case-name: tests.node.test_stall -*-
"""
``StallMeter``: how long the reactor goes without running a due timer.

Everything a node does (Raft ticks, heartbeats, client commands, applying
entries, snapshots) runs on one reactor thread, so any step that holds it for
long delays all the rest: heartbeats go out late, followers call elections,
clients time out.  Issue 13 sets the bound (the longest gap between two ticks
during load, snapshot and compaction, at most 50 ms); this meter is how a node
shows whether it keeps it.

A ``LoopingCall`` ticks every ``interval_s`` (10 ms).  The *stall* at a tick is
how much longer than the interval the gap since the previous tick was (the
gap itself is the interval plus the stall).  The meter keeps:

- the largest stall since it started, and the largest of the last
  ``RECENT_S`` seconds;
- how many stalls exceeded each of ``THRESHOLDS_MS``;
- the largest stall of each of the last ``HISTORY_S`` wall-clock seconds
  (a stall counts in the second it ended), so that a benchmark sampling INFO
  now and then can tell which stall happened during which of its phases.

It starts after the node (kvd.tap adds it after ``NodeService``): the
replay of a restart, before the node serves, is not a stall of a serving node.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import collections
import gc
import math
import sys
import threading
import time
import traceback
from typing import Callable, Deque, Dict, List, Optional, Tuple

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

INTERVAL_S = 0.010
RECENT_S = 10
HISTORY_S = 60
THRESHOLDS_MS = (50, 100, 1000)


class StallMeter(service.Service):
    def __init__(self, clock, interval_s: float = INTERVAL_S, recent_s: int = RECENT_S, history_s: int = HISTORY_S,
                 thresholds_ms: Tuple[int, ...] = THRESHOLDS_MS):
        self.clock = clock
        self.interval_s = interval_s
        self.recent_s = recent_s
        self.history_s = max(history_s, recent_s)
        self.thresholds_ms = tuple(thresholds_ms)
        self.ticks = 0
        self.max_ms = 0.0
        self.over: Dict[int, int] = {t: 0 for t in self.thresholds_ms}
        self._seconds: Deque[List] = collections.deque(maxlen=self.history_s + 1)  # [wall second, its largest stall in ms]
        self._last: Optional[float] = None
        self._started = 0  # the wall second it started in
        self._loop: Optional[task.LoopingCall] = None
        self.tracer: Optional[StallTracer] = None
        #: The garbage collector's pauses, the stalls no frame of ours explains (INFO server's gc_ lines).
        self.gc = GcMeter()

    # ------------------------------------------------------------ lifecycle
    def startService(self):
        super().startService()
        self._last = self.clock.seconds()
        self._started = int(self._last)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval_s, now=False)
        self.gc.install()
        if self.tracer is not None:
            self.tracer.start()  # here, not when built: twistd may fork in between, and threads do not cross a fork

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.gc.uninstall()
        if self.tracer is not None:
            self.tracer.stop()
        return super().stopService()

    def _tick(self) -> None:
        now = self.clock.seconds()
        if self._last is not None:
            self.record(now, max(0.0, now - self._last - self.interval_s))
        self._last = now
        if self.tracer is not None:
            self.tracer.tick()

    def record(self, now: float, stall_s: float) -> None:
        """One tick at ``now`` (clock seconds) that came ``stall_s`` late."""
        ms = stall_s * 1000.0
        self.ticks += 1
        if ms > self.max_ms:
            self.max_ms = ms
        for t in self.thresholds_ms:
            if ms > t:
                self.over[t] += 1
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            if ms > self._seconds[-1][1]:
                self._seconds[-1][1] = ms
        else:
            self._seconds.append([second, ms])

    # ------------------------------------------------------------ readings
    def recent_max_ms(self) -> float:
        """The largest stall of the last ``recent_s`` seconds (this one included)."""
        since = int(self.clock.seconds()) - self.recent_s + 1
        return max((ms for second, ms in self._seconds if second >= since), default=0.0)

    def per_second(self) -> Tuple[int, List[float]]:
        """
        (first wall second, the largest stall in ms of it and of each second
        after, up to now): the last ``history_s`` seconds, or fewer, since the
        meter started (a second before it is not a second without stalls).
        """
        now = int(self.clock.seconds())
        first = max(now - self.history_s + 1, self._started)
        values = [0.0] * (now - first + 1)
        for second, ms in self._seconds:
            if first <= second <= now:
                values[second - first] = ms
        return first, values

    def info_fields(self) -> List[Tuple[str, object]]:
        """INFO server's reactor lines (kvd.server_info)."""
        first, values = self.per_second()
        fields: List[Tuple[str, object]] = [
            ("reactor_stall_interval_ms", "%g" % (self.interval_s * 1000.0)),
            ("reactor_stall_max_ms", "%.1f" % self.max_ms),
            ("reactor_stall_recent_max_ms", "%.1f" % self.recent_max_ms()),
            ("reactor_stall_recent_seconds", self.recent_s),
        ]
        fields += [("reactor_stalls_over_%dms" % t, self.over[t]) for t in self.thresholds_ms]
        # Whole milliseconds, rounded up: a 50.2 ms stall reads 51, never under a 50 ms bound.
        fields.append(("reactor_stall_per_second", "%d:%s" % (first, ",".join("%d" % math.ceil(round(v, 3)) for v in values))))
        return fields + self.gc.info_fields()


class GcMeter:
    """
    The pauses of Python's cyclic garbage collector, from ``gc.callbacks``.  A
    full collection walks every object the collector tracks, in whichever
    thread allocated last, so it shows as a reactor stall whose stack is any
    line that allocates: on a loaded leader they were most of the stalls
    over 50 ms (60-110 ms each, a hundred thousand watch-history records
    walked each time), until the history kept untracked tuples (kvd.kv.watch)
    and the node froze what it built at start (kvd.tap).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._started_at: Optional[float] = None
        self.collections = [0, 0, 0]  # by generation
        self.max_ms = 0.0
        self.full_max_ms = 0.0
        self.total_ms = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started_at = self._clock()
            return
        if self._started_at is None:
            return
        ms = (self._clock() - self._started_at) * 1000.0
        self._started_at = None
        generation = info.get("generation", 0)
        self.collections[generation] += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)
        if generation == 2:
            self.full_max_ms = max(self.full_max_ms, ms)

    def info_fields(self) -> List[Tuple[str, object]]:
        return [
            ("gc_collections", ",".join(str(n) for n in self.collections)),
            ("gc_full_pause_max_ms", "%.1f" % self.full_max_ms),
            ("gc_pause_max_ms", "%.1f" % self.max_ms),
            ("gc_pause_total_ms", "%.0f" % self.total_ms),
            ("gc_frozen_objects", gc.get_freeze_count()),
        ]



class StallTracer:
    """
    Where the reactor thread is while it stalls: a diagnostic (twistd kvd
    --stall-trace-ms N), off by default.  A daemon thread looks every
    ``poll_s`` at how long ago the meter last ticked; once that is over
    ``threshold_ms`` it samples the reactor thread's stack (sys._current_frames)
    until the next tick, which logs the stall with its most frequent stacks.
    The sampling thread only reads; the log line is written by the reactor
    thread (twisted.logger is not for other threads).
    """

    log = Logger(namespace="kvd.stall")

    def __init__(self, threshold_ms: float, poll_s: float = 0.005, depth: int = 12):
        self.threshold_s = threshold_ms / 1000.0
        self.poll_s = poll_s
        self.depth = depth
        self._thread_id = 0
        self._last_tick = time.monotonic()
        self._samples: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sched: Optional[Tuple[int, int]] = None

    def start(self) -> None:
        """Called in the reactor thread: the thread to watch."""
        self._thread_id = threading.get_ident()
        self._last_tick = time.monotonic()
        self._sched = _schedstat()
        threading.Thread(target=self._watch, name="kvd-stall-tracer", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> None:
        now = time.monotonic()
        gap, self._last_tick = now - self._last_tick, now
        sched, self._sched = self._sched, _schedstat()
        with self._lock:
            samples, self._samples = self._samples, []
        if samples and gap >= self.threshold_s:
            # The kernel's account of the gap: running, waiting for a core (starved), or neither (blocked in I/O or a lock).
            ran, waited = ((b - a) / 1e6 for a, b in zip(sched, self._sched)) if sched and self._sched else (-1.0, -1.0)
            counts = collections.Counter(samples).most_common(3)
            self.log.warn("reactor stall {ms:.0f} ms (on a core {ran:.0f} ms, waiting for one {waited:.0f} ms), "
                          "{n} samples; most seen:\n{stacks}", ms=gap * 1000.0, ran=ran, waited=waited, n=len(samples),
                          stacks="\n".join("-- %d x\n%s" % (c, stack) for stack, c in counts))

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if time.monotonic() - self._last_tick < self.threshold_s:
                continue
            frame = sys._current_frames().get(self._thread_id)
            if frame is None:
                continue
            stack = "".join(traceback.format_list(traceback.extract_stack(frame, limit=self.depth)))
            with self._lock:
                self._samples.append(stack)


def _schedstat() -> Optional[Tuple[int, int]]:
    """This thread's (ns on a core, ns waiting in a run queue) from Linux's schedstat; None elsewhere."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            ran, waited = f.read().split()[:2]
        return int(ran), int(waited)
    except (OSError, ValueError):
        return None
