"""
Lease reads (RaftSettings.lease_reads; thesis §6.4.1) rule by rule: a leader
that holds a lease answers a read at once; it falls back to a ReadIndex
round when the lease has lapsed, while a leadership transfer is under way or
after a TimeoutNow of its term, and (as ReadIndex) before an entry of its term
has committed; every node keeps the promise the lease stands on, across a
term change and a restart, whether it has the option or not.  The simulator
runs them under faults (tests/sim/test_lease_reads.py).
"""

import pytest

from kvd.raft.core import RaftSettings
from kvd.raft.messages import (
    AppendEntriesReply,
    Heartbeat,
    HeartbeatReply,
    PreVoteReply,
    ReadIndexReply,
    RequestVote,
    RequestVoteReply,
    Role,
    TimeoutNow,
)
from kvd.raft.read_only import stamp, unstamp
from tests.raft.harness import Env
from tests.sim.mutations import promise_kept_only_with_lease_reads

ELECTION = 10
LEASE = ELECTION - 2


def lease_opts(**kw) -> RaftSettings:
    return RaftSettings(**dict(dict(election_ticks=ELECTION, heartbeat_ticks=1, lease_reads=True), **kw))


def lease_env(**kw) -> Env:
    """Three nodes with lease reads, a leader elected by the timers and its no-op committed; the leader's id first."""
    env = Env(options=lease_opts(**kw))
    for _ in range(4 * ELECTION):
        if env.leaders():
            break
        env.tick()
    (leader,) = env.leaders()
    env.tick()  # a heartbeat round: every follower has acknowledged one
    assert env.core(leader).commit >= env.core(leader).noop_index
    return env, leader, sorted(set(env.nodes) - {leader})


def rounds(messages):
    """The heartbeats of ReadIndex rounds among ``messages`` (their context names a round)."""
    return [m for m in messages if isinstance(m, Heartbeat) and unstamp(m.ctx)[0]]


def read_at(env, node, ctx):
    """Ask ``node`` for a read index: (the read states it produced at once, the messages it sent, queued for delivery)."""
    env.core(node).read_index(ctx)
    before = len(env.nodes[node].read_states)
    sent = env.nodes[node].drain()
    env.queue.extend(sent)
    return env.nodes[node].read_states[before:], sent


# ================================================================ the option
def test_lease_reads_need_check_quorum():
    """As etcd: without check-quorum nothing bounds when another leader is elected, so the combination is refused."""
    with pytest.raises(ValueError, match="check_quorum"):
        lease_opts(check_quorum=False).validate()
    with pytest.raises(ValueError, match="lease"):
        lease_opts(election_ticks=4, heartbeat_ticks=2).validate()  # a lease of 2 ticks lapses between heartbeats
    lease_opts(election_ticks=5, heartbeat_ticks=2).validate()
    assert lease_opts().lease_ticks == ELECTION - 2


def test_stamp_round_trip():
    """A heartbeat context carries the round's context and the send tick; one without a tick reads as None."""
    assert unstamp(stamp(b"r3", 41)) == (b"r3", 41)
    assert unstamp(stamp(b"", 0)) == (b"", 0)
    assert unstamp(b"r3") == (b"r3", None)
    assert unstamp(b"r3@x1") == (b"r3@x1", None)


# ================================================================ serving
def test_a_leader_with_a_lease_answers_at_once():
    """No heartbeat round: the read state comes out in the same Ready, at the commit index."""
    env, lead, _ = lease_env()
    states, sent = read_at(env, lead, b"r1")
    assert [(rs.index, rs.ctx) for rs in states] == [(env.core(lead).commit, b"r1")]
    assert rounds(sent) == []
    assert env.core(lead).status()["lease_reads_served"] == 1


