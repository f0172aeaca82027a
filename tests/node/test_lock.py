"""
kvd.cli.lock, the lock recipe and its runner, against a small in-memory model of what it uses of a cluster
(leases with a clock, SET NX LEASE, KVD.GET WITHREV, MULTI/EXEC, KVD.TXN IF CREATE, revisions), with
requests that fail before or after they apply.  Real nodes: tests/system/test_locks.py.
"""

import subprocess
import sys
import time

import pytest

from kvd.cli import lock as cli_lock
from kvd.cli import mgmt
from kvd.cli.errors import LOCK_LOST, TIMEOUT, USAGE, CliError
from kvd.cli.lock import Lock, LockLost, LockTimeout, Nodes, Unavailable, Unknown
from kvd.resp.client import Indeterminate, NotSent, ReplyError, Simple

NOT_FOUND = "ERR lease not found"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


class FakeCluster:
    """The commands the recipe sends, applied to one key space with revisions and leases that expire by ``clock``."""

    def __init__(self, clock):
        self.clock = clock
        self.revision = 0
        self.index = 0
        self.keys = {}     # key -> [value, create_revision, lease]
        self.leases = {}   # id -> [ttl, expiry]
        self.faults = []   # ("before" | "after", exception) for the next batches
        self.sent = []

    def _expire(self):
        for lease_id, (ttl, expiry) in list(self.leases.items()):
            if expiry <= self.clock():
                self._drop(lease_id)

    def _drop(self, lease_id):
        self.leases.pop(lease_id, None)
        for key, (_, _, lease) in list(self.keys.items()):
            if lease == lease_id:
                del self.keys[key]

    def pipeline(self, commands):
        self.sent.append([c[0] if c[0] != "KVD.LEASE" else c[1] for c in commands])
        fault = self.faults.pop(0) if self.faults else None
        if fault and fault[0] == "before":
            raise fault[1]
        self._expire()
        replies, queue = [], None
        for c in commands:
            c = tuple(str(x) for x in c)
            if c[0] == "MULTI":
                queue = []
                replies.append(Simple(b"OK"))
            elif c[0] == "EXEC":
                replies.append([self._one(q) for q in queue])
                queue = None
            elif queue is not None:
                queue.append(c)
                replies.append(Simple(b"QUEUED"))
            else:
                replies.append(self._one(c))
        if fault:
            raise fault[1]
        return replies

    def call(self, *args):
        reply = self.pipeline([args])[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def _one(self, c):
        if c[0] == "KVD.LEASE":
            op, arg = c[1], int(c[2])
            if op == "GRANT":
                self.index += 1
                self.leases[self.index] = [arg, self.clock() + arg]
                return self.index
            if arg not in self.leases:
                return ReplyError(NOT_FOUND)
            if op == "KEEPALIVE":
                self.leases[arg][1] = self.clock() + self.leases[arg][0]
                return self.leases[arg][0]
            if op == "REVOKE":
                self._drop(arg)
                self.revision += 1
                return Simple(b"OK")
        if c[0] == "SET":
            key, value, lease = c[1], c[2], int(c[5])
            assert c[3] == "NX" and c[4] == "LEASE"
            if lease not in self.leases:
                return ReplyError(NOT_FOUND)
            if key in self.keys:
                return None
            self.revision += 1
            self.keys[key] = [value, self.revision, lease]
            return Simple(b"OK")
        if c[0] == "KVD.GET":
            got = self.keys.get(c[1])
            return None if got is None else [got[0].encode(), got[1], got[1], 1]
        if c[0] == "TTL":
            got = self.keys.get(c[1])
            return -2 if got is None else int(self.leases[got[2]][1] - self.clock())
        if c[0] == "KVD.TXN":
            assert c[1:3] == ("IF", "CREATE") and c[4] == "="
            held = self.keys.get(c[3])
            ok = held is not None and held[1] == int(c[5])
            if ok:
                self.revision += 1
                if c[7] == "DEL":
                    del self.keys[c[8]]
                else:
                    self.keys[c[8]] = [c[9], self.revision, None]
            return [1 if ok else 0, [], self.revision]
        raise AssertionError("unexpected command %r" % (c,))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cluster(clock):
    return FakeCluster(clock)


def lock(cluster, clock, holder, ttl=10, name="job"):
    return Lock(cluster, name, ttl, holder, clock=clock, sleep=clock.sleep)


def test_a_free_lock_is_taken_at_the_revision_that_created_its_key(cluster, clock):
    cluster.revision = 41
    held = lock(cluster, clock, "a").acquire(timeout=1)
    assert held.token == 42 and held.holder == "a"
    assert cluster.keys["lock:job"] == ["a", 42, held.lease]
    # One entry does the SET NX and the read: the token is known at once.
    assert cluster.sent == [["GRANT"], ["MULTI", "SET", "KVD.GET", "EXEC"]]


def test_a_second_holder_waits_and_gets_a_larger_token(cluster, clock):
    a, b = lock(cluster, clock, "a"), lock(cluster, clock, "b")
    first = a.acquire()
    assert b.try_once() is None and b.seen == ("a", first.token)
    assert a.release()
    assert "lock:job" not in cluster.keys and a.lease is None and not cluster.leases.get(first.lease)
    second = b.acquire(timeout=1)
    assert second.token > first.token


def test_an_interrupted_wait_gives_back_the_lease(cluster, clock):
    lock(cluster, clock, "a").acquire()
    b = lock(cluster, clock, "b")

    def interrupted(_seconds):
        raise KeyboardInterrupt

    b.sleep = interrupted
    with pytest.raises(KeyboardInterrupt):
        cli_lock.run_locked(b, ["true"], None, lambda s: None)
    assert len(cluster.leases) == 1 and b.lease is None


def test_timeout_names_the_holder_and_gives_back_the_lease(cluster, clock):
    a, b = lock(cluster, clock, "a"), lock(cluster, clock, "b")
    a.acquire()
    started = clock()
    with pytest.raises(LockTimeout) as e:
        b.acquire(timeout=3)
    assert "held by a at token 1" in str(e.value)
    assert 3 <= clock() - started < 3.6
    assert b.lease is None and list(cluster.leases) == [a.lease]
    # Polled with backoff, and kept its own lease alive while it waited (a third of the ttl is 3.3 s: none yet).
    tries = [s for s in cluster.sent if "EXEC" in s]
    assert 5 <= len(tries) <= 15


def test_a_waiter_keeps_its_lease_alive_and_grants_a_new_one_if_it_lapsed(cluster, clock):
    a, b = lock(cluster, clock, "a", ttl=3), lock(cluster, clock, "b", ttl=3)
    a.acquire()
    with pytest.raises(LockTimeout):
        b.acquire(timeout=2.5)
    assert ["KEEPALIVE"] in cluster.sent  # after a third of b's ttl
    a.keepalive()
    a.release()
    b.lease, cluster.sent = 99, []       # a lease that no longer exists, due for a keepalive
    clock.now += 1.5
    assert b.acquire(timeout=1).lease != 99
    assert cluster.sent[:3] == [["KEEPALIVE"], ["GRANT"], ["MULTI", "SET", "KVD.GET", "EXEC"]]
    # A lease that lapses between the keepalive and the SET: the SET is refused, the next try grants one.
    c = lock(cluster, clock, "c", ttl=3)
    b.release()
    c.lease, c.renewed, cluster.sent = 98, clock(), []
    assert c.acquire(timeout=1).lease != 98
    assert cluster.sent == [["MULTI", "SET", "KVD.GET", "EXEC"], ["GRANT"], ["MULTI", "SET", "KVD.GET", "EXEC"]]


def test_a_lost_reply_is_settled_by_the_next_attempts_read(cluster, clock):
    cluster.revision = 7
    cluster.faults = [None, ("after", Unknown("no reply within 3s"))]  # the grant answers; the EXEC applies, unanswered
    held = lock(cluster, clock, "a").acquire(timeout=5)
    assert held.token == 8 and cluster.revision == 8  # the first attempt won; the second only read it


def test_no_answer_at_all_ends_in_a_timeout_saying_so(cluster, clock):
    cluster.faults = [("before", Unavailable("no node answers"))] * 100
    with pytest.raises(LockTimeout) as e:
        lock(cluster, clock, "a").acquire(timeout=2)
    assert "the cluster did not answer" in str(e.value) and "no node answers" in str(e.value)


@pytest.mark.parametrize("how", ["expired", "deleted", "retaken"])
def test_keepalive_notices_a_lost_lock(cluster, clock, how):
    a = lock(cluster, clock, "a", ttl=2)
    held = a.acquire()
    a.keepalive()
    if how == "expired":
        clock.now += 2.5
    elif how == "deleted":
        del cluster.keys["lock:job"]
    else:
        cluster._drop(held.lease)
        lock(cluster, clock, "b").acquire()
    with pytest.raises(LockLost):
        a.keepalive()


def test_a_stale_holder_neither_releases_nor_writes_over_the_next_one(cluster, clock):
    a, b = lock(cluster, clock, "a", ttl=2), lock(cluster, clock, "b", ttl=2)
    old = a.acquire()
    clock.now += 3  # a pauses past its ttl
    new = b.acquire(timeout=1)
    assert new.token > old.token
    assert cluster.call(*cli_lock.fenced_write("job", old.token, "res", "from-a"))[0] == 0
    assert cluster.call(*cli_lock.fenced_write("job", new.token, "res", "from-b"))[0] == 1
    a.held = old  # a still believes it holds the lock
    a.release()
    assert cluster.keys["lock:job"][:2] == ["b", new.token] and cluster.keys["res"][0] == "from-b"


def test_status(cluster, clock):
    assert cli_lock.status(cluster, "job") is None
    held = lock(cluster, clock, "a").acquire()
    assert cli_lock.status(cluster, "job") == {"lock": "job", "key": "lock:job", "holder": "a", "token": held.token,
                                               "ttl": 10}


# ------------------------------------------------------------ the runner, with a real child process
def real_lock(cluster, holder="a", ttl=3):
    return Lock(cluster, "job", ttl, holder)


def test_the_command_runs_with_the_token_and_its_exit_code_is_ours(tmp_path):
    cluster = FakeCluster(time.monotonic)
    out = tmp_path / "env"
    said = []
    code = cli_lock.run_locked(real_lock(cluster), [sys.executable, "-c", (
        "import os, sys; open(%r, 'w').write(os.environ['KVD_LOCK_TOKEN'] + ' ' + os.environ['KVD_LOCK_KEY']); "
        "sys.exit(3)") % str(out)], None, said.append)
    assert code == 3
    assert out.read_text() == "1 lock:job"
    assert "lock:job" not in cluster.keys and cluster.leases == {}  # released, lease revoked
    assert said and "token 1" in said[0]


def test_a_lost_lock_stops_the_command_and_exits_10(tmp_path):
    cluster = FakeCluster(time.monotonic)
    marker = tmp_path / "started"
    lk = real_lock(cluster, ttl=1)
    said = []

    def spawn(argv, env):
        child = subprocess.Popen(argv, env=env)
        cluster._drop(lk.held.lease)  # the lease ends while the command runs (as for a holder cut off)
        return child

    started = time.monotonic()
    code = cli_lock.run_locked(lk, [sys.executable, "-c", "import time; open(%r, 'w'); time.sleep(60)" % str(marker)],
                               None, said.append, spawn=spawn)
    assert code == LOCK_LOST
    assert time.monotonic() - started < 10
    assert any("lock lost: the lease" in s for s in said)


def test_a_command_that_finishes_after_its_lock_was_lost_is_not_a_success():
    """Say the holder was paused past its ttl and the command ended as it resumed, before any keepalive."""
    cluster = FakeCluster(time.monotonic)
    lk = real_lock(cluster, ttl=30)
    said = []

    def spawn(argv, env):
        child = subprocess.Popen(argv, env=env)
        cluster._drop(lk.held.lease)
        real_lock(cluster, "next").acquire()
        return child

    assert cli_lock.run_locked(lk, [sys.executable, "-c", "pass"], None, said.append, spawn=spawn) == LOCK_LOST
    assert "the command exited 0, but the lock was lost before it did" in said[-1]
    assert cluster.keys["lock:job"][0] == "next"  # and the next holder's key was left alone


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period():
    cluster = FakeCluster(time.monotonic)
    lk = real_lock(cluster, ttl=1)
    children = []

    def spawn(argv, env):
        children.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE))
        children[0].stdout.readline()  # it has installed its handler
        del cluster.keys["lock:job"]
        return children[0]

    code = cli_lock.run_locked(lk, [sys.executable, "-c", (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)")], None, lambda s: None, grace_s=0.5, spawn=spawn)
    assert code == LOCK_LOST
    assert children[0].returncode == -9
    children[0].stdout.close()


def test_not_acquired_in_time_is_exit_5():
    cluster = FakeCluster(time.monotonic)
    real_lock(cluster, "other").acquire()
    with pytest.raises(CliError) as e:
        cli_lock.run_locked(real_lock(cluster), ["true"], 0.3, lambda s: None)
    assert e.value.code == TIMEOUT and "held by other" in e.value.message


def test_a_command_that_cannot_start_releases_the_lock():
    cluster = FakeCluster(time.monotonic)
    said = []
    assert cli_lock.run_locked(real_lock(cluster), ["/nonexistent/cmd"], None, said.append) == 127
    assert cluster.keys == {} and "cannot run" in said[-1]


# ------------------------------------------------------------ Nodes: moving between nodes
class FakeConn:
    def __init__(self, address, outcomes):
        self.address, self.outcomes = address, outcomes

    def pipeline(self, commands):
        outcome = self.outcomes[self.address].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def close(self):
        pass


def test_nodes_move_on_from_a_node_that_fails():
    outcomes = {"n1": [NotSent("refused"), [ReplyError("NOLEADER no leader")]], "n2": [[5], Indeterminate("lost")],
                "n3": [[ReplyError("TIMEOUT no commit")]]}
    nodes = Nodes(["n1", "n2", "n3"], 1.0, connect=lambda a, t: FakeConn(a, outcomes))
    assert nodes.call("X") == 5 and nodes.address == "n2"      # n1 refused: nothing sent, n2 tried at once
    with pytest.raises(Unknown):
        nodes.call("X")                                         # n2 lost it: outcome unknown, next time n3
    with pytest.raises(Unknown):
        nodes.call("X")                                         # -TIMEOUT: unknown too
    with pytest.raises(Unavailable):
        nodes.call("X")                                         # n1 again: no leader, certainly not applied
    with pytest.raises(ReplyError):
        Nodes(["n1"], 1.0, connect=lambda a, t: FakeConn(a, {"n1": [[ReplyError("ERR lease not found")]]})).call("X")


# ------------------------------------------------------------ mgmt.py's arguments
@pytest.mark.parametrize("args, needs", [
    (["-r", "client", "-c", "lock", "-k", "job"], "needs a command to run"),
    (["-r", "client", "-c", "leader", "-k", "job", "--", "true"], "needs -v <value>"),
    (["-r", "client", "-c", "read", "-k", "job", "--", "true"], "does not take -- <command>"),
    (["-r", "client", "-c", "lock-status", "-k", "job", "--ttl", "3"], "does not take --ttl"),
])
def test_usage_errors(args, needs, capsys):
    assert mgmt.main(args) == USAGE
    assert needs in capsys.readouterr().err


def test_a_node_that_takes_no_connection_fails_at_once(capsys):
    from tests.system.conftest import free_client_ports

    port = free_client_ports(1)[0]
    started = time.monotonic()
    for command in (["lock", "-k", "job", "--", "true"], ["lock-status", "-k", "job"]):
        assert mgmt.main(["-r", "client", "-c", command[0], "-h", "127.0.0.1:%d" % port] + command[1:]) == 3
        assert "cannot reach a node at 127.0.0.1:%d" % port in capsys.readouterr().err
    assert time.monotonic() - started < 10
