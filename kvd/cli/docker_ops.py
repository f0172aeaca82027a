"""
kvd on Docker: the operations the docker-compose cluster, its tests and
``mgmt.py --docker`` need, as small functions over the ``docker`` CLI.

Everything here shells out to ``docker`` (and ``docker compose`` or
``docker-compose``, whichever is installed); nothing talks to the engine's API
directly, so there is no dependency beyond the CLI.  Every call is bounded by a
timeout and raises :class:`DockerError` with docker's own message on failure.

    from kvd.cli import docker_ops as d

    problem = d.engine_problem()          # None, or why Docker cannot be used
    d.build_image()                       # docker/build-image.sh: base (once), wheels, docker build
    c = d.Compose("kvdtest1", env={"KVD_PORT_1": "27001", ...})
    c.up()                                # docker compose -p kvdtest1 -f docker-compose.yml up -d
    name = c.container("node1")           # "kvdtest1_node1_1" or "kvdtest1-node1-1"
    d.kill(name); d.start(name); d.restart(name); d.stop(name)
    d.disconnect(c.network, name); d.connect(c.network, name, aliases=["node1"])
    d.exec_resp(name, "127.0.0.1", 7001, "GET", "k")   # asked from inside the container
    d.resp(("127.0.0.1", 27001), "SET", "k", "v")       # asked from the host (both: kvd.resp.client)
    c.down()                              # containers, network and volumes (down -v)

For ``mgmt.py --docker``: :func:`run_node` creates one node container on a
compose project's network (start, join), :func:`project_nodes` lists the node
containers of a project with their state, health and ports (list), and
:func:`kill`, :func:`stop`, :func:`restart` (and :func:`remove`, :func:`remove_volume`
after the cluster let the node go) are the server commands.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from kvd.resp.client import Connection, ReplyError, Simple, arg_bytes, parse_info

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # kvd/cli/ -> the checkout
COMPOSE_FILE = os.path.join(REPO_ROOT, "docker-compose.yml")
BUILD_SCRIPT = os.path.join(REPO_ROOT, "docker", "build-image.sh")
DEFAULT_IMAGE = os.environ.get("KVD_IMAGE", "kvd:latest")
DEFAULT_BASE = os.environ.get("KVD_BASE_IMAGE", "kvd-base:bookworm")
DATA_DIR = "/data"  # the image's volume
LABEL = "io.kvd.node"  # on containers made by run_node: value = the node's --listen address

#: An error reply (``-NOLEADER ...``) from a node, returned in place of its reply: ``code`` is its
#: first word, ``text`` the whole line.  The client's own class, under the name these helpers' callers use.
RespError = ReplyError

#: What :func:`resp` returns: Simple (``+OK``, equal to ``b"OK"``), bytes, int, None, a list, or a RespError.
Reply = Union[bytes, int, None, list, ReplyError]


class DockerError(RuntimeError):
    """A docker command failed, or Docker is not usable here."""


# ================================================================ the CLI


def docker(*args: str, timeout: float = 60.0, check: bool = True, input: Optional[bytes] = None) -> str:
    """Run ``docker ARGS``; its stdout, stripped.  Raises DockerError on failure or timeout."""
    return _run(["docker", *args], timeout=timeout, check=check, input=input)


def _run(argv: List[str], timeout: float, check: bool = True, input: Optional[bytes] = None, env=None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, input=input, env=env)
    except FileNotFoundError:
        raise DockerError("%s: command not found (is Docker installed?)" % argv[0]) from None
    except subprocess.TimeoutExpired:
        raise DockerError("%s did not finish within %.0fs" % (" ".join(argv[:4]), timeout)) from None
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise DockerError("%s failed (exit %d): %s" % (" ".join(argv[:4]), done.returncode, message))
    return done.stdout.decode(errors="replace").strip()


def engine_problem(timeout: float = 20.0) -> Optional[str]:
    """None if the docker CLI and engine work and compose is installed, else one line saying why not."""
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    try:
        docker("info", "--format", "{{.ServerVersion}}", timeout=timeout)
    except DockerError as e:
        return "the Docker engine is not reachable: %s" % e
    try:
        compose_command()
    except DockerError as e:
        return str(e)
    return None


_compose: Optional[List[str]] = None


def compose_command() -> List[str]:
    """``["docker", "compose"]`` (Compose v2) if it works, else ``["docker-compose"]`` (v1)."""
    global _compose
    if _compose is None:
        for candidate in (["docker", "compose"], ["docker-compose"]):
            if shutil.which(candidate[0]) is None:
                continue
            try:
                _run(candidate + ["version"], timeout=20)
            except DockerError:
                continue
            _compose = candidate
            break
        else:
            raise DockerError("neither `docker compose` nor `docker-compose` is installed")
    return list(_compose)


# ================================================================ images


def image_exists(image: str = DEFAULT_IMAGE) -> bool:
    return bool(docker("image", "inspect", "--format", "{{.Id}}", image, check=False, timeout=30))


def build_image(image: str = DEFAULT_IMAGE, base: str = DEFAULT_BASE, if_missing: bool = False, timeout: float = 1200.0) -> bool:
    """
    Build ``image`` with docker/build-image.sh (the same as ``make docker-image``): the local
    Debian base if it is missing, kvd's wheels, docker build.  With ``if_missing`` an existing
    image is kept.  True if it built.  The build's output is in the DockerError if it fails.
    """
    if if_missing and image_exists(image):
        return False
    env = dict(os.environ, KVD_IMAGE=image, KVD_BASE_IMAGE=base)
    try:
        done = subprocess.run(["sh", BUILD_SCRIPT], capture_output=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        raise DockerError("docker/build-image.sh did not finish within %.0fs" % timeout) from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise DockerError("docker/build-image.sh failed (exit %d):\n%s" % (done.returncode, output[-4000:]))
    return True


# ================================================================ compose projects


class Compose:
    """
    One project of docker-compose.yml: ``project`` names its containers, network and volumes,
    ``env`` fills the file's variables (KVD_PORT_1.., KVD_IMAGE, KVD_CLUSTER_ID, KVD_HOST_IP).
    """

    def __init__(self, project: str, file: str = COMPOSE_FILE, env: Optional[Dict[str, str]] = None) -> None:
        self.project = project
        self.file = file
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("COMPOSE_PROJECT_NAME", None)
        self.env.pop("COMPOSE_FILE", None)

    def __call__(self, *args: str, timeout: float = 180.0, check: bool = True) -> str:
        """Run ``docker compose -p PROJECT -f FILE ARGS``."""
        argv = compose_command() + ["-p", self.project, "-f", self.file, *args]
        return _run(argv, timeout=timeout, check=check, env=self.env)

    @property
    def network(self) -> str:
        """The project's network (the file's ``kvd`` network)."""
        return "%s_kvd" % self.project

    def up(self, *services: str, timeout: float = 180.0) -> None:
        self("up", "-d", "--no-build", *services, timeout=timeout)

    def down(self, volumes: bool = True, timeout: float = 120.0) -> None:
        """Remove the project's containers (also ones run_node made), network, and with ``volumes`` its volumes."""
        self("down", "--remove-orphans", "-t", "10", *(["-v"] if volumes else []), timeout=timeout)

    def stop(self, *services: str, timeout: float = 120.0) -> None:
        self("stop", "-t", "10", *services, timeout=timeout)

    def start(self, *services: str, timeout: float = 120.0) -> None:
        self("start", *services, timeout=timeout)

    def restart(self, *services: str, timeout: float = 180.0) -> None:
        self("restart", "-t", "10", *services, timeout=timeout)

    def services(self) -> List[str]:
        return self("config", "--services").split()

    def container(self, service: str) -> str:
        """The name of the (first) container of ``service``, running or not."""
        names = self.containers().get(service)
        if not names:
            raise DockerError("project %s has no container for service %s" % (self.project, service))
        return names[0]

    def containers(self) -> Dict[str, List[str]]:
        """service -> container names, from the compose labels (works for v1 and v2 alike)."""
        out = docker(
            "ps", "-a", "--filter", "label=com.docker.compose.project=%s" % self.project,
            "--format", '{{.Names}}\t{{.Label "com.docker.compose.service"}}', timeout=30,
        )
        found: Dict[str, List[str]] = {}
        for line in filter(None, out.splitlines()):
            name, _, service = line.partition("\t")
            found.setdefault(service, []).append(name)
        for names in found.values():
            names.sort()
        return found


