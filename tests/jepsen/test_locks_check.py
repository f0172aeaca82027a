"""
kvd.check.locks on hand-made histories: each rule catches what it should, and lets through what a lock on a
lease may do (a holder whose lease expired still believes it holds the lock; its writes are refused).
The workload's ops against a scripted connection are at the end.
"""

from kvd.check.linear import FAIL, INFO, INVALID, OK, VALID
from kvd.check.locks import ACQUIRE, FINAL, READ, WRITE, LockOp, check, check_history, from_record
from kvd.jepsen.locks import LockWorkload
from kvd.jepsen.workload import History
from kvd.resp.client import Indeterminate, ReplyError, Simple

K = "reg:L0"


def acq(token, invoke, complete, read=None, process="c", outcome=OK):
    return LockOp(0, process, K, ACQUIRE, outcome, invoke, complete, value="%s-h%s" % (process, token), token=token,
                  read=read)


def w(value, prev, invoke, complete, applied=True, outcome=OK, process="c"):
    return LockOp(0, process, K, WRITE, outcome, invoke, None if outcome == INFO else complete, value=value,
                  token=int(value.split(":")[0]), applied=applied if outcome == OK else None,
                  prev=prev if outcome == OK and applied else None)


def final(value, t=100.0):
    return LockOp(0, FINAL, K, READ, OK, t, t + 0.01, read=value)


def good_history():
    """a takes token 3, writes twice; its lease lapses; b takes token 7 (reading a's last write), writes;
    a, paused past its ttl, tries again: refused by the fence; the final read finds b's write."""
    return [
        acq(3, 0.0, 0.1, None, "a"),
        w("3:a-1", None, 0.2, 0.3, process="a"),
        w("3:a-2", "3:a-1", 0.4, 0.5, process="a"),
        acq(7, 2.0, 2.1, "3:a-2", "b"),
        w("7:b-1", "3:a-2", 2.2, 2.3, process="b"),
        w("3:a-3", None, 2.4, 2.5, applied=False, process="a"),
        acq(None, 2.2, 4.2, process="c"),  # not acquired: proves nothing
        final("7:b-1"),
    ]


def test_a_history_with_a_stale_holder_fenced_out_is_valid():
    assert check(good_history()) == []
    assert check_history(good_history()).verdict == VALID


def test_two_holders_at_one_token_are_caught():
    problems = check([acq(3, 0.0, 0.1, process="a"), acq(3, 0.05, 0.2, process="b")])
    assert len(problems) == 1 and "token 3 taken twice" in problems[0]


def test_a_token_out_of_real_time_order_is_caught_and_concurrent_ones_are_not():
    problems = check([acq(7, 0.0, 0.1, process="a"), acq(5, 0.2, 0.3, process="b")])
    assert len(problems) == 1 and "took token 5 after" in problems[0] and "token 7" in problems[0]
    assert check([acq(7, 0.0, 0.3, process="a"), acq(5, 0.2, 0.4, process="b")]) == []


def test_a_stale_write_landing_after_a_newer_holders_write_is_caught():
    ops = good_history()[:5] + [w("3:a-3", "7:b-1", 2.4, 2.5, process="a")]
    problems = check(ops)
    assert any("stale write 3:a-3" in p and "after '7:b-1' of token 7" in p for p in problems), problems


def test_a_stale_write_right_after_a_newer_holder_took_the_lock_is_caught():
    # b took token 7 having read a's 3:a-2; a's write lands next, before b wrote anything.
    ops = good_history()[:4] + [w("3:a-3", "3:a-2", 2.2, 2.3, process="a")]
    problems = check(ops)
    assert len(problems) == 1 and "write 3:a-3" in problems[0] and "took token 7" in problems[0]


def test_a_lost_write_and_a_refused_or_unknown_value_are_caught():
    forked = check([acq(3, 0.0, 0.1), w("3:c-1", None, 0.2, 0.3), w("3:c-2", None, 0.4, 0.5)])
    assert len(forked) == 1 and "both replaced None" in forked[0]
    refused = check([w("3:c-1", None, 0.2, 0.3, applied=False), w("4:c-2", "3:c-1", 0.4, 0.5)])
    assert len(refused) == 1 and "refused by its fence" in refused[0]
    phantom = check([w("4:c-2", "9:x-1", 0.4, 0.5)])
    assert len(phantom) == 1 and "never written" in phantom[0]
    # A write whose answer was lost may have applied: a later write may replace it.
    assert check([w("3:c-1", None, 0.2, 0.3, outcome=INFO), w("4:c-2", "3:c-1", 0.4, 0.5)]) == []


