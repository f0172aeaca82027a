"""
The leader's ReadIndex bookkeeping (kvd.raft.read_only) on its own: reads
queue for the next round, a round answers them with the commit index it
started at once a quorum of voters acknowledged its context, and the state
is dropped when the term ends.  The protocol around it (when a round may
start, the heartbeats, the replies) is tested through the core in
test_core.py.
"""

import pytest

from kvd.raft.read_only import ReadOnly, ReadRequest

VOTERS = ("a", "b", "c")


def test_a_read_waits_for_a_round():
    """A queued read is not in any round until one starts; no round means no heartbeat context."""
    ro = ReadOnly()
    ro.queue(b"x", "a")
    assert ro.waiting == [ReadRequest(b"x", "a")]
    assert not ro.in_flight and ro.ctx() == b""
    assert ro.release(VOTERS) is None


def test_a_round_is_released_by_a_quorum_of_acknowledgements():
    """The leader acks its own round; one more voter makes a quorum of three and releases its reads at the start index."""
    ro = ReadOnly()
    ro.queue(b"x", "a")
    ro.queue(b"y", "b")
    ctx = ro.start(12, "a")
    assert ro.in_flight and ro.ctx() == ctx and ro.waiting == []
    assert ro.release(VOTERS) is None  # only the leader so far
    assert ro.ack("b", ctx)
    assert ro.release(VOTERS) == (12, [ReadRequest(b"x", "a"), ReadRequest(b"y", "b")])
    assert not ro.in_flight and ro.ctx() == b""
    assert ro.release(VOTERS) is None  # released once


def test_reads_arriving_during_a_round_wait_for_the_next():
    """A read that arrives after a round started is not answered by it: that round may predate it."""
    ro = ReadOnly()
    ro.queue(b"x", "a")
    ctx = ro.start(5, "a")
    ro.queue(b"late", "c")
    ro.ack("b", ctx)
    index, requests = ro.release(VOTERS)
    assert (index, [r.ctx for r in requests]) == (5, [b"x"])
    assert [r.ctx for r in ro.waiting] == [b"late"]
    ctx2 = ro.start(9, "a")
    assert ctx2 != ctx
    assert not ro.ack("b", ctx)  # an old round's reply does not count for the new one
    assert ro.release(VOTERS) is None
    assert ro.ack("c", ctx2)
    assert ro.release(VOTERS) == (9, [ReadRequest(b"late", "c")])


def test_acks_from_non_voters_do_not_count():
    """A learner's (or a removed voter's) heartbeat reply does not complete a round."""
    ro = ReadOnly()
    ro.queue(b"x", "a")
    ctx = ro.start(3, "a")
    ro.ack("learner", ctx)
    assert ro.release(VOTERS) is None
    ro.ack("b", ctx)
    assert ro.release(("a", "c", "d", "e")) is None  # b was removed meanwhile
    assert ro.release(("a", "b")) is not None  # ... or the configuration shrank to one it completes


def test_a_lone_voter_completes_its_round_at_once():
    """With the leader as the only voter, its own acknowledgement is a quorum."""
    ro = ReadOnly()
    ro.queue(b"x", "a")
    ro.start(4, "a")
    assert ro.release(("a",)) == (4, [ReadRequest(b"x", "a")])


def test_reset_drops_every_read_but_keeps_round_ids_unique():
    """When the term ends, waiting and in-flight reads are dropped; a later round gets a new context."""
    ro = ReadOnly()
    ro.queue(b"x", "a")
    ctx = ro.start(3, "a")
    ro.queue(b"y", "a")
    ro.reset()
    assert not ro.in_flight and ro.waiting == [] and ro.round_requests == []
    assert ro.release(("a",)) is None
    ro.queue(b"z", "a")
    assert ro.start(8, "a") != ctx
    assert not ro.ack("b", ctx)


def test_start_needs_waiting_reads_and_no_round_in_flight():
    """Starting a round with nothing to read, or over another round, is a bug in the caller."""
    ro = ReadOnly()
    with pytest.raises(AssertionError):
        ro.start(1, "a")
    ro.queue(b"x", "a")
    ro.start(1, "a")
    ro.queue(b"y", "a")
    with pytest.raises(AssertionError):
        ro.start(2, "a")
