"""Tests for kvd.resp.budget: the client port's requests per reactor turn, over all connections."""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from kvd.kv.commands import Get
from kvd.resp.budget import TurnBudget
from kvd.resp.protocol import RespFactory
from tests.resp.test_protocol import MachineExecutor, packed


class Parked:
    def __init__(self, name, resumed):
        self.name, self.resumed = name, resumed

    def resume_after_budget(self):
        self.resumed.append(self.name)


def test_a_turn_allows_its_budget_then_parks_and_the_next_turn_resumes_in_order():
    clock = Clock()
    budget = TurnBudget(clock.callLater, per_turn=3)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    assert len(clock.getDelayedCalls()) == 1  # one call starts the next turn, however much was taken
    resumed = []
    a, b = Parked("a", resumed), Parked("b", resumed)
    for protocol in (b, a, b):
        budget.park(protocol)
    clock.advance(0)
    assert resumed == ["b", "a"]  # each parked protocol once, in the order it parked
    assert budget.left == 3 and clock.getDelayedCalls() == []
    with pytest.raises(ValueError):
        TurnBudget(clock.callLater, per_turn=0)


def connect(factory):
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


class Turns:
    """A reactor's callLater(0) as the reactor runs it: what a turn schedules runs in the next turn."""

    def __init__(self):
        self.calls = []

    def call_later(self, delay, fn):
        assert delay == 0
        self.calls.append(fn)
        return fn

    def next_turn(self):
        calls, self.calls = self.calls, []
        for fn in calls:
            fn()


def test_pipelines_of_many_connections_are_dispatched_over_turns_each_in_order():
    """Two connections of 5 pipelined SETs each, 4 a turn: 4, 4, then 2; every reply in its connection's order."""
    turns = Turns()
    executor = MachineExecutor()
    factory = RespFactory(executor)
    factory.budget = TurnBudget(turns.call_later, per_turn=4)
    one, one_out = connect(factory)
    two, two_out = connect(factory)
    one.dataReceived(b"".join(packed("SET", "k", "1-%d" % i) for i in range(5)))
    two.dataReceived(b"".join(packed("SET", "k", "2-%d" % i) for i in range(5)))
    assert executor.seq == 4 and one_out.value() == b"+OK\r\n" * 4 and two_out.value() == b""
    assert one.transport.producerState == "paused"  # no more reading while its backlog waits
    turns.next_turn()
    assert executor.seq == 8 and one_out.value() == b"+OK\r\n" * 5 and two_out.value() == b"+OK\r\n" * 3
    turns.next_turn()
    assert executor.seq == 10 and two_out.value() == b"+OK\r\n" * 5
    assert one.transport.producerState == two.transport.producerState == "producing"
    assert executor.machine.read(Get(b"k")) == b"2-4"


def test_without_a_budget_a_burst_is_dispatched_at_once():
    executor = MachineExecutor()
    proto, out = connect(RespFactory(executor))
    proto.dataReceived(b"".join(packed("SET", "k", str(i)) for i in range(300)))
    assert executor.seq == 300 and out.value() == b"+OK\r\n" * 300


def test_a_turn_also_ends_once_its_time_is_spent_however_few_it_dispatched():
    now = [0.0]
    clock = Clock()
    budget = TurnBudget(clock.callLater, per_turn=100, turn_s=0.005, clock=lambda: now[0])
    assert budget.take() and budget.take()  # the first take starts the turn's time
    now[0] = 0.004
    assert budget.take()
    now[0] = 0.0051
    assert not budget.take() and not budget.take()  # spent: park until the next turn
    clock.advance(0)
    assert budget.left == 100
    assert budget.take()  # a new turn: a new deadline, from now
    now[0] = 0.010
    assert budget.take()
