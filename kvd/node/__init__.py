"""
The node: the pure Raft core wired to the reactor, to LMDB, to the peer
transport and to the key/value state machine.

- ``service``: ``NodeService``, the Twisted service: lifecycle, the inputs
  (ticks, peer messages), the Ready loop's events (the loop itself is
  kvd.replica, shared with the simulator);
- ``reads``: linearizable reads by ReadIndex;
- ``session``: writes, exactly once (the node as one client of the machine),
  proposed here or forwarded to the leader;
- ``membership``: joining, removing, bootstrapping from founders;
- ``view``: ``NodeView``, all that the rest of kvd may read about the node;
- ``settings``: ``NodeSettings``.

Failures are ``kvd.errors.KvdError``s.
"""

from kvd.node.settings import NodeSettings
from kvd.node.service import NodeService
from kvd.node.view import NodeView

__all__ = ["NodeSettings", "NodeService", "NodeView"]
