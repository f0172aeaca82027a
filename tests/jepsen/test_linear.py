"""
The linearizability checker alone (kvd.check.linear): known-good histories
pass, including overlapping operations and unknown outcomes; known-bad ones
fail with an explanation; a budget that runs out gives "unknown", never a
pass.  Random histories built by a register with a linearization point inside
every operation's interval must all pass.
"""

import random

import pytest

from kvd.check.linear import (
    CAS, DELETE, FAIL, INFO, INVALID, OK, READ, UNKNOWN, VALID, WRITE, Op, check, check_key,
)


class H:
    """Builds a history: H().w("a", 0, 1).r("a", 2, 3) ..."""

    def __init__(self):
        self.ops = []

    def _add(self, f, start, end, key="k", value=None, result=None, outcome=OK, process=None):
        if outcome == INFO:
            end = None
        self.ops.append(Op(len(self.ops), process if process is not None else len(self.ops), key, f, value, outcome, result, start, end))
        return self

    def w(self, value, start, end, outcome=OK, key="k"):
        return self._add(WRITE, start, end, key, value, None, outcome)

    def r(self, result, start, end, outcome=OK, key="k"):
        return self._add(READ, start, end, key, None, result, outcome)

    def cas(self, expected, new, applied, start, end, outcome=OK, key="k"):
        return self._add(CAS, start, end, key, (expected, new), applied, outcome)

    def d(self, count, start, end, outcome=OK, key="k"):
        return self._add(DELETE, start, end, key, None, count, outcome)

    def verdict(self, budget_s=10.0):
        return check(self.ops, budget_s=budget_s).verdict


# ------------------------------------------------------------------ known good

def test_empty_and_sequential_histories_are_valid():
    assert check([]).verdict == VALID
    h = H().r(None, 0, 1).w("a", 2, 3).r("a", 4, 5).cas("a", "b", True, 6, 7).r("b", 8, 9)
    h.cas("a", "c", False, 10, 11).d(1, 12, 13).r(None, 14, 15).d(0, 16, 17)
    assert h.verdict() == VALID


def test_a_read_overlapping_a_write_may_see_either_value():
    assert H().w("a", 0, 1).w("b", 2, 6).r("a", 3, 4).verdict() == VALID
    assert H().w("a", 0, 1).w("b", 2, 6).r("b", 3, 4).verdict() == VALID


def test_concurrent_writes_take_one_order_that_every_later_read_agrees_with():
    base = H().w("a", 0, 5).w("b", 1, 4)
    assert base.r("a", 6, 7).r("a", 8, 9).verdict() == VALID
    h = H().w("a", 0, 5).w("b", 1, 4).r("b", 6, 7).r("b", 8, 9)
    assert h.verdict() == VALID
    # Reads during the overlap may see b then a (b linearized first, then a).
    assert H().w("a", 0, 10).w("b", 0, 10).r("b", 1, 2).r("a", 3, 4).r("a", 11, 12).verdict() == VALID


def test_an_unknown_write_may_take_effect_late_or_never():
    never = H().w("a", 0, 1).w("b", 2, 3, outcome=INFO).r("a", 10, 11).r("a", 20, 21)
    assert never.verdict() == VALID
    late = H().w("a", 0, 1).w("b", 2, 3, outcome=INFO).r("a", 10, 11).r("b", 20, 21)
    assert late.verdict() == VALID
    # ...but not before it was invoked.
    assert H().w("a", 0, 1).r("b", 2, 3).w("b", 4, 5, outcome=INFO).verdict() == INVALID


def test_an_unknown_compare_and_set_applies_only_if_its_expected_value_is_there():
    assert H().w("a", 0, 1).cas("a", "b", None, 2, 3, outcome=INFO).r("b", 5, 6).verdict() == VALID
    assert H().w("a", 0, 1).cas("a", "b", None, 2, 3, outcome=INFO).r("a", 5, 6).verdict() == VALID
    assert H().w("x", 0, 1).cas("a", "b", None, 2, 3, outcome=INFO).r("b", 5, 6).verdict() == INVALID


