"""
Rule-by-rule tests of the Raft core (kvd.raft.core) over the synchronous
harness: election, pre-vote, check-quorum, replication, commit, the
persistence contract, ReadIndex, leadership transfer, membership,
snapshots and restart.  The paper's Figures 7 and 8 are in test_paper.py.
"""

import random

import pytest

from kvd.raft.core import ConfigChangeRejected, NotLeader, RaftSettings, ProposalDropped, RaftCore, bootstrap
from kvd.raft.messages import (
    AppendEntries,
    AppendEntriesReply,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatReply,
    InstallSnapshot,
    PreVote,
    ReadIndexRequest,
    RequestVote,
    RequestVoteReply,
    Role,
    TimeoutNow,
)
from tests.raft.harness import Env, encode_state, env_with_logs


def opts(**kw) -> RaftSettings:
    return RaftSettings(**dict(dict(election_ticks=10, heartbeat_ticks=1), **kw))


def lone_core(node_id="a", voters=("a", "b", "c"), **kw) -> RaftCore:
    """A bare core over a bootstrapped log, for stepping messages by hand."""
    config = Configuration.make(voters=voters, addresses={v: v for v in voters})
    hs, entries = bootstrap(config)
    return RaftCore(node_id, opts(**kw), random.Random(7), hs, None, entries)


def drain(core: RaftCore):
    """Take every Ready as a perfect disk would; return (messages, persisted_messages)."""
    early, late = [], []
    while core.has_ready():
        rd = core.ready()
        early += rd.messages
        late += rd.persisted_messages
        core.advance(rd)
    return early, late


# ================================================================ election
def test_election_after_timeout_gives_one_leader_and_a_noop():
    """Followers that hear nothing campaign after the election timeout; one wins and appends a no-op of its term."""
    env = Env()
    env.tick(25)
    leaders = env.leaders()
    assert len(leaders) == 1
    leader = env.core(leaders[0])
    assert leader.term == 2
    last = leader.log.entry(leader.log.last_index())
    assert last.kind is EntryKind.NOOP and last.term == 2
    assert leader.commit == last.index  # the no-op committed with the followers' acks
    for n in env.nodes:
        assert env.core(n).leader == leaders[0]


def test_one_vote_per_term():
    """A node that voted for one candidate refuses another in the same term."""
    core = lone_core("a")
    core.step(RequestVote(2, "b", "a", 1, 1))
    _, late = drain(core)
    assert [m.granted for m in late if isinstance(m, RequestVoteReply)] == [True]
    core.step(RequestVote(2, "c", "a", 1, 1))
    _, late = drain(core)
    assert [m.granted for m in late if isinstance(m, RequestVoteReply)] == [False]
    assert core.vote == "b"


def test_vote_refused_to_a_candidate_with_a_stale_log():
    """Raft §5.4.1: a vote goes only to a candidate whose log is at least as up to date."""
    env = Env(options=opts(check_quorum=False))  # no leader lease: the request is considered
    env.elect("a")
    env.core("a").propose(b"x")
    env.deliver()
    c = env.core("c")
    c.step(RequestVote(5, "b", "c", 1, 1))  # b claims a log that ends at the bootstrap entry
    _, late = drain(c)
    replies = [m for m in late if isinstance(m, RequestVoteReply)]
    assert replies and not replies[0].granted
    assert c.vote is None and c.term == 5


def test_pre_vote_keeps_a_returning_node_from_deposing_the_leader():
    """Thesis §9.6: a node cut off for long does not raise its term, and rejoining does not depose a healthy leader."""
    env = Env()
    env.elect("a")
    term = env.core("a").term
    env.isolate("c")
    env.tick(100)
    assert env.core("c").term == term  # pre-votes failed, so the term never rose
    env.heal()
    env.tick(30)
    assert env.leaders() == ["a"] and env.core("a").term == term
    assert env.core("c").leader == "a"


def test_leader_ignores_disruptive_votes_within_lease():
    """Thesis §4.2.3: a follower that hears from its leader ignores a vote request of a higher term."""
    env = Env()
    env.elect("a")
    b = env.core("b")
    term = b.term
    b.step(RequestVote(term + 1, "c", "b", 99, 99))
    assert b.term == term and b.vote != "c"


