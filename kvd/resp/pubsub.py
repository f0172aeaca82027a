# -*- test-case-name: tests.resp.test_pubsub -*-
"""
Pub/sub at the client port: a node's registry of channels and patterns
(``PubSubHub``) and each connection's subscriptions (``Subscriptions``).

Shard channels (SSUBSCRIBE, SUNSUBSCRIBE, SPUBLISH) are a namespace apart, as
in a standalone Redis 7 (kvd is one shard): no patterns, and their own count.

Messages travel through the log (PUBLISH is a ``Publish`` entry, kvd.kv.events):
every node applies it and hands the machine's events to its hub
(``deliver``), which pushes them to its own subscribers.  So a message
published through any node reaches the subscribers of every node, and every
subscriber sees messages in log order.  PUBLISH answers the number of
subscribers on the node that proposed it, counted when its entry's result
comes back (Redis Cluster's semantics: a node counts its own clients only).
The registry itself is no replicated state: nothing of it is in a snapshot
or on disk, and a restarted node starts with no subscriber (as Redis).

Keyspace notifications: the machine produces every key event
(kvd.kv.events); the hub publishes those that its ``notify-keyspace-events``
flags enable (CONFIG SET, or ``twistd kvd --notify-keyspace-events``;
default "" as Redis: none) on ``__keyspace@0__:<key>`` and
``__keyevent@0__:<event>``.  The setting is the node's own, as a Redis
server's is.

How a message reaches a client: ``Subscriptions.push`` is the connection's
out-of-band channel (kvd.resp.protocol ``RespProtocol.push``), a RESP3 push
``>`` or a RESP2 array, written in order with the connection's replies.  It
is not specific to pub/sub: anything that streams to a connection can use it.

A slow subscriber must not grow the node's memory without bound: Redis's
``client-output-buffer-limit pubsub 32mb 8mb 60`` -- a subscribed connection
with more than ``hard`` bytes unread, or more than ``soft`` bytes for
``soft_seconds``, is disconnected (kvd.resp.protocol, ``PubSubLimit``).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from kvd.kv.events import INVALID_FLAGS, KeyEvent, Message, channels as event_channels, flags_text, parse_flags
from kvd.kv.glob import Pattern, PatternTooCostly
from kvd.kv.results import OK
from kvd.resp.encoder import Push
from kvd.resp.errors import RespError


@dataclass(frozen=True)
class PubSubLimit:
    """Redis's client-output-buffer-limit for pubsub clients: bytes and seconds (0: that bound is off)."""

    hard: int = 32 * 1024 * 1024
    soft: int = 8 * 1024 * 1024
    soft_seconds: float = 60.0

    def text(self) -> str:
        return "pubsub %d %d %d" % (self.hard, self.soft, int(self.soft_seconds))


def config_set(hub: "PubSubHub", args) -> object:
    """CONFIG SET notify-keyspace-events <flags> (the one parameter kvd lets a client change): OK or Redis's error."""
    if len(args) != 2 or args[0].lower() != b"notify-keyspace-events":
        raise RespError("ERR", "CONFIG SET is not supported but for notify-keyspace-events: kvd's settings are "
                               "twistd kvd options (twistd kvd --help)")
    try:
        hub.set_notify(args[1])
    except ValueError as e:
        raise RespError("ERR", "CONFIG SET failed (possibly related to argument 'notify-keyspace-events') - %s"
                        % (e,)) from None
    return OK


class _Pattern:
    """A subscribed pattern, compiled once; a pattern that runs out of its matching budget is compiled again."""

    __slots__ = ("source", "compiled", "subscribers")

    def __init__(self, source: bytes):
        self.source = source
        self.compiled = Pattern(source)  # PatternTooCostly for a pattern kvd will not match (PSUBSCRIBE refuses it)
        self.subscribers: Dict[int, "Subscriptions"] = {}

    def matches(self, channel: bytes) -> bool:
        try:
            return self.compiled.matches(channel)
        except PatternTooCostly:
            self.compiled = Pattern(self.source)  # a fresh budget for the next message; this one does not match
            return False


