"""
The base build is quiet when all is well: docker/build-base.sh succeeds and says nothing that
reads as a failure.

This file sorts first among the Docker tests on purpose: on a machine without the base image
(a fresh CI machine) it builds the real one, which every later Docker test then reuses, so the
suite runs debootstrap once.  Where the base already exists it rebuilds into a tag of its own
(--force) and removes it.  Without a Docker engine it fails and says so.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from kvd.cli import docker_ops as d

pytestmark = pytest.mark.docker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_base_build_prints_no_false_alarms():
    """build-base.sh (the real base if missing, else --force into a tag of its own): succeeds, and says nothing alarming."""
    problem = d.engine_problem()
    if problem is not None:
        pytest.fail("the Docker tests need a working Docker engine and compose, and there is none: %s" % problem,
                    pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("docker/build-base.sh needs root (debootstrap, chroot): run the Docker tests as root", pytrace=False)
    fresh = not d.image_exists(d.DEFAULT_BASE)
    tag = d.DEFAULT_BASE if fresh else "kvd-base-quiet-test:%s" % uuid.uuid4().hex[:8]
    try:
        started = time.monotonic()
        done = subprocess.run(["sh", os.path.join(REPO, "docker", "build-base.sh")] + ([] if fresh else ["--force"]),
                              capture_output=True, text=True, timeout=900, env=dict(os.environ, KVD_BASE_IMAGE=tag))
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        print("base build (%s): %.0fs\n%s" % (tag, time.monotonic() - started, out))
        assert d.image_exists(tag), out
        for alarm in ("E: ", "Is /dev/pts mounted", "debconf: delaying", "warning", "dpkg-reconfigure", "Traceback"):
            assert alarm not in out, "the base build printed %r:\n%s" % (alarm, out)
        assert all(line.startswith("build-base: ") for line in out.splitlines()), out
    finally:
        if not fresh:
            d.docker("rmi", "-f", tag, check=False, timeout=120)
