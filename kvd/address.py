# -*- test-case-name: tests.node.test_address -*-
"""
Node addresses and the rule that derives a node's ports from its client port.

A node is named by the address of its client port, ``host:port``, as the
seed's CLI table uses it (``-h <host>``).  Its other ports follow the client
port by fixed offsets unless configured otherwise, as Redis Cluster derives
its bus port (client + 10000):

    client port   P          Redis protocol (redis-cli, telnet, netcat)
    peer port     P + 10000  Raft over AMP between nodes

In a Raft configuration a member's address is stored as
``host:client_port:peer_port`` so every node can reach every other one.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

from dataclasses import dataclass

PEER_PORT_OFFSET = 10000


class AddressError(ValueError):
    pass


def split_host_port(text: str, default_host: str = "127.0.0.1") -> tuple:
    """``"127.0.0.1:7001"`` -> ``("127.0.0.1", 7001)``; ``":7001"`` and ``"7001"`` use ``default_host``."""
    text = text.strip()
    if ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = "", text
    try:
        number = int(port)
    except ValueError:
        raise AddressError("%r is not host:port (the port must be a number)" % text) from None
    if not 0 < number < 65536:
        raise AddressError("port %d in %r is out of range 1-65535" % (number, text))
    return (host or default_host, number)


@dataclass(frozen=True)
class MemberAddress:
    host: str
    client_port: int
    peer_port: int

    @classmethod
    def from_client(cls, text: str, peer_port: int = 0) -> "MemberAddress":
        host, port = split_host_port(text)
        peer = peer_port or port + PEER_PORT_OFFSET
        if peer > 65535:
            raise AddressError("derived peer port %d is out of range; pass --peer-port" % peer)
        return cls(host, port, peer)

    @classmethod
    def parse(cls, text: str) -> "MemberAddress":
        """Parse ``host:client_port:peer_port`` (as stored in a configuration)."""
        try:
            host, client, peer = text.rsplit(":", 2)
            return cls(host, int(client), int(peer))
        except ValueError:
            raise AddressError("bad member address %r (want host:client_port:peer_port)" % text) from None

    @property
    def client(self) -> str:
        return "%s:%d" % (self.host, self.client_port)

    @property
    def peer(self) -> str:
        return "%s:%d" % (self.host, self.peer_port)

    def __str__(self) -> str:
        return "%s:%d:%d" % (self.host, self.client_port, self.peer_port)
