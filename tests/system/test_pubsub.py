"""
Pub/sub on real kvd processes through redis-py: subscribers on two followers
get every message published through the leader and through a follower, in
the same order (the log's); a key's expiry reaches a follower's subscriber as
a keyspace ``expired`` event (the Tick that reclaims it is an entry every node
applies).
"""

import time

import redis


def messages(pubsub, n, timeout_s=20.0):
    """The next ``n`` messages (not confirmations) of ``pubsub``, waiting at most ``timeout_s`` in all."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            out.append(message)
    assert len(out) == n, "got %d of %d messages in %.0f s: %r" % (len(out), n, timeout_s, out)
    return out


def test_subscribers_on_two_followers_see_every_message_in_one_order(cluster):
    c = cluster()
    leader = c.leader()
    followers = c.followers()
    subs = []
    for node, protocol in zip(followers, (2, 3)):
        pubsub = node.client(protocol=protocol).pubsub()
        pubsub.subscribe("news")
        pubsub.psubscribe("n*")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
        subs.append(pubsub)
    publishers = [leader.client(), followers[0].client()]
    n = 40
    for i in range(n):  # bounded: 40 messages, each PUBLISH answered before the next
        receivers = publishers[i % 2].publish("news", "m%d" % i)
        # Redis Cluster's count: the subscriptions on the node that proposed it (the follower's own two).
        assert receivers == (0 if i % 2 == 0 else 2)
    seen = []
    for pubsub in subs:
        got = messages(pubsub, 2 * n)
        seen.append([(m["type"], m["data"]) for m in got])
        assert sorted(m["data"] for m in got if m["type"] == "message") == sorted(b"m%d" % i for i in range(n))
    assert seen[0] == seen[1]  # one order, the log's, on both followers
    for pubsub in subs:
        pubsub.close()


def test_an_expired_key_reaches_a_followers_subscriber(cluster):
    c = cluster()
    leader = c.leader()
    follower = c.followers()[0]
    client = follower.client()
    assert client.config_set("notify-keyspace-events", "Ex") is True
    assert client.config_get("notify-keyspace-events") == {"notify-keyspace-events": "xE"}
    pubsub = client.pubsub()
    pubsub.subscribe("__keyevent@0__:expired")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    assert leader.client().set("session:1", "v", px=300) is True
    (message,) = messages(pubsub, 1)
    assert message["channel"] == b"__keyevent@0__:expired" and message["data"] == b"session:1"
    assert leader.client().exists("session:1") == 0
    pubsub.close()
