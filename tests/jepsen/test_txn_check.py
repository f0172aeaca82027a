"""
The multi-key checker alone (kvd.check.txn): hand-made transaction and
script histories that are linearizable pass, and ones that are not -- a read
that sees half of a transaction's writes, two WATCH compare-and-sets that both
succeed from the same old value, two scripts that INCR to the same number, a
read after an acknowledged transaction that misses it -- fail, with an
explanation.  Random histories built by an atomic store with a point inside
every op's interval must all pass.
"""

import random

from kvd.check.linear import FAIL, INFO, INVALID, OK, READ, UNKNOWN, VALID, WRITE, Op
from kvd.check.txn import TxnOp, check, group_of, step


class H:
    def __init__(self):
        self.ops = []

    def add(self, kind, start, end, micro=(), guard=(), cond=None, applied=None, outcome=OK, group="g"):
        if outcome == INFO:
            end = None
        self.ops.append(TxnOp(len(self.ops), "p%d" % len(self.ops), group, kind, tuple(micro), tuple(guard), cond,
                              applied, outcome, start, end))
        return self

    def write(self, start, end, outcome=OK, **kv):
        return self.add("write", start, end, [("w", "g." + k, v) for k, v in sorted(kv.items())], outcome=outcome)

    def read(self, start, end, **kv):
        return self.add("read", start, end, [("r", "g." + k, v) for k, v in sorted(kv.items())])

    def cas(self, start, end, seen, new, applied=True, outcome=OK):
        guard = [("g." + k, v) for k, v in sorted(seen.items())]
        micro = [("w", "g." + k, v) for k, v in sorted(new.items())]
        return self.add("cas", start, end, micro, guard, None, applied if outcome == OK else None, outcome)

    def check(self):
        return check(self.ops, budget_s=10.0)


def test_an_atomic_write_and_reads_on_either_side_pass():
    h = H().write(0, 1, a="a1", b="b1").read(2, 3, a="a1", b="b1").write(4, 6, a="a2", b="b2")
    h.read(5, 7, a="a1", b="b1").read(5, 8, a="a2", b="b2").read(9, 10, a="a2", b="b2")
    result = h.check()
    assert result.verdict == VALID, result.report()


def test_a_read_that_sees_half_of_a_transaction_is_rejected():
    h = H().write(0, 1, a="a1", b="b1").write(2, 5, a="a2", b="b2").read(3, 4, a="a2", b="b1")
    result = h.check()
    assert result.verdict == INVALID
    assert "g.a" in result.report() and "no linearization" in result.report()


def test_a_read_after_an_acknowledged_transaction_must_see_it():
    h = H().write(0, 1, a="a1", b="b1").write(2, 3, a="a2", b="b2").read(4, 5, a="a1", b="b1")
    assert h.check().verdict == INVALID


def test_two_watch_cas_from_the_same_old_value_cannot_both_apply():
    h = H().write(0, 1, a="a1")
    h.cas(2, 5, {"a": "a1"}, {"a": "x", "b": "x"})
    h.cas(2, 5, {"a": "a1"}, {"a": "y", "b": "y"})
    assert h.check().verdict == INVALID
    # One of them answered nil (aborted): fine.
    h = H().write(0, 1, a="a1")
    h.cas(2, 5, {"a": "a1"}, {"a": "x", "b": "x"})
    h.cas(2, 5, {"a": "a1"}, {"a": "y", "b": "y"}, applied=False)
    h.read(6, 7, a="x", b="x")
    result = h.check()
    assert result.verdict == VALID, result.report()


def test_an_aborted_cas_did_not_happen_but_its_reads_did():
    h = H().write(0, 1, a="a1")
    h.cas(2, 3, {"a": "a1"}, {"a": "x"}, applied=False)
    h.read(4, 5, a="x")  # the aborted write is visible: not linearizable
    assert h.check().verdict == INVALID
    h = H().write(0, 1, a="a1").write(2, 3, a="a2")
    h.cas(4, 5, {"a": "a1"}, {"a": "x"}, applied=False)  # its MGET saw a value overwritten before it began
    assert h.check().verdict == INVALID


def test_a_cas_that_applied_must_have_seen_the_state_it_applied_on():
    h = H().write(0, 1, a="a1").write(2, 3, a="a2")
    h.cas(4, 5, {"a": "a1"}, {"a": "x"})
    assert h.check().verdict == INVALID