def test_a_follower_read_is_answered_at_once():
    """A follower's ReadIndexRequest is answered with the leader's commit index, without a round in between."""
    env, lead, (f, _) = lease_env()
    env.core(f).read_index(b"f1")
    seen = []
    env.deliver(drop=lambda m: seen.append(m) or False)
    assert rounds(seen) == []
    assert [m.index for m in seen if isinstance(m, ReadIndexReply)] == [env.core(lead).commit]
    assert [rs.ctx for rs in env.nodes[f].read_states] == [b"f1"]


def test_without_the_option_every_read_waits_for_a_round():
    """The default: ReadIndex, a heartbeat round per batch of reads."""
    env = Env(options=RaftSettings(election_ticks=ELECTION, heartbeat_ticks=1))
    env.elect("a")
    states, sent = read_at(env, "a", b"r")
    assert states == [] and rounds(sent)


# ================================================================ the lease lapses
def test_the_lease_lapses_lease_ticks_after_the_last_acknowledged_heartbeat_was_sent():
    """
    Cut off from its peers, the leader serves by its lease for lease_ticks - 1
    more ticks, then falls back to a ReadIndex round, which cannot complete.
    """
    env, lead, _ = lease_env()
    env.isolate(lead)
    env.tick(LEASE - 1, only=[lead])
    states, sent = read_at(env, lead, b"still")
    assert [rs.ctx for rs in states] == [b"still"] and rounds(sent) == []
    env.tick(1, only=[lead])
    assert env.core(lead).role is Role.LEADER  # check-quorum has not stepped it down yet
    states, sent = read_at(env, lead, b"lapsed")
    assert states == [] and rounds(sent)
    env.tick(3, only=[lead])
    assert not any(rs.ctx == b"lapsed" for rs in env.nodes[lead].read_states)


def test_the_lease_is_measured_from_sending_not_from_the_acknowledgement():
    """An acknowledgement that arrives late vouches only for when its heartbeat was sent."""
    env, lead, (f1, f2) = lease_env()
    core = env.core(lead)
    env.isolate(lead)
    env.tick(1, only=[lead])
    sent_at = core.now  # the heartbeats of this tick are on their way (the cut drops them here)
    env.tick(LEASE, only=[lead])
    for f in (f1, f2):
        core.step(HeartbeatReply(core.term, f, lead, stamp(b"", sent_at)))  # their acknowledgements arrive only now
    states, sent = read_at(env, lead, b"late")
    assert states == [] and rounds(sent), "a late acknowledgement renewed the lease"
    core.step(HeartbeatReply(core.term, f1, lead, stamp(b"", core.now)))  # one of a heartbeat sent this tick
    states, _ = read_at(env, lead, b"fresh")
    assert [rs.ctx for rs in states] == [b"fresh"]


def test_an_acknowledgement_of_a_tick_not_reached_is_ignored():
    """A reply cannot answer a heartbeat not sent yet: a stamp from the future (a bug, a forgery) renews nothing."""
    env, lead, (f1, f2) = lease_env()
    core = env.core(lead)
    env.isolate(lead)
    env.tick(LEASE, only=[lead])
    for f in (f1, f2):
        core.step(HeartbeatReply(core.term, f, lead, stamp(b"", core.now + 100)))
    states, _ = read_at(env, lead, b"r")
    assert states == []


def test_ticks_the_embedder_coalesced_count_toward_the_lease():
    """A leader whose loop was stalled is told how many ticks passed: its timers move by one, its lease clock by all."""
    env, lead, _ = lease_env()
    core = env.core(lead)
    env.isolate(lead)
    elapsed = core.election_elapsed
    core.tick(elapsed=LEASE)
    assert core.role is Role.LEADER and core.election_elapsed == (elapsed + 1) % ELECTION
    states, sent = read_at(env, lead, b"r")
    assert states == [] and rounds(sent)


