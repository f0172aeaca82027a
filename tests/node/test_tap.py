"""`twistd kvd` options, the config file, the port rule and the service tree."""

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from kvd.address import AddressError, MemberAddress, split_host_port
from kvd.tap import Options, makeService, node_config, parse_initial_cluster


def parse(*argv):
    """Options as twistd parses them; plaintext peers (tests/wire/test_tls.py covers the peer TLS options)."""
    options = Options()
    options.parseOptions(list(argv) + ["--insecure-peers"])
    return options


def test_ports_follow_the_client_port():
    """The peer port is the client port + 10000 unless given; the node id is the client address."""
    o = parse("--listen", "127.0.0.2:7005")
    assert o["address"] == MemberAddress("127.0.0.2", 7005, 17005)
    assert o["node-id"] == "127.0.0.2:7005"
    assert parse("--listen", "127.0.0.1:7005", "--peer-port", "9000")["address"].peer_port == 9000


def test_initial_cluster_forms():
    """Members may be plain client addresses, carry an explicit peer port, or be named."""
    assert parse_initial_cluster("127.0.0.1:7001, n2=127.0.0.1:7002:9002") == {
        "127.0.0.1:7001": "127.0.0.1:7001:17001",
        "n2": "127.0.0.1:7002:9002",
    }


def test_bad_options_are_usage_errors():
    """Bad values are refused with a message, never a traceback."""
    with pytest.raises(usage.UsageError, match="port"):
        parse("--listen", "127.0.0.1:99999")
    with pytest.raises(usage.UsageError, match="does not include this node"):
        parse("--listen", "127.0.0.1:7001", "--initial-cluster", "127.0.0.1:7002")
    with pytest.raises(usage.UsageError, match="sync"):
        parse("--sync", "sometimes")
    with pytest.raises(usage.UsageError, match="heartbeat"):
        parse("--heartbeat-ticks", "10", "--election-ticks", "5")


def test_lease_reads_are_off_unless_asked():
    """``--lease-reads`` sets NodeSettings.lease_reads (tests/node/test_lease_reads.py); a lease no longer than a heartbeat is refused."""
    assert node_config(parse()).lease_reads is False
    assert node_config(parse("--lease-reads")).lease_reads is True
    with pytest.raises(usage.UsageError, match="lease-reads"):
        parse("--lease-reads", "--election-ticks", "3", "--heartbeat-ticks", "1")
    assert node_config(parse("--lease-reads", "--election-ticks", "4", "--heartbeat-ticks", "1")).lease_reads


def test_config_file_and_command_line(tmp_path):
    """The [kvd] section supplies options; the command line wins; unknown keys are refused."""
    conf = tmp_path / "kvd.conf"
    conf.write_text("[kvd]\nlisten = 127.0.0.1:7100\ntick-ms = 20\nsync = none\n")
    o = parse("--config", str(conf), "--tick-ms", "30")
    assert o["address"].client_port == 7100 and o["tick-ms"] == 30 and o["sync"] == "none"
    conf.write_text("[kvd]\nlisen = 127.0.0.1:7100\n")
    with pytest.raises(usage.UsageError, match="unknown option"):
        parse("--config", str(conf))


def test_shipped_example_config_parses():
    """etc/kvd.conf, the commented example, is a valid configuration."""
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "kvd.conf")
    o = parse("--config", path)
    assert o["initial"] and o["node-id"] in o["initial"]


def test_service_tree_and_data_dir_refusal(tmp_path):
    """makeService builds node + peer + client listeners + DNS/HTTP; a data dir of another cluster is refused plainly."""
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path / "d"), "--cluster-id", "one")
    top = makeService(o, reactor=MemoryReactorClock())
    assert len(list(top)) == 5  # node, reactor stall meter, peer port, client port, "discovery" (kvd.discovery.services)
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path / "d"), "--cluster-id", "two")
    with pytest.raises(SystemExit, match="belongs to cluster 'one'"):
        makeService(o, reactor=MemoryReactorClock())


def test_address_parsing():
    """host:port parsing and the stored member form round-trip; junk is an AddressError."""
    assert split_host_port("7001") == ("127.0.0.1", 7001)
    assert MemberAddress.parse("10.0.0.1:7001:17001").client == "10.0.0.1:7001"
    with pytest.raises(AddressError):
        MemberAddress.parse("nonsense")
    with pytest.raises(AddressError):
        split_host_port("host:port")


