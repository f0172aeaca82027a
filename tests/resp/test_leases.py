"""
KVD.LEASE and SET ... LEASE at the client port (kvd.resp.commands): parsing, refusals with a clear -ERR, roles,
MULTI, and the replies through the protocol on a machine (no sockets).  Redis has no leases: nothing to compare.
"""

import pytest

from kvd.kv.commands import Lease, LeaseRead, Set
from kvd.resp.auth import READONLY, READWRITE
from kvd.resp.commands import Read, Write, parse_request, request_name
from kvd.resp.connection import required_role
from tests.resp.test_everyday import _kvd_replies
from tests.resp.test_everyday_more import _plain, kvd_connection


def _replies(proto, transport, commands):
    return [_plain(reply) for reply in _kvd_replies(proto, transport, commands)]


def req(*args):
    return parse_request([a if isinstance(a, bytes) else a.encode() for a in args])


def test_parsing():
    assert req("KVD.LEASE", "GRANT", "10") == Write(Lease("grant", ttl=10), "kvd.lease|grant")
    assert req("kvd.lease", "keepalive", "7") == Write(Lease("keepalive", id=7), "kvd.lease|keepalive")
    assert req("KVD.LEASE", "REVOKE", "7") == Write(Lease("revoke", id=7), "kvd.lease|revoke")
    assert req("KVD.LEASE", "TTL", "7") == Read(LeaseRead("ttl", 7), "kvd.lease|ttl")
    assert req("KVD.LEASE", "TTL", "7", "keys") == Read(LeaseRead("ttl", 7, True), "kvd.lease|ttl")
    assert req("KVD.LEASE", "LIST") == Read(LeaseRead("list"), "kvd.lease|list")
    assert req("SET", "k", "v", "LEASE", "7") == Write(Set(b"k", b"v", lease=7))
    assert req("SET", "k", "v", "NX", "GET", "lease", "7") == Write(Set(b"k", b"v", cond="NX", get=True, lease=7))
    assert request_name(req("KVD.LEASE", "GRANT", "10")) == "kvd.lease|grant"
    assert required_role(req("KVD.LEASE", "GRANT", "10")) == READWRITE
    assert required_role(req("KVD.LEASE", "LIST")) == READONLY


@pytest.mark.parametrize("args,error", [
    (("KVD.LEASE", "GRANT", "0"), "ERR invalid lease TTL: an integer of 1 to 9000000000 seconds is expected"),
    (("KVD.LEASE", "GRANT", "x"), "ERR invalid lease TTL"),
    (("KVD.LEASE", "GRANT", "9000000001"), "ERR invalid lease TTL"),
    (("KVD.LEASE", "KEEPALIVE", "-1"), "ERR invalid lease id: a positive integer is expected"),
    (("KVD.LEASE", "REVOKE", "01"), "ERR invalid lease id"),
    (("KVD.LEASE", "TTL", "1", "VALUES"), "ERR syntax error"),
    (("KVD.LEASE", "TTL", "1", "KEYS", "x"), "ERR syntax error"),
    (("KVD.LEASE", "GRANT"), "ERR wrong number of arguments for 'kvd.lease|grant' command"),
    (("KVD.LEASE", "LIST", "x"), "ERR wrong number of arguments"),
    (("KVD.LEASE", "STEAL", "1"), "ERR unknown subcommand 'STEAL'. Try KVD.LEASE HELP."),
    (("KVD.LEASE",), "ERR wrong number of arguments for 'kvd.lease' command"),
    (("SET", "k", "v", "LEASE"), "ERR syntax error"),
    (("SET", "k", "v", "LEASE", "0"), "ERR invalid lease id"),
    (("SET", "k", "v", "LEASE", "1", "EX", "5"), "ERR syntax error"),
    (("SET", "k", "v", "PX", "5", "LEASE", "1"), "ERR syntax error"),
    (("SET", "k", "v", "KEEPTTL", "LEASE", "1"), "ERR syntax error"),
    (("SET", "k", "v", "LEASE", "1", "LEASE", "2"), "ERR syntax error"),
])
def test_bad_input_is_a_clear_error(args, error):
    assert str(req(*args)).startswith(error), str(req(*args))


def test_through_the_protocol():
    _, proto, transport = kvd_connection()
    replies = _replies(proto, transport, [
        ("KVD.LEASE", "GRANT", "30"), ("SET", "svc", "up", "LEASE", "1"), ("KVD.LEASE", "TTL", "1", "KEYS"),
        ("KVD.LEASE", "KEEPALIVE", "1"), ("KVD.LEASE", "LIST"), ("TTL", "svc"), ("SET", "x", "v", "LEASE", "99"),
        ("GET", "x"), ("KVD.LEASE", "REVOKE", "1"), ("GET", "svc"), ("KVD.LEASE", "KEEPALIVE", "1"),
        ("KVD.LEASE", "TTL", "1"), ("KVD.LEASE", "LIST"),
    ])
    assert replies == [b"1", b"OK", [b"30", b"30", [b"svc"]], b"30", [b"1"], b"30", b"ERR lease not found", None,
                       b"OK", None, b"ERR lease not found", b"ERR lease not found", []]


def test_multi_refuses_lease_writes_and_runs_lease_reads():
    _, proto, transport = kvd_connection()
    replies = _replies(proto, transport, [
        ("KVD.LEASE", "GRANT", "30"), ("MULTI",), ("SET", "k", "v", "LEASE", "1"), ("KVD.LEASE", "TTL", "1", "KEYS"),
        ("EXEC",), ("MULTI",), ("KVD.LEASE", "KEEPALIVE", "1"), ("EXEC",), ("GET", "k"),
    ])
    assert replies[:5] == [b"1", b"OK", b"QUEUED", b"QUEUED", [b"OK", [b"30", b"30", [b"k"]]]]
    assert replies[5] == b"OK"
    assert replies[6] == b"ERR KVD.LEASE GRANT, KEEPALIVE and REVOKE are not allowed inside MULTI"
    assert replies[7].startswith(b"EXECABORT") and replies[8] == b"v"
