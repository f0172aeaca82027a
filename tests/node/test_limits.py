"""
kvd.limits at the node, on the fake cluster (tests/node/fakes.py): what is
over the table never reaches a log, whoever asks (the client port, a caller
of ``submit``, a forward from a node that checks less), and the largest
command the table allows commits everywhere.
"""

from redis.connection import Connection
from twisted.python.failure import Failure

from kvd.errors import Code, KvdError
from kvd.kv.commands import Envelope, Get, MSet, Set, encode_envelope
from kvd.kv.results import OK
from kvd.limits import LIMITS
from kvd.wire.errors import ForwardError
from tests.node.fakes import leaders, run
from tests.node.test_executor import ask, client_of
from tests.test_limits import largest_mset as largest


def outcome(clock, d, seconds=5):
    out = []
    d.addBoth(out.append)
    run(clock, seconds)
    assert out, "no answer within %s fake seconds" % seconds
    return out[0]


def last_indexes(network):
    return {node_id: node.core.log.last_index() for node_id, node in network.nodes.items()}


def test_the_largest_command_commits_and_one_byte_more_never_reaches_a_log(cluster):
    """
    Through a follower, the largest MSET commits and reads back on every
    node; one byte more fails with ERR (a refusal: fix the request) on the
    leader and on a follower, before any log grows and before anything is
    forwarded, and a SET right after commits.
    """
    clock, network = cluster
    (leader,) = leaders(network)
    follower = next(n for n in network.nodes.values() if n is not leader)
    assert outcome(clock, follower.submit(largest())) is OK
    key, value = largest().pairs[-1]
    for node in network.nodes.values():
        assert outcome(clock, node.read(Get(key))) == value
    before, forwarded = last_indexes(network), list(network.forwarded)
    for node in (leader, follower):
        failure = outcome(clock, node.submit(largest(extra=1, prefix=b"x")))
        assert isinstance(failure, Failure) and failure.check(KvdError)
        assert failure.value.code is Code.ERR
        assert "over the limit of %d bytes in one write" % LIMITS.command_bytes in failure.value.message
    assert last_indexes(network) == before and network.forwarded == forwarded
    assert outcome(clock, follower.submit(Set(b"after", b"1"))) is OK


def test_the_leader_refuses_a_forwarded_entry_over_the_limits(cluster):
    """
    A forward from a node that checks less (another version), over the
    entry's bytes or the keys one write may hold, is refused by the leader
    before it proposes; so is such a command handed to ``submit`` directly.
    """
    clock, network = cluster
    (leader,) = leaders(network)
    before = last_indexes(network)
    command = MSet(largest().pairs + ((b"more", b"m" * (LIMITS.entry_bytes - LIMITS.command_bytes)),))
    payload = encode_envelope(Envelope(b"other/1", 1, 1, 0, command))
    assert len(payload) > LIMITS.entry_bytes
    failure = outcome(clock, leader.forwarded("127.0.0.1:7009", payload))
    assert isinstance(failure, Failure) and failure.check(ForwardError)
    assert failure.value.code is Code.ERR and "one log entry" in failure.value.message
    many = MSet(tuple((b"k%d" % i, b"") for i in range(LIMITS.command_keys + 1)))
    failure = outcome(clock, leader.forwarded("127.0.0.1:7009", encode_envelope(Envelope(b"other/1", 2, 1, 0, many))))
    assert failure.value.code is Code.ERR and "keys in one write" in failure.value.message
    failure = outcome(clock, leader.submit(many))
    assert failure.value.code is Code.ERR and "keys in one write" in failure.value.message
    assert last_indexes(network) == before


def test_the_client_port_refuses_before_the_log_and_keeps_the_connection(cluster):
    """RESP bytes in at a follower: the oversized MSET answers -ERR, no log grows, the next SET on the connection runs."""
    clock, network = cluster
    follower = next(n for n in network.nodes.values() if not n.core.is_leader())
    proto, transport = client_of(follower)
    over = [x for pair in largest(extra=1).pairs for x in pair]
    before = last_indexes(network)
    reply = ask(clock, proto, transport, b"".join(Connection().pack_command("MSET", *over)))
    assert reply.startswith(b"-ERR MSET of %d bytes is over the limit" % (LIMITS.command_bytes + 1))
    assert last_indexes(network) == before
    assert ask(clock, proto, transport, b"SET after 1\r\n") == b"+OK\r\n"
