"""
docker/build-base.sh without Docker or root: stand-ins for docker, id, apt-get and
debootstrap show that a missing debootstrap is installed with apt-get when the script
runs as root, and named with the exact apt-get line when not.  (The real build:
tests/docker/test_image_first_contact.py.)
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "docker", "build-base.sh")


@pytest.fixture
def stubs():
    """A bin directory of stand-ins; the rest of PATH is /usr/bin:/bin (debootstrap lives in /usr/sbin)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="kvd-build-base-"))
    (root / "bin").mkdir()
    yield root
    shutil.rmtree(root)


def stub(root: pathlib.Path, name: str, body: str) -> None:
    path = root / "bin" / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def run(root: pathlib.Path, uid: int):
    log = root / "calls.log"
    stub(root, "id", 'echo %d' % uid)
    # docker: the engine answers, the image does not exist.
    stub(root, "docker", 'echo "docker $*" >> %s; case "$1" in info) exit 0 ;; *) exit 1 ;; esac' % log)
    # apt-get install puts a debootstrap on PATH that fails at once (so nothing is built).
    stub(root, "apt-get", 'echo "apt-get $*" >> %s\ncase "$*" in *install*debootstrap*)\n'
         '  printf "#!/bin/sh\\necho stub debootstrap; exit 3\\n" > %s/bin/debootstrap; chmod 755 %s/bin/debootstrap ;;\nesac' % (log, root, root))
    env = {"PATH": "%s/bin:/usr/bin:/bin" % root, "TMPDIR": str(root), "KVD_BASE_IMAGE": "kvd-base-stub:test", "HOME": str(root)}
    done = subprocess.run(["/bin/sh", SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def test_as_root_a_missing_debootstrap_is_installed(stubs):
    assert shutil.which("debootstrap", path="/usr/bin:/bin") is None, "the test needs a PATH without debootstrap"
    done, calls = run(stubs, uid=0)
    out = done.stdout + done.stderr
    assert "installing it: apt-get install -y debootstrap" in out, out
    assert any(c.startswith("apt-get install") and "debootstrap" in c for c in calls), calls
    # It went on to use it (the stand-in fails on purpose: nothing is built).
    assert done.returncode != 0 and "stub debootstrap" in out, out


def test_not_root_names_the_apt_get_line(stubs):
    done, calls = run(stubs, uid=1000)
    assert done.returncode == 1
    assert "needs root" in done.stderr and "apt-get install -y debootstrap" in done.stderr, done.stderr
    assert not any(c.startswith("apt-get") for c in calls), calls
