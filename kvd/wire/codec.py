# -*- test-case-name: tests.wire.test_codec -*-
"""
The AMP vocabulary of the peer transport and the conversion of Raft messages
to and from it.

Every Raft message travels as one one-way AMP command, ``Raft``
(``requiresAnswer = False``), whose single argument is the message packed
with ``struct`` (``encode_binary``: a tag, the term, the node ids, then the
message's fields; entries and snapshots in their compact binary layouts).
Four request/response commands (``Hello``, ``Forward``, ``ForwardBatch``,
``Join``) serve the connection handshake and follower-to-leader forwarding.

AMP caps every value at 65,535 bytes.  A message whose box would break the
cap (a batch holding a 1 MiB entry, a big snapshot) is packed into one
*blob* - the command name plus the whole argument box, length-prefixed with
32-bit lengths - and the blob is sent as a run of ``Chunk`` commands that the
receiver's ``ChunkAssembler`` stages (within a byte budget) and turns back
into the original box.  Forwarded payloads and results too big for one value
use the same chunks with a raw-bytes blob.

Every term and log index a message carries must be within
``[0, MAX_TERM]`` (kvd.raft.messages; 2^62 - 1), and ``src``/``dst`` non-empty
node ids of at most ``MAX_NODE_ID_LENGTH`` characters: anything else is a
malformed box (``ProtocolViolation``; the transport logs it and drops the
connection) and never reaches the core, which checks the same bounds again
for any other path (kvd.raft.core ``_well_formed``).  Sizes need no check of
their own here: a blob is staged within ``DEFAULT_MAX_STAGED_BYTES`` (64 MiB)
per connection, far under what the binary headers (u32 lengths) and LMDB (a
value of up to 4 GiB) hold; a store that has no room left fail-stops the node
(kvd.replica), it does not loop.

Everything here is pure (no sockets, no reactor) so that it can be tested
with real AMP boxes but without connections.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Type

from twisted.protocols import amp

from kvd.limits import LIMITS
from kvd.raft import messages as m
from kvd.raft.messages import MAX_INDEX, MAX_NODE_ID_LENGTH, MAX_TERM, Configuration, Entry, EntryKind, Message, Snapshot
from kvd.wire.errors import ForwardError, HelloRefused, ProtocolViolation

#: Bumped whenever a command or an argument encoding below changes incompatibly.
PROTOCOL_VERSION = 3  # 2: every Raft message in one binary argument of the Raft command; 3: ForwardBatch

#: The largest value AMP can carry.
MAX_VALUE_LENGTH = amp.MAX_VALUE_LENGTH
#: Payload bytes per Chunk: under the cap with room to spare.
CHUNK_DATA_SIZE = 60 * 1024

#: Default bound on the bytes one connection may hold in staged blobs (kvd.limits: room for the
#: largest AppendEntries and a forwarded command at once).
DEFAULT_MAX_STAGED_BYTES = LIMITS.staged_bytes
#: Default bound on the number of blobs staged at once on one connection.
DEFAULT_MAX_STAGED_BLOBS = 256

# Blob kinds: the first byte of every blob.
BLOB_MESSAGE = 0
BLOB_BYTES = 1

_MAX_U64 = (1 << 64) - 1
_ENTRY_COUNT = struct.Struct(">I")
# index, term, kind, data length; the data follows.
_ENTRY_HEAD = struct.Struct(">QQBI")
# index, term, configuration length; configuration then data follow.
_SNAPSHOT_HEAD = struct.Struct(">QQI")
_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")


# ------------------------------------------------------- binary arguments


class Entries(amp.Argument):
    """A tuple of ``Entry`` as one binary value: a u32 count then fixed headers and data."""

    def toString(self, entries) -> bytes:
        parts = [_ENTRY_COUNT.pack(len(entries))]
        for entry in entries:
            if not (0 <= entry.index <= _MAX_U64 and 0 <= entry.term <= _MAX_U64):
                raise ValueError(f"entry index/term out of range: {entry.index}/{entry.term}")
            data = bytes(entry.data)
            parts.append(_ENTRY_HEAD.pack(entry.index, entry.term, int(entry.kind), len(data)))
            parts.append(data)
        return b"".join(parts)

    def fromString(self, value: bytes):
        return decode_entries(value)


def decode_entries(value: bytes) -> Tuple[Entry, ...]:
    value = bytes(value)
    if len(value) < _ENTRY_COUNT.size:
        raise ValueError("entries value shorter than its count")
    (count,) = _ENTRY_COUNT.unpack_from(value)
    offset = _ENTRY_COUNT.size
    # Every entry needs at least a header: refuse absurd counts before looping.
    if count * _ENTRY_HEAD.size > len(value) - offset:
        raise ValueError(f"entries value too short for {count} entries")
    entries = []
    for _ in range(count):
        if len(value) - offset < _ENTRY_HEAD.size:
            raise ValueError("entries value truncated in a header")
        index, term, kind, length = _ENTRY_HEAD.unpack_from(value, offset)
        offset += _ENTRY_HEAD.size
        if index > MAX_INDEX or term > MAX_TERM:
            raise ValueError(f"entry index/term out of range: {index}/{term}")
        if len(value) - offset < length:
            raise ValueError("entries value truncated in data")
        entries.append(Entry(index=index, term=term, kind=EntryKind(kind), data=value[offset : offset + length]))
        offset += length
    if offset != len(value):
        raise ValueError(f"entries value has {len(value) - offset} trailing bytes")
    return tuple(entries)


class SnapshotArgument(amp.Argument):
    """A ``Snapshot`` as one binary value: fixed header, configuration, data."""

    def toString(self, snapshot: Snapshot) -> bytes:
        if not (0 <= snapshot.index <= _MAX_U64 and 0 <= snapshot.term <= _MAX_U64):
            raise ValueError(f"snapshot index/term out of range: {snapshot.index}/{snapshot.term}")
        config = snapshot.config.encode()
        return _SNAPSHOT_HEAD.pack(snapshot.index, snapshot.term, len(config)) + config + bytes(snapshot.data)

    def fromString(self, value: bytes) -> Snapshot:
        value = bytes(value)
        if len(value) < _SNAPSHOT_HEAD.size:
            raise ValueError("snapshot value shorter than its header")
        index, term, config_len = _SNAPSHOT_HEAD.unpack_from(value)
        if index > MAX_INDEX or term > MAX_TERM:
            raise ValueError(f"snapshot index/term out of range: {index}/{term}")
        start = _SNAPSHOT_HEAD.size
        if len(value) - start < config_len:
            raise ValueError("snapshot value truncated in its configuration")
        config = Configuration.decode(value[start : start + config_len])
        return Snapshot(index=index, term=term, config=config, data=value[start + config_len :])


_ENTRIES = Entries()
_SNAPSHOT = SnapshotArgument()


# --------------------------------------------------------- the message command


class RaftCommand(amp.Command):
    """
    Every Raft message: one one-way AMP command whose single argument ``m``
    is the message in the binary layout below (``encode_binary``).  AMP's
    typed arguments (one key and one parse per field, a box of ten strings
    per AppendEntries) took about 60 us to encode and 80-100 us to parse per
    message, measured; a struct pack of the same fields takes a few.
    """

    commandName = b"Raft"
    arguments = [(b"m", amp.String())]
    requiresAnswer = False


# Message type <-> its tag, the first byte of the binary layout.
_TAG_FOR_TYPE: Dict[type, int] = {
    m.PreVote: 1, m.PreVoteReply: 2, m.RequestVote: 3, m.RequestVoteReply: 4, m.AppendEntries: 5,
    m.AppendEntriesReply: 6, m.Heartbeat: 7, m.HeartbeatReply: 8, m.InstallSnapshot: 9, m.TimeoutNow: 10,
    m.ReadIndexRequest: 11, m.ReadIndexReply: 12,
}
_TYPE_FOR_TAG: Dict[int, type] = {tag: t for t, tag in _TAG_FOR_TYPE.items()}
#: Wire name -> message command (one: every message is a ``Raft`` box).
MESSAGE_COMMANDS_BY_NAME: Dict[bytes, Type[amp.Command]] = {RaftCommand.commandName: RaftCommand}

# tag, term, length of src; src, then u16 length of dst and dst follow.
_HEAD = struct.Struct(">BQH")
_U16 = struct.Struct(">H")
_Q = struct.Struct(">Q")
_QQ = struct.Struct(">QQ")
_QQB = struct.Struct(">QQB")
_QQQ = struct.Struct(">QQQ")
_BQQQ = struct.Struct(">BQQQ")
_BOOL = struct.Struct(">?")


def _id_bytes(name: str, value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"{name} of {len(data)} bytes does not fit")
    return data


def encode_binary(message: Message) -> bytes:
    """
    ``message`` as bytes: ``tag:u8 term:u64 src_len:u16 src dst_len:u16 dst``
    (ids UTF-8, integers big-endian) then its own fields, in the order of
    the dataclass, fixed-width first; a variable part (entries, a snapshot,
    a ReadIndex context) takes the rest of the buffer::

        PreVote            last_log_index:u64 last_log_term:u64
        PreVoteReply       granted:u8
        RequestVote        last_log_index:u64 last_log_term:u64 transfer:u8
        RequestVoteReply   granted:u8
        AppendEntries      prev_index:u64 prev_term:u64 commit:u64 entries (``Entries``: u32 count, then
                           index:u64 term:u64 kind:u8 length:u32 data per entry)
        AppendEntriesReply success:u8 index:u64 conflict_index:u64 conflict_term:u64
        Heartbeat          commit:u64 ctx
        HeartbeatReply     ctx
        InstallSnapshot    snapshot (``SnapshotArgument``: index:u64 term:u64 config_len:u32 config data)
        TimeoutNow         -
        ReadIndexRequest   ctx
        ReadIndexReply     index:u64 ctx
    """
    t = type(message)
    tag = _TAG_FOR_TYPE.get(t)
    if tag is None:
        raise TypeError(f"not a Raft message: {message!r}")
    if not 0 <= message.term <= _MAX_U64:
        raise ValueError(f"term out of range: {message.term}")
    src, dst = _id_bytes("src", message.src), _id_bytes("dst", message.dst)
    parts = [_HEAD.pack(tag, message.term, len(src)), src, _U16.pack(len(dst)), dst]
    if t is m.AppendEntries:
        parts += [_QQQ.pack(message.prev_index, message.prev_term, message.commit), _ENTRIES.toString(message.entries)]
    elif t is m.AppendEntriesReply:
        parts.append(_BQQQ.pack(bool(message.success), message.index, message.conflict_index, message.conflict_term))
    elif t is m.Heartbeat:
        parts += [_Q.pack(message.commit), bytes(message.ctx)]
    elif t is m.HeartbeatReply or t is m.ReadIndexRequest:
        parts.append(bytes(message.ctx))
    elif t is m.ReadIndexReply:
        parts += [_Q.pack(message.index), bytes(message.ctx)]
    elif t is m.PreVote:
        parts.append(_QQ.pack(message.last_log_index, message.last_log_term))
    elif t is m.RequestVote:
        parts.append(_QQB.pack(message.last_log_index, message.last_log_term, bool(message.transfer)))
    elif t is m.PreVoteReply or t is m.RequestVoteReply:
        parts.append(_BOOL.pack(bool(message.granted)))
    elif t is m.InstallSnapshot:
        parts.append(_SNAPSHOT.toString(message.snapshot))
    return b"".join(parts)


def _flag(value: int, name: str) -> bool:
    if value > 1:
        raise ValueError(f"{name}={value} is not a boolean")
    return bool(value)


def decode_binary(data: bytes) -> Message:
    """Inverse of :func:`encode_binary`; ``ValueError`` (or ``struct.error``) for anything malformed."""
    data = bytes(data)
    tag, term, src_len = _HEAD.unpack_from(data, 0)
    t = _TYPE_FOR_TAG.get(tag)
    if t is None:
        raise ValueError(f"unknown message tag {tag}")
    offset = _HEAD.size + src_len
    if len(data) < offset + _U16.size:
        raise ValueError("message truncated in its node ids")
    src = data[_HEAD.size : offset]
    (dst_len,) = _U16.unpack_from(data, offset)
    offset += _U16.size
    dst = data[offset : offset + dst_len]
    offset += dst_len
    if len(dst) != dst_len:
        raise ValueError("message truncated in its node ids")
    common = dict(term=term, src=src.decode("utf-8"), dst=dst.decode("utf-8"))
    rest = data[offset:]

    def fixed(layout: struct.Struct, exact: bool = True):
        if len(rest) < layout.size or (exact and len(rest) != layout.size):
            raise ValueError(f"{t.__name__} body of {len(rest)} bytes, not {layout.size}")
        return layout.unpack_from(rest, 0)

    if t is m.AppendEntries:
        prev_index, prev_term, commit = fixed(_QQQ, exact=False)
        return t(prev_index=prev_index, prev_term=prev_term, commit=commit,
                 entries=decode_entries(rest[_QQQ.size:]), **common)
    if t is m.AppendEntriesReply:
        success, index, conflict_index, conflict_term = fixed(_BQQQ)
        return t(success=_flag(success, "success"), index=index, conflict_index=conflict_index,
                 conflict_term=conflict_term, **common)
    if t is m.Heartbeat:
        (commit,) = fixed(_Q, exact=False)
        return t(commit=commit, ctx=rest[_Q.size:], **common)
    if t is m.HeartbeatReply or t is m.ReadIndexRequest:
        return t(ctx=rest, **common)
    if t is m.ReadIndexReply:
        (index,) = fixed(_Q, exact=False)
        return t(index=index, ctx=rest[_Q.size:], **common)
    if t is m.PreVote:
        last_log_index, last_log_term = fixed(_QQ)
        return t(last_log_index=last_log_index, last_log_term=last_log_term, **common)
    if t is m.RequestVote:
        last_log_index, last_log_term, transfer = fixed(_QQB)
        return t(last_log_index=last_log_index, last_log_term=last_log_term,
                 transfer=_flag(transfer, "transfer"), **common)
    if t is m.PreVoteReply or t is m.RequestVoteReply:
        (granted,) = fixed(struct.Struct(">B"))
        return t(granted=_flag(granted, "granted"), **common)
    if t is m.InstallSnapshot:
        return t(snapshot=_SNAPSHOT.fromString(rest), **common)
    if rest:  # TimeoutNow
        raise ValueError(f"{t.__name__} has {len(rest)} trailing bytes")
    return t(**common)


# ------------------------------------------------- request/response commands


class Chunk(amp.Command):
    """One slice of a blob too big for a single AMP value."""

    commandName = b"Chunk"
    arguments = [
        (b"blob_id", amp.Integer()),
        (b"seq", amp.Integer()),
        (b"last", amp.Boolean()),
        (b"data", amp.String()),
    ]
    requiresAnswer = False


class Hello(amp.Command):
    """First command on every connection: who is calling, from which cluster."""

    commandName = b"Hello"
    arguments = [
        (b"cluster_id", amp.Unicode()),
        (b"node_id", amp.Unicode()),
        (b"protocol_version", amp.Integer()),
        # Where the caller can be reached (an opaque member address).  A node
        # that has no configuration yet (a joiner) learns its peers from it.
        (b"address", amp.Unicode(optional=True)),
    ]
    # The answer names the listener so the caller can tell it reached the
    # node it meant to (addresses get reused).
    response = [
        (b"accepted", amp.Boolean()),
        (b"cluster_id", amp.Unicode()),
        (b"node_id", amp.Unicode()),
        (b"protocol_version", amp.Integer()),
    ]
    fatalErrors = {HelloRefused: b"HELLO_REFUSED"}


class Forward(amp.Command):
    """
    A follower hands an opaque client command to the leader.  A payload or
    result too big for one value travels as chunks sent just before, named
    by ``blob_id``/``result_blob``.
    """

    commandName = b"Forward"
    arguments = [(b"payload", amp.String()), (b"blob_id", amp.Integer(optional=True))]
    response = [(b"result", amp.String()), (b"result_blob", amp.Integer(optional=True))]
    errors = {ForwardError: b"FORWARD_ERROR"}


class ForwardBatch(amp.Command):
    """
    Several forwarded client commands in one box (``encode_forward_batch``),
    answered by one box of their outcomes in the same order
    (``encode_forward_outcomes``).  A follower under load forwards what its
    clients sent in one reactor turn at once: the leader then parses one box
    and answers one, where it took a box each way per command.  The outcomes
    travel as chunks named by ``results_blob`` when they are too big for one
    value; a batch itself always fits in one (``FORWARD_BATCH_BYTES``).
    """

    commandName = b"ForwardBatch"
    arguments = [(b"payloads", amp.String())]
    response = [(b"results", amp.String()), (b"results_blob", amp.Integer(optional=True))]
    errors = {ForwardError: b"FORWARD_ERROR"}


class Join(amp.Command):
    """A node asks to be added to the cluster (carried for the CLI)."""

    commandName = b"Join"
    arguments = [(b"node_id", amp.Unicode()), (b"address", amp.Unicode())]
    response = [(b"result", amp.String())]
    errors = {ForwardError: b"FORWARD_ERROR"}


# ------------------------------------------------------ forward batches

#: Most payload bytes in one ForwardBatch: it and its item headers stay under AMP's value cap.
FORWARD_BATCH_BYTES = 48 * 1024
#: A payload bigger than this is forwarded alone (``Forward``, chunked if need be).
FORWARD_BATCH_ITEM_BYTES = 8 * 1024
_OUTCOME_OK = 0
_OUTCOME_ERROR = 1
_U16 = struct.Struct(">H")


def encode_forward_batch(payloads) -> bytes:
    """A u32 count, then each payload as a u32 length and its bytes."""
    parts = [_U32.pack(len(payloads))]
    for payload in payloads:
        parts.append(_U32.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


def decode_forward_batch(value: bytes) -> List[bytes]:
    """Inverse of ``encode_forward_batch``; ``ValueError`` for a value that is not one."""
    view = memoryview(value)
    if len(view) < _U32.size:
        raise ValueError("forward batch shorter than its count")
    (count,) = _U32.unpack_from(view)
    offset = _U32.size
    if count * _U32.size > len(view) - offset:
        raise ValueError(f"forward batch too short for {count} payloads")
    payloads = []
    for _ in range(count):
        if len(view) - offset < _U32.size:
            raise ValueError("forward batch truncated in a length")
        (length,) = _U32.unpack_from(view, offset)
        offset += _U32.size
        if len(view) - offset < length:
            raise ValueError("forward batch truncated in a payload")
        payloads.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise ValueError(f"{len(view) - offset} bytes after the last payload of a forward batch")
    return payloads


def encode_forward_outcomes(outcomes) -> bytes:
    """
    A u32 count, then per outcome a u8 kind: 0 and a u32-length result, or 1,
    a u16-length error code and a u32-length UTF-8 message (a ``ForwardError``).
    """
    parts = [_U32.pack(len(outcomes))]
    for outcome in outcomes:
        if isinstance(outcome, ForwardError):
            code = outcome.code.value.encode("ascii")
            message = outcome.message.encode("utf-8")
            parts += [_U8.pack(_OUTCOME_ERROR), _U16.pack(len(code)), code, _U32.pack(len(message)), message]
        else:
            parts += [_U8.pack(_OUTCOME_OK), _U32.pack(len(outcome)), outcome]
    return b"".join(parts)


def decode_forward_outcomes(value: bytes) -> List[Any]:
    """Inverse of ``encode_forward_outcomes``: bytes or ``ForwardError`` each; ``ValueError`` if malformed."""
    view = memoryview(value)

    def take(n: int) -> memoryview:
        nonlocal offset
        if len(view) - offset < n:
            raise ValueError("forward outcomes truncated")
        offset += n
        return view[offset - n : offset]

    offset = 0
    (count,) = _U32.unpack(take(_U32.size))
    if count > len(view):  # every outcome takes at least one byte
        raise ValueError(f"forward outcomes too short for {count} outcomes")
    outcomes: List[Any] = []
    for _ in range(count):
        (kind,) = _U8.unpack(take(1))
        if kind == _OUTCOME_OK:
            (length,) = _U32.unpack(take(_U32.size))
            outcomes.append(bytes(take(length)))
        elif kind == _OUTCOME_ERROR:
            (length,) = _U16.unpack(take(_U16.size))
            code = bytes(take(length)).decode("ascii")
            (length,) = _U32.unpack(take(_U32.size))
            outcomes.append(ForwardError(code, bytes(take(length)).decode("utf-8", "replace")))
        else:
            raise ValueError(f"unknown forward outcome kind {kind}")
    if offset != len(view):
        raise ValueError(f"{len(view) - offset} bytes after the last forward outcome")
    return outcomes


# ------------------------------------------------------ message <-> AMP


def encode_message(message: Message) -> Tuple[bytes, Dict[bytes, bytes]]:
    """The wire name and the argument box of ``message`` (its value may exceed AMP's cap: see ``message_frames``)."""
    return RaftCommand.commandName, {b"m": encode_binary(message)}


def decode_message(name: bytes, strings: Mapping[bytes, bytes]) -> Message:
    """
    Inverse of :func:`encode_message` (other keys of the box, such as AMP's
    own ``_command``, are ignored).  Raises ``ProtocolViolation`` for an
    unknown command or a message that does not parse.
    """
    if name not in MESSAGE_COMMANDS_BY_NAME:
        raise ProtocolViolation(f"unknown message command {name!r}")
    try:
        message = decode_binary(strings[b"m"])
        _check_bounds(message)
    except Exception as e:
        raise ProtocolViolation(f"malformed {name.decode('ascii', 'replace')} box: {e!r}") from None
    return message


#: Message type -> the names of its integer fields (all terms or log indexes).
_INTEGER_FIELDS: Dict[type, Tuple[str, ...]] = {
    t: tuple(f.name for f in dataclasses.fields(t) if f.type in ("int", int)) for t in _TAG_FOR_TYPE
}
assert MAX_TERM == MAX_INDEX  # one bound for both kinds of field


def _check_bounds(message: Message) -> None:
    """Raise ``ValueError`` for an integer outside ``[0, MAX_TERM]`` or a node id that is empty or too long."""
    for name in _INTEGER_FIELDS[type(message)]:
        value = getattr(message, name)
        if not 0 <= value <= MAX_TERM:
            raise ValueError(f"{name}={value} is outside [0, {MAX_TERM}]")
    for name in ("src", "dst"):
        value = getattr(message, name)
        if not 0 < len(value) <= MAX_NODE_ID_LENGTH:
            raise ValueError(f"{name} of {len(value)} characters is outside [1, {MAX_NODE_ID_LENGTH}]")


def fits_in_one_box(strings: Mapping[bytes, bytes]) -> bool:
    return all(len(v) <= MAX_VALUE_LENGTH for v in strings.values())


# ---------------------------------------------------------------- blobs


def pack_message_blob(name: bytes, strings: Mapping[bytes, bytes]) -> bytes:
    """A box as one blob: kind, name, then (u8 key length, key, u32 value length, value)*."""
    parts = [_U8.pack(BLOB_MESSAGE), _U8.pack(len(name)), name]
    for key, value in strings.items():
        parts += [_U8.pack(len(key)), key, _U32.pack(len(value)), value]
    return b"".join(parts)


def pack_bytes_blob(data: bytes) -> bytes:
    return _U8.pack(BLOB_BYTES) + data


def unpack_blob(blob: bytes) -> Tuple[int, Optional[bytes], Any]:
    """
    ``(BLOB_MESSAGE, name, strings)`` or ``(BLOB_BYTES, None, data)``;
    raises ``ProtocolViolation`` if the blob is malformed.
    """
    if not blob:
        raise ProtocolViolation("empty blob")
    kind = blob[0]
    if kind == BLOB_BYTES:
        return kind, None, blob[1:]
    if kind != BLOB_MESSAGE:
        raise ProtocolViolation(f"unknown blob kind {kind}")
    view = memoryview(blob)
    try:
        name_len = view[1]
        name = bytes(view[2 : 2 + name_len])
        if len(name) != name_len:
            raise IndexError
        offset = 2 + name_len
        strings: Dict[bytes, bytes] = {}
        while offset < len(blob):
            key_len = view[offset]
            key = bytes(view[offset + 1 : offset + 1 + key_len])
            offset += 1 + key_len
            (value_len,) = _U32.unpack_from(blob, offset)
            offset += _U32.size
            value = bytes(view[offset : offset + value_len])
            if len(key) != key_len or len(value) != value_len:
                raise IndexError
            offset += value_len
            strings[key] = value
    except (IndexError, struct.error):
        raise ProtocolViolation("truncated message blob") from None
    return kind, name, strings


def chunk_arguments(blob_id: int, blob: bytes) -> Iterator[Dict[str, Any]]:
    """The ``Chunk`` keyword arguments that carry ``blob``, in order."""
    count = max(1, -(-len(blob) // CHUNK_DATA_SIZE))
    for seq in range(count):
        yield {
            "blob_id": blob_id,
            "seq": seq,
            "last": seq == count - 1,
            "data": blob[seq * CHUNK_DATA_SIZE : (seq + 1) * CHUNK_DATA_SIZE],
        }


Frame = Tuple[bytes, amp.AmpBox]


def message_frames(message: Message, blob_id: int) -> List[Frame]:
    """
    The boxes (wire name, serialized arguments) that carry ``message``: one
    box of its own command when it fits, else ``Chunk`` boxes for ``blob_id``
    (which the caller then must not reuse on this connection).
    """
    name, strings = encode_message(message)
    if fits_in_one_box(strings):
        return [(name, strings)]
    return bytes_frames(pack_message_blob(name, strings), blob_id)


def bytes_frames(blob: bytes, blob_id: int) -> List[Frame]:
    """``Chunk`` boxes carrying an already packed blob."""
    return [(Chunk.commandName, Chunk.makeArguments(kw, None)) for kw in chunk_arguments(blob_id, blob)]


# ------------------------------------------------------------ reassembly


class ChunkAssembler:
    """
    Stages the chunks of one connection's incoming blobs.

    A blob's chunks arrive in order (one TCP stream) but may interleave with
    other blobs' chunks.  The bytes held at once - partial blobs plus complete
    raw-bytes blobs not yet claimed by a Forward - are bounded; breaking the
    bound, or sending chunks out of order, raises ``ProtocolViolation`` and
    the caller drops the connection.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_STAGED_BYTES, max_blobs: int = DEFAULT_MAX_STAGED_BLOBS):
        self.max_bytes = max_bytes
        self.max_blobs = max_blobs
        self._partial: Dict[int, Tuple[int, List[bytes]]] = {}  # blob_id -> (next seq, parts)
        self._held: Dict[int, bytes] = {}
        self.staged_bytes = 0

    def add(self, blob_id: int, seq: int, last: bool, data: bytes) -> Optional[bytes]:
        """Stage one chunk; return the whole blob when ``last`` completes it."""
        if blob_id in self._held:
            raise ProtocolViolation(f"chunk for blob {blob_id}, which is already complete")
        expected, parts = self._partial.get(blob_id, (0, []))
        if seq != expected:
            raise ProtocolViolation(f"chunk {seq} of blob {blob_id} where chunk {expected} was due")
        if self.staged_bytes + len(data) > self.max_bytes:
            raise ProtocolViolation(
                f"staging blob {blob_id} would hold {self.staged_bytes + len(data)} bytes, "
                f"over the {self.max_bytes}-byte limit"
            )
        if seq == 0 and len(self._partial) + len(self._held) >= self.max_blobs:
            raise ProtocolViolation(f"more than {self.max_blobs} blobs staged at once")
        parts.append(bytes(data))
        self.staged_bytes += len(data)
        if not last:
            self._partial[blob_id] = (seq + 1, parts)
            return None
        self._partial.pop(blob_id, None)
        blob = b"".join(parts)
        self.staged_bytes -= len(blob)
        return blob

    def hold(self, blob_id: int, data: bytes) -> None:
        """Keep a complete raw-bytes blob until a Forward (or its answer) claims it."""
        if self.staged_bytes + len(data) > self.max_bytes:
            raise ProtocolViolation(f"holding blob {blob_id} would exceed the {self.max_bytes}-byte limit")
        self._held[blob_id] = data
        self.staged_bytes += len(data)

    def claim(self, blob_id: int) -> bytes:
        try:
            data = self._held.pop(blob_id)
        except KeyError:
            raise ProtocolViolation(f"no complete blob {blob_id} to claim") from None
        self.staged_bytes -= len(data)
        return data

    def clear(self) -> None:
        self._partial.clear()
        self._held.clear()
        self.staged_bytes = 0


class MessageDecoder:
    """
    Turns the boxes received on one connection back into Raft messages:
    feed it each message box or chunk; it returns a message when one is
    complete.  Raw-bytes blobs (Forward payloads/results) are held in the
    assembler for :meth:`ChunkAssembler.claim`.
    """

    def __init__(self, assembler: Optional[ChunkAssembler] = None):
        self.assembler = assembler if assembler is not None else ChunkAssembler()

    def message_box(self, name: bytes, strings: Mapping[bytes, bytes]) -> Message:
        return decode_message(name, strings)

    def chunk(self, blob_id: int, seq: int, last: bool, data: bytes) -> Optional[Message]:
        blob = self.assembler.add(blob_id, seq, last, data)
        if blob is None:
            return None
        kind, name, payload = unpack_blob(blob)
        if kind == BLOB_BYTES:
            self.assembler.hold(blob_id, payload)
            return None
        return decode_message(name, payload)