def test_check_quorum_steps_down_a_cut_off_leader():
    """CheckQuorum: a leader that has not heard from a majority within an election timeout steps down."""
    env = Env()
    env.elect("a")
    env.isolate("a")
    env.tick(10, only={"a"})
    env.tick(10, only={"a"})
    assert env.core("a").role is Role.FOLLOWER
    with pytest.raises(NotLeader):
        env.core("a").propose(b"x")


def test_removed_voter_with_uncommitted_removal_still_campaigns():
    """Thesis §4.2.2: a server not in its latest (uncommitted) configuration still starts elections, counting no vote of its own."""
    env = Env(ids=("a", "b"))
    env.elect("a")
    env.cut = {("a", "b")}  # b never hears of its removal... rather: a's removal of itself never reaches b
    env.core("a").remove("a")
    env.deliver()
    a = env.core("a")
    assert a.config.voters == ("b",) and a.commit < a.log.last_index()
    env.isolate("a")
    env.tick(20)  # a steps down (CheckQuorum); b alone cannot win (needs a's vote)
    assert a.role is Role.FOLLOWER
    env.heal()
    env.tick(60)
    # a, holding the only copy of its removal, won again, committed it with b, and stepped down;
    # then b, now the only voter, leads.
    assert env.leaders() == ["b"]
    assert env.core("b").config.voters == ("b",)


# ================================================================ replication
def test_append_consistency_check_and_conflict_hint():
    """AppendEntries is refused when the log does not match at prev_index; the reply carries a conflict hint."""
    core = lone_core("b")
    core.step(AppendEntries(2, "a", "b", 1, 1, (Entry(2, 2, EntryKind.NOOP),), 0))
    core.step(AppendEntries(3, "c", "b", 2, 3, (Entry(3, 3),), 0))  # we hold index 2 from term 2, not 3
    _, late = drain(core)
    reject = [m for m in late if isinstance(m, AppendEntriesReply) and not m.success][0]
    assert reject.index == 2 and reject.conflict_term == 2 and reject.conflict_index == 2
    core.step(AppendEntries(3, "c", "b", 9, 3, (), 0))  # beyond our log
    _, late = drain(core)
    reject = [m for m in late if isinstance(m, AppendEntriesReply) and not m.success][0]
    assert reject.conflict_index == 3 and reject.conflict_term == 0


def test_fast_backtracking_needs_few_round_trips():
    """With conflict hints a follower with a long divergent suffix is repaired in one or two rejections, not one per entry."""
    env = env_with_logs(
        {"a": [2] * 5 + [4] * 30, "b": [2] * 5 + [4] * 30, "c": [2] * 5 + [3] * 40},
        options=opts(check_quorum=False, pre_vote=False),
    )
    env.cut = {("a", "c"), ("c", "a")}
    env.elect("a")
    env.heal()
    rejections = []
    for _ in range(5):
        env.core("a").tick()
        env.deliver(drop=lambda m: isinstance(m, AppendEntriesReply) and not m.success and rejections.append(m))
    a, c = env.core("a"), env.core("c")
    assert c.log.last_index() == a.log.last_index() and c.log.last_term() == a.term
    assert 1 <= len(rejections) <= 2


def test_batches_are_bounded_by_append_bytes_max():
    """Each AppendEntries carries as many entries as fit in append_bytes_max (at least one)."""
    env = Env(options=opts(append_bytes_max=100))
    env.elect("a")
    sizes = []

    def spy(m):
        if isinstance(m, AppendEntries) and m.entries:
            sizes.append((len(m.entries), sum(e.size() for e in m.entries)))
        return False

    env.core("a").propose_many([b"v" * 20 for _ in range(10)])
    env.deliver(drop=spy)
    assert sizes and all(total <= 100 or n == 1 for n, total in sizes)
    assert max(n for n, _ in sizes) == 2  # 2 * (20 + 24) fits in 100, 3 do not
    assert env.core("b").log.last_index() == env.core("a").log.last_index()


