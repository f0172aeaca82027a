"""
`make test` installs the Debian packages the tests use (tests/debian-packages.sh), or, when it cannot
(not root), stops before any test with the one apt-get line to run.
"""

import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "debian-packages.sh")
COMMANDS = ("redis-cli", "redis-server", "chromium", "chromedriver", "nft", "debootstrap", "etcd", "wrk")


@pytest.fixture
def tmp_path():
    """A directory the unprivileged user can read (pytest's own lies under a 0700 directory)."""
    path = tempfile.mkdtemp(prefix="kvd-debian-packages-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path)


def run_script(tmp_path, present, as_nobody):
    """The script with a PATH holding only ``id`` and stand-ins for the ``present`` commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.chmod(bin_dir, 0o755)
    (bin_dir / "id").symlink_to("/usr/bin/id")
    for name in present:
        (bin_dir / name).symlink_to("/bin/true")
    argv = ["/bin/sh", SCRIPT]
    if as_nobody:
        if os.geteuid() != 0:
            pytest.fail("this test switches to an unprivileged user and needs root (CI runs as root)")
        argv = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
    return subprocess.run(argv, env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30)


def test_not_root_names_the_exact_install_line_and_fails(tmp_path):
    done = run_script(tmp_path, present=("redis-cli", "nft"), as_nobody=True)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "tests need Debian packages; run: sudo apt-get install -y redis-server chromium chromium-driver debootstrap "
        "etcd-server wrk"
    ]


def test_nothing_to_do_when_every_command_is_there(tmp_path):
    done = run_script(tmp_path, present=COMMANDS, as_nobody=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_make_test_runs_it_before_pytest():
    with open(os.path.join(ROOT, "Makefile")) as f:
        recipe = f.read().split("\ntest: install\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert recipe[0].strip() == "sh tests/debian-packages.sh"
    assert "pytest" in recipe[-1]
