# -*- test-case-name: tests.node.test_executor -*-
"""
Serves the Redis port's requests from the node: writes go through Raft,
reads through ReadIndex (or locally on a READONLY connection, or for a
read that asks so itself: KVD.GET ... SERIALIZABLE), and the
admin commands (INFO, ROLE, KVD.*) read the node's state.

A failure is a kvd.errors.KvdError, which the RESP layer writes as
``-CODE message`` as it is: nothing here translates it.

The RESP layer answers PING, ECHO, SELECT, CLIENT, COMMAND and QUIT by
itself; only Write, Read and the Admin commands below arrive here.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import json
from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger

from kvd.kv.commands import Script, ScriptGet, Transaction, Versions
from kvd.kv.results import OK, KVError
from kvd.resp.commands import Admin, Read, Write
from kvd.resp.encoder import SimpleString
from kvd.resp.errors import RespError
from kvd.resp import pubsub
from kvd.server_info import ServerInfo


def _evalshas(command) -> list:
    """The EVALSHA/EVALSHA_RO scripts of a write: itself, or those of a transaction."""
    ops = command.ops if isinstance(command, Transaction) else (command,)
    return [op for op in ops if isinstance(op, Script) and op.op in ("evalsha", "evalsha_ro")]


class ClientExecutor:
    log = Logger()

    def __init__(self, node, clients=None, pubsub=None):
        """
        ``clients``: the client port's open connections by id (RespFactory.connections), for INFO;
        ``pubsub``: the port's pub/sub registry (kvd.resp.pubsub), whose notify-keyspace-events CONFIG sets.
        """
        self.node = node
        self.pubsub = pubsub
        self.server_info = ServerInfo(node.view, node.clock.seconds, clients)
        if pubsub is not None:
            self.server_info.notify_keyspace_events = pubsub.notify_text
            self.server_info.pubsub_counts = lambda: (len(pubsub.channels), len(pubsub.patterns),
                                                      len(pubsub.shard_channels))

    def execute(self, request, connection):
        if isinstance(request, Write):
            if _evalshas(request.command):
                return self._evalsha(request.command, connection)
            return self.node.submit(request.command)
        if isinstance(request, Read):
            # WATCH's versions are read linearizably even on a READONLY connection.
            local = connection.readonly or request.serializable
            linearizable = not local or isinstance(request.op, Versions)
            return self.node.read(request.op, linearizable=linearizable)
        if isinstance(request, Admin):
            handler = getattr(self, "_admin_" + request.name.replace(".", "_").replace("|", "_"), None)
            if handler is not None:
                return handler(request.args)
        raise RespError("ERR", "command not supported by this node")

    def _evalsha(self, command, connection):
        """
        EVALSHA (alone, or inside a transaction): the body from the replicated script cache (kvd.kv.script),
        proposed with the entry.  This node's copy first; for a SHA it does not have yet, a linearizable read
        (READONLY: this node's again) so that a SCRIPT LOAD answered by any node is seen.  An unknown SHA
        stays in the body: the machine answers NOSCRIPT for it when it applies the entry, in its place, and
        also when a SCRIPT FLUSH came first.
        """
        shas = tuple(dict.fromkeys(op.body for op in _evalshas(command) if len(op.body) == 40))
        bodies = {}

        def found(result, asked, linearizable):
            bodies.update((sha, body) for sha, body in zip(asked, result) if body is not None)
            missing = tuple(sha for sha in shas if sha not in bodies)
            if missing and linearizable:
                d = self.node.read(ScriptGet(missing), linearizable=True)
                return d.addCallback(found, missing, False)
            if isinstance(command, Script):
                if command.body not in bodies:
                    return KVError("NOSCRIPT No matching script. Please use EVAL.")
                return self.node.submit(replace(command, body=bodies[command.body]))
            ops = tuple(replace(op, body=bodies[op.body]) if isinstance(op, Script) and op.body in bodies
                        and op.op in ("evalsha", "evalsha_ro") else op for op in command.ops)
            return self.node.submit(replace(command, ops=ops))

        if not shas:
            return found([], (), False)
        d = self.node.read(ScriptGet(shas), linearizable=False)
        return d.addCallback(found, shas, not connection.readonly)

    # ------------------------------------------------------------ admin
    def _admin_info(self, args):
        return self.server_info.info(args)

    def _admin_time(self, args):
        # The node's own clock, as Redis: [unix seconds, microseconds], both bulk strings; never logged.
        micros = int(self.node.clock.seconds() * 1_000_000)
        return [b"%d" % (micros // 1_000_000), b"%d" % (micros % 1_000_000)]

    def _admin_script_kill(self, args):
        # A script runs inside one log entry's apply, never across requests: there is never one to kill.
        raise RespError("NOTBUSY", "No scripts in execution right now.")

    def _admin_config_get(self, args):
        return self.server_info.config_get(args)

    def _admin_config_set(self, args):
        if self.pubsub is None:
            raise RespError("ERR", "CONFIG SET is not supported: kvd's settings are twistd kvd options (twistd kvd --help)")
        return pubsub.config_set(self.pubsub, args)

    def _admin_config_resetstat(self, args):
        self.server_info.reset_stats()
        return OK

    def _admin_config_rewrite(self, args):
        raise RespError("ERR", "CONFIG REWRITE is not supported: kvd has no redis.conf (see etc/kvd.conf)")

    def _admin_role(self, args):
        info = self.node.view.info()
        if info["raft_role"] == "leader":
            return [b"master", info["raft_commit_index"], []]
        leader = info["raft_leader"] or ":0"
        host, _, port = leader.rpartition(":")
        state = b"connected" if info["raft_leader"] else b"connect"
        return [b"slave", host.encode(), int(port or 0), state, info["raft_applied_index"]]

    def _admin_kvd_members(self, args):
        return json.dumps(self.node.view.member_rows(), sort_keys=True).encode()

    def _admin_kvd_cluster(self, args):
        return self.node.view.cluster_id.encode()

    def _admin_kvd_join(self, args):
        node_id, address = (a.decode("utf-8", "replace") for a in args)
        return self._membership(self.node.join, node_id, address)

    def _admin_kvd_remove(self, args):
        return self._membership(self.node.remove, args[0].decode("utf-8", "replace"))

    def _membership(self, change, *args):
        try:
            d = defer.maybeDeferred(change, *args)
        except ValueError as e:
            raise RespError("ERR", str(e))

        def bad_address(f):
            from kvd.address import AddressError

            f.trap(AddressError)
            raise RespError("ERR", str(f.value))

        d.addCallback(lambda word: SimpleString(word))
        return d.addErrback(bad_address)
