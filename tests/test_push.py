"""
kvd.push: a connection's buffered bytes handed to the kernel at once, through
any protocol wrappers; the client port's replies pushed once a Ready is done.
(The TLS layer's half is in tests/wire/test_tls.py, through the peers.)
"""

import socket
from types import SimpleNamespace

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from kvd.push import push_now
from kvd.resp.protocol import RespFactory
from tests.resp.test_protocol import MachineExecutor, packed


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    connection = tcp.Connection(ours, Protocol(), reactor=MemoryReactor())
    connection.connected = 1
    yield connection, theirs
    ours.close()
    theirs.close()


def test_a_tcp_buffer_goes_to_the_kernel_at_once_and_a_closing_connection_is_left_alone(pair):
    connection, theirs = pair
    connection.write(b"batch")
    with pytest.raises(BlockingIOError):
        theirs.recv(100)  # Twisted waits for the reactor's next turn
    push_now(connection)
    assert theirs.recv(100) == b"batch"
    push_now(connection)  # nothing buffered: nothing to do
    connection.write(b"late")
    connection.disconnecting = True  # closing: the reactor's business
    push_now(connection)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)


def test_through_a_protocol_wrapper(pair):
    """The client port's byte counter wraps every connection: the push goes through it to the socket."""
    connection, theirs = pair
    wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())
    wrapper.makeConnection(connection)
    wrapper.write(b"+OK\r\n")
    push_now(wrapper)
    assert theirs.recv(100) == b"+OK\r\n"
    push_now(SimpleNamespace(wrappedProtocol=Protocol(), transport=None))  # a wrapper already disconnected


def test_the_client_port_pushes_every_reply_written_since_the_last_push(pair):
    connection, theirs = pair
    factory = RespFactory(MachineExecutor())
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    connection.getPeer = lambda: IPv4Address("TCP", "127.0.0.1", 40000)
    connection.getHost = lambda: IPv4Address("TCP", "127.0.0.1", 7001)
    proto.makeConnection(connection)
    proto.dataReceived(packed("SET", "k", "v") + packed("GET", "k"))
    with pytest.raises(BlockingIOError):
        theirs.recv(100)
    assert list(factory.unpushed) == [proto]
    factory.push_replies()
    assert theirs.recv(100) == b"+OK\r\n$1\r\nv\r\n"
    assert factory.unpushed == {}
    factory.push_replies()  # nothing written since: nothing to do
