"""
Leases on real kvd processes through redis-py (kvd.kv.leases): a key attached to a lease survives a crash of
the leader while a client keeps the lease alive through whichever node answers (the new leader extends every
lease when it takes over); once the keepalives stop, the key disappears on every node, the restarted old
leader included.
"""

import threading
import time

import redis
from redis.exceptions import ResponseError

from tests.system.nodes import wait_for

TTL_S = 4


class KeepAlive(threading.Thread):
    """KVD.LEASE KEEPALIVE every second, through the first node that answers; bounded, stopped by ``stop``."""

    def __init__(self, nodes, lease_id):
        super().__init__(daemon=True)
        self.nodes, self.lease_id = nodes, lease_id
        self.stopped = threading.Event()
        self.answers, self.refusals = [], []

    def run(self):
        for _ in range(120):  # at most two minutes
            if self.stopped.wait(1.0):
                return
            for node in self.nodes:
                if not node.running():
                    continue
                try:
                    self.answers.append(node.client(socket_timeout=2).execute_command(
                        "KVD.LEASE", "KEEPALIVE", self.lease_id))
                    break
                except ResponseError as e:
                    if "lease not found" in str(e):
                        self.refusals.append(str(e))  # the lease is gone: what the test must never see
                        return
                except redis.RedisError:
                    continue  # that node is down or has no leader yet: the next one

    def stop(self):
        self.stopped.set()
        self.join(10)


def test_a_lease_survives_a_leader_crash_and_its_key_goes_when_keepalives_stop(cluster):
    c = cluster(3)
    old = c.leader()
    follower = c.followers()[0]
    lease_id = follower.client().execute_command("KVD.LEASE", "GRANT", TTL_S)
    assert follower.client().execute_command("SET", "svc", "up", "LEASE", lease_id) is True  # redis-py: OK
    assert follower.client().set("plain", "v") is True
    assert old.client().execute_command("KVD.LEASE", "TTL", lease_id, "KEYS") == [TTL_S, TTL_S, [b"svc"]]
    keepalive = KeepAlive(c.nodes, lease_id)
    keepalive.start()
    try:
        wait_for(lambda: keepalive.answers, 10, "a keepalive through the old leader (any node forwards it there)")
        old.kill()
        survivors = c.up()
        new = c.leader(among=survivors)
        assert new is not old
        # Twice the ttl after the crash, the key is still there on both survivors.
        crashed_at = time.monotonic()
        for _ in range(400):  # bounded: about 2 * TTL_S seconds of checks
            for node in survivors:
                assert node.client().get("svc") == b"up", "the key vanished %.1f s after the crash" % (
                    time.monotonic() - crashed_at)
            if time.monotonic() - crashed_at > 2 * TTL_S:
                break
            time.sleep(0.1)
        assert time.monotonic() - crashed_at > 2 * TTL_S
        assert keepalive.refusals == [] and keepalive.answers[-1] == TTL_S
    finally:
        keepalive.stop()
    stopped_at = time.monotonic()
    # No more keepalives: the key goes on every survivor within the ttl (and the reclaim interval).
    for node in survivors:
        wait_for(lambda: node.client().get("svc") is None, TTL_S + 10, "svc to disappear on %s" % node.id)
    assert time.monotonic() - stopped_at > TTL_S - 1.5  # not before its lease expired
    for node in survivors:
        assert node.client().get("plain") == b"v"
        try:
            node.client().execute_command("KVD.LEASE", "TTL", lease_id)
            raise AssertionError("the lease is still there")
        except ResponseError as e:
            assert str(e) == "lease not found"
        assert node.client().execute_command("KVD.LEASE", "LIST") == []
    # The old leader restarts from its disk and catches up: the same state.
    old.start()
    c.caught_up(old)
    assert old.client().get("svc") is None and old.client().get("plain") == b"v"
    assert old.client().execute_command("KVD.LEASE", "LIST") == []
