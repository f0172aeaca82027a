"""
Who may import whom: one table, every package and module of kvd with what it
may import (kvd's own packages, the standard library, third-party packages),
and one test that fails for a module the table does not list and for an
import it does not allow.  Module docstrings point here instead of repeating
it.

The deterministic layers (the Raft core, the key/value machine, the shared
Ready loop, the simulator) get an explicit list of standard-library modules:
nothing that does I/O, reads a clock or starts threads, so that a seed
replays a run exactly.  They also never call the module-level ``random``
functions, only ``random.Random`` instances they are handed.
"""

import ast
import pathlib
import sys
from dataclasses import dataclass
from typing import FrozenSet, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
STDLIB = frozenset(sys.stdlib_module_names) if hasattr(sys, "stdlib_module_names") else None
ANY_STDLIB = None  # a Layer's ``std`` that allows every standard-library module

# The standard library that computes and nothing else: no I/O, no clock, no threads.
PURE = frozenset("__future__ abc bisect collections dataclasses enum functools hashlib heapq itertools json math "
                 "random re struct typing zlib".split())


def _set(text: str) -> FrozenSet[str]:
    return frozenset(text.split())


@dataclass(frozen=True)
class Layer:
    modules: FrozenSet[str]  # every module of the package ("__init__" included); a new one needs its line
    kvd: FrozenSet[str] = frozenset()  # kvd packages or modules it may import (a prefix allows its children)
    std: Optional[FrozenSet[str]] = ANY_STDLIB
    third: FrozenSet[str] = frozenset()  # third-party top-level packages


