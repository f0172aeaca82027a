"""
The durability check alone (kvd.check.durability): an acknowledged write is
present at the end or explained by a later write or delete.
"""

from kvd.check.durability import check_durability
from tests.jepsen.test_linear import H


def test_the_last_acknowledged_write_present_is_durable():
    h = H().w("a", 0, 1).w("b", 2, 3).cas("b", "c", True, 4, 5)
    assert check_durability(h.ops, {"k": "c"}) == []


def test_an_acknowledged_write_missing_at_the_end_is_lost():
    h = H().w("a", 0, 1).w("b", 2, 3)
    problems = check_durability(h.ops, {"k": "a"})
    assert len(problems) == 1 and "SET 'b'" in problems[0] and "lost" in problems[0]
    assert check_durability(h.ops, {"k": None})  # nothing deleted it


def test_a_later_write_of_unknown_outcome_explains_the_final_value():
    h = H().w("a", 0, 1).w("b", 2, 3).w("c", 1.5, 2, outcome="info")
    assert check_durability(h.ops, {"k": "c"}) == []


def test_concurrent_writes_explain_each_other():
    h = H().w("a", 0, 3).w("b", 1, 2)
    assert check_durability(h.ops, {"k": "a"}) == []
    assert check_durability(h.ops, {"k": "b"}) == []


def test_a_delete_explains_a_missing_key_and_a_lost_delete_is_reported():
    h = H().w("a", 0, 1).d(1, 2, 3)
    assert check_durability(h.ops, {"k": None}) == []
    assert check_durability(h.ops, {"k": "a"})


def test_a_final_value_never_written_or_from_a_failed_write_is_reported():
    h = H().w("a", 0, 1).w("b", 2, 3, outcome="fail")
    assert "never written" in check_durability(h.ops, {"k": "zzz"})[0]
    assert "never written" in check_durability(h.ops, {"k": "b"})[0]


def test_a_compare_and_set_that_did_not_apply_needs_no_explaining():
    h = H().w("a", 0, 1).cas("x", "b", False, 2, 3)
    assert check_durability(h.ops, {"k": "a"}) == []


def test_replicas_that_disagree_are_reported():
    h = H().w("a", 0, 1)
    assert check_durability(h.ops, {"k": "a"}, {"k": {"n1": "a", "n2": "a"}}) == []
    problems = check_durability(h.ops, {"k": "a"}, {"k": {"n1": "a", "n2": None}})
    assert len(problems) == 1 and "n2" in problems[0]
