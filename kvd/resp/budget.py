# -*- test-case-name: tests.resp.test_budget -*-
"""
How many requests the client port dispatches in one reactor turn, over all
its connections.

Twisted hands a turn every socket that has data; a pipelined burst from many
clients (50 connections of 16 SETs each) would then be parsed and proposed in
one turn, the node's ticks and heartbeats waiting behind all of it: hundreds
of milliseconds on a starved machine, long enough for the followers to start
an election (seen once in the pipelined bench load).  Past the budget a
connection stops dispatching and parks; the next turn (a ``callLater(0)``,
after the reactor has run its due timers and peer I/O) resets the budget and
resumes the parked connections in the order they parked.  A connection keeps
its own order: it only stops between two requests.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import time
from typing import Callable, Dict

#: Requests dispatched per turn: a few tens of milliseconds of the leader's work at most.
DEFAULT_PER_TURN = 128
#: ... and none once this long has gone since the turn's first, however few: on a
#: starved machine 128 requests took over 100 ms.  With it (and apply runs of 64,
#: RaftSettings.apply_entries_max), 50 pipelined clients x16 left no reactor stall
#: over 50 ms on any node (the longest 28-45 ms, against 81-98 ms without; 300,000
#: SETs, two runs each), at 5-12% of the throughput.
DEFAULT_TURN_S = 0.005


class TurnBudget:
    def __init__(self, call_later: Callable, per_turn: int = DEFAULT_PER_TURN, turn_s: float = DEFAULT_TURN_S,
                 clock: Callable[[], float] = time.perf_counter):
        if per_turn < 1:
            raise ValueError("a turn must allow at least one request")
        self.per_turn = per_turn
        self.left = per_turn
        self.turn_s = turn_s
        self._clock = clock
        self._deadline = 0.0
        self._call_later = call_later
        self._parked: Dict[object, None] = {}  # in the order they parked
        self._turn = None  # the call that starts the next turn, once this one has spent anything

    def take(self) -> bool:
        """One request may be dispatched now (False: park, ``resume_after_budget`` comes next turn)."""
        if self._turn is None:
            self._turn = self._call_later(0, self._next_turn)
            self._deadline = self._clock() + self.turn_s
        elif self.left <= 0 or self._clock() > self._deadline:
            self.left = 0
            return False
        self.left -= 1
        return True

    def park(self, protocol) -> None:
        """``protocol.resume_after_budget()`` is called at the start of the next turn."""
        self._parked[protocol] = None

    def _next_turn(self) -> None:
        self._turn = None
        self.left = self.per_turn
        parked, self._parked = self._parked, {}
        for protocol in parked:
            protocol.resume_after_budget()