def test_unknown_outcomes_may_or_may_not_happen():
    h = H().write(0, 1, a="a1", b="b1").write(2, 3, outcome=INFO, a="a2", b="b2")
    assert H().write(0, 1, a="a1", b="b1").write(2, 3, outcome=INFO, a="a2", b="b2").read(4, 5, a="a1", b="b1").check().verdict == VALID
    assert h.read(4, 5, a="a2", b="b2").read(6, 7, a="a2", b="b2").check().verdict == VALID
    # ...but once seen, it happened: a later read cannot go back.
    assert h.read(8, 9, a="a1", b="b1").check().verdict == INVALID
    # An unknown WATCH CAS applies only where its guard holds.
    h = H().write(0, 1, a="a1").write(2, 4, a="a2")
    h.cas(2.5, 3.5, {"a": "a1"}, {"a": "x"}, outcome=INFO)
    assert h.read(3, 3.2, a="x").check().verdict == VALID  # it applied before a2 did
    h = H().write(0, 1, a="a1").write(2, 4, a="a2")
    h.cas(2.5, 3.5, {"a": "a1"}, {"a": "x"}, outcome=INFO)
    assert h.read(5, 6, a="x").check().verdict == INVALID  # a2 completed after it began: x cannot be last
    h = H().write(0, 1, a="a1").write(2, 3, a="a2")
    h.cas(4, 5, {"a": "a1"}, {"a": "x"}, outcome=INFO)  # began after a2: its guard never holds
    assert h.read(6, 7, a="x").check().verdict == INVALID


def test_failed_ops_are_left_out():
    h = H().write(0, 1, a="a1").write(2, 3, outcome=FAIL, a="a2").read(4, 5, a="a2")
    assert h.check().verdict == INVALID
    assert H().write(0, 1, a="a1").write(2, 3, outcome=FAIL, a="a2").read(4, 5, a="a1").check().verdict == VALID


def script(h, start, end, olds, n, news, outcome=OK):
    """The rmw script: read a and b, INCR n, write a and b."""
    micro = [("r", "g." + k, v) for k, v in sorted(olds.items())] + [("incr", "g.n", n)]
    micro += [("w", "g." + k, v) for k, v in sorted(news.items())]
    return h.add("script-rmw", start, end, micro, outcome=outcome)


def test_scripts_are_atomic_and_count():
    h = H()
    script(h, 0, 2, {"a": None, "b": None}, "1", {"a": "a1", "b": "b1"})
    script(h, 1, 3, {"a": "a1", "b": "b1"}, "2", {"a": "a2", "b": "b2"})
    h.read(4, 5, a="a2", b="b2")
    result = h.check()
    assert result.verdict == VALID, result.report()
    # Two overlapping runs that both INCR to 1: one did not see the other.
    h = H()
    script(h, 0, 2, {"a": None, "b": None}, "1", {"a": "a1", "b": "b1"})
    script(h, 1, 3, {"a": None, "b": None}, "1", {"a": "a2", "b": "b2"})
    assert h.check().verdict == INVALID
    # A script whose reads are torn.
    h = H()
    script(h, 0, 1, {"a": None, "b": None}, "1", {"a": "a1", "b": "b1"})
    script(h, 2, 3, {"a": "a1", "b": "b1"}, "2", {"a": "a2", "b": "b2"})
    script(h, 2, 4, {"a": "a2", "b": "b1"}, "3", {"a": "a3", "b": "b3"})
    assert h.check().verdict == INVALID


def test_a_script_compare_and_set():
    def cas(h, start, end, expected, new, applied, old_a, outcome=OK):
        return h.add("script-cas", start, end, [("r", "g.a", old_a), ("w", "g.a", new)], cond=("g.a", expected),
                     applied=applied if outcome == OK else None, outcome=outcome)
    h = H().write(0, 1, a="a1")
    cas(h, 2, 4, "a1", "x", True, "a1")
    cas(h, 2, 4, "a1", "y", False, "x")
    assert h.read(5, 6, a="x").check().verdict == VALID
    h = H().write(0, 1, a="a1")
    cas(h, 2, 4, "a1", "x", True, "a1")
    cas(h, 2, 4, "a1", "y", True, "a1")
    assert h.check().verdict == INVALID
    h = H().write(0, 1, a="a1")
    cas(h, 2, 4, "a1", "x", False, "a1")  # said no while the value matched
    assert h.check().verdict == INVALID


