"""
The watch workload's checker (kvd.check.watches) on hand-made histories: a clean one is valid; a gap, a
duplicate, a disagreement between watchers, a lost acknowledged write, a phantom, a segment begun without a
compacted answer, and a watcher that never caught up are each found.
"""

from kvd.check.watches import CAUGHT_UP, EVENT, FINAL, OPEN, WRITE, check, check_history
from kvd.check.linear import FAIL, INVALID, OK, VALID


class H:
    """A history builder: records as kvd.jepsen.watches writes them."""

    def __init__(self):
        self.records = []

    def add(self, process, f, value=None, outcome=OK, result=None, key="*", error=""):
        rec = {"type": "op", "index": len(self.records), "process": process, "key": key, "f": f, "value": value,
               "outcome": outcome, "result": result, "node": "n1"}
        if error:
            rec["error"] = error
        self.records.append(rec)
        return self

    def write(self, key, value, revision, outcome=OK):
        return self.add("c0", WRITE, value, outcome, revision if outcome == OK else None, key=key)

    def open(self, watcher, fromrev, start=None, outcome=OK, error=""):
        return self.add(watcher, OPEN, fromrev, outcome, start if start is not None else fromrev, error=error)

    def event(self, watcher, revision, *changes):
        return self.add(watcher, EVENT, [revision, [list(c) for c in changes]])

    def put(self, watcher, revision, key, value):
        return self.event(watcher, revision, ("put", key, value))

    def final(self, revision, *watchers):
        self.add("final", FINAL, None, OK, revision)
        for w in watchers:
            self.add(w, CAUGHT_UP, revision, OK, revision)
        return self


def clean():
    h = H()
    for rev in range(1, 7):
        h.write("w:%d" % (rev % 2), "v%d" % rev, rev)
    h.open("w0", None, 1)
    for rev in range(1, 4):
        h.put("w0", rev, "w:%d" % (rev % 2), "v%d" % rev)
    h.open("w0", 4)  # resumed elsewhere
    for rev in range(4, 7):
        h.put("w0", rev, "w:%d" % (rev % 2), "v%d" % rev)
    h.open("w1", None, 3)
    for rev in range(3, 7):
        h.put("w1", rev, "w:%d" % (rev % 2), "v%d" % rev)
    return h.final(6, "w0", "w1")


def problems(h):
    return [p for found in check(h.records).values() for p in found]


def test_a_clean_history_with_resumes_is_valid():
    result = check_history(clean().records)
    assert result.verdict == VALID, result.report()
    assert {k.key for k in result.keys} == {"writes", "w0", "w1"}


def test_a_gap_in_a_resumed_stream_is_found():
    h = clean()
    h.records = [r for r in h.records if not (r["process"] == "w0" and r["f"] == EVENT and r["value"][0] == 4)]
    found = problems(h)
    assert any(p.startswith("gap: revision 5 pushed where 4 was due") for p in found), found
    assert check_history(h.records).verdict == INVALID


def test_a_duplicate_after_a_resume_is_found():
    h = H()
    h.write("w:0", "a", 1).write("w:0", "b", 2)
    h.open("w0", None, 1).put("w0", 1, "w:0", "a").open("w0", 2).put("w0", 1, "w:0", "a").put("w0", 2, "w:0", "b")
    found = problems(h.final(2, "w0"))
    assert any("revision 1 pushed after 1" in p for p in found), found


def test_watchers_that_disagree_on_a_revision_are_found():
    h = H()
    h.write("w:0", "a", 1, outcome=FAIL).add("c1", WRITE, "b", OK, 1, key="w:1")
    h.open("w0", None, 1).put("w0", 1, "w:1", "b")
    h.open("w1", None, 1).event("w1", 1, ("put", "w:1", "b"), ("put", "w:0", "a"))  # a half revision elsewhere
    found = problems(h.final(1, "w0", "w1"))
    assert any("revision 1 is" in p for p in found), found
    assert any("certainly failed" in p for p in found), found


def test_an_acknowledged_write_missing_from_a_stream_is_found():
    h = H()
    h.write("w:0", "a", 1).write("w:0", "b", 2)
    h.open("w0", None, 1).put("w0", 1, "w:0", "a").put("w0", 2, "w:0", "zzz")
    found = problems(h.final(2, "w0"))
    assert any("acknowledged write w:0=b at revision 2" in p for p in found), found
    assert any("w:0=zzz was never written" in p for p in found), found


def test_a_new_segment_needs_a_compacted_answer_and_a_watcher_must_catch_up():
    h = H()
    for rev in range(1, 5):
        h.write("w:0", "v%d" % rev, rev)
    h.open("w0", None, 1).put("w0", 1, "w:0", "v1")
    h.open("w0", None, 4).put("w0", 4, "w:0", "v4")  # skipped 2-3 with no node saying compacted
    h.open("w1", None, 1).put("w1", 1, "w:0", "v1")
    h.final(4, "w0")
    found = check(h.records)
    assert any("without FROMREV while no node said compacted" in p for p in found["w0"]), found
    assert any("did not catch up with the final revision 4" in p for p in found["w1"]), found
    ok = H()
    for rev in range(1, 5):
        ok.write("w:0", "v%d" % rev, rev)
    ok.open("w0", None, 1).put("w0", 1, "w:0", "v1")
    ok.open("w0", 2, outcome=FAIL, error="ERR compacted: revision 2 is compacted, oldest available is 4")
    ok.open("w0", None, 4).put("w0", 4, "w:0", "v4")
    assert check_history(ok.final(4, "w0").records).verdict == VALID


def test_changes_outside_the_prefix_count_as_revisions_only():
    h = H()
    h.write("w:0", "a", 1).write("w:0", "b", 3)
    h.open("w0", None, 1).put("w0", 1, "w:0", "a").put("w0", 2, "jepsen-probe", "p7").put("w0", 3, "w:0", "b")
    assert problems(h.final(3, "w0")) == []
    bad = H().write("w:0", "a", 1)
    bad.open("w0", None, 1).event("w0", 1, ("del", "w:0", None))
    assert any("del of w:0, which no writer does" in p for p in problems(bad.final(1, "w0")))
