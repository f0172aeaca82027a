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

from typing import Callable, Dict

#: Requests dispatched per turn: a few tens of milliseconds of the leader's work at most.
DEFAULT_PER_TURN = 128


class TurnBudget:
    def __init__(self, call_later: Callable, per_turn: int = DEFAULT_PER_TURN):
        if per_turn < 1:
            raise ValueError("a turn must allow at least one request")
        self.per_turn = per_turn
        self.left = per_turn
        self._call_later = call_later
        self._parked: Dict[object, None] = {}  # in the order they parked
        self._turn = None  # the call that starts the next turn, once this one has spent anything

    def take(self) -> bool:
        """One request may be dispatched now (False: park, ``resume_after_budget`` comes next turn)."""
        if self._turn is None:
            self._turn = self._call_later(0, self._next_turn)
        if self.left <= 0:
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