def test_pipelining_respects_inflight_max_and_falls_back_to_probe():
    """In REPLICATE state several appends fly at once up to inflight_max; a rejection falls back to one probe at a time."""
    env = Env(options=opts(append_bytes_max=30, inflight_max=3))
    env.elect("a")
    a = env.core("a")
    a.propose_many([b"p%d" % i for i in range(10)])
    msgs = env.nodes["a"].drain()
    to_b = [m for m in msgs if isinstance(m, AppendEntries) and m.dst == "b" and m.entries]
    assert len(to_b) == 3  # three in flight, then the window is closed
    assert a.progress["b"].state.value == "replicate"
    # A rejection (as after a follower lost its log) sends the leader back to probing.
    a.step(AppendEntriesReply(a.term, "b", "a", False, to_b[-1].prev_index, to_b[0].prev_index, 0))
    assert a.progress["b"].state.value == "probe"
    msgs = env.nodes["a"].drain()
    assert len([m for m in msgs if isinstance(m, AppendEntries) and m.dst == "b"]) == 1


def test_new_leader_commits_earlier_entries_through_its_noop():
    """An entry of an earlier term that a new leader holds commits once the leader's no-op commits."""
    env = Env(options=opts(check_quorum=False))
    env.elect("a")
    env.core("a").propose(b"old")
    # b gets the entry, c does not, and a never learns that b has it.
    env.deliver(drop=lambda m: (isinstance(m, AppendEntries) and m.dst == "c") or isinstance(m, AppendEntriesReply))
    index = env.core("a").log.last_index()
    assert env.core("a").commit < index
    env.isolate("a")
    env.core("b").campaign()
    env.deliver()
    b = env.core("b")
    assert b.role is Role.LEADER and b.commit >= index + 1
    assert (index, b"old") in env.nodes["c"].applied


# ================================================================ persistence contract
def test_vote_reply_only_in_persisted_messages():
    """A vote is granted only after term and vote are durable: the reply travels in persisted_messages, with must_sync."""
    core = lone_core("a")
    core.step(RequestVote(2, "b", "a", 1, 1))
    rd = core.ready()
    assert rd.must_sync and rd.hard_state.term == 2 and rd.hard_state.vote == "b"
    assert not any(isinstance(m, RequestVoteReply) for m in rd.messages)
    assert any(isinstance(m, RequestVoteReply) and m.granted for m in rd.persisted_messages)


def test_append_ack_only_in_persisted_messages():
    """A follower acknowledges entries only after persisting them."""
    core = lone_core("b")
    core.step(AppendEntries(2, "a", "b", 1, 1, (Entry(2, 2, EntryKind.NOOP),), 0))
    rd = core.ready()
    assert rd.must_sync and [e.index for e in rd.entries] == [2]
    assert not any(isinstance(m, AppendEntriesReply) for m in rd.messages)
    assert any(isinstance(m, AppendEntriesReply) and m.success and m.index == 2 for m in rd.persisted_messages)


def test_leader_counts_its_own_entry_only_after_advance():
    """A leader sends appends before its own write, but counts its own copy toward a majority only after advance()."""
    env = Env(ids=("a", "b", "c"))
    env.elect("a")
    a = env.core("a")
    a.propose(b"x")
    index = a.log.last_index()
    rd = a.ready()
    appends = [m for m in rd.messages if isinstance(m, AppendEntries) and m.entries]
    assert appends, "appends travel while the leader persists"
    b = env.core("b")
    b.step([m for m in appends if m.dst == "b"][0])
    _, late = drain(b)
    a.step([m for m in late if isinstance(m, AppendEntriesReply)][0])
    assert a.commit < index  # only b's copy counts so far: 1 of 3
    a.advance(rd)
    assert a.commit == index  # now a's durable copy counts too


def test_single_voter_leader_sends_nothing_before_its_term_is_durable():
    """A lone voter elected by its own vote holds its first appends until the new term is persisted."""
    env = Env(ids=("a",), learners=("l",))
    a = env.core("a")
    a.campaign()
    assert a.role is Role.LEADER
    rd = a.ready()
    assert rd.hard_state.term == 2 and rd.must_sync
    assert rd.messages == []
    assert any(isinstance(m, AppendEntries) and m.dst == "l" for m in rd.persisted_messages)


