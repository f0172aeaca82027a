"""The expiry workload's client ops (kvd.jepsen.expiry) against a scripted connection: what is sent and recorded."""

from kvd.check.linear import FAIL, INFO, OK, READ, WRITE
from kvd.errors import Code
from kvd.jepsen.expiry import ExpiryWorkload, ttl_ms
from kvd.jepsen.workload import History
from kvd.resp.client import Indeterminate, ReplyError, Simple


class FakeConn:
    def __init__(self, *replies):
        self.replies = list(replies)
        self.sent = []

    def call(self, *args):
        self.sent.append(args)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def last(w):
    return w.history.finished_ops()[-1]


def test_a_write_sends_its_keys_ttl_and_records_it():
    w = ExpiryWorkload(None, History(), seed=1)
    conn = FakeConn(Simple(b"OK"))
    assert w.op(conn, "c0", "n1", "x0-0", WRITE, "c0-1") == OK
    assert conn.sent == [("SET", "x0-0", "c0-1", "PX", str(ttl_ms("x0-0")))]
    rec = last(w)
    assert rec["value"] == ["c0-1", ttl_ms("x0-0")] and rec["outcome"] == OK


def test_the_planted_bug_records_a_third_of_the_ttl_sent():
    w = ExpiryWorkload(None, History(), seed=1, split=True)
    conn = FakeConn(Simple(b"OK"))
    w.op(conn, "c0", "n1", "x0-0", WRITE, "c0-1")
    assert conn.sent[0][-1] == str(ttl_ms("x0-0")) and last(w)["value"][1] == ttl_ms("x0-0") // 3


def test_reads_and_errors_become_outcomes():
    w = ExpiryWorkload(None, History(), seed=1)
    assert w.op(FakeConn(b"c1-4"), "c0", "n1", "x0-0", READ, None) == OK and last(w)["result"] == "c1-4"
    assert w.op(FakeConn(None), "c0", "n1", "x0-0", READ, None) == OK and last(w)["result"] is None
    assert w.op(FakeConn(ReplyError("NOLEADER no leader")), "c0", "n1", "x0-0", WRITE, "c0-2") == FAIL
    assert w.op(FakeConn(ReplyError("TIMEOUT not committed")), "c0", "n1", "x0-0", WRITE, "c0-3") == INFO
    assert w.op(FakeConn(Indeterminate("connection lost")), "c0", "n1", "x0-0", READ, None) == INFO
    assert w.unexpected == []
    assert w.op(FakeConn(Simple(b"QUEUED")), "c0", "n1", "x0-0", WRITE, "c0-4") == INFO
    assert len(w.unexpected) == 1 and "unexpected reply" in w.unexpected[0]
    assert w.stats[WRITE] == {OK: 0, FAIL: 1, INFO: 2}
    assert w.stats[READ] == {OK: 2, FAIL: 0, INFO: 1, "found": 1, "empty": 1}