# ================================================================ containers


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", "--type", "container", container, timeout=30))[0]


def kill(container: str, signal: str = "KILL") -> None:
    """A crash: SIGKILL, no clean-up.  The container stays (and ``restart: unless-stopped`` does not revive it)."""
    docker("kill", "--signal", signal, container)


def stop(container: str, grace: int = 10) -> None:
    """Graceful: SIGTERM, then SIGKILL after ``grace`` seconds."""
    docker("stop", "-t", str(grace), container, timeout=grace + 60)


def start(container: str) -> None:
    docker("start", container)


def restart(container: str, grace: int = 10) -> None:
    docker("restart", "-t", str(grace), container, timeout=grace + 60)


def remove(container: str, volumes: bool = False) -> None:
    docker("rm", "-f", *(["-v"] if volumes else []), container)


def data_volumes(container: str) -> List[str]:
    """The named volume(s) mounted on the node's data directory (never a bind mount's host directory)."""
    return [m["Name"] for m in inspect(container).get("Mounts") or [] if m.get("Type") == "volume" and m.get("Destination") == DATA_DIR and m.get("Name")]


def remove_volume(volume: str) -> None:
    docker("volume", "rm", volume, timeout=60)


def disconnect(network: str, container: str) -> None:
    """Cut ``container`` off ``network``: its interface there (and that address) goes away."""
    docker("network", "disconnect", network, container)


