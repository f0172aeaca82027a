# -*- test-case-name: tests.node.test_cli -*-
"""
The server role of mgmt.py: start, join, list, kill, stop, restart, remove,
rebuild.

``rebuild`` brings back a node whose data is lost or cannot be trusted (it
fail-stopped on a checksum mismatch, a truncated file, an old format) from
the others, in one command: it stops the node, removes it from the cluster
through a healthy member, wipes its data dir, starts it again as a joiner
and joins it back; it catches up from the leader (by snapshot when the log
has been compacted) and is promoted to voter.  The removal comes first
because a voter that has forgotten its votes and log must never vote again
under its old identity: it could elect a second leader in a term.

Nodes run as twistd daemons (``twistd --pidfile ... kvd ...``) whose
pidfile, log and data live under KVD_HOME (kvd.cli.home).  Everything here
talks to nodes only through their client port (kvd.cli.client): PING to
know a node is up, INFO raft for its state, and the admin commands
KVD.CLUSTER, KVD.JOIN, KVD.REMOVE and KVD.MEMBERS.

Every wait is bounded by a deadline and every signal goes to a pid read from
a pidfile under KVD_HOME, checked first (kvd.cli.home.looks_like_node).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from kvd.errors import Code
from kvd.address import PEER_PORT_OFFSET
from kvd.cli.client import NodeClient, node_error, normalize_host, to_text
from kvd.cli.errors import LOCAL_STATE, NO_QUORUM, PROCESS, TIMEOUT, UNREACHABLE, USAGE, CliError
from kvd.cli.home import IN_CHECKOUT, KILL, REPO_ROOT, TERM, Home, NodeRecord, port_free, signal_pid, wait_gone

Echo = Callable[[str], None]

#: Seconds for a freshly started node to answer PING (twistd import + LMDB open).
START_TIMEOUT_S = 30.0
#: Seconds for a graceful stop (the node first hands leadership over).
STOP_TIMEOUT_S = 20.0
#: Seconds to keep retrying KVD.JOIN / KVD.REMOVE while there is no leader yet.
MEMBERSHIP_TIMEOUT_S = 30.0
#: Seconds for a new node to see a leader before start/join return (not an error when exceeded).
SETTLE_TIMEOUT_S = 15.0
#: Per-node timeouts for the status queries of ``list``: a dead node must not slow the table down.
STATUS_TIMEOUT_S = 3.0
#: Seconds ``rebuild`` waits for the rebuilt node to be a voter again (past it: not an error, it says so).
REBUILD_CATCH_UP_S = 60.0

DEFAULT_TICK_MS = 50
DEFAULT_ELECTION_TICKS = 8


def _launch_cwd() -> str:
    # twistd finds the kvd dropin through sys.path; from a checkout that is the
    # repo root, otherwise (pip install) the installed twisted/plugins.
    return REPO_ROOT if IN_CHECKOUT else os.getcwd()


def _log_hint(logfile: str) -> str:
    """The most telling line of a node's log: its last error, else its last line."""
    try:
        with open(logfile, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if re.search(r"(Error|Exception|refus|Cannot|cannot|in use)", line):
            return line[-300:]
    return lines[-1][-300:] if lines else ""


# ================================================================ processes
def launch(rec: NodeRecord, echo: Echo, timeout_s: float = START_TIMEOUT_S) -> int:
    """Start rec's node as a daemon and return its pid once it answers PING."""
    pid = rec.running_pid()
    if pid is not None:
        return pid
    # A pidfile left by a crash (kill -9) would make twistd refuse to start
    # when the OS left the corpse unreaped; it is ours and stale, so drop it.
    if os.path.exists(rec.pidfile):
        os.unlink(rec.pidfile)
    for port, what in ((rec.client_port, "client"), (rec.peer_port, "peer")):
        if not port_free(rec.host, port):
            raise CliError(
                PROCESS,
                "cannot start %s: its %s port %s:%d is in use by another program; pick another -h" % (rec.id, what, rec.host, port),
            )
    os.makedirs(rec.data_dir, exist_ok=True)
    ensure_peer_certificate(rec)
    env = dict(os.environ)
    if IN_CHECKOUT:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    argv = rec.twistd_argv(sys.executable)
    try:
        # twistd forks the daemon and its parent exits: this returns quickly.
        done = subprocess.run(
            argv, cwd=_launch_cwd(), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        stuck = rec.running_pid()
        if stuck is not None:  # a daemon that never reported ready: ours, so end it
            signal_pid(stuck, KILL)
            wait_gone(stuck, 5.0)
        raise CliError(PROCESS, "twistd did not daemonize %s within %gs%s; see %s" % (rec.id, timeout_s, " (killed it)" if stuck else "", rec.logfile)) from None
    except OSError as e:
        raise CliError(PROCESS, "cannot run %s (%s)" % (argv[0], e)) from None
    if done.returncode != 0:
        output = [line for line in done.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
        reason = output[-1].strip() if output else "exit status %d" % done.returncode
        where = (" (log: %s)" % rec.logfile) if os.path.exists(rec.logfile) else ""
        raise CliError(PROCESS, "node %s failed to start: %s%s" % (rec.id, reason, where))
    return wait_listening(rec, timeout_s)


def ensure_peer_certificate(rec: NodeRecord) -> None:
    """
    The node's peer certificate (CN = its id) from the cluster CA in KVD_HOME/tls, made now if
    missing or stale (a restart after the CA was replaced gets a new one).  ``start`` makes the CA;
    a node restarted from a KVD_HOME older than peer TLS gets one here too.
    """
    from kvd.cli.certs import CertDir, CertError

    certs = CertDir(os.path.join(rec.home, "tls"))
    if rec.kind != "seed":
        check_ca_for_joiner(rec.home, rec.id)
    try:
        certs.ensure_ca(rec.cluster_id)
        certs.ensure_node(rec.id, rec.directory)
    except (CertError, OSError) as e:
        raise CliError(LOCAL_STATE, "cannot make the peer certificate of %s: %s" % (rec.id, e)) from None


def check_ca_for_joiner(home_root: str, node_id: str) -> None:
    """A joiner needs the cluster's CA here (a CA made here would be another cluster's: its peers would refuse it)."""
    from kvd.cli.certs import CertDir

    certs = CertDir(os.path.join(home_root, "tls"))
    if not certs.has_ca() and not os.path.exists(os.path.join(home_root, "seed.json")):
        raise CliError(
            LOCAL_STATE,
            "no cluster CA in %s to give %s its peer certificate: join with the token `start` wrote "
            "(--token-file FILE or $KVD_JOIN_TOKEN), or copy ca.crt and ca.key from the seed's KVD_HOME/tls there" % (certs.root, node_id),
        )


def wait_listening(rec: NodeRecord, timeout_s: float) -> int:
    """Poll until the node answers PING; fail (and kill what we started) at the deadline."""
    deadline = time.monotonic() + timeout_s
    pid = None
    while time.monotonic() < deadline:
        pid = rec.pid()
        if pid is not None and rec.running_pid() is None:
            hint = _log_hint(rec.logfile)
            raise CliError(PROCESS, "node %s exited while starting: %s (log: %s)" % (rec.id, hint or "no reason logged", rec.logfile))
        if pid is not None:
            try:
                with NodeClient(rec.id, timeout=2.0, connect_timeout=0.5) as client:
                    if client.ping():
                        return pid
            except CliError:
                pass  # not listening yet
        time.sleep(0.1)
    pid = rec.running_pid()
    if pid is not None:
        # Half started and silent: we started it, so we clean it up.
        signal_pid(pid, KILL)
        wait_gone(pid, 5.0)
    hint = _log_hint(rec.logfile)
    raise CliError(
        PROCESS,
        "node %s did not answer on its client port within %gs%s; see its log %s%s"
        % (rec.id, timeout_s, " and was killed" if pid else "", rec.logfile, (" (last: %s)" % hint) if hint else ""),
    )


def wait_for_leader(address: str, timeout_s: float) -> Dict[str, str]:
    """INFO raft of address once it knows a leader, or its last INFO (maybe empty) at the deadline."""
    deadline = time.monotonic() + timeout_s
    info: Dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            with NodeClient(address, timeout=2.0, connect_timeout=0.5) as client:
                info = client.info()
        except CliError:
            pass
        # raft_leader (the client address) stays empty while the node has no
        # configuration to look it up in; the id is known from the first append.
        if info.get("raft_leader") or info.get("raft_leader_id"):
            return info
        time.sleep(0.1)
    return info


def stop_process(rec: NodeRecord, timeout_s: float = STOP_TIMEOUT_S) -> Optional[int]:
    """SIGTERM and wait; returns the pid stopped, None if it was not running."""
    pid = rec.running_pid()
    if pid is None:
        return None
    signal_pid(pid, TERM)
    if not wait_gone(pid, timeout_s):
        raise CliError(PROCESS, "node %s (pid %d) did not stop within %gs; crash it with: python3 mgmt.py -r server -c kill -h %s" % (rec.id, pid, timeout_s, rec.id))
    return pid


def kill_process(rec: NodeRecord, timeout_s: float = 10.0) -> Optional[int]:
    pid = rec.running_pid()
    if pid is None:
        return None
    signal_pid(pid, KILL)
    if not wait_gone(pid, timeout_s):
        raise CliError(PROCESS, "node %s (pid %d) is still alive %gs after SIGKILL" % (rec.id, pid, timeout_s))
    return pid


# ================================================================ membership requests
def leader_request(candidates: Sequence[str], command: Sequence, timeout_s: float = MEMBERSHIP_TIMEOUT_S) -> Tuple[str, str]:
    """
    Send a membership command (KVD.JOIN/KVD.REMOVE) to the cluster: try the
    candidates in turn, follow -MOVED to the leader, and retry while there is
    no leader yet (-NOLEADER/-TRYAGAIN certainly did nothing).  Returns
    (the node that answered, its status text).
    """
    deadline = time.monotonic() + timeout_s
    queue = list(dict.fromkeys(candidates))
    last: Optional[CliError] = None
    i = 0
    while time.monotonic() < deadline:
        target = queue[i % len(queue)]
        try:
            # Longer than the node's own wait for a membership change (2 x its request timeout).
            with NodeClient(target, timeout=15.0) as client:
                reply, error = client.raw_error(*command)
        except CliError as e:
            if e.code != UNREACHABLE:
                raise
            last = e
            i += 1
            if i % len(queue) == 0:
                time.sleep(0.2)
            continue
        if error is None:
            return target, to_text(reply)
        code, _, rest = error.partition(" ")
        if code == Code.MOVED and rest.strip():
            leader = rest.strip()
            if leader not in queue:
                queue.insert(0, leader)
            i = queue.index(leader)
            continue
        last = node_error(target, error)
        if last.code != NO_QUORUM:
            raise last
        time.sleep(0.3)
    if last is None:
        last = CliError(NO_QUORUM, "no leader answered %s within %gs" % (command[0], timeout_s))
    raise last


# ================================================================ commands
def start(home: Home, address: str, echo: Echo, expect: int = 3, cluster_id: Optional[str] = None, tick_ms: Optional[int] = None, election_ticks: Optional[int] = None) -> None:
    host, port, node_id = normalize_host(address)
    if expect < 1:
        raise CliError(USAGE, "--expect must be at least 1 (the seed itself counts)")
    _check_peer_port(node_id, port)
    existing = home.record(node_id)
    if existing is not None and existing.running_pid() is None and not has_data(existing):
        existing = None  # an earlier start that never got going: start afresh
    if existing is not None:
        pid = existing.running_pid()
        if pid is not None:
            raise CliError(LOCAL_STATE, "node %s is already running (pid %d); use -c restart or -c stop" % (node_id, pid))
        raise CliError(
            LOCAL_STATE,
            "node %s was started before and has data in %s; start it again with -c restart -h %s, "
            "or delete that directory to start from scratch" % (node_id, existing.directory, node_id),
        )
    _check_ports_free(node_id, host, port)
    rec = home.new_record(
        id=node_id,
        host=host,
        client_port=port,
        peer_port=port + PEER_PORT_OFFSET,
        cluster_id=cluster_id or "kvd-" + secrets.token_hex(4),
        kind="seed",
        expect=expect,
        tick_ms=tick_ms or DEFAULT_TICK_MS,
        election_ticks=election_ticks or DEFAULT_ELECTION_TICKS,
    )
    home.save(rec)
    home.save_seed(node_id, rec.cluster_id)
    pid = launch(rec, echo)
    echo("started seed node %s (pid %d)" % (node_id, pid))
    _describe(rec, echo)
    token_path = write_join_token(home)
    echo("  peer TLS:    cluster CA %s; join token for nodes on other machines: %s (secret: it makes member certificates)" % (rec.peer_ca, token_path))
    if expect == 1:
        info = wait_for_leader(node_id, SETTLE_TIMEOUT_S)
        echo("  state:       %s" % ("leader of a one-node cluster" if info.get("raft_role") == "leader" else "no leader yet (check: python3 mgmt.py -r server -c list)"))
    else:
        echo("  state:       waiting for %d more node(s): python3 mgmt.py -r server -c join -h <host:port>" % (expect - 1))


def write_join_token(home: Home) -> str:
    """The cluster's join token (kvd.cli.certs) into KVD_HOME/tls/join-token, 0600; its path."""
    from kvd.cli.certs import CertDir, write_private

    certs = CertDir(home.tls_dir)
    path = os.path.join(certs.root, "join-token")
    write_private(path, (certs.token() + "\n").encode("ascii"))
    return path


def install_join_token(home: Home, token: str) -> None:
    from kvd.cli.certs import CertDir, CertError

    try:
        CertDir(home.tls_dir).install_token(token)
    except (CertError, OSError) as e:
        raise CliError(USAGE, "cannot use the join token: %s" % e) from None


def _check_peer_port(node_id: str, port: int) -> None:
    if port + PEER_PORT_OFFSET > 65535:
        raise CliError(USAGE, "the client port of %s is too high: its peer port would be %d (> 65535); use a port below %d" % (node_id, port + PEER_PORT_OFFSET, 65536 - PEER_PORT_OFFSET))


def has_data(rec: NodeRecord) -> bool:
    """Did this node ever run (LMDB creates its files at the first start)?"""
    try:
        return bool(os.listdir(rec.data_dir))
    except FileNotFoundError:
        return False


def _check_ports_free(node_id: str, host: str, port: int) -> None:
    # Before anything is recorded: a start that cannot happen leaves no trace.
    for number, what in ((port, "client"), (port + PEER_PORT_OFFSET, "peer")):
        if not port_free(host, number):
            raise CliError(PROCESS, "cannot start %s: its %s port %s:%d is in use (or the address is not this machine's); pick another -h" % (node_id, what, host, number))


def _describe(rec: NodeRecord, echo: Echo) -> None:
    echo("  id:          %s" % rec.id)
    echo("  client port: %s:%d (Redis protocol: redis-cli -p %d)" % (rec.host, rec.client_port, rec.client_port))
    echo("  peer port:   %s:%d (Raft, client port + %d)" % (rec.host, rec.peer_port, PEER_PORT_OFFSET))
    echo("  cluster id:  %s" % rec.cluster_id)
    echo("  data dir:    %s" % rec.data_dir)
    echo("  log file:    %s" % rec.logfile)


def join(home: Home, address: str, echo: Echo, seed: Optional[str] = None, tick_ms: Optional[int] = None, election_ticks: Optional[int] = None, token: Optional[str] = None) -> None:
    host, port, node_id = normalize_host(address)
    _check_peer_port(node_id, port)
    if token:
        install_join_token(home, token)
    seed_record = home.seed()
    if seed:
        candidates = [normalize_host(seed)[2]]
    else:
        # The recorded seed first; any other node started from here knows the cluster too.
        candidates = ([seed_record["seed"]] if seed_record else []) + [r.id for r in home.records() if r.id != node_id]
        candidates = [c for c in dict.fromkeys(candidates) if c != node_id]
        if not candidates:
            raise CliError(USAGE, "no seed recorded in KVD_HOME=%s; pass --seed HOST:PORT of any node of the cluster" % home.root)
    cluster_id, via = _cluster_of(candidates)
    check_ca_for_joiner(home.root, node_id)  # before anything is recorded here
    rec = home.record(node_id)
    if rec is not None and rec.running_pid() is None and not has_data(rec):
        rec = None  # an earlier join that never got going: start afresh
    if rec is not None and rec.cluster_id != cluster_id:
        raise CliError(
            LOCAL_STATE,
            "node %s already has data of cluster %s, but %s belongs to %s; delete %s to join afresh" % (node_id, rec.cluster_id, via, cluster_id, rec.directory),
        )
    if rec is None:
        _check_ports_free(node_id, host, port)
        timing = _seed_timing(home, seed_record)
        rec = home.new_record(
            id=node_id,
            host=host,
            client_port=port,
            peer_port=port + PEER_PORT_OFFSET,
            cluster_id=cluster_id,
            kind="join",
            seed=via,
            tick_ms=tick_ms or timing[0],
            election_ticks=election_ticks or timing[1],
        )
        home.save(rec)
    pid = launch(rec, echo)
    echo("started node %s (pid %d), joining cluster %s through %s" % (node_id, pid, cluster_id, via))
    _describe(rec, echo)
    ask_to_join(node_id, rec.member_address, [via] + [c for c in candidates if c != via], echo)


def ask_to_join(node_id: str, member_address: str, candidates: Sequence[str], echo: Echo) -> None:
    """
    The running node ``node_id`` asks the cluster (``candidates``, the node it learnt the
    cluster id from first) to add it with KVD.JOIN, then reports its state.  Shared by
    local processes and ``--docker`` containers (kvd.cli.docker).
    """
    info = _info_or_empty(node_id)
    if node_id in info.get("raft_members", "").split(","):
        echo("  state:       already a member (%s)" % info.get("raft_role", "?"))
        return
    _, status = leader_request(candidates, ("KVD.JOIN", node_id, member_address))
    if status.startswith("waiting"):
        echo("  state:       %s" % status)
        return
    info = wait_for_leader(node_id, SETTLE_TIMEOUT_S)
    leader_name = info.get("raft_leader") or info.get("raft_leader_id")
    leader = ("leader is %s" % leader_name) if leader_name else "no leader yet"
    if status == "bootstrapped":
        echo("  state:       the cluster is bootstrapped; %s" % leader)
    else:
        echo("  state:       %s: added as a learner, it becomes a voter once it has caught up (now %s; %s)" % (status, info.get("raft_role") or "starting", leader))


def _seed_timing(home: Home, seed_record: Optional[dict]) -> Tuple[int, int]:
    # Every node of a cluster should tick alike; copy the local seed's timing.
    if seed_record:
        rec = home.record(seed_record.get("seed", ""))
        if rec is not None:
            return rec.tick_ms, rec.election_ticks
    return DEFAULT_TICK_MS, DEFAULT_ELECTION_TICKS


def _cluster_of(candidates: Sequence[str]) -> Tuple[str, str]:
    last: Optional[CliError] = None
    for address in candidates:
        try:
            with NodeClient(address, timeout=5.0) as client:
                return to_text(client.call("KVD.CLUSTER")), address
        except CliError as e:
            last = e
    assert last is not None
    if last.code == UNREACHABLE:
        raise CliError(UNREACHABLE, "cannot reach the seed %s to learn the cluster id; start it first or pass --seed HOST:PORT of a running node" % ", ".join(candidates))
    raise last


def _info_or_empty(address: str, timeout_s: float = STATUS_TIMEOUT_S) -> Dict[str, str]:
    try:
        with NodeClient(address, timeout=timeout_s, connect_timeout=1.0) as client:
            return client.info()
    except CliError:
        return {}


def kill(home: Home, address: str, echo: Echo) -> None:
    rec = home.require(normalize_host(address)[2])
    pid = kill_process(rec)
    if pid is None:
        echo("node %s is not running; nothing to kill" % rec.id)
        return
    echo("killed node %s (pid %d, SIGKILL); its data is kept and it is still a member: python3 mgmt.py -r server -c restart -h %s" % (rec.id, pid, rec.id))


def stop(home: Home, address: str, echo: Echo) -> None:
    rec = home.require(normalize_host(address)[2])
    pid = stop_process(rec)
    if pid is None:
        echo("node %s is not running; nothing to stop" % rec.id)
        return
    echo("stopped node %s (pid %d); it is still a member: python3 mgmt.py -r server -c restart -h %s" % (rec.id, pid, rec.id))


def restart(home: Home, address: str, echo: Echo) -> None:
    rec = home.require(normalize_host(address)[2])
    stopped = stop_process(rec)
    pid = launch(rec, echo)
    echo("%s node %s (pid %d) on its data in %s; log: %s" % ("restarted" if stopped else "started", rec.id, pid, rec.data_dir, rec.logfile))


def remove(home: Home, address: str, echo: Echo) -> None:
    node_id = normalize_host(address)[2]
    rec = home.record(node_id)
    seed_record = home.seed()
    candidates = [r.id for r in home.records() if r.id != node_id] + ([seed_record["seed"]] if seed_record else []) + [node_id]
    others = [c for c in candidates if c != node_id]
    already = _confirm_removed(node_id, others, 0)
    try:
        if already is not None:
            answered, status = already, "it was not a member"
        else:
            answered, status = leader_request(candidates, ("KVD.REMOVE", node_id))
    except CliError as e:
        # A leader that removes itself steps down and may never see the
        # change applied, so it answers TIMEOUT: ask the others what happened.
        if e.code != TIMEOUT:
            raise
        answered = _confirm_removed(node_id, others, SETTLE_TIMEOUT_S)
        if answered is None:
            raise CliError(TIMEOUT, "the removal of %s was not confirmed in time (%s); check with: python3 mgmt.py -r server -c list" % (node_id, e.message)) from None
        status = "the old leader stepped down; confirmed"
    echo("removed %s from the cluster (%s, via %s)" % (node_id, status, answered))
    if seed_record and seed_record.get("seed") == node_id and answered != node_id:
        # Later joins default to the recorded seed: point it at a member.
        home.save_seed(answered, seed_record.get("cluster_id", ""))
    if rec is None:
        echo("%s was not started from this KVD_HOME; stop its process where it runs" % node_id)
        return
    try:
        pid = stop_process(rec, timeout_s=10.0)
    except CliError:
        pid = kill_process(rec)  # it is out of the cluster already: a crash loses nothing
    archived = home.archive(rec)
    echo("%s; its directory moved to %s" % (("stopped it (pid %d)" % pid) if pid else "it was not running", archived))


def rebuild(home: Home, address: str, echo: Echo, seed: Optional[str] = None, catch_up_s: float = REBUILD_CATCH_UP_S) -> None:
    """
    Stop the node, remove it through a healthy member (``seed``, else the
    nodes of this KVD_HOME), wipe its data dir, start it again and join it back.
    """
    node_id = normalize_host(address)[2]
    rec = home.require(node_id)
    seed_record = home.seed()
    known = ([normalize_host(seed)[2]] if seed else []) + [r.id for r in home.records()] + ([seed_record["seed"]] if seed_record else [])
    others = [c for c in dict.fromkeys(known) if c != node_id]
    if not others:
        raise CliError(USAGE, "rebuild copies %s from the other members, and KVD_HOME=%s knows no other node of its cluster; "
                              "pass --seed HOST:PORT of a member" % (node_id, home.root))
    # A member that answers, before anything is touched: nothing to copy from, nothing done.
    cluster_id, via = _cluster_of(others)
    if cluster_id != rec.cluster_id:
        raise CliError(LOCAL_STATE, "node %s belongs to cluster %s, but %s answers for cluster %s; nothing was changed" % (node_id, rec.cluster_id, via, cluster_id))
    candidates = [via] + [c for c in others if c != via]
    try:
        pid = stop_process(rec)
    except CliError:
        pid = kill_process(rec)  # its data is about to be wiped: a crash loses nothing
    echo(("stopped node %s (pid %d)" % (node_id, pid)) if pid else ("node %s was not running" % node_id))
    if _confirm_removed(node_id, candidates, 0) is None:
        try:
            answered, _ = leader_request(candidates, ("KVD.REMOVE", node_id))
        except CliError as e:
            if e.code != TIMEOUT:
                raise CliError(e.code, "%s; %s is stopped with its data kept, still a member" % (e.message, node_id)) from None
            answered = _confirm_removed(node_id, candidates, SETTLE_TIMEOUT_S)
            if answered is None:
                raise CliError(TIMEOUT, "the removal of %s was not confirmed in time (%s); its data is kept: run rebuild again" % (node_id, e.message)) from None
        echo("removed %s from the cluster (via %s)" % (node_id, answered))
    else:
        echo("%s is not a member of the cluster (per %s)" % (node_id, via))
    if os.path.exists(rec.data_dir):
        shutil.rmtree(rec.data_dir)
    echo("wiped its data dir %s" % rec.data_dir)
    # From now on it is a joiner: a seed's --bootstrap-expect would make it wait to found a new cluster.
    rec.kind, rec.expect, rec.seed = "join", 0, via
    home.save(rec)
    if seed_record and seed_record.get("seed") == node_id:
        home.save_seed(via, rec.cluster_id)  # later joins default to the recorded seed: point it at a member
    pid = launch(rec, echo)
    echo("started node %s again (pid %d) on an empty data dir, joining through %s" % (node_id, pid, via))
    ask_to_join(node_id, rec.member_address, candidates, echo)
    info = _wait_voter(node_id, catch_up_s)
    if node_id in info.get("raft_voters", "").split(","):
        echo("  rebuilt:     %s is a voter again, applied up to index %s" % (node_id, info.get("raft_applied_index", "?")))
    else:
        echo("  rebuilt:     %s is still catching up (%s at applied index %s); check with: python3 mgmt.py -r server -c list"
             % (node_id, info.get("raft_role") or "not answering", info.get("raft_applied_index", "?")))


def _wait_voter(node_id: str, timeout_s: float) -> Dict[str, str]:
    """INFO raft of node_id once its configuration lists it as a voter, or its last INFO at the deadline."""
    deadline = time.monotonic() + timeout_s
    info: Dict[str, str] = {}
    while True:
        info = _info_or_empty(node_id) or info
        if node_id in info.get("raft_voters", "").split(",") or time.monotonic() >= deadline:
            return info
        time.sleep(0.2)


def _confirm_removed(node_id: str, candidates: Sequence[str], timeout_s: float) -> Optional[str]:
    """Poll other members until one that knows a leader no longer lists node_id; return it, or None at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:  # at least one pass, even with timeout 0
        for address in candidates:
            try:
                with NodeClient(address, timeout=STATUS_TIMEOUT_S, connect_timeout=1.0) as client:
                    rows = client.members()
            except CliError:
                continue
            if rows and any(r.get("leader") for r in rows) and node_id not in [r.get("id") for r in rows]:
                return address
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


# ================================================================ list
def gather(home: Home, address: Optional[str] = None) -> Tuple[dict, Optional[CliError]]:
    """
    The cluster as seen from any member that answers: KVD.MEMBERS (the
    leader's view when the leader answers: it alone knows who is up), then
    INFO raft of each member, plus the nodes started from KVD_HOME that are
    not members.  Returns (view, the error if no member answered).
    """
    records = {r.id: r for r in home.records()}
    seed_record = home.seed()
    if address:
        candidates = [normalize_host(address)[2]]
    else:
        candidates = list(dict.fromkeys(([seed_record["seed"]] if seed_record else []) + sorted(records)))
    members: Optional[List[dict]] = None
    source = None
    last: Optional[CliError] = None
    infos: Dict[str, Dict[str, str]] = {}
    for candidate in candidates:
        try:
            with NodeClient(candidate, timeout=STATUS_TIMEOUT_S, connect_timeout=1.0) as client:
                rows = client.members()
                infos[candidate] = client.info()
        except CliError as e:
            last = e
            continue
        if members is None or (rows and not members):
            members, source = rows, candidate
        if rows:
            break
    if members:
        leader = next((m for m in members if m.get("leader")), None)
        if leader and leader.get("client") != source:
            try:
                with NodeClient(leader["client"], timeout=STATUS_TIMEOUT_S, connect_timeout=1.0) as client:
                    members, source = client.members(), leader["client"]
            except CliError:
                pass  # the follower's view will do, without up/down
    members = members or []
    member_ids = [m.get("id") for m in members]
    nodes = []
    leader_address = None
    cluster_id = None
    for m in members:
        client_address = m.get("client") or m.get("id")
        info = infos.get(client_address) or _info_or_empty(client_address)
        rec = records.get(m.get("id"))
        if "up" in m:
            status = "up" if m["up"] else "down"
        else:
            status = "up" if info else "down"
        if not info and rec is not None and rec.running_pid() is None:
            status = "stopped"
        # Name a leader only if it answers as one: right after a leader dies
        # the members' view may still point at it.
        if m.get("leader") and status == "up" and info.get("raft_role") == "leader":
            leader_address = client_address
        cluster_id = cluster_id or info.get("raft_cluster_id")
        nodes.append(_row(m.get("id"), client_address, m.get("peer", ""), info, status, True, bool(m.get("voter")), rec))
    for node_id, rec in sorted(records.items()):
        if node_id in member_ids:
            continue
        info = _info_or_empty(node_id) if rec.running_pid() else {}
        status = "stopped" if rec.running_pid() is None else ("running" if info else "not answering")
        cluster_id = cluster_id or info.get("raft_cluster_id")
        # Without any member's view we cannot tell whether it is a member (None).
        nodes.append(_row(node_id, node_id, "%s:%d" % (rec.host, rec.peer_port), info, status, False if members else None, False, rec))
    voters = sum(1 for n in nodes if n["member"] and n["voter"]) if members else None
    view = {
        "cluster_id": cluster_id or (seed_record or {}).get("cluster_id"),
        "leader": leader_address,
        "voters": voters,
        "quorum": voters // 2 + 1 if voters else None,
        "source": source,
        "nodes": nodes,
    }
    error = None
    if not candidates:
        error = CliError(UNREACHABLE, "no node was started from KVD_HOME=%s; start one (-c start -h HOST:PORT) or pass -h HOST:PORT of a running node" % home.root)
    elif not members and not any(n["role"] for n in nodes):
        error = last
        if error is None or error.code == UNREACHABLE:
            error = CliError(UNREACHABLE, "no node answered (tried %s); restart stopped nodes with -c restart -h HOST:PORT" % ", ".join(candidates))
    return view, error


def _int(info: Dict[str, str], key: str) -> Optional[int]:
    try:
        return int(info[key])
    except (KeyError, ValueError):
        return None


def _row(node_id, client, peer, info, status, member, voter, rec) -> dict:
    role = info.get("raft_role") or None
    return {
        "id": node_id,
        "client": client,
        "peer": peer or info.get("raft_peer_address", ""),
        "role": role,
        "status": status,
        "member": member,
        "voter": voter,
        "term": _int(info, "raft_term"),
        "last_index": _int(info, "raft_last_index"),
        "commit_index": _int(info, "raft_commit_index"),
        "applied_index": _int(info, "raft_applied_index"),
        "local": rec is not None,
        "pid": rec.running_pid() if rec is not None else None,
    }


def format_view(view: dict) -> str:
    headers = ["NODE", "ADDRESS", "ROLE", "STATUS", "TERM", "LAST LOG", "COMMIT", "APPLIED", "PEER PORT"]
    rows = []
    for n in view["nodes"]:
        role = n["role"] or ("(%s)" % ("voter" if n["voter"] else "learner") if n["member"] else "-")
        if n["member"] is False:
            role = "%s, not a member" % role if n["role"] else "not a member"
        peer_port = n["peer"].rpartition(":")[2] if n["peer"] else "-"
        rows.append([n["id"], n["client"], role, n["status"]] + ["-" if n[k] is None else str(n[k]) for k in ("term", "last_index", "commit_index", "applied_index")] + [peer_port])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    if view["voters"] is None:
        title = "cluster %s: membership unknown (no member answered)" % (view["cluster_id"] or "?")
    else:
        title = "cluster %s: leader %s, %d voter(s), quorum %s" % (view["cluster_id"] or "?", view["leader"] or "none", view["voters"], view["quorum"] or "-")
    lines = [title]
    for r in [headers] + rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    if not rows:
        lines.append("(no nodes)")
    return "\n".join(lines)


def list_nodes(home: Home, address: Optional[str], echo: Echo, as_json: bool = False) -> None:
    import json

    view, error = gather(home, address)
    if as_json:
        echo(json.dumps(view, indent=2, sort_keys=True))
    elif view["nodes"] or error is None:
        echo(format_view(view))
    if error is not None:
        raise error

