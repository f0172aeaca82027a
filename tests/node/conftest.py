"""Fixtures for node tests: a three-node cluster over the fake clock (tests/node/fakes.py)."""

import pytest

from tests.node.fakes import make_cluster, run


@pytest.fixture
def cluster(tmp_path):
    clock, network = make_cluster(tmp_path)
    for node in network.nodes.values():
        node.startService()
    run(clock, 5)
    yield clock, network
    for node in network.nodes.values():
        if node.running:
            node.stopService()
    run(clock, 3)
