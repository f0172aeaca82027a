"""
The limits of kvd.limits on real processes: the largest write the table
allows commits on every node, one byte more is refused before the log, and
the cluster goes on serving at once (the operator's failure: an MSET just
over the followers' staging limit was logged, then refused by every follower
again and again, and every write behind it timed out).
"""

import time

import pytest
import redis

from kvd.limits import LIMITS
from tests.test_limits import largest_mset as largest

pytestmark = pytest.mark.system

#: A SET right after a refused command must not wait behind anything (measured: about 6 ms).
SET_AFTER_S = 2.0


def largest_mset(extra: int = 0, prefix: bytes = b"big:"):
    """MSET pairs whose encoding is exactly ``command_bytes + extra`` (tests/test_limits.py)."""
    return dict(largest(extra, prefix).pairs)


def timed_set(node, key: bytes) -> float:
    started = time.monotonic()
    assert node.client().set(key, b"after") is True
    return time.monotonic() - started


def test_the_largest_command_commits_everywhere_and_one_byte_more_is_refused(cluster):
    """
    Through a follower (the longest path: forwarded, then sent to every
    follower), an MSET of exactly ``command_bytes`` commits and reads back
    whole through every node; the same MSET one byte bigger answers -ERR
    through the leader and through a follower, the connection stays usable,
    nothing of it is stored, and a SET right after commits at once, with the
    same leader.
    """
    c = cluster()
    leader = c.leader()
    follower = c.followers()[0]
    largest = largest_mset()
    assert follower.client(socket_timeout=30).mset(largest) is True
    keys = sorted(largest)
    for node in c.nodes:
        assert node.client(socket_timeout=30).mget(keys) == [largest[k] for k in keys], node.id

    over = largest_mset(extra=1, prefix=b"ovr:")  # keys as long as big:N
    for node in (leader, follower):
        client = node.client(socket_timeout=30)
        with pytest.raises(redis.ResponseError) as refused:
            client.mset(over)
        assert "over the limit of %d bytes in one write" % LIMITS.command_bytes in str(refused.value)
        assert client.ping() is True  # the same connection goes on
        assert timed_set(node, b"after:" + node.id.encode()) < SET_AFTER_S
    for node in c.nodes:
        assert node.client().exists(*over) == 0, node.id
    assert c.leader() is leader


def test_a_request_over_the_parser_limit_is_skipped_and_answered(cluster):
    """
    A request far over one command's bytes (several times ``request_bytes``)
    is skipped as it arrives, answered with -ERR, and the connection serves
    the next command; no node buffers it.
    """
    c = cluster()
    follower = c.followers()[0]
    client = follower.client(socket_timeout=30)
    values = [b"v" * LIMITS.value_bytes] * (3 * LIMITS.request_bytes // LIMITS.value_bytes)
    args = []
    for i, value in enumerate(values):
        args += [b"huge:%d" % i, value]
    with pytest.raises(redis.ResponseError) as refused:
        client.execute_command("MSET", *args)
    assert "over this node's limit of %d bytes for one command" % LIMITS.request_bytes in str(refused.value)
    assert client.ping() is True
    assert timed_set(follower, b"after-huge") < SET_AFTER_S
    assert follower.client().exists(b"huge:0") == 0
