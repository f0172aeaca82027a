"""
Where a node's time goes under a load: ``python -m kvd.bench loads
--profile`` samples every node with py-spy (a sampling profiler that reads
the process from outside, ``--nonblocking``: the node is never paused) while
each load runs, and sorts every sample of a thread's stack into one of a few
rooms, by the innermost frame that names one (so time inside Twisted's
``callLater`` called by kvd's node counts as the reactor's, a dataclass's
``__init__`` as the module that built it).  The table it prints is per node
and per thread (the reactor thread, the storage writer thread): microseconds
per request of the load, and the share of one core.

A sample is the thread's state when py-spy looked: a thread inside a system
call it is blocked in (``epoll_wait`` with nothing to do, the writer waiting
for work) is idle and not counted (py-spy's default), but a thread inside
``send``/``recv``/``fdatasync`` counts: the kernel's work on its behalf is
part of what a request costs.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

#: Samples per second and thread.
RATE_HZ = 200

#: (room, test on (function, file path) of one frame); the first that matches a frame, from the innermost
#: frame outwards, takes the sample.
ROOMS: List[Tuple[str, object]] = [
    ("socket send/recv (kernel)", lambda fn, path: fn == "untilConcludes" or (path.endswith("internet/tcp.py") and fn.endswith("doRead"))
     or path.endswith("internet/fdesc.py")),
    ("poll (epoll_wait)", lambda fn, path: path.endswith("epollreactor.py") and fn.endswith("doPoll")),
    ("TLS (pyOpenSSL)", lambda fn, path: "/OpenSSL/" in path or path.endswith("protocols/tls.py") or "_sslverify" in path),
    ("storage: LMDB + fsync", lambda fn, path: "/kvd/store/" in path),
    ("AMP boxes (twisted)", lambda fn, path: path.endswith("protocols/amp.py") or path.endswith("protocols/basic.py")),
    ("peer transport (kvd.wire)", lambda fn, path: "/kvd/wire/" in path),
    ("Raft core (kvd.raft)", lambda fn, path: "/kvd/raft/" in path),
    ("KV machine (kvd.kv)", lambda fn, path: "/kvd/kv/" in path),
    ("RESP (kvd.resp)", lambda fn, path: "/kvd/resp/" in path),
    ("metrics + logging", lambda fn, path: "prometheus_client" in path or "/twisted/logger/" in path
     or "/kvd/discovery/metrics" in path),
    ("node + Ready loop (kvd.node, replica)", lambda fn, path: "/kvd/node/" in path or path.endswith("kvd/replica.py")
     or path.endswith("kvd/executor.py")),
    ("reactor, Deferreds, timers (twisted)", lambda fn, path: "/twisted/internet/" in path or "/twisted/python/" in path),
]
OTHER = "other"
WRITER = "writer"
REACTOR = "reactor"


def _frame(text: str) -> Tuple[str, str]:
    """py-spy's raw frame ``function (path:line)`` -> (function, path with a leading slash)."""
    fn, _, where = text.rpartition(" (")
    if not fn:
        return text, ""
    return fn, "/" + where.rsplit(":", 1)[0]  # py-spy names files under the working directory relatively


def room_of(frames: List[str]) -> str:
    for text in reversed(frames):
        fn, path = _frame(text)
        for room, test in ROOMS:
            if test(fn, path):
                return room
    return OTHER


@dataclass
class Profile:
    """Samples of one process, by (thread kind, room)."""

    samples: Counter = field(default_factory=Counter)

    def add_raw(self, text: str) -> None:
        for line in text.splitlines():
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            thread = WRITER if any("WriterThread._run" in f for f in frames) else REACTOR
            self.samples[(thread, room_of(frames))] += int(count)

    def rooms(self) -> List[str]:
        order = [room for room, _ in ROOMS] + [OTHER]
        present = {room for _, room in self.samples}
        return [room for room in order if room in present]

    def seconds(self, thread: str, room: Optional[str] = None) -> float:
        return sum(n for (t, r), n in self.samples.items() if t == thread and (room is None or r == room)) / RATE_HZ


def py_spy() -> str:
    """py-spy's path, installed into this interpreter's environment from PyPI if missing."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = here if os.access(here, os.X_OK) else shutil.which("py-spy")
    if found is None:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError("--profile needs py-spy: pip install py-spy (%s)" % done.stderr.strip()[-300:])
        found = here if os.access(here, os.X_OK) else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy on PATH: pip install py-spy")
    return found


#: Seconds to wait for py-spy to start sampling every node before a load begins.
ATTACH_S = 10.0


def _sampling(log_path: str) -> bool:
    """Whether py-spy's output says it has started ("py-spy> Sampling process ...")."""
    try:
        with open(log_path, errors="replace") as f:
            return "Sampling process" in f.read()
    except OSError:
        return False


class Recording:
    """py-spy recording each of ``pids`` (name -> pid) until ``stop``."""

    def __init__(self, pids: Dict[str, int], run_dir: str, label: str):
        self.outputs: Dict[str, str] = {}
        self.procs: Dict[str, subprocess.Popen] = {}
        said: Dict[str, str] = {}
        tool = py_spy()
        for name, pid in pids.items():
            out = os.path.join(run_dir, "profile-%s-%s.raw" % (label, name.replace(":", "_").replace("/", "_")))
            self.outputs[name] = out
            said[name] = out + ".log"
            with open(said[name], "w") as log:
                self.procs[name] = subprocess.Popen(
                    [tool, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--nonblocking", "--format", "raw",
                     "--output", out, "--duration", "3600"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        # py-spy takes a moment to attach: the load starts once each says it is sampling (or has exited), so a
        # short load is not over before its profile begins (bounded: ATTACH_S).
        deadline = time.monotonic() + ATTACH_S
        for name, proc in self.procs.items():
            while time.monotonic() < deadline and proc.poll() is None and not _sampling(said[name]):
                time.sleep(0.02)

    def stop(self, timeout_s: float = 30.0) -> Dict[str, Profile]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        profiles = {}
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            profile = Profile()
            try:
                with open(self.outputs[name]) as f:
                    profile.add_raw(f.read())
            except OSError:
                pass
            profiles[name] = profile
        return profiles


def table(profiles: Dict[str, Profile], requests: int, wall_s: float, names: Iterable[str]) -> List[str]:
    """The lines to print: per node, each room's microseconds per request (reactor thread / writer thread)."""
    lines = []
    for name in names:
        p = profiles.get(name)
        if p is None or not p.samples:
            lines.append("    %s: no samples" % name)
            continue
        busy_r, busy_w = p.seconds(REACTOR), p.seconds(WRITER)
        lines.append("    %s: reactor thread busy %.0f%% of a core (%.0f us/request), writer thread %.0f%% (%.0f us)" % (
            name, 100 * busy_r / wall_s if wall_s else 0, 1e6 * busy_r / requests,
            100 * busy_w / wall_s if wall_s else 0, 1e6 * busy_w / requests))
        for room in p.rooms():
            r, w = p.seconds(REACTOR, room), p.seconds(WRITER, room)
            lines.append("      %-40s %7.0f us  %5.1f%%%s" % (
                room, 1e6 * (r + w) / requests, 100 * (r + w) / max(busy_r + busy_w, 1e-9),
                "   (writer thread %.0f us)" % (1e6 * w / requests) if w else ""))
    return lines
