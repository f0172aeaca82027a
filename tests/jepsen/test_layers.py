"""
The checker is pure (the standard library and kvd.check only), and the
harness is a black box: it reaches the nodes only through processes, sockets
(kvd.resp.client, a standard-library-only client) and packet filters, never
by importing the node's code.
"""

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
STDLIB = set(getattr(sys, "stdlib_module_names", ())) or None


def kvd_imports(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_the_checker_imports_only_the_standard_library():
    for path in sorted((ROOT / "kvd" / "check").glob("*.py")):
        for name in kvd_imports(path):
            root = name.split(".")[0]
            assert name.startswith("kvd.check") or root == "__future__" or (STDLIB is None and root != "kvd") or root in (STDLIB or ()), \
                "%s imports %s" % (path.name, name)


def test_the_harness_does_not_import_the_node():
    """Besides the checker, the harness uses only kvd's Redis client, itself standard library only."""
    for path in sorted((ROOT / "kvd" / "jepsen").glob("*.py")):
        for name in kvd_imports(path):
            if name.startswith("kvd"):
                assert name.startswith(("kvd.check", "kvd.jepsen")) or name == "kvd.resp.client", "%s imports %s" % (path.name, name)
            else:
                assert name.split(".")[0] != "twisted", "%s imports %s" % (path.name, name)
    for name in kvd_imports(ROOT / "kvd" / "resp" / "client.py"):
        root = name.split(".")[0]
        assert root == "__future__" or (STDLIB is None and root != "kvd") or root in (STDLIB or ()), "client.py imports %s" % name
