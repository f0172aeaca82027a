# -*- test-case-name: tests.raft.test_log -*-
"""
The in-memory Raft log of one node: the entries after the latest snapshot,
plus the bookkeeping of which of them have been handed out for persisting.

As in etcd's server, the whole log since the last snapshot lives in memory;
snapshots bound its size.  Durable storage is the embedder's business: the
core hands out what to persist in a Ready and is told when it has been.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from kvd.raft.messages import Entry, Snapshot


class RaftLog:
    def __init__(self, snapshot: Optional[Snapshot] = None, entries: Sequence[Entry] = ()):
        snapshot = snapshot or Snapshot()
        self.snapshot_index = snapshot.index
        self.snapshot_term = snapshot.term
        self.entries: List[Entry] = list(entries)
        for i, e in enumerate(self.entries):
            assert e.index == self.snapshot_index + 1 + i, "restored log has a gap"
        # Entries from this index on have not yet been handed out in a Ready.
        self.unstable_from = self.last_index() + 1

    # ----------------------------------------------------------- queries
    def first_index(self) -> int:
        return self.snapshot_index + 1

    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term_at(self, index: int) -> Optional[int]:
        """The term of the entry at ``index``, or None if compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot_index - 1]

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def slice(self, lo: int, hi: int, bytes_max: Optional[int] = None) -> List[Entry]:
        """Entries in [lo, hi), at least one, then as many as fit in ``bytes_max``."""
        assert lo > self.snapshot_index, "slice into the compacted log"
        out: List[Entry] = []
        size = 0
        for index in range(lo, min(hi, self.last_index() + 1)):
            e = self.entry(index)
            size += e.size()
            if out and bytes_max is not None and size > bytes_max:
                break
            out.append(e)
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a log ending at (last_index, last_term) at least as up to date as ours?"""
        return last_term > self.last_term() or (last_term == self.last_term() and last_index >= self.last_index())

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries that share the term of ``index`` (for rejection hints)."""
        term = self.term_at(index)
        while index - 1 > self.snapshot_index and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """The last index holding ``term``, or 0 if the log has none."""
        for e in reversed(self.entries):
            if e.term == term:
                return e.index
            if e.term < term:
                break
        return 0

    # ----------------------------------------------------------- changes
    def append(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            assert e.index == self.last_index() + 1, "append leaves a gap"
            self.entries.append(e)

    def truncate_from(self, index: int) -> None:
        """Drop entries at ``index`` and after (a conflicting suffix)."""
        assert index > self.snapshot_index
        del self.entries[index - self.snapshot_index - 1 :]
        self.unstable_from = min(self.unstable_from, index)

    def find_conflict(self, entries: Sequence[Entry]) -> Optional[Entry]:
        """The first of ``entries`` that is not already in the log with the same term."""
        for e in entries:
            if not self.matches(e.index, e.term):
                return e
        return None

    def compact(self, index: int, term: int) -> None:
        """Forget entries up to ``index`` (they are in a snapshot now)."""
        if index <= self.snapshot_index:
            return
        assert index <= self.last_index()
        del self.entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term

    def reset_to(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.entries = []
        self.snapshot_index, self.snapshot_term = snapshot.index, snapshot.term
        self.unstable_from = snapshot.index + 1

    def take_unstable(self) -> List[Entry]:
        """Entries not yet handed out for persisting; marks them handed out."""
        if self.unstable_from > self.last_index():
            return []
        out = self.entries[self.unstable_from - self.snapshot_index - 1 :]
        self.unstable_from = self.last_index() + 1
        return out
