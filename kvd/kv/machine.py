# -*- test-case-name: tests.kv.test_machine -*-
"""
The replicated key/value state machine.

``KVMachine`` is fed committed log entries in index order (``apply`` for a
normal entry, ``apply_noop`` for anything else) and answers reads.  It is a
pure function of the entries it was given: no clock, no randomness, no
iteration over anything whose order depends on history, so every replica and
every restore from a snapshot reaches the same state and the same answers.

Exactly-once (Raft thesis §6.3).  Each client session remembers the responses
the client has not acknowledged yet.  A retried (client_id, seq) gets the
remembered response without being applied again; a seq below the session's
``ack_below`` gets ``ERR_STALE_SEQ``; an envelope from an unknown client whose
``ack_below`` is above 1 (it has had answers from a session that was since
forgotten) gets ``ERR_SESSION_EXPIRED``.  Time is the largest ``stamp_ms``
seen so far (leaders' clocks may disagree; the maximum keeps it monotonic), and
a session is forgotten once that time exceeds its last activity by
``session_ttl_ms``.  Sessions are kept in order of last activity, which is
also order of last stamp, so expiry only ever looks at the oldest ones.
``session_ttl_ms`` is part of the machine's definition: every replica must
use the same value.

Where the state lives.  By default the keys are in memory (``Keyspace``) and
a snapshot is the whole state as bytes (the simulator, tests).  A node hands
in a *durable* keyspace instead (kvd.store.state: the keys in LMDB, written
in the same transaction as the log): then the machine tells it which client
sessions changed (``durable_changes``/``durable_flushed``), ``reload`` opens
the state the disk holds (applied index, clock, sessions) instead of
replaying the log, and snapshots are streamed from the disk by the transport
(``snapshot`` is empty, ``restore`` reloads what the storage swapped in).

Hashes (kvd.kv.hashes).  A key holds a string or a hash; the string
commands answer WRONGTYPE on a hash and the hash commands on a string (SET,
MSET, DEL, RENAME, COPY take either), and a keyspace keeps a hash field by
field, so that a write of one field touches one field.

Lua scripts (kvd.kv.script).  The script cache (SCRIPT LOAD, EVAL) is
replicated state like the keys: it changes only by applying entries, is in
snapshots, and a durable keyspace keeps each script as a record beside the
client sessions, under a client id no client can have (``SCRIPT_RECORD``
and the script's SHA1).

Leases (kvd.kv.leases) are replicated state too: in snapshots (version 7)
and, for a durable keyspace, records beside the sessions.

Revisions (kvd.kv.revisions).  The keyspace counts the entries that changed
a key (the store's revision) and keeps each key's create revision, mod
revision and version; ``RevRead`` reads them, ``KvTxn`` (KVD.TXN,
kvd.kv.txn) compares and writes keys by them in one entry.

Events (kvd.kv.events).  ``events`` is the list of what the entry applied
last produced besides its result: PUBLISH's messages and the keyspace events
of the keys it changed (expired keys reclaimed or found expired included),
in order; the node drains it after each apply.  Events are an output, never
state: no snapshot or durable record holds them.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Dict

from kvd.kv import longdouble
from kvd.kv.codec import CodecError, Reader, Writer
from kvd.kv import events as ev
from kvd.kv import hashes, txn
from kvd.kv.commands import (
    INT64_MAX, INT64_MIN, READ_OPS, Append, Copy, DbSize, Delete, Exists, FlushAll, Get, GetDel, GetRange, HashRead,
    HashWrite, IncrBy, Keys, KeyType, MGet, MSet, MSetNX, RandomKey, ReadOp, Rename, Scan, Script, ScriptGet, Set,
    SetRange, StrLen, Transaction, Versions, WriteCommand, decode_envelope, parse_int64,
)
from kvd.kv.commands import (
    EXPIRE_GT, EXPIRE_LT, EXPIRE_NX, EXPIRE_XX, Expire, GetEx, IncrByFloat, KvTxn, Publish, RevRead, Tick, Ttl,
    read_keys,
)
from kvd.kv.expiry import (
    READ_MARGIN_MS, RECLAIM_PER_ENTRY, RECLAIM_PER_TICK, TTL_RECORD, Expiries, View, decode_record, encode_record,
    record_name,
)
from kvd.kv.commands import LEASE_MAX_TTL_S, Lease, LeaseRead
from kvd.kv.glob import Pattern, PatternTooCostly
from kvd.kv.leases import (
    LEASE_KEY_RECORD, LEASE_RECORD, Leases, decode_key as decode_lease_key, decode_lease,
)
from kvd.kv.hashes import HASH, WRONGTYPE
from kvd.kv.keyspace import MAX_CURSOR, Keyspace
from kvd.kv.results import (
    ERR_NO_SUCH_KEY, ERR_NOT_INTEGER, ERR_OVERFLOW, ERR_SESSION_EXPIRED, ERR_STALE_SEQ, ERR_STRING_TOO_LONG, OK,
    KVError, Result, decode_result, encode_result,
)

DEFAULT_SESSION_TTL_MS = 60 * 60 * 1000
#: The most bytes of replies one transaction keeps (the session remembers them until the client has them,
#: on disk too, and a follower's forward carries them back, kvd.limits' forward_bytes): past it, a read answers
#: an error instead, and a write that answers a value is still applied but answers an error.  Part of the
#: machine's definition, like session_ttl_ms.
TXN_REPLY_BYTES = 4 * 1024 * 1024


def _reply_bytes(result) -> int:
    """About what ``result`` takes encoded (kvd.kv.results): enough to bound a transaction's replies."""
    if isinstance(result, bytes):
        return len(result) + 10
    if isinstance(result, list):
        return 10 + sum(_reply_bytes(item) for item in result)
    if isinstance(result, KVError):
        return len(result.message) + 10
    return 10


def _over_reply_limit(total: int, write: bool) -> KVError:
    return KVError("ERR the transaction's replies are over %d bytes (%d so far); %s" % (
        TXN_REPLY_BYTES, total, "this write was applied, its reply dropped" if write else
        "this read was not answered: read it outside MULTI"))