def test_the_final_read_must_find_the_last_write():
    ops = good_history()[:-1]
    assert any("which 7:b-1" in p for p in check(ops + [final("3:a-2")]))
    assert any("found no value" in p for p in check(ops + [final(None)]))
    # A read during the run (the nemesis's read-back) may find an older value, but a written one.
    during = LockOp(0, "read-back", K, READ, OK, 0.6, 0.7, read="3:a-2")
    assert check(ops + [during, final("7:b-1")]) == []
    bad = LockOp(0, "read-back", K, READ, OK, 0.6, 0.7, read="3:a-3")
    assert any("refused by its fence" in p for p in check(ops + [bad]))


def test_locks_are_checked_apart_and_records_become_ops():
    other = [LockOp(0, "a", "reg:L1", ACQUIRE, OK, 0.0, 0.1, value="a-1", token=3)]
    result = check_history(good_history() + other + [acq(3, 0.0, 0.1, process="x")])
    assert result.verdict == INVALID and [k.key for k in result.anomalies] == [K]
    rec = {"index": 5, "process": "c1", "key": K, "f": WRITE, "value": "12:c1-4", "outcome": OK,
           "result": {"applied": 1, "prev": "9:c0-2"}, "invoke": 1.0, "complete": 1.1, "node": "n1"}
    assert from_record(rec) == LockOp(5, "c1", K, WRITE, OK, 1.0, 1.1, value="12:c1-4", token=12, applied=True,
                                      prev="9:c0-2", node="n1")
    rec = dict(rec, f=ACQUIRE, value="c1-3", result={"token": 12, "read": None})
    assert from_record(rec).token == 12
    assert from_record(dict(rec, outcome=FAIL, result=None)).token is None


# ------------------------------------------------------------ the workload's ops, on a scripted connection
class Conn:
    def __init__(self, *batches):
        self.batches, self.sent = list(batches), []

    def pipeline(self, commands):
        self.sent.append([tuple(str(x) for x in c) for c in commands])
        reply = self.batches.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self):
        pass


def workload(conn, planted=False):
    from kvd.cli.lock import Nodes

    w = LockWorkload(None, History(), seed=1, split=planted)
    return w, Nodes(["n1"], 1.0, connect=lambda a, t: conn)


def test_an_acquisition_reads_the_register_in_its_entry_and_a_write_is_fenced():
    conn = Conn([5], [Simple(b"OK")] * 4 + [[Simple(b"OK"), [b"c0-1", 9, 9, 1], b"3:c1-2"]],
                [[1, [b"3:c1-2", Simple(b"OK")], 10]], [[0, [], 10]])
    w, nodes = workload(conn)
    lock = w.acquire(nodes, "c0", K, "c0-1")
    assert lock.held.token == 9
    assert conn.sent[1][1] == ("SET", "lock:L0", "c0-1", "NX", "LEASE", "5") and conn.sent[1][3] == ("GET", K)
    assert w.write(nodes, "c0", K, 9, "9:c0-2") == OK
    assert conn.sent[2] == [("KVD.TXN", "IF", "CREATE", "lock:L0", "=", "9", "THEN", "GET", K, "SET", K, "9:c0-2")]
    assert w.write(nodes, "c0", K, 9, "9:c0-3") == OK
    recs = w.history.finished_ops()
    assert recs[0]["result"] == {"token": 9, "read": "3:c1-2"}
    assert recs[1]["result"] == {"applied": 1, "prev": "3:c1-2"} and recs[2]["result"] == {"applied": 0, "prev": None}
    assert w.stats[WRITE] == {"applied": 1, "refused": 1, FAIL: 0, INFO: 0}


def test_write_outcomes_and_the_planted_set_without_nx():
    conn = Conn([ReplyError("NOLEADER no leader")], Indeterminate("lost"), [ReplyError("ERR odd")])
    w, nodes = workload(conn)
    assert w.write(nodes, "c0", K, 9, "9:c0-2") == FAIL
    assert w.write(nodes, "c0", K, 9, "9:c0-3") == INFO
    assert w.write(nodes, "c0", K, 9, "9:c0-4") == INFO and "ERR odd" in w.unexpected[0]
    conn = Conn([5], [Simple(b"OK")] * 4 + [[Simple(b"OK"), [b"c0-1", 9, 9, 2], None]])
    w, nodes = workload(conn, planted=True)
    w.acquire(nodes, "c0", K, "c0-1")
    assert conn.sent[1][1] == ("SET", "lock:L0", "c0-1", "LEASE", "5")
