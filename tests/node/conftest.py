"""Fixtures for node tests: a three-node cluster over the fake clock (tests/node/fakes.py)."""

import pytest

from tests.node.fakes import make_cluster, run


def running_cluster(tmp_path, prepare=None):
    """Started, elected, and stopped again afterwards; ``prepare(node)`` runs on each node before it starts."""
    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        if prepare is not None:
            prepare(node)
        node.startService()
    run(clock, 5)
    yield clock, network
    for node in network.nodes.values():
        if node.running:
            node.stopService()
    run(clock, 3)


@pytest.fixture
def cluster(tmp_path):
    yield from running_cluster(tmp_path)
