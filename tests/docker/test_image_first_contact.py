"""
The image at first contact: a fresh clone builds, the health check means "can serve",
an unwritable bind-mounted data directory says which chown to run (the base build's
quietness: tests/docker/test_base_build.py).

Each test uses containers, networks and volumes of a project of its own (a unique
name; everything labelled with it is removed afterwards with purge_project, also when
a test fails).  Without a Docker engine the tests fail and say so: CI must not pass
them by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

from kvd.cli import docker_ops as d

pytestmark = pytest.mark.docker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Quick health checks for the tests (the image's own are 10s/3s/30s/3).
HEALTH = ["--health-interval", "1s", "--health-timeout", "3s", "--health-retries", "2", "--health-start-period", "5s"]


def need_docker():
    problem = d.engine_problem()
    if problem is not None:
        pytest.fail("the Docker tests need a working Docker engine and compose, and there is none: %s" % problem, pytrace=False)


def wait_for(what, probe, timeout, interval=0.25):
    """Call ``probe`` until it returns something true; its result, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = probe()
        except d.DockerError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            pytest.fail("%s: not within %.0fs (last: %r)" % (what, timeout, last), pytrace=False)
        time.sleep(interval)


def health_log(container):
    """The output of the container's last health check, one line."""
    log = (d.inspect(container)["State"].get("Health") or {}).get("Log") or []
    return log[-1]["Output"].strip() if log else ""


def base_image():
    """The local Debian base (docker/build-base.sh: reused once built, else built here)."""
    done = subprocess.run(["sh", os.path.join(REPO, "docker", "build-base.sh")], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, KVD_BASE_IMAGE=d.DEFAULT_BASE))
    assert done.returncode == 0, "docker/build-base.sh failed:\n%s%s" % (done.stdout, done.stderr)
    return d.DEFAULT_BASE


@pytest.fixture(scope="module")
def image():
    """kvd:latest of the code under test (docker/build-image.sh, cached; KVD_DOCKER_REUSE_IMAGE=1 takes it as it is)."""
    need_docker()
    try:
        d.build_image(if_missing=os.environ.get("KVD_DOCKER_REUSE_IMAGE") == "1")
    except d.DockerError as e:
        pytest.fail("cannot build the kvd image: %s" % e, pytrace=False)
    return d.DEFAULT_IMAGE


@pytest.fixture
def project(request):
    name = "kvdfirst%s" % uuid.uuid4().hex[:8]
    request.addfinalizer(lambda: d.purge_project(name))
    return name


# ================================================================ 1. a fresh clone builds


def test_a_fresh_clone_builds_with_no_other_step(tmp_path):
    """
    git clone + docker build (and compose's build) with nothing else: no docker/wheels,
    so pip takes the dependencies from PyPI through the base's trust store.
    """
    need_docker()
    base = base_image()
    clone = tmp_path / "kvd"
    subprocess.run(["git", "clone", "-q", REPO, str(clone)], check=True, timeout=120)
    assert not (clone / "docker" / "wheels").exists()
    tag = "kvd-fresh-clone-test:%s" % uuid.uuid4().hex[:8]
    build_stage = None
    try:
        started = time.monotonic()
        done = subprocess.run(["docker", "build", "--force-rm", "--build-arg", "BASE=%s" % base, "-t", tag, "."],
                              cwd=str(clone), capture_output=True, text=True, timeout=900, env=dict(os.environ, DOCKER_BUILDKIT="0"))
        took = time.monotonic() - started
        # The build stage's image (the last " ---> id" before the final stage's FROM), untagged: removed below.
        lines = done.stdout.splitlines()
        froms = [i for i, line in enumerate(lines) if line.startswith("Step ") and " : FROM " in line]
        if len(froms) == 2:
            build_stage = next((line.split()[-1] for line in reversed(lines[:froms[1]]) if line.startswith(" ---> ")), None)
        assert done.returncode == 0, "docker build of a fresh clone failed:\n%s" % (done.stdout + done.stderr)[-4000:]
        assert "no docker/wheels; installing the dependencies from PyPI" in done.stdout
        print("fresh clone: docker build took %.0fs" % took)
        version = d.docker("run", "--rm", tag, "--version", timeout=120)
        assert "Twisted version" in version

        # docker-compose builds the same way when its image is missing (here: its own tag).
        compose = d.Compose("kvdfresh%s" % uuid.uuid4().hex[:8], file=str(clone / "docker-compose.yml"),
                            env={"KVD_IMAGE": tag + "-compose", "KVD_BASE_IMAGE": base})
        compose("build", "node1", timeout=900)
        assert d.image_exists(tag + "-compose")
    finally:
        d.docker("rmi", "-f", tag, tag + "-compose", check=False, timeout=120)
        if build_stage:
            d.docker("rmi", build_stage, check=False, timeout=120)  # not if something else uses it


# ================================================================ 2. health = can serve