def test_time_caught_up_before_the_tick_counts_toward_the_lease():
    """A paused leader counts the ticks its timer has not run yet before a read: its lease is gone, its timers wait."""
    env, lead, _ = lease_env()
    core = env.core(lead)
    states, _ = read_at(env, lead, b"fresh")
    assert [s.ctx for s in states] == [b"fresh"]  # the lease holds
    elapsed = core.election_elapsed
    core.catch_up(LEASE)
    assert core.election_elapsed == elapsed and core.role is Role.LEADER
    states, sent = read_at(env, lead, b"after-pause")
    assert states == [] and rounds(sent)  # a ReadIndex round instead
    core.catch_up(0)
    core.catch_up(-3)  # never backwards
    assert core.now >= LEASE


# ================================================================ when there is no lease
def test_no_lease_read_while_a_transfer_is_under_way():
    """The target may be elected the moment it is told to campaign: a transferring leader goes through a round."""
    env, lead, (f1, _) = lease_env()
    env.cut = {(lead, f1)}
    env.core(lead).propose(b"x")
    env.deliver()
    env.heal()
    env.core(lead).transfer_leadership(f1)  # f1 lags: it is caught up first, no TimeoutNow yet
    assert env.core(lead).lead_transferee == f1
    states, sent = read_at(env, lead, b"r")
    assert states == [] and rounds(sent)


def test_no_lease_read_for_the_rest_of_the_term_after_a_timeout_now():
    """
    The transfer times out at the leader, but its TimeoutNow may still be on
    the way (etcd-io/raft#99): the leader serves by rounds until its term ends.
    """
    env, lead, (f1, _) = lease_env()
    core = env.core(lead)
    core.transfer_leadership(f1)
    env.deliver(drop=lambda m: isinstance(m, TimeoutNow))
    env.tick(ELECTION)
    assert core.role is Role.LEADER and core.lead_transferee is None  # the transfer gave up
    states, sent = read_at(env, lead, b"r")
    assert states == [] and rounds(sent)
    env.deliver()
    assert [rs.ctx for rs in env.nodes[lead].read_states] == [b"r"]  # served by the round


def test_no_read_before_an_entry_of_the_term_has_committed():
    """A new leader's commit index may lag the cluster's: even with a lease, reads wait for its no-op to commit."""
    env, lead, (f1, f2) = lease_env()
    env.core(lead).transfer_leadership(f1)
    lost = lambda m: isinstance(m, AppendEntriesReply)  # noqa: E731
    env.deliver(drop=lost)
    new = env.core(f1)
    assert new.role is Role.LEADER and new.commit < new.noop_index
    new.tick()  # a heartbeat round, acknowledged: the lease holds
    env.deliver(drop=lost)
    assert new._lease_holds()
    states, _ = read_at(env, f1, b"r")
    assert states == []
    env.tick()  # the next heartbeats bring the no-op again, acknowledged this time
    assert new.commit >= new.noop_index
    assert [rs.ctx for rs in env.nodes[f1].read_states] == [b"r"]
    assert env.nodes[f1].read_states[0].index >= new.noop_index


# ================================================================ the followers' promise
def plain_opts() -> RaftSettings:
    return lease_opts(lease_reads=False)


def vote_replies(env, node):
    return [m.granted for m in env.nodes[node].drain() if isinstance(m, RequestVoteReply)]


@pytest.mark.parametrize("lease_reads", [True, False])
def test_a_restarted_node_grants_no_vote_for_an_election_timeout(lease_reads):
    """
    It may have acknowledged a leader's heartbeat just before it stopped: the
    promise outlives the process, with or without the option (the process
    before it may have had it, and the leader that counted on it cannot tell
    a restart).
    """
    env, lead, (f1, f2) = lease_env(lease_reads=lease_reads)
    env.nodes[f1].restart()
    b = env.core(f1)
    assert b.leader is None
    ask = RequestVote(b.term + 1, f2, f1, b.log.last_index(), b.log.last_term())
    b.step(ask)
    assert vote_replies(env, f1) == []
    for _ in range(ELECTION - 1):
        b.tick()
    b.step(ask)
    assert vote_replies(env, f1) == []
    b.tick()  # an election timeout since the start
    b.step(ask)
    assert vote_replies(env, f1) == [True]


