"""
The node as a user runs it: real `twistd kvd` processes on 127.0.0.1 with
real LMDB, AMP and Redis-protocol sockets, killed by PID and restarted.
"""

import shutil
import signal
import socket
import subprocess
import threading

import pytest
import redis

from tests.system.nodes import wait_for

pytestmark = pytest.mark.system


def test_three_nodes_elect_one_leader_and_replicate(cluster):
    """SET through a follower is readable, linearizably, through every node (redis-py's default RESP3 client)."""
    c = cluster()
    leader = c.leader()
    follower = c.followers()[0]
    assert follower.client().set(b"greeting", b"hello") is True
    for node in c.nodes:
        assert node.client().get(b"greeting") == b"hello"
    roles = sorted(n.info()["raft_role"] for n in c.nodes)
    assert roles == ["follower", "follower", "leader"]
    assert all(n.info()["raft_leader"] == leader.id for n in c.nodes)


def test_leader_crash_new_leader_and_catch_up(cluster):
    """SIGKILL of the leader: a new one is elected, writes go on, and the old one recovers from LMDB and catches up."""
    c = cluster()
    old = c.leader()
    for i in range(50):
        assert old.client().set(b"k%d" % i, b"%d" % i)
    old.kill()
    new = c.leader()
    assert new is not old
    for i in range(50, 100):
        assert new.client().set(b"k%d" % i, b"%d" % i)
    old.start()
    c.caught_up(old)
    local = old.client()
    local.execute_command("READONLY")  # local reads show what the restarted node itself holds
    assert local.get(b"k99") == b"99" and local.get(b"k0") == b"0"
    assert old.info()["raft_role"] == "follower"


def test_one_mib_value_replicates(cluster):
    """A 1 MiB value (over AMP's 64 KiB cap) is split, replicated and read back intact from each node."""
    c = cluster()
    value = bytes(range(256)) * 4096
    assert len(value) == 1024 * 1024
    assert c.followers()[0].client().set(b"big", value)
    for node in c.nodes:
        assert node.client().get(b"big") == value
    with pytest.raises(redis.ResponseError):
        c.nodes[0].client().set(b"too-big", value + b"x")


def test_node_behind_compaction_catches_up_by_snapshot(cluster):
    """A node down while the log was compacted is sent a snapshot when it returns."""
    c = cluster(extra=["--snapshot-entries", "50", "--snapshot-keep-entries", "10"])
    leader = c.leader()
    lagger = c.followers()[0]
    behind = lagger.info()["raft_applied_index"]
    lagger.kill()
    # Write until the leader's log no longer holds what the lagger misses (while the
    # lagger still counts as up, the leader keeps those entries for it).
    client, written = leader.client(), 0
    while leader.info()["raft_first_index"] <= behind + 1:
        assert written < 4000, "the leader never compacted past the lagger"  # bounded
        pipe = client.pipeline(transaction=False)
        for i in range(written, written + 100):
            pipe.set(b"s%d" % i, b"%d" % i)
        assert all(pipe.execute())
        written += 100
    lagger.start()
    c.caught_up(lagger)
    assert "installed a snapshot" in open(lagger.logfile).read()
    local = lagger.client()
    local.execute_command("READONLY")
    assert local.get(b"s%d" % (written - 1)) == b"%d" % (written - 1)
    assert local.dbsize() == written


def test_whole_cluster_crash_keeps_every_acknowledged_write(cluster):
    """Writers run, every node is SIGKILLed at once, all restart: each acknowledged write is there."""
    c = cluster()
    acknowledged = {}
    stop = threading.Event()

    def writer(w):
        client = c.nodes[w % 3].client(socket_timeout=3)
        for i in range(100000):
            if stop.is_set():
                return
            key, value = b"w%d-%d" % (w, i), b"%d" % i
            try:
                if client.set(key, value):
                    acknowledged[key] = value
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acknowledged) >= 150, 30, "150 acknowledged writes")
    for node in c.nodes:
        node.signal(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(10)
    for node in c.nodes:
        node.pid = None
        node.start()
    leader = c.leader()
    client = leader.client()
    missing = [k for k, v in acknowledged.items() if client.get(k) != v]
    assert not missing, "%d acknowledged writes lost, e.g. %r" % (len(missing), missing[:5])


def test_redis_cli_and_telnet_style_inline(cluster):
    """redis-cli (Debian's redis-tools) and a raw inline line, as telnet or netcat sends it, both work."""
    c = cluster()
    node = c.followers()[0]
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli is missing: .ci/run installs redis-tools"
    run = lambda *a: subprocess.run([cli, "-p", str(node.port)] + list(a), capture_output=True, text=True, timeout=20).stdout.strip()  # noqa: E731
    assert run("SET", "color", "blue") == "OK"
    assert run("GET", "color") == "blue"
    assert "raft_role:follower" in run("INFO", "raft")
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"SET inline 'two words'\r\nGET inline\r\nNOSUCH\r\n")
        data = b""
        while data.count(b"\r\n") < 4:
            chunk = s.recv(4096)
            assert chunk, "connection closed early: %r" % data
            data += chunk
    assert data.startswith(b"+OK\r\n$9\r\ntwo words\r\n-ERR unknown command 'NOSUCH'")
