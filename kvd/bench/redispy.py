"""
redis-py's own test suite against kvd (issue 15): how much of what real
clients use works, measured with the tests of the redis-py version installed.

``python -m kvd.bench redis-py`` downloads that version's source distribution
from PyPI once (its ``tests/`` directory; kept in ``.kvd/redis-py/``), starts a
three-node cluster of its own on loopback, and runs the chosen test files
(``FILES``) through the leader and through a follower, in RESP2 and in RESP3,
each as a pytest run of its own with ``--redis-url`` pointing at that node.
``--server redis`` runs them against a redis-server of its own instead (the
yardstick: what passes there is what the suite expects of a server of that
version).  It prints passed / failed / errors / skipped per file and run, and
writes every failing test's name with the first line of its error, so that
a change can be judged by the counts before and after.

Not part of ``make test``: most of the suite tests what kvd does not have yet,
and the download needs PyPI.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from kvd.bench.etcd import free_port

#: The test files run by default: strings and keys (test_commands), hashes, pipelines and
#: transactions, scripts, locks (the groups issue 15 names).
FILES = ("test_commands.py", "test_hash.py", "test_pipeline.py", "test_scripting.py", "test_lock.py")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(REPO, ".kvd", "redis-py")


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)  # (test id, first line of the error)

    def add(self, other: "Counts") -> None:
        self.passed += other.passed
        self.failed += other.failed
        self.errors += other.errors
        self.skipped += other.skipped
        self.failures += other.failures

    def row(self) -> str:
        return "%5d passed %5d failed %4d errors %5d skipped" % (self.passed, self.failed, self.errors, self.skipped)


def read_junit(path: str) -> Dict[str, Counts]:
    """
    A pytest --junitxml report -> Counts per test file (``test_commands.py``...).
    A test counts once: pytest writes a second element for a test whose
    teardown fails after its call did (a fixture's FLUSHDB, say), and such a
    test is an error, not a pass; a failed call stays a failure.
    """
    outcomes: Dict[str, Tuple[str, str, str]] = {}  # test id -> (file, outcome, first line of the error)
    rank = {"passed": 0, "skipped": 1, "errors": 2, "failed": 3}
    root = ElementTree.parse(path).getroot()
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        parts = classname.split(".")
        module = next((p for p in parts if p.startswith("test_")), parts[-1] if parts else "?")
        test_id = "%s::%s" % (classname, case.get("name", "?"))
        tags = {child.tag for child in case}
        message = ""
        if "failure" in tags or "error" in tags:
            outcome = "failed" if "failure" in tags else "errors"
            child = case.find("failure") if "failure" in tags else case.find("error")
            lines = (child.get("message") or child.text or "").strip().splitlines()
            message = lines[0][:200] if lines else ""
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        seen = outcomes.get(test_id)
        if seen is None or rank[outcome] > rank[seen[1]]:
            outcomes[test_id] = (module + ".py", outcome, message)
    per_file: Dict[str, Counts] = {}
    for test_id, (name, outcome, message) in outcomes.items():
        counts = per_file.setdefault(name, Counts())
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        if outcome in ("failed", "errors"):
            counts.failures.append((test_id, message))
    return per_file


def redis_py_version() -> str:
    import redis

    return redis.__version__


def fetch_tests(version: str, cache: str = CACHE) -> str:
    """The ``tests`` directory of redis-py ``version``'s source distribution (downloaded once into ``cache``)."""
    target = os.path.join(cache, "redis-%s" % version)
    tests = os.path.join(target, "tests")
    if os.path.isdir(tests):
        return target
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        "redis==%s" % version, "-d", scratch], check=True, timeout=300)
        (archive,) = glob.glob(os.path.join(scratch, "redis-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(scratch)
        os.rename(os.path.join(scratch, "redis-%s" % version), target)
    return target


#: Seconds one test may take (pytest-timeout): a test of a missing feature can wait for ever
#: (a lock whose release needs a script never frees).
TEST_TIMEOUT_S = 10


def run_suite(suite_dir: str, url: str, protocol: int, files=FILES, timeout_s: float = 3600.0,
              test_timeout_s: float = TEST_TIMEOUT_S, log_path: Optional[str] = None) -> Dict[str, Counts]:
    """One pytest run of ``files`` against ``url``; Counts per file.  pytest's own output goes to ``log_path``."""
    with tempfile.TemporaryDirectory() as scratch:
        # Beside the log when there is one, so the counts can be read again.
        report = os.path.splitext(log_path)[0] + ".xml" if log_path else os.path.join(scratch, "junit.xml")
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-rN", "--durations=10",
                "--timeout=%g" % test_timeout_s,
                "--redis-url=%s" % url, "--protocol=%d" % protocol, "--junitxml=%s" % report,
                "-W", "ignore"] + [os.path.join("tests", f) for f in files]
        with open(log_path or os.devnull, "w") as out:
            subprocess.run(argv, cwd=suite_dir, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
        if not os.path.exists(report):
            raise RuntimeError("pytest wrote no report for %s (RESP%d)" % (url, protocol))
        return read_junit(report)


class RedisServer:
    """A redis-server of our own on a loopback port (no persistence), stopped by its PID."""

    def __init__(self) -> None:
        self.port = free_port("127.0.0.1")
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("redis-server did not listen on %d" % self.port)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run(server: str = "kvd", files=FILES, protocols=(2, 3), targets=("leader", "follower"), log=print,
        log_dir: Optional[str] = None) -> dict:
    """Every run (target x protocol): {"runs": {name: {file: counts}}, "version": ...}."""
    try:
        import pytest_timeout  # noqa: F401  (the runs bound each test with it)
    except ImportError:
        raise RuntimeError("pytest-timeout is not installed: pip install pytest-timeout (make install does)") from None
    version = redis_py_version()
    suite = fetch_tests(version)
    log("redis-py %s's tests (%s) against %s" % (version, ", ".join(files), server), flush=True)
    out: dict = {"redis_py": version, "server": server, "files": list(files), "runs": {}}
    if server == "redis":
        with RedisServer() as redis_server:
            _run_all(suite, [("redis-server", "redis://127.0.0.1:%d/0" % redis_server.port)], files, protocols, out, log,
                     log_dir)
        return out
    from kvd.jepsen.cluster import ProcessCluster

    run_dir = tempfile.mkdtemp(prefix="kvd-bench-redispy-")
    cluster = ProcessCluster(run_dir, n=3, cluster_id="redispy", request_timeout_s=5.0)
    try:
        leader = cluster.start(60.0)
        ok, why = cluster.wait_healthy(60.0)
        if not ok:
            raise RuntimeError("the cluster did not come up: %s" % why)
        follower = next(n for n in cluster.members if n is not leader)
        urls = {"leader": "redis://%s/0" % leader.id, "follower": "redis://%s/0" % follower.id}
        _run_all(suite, [(t, urls[t]) for t in targets], files, protocols, out, log, log_dir)
    finally:
        cluster.close()
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _run_all(suite: str, targets, files, protocols, out: dict, log, log_dir: Optional[str]) -> None:
    for name, url in targets:
        for protocol in protocols:
            label = "%s RESP%d" % (name, protocol)
            started = time.monotonic()
            log_path = os.path.join(log_dir, "%s-resp%d.log" % (name, protocol)) if log_dir else None
            per_file = run_suite(suite, url, protocol, files, log_path=log_path)
            total = Counts()
            for counts in per_file.values():
                total.add(counts)
            log("%-18s %s  (%.0f s)" % (label, total.row(), time.monotonic() - started), flush=True)
            for f in sorted(per_file):
                log("  %-30s %s" % (f, per_file[f].row()), flush=True)
            out["runs"][label] = {f: {"passed": c.passed, "failed": c.failed, "errors": c.errors, "skipped": c.skipped,
                                      "failures": c.failures} for f, c in per_file.items()}
