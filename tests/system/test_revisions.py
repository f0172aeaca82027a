"""
Revisions and KVD.TXN on three real kvd processes through redis-py: a
transaction sent to a follower is one log entry, applied on every node at
the same revision; the revision and each key's (create, mod, version)
survive a crash and restart (the LMDB records and state record carry them).
"""

import pytest
from redis.exceptions import ResponseError


def test_a_txn_through_a_follower_lands_at_one_revision_on_every_node(cluster):
    c = cluster(3)
    leader = c.leader()
    follower = c.followers()[0]
    f = follower.client()

    base = f.execute_command("KVD.REVISION")
    assert f.execute_command("KVD.TXN", "THEN", "SET", "a", "100", "SET", "b", "0") == [1, [b"OK", b"OK"], base + 1]
    # Move 30 from a to b if both are at version 1; the answer names the new revision.
    reply = f.execute_command("KVD.TXN", "IF", "VERSION", "a", "=", "1", "VERSION", "b", "=", "1",
                              "THEN", "SET", "a", "70", "SET", "b", "30", "GET", "a", "ELSE", "GET", "a")
    assert reply == [1, [b"OK", b"OK", b"70"], base + 2]
    # The same compare fails now: ELSE runs, nothing changes, the revision stays.
    reply = f.execute_command("KVD.TXN", "IF", "VERSION", "a", "=", "1", "THEN", "DEL", "a", "ELSE", "GET", "b")
    assert reply == [0, [b"30"], base + 2]
    with pytest.raises(ResponseError, match="KVD.TXN syntax error"):
        f.execute_command("KVD.TXN", "IF", "VALUE", "a", "~", "1", "THEN", "DEL", "a")
    f.hset("h", "field", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE KVD.TXN compare VALUE h"):
        f.execute_command("KVD.TXN", "IF", "VALUE", "h", "=", "x", "THEN", "DEL", "a")
    assert f.get("a") == b"70"

    for node in c.nodes:
        c.caught_up(node)
    revisions = {node.id: node.client().execute_command("KVD.REVISION") for node in c.nodes}
    assert set(revisions.values()) == {base + 3}, revisions  # the HSET was a revision too
    withrev = {node.id: node.client().execute_command("KVD.GET", "a", "WITHREV") for node in c.nodes}
    assert set(map(tuple, withrev.values())) == {(b"70", base + 1, base + 2, 2)}, withrev

    # A crash and restart: the node comes back with the same revision and metas from its disk.
    victim = follower
    victim.kill()
    leader.client().execute_command("KVD.TXN", "IF", "MOD", "b", "=", str(base + 2), "THEN", "DEL", "b")
    victim.start()
    c.caught_up(victim)
    v = victim.client()
    assert v.execute_command("KVD.REVISION") == base + 4
    assert v.execute_command("KVD.GET", "a", "WITHREV") == [b"70", base + 1, base + 2, 2]
    assert v.execute_command("KVD.GET", "b", "WITHREV") is None
    assert v.execute_command("KVD.GET", "a") == b"70"