# ================================================================ ReadIndex
def test_read_index_on_leader_waits_for_a_heartbeat_round():
    """The leader serves a read at its commit index only after a majority acknowledged a heartbeat sent after the read."""
    env = Env()
    env.elect("a")
    a = env.core("a")
    a.read_index(b"r1")
    msgs = env.nodes["a"].drain()
    assert env.nodes["a"].read_states == []
    beats = [m for m in msgs if isinstance(m, Heartbeat) and m.ctx]
    assert {m.dst for m in beats} == {"b", "c"}
    a.step(HeartbeatReply(a.term, "b", "a", beats[0].ctx))
    env.nodes["a"].drain()
    assert [(rs.index, rs.ctx) for rs in env.nodes["a"].read_states] == [(a.commit, b"r1")]


def test_read_index_on_follower():
    """A follower asks the leader for a read index and gets a ReadState once the leader confirmed its leadership."""
    env = Env()
    env.elect("a")
    env.core("c").read_index(b"f1")
    env.deliver()
    states = env.nodes["c"].read_states
    assert [(rs.index, rs.ctx) for rs in states] == [(env.core("a").commit, b"f1")]


def test_partitioned_leader_never_produces_a_read_state():
    """A leader cut off from its peers cannot confirm leadership, so its reads never complete; it steps down instead."""
    env = Env()
    env.elect("a")
    env.isolate("a")
    env.core("a").read_index(b"stale")
    env.tick(40)
    assert env.nodes["a"].read_states == []
    assert env.core("a").role is not Role.LEADER
    assert len(env.leaders()) == 1 and env.leaders()[0] != "a"


def test_read_waits_for_a_round_that_starts_after_it():
    """A read arriving while a round is in flight is not served by that round's acknowledgements, but by the next."""
    env = Env()
    env.elect("a")
    a = env.core("a")
    a.read_index(b"first")
    beats1 = [m for m in env.nodes["a"].drain() if isinstance(m, Heartbeat) and m.ctx]
    a.read_index(b"second")  # arrives while round 1 is in flight
    env.nodes["a"].drain()
    a.step(HeartbeatReply(a.term, "b", "a", beats1[0].ctx))
    beats2 = [m for m in env.nodes["a"].drain() if isinstance(m, Heartbeat) and m.ctx]
    assert [rs.ctx for rs in env.nodes["a"].read_states] == [b"first"]
    assert beats2 and beats2[0].ctx != beats1[0].ctx
    a.step(HeartbeatReply(a.term, "b", "a", beats1[0].ctx))  # a late echo of round 1 does not count
    env.nodes["a"].drain()
    assert [rs.ctx for rs in env.nodes["a"].read_states] == [b"first"]
    a.step(HeartbeatReply(a.term, "c", "a", beats2[0].ctx))
    env.nodes["a"].drain()
    assert [rs.ctx for rs in env.nodes["a"].read_states] == [b"first", b"second"]


def test_new_leader_serves_reads_only_after_its_noop_commits():
    """A new leader's commit index may lag, so reads wait until an entry of its term has committed."""
    env = Env()
    a = env.core("a")
    a.campaign()
    env.deliver(drop=lambda m: isinstance(m, AppendEntriesReply))
    assert a.role is Role.LEADER and a.commit < a.noop_index
    a.read_index(b"r")
    env.deliver(drop=lambda m: isinstance(m, AppendEntriesReply))
    assert env.nodes["a"].read_states == []
    env.tick(2)
    assert [rs.ctx for rs in env.nodes["a"].read_states] == [b"r"]
    assert env.nodes["a"].read_states[0].index >= a.noop_index


def test_read_round_completes_when_the_quorum_shrinks():
    """A read round waiting on a voter that is then removed completes under the new, smaller configuration."""
    env = Env(ids=("a", "b"))
    env.elect("a")
    a = env.core("a")
    env.isolate("b")
    a.read_index(b"r")
    env.deliver()
    assert env.nodes["a"].read_states == []
    env.heal()
    env.cut = {("b", "a")}  # b hears the removal but a never hears b again
    a.remove("b")
    env.deliver()
    assert a.config.voters == ("a",)
    assert [rs.ctx for rs in env.nodes["a"].read_states] == [b"r"]


