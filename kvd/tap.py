# -*- test-case-name: tests.node.test_tap -*-
"""
``twistd kvd``: command-line options and the service tree of one node.

    twistd -n kvd --listen 127.0.0.1:7001 --initial-cluster 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003

Every option may also come from an INI file (``--config etc/kvd.conf``,
section ``[kvd]``, keys spelled like the long options); the command line
wins over the file.

A node whose storage fails ends its process with a non-zero status (the
node's ``exit_code``), so that Docker or systemd restarts it: twistd itself
has no way to set one (twisted/twisted#11335 is open; it exits 0 after any
``reactor.stop()``), so once twistd has finished its own shutdown (services
stopped, pidfile removed) ``exit_when_failed`` ends the process with it.  A
store that cannot be used at start (another cluster's, unreadable, corrupt,
truncated, an old format) is refused before twistd daemonizes, in one line
on stderr and exit status 1.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import atexit
import configparser
import gc
import os
import socket
import sys
from typing import Dict, Optional

from twisted.application import service, strports
from twisted.python import usage

from kvd.address import AddressError, MemberAddress
from kvd.limits import LIMITS, LimitsError


def parse_initial_cluster(text: str) -> Dict[str, str]:
    """
    ``"127.0.0.1:7001,127.0.0.1:7002"`` or ``"n1=127.0.0.1:7001,n2=..."``
    (an optional ``:peer_port`` after the client port) -> {node id: member address}.
    A member without an explicit id is named by its client address.
    """
    members: Dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_id, _, spec = item.rpartition("=")
        parts = spec.split(":")
        if len(parts) == 3:
            address = MemberAddress(parts[0], int(parts[1]), int(parts[2]))
        else:
            address = MemberAddress.from_client(spec)
        members[node_id or address.client] = str(address)
    return members


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run one kvd node. Clients speak the Redis protocol on the client port "
        "(redis-cli, telnet, netcat); nodes speak Raft over AMP on the peer port "
        "(default: client port + 10000)."
    )

    optParameters = [
        ["config", "c", None, "INI file with a [kvd] section holding any of these options."],
        ["listen", "l", "127.0.0.1:7001", "host:port of the client (Redis protocol) port; also the node's default id."],
        ["bind", None, None, "Interface the client and peer ports listen on and outgoing peer connections start from (default: the --listen host). A wildcard (0.0.0.0 or ::) listens everywhere and leaves the source address to the kernel, as a container needs: the node stays reachable on its loopback when its network is gone, and on a new address when it comes back with one."],
        ["peer-port", None, "0", "Raft peer port (AMP). 0 means client port + 10000."],
        ["node-id", None, None, "This node's id (default: its client address host:port)."],
        ["cluster-id", None, "kvd", "Cluster name; a node refuses peers and data dirs of another cluster."],
        ["data-dir", "d", None, "Where LMDB keeps the log, hard state and snapshots (default: ./.kvd/data/<host>-<port>)."],
        ["initial-cluster", None, "", "Static founding members, comma separated: host:port[:peer_port] or id=host:port[:peer_port]. Must be identical on every founder."],
        ["bootstrap-expect", None, "0", "Seed mode: form the cluster once this many nodes (this one included) have joined."],
        ["sync", None, "fsync", "Durability: 'fsync' (sync before acknowledging; the default) or 'none' (faster, loses recent writes on power loss)."],
        ["storage-writes", None, "thread", "Where the Raft loop's disk writes (commit and fsync) run: 'thread' (a writer thread; the reactor serves meanwhile) or 'reactor' (in the reactor thread, blocking it)."],
        ["snapshot-entries", None, "10000", "Take a snapshot and compact the log every this many applied entries."],
        ["snapshot-keep-entries", None, "1000", "Log entries kept behind a snapshot, so a briefly absent follower catches up without one."],
        ["value-max-bytes", None, str(LIMITS.value_bytes), "Largest value (and request bulk) a client may send; at most %d (a SET of it must fit in one log entry: kvd.limits)." % LIMITS.value_bytes_max],
        ["tick-ms", None, "50", "Raft clock tick in milliseconds."],
        ["election-ticks", None, "8", "Election timeout in ticks (randomized between this and twice this)."],
        ["heartbeat-ticks", None, "1", "Heartbeat interval in ticks."],
        ["request-timeout", None, "5", "Seconds a client command may wait for commit before -TIMEOUT."],
        ["dns-port", None, None, "DNS port, UDP and TCP (leader.kvd, _kvd._tcp.kvd, <node>.node.kvd). Default: client port + 20000; 0 turns DNS off."],
        ["http-port", None, None, "HTTP port: /v1/status/leader, /v1/status/peers, /v1/health, /metrics and the cluster page at /. Default: client port + 30000; 0 turns HTTP off."],
        ["domain", None, "kvd", "DNS domain this node answers for."],
        ["requirepass-file", None, None, "File whose first line is the password of the client port's 'default' user (an admin; redis-cli -a, AUTH <password>). Or set $KVD_REQUIREPASS. Never on the command line, which ps shows."],
        ["requirepass", None, None, "Only in the --config file (never on the command line, which ps shows): the 'default' user's password, as redis.conf's requirepass."],
        ["users", None, None, "Users file of the client port: 'name role password' lines, role readonly, readwrite or admin, password '#<sha256 hex>' (python -m kvd.resp.auth prints it) or '>password'."],
        ["maxclients", None, "10000", "Most client connections at once; one more is answered '-ERR max number of clients reached'."],
        ["tls-cert", None, None, "Client port TLS: this node's certificate (PEM, the chain after it); with --tls-key the client port speaks only TLS (redis-cli --tls --cacert CA)."],
        ["tls-key", None, None, "Client port TLS: the private key of --tls-cert (PEM)."],
        ["tls-ca", None, None, "Client port TLS: the CA (PEM) of the members' client certificates; the cluster page verifies the other members' client ports with it (without it, it cannot ask them)."],
        ["maxmemory-clients", None, str(1024 * 1024 * 1024), "Bytes all client connections together may hold in partial requests and unread replies; past it, the connection that grows the total (holding 64 KiB or more) is disconnected. 0: no cap."],
        ["client-output-limit", None, str(64 * 1024 * 1024), "Bytes of replies a client may leave unread before it is disconnected; a bigger single reply answers an error instead."],
        ["notify-keyspace-events", None, "", "Keyspace notifications this node publishes to its subscribers, Redis's flag letters (K keyspace, E keyevent, g generic, $ string, h hash, x expired, A all...); default none. CONFIG SET notify-keyspace-events changes it."],
        ["watch-history", None, "100000 67108864", "KVD.WATCH's history on this node: 'changes bytes' it keeps for a watch to start FROMREV a past revision (older revisions answer 'compacted'; '0 0': none, every watch starts live)."],
        ["pubsub-output-limit", None, "33554432 8388608 60", "Redis's client-output-buffer-limit for pub/sub: 'hard soft seconds'; a subscriber with more than hard bytes of messages unread, or more than soft for seconds, is disconnected (0 turns a bound off)."],
        ["peer-cert", None, None, "Peer TLS: this node's certificate (PEM); its subject CN must be the node id. With --peer-key and --peer-ca, every peer connection is mutual TLS 1.3."],
        ["peer-key", None, None, "Peer TLS: the private key of --peer-cert (PEM)."],
        ["peer-ca", None, None, "Peer TLS: the cluster CA (PEM) that signs every member's certificate."],
        ["commit-notice-ms", None, "2", "A leader tells followers that hold the whole log of a new commit index with the next append, or after this many milliseconds if none went (RaftSettings.defer_commit_notice: half the messages per write); 0: at once, as etcd does."],
        ["stall-trace-ms", None, "0", "Diagnostic: log where the reactor thread was during every stall longer than this (sampled stacks); 0: off."],
    ]

    optFlags = [
        ["lease-reads", None, "Linearizable reads served by the leader's lease, without a heartbeat round per batch (Raft thesis 6.4.1). Safe only while the nodes' clocks run at the same rate (within 1/(election-ticks - 2)) and no node's process is paused or starved: a paused leader can serve a stale read. Every node keeps the followers' promise the lease stands on, with or without it; give it to every node, as any may lead."],
        ["insecure-peers", None, "Plaintext peer connections: anyone who reaches the peer port and knows the cluster id can act as any member. For tests and trusted networks only."],
    ]

    def parseOptions(self, options=None):
        import sys

        argv = list(sys.argv[1:] if options is None else options)
        config_path = None
        for i, arg in enumerate(argv):
            if arg in ("-c", "--config") and i + 1 < len(argv):
                config_path = argv[i + 1]
            elif arg.startswith("--config="):
                config_path = arg.split("=", 1)[1]
        if any(arg == "--requirepass" or arg.startswith("--requirepass=") for arg in argv):
            raise usage.UsageError("a password on the command line is visible to every user (ps): use --requirepass-file, "
                                   "$KVD_REQUIREPASS or requirepass in the --config file")
        if config_path:
            self._load_config_file(config_path)
        return super().parseOptions(argv)

    def _load_config_file(self, path: str) -> None:
        parser = configparser.ConfigParser()
        if not parser.read(path):
            raise usage.UsageError("cannot read config file %s" % path)
        if not parser.has_section("kvd"):
            raise usage.UsageError("config file %s has no [kvd] section" % path)
        known = {p[0] for p in self.optParameters} | {f[0] for f in self.optFlags}
        for key, value in parser.items("kvd"):
            if key not in known:
                raise usage.UsageError("config file %s: unknown option %r" % (path, key))
            if key in {f[0] for f in self.optFlags}:
                value = 1 if value.strip().lower() in ("1", "yes", "true", "on") else 0
            self[key] = value

    def postOptions(self):
        try:
            self["address"] = MemberAddress.from_client(self["listen"], int(self["peer-port"]))
            self["initial"] = parse_initial_cluster(self["initial-cluster"]) if self["initial-cluster"] else None
        except (AddressError, ValueError) as e:
            raise usage.UsageError(str(e))
        for name in ("bootstrap-expect", "snapshot-entries", "snapshot-keep-entries", "value-max-bytes", "tick-ms", "election-ticks", "heartbeat-ticks", "maxclients", "client-output-limit", "maxmemory-clients", "stall-trace-ms", "commit-notice-ms"):
            try:
                self[name] = int(self[name])
            except ValueError:
                raise usage.UsageError("--%s must be a whole number" % name)
        check_limits(self)
        from kvd.kv.events import parse_flags
        from kvd.resp.pubsub import PubSubLimit

        if parse_flags(self["notify-keyspace-events"].encode()) is None:
            raise usage.UsageError("--notify-keyspace-events: Invalid event class character. Use 'Ag$lshzxeKEtmdn'.")
        try:
            hard, soft, seconds = (int(part) for part in self["pubsub-output-limit"].split())
            if min(hard, soft, seconds) < 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--pubsub-output-limit must be three whole numbers: 'hard soft seconds'")
        self["pubsub-limit"] = PubSubLimit(hard, soft, seconds)
        try:
            changes, size = (int(part) for part in self["watch-history"].split())
            if min(changes, size) < 0:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--watch-history must be two whole numbers: 'changes bytes'")
        self["watch-history-bounds"] = (changes, size)
        try:
            self["request-timeout"] = float(self["request-timeout"])
        except ValueError:
            raise usage.UsageError("--request-timeout must be a number of seconds")
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("client TLS needs both --tls-cert and --tls-key")
        for name in ("tls-cert", "tls-key"):
            if self[name] and not os.access(self[name], os.R_OK):
                raise usage.UsageError("cannot read --%s %s" % (name, self[name]))
        self["client-tls-ca"] = None
        if self["tls-ca"]:
            from twisted.internet.ssl import Certificate

            try:
                with open(self["tls-ca"], "rb") as f:
                    self["client-tls-ca"] = Certificate.loadPEM(f.read())
            except Exception as e:
                raise usage.UsageError("cannot use --tls-ca %s: %s" % (self["tls-ca"], e))
        from kvd.resp.auth import Users, UsersError

        try:
            environ = dict(os.environ)
            if self["requirepass"] and not self["requirepass-file"]:
                environ["KVD_REQUIREPASS"] = self["requirepass"]  # from the config file: the same as the variable
            self["client-users"] = Users.load(self["requirepass-file"], self["users"], environ=environ)
        except UsersError as e:
            raise usage.UsageError(str(e))
        if self["sync"] not in ("fsync", "none"):
            raise usage.UsageError("--sync must be 'fsync' or 'none'")
        if self["storage-writes"] not in ("thread", "reactor"):
            raise usage.UsageError("--storage-writes must be 'thread' or 'reactor'")
        if self["heartbeat-ticks"] < 1 or self["election-ticks"] <= self["heartbeat-ticks"]:
            raise usage.UsageError("need 1 <= --heartbeat-ticks < --election-ticks")
        if self["lease-reads"] and self["election-ticks"] < self["heartbeat-ticks"] + 3:
            raise usage.UsageError("--lease-reads needs --election-ticks >= --heartbeat-ticks + 3 (the lease is election-ticks - 2)")
        address = self["address"]
        self["node-id"] = self["node-id"] or address.client
        self["bind"] = resolve_bind(self["bind"] or address.host)
        try:
            from kvd.discovery.services import check_options

            check_options(self)
        except ValueError as e:
            raise usage.UsageError(str(e))
        check_peer_tls_options(self)
        if self["initial"] is not None and self["node-id"] not in self["initial"]:
            raise usage.UsageError("--initial-cluster does not include this node (%s)" % self["node-id"])
        if not self["data-dir"]:
            self["data-dir"] = os.path.join(".kvd", "data", "%s-%d" % (address.host, address.client_port))


def check_limits(options) -> None:
    """
    The size options against kvd.limits' table: a value limit that one log entry cannot carry, or
    client-port limits that could not receive or answer the largest command, would accept what a
    later step refuses.  One line naming the option and the bound.
    """
    value = options["value-max-bytes"]
    if value < 1:
        raise usage.UsageError("--value-max-bytes must be at least 1")
    try:
        limits = LIMITS.with_value_bytes(value)
    except LimitsError:
        raise usage.UsageError("--value-max-bytes %d is over %d: a SET of the largest value and key must fit in one "
                               "command of %d bytes, the most one log entry carries (kvd.limits)"
                               % (value, LIMITS.value_bytes_max, LIMITS.command_bytes))
    problems = limits.client_problems(options["client-output-limit"], options["maxmemory-clients"])
    if problems:
        raise usage.UsageError(problems[0])


def check_peer_tls_options(options) -> None:
    """All three of --peer-cert/--peer-key/--peer-ca, or --insecure-peers (checked for use by makeService)."""
    given = [name for name in ("peer-cert", "peer-key", "peer-ca") if options[name]]
    if given and options["insecure-peers"]:
        raise usage.UsageError("--insecure-peers does not go with --%s" % given[0])
    if given and len(given) < 3:
        missing = [name for name in ("peer-cert", "peer-key", "peer-ca") if not options[name]]
        raise usage.UsageError("peer TLS needs --peer-cert, --peer-key and --peer-ca; missing --%s" % ", --".join(missing))


def peer_tls(options):
    """The node's PeerTLS, or None with --insecure-peers; SystemExit with one line when neither is usable."""
    from kvd.wire.tls import PeerTLS, PeerTLSError

    if options["insecure-peers"]:
        return None
    if not options["peer-cert"]:
        raise SystemExit(
            "kvd: peers need certificates: pass --peer-cert, --peer-key and --peer-ca (mgmt.py makes them), "
            "or --insecure-peers for plaintext peers"
        )
    try:
        tls = PeerTLS(options["peer-cert"], options["peer-key"], options["peer-ca"])
    except PeerTLSError as e:
        raise SystemExit("kvd: %s" % e)
    if tls.identity != options["node-id"]:
        raise SystemExit(
            "kvd: --peer-cert %s is for node %r, this node is %r (its CN must be the node id)"
            % (options["peer-cert"], tls.identity, options["node-id"])
        )
    return tls


