# -*- test-case-name: tests.node.test_executor -*-
"""
Serves the Redis port's requests from the node: writes go through Raft,
reads through ReadIndex (or locally on a READONLY connection), and the
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

from kvd.kv.commands import Script, ScriptGet, Versions
from kvd.kv.results import OK, KVError
from kvd.resp.commands import Admin, Read, Write
from kvd.resp.encoder import SimpleString
from kvd.resp.errors import RespError
from kvd.server_info import ServerInfo


class ClientExecutor:
    log = Logger()

    def __init__(self, node, clients=None):
        """``clients``: the client port's open connections by id (RespFactory.connections), for INFO."""
        self.node = node
        self.server_info = ServerInfo(node.view, node.clock.seconds, clients)

    def execute(self, request, connection):
        if isinstance(request, Write):
            if isinstance(request.command, Script) and request.command.op in ("evalsha", "evalsha_ro"):
                return self._evalsha(request.command, connection)
            return self.node.submit(request.command)
        if isinstance(request, Read):
            # WATCH's versions are read linearizably even on a READONLY connection.
            linearizable = not connection.readonly or isinstance(request.op, Versions)
            return self.node.read(request.op, linearizable=linearizable)
        if isinstance(request, Admin):
            handler = getattr(self, "_admin_" + request.name.replace(".", "_").replace("|", "_"), None)
            if handler is not None:
                return handler(request.args)
        raise RespError("ERR", "command not supported by this node")

    def _evalsha(self, command: Script, connection):
        """
        EVALSHA: the body from the replicated script cache (kvd.kv.script), proposed with the entry.  This
        node's copy first; if it does not have the SHA yet, a linearizable read (READONLY: this node's again)
        so that a SCRIPT LOAD answered by any node is seen.  The machine checks the SHA again when it applies
        the entry (NOSCRIPT if a SCRIPT FLUSH came first).
        """
        sha = command.body
        if len(sha) != 40:
            return KVError("NOSCRIPT No matching script. Please use EVAL.")

        def found(bodies, linearizable):
            body = bodies[0] if isinstance(bodies, list) else None
            if body is None:
                if linearizable:
                    return self.node.read(ScriptGet((sha,)), linearizable=True).addCallback(found, False)
                return KVError("NOSCRIPT No matching script. Please use EVAL.")
            return self.node.submit(replace(command, body=body))

        d = self.node.read(ScriptGet((sha,)), linearizable=False)
        return d.addCallback(found, not connection.readonly)

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
        raise RespError("ERR", "CONFIG SET is not supported: kvd's settings are twistd kvd options (twistd kvd --help)")

    def _admin_config_resetstat(self, args):
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
