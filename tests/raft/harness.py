"""
A small, synchronous harness over pure Raft cores for rule-by-rule tests:
every node persists each Ready at once (a perfect disk), and messages are
delivered in FIFO order unless a test drops or holds them.  The randomized
fault-injecting simulator lives in kvd.sim; this harness is for scenarios
written by hand (the paper's figures, one rule per test).
"""

import random
from typing import Callable, Dict, List, Optional

from kvd.raft.core import RaftSettings, RaftCore, bootstrap
from kvd.raft.messages import Configuration, EntryKind, Role


class Node:
    def __init__(self, node_id, config, seed, options):
        hs, entries = bootstrap(config)
        self.id = node_id
        self.options = options
        self.seed = seed
        self.hard_state = hs
        self.entries = {e.index: e for e in entries}
        self.snapshot = None
        self.applied: List = []  # (index, data) of NORMAL entries, in apply order
        self.read_states: List = []
        self.core = RaftCore(node_id, options, random.Random(seed), hs, None, entries)

    def drain(self) -> List:
        out = []
        while self.core.has_ready():
            rd = self.core.ready()
            out.extend(rd.messages)
            if rd.snapshot is not None:
                self.snapshot = rd.snapshot
                self.entries = {}
                self.applied = list(_decode_state(rd.snapshot.data))
            if rd.entries:
                first = rd.entries[0].index
                for i in [i for i in self.entries if i >= first]:
                    del self.entries[i]
                for e in rd.entries:
                    self.entries[e.index] = e
            if rd.hard_state is not None:
                self.hard_state = rd.hard_state
            out.extend(rd.persisted_messages)
            for e in rd.committed:
                if e.kind is EntryKind.NORMAL:
                    self.applied.append((e.index, e.data))
            self.read_states.extend(rd.read_states)
            self.core.advance(rd)
        return out

    def restart(self):
        """Crash and recover from what was persisted (the perfect disk keeps everything)."""
        entries = [self.entries[i] for i in sorted(self.entries)]
        snap = self.snapshot
        if snap is not None:
            entries = [e for e in entries if e.index > snap.index]
        self.applied = list(_decode_state(snap.data)) if snap else []
        self.core = RaftCore(self.id, self.options, random.Random(self.seed + 1000), self.hard_state, snap, entries)


def _decode_state(data: bytes):
    if not data:
        return []
    out = []
    for part in data.split(b";"):
        idx, val = part.split(b"=", 1)
        out.append((int(idx), val))
    return out


def encode_state(applied) -> bytes:
    return b";".join(b"%d=%s" % (i, d) for i, d in applied)


class Env:
    def __init__(self, ids=("a", "b", "c"), options: Optional[RaftSettings] = None, seed: int = 1, learners=()):
        self.options = options or RaftSettings(election_ticks=10, heartbeat_ticks=1)
        config = Configuration.make(voters=ids, learners=learners, addresses={i: i for i in list(ids) + list(learners)})
        self.nodes: Dict[str, Node] = {
            i: Node(i, config, seed * 100 + n, self.options) for n, i in enumerate(list(ids) + list(learners))
        }
        self.queue: List = []
        self.cut = set()  # (src, dst) pairs whose messages are dropped

    def core(self, node_id) -> RaftCore:
        return self.nodes[node_id].core

    def collect(self):
        for node_id in sorted(self.nodes):
            self.queue.extend(self.nodes[node_id].drain())

    def deliver(self, drop: Callable = lambda m: False, rounds: int = 1000):
        """Deliver messages until none are left (FIFO); dropped and cut ones vanish."""
        self.collect()
        for _ in range(rounds):
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for m in batch:
                if drop(m) or (m.src, m.dst) in self.cut or m.dst not in self.nodes:
                    continue
                self.nodes[m.dst].core.step(m)
            self.collect()
        raise AssertionError("messages never quiesced")

    def tick(self, n: int = 1, only=None):
        for _ in range(n):
            for node_id in sorted(self.nodes):
                if only is None or node_id in only:
                    self.nodes[node_id].core.tick()
            self.deliver()

    def elect(self, node_id: str):
        self.nodes[node_id].core.campaign()
        self.deliver()
        assert self.core(node_id).role is Role.LEADER, self.core(node_id).status()

    def isolate(self, node_id: str):
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def heal(self):
        self.cut = set()

    def add_node(self, node_id, seed=999):
        """A fresh, empty node (a joiner): it has no configuration of its own."""
        node = Node.__new__(Node)
        node.id, node.options, node.seed = node_id, self.options, seed
        node.hard_state, node.entries, node.snapshot = None, {}, None
        node.applied, node.read_states = [], []
        from kvd.raft.messages import HardState

        node.hard_state = HardState()
        node.core = RaftCore(node_id, self.options, random.Random(seed))
        self.nodes[node_id] = node
        return node

    def leaders(self):
        return [i for i, n in self.nodes.items() if n.core.role is Role.LEADER]


def entry_data(index: int, term: int) -> bytes:
    """The payload of a hand-built entry: the same (index, term) always carries the same bytes."""
    return b"%d/%d" % (index, term)


def env_with_logs(logs: Dict[str, List[int]], options: Optional[RaftSettings] = None, seed: int = 1, terms: Optional[Dict[str, int]] = None) -> Env:
    """
    An Env whose nodes start from hand-built logs (Figure 7 style): ``logs``
    maps a node to the terms of its entries from index 2 on (index 1 is the
    shared bootstrap configuration).  Each node's durable term is the last
    term in its log, unless ``terms`` says otherwise.
    """
    from kvd.raft.messages import Entry, HardState

    current = terms
    env = Env(ids=tuple(sorted(logs)), options=options, seed=seed)
    for node_id, terms in logs.items():
        node = env.nodes[node_id]
        entries = [node.entries[1]] + [Entry(i + 2, t, EntryKind.NORMAL, entry_data(i + 2, t)) for i, t in enumerate(terms)]
        node.entries = {e.index: e for e in entries}
        node.hard_state = HardState(term=(current or {}).get(node_id, max([1] + list(terms))))
        node.core = RaftCore(node_id, env.options, random.Random(node.seed), node.hard_state, None, entries)
    return env
