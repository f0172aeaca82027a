"""
The docker-compose cluster under failures: real containers of the kvd image, each
with its own address, killed, restarted, and cut off its network.

The module brings up docker-compose.yml as its own compose project (a unique name,
free host ports, its own cluster id), after building the image of the code under
test with docker/build-image.sh (cached when nothing changed), and removes the
project's containers, network and volumes afterwards (``down -v``), also when a
test fails.  Without a Docker engine the tests
fail and say so: CI must not pass them by skipping.

Each test starts from a healed cluster (every container running and on the network,
one leader), so one failure does not cascade into the next.  Every write the cluster
acknowledges is remembered and checked again after each disruption.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
import urllib.error
import urllib.request
from typing import Callable, Dict, Iterable, List, Optional, TypeVar

import pytest

from kvd.cli import docker_ops as d
from kvd.cli.docker_ops import RespError

pytestmark = pytest.mark.docker

#: service -> the node's client port inside its container; its id is "<service>:<port>".
SERVICES = {"node1": 7001, "node2": 7002, "node3": 7003}
#: Errors that a node without a majority may answer; anything else (a value!) is a failure.
MINORITY_ERRORS = ("NOLEADER", "TRYAGAIN", "TIMEOUT")
#: Longest wait for an election, a catch-up, or a cluster (re)start; all polls are bounded.
ELECTION_S = 30.0
START_S = 90.0

T = TypeVar("T")


def poll(what: str, probe: Callable[[], Optional[T]], timeout: float, interval: float = 0.25) -> T:
    """Call ``probe`` until it returns something other than None; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except (OSError, RespError, d.DockerError, ValueError) as e:
            result, last = None, e
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail("%s: not within %.0fs (last: %r)" % (what, timeout, last), pytrace=False)
        time.sleep(interval)


def free_ports(n: int) -> List[int]:
    """n distinct host ports free now for TCP and UDP alike (a DNS port is published on both)."""
    ports: List[int] = []
    while len(ports) < n:
        port = d.free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