# ================================================================ leadership transfer
def test_leadership_transfer_with_timeout_now():
    """transfer_leadership sends TimeoutNow to an up-to-date target, which wins at once; proposals are refused meanwhile."""
    env = Env()
    env.elect("a")
    term = env.core("a").term
    seen = []
    env.core("a").transfer_leadership("c")
    with pytest.raises(ProposalDropped):
        env.core("a").propose(b"x")
    env.deliver(drop=lambda m: seen.append(type(m)) or False)
    assert TimeoutNow in seen
    assert env.leaders() == ["c"] and env.core("c").term == term + 1


def test_transfer_to_a_lagging_target_catches_it_up_first():
    """A target that lags is sent the missing entries before TimeoutNow."""
    env = Env()
    env.elect("a")
    env.cut = {("a", "c")}
    env.core("a").propose_many([b"1", b"2", b"3"])
    env.deliver()
    assert env.core("c").log.last_index() < env.core("a").log.last_index()
    env.heal()
    env.core("a").transfer_leadership("c")
    env.deliver()
    assert env.leaders() == ["c"]
    assert [d for _, d in env.nodes["c"].applied][-3:] == [b"1", b"2", b"3"]


# ================================================================ membership
def test_learner_joins_catches_up_and_is_promoted():
    """A new node joins as a learner, receives the log, and the leader promotes it to voter once caught up."""
    env = Env()
    env.elect("a")
    env.core("a").propose_many([b"%d" % i for i in range(5)])
    env.deliver()
    env.add_node("d")
    env.core("a").add_learner("d", "d")
    env.deliver()
    assert "d" in env.core("a").config.learners or "d" in env.core("a").config.voters
    env.tick(5)
    assert env.core("a").config.voters == ("a", "b", "c", "d")
    assert env.core("d").log.last_index() == env.core("a").log.last_index()
    assert [d for _, d in env.nodes["d"].applied] == [b"%d" % i for i in range(5)]


def test_learner_does_not_vote_or_campaign():
    """A learner never starts an election and does not count toward quorums."""
    env = Env(ids=("a", "b"), learners=("l",))
    env.elect("a")
    env.isolate("a")
    env.tick(60, only={"l"})
    assert env.core("l").role is Role.LEARNER and env.core("l").term == env.core("a").term


def test_remove_a_follower():
    """Removing a follower shrinks the configuration; the leader stops replicating to it."""
    env = Env()
    env.elect("a")
    env.core("a").remove("c")
    env.deliver()
    a = env.core("a")
    assert a.config.voters == ("a", "b") and "c" not in a.progress
    a.propose(b"after")
    env.deliver()
    assert env.core("c").log.last_index() < a.log.last_index()
    assert a.commit == a.log.last_index()


def test_leader_removing_itself_steps_down_once_committed():
    """A leader that removes itself keeps leading until the change commits, then steps down; the rest elect a leader."""
    env = Env()
    env.elect("a")
    a = env.core("a")
    a.remove("a")
    assert a.role is Role.LEADER
    env.deliver()
    assert a.role is not Role.LEADER
    env.tick(30)
    assert len(env.leaders()) == 1 and env.leaders()[0] in ("b", "c")
    assert env.core(env.leaders()[0]).config.voters == ("b", "c")


def test_config_takes_effect_on_append_and_reverts_when_truncated():
    """A follower uses a configuration as soon as it appends it, and falls back when a new leader truncates it."""
    b = lone_core("b")
    base = b.config
    grown = base.with_learner("d", "d")
    b.step(AppendEntries(2, "a", "b", 1, 1, (Entry(2, 2, EntryKind.CONFIG, grown.encode()),), 1))
    assert b.config == grown and b.commit == 1  # in effect on append, before commit
    b.step(AppendEntries(3, "c", "b", 1, 1, (Entry(2, 3, EntryKind.NOOP),), 1))
    assert b.config == base  # the entry was truncated away: back to the configuration before it
    assert b.log.term_at(2) == 3


