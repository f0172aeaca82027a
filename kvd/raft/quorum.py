# -*- test-case-name: tests.raft.test_quorum -*-
"""
Quorum arithmetic (etcd-io/raft's ``quorum/`` package, for the one kind of
configuration kvd has: a single set of voters, changed one voter at a time,
so there are no joint quorums).

Every safety argument of Raft rests on one fact: any two majorities of the
same voters share at least one voter.  A leader is elected by a majority, an
entry is committed once a majority holds it, a read is served once a
majority has confirmed the leader; the shared voter is what carries the
knowledge from one of those decisions to the next.  Learners hold the log
but are never counted: the core passes only ``Configuration.voters`` here.

Everything here is a pure function of its arguments, so it can be tested on
its own and the core's decisions read as "is this a quorum?".

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import enum
from typing import Container, Hashable, Iterable, Mapping, Sequence


def majority(voters: int) -> int:
    """
    The smallest number of voters out of ``voters`` that forms a quorum:
    more than half, so that two quorums always intersect (1 of 1, 2 of 3,
    3 of 4, 3 of 5).  An even number of voters tolerates no more failures
    than one voter fewer, which is why clusters have an odd size.
    """
    return voters // 2 + 1


def has_quorum(voters: Iterable[Hashable], acked: Container[Hashable]) -> bool:
    """
    Have a quorum of ``voters`` acknowledged (are in ``acked``)?  Members of
    ``acked`` that are not voters (learners, removed nodes) do not count.
    With no voters there is no quorum.
    """
    voters = list(voters)
    return sum(1 for v in voters if v in acked) >= majority(len(voters))


def quorum_index(matches: Sequence[int]) -> int:
    """
    The highest log index that a quorum of voters holds, given each voter's
    match index (one number per voter, in any order): sorted from the
    highest, the ``majority``-th one.  That many voters hold it or more, so
    it is the commit index the matches allow (the leader still checks its
    term, Raft §5.4.2).  0 with no voters.
    """
    if not matches:
        return 0
    return sorted(matches, reverse=True)[majority(len(matches)) - 1]


class VoteResult(enum.Enum):
    """The outcome of an election (or pre-vote) tally so far."""

    WON = "won"  # a quorum of voters granted
    LOST = "lost"  # so many refused that a quorum of grants can no longer be reached
    PENDING = "pending"  # neither yet: wait for more replies (or the election timeout)


def vote_result(voters: Sequence[Hashable], votes: Mapping[Hashable, bool]) -> VoteResult:
    """
    Tally ``votes`` (node -> granted) among ``voters``; votes of nodes that
    are not voters are ignored.  LOST as soon as the refusals make a quorum
    of grants impossible, so a candidate that cannot win steps back at once
    instead of waiting for its election timeout.  With no voters a
    candidate can never win, hence LOST.
    """
    q = majority(len(voters))
    yes = sum(1 for v in voters if votes.get(v) is True)
    no = sum(1 for v in voters if votes.get(v) is False)
    if yes >= q:
        return VoteResult.WON
    if no > len(voters) - q:
        return VoteResult.LOST
    return VoteResult.PENDING
