"""
The one Ready loop (kvd/replica.py), on its own: a storage whose writes
complete when the test says so, a transport that records, a real core.
And the promise that it is the only loop: nothing else calls ready()/advance().
"""

import pathlib
import random
import re

from kvd.kv.commands import Envelope, Set, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.raft.core import NotLeader, RaftSettings, RaftCore, bootstrap
from kvd.raft.messages import AppendEntries, AppendEntriesReply, Configuration, Entry, EntryKind
from kvd.replica import Events, Replica

ROOT = pathlib.Path(__file__).resolve().parents[1]


class LaterStorage:
    """Writes complete only when ``complete()`` is called, as a disk thread's would."""

    def __init__(self):
        self.writes = []  # [(hard_state, entries, snapshot, sync, done)]
        self.compacted = []

    def write(self, hard_state, entries, snapshot, sync, done):
        self.writes.append((hard_state, list(entries), snapshot, sync, done))

    def complete(self):
        done = self.writes[-1][4]
        done()

    def compact(self, snapshot, done):
        self.compacted.append(snapshot)
        done()


class Recorder:
    def __init__(self):
        self.sent = []

    def send_many(self, messages):
        self.sent.extend(messages)


class Heard(Events):
    def __init__(self):
        self.done, self.failed, self.reads = [], [], []

    def proposal_done(self, token, result, index):
        self.done.append((token, result, index))

    def proposal_failed(self, token, error):
        self.failed.append((token, type(error).__name__))

    def read_ready(self, token):
        self.reads.append(token)


def follower_replica():
    config = Configuration.make(voters=["a", "b", "c"], addresses={n: n for n in "abc"})
    hs, entries = bootstrap(config)
    core = RaftCore("b", RaftSettings(), random.Random(1), hs, None, entries)
    storage, transport, events = LaterStorage(), Recorder(), Heard()
    return Replica(core, storage, transport, KVMachine(), events), storage, transport, events


def append_from_leader(term=2, index=2):
    entry = Entry(index, term, EntryKind.NORMAL, encode_envelope(Envelope(b"c", 1, 1, 0, Set(b"k", b"v"))))
    return AppendEntries(term, "a", "b", index - 1, 1, [entry], 0)


def test_acknowledgement_waits_for_the_write_to_complete():
    replica, storage, transport, _ = follower_replica()
    replica.step(append_from_leader())
    replica.drain()
    assert len(storage.writes) == 1 and storage.writes[0][3] is True  # synced
    assert not any(isinstance(m, AppendEntriesReply) for m in transport.sent)
    storage.complete()
    acks = [m for m in transport.sent if isinstance(m, AppendEntriesReply)]
    assert len(acks) == 1 and acks[0].success and acks[0].index == 2


def test_inputs_wait_while_a_write_is_outstanding_and_ticks_coalesce():
    replica, storage, transport, _ = follower_replica()
    replica.step(append_from_leader())
    replica.drain()
    assert replica.busy
    term_before = replica.core.term
    for _ in range(50):
        replica.tick()  # fifty ticks missed while the disk is busy count as one
    replica.step(append_from_leader(term=3, index=3))
    replica.drain()
    assert len(replica.inbox) == 2 and replica.core.term == term_before  # nothing ran
    storage.complete()
    assert not replica.inbox and replica.core.term == 3
    assert replica.core.election_elapsed <= 1
    assert replica.core.now == 50  # but the lease clock counts every one (RaftCore.tick)


def test_a_completion_of_a_ready_no_longer_outstanding_is_ignored():
    replica, storage, transport, _ = follower_replica()
    replica.step(append_from_leader())
    replica.drain()
    stale_done = storage.writes[0][4]
    storage.complete()
    before = list(transport.sent)
    stale_done()  # a disk thread that calls back twice, or for a write of a node since restarted
    assert transport.sent == before


def test_proposal_on_a_follower_fails_with_not_leader():
    replica, _, _, events = follower_replica()
    replica.propose(b"x", "token")
    assert events.failed == [("token", NotLeader.__name__)]


def test_hold_and_release():
    replica, storage, _, _ = follower_replica()
    replica.hold()
    replica.step(append_from_leader())
    replica.drain()
    assert storage.writes == [] and len(replica.inbox) == 1
    replica.release()
    assert len(storage.writes) == 1


