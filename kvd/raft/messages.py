# -*- test-case-name: tests.raft.test_core -*-
"""
The vocabulary of the Raft core: log entries, hard state, configurations,
snapshots and the one-way messages that cores exchange.

Everything here is a frozen dataclass so that a message, once handed to the
network (real or simulated), cannot be changed by its sender.  Messages are
one-way, as in etcd-io/raft: a reply is simply another message.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from kvd.raft.quorum import majority

NodeId = str

#: Terms and log indexes are bounded: every one a message carries must be
#: ``<= MAX_TERM`` / ``<= MAX_INDEX`` (2^62 - 1), or the message is refused by
#: the wire decoder (kvd.wire.codec) and by the core (``RaftCore.step``) before
#: it touches any state.  Storage and the codec hold unsigned 64-bit values;
#: the bound keeps a wide margin under that, so that no term or index the core
#: derives from an accepted one (a campaign's ``term + 1``, ``index + 1``) can
#: ever be one that cannot be persisted.  2^62 elections or entries do not
#: happen: a value beyond it is a bug or an attack.
MAX_TERM = (1 << 62) - 1
MAX_INDEX = (1 << 62) - 1
#: How far past its own term a node lets one message take it (``RaftCore.step``
#: refuses more).  Terms grow by about one per election timeout, so no real
#: peer is ever 2^32 terms ahead; without this limit a single message with a
#: term just under ``MAX_TERM`` would bring a node to the last term there is.
MAX_TERM_JUMP = 1 << 32
#: Node ids in messages: non-empty and at most this many characters.
MAX_NODE_ID_LENGTH = 255


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"


class EntryKind(enum.IntEnum):
    NORMAL = 0  # an opaque command for the state machine
    NOOP = 1  # appended by every new leader, commits the entries of earlier terms
    CONFIG = 2  # a new cluster configuration (Configuration.encode())


@dataclass(frozen=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Bytes this entry costs in a batch; used to bound messages."""
        return len(self.data) + 24


@dataclass(frozen=True)
class HardState:
    """What must be durable before the core's messages leave the node."""

    term: int = 0
    vote: Optional[NodeId] = None
    commit: int = 0


@dataclass(frozen=True)
class Configuration:
    """
    The members of the cluster.  Voters count toward quorums; learners receive
    the log but do not vote.  ``addresses`` maps a node id to an opaque address
    string that only the transport interprets.
    """

    voters: Tuple[NodeId, ...] = ()
    learners: Tuple[NodeId, ...] = ()
    addresses: Tuple[Tuple[NodeId, str], ...] = ()

    @classmethod
    def make(cls, voters=(), learners=(), addresses=None) -> "Configuration":
        addresses = dict(addresses or {})
        members = set(voters) | set(learners)
        return cls(
            voters=tuple(sorted(set(voters))),
            learners=tuple(sorted(set(learners) - set(voters))),
            addresses=tuple(sorted((k, v) for k, v in addresses.items() if k in members)),
        )

    @property
    def members(self) -> Tuple[NodeId, ...]:
        return tuple(sorted(set(self.voters) | set(self.learners)))

    def address_of(self, node: NodeId) -> Optional[str]:
        return dict(self.addresses).get(node)

    def is_voter(self, node: NodeId) -> bool:
        return node in self.voters

    def quorum(self) -> int:
        """How many voters make a majority (kvd.raft.quorum.majority)."""
        return majority(len(self.voters))

    def with_learner(self, node: NodeId, address: str) -> "Configuration":
        addrs = dict(self.addresses)
        addrs[node] = address
        return Configuration.make(self.voters, set(self.learners) | {node}, addrs)

    def with_voter(self, node: NodeId) -> "Configuration":
        return Configuration.make(set(self.voters) | {node}, set(self.learners) - {node}, dict(self.addresses))

    def without(self, node: NodeId) -> "Configuration":
        return Configuration.make(set(self.voters) - {node}, set(self.learners) - {node}, dict(self.addresses))

    def encode(self) -> bytes:
        return json.dumps(
            {"voters": list(self.voters), "learners": list(self.learners), "addresses": dict(self.addresses)},
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Configuration":
        d = json.loads(data.decode())
        return cls.make(d["voters"], d["learners"], d.get("addresses", {}))


@dataclass(frozen=True)
class Snapshot:
    """The state machine's state as of ``index``, with the configuration then in force."""

    index: int = 0
    term: int = 0
    config: Configuration = field(default_factory=Configuration)
    data: bytes = b""


@dataclass(frozen=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``."""

    index: int
    ctx: bytes


# ---------------------------------------------------------------- messages
# Every message carries the sender's term and both ends.  ``term`` of a
# PreVote is the term the sender *would* campaign in; it is not adopted.


@dataclass(frozen=True)
class PreVote:
    term: int
    src: NodeId
    dst: NodeId
    last_log_index: int
    last_log_term: int


@dataclass(frozen=True)
class PreVoteReply:
    term: int
    src: NodeId
    dst: NodeId
    granted: bool


@dataclass(frozen=True)
class RequestVote:
    term: int
    src: NodeId
    dst: NodeId
    last_log_index: int
    last_log_term: int
    transfer: bool = False  # sent after TimeoutNow: overrides the leader-stickiness check


@dataclass(frozen=True)
class RequestVoteReply:
    term: int
    src: NodeId
    dst: NodeId
    granted: bool


@dataclass(frozen=True)
class AppendEntries:
    term: int
    src: NodeId
    dst: NodeId
    prev_index: int
    prev_term: int
    entries: Tuple[Entry, ...]
    commit: int


@dataclass(frozen=True)
class AppendEntriesReply:
    term: int
    src: NodeId
    dst: NodeId
    success: bool
    # On success: the index of the last entry now known to match the leader's.
    # On failure: the index the leader tried (prev_index) so stale rejections can be told apart.
    index: int
    # Fast backtracking hints on failure (thesis §5.3 optimisation).
    conflict_index: int = 0
    conflict_term: int = 0


@dataclass(frozen=True)
class Heartbeat:
    term: int
    src: NodeId
    dst: NodeId
    commit: int
    ctx: bytes = b""  # a ReadIndex round id; echoed in the reply


@dataclass(frozen=True)
class HeartbeatReply:
    term: int
    src: NodeId
    dst: NodeId
    ctx: bytes = b""


@dataclass(frozen=True)
class InstallSnapshot:
    """The whole snapshot; the transport splits it into chunks on the wire."""

    term: int
    src: NodeId
    dst: NodeId
    snapshot: Snapshot


@dataclass(frozen=True)
class TimeoutNow:
    term: int
    src: NodeId
    dst: NodeId


@dataclass(frozen=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index on behalf of its client."""

    term: int
    src: NodeId
    dst: NodeId
    ctx: bytes


@dataclass(frozen=True)
class ReadIndexReply:
    term: int
    src: NodeId
    dst: NodeId
    ctx: bytes
    index: int  # 0 means the leader refused (e.g. it is not sure it leads)


MESSAGE_TYPES = (
    PreVote,
    PreVoteReply,
    RequestVote,
    RequestVoteReply,
    AppendEntries,
    AppendEntriesReply,
    Heartbeat,
    HeartbeatReply,
    InstallSnapshot,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexReply,
)

Message = Union[MESSAGE_TYPES]  # type: ignore[valid-type]
