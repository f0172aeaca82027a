# -*- test-case-name: tests.test_push -*-
"""
Hand what a connection has buffered to the kernel now, rather than at the
reactor's next turn.

Twisted's ``write`` only buffers: the bytes leave when the reactor next polls
the socket for writing, after everything else the current turn still does.
Two places cannot wait for that.  The Ready loop sends a batch to the peers
and then writes to disk (the followers' own writes would wait for the
leader's); and a leader that has just applied a commit answers its clients
before it tells the followers the new commit index (one client's reply waited
behind those sends, measured at one client).

Works through any stack of protocol wrappers (the client port's byte counter,
TLS, whose ``BufferingTLSTransport`` holds small writes until its own
``callLater(0)``: encrypted now, then pushed), down to the TCP transport,
whose ``IWriteDescriptor.doWrite`` runs as the reactor would run it.  A
connection that is closing, or an error, is left to the reactor.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations


def push_now(transport) -> None:
    """Write ``transport``'s buffered bytes (and those of every layer under it) to its socket now."""
    tcp = transport
    while tcp is not None and getattr(tcp, "wrappedProtocol", None) is not None:
        aggregator = getattr(tcp, "_aggregator", None)
        if aggregator is not None and not getattr(tcp, "disconnecting", False):
            aggregator.flush()
        tcp = getattr(tcp, "transport", None)
    if tcp is None or not getattr(tcp, "connected", False) or getattr(tcp, "disconnecting", True):
        return
    if getattr(tcp, "_writeDisconnecting", False) or not (getattr(tcp, "_tempDataLen", 0) or getattr(tcp, "dataBuffer", b"")):
        return
    tcp.doWrite()  # an error comes back as a value: the buffer stays, and the reactor meets it again