LAYERS = {
    # The protocol itself: pure.
    "kvd.raft": Layer(_set("__init__ core log messages progress quorum read_only storage"),
                      kvd=_set("kvd.raft kvd.limits"), std=PURE),
    "kvd.kv": Layer(_set("__init__ codec commands events expiry glob hashes keyspace leases longdouble machine results revisions txn watch"), kvd=_set("kvd.kv"), std=PURE),
    # Lua scripts: the one module of the machine with a third-party package (Lua 5.1 through lupa), and the
    # command table of the client port, so that redis.call parses as the port does.
    "kvd.kv.script": Layer(_set("script"), kvd=_set("kvd.kv kvd.resp.commands kvd.resp.encoder kvd.resp.errors"),
                           std=PURE, third=_set("lupa")),
    # The one Ready loop, shared by the node and the simulator: pure too.
    "kvd.replica": Layer(_set("replica"), kvd=_set("kvd.raft"), std=PURE),
    "kvd.errors": Layer(_set("errors"), std=PURE),
    # The one table of size limits, read by every layer a command crosses: pure, and imports nothing of kvd.
    "kvd.limits": Layer(_set("limits"), std=PURE),
    "kvd.address": Layer(_set("address")),
    # Hands a connection's buffered bytes to the kernel at once, through any protocol wrappers: peers and client port.
    "kvd.push": Layer(_set("push")),
    # The simulator runs the real core and loop on simulated time and disks.
    "kvd.sim": Layer(_set("__init__ cluster disk invariants leases network state streams"),
                     kvd=_set("kvd.sim kvd.raft kvd.kv kvd.replica"), std=PURE | {"traceback"}),
    "kvd.sim.__main__": Layer(_set("__main__"), kvd=_set("kvd.sim"), std=_set("__future__ argparse sys time")),
    # I/O at the edges, one room each.
    "kvd.store": Layer(_set("__init__ backup bench checksum lmdb schema state state_bench upgrade writer"), kvd=_set("kvd.store kvd.raft.messages kvd.raft.storage kvd.kv.codec kvd.kv.commands kvd.kv.hashes kvd.kv.keyspace kvd.kv.machine kvd.kv.revisions"),
                       third=_set("lmdb crc32c")),
    "kvd.wire": Layer(_set("__init__ codec errors peers snapshots tls"), kvd=_set("kvd.wire kvd.raft.messages kvd.errors kvd.limits kvd.push"),
                      third=_set("twisted zope OpenSSL cryptography")),
    # pubsub matches patterns as KEYS does (glob) and turns the machine's events into messages (events);
    # watch streams the node's history of changes (kvd.kv.watch).
    # parser reads complete requests with hiredis's C reader; parser_bench times it against the Python code alone.
    "kvd.resp": Layer(_set("__init__ auth budget commands connection encoder errors introspect parser parser_bench protocol pubsub watch"),
                      kvd=_set("kvd.resp kvd.kv.commands kvd.kv.results kvd.kv.txn kvd.kv.glob kvd.kv.events kvd.kv.watch "
                               "kvd.errors kvd.limits kvd.push"),
                      third=_set("twisted zope hiredis")),
    # The package's one blocking client: the CLI, the fault suite and the cluster view use it without the node.
    "kvd.resp.client": Layer(_set("client")),
    "kvd.node": Layer(_set("__init__ membership reads service session settings stall view"),
                      kvd=_set("kvd.node kvd.raft kvd.replica kvd.kv kvd.errors kvd.address kvd.wire.errors kvd.limits"),
                      third=_set("twisted")),
    "kvd.executor": Layer(_set("executor"), kvd=_set("kvd.resp kvd.kv.results kvd.kv.commands kvd.server_info kvd.address"),
                          third=_set("twisted")),
    "kvd.server_info": Layer(_set("server_info"), kvd=_set("kvd.kv.glob kvd.resp.encoder")),
    # backup: /v1/backup streams the backup file format (kvd.store.backup) and checks the CA's signature.
    "kvd.discovery": Layer(_set("__init__ backup cluster_view dns http metrics services"),
                           kvd=_set("kvd.discovery kvd.address kvd.resp.client kvd.store.backup"),
                           third=_set("twisted zope prometheus_client cryptography")),
    # twistd's side: the one module that wires everything.
    "kvd.tap": Layer(_set("tap"), kvd=_set("kvd.address kvd.node kvd.executor kvd.kv.machine kvd.kv.events kvd.kv.watch kvd.resp.protocol kvd.resp.budget kvd.resp.pubsub kvd.resp.watch kvd.resp.auth "
                                           "kvd.store.lmdb kvd.store.state kvd.wire.peers kvd.wire.tls kvd.discovery.services kvd.limits"),
                     third=_set("twisted lmdb")),
    # mgmt.py's side: nodes only over their ports, never the node's code.
    "kvd.cli": Layer(_set("__init__ certs client docker docker_ops errors home lock mgmt route server"),
                     kvd=_set("kvd.cli kvd.address kvd.errors kvd.resp.client"), third=_set("click cryptography")),
    # restore and recover write a stopped node's data dir: the one module of the CLI that uses the store.
    "kvd.cli.backup": Layer(_set("backup"), kvd=_set("kvd.cli kvd.address kvd.errors kvd.store.backup"), third=_set("cryptography")),
    # The fault suite: a black box that reaches nodes through processes, sockets and packet filters.
    "kvd.check": Layer(_set("__init__ durability expiry linear locks txn watches"), kvd=_set("kvd.check")),
    # The stranger of the forge nemesis speaks the peer protocol's bytes itself.
    "kvd.jepsen.attacker": Layer(_set("attacker"), kvd=_set("kvd.wire.codec kvd.raft.messages kvd.cli.certs")),
    # locks: the clients take locks with mgmt.py's own recipe (kvd.cli.lock), so the suite checks that code.
    "kvd.jepsen": Layer(_set("__init__ __main__ cluster expiry locks multikey nemesis netfilter run watches workload"),
                        kvd=_set("kvd.jepsen kvd.check kvd.errors kvd.resp.client kvd.cli.certs kvd.cli.lock")),
    # Benchmarks: a black box too, driving a cluster of the fault suite's processes with redis-benchmark.
    "kvd.bench": Layer(_set("__init__ __main__ data etcd failover loads pipeline procs profile redis_server redispy watch"),
                       kvd=_set("kvd.bench kvd.jepsen.cluster kvd.resp.client"), third=_set("redis pytest_timeout")),
    "kvd": Layer(_set("__init__")),
    # The twistd dropin only names kvd.tap by string: twistd --help must not import kvd.
    "twisted.plugins": Layer(_set("kvd_plugin"), std=frozenset(), third=_set("twisted")),
    "mgmt": Layer(_set("mgmt"), kvd=_set("kvd.cli"), std=_set("os sys"), third=_set("click redis")),
}

# Exactly one exception to purity, for a reason: the simulator's command line
# times the whole run to report runs per second (its runs never read it).
DETERMINISTIC = ("kvd.raft", "kvd.kv", "kvd.replica", "kvd.sim", "kvd.errors", "kvd.limits")


def module_name(path: pathlib.Path) -> str:
    """``kvd/raft/core.py`` -> ``kvd.raft.core``; a package's ``__init__.py`` keeps its ``__init__``."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def all_modules():
    paths = sorted((ROOT / "kvd").rglob("*.py")) + sorted((ROOT / "twisted" / "plugins").glob("*.py")) + [ROOT / "mgmt.py"]
    return [(module_name(p), p) for p in paths]


def layer_of(name: str):
    """(key, Layer) of the table line that lists module ``name``: its own line, else its package's; or None."""
    leaf = name.rsplit(".", 1)[-1]
    own = LAYERS.get(name)
    if own is not None and leaf in own.modules:
        return name, own
    parent = name.rsplit(".", 1)[0] if "." in name else None
    package = LAYERS.get(parent) if parent else None
    if package is not None and leaf in package.modules:
        return parent, package
    return None