SNAPSHOT_MAGIC = b"KVDS"
#: 2: each key with its mod index, and the keyspace's deleted_at (version 1 is still read: mod indexes 0);
#: 3: the script cache after the keys (versions 1 and 2 are still read: no scripts);
#: 4: each key with its type: a string's value, or a hash's fields (versions 1-3 are still read: strings only);
#: 5: the keys' expiries after the scripts (kvd.kv.expiry; versions 1-4 are still read: none);
#: 6: the store's revision after deleted_at, each key's meta after its mod index (kvd.kv.revisions;
#:    versions 1-5 are still read: revision 0, metas (0, 0, 0)).
#: 7: the leases and their keys after the expiries (kvd.kv.leases; versions 1-6 are still read: none).
SNAPSHOT_VERSION = 7
_KIND_STRING, _KIND_HASH = 0, 1
#: A durable keyspace keeps script SHA -> body under this prefix and the SHA, among the sessions: client ids
#: are "node id/hex" (kvd.node.session), so none starts with a NUL byte, and the machine refuses one that does.
SCRIPT_RECORD = b"\x00script:"
ERR_RESERVED_CLIENT = KVError("ERR client ids starting with a NUL byte are reserved")
#: etcd answers "etcdserver: requested lease not found" for a lease that is unknown, revoked or expired.
ERR_LEASE_NOT_FOUND = KVError("ERR lease not found")
ERR_LEASE_IN_SCRIPT = KVError("ERR SET ... LEASE is not allowed in scripts")


class _Session:
    __slots__ = ("last_stamp_ms", "ack_below", "responses")

    def __init__(self, last_stamp_ms: int, ack_below: int):
        self.last_stamp_ms = last_stamp_ms
        self.ack_below = ack_below
        self.responses: Dict[int, Result] = {}

    def acknowledge(self, ack_below: int) -> None:
        if ack_below > self.ack_below:
            self.ack_below = ack_below
            for seq in [s for s in self.responses if s < ack_below]:
                del self.responses[seq]


def encode_session(session: _Session) -> bytes:
    w = Writer()
    w.uint(session.last_stamp_ms)
    w.uint(session.ack_below)
    w.uint(len(session.responses))
    for seq in sorted(session.responses):
        w.uint(seq)
        encode_result(w, session.responses[seq])
    return w.getvalue()


def _read_session(r: Reader) -> _Session:
    session = _Session(r.uint(), r.uint())
    for _ in range(r.count(2)):
        seq = r.uint()
        session.responses[seq] = decode_result(r)
    return session


def decode_session(data: bytes) -> _Session:
    r = Reader(data)
    session = _read_session(r)
    r.expect_end()
    return session


def _type_name(value) -> bytes:
    return b"none" if value is None else b"hash" if value is HASH else b"string"


def _copy_hash(ks, src: bytes, dst: bytes) -> None:
    """``dst`` becomes a copy of the hash at ``src`` (whatever it held): every field is read and written."""
    pairs = [(field, value) for _, field, value in ks.hfields_from(src)]
    ks.delete(dst)
    for field, value in pairs:
        ks.hset(dst, field, value)


def _getrange(value: bytes, start: int, end: int) -> bytes:
    """Redis 7's GETRANGE: inclusive bounds, negative from the end, clamped; empty when the range is."""
    n = len(value)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start = max(n + start, 0)
    if end < 0:
        end = max(n + end, 0)
    end = min(end, n - 1)
    if start > end or n == 0:
        return b""
    return value[start:end + 1]


def _read_record(r: Reader, version: int) -> tuple:
    """(key, value, mod[, meta]) of a version 4-6 snapshot: a hash's value is its (field, value) list."""
    key = r.blob()
    kind = r.byte()
    if kind == _KIND_STRING:
        value = r.blob()
    elif kind == _KIND_HASH:
        n = r.count(2)
        if not n:
            raise CodecError("snapshot holds an empty hash")
        value = [(r.blob(), r.blob()) for _ in range(n)]
        if len(dict(value)) != n:
            raise CodecError("snapshot repeats a hash field")
    else:
        raise CodecError("unknown key kind %d in snapshot" % (kind,))
    if version >= 6:
        return key, value, r.uint(), (r.uint(), r.uint(), r.uint())
    return key, value, r.uint()