def test_failed_and_unknown_reads_are_ignored_and_failed_writes_never_happened():
    h = H().w("a", 0, 1).r("zzz", 2, 3, outcome=FAIL).r(None, 4, 5, outcome=INFO).w("b", 6, 7, outcome=FAIL).r("a", 8, 9)
    assert h.verdict() == VALID


def test_keys_are_checked_independently():
    h = H().w("a", 0, 10, key="x").w("b", 0, 10, key="y").r("a", 11, 12, key="x").r("b", 11, 12, key="y")
    result = check(h.ops)
    assert result.verdict == VALID and sorted(k.key for k in result.keys) == ["x", "y"]


def test_tied_times_count_as_concurrent():
    assert H().w("a", 0, 2).r("a", 2, 3).verdict() == VALID
    assert H().w("a", 0, 2).w("b", 2, 4).r("a", 2, 2).verdict() == VALID


# ------------------------------------------------------------------ known bad

def test_stale_read_fails():
    result = check(H().w("a", 0, 1).w("b", 2, 3).r("a", 4, 5).ops)
    assert result.verdict == INVALID
    explanation = result.anomalies[0].explanation
    assert "GET -> 'a'" in explanation and "no linearization" in explanation


def test_lost_write_fails():
    assert H().w("a", 0, 1).r(None, 2, 3).verdict() == INVALID
    assert H().w("a", 0, 1).w("b", 2, 3).r("b", 4, 5).r("a", 6, 7).verdict() == INVALID


def test_two_compare_and_sets_from_the_same_value_cannot_both_succeed():
    h = H().w("a", 0, 1).cas("a", "b", True, 2, 10).cas("a", "c", True, 3, 9)
    assert h.verdict() == INVALID
    # One of them failing is fine, whichever it is.
    assert H().w("a", 0, 1).cas("a", "b", True, 2, 10).cas("a", "c", False, 3, 9).verdict() == VALID
    assert H().w("a", 0, 1).cas("a", "b", False, 2, 10).cas("a", "c", True, 3, 9).verdict() == VALID


def test_a_compare_and_set_that_failed_while_its_value_was_there_fails():
    assert H().w("a", 0, 1).cas("a", "b", False, 2, 3).verdict() == INVALID
    assert H().r(None, 0, 1).cas("a", "b", True, 2, 3).verdict() == INVALID


def test_read_of_a_value_never_written_fails_with_a_plain_reason():
    result = check(H().w("a", 0, 1).r("ghost", 2, 3).ops)
    assert result.verdict == INVALID
    assert "never written" in result.anomalies[0].explanation


def test_read_of_a_failed_write_fails():
    assert H().w("a", 0, 1, outcome=FAIL).r("a", 2, 3).verdict() == INVALID


def test_delete_counts_must_match_the_register():
    assert H().d(1, 0, 1).verdict() == INVALID
    assert H().w("a", 0, 1).d(0, 2, 3).verdict() == INVALID
    assert H().w("a", 0, 1).d(1, 2, 3).r("a", 4, 5).verdict() == INVALID


def test_nonlinearizable_order_of_reads_fails():
    # Both writes done; one reader sees b then a: a cannot come back.
    assert H().w("a", 0, 1).w("b", 0, 1).r("b", 2, 3).r("a", 4, 5).verdict() == INVALID


def test_an_anomaly_on_one_key_names_that_key():
    h = H().w("a", 0, 1, key="good").r("a", 2, 3, key="good").w("a", 0, 1, key="bad").w("b", 2, 3, key="bad").r("a", 4, 5, key="bad")
    result = check(h.ops)
    assert result.verdict == INVALID
    assert [k.key for k in result.anomalies] == ["bad"]
    assert "bad" in result.report()


# ------------------------------------------------------------------ budget

