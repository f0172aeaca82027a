# -*- test-case-name: tests.node.test_executor -*-
"""
Serves the Redis port's requests from the node: writes go through Raft,
reads through ReadIndex (or locally on a READONLY connection), and the
admin commands (INFO, ROLE, KVD.*) read the node's state.

The RESP layer answers PING, ECHO, SELECT, CLIENT, COMMAND and QUIT by
itself; only Write, Read and the Admin commands below arrive here.

Allowed imports: twisted, kvd.node, kvd.resp, kvd.kv.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.logger import Logger

from kvd.node import NodeError
from kvd.resp.commands import Admin, Read, Write
from kvd.resp.encoder import SimpleString
from kvd.resp.errors import RespError


def _as_resp_error(failure):
    failure.trap(NodeError)
    raise RespError(failure.value.code, failure.value.message)


class ClientExecutor:
    log = Logger()

    def __init__(self, node):
        self.node = node

    def execute(self, request, session):
        if isinstance(request, Write):
            return self.node.submit(request.command).addErrback(_as_resp_error)
        if isinstance(request, Read):
            return self.node.read(request.op, linearizable=not session.readonly).addErrback(_as_resp_error)
        if isinstance(request, Admin):
            handler = getattr(self, "_admin_" + request.name.replace(".", "_").replace("|", "_"), None)
            if handler is not None:
                return handler(request.args)
        raise RespError("ERR", "command not supported by this node")

    # ------------------------------------------------------------ admin
    def _admin_info(self, args):
        sections = {a.lower() for a in args}
        info = self.node.info()
        lines = []
        wanted = lambda name: not sections or name in sections or b"all" in sections or b"everything" in sections  # noqa: E731
        if wanted(b"server"):
            lines += ["# Server", "redis_version:7.0.0", "kvd_version:0.1.0", "redis_mode:standalone",
                      "tcp_port:%d" % self.node.config.address.client_port, ""]
        if wanted(b"replication"):
            role = "master" if info["raft_role"] == "leader" else "slave"
            lines += ["# Replication", "role:%s" % role, ""]
        if wanted(b"keyspace"):
            lines += ["# Keyspace", "db0:keys=%d,expires=0,avg_ttl=0" % len(self.node.machine), ""]
        if wanted(b"raft"):
            lines.append("# Raft")
            lines += ["%s:%s" % (k, v) for k, v in info.items()]
            lines.append("")
        return ("\r\n".join(lines)).encode()

    def _admin_role(self, args):
        info = self.node.info()
        if info["raft_role"] == "leader":
            return [b"master", info["raft_commit_index"], []]
        leader = info["raft_leader"] or ":0"
        host, _, port = leader.rpartition(":")
        state = b"connected" if info["raft_leader"] else b"connect"
        return [b"slave", host.encode(), int(port or 0), state, info["raft_applied_index"]]

    def _admin_kvd_members(self, args):
        return json.dumps(self.node.members(), sort_keys=True).encode()

    def _admin_kvd_cluster(self, args):
        return self.node.config.cluster_id.encode()

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
        return d.addErrback(bad_address).addErrback(_as_resp_error)