def connect(network: str, container: str, aliases: Iterable[str] = ()) -> None:
    """
    Attach ``container`` to ``network`` again.  Give the service name in ``aliases``: a
    disconnect drops the DNS names the container had there, and peers dial it by that name.
    """
    args = ["network", "connect"]
    for alias in aliases:
        args += ["--alias", alias]
    docker(*args, network, container)


def networks(container: str) -> Dict[str, dict]:
    """The networks ``container`` is attached to: name -> docker's endpoint settings."""
    return inspect(container)["NetworkSettings"]["Networks"] or {}


def is_running(container: str) -> bool:
    return bool(inspect(container)["State"]["Running"])


def health(container: str) -> str:
    """'starting', 'healthy', 'unhealthy', or 'none' (no HEALTHCHECK / not running)."""
    state = inspect(container)["State"]
    return (state.get("Health") or {}).get("Status", "none")


def published(container: str, port: int) -> Optional[Tuple[str, int]]:
    """The host address of container port ``port``/tcp, or None if it is not published."""
    ports = inspect(container)["NetworkSettings"]["Ports"] or {}
    bindings = ports.get("%d/tcp" % port) or []
    if not bindings:
        return None
    host = bindings[0]["HostIp"] or "127.0.0.1"
    return ("127.0.0.1" if host in ("0.0.0.0", "::") else host, int(bindings[0]["HostPort"]))


def node_listen(container: str) -> str:
    """The node's ``--listen`` address (its id), from the container's command line."""
    args = inspect(container)["Args"]
    value = None
    for i, arg in enumerate(args):
        if arg in ("--listen", "-l") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--listen="):
            value = arg.split("=", 1)[1]
    if value is None:
        raise DockerError("container %s has no --listen in its command" % container)
    return value


def logs(container: str, tail: int = 200) -> str:
    done = subprocess.run(["docker", "logs", "--tail", str(tail), container], capture_output=True, timeout=30)
    return (done.stdout + done.stderr).decode(errors="replace")


