"""
What the Raft core needs of a disk: the ``Storage`` protocol that kvd's LMDB
store (kvd.store.lmdb.LmdbStorage) and the simulator's disk
(kvd.sim.disk.SimDisk) both implement, with the same method shapes, so that
the one Ready loop (kvd.replica) runs on either.

A write may complete later than it is issued (a disk thread, a slow fsync):
``write`` takes a ``done`` callback instead of returning when durable, and a
write that never completes (the process crashed) never calls it.  A write
that fails after ``write`` returned calls ``done(error)``; one that fails
at once may raise from ``write`` instead.  The loop
sends nothing that says "I have it on disk" before ``done``.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

try:
    from typing import Protocol
except ImportError:  # pragma: no cover - Python < 3.8
    Protocol = object  # type: ignore[assignment,misc]

from kvd.raft.messages import Entry, HardState, Snapshot


@dataclass
class Restored:
    """Everything a node needs to rebuild its Raft core after a restart."""

    hard_state: HardState
    snapshot: Optional[Snapshot]
    #: The entries after the snapshot index, in index order, without gaps.
    entries: List[Entry] = field(default_factory=list)


class Storage(Protocol):
    def load(self) -> Restored:
        """The durable state, as the last completed writes left it."""

    def write(
        self,
        hard_state: Optional[HardState],
        entries: Sequence[Entry],
        snapshot: Optional[Snapshot],
        sync: bool,
        done: Callable[..., None],
    ) -> None:
        """
        Persist one Ready's state atomically: a ``snapshot`` replaces the log,
        ``entries`` replace any stored entry from ``entries[0].index`` on,
        ``hard_state`` replaces the stored one.  If ``sync``, it must be
        durable before ``done()`` is called; ``done`` may be called before
        ``write`` returns or any time later, and is never called for a write
        lost in a crash; ``done(error)`` tells a write that failed.
        """

    def compact(self, snapshot: Snapshot, done: Callable[..., None]) -> None:
        """
        Store a snapshot taken from the local state machine, durably, and drop
        the entries it covers; ``done()`` (or ``done(error)``) once it has, now
        or later, as for ``write``.
        """
