"""CPU seconds a process has used so far (user + system), from /proc/<pid>/stat."""

from __future__ import annotations

import os
from typing import Dict, Iterable, Optional

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: Optional[int]) -> Optional[float]:
    if pid is None:
        return None
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def snapshot(pids: Dict[str, Optional[int]]) -> Dict[str, Optional[float]]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def used(before: Dict[str, Optional[float]], after: Dict[str, Optional[float]], names: Iterable[str]) -> Dict[str, Optional[float]]:
    out = {}
    for name in names:
        a, b = before.get(name), after.get(name)
        out[name] = None if a is None or b is None else round(b - a, 2)
    return out