def test_bind_splits_listening_from_the_advertised_address(tmp_path):
    """--bind defaults to the --listen host; a wildcard listens everywhere and does not pin the source address."""
    from kvd.tap import is_wildcard

    o = parse("--listen", "127.0.0.3:7001", "--data-dir", str(tmp_path / "a"))
    assert o["bind"] == "127.0.0.3" and o["node-id"] == "127.0.0.3:7001"
    o = parse("--listen", "node1:7001", "--bind", "0.0.0.0", "--data-dir", str(tmp_path / "b"))
    assert o["bind"] == "0.0.0.0" and o["node-id"] == "node1:7001" and o["address"].host == "node1"
    assert is_wildcard("0.0.0.0") and is_wildcard("::") and is_wildcard("") and not is_wildcard("127.0.0.1")

    top = makeService(o, reactor=MemoryReactorClock())
    assert [s for s in top if hasattr(s, "peers")][0].peers.bind_host is None
    listening = sorted((s.endpoint._port, s.endpoint._interface) for s in top if hasattr(s, "endpoint"))
    assert listening == [(7001, "0.0.0.0"), (17001, "0.0.0.0")]

    o = parse("--listen", "127.0.0.1:7001", "--bind", "127.0.0.2", "--data-dir", str(tmp_path / "c"))
    top = makeService(o, reactor=MemoryReactorClock())
    assert [s for s in top if hasattr(s, "peers")][0].peers.bind_host == "127.0.0.2"


def test_a_bind_name_is_resolved_once():
    """--listen localhost:P binds the resolved address (UDP listeners and source binds need one); junk is refused."""
    o = parse("--listen", "localhost:7001")
    assert o["bind"] == "127.0.0.1" and o["node-id"] == "localhost:7001"
    with pytest.raises(usage.UsageError, match="cannot resolve"):
        parse("--listen", "no-such-host.invalid:7001")