def resolve_bind(host: str) -> str:
    """
    The address to bind for ``host``: a name (``--listen node1:7001``) is
    resolved once, here, because UDP listeners take only addresses and a name
    in a connection's bind address would be resolved, blocking, on every dial.
    """
    bare = host.strip("[]")
    if is_wildcard(bare):
        return host
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in bare else socket.AF_INET, bare)
        return host
    except OSError:
        pass
    try:
        return socket.getaddrinfo(bare, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError):
        raise usage.UsageError("cannot resolve the bind host %r; pass --bind with an address" % host)


def is_wildcard(host: str) -> bool:
    """True for an address that means "every interface": 0.0.0.0, :: or empty."""
    return host.strip("[]") in ("", "0.0.0.0", "::")


def data_dir_problem(path: str, force: bool = False) -> Optional[str]:
    """
    None if this process can create ``path`` and write it and LMDB's files in it; else one
    line naming the owner, this process's uid and the chown that fixes it (a bind-mounted
    directory of a container is the usual case).  ``force`` reports even when nothing
    looks wrong here (LMDB refused anyway).
    """
    try:
        os.makedirs(path, exist_ok=True)
    except PermissionError:
        pass
    except OSError as e:
        return "cannot create the data dir %s: %s" % (path, e.strerror or e)
    culprit = None
    for candidate in (path, os.path.join(path, "data.mdb"), os.path.join(path, "lock.mdb")):
        if os.path.exists(candidate) and not os.access(candidate, os.W_OK):
            culprit = candidate
            break
    if not os.path.exists(path):
        culprit = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(culprit):
            culprit = os.path.dirname(culprit)
    if culprit is None and not force:
        return None
    culprit = culprit or path
    uid, gid = os.geteuid(), os.getegid()
    try:
        if os.statvfs(culprit).f_flag & os.ST_RDONLY:
            return "the data dir %s is on a read-only filesystem (a :ro mount?); kvd needs to write it" % path
        st = os.stat(culprit)
        owner = "owned by uid %d, gid %d, mode %o" % (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    except OSError as e:
        owner = "unreadable: %s" % (e.strerror or e)
    return "cannot write the data dir %s: %s is %s, and kvd runs as uid %d, gid %d; give it to that user: chown -R %d:%d %s" % (
        path, culprit, owner, uid, gid, uid, gid, path if os.path.exists(path) else culprit)


def node_config(options: Options):
    from kvd.node import NodeSettings

    return NodeSettings(
        node_id=options["node-id"],
        cluster_id=options["cluster-id"],
        address=options["address"],
        data_dir=options["data-dir"],
        initial_cluster=options["initial"],
        bootstrap_expect=options["bootstrap-expect"],
        tick_s=options["tick-ms"] / 1000.0,
        election_ticks=options["election-ticks"],
        heartbeat_ticks=options["heartbeat-ticks"],
        lease_reads=bool(options["lease-reads"]),
        commit_notice_s=max(0, options["commit-notice-ms"]) / 1000.0,
        sync=options["sync"] == "fsync",
        snapshot_entries=options["snapshot-entries"],
        snapshot_keep_entries=options["snapshot-keep-entries"],
        request_timeout_s=options["request-timeout"],
        value_max_bytes=options["value-max-bytes"],
    )


#: The LMDB map of a node: the most its data dir may hold (log and state).
NODE_MAP_BYTES = 64 << 30

#: The interpreter's switch interval with a writer thread: how long a busy
#: reactor may keep the GIL from a writer back from the disk.
WRITER_SWITCH_INTERVAL_S = 0.001


#: Net allocations of tracked objects between two young collections (Python's default: 700).
#: A loaded leader ran 12,800 young collections a minute at the default, 8 s of its time in
#: the collector (INFO server's gc_ lines, 50 pipelined clients); at 100,000, one collection
#: a minute of under 60 ms.  Most of what a request allocates is freed by reference counting;
#: only cycles wait for the collector, at most this many objects' worth of them.
GC_YOUNG_THRESHOLD = 100_000


def _tune_gc() -> None:
    """Once the node runs: its start-up objects frozen, and the young generation's threshold raised."""
    # What the node built to start (modules, classes, functions: half of what the cyclic
    # collector tracked on a loaded leader) lives as long as the process: out of the
    # collector's sight, so that each full collection walks only what the node holds since.
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def makeService(options: Options, reactor=None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    from kvd.executor import ClientExecutor
    from kvd.discovery.services import add_services, make_metrics
    from kvd.kv.machine import KVMachine
    from kvd.node import NodeService
    from kvd.node.stall import StallMeter
    from kvd.resp.protocol import RespFactory
    from kvd.resp.budget import TurnBudget
    from kvd.resp.pubsub import PubSubHub
    from kvd.resp.watch import WatchHub
    from kvd.kv.watch import DEFAULT_MAX_BYTES, DEFAULT_MAX_CHANGES, WatchHistory
    from kvd.store.lmdb import CorruptStorage, LmdbStorage, StorageError
    from kvd.store.state import LmdbState
    from kvd.wire.peers import PeerTransport

    import lmdb
    from twisted.internet.interfaces import IReactorThreads

    config = node_config(options)
    problem = data_dir_problem(config.data_dir)
    if problem is not None:
        raise SystemExit("kvd: " + problem)
    tls = peer_tls(options)  # before the store is opened: a node without peer security does not start
    if tls is None:
        from twisted.logger import Logger

        Logger(namespace="kvd.tap").warn(
            "--insecure-peers: peer connections are plaintext and unauthenticated; anyone who reaches "
            "port {port} and knows cluster id {cluster!r} can act as any member",
            port=config.address.peer_port,
            cluster=config.cluster_id,
        )
    # The whole map at once: growing it (set_mapsize) invalidates every open LMDB
    # transaction, and a snapshot stream holds one for as long as it runs (a 1 GiB
    # stream broke off after 910 MiB when the leader's map grew).  It is address
    # space, not memory or disk: the file grows only as pages are used.
    deliver = None
    # A reactor without threads (a test's memory reactor) keeps the writes in its own thread.
    if options["storage-writes"] == "thread" and IReactorThreads.providedBy(reactor):
        deliver = reactor.callFromThread
        # A writer back from the disk waits for the GIL until the busy reactor's
        # switch interval expires (5 ms by default): see kvd.store.writer.
        sys.setswitchinterval(WRITER_SWITCH_INTERVAL_S)
    storage = LmdbStorage(config.data_dir, sync=config.sync, map_size_bytes=NODE_MAP_BYTES,
                          map_size_max_bytes=NODE_MAP_BYTES, deliver=deliver)
    try:
        # Refuse a data dir of another cluster or node, a corrupt one (every
        # record's checksum is read here) or a truncated one, with a plain
        # message, before twistd daemonizes.  It is closed again because an
        # LMDB environment must not cross the daemonizing fork.
        storage.open(config.cluster_id, config.node_id)
        storage.load()
    except (CorruptStorage, lmdb.CorruptedError, lmdb.PageNotFoundError) as e:  # ours, or LMDB's own page checks
        raise SystemExit("%s; rebuild this node from the others: python3 mgmt.py -r server -c rebuild -h %s"
                         % (refusal(config.data_dir, e), config.node_id))
    except StorageError as e:
        raise SystemExit(refusal(config.data_dir, e))
    except (PermissionError, lmdb.ReadonlyError) as e:  # what data_dir_problem could not foresee
        raise SystemExit("kvd: " + (data_dir_problem(config.data_dir, force=True) or str(e)))
    except (lmdb.Error, OSError) as e:  # an I/O error, a file LMDB cannot read
        raise SystemExit("kvd: cannot use data dir %s: %s: %s" % (config.data_dir, type(e).__name__, e))
    finally:
        storage.close()
    metrics = make_metrics()
    # The applied state lives in LMDB beside the log (kvd.store.state): a restart
    # opens it, and snapshots stream from it.
    state = LmdbState()
    storage.state = state
    machine = KVMachine(keyspace=state)
    if metrics is not None:  # time syncs and applies, count commits: nothing else changes
        storage, machine = metrics.timed_storage(storage), metrics.counted_machine(machine)
    node = NodeService(config, storage, machine, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", exit_when_failed, node)
    node.peers = PeerTransport(
        config.node_id,
        config.cluster_id,
        node.peer_address,
        node.message_received,
        reactor,
        bind_host=None if is_wildcard(options["bind"]) else options["bind"],
        on_unreachable=node.peer_unreachable,
        is_known=node.is_known_peer,
        forward_handler=node.forwarded,
        join_handler=node.join_received,
        advertise=str(config.address),
        on_hello=node.peer_hello,
        on_connected=node.peer_connected,
        forward_timeout_s=config.request_timeout_s,
        tls=tls,
        snapshot_source=node.open_snapshot_stream,
        snapshot_sink=state,
    )
    state.on_failure = node.storage_failed
    top = service.MultiService()
    node.setServiceParent(top)
    stall = StallMeter(reactor)  # after the node: a restart's replay is not a serving node's stall
    stall.setServiceParent(top)
    if options["stall-trace-ms"] > 0:
        from kvd.node.stall import StallTracer

        stall.tracer = StallTracer(options["stall-trace-ms"])
    interface = options["bind"].replace(":", "\\:")  # strports escapes the colons of an IPv6 address
    # Listeners start after the node (it must have opened its store first) and stop before it.
    peer_port = strports.service("tcp:%d:interface=%s" % (config.address.peer_port, interface), node.peers.listening_factory())
    peer_port.setServiceParent(top)
    # Pub/sub: the node hands each applied entry's events (kvd.kv.events) to the client port's registry.
    hub = PubSubHub(options["notify-keyspace-events"].encode())
    node.on_events = hub.deliver
    # KVD.WATCH: the node hands each revision's changes (kvd.kv.watch) to the port's watches (kvd.resp.watch).
    watches = WatchHub(WatchHistory(*options.get("watch-history-bounds", (DEFAULT_MAX_CHANGES, DEFAULT_MAX_BYTES))))
    node.watch_feed = watches
    executor = ClientExecutor(node, pubsub=hub)
    client_factory = RespFactory(executor, value_max_bytes=config.value_max_bytes, users=options.get("client-users"),
                                 maxclients=options["maxclients"], output_limit=options["client-output-limit"],
                                 maxmemory_clients=options["maxmemory-clients"], pubsub=hub,
                                 pubsub_limit=options["pubsub-limit"], watches=watches)
    # A pipelined burst from many clients is dispatched over several turns, ticks and heartbeats between them.
    client_factory.budget = TurnBudget(reactor.callLater)
    # Replies leave as soon as the Ready that answers them is done, before the followers hear of the commit.
    node.on_replies = client_factory.push_replies
    executor.server_info.clients = client_factory.connections
    executor.server_info.client_port = client_factory
    executor.server_info.watch_fields = watches.info
    executor.server_info.client_tls = bool(options["tls-cert"])
    executor.server_info.peer_security = "insecure" if tls is None else "mutual-tls"
    executor.server_info.stall = stall
    if metrics is not None:
        metrics.watch_reactor(stall)
        client_factory = metrics.counting_factory(client_factory)
    client_endpoint = "tcp:%d:interface=%s" % (config.address.client_port, interface)
    if options["tls-cert"]:
        from twisted.internet.endpoints import quoteStringArgument

        client_endpoint = "ssl:%d:interface=%s:certKey=%s:privateKey=%s" % (
            config.address.client_port, interface, quoteStringArgument(options["tls-cert"]), quoteStringArgument(options["tls-key"]))
    strports.service(client_endpoint, client_factory).setServiceParent(top)
    add_services(top, node, options, metrics, reactor)  # DNS and HTTP (kvd.discovery.services)
    reactor.callWhenRunning(_tune_gc)
    return top


def refusal(data_dir: str, error: Exception) -> str:
    """"kvd: cannot use data dir D: <what is wrong>", naming D once (the store's messages name it too)."""
    text = str(error)
    for prefix in ("data dir %s: " % data_dir, "data dir %s " % data_dir):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return "kvd: cannot use data dir %s: %s" % (data_dir, text)


def exit_when_failed(node) -> None:
    """
    After twistd's shutdown: if ``node`` fail-stopped, end the process with
    its ``exit_code`` once twistd's run() has returned (pidfile removed, log
    closed), at interpreter exit, where twistd would have exited 0.
    """
    if node.exit_code:
        atexit.register(_exit_now, node.exit_code)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream (a daemon's): nothing left to flush
            pass
    os._exit(code)
