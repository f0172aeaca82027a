# -*- test-case-name: tests.node.test_cli_backup -*-
"""
mgmt.py's backup, restore and recover (``-r server -c ...``).

``backup -h HOST -f FILE``: asks the node's HTTP port (client port + 30000)
for ``/v1/backup`` (kvd.discovery.backup), signing the request with the
cluster CA's key from KVD_HOME/tls (as ``start`` made it, or the join token
installed with ``--token-file``), and writes the answer to FILE.part (0600:
it holds every key) while checking it (kvd.store.backup); only a complete,
intact file is renamed to FILE.  An existing FILE is never overwritten.

``restore -f FILE -h HOST``: checks FILE whole, then makes HOST a new node of
a new cluster (its own id, or ``--cluster-id``) under KVD_HOME, its data dir
seeded with the backup's state as a received snapshot, its configuration
itself alone; starts it.  Others then ``join`` it as usual.  KVD_HOME must
not already hold another cluster's seed (one KVD_HOME per cluster).

``recover -h HOST --force-new-cluster``: for a majority lost for good.  HOST
must be a node of this KVD_HOME and stopped; its data dir's membership is
rewritten to itself alone (kvd.store.backup.force_new_cluster: its log and
state kept), then it is started: a one-node cluster with the same cluster
id.  The lost members must never come back with their old data: wipe them
and ``join`` them again.  Without the flag it refuses, saying what may be
lost.

These two write a stopped node's data dir, so this module, alone in kvd.cli,
uses kvd.store (the rest of the CLI reaches nodes only through their ports).

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import time
from typing import Callable, Optional

from kvd.cli.client import normalize_host
from kvd.cli.errors import LOCAL_STATE, SERVER_ERROR, UNREACHABLE, USAGE, CliError
from kvd.cli.home import Home, port_free

Echo = Callable[[str], None]

#: The node's HTTP port is its client port + this (kvd.discovery.http HTTP_PORT_OFFSET).
HTTP_PORT_OFFSET = 30000
#: Seconds without a byte from the node before a backup gives up.
BACKUP_IDLE_TIMEOUT_S = 60.0

#: What ``recover`` without its flag says, and what the flag accepts.
RECOVER_WARNING = (
    "recover makes %s a new one-node cluster from its own data: writes the lost majority had "
    "and this node had not received are lost for good, and writes only it had (never committed) are kept; "
    "run it only when the other members are gone for good (their data must never come back: wipe them and join "
    "them anew); to go ahead, add --force-new-cluster"
)


class _Tee:
    """A file-like reader over an HTTP response that writes every byte it hands out to ``out``."""

    def __init__(self, response, out) -> None:
        self.response = response
        self.out = out
        self.bytes = 0

    def read(self, n: int) -> bytes:
        data = self.response.read(n)
        self.out.write(data)
        self.bytes += len(data)
        return data


def sign_request(home: Home, node_id: str) -> str:
    """The Authorization header value for a backup of ``node_id``, signed with the CA key of KVD_HOME."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from kvd.cli.certs import CertDir
    from kvd.store.backup import AUTH_SCHEME, signed_message

    certs = CertDir(home.tls_dir)
    try:
        with open(certs.ca_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise CliError(LOCAL_STATE, "backup signs its request with the cluster CA key %s, which cannot be read (%s); "
                                    "run it from the KVD_HOME that started the cluster, or install the join token "
                                    "there (join --token-file)" % (certs.ca_key, e.strerror or e)) from None
    timestamp, nonce = int(time.time()), secrets.token_hex(16)
    signature = key.sign(signed_message(node_id, timestamp, nonce), ec.ECDSA(hashes.SHA256()))
    return "%s ts=%d,nonce=%s,sig=%s" % (AUTH_SCHEME, timestamp, nonce, base64.urlsafe_b64encode(signature).decode("ascii"))


def backup(home: Home, address: str, path: str, echo: Echo, http_port: Optional[int] = None) -> dict:
    """Pull a backup of ``address`` into ``path``; returns the file's header."""
    import http.client

    from kvd.store.backup import HTTP_PATH, BackupError, BackupReader

    host, port, node_id = normalize_host(address)
    http_port = http_port or port + HTTP_PORT_OFFSET
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise CliError(USAGE, "%s exists; a backup never overwrites a file: choose another -f or delete it" % path)
    partial = path + ".part"
    authorization = sign_request(home, node_id)
    conn = http.client.HTTPConnection(host, http_port, timeout=BACKUP_IDLE_TIMEOUT_S)
    try:
        try:
            conn.request("GET", HTTP_PATH, headers={"Authorization": authorization})
            response = conn.getresponse()
        except OSError as e:
            raise CliError(UNREACHABLE, "cannot reach the HTTP port of %s at %s:%d (%s); is the node running with HTTP on?" % (node_id, host, http_port, e)) from None
        if response.status != 200:
            reason = response.read(4096).decode("utf-8", "replace").strip()
            raise CliError(SERVER_ERROR, "%s refused the backup (HTTP %d): %s" % (node_id, response.status, reason or response.reason))
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise CliError(USAGE, "cannot write %s: %s" % (partial, e.strerror or e)) from None
        try:
            with os.fdopen(fd, "wb") as out:
                tee = _Tee(response, out)
                reader = BackupReader(tee, "the backup from %s" % node_id)
                for _ in reader.body():
                    pass
                out.flush()
                os.fsync(out.fileno())
        except (BackupError, OSError, http.client.HTTPException) as e:
            _remove(partial)
            raise CliError(SERVER_ERROR, "backup of %s failed, nothing written to %s: %s" % (node_id, path, e)) from None
        except BaseException:
            _remove(partial)
            raise
    finally:
        conn.close()
    os.replace(partial, path)
    header = reader.header
    echo("backup of %s written to %s: %d keys at index %d (term %d) of cluster %s, %d bytes, checksum verified"
         % (node_id, path, header["key_count"], header["index"], header["term"], header["cluster_id"], tee.bytes))
    return header


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def restore(home: Home, address: str, path: str, echo: Echo, cluster_id: Optional[str] = None,
            tick_ms: Optional[int] = None, election_ticks: Optional[int] = None) -> None:
    """Seed a new one-node cluster at ``address`` from the backup at ``path``, and start it."""
    from kvd.cli import server as cli_server
    from kvd.address import PEER_PORT_OFFSET
    from kvd.store.backup import BackupError, seed_from_backup, verify_file

    host, port, node_id = normalize_host(address)
    try:
        header = verify_file(path)
    except BackupError as e:
        raise CliError(USAGE, "refusing to restore: %s; nothing was changed" % e) from None
    echo("checked %s: %d keys at index %d (term %d) of cluster %s, taken from %s"
         % (path, header["key_count"], header["index"], header["term"], header["cluster_id"], header["node_id"]))
    seed_record = home.seed()
    if seed_record is not None or home.records():
        raise CliError(LOCAL_STATE, "KVD_HOME=%s already holds cluster %s; restore into a new KVD_HOME (one per cluster), "
                                    "e.g. KVD_HOME=/path/to/new python3 mgmt.py -r server -c restore ..."
                       % (home.root, (seed_record or {}).get("cluster_id", "?")))
    if cluster_id == header["cluster_id"]:
        raise CliError(USAGE, "--cluster-id %s is the backed-up cluster's own: a restore founds a new cluster, give it a new id" % cluster_id)
    cli_server._check_peer_port(node_id, port)
    cli_server._check_ports_free(node_id, host, port)
    rec = home.new_record(id=node_id, host=host, client_port=port, peer_port=port + PEER_PORT_OFFSET,
                          cluster_id=cluster_id or "kvd-" + secrets.token_hex(4), kind="seed", expect=1,
                          tick_ms=tick_ms or cli_server.DEFAULT_TICK_MS,
                          election_ticks=election_ticks or cli_server.DEFAULT_ELECTION_TICKS)
    try:
        seed_from_backup(path, rec.data_dir, rec.cluster_id, rec.id, rec.member_address)
    except BaseException as e:
        # Half a data dir is nobody's: remove it, so that the same restore can simply be run again.
        shutil.rmtree(rec.directory, ignore_errors=True)
        if isinstance(e, BackupError):  # the file changed under us since it was checked
            raise CliError(USAGE, "refusing to restore: %s; nothing was changed" % e) from None
        if isinstance(e, Exception):
            raise CliError(LOCAL_STATE, "cannot write the data dir %s: %s: %s; nothing was kept" % (rec.data_dir, type(e).__name__, e)) from None
        raise
    home.save(rec)
    home.save_seed(node_id, rec.cluster_id)
    pid = cli_server.launch(rec, echo)
    echo("restored node %s (pid %d): a new cluster %s of one voter, with the backup's state at index %d"
         % (node_id, pid, rec.cluster_id, header["index"]))
    cli_server.write_join_token(home)
    info = cli_server.wait_for_leader(node_id, cli_server.SETTLE_TIMEOUT_S)
    echo("  state:       %s; add nodes with: python3 mgmt.py -r server -c join -h <host:port>"
         % ("leader" if info.get("raft_role") == "leader" else "no leader yet (check: python3 mgmt.py -r server -c list)"))


def recover(home: Home, address: str, echo: Echo, force_new_cluster: bool = False) -> None:
    """Make the stopped node ``address`` a one-node cluster on its own data, and start it."""
    from kvd.cli import server as cli_server
    from kvd.store.backup import BackupError, force_new_cluster as rewrite

    node_id = normalize_host(address)[2]
    rec = home.require(node_id)
    if not force_new_cluster:
        raise CliError(USAGE, RECOVER_WARNING % node_id)
    pid = rec.running_pid()
    if pid is not None:
        raise CliError(LOCAL_STATE, "node %s is running (pid %d): recover works on a stopped node only; if its cluster "
                                    "has really lost its majority, stop it first (-c stop -h %s)" % (node_id, pid, node_id))
    for number, what in ((rec.client_port, "client"), (rec.peer_port, "peer")):
        if not port_free(rec.host, number):
            raise CliError(LOCAL_STATE, "the %s port %s:%d of %s is in use: is the node still running? recover works on a stopped node only"
                           % (what, rec.host, number, node_id))
    # A member of its cluster still running here means the majority may not be lost at all.
    alive = [r.id for r in home.records() if r.id != node_id and r.cluster_id == rec.cluster_id and r.running_pid() is not None]
    if alive:
        raise CliError(LOCAL_STATE, "%s of cluster %s still run%s here: a majority may not be lost; recover only when "
                                    "the other members are gone for good (kill them first if they must go)"
                       % (", ".join(alive), rec.cluster_id, "s" if len(alive) == 1 else ""))
    if not cli_server.has_data(rec):
        raise CliError(LOCAL_STATE, "node %s has no data in %s: nothing to recover" % (node_id, rec.data_dir))
    try:
        kept, old = rewrite(rec.data_dir, rec.cluster_id, rec.id, rec.member_address)
    except BackupError as e:
        raise CliError(LOCAL_STATE, str(e)) from None
    except Exception as e:  # the store's own refusals (corrupt, another cluster's data dir)
        raise CliError(LOCAL_STATE, "cannot recover %s from %s: %s: %s" % (node_id, rec.data_dir, type(e).__name__, e)) from None
    lost = [m for m in old.members if m != node_id]
    echo("rewrote the membership of %s to itself alone (was: %s); kept its log to index %d (term %d), commit index %d"
         % (node_id, ", ".join(old.members) or "none", kept["last_index"], kept["term"], kept["commit_index"]))
    rec.kind, rec.expect, rec.seed = "seed", 1, ""
    home.save(rec)
    home.save_seed(node_id, rec.cluster_id)
    for other in lost:
        other_rec = home.record(other)
        if other_rec is not None and other_rec.running_pid() is None:
            home.archive(other_rec)  # its data must never come back as a member: a join starts it afresh
    pid = cli_server.launch(rec, echo)
    info = cli_server.wait_for_leader(node_id, cli_server.SETTLE_TIMEOUT_S)
    echo("started %s (pid %d): %s of a one-node cluster %s" % (node_id, pid, info.get("raft_role") or "not answering yet", rec.cluster_id))
    if lost:
        echo("  the lost members (%s) must not come back with their old data: join them anew, e.g. "
             "python3 mgmt.py -r server -c join -h %s" % (", ".join(lost), lost[0]))
