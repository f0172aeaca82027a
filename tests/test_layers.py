"""
Who may import whom inside kvd (the layering of README's "How it is built"):
an ``ast`` walk over every module checks each package's imports against its
allowed list, so a shortcut across the layers fails the build.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# module path prefix -> kvd modules it must never import (prefix match)
FORBIDDEN = {
    "kvd/raft/": ["kvd.kv", "kvd.store", "kvd.wire", "kvd.resp", "kvd.node", "kvd.sim", "kvd.cli", "kvd.tap"],
    "kvd/kv/": ["kvd.raft", "kvd.store", "kvd.wire", "kvd.resp", "kvd.node", "kvd.cli"],
    "kvd/store/": ["kvd.raft.core", "kvd.kv", "kvd.wire", "kvd.resp", "kvd.node", "kvd.cli"],
    "kvd/wire/": ["kvd.raft.core", "kvd.store", "kvd.node", "kvd.resp", "kvd.cli"],
    "kvd/resp/": ["kvd.raft", "kvd.store", "kvd.node", "kvd.wire", "kvd.cli"],
    "kvd/sim/": ["kvd.store", "kvd.wire", "kvd.resp", "kvd.node", "kvd.cli"],
    "kvd/node/": ["kvd.cli", "kvd.sim", "kvd.tap", "kvd.store", "kvd.wire.peers"],
    "kvd/cli": ["kvd.node", "kvd.raft", "kvd.store", "kvd.wire", "kvd.sim"],
    "twisted/plugins/": ["kvd"],
}


def imports_of(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


def violations(rel, names):
    bad = []
    for prefix, forbidden in FORBIDDEN.items():
        if rel.startswith(prefix):
            for name, line in names:
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append("%s:%d imports %s" % (rel, line, name))
    return bad


def test_layers_are_respected():
    """No module imports across the layering rules."""
    paths = sorted(ROOT.glob("kvd/**/*.py")) + sorted(ROOT.glob("twisted/plugins/*.py"))
    assert len(paths) > 30
    bad = []
    for path in paths:
        bad += violations(str(path.relative_to(ROOT)), list(imports_of(path)))
    assert bad == []


def test_the_rules_catch_a_shortcut():
    """The check is not vacuous: the core importing the node, or the CLI importing the core, is flagged."""
    assert violations("kvd/raft/core.py", [("kvd.node", 3)]) == ["kvd/raft/core.py:3 imports kvd.node"]
    assert violations("kvd/cli_server.py", [("kvd.raft.core", 9)]) == ["kvd/cli_server.py:9 imports kvd.raft.core"]
    assert violations("kvd/wire/peers.py", [("kvd.raft.messages", 1)]) == []
