"""
Issue 13 with real processes: 200 MiB of data kept in LMDB (not in memory),
a new node that catches up by a streamed snapshot and becomes a voter, a
follower wiped while down that rejoins the same way, and a whole-cluster
restart that serves at once and keeps every acknowledged write.
"""

import os
import shutil
import threading
import time

from tests.system.conftest import free_client_ports
from tests.system.nodes import Node, wait_for

VALUE = 1024
KEYS = int(os.environ.get("KVD_SCALE_TEST_KEYS", 200 * 1024))  # 200 MiB of values
BATCH = 2000


def value_of(i: int) -> bytes:
    head = b"%08d:" % i
    return head + b"v" * (VALUE - len(head))


def load(node, keys: int) -> None:
    client = node.client(socket_timeout=60)
    for start in range(0, keys, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(keys, start + BATCH)):
            pipe.set(b"key:%d" % i, value_of(i))
        assert all(pipe.execute()), "a SET of batch %d failed" % start


def check_sample(node, keys: int, others: int, step: int = 997) -> None:
    """A sample of the ``keys`` key:N values, and their count with the ``others`` keys beside them."""
    client = node.client(socket_timeout=30)
    client.execute_command("READONLY")
    sample = list(range(0, keys, step)) + [keys - 1]
    got = client.mget([b"key:%d" % i for i in sample])
    assert got == [value_of(i) for i in sample]
    assert client.dbsize() == keys + others


def check_all(node, keys: int, others: int) -> None:
    """Every acknowledged write, read back from what ``node`` holds (READONLY), in bounded batches."""
    client = node.client(socket_timeout=60)
    client.execute_command("READONLY")
    for start in range(0, keys, 5000):
        batch = range(start, min(keys, start + 5000))
        assert client.mget([b"key:%d" % i for i in batch]) == [value_of(i) for i in batch], "a key of %d..%d" % (start, batch[-1])
    assert client.dbsize() == keys + others


def joiner(c, home: str) -> Node:
    port = free_client_ports(1)[0]
    node = Node(home, port, c.nodes[0].args[c.nodes[0].args.index("--initial-cluster") + 1], [])
    i = node.args.index("--initial-cluster")
    del node.args[i:i + 2]  # a joiner starts with no configuration and waits to be added
    return node


def members(field) -> list:
    # redis-py parses a comma-separated INFO field into a list, a single member into a str.
    return field if isinstance(field, list) else str(field).split(",")


def rss_mib(node) -> float:
    with open("/proc/%d/status" % node.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_200_mib_join_rejoin_and_restart(cluster, tmp_path):
    c = cluster(extra=["--snapshot-entries", "5000", "--snapshot-keep-entries", "1000"])
    leader = c.leader()
    started = time.monotonic()
    load(leader, KEYS)
    print("loaded %d keys of %d bytes in %.1fs" % (KEYS, VALUE, time.monotonic() - started))
    for node in c.nodes:
        c.caught_up(node, 60)
        # The state is on disk, not in memory: far less than the 200 MiB of values each.
        print("%s RSS %.0f MiB" % (node.id, rss_mib(node)))
    assert leader.info()["raft_snapshot_index"] > 0

    # A fourth node joins while writes go on (so the leader compacts its log past the
    # snapshot it began to send): it is sent the state as a stream, and becomes a voter.
    new = joiner(c, str(tmp_path))
    c.nodes.append(new)  # from now on, the fixture's teardown kills it too
    new.start()
    stop, written = threading.Event(), []

    def writer():
        client = leader.client(socket_timeout=30)
        while not stop.is_set() and len(written) < 200_000:  # bounded
            pipe = client.pipeline(transaction=False)
            batch = range(len(written), len(written) + 100)
            for i in batch:
                pipe.set(b"w:%d" % i, b"%d" % i)
            assert all(pipe.execute())
            written.extend(batch)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        assert leader.client().execute_command("KVD.JOIN", new.id, "127.0.0.1:%d:%d" % (new.port, new.port + 10000))
        wait_for(lambda: new.id in members(leader.info()["raft_voters"]), 120, "the new node to become a voter")
        print("join to voter: %.1fs, %d writes meanwhile" % (time.monotonic() - started, len(written)))
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    c.caught_up(new, 60)
    check_sample(new, KEYS, len(written))
    local = new.client()
    local.execute_command("READONLY")
    assert local.mget([b"w:%d" % i for i in written]) == [b"%d" % i for i in written]
    log = open(new.logfile).read()
    assert "installed a snapshot" in log
    assert "streaming a snapshot" in open(leader.logfile).read()

    # A follower wiped while down rejoins by the same stream.  A node that lost
    # its disk must not come back as the member it was (it forgot its votes and
    # its log, which the others count on): it is removed and joins afresh, as
    # `mgmt.py -r server -c rebuild` does.
    follower = [n for n in c.followers() if n is not new][0]
    follower.kill()
    leader = c.leader()
    assert leader.client().execute_command("KVD.REMOVE", follower.id)
    shutil.rmtree(os.path.join(follower.dir, "data"))
    client = leader.client()
    for i in range(KEYS, KEYS + 100):
        assert client.set(b"key:%d" % i, value_of(i))
    i = follower.args.index("--initial-cluster")
    del follower.args[i:i + 2]
    follower.start()
    assert leader.client().execute_command("KVD.JOIN", follower.id, "127.0.0.1:%d:%d" % (follower.port, follower.port + 10000))
    wait_for(lambda: follower.id in members(leader.info()["raft_voters"]), 120, "the wiped node to be a voter again")
    c.caught_up(follower, 120)
    check_sample(follower, KEYS + 100, len(written))

    # The whole cluster restarts: each node serves at once (no replay of the state).
    for node in c.nodes:
        node.kill()
    for node in c.nodes:
        started = time.monotonic()
        node.start()  # returns once the node answers PING
        restart = time.monotonic() - started
        print("%s serving %.2fs after start" % (node.id, restart))
        assert restart < 2.0, "%s took %.2fs to serve (twistd's start included)" % (node.id, restart)
    c.leader(30)
    for node in c.nodes:
        c.caught_up(node, 60)
        check_all(node, KEYS + 100, len(written))
