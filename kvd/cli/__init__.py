"""
mgmt.py's commands: the seed's ``-r <role> -c <command>`` table (``mgmt``, whose ``main`` this package exports),
the local node processes under KVD_HOME (``home``), the node client and the
client role's commands (``client``), the server role's (``server``), which
node to use without ``-h`` (``route``), Docker containers as nodes
(``docker``, ``docker_ops``), locks and leader election for users' processes
(``lock``: leases and fencing tokens), and the exit codes (``errors``).

The CLI talks to nodes only over their client ports; it never imports the
node, the Raft core or the store (tests/test_layers.py).
"""

from kvd.cli.mgmt import main

__all__ = ["main"]
