"""
RaftSettings.defer_commit_notice: a leader tells the followers that hold its
whole log of a new commit index with the next append (or heartbeat), or when
the embedder calls ``send_commit_notice``; not with an empty append at once.
"""

from kvd.raft.core import RaftSettings
from kvd.raft.messages import AppendEntries, AppendEntriesReply
from tests.raft.harness import Env


def sent_while_delivering(env):
    seen = []
    env.deliver(drop=lambda m: seen.append(m) and False)
    return seen


def leader_env(defer=True):
    env = Env(options=RaftSettings(election_ticks=10, heartbeat_ticks=3, defer_commit_notice=defer))
    env.elect("a")
    env.deliver()
    return env


def empty_appends(messages):
    return [m for m in messages if isinstance(m, AppendEntries) and not m.entries]


def test_a_commit_goes_with_the_next_append_not_an_empty_one():
    env = leader_env()
    leader = env.core("a")
    index = leader.propose(b"one")[1]
    seen = sent_while_delivering(env)
    assert leader.commit == index
    assert empty_appends(seen) == []  # no empty append (and no acknowledgement of one)
    assert leader.commit_notice_pending
    assert all(env.core(f).commit < index for f in "bc")  # the followers do not know yet
    second = leader.propose(b"two")[1]
    seen = sent_while_delivering(env)
    carried = [m for m in seen if isinstance(m, AppendEntries) and m.entries and m.entries[0].index == second]
    assert carried and all(m.commit >= index for m in carried)  # the next append carries the first commit
    assert all(env.core(f).commit >= index for f in "bc")


def test_the_embedders_timer_sends_a_commit_no_append_carried():
    env = leader_env()
    leader = env.core("a")
    index = leader.propose(b"one")[1]
    env.deliver()
    assert leader.commit_notice_pending and all(env.core(f).commit < index for f in "bc")
    leader.send_commit_notice()
    seen = sent_while_delivering(env)
    assert {m.dst for m in empty_appends(seen)} == {"b", "c"}
    assert all(env.core(f).commit == index for f in "bc")
    assert not leader.commit_notice_pending
    leader.send_commit_notice()  # nothing pending: nothing sent
    assert empty_appends(sent_while_delivering(env)) == []


def test_a_heartbeat_carries_it_too():
    env = leader_env()
    leader = env.core("a")
    index = leader.propose(b"one")[1]
    env.deliver()
    env.tick(3, only={"a"})  # the heartbeat interval
    assert all(env.core(f).commit == index for f in "bc")


def test_without_the_setting_the_commit_is_sent_at_once():
    env = leader_env(defer=False)
    leader = env.core("a")
    index = leader.propose(b"one")[1]
    seen = sent_while_delivering(env)
    assert {m.dst for m in empty_appends(seen)} == {"b", "c"}
    assert len([m for m in seen if isinstance(m, AppendEntriesReply)]) == 4  # each follower acknowledges twice
    assert not leader.commit_notice_pending and all(env.core(f).commit == index for f in "bc")
