"""
The multi-key workloads' clients (kvd.jepsen.multikey) against a scripted
connection: what they send, how replies and errors become outcomes, and what
they record for the checker (kvd.check.txn) -- no cluster needed.
"""

from kvd.check.linear import FAIL, INFO, OK
from kvd.check.txn import TxnOp
from kvd.jepsen.multikey import SHAS, KvTxnWorkload, ScriptWorkload, TxnWorkload
from kvd.jepsen.workload import History, to_op
from kvd.resp.client import Indeterminate, ReplyError, Simple

OKR, QUEUED = Simple(b"OK"), Simple(b"QUEUED")


class FakeConn:
    """Answers from a script of replies; ``reconnect_on_send`` replaces the socket at the next send_many."""

    def __init__(self, replies, reconnect_on_send=False):
        self.replies = list(replies)
        self.sent = []
        self.sock = object()
        self.reconnect_on_send = reconnect_on_send

    def _next(self):
        reply = self.replies.pop(0)
        if isinstance(reply, (ReplyError, Indeterminate)):
            raise reply
        return reply

    def call(self, *args):
        self.sent.append(args)
        return self._next()

    def send_many(self, commands):
        if self.reconnect_on_send:
            self.sock = object()
        self.sent.extend(commands)

    def receive(self):
        return self._next()

    def close(self):
        pass


def txn(replies, spec, **kw):
    w = TxnWorkload(None, History(), seed=1)
    conn = FakeConn(replies, **kw)
    outcome, error = w.run_op(conn, "c0", "n1", "t0-0", spec)
    return w, conn, outcome, error, to_op(w.history.finished_ops()[-1])


def cas_spec():
    return {"kind": "cas", "guard": [["t0-0.a", None], ["t0-0.b", None]],
            "micro": [["w", "t0-0.a", "c0-1"], ["w", "t0-0.b", "c0-2"]]}


def test_a_watch_cas_that_applies_and_one_that_aborts():
    w, conn, outcome, error, op = txn([OKR, [b"x", None], OKR, QUEUED, QUEUED, [OKR, OKR]], cas_spec())
    assert (outcome, error) == (OK, "")
    assert conn.sent == [("WATCH", "t0-0.a", "t0-0.b"), ("MGET", "t0-0.a", "t0-0.b"), ("MULTI",),
                         ("SET", "t0-0.a", "c0-1"), ("SET", "t0-0.b", "c0-2"), ("EXEC",)]
    assert isinstance(op, TxnOp) and op.guard == (("t0-0.a", "x"), ("t0-0.b", None)) and op.applied is True
    w, conn, outcome, error, op = txn([OKR, [b"x", None], OKR, QUEUED, QUEUED, None], cas_spec())
    assert outcome == OK and op.applied is False and w.stats["cas"]["aborted"] == 1


def test_a_watch_lost_to_a_reconnect_is_recorded_as_unguarded():
    w, conn, outcome, error, op = txn([OKR, [b"x", b"y"], OKR, QUEUED, QUEUED, [OKR, OKR]], cas_spec(),
                                      reconnect_on_send=True)
    assert outcome == OK and op.guard == () and op.applied is None
    assert w.history.finished_ops()[-1]["value"]["unguarded"] is True


def test_outcomes_of_a_transaction():
    # Before EXEC nothing that writes was sent: any failure is "did not happen".
    _, _, outcome, _, _ = txn([ReplyError("NOLEADER no leader")], cas_spec())
    assert outcome == FAIL
    _, _, outcome, _, _ = txn([OKR, Indeterminate("connection lost")], cas_spec())
    assert outcome == FAIL
    # EXEC's answer lost or timed out: unknown; refused for want of a leader: did not happen.
    _, _, outcome, _, op = txn([OKR, [None, None], OKR, QUEUED, QUEUED, Indeterminate("lost")], cas_spec())
    assert outcome == INFO and op.guard == (("t0-0.a", None), ("t0-0.b", None))
    _, _, outcome, _, _ = txn([OKR, [None, None], OKR, QUEUED, QUEUED, ReplyError("TIMEOUT waited")], cas_spec())
    assert outcome == INFO
    _, _, outcome, _, _ = txn([OKR, [None, None], OKR, QUEUED, QUEUED, ReplyError("TRYAGAIN moved")], cas_spec())
    assert outcome == FAIL
    # Anything else counts against the run.
    w, _, outcome, error, _ = txn([OKR, [None, None], OKR, QUEUED, QUEUED, ReplyError("EXECABORT discarded")], cas_spec())
    assert outcome == INFO and error.startswith("unexpected")
    spec = {"kind": "write", "micro": [["w", "t0-0.a", "v"]]}
    _, _, outcome, error, _ = txn([OKR, QUEUED, None], spec)  # nil without WATCH
    assert outcome == INFO and error.startswith("unexpected")


def test_compact_reads_and_writes_are_mget_and_mset_inside_multi():
    spec = {"kind": "read", "compact": True, "micro": [["r", "t0-0.a", None], ["r", "t0-0.b", None]]}
    _, conn, outcome, _, op = txn([OKR, QUEUED, [[b"1", None]]], spec)
    assert conn.sent == [("MULTI",), ("MGET", "t0-0.a", "t0-0.b"), ("EXEC",)]
    assert outcome == OK and op.micro == (("r", "t0-0.a", "1"), ("r", "t0-0.b", None))
    spec = {"kind": "write", "compact": True, "micro": [["w", "t0-0.a", "x"], ["w", "t0-0.b", "y"]]}
    _, conn, outcome, _, _ = txn([OKR, QUEUED, [OKR]], spec)
    assert conn.sent[1] == ("MSET", "t0-0.a", "x", "t0-0.b", "y") and outcome == OK


