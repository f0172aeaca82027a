# -*- test-case-name: tests.node.test_node -*-
"""
Who is in the cluster: joining (as a founder before bootstrap, as a learner
afterwards), removing, and what an unformed node waits for.

A seed started with ``bootstrap_expect`` N gathers joins until N founders
are known, then writes the same one-entry configuration every founder
would, and campaigns.  Once a cluster exists, changes go through the
leader one at a time (the core refuses a second while one is in flight; we
wait and retry until the request's deadline); a joiner is added as a
learner and the core promotes it once it has caught up.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from typing import Callable, Dict

from twisted.internet import defer, task
from twisted.logger import Logger

from kvd.address import MemberAddress
from kvd.errors import Code, KvdError
from kvd.raft.core import ConfigChangeRejected, bootstrap
from kvd.raft.messages import Configuration
from kvd.wire.errors import ForwardError


class Membership:
    log = Logger()

    def __init__(self, node):
        self.node = node
        self.pending_joins: Dict[str, str] = {}  # before bootstrap: node id -> member address

    def join(self, node_id: str, address: str) -> defer.Deferred:
        """
        Add a node.  Before bootstrap (a seed with bootstrap_expect) it is
        counted toward the founders; afterwards the leader adds it as a
        learner, and the core promotes it once it has caught up.
        """
        node = self.node
        MemberAddress.parse(address)
        if not node.core.config.members and node.config.bootstrap_expect:
            return defer.succeed(self._gather_founder(node_id, address))
        return self._leader_call(lambda core: core.add_learner(node_id, address), "joining")

    def remove(self, node_id: str) -> defer.Deferred:
        return self._leader_call(lambda core: core.remove(node_id), "removed")

    def join_received(self, node_id: str, address: str) -> defer.Deferred:
        """A Join over the peer transport (answers bytes, refuses with ForwardError)."""
        d = defer.maybeDeferred(self.join, node_id, address)
        d.addCallback(lambda word: word.encode())

        def on_the_wire(f):
            f.trap(KvdError)
            code = Code.TRYAGAIN if f.value.code in (Code.NOLEADER, Code.MOVED) else Code.INTERNAL
            raise ForwardError(code, f.value.message)

        return d.addErrback(on_the_wire)

    @defer.inlineCallbacks
    def _leader_call(self, change: Callable, word: str):
        node = self.node
        deadline = node.clock.seconds() + node.config.request_timeout_s * 2
        while True:
            if not node.core.is_leader():
                leader = node.core.leader
                if leader is None:
                    raise KvdError(Code.NOLEADER, "no leader; try again when the cluster has one")
                raise KvdError(Code.MOVED, node.view.client_address(leader) or leader)
            try:
                index = yield node.call_core(change)
                break
            except ConfigChangeRejected as e:
                if not e.in_progress or node.clock.seconds() > deadline:
                    raise KvdError(Code.ERR, str(e))
            yield task.deferLater(node.clock, node.config.tick_s, lambda: None)
        node.schedule_drain()
        while node.core.applied < index:
            if node.clock.seconds() > deadline:
                raise KvdError(Code.TIMEOUT, "membership change not committed in time")
            yield task.deferLater(node.clock, node.config.tick_s, lambda: None)
        return word

    def _gather_founder(self, node_id: str, address: str) -> str:
        node = self.node
        config = node.config
        self.pending_joins[node_id] = address
        founders = dict(self.pending_joins)
        founders[config.node_id] = str(config.address)
        if len(founders) < config.bootstrap_expect:
            self.log.info("{node}: {n} of {expect} founders have joined", node=config.node_id, n=len(founders), expect=config.bootstrap_expect)
            return "waiting for %d more node(s) to bootstrap" % (config.bootstrap_expect - len(founders))
        hard_state, entries = bootstrap(Configuration.make(voters=founders, addresses=founders))
        try:
            node.storage.save(hard_state, entries, None, sync=True)
        except Exception as e:  # the disk: fail-stop, as a failed write of the Ready loop does
            node._storage_failed(e)
            raise KvdError(Code.TRYAGAIN, "this node's storage failed; it is stopping") from None
        node.make_core(hard_state, None, entries)
        self.pending_joins = {}
        self.log.info("{node} bootstrapped the cluster with {members}", node=config.node_id, members=sorted(founders))
        node.campaign_if_alone()
        return "bootstrapped"

    def waiting_for(self) -> str:
        """What a node that belongs to no cluster yet is waiting for, and how to give it one."""
        config = self.node.config
        if config.bootstrap_expect:
            have = len(self.pending_joins) + 1
            return ("this seed waits for %d of %d founding nodes to join before it forms the cluster "
                    "(mgmt.py -r server -c join -h HOST:PORT, or KVD.JOIN <id> <address> on this node)"
                    % (config.bootstrap_expect - have, config.bootstrap_expect))
        return ("this node is not part of a cluster yet: start every founder with the same "
                "--initial-cluster id1,id2,..., or add this node to a running cluster "
                "(mgmt.py -r server -c join -h %s, or KVD.JOIN %s %s sent to a member)"
                % (config.address.client, config.node_id, config.address))
