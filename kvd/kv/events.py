# -*- test-case-name: tests.kv.test_events -*-
"""
What applying an entry tells the world besides its result: pub/sub messages
and keyspace events (Redis's keyspace notifications).

The machine stays a pure state machine: applying a ``Publish`` changes no
key, and no entry delivers anything itself.  Instead the machine keeps, for
the entry it applied last, the list of events it produced (``KVMachine.events``,
emptied when the next entry is applied), in the order they happened; the
node drains it after each apply and hands it to its subscribers
(kvd.resp.pubsub).  Every replica produces the same events at the same index,
so a message published through any node reaches the subscribers of every
node, each seeing messages in log order.  Entries replayed at a restart are
applied again but their events are not delivered (kvd.node.service); a
snapshot restores state and produces none.

Two kinds:

* ``Message(channel, message, shard)``: a PUBLISH (SPUBLISH: ``shard``);
* ``KeyEvent(klass, event, key)``: a change of a key, as Redis 7 names it
  (``set``, ``del``, ``expire``, ``expired``, ``incrby``, ``append``,
  ``rename_from``/``rename_to``, ``hset``...), with its class letter of
  ``notify-keyspace-events`` (g generic, $ string, h hash, x expired);
* ``Flushed()``: FLUSHDB/FLUSHALL emptied a non-empty store (no channel
  carries it; KVD.WATCH's history, kvd.kv.watch, does).

Whether a key event is published, and on which channels, is each node's
setting (``notify-keyspace-events``, Redis's flags; default "" as Redis):
``channels`` turns an event into the (channel, message) pairs Redis would
publish, ``__keyspace@0__:<key>`` -> event and ``__keyevent@0__:<event>`` ->
key.  The machine produces every key event whatever the setting: the list
is small, and it keeps the setting out of the replicated state (two nodes may
differ, as two Redis servers may).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple


class Message(NamedTuple):
    """A PUBLISH: ``message`` on ``channel`` (a shard channel's for SPUBLISH)."""

    channel: bytes
    message: bytes
    shard: bool = False


class Flushed(NamedTuple):
    """
    FLUSHDB/FLUSHALL deleted every key (of a non-empty store).  Redis publishes no keyspace event for it,
    and the pub/sub hub ignores it; KVD.WATCH (kvd.kv.watch) needs it, since no event names the keys.
    """


class KeyEvent(NamedTuple):
    """A change of ``key``: Redis's event name and the class letter that enables it."""

    klass: str
    event: bytes
    key: bytes


# Redis's notify.c classes (server.h NOTIFY_*), by flag letter.
NOTIFY_KEYSPACE, NOTIFY_KEYEVENT = 1 << 0, 1 << 1
_CLASS_BITS = {
    "g": 1 << 2, "$": 1 << 3, "l": 1 << 4, "s": 1 << 5, "h": 1 << 6, "z": 1 << 7, "x": 1 << 8, "e": 1 << 9,
    "K": NOTIFY_KEYSPACE, "E": NOTIFY_KEYEVENT, "m": 1 << 10, "t": 1 << 11, "d": 1 << 13, "n": 1 << 14,
}
#: "A": every class but key-miss and new (Redis's NOTIFY_ALL).
NOTIFY_ALL = 0
for _letter in "g$lshzxetd":
    NOTIFY_ALL |= _CLASS_BITS[_letter]
#: Redis's message when CONFIG SET gets another letter.
INVALID_FLAGS = "Invalid event class character. Use 'Ag$lshzxeKEtmdn'."

KEYSPACE_PREFIX = b"__keyspace@0__:"
KEYEVENT_PREFIX = b"__keyevent@0__:"


def parse_flags(text: bytes) -> Optional[int]:
    """Redis's keyspaceEventsStringToFlags: the flags, None for a letter it does not know."""
    flags = 0
    for letter in text.decode("latin-1"):
        if letter == "A":
            flags |= NOTIFY_ALL
        elif letter in _CLASS_BITS:
            flags |= _CLASS_BITS[letter]
        else:
            return None
    return flags


def flags_text(flags: int) -> str:
    """Redis's keyspaceEventsFlagsToString: what CONFIG GET notify-keyspace-events answers."""
    if flags & NOTIFY_ALL == NOTIFY_ALL:
        out = "A"
    else:
        out = "".join(letter for letter in "g$lshzxetd" if flags & _CLASS_BITS[letter])
    return out + "".join(letter for letter in "KEm" if flags & _CLASS_BITS[letter])  # Redis 7.0 prints no "n"


def channels(event: KeyEvent, flags: int) -> List[Tuple[bytes, bytes]]:
    """The (channel, message) pairs Redis publishes for ``event`` under ``flags`` (none if its class is off)."""
    if not flags & _CLASS_BITS[event.klass]:
        return []
    out = []
    if flags & NOTIFY_KEYSPACE:
        out.append((KEYSPACE_PREFIX + event.key, event.event))
    if flags & NOTIFY_KEYEVENT:
        out.append((KEYEVENT_PREFIX + event.event, event.key))
    return out


# The key events the machine produces, by Redis 7's names (class letter, name).
def generic(event: bytes, key: bytes) -> KeyEvent:
    return KeyEvent("g", event, key)


def string(event: bytes, key: bytes) -> KeyEvent:
    return KeyEvent("$", event, key)


def hash_(event: bytes, key: bytes) -> KeyEvent:
    return KeyEvent("h", event, key)


def expired(key: bytes) -> KeyEvent:
    return KeyEvent("x", b"expired", key)


def new(key: bytes) -> KeyEvent:
    return KeyEvent("n", b"new", key)
