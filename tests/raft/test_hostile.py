"""
The core refuses what a buggy or hostile peer sends (kvd.raft.core ``step``):
terms and indexes beyond the bound, TimeoutNow from anyone but the current
leader, transfer votes that cannot answer a TimeoutNow, appends from a second
"leader" of a term.  Each refusal is counted in ``status()["refused"]`` and
changes nothing; the cluster keeps committing.
"""

import pytest

from kvd.raft.messages import (
    MAX_INDEX,
    MAX_TERM,
    MAX_TERM_JUMP,
    HardState,
    AppendEntries,
    AppendEntriesReply,
    Configuration,
    Entry,
    EntryKind,
    Heartbeat,
    InstallSnapshot,
    PreVote,
    ReadIndexReply,
    RequestVote,
    Role,
    Snapshot,
    TimeoutNow,
)
from tests.raft.harness import Env


def state(env):
    return {i: (n.core.term, n.core.vote, n.core.role, n.core.leader, n.core.log.last_index()) for i, n in env.nodes.items()}


def still_works(env, leader="a"):
    """The leader commits a new entry on every node."""
    env.core(leader).propose(b"after")
    env.deliver()
    env.tick(3)
    for node in env.nodes.values():
        assert node.applied[-1][1] == b"after", node.id
    assert env.leaders() == [leader]


@pytest.mark.parametrize("term", [MAX_TERM + 1, 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 100])
def test_a_vote_with_a_term_beyond_the_bound_is_refused_everywhere(term):
    """The forged RequestVote that used to brick a cluster (its term + 1 cannot be stored) changes nothing."""
    env = Env()
    env.elect("a")
    before = state(env)
    for dst in "abc":
        for transfer in (False, True):
            env.core(dst).step(RequestVote(term, "b", dst, MAX_INDEX, term, transfer))
            env.core(dst).step(PreVote(term, "b", dst, 1, 1))
    env.deliver()
    assert state(env) == before
    for dst in "abc":
        assert env.core(dst).status()["refused"]["malformed"] == 4
        assert env.core(dst).last_refused == ("malformed", "PreVote", "b", "out of range")
    still_works(env)


def test_every_integer_field_is_bounded():
    """Out-of-range values in any field, an entry or a snapshot are refused before they touch state."""
    env = Env()
    env.elect("a")
    a_term = env.core("a").term
    before = state(env)
    big = MAX_INDEX + 1
    b = env.core("b")
    forged = [
        AppendEntries(a_term, "a", "b", 1, 1, (), big),
        AppendEntries(a_term, "a", "b", big, 1, (), 0),
        AppendEntries(a_term, "a", "b", 0, big, (), 0),
        AppendEntries(a_term, "a", "b", MAX_INDEX, 1, (Entry(big, 1),), 0),
        AppendEntries(a_term, "a", "b", 1, -1, (), 0),
        Heartbeat(a_term, "a", "b", big),
        Heartbeat(a_term, "a", "b", -5),
        InstallSnapshot(a_term, "a", "b", Snapshot(big, 1)),
        ReadIndexReply(a_term, "a", "b", b"x", big),
        AppendEntriesReply(a_term, "a", "b", False, 1, big, 1),
        RequestVote(1.5, "c", "b", 1, 1),
        Heartbeat(a_term, "", "b", 0),
        Heartbeat(a_term, "a" * 1000, "b", 0),
        Heartbeat(a_term, "a", "b", 0, b"x" * 5000),
        AppendEntries(a_term, "a", "b", 1, 1, (Entry(2, a_term, EntryKind.CONFIG, b"{not json"),), 0),
        AppendEntries(a_term, "a", "b", 1, 1, (Entry(2, a_term, EntryKind.CONFIG, b"[1, 2]"),), 0),
    ]
    for m in forged:
        b.step(m)
        assert not b.has_ready() or state(env) == before, m
    env.deliver()
    assert state(env) == before
    assert b.status()["refused"] == {"malformed": len(forged)}
    still_works(env)


def test_a_term_at_the_bound_is_storable_and_accepted():
    """The bound itself is a valid term (out of the lease, within a jump): the node adopts it."""
    env = Env()
    node = env.nodes["c"]
    node.hard_state = HardState(MAX_TERM - 3, None, 0)
    node.restart()
    c = env.core("c")
    for _ in range(env.options.election_ticks):
        c.tick()  # past the promise a restart keeps (it may have acknowledged a leader before it stopped)
    c.step(RequestVote(MAX_TERM, "b", "c", 1, 1))
    assert c.term == MAX_TERM and c.vote == "b"
    env.deliver()
    assert env.nodes["c"].hard_state.term == MAX_TERM


def test_one_message_cannot_take_a_node_more_than_2_32_terms_ahead():
    """An in-range term just under the bound, sent once, would leave no term to elect a leader in: refused."""
    env = Env()
    env.elect("a")
    env.isolate("a")  # b and c out of the lease: they would take a plain vote
    env.tick(30, only=("b", "c"))
    env.heal()
    b = env.core("b")
    term = b.term
    for m in (
        RequestVote(MAX_TERM, "c", "b", 1 << 40, MAX_TERM),
        Heartbeat(term + MAX_TERM_JUMP + 1, "c", "b", 0),
        AppendEntriesReply(MAX_TERM - 1, "c", "b", False, 0),
    ):
        b.step(m)
    assert b.term == term and b.status()["refused"] == {"term_jump": 3}
    b.step(Heartbeat(term + MAX_TERM_JUMP, "c", "b", 0))  # the jump itself is allowed
    assert b.term == term + MAX_TERM_JUMP


