"""
Scenarios from the Raft paper (Ongaro and Ousterhout, 2014), replayed on
real cores with hand-built logs.  Index 1 of every log is the bootstrap
configuration, so the paper's index i is index i + 1 here.
"""

from kvd.raft.core import RaftSettings
from kvd.raft.messages import AppendEntries, Role
from tests.raft.harness import entry_data, env_with_logs


def paper_options(**kw) -> RaftSettings:
    # No leader lease and no pre-vote: the scenarios crash and restart servers by hand.
    return RaftSettings(**dict(dict(election_ticks=10, heartbeat_ticks=1, check_quorum=False, pre_vote=False), **kw))


def terms_of(core):
    return [core.log.term_at(i) for i in range(2, core.log.last_index() + 1)]


def test_figure_7_leader_repairs_every_divergent_follower():
    """Figure 7: a new leader for term 8 brings followers that lack entries, or hold extra and conflicting ones, to its log."""
    logs = {
        "L": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6],
        "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
        "b": [1, 1, 1, 4],
        "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        "e": [1, 1, 1, 4, 4, 4, 4],
        "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    }
    env = env_with_logs(logs, paper_options(), terms={"L": 7})
    env.elect("L")  # a, b, e and f vote for L; c and d hold longer or newer logs and refuse
    leader = env.core("L")
    assert leader.term == 8
    env.tick(3)
    want = terms_of(leader)
    assert want == logs["L"] + [8]
    for n in "abcdef":
        core = env.core(n)
        assert terms_of(core) == want, n
        assert all(core.log.entry(i).data == leader.log.entry(i).data for i in range(2, core.log.last_index() + 1))
        assert core.commit == leader.commit == leader.log.last_index()


def _figure_8_state_c():
    # (a) S1 led term 2 and placed paper index 2 on itself (the paper has S2 hold it too; here S2
    # receives it in (c) along with S3, so that S1 learns of both copies); (b) S5 led term 3 and
    # placed a different entry there, on itself only; (c) S5 is down and S1 is about to lead term 4.
    logs = {"s1": [1, 2], "s2": [1], "s3": [1], "s4": [1], "s5": [1, 3]}
    env = env_with_logs(logs, paper_options(append_bytes_max=30), terms={"s1": 3, "s2": 3, "s3": 3, "s4": 3, "s5": 3})
    env.isolate("s5")
    return env


def test_figure_8_an_earlier_terms_entry_on_a_majority_is_not_committed():
    """Figure 8 (c)-(d): S1 replicates its term-2 entry to a majority in term 4, yet must not commit it: S5 may still overwrite it."""
    env = _figure_8_state_c()
    s1 = env.core("s1")
    s1.campaign()
    # S1's term-4 no-op never leaves it; its term-2 entry reaches S2 and S3 (S4 is slow).
    def noop_or_s4(m):
        if not isinstance(m, AppendEntries):
            return False
        if m.dst in ("s2", "s3") and env.core(m.dst).log.last_index() < 3:
            return False  # the probe they reject, so that S1 backs up and sends them index 3
        return m.dst == "s4" or any(e.index == 4 for e in m.entries)

    env.deliver(drop=noop_or_s4)
    assert s1.role is Role.LEADER and s1.term == 4 and s1.log.last_index() == 4
    s1.tick()
    env.deliver(drop=noop_or_s4)
    assert env.core("s2").log.term_at(3) == env.core("s3").log.term_at(3) == 2  # on s1, s2, s3: a majority
    assert s1.progress["s2"].match == s1.progress["s3"].match == 3  # and S1 knows it
    assert s1.commit < 3  # the commit rule: count replicas only for entries of the current term
    # (d) S1 crashes; S5 wins with S2, S3, S4 (its last term 3 beats their 2) and overwrites index 3.
    env.heal()
    env.isolate("s1")
    env.core("s5").campaign()  # term 4: everyone has voted for S1 already
    env.deliver()
    env.elect("s5")  # term 5
    env.tick(3)
    for n in ("s2", "s3", "s4", "s5"):
        assert env.core(n).log.term_at(3) == 3
        assert (3, entry_data(3, 2)) not in env.nodes[n].applied


def test_figure_8_entry_of_the_current_term_commits_the_earlier_ones():
    """Figure 8 (e): once S1's term-4 entry is on a majority, both it and the term-2 entry before it commit, and S5 can no longer win."""
    env = _figure_8_state_c()
    env.elect("s1")
    env.cut |= {("s1", "s4"), ("s4", "s1")}  # only S2 and S3 hear from S1
    env.tick(3)
    s1 = env.core("s1")
    assert s1.commit == 4
    assert (3, entry_data(3, 2)) in env.nodes["s1"].applied
    env.heal()
    env.isolate("s1")
    env.core("s5").campaign()
    env.deliver()
    assert env.core("s5").role is not Role.LEADER