def test_config_change_refused_before_the_leader_commits_in_its_term():
    """Ongaro 2015: a new leader may not change the membership until an entry of its own term has committed."""
    env = Env()
    a = env.core("a")
    a.campaign()
    env.deliver(drop=lambda m: isinstance(m, AppendEntriesReply))
    assert a.role is Role.LEADER and a.commit < a.noop_index
    with pytest.raises(ConfigChangeRejected):
        a.remove("c")
    env.tick(2)
    assert a.commit >= a.noop_index
    a.remove("c")  # now allowed


def test_only_one_config_change_at_a_time():
    """A second membership change is refused while the first is uncommitted."""
    env = Env(ids=("a", "b", "c", "d"))
    env.elect("a")
    a = env.core("a")
    a.remove("d")
    with pytest.raises(ConfigChangeRejected):
        a.remove("c")
    env.deliver()
    a.remove("c")
    env.deliver()
    assert a.config.voters == ("a", "b")


def test_only_one_voter_changes_per_step():
    """Adding a voter goes through a learner; the configuration never gains or loses two voters at once."""
    env = Env()
    env.elect("a")
    with pytest.raises(ConfigChangeRejected):
        env.core("a").promote("z")  # not a learner
    with pytest.raises(ConfigChangeRejected):
        env.core("a").add_learner("b", "b")  # already a member


# ================================================================ snapshots
def _compact(env, node_id, keep=0):
    node = env.nodes[node_id]
    core = node.core
    snap = core.compact(core.applied, encode_state(node.applied), keep)
    node.snapshot = snap
    for i in [i for i in node.entries if i <= snap.index]:
        del node.entries[i]
    return snap


def test_compact_drops_the_log_prefix():
    """compact() records a snapshot at an applied index and forgets entries up to index - keep_entries."""
    env = Env()
    env.elect("a")
    env.core("a").propose_many([b"%d" % i for i in range(10)])
    env.deliver()
    a = env.core("a")
    snap = _compact(env, "a", keep=3)
    assert snap.index == a.applied and snap.term == a.term
    assert a.log.first_index() == snap.index - 3 + 1
    with pytest.raises(AssertionError):
        a.compact(a.applied + 1, b"")


def test_follower_behind_compaction_gets_a_snapshot_and_resumes():
    """A follower that needs compacted entries receives InstallSnapshot, installs it, and then follows normally."""
    env = Env()
    env.elect("a")
    env.isolate("c")
    env.core("a").propose_many([b"%d" % i for i in range(10)])
    env.deliver()
    _compact(env, "a")
    env.heal()
    seen = []
    env.tick(2)
    env.core("a").propose(b"after")
    env.deliver(drop=lambda m: seen.append(m) or False)
    env.tick(2)
    c = env.core("c")
    assert c.log.snapshot_index == env.core("a").log.snapshot_index
    assert c.commit == env.core("a").commit
    assert [d for _, d in env.nodes["c"].applied][-11:] == [b"%d" % i for i in range(10)] + [b"after"]


def test_lost_snapshot_is_retried():
    """If an InstallSnapshot (or its acknowledgement) is lost, the leader sends it again after a while."""
    env = Env()
    env.elect("a")
    env.isolate("c")
    env.core("a").propose_many([b"%d" % i for i in range(5)])
    env.deliver()
    _compact(env, "a")
    env.heal()
    sent = []

    def lose_first(m):
        if isinstance(m, InstallSnapshot):
            sent.append(m)
            return len(sent) == 1
        return False

    for _ in range(60):
        env.core("a").tick()
        env.core("b").tick()
        env.deliver(drop=lose_first)
        if env.core("c").commit == env.core("a").commit:
            break
    assert len(sent) >= 2
    assert env.core("c").commit == env.core("a").commit