def test_script_replies():
    w = ScriptWorkload(None, History(), seed=1)
    spec = {"kind": "script-cas", "how": "EVALSHA", "cond": ["s0-0.a", "old"],
            "micro": [["r", "s0-0.a", None], ["r", "s0-0.b", None], ["w", "s0-0.a", "c0-1"], ["w", "s0-0.b", "c0-2"]]}
    conn = FakeConn([[1, b"old", None]])
    assert w.run_op(conn, "c0", "n1", "s0-0", spec) == (OK, "")
    assert conn.sent == [("EVALSHA", SHAS["script-cas"], 2, "s0-0.a", "s0-0.b", "old", "c0-1", "c0-2")]
    op = to_op(w.history.finished_ops()[-1])
    assert op.applied is True and op.cond == ("s0-0.a", "old") and op.micro[:2] == (("r", "s0-0.a", "old"), ("r", "s0-0.b", None))
    spec = {"kind": "script-rmw", "how": "EVAL",
            "micro": [["r", "s0-0.a", None], ["r", "s0-0.b", None], ["incr", "s0-0.n", None], ["w", "s0-0.a", "x"], ["w", "s0-0.b", "y"]]}
    conn = FakeConn([[None, b"q", 7]])
    assert w.run_op(conn, "c0", "n1", "s0-0", spec) == (OK, "")
    assert conn.sent[0][2:] == (3, "s0-0.a", "s0-0.b", "s0-0.n", "x", "y")
    assert to_op(w.history.finished_ops()[-1]).micro[2] == ("incr", "s0-0.n", "7")
    # A script whose answer was lost: unknown.
    conn = FakeConn([Indeterminate("lost")])
    assert w.run_op(conn, "c0", "n1", "s0-0", spec)[0] == INFO


# ------------------------------------------------------------------ kvtxn (KVD.TXN)


def kvtxn(replies, spec, split=False):
    w = KvTxnWorkload(None, History(), seed=1, split=split)
    conn = FakeConn(replies)
    outcome, error = w.run_op(conn, "c0", "n1", "k0-0", spec)
    return w, conn, outcome, error, to_op(w.history.finished_ops()[-1])


def transfer_spec():
    return {"kind": "kvtxn-transfer", "conds": [["k0-0.a", "c1-1"], ["k0-0.b", None]],
            "micro": [["w", "k0-0.a", "c0-1"], ["w", "k0-0.b", "c0-2"], ["r", "k0-0.c", None]],
            "orelse": [["r", "k0-0.a", None], ["r", "k0-0.b", None]]}


def test_a_kvtxn_transfer_that_applies_and_one_whose_compare_fails():
    w, conn, outcome, error, op = kvtxn([[1, [OKR, OKR, b"c9"], 7]], transfer_spec())
    assert conn.sent == [("KVD.TXN", "IF", "VALUE", "k0-0.a", "=", "c1-1", "MISSING", "k0-0.b", "THEN",
                          "SET", "k0-0.a", "c0-1", "SET", "k0-0.b", "c0-2", "GET", "k0-0.c",
                          "ELSE", "GET", "k0-0.a", "GET", "k0-0.b")]
    assert (outcome, error) == (OK, "")
    assert isinstance(op, TxnOp) and op.applied is True and op.conds == (("k0-0.a", "c1-1"), ("k0-0.b", None))
    assert op.micro[2] == ("r", "k0-0.c", "c9") and op.orelse == (("r", "k0-0.a", None), ("r", "k0-0.b", None))
    w, conn, outcome, error, op = kvtxn([[0, [b"c2-5", None], 7]], transfer_spec())
    assert (outcome, op.applied) == (OK, False)
    assert op.orelse == (("r", "k0-0.a", "c2-5"), ("r", "k0-0.b", None)) and op.micro[2] == ("r", "k0-0.c", None)
    assert w.stats["kvtxn-transfer"] == {"ok": 1, "fail": 0, "info": 0, "aborted": 1, "applied": 0}
    assert list(w.recent["k0-0.a"]) == ["c2-5"]  # the ELSE branch's reads are what the next compares try


def test_kvtxn_outcomes():
    # A timeout after sending: unknown; NOLEADER: failed; a reply of the wrong shape: unknown and unexpected.
    _, _, outcome, error, _ = kvtxn([Indeterminate("timed out")], transfer_spec())
    assert outcome == INFO
    _, _, outcome, _, _ = kvtxn([ReplyError("NOLEADER no leader")], transfer_spec())
    assert outcome == FAIL
    _, _, outcome, error, _ = kvtxn([[1, [OKR], 7]], transfer_spec())
    assert outcome == INFO and error.startswith("unexpected")
    _, _, outcome, error, _ = kvtxn([[0, [], 7]], {"kind": "kvtxn-read", "micro": [["r", "k0-0.a", None]]})
    assert outcome == INFO and error.startswith("unexpected")  # no compare, yet the ELSE branch ran


def test_the_planted_split_kvtxn_runs_separate_commands():
    w, conn, outcome, error, op = kvtxn([b"c1-1", None, OKR, OKR, b"x"], transfer_spec(), split=True)
    assert [c[0] for c in conn.sent] == ["GET", "GET", "SET", "SET", "GET"] and op.applied is True
