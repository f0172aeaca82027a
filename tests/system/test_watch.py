"""
KVD.WATCH on real kvd processes (kvd.resp.watch): a watcher on a follower sees every write made through the
leader, in order, with the revisions KVD.TXN answered and KVD.GET WITHREV reads; a watcher that disconnects
resumes FROMREV last + 1 on another node without a gap or a duplicate; a revision older than a node's history
answers the compacted error.  Through the package's blocking client (kvd.resp.client), which reads RESP2
pushes as plain arrays.
"""

import time

import pytest

from kvd.resp.client import Connection, ReplyError


def open_watch(node, *args):
    conn = Connection("127.0.0.1", node.port, timeout=10.0)
    conn.send("KVD.WATCH", *args)
    reply = conn.receive()
    assert reply[0] == b"watching", reply
    return conn, reply[1]


def changes(conn, n, timeout_s=20.0):
    """
    The changes of the next ``n`` pushed revisions, as (revision, kind, key, value); bounded by ``timeout_s``
    in all.  Each push is one revision: ["watch", revision, [[kind, key, value]...]].
    """
    out, revisions = [], 0
    deadline = time.monotonic() + timeout_s
    while revisions < n:
        left = deadline - time.monotonic()
        assert left > 0, "got %d of %d revisions in %.0f s: %r" % (revisions, n, timeout_s, out)
        push = conn.receive(timeout=left)
        assert push[0] == b"watch", push
        revisions += 1
        out.extend((push[1],) + tuple(change) for change in push[2])
    return out


def txn_set(client, key, value) -> int:
    """SET through KVD.TXN, which answers the write's revision."""
    ok, results, revision = client.call("KVD.TXN", "THEN", "SET", key, value)
    assert ok == 1 and results == [b"OK"]
    return revision


def test_a_followers_watcher_sees_every_write_in_order_and_resumes_elsewhere_without_gap(cluster):
    c = cluster()
    leader = c.leader()
    follower, other = c.followers()
    watcher, start = open_watch(follower, "w:")
    writer = Connection("127.0.0.1", leader.port, timeout=10.0)
    written = []
    for i in range(30):  # bounded: 30 writes, each answered before the next
        key = "w:%d" % (i % 4)
        written.append((txn_set(writer, key, "v%d" % i), b"put", key.encode(), b"v%d" % i))
        if i % 10 == 0:
            writer.call("SET", "elsewhere", "x")  # a revision outside the prefix: not pushed
    assert start <= written[0][0]
    first = changes(watcher, 12)
    assert first == written[:12]
    last_rev = first[-1][0]
    _, create, mod, version = writer.call("KVD.GET", first[-1][2], "WITHREV")
    assert mod >= last_rev and create <= last_rev
    watcher.close()  # a disconnect; the rest was written meanwhile
    resumed, start = open_watch(other, "w:", "FROMREV", last_rev + 1)
    assert start == last_rev + 1
    rest = changes(resumed, len(written) - 12)
    assert first + rest == written  # no gap, no duplicate, across nodes
    for _, _, key, value in written[-4:]:
        assert writer.call("KVD.GET", key, "WITHREV")[0] == dict((k, v) for _, _, k, v in written)[key]
    final_mods = {key: rev for rev, _, key, _ in written}
    for key, rev in final_mods.items():
        assert writer.call("KVD.GET", key, "WITHREV")[2] == rev  # the pushed revision is the key's mod revision
    resumed.close()
    writer.close()


def test_a_revision_older_than_the_history_answers_compacted(cluster):
    c = cluster(extra=["--watch-history", "5 1000000"])
    leader = c.leader()
    writer = Connection("127.0.0.1", leader.port, timeout=10.0)
    revisions = [txn_set(writer, "k", "v%d" % i) for i in range(20)]
    node = c.followers()[0]
    c.caught_up(node)
    conn = Connection("127.0.0.1", node.port, timeout=10.0)
    with pytest.raises(ReplyError) as e:
        conn.call("KVD.WATCH", "", "FROMREV", revisions[0])
    assert e.value.text.startswith("ERR compacted: revision %d is compacted, oldest available is" % revisions[0])
    oldest = int(e.value.text.rsplit(" ", 1)[1])
    assert revisions[0] < oldest <= revisions[-1]
    watch, start = open_watch(node, "", "FROMREV", oldest)
    assert [c[0] for c in changes(watch, revisions[-1] - oldest + 1)] == list(range(oldest, revisions[-1] + 1))
    watch.close()
    conn.close()
    writer.close()


def test_a_watch_on_a_node_that_installs_a_snapshot_is_cancelled_and_resumes_elsewhere_without_gap(cluster):
    """
    A follower frozen while the leader compacts its log past it catches up by a snapshot: its history cannot
    know what changed in between, so its watcher gets a cancel push, FROMREV there answers compacted, and the
    resume on another node still sees every write once, in order.
    """
    import signal

    c = cluster(extra=["--snapshot-entries", "40", "--snapshot-keep-entries", "5"])
    leader = c.leader()
    frozen, other = c.followers()
    writer = Connection("127.0.0.1", leader.port, timeout=10.0)
    watcher, _ = open_watch(frozen, "w:")
    written = [(txn_set(writer, "w:a", "v%d" % i), b"put", b"w:a", b"v%d" % i) for i in range(5)]
    seen = changes(watcher, 5)
    assert seen == written
    behind = frozen.info()["raft_applied_index"]
    frozen.signal(signal.SIGSTOP)
    try:
        # Write until the leader has compacted its log past the frozen node's next entry (it keeps entries for a
        # follower heard from within an election timeout, so it takes a few snapshots): bounded rounds.
        for _ in range(50):
            for _ in range(40):
                i = len(written)
                written.append((txn_set(writer, "w:a", "v%d" % i), b"put", b"w:a", b"v%d" % i))
            if leader.info()["raft_first_index"] > behind + 1:
                break
        assert leader.info()["raft_first_index"] > behind + 1, "the leader never compacted past the frozen node"
    finally:
        frozen.signal(signal.SIGCONT)
    deadline = time.monotonic() + 30
    while True:  # what it pushes before the cancel continues the stream exactly
        push = watcher.receive(timeout=max(0.1, deadline - time.monotonic()))
        if push[0] == b"watch-cancelled":
            assert push[1] == b"w:" and b"snapshot" in push[2], push
            break
        assert push[0] == b"watch" and push[1] == seen[-1][0] + 1, push
        seen.extend((push[1],) + tuple(change) for change in push[2])
    watcher.close()
    last = seen[-1][0]
    c.caught_up(frozen)
    conn = Connection("127.0.0.1", frozen.port, timeout=10.0)
    with pytest.raises(ReplyError) as e:
        conn.call("KVD.WATCH", "w:", "FROMREV", last + 1)
    assert "compacted" in e.value.text
    conn.close()
    resumed, start = open_watch(other, "w:", "FROMREV", last + 1)
    assert start == last + 1
    assert seen + changes(resumed, len(written) - len(seen)) == written
    resumed.close()
    writer.close()