def test_only_the_replica_runs_the_ready_loop():
    """grep finds one Ready loop: no other module takes a Ready from the core or advances it."""
    callers = []
    for path in sorted((ROOT / "kvd").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel.startswith("kvd/raft/"):
            continue
        text = path.read_text()
        if re.search(r"\.ready\(\)|\.advance\(|\.has_ready\(\)", text):
            callers.append(rel)
    assert callers == ["kvd/replica.py"]
    for embedder in ("kvd/node/service.py", "kvd/sim/cluster.py"):
        assert "from kvd.replica import" in (ROOT / embedder).read_text()


class FailingStorage(LaterStorage):
    """A disk that is full: every write (and compaction) raises."""

    def __init__(self, error):
        super().__init__()
        self.error = error
        self.attempts = 0

    def write(self, hard_state, entries, snapshot, sync, done):
        self.attempts += 1
        raise self.error


class HeardFailure(Heard):
    def __init__(self):
        super().__init__()
        self.storage_errors = []

    def storage_failed(self, error):
        self.storage_errors.append(error)


def test_a_storage_failure_stops_the_loop_once_and_for_good():
    """A write that raises is told once; nothing runs after it (no 'ready() called twice' loop), nothing is sent."""
    config = Configuration.make(voters=["a", "b", "c"], addresses={n: n for n in "abc"})
    hs, entries = bootstrap(config)
    core = RaftCore("b", RaftSettings(), random.Random(1), hs, None, entries)
    error = OSError(28, "No space left on device")
    storage, transport, events = FailingStorage(error), Recorder(), HeardFailure()
    replica = Replica(core, storage, transport, KVMachine(), events)
    replica.step(append_from_leader())
    replica.drain()
    assert events.storage_errors == [error] and replica.failed is error
    assert storage.attempts == 1 and transport.sent == []  # no acknowledgement of what is not on disk
    for _ in range(100):
        replica.tick()
        replica.step(append_from_leader(term=3, index=3))
        replica.propose(b"x", "t")
        replica.drain()
    assert storage.attempts == 1 and events.storage_errors == [error] and transport.sent == []
    assert not replica.inbox and replica.busy


def test_an_error_after_the_write_completed_is_not_a_storage_failure():
    """done() ran (the write is durable) and something later raised: that propagates, it is not blamed on the disk."""

    class Boom(Exception):
        pass

    class SyncStorage(LaterStorage):
        def write(self, hard_state, entries, snapshot, sync, done):
            done()

    class Exploding(HeardFailure):
        def persisted(self, core, rd):
            raise Boom()

    config = Configuration.make(voters=["a", "b", "c"], addresses={n: n for n in "abc"})
    hs, entries = bootstrap(config)
    core = RaftCore("b", RaftSettings(), random.Random(1), hs, None, entries)
    events = Exploding()
    replica = Replica(core, SyncStorage(), Recorder(), KVMachine(), events)
    replica.step(append_from_leader())
    import pytest

    with pytest.raises(Boom):  # Events.loop_failed raises by default (the simulator reports it)
        replica.drain()
    assert isinstance(replica.failed, Boom) and events.storage_errors == []
    assert replica.busy  # and nothing runs any more: no "ready() called twice without advance()" loop
    replica.step(append_from_leader(term=3, index=3))
    replica.tick()
    replica.drain()
    assert not replica.inbox


def test_an_exception_inside_the_loop_fail_stops_it_once():
    """A machine that raises while applying leaves a Ready half done: the loop stops and says so once."""

    class SyncStorage(LaterStorage):
        def write(self, hard_state, entries, snapshot, sync, done):
            done()

    class BadMachine(KVMachine):
        def apply(self, index, data):
            raise RuntimeError("corrupt state machine")

    class Told(HeardFailure):
        def __init__(self):
            super().__init__()
            self.loop_errors = []

        def loop_failed(self, error):
            self.loop_errors.append(error)

    config = Configuration.make(voters=["a"], addresses={"a": "a"})
    hs, entries = bootstrap(config)
    core = RaftCore("a", RaftSettings(), random.Random(1), hs, None, entries)
    events = Told()
    replica = Replica(core, SyncStorage(), Recorder(), BadMachine(), events)
    replica.input(lambda c: c.campaign())
    replica.drain()
    assert core.is_leader()
    replica.propose(b"x", "t")
    replica.drain()
    assert [str(e) for e in events.loop_errors] == ["corrupt state machine"] and events.storage_errors == []
    for _ in range(20):
        replica.tick()
        replica.propose(b"y", "u")
        replica.drain()
    assert len(events.loop_errors) == 1 and replica.busy


def test_a_failed_compaction_fail_stops_too():
    """storage.compact raising (the snapshot could not be stored) is a storage failure like a failed write."""

    class CompactFails(LaterStorage):
        def write(self, hard_state, entries, snapshot, sync, done):
            done()

        def compact(self, snapshot, done):
            raise OSError(5, "Input/output error")

    config = Configuration.make(voters=["a"], addresses={"a": "a"})
    hs, entries = bootstrap(config)
    core = RaftCore("a", RaftSettings(), random.Random(1), hs, None, entries)
    events = HeardFailure()
    replica = Replica(core, CompactFails(), Recorder(), KVMachine(), events)
    replica.input(lambda c: c.campaign())
    replica.drain()
    assert core.is_leader() and core.applied >= 2
    taken = []
    replica.compact(0, then=taken.append)
    replica.drain()
    assert taken == [] and [type(e) for e in events.storage_errors] == [OSError] and replica.busy


def test_inputs_that_waited_behind_a_write_share_the_next_ready():
    """Two appends that arrived while the disk was busy: one write holds both, one acknowledgement each after it."""
    replica, storage, transport, _ = follower_replica()
    def append(index):
        entry = Entry(index, 2, EntryKind.NORMAL, encode_envelope(Envelope(b"c", index, 1, 0, Set(b"k", b"v"))))
        return AppendEntries(2, "a", "b", index - 1, 1 if index == 2 else 2, [entry], 0)

    replica.step(append(2))
    replica.drain()
    replica.step(append(3))
    replica.step(append(4))
    replica.drain()
    assert len(storage.writes) == 1 and len(replica.inbox) == 2
    storage.complete()
    assert len(storage.writes) == 2  # not three: both waiting inputs went into one Ready
    assert [e.index for e in storage.writes[1][1]] == [3, 4]
    acked = [m.index for m in transport.sent if isinstance(m, AppendEntriesReply) and m.success]
    assert acked == [2]  # the second write has not completed yet
    storage.complete()
    acked = [m.index for m in transport.sent if isinstance(m, AppendEntriesReply) and m.success]
    assert acked[0] == 2 and acked[-1] == 4


def test_every_input_is_told_to_the_embedder():
    """``stepped`` follows each input, also those run from the inbox (the simulator checks commits there)."""

    class Counting(Heard):
        def __init__(self):
            super().__init__()
            self.stepped_count = 0

        def stepped(self, core):
            self.stepped_count += 1

    config = Configuration.make(voters=["a", "b", "c"], addresses={n: n for n in "abc"})
    hs, entries = bootstrap(config)
    core = RaftCore("b", RaftSettings(), random.Random(1), hs, None, entries)
    storage, events = LaterStorage(), Counting()
    replica = Replica(core, storage, Recorder(), KVMachine(), events)
    replica.step(append_from_leader(index=2))
    replica.tick()
    replica.drain()
    assert events.stepped_count == 2
    replica.step(append_from_leader(index=3))
    replica.tick()
    storage.complete()
    assert events.stepped_count == 4


def test_a_write_that_completes_with_an_error_fail_stops_the_loop():
    """A writer thread's failure comes back through done(error): told once, nothing acknowledged, nothing more runs."""
    replica, storage, transport, events = follower_replica()
    told = []
    events.storage_failed = told.append
    replica.step(append_from_leader())
    replica.drain()
    error = OSError(5, "Input/output error")
    storage.writes[-1][4](error)
    assert told == [error] and replica.failed is error and replica.busy
    assert not any(isinstance(m, AppendEntriesReply) for m in transport.sent)
    replica.step(append_from_leader(index=3))
    replica.drain()
    assert len(storage.writes) == 1 and told == [error]


def test_a_long_run_of_commits_is_applied_in_steps_with_the_network_in_between():
    """Twenty commits learnt at once, four per Ready: drain stops after a full run (``more``) until all are applied."""
    config = Configuration.make(voters=["a", "b", "c"], addresses={n: n for n in "abc"})
    hs, entries = bootstrap(config)
    core = RaftCore("b", RaftSettings(apply_entries_max=4), random.Random(1), hs, None, entries)
    storage, events = LaterStorage(), Heard()
    machine = KVMachine()
    replica = Replica(core, storage, Recorder(), machine, events)
    batch = [Entry(i, 2, EntryKind.NORMAL, encode_envelope(Envelope(b"c", i, 1, 0, Set(b"k%d" % i, b"v"))))
             for i in range(2, 22)]
    replica.step(AppendEntries(2, "a", "b", 1, 1, batch, 0))
    replica.drain()
    storage.complete()  # the entries are durable; nothing is committed yet
    replica.step(AppendEntries(2, "a", "b", 21, 2, [], 21))  # the leader: all of them are committed
    replica.drain()
    storage.complete()  # the commit index (a hard state) written; then the first run is applied
    steps = [machine.applied_index]
    while replica.more:
        replica.drain()
        steps.append(machine.applied_index)
    assert steps[-1] == 21 and len(steps) >= 3
    assert all(b - a <= 4 for a, b in zip(steps, steps[1:]))


class LaterCompaction(LaterStorage):
    """Writes complete at once; a compaction only when the test calls its ``done`` (a writer thread's)."""

    def write(self, hard_state, entries, snapshot, sync, done):
        done()

    def compact(self, snapshot, done):
        self.compacted.append((snapshot, done))


def test_a_compaction_completing_later_holds_the_loop_like_a_write():
    """A compaction on a writer thread: inputs wait until it completes (the state's flush must not move under it)."""

    config = Configuration.make(voters=["a"], addresses={"a": "a"})
    hs, entries = bootstrap(config)
    core = RaftCore("a", RaftSettings(), random.Random(1), hs, None, entries)
    storage, events = LaterCompaction(), Heard()
    replica = Replica(core, storage, Recorder(), KVMachine(), events)
    replica.input(lambda c: c.campaign())
    replica.drain()
    assert core.is_leader()
    taken = []
    replica.compact(0, then=taken.append)
    replica.drain()
    assert len(storage.compacted) == 1 and replica.busy and replica.compacting
    replica.propose(encode_envelope(Envelope(b"c", 1, 1, 0, Set(b"k", b"v"))), "t")
    replica.drain()
    assert events.done == [] and len(replica.inbox) == 1  # waits behind the compaction
    storage.compacted[0][1]()  # the writer thread is done
    assert not replica.compacting and not replica.inbox
    assert [token for token, _, _ in events.done] == ["t"]
    assert taken and taken[0].index == storage.compacted[0][0].index


def test_a_compaction_failing_later_fail_stops_the_loop():
    config = Configuration.make(voters=["a"], addresses={"a": "a"})
    hs, entries = bootstrap(config)
    core = RaftCore("a", RaftSettings(), random.Random(1), hs, None, entries)
    storage, events = LaterCompaction(), HeardFailure()
    replica = Replica(core, storage, Recorder(), KVMachine(), events)
    replica.input(lambda c: c.campaign())
    replica.drain()
    replica.compact(0)
    replica.drain()
    error = OSError(28, "No space left on device")
    storage.compacted[0][1](error)
    assert events.storage_errors == [error] and replica.failed is error and replica.busy


class AtOnce(LaterStorage):
    """Writes (and compactions) complete inside the call, as a storage without a writer thread's do."""

    def write(self, hard_state, entries, snapshot, sync, done):
        self.writes.append((hard_state, list(entries), snapshot, sync, done))
        done()


def test_a_commit_answers_its_clients_before_the_followers_hear_of_it():
    """
    A leader's commit Ready persists nothing: its proposals are answered (and
    ``finished`` told, when the node pushes the replies out) before its
    messages, the new commit index for the followers, are sent.
    """
    config = Configuration.make(voters=["a", "b", "c"], addresses={n: n for n in "abc"})
    order = []

    class Wire(Recorder):
        def __init__(self, node):
            super().__init__()
            self.node = node

        def send_many(self, messages):
            super().send_many(messages)
            if self.node == "a":
                order.append(("sent", sorted({type(m).__name__ for m in messages})))

    class Told(Heard):
        def proposal_done(self, token, result, index):
            super().proposal_done(token, result, index)
            order.append(("answered", token))

        def finished(self, core, rd):
            order.append(("finished", None))

    replicas = {}
    for node in "abc":
        hs, entries = bootstrap(config)
        core = RaftCore(node, RaftSettings(), random.Random(ord(node)), hs, None, entries)
        replicas[node] = Replica(core, AtOnce(), Wire(node), KVMachine(), Told() if node == "a" else Heard())

    def settle():
        for _ in range(50):
            moved = False
            for replica in replicas.values():
                replica.drain()
                sent, replica.transport.sent = replica.transport.sent, []
                for m in sent:
                    replicas[m.dst].step(m)
                    moved = True
            if not moved:
                return
        raise AssertionError("the messages never settled")

    replicas["a"].input(lambda core: core.campaign())
    settle()
    assert replicas["a"].core.is_leader
    order.clear()
    replicas["a"].propose(encode_envelope(Envelope(b"c", 1, 1, 0, Set(b"k", b"v"))), "client")
    settle()
    answered = order.index(("answered", "client"))
    assert order[answered + 1] == ("finished", None)
    # The next send after the answer is the commit index going out to the followers.
    after = [entry for entry in order[answered:] if entry[0] == "sent"]
    assert after and after[0][1] == ["AppendEntries"]
    assert all(replica.machine.applied_index == replicas["a"].machine.applied_index for replica in replicas.values())