class KVMachine:
    def __init__(self, session_ttl_ms: int = DEFAULT_SESSION_TTL_MS, keyspace=None):
        if session_ttl_ms <= 0:
            raise ValueError("session_ttl_ms must be positive")
        self.session_ttl_ms = session_ttl_ms
        self.applied_index = 0
        self._clock_ms = 0
        self._keyspace = keyspace if keyspace is not None else Keyspace()
        self._sessions: "OrderedDict[bytes, _Session]" = OrderedDict()
        #: The replicated script cache: SHA1 (40 lower-case hex digits) -> body, in the order they were added.
        self._scripts: Dict[bytes, bytes] = {}
        #: SHAs whose script was added or dropped since the durable keyspace last flushed (None: in memory).
        self._scripts_dirty = set() if self.durable else None
        #: The keys' expiries (kvd.kv.expiry): replicated state, kept beside the sessions on disk.
        self._expiries = Expiries(durable=self.durable)
        #: The leases and their keys (kvd.kv.leases): replicated state, kept beside the sessions on disk.
        self._leases = Leases(durable=self.durable)
        #: Client ids whose session changed since the durable keyspace last flushed (None: in memory).
        self._dirty = set() if self.durable else None
        #: What the entry applied last produced (kvd.kv.events): messages and key events, in order.
        self.events: list = []
        if self.durable:
            self._keyspace.bind(self)

    @property
    def durable(self) -> bool:
        """Whether the state is kept on disk by the keyspace (kvd.store.state) rather than in memory."""
        return getattr(self._keyspace, "durable", False)

    @property
    def clock_ms(self) -> int:
        """The largest stamp_ms applied so far: the machine's notion of now."""
        return self._clock_ms

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def __len__(self) -> int:
        return len(self.view())

    def key_count(self) -> int:
        """How many keys there are (a method, so that wrappers such as the metrics' pass it on)."""
        return len(self.view())

    def view(self) -> View:
        """The keyspace as at the log's time: expired keys absent (kvd.kv.expiry)."""
        return View(self._keyspace, self._expiries, self._clock_ms, self._leases, self.events)

    def expiry_count(self) -> int:
        """How many keys have an expiry (expired ones not reclaimed yet included)."""
        return len(self._expiries)

    def next_expiry(self):
        """The earliest expiry of a stored key or of a lease (Unix ms), None if there is none."""
        times = [t for t in (self._expiries.first_at(), self._leases.first_at()) if t is not None]
        return min(times) if times else None

    def expired_count(self, now_ms: int) -> int:
        """
        How many keys with an expiry at or before ``now_ms`` are still stored, and leases dead by then and
        their keys (what Ticks would reclaim).
        """
        return self._expiries.count_due(now_ms) + self._leases.dead_count(now_ms)

    def attached_count(self) -> int:
        """How many keys are attached to a lease (those of dead leases not reclaimed yet included)."""
        return self._leases.attached_count()

    def lease_count(self) -> int:
        """How many leases there are (dead ones not reclaimed yet included)."""
        return len(self._leases)

    def needs_time(self, op: ReadOp, now_ms: int) -> bool:
        """
        Whether serving ``op`` at the log's time could answer with a key that expires before ``now_ms`` (a
        node's clock) plus READ_MARGIN_MS: then the node moves the log's time on first (a Tick; kvd.kv.expiry).
        """
        exp, leases = self._expiries, self._leases
        low, high = self._clock_ms, now_ms + READ_MARGIN_MS
        if not (len(exp) or len(leases)) or high <= low:
            return False
        if isinstance(op, LeaseRead):  # a lease that expires is no longer listed nor found
            if op.op == "list":
                return leases.any_between(low, high, with_keys=False)
            lease = leases.get(op.id)
            return lease is not None and low < lease.expiry_ms <= high
        if isinstance(op, (Keys, Scan, DbSize, RandomKey)):
            return exp.any_between(low, high) or leases.any_between(low, high)
        for key in read_keys(op):
            at_ms = exp.get(key)
            if at_ms is None:
                at_ms = leases.expiry_of(key)
            if at_ms is not None and low < at_ms <= high:
                return True
        return False

    # ------------------------------------------------------------ log entries

    def _advance(self, index: int) -> None:
        if index <= self.applied_index:
            raise ValueError("entry %d applied out of order (applied index is %d)" % (index, self.applied_index))
        self.applied_index = index

    def apply_noop(self, index: int) -> None:
        self._advance(index)
        self.events = []

    def apply(self, index: int, data: bytes) -> Result:
        """
        Apply the normal entry at ``index``.  Bad data is still an applied
        entry; it answers an error rather than raising, since raising would
        stop every replica at the same poisoned entry.
        """
        self._advance(index)
        self.events = []
        try:
            env = decode_envelope(data)
        except CodecError as e:
            return KVError("ERR undecodable command: %s" % (e,))
        if env.client_id.startswith(b"\x00"):
            return ERR_RESERVED_CLIENT
        if isinstance(env.command, Lease) and env.command.op == "promote":
            # Before this entry's stamp moves the log's time on: a lease alive until now outlives the
            # election gap (kvd.kv.leases).
            self._leases.promote(self._clock_ms, max(self._clock_ms, env.stamp_ms))
        if env.stamp_ms > self._clock_ms:
            self._clock_ms = env.stamp_ms
        self._expire_sessions()
        self._keyspace.write_index = index
        self.view().reclaim(RECLAIM_PER_TICK if isinstance(env.command, Tick) else RECLAIM_PER_ENTRY)
        if self._dirty is not None:
            self._dirty.add(env.client_id)
        session = self._sessions.get(env.client_id)
        if session is None:
            if env.ack_below > 1:
                return ERR_SESSION_EXPIRED
            session = self._sessions[env.client_id] = _Session(self._clock_ms, 0)
        else:
            self._sessions.move_to_end(env.client_id)
            session.last_stamp_ms = self._clock_ms
        session.acknowledge(env.ack_below)
        if env.seq < session.ack_below:
            return ERR_STALE_SEQ
        if env.seq in session.responses:
            return session.responses[env.seq]
        self._keyspace.write_index = index
        result = self._execute(env.command)
        session.responses[env.seq] = result
        return result

    def _expire_sessions(self) -> None:
        deadline = self._clock_ms - self.session_ttl_ms
        sessions = self._sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest.last_stamp_ms >= deadline:
                return
            client_id, _ = sessions.popitem(last=False)
            if self._dirty is not None:
                self._dirty.add(client_id)

    def _changed(self, key: bytes, exists: bool, index: int) -> bool:
        """Whether a key WATCHed as (exists, index) (see kvd.kv.commands ``Versions``) may have been written since."""
        ks = self.view()  # a key expired since counts as changed, as in Redis
        mod = ks.mod_index(key)
        if exists:
            return mod != index
        return mod is not None or ks.deleted_at > index

    def _execute(self, cmd: WriteCommand, ks=None) -> Result:
        """Apply ``cmd`` to the keyspace, or to ``ks`` (a script's buffer of writes, kvd.kv.script)."""
        if ks is None:
            ks = self.view()
        if isinstance(cmd, Script):
            from kvd.kv import script  # Lua (lupa) is loaded by the first script only

            return script.execute(self, cmd)
        if isinstance(cmd, Transaction):
            if any(self._changed(key, exists, index) for key, exists, index in cmd.watched):
                return None
            results, total = [], 0
            for op in cmd.ops:
                write = not isinstance(op, READ_OPS)
                result = self._execute(op) if write else self.read(op)
                size = _reply_bytes(result)
                if total + size > TXN_REPLY_BYTES:
                    result = _over_reply_limit(total, write)
                    size = _reply_bytes(result)
                total += size
                results.append(result)
            return results
        if isinstance(cmd, HashWrite):
            result = hashes.write(ks, cmd)
            _hash_events(ks, cmd, result)
            return result
        if isinstance(cmd, Lease):
            return self._lease(cmd)
        if isinstance(cmd, KvTxn):
            return txn.apply(ks, cmd)
        if isinstance(cmd, Set):
            if cmd.lease is not None:
                if not isinstance(ks, View):
                    return ERR_LEASE_IN_SCRIPT
                if self._leases.live(cmd.lease, self._clock_ms) is None:
                    return ERR_LEASE_NOT_FOUND
            at_ms = None
            if cmd.expire is not None:
                at_ms = _expire_time(cmd.expire, cmd.expire_at, self._clock_ms)
                if at_ms is None:
                    return _invalid_expire("set")
            # A plain SET needs nothing of the old value (the put reads the key's revisions itself):
            # on a durable state each read is an LMDB lookup and a checksum of the whole value.
            needs_old = cmd.get or cmd.cond is not None or cmd.ifeq is not None
            old = ks.get(cmd.key) if needs_old else None
            if old is HASH and (cmd.get or cmd.ifeq is not None):
                return WRONGTYPE
            if cmd.cond == "NX":
                do_set = old is None
            elif cmd.cond == "XX":
                do_set = old is not None
            elif cmd.ifeq is not None:
                do_set = old is not None and old == cmd.ifeq
            else:
                do_set = True
            if do_set:
                ks.put(cmd.key, cmd.value)
                ks.events.append(ev.string(b"set", cmd.key))
                if not cmd.keepttl:
                    ks.set_expire(cmd.key, at_ms)
                    if at_ms is not None:  # Redis 7.0: "expire" even for a time already past, then "expired"
                        ks.events.append(ev.generic(b"expire", cmd.key))
                        if ks.get(cmd.key) is None:
                            ks.events.append(ev.expired(cmd.key))
                if cmd.lease is not None:
                    ks.attach(cmd.key, cmd.lease)
            if cmd.get:
                return old
            return OK if do_set else None
        if isinstance(cmd, Delete):
            deleted = 0
            for k in dict.fromkeys(cmd.keys):
                if ks.delete(k):
                    deleted += 1
                    ks.events.append(ev.generic(b"del", k))
            return deleted
        if isinstance(cmd, MSet):
            for k, v in cmd.pairs:
                ks.put(k, v)
                ks.set_expire(k, None)
                ks.events.append(ev.string(b"set", k))
            return OK
        if isinstance(cmd, Publish):
            ks.events.append(ev.Message(cmd.channel, cmd.message, cmd.shard))
            return 0  # the node answers how many of its own clients received it (kvd.resp.pubsub)
        if isinstance(cmd, Expire):
            return self._expire(ks, cmd)
        if isinstance(cmd, GetEx):
            return self._getex(ks, cmd)
        if isinstance(cmd, Tick):
            return OK
        if isinstance(cmd, (IncrBy, GetDel, Append, SetRange)) and ks.get(cmd.key) is HASH:
            return WRONGTYPE
        if isinstance(cmd, IncrBy):
            old = ks.get(cmd.key)
            current = 0 if old is None else parse_int64(old)
            if current is None:
                return ERR_NOT_INTEGER
            value = current + cmd.delta
            if not INT64_MIN <= value <= INT64_MAX:
                return ERR_OVERFLOW
            ks.put(cmd.key, b"%d" % value)
            ks.events.append(ev.string(b"incrby", cmd.key))
            return value
        if isinstance(cmd, GetDel):
            old = ks.get(cmd.key)
            if old is not None:
                ks.delete(cmd.key)
                ks.events.append(ev.generic(b"del", cmd.key))
            return old
        if isinstance(cmd, Append):
            old = ks.get(cmd.key)
            if old is None:
                if len(cmd.value) > cmd.max_len:
                    return ERR_STRING_TOO_LONG
                ks.put(cmd.key, cmd.value)
                ks.events.append(ev.string(b"append", cmd.key))
                return len(cmd.value)
            if len(old) + len(cmd.value) > cmd.max_len:
                return ERR_STRING_TOO_LONG
            ks.put(cmd.key, old + cmd.value)
            ks.events.append(ev.string(b"append", cmd.key))
            return len(old) + len(cmd.value)
        if isinstance(cmd, SetRange):
            old = ks.get(cmd.key)
            if not cmd.value:  # Redis: nothing written, not even an empty key
                return 0 if old is None else len(old)
            end = cmd.offset + len(cmd.value)
            if end > cmd.max_len:
                return ERR_STRING_TOO_LONG
            old = old or b""
            if len(old) < cmd.offset:
                new = old + bytes(cmd.offset - len(old)) + cmd.value
            else:
                new = old[:cmd.offset] + cmd.value + old[end:]
            ks.put(cmd.key, new)
            ks.events.append(ev.string(b"setrange", cmd.key))
            return len(new)
        if isinstance(cmd, MSetNX):
            if any(k in ks for k, _ in cmd.pairs):
                return 0
            for k, v in cmd.pairs:
                ks.put(k, v)
                ks.set_expire(k, None)
                ks.events.append(ev.string(b"set", k))
            return 1
        if isinstance(cmd, Rename):
            value = ks.get(cmd.src)
            if value is None:
                return ERR_NO_SUCH_KEY
            if cmd.src == cmd.dst:
                return 0 if cmd.nx else OK
            if cmd.nx and cmd.dst in ks:
                return 0
            at_ms, lease = ks.expire_at(cmd.src), _lease_of(ks, cmd.src)
            if value is HASH:
                _copy_hash(ks, cmd.src, cmd.dst)
            else:
                ks.put(cmd.dst, value)
            ks.delete(cmd.src)
            ks.set_expire(cmd.dst, None if lease is not None else at_ms)
            if lease is not None:
                ks.attach(cmd.dst, lease)
            ks.events.append(ev.generic(b"rename_from", cmd.src))
            ks.events.append(ev.generic(b"rename_to", cmd.dst))
            return 1 if cmd.nx else OK
        if isinstance(cmd, Copy):
            value = ks.get(cmd.src)
            if value is None or (not cmd.replace and cmd.dst in ks):
                return 0
            at_ms, lease = ks.expire_at(cmd.src), _lease_of(ks, cmd.src)
            if value is HASH:
                _copy_hash(ks, cmd.src, cmd.dst)
            else:
                ks.put(cmd.dst, value)
            ks.set_expire(cmd.dst, None if lease is not None else at_ms)
            if lease is not None:
                ks.attach(cmd.dst, lease)
            ks.events.append(ev.generic(b"copy_to", cmd.dst))
            return 1
        if isinstance(cmd, FlushAll):
            if len(getattr(ks, "ks", ks)):  # a revision (kvd.kv.revisions): KVD.WATCH's history needs to know (kvd.kv.watch)
                ks.events.append(ev.Flushed())
            ks.clear()
            return OK
        if isinstance(cmd, IncrByFloat):
            result = _incrbyfloat(ks, cmd)
            if isinstance(result, bytes):
                ks.events.append(ev.string(b"incrbyfloat", cmd.key))
            return result
        raise TypeError("not a write command: %r" % (cmd,))

    def _lease(self, cmd: Lease) -> Result:
        """KVD.LEASE GRANT (the new id), KEEPALIVE (the ttl, in seconds), REVOKE (OK); PROMOTE (leases extended)."""
        leases, now = self._leases, self._clock_ms
        if cmd.op == "grant":
            lease_id = self.applied_index
            if leases.get(lease_id) is not None:  # cannot happen: one grant per entry, ids are indexes
                return KVError("ERR lease %d exists" % (lease_id,))
            leases.grant(lease_id, cmd.ttl * 1000, now)
            return lease_id
        if cmd.op == "keepalive":
            if not leases.keepalive(cmd.id, now):
                return ERR_LEASE_NOT_FOUND
            return leases.get(cmd.id).ttl_ms // 1000
        if cmd.op == "revoke":
            if not leases.revoke(cmd.id, now):
                return ERR_LEASE_NOT_FOUND
            # Its keys are dead from now on; this entry deletes a first batch, Ticks the rest.
            self.view().reclaim(RECLAIM_PER_TICK)
            return OK
        return len(leases.live_ids(now))  # promote: done in apply, before the stamp moved the time on

    def _lease_read(self, op: LeaseRead) -> Result:
        """KVD.LEASE TTL id [KEYS]: [granted ttl, remaining ttl (seconds)[, keys]]; LIST: the live ids."""
        now = self._clock_ms
        if op.op == "list":
            return self._leases.live_ids(now)
        lease = self._leases.live(op.id, now)
        if lease is None:
            return ERR_LEASE_NOT_FOUND
        reply = [lease.ttl_ms // 1000, (lease.expiry_ms - now + 500) // 1000]
        if op.keys:
            reply.append(sorted(lease.keys))
        return reply

    def _expire(self, ks, cmd: Expire) -> Result:
        """EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, PERSIST as Redis 7 (expire.c): 1 if changed, else 0."""
        if cmd.op == "persist":
            if ks.get(cmd.key) is None or ks.expire_at(cmd.key) is None:
                return 0
            ks.set_expire(cmd.key, None)
            _touch(ks, cmd.key)
            ks.events.append(ev.generic(b"persist", cmd.key))
            return 1
        when = cmd.when
        if cmd.op in ("expire", "expireat"):
            if not -(INT64_MAX // 1000) <= when <= INT64_MAX // 1000:  # C's LLONG_MIN / 1000 rounds toward zero
                return _invalid_expire(cmd.op)
            when *= 1000
        base = self._clock_ms if cmd.op in ("expire", "pexpire") else 0
        if when > INT64_MAX - base:
            return _invalid_expire(cmd.op)
        when += base
        if ks.get(cmd.key) is None:
            return 0
        if cmd.flags:
            current = ks.expire_at(cmd.key)
            if cmd.flags & EXPIRE_NX and current is not None:
                return 0
            if cmd.flags & EXPIRE_XX and current is None:
                return 0
            if cmd.flags & EXPIRE_GT and (current is None or when <= current):
                return 0
            if cmd.flags & EXPIRE_LT and current is not None and when >= current:
                return 0
        if when <= self._clock_ms:
            ks.delete(cmd.key)
            ks.events.append(ev.generic(b"del", cmd.key))
        else:
            ks.set_expire(cmd.key, when)
            _touch(ks, cmd.key)
            ks.events.append(ev.generic(b"expire", cmd.key))
        return 1

    def _getex(self, ks, cmd: GetEx) -> Result:
        """GETEX as Redis 7 (t_string.c): the value (nil, WRONGTYPE), then the expiry set or dropped."""
        at_ms = None
        if cmd.expire is not None:
            at_ms = _expire_time(cmd.expire, cmd.expire_at, self._clock_ms)
            if at_ms is None:
                return _invalid_expire("getex")
        value = ks.get(cmd.key)
        if value is None:
            return None
        if value is HASH:
            return WRONGTYPE
        if at_ms is not None:
            ks.set_expire(cmd.key, at_ms)  # a time already past deletes the key
            _touch(ks, cmd.key)
            _expire_event(ks, cmd.key)
        elif cmd.persist and ks.expire_at(cmd.key) is not None:
            ks.set_expire(cmd.key, None)
            _touch(ks, cmd.key)
            ks.events.append(ev.generic(b"persist", cmd.key))
        return value

    # ---------------------------------------------------------- script cache

    def script_body(self, sha: bytes):
        return self._scripts.get(sha)

    def script_add(self, sha: bytes, body: bytes) -> None:
        if sha not in self._scripts:
            self._scripts[sha] = body
            if self._scripts_dirty is not None:
                self._scripts_dirty.add(sha)

    def script_flush(self) -> None:
        if self._scripts_dirty is not None:
            self._scripts_dirty.update(self._scripts)
        self._scripts.clear()

    # ------------------------------------------------------------------ reads

    def read(self, op: ReadOp, ks=None) -> Result:
        """Answer ``op`` at the log's time (``clock_ms``), or from ``ks`` (a script's buffer)."""
        if ks is None:
            ks = self.view()
        if isinstance(op, ScriptGet):
            return [self._scripts.get(sha) for sha in op.shas]
        if isinstance(op, HashRead):
            return hashes.read(ks, op)
        if isinstance(op, KeyType):
            return _type_name(ks.get(op.key))
        if isinstance(op, LeaseRead):
            return self._lease_read(op)
        if isinstance(op, RevRead):
            if op.op == "revision":
                return ks.revision
            value = ks.get(op.key)
            if value is None:
                return None
            if value is HASH:
                return WRONGTYPE
            return [value] + list(ks.rev_meta(op.key))
        if isinstance(op, Ttl):
            if ks.get(op.key) is None:
                return -2
            at_ms = ks.expire_at(op.key)
            if at_ms is None:
                return -1
            ttl = max(0, at_ms if op.op in ("expiretime", "pexpiretime") else at_ms - self._clock_ms)
            return ttl if op.op in ("pttl", "pexpiretime") else (ttl + 500) // 1000
        if isinstance(op, Get):
            value = ks.get(op.key)
            return WRONGTYPE if value is HASH else value
        if isinstance(op, MGet):
            return [value if value is not HASH else None for value in (ks.get(k) for k in op.keys)]
        if isinstance(op, Exists):
            return sum(1 for k in op.keys if k in ks)
        if isinstance(op, StrLen):
            value = ks.get(op.key)
            return WRONGTYPE if value is HASH else 0 if value is None else len(value)
        if isinstance(op, GetRange):
            value = ks.get(op.key)
            return WRONGTYPE if value is HASH else _getrange(value or b"", op.start, op.end)
        if isinstance(op, RandomKey):
            if isinstance(ks, View):
                return ks.random_key(op.position & MAX_CURSOR)
            if not len(ks):
                return None
            position = op.position & MAX_CURSOR
            _, keys = ks.scan(position, None, 1)
            if not keys:
                _, keys = ks.scan(0, None, 1)
            return keys[0] if keys else None
        try:
            if isinstance(op, Keys):
                return ks.keys(Pattern(op.pattern))
            if isinstance(op, Scan):
                match = None if op.match is None or op.match == b"*" else Pattern(op.match)
                cursor, keys = ks.scan(op.cursor, match, op.count)
                if op.type is not None:
                    keys = [k for k in keys if _type_name(ks.get(k)) == op.type.encode()]
                return [b"%d" % cursor, keys]
        except PatternTooCostly as e:
            return KVError("ERR " + str(e))
        if isinstance(op, DbSize):
            return len(ks)
        if isinstance(op, Versions):
            versions = []
            for key in op.keys:
                mod = ks.mod_index(key)
                versions.append([0, self.applied_index] if mod is None else [1, mod])
            return versions
        raise TypeError("not a read op: %r (expected one of %s)" % (op, ", ".join(t.__name__ for t in READ_OPS)))

    # -------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """
        The whole state as bytes; equal states give equal bytes.  Layout::

            "KVDS" version applied_index clock_ms
            n_sessions (client_id last_stamp_ms ack_below n (seq result)...)...
            deleted_at revision n_keys (key kind value mod_index create_rev mod_rev version)...  in SCAN order
                kind 0: value a blob (a string); 1: n (field value)... in field order (a hash)
            n_scripts (sha body)...          in the order they were added (version 3)
            n_expiries (key expiry_ms)...    in key order (version 5)
            n_leases (id ttl_ms expiry_ms)... in id order, n_attached (key id)... in key order (version 7)
            crc32 of all the above, 4 bytes big-endian

        Empty for a durable machine: its state is streamed from the disk.
        """
        if self.durable:
            return b""
        w = Writer()
        w.raw(SNAPSHOT_MAGIC)
        w.byte(SNAPSHOT_VERSION)
        w.uint(self.applied_index)
        w.uint(self._clock_ms)
        w.uint(len(self._sessions))
        for client_id, session in self._sessions.items():
            w.blob(client_id)
            w.raw(encode_session(session))
        w.uint(self._keyspace.deleted_at)
        w.uint(self._keyspace.revision)
        w.uint(len(self._keyspace))
        for key, value, mod, meta in self._keyspace.records_in_order():
            w.blob(key)
            if isinstance(value, list):
                w.byte(_KIND_HASH)
                w.uint(len(value))
                for field, item in value:
                    w.blob(field)
                    w.blob(item)
            else:
                w.byte(_KIND_STRING)
                w.blob(value)
            w.uint(mod)
            for number in meta:
                w.uint(number)
        w.uint(len(self._scripts))
        for sha, script in self._scripts.items():
            w.blob(sha)
            w.blob(script)
        w.uint(len(self._expiries))
        for key, at_ms in self._expiries.items():
            w.blob(key)
            w.uint(at_ms)
        w.uint(len(self._leases))
        for lease_id, ttl_ms, expiry_ms in self._leases.items():
            w.uint(lease_id)
            w.uint(ttl_ms)
            w.uint(expiry_ms)
        w.uint(self._leases.attached_count())
        for key, lease_id in self._leases.attached():
            w.blob(key)
            w.uint(lease_id)
        body = w.getvalue()
        return body + zlib.crc32(body).to_bytes(4, "big")

    def restore(self, data: bytes) -> None:
        """
        Replace the whole state; on bad data raise CodecError and change
        nothing.  A durable machine reloads what its storage has just swapped
        in (``data`` names the staged state and was checked there).
        """
        if self.durable:
            self.reload()
            return
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < len(SNAPSHOT_MAGIC) + 5:
            raise CodecError("snapshot too short")
        data = bytes(data)
        body, crc = data[:-4], data[-4:]
        if not body.startswith(SNAPSHOT_MAGIC):
            raise CodecError("not a kvd snapshot")
        if zlib.crc32(body).to_bytes(4, "big") != crc:
            raise CodecError("snapshot checksum mismatch")
        r = Reader(body)
        r.raw(len(SNAPSHOT_MAGIC))
        version = r.byte()
        if version not in (1, 2, 3, 4, 5, 6, SNAPSHOT_VERSION):
            raise CodecError("unknown snapshot version %d" % (version,))
        applied_index = r.uint()
        clock_ms = r.uint()
        sessions: "OrderedDict[bytes, _Session]" = OrderedDict()
        n_sessions = r.count(4)
        for _ in range(n_sessions):
            client_id = r.blob()
            sessions[client_id] = _read_session(r)
        deleted_at = r.uint() if version >= 2 else 0
        revision = r.uint() if version >= 6 else 0
        n_keys = r.count(2)
        if version >= 4:
            keyspace = Keyspace.from_items(_read_record(r, version) for _ in range(n_keys))
        elif version >= 2:
            keyspace = Keyspace.from_items((r.blob(), r.blob(), r.uint()) for _ in range(n_keys))
        else:
            keyspace = Keyspace.from_items((r.blob(), r.blob()) for _ in range(n_keys))
        keyspace.deleted_at = deleted_at
        keyspace.revision = revision
        scripts: Dict[bytes, bytes] = {}
        n_scripts = r.count(2) if version >= 3 else 0
        for _ in range(n_scripts):
            sha = r.blob()
            scripts[sha] = r.blob()
        n_expiries = r.count(2) if version >= 5 else 0
        expiries = []
        for _ in range(n_expiries):
            key = r.blob()
            at_ms = r.uint()
            if key not in keyspace or at_ms > INT64_MAX:
                raise CodecError("snapshot holds an expiry of a missing key, or out of range")
            expiries.append((key, at_ms))
        leases = _read_leases(r, keyspace, dict(expiries)) if version >= 7 else Leases()
        r.expect_end()
        if len(keyspace) != n_keys or len(sessions) != n_sessions or len(scripts) != n_scripts:
            raise CodecError("snapshot repeats a key, a client id or a script")
        if len(dict(expiries)) != n_expiries:
            raise CodecError("snapshot repeats a key's expiry")
        self.applied_index = applied_index
        self._clock_ms = clock_ms
        self._sessions = sessions
        self._keyspace = keyspace
        self._scripts = scripts
        self._expiries = Expiries(expiries)
        self._leases = leases

    # ---------------------------------------------------------- durable state

    def reload(self) -> None:
        """Take the applied index, clock and sessions from the durable keyspace (at start, after a snapshot)."""
        applied_index, clock_ms, records = self._keyspace.load()
        sessions = []
        scripts = {}
        expiries = []
        leases, attached = [], []
        for client_id, data in records:
            if client_id.startswith(LEASE_RECORD) or client_id.startswith(LEASE_KEY_RECORD):
                try:
                    if client_id.startswith(LEASE_RECORD):
                        leases.append(decode_lease(client_id, data))
                    else:
                        attached.append(decode_lease_key(data))
                except CodecError as e:
                    raise CodecError("stored lease record %r: %s" % (client_id, e)) from None
                continue
            if client_id.startswith(TTL_RECORD):
                try:
                    expiries.append(decode_record(data))
                except CodecError as e:
                    raise CodecError("stored expiry %r: %s" % (client_id, e)) from None
                continue
            if client_id.startswith(SCRIPT_RECORD):
                scripts[client_id[len(SCRIPT_RECORD):]] = bytes(data)
                continue
            try:
                sessions.append((client_id, decode_session(data)))
            except CodecError as e:
                raise CodecError("stored session of client %r: %s" % (client_id, e)) from None
        # Activity order is stamp order; ties expire together, so their order does not matter.
        sessions.sort(key=lambda item: (item[1].last_stamp_ms, item[0]))
        self.applied_index = applied_index
        self._clock_ms = clock_ms
        self._sessions = OrderedDict(sessions)
        self._dirty = set()
        # Records come in key order: scripts are kept in SHA order across a restart (SCRIPT EXISTS needs none).
        self._scripts = dict(sorted(scripts.items()))
        self._scripts_dirty = set()
        self._expiries = Expiries(expiries, durable=True)
        self._leases = Leases(leases, attached, durable=True)

    def copy_from(self, other: "KVMachine") -> None:
        """
        Take ``other``'s whole state (an empty machine only): how a format
        that kept the state as a snapshot blob is converted (kvd.store.upgrade).
        """
        if len(self._keyspace) or self._sessions or self.applied_index:
            raise ValueError("copy_from needs an empty machine")
        for key, value, mod, meta in other._keyspace.records_in_order():
            self._keyspace.write_index = mod
            if isinstance(value, list):
                for field, item in value:
                    self._keyspace.hset(key, field, item)
            else:
                self._keyspace.put(key, value)
            self._keyspace.set_rev(key, meta)
        self._keyspace.deleted_at = other._keyspace.deleted_at
        self._keyspace.revision = other._keyspace.revision
        self._sessions = OrderedDict(other._sessions)
        if self._dirty is not None:
            self._dirty.update(self._sessions)
        for sha, body in other._scripts.items():
            self.script_add(sha, body)
        for key, at_ms in other._expiries.items():
            self._expiries.set(key, at_ms)
        for lease_id, ttl_ms, expiry_ms in other._leases.items():
            self._leases._put(lease_id, ttl_ms, expiry_ms)
        for key, lease_id in other._leases.attached():
            self._leases.attach(key, lease_id)
        self.applied_index = other.applied_index
        self._clock_ms = other._clock_ms

    def durable_changes(self):
        """(applied index, clock, {client id: encoded session, or None if it is gone}) since the last flush."""
        changed = {}
        for client_id in self._dirty:
            session = self._sessions.get(client_id)
            changed[client_id] = None if session is None else encode_session(session)
        for sha in self._scripts_dirty:
            changed[SCRIPT_RECORD + sha] = self._scripts.get(sha)
        for key in self._expiries.dirty:
            at_ms = self._expiries.get(key)
            changed[record_name(key)] = None if at_ms is None else encode_record(key, at_ms)
        self._leases.durable_changes(changed)
        return self.applied_index, self._clock_ms, changed

    def durable_flushed(self) -> None:
        """The changes ``durable_changes`` gave are committed to disk."""
        self._dirty.clear()
        self._scripts_dirty.clear()
        self._expiries.dirty.clear()
        self._leases.flushed()

    def check(self) -> None:
        """Assert the internal invariants; for tests."""
        self._keyspace.check()
        self._expiries.check(self._keyspace)
        self._leases.check(self._keyspace, self._expiries)
        stamps = [s.last_stamp_ms for s in self._sessions.values()]
        assert stamps == sorted(stamps), "sessions out of activity order"


# ------------------------------------------------------------- expiry


def _expire_time(expire: int, absolute: bool, now_ms: int):
    """SET's and GETEX's expiry in Unix ms (Redis's getExpireMillisecondsOrReply), None if it overflows."""
    if absolute:
        return expire
    return None if expire > INT64_MAX - now_ms else expire + now_ms


def _lease_of(ks, key: bytes):
    """The id of the key's lease; None if it has none, or ``ks`` is a script's buffer (which sees no lease)."""
    lease_of = getattr(ks, "lease_of", None)
    return None if lease_of is None else lease_of(key)


def _read_leases(r: Reader, keyspace, expiries: dict) -> Leases:
    """The leases of a version 7 snapshot, checked: every key attached exists, to one live lease, without an expiry."""
    items = []
    for _ in range(r.count(3)):
        lease_id, ttl_ms, expiry_ms = r.uint(), r.uint(), r.uint()
        if not 0 < ttl_ms <= LEASE_MAX_TTL_S * 1000 or expiry_ms > INT64_MAX or not 0 < lease_id <= INT64_MAX:
            raise CodecError("snapshot holds a lease out of range")
        items.append((lease_id, ttl_ms, expiry_ms))
    ids = {item[0] for item in items}
    attached = []
    for _ in range(r.count(2)):
        key, lease_id = r.blob(), r.uint()
        if key not in keyspace or lease_id not in ids or key in expiries:
            raise CodecError("snapshot attaches a missing key, or to a missing lease, or a key with an expiry")
        attached.append((key, lease_id))
    if len(ids) != len(items) or len(dict(attached)) != len(attached):
        raise CodecError("snapshot repeats a lease or an attached key")
    return Leases(items, attached)


def _touch(ks, key: bytes) -> None:
    """
    A change of ``key``'s expiry is a write of the key for WATCH (Redis signals it modified): its mod index
    becomes this entry's, by writing the same string again, or a hash's first field again (one record).
    """
    value = ks.get(key)
    if value is None:
        return
    if value is HASH:
        for _, field, item in ks.hfields_from(key):
            ks.hset(key, field, item)
            return
    else:
        ks.put(key, value)


def _expire_event(ks, key: bytes) -> None:
    """After an expiry was given to ``key``: Redis's "expire", or "del" when the time was past (the key is gone)."""
    ks.events.append(ev.generic(b"expire" if ks.get(key) is not None else b"del", key))


_HASH_EVENTS = {"hset": b"hset", "hmset": b"hset", "hsetnx": b"hset", "hdel": b"hdel", "hincrby": b"hincrby",
                "hincrbyfloat": b"hincrbyfloat"}


def _hash_events(ks, cmd: HashWrite, result) -> None:
    """A hash write's key events as Redis 7's t_hash.c: none when nothing changed; HDEL of the last field: "del"."""
    if isinstance(result, KVError) or (cmd.op in ("hsetnx", "hdel") and not result):
        return
    ks.events.append(ev.hash_(_HASH_EVENTS[cmd.op], cmd.key))
    if cmd.op == "hdel" and ks.get(cmd.key) is None:
        ks.events.append(ev.generic(b"del", cmd.key))


def _invalid_expire(name: str) -> KVError:
    return KVError("ERR invalid expire time in '%s' command" % (name,))


# ------------------------------------------------------------- INCRBYFLOAT
# (kept apart from the rest of the machine: Redis 7's long double arithmetic, kvd.kv.longdouble)

ERR_NOT_FLOAT = KVError("ERR value is not a valid float")
ERR_FLOAT_NAN_INF = KVError("ERR increment would produce NaN or Infinity")
ERR_WRONGTYPE = KVError("WRONGTYPE Operation against a key holding the wrong kind of value")


def _float_arg(data: bytes):
    """Redis's string2ld: a long double (kvd.kv.longdouble's exact rational), "inf" for an infinity, or None."""
    value = longdouble.parse(data)
    if value is None and longdouble.is_infinity(data):
        return "inf"
    return value


def _incrbyfloat(ks, cmd: IncrByFloat):
    """INCRBYFLOAT as Redis 7 (t_string.c): the stored value, then the increment, then their sum; as text."""
    old = ks.get(cmd.key)
    if old is not None and not isinstance(old, bytes):  # a key of another type (a hash)
        return ERR_WRONGTYPE
    current = (0, 1) if old is None else _float_arg(old)
    if current is None:
        return ERR_NOT_FLOAT
    incr = _float_arg(cmd.increment)
    if incr is None:
        return ERR_NOT_FLOAT
    value = None if "inf" in (current, incr) else longdouble.add(current, incr)
    if value is None:  # an infinity in, or out of, the sum
        return ERR_FLOAT_NAN_INF
    text = longdouble.format_human(value)
    ks.put(cmd.key, text)
    return text
