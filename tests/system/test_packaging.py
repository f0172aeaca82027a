"""`pip install .` yields a working `twistd kvd` from any directory (the dropin is packaged)."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.system


def test_pip_install_gives_twistd_kvd(tmp_path):
    """Install the package into a fresh venv (dependencies borrowed from ours) and ask `twistd kvd --help`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    target = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    # Our site-packages provides twisted, lmdb & co.  Added by a plain path
    # line, its own .pth files (our editable install of the repo) are NOT
    # processed, so kvd can only come from what pip installs below.
    with open(os.path.join(target, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # Build from a copy: a build in the work tree would leave build/ behind and race other builds.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".kvd", "build", "dist", "*.egg-info", ".git",
                                                                 "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", target, str(source)], check=True, timeout=300, cwd=str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([python, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0]='twistd'; run()",
                           "kvd", "--help"], capture_output=True, text=True, timeout=120, cwd=str(elsewhere),
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--initial-cluster" in done.stdout and "--bootstrap-expect" in done.stdout
    where = subprocess.run([python, "-c", "import kvd; print(kvd.__file__)"], capture_output=True, text=True,
                           cwd=str(elsewhere), env={"PATH": os.environ.get("PATH", "")}).stdout
    assert where.startswith(target), "kvd came from %s, not the installed copy" % where