def imports_of(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = ROOT / node.module.replace(".", "/")
            for alias in node.names:
                # ``from kvd.raft import messages`` imports the module kvd.raft.messages.
                sub = base / alias.name
                if node.module.split(".")[0] == "kvd" and (sub.with_suffix(".py").exists() or sub.is_dir()):
                    yield "%s.%s" % (node.module, alias.name), node.lineno
                else:
                    yield node.module, node.lineno


def allowed(layer: Layer, key: str, name: str) -> bool:
    root = name.split(".")[0]
    if root == "kvd":
        own = [key] if key.startswith("kvd") else []
        return any(name == k or name.startswith(k + ".") for k in list(layer.kvd) + own)
    if root == "__future__" or (STDLIB is not None and root in STDLIB):
        return layer.std is ANY_STDLIB or root in layer.std
    return root in layer.third


def violations(name: str, imports) -> list:
    entry = layer_of(name)
    if entry is None:
        return ["%s is not in the layer table (tests/test_layers.py LAYERS)" % name]
    key, layer = entry
    return ["%s:%d imports %s" % (name, line, imp) for imp, line in imports if not allowed(layer, key, imp)]


def test_every_module_is_listed_and_imports_only_what_its_layer_allows():
    modules = all_modules()
    assert len(modules) > 60
    bad = []
    for name, path in modules:
        bad += violations(name, list(imports_of(path)))
    assert bad == []


def test_every_listed_module_exists():
    """No stale lines: each module the table names is a file."""
    names = {name for name, _ in all_modules()}
    missing = []
    for key, layer in LAYERS.items():
        for leaf in layer.modules:
            full = key if key.rsplit(".", 1)[-1] == leaf else "%s.%s" % (key, leaf)
            if full not in names:
                missing.append(full)
    assert missing == []


def test_the_rules_catch_a_shortcut():
    """The check is not vacuous: a new module without a line, the core importing os or the node, the CLI
    importing the core, the fault suite importing twisted, are each flagged."""
    assert violations("kvd.raft.newthing", []) == ["kvd.raft.newthing is not in the layer table (tests/test_layers.py LAYERS)"]
    assert violations("kvd.brand_new", []) == ["kvd.brand_new is not in the layer table (tests/test_layers.py LAYERS)"]
    assert violations("kvd.raft.core", [("os", 3)]) == ["kvd.raft.core:3 imports os"]
    assert violations("kvd.raft.core", [("kvd.node", 4)]) == ["kvd.raft.core:4 imports kvd.node"]
    assert violations("kvd.raft.core", [("time", 5)]) == ["kvd.raft.core:5 imports time"]
    assert violations("kvd.cli.server", [("kvd.raft.core", 9)]) == ["kvd.cli.server:9 imports kvd.raft.core"]
    assert violations("kvd.jepsen.run", [("twisted.internet", 2)]) == ["kvd.jepsen.run:2 imports twisted.internet"]
    assert violations("kvd.wire.peers", [("kvd.raft.core", 7)]) == ["kvd.wire.peers:7 imports kvd.raft.core"]
    assert violations("kvd.replica", [("twisted.internet", 1)]) == ["kvd.replica:1 imports twisted.internet"]
    assert violations("twisted.plugins.kvd_plugin", [("kvd.tap", 1)]) == ["twisted.plugins.kvd_plugin:1 imports kvd.tap"]
    assert violations("kvd.raft.core", [("kvd.raft.log", 1), ("dataclasses", 2)]) == []


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


def test_deterministic_layers_use_no_global_random():
    """Only random.Random instances: the module-level functions share one hidden, unseeded generator."""
    bad = []
    for name, path in all_modules():
        if name.startswith(DETERMINISTIC):
            tree = ast.parse(path.read_text(), str(path))
            bad += ["%s:%d uses %s" % (name, line, what) for what, line in module_level_random_uses(tree)]
    assert bad == []


def test_the_random_check_is_not_vacuous():
    assert list(module_level_random_uses(ast.parse("import random\nx = random.choice([1])\n"))) == [("random.choice", 2)]
    assert list(module_level_random_uses(ast.parse("from random import shuffle\n"))) == [("from random import shuffle", 1)]
    assert list(module_level_random_uses(ast.parse("import random\nr = random.Random(1)\n"))) == []
