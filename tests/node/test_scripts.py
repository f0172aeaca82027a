"""
Lua scripts on real nodes (core, LMDB log, in-memory machine) over the fake clock: a
script is one log entry applied on every node; the script cache is the same on
every node, across a restart and through a snapshot; an endless loop is
stopped without a leader change.
"""

import hashlib

from kvd.executor import ClientExecutor
from kvd.kv.commands import Get, Script, ScriptGet, Set
from kvd.kv.results import KVError, OK
from kvd.resp.commands import parse_request, shape_reply
from kvd.resp.connection import Connection
from tests.node.fakes import leaders, make_cluster, make_node, run
from tests.node.test_node import result_of

V = 1 << 20


def sha(body: bytes) -> bytes:
    return hashlib.sha1(body).hexdigest().encode()


def command(clock, node, *args):
    """A request as the client port runs it: parsed, executed by the node's executor, its reply shaped."""
    request = parse_request([a if isinstance(a, bytes) else a.encode() for a in args])
    result = ClientExecutor(node).execute(request, Connection(1))
    return shape_reply(request, result_of(clock, result) if hasattr(result, "addBoth") else result)


def test_scripts_through_any_node(cluster):
    clock, network = cluster
    (leader,) = leaders(network)
    a, b = [n for n in network.nodes.values() if n is not leader]
    body = b"redis.call('incrby', KEYS[1], ARGV[1]); return redis.call('get', KEYS[1])"
    assert command(clock, a, "EVAL", body, "1", "n", "5") == b"5"
    # EVAL cached the script on every node: EVALSHA through another node finds it.
    assert command(clock, b, "EVALSHA", sha(body), "1", "n", "2") == b"7"
    loaded = b"return redis.call('get', KEYS[1])"
    assert command(clock, b, "SCRIPT", "LOAD", loaded) == sha(loaded)
    run(clock, 1)
    for node in network.nodes.values():
        assert node.machine.read(ScriptGet((sha(body), sha(loaded)))) == [body, loaded]
        assert node.machine.read(Get(b"n")) == b"7"
    assert command(clock, leader, "EVALSHA_RO", sha(loaded), "1", "n") == b"7"
    assert command(clock, a, "SCRIPT", "EXISTS", sha(loaded), "f" * 40) == [1, 0]
    assert command(clock, a, "SCRIPT", "FLUSH") is OK
    assert command(clock, b, "EVALSHA", sha(loaded), "1", "n").message.startswith("NOSCRIPT")
    assert command(clock, b, "SCRIPT", "EXISTS", sha(loaded)) == [0]


def test_an_endless_loop_is_stopped_without_a_leader_change(cluster):
    clock, network = cluster
    (leader,) = leaders(network)
    term = leader.core.term
    result = result_of(clock, leader.submit(Script("eval", b"redis.call('set','k','1') while true do end", (), (), V)))
    assert isinstance(result, KVError) and result.message.startswith("ERR Script killed")
    run(clock, 2)
    assert leaders(network) == [leader] and leader.core.term == term
    for node in network.nodes.values():
        assert node.machine.read(Get(b"k")) is None


def test_the_script_cache_survives_a_restart_and_travels_in_snapshots(tmp_path):
    clock, network = make_cluster(tmp_path, snapshot_entries=20, snapshot_keep_entries=0)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    (leader,) = leaders(network)
    lagger = next(n for n in network.nodes.values() if n is not leader)
    network.isolate(lagger.config.node_id)
    run(clock, 3)
    body = b"return 'kept'"
    assert result_of(clock, leader.submit(Script("load", body))) == sha(body)
    for i in range(60):
        leader.submit(Set(b"k%d" % i, b"v"))
    run(clock, 3)
    assert leader.core.latest_snapshot.index > 30
    network.heal()
    run(clock, 5)
    assert lagger.stats.get("snapshots_installed", 0) >= 1
    assert lagger.machine.read(ScriptGet((sha(body),))) == [body]
    for node in list(network.nodes.values()):
        node.stopService()
        run(clock, 2)
    initial = {nid: str(n.config.address) for nid, n in network.nodes.items()}
    for i, nid in enumerate(sorted(initial)):
        network.nodes[nid] = make_node(tmp_path, network, nid, initial, seed=10 + i)
        network.nodes[nid].startService()
    run(clock, 5)
    for node in network.nodes.values():
        assert node.machine.read(ScriptGet((sha(body),))) == [body]
    (leader,) = leaders(network)
    assert command(clock, leader, "EVALSHA", sha(body), "0") == b"kept"
