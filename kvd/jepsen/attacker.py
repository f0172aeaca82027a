"""
A stranger on the network, for the ``forge`` nemesis: while clients run, it
dials the members' peer ports and tries what issue 12 found breaking an
unauthenticated cluster, each attempt on a fresh connection:

- ``plain``: no TLS at all, a Hello with the public cluster id claiming the leader's id;
- ``no-cert``: TLS without a client certificate;
- ``stranger``: a certificate from the cluster's own CA for a node that is not a
  member, whose Hello claims the leader's id;
- ``forged-src``: a member's certificate (a buggy or compromised member), whose
  Hello is its own, then a vote with a huge term claiming to come from the
  leader, and a TimeoutNow claiming the same.

Each attempt must be refused: no Hello accepted under another identity, and
the forging connection dropped.  ``attempt`` returns what happened; an
attempt that got further than it should is a finding.  The history the
clients record meanwhile is checked for linearizability as in every run.

It speaks AMP bytes itself (kvd.wire.codec builds the boxes), so it is the
one module of the fault suite that knows the peer protocol; ``box``,
``hello``, ``read_box`` and ``closed_soon`` serve the peer-security system
tests too.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import Dict, Optional

from kvd.cli.certs import CertDir
from kvd.raft import messages as m
from kvd.wire import codec

KINDS = ("plain", "no-cert", "stranger", "forged-src")
HUGE_TERM = 2 ** 61


def box(command: bytes, args: Dict[bytes, bytes], ask: bool) -> bytes:
    out = b""
    items = [(b"_command", command)] + ([(b"_ask", b"1")] if ask else []) + sorted(args.items())
    for key, value in items:
        out += struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value
    return out + b"\x00\x00"


def hello(cluster_id: str, node_id: str) -> bytes:
    args = codec.Hello.makeArguments(
        {"cluster_id": cluster_id, "node_id": node_id, "protocol_version": codec.PROTOCOL_VERSION, "address": None}, None)
    return box(codec.Hello.commandName, dict(args), ask=True)


def read_box(sock, timeout_s: float = 5.0) -> Dict[bytes, bytes]:
    """One AMP box, or {} if the connection closed (or failed) first."""
    sock.settimeout(timeout_s)
    buf = b""

    def take(n):
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    box = {}
    try:
        while True:
            (klen,) = struct.unpack("!H", take(2))
            if klen == 0:
                return box
            key = take(klen)
            (vlen,) = struct.unpack("!H", take(2))
            box[key] = take(vlen)
    except (EOFError, OSError, ssl.SSLError):
        return {}


def closed_soon(sock, timeout_s: float = 5.0) -> bool:
    """True once the other side closes (or resets) within ``timeout_s``; False if it is still open then."""
    sock.settimeout(timeout_s)
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except socket.timeout:
        return False
    except (OSError, ssl.SSLError):
        return True


class Attacker:
    def __init__(self, cluster, tls_dir: str, work_dir: str):
        self.cluster = cluster
        self.certs = CertDir(tls_dir)
        self.work_dir = work_dir
        os.makedirs(work_dir, exist_ok=True)

    def _tls(self, host: str, port: int, node_id: Optional[str], directory: Optional[str] = None):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if node_id is not None:
            cert, key = self.certs.ensure_node(node_id, directory or os.path.join(self.work_dir, node_id.replace(":", "-")))
            context.load_cert_chain(cert, key)
        raw = socket.create_connection((host, port), timeout=5)
        return context.wrap_socket(raw)

    def attempt(self, kind: str, victim, leader, member) -> str:
        """Try one attack on ``victim``'s peer port; "refused" when it was, else what got through."""
        port = victim.port + 10000
        cid = self.cluster.cluster_id
        try:
            if kind == "plain":
                with socket.create_connection((victim.host, port), timeout=5) as sock:
                    sock.sendall(hello(cid, leader.id))
                    answer = read_box(sock)
                return "refused" if answer.get(b"accepted") != b"True" else "plain Hello accepted"
            if kind == "no-cert":
                try:
                    with self._tls(victim.host, port, None) as sock:
                        sock.sendall(hello(cid, leader.id))
                        answer = read_box(sock)
                except (ssl.SSLError, OSError):
                    return "refused"
                return "refused" if answer.get(b"accepted") != b"True" else "Hello without a certificate accepted"
            if kind == "stranger":
                with self._tls(victim.host, port, "127.0.0.1:1") as sock:
                    sock.sendall(hello(cid, leader.id))
                    answer = read_box(sock)
                return "refused" if answer.get(b"accepted") != b"True" else "a stranger's Hello as %s accepted" % leader.id
            if kind == "forged-src":
                with self._tls(victim.host, port, member.id, member.dir) as sock:
                    sock.sendall(hello(cid, member.id))
                    if read_box(sock).get(b"accepted") != b"True":
                        return "refused"  # e.g. the victim already has this member's connection: fine too
                    vote = m.RequestVote(term=HUGE_TERM, src=leader.id, dst=victim.id, last_log_index=10 ** 9,
                                         last_log_term=HUGE_TERM, transfer=True)
                    now = m.TimeoutNow(term=HUGE_TERM, src=leader.id, dst=victim.id)
                    for message in (vote, now):
                        for name, args in codec.message_frames(message, 1):
                            sock.sendall(box(name, dict(args), ask=False))
                    return "refused" if closed_soon(sock) else "a forged src was not dropped"
        except (OSError, ssl.SSLError, EOFError) as e:
            return "refused" if kind != "forged-src" else "refused (%s)" % type(e).__name__
        raise ValueError("unknown attack %r" % kind)
