"""
Lua scripts on real kvd processes through redis-py: its ``Lock`` (Lua
scripts for release and ownership checks; no timeout, which needs expiry),
``register_script`` (EVALSHA, falling back to SCRIPT LOAD), the cache seen
by every node, and an endless loop answered in time with no leader change.
"""

import threading
import time

import pytest
import redis
from redis.exceptions import LockError, LockNotOwnedError, NoScriptError, ResponseError


def test_redis_py_lock_and_scripts(cluster):
    c = cluster(3)
    leader = c.leader()
    follower = c.followers()[0]
    for node in (leader, follower):
        r = node.client()
        lock = r.lock("resource", blocking_timeout=5)
        assert lock.acquire()
        assert r.get("resource") == lock.local.token
        other = node.client().lock("resource", blocking=False)
        assert not other.acquire()
        assert lock.owned() and lock.locked()
        lock.release()
        assert not lock.locked() and r.get("resource") is None
        with pytest.raises(LockError):
            lock.release()
        # A lock taken over by someone else is not released by the old owner (the release script checks).
        lock.acquire()
        r.set("resource", "someone-else")
        with pytest.raises(LockNotOwnedError):
            lock.release()
        r.delete("resource")

    # Two clients contend: each increment happens under the lock.
    def worker():
        client = follower.client()
        for _ in range(5):
            with client.lock("counter-lock", blocking_timeout=30, sleep=0.01):
                value = int(client.get("counter") or 0)
                client.set("counter", value + 1)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert leader.client().get("counter") == b"10"

    # register_script: EVALSHA, SCRIPT LOAD on NOSCRIPT, then EVALSHA through another node.
    leader.client().script_flush()
    incr = follower.client().register_script("return redis.call('incrby', KEYS[1], ARGV[1])")
    assert incr(keys=["n"], args=[5]) == 5
    assert leader.client().evalsha(incr.sha, 1, "n", 2) == 7
    c.caught_up(follower)
    assert follower.client().script_exists(incr.sha) == [True]
    leader.client().script_flush()
    with pytest.raises(NoScriptError):
        follower.client().evalsha(incr.sha, 1, "n", 1)

    # A Script object in a transactional pipeline: SCRIPT EXISTS/LOAD before MULTI, EVALSHA inside it.
    leader.client().script_flush()
    pipe = follower.client().pipeline()
    incr(keys=["p"], args=[1], client=pipe)
    pipe.get("p")
    incr(keys=["p"], args=[2], client=pipe)
    assert pipe.execute() == [1, b"1", 3]

    # An endless loop: an error within a second, nothing applied, and the leader stays.
    info = leader.info()
    start = time.monotonic()
    with pytest.raises(ResponseError, match="Script killed"):
        follower.client().eval("redis.call('set', 'loop', '1') while true do end", 0)
    assert time.monotonic() - start < 1.0
    with pytest.raises(ResponseError, match="Script killed"):
        leader.client().eval("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end", 0)
    assert time.monotonic() - start < 2.0
    assert leader.client().get("loop") is None
    after = leader.info()
    assert after["raft_term"] == info["raft_term"] and after["raft_role"] == "leader"
