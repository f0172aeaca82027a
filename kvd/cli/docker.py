# -*- test-case-name: tests.node.test_cli -*-
"""
The server role of ``mgmt.py --docker [PROJECT]`` (or ``KVD_DOCKER=PROJECT``): the
nodes are containers of a compose project instead of local twistd processes.

- ``-h`` names a node as ``name:port`` (its id on the project's network, e.g.
  ``node1:7001``) or as the ``host:port`` its client port is published on
  (e.g. ``127.0.0.1:7001``).  For start and join, ``name:port`` publishes the
  client port on 127.0.0.1:port, and ``IP:port`` makes a node ``node<port>:<port>``
  published on IP:port.
- start creates the project's network (if needed) and a seed container
  (``--bootstrap-expect`` from --expect); join creates a node container and asks
  the cluster to add it with KVD.JOIN, through kvd.cli.server's own join code.
- kill, stop, restart are docker kill, stop, restart of the node's container.
- remove takes the node out of the membership through the cluster (KVD.REMOVE, as
  kvd.cli.server.remove does), then stops and deletes its container and its data
  volume (a named volume only; a bind-mounted host directory is left alone).
- list asks a member through its published port, as for local nodes, and shows
  containers that are not running as stopped.

The host reaches nodes through their published ports: every node id of the
project is routed there (kvd.cli.client.use_routes), so redirects and KVD.MEMBERS,
which name nodes by id, work from the host unchanged.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from typing import Callable, Dict, List, Optional, Tuple

from kvd.cli import client as cli_client
from kvd.cli import server as cli_server
from kvd.cli import docker_ops
from kvd.address import PEER_PORT_OFFSET
from kvd.cli.client import NodeClient, normalize_host
from kvd.cli.errors import LOCAL_STATE, PROCESS, TIMEOUT, UNREACHABLE, USAGE, CliError

Echo = Callable[[str], None]

def _published(node: dict) -> Optional[Tuple[str, int]]:
    if node["published"] is None:
        return None
    host, port = node["published"]
    return ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host), port


def _is_ip(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def plan_node(address: str) -> Tuple[str, str, Tuple[str, int]]:
    """-h of start/join -> (container name suffix, listen = node id, published host address)."""
    host, port, _ = normalize_host(address)
    if port + PEER_PORT_OFFSET > 65535:
        raise CliError(USAGE, "the client port %d is too high: its peer port would be past 65535" % port)
    if _is_ip(host):
        name = "node%d" % port
        return name, "%s:%d" % (name, port), ("127.0.0.1" if host == "localhost" else host, port)
    return host, "%s:%d" % (host, port), ("127.0.0.1", port)


class Project:
    """The node containers of one project, and the routes from their ids to their published ports."""

    def __init__(self, name: str) -> None:
        self.name = name
        problem = docker_ops.engine_problem()
        if problem is not None:
            raise CliError(PROCESS, "--docker needs Docker: %s" % problem)
        self.refresh()

    def refresh(self) -> None:
        try:
            self.nodes = docker_ops.project_nodes(self.name)
        except docker_ops.DockerError as e:
            raise CliError(PROCESS, str(e)) from None
        routes = {}
        for node in self.nodes:
            where = _published(node)
            if where is not None:
                routes[node["listen"]] = where
        cli_client.use_routes(routes)

    def find(self, address: str) -> Optional[dict]:
        """The node -h names: by id (name:port), published host:port, or container/service name."""
        for node in self.nodes:
            if address in (node["listen"], node["container"], node["service"]):
                return node
        host, port, node_id = normalize_host(address)
        for node in self.nodes:
            if node["listen"] == node_id or _published(node) == (host, port):
                return node
        return None

    def require(self, address: str) -> dict:
        node = self.find(address)
        if node is None:
            known = ", ".join(n["listen"] for n in self.nodes) or "none"
            raise CliError(LOCAL_STATE, "no node %s in docker project %s (its nodes: %s)" % (address, self.name, known))
        return node

    def running(self) -> List[str]:
        return [n["listen"] for n in self.nodes if n["state"] == "running" and cli_client.routed(n["listen"])]

    def docker(self, action: Callable[[str], None], node: dict) -> None:
        try:
            action(node["container"])
        except docker_ops.DockerError as e:
            raise CliError(PROCESS, str(e)) from None

    def create(self, address: str, echo: Echo, **kwargs) -> str:
        """Create and start a node container; its id once it answers through its published port."""
        name, listen, publish = plan_node(address)
        existing = self.find(listen)
        if existing is not None:
            raise CliError(LOCAL_STATE, "node %s already exists in docker project %s (container %s, %s); use -c restart" % (listen, self.name, existing["container"], existing["state"]))
        if not docker_ops.image_exists():
            raise CliError(PROCESS, "the image %s is missing; build it with: make docker-image" % docker_ops.DEFAULT_IMAGE)
        if not cli_server.port_free(publish[0], publish[1]):
            raise CliError(PROCESS, "cannot publish %s on %s:%d: the port is in use; pick another -h" % (listen, publish[0], publish[1]))
        try:
            container = docker_ops.run_node(self.name, name, listen, publish=publish, **kwargs)
        except docker_ops.DockerError as e:
            raise CliError(PROCESS, "cannot create the container of %s: %s" % (listen, e)) from None
        self.refresh()
        wait_answering(listen, container)
        echo("started node %s in container %s (project %s)" % (listen, container, self.name))
        echo("  client port: %s:%d (redis-cli -h %s -p %d)" % (publish[0], publish[1], publish[0], publish[1]))
        echo("  network:     %s_kvd, data volume %s_%s-data" % (self.name, self.name, name))
        return listen


def wait_answering(node_id: str, container: str, timeout_s: float = cli_server.START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with NodeClient(node_id, timeout=2.0, connect_timeout=0.5) as client:
                if client.ping():
                    return
        except CliError:
            pass
        time.sleep(0.2)
    raise CliError(PROCESS, "node %s did not answer within %gs; see: docker logs %s" % (node_id, timeout_s, container))


# ================================================================ commands
def start(project: str, address: str, echo: Echo, expect: int = 3, cluster_id: Optional[str] = None, tick_ms=None, election_ticks=None) -> None:
    p = Project(project)
    cluster_id = cluster_id or "kvd-" + secrets.token_hex(4)
    listen = plan_node(address)[1]
    kwargs = dict(cluster_id=cluster_id, extra_args=_timing(tick_ms, election_ticks))
    if expect == 1:
        kwargs["initial_cluster"] = listen
    else:
        kwargs["bootstrap_expect"] = expect
    p.create(address, echo, **kwargs)
    echo("  cluster id:  %s" % cluster_id)
    if expect == 1:
        info = cli_server.wait_for_leader(listen, cli_server.SETTLE_TIMEOUT_S)
        echo("  state:       %s" % ("leader of a one-node cluster" if info.get("raft_role") == "leader" else "no leader yet"))
    else:
        echo("  state:       waiting for %d more node(s): python3 mgmt.py --docker %s -r server -c join -h <name:port>" % (expect - 1, project))


def join(project: str, address: str, echo: Echo, seed: Optional[str] = None, tick_ms=None, election_ticks=None) -> None:
    p = Project(project)
    listen = plan_node(address)[1]
    if seed:
        candidates = [p.require(seed)["listen"]]
    else:
        candidates = [n for n in p.running() if n != listen]
        if not candidates:
            raise CliError(UNREACHABLE, "docker project %s has no running node to join; start one with -c start" % project)
    cluster_id, via = cli_server._cluster_of(candidates)
    p.create(address, echo, cluster_id=cluster_id, extra_args=_timing(tick_ms, election_ticks))
    echo("  joining cluster %s through %s" % (cluster_id, via))
    host, port = listen.rsplit(":", 1)
    member = "%s:%s:%d" % (host, port, int(port) + PEER_PORT_OFFSET)
    cli_server.ask_to_join(listen, member, [via] + [c for c in candidates if c != via], echo)


def _timing(tick_ms, election_ticks) -> List[str]:
    return ["--tick-ms", str(tick_ms or cli_server.DEFAULT_TICK_MS), "--election-ticks", str(election_ticks or cli_server.DEFAULT_ELECTION_TICKS)]


def kill(project: str, address: str, echo: Echo) -> None:
    p = Project(project)
    node = p.require(address)
    if node["state"] != "running":
        echo("node %s (container %s) is %s; nothing to kill" % (node["listen"], node["container"], node["state"]))
        return
    p.docker(docker_ops.kill, node)
    echo("killed node %s (docker kill %s); its volume is kept and it is still a member: -c restart -h %s" % (node["listen"], node["container"], node["listen"]))


def stop(project: str, address: str, echo: Echo) -> None:
    p = Project(project)
    node = p.require(address)
    if node["state"] != "running":
        echo("node %s (container %s) is %s; nothing to stop" % (node["listen"], node["container"], node["state"]))
        return
    p.docker(lambda c: docker_ops.stop(c, grace=int(cli_server.STOP_TIMEOUT_S)), node)
    echo("stopped node %s (docker stop %s); it is still a member: -c restart -h %s" % (node["listen"], node["container"], node["listen"]))


def restart(project: str, address: str, echo: Echo) -> None:
    p = Project(project)
    node = p.require(address)
    p.docker(docker_ops.restart, node)
    p.refresh()  # a stopped container shows no published ports: route it now that it runs
    wait_answering(node["listen"], node["container"])
    echo("restarted node %s (docker restart %s) on its volume" % (node["listen"], node["container"]))


def remove(project: str, address: str, echo: Echo) -> None:
    """
    Out of the membership first (through any running member, following the leader), then
    the container: a stopped voter would otherwise stay in the membership, counting
    toward the quorum and never answering.
    """
    p = Project(project)
    node = p.find(address)
    node_id = node["listen"] if node is not None else normalize_host(address)[2]
    others = [n for n in p.running() if n != node_id]
    candidates = others + ([node_id] if node_id in p.running() else [])
    if not candidates:
        raise CliError(UNREACHABLE, "docker project %s has no running node to ask for the removal of %s" % (project, node_id))
    already = cli_server._confirm_removed(node_id, others, 0)
    try:
        if already is not None:
            answered, status = already, "it was not a member"
        else:
            answered, status = cli_server.leader_request(candidates, ("KVD.REMOVE", node_id))
    except CliError as e:
        # A leader that removes itself steps down and may never see the change
        # applied, so it answers TIMEOUT: ask the others what happened.
        if e.code != TIMEOUT:
            raise
        answered = cli_server._confirm_removed(node_id, others, cli_server.SETTLE_TIMEOUT_S)
        if answered is None:
            raise CliError(TIMEOUT, "the removal of %s was not confirmed in time (%s); check with: python3 mgmt.py --docker %s -r server -c list" % (node_id, e.message, project)) from None
        status = "the old leader stepped down; confirmed"
    echo("removed %s from the cluster (%s, via %s)" % (node_id, status, answered))
    if node is None:
        echo("%s has no container in docker project %s; stop it where it runs" % (node_id, project))
        return
    try:
        if node["state"] == "running":
            docker_ops.stop(node["container"], grace=int(cli_server.STOP_TIMEOUT_S))
        volumes = docker_ops.data_volumes(node["container"])
        docker_ops.remove(node["container"])
        for volume in volumes:
            docker_ops.remove_volume(volume)
    except docker_ops.DockerError as e:
        raise CliError(PROCESS, "%s is out of the cluster, but its container was not deleted: %s" % (node_id, e)) from None
    echo("deleted its container %s%s" % (node["container"], " and data volume " + ", ".join(volumes) if volumes else ""))
    if node.get("compose"):
        echo("  %s is a service of the compose file: `docker compose up` would create it again; take it out of the file" % node["service"])


class _NoLocalNodes:
    """What cli_server.gather needs of a Home, for a cluster with no local processes."""

    root = "(docker)"

    def records(self):
        return []

    def seed(self):
        return None


def gather(project: str, address: Optional[str] = None) -> Tuple[dict, Optional[CliError]]:
    """cli_server.gather through a running member, plus the project's containers that are not members or not running."""
    p = Project(project)
    if not p.nodes:
        return {"cluster_id": None, "leader": None, "voters": None, "quorum": None, "source": None, "nodes": []}, CliError(
            UNREACHABLE, "docker project %s has no node containers; start one with: python3 mgmt.py --docker %s -r server -c start -h node1:7001" % (project, project)
        )
    view, error = None, None
    candidates = [p.require(address)["listen"]] if address else (p.running() or [p.nodes[0]["listen"]])
    for candidate in candidates:
        view, error = cli_server.gather(_NoLocalNodes(), candidate)
        if error is None:
            break
    by_id: Dict[str, dict] = {n["listen"]: n for n in p.nodes}
    listed = set()
    for row in view["nodes"]:
        node = by_id.get(row["id"])
        if node is not None:
            listed.add(row["id"])
            row["container"] = node["container"]
            row["published"] = "%s:%d" % _published(node) if _published(node) else None
            if node["state"] != "running":
                row["status"] = "stopped"
    for node in p.nodes:
        if node["listen"] not in listed:
            row = cli_server._row(node["listen"], node["listen"], "", {}, "stopped" if node["state"] != "running" else "running", False if view["voters"] is not None else None, False, None)
            row["container"] = node["container"]
            row["published"] = "%s:%d" % _published(node) if _published(node) else None
            view["nodes"].append(row)
    if error is not None and view["voters"] is None and not p.running():
        error = CliError(UNREACHABLE, "no container of docker project %s is running; restart one with -c restart -h <name:port>" % project)
    return view, error


def list_nodes(project: str, address: Optional[str], echo: Echo, as_json: bool = False) -> None:
    import json

    view, error = gather(project, address)
    if as_json:
        echo(json.dumps(view, indent=2, sort_keys=True))
    elif view["nodes"] or error is None:
        echo(cli_server.format_view(view))
    if error is not None:
        raise error


def any_member(project: str) -> str:
    """A running node of the project, for client commands without -h."""
    p = Project(project)
    running = p.running()
    if not running:
        raise CliError(UNREACHABLE, "docker project %s has no running node with a published client port; pass -h" % project)
    return running[0]


def route(project: str, address: str) -> str:
    """A client command's -h in docker mode: the node's id (dialled through its published port)."""
    p = Project(project)
    node = p.find(address)
    return node["listen"] if node is not None else address
