"""
Quorum arithmetic (kvd.raft.quorum): majorities, the index a quorum holds,
and the vote tally.  kvd has a single set of voters (no joint
configurations); learners are never passed in, and nodes outside the voters
are ignored, which the tests below check.
"""

import pytest

from kvd.raft.messages import Configuration
from kvd.raft.quorum import VoteResult, has_quorum, majority, quorum_index, vote_result


@pytest.mark.parametrize("voters, q", [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_majority_is_more_than_half(voters, q):
    """A quorum is more than half the voters, so any two quorums share a voter."""
    assert majority(voters) == q
    if voters:
        assert 2 * q > voters and 2 * (q - 1) <= voters


def test_configuration_quorum_counts_voters_only():
    """Configuration.quorum is the majority of its voters; learners do not count."""
    assert Configuration.make(voters=("a", "b", "c"), learners=("d", "e")).quorum() == 2
    assert Configuration.make(voters=("a",), learners=("b", "c", "d")).quorum() == 1


def test_has_quorum_counts_only_voters():
    """Acknowledgements from learners or removed nodes do not make a quorum."""
    voters = ("a", "b", "c")
    assert has_quorum(voters, {"a", "b"})
    assert not has_quorum(voters, {"a"})
    assert not has_quorum(voters, {"a", "learner", "gone"})
    assert has_quorum(("a",), {"a"})
    assert not has_quorum(("a", "b"), {"a"})  # two voters need both


def test_no_voters_is_never_a_quorum():
    """With no voters nothing is decided: no quorum, index 0, an election is lost."""
    assert not has_quorum((), {"a"})
    assert quorum_index([]) == 0
    assert vote_result((), {"a": True}) is VoteResult.LOST


@pytest.mark.parametrize(
    "matches, index",
    [
        ([5], 5),
        ([5, 3], 3),  # two voters: both must hold it
        ([5, 3, 1], 3),
        ([1, 5, 3], 3),  # order does not matter
        ([7, 7, 0], 7),
        ([9, 8, 2, 1], 2),  # four voters: three must hold it
        ([9, 8, 7, 2, 1], 7),
        ([0, 0, 0], 0),
    ],
)
def test_quorum_index_is_held_by_a_majority(matches, index):
    """The quorum index is the highest index at least a majority of match indexes reach."""
    assert quorum_index(matches) == index
    assert sum(1 for m in matches if m >= index) >= majority(len(matches))
    assert sum(1 for m in matches if m > index) < majority(len(matches))


def test_vote_tally():
    """WON with a quorum of grants, LOST once a quorum of grants is impossible, PENDING in between."""
    voters = ("a", "b", "c")
    assert vote_result(voters, {"a": True}) is VoteResult.PENDING
    assert vote_result(voters, {"a": True, "b": True}) is VoteResult.WON
    assert vote_result(voters, {"a": True, "b": False}) is VoteResult.PENDING
    assert vote_result(voters, {"a": True, "b": False, "c": False}) is VoteResult.LOST
    assert vote_result(("a",), {"a": True}) is VoteResult.WON
    five = ("a", "b", "c", "d", "e")
    assert vote_result(five, {"a": True, "b": False, "c": False}) is VoteResult.PENDING
    assert vote_result(five, {"a": True, "b": False, "c": False, "d": False}) is VoteResult.LOST


def test_vote_tally_ignores_non_voters():
    """Grants from learners or nodes outside the configuration do not elect anyone."""
    voters = ("a", "b", "c")
    assert vote_result(voters, {"a": True, "learner": True, "other": True}) is VoteResult.PENDING
    assert vote_result(voters, {"a": True, "learner": False, "other": False}) is VoteResult.PENDING


def test_a_node_outside_the_configuration_campaigns_without_its_own_vote():
    """A removed leader still campaigning (thesis §4.2.2) needs a quorum of the others."""
    voters = ("b", "c")
    assert vote_result(voters, {"a": True, "b": True}) is VoteResult.PENDING
    assert vote_result(voters, {"a": True, "b": True, "c": True}) is VoteResult.WON
