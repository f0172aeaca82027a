# -*- test-case-name: tests.resp.test_watch -*-
"""
KVD.WATCH at the client port: a node's open watches (``WatchHub``) fed from
its history of changes (kvd.kv.watch), and the commands' parsing.

    KVD.WATCH prefix [FROMREV n]      ->  ["watching", first revision], then pushes
    KVD.UNWATCH                       ->  ["unwatched", prefix]  (or ["unwatched", nil] when none)

Each revision that changed keys under ``prefix`` (``""``: every key) is
pushed, in log order, as one message ``["watch", revision, [[kind, key,
value], ...]]`` (kvd.resp.protocol ``push``: a RESP3 push or a RESP2
array), ``kind`` being ``put`` (``value`` the string), ``hash`` (a hash
changed; ``value`` nil: read it), ``del`` or ``flush`` (every key deleted;
``key`` empty).  A revision of several keys (a MULTI, an MSET, a KVD.TXN)
is one message, each key once with its final state: a client holds a
revision whole or not at all (etcd batches a revision's events in one
response alike), so resuming ``FROMREV last + 1`` is exact.

Where a watch starts.  ``FROMREV n`` starts exactly at revision ``n``: the
node replays what its history holds from ``n`` on, then streams live; a
revision not yet applied here is waited for (nothing is pushed before it); a
revision the node's history no longer holds answers ``-ERR compacted:
revision n is compacted, oldest available is m`` (etcd's ErrCompacted: the
client reads the keys again, then watches from the revision of that read).
Without FROMREV a watch starts after the revision this node has applied.
That is not a linearizable point: on a follower that lags it may be behind
the cluster (etcd's watch does the same); the stream is still exact from
there, and a client that needs a point uses ``KVD.REVISION`` (linearizable)
and ``FROMREV`` that + 1.  Resuming after a disconnect, on any node, is
``FROMREV last seen + 1``: no change is missed or seen twice, since every
node's history holds the same changes at the same revisions (each replica
derives them from the same entries).

What cancels a watch.  A node that installs a snapshot (it fell behind, or
restarted from one) cannot tell what changed in between: it resets its
history and pushes ``["watch-cancelled", prefix, reason]`` to every watch,
which then ends (the connection stays; the client resumes with FROMREV, here
or elsewhere).  A connection with more than the pub/sub output limit of
pushes unread is disconnected (kvd.resp.pubsub ``PubSubLimit``, as a slow
subscriber is): a slow watcher cannot grow the node's memory, and resumes
with FROMREV; a replay bigger than that limit disconnects too (FROMREV a
more recent revision, or raise ``--pubsub-output-limit``).

Watch mode.  One watch per connection; while it is open the connection runs
only KVD.WATCH (answered an error: unwatch first), KVD.UNWATCH, PING and
QUIT, in both protocols, so that a client reading a stream never has to
tell a reply from a push.  KVD.WATCH is refused inside MULTI and scripts.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from kvd.kv.watch import Change, Compacted, WatchHistory, matches
from kvd.resp.errors import RespError

#: What a connection with an open watch may run.
WATCHING_COMMANDS = frozenset({"kvd.watch", "kvd.unwatch", "ping", "quit"})


def parse_watch_args(args) -> Tuple[bytes, Optional[int]]:
    """KVD.WATCH's arguments (after the name): (prefix, FROMREV or None); RespError for anything else."""
    if len(args) not in (1, 3):
        raise RespError("ERR", "KVD.WATCH syntax: KVD.WATCH prefix [FROMREV revision]")
    prefix = bytes(args[0])
    if len(args) == 1:
        return prefix, None
    if args[1].upper() != b"FROMREV":
        raise RespError("ERR", "KVD.WATCH syntax: KVD.WATCH prefix [FROMREV revision]")
    try:
        text = args[2].decode("ascii")
        revision = int(text) if text.isdigit() else None
    except UnicodeDecodeError:
        revision = None
    if revision is None or revision < 1 or revision >= 1 << 63:
        raise RespError("ERR", "KVD.WATCH FROMREV must be a revision of 1 or more")
    return prefix, revision


