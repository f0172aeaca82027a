"""
The deterministic packages (kvd.raft, kvd.sim, kvd.kv) import nothing that
does I/O, reads a clock or schedules threads, and never use the module-level
``random`` functions (only ``random.Random`` instances they are handed or
derive from a seed).  An ``ast`` walk over every module proves it.

kvd/sim/__main__.py is the one exception for the clock: it reads the wall
clock for the time budget and the runs-per-second report only.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "kvd"
FORBIDDEN = {"twisted", "lmdb", "socket", "time", "threading", "asyncio"}
CLOCK_ALLOWED = {ROOT / "sim" / "__main__.py": {"time"}}


def modules(package):
    return sorted((ROOT / package).rglob("*.py"))


def imported_roots(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def module_level_random_uses(tree):
    """Calls like random.random() or random.choice(...), and `from random import <function>`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "random":
            if node.attr != "Random":
                yield "random.%s" % node.attr, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module == "random":
            for alias in node.names:
                if alias.name != "Random":
                    yield "from random import %s" % alias.name, node.lineno


@pytest.mark.parametrize("package", ["raft", "sim", "kv"])
def test_no_io_clock_or_thread_imports(package):
    """No module of the package imports twisted, lmdb, socket, time, threading or asyncio."""
    paths = modules(package)
    assert paths, "no modules found under kvd/%s" % package
    bad = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        allowed = CLOCK_ALLOWED.get(path, set())
        for root, line in imported_roots(tree):
            if root in FORBIDDEN and root not in allowed:
                bad.append("%s:%d imports %s" % (path.relative_to(ROOT.parent), line, root))
    assert bad == []


@pytest.mark.parametrize("package", ["raft", "sim", "kv"])
def test_no_module_level_random(package):
    """Randomness comes only from random.Random instances, never from the shared module-level generator."""
    bad = []
    for path in modules(package):
        tree = ast.parse(path.read_text(), str(path))
        for what, line in module_level_random_uses(tree):
            bad.append("%s:%d uses %s" % (path.relative_to(ROOT.parent), line, what))
    assert bad == []


def test_the_checker_itself_sees_violations(tmp_path):
    """The walk is not vacuous: it flags a module that imports time and calls random.choice."""
    tree = ast.parse("import time\nimport random\nx = random.choice([1])\nr = random.Random(1)\n")
    assert [r for r, _ in imported_roots(tree) if r in FORBIDDEN] == ["time"]
    assert [w for w, _ in module_level_random_uses(tree)] == ["random.choice"]


def test_raft_imports_no_other_kvd_package():
    """kvd.raft is the bottom layer: it imports only the standard library and kvd.raft itself."""
    bad = []
    for path in modules("raft"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kvd.") and not node.module.startswith("kvd.raft"):
                bad.append("%s imports %s" % (path.name, node.module))
    assert bad == []