def wait_healthy(container: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        status = health(container)
        if status == "healthy":
            return
        time.sleep(0.5)
    raise DockerError("container %s not healthy within %.0fs (health: %s)" % (container, timeout, status))


# ================================================================ nodes made without compose (mgmt.py --docker)


def run_node(
    project: str,
    name: str,
    listen: str,
    *,
    network: Optional[str] = None,
    image: str = DEFAULT_IMAGE,
    publish: Optional[Tuple[str, int]] = None,
    cluster_id: str = "kvd",
    initial_cluster: Optional[str] = None,
    bootstrap_expect: int = 0,
    volume: Optional[str] = None,
    extra_args: Sequence[str] = (),
    restart_policy: str = "unless-stopped",
    docker_args: Sequence[str] = (),
) -> str:
    """
    Create and start one node container in ``project`` (mgmt.py's start and join):

    - named ``<project>-<name>``, on ``network`` (default: the project's ``<project>_kvd``,
      created if missing) with DNS alias ``name``; ``listen`` (``name:port``) is its id and
      the address peers dial, so ``name`` should be the host part of ``listen``;
    - its data in the named volume ``volume`` (default ``<project>_<name>-data``, created
      with the project's label if missing, so :func:`purge_project` removes it);
    - its client port published on ``publish`` = (host ip, host port), if given;
    - labelled as part of the compose project (so ``Compose.down`` removes it) and with
      ``io.kvd.node=<listen>`` (so :func:`project_nodes` finds it);
    - ``docker_args`` go to ``docker run`` itself (e.g. ``--health-interval 1s``).

    Seed a new cluster with ``bootstrap_expect`` (and join the others to it with
    ``KVD.JOIN``, as mgmt.py does), or give every founder the same ``initial_cluster``.
    Returns the container name.
    """
    host, _, port = listen.rpartition(":")
    network = network or "%s_kvd" % project
    volume = volume or "%s_%s-data" % (project, name)
    if not docker("network", "ls", "-q", "--filter", "name=^%s$" % network, timeout=30):
        docker("network", "create", "--label", "com.docker.compose.project=%s" % project,
               "--label", "com.docker.compose.network=kvd", network)
    certs_volume = "%s_certs" % project  # the compose file's `certs` volume has this name too
    for name_of in (volume, certs_volume):
        if not docker("volume", "ls", "-q", "--filter", "name=^%s$" % name_of, timeout=30):
            docker("volume", "create", "--label", "com.docker.compose.project=%s" % project, name_of)
    container = "%s-%s" % (project, name)
    args = [
        "run", "-d", "--name", container, "--hostname", name,
        "--network", network, "--network-alias", name,
        "--restart", restart_policy,
        "--label", "com.docker.compose.project=%s" % project,
        "--label", "com.docker.compose.service=%s" % name,
        "--label", "%s=%s" % (LABEL, listen),
        "-v", "%s:%s" % (volume, DATA_DIR),
        # The project's cluster CA, shared by its nodes (peer certificates: docker/entrypoint.sh).
        "-v", "%s:/certs" % certs_volume,
    ]
    if publish is not None:
        args += ["-p", "%s:%d:%s" % (publish[0], publish[1], port)]
    args += list(docker_args)
    args += [image, "--listen", listen, "--cluster-id", cluster_id]
    if initial_cluster:
        args += ["--initial-cluster", initial_cluster]
    if bootstrap_expect:
        args += ["--bootstrap-expect", str(bootstrap_expect)]
    args += list(extra_args)
    docker(*args, timeout=120)
    return container


def purge_project(project: str) -> None:
    """
    Remove everything labelled as ``project`` -- containers (forced), then volumes and networks --
    whether compose or :func:`run_node` made it.  For clean-up without the compose file.
    """
    label = "label=com.docker.compose.project=%s" % project
    containers = docker("ps", "-aq", "--filter", label, timeout=30).split()
    if containers:
        docker("rm", "-f", "-v", *containers, timeout=120)
    volumes = docker("volume", "ls", "-q", "--filter", label, timeout=30).split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, timeout=60)
    nets = docker("network", "ls", "-q", "--filter", label, timeout=30).split()
    if nets:
        docker("network", "rm", *nets, timeout=60)


def project_nodes(project: str) -> List[dict]:
    """
    Every node container of ``project`` (compose-made or run_node-made), sorted by name:
    ``{"container", "service", "listen", "state", "health", "published", "compose"}`` where
    ``published`` is the (host, port) of the client port or None, and ``compose`` is True
    for a service of a compose file (not made by :func:`run_node`).
    """
    out = docker("ps", "-a", "-q", "--filter", "label=com.docker.compose.project=%s" % project, timeout=30)
    nodes = []
    for cid in out.split():
        info = inspect(cid)
        state = info["State"]
        try:
            listen = node_listen(cid)
        except DockerError:
            continue  # not a kvd node
        port = int(listen.rpartition(":")[2])
        bindings = (info["NetworkSettings"]["Ports"] or {}).get("%d/tcp" % port) or []
        nodes.append({
            "container": info["Name"].lstrip("/"),
            "service": info["Config"]["Labels"].get("com.docker.compose.service", ""),
            "listen": listen,
            "state": state["Status"],
            "health": (state.get("Health") or {}).get("Status", "none"),
            "compose": "com.docker.compose.config-hash" in info["Config"]["Labels"],  # made by compose, not run_node
            "published": (bindings[0]["HostIp"] or "0.0.0.0", int(bindings[0]["HostPort"])) if bindings else None,
        })
    return sorted(nodes, key=lambda n: n["container"])