class Cluster:
    def __init__(self, compose: d.Compose, host_ports: Dict[str, int], dns_ports: Optional[Dict[str, int]] = None, http_ports: Optional[Dict[str, int]] = None) -> None:
        self.compose = compose
        self.host_ports = host_ports
        self.dns_ports = dns_ports or {}
        self.http_ports = http_ports or {}
        self.acked: Dict[str, bytes] = {}  # every write the cluster acknowledged: key -> value
        self._containers: Dict[str, str] = {}

    # ------------------------------------------------------------ addressing

    def container(self, service: str) -> str:
        if service not in self._containers:
            self._containers[service] = self.compose.container(service)
        return self._containers[service]

    @staticmethod
    def node_id(service: str) -> str:
        return "%s:%d" % (service, SERVICES[service])

    @staticmethod
    def service_of(node_id: str) -> str:
        return node_id.rpartition(":")[0]

    def ask(self, service: str, *args, timeout: float = 10.0):
        """A command through the node's published port, from the host."""
        return d.resp(("127.0.0.1", self.host_ports[service]), *args, timeout=timeout)

    def ask_inside(self, service: str, *args, timeout: float = 15.0):
        """A command asked from inside the node's own container (works when it is cut off)."""
        return d.exec_resp(self.container(service), "127.0.0.1", SERVICES[service], *args, timeout=timeout)

    def raft(self, service: str, inside: bool = False) -> Dict[str, str]:
        reply = self.ask_inside(service, "INFO", "raft") if inside else self.ask(service, "INFO", "raft")
        return d.info(reply)

    # ------------------------------------------------------------ waiting

    def leader(self, among: Iterable[str] = tuple(SERVICES), timeout: float = ELECTION_S) -> str:
        """The service among ``among`` that all of them agree leads (and which says so itself)."""
        among = list(among)

        def agreed() -> Optional[str]:
            views = {service: self.raft(service) for service in among}
            leaders = {view.get("raft_leader_id") or view.get("raft_leader") for view in views.values()}
            if len(leaders) != 1:
                return None
            leader_id = leaders.pop()
            if not leader_id:
                return None
            service = self.service_of(leader_id)
            if service not in views or views[service]["raft_role"] != "leader":
                return None  # e.g. followers still following a leader that is gone
            return service

        return poll("one leader that %s agree on" % among, agreed, timeout)

    def write(self, service: str, key: str, value: str, timeout: float = ELECTION_S) -> None:
        """SET through ``service``, retried while the answer says it was not applied; remembered once acknowledged."""

        def attempt() -> Optional[bool]:
            reply = self.ask(service, "SET", key, value)
            if reply == b"OK":
                return True
            if isinstance(reply, RespError) and reply.code in MINORITY_ERRORS:
                return None  # not applied, or unknown: SET of the same value is safe to repeat
            pytest.fail("SET %s through %s answered %r" % (key, service, reply), pytrace=False)

        poll("SET %s=%s through %s" % (key, value, service), attempt, timeout)
        self.acked[key] = value.encode()

    def read(self, service: str, key: str, timeout: float = ELECTION_S):
        """A linearizable GET through ``service``, retried while it has no leader to ask."""

        def attempt():
            reply = self.ask(service, "GET", key)
            if isinstance(reply, RespError) and reply.code in MINORITY_ERRORS:
                return None
            return (reply,)

        return poll("GET %s through %s" % (key, service), attempt, timeout)[0]

    def check_acknowledged(self, services: Iterable[str] = tuple(SERVICES)) -> None:
        """Every acknowledged write, read back (one linearizable MGET) through each of ``services``."""
        assert self.acked, "nothing was written"
        keys = sorted(self.acked)
        for service in services:

            def mget():
                reply = self.ask(service, "MGET", *keys)
                if isinstance(reply, RespError) and reply.code in MINORITY_ERRORS:
                    return None
                assert isinstance(reply, list), "MGET through %s answered %r" % (service, reply)
                return reply

            got = dict(zip(keys, poll("MGET of %d keys through %s" % (len(keys), service), mget, ELECTION_S)))
            lost = {k: (v, got[k]) for k, v in self.acked.items() if got[k] != v}
            assert not lost, "%s lost acknowledged writes (key: (written, read)): %r" % (service, lost)

    def local_get(self, service: str, key: str, inside: bool = False):
        """GET from the node's own copy (READONLY on the same connection: no leader is asked)."""
        commands = [["READONLY"], ["GET", key]]
        if inside:
            return d.exec_resp_pipeline(self.container(service), "127.0.0.1", SERVICES[service], commands)[-1]
        return d.resp_pipeline(("127.0.0.1", self.host_ports[service]), commands)[-1]

    def caught_up(self, service: str, key: str, value: bytes, inside: bool = False, timeout: float = ELECTION_S) -> None:
        """Wait until ``service``'s own state machine holds key=value."""
        poll(
            "%s to catch up to %s=%r" % (service, key, value),
            lambda: True if self.local_get(service, key, inside) == value else None,
            timeout,
        )

    # ------------------------------------------------------------ healing

    def heal(self) -> None:
        """Every container running and on the project network (with its DNS alias), and one leader."""
        for service in SERVICES:
            container = self.container(service)
            if self.compose.network not in d.networks(container):
                d.connect(self.compose.network, container, aliases=[service])
            if not d.is_running(container):
                d.start(container)
        self.leader(timeout=START_S)


