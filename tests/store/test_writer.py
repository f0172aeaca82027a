"""
The storage's writer thread (kvd.store.writer) and LmdbStorage's writes on
it: the Ready loop's write completes later, on the owner's thread, with what
it wrote durable and the applied state's flush riding with it; an error comes
back as ``done(error)``; a close waits for the write under way.
"""

import queue
import threading

from kvd.kv.commands import Envelope, Get, Set, encode_envelope
from kvd.kv.machine import KVMachine
from kvd.raft.messages import Entry, EntryKind, HardState
from kvd.store.lmdb import LmdbStorage
from kvd.store.state import LmdbState
from kvd.store.writer import WriterThread


class Owner:
    """The owner's thread (the reactor's part): what the writer delivers waits here until ``pump``."""

    def __init__(self):
        self.calls = queue.SimpleQueue()

    def deliver(self, fn, *args):
        self.calls.put((fn, args))

    def pump(self, timeout=10.0):
        fn, args = self.calls.get(timeout=timeout)
        fn(*args)


def entries(first, last, term=1):
    return [Entry(i, term, EntryKind.NORMAL, b"e%d" % i) for i in range(first, last + 1)]


def test_jobs_run_in_order_on_another_thread_and_results_come_back_through_deliver():
    owner = Owner()
    writer = WriterThread(owner.deliver)
    ran, results = [], []
    boom = OSError(5, "Input/output error")

    def fail():
        raise boom

    writer.submit(lambda: ran.append(("a", threading.get_ident())), results.append)
    writer.submit(fail, results.append)
    writer.submit(lambda: ran.append(("b", threading.get_ident())), results.append)
    for _ in range(3):
        owner.pump()
    writer.stop()
    assert [name for name, _ in ran] == ["a", "b"]
    assert all(ident != threading.get_ident() for _, ident in ran)
    assert results == [None, boom, None]


def test_no_thread_before_the_first_job():
    """twistd opens the store before it forks: nothing may start a thread then."""
    before = threading.active_count()
    writer = WriterThread(Owner().deliver)
    assert threading.active_count() == before
    writer.stop()  # nothing to stop


def test_a_write_completes_later_on_the_owners_thread_and_is_durable(tmp_path):
    owner = Owner()
    storage = LmdbStorage(str(tmp_path / "n"), sync=True, deliver=owner.deliver)
    storage.open("c", "n")
    done = []
    storage.write(HardState(term=1, vote="n"), entries(1, 3), None, True, lambda error=None: done.append(error))
    assert done == []  # not before the owner runs what the writer delivered
    owner.pump()
    assert done == [None]
    storage.write(HardState(term=1, vote="n", commit=2), [], None, False, lambda error=None: done.append(error))
    assert done == [None, None]  # a commit-only change needs no transaction: done at once
    storage.close()
    again = LmdbStorage(str(tmp_path / "n"))
    again.open("c", "n")
    restored = again.load()
    assert [e.index for e in restored.entries] == [1, 2, 3]
    assert (restored.hard_state.term, restored.hard_state.vote, restored.hard_state.commit) == (1, "n", 2)
    again.close()


def test_an_error_in_the_transaction_comes_back_as_done_error_and_nothing_is_written(tmp_path):
    owner = Owner()
    storage = LmdbStorage(str(tmp_path / "n"), sync=False, deliver=owner.deliver)
    storage.open("c", "n")
    done = []
    storage.write(None, entries(5, 6), None, True, lambda error=None: done.append(error))  # does not continue the log
    owner.pump()
    assert len(done) == 1 and isinstance(done[0], ValueError)
    assert storage.load().entries == []
    storage.close()


def test_the_applied_state_is_flushed_on_the_writer_thread_and_committed_on_the_owners(tmp_path):
    owner = Owner()
    state = LmdbState(flush_writes=1)
    storage = LmdbStorage(str(tmp_path / "n"), sync=False, state=state, deliver=owner.deliver)
    machine = KVMachine(keyspace=state)
    storage.open("c", "n")
    machine.reload()
    for i in range(1, 4):
        machine.apply(i, encode_envelope(Envelope(b"c", i, i, 1000 + i, Set(b"k%d" % i, b"v%d" % i))))
    done = []
    storage.write(HardState(term=1), entries(1, 3), None, True, lambda error=None: done.append(error))
    assert machine.read(Get(b"k2")) == b"v2"  # served from the overlay while the write runs
    owner.pump()
    assert done == [None] and len(state._pending) == 0  # flushed: the overlay let go of it on this thread
    assert machine.read(Get(b"k2")) == b"v2"  # now from LMDB
    storage.close()
    state2 = LmdbState()
    again = LmdbStorage(str(tmp_path / "n"), state=state2)
    machine2 = KVMachine(keyspace=state2)
    again.open("c", "n")
    machine2.reload()
    assert machine2.applied_index == 3 and machine2.read(Get(b"k3")) == b"v3"
    again.close()


def test_close_waits_for_the_write_under_way(tmp_path):
    owner = Owner()
    storage = LmdbStorage(str(tmp_path / "n"), sync=True, deliver=owner.deliver)
    storage.open("c", "n")
    storage.write(HardState(term=2), entries(1, 200), None, True, lambda error=None: None)
    storage.close()  # no pump: the owner never heard, yet the write is whole on disk
    again = LmdbStorage(str(tmp_path / "n"))
    again.open("c", "n")
    assert len(again.load().entries) == 200 and again.load().hard_state.term == 2
    again.close()


def test_a_compaction_runs_on_the_writer_thread_too(tmp_path):
    from kvd.raft.messages import Configuration, Snapshot

    owner = Owner()
    storage = LmdbStorage(str(tmp_path / "n"), sync=True, deliver=owner.deliver)
    storage.open("c", "n")
    storage.write(HardState(term=1), entries(1, 50), None, True, lambda error=None: None)
    owner.pump()
    done = []
    storage.compact(Snapshot(40, 1, Configuration(), b"state"), lambda error=None: done.append(error))
    assert done == []
    owner.pump()
    assert done == [None]
    restored = storage.load()
    assert restored.snapshot.index == 40 and [e.index for e in restored.entries] == list(range(41, 51))
    storage.close()
