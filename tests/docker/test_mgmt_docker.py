"""
``mgmt.py --docker PROJECT``: the server commands on containers of a compose project.

One story on a project of its own (a unique name, free host ports), run through the
real mgmt.py: start a seed and join two nodes, list shows one leader, write and read
through the published ports, kill a container (list shows it stopped, the cluster
still serves), restart it (it catches up).  Everything the project made is removed
afterwards with purge_project, also when the test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from kvd.cli import docker_ops as d

pytestmark = pytest.mark.docker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def project(request):
    problem = d.engine_problem()
    if problem is not None:
        pytest.fail("Docker is needed: %s" % problem, pytrace=False)
    d.build_image(if_missing=True)
    name = "kvdmgmt%s" % uuid.uuid4().hex[:8]
    request.addfinalizer(lambda: d.purge_project(name))
    return name


def free_ports(n: int):
    """n distinct free host ports whose peer port (+10000) is valid."""
    ports = set()
    while len(ports) < n:
        port = d.free_port()
        if port + 10000 <= 65535:
            ports.add(port)
    return sorted(ports)


def mgmt(project, *args, check=True):
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "mgmt.py"), "--docker", project, *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    if check:
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return done


def listing(project):
    return json.loads(mgmt(project, "-r", "server", "-c", "list", "--json").stdout)


def wait_for(what, probe, timeout=60.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail("%s: not within %.0fs (last: %r)" % (what, timeout, last), pytrace=False)


def leaders(view):
    return [n for n in view["nodes"] if n["role"] == "leader" and n["status"] == "up"]


def test_start_join_list_write_kill_restart(project):
    p1, p2, p3 = free_ports(3)
    n1, n2, n3 = "n1:%d" % p1, "n2:%d" % p2, "n3:%d" % p3
    assert "waiting for 2 more" in mgmt(project, "-r", "server", "-c", "start", "-h", n1).stdout
    mgmt(project, "-r", "server", "-c", "join", "-h", n2)
    out = mgmt(project, "-r", "server", "-c", "join", "-h", n3).stdout
    assert "bootstrapped" in out or "learner" in out, out

    view = wait_for("one leader", lambda: (lambda v: v if len(leaders(v)) == 1 and all(n["status"] == "up" for n in v["nodes"]) else None)(listing(project)))
    assert sorted(n["id"] for n in view["nodes"]) == sorted([n1, n2, n3])
    assert view["voters"] == 3
    assert {n["published"] for n in view["nodes"]} == {"127.0.0.1:%d" % p for p in (p1, p2, p3)}

    # Client commands through the published ports: by id, and by host:port.
    mgmt(project, "-r", "client", "-c", "write", "-h", n2, "-k", "color", "-v", "blue")
    assert mgmt(project, "-r", "client", "-c", "read", "-h", "127.0.0.1:%d" % p3, "-k", "color").stdout.strip() == "blue"

    # Kill the leader's container: list shows it stopped, the others elect a new leader.
    leader = leaders(view)[0]["id"]
    out = mgmt(project, "-r", "server", "-c", "kill", "-h", leader).stdout
    assert "docker kill" in out
    container = "%s-%s" % (project, leader.split(":")[0])
    assert not d.is_running(container)
    view = wait_for("a new leader", lambda: (lambda v: v if leaders(v) and leaders(v)[0]["id"] != leader else None)(listing(project)))
    assert [n["status"] for n in view["nodes"] if n["id"] == leader] == ["stopped"]
    survivor = leaders(view)[0]["id"]
    mgmt(project, "-r", "client", "-c", "write", "-h", survivor, "-k", "color", "-v", "red")

    # Restart it on its volume: it answers and catches up.
    mgmt(project, "-r", "server", "-c", "restart", "-h", leader)
    assert d.is_running(container)
    wait_for("the restarted node up", lambda: all(n["status"] == "up" for n in listing(project)["nodes"]))
    assert mgmt(project, "-r", "client", "-c", "read", "-h", leader, "-k", "color").stdout.strip() == "red"

    # Stop a follower gracefully (docker stop); list, asked through a published host:port, shows it stopped.
    follower = next(n["id"] for n in listing(project)["nodes"] if n["role"] == "follower")
    assert "docker stop" in mgmt(project, "-r", "server", "-c", "stop", "-h", follower).stdout
    view = json.loads(mgmt(project, "-r", "server", "-c", "list", "--json", "-h", "127.0.0.1:%d" % p2 if follower != n2 else "127.0.0.1:%d" % p3).stdout)
    assert [n["status"] for n in view["nodes"] if n["id"] == follower] == ["stopped"]
    mgmt(project, "-r", "server", "-c", "restart", "-h", follower)

    # Errors stay one line with the CLI's exit codes.
    done = mgmt(project, "-r", "server", "-c", "kill", "-h", "nosuch:7009", check=False)
    assert done.returncode == 8 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = mgmt(project, "-r", "server", "-c", "start", "-h", n1, check=False)
    assert done.returncode == 8 and "already exists" in done.stderr, done.stderr


def test_remove_takes_the_node_out_then_deletes_its_container(project):
    """
    -c remove with --docker: the node leaves the membership through the cluster (the leader
    itself here, the hardest case), then its container and data volume are gone; the two
    left elect a leader among themselves and serve.  Stopped instead, it would stay a voter.
    """
    p1, p2, p3 = free_ports(3)
    ids = ["n1:%d" % p1, "n2:%d" % p2, "n3:%d" % p3]
    mgmt(project, "-r", "server", "-c", "start", "-h", ids[0])
    for node_id in ids[1:]:
        mgmt(project, "-r", "server", "-c", "join", "-h", node_id)
    view = wait_for("one leader of three voters", lambda: (lambda v: v if len(leaders(v)) == 1 and v["voters"] == 3 else None)(listing(project)))
    leader = leaders(view)[0]["id"]
    container = "%s-%s" % (project, leader.split(":")[0])
    volumes = d.data_volumes(container)
    assert volumes == ["%s_%s-data" % (project, leader.split(":")[0])], volumes

    out = mgmt(project, "-r", "server", "-c", "remove", "-h", leader).stdout
    assert "removed %s from the cluster" % leader in out and "deleted its container %s" % container in out, out
    assert not d.docker("ps", "-aq", "--filter", "name=^%s$" % container)
    assert not d.docker("volume", "ls", "-q", "--filter", "name=^%s$" % volumes[0])

    rest = [n for n in ids if n != leader]
    view = wait_for("a leader of the two left", lambda: (lambda v: v if len(leaders(v)) == 1 and v["voters"] == 2 else None)(listing(project)))
    assert sorted(n["id"] for n in view["nodes"]) == sorted(rest), view
    mgmt(project, "-r", "client", "-c", "write", "-h", rest[0], "-k", "after-remove", "-v", "ok")
    assert mgmt(project, "-r", "client", "-c", "read", "-h", rest[1], "-k", "after-remove").stdout.strip() == "ok"

    # Removing it again: not a member any more, and no container to delete.
    out = mgmt(project, "-r", "server", "-c", "remove", "-h", leader).stdout
    assert "not a member" in out and "no container" in out, out