def test_register_ops_join_their_group():
    assert group_of("t0-3.a") == "t0-3" and group_of("probe") == "probe"
    ops = H().write(0, 1, a="a1", b="b1").ops
    ops.append(Op(1, "final", "g.a", READ, None, OK, "a1", 2, 3))
    ops.append(Op(2, "final", "g.b", READ, None, OK, "b1", 2, 3))
    ops.append(Op(3, "probe", "probe", WRITE, "p1", OK, None, 0, 1))
    ops.append(Op(4, "probe", "probe", READ, None, OK, "p1", 2, 3))
    result = check(ops)
    assert result.verdict == VALID and len(result.keys) == 2, result.report()
    ops.append(Op(5, "final", "g.b", READ, None, OK, None, 4, 5))
    assert check(ops).verdict == INVALID


def test_a_budget_that_runs_out_is_not_a_pass():
    h = H()
    for i in range(14):
        h.write(0, 100, outcome=INFO, a="a%d" % i, b="b%d" % i)
    for i in range(14):
        h.read(1 + i, 100, a="a%d" % i, b="b%d" % (13 - i))
    result = check(h.ops, budget_s=0.0, memo_limit=10)
    assert result.verdict in (UNKNOWN, INVALID)
    assert result.verdict != VALID


def test_random_atomic_histories_pass():
    """An atomic store applies each op at a random point in its interval; every such history must pass."""
    for seed in range(30):
        rng = random.Random(seed)
        keys = ["g.a", "g.b", "g.c", "g.n"]
        ops, t = [], 0.0
        intervals = []
        for i in range(40):
            start = t + rng.uniform(0, 1)
            end = start + rng.uniform(0.1, 3)
            point = rng.uniform(start, end)
            intervals.append((point, start, end, i))
            t = start
        intervals.sort()
        state = {}
        for point, start, end, i in intervals:
            kind = rng.choice(["read", "write", "cas", "script"])
            outcome = rng.choice([OK] * 8 + [INFO, FAIL])
            guard, applied, micro = (), None, []
            if kind == "read":
                micro = [("r", k, state.get(k)) for k in rng.sample(keys[:3], 2)]
            elif kind == "write":
                micro = [("w", k, "v%d%s" % (i, k)) for k in rng.sample(keys[:3], 2)]
            elif kind == "cas":
                k = rng.choice(keys[:3])
                guard = ((k, state.get(k)),)
                micro = [("w", k, "v%d" % i)]
                applied = rng.random() < 0.7
            else:
                micro = [("r", "g.a", state.get("g.a")), ("incr", "g.n", None), ("w", "g.a", "v%d" % i)]
            happens = outcome == OK or (outcome == INFO and rng.random() < 0.5)
            if happens and not (kind == "cas" and outcome == OK and not applied):
                if kind == "cas" and outcome == INFO:
                    pass  # the guard holds here by construction
                ok, new = step(tuple(sorted((k, v) for k, v in state.items() if v is not None)),
                               TxnOp(i, "p", "g", kind, tuple(micro), guard, None, True if kind == "cas" else None,
                                     INFO, start, None))
                state = dict(new)
                if kind == "script":
                    micro[1] = ("incr", "g.n", state["g.n"])
            ops.append(TxnOp(i, "p%d" % i, "g", kind, tuple(micro), guard, None,
                             applied if (kind == "cas" and outcome == OK) else None, outcome, start,
                             None if outcome == INFO else end))
        result = check(ops, budget_s=20.0)
        assert result.verdict == VALID, "seed %d: %s" % (seed, result.report())


