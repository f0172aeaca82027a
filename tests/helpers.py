# -*- test-case-name: tests.wire.test_peers -*-
"""
Test helpers shared by test packages: an in-memory connection between two
protocols (in the spirit of twisted.test.iosim, which is not public API) and
a log collector.

Allowed imports: twisted, the standard library.
"""

from __future__ import annotations

from typing import List, Optional

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure


class PumpTransport(StringTransport):
    """A StringTransport whose close is carried out by the Pump after its data is delivered."""

    def __init__(self, protocol, host: IPv4Address, peer: IPv4Address) -> None:
        super().__init__(hostAddress=host, peerAddress=peer)
        self.protocol = protocol
        self.closed = False
        self.nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = bool(enabled)


class Pump:
    """
    Two protocols joined by in-memory transports.  ``flush()`` moves bytes
    both ways until both sides are quiet, then carries out any requested
    close (delivering ``connectionLost`` to both ends), like a reactor would.
    """

    def __init__(self, client, server, client_transport: PumpTransport, server_transport: PumpTransport):
        self.client = client
        self.server = server
        self.client_transport = client_transport
        self.server_transport = server_transport

    def flush(self, max_rounds: int = 10000) -> None:
        for _ in range(max_rounds):
            moved = self._move(self.client_transport, self.server) | self._move(self.server_transport, self.client)
            if moved:
                continue
            if not self.closed and (self.client_transport.disconnecting or self.server_transport.disconnecting):
                self.close(error.ConnectionDone("closed by a peer"))
                continue
            return
        raise AssertionError("pump did not settle: the protocols keep talking")

    @staticmethod
    def _move(source: PumpTransport, destination) -> bool:
        if source.closed:
            return False
        data = source.value()
        if not data:
            return False
        source.clear()
        target = destination.transport
        if target is None or getattr(target, "closed", False):
            return False
        destination.dataReceived(data)
        return True

    @property
    def closed(self) -> bool:
        return self.client_transport.closed and self.server_transport.closed

    def close(self, reason: Exception) -> None:
        """Cut the connection (as a network failure would), both ends at once."""
        for transport in (self.client_transport, self.server_transport):
            if not transport.closed:
                transport.closed = True
                transport.connected = False
                transport.protocol.connectionLost(Failure(reason))

    def cut(self) -> None:
        self.close(error.ConnectionLost("link cut"))


def connect(
    client,
    server,
    client_address: Optional[IPv4Address] = None,
    server_address: Optional[IPv4Address] = None,
    flush: bool = True,
) -> Pump:
    """Join ``client`` and ``server`` protocols in memory and (by default) flush the first exchange."""
    client_address = client_address or IPv4Address("TCP", "127.0.0.1", 40001)
    server_address = server_address or IPv4Address("TCP", "127.0.0.2", 7001)
    server_transport = PumpTransport(server, host=server_address, peer=client_address)
    client_transport = PumpTransport(client, host=client_address, peer=server_address)
    server.makeConnection(server_transport)
    client.makeConnection(client_transport)
    pump = Pump(client, server, client_transport, server_transport)
    if flush:
        pump.flush()
    return pump


class LogCapture:
    """Collects twisted.logger events while active (use as a context manager or fixture)."""

    def __init__(self) -> None:
        self.events: List[dict] = []

    def __enter__(self) -> "LogCapture":
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def messages(self, min_level: LogLevel = LogLevel.debug) -> List[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_level") is not None and e["log_level"] >= min_level
        ]

    def failures(self) -> List[Failure]:
        return [e["log_failure"] for e in self.events if "log_failure" in e]