def test_health_means_the_node_can_serve(image, project):
    """
    Three founders (n3 with HTTP off: judged by INFO raft) turn healthy; a never-bootstrapped
    node turns unhealthy; a node cut off into a minority turns unhealthy and healthy again
    once back; a lone survivor turns unhealthy.
    """
    members = "n1:7001,n2:7001,n3:7001"
    t0 = time.monotonic()
    containers = {}
    for name in ("n1", "n2", "n3"):
        extra = ["--tick-ms", "50", "--election-ticks", "10"] + (["--http-port", "0"] if name == "n3" else [])
        containers[name] = d.run_node(project, name, "%s:7001" % name, cluster_id=project, initial_cluster=members,
                                      extra_args=extra, docker_args=HEALTH, restart_policy="no")
    lonely = d.run_node(project, "lonely", "lonely:7001", cluster_id=project, docker_args=HEALTH, restart_policy="no")
    marks = {}

    def status(container):
        return d.health(container)

    for name, container in containers.items():
        wait_for("%s healthy" % name, lambda: status(container) == "healthy", 90)
        marks["%s healthy" % name] = time.monotonic() - t0
    assert "serving" in health_log(containers["n1"]) and "/v1/health" in health_log(containers["n1"])
    assert "serving" in health_log(containers["n3"]) and "INFO raft" in health_log(containers["n3"])

    wait_for("the never-bootstrapped node unhealthy", lambda: status(lonely) == "unhealthy", 60)
    marks["never-bootstrapped unhealthy"] = time.monotonic() - t0
    assert "no leader" in health_log(lonely), health_log(lonely)
    assert d.exec_resp(lonely, "127.0.0.1", 7001, "PING") == b"PONG"  # it answers PING: the old check said healthy

    # n3 cut off into a minority of one.
    network = "%s_kvd" % project
    cut = time.monotonic()
    d.disconnect(network, containers["n3"])
    wait_for("the cut-off n3 unhealthy", lambda: status(containers["n3"]) == "unhealthy", 60)
    marks["minority unhealthy after"] = time.monotonic() - cut
    assert "no leader" in health_log(containers["n3"]), health_log(containers["n3"])
    for name in ("n1", "n2"):
        wait_for("%s (majority) healthy while n3 is cut off" % name, lambda: status(containers[name]) == "healthy", 60)
    back = time.monotonic()
    d.connect(network, containers["n3"], aliases=["n3"])
    wait_for("n3 healthy again once reconnected", lambda: status(containers["n3"]) == "healthy", 60)
    marks["healthy again after reconnect"] = time.monotonic() - back

    # n1 alone: the others stopped.
    alone = time.monotonic()
    for name in ("n2", "n3"):
        d.stop(containers[name], grace=5)
    wait_for("the lone survivor n1 unhealthy", lambda: status(containers["n1"]) == "unhealthy", 60)
    marks["lone survivor unhealthy after"] = time.monotonic() - alone
    assert "no leader" in health_log(containers["n1"]) and "503" in health_log(containers["n1"]), health_log(containers["n1"])
    print("health transitions (s): " + ", ".join("%s %.1f" % kv for kv in marks.items()))


# ================================================================ 4. an unwritable data directory


def test_an_unwritable_bind_mounted_data_dir_says_which_chown(image, project):
    """A host directory the image's user cannot write: one line naming the uid and the chown, exit non-zero, no traceback."""
    host_dir = tempfile.mkdtemp(prefix="kvd-bind-")
    try:
        os.chmod(host_dir, 0o755)  # owned by whoever runs the tests, never by uid 10001
        assert os.stat(host_dir).st_uid != 10001
        name = "%s-bind" % project
        labels = ["--label", "com.docker.compose.project=%s" % project]
        # Through the entrypoint (the usual docker run) ...
        done = subprocess.run(["docker", "run", "--name", name, *labels, "-v", "%s:/data" % host_dir, image],
                              capture_output=True, text=True, timeout=120)
        out = (done.stdout + done.stderr).strip()
        assert done.returncode != 0, out
        assert "Traceback" not in out and "ReadonlyError" not in out, out
        assert len(out.splitlines()) == 1, out
        # The host directory as the container's mountinfo names it: the path itself when it lies on
        # the host's root filesystem, else its path inside its own filesystem (same last part).
        assert "uid 10001" in out and "chown -R 10001:10001 " in out, out
        named = out.split("chown -R 10001:10001 ", 1)[1].split()[0]
        assert named == host_dir or (named.endswith("/" + os.path.basename(host_dir)) and host_dir.endswith(named)), out
        # ... and in the node itself, when the entrypoint does not look (twistd run directly).
        done = subprocess.run(["docker", "run", "--rm", *labels, "-v", "%s:/data" % host_dir, "--entrypoint", "twistd", image,
                               "--nodaemon", "--pidfile=", "kvd", "--listen", "n:7001", "--bind", "0.0.0.0", "--data-dir", "/data"],
                              capture_output=True, text=True, timeout=120)
        out = (done.stdout + done.stderr).strip()
        assert done.returncode != 0, out
        assert "Traceback" not in out and "ReadonlyError" not in out, out
        assert "uid 10001" in out and "chown -R 10001:10001 /data" in out, out
        # The advice works: as root, the chown; else run as the directory's owner.
        if os.geteuid() == 0:
            os.chown(host_dir, 10001, 10001)
            user = []
        else:
            user = ["--user", "%d:%d" % (os.getuid(), os.getgid())]
        container = "%s-fixed" % project
        d.docker("run", "-d", "--name", container, *labels, *HEALTH, *user, "-v", "%s:/data" % host_dir, image,
                 "--listen", "fixed:7001", "--initial-cluster", "fixed:7001", "--cluster-id", project)
        wait_for("the node on the chowned directory healthy", lambda: d.health(container) == "healthy", 60)
    finally:
        subprocess.run(["docker", "rm", "-f", "%s-bind" % project, "%s-fixed" % project], capture_output=True, timeout=60)
        shutil.rmtree(host_dir, ignore_errors=True)


# ================================================================ 5. compose publishes DNS and HTTP: see test_docker.py