# ================================================================ asking a node (RESP)
#
# Through kvd.resp.client, on the host and inside a container alike: the image is kvd's, so
# ``docker exec CONTAINER python -c`` imports the same client there (no second copy).

# Run inside a container: argv[1] = JSON [host, port, commands as latin-1 text, timeout];
# prints the replies as JSON (latin-1 text keeps every byte).
_EXEC_SCRIPT = r'''
import json, sys
from kvd.resp.client import Connection, ReplyError, Simple
def enc(r):
    if isinstance(r, Simple): return {"s": r.decode("latin-1")}
    if isinstance(r, bytes): return {"b": r.decode("latin-1")}
    if isinstance(r, ReplyError): return {"e": r.text}
    if isinstance(r, list): return {"l": [enc(x) for x in r]}
    return {"v": r}
host, port, commands, timeout = json.loads(sys.argv[1])
with Connection(host, port, timeout=timeout, connect_timeout=timeout) as conn:
    replies = conn.pipeline([[a.encode("latin-1") for a in c] for c in commands])
print(json.dumps([enc(r) for r in replies]))
'''


def resp(address: Tuple[str, int], *args, timeout: float = 10.0) -> Reply:
    """
    One command to a node from here: ``resp(("127.0.0.1", 7001), "GET", "k")`` -> ``b"v"``.
    An error reply is *returned* as a RespError (so callers can assert on it); a network
    failure raises OSError (kvd.resp.client's NotSent or Indeterminate).
    """
    return resp_pipeline(address, [args], timeout=timeout)[0]


def resp_pipeline(address: Tuple[str, int], commands: Sequence[Sequence], timeout: float = 10.0) -> List[Reply]:
    """Several commands on one connection, e.g. ``[["READONLY"], ["GET", "k"]]``; their replies."""
    with Connection(address[0], address[1], timeout=timeout, connect_timeout=timeout) as conn:
        return conn.pipeline(commands)


def exec_resp(container: str, host: str, port: int, *args, timeout: float = 10.0) -> Reply:
    """
    One command to a node asked from inside ``container`` (``docker exec ... python -c``),
    e.g. the node itself on 127.0.0.1 when its container is cut off the network.
    Returns like :func:`resp`; a failure inside (say, connection refused) raises DockerError.
    """
    return exec_resp_pipeline(container, host, port, [args], timeout=timeout)[0]


def exec_resp_pipeline(container: str, host: str, port: int, commands: Sequence[Sequence], timeout: float = 10.0) -> List[Reply]:
    """:func:`resp_pipeline`, asked from inside ``container``."""
    wire = [[arg_bytes(x).decode("latin-1") for x in c] for c in commands]
    out = docker("exec", container, "python", "-c", _EXEC_SCRIPT, json.dumps([host, port, wire, timeout]), timeout=timeout + 30)

    def dec(value):
        if "s" in value:
            return Simple(value["s"].encode("latin-1"))
        if "b" in value:
            return value["b"].encode("latin-1")
        if "e" in value:
            return RespError(value["e"])
        if "l" in value:
            return [dec(x) for x in value["l"]]
        return value["v"]

    return [dec(r) for r in json.loads(out.splitlines()[-1])]


def info(reply: Reply) -> Dict[str, str]:
    """``INFO``'s bulk reply as a dict (``raft_role`` -> ``leader``)."""
    if not isinstance(reply, bytes) or isinstance(reply, Simple):
        raise ValueError("INFO answered %r" % (reply,))
    return parse_info(reply)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for publishing a container's port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