class PubSubHub:
    """Every subscription of one node's client port, and its notify-keyspace-events flags."""

    def __init__(self, notify_flags: bytes = b""):
        self.channels: Dict[bytes, Dict[int, "Subscriptions"]] = {}
        self.patterns: Dict[bytes, _Pattern] = {}
        #: Shard channels (SSUBSCRIBE, SPUBLISH): a namespace apart, without patterns.
        self.shard_channels: Dict[bytes, Dict[int, "Subscriptions"]] = {}
        self.flags = 0
        self.set_notify(notify_flags)
        self.delivered = 0  # messages pushed to clients (INFO)

    # ------------------------------------------------------ configuration
    def set_notify(self, text: bytes) -> None:
        """CONFIG SET notify-keyspace-events: Redis's letters; ValueError with Redis's text for another."""
        flags = parse_flags(text)
        if flags is None:
            raise ValueError(INVALID_FLAGS)
        self.flags = flags

    def notify_text(self) -> str:
        return flags_text(self.flags)

    # ----------------------------------------------------------- delivery
    def deliver(self, events: Iterable) -> None:
        """The events of one applied entry (kvd.kv.events), in order, to this node's subscribers."""
        for event in events:
            if isinstance(event, Message):
                if event.shard:
                    self.publish_shard(event.channel, event.message)
                else:
                    self.publish(event.channel, event.message)
            elif isinstance(event, KeyEvent) and self.flags:
                for channel, message in event_channels(event, self.flags):
                    self.publish(channel, message)

    def publish(self, channel: bytes, message: bytes) -> int:
        """Push ``message`` to this node's subscribers of ``channel`` and of the patterns it matches; how many."""
        n = 0
        for sub in list(self.channels.get(channel, {}).values()):
            sub.push((b"message", channel, message))
            n += 1
        for pattern in list(self.patterns.values()):
            if pattern.subscribers and pattern.matches(channel):
                for sub in list(pattern.subscribers.values()):
                    sub.push((b"pmessage", pattern.source, channel, message))
                    n += 1
        self.delivered += n
        return n

    def publish_shard(self, channel: bytes, message: bytes) -> int:
        """SPUBLISH's delivery: to this node's subscribers of the shard channel; how many."""
        subs = list(self.shard_channels.get(channel, {}).values())
        for sub in subs:
            sub.push((b"smessage", channel, message))
        self.delivered += len(subs)
        return len(subs)

    def receivers(self, channel: bytes, shard: bool = False) -> int:
        """How many subscriptions of this node a message on ``channel`` reaches (PUBLISH's, SPUBLISH's reply)."""
        if shard:
            return len(self.shard_channels.get(channel, ()))
        n = len(self.channels.get(channel, ()))
        for pattern in self.patterns.values():
            if pattern.matches(channel):
                n += len(pattern.subscribers)
        return n

    # ------------------------------------------------------------ PUBSUB
    def channel_names(self, pattern: Optional[bytes] = None) -> List[bytes]:
        """PUBSUB CHANNELS [pattern]: the channels with a subscriber, in the order they got their first."""
        names = list(self.channels)
        if pattern is None:
            return names
        matcher = _Pattern(pattern)
        return [name for name in names if matcher.matches(name)]

    def numsub(self, names: Iterable[bytes]) -> list:
        out: list = []
        for name in names:
            out += [name, len(self.channels.get(name, ()))]
        return out

    def numpat(self) -> int:
        return len(self.patterns)

    def shard_channel_names(self, pattern: Optional[bytes] = None) -> List[bytes]:
        names = list(self.shard_channels)
        if pattern is None:
            return names
        matcher = _Pattern(pattern)
        return [name for name in names if matcher.matches(name)]

    def shard_numsub(self, names: Iterable[bytes]) -> list:
        out: list = []
        for name in names:
            out += [name, len(self.shard_channels.get(name, ()))]
        return out

    # ------------------------------------------------- for Subscriptions
    def _add(self, channel: bytes, sub: "Subscriptions", table: Optional[dict] = None) -> None:
        (self.channels if table is None else table).setdefault(channel, {})[id(sub)] = sub

    def _remove(self, channel: bytes, sub: "Subscriptions", table: Optional[dict] = None) -> None:
        table = self.channels if table is None else table
        subs = table.get(channel)
        if subs is not None:
            subs.pop(id(sub), None)
            if not subs:
                del table[channel]

    def _add_pattern(self, source: bytes, sub: "Subscriptions") -> None:
        pattern = self.patterns.get(source)
        if pattern is None:
            pattern = self.patterns[source] = _Pattern(source)
        pattern.subscribers[id(sub)] = sub

    def _remove_pattern(self, source: bytes, sub: "Subscriptions") -> None:
        pattern = self.patterns.get(source)
        if pattern is not None:
            pattern.subscribers.pop(id(sub), None)
            if not pattern.subscribers:
                del self.patterns[source]