class SteppingClock:
    """A clock that moves one second every time it is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def hard_history(n_unknown=14):
    """Many unknown writes, then reads that no order explains: exhaustive search."""
    h = H().w("v0", 0, 1)
    for i in range(n_unknown):
        h.w("u%d" % i, 2, 3, outcome=INFO)
    return h.r("u0", 100, 101).r("u1", 102, 103).r("u0", 104, 105)


def test_a_budget_that_runs_out_is_unknown_never_valid():
    ops = hard_history().ops
    result = check(ops, budget_s=3, clock=SteppingClock())
    assert result.verdict == UNKNOWN
    assert result.undecided and "undecided" in result.undecided[0].explanation
    # Keys left unchecked when the budget is gone are unknown too.
    many = H().w("a", 0, 1, key="x").r("a", 2, 3, key="x").w("a", 0, 1, key="y").ops
    result = check(many, budget_s=0.5, clock=SteppingClock())
    assert result.verdict == UNKNOWN


def test_memo_limit_is_unknown():
    result = check_key("k", hard_history().ops, deadline=float("inf"), memo_limit=100)
    assert result.verdict == UNKNOWN


def test_the_hard_history_is_decided_invalid_with_time():
    assert check(hard_history(8).ops, budget_s=60).verdict == INVALID


def test_an_anomaly_found_elsewhere_wins_over_unknown():
    ops = hard_history().ops + H().w("a", 0, 1, key="bad").w("b", 2, 3, key="bad").r("a", 4, 5, key="bad").ops
    clock = SteppingClock()
    assert check(ops, budget_s=5000, clock=clock, memo_limit=100).verdict == INVALID


# ------------------------------------------------------------------ generated

def linearizable_history(rng, n_ops, n_procs, keys=("k1", "k2"), unknown_rate=0.1):
    """
    Processes run ops with random intervals; each op takes effect at a random
    point inside its interval on a true register, so the history is
    linearizable by construction.  Some outcomes are hidden as unknown (their
    effect still happened, or did not, at random).
    """
    events = []  # (linearization time, process, op fields)
    t = [0.0] * n_procs
    values = 0
    for _ in range(n_ops):
        p = rng.randrange(n_procs)
        start = t[p] + rng.random()
        end = start + rng.random() * 3
        t[p] = end
        point = rng.uniform(start, end)
        key = rng.choice(keys)
        f = rng.choice([READ, READ, WRITE, CAS, CAS, DELETE])
        values += 1
        events.append((point, p, key, f, "v%d" % values, start, end))
    events.sort()
    state = {}
    seen = {k: [] for k in keys}
    ops = []
    for point, p, key, f, fresh, start, end in events:
        cur = state.get(key)
        outcome = OK
        if f == READ:
            value, result = None, cur
        elif f == WRITE:
            value, result = fresh, None
            state[key] = fresh
        elif f == CAS:
            expected = rng.choice(seen[key]) if seen[key] and rng.random() < 0.8 else "nope"
            value, result = (expected, fresh), cur is not None and cur == expected
            if result:
                state[key] = fresh
        else:
            value, result = None, 0 if cur is None else 1
            state.pop(key, None)
        if state.get(key) is not None:
            seen[key].append(state[key])
        if f != READ and rng.random() < unknown_rate:
            outcome = INFO
        ops.append(Op(len(ops), p, key, f, value, outcome, None if outcome == INFO else result, start, None if outcome == INFO else end))
    return ops


@pytest.mark.parametrize("seed", range(40))
def test_generated_linearizable_histories_pass(seed):
    rng = random.Random(seed)
    ops = linearizable_history(rng, n_ops=150, n_procs=5)
    result = check(ops, budget_s=30)
    assert result.verdict == VALID, result.report()


def test_generated_histories_with_a_corrupted_read_mostly_fail():
    failed = 0
    for seed in range(30):
        rng = random.Random(1000 + seed)
        ops = linearizable_history(rng, n_ops=60, n_procs=3, keys=("k",), unknown_rate=0.0)
        reads = [op for op in ops if op.f == READ and op.result is not None]
        writes = [op.value for op in ops if op.f == WRITE]
        if not reads or len(writes) < 3:
            continue
        victim = reads[len(reads) // 2]
        # A value written long before: stale unless the history is very concurrent.
        stale = writes[0] if writes[0] != victim.result else writes[1]
        bad = [Op(op.index, op.process, op.key, op.f, op.value, op.outcome, stale, op.invoke, op.complete) if op is victim else op for op in ops]
        failed += check(bad, budget_s=30).verdict == INVALID
    assert failed >= 20