# ================================================================ restart
def test_restart_recovers_from_persisted_state():
    """A node rebuilt from what it persisted keeps its term, vote, log and commit, and rejoins."""
    env = Env()
    env.elect("a")
    env.core("a").propose_many([b"p", b"q"])
    env.deliver()
    before = env.core("b")
    term, vote, last = before.term, before.vote, before.log.last_index()
    env.nodes["b"].restart()
    b = env.core("b")
    assert (b.term, b.vote, b.log.last_index()) == (term, vote, last)
    assert b.commit >= 1
    env.core("a").propose(b"r")
    env.tick(2)
    assert [d for _, d in env.nodes["b"].applied] == [b"p", b"q", b"r"]


def test_restarted_node_does_not_vote_twice_in_a_term():
    """The vote survives a restart, so a node cannot vote again in the same term."""
    core = lone_core("a")
    core.step(RequestVote(2, "b", "a", 1, 1))
    rd = core.ready()
    hs = rd.hard_state
    core.advance(rd)
    config = Configuration.make(voters=("a", "b", "c"), addresses={})
    _, entries = bootstrap(config)
    again = RaftCore("a", opts(), random.Random(1), hs, None, entries)
    again.step(RequestVote(2, "c", "a", 1, 1))
    _, late = drain(again)
    assert [m.granted for m in late if isinstance(m, RequestVoteReply)] == [False]


def test_status_active_is_steady_across_checkquorum_windows():
    """A follower that answers every heartbeat is always reported active; a silent one turns inactive."""
    env = Env()
    env.elect("a")
    for _ in range(3 * env.options.election_ticks):
        env.tick()
        assert all(p["active"] for p in env.core("a").status()["progress"].values())
    env.cut |= {("b", "a")}
    env.tick(env.options.election_ticks)
    progress = env.core("a").status()["progress"]
    assert progress["c"]["active"] and not progress["b"]["active"]


def test_a_leader_removing_itself_hands_over_without_an_election_timeout():
    """Once its removal commits, the leader tells the most up-to-date remaining voter to campaign: a new leader with no tick."""
    env = Env()
    env.elect("a")
    a = env.core("a")
    a.propose(b"x")
    env.deliver()
    a.remove("a")
    env.deliver()  # messages only: no clock tick, so no election timeout can fire
    assert a.role is not Role.LEADER
    (leader,) = env.leaders()
    assert leader in ("b", "c")
    new = env.core(leader)
    assert new.config.voters == ("b", "c") and new.term == a.term + 1
    new.propose(b"after")
    env.deliver()
    assert new.commit == new.log.last_index()


def test_a_removed_leader_waits_for_a_voter_to_hold_its_whole_log_before_handing_over():
    """If no remaining voter holds the last entry when the removal commits, the leader takes no proposal and
    hands over once one does (a voter behind another would not get its vote); it never serves again."""
    env = Env()
    env.elect("a")
    a = env.core("a")
    a.remove("a")
    env.collect()  # the removal is on its way
    a.propose(b"y")  # and an entry after it, which is lost once
    holds_y = lambda m: isinstance(m, AppendEntries) and any(e.data == b"y" for e in m.entries)
    env.deliver(drop=holds_y)
    assert a.role is Role.LEADER and a.commit >= a.configs[-1][0]  # committed, still leading: waiting
    assert a.lead_transferee in ("b", "c")
    with pytest.raises(ProposalDropped):
        a.propose(b"z")
    env.tick(2)  # heartbeats find the gap; the entry goes out again; then TimeoutNow
    assert a.role is not Role.LEADER
    (leader,) = env.leaders()
    assert env.core(leader).term == a.term + 1
    assert env.core(leader).log.term_at(a.log.last_index()) is not None  # y survived


def test_a_removed_leader_whose_voters_are_unreachable_steps_down_and_never_serves_again():
    env = Env()
    env.elect("a")
    a = env.core("a")
    a.remove("a")
    env.collect()
    a.propose(b"y")
    env.deliver(drop=lambda m: isinstance(m, AppendEntries) and any(e.data == b"y" for e in m.entries))
    assert a.role is Role.LEADER and a.lead_transferee is not None
    env.isolate("a")
    env.tick(env.options.election_ticks, only=("a",))
    assert a.role is not Role.LEADER and a.lead_transferee is None
