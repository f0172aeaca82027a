"""
kvd.check.expiry on hand-made histories: each of its four rules catches what it should, and lets
through what a register whose values expire may do.
"""

from kvd.check.expiry import ExpiryOp, check, check_history, from_record
from kvd.check.linear import FAIL, INFO, INVALID, OK, READ, VALID, WRITE
from kvd.jepsen.expiry import TTL_MAX_MS, TTL_MIN_MS, ttl_ms


def w(value, invoke, complete, ttl=1000, outcome=OK, key="k"):
    return ExpiryOp(0, "c", key, WRITE, value, ttl, outcome, None, invoke, complete if outcome != INFO else None)


def r(result, invoke, complete, key="k", process="r"):
    return ExpiryOp(0, process, key, READ, None, None, OK, result, invoke, complete)


def test_reads_within_the_ttl_and_nothing_after_it_are_valid():
    ops = [w("a", 0.0, 0.1), r("a", 0.2, 0.3), r("a", 1.0, 1.05), r(None, 1.2, 1.3), r(None, 5.0, 5.1)]
    assert check(ops) == []
    assert check_history(ops).verdict == VALID


def test_a_read_after_expiry_is_caught():
    # Written by 0.1 s with a 1 s ttl: gone by 1.1 s; a read that begins at 1.2 s must not find it.
    problems = check([w("a", 0.0, 0.1), r("a", 1.2, 1.3)])
    assert len(problems) == 1 and "after its expiry" in problems[0]


def test_the_first_read_of_a_value_bounds_its_log_time_when_the_write_is_unknown():
    # The write's answer was lost: its entry was logged before the first read that saw it ended (0.2 s).
    ops = [w("a", 0.0, None, outcome=INFO), r("a", 0.1, 0.2), r("a", 1.1, 1.15)]
    assert check(ops) == []
    problems = check(ops + [r("a", 1.3, 1.4, process="late")])
    assert len(problems) == 1 and "late read a" in problems[0]


def test_a_key_gone_before_its_ttl_is_caught_and_one_that_may_have_expired_is_not():
    problems = check([w("a", 0.0, 0.1), r(None, 0.5, 0.6)])
    assert len(problems) == 1 and "could not have expired" in problems[0]
    # The read ends after the write's invocation plus the ttl: the value may be gone.
    assert check([w("a", 0.0, 0.1), r(None, 0.9, 1.05)]) == []
    # A write not answered before the read began proves nothing.
    assert check([w("a", 0.0, 0.6), r(None, 0.5, 0.7)]) == []


def test_a_stale_read_and_a_phantom_are_caught():
    stale = check([w("a", 0.0, 0.1), w("b", 0.2, 0.3), r("a", 0.4, 0.5)])
    assert len(stale) == 1 and "but b overwrote it" in stale[0]
    # Concurrent writes may take effect in either order.
    assert check([w("a", 0.0, 0.3), w("b", 0.2, 0.3), r("a", 0.4, 0.5)]) == []
    phantom = check([w("a", 0.0, 0.1), r("zz", 0.2, 0.3)])
    assert len(phantom) == 1 and "never written" in phantom[0]


def test_failed_writes_name_no_value_and_keys_are_checked_apart():
    ops = [w("a", 0.0, 0.1, outcome=FAIL), r("a", 0.2, 0.3), w("b", 0.0, 0.1, key="j"), r("b", 0.2, 0.3, key="j")]
    result = check_history(ops)
    assert result.verdict == INVALID
    assert [k.key for k in result.anomalies] == ["k"] and "never written" in result.anomalies[0].explanation


def test_history_records_become_ops():
    write = {"index": 3, "process": "c1", "key": "x0-0", "f": WRITE, "value": ["c1-1", 700], "outcome": OK,
             "result": None, "invoke": 1.0, "complete": 1.1, "node": "n1"}
    read = {"index": 4, "process": "c2", "key": "x0-0", "f": READ, "value": None, "outcome": OK, "result": "c1-1",
            "invoke": 1.2, "complete": 1.3, "node": "n2"}
    assert from_record(write) == ExpiryOp(3, "c1", "x0-0", WRITE, "c1-1", 700, OK, None, 1.0, 1.1, "n1")
    assert from_record(read).result == "c1-1" and from_record(read).ttl_ms is None


def test_every_key_has_one_ttl_in_range():
    ttls = {ttl_ms("x%d-%d" % (slot, gen)) for slot in range(4) for gen in range(50)}
    assert all(TTL_MIN_MS <= t <= TTL_MAX_MS for t in ttls) and len(ttls) > 50
    assert ttl_ms("x1-2") == ttl_ms("x1-2")