def test_timeout_now_only_from_the_current_leader_of_the_current_term():
    env = Env()
    env.elect("a")
    term = env.core("a").term
    before = state(env)
    env.core("b").step(TimeoutNow(term, "c", "b"))  # not our leader
    env.core("b").step(TimeoutNow(term + 1, "a", "b"))  # a term we are not in (not even adopted)
    env.core("b").step(TimeoutNow(term + 7, "c", "b"))
    env.core("a").step(TimeoutNow(term, "b", "a"))  # to the leader itself
    env.core("c").step(TimeoutNow(term - 1, "a", "c"))  # stale: ignored, not counted
    env.deliver()
    assert state(env) == before
    assert env.core("b").status()["refused"] == {"timeout_now": 3}
    assert env.core("a").status()["refused"] == {"timeout_now": 1}
    assert env.core("c").status()["refused"] == {}
    still_works(env)
    # The real one still works: from the leader, in its term.
    env.core("b").step(TimeoutNow(env.core("a").term, "a", "b"))
    env.deliver()
    assert env.leaders() == ["b"]


def test_a_forged_transfer_vote_does_not_depose_the_leader():
    """The leader honours a transfer vote only from the target it sent TimeoutNow to."""
    env = Env()
    env.elect("a")
    term = env.core("a").term
    last = env.core("a").log.last_index()
    env.core("a").step(RequestVote(term + 1, "c", "a", last + 100, term, True))
    env.deliver()
    assert env.leaders() == ["a"] and env.core("a").term == term
    assert env.core("a").status()["refused"] == {"transfer_vote": 1}
    still_works(env)


def test_followers_honour_a_transfer_vote_only_as_the_answer_to_a_timeout_now():
    """Within the leader lease a follower takes a transfer vote only of term + 1, from a voter, with a full log."""
    env = Env(ids=("a", "b", "c", "d", "e"))
    env.elect("a")
    term = env.core("a").term
    last, last_term = env.core("b").log.last_index(), env.core("b").log.last_term()
    before = state(env)
    b = env.core("b")
    b.step(RequestVote(term + 2, "c", "b", last, last_term, True))  # skips a term
    b.step(RequestVote(term + 1, "x", "b", last, last_term, True))  # not a voter
    b.step(RequestVote(term + 1, "c", "b", last - 1, last_term, True))  # a shorter log
    b.step(RequestVote(term + 1, "c", "b", last, last_term))  # no transfer: the lease holds (not counted)
    env.deliver()
    assert state(env) == before
    assert b.status()["refused"] == {"transfer_vote": 3}
    still_works(env)
    # A real transfer in a five-node cluster: followers grant the target's vote within their lease.
    env.core("a").transfer_leadership("d")
    env.deliver()
    assert env.leaders() == ["d"]
    assert env.core("d").term == term + 1


def test_appends_only_from_the_leader_of_their_term():
    """Once a node knows its term's leader, appends, heartbeats and snapshots from another are dropped."""
    env = Env()
    env.elect("a")
    term = env.core("a").term
    last = env.core("b").log.last_index()
    before = state(env)
    applied_b = list(env.nodes["b"].applied)
    b = env.core("b")
    b.step(AppendEntries(term, "c", "b", last, term, (Entry(last + 1, term, EntryKind.NORMAL, b"evil"),), last + 1))
    b.step(Heartbeat(term, "c", "b", last))
    config = Configuration.make(voters=("a", "b", "c"))
    b.step(InstallSnapshot(term, "c", "b", Snapshot(last + 5, term, config, b"")))
    b.step(ReadIndexReply(term, "c", "b", b"r", 1))  # a read index only the leader may give
    env.core("a").step(AppendEntries(term, "c", "a", last, term, (), 0))  # to the leader itself
    env.deliver()
    assert state(env) == before and env.nodes["b"].applied == applied_b and env.nodes["b"].read_states == []
    assert b.status()["refused"] == {"second_leader": 4}
    assert env.core("a").status()["refused"] == {"second_leader": 1}
    still_works(env)
    assert b"evil" not in [d for _, d in env.nodes["b"].applied]


def test_a_candidate_still_accepts_the_winner_of_its_term():
    """No leader known yet: the first append of the term is the winner's (Raft §5.2), not refused."""
    env = Env()
    env.elect("a")
    env.isolate("c")
    env.core("c").campaign()  # term + 1, alone
    env.deliver()
    env.heal()
    c = env.core("c")
    assert c.role is Role.CANDIDATE and c.leader is None
    c.step(Heartbeat(c.term, "b", "c", 0))
    assert c.leader == "b" and c.status()["refused"] == {}


def test_an_acknowledgement_beyond_the_leaders_log_is_refused():
    """A follower cannot hold what the leader never had: such a reply moves neither its progress nor the commit index."""
    env = Env()
    env.elect("a")
    a = env.core("a")
    last, commit, match = a.log.last_index(), a.commit, a.progress["b"].match
    a.step(AppendEntriesReply(a.term, "b", "a", True, last + 1000))
    a.step(AppendEntriesReply(a.term, "b", "a", False, MAX_INDEX, 1, 1))
    assert a.progress["b"].match == match and a.commit == commit
    assert a.status()["refused"] == {"beyond_log": 2}
    still_works(env)
