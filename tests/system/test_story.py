"""
The seed document's story, end to end, with real processes: five twistd
nodes on loopback driven only through ``python mgmt.py`` (a subprocess per
command, as a user types it), as issue 4 lists it.

Timing is fast (--tick-ms 50: elections in about a second).  Every wait
polls for a condition with a deadline; the ``mgmt`` fixture kills every node
the test started, by pid from its KVD_HOME, even when the test fails.
"""

from __future__ import annotations

import json

import pytest

from tests.system.conftest import free_client_ports, wait_for

pytestmark = pytest.mark.system

TIMING = ["--tick-ms", "50"]
#: Generous bounds for a loaded 2-core machine; a healthy run is far quicker.
ELECTION_S = 30.0
NO_QUORUM_S = 20.0


def members(view: dict) -> list:
    return [n for n in view["nodes"] if n["member"]]


def settled(mgmt, alive: list, n_members: int):
    """
    Poll ``list --json`` until the cluster has n_members members and, among
    the nodes in `alive`, exactly one leader (the one list reports) and
    followers otherwise, all at the same term.  Returns the final view.
    """

    def check():
        view = mgmt.cluster()
        rows = {n["id"]: n for n in members(view)}
        if len(rows) != n_members or not all(a in rows for a in alive):
            return None
        roles = sorted(rows[a]["role"] or "-" for a in alive)
        terms = {rows[a]["term"] for a in alive}
        if roles != ["follower"] * (len(alive) - 1) + ["leader"] or len(terms) != 1:
            return None
        if view["leader"] not in alive or rows[view["leader"]]["role"] != "leader":
            return None
        return view

    return wait_for(check, ELECTION_S, "one leader among %s and %d members" % (alive, n_members), poll=0.3)


class Story:
    """The user's view: a few mgmt.py calls, plus the writes that were acknowledged."""

    def __init__(self, mgmt):
        self.mgmt = mgmt
        self.acked = {}  # key -> the value of its last acknowledged write
        self.deleted = set()

    def write(self, host: str, key: str, value: str) -> None:
        """A write that must succeed at once (leadership is stable)."""
        self.mgmt.ok("-r", "client", "-c", "write", "-h", host, "-k", key, "-v", value)
        self.acked[key] = value
        self.deleted.discard(key)

    def write_eventually(self, host: str, key: str, value: str, timeout: float = ELECTION_S) -> None:
        """A write right after a failover: retried while refused (exit 4) or unknown (exit 5: same value, so harmless)."""

        def attempt():
            result = self.mgmt.run("-r", "client", "-c", "write", "-h", host, "-k", key, "-v", value)
            assert result.code in (0, 4, 5), str(result)
            return result.code == 0

        wait_for(attempt, timeout, "a write of %s through %s to succeed" % (key, host), poll=0.3)
        self.acked[key] = value
        self.deleted.discard(key)

    def read(self, host: str, key: str) -> str:
        return self.mgmt.ok("-r", "client", "-c", "read", "-h", host, "-k", key).out.rstrip("\n")

    def check_everything(self, host: str) -> None:
        """Every acknowledged write is there, read through host; every deleted key is gone."""
        data = json.loads(self.mgmt.ok("-r", "client", "-c", "read", "-h", host, "--json").out)
        lost = {k: v for k, v in self.acked.items() if data.get(k) != v}
        assert not lost, "acknowledged writes lost or changed, read through %s: %r (got %r)" % (host, lost, {k: data.get(k) for k in lost})
        assert not (self.deleted & set(data)), "deleted keys came back: %r" % (self.deleted & set(data))