def test_an_unwritable_data_dir_is_one_line_with_the_chown():
    """
    A data dir this process cannot write (a container's bind-mounted host directory with its host
    owner): SystemExit with one line naming the uid and the chown to run, not an LMDB traceback.
    Run in a child that drops root when the tests run as root (root writes anywhere).
    """
    import os
    import shutil
    import tempfile

    # What makeService imports lazily, imported here: the child, once unprivileged, needs no file of the checkout.
    import kvd.executor, kvd.discovery.services, kvd.kv.machine, kvd.node, kvd.resp.protocol, kvd.store.lmdb, kvd.wire.peers  # noqa: E401,F401
    import lmdb  # noqa: F401

    data = tempfile.mkdtemp(prefix="kvd-unwritable-")
    os.chmod(data, 0o555)
    try:
        o = parse("--listen", "127.0.0.1:7001", "--data-dir", data)
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what makeService raised, then leave at once
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    makeService(o, reactor=MemoryReactorClock())
                    outcome = "no error"
                except SystemExit as e:
                    outcome = "SystemExit: %s" % e
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    outcome = "%s: %s" % (type(e).__name__, e)
                os.write(writer, outcome.encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as f:
            outcome = f.read().decode()
        os.waitpid(pid, 0)
    finally:
        shutil.rmtree(data)
    uid = 65534 if os.geteuid() == 0 else os.geteuid()
    gid = 65534 if os.geteuid() == 0 else os.getegid()
    assert outcome.startswith("SystemExit: kvd: cannot write the data dir %s" % data), outcome
    assert "uid %d" % uid in outcome and "chown -R %d:%d %s" % (uid, gid, data) in outcome, outcome
    assert "\n" not in outcome


def test_size_options_are_checked_against_the_limits_table():
    """
    --value-max-bytes up to what one command carries starts; past it, or
    under 1, or client-port limits that could not answer a GET of the largest
    value or receive the largest request, are one-line usage errors (kvd.limits).
    """
    from kvd.limits import LIMITS

    assert parse("--value-max-bytes", str(LIMITS.value_bytes_max))["value-max-bytes"] == LIMITS.value_bytes_max
    with pytest.raises(usage.UsageError, match=r"--value-max-bytes %d is over %d: a SET of the largest value"
                       % (LIMITS.value_bytes_max + 1, LIMITS.value_bytes_max)):
        parse("--value-max-bytes", str(LIMITS.value_bytes_max + 1))
    with pytest.raises(usage.UsageError, match="--value-max-bytes must be at least 1"):
        parse("--value-max-bytes", "0")
    with pytest.raises(usage.UsageError, match="--client-output-limit 1000 cannot answer a GET of the largest value"):
        parse("--client-output-limit", "1000")
    with pytest.raises(usage.UsageError, match="--maxmemory-clients 1000000 cannot hold the largest request"):
        parse("--maxmemory-clients", "1000000")
    assert parse("--maxmemory-clients", "0")["maxmemory-clients"] == 0
    assert parse("--value-max-bytes", "100", "--client-output-limit", "1000")["client-output-limit"] == 1000


def _store_with_entries(path):
    from kvd.raft.messages import Entry, HardState
    from kvd.store.lmdb import LmdbStorage

    s = LmdbStorage(path, sync=False)
    s.open("kvd", "127.0.0.1:7001")
    for first in range(1, 1001, 100):
        entries = [Entry(index=i, term=1, data=b"value %d " % i * 30) for i in range(first, first + 100)]
        s.save(HardState(term=1, commit=first + 99), entries, None, sync=False)
    s.close()


def test_a_corrupt_truncated_or_old_store_is_refused_in_one_line_before_daemonizing(tmp_path):
    """makeService reads every record: a flipped byte, a truncated data.mdb, format 1 are each one line saying what to do."""
    import os

    import lmdb

    from kvd.store import schema

    corrupt, truncated, old = (str(tmp_path / name) for name in ("corrupt", "truncated", "old"))
    for path in (corrupt, truncated, old):
        _store_with_entries(path)
    env = lmdb.open(corrupt, max_dbs=schema.MAX_DBS)
    with env.begin(write=True) as txn:
        log = env.open_db(schema.DB_LOG, txn=txn)
        record = bytearray(txn.get(schema.log_key(500), db=log))
        record[30] ^= 0x10
        txn.put(schema.log_key(500), bytes(record), db=log)
    env.close()
    os.truncate(os.path.join(truncated, "data.mdb"), os.path.getsize(os.path.join(truncated, "data.mdb")) // 2)
    env = lmdb.open(old, max_dbs=schema.MAX_DBS)
    with env.begin(write=True) as txn:
        meta = env.open_db(schema.DB_META, txn=txn)
        txn.put(schema.META_FORMAT_VERSION, schema.encode_u32(1), db=meta)
    env.close()
    expected = {
        corrupt: ("log entry 500: checksum mismatch", "python3 mgmt.py -r server -c rebuild -h 127.0.0.1:7001"),
        truncated: ("was truncated", "rebuild -h 127.0.0.1:7001"),
        old: ("format version 1", "rebuild this node"),
    }
    for path, phrases in expected.items():
        o = parse("--listen", "127.0.0.1:7001", "--data-dir", path, "--cluster-id", "kvd")
        with pytest.raises(SystemExit) as raised:
            makeService(o, reactor=MemoryReactorClock())
        message = str(raised.value.code)
        assert message.startswith("kvd: cannot use data dir %s: " % path) and "\n" not in message, message
        for phrase in phrases:
            assert phrase in message, message


@pytest.mark.parametrize("exit_code", [None, 74])
def test_a_failed_node_makes_the_process_exit_with_its_status(exit_code):
    """twistd exits 0 after any reactor.stop(): exit_when_failed ends the process with the node's exit_code instead."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    program = (
        "import sys, types\n"
        "from kvd.tap import exit_when_failed\n"
        "exit_when_failed(types.SimpleNamespace(exit_code=%r))\n"
        "print('twistd finished')\n"
        "sys.exit(0)\n" % exit_code
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=repo, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=repo))
    assert done.returncode == (exit_code or 0), done
    assert done.stdout == "twistd finished\n" and not done.stderr


def test_pubsub_options_wire_the_registry_into_node_executor_and_port(tmp_path):
    """--notify-keyspace-events and --pubsub-output-limit: checked, and one registry for the node, CONFIG and the port."""
    from kvd.resp.pubsub import PubSubLimit

    with pytest.raises(usage.UsageError, match="Invalid event class character"):
        parse("--notify-keyspace-events", "Kq")
    for bad in ("1 2", "a b c", "1 -2 3"):
        with pytest.raises(usage.UsageError, match="pubsub-output-limit"):
            parse("--pubsub-output-limit", bad)
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path / "d"), "--notify-keyspace-events", "Ex",
              "--pubsub-output-limit", "1000 100 5")
    assert o["pubsub-limit"] == PubSubLimit(1000, 100, 5)
    top = makeService(o, reactor=MemoryReactorClock())
    node = next(s for s in top if hasattr(s, "on_events"))
    hub = node.on_events.__self__
    assert hub.notify_text() == "xE"
    ports = [s for s in top if getattr(getattr(s, "factory", None), "pubsub", None) is not None]
    assert [p.factory.pubsub for p in ports] == [hub] and ports[0].factory.pubsub_limit == PubSubLimit(1000, 100, 5)


def test_watch_history_option_bounds_the_nodes_watch_hub(tmp_path):
    """--watch-history 'changes bytes': checked, and the node feeds the one hub the client port serves."""
    for bad in ("1", "a b", "1 -2"):
        with pytest.raises(usage.UsageError, match="watch-history"):
            parse("--watch-history", bad)
    o = parse("--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path / "d"), "--watch-history", "50 4096")
    top = makeService(o, reactor=MemoryReactorClock())
    node = next(s for s in top if hasattr(s, "watch_feed"))
    hub = node.watch_feed
    assert (hub.history.max_changes, hub.history.max_bytes) == (50, 4096)
    ports = [s for s in top if getattr(getattr(s, "factory", None), "watches", None) is not None]
    assert [p.factory.watches for p in ports] == [hub]
    stats = dict(ports[0].factory.executor.server_info._stats({}))  # INFO stats reads the same hub
    assert stats["kvd_watches"] == 0 and stats["kvd_watch_history_oldest"] == hub.history.oldest


def test_the_running_node_freezes_its_start_up_objects_and_raises_the_young_gc_threshold():
    import gc

    from kvd import tap

    before = gc.get_threshold()
    try:
        tap._tune_gc()
        assert gc.get_threshold() == (tap.GC_YOUNG_THRESHOLD,) + before[1:]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