class Subscriptions:
    """
    One connection's channels and patterns.  ``push`` writes an out-of-band message to the connection
    (kvd.resp.protocol); each method answers the confirmations Redis sends, as ``Push`` values.
    """

    def __init__(self, hub: PubSubHub, push: Callable[[tuple], None]):
        self.hub = hub
        self.push = push
        self.channels: Dict[bytes, None] = {}  # in subscription order: UNSUBSCRIBE without names goes in it
        self.patterns: Dict[bytes, None] = {}
        self.shard_channels: Dict[bytes, None] = {}

    @property
    def count(self) -> int:
        """What (P)SUBSCRIBE's confirmations count, as Redis: channels and patterns (not shard channels)."""
        return len(self.channels) + len(self.patterns)

    @property
    def total(self) -> int:
        """Every subscription: while there is one, a RESP2 connection is in subscribed mode."""
        return self.count + len(self.shard_channels)

    def ssubscribe(self, names: Tuple[bytes, ...]) -> List[Push]:
        out = []
        for name in names:
            if name not in self.shard_channels:
                self.shard_channels[name] = None
                self.hub._add(name, self, self.hub.shard_channels)
            out.append(Push((b"ssubscribe", name, len(self.shard_channels))))
        return out

    def sunsubscribe(self, names: Tuple[bytes, ...]) -> List[Push]:
        names = names or tuple(self.shard_channels)
        if not names:
            return [Push((b"sunsubscribe", None, 0))]
        out = []
        for name in names:
            if name in self.shard_channels:
                del self.shard_channels[name]
                self.hub._remove(name, self, self.hub.shard_channels)
            out.append(Push((b"sunsubscribe", name, len(self.shard_channels))))
        return out

    def subscribe(self, names: Tuple[bytes, ...]) -> List[Push]:
        out = []
        for name in names:
            if name not in self.channels:
                self.channels[name] = None
                self.hub._add(name, self)
            out.append(Push((b"subscribe", name, self.count)))
        return out

    def psubscribe(self, sources: Tuple[bytes, ...]) -> List[Push]:
        for source in sources:
            if source not in self.patterns and source not in self.hub.patterns:
                Pattern(source)  # PatternTooCostly before anything is subscribed: the command changes nothing
        out = []
        for source in sources:
            if source not in self.patterns:
                self.patterns[source] = None
                self.hub._add_pattern(source, self)
            out.append(Push((b"psubscribe", source, self.count)))
        return out

    def unsubscribe(self, names: Tuple[bytes, ...]) -> List[Push]:
        names = names or tuple(self.channels)
        if not names:
            return [Push((b"unsubscribe", None, self.count))]
        out = []
        for name in names:
            if name in self.channels:
                del self.channels[name]
                self.hub._remove(name, self)
            out.append(Push((b"unsubscribe", name, self.count)))
        return out

    def punsubscribe(self, sources: Tuple[bytes, ...]) -> List[Push]:
        sources = sources or tuple(self.patterns)
        if not sources:
            return [Push((b"punsubscribe", None, self.count))]
        out = []
        for source in sources:
            if source in self.patterns:
                del self.patterns[source]
                self.hub._remove_pattern(source, self)
            out.append(Push((b"punsubscribe", source, self.count)))
        return out

    def close(self) -> None:
        """The connection is gone: it leaves every channel and pattern."""
        for name in self.channels:
            self.hub._remove(name, self)
        for source in self.patterns:
            self.hub._remove_pattern(source, self)
        for name in self.shard_channels:
            self.hub._remove(name, self, self.hub.shard_channels)
        self.channels, self.patterns, self.shard_channels = {}, {}, {}