def test_a_history_file_of_multikey_ops_round_trips(tmp_path):
    """What the workloads record (kvd.jepsen.multikey) reads back as TxnOps, and `python -m kvd.jepsen check` uses check.txn."""
    from kvd.jepsen.__main__ import check_file
    from kvd.jepsen.workload import History, read_history

    h = History()
    w = h.invoke("c0", "t0-0", "txn", {"kind": "write", "micro": [["w", "t0-0.a", "x"], ["w", "t0-0.b", "y"]]})
    h.complete(w, OK, {"reads": [], "applied": None})
    cas = h.invoke("c1", "t0-0", "txn", {"kind": "cas", "guard": [["t0-0.a", "x"]], "micro": [["w", "t0-0.a", "z"]]})
    h.complete(cas, OK, {"reads": [], "applied": False})
    r = h.invoke("c2", "t0-0", "txn", {"kind": "read", "micro": [["r", "t0-0.a", None], ["r", "t0-0.b", None]]})
    h.complete(r, OK, {"reads": ["x", "y"], "applied": None})
    lost = h.invoke("c3", "t0-0", "txn", {"kind": "script-rmw", "micro": [["r", "t0-0.a", None], ["incr", "t0-0.n", None]]})
    h.complete(lost, INFO, None, "no reply")
    g = h.invoke("final", "t0-0.a", READ)
    h.complete(g, OK, "x")
    path = str(tmp_path / "history.jsonl")
    h.write(path)
    _, ops, _ = read_history(path)
    txns = [op for op in ops if isinstance(op, TxnOp)]
    assert [op.kind for op in txns] == ["write", "cas", "read", "script-rmw"]
    assert txns[1].guard == (("t0-0.a", "x"),) and txns[1].applied is False
    assert txns[2].micro == (("r", "t0-0.a", "x"), ("r", "t0-0.b", "y"))
    assert txns[3].outcome == INFO and txns[3].micro[1] == ("incr", "t0-0.n", None)
    assert check(ops).verdict == VALID
    assert check_file([path]) == 0
    # The same file with the read seeing half of the write: the CLI says so.
    with open(path) as f:
        text = f.read().replace('"reads": ["x", "y"]', '"reads": ["x", null]')
    with open(path, "w") as f:
        f.write(text)
    assert check_file([path]) == 1


# ------------------------------------------------------------------ KVD.TXN (orelse)


def kvtxn(h, start, end, conds, new, orelse_reads=None, applied=True, outcome=OK):
    """A KVD.TXN transfer: IF conds THEN SET new ELSE GET (with what it read when ELSE ran)."""
    micro = tuple(("w", "g." + k, v) for k, v in sorted(new.items()))
    reads = orelse_reads or {}
    orelse = tuple(("r", "g." + k, reads.get(k) if outcome == OK and not applied else None) for k in sorted(conds))
    h.ops.append(TxnOp(len(h.ops), "p%d" % len(h.ops), "g", "kvtxn-transfer", micro, (), None,
                       applied if outcome == OK else None, outcome, start, None if outcome == INFO else end, "",
                       tuple(("g." + k, v) for k, v in sorted(conds.items())), orelse))
    return h


def test_kvtxn_transfers_pass_when_atomic_and_fail_when_torn():
    h = H().write(0, 1, a="a1", b="b1")
    kvtxn(h, 2, 3, {"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"})
    kvtxn(h, 4, 5, {"a": "a1", "b": "b1"}, {"a": "a3", "b": "b3"}, {"a": "a2", "b": "b2"}, applied=False)
    kvtxn(h, 6, 7, {"a": "a2", "b": None}, {"a": "a4"}, {"a": "a2", "b": "b2"}, applied=False)
    h.read(8, 9, a="a2", b="b2")
    assert h.check().verdict == VALID, h.check().report()
    # Two transfers from the same values cannot both apply.
    h2 = H().write(0, 1, a="a1", b="b1")
    kvtxn(h2, 2, 4, {"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"})
    kvtxn(h2, 3, 5, {"a": "a1", "b": "b1"}, {"a": "a3", "b": "b3"})
    assert h2.check().verdict == INVALID
    # An ELSE branch must have read the state that failed the compare.
    h3 = H().write(0, 1, a="a1", b="b1")
    kvtxn(h3, 2, 3, {"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"}, {"a": "a1", "b": "b1"}, applied=False)
    assert h3.check().verdict == INVALID
    # A read that sees half of a transfer.
    h4 = H().write(0, 1, a="a1", b="b1")
    kvtxn(h4, 2, 5, {"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"})
    h4.read(3, 4, a="a2", b="b1")
    assert h4.check().verdict == INVALID
    # An unknown transfer may have happened, or not.
    h5 = H().write(0, 1, a="a1", b="b1")
    kvtxn(h5, 2, 3, {"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"}, outcome=INFO)
    h5.read(4, 5, a="a2", b="b2")
    assert h5.check().verdict == VALID
    assert "IF g.a=='a1' g.b=='b1'" in h5.ops[1].describe() and "ELSE" in h5.ops[1].describe()
