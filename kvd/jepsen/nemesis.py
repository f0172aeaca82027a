"""
The nemeses: each ``start_<name>`` injects one fault, records it in the
history and returns the function that heals it.

- kill-leader, kill-random: SIGKILL (the leader; a random minority), restart
  on heal from the node's own data; stop-leader: SIGTERM, a graceful stop in
  which the leader transfers leadership first, restart on heal;
- pause-leader, pause-random: SIGSTOP, SIGCONT on heal.  Pausing the leader
  ends with a probe: once a new leader has acknowledged a write of a fresh
  value, a GET is sent to the still-paused old leader, which is then resumed;
  the GET was invoked after the write completed, so it must return the new
  value or an error, never the old one (both ops are in the history);
- partition-random (a minority and a majority), partition-leader (the leader
  alone), bridge (two halves that only one node connects), one-way (the
  leader's packets to the others are dropped, theirs still reach it):
  packet filters, removed on heal;
- membership: add a fresh node (KVD.JOIN; it becomes a voter once caught up)
  or remove one (KVD.REMOVE, the leader included), in turn, keeping 3 to 5
  members; a removed node keeps running (and receiving client requests) for
  a second, then is killed;
- crash-all: SIGKILL every member at once, restart them all on heal, then
  read every key used so far (reads the checker holds to every write
  acknowledged before the crash).

``heal_all`` undoes whatever is left: filters, pauses, dead members.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Callable, Dict, List, Optional

from kvd.errors import Code
from kvd.check.linear import FAIL, INFO, OK, READ, WRITE
from kvd.jepsen.cluster import ProcessCluster, Node
from kvd.jepsen.netfilter import Netfilter, cut
from kvd.resp.client import Indeterminate, NotSent, ReplyError
from kvd.jepsen.workload import History, execute, interpret

PROCESS = ("kill-leader", "kill-random", "stop-leader", "pause-leader", "pause-random", "crash-all")
PARTITIONS = ("partition-random", "partition-leader", "bridge", "one-way")
MEMBERSHIP = ("membership",)
ATTACKS = ("forge",)
ALL = PROCESS + PARTITIONS + MEMBERSHIP + ATTACKS
GROUPS = {"all": ALL, "process": PROCESS, "partitions": PARTITIONS, "kill": ("kill-leader", "kill-random", "stop-leader"),
          "pause": ("pause-leader", "pause-random"), "attacks": ATTACKS, "none": ()}

PROBE_KEY = "probe"


def expand(spec: str) -> List[str]:
    """'all', a group name, or a comma-separated list of nemesis names."""
    names: List[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part in GROUPS:
            names.extend(GROUPS[part])
        elif part in ALL:
            names.append(part)
        else:
            raise ValueError("unknown nemesis %r (choose from %s, or groups %s)" % (part, ", ".join(ALL), ", ".join(GROUPS)))
    return list(dict.fromkeys(names))


def needs_netfilter(names: List[str]) -> bool:
    return any(n in PARTITIONS for n in names)


class Nemesis:
    def __init__(self, cluster: ProcessCluster, history: History, rng: random.Random, netfilter: Optional[Netfilter] = None,
                 min_members: int = 3, max_members: int = 5, keys: Callable[[], List[str]] = lambda: []):
        self.cluster = cluster
        self.keys = keys
        self.history = history
        self.rng = rng
        self.netfilter = netfilter
        self.min_members = min_members
        self.max_members = max_members
        self.started: Dict[str, int] = {}
        self.skipped: Dict[str, int] = {}
        self.problems: List[str] = []  # faults that could not be carried out as asked
        self.probes = {"sent": 0, "answered": 0}
        self.probe_seq = 0
        self.reapers: List[threading.Thread] = []
        self.last_added = False
        self.pending: List[Node] = []  # started joiners whose membership is unknown
        self.must_reconcile = False

    # ------------------------------------------------------------ helpers
    def _event(self, name: str, action: str, detail: str = "") -> None:
        self.history.event(name, action, detail)

    def _leader(self, timeout_s: float = 10.0) -> Optional[Node]:
        return self.cluster.leader(timeout_s)

    def _restart(self, nodes: List[Node], name: str) -> None:
        # Only the dead: a node another nemesis already restarted is left alone.
        nodes = [n for n in nodes if not n.removed and not n.alive()]
        for n in nodes:
            n.launch()
        for n in nodes:
            try:
                n.wait_ready(60)
            except Exception as e:
                self.problems.append("%s: restart of %s failed: %s" % (name, n.id, e))
        self._event(name, "heal", "restarted %s" % ", ".join(n.id for n in nodes))

    def start(self, name: str) -> Callable[[], None]:
        """Inject the fault; returns its heal.  Only faults carried out count (a leader fault without a leader is skipped)."""
        heal = getattr(self, "start_" + name.replace("-", "_"))()
        if heal is None:
            self.skipped[name] = self.skipped.get(name, 0) + 1
            return lambda: None
        self.started[name] = self.started.get(name, 0) + 1
        return heal

    # ------------------------------------------------------------ a stranger on the network
    def start_forge(self):
        """Attack the peer ports (kvd.jepsen.attacker) until healed; an attack that is not refused is a problem."""
        from kvd.jepsen.attacker import KINDS, Attacker

        leader = self._leader()
        if leader is None:
            self._event("forge", "skip", "no leader")
            return None
        attacker = Attacker(self.cluster, os.path.join(self.cluster.dir, "tls"), os.path.join(self.cluster.dir, "attacker"))
        stop = threading.Event()
        seen: Dict[str, int] = {}

        def attack():
            i = 0
            while not stop.is_set():
                members = [n for n in self.cluster.members if n.alive() and not n.paused]
                now_leader = self._leader(1.0)
                if len(members) < 2 or now_leader is None:
                    stop.wait(0.2)
                    continue
                kind = KINDS[i % len(KINDS)]
                victim = members[i % len(members)]
                member = next((n for n in members if n is not victim and n is not now_leader), None) or now_leader
                i += 1
                outcome = attacker.attempt(kind, victim, now_leader, member)
                seen[kind] = seen.get(kind, 0) + 1
                if not outcome.startswith("refused"):
                    self.problems.append("forge: %s on %s: %s" % (kind, victim.id, outcome))
                stop.wait(0.05)

        thread = threading.Thread(target=attack, name="kvdj-forge", daemon=True)
        thread.start()
        self._event("forge", "start", "attacking the peer ports (%s)" % ", ".join(KINDS))

        def heal():
            stop.set()
            thread.join(30)
            self._event("forge", "heal", "attempts: %s" % ", ".join("%s %d" % kv for kv in sorted(seen.items())))
            missing = [kind for kind in KINDS if not seen.get(kind)]
            if missing:  # an attack never tried proves nothing: say so
                self.problems.append("forge: never attempted %s" % ", ".join(missing))

        return heal

    # ------------------------------------------------------------ crashes
    def start_kill_leader(self):
        leader = self._leader()
        if leader is None:
            self._event("kill-leader", "skip", "no leader")
            return None
        leader.kill()
        self._event("kill-leader", "start", "SIGKILL %s" % leader.id)
        return lambda: self._restart([leader], "kill-leader")

    def start_kill_random(self):
        members = [n for n in self.cluster.members if n.alive()]
        k = self.rng.randint(1, max(1, (len(self.cluster.members) - 1) // 2))
        victims = self.rng.sample(members, min(k, len(members)))
        for n in victims:
            n.kill()
        self._event("kill-random", "start", "SIGKILL %s" % ", ".join(n.id for n in victims))
        return lambda: self._restart(victims, "kill-random")

    def start_stop_leader(self):
        leader = self._leader()
        if leader is None:
            self._event("stop-leader", "skip", "no leader")
            return None
        self._event("stop-leader", "start", "SIGTERM %s (it hands leadership over first)" % leader.id)
        leader.stop()
        self._event("stop-leader", "stopped", "%s exited with %s" % (leader.id, leader.proc.returncode))
        return lambda: self._restart([leader], "stop-leader")

    def start_crash_all(self):
        members = list(self.cluster.members)
        for n in members:  # as close together as signals go
            if n.alive():
                n.proc.kill()
        for n in members:
            n.kill()  # reaps
        self._event("crash-all", "start", "SIGKILL all of %s" % ", ".join(n.id for n in members))

        def heal():
            self._restart(members, "crash-all")
            self._read_back("crash-all")

        return heal

    def _read_back(self, name: str) -> None:
        """Right after a restart, read every key used so far (ops of process "read-back" in the history)."""
        leader = self._leader(20.0)
        if leader is None:
            self._event(name, "read-back", "skipped: no leader within 20s")
            return
        conn = leader.connection(4.0)
        answered = 0
        keys = list(self.keys())
        try:
            for key in keys:
                for _ in range(3):
                    rec = self.history.invoke("read-back", key, READ, None, leader.id)
                    outcome, result, error = execute(conn, READ, key, None)
                    self.history.complete(rec, outcome, result, error)
                    if outcome == OK:
                        answered += 1
                        break
                    time.sleep(0.2)
        finally:
            conn.close()
        self._event(name, "read-back", "%d of %d keys read through %s after the restart" % (answered, len(keys), leader.id))

    # ------------------------------------------------------------ pauses
    def start_pause_random(self):
        members = [n for n in self.cluster.members if n.alive() and not n.paused]
        if not members:
            return None
        victim = self.rng.choice(members)
        victim.pause()
        self._event("pause-random", "start", "SIGSTOP %s" % victim.id)

        def heal():
            victim.resume()
            self._event("pause-random", "heal", "SIGCONT %s" % victim.id)

        return heal

    def start_pause_leader(self):
        leader = self._leader()
        if leader is None:
            self._event("pause-leader", "skip", "no leader")
            return None
        leader.pause()
        self._event("pause-leader", "start", "SIGSTOP %s" % leader.id)

        def heal():
            try:
                self._probe_stale_read(leader)
            finally:
                leader.resume()
                self._event("pause-leader", "heal", "SIGCONT %s" % leader.id)

        return heal

    def _probe_stale_read(self, old: Node) -> None:
        """Write a fresh value through the new leader, then ask the paused old leader for it as it wakes."""
        if not old.paused or not old.alive():
            return
        others = [n for n in self.cluster.members if n is not old and n.alive() and not n.paused]
        new = self.cluster.leader(10.0, among=others) if others else None
        if new is None:
            self._event("pause-leader", "probe", "skipped: no new leader among %s" % others)
            return
        self.probe_seq += 1
        value = "probe-%d" % self.probe_seq
        written = False
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not written:
            conn = new.connection(4.0)
            rec = self.history.invoke("probe", PROBE_KEY, WRITE, value, new.id)
            outcome, result, error = execute(conn, WRITE, PROBE_KEY, value)
            self.history.complete(rec, outcome, result, error)
            conn.close()
            if outcome == INFO:
                break  # may have applied: the probe would prove nothing
            written = outcome == OK
            if not written:
                time.sleep(0.2)
        if not written:
            self._event("pause-leader", "probe", "skipped: the write of %s was not acknowledged" % value)
            return
        conn = old.connection(6.0)
        rec = self.history.invoke("probe", PROBE_KEY, READ, None, old.id)
        try:
            conn.send("GET", PROBE_KEY)
        except (NotSent, Indeterminate) as e:
            self.history.complete(rec, FAIL if isinstance(e, NotSent) else INFO, None, str(e))
            conn.close()
            return
        self.probes["sent"] += 1
        old.resume()
        try:
            outcome, result, error = interpret(READ, conn.receive())
        except ReplyError as e:
            outcome, result, error = (FAIL if e.code in (Code.NOLEADER, Code.TRYAGAIN) else INFO), None, e.text
        except Indeterminate as e:
            outcome, result, error = INFO, None, str(e)
        finally:
            conn.close()
        self.history.complete(rec, outcome, result, error)
        if outcome == OK:
            self.probes["answered"] += 1
        self._event("pause-leader", "probe", "GET %s on the waking %s after %s was acknowledged by %s: %s %r %s"
                    % (PROBE_KEY, old.id, value, new.id, outcome, result, error))

    # ------------------------------------------------------------ partitions
    def _partition(self, name: str, groups: List[List[Node]], one_way: Optional[tuple] = None):
        if self.netfilter is None:
            self.problems.append("%s: no packet filter" % name)
            return None
        if one_way is not None:
            src, dsts = one_way
            pairs = [(src.host, d.host) for d in dsts]
            detail = "drop %s -> %s" % (src.id, ", ".join(d.id for d in dsts))
        else:
            pairs = cut([[n.host for n in g] for g in groups])
            detail = " | ".join(",".join(n.id for n in g) for g in groups)
        self.netfilter.drop(pairs)
        self._event(name, "start", detail)

        def heal():
            self.netfilter.heal()
            self._event(name, "heal", "filters removed")

        return heal

    def start_partition_random(self):
        members = list(self.cluster.members)
        self.rng.shuffle(members)
        k = self.rng.randint(1, max(1, (len(members) - 1) // 2))
        return self._partition("partition-random", [members[:k], members[k:]])

    def start_partition_leader(self):
        leader = self._leader()
        if leader is None:
            self._event("partition-leader", "skip", "no leader")
            return None
        return self._partition("partition-leader", [[leader], [n for n in self.cluster.members if n is not leader]])

    def start_bridge(self):
        members = list(self.cluster.members)
        self.rng.shuffle(members)
        bridge, rest = members[0], members[1:]
        half = len(rest) // 2
        heal = self._partition("bridge", [rest[:half], rest[half:]])
        self._event("bridge", "detail", "%s bridges both sides" % bridge.id)
        return heal

    def start_one_way(self):
        leader = self._leader()
        if leader is None:
            self._event("one-way", "skip", "no leader")
            return None
        return self._partition("one-way", [], one_way=(leader, [n for n in self.cluster.members if n is not leader]))

    # ------------------------------------------------------------ membership
    def start_membership(self):
        live = [n for n in self.cluster.members if not n.removed]
        if len(live) <= self.min_members:
            add = True
        elif len(live) >= self.max_members:
            add = False
        else:
            add = not self.last_added  # alternate: every schedule sees both
        self.last_added = add
        if add:
            self._add()
        else:
            self._remove()
        return lambda: None

    def _add(self) -> None:
        node = self.cluster.new_node()
        try:
            node.start(60)
        except Exception as e:
            self.problems.append("membership: %s did not start: %s" % (node.id, e))
            node.kill()
            return
        self._event("membership", "start", "add %s" % node.id)
        ok, detail = self.cluster.join(node)
        if ok:
            with self.cluster.lock:
                self.cluster.members.append(node)
            self._event("membership", "done", "%s joined (%s)" % (node.id, detail))
        else:
            # Unknown whether the change went in: ask the leader what the membership is.
            self._event("membership", "failed", "join of %s: %s" % (node.id, detail))
            self.reconcile([node])

    def _remove(self) -> None:
        victim = self.rng.choice([n for n in self.cluster.members if not n.removed])
        self._event("membership", "start", "remove %s" % victim.id)
        ok, detail = self.cluster.remove(victim)
        if not ok:
            # Unknown whether it went out: the membership is asked again after the heal.
            self._event("membership", "failed", "removal of %s: %s" % (victim.id, detail))
            self.must_reconcile = True
            return
        self._retire(victim)
        self._event("membership", "done", "%s removed (%s)" % (victim.id, detail))

    def _retire(self, node: Node) -> None:
        """Out of the configuration: clients may still ask it for a second, then it is killed."""
        with self.cluster.lock:
            node.removed = True
            if node in self.cluster.members:
                self.cluster.members.remove(node)
            self.cluster.lingering.append(node)

        def reap():
            time.sleep(1.0)
            with self.cluster.lock:
                if node in self.cluster.lingering:
                    self.cluster.lingering.remove(node)
            node.resume()
            node.kill()

        t = threading.Thread(target=reap, name="kvdj-reap", daemon=True)
        self.reapers.append(t)
        t.start()

    def reconcile(self, candidates: List[Node], final: bool = False) -> None:
        """
        Make our member list the leader's.  Mid-run (a stale leader may
        answer from behind a partition) only candidates it lists are
        adopted; the others wait.  At the end (``final``, nothing cut any
        more) waiting joiners it does not list are killed and members it does
        not list are retired.
        """
        for n in candidates:
            if n not in self.pending:
                self.pending.append(n)
        ids = self.cluster.config_members(10.0)
        if ids is None:
            self.must_reconcile = True
            self._event("membership", "unknown", "no leader to ask; will ask again after the heal")
            return
        self.must_reconcile = bool(self.pending) and not final
        for n in list(self.pending):
            if n.id in ids:
                self.pending.remove(n)
                with self.cluster.lock:
                    self.cluster.members.append(n)
                self._event("membership", "done", "%s is a member after all" % n.id)
            elif final:
                self.pending.remove(n)
                n.kill()
        if final:
            for n in list(self.cluster.members):
                if n.id not in ids:
                    self._retire(n)
                    self._event("membership", "done", "%s is not a member after all" % n.id)

    # ------------------------------------------------------------ the end
    def heal_all(self) -> None:
        if self.netfilter is not None:
            self.netfilter.heal()
        for n in self.cluster.nodes:
            if n.paused:
                n.resume()
        dead = [n for n in self.cluster.members if not n.alive()]
        if dead:
            self._restart(dead, "heal-all")
        if self.started.get("membership") or self.pending:
            self.reconcile([], final=True)
            if self.must_reconcile:
                self.problems.append("membership: no leader to ask for the membership, even after the heal")
            dead = [n for n in self.cluster.members if not n.alive()]
            if dead:
                self._restart(dead, "heal-all")
        for t in self.reapers:
            t.join(5.0)
        self._event("heal-all", "done", "")


def run_schedule(nemesis: Nemesis, names: List[str], until: float, rng: random.Random, order: str = "random",
                 rounds: int = 0, fault_s=(2.0, 4.0), quiet_s=(2.0, 4.0), combine: float = 0.0,
                 stop: Optional[threading.Event] = None) -> int:
    """
    Inject faults until the monotonic time ``until`` (or after ``rounds``
    passes over ``names`` when rounds > 0): quiet, fault, heal, again.  With
    ``combine`` > 0, that fraction of faults run together with a second one
    of another kind.  Returns how many faults were started.
    """
    if not names:
        while time.monotonic() < until and not (stop and stop.is_set()):
            time.sleep(0.2)
        return 0
    count = 0
    i = 0

    def sleep(seconds):
        end = min(until, time.monotonic() + seconds)
        while time.monotonic() < end and not (stop and stop.is_set()):
            time.sleep(0.05)

    while time.monotonic() < until and not (stop and stop.is_set()):
        sleep(rng.uniform(*quiet_s))
        if time.monotonic() >= until:
            break
        name = names[i % len(names)] if order == "cycle" else rng.choice(names)
        i += 1
        heals = [nemesis.start(name)]
        count += 1
        if combine and rng.random() < combine:
            # Not two partitions (one filter table), nor a membership change during a whole-cluster crash.
            others = [n for n in names if n != name and not (n in PARTITIONS and name in PARTITIONS)
                      and {n, name} != {"membership", "crash-all"}]
            if others:
                heals.append(nemesis.start(rng.choice(others)))
                count += 1
        if name not in MEMBERSHIP or len(heals) > 1:
            time.sleep(rng.uniform(*fault_s))
        for heal in reversed(heals):
            heal()
        if rounds and i >= rounds * len(names):
            sleep(rng.uniform(*quiet_s))
            break
    return count