def _batches(changes: List[Change], prefix: bytes, start: int):
    """The changes under ``prefix`` from ``start`` on, one batch per revision: (revision, [[kind, key, value]...])."""
    batch: list = []
    revision = None
    for change in changes:
        if change.revision < start or not matches(change, prefix):
            continue
        if change.revision != revision:
            if batch:
                yield revision, batch
            batch, revision = [], change.revision
        batch.append([change.kind, change.key, change.value])
    if batch:
        yield revision, batch


class Watch:
    """One connection's watch: its prefix, the next revision it will push, and its ``push`` (the connection's)."""

    def __init__(self, hub: "WatchHub", prefix: bytes, start: int, push: Callable[[tuple], None]):
        self.hub = hub
        self.prefix = prefix
        self.start = start  # nothing before it is pushed (a FROMREV in the future waits here)
        self.push = push
        self.pushed = 0
        self.last: Optional[int] = None  # the revision of the last change pushed
        self.ended = False  # closed, or cancelled by a reset: the connection is no longer watching

    def send(self, changes: List[Change]) -> None:
        for revision, batch in _batches(changes, self.prefix, self.start):
            self.push((b"watch", revision, batch))
            self.pushed += 1
            self.last = revision

    def close(self) -> None:
        self.ended = True
        self.hub._watches.pop(id(self), None)


class WatchHub:
    """Every open watch of one node's client port, and the node's history of changes they replay from."""

    def __init__(self, history: Optional[WatchHistory] = None):
        self.history = history if history is not None else WatchHistory()
        self._watches: Dict[int, Watch] = {}
        self.cancelled = 0  # watches ended by a reset (INFO-like counters, and tests)

    def __len__(self) -> int:
        return len(self._watches)

    def info(self) -> List[Tuple[str, int]]:
        """INFO stats' fields: open watches, those a reset ended, and what the history holds (from ``oldest``)."""
        h = self.history
        return [("kvd_watches", len(self._watches)), ("kvd_watches_cancelled", self.cancelled),
                ("kvd_watch_history_revision", h.revision), ("kvd_watch_history_oldest", h.oldest),
                ("kvd_watch_history_changes", len(h)), ("kvd_watch_history_bytes", h.bytes)]

    # ---------------------------------------------------------------- the node's side
    def applied(self, revision: int, changes: List[Change]) -> None:
        """The entry that made ``revision`` changed ``changes`` (kvd.kv.watch ``changes_of``): keep, then push."""
        try:
            self.history.record(revision, changes)
        except ValueError as e:  # a revision missed: nothing after it can be promised exact
            self.reset(revision, "the node's watch history missed a revision (%s)" % (e,))
            return
        for watch in list(self._watches.values()):
            watch.send(changes)

    def reset(self, revision: int, reason: str) -> None:
        """The node is at ``revision`` with no history before it (a start, a snapshot): every watch ends."""
        self.history.reset(revision)
        watches, self._watches = list(self._watches.values()), {}
        for watch in watches:
            watch.ended = True
            self.cancelled += 1
            watch.push((b"watch-cancelled", watch.prefix, reason.encode()))

    # ---------------------------------------------------------------- the connection's side
    def open(self, prefix: bytes, from_revision: Optional[int], push: Callable[[tuple], None],
             before_replay: Callable[[int], None]) -> Watch:
        """
        Start a watch: ``before_replay(start)`` is called with the first revision it will push (the
        connection writes its reply there), then the replay from the history is pushed, then it is live.
        RespError ``compacted`` if ``from_revision`` is older than the history holds.
        """
        start = self.history.revision + 1 if from_revision is None else from_revision
        try:
            replay = self.history.since(start, prefix)
        except Compacted as e:
            raise RespError("ERR", "compacted: %s" % (e,)) from None
        watch = Watch(self, prefix, start, push)
        before_replay(start)
        watch.send(replay)
        self._watches[id(watch)] = watch
        return watch