def test_the_seed_story(mgmt):
    """Bootstrap three, replicate, survive a follower and a leader failure, refuse writes without quorum, recover, grow to five, lose two, remove."""
    a, b, c, d, e = ["127.0.0.1:%d" % p for p in free_client_ports(5)]
    story = Story(mgmt)

    # -- Start a seed and join two nodes: one leader is elected.
    started = mgmt.ok("-r", "server", "-c", "start", "-h", a, *TIMING)
    for word in (a, "peer port", "data dir", "log file"):
        assert word in started.out
    first_join = mgmt.ok("-r", "server", "-c", "join", "-h", b)
    assert "waiting for 1 more node" in first_join.out
    mgmt.ok("-r", "server", "-c", "join", "-h", c)
    view = settled(mgmt, [a, b, c], 3)
    assert all(n["voter"] and n["status"] == "up" for n in members(view))

    # -- Write through one node and read it through each.
    leader = view["leader"]
    follower = next(n for n in (a, b, c) if n != leader)
    story.write(follower, "greeting", "hello")
    for node in (a, b, c):
        assert story.read(node, "greeting") == "hello"

    # -- Update and delete; an update, delete or read of a missing key fails cleanly.
    mgmt.ok("-r", "client", "-c", "update", "-h", c, "-k", "greeting", "-v", "bonjour")
    story.acked["greeting"] = "bonjour"
    assert story.read(a, "greeting") == "bonjour"
    story.write(b, "doomed", "x")
    mgmt.ok("-r", "client", "-c", "delete", "-h", a, "-k", "doomed")
    story.acked.pop("doomed")
    story.deleted.add("doomed")
    for args in (["read", "-h", b, "-k", "doomed"], ["update", "-h", c, "-k", "doomed", "-v", "y"], ["delete", "-h", a, "-k", "doomed"]):
        result = mgmt.run("-r", "client", "-c", *args)
        assert result.code == 1 and "key not found" in result.err, str(result)
    for i in range(5):
        story.write((a, b, c)[i % 3], "k%d" % i, "v%d" % i)
    story.check_everything(c)

    # -- list shows one leader and two followers (the table a user reads).
    table = mgmt.ok("-r", "server", "-c", "list").out
    rows = [line.split() for line in table.splitlines() if line.split() and line.split()[0] in (a, b, c)]
    assert sorted(r[2] for r in rows) == ["follower", "follower", "leader"], table
    assert all(r[3] == "up" for r in rows), table

    # -- Stop a follower: reads and writes still work.
    leader = view["leader"]
    stopped, other = [n for n in (a, b, c) if n != leader]
    mgmt.ok("-r", "server", "-c", "stop", "-h", stopped)
    story.write(other, "after-stop", "1")
    story.write(leader, "after-stop-2", "2")
    assert story.read(other, "after-stop") == "1"

    # -- Kill the leader too: one node of three left; writes fail with a clear message, and nothing hangs.
    mgmt.ok("-r", "server", "-c", "kill", "-h", leader)

    def refused_write():
        result = mgmt.run("-r", "client", "-c", "write", "-h", other, "-k", "lonely", "-v", "no")
        # 5 (unknown outcome) is tolerated only while the node still believes in the dead leader.
        assert result.code in (4, 5), "a write without quorum must fail: %s" % result
        return result if result.code == 4 else None

    refused = wait_for(refused_write, NO_QUORUM_S, "a write through the last node to be refused for lack of quorum (exit 4)", poll=0.5)
    assert "no leader" in refused.err and "NOT applied" in refused.err, str(refused)
    assert refused.seconds < 15, "a refused write must not hang: %s" % refused
    read_alone = mgmt.run("-r", "client", "-c", "read", "-h", other, "-k", "greeting")
    assert read_alone.code in (4, 5) and read_alone.seconds < 15, str(read_alone)

    # -- Restart the stopped follower: a new leader is elected, everything works, no acknowledged write is lost.
    mgmt.ok("-r", "server", "-c", "restart", "-h", stopped)
    view = settled(mgmt, [stopped, other], 3)
    assert view["leader"] != leader
    story.write_eventually(stopped, "after-restart", "3")
    story.check_everything(stopped)
    story.check_everything(other)

    # -- Restart the old leader: it catches up.
    mgmt.ok("-r", "server", "-c", "restart", "-h", leader)
    story.write_eventually(other, "while-catching-up", "4")
    target = settled(mgmt, [a, b, c], 3)
    commit = max(n["commit_index"] for n in members(target))

    def caught_up():
        rows = {n["id"]: n for n in members(mgmt.cluster())}
        return rows[leader]["applied_index"] is not None and rows[leader]["applied_index"] >= commit

    wait_for(caught_up, ELECTION_S, "the old leader %s to apply up to index %d" % (leader, commit))
    story.check_everything(leader)

    # -- Kill the leader alone: a new one is elected and writes continue.
    old = settled(mgmt, [a, b, c], 3)["leader"]
    mgmt.ok("-r", "server", "-c", "kill", "-h", old)
    survivors = [n for n in (a, b, c) if n != old]
    view = settled(mgmt, survivors, 3)
    assert view["leader"] != old
    story.write_eventually(survivors[0], "after-failover", "5")
    story.check_everything(survivors[1])
    mgmt.ok("-r", "server", "-c", "restart", "-h", old)
    settled(mgmt, [a, b, c], 3)

    # -- Join a fourth and a fifth node after bootstrap: they become voters.
    joined = mgmt.ok("-r", "server", "-c", "join", "-h", d)
    assert "joining" in joined.out or "follower" in joined.out, str(joined)
    mgmt.ok("-r", "server", "-c", "join", "-h", e)
    view = settled(mgmt, [a, b, c, d, e], 5)

    def all_voters():
        v = mgmt.cluster()
        return v if len(members(v)) == 5 and all(n["voter"] for n in members(v)) else None

    view = wait_for(all_voters, ELECTION_S, "the fourth and fifth nodes to be promoted to voters")
    assert view["quorum"] == 3
    story.write(e, "five", "6")
    story.check_everything(d)

    # -- Kill two of the five (the leader among them): it still works.
    view = settled(mgmt, [a, b, c, d, e], 5)
    doomed = [view["leader"], next(n for n in (a, b, c, d, e) if n != view["leader"])]
    for node in doomed:
        mgmt.ok("-r", "server", "-c", "kill", "-h", node)
    alive = [n for n in (a, b, c, d, e) if n not in doomed]
    settled(mgmt, alive, 5)
    story.write_eventually(alive[0], "three-of-five", "7")
    story.check_everything(alive[1])

    # -- Remove a node: list no longer shows it, and the quorum is computed without it.
    for node in doomed:
        removed = mgmt.ok("-r", "server", "-c", "remove", "-h", node)
        assert "removed" in removed.out
    view = settled(mgmt, alive, 3)
    assert view["voters"] == 3 and view["quorum"] == 2
    assert not any(n["id"] in doomed for n in view["nodes"]), view
    table = mgmt.ok("-r", "server", "-c", "list").out
    assert not any(node in table for node in doomed), table
    # With the two removed, one more failure leaves 2 of 3: still a quorum
    # (had they still counted, 2 of 5 would not be).
    last_victim = next(n for n in alive if n != view["leader"])
    mgmt.ok("-r", "server", "-c", "kill", "-h", last_victim)
    remaining = [n for n in alive if n != last_victim]
    story.write_eventually(remaining[0], "two-of-three", "8")
    story.check_everything(remaining[1])