def test_a_node_still_in_its_bootstrap_term_votes_at_once():
    """
    No leader exists before term 2, so a node restarted in the bootstrap term
    promised nothing: a new cluster's first election waits for no one.
    """
    env = Env(options=lease_opts())
    env.nodes["b"].restart()
    env.nodes["c"].restart()
    env.elect("a")  # the votes come at once
    assert env.core("a").term == 2


@pytest.mark.parametrize("lease_reads", [True, False])
def test_the_promise_is_kept_across_a_term_learnt_from_a_stray_message(lease_reads):
    """
    A follower that hears of a higher term from a message that is not a
    vote request (here a late pre-vote refusal) forgets its leader, but still
    refuses that term's candidates until an election timeout has passed since
    it heard from the leader, with or without the option.
    """
    env = Env(options=lease_opts(lease_reads=lease_reads))
    env.elect("a")
    b = env.core("b")
    term = b.term
    b.step(PreVoteReply(term + 1, "c", "b", False))
    assert b.term == term + 1 and b.leader is None
    b.step(RequestVote(term + 1, "c", "b", b.log.last_index(), b.log.last_term()))
    assert vote_replies(env, "b") == [False]


def mixed_env():
    """Three nodes, only ``a`` with lease reads (an operator forgot the option on the others), ``a`` elected."""
    env = Env(options=plain_opts())
    env.nodes["a"].options = lease_opts()
    env.nodes["a"].restart()  # the same durable state, now with the option
    env.elect("a")
    env.tick()  # a heartbeat round, acknowledged: the lease holds
    return env


def restart_a_follower_under_the_lease():
    """
    In ``mixed_env``, ``b`` acknowledges the leader's heartbeat, then restarts;
    ``c`` asks for its vote at once (as a node cut off from the leader for a
    while would), and ``a`` is cut off.  Ticks on until another leader is
    elected, asking ``a`` for a read each tick; returns (the tick ``a`` answered
    a read by its lease while another leader existed, or None; the tick the
    other leader was elected).  Had ``b`` granted its vote, ``c`` could commit
    writes that ``a`` does not see while it still answers reads by its lease.
    """
    env = mixed_env()
    env.isolate("a")
    env.nodes["b"].restart()
    env.core("c").campaign()
    env.deliver()
    for tick in range(1, 2 * ELECTION + 1):
        states, _ = read_at(env, "a", b"r%d" % tick)
        if [n for n in env.leaders() if n != "a"]:
            return (tick if states else None), tick
        env.tick()
    raise AssertionError("no other leader elected within two election timeouts")


def test_in_a_mixed_cluster_no_leader_is_elected_while_the_lease_holds():
    """``b`` lacks the option and keeps the promise all the same: ``c`` is elected only once ``a``'s lease has lapsed."""
    stale, elected = restart_a_follower_under_the_lease()
    assert stale is None and elected > LEASE, (stale, elected)


def test_the_mixed_scenario_catches_the_old_rule():
    """Planted, the rule before: only a node with the option kept the promise; ``b`` votes at once and ``a``'s lease is stale."""
    with promise_kept_only_with_lease_reads():
        stale, elected = restart_a_follower_under_the_lease()
    assert stale == elected == 1, (stale, elected)


def test_a_failed_leader_is_replaced_within_the_usual_time_without_the_option():
    """
    The promise costs no election time: followers that stop hearing from their
    leader elect another after one randomized election timeout (at most twice
    ``election_ticks``) and a round of votes, as check-quorum's lease allows.
    """
    env = Env(options=plain_opts())
    env.elect("a")
    env.tick()
    env.isolate("a")
    for tick in range(1, 2 * ELECTION + 1):
        env.tick(only=["b", "c"])
        if [n for n in env.leaders() if n != "a"]:
            break
    assert [n for n in env.leaders() if n != "a"], "no leader %d ticks after the old one was cut off" % tick
    assert tick < 2 * ELECTION
