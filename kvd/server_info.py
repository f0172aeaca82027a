# -*- test-case-name: tests.node.test_server_info -*-
"""
What a Redis client learns about the server: ``INFO [section ...]`` and
``CONFIG GET pattern [pattern ...]``.

Tools read these before doing anything else (redis-cli's ``INFO``,
redis-benchmark's ``CONFIG GET save`` and ``appendonly``, client libraries'
``INFO server`` for the version), so every section Redis has and kvd can
fill answers, with Redis's field names, and every value says what kvd
really does.  kvd writes every command to the Raft log and fsyncs it
(on a majority) before answering, so it is ``appendonly yes`` with
``appendfsync always`` (``no`` under ``--sync none``); it takes no RDB
snapshots (``save ""``); it has no memory limit and evicts nothing.

The node is read through its ``NodeView`` (kvd.node.view); ``clients`` is the
client port's ``connections`` mapping, when there is one.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from kvd.kv.glob import Pattern, PatternTooCostly
from kvd.resp.encoder import RespMap

REDIS_VERSION = "7.0.0"  # the protocol and command semantics kvd follows
KVD_VERSION = "0.1.0"

#: INFO's sections in Redis's order; "default" and "all" name every one of these.
_TITLES = {"cpu": "CPU"}
SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu", "cluster", "keyspace", "raft")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _human(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return ("%d%s" if unit == "B" else "%.2f%s") % (n, unit)
        n /= 1024.0
    return str(n)  # pragma: no cover


class ServerInfo:
    #: How peers are secured, set by kvd.tap: "mutual-tls" or "insecure" (--insecure-peers).
    peer_security = "unknown"
    #: The client port's factory (kvd.resp.protocol.RespFactory), set by kvd.tap: its limits and users.
    client_port = None
    #: Whether the client port speaks TLS (--tls-cert), set by kvd.tap.
    client_tls = False
    #: The node's reactor stall meter (kvd.node.stall.StallMeter), set by kvd.tap: its lines end INFO server.
    stall = None

    def __init__(self, view, now: Callable[[], float], clients: Optional[Mapping] = None):
        self.view = view
        self.now = now
        self.clients = clients
        self.started = now()
        #: The node's counters when CONFIG RESETSTAT last ran: INFO stats counts from there (the
        #: counters themselves go on: /metrics and the cluster view read them).
        self._stats_base: Dict[str, int] = {}
        #: CONFIG GET notify-keyspace-events: the client port's pub/sub registry's flags (kvd.resp.pubsub).
        self.notify_keyspace_events: Callable[[], str] = lambda: ""
        #: INFO stats' pubsub_channels, pubsub_patterns, pubsubshard_channels (the registry's counts).
        self.pubsub_counts: Callable[[], Tuple[int, int, int]] = lambda: (0, 0, 0)
        #: INFO stats' kvd_watch* fields: the client port's KVD.WATCH hub (kvd.resp.watch ``WatchHub.info``).
        self.watch_fields: Callable[[], List[Tuple[str, object]]] = lambda: []

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT: INFO's stats section starts again from zero."""
        stats = self.view.stats()
        self._stats_base = {name: stats.get(name, 0) for name in ("proposals", "reads")}

    # ------------------------------------------------------------------ INFO
    def info(self, args: Tuple[bytes, ...]) -> bytes:
        wanted = {a.decode("utf-8", "replace").lower() for a in args}
        if not wanted or wanted & {"default", "all", "everything"}:
            wanted |= set(SECTIONS)
        raft = self.view.info()
        out: List[str] = []
        for name in SECTIONS:
            if name in wanted:
                fields = getattr(self, "_" + name)(raft)
                out.append("# " + _TITLES.get(name, name.capitalize()))
                out += ["%s:%s" % kv for kv in fields]
                out.append("")
        return "\r\n".join(out).encode()

    def _server(self, raft) -> List[Tuple[str, object]]:
        config = self.view.config
        uptime = max(0, int(self.now() - self.started))
        return [
            ("redis_version", REDIS_VERSION),
            ("kvd_version", KVD_VERSION),
            ("redis_mode", "standalone"),
            ("os", "%s %s %s" % (platform.system(), platform.release(), platform.machine())),
            ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
            ("multiplexing_api", "twisted"),
            ("python_version", platform.python_version()),
            ("process_id", os.getpid()),
            ("run_id", raft["raft_node_id"]),
            ("tcp_port", config.address.client_port),
            ("server_time_usec", int(self.now() * 1e6)),
            ("uptime_in_seconds", uptime),
            ("uptime_in_days", uptime // 86400),
            ("executable", sys.argv[0] if sys.argv else ""),
            ("config_file", ""),
        ] + (self.stall.info_fields() if self.stall is not None else [])

    def _clients(self, raft):
        port = self.client_port
        users = getattr(port, "users", None)
        # Redis 7.0's fields in its order (the recent maxima are the current ones: kvd keeps no history),
        # then kvd's own.  No cluster bus, blocking commands, tracking or timeouts: those count 0.
        ios = [c.io() for c in self.clients.values() if getattr(c, "io", None) is not None] if self.clients else []
        return [("connected_clients", len(self.clients) if self.clients is not None else 0),
                ("cluster_connections", 0), ("maxclients", getattr(port, "maxclients", 0)),
                ("client_recent_max_input_buffer", max((io.get("qbuf", 0) for io in ios), default=0)),
                ("client_recent_max_output_buffer", max((io.get("omem", 0) for io in ios), default=0)),
                ("blocked_clients", 0), ("tracking_clients", 0), ("clients_in_timeout_table", 0),
                ("client_output_limit", getattr(port, "output_limit", 0)),
                ("client_auth", "yes" if users is not None and users.required else "no"),
                ("client_tls", "yes" if self.client_tls else "no")]

    def _memory(self, raft):
        rss = _rss_bytes()
        return [
            ("used_memory", rss), ("used_memory_human", _human(rss)),
            ("used_memory_rss", rss), ("used_memory_rss_human", _human(rss)),
            ("maxmemory", 0), ("maxmemory_human", "0B"), ("maxmemory_policy", "noeviction"),
        ]

    def _persistence(self, raft):
        sync = "always" if self.view.config.sync else "no"
        return [
            ("loading", 0),
            ("rdb_changes_since_last_save", 0),
            ("rdb_bgsave_in_progress", 0),
            ("rdb_last_bgsave_status", "ok"),
            ("aof_enabled", 1),
            ("aof_rewrite_in_progress", 0),
            ("aof_last_write_status", "ok"),
            ("kvd_log_fsync", sync),
            ("kvd_data_dir", self.view.config.data_dir),
            ("kvd_snapshot_index", raft["raft_snapshot_index"]),
            ("kvd_snapshots_taken", raft["raft_snapshots"]),
        ]

    def _stats(self, raft):
        stats, base = self.view.stats(), self._stats_base
        proposals = stats.get("proposals", 0) - base.get("proposals", 0)
        reads = stats.get("reads", 0) - base.get("reads", 0)
        return [
            ("total_commands_processed", proposals + reads),
            ("kvd_writes_proposed", proposals),
            ("kvd_linearizable_reads", reads),
            ("expired_keys", 0),
            ("evicted_keys", 0),
        ] + list(zip(("pubsub_channels", "pubsub_patterns", "pubsubshard_channels"), self.pubsub_counts())) + \
            self.watch_fields()

    def _replication(self, raft):
        leader = raft["raft_role"] == "leader"
        fields: List[Tuple[str, object]] = [("role", "master" if leader else "slave")]
        if leader:
            followers = [m for m in self.view.member_rows() if m["id"] != raft["raft_node_id"]]
            fields.append(("connected_slaves", sum(1 for m in followers if m.get("up"))))
            for i, m in enumerate(followers):
                host, _, port = m["client"].rpartition(":")
                fields.append(("slave%d" % i, "ip=%s,port=%s,state=%s,offset=%d,lag=0" % (
                    host, port, "online" if m.get("up") else "offline", m.get("match", 0))))
        else:
            host, _, port = (raft["raft_leader"] or ":0").rpartition(":")
            fields += [("master_host", host), ("master_port", int(port or 0)),
                       ("master_link_status", "up" if self.view.live_leader() else "down")]
        fields += [("master_repl_offset", raft["raft_applied_index"])]
        return fields

    def _cpu(self, raft):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return [("used_cpu_sys", "%.6f" % usage.ru_stime), ("used_cpu_user", "%.6f" % usage.ru_utime)]

    def _cluster(self, raft):
        return [("cluster_enabled", 0)]  # Redis Cluster's sharding, which kvd does not do

    def _keyspace(self, raft):
        keys = self.view.key_count()
        count = getattr(self.view, "expiry_count", None)
        expires = min(keys, count()) if callable(count) else 0
        return [("db0", "keys=%d,expires=%d,avg_ttl=0" % (keys, expires))] if keys else []

    def _raft(self, raft):
        return list(raft.items()) + [("raft_peer_security", self.peer_security)]

    # ---------------------------------------------------------------- CONFIG
    def config(self) -> Dict[str, str]:
        """Every parameter CONFIG GET knows, as Redis names it, with kvd's real value."""
        c = self.view.config
        return {
            "port": str(c.address.client_port),
            "bind": c.address.host,
            "dir": os.path.abspath(c.data_dir),
            "databases": "1",
            "save": "",
            "dbfilename": "",
            "appendonly": "yes",
            "appendfsync": "always" if c.sync else "no",
            "maxmemory": "0",
            "maxmemory-policy": "noeviction",
            "maxclients": str(getattr(self.client_port, "maxclients", 0)),
            "client-output-buffer-limit": "normal 0 %d 0%s" % (
                getattr(self.client_port, "output_limit", 0),
                " " + self.client_port.pubsub_limit.text() if hasattr(self.client_port, "pubsub_limit") else ""),
            "timeout": "0",
            "tcp-keepalive": "0",
            "proto-max-bulk-len": str(c.value_max_bytes),
            "cluster-enabled": "no",
            "replica-read-only": "yes",
            "slave-read-only": "yes",
            "lua-time-limit": "0",
            "busy-reply-threshold": "0",
            "notify-keyspace-events": self.notify_keyspace_events(),
            "protected-mode": "no",
            "io-threads": "1",
        }

    def config_get(self, patterns: Tuple[bytes, ...]) -> RespMap:
        """CONFIG GET: every parameter matching any pattern (case-insensitive), each once."""
        params = self.config()
        compiled = []
        for p in patterns:
            try:
                compiled.append(Pattern(p.lower()))
            except PatternTooCostly:  # a huge pattern: no parameter name is that long anyway
                pass
        pairs = [(k, v) for k, v in params.items() if any(p.matches(k.encode()) for p in compiled)]
        return RespMap(tuple(pairs))