# ================================================================ fixtures


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    problem = d.engine_problem()
    if problem is not None:
        pytest.fail(
            "the Docker tests need a working Docker engine and compose, and there is none: %s. "
            "They fail rather than skip so CI notices; run `make test-fast` for the rest." % problem,
            pytrace=False,
        )
    # The image of the code under test: docker/build-image.sh (as `make docker-image`) builds the
    # base once and otherwise hits the build cache unless the sources changed.
    # KVD_DOCKER_REUSE_IMAGE=1 takes an existing image as it is.
    started = time.monotonic()
    try:
        built = d.build_image(if_missing=os.environ.get("KVD_DOCKER_REUSE_IMAGE") == "1")
    except d.DockerError as e:
        pytest.fail("cannot build the kvd image: %s" % e, pytrace=False)
    if built:
        print("built %s in %.0fs" % (d.DEFAULT_IMAGE, time.monotonic() - started))
    project = "kvdtest%d%s" % (os.getpid(), os.urandom(3).hex())
    free = free_ports(3 * len(SERVICES))
    ports = dict(zip(SERVICES, free[0:3]))
    dns_ports = dict(zip(SERVICES, free[3:6]))
    http_ports = dict(zip(SERVICES, free[6:9]))
    env = {"KVD_CLUSTER_ID": project, "KVD_HOST_IP": "127.0.0.1", "KVD_IMAGE": d.DEFAULT_IMAGE}
    for i, s in enumerate(SERVICES):
        env["KVD_PORT_%d" % (i + 1)] = str(ports[s])
        env["KVD_DNS_PORT_%d" % (i + 1)] = str(dns_ports[s])
        env["KVD_HTTP_PORT_%d" % (i + 1)] = str(http_ports[s])
    compose = d.Compose(project, env=env)
    try:
        compose.up(timeout=180)
        c = Cluster(compose, ports, dns_ports, http_ports)
        c.leader(timeout=START_S)
        yield c
    finally:
        if request.session.testsfailed:
            logs_dir = tmp_path_factory.mktemp("docker-logs")
            for service in SERVICES:
                try:
                    text = d.logs(compose.container(service), tail=400)
                except Exception as e:  # noqa: BLE001 - best effort, the clean-up must run
                    text = "(no logs: %s)" % e
                (logs_dir / ("%s.log" % service)).write_text(text)
                print("---- %s (tail; full tail in %s)\n%s" % (service, logs_dir, text[-3000:]))
        compose.down(volumes=True)
        leftovers = d.docker("ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % project, check=False)
        assert not leftovers, "containers of %s survived down -v: %s" % (project, leftovers)


@pytest.fixture
def healed(cluster):
    cluster.heal()
    return cluster


# ================================================================ tests


def test_write_through_one_node_read_from_the_others(healed):
    """A write through a follower or the leader is read back through every node; all report healthy."""
    c = healed
    leader = c.leader()
    follower = next(s for s in SERVICES if s != leader)
    c.write(follower, "greeting", "hello")
    c.write(leader, "color", "blue")
    for service in SERVICES:
        assert c.read(service, "greeting") == b"hello"
        assert c.read(service, "color") == b"blue"
        views = c.raft(service)
        assert views["raft_node_id"] == c.node_id(service)
        assert views["raft_cluster_id"] == c.compose.project
        assert views["raft_peer_security"] == "mutual-tls"  # certificates from the shared /certs volume
    for service in SERVICES:
        d.wait_healthy(c.container(service), timeout=60)
        user = d.docker("exec", c.container(service), "id", "-u")
        assert user != "0", "the node runs as root in %s" % service
    # One CA for the cluster, each node's certificate (CN = its id) and key private to the node's user.
    modes = d.docker("exec", c.container(leader), "sh", "-c", "stat -c '%a %U %n' /certs/ca.key /certs/nodes/*/peer.key")
    assert len(modes.splitlines()) == len(SERVICES) + 1 and all(line.startswith("600 kvd ") for line in modes.splitlines()), modes


def test_kill_the_leader_then_restart_it(healed):
    """docker kill of the leader: the others elect a new one and take writes; restarted, it catches up from its volume."""
    c = healed
    old = c.leader()
    c.write(old, "before-kill", "1")
    d.kill(c.container(old))
    assert not d.is_running(c.container(old))
    survivors = [s for s in SERVICES if s != old]
    new = c.leader(among=survivors)
    assert new != old
    for i, service in enumerate(survivors):
        c.write(service, "after-kill-%d" % i, "v%d" % i)
    c.check_acknowledged(survivors)

    d.start(c.container(old))
    # It came back on its own data: the node logs how much log it restored from the volume.
    pattern = re.compile(r"started: term (\d+), (\d+) log entries")
    starts = poll(
        "%s to log its restart" % old,
        lambda: (lambda found: found if len(found) >= 2 else None)(pattern.findall(d.logs(c.container(old)))),
        START_S,
    )
    term, entries = map(int, starts[-1])
    assert term >= 2 and entries >= 3, "restarted without its volume's data: term %d, %d log entries" % (term, entries)
    # ... and then catches up what it missed from the leader: its own copy has the new writes.
    c.caught_up(old, "after-kill-1", b"v1")
    assert c.leader() == new, "the restarted node disrupted the leader (pre-vote should prevent it)"
    c.check_acknowledged()


def test_restart_the_whole_cluster(healed):
    """Graceful restart of all three, then a crash of all three: every acknowledged write is still there."""
    c = healed
    leader = c.leader()
    for i in range(5):
        c.write(list(SERVICES)[i % 3], "batch-%d" % i, "x" * (i + 1))
    c.check_acknowledged()

    c.compose.restart(timeout=180)
    c.leader(timeout=START_S)
    c.check_acknowledged()

    c.write(leader, "before-crash", "yes")
    c.compose("kill", timeout=120)  # every node at once, no clean shutdown
    for service in SERVICES:
        assert not d.is_running(c.container(service))
    c.compose.start(timeout=180)
    c.leader(timeout=START_S)
    c.check_acknowledged()


def test_partition_the_leader(healed):
    """
    docker network disconnect of the leader: the majority elects a new leader and takes
    writes; the cut-off node, asked from inside its container, answers writes and
    linearizable reads with an error and never the stale value; reconnected, it converges.
    """
    c = healed
    cut = c.leader()
    majority = [s for s in SERVICES if s != cut]
    c.write(cut, "fence", "before")
    c.caught_up(cut, "fence", b"before")  # so a stale read would have something to show

    d.disconnect(c.compose.network, c.container(cut))
    # Straight away, while it may still believe it leads:
    reply = c.ask_inside(cut, "GET", "fence")
    assert isinstance(reply, RespError) and reply.code in MINORITY_ERRORS, "cut-off read answered %r" % (reply,)
    reply = c.ask_inside(cut, "SET", "minority-write", "lost")
    assert isinstance(reply, RespError) and reply.code in MINORITY_ERRORS, "cut-off write answered %r" % (reply,)

    new = c.leader(among=majority)
    assert new in majority
    c.write(majority[0], "fence", "after")
    c.write(majority[1], "during-partition", "ok")
    c.check_acknowledged(majority)

    # Now the majority has moved on: the cut-off node must still refuse, not serve "before".
    for args in (("GET", "fence"), ("MGET", "fence", "during-partition"), ("SET", "fence", "stale"), ("INCR", "n")):
        reply = c.ask_inside(cut, *args)
        assert isinstance(reply, RespError) and reply.code in MINORITY_ERRORS, "cut-off %s answered %r" % (args, reply)
    view = c.raft(cut, inside=True)
    assert view["raft_role"] != "leader", "the cut-off node still calls itself leader (check-quorum): %r" % view

    d.connect(c.compose.network, c.container(cut), aliases=[cut])
    c.caught_up(cut, "fence", b"after", inside=True)
    c.caught_up(cut, "during-partition", b"ok", inside=True)
    leader = c.leader(timeout=ELECTION_S)
    assert leader in majority, "the returning node took the leadership back (pre-vote should prevent it)"
    assert c.ask_inside(cut, "GET", "fence") == b"after"
    assert c.ask_inside(cut, "EXISTS", "minority-write") == 0, "a write the minority never committed appeared"
    assert c.read(cut, "fence") == b"after", "through the published port again"
    c.check_acknowledged()


def http_get(port: int, path: str):
    """(status, body) of GET http://127.0.0.1:port/path from the host."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def dns_srv(port: int, name: str, tcp: bool):
    """SRV records of ``name`` asked of 127.0.0.1:port over UDP or TCP: [(target, port)], or None on an error answer."""
    from twisted.names import dns

    query = dns.Message(id=int.from_bytes(os.urandom(2), "big"), recDes=0)
    query.queries = [dns.Query(name.encode(), dns.SRV, dns.IN)]
    wire = query.toStr()
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("DNS over TCP: connection closed")
                data += chunk
            data = data[2:]
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(wire, ("127.0.0.1", port))
            data = s.recv(65536)
    answer = dns.Message()
    answer.fromStr(data)
    assert answer.id == query.id
    if answer.rCode != dns.OK:
        return None
    return [(rr.payload.target.name.decode(), rr.payload.port) for rr in answer.answers if rr.type == dns.SRV]


def test_http_and_dns_ports_are_published(healed):
    """docker-compose.yml publishes each node's HTTP port (health, metrics, page) and its DNS port on UDP and TCP."""
    c = healed
    leader = c.leader()
    for service in SERVICES:
        status, body = poll("%s /v1/health 200" % service, lambda: (lambda r: r if r[0] == 200 else None)(http_get(c.http_ports[service], "/v1/health")), ELECTION_S)
        view = json.loads(body)
        assert view["healthy"] is True and view["node"] == c.node_id(service), view
        status, body = http_get(c.http_ports[service], "/metrics")
        assert status == 200 and b"kvd_raft_" in body
        status, body = http_get(c.http_ports[service], "/")
        assert status == 200 and b"<html" in body.lower()
        for tcp in (False, True):
            srv = poll("leader.kvd SRV from %s over %s" % (service, "TCP" if tcp else "UDP"),
                       lambda: dns_srv(c.dns_ports[service], "leader.kvd", tcp) or None, ELECTION_S)
            assert srv == [(leader, SERVICES[leader])] or c.leader() != leader, (service, srv)
