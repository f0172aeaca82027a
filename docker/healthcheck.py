"""
The kvd image's HEALTHCHECK: healthy means "this node can serve" -- the rule of the
node's own ``GET /v1/health`` (kvd/discovery/http.py ``health_view``): it knows a live leader
and its applied index trails the cluster's commit index by at most 1000 entries.
A node in a minority, a lone survivor, or one never bootstrapped (no
--initial-cluster, still waiting for --bootstrap-expect peers, or for a join) answers
PING but not commands, and is unhealthy.  Exit 0 healthy, 1 not, with one line
saying why (docker inspect shows it under .State.Health.Log).

How it asks:

- ``GET /v1/health`` on the node's HTTP port: ``--http-port``, else the client port
  + 30000 (as ``twistd kvd`` does);
- if HTTP is off (``--http-port 0``, or client port + 30000 past 65535) or refuses
  the connection (the node skips a busy default port), ``INFO raft`` on the client
  port instead: healthy with a leader id and commit - applied <= 1000.  That is the
  node's own view: a follower whose leader has just gone quiet still names it until
  its election timer fires (one to two election timeouts, well within the retries).

The addresses come from the node's own command line (/proc/1/cmdline, the options
after ``kvd``: --listen, --bind, --http-port, or the --config file's [kvd] keys), so
it follows whatever options the container was started with; $KVD_HEALTHCHECK_ADDR
(host:port of the client port) overrides the client address.  A wildcard --bind is
asked on 127.0.0.1.  Standard library only; it must start fast.

Why it has its own few lines of RESP (one INFO request, one bulk reply) and of INFO
parsing instead of kvd's one client, kvd.resp.client: it is a standalone file,
installed as ``kvd-healthcheck`` and tested as a file with ``python -I -S`` (no
site-packages, so no kvd; tests/docker/test_healthcheck.py).  Docker runs it every
10 s for the container's whole life under a 3 s timeout, so it imports nothing it
does not need, and it keeps answering "unhealthy, because ..." in one line even when
the package it judges is not importable (a broken or half-upgraded install), where an
import of kvd would fail with a traceback instead.  Keep the copy that small: one
request, one bulk string, ``key:value`` lines.
"""

import json
import os
import socket
import sys

HTTP_PORT_OFFSET = 30000  # kvd.discovery.http.HTTP_PORT_OFFSET
MAX_LAG = 1000  # kvd.discovery.http.HEALTH_MAX_LAG
TIMEOUT_S = 1.2  # per question; the HEALTHCHECK's --timeout is 3s


def option(argv, *names):
    """The last value of ``--name VALUE`` or ``--name=VALUE`` (any of ``names``) in argv, or None."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif name.startswith("--") and arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
    return value


def node_argv(cmdline):
    """The ``twistd kvd`` options of PID 1's command line: what follows the ``kvd`` subcommand."""
    return cmdline[cmdline.index("kvd") + 1:] if "kvd" in cmdline else cmdline


def plan(argv, env=None):
    """-> (host, client port, HTTP port or None when HTTP is off) of the node run with ``argv``."""
    env = os.environ if env is None else env
    config = {}
    path = option(argv, "--config", "-c")
    if path:
        import configparser

        parser = configparser.ConfigParser()
        if parser.read(path) and parser.has_section("kvd"):
            config = dict(parser.items("kvd"))
    listen = option(argv, "--listen", "-l") or config.get("listen") or "127.0.0.1:7001"
    host, _, port = listen.rpartition(":")
    bind = option(argv, "--bind") or config.get("bind") or host
    explicit = env.get("KVD_HEALTHCHECK_ADDR")
    if explicit:
        bind, _, port = explicit.rpartition(":")
    bind = bind.strip("[]")
    if bind in ("", "0.0.0.0", "::"):
        bind = "127.0.0.1"
    client_port = int(port)
    raw = option(argv, "--http-port")
    if raw is None:
        raw = config.get("http-port")
    if raw is None or str(raw).strip() == "":
        http_port = client_port + HTTP_PORT_OFFSET
        http_port = http_port if http_port <= 65535 else None
    else:
        http_port = int(raw) or None
    return bind, client_port, http_port


def ask_http(host, port):
    """(healthy, why) from GET /v1/health; ConnectionRefusedError if nothing listens there."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/v1/health")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        view = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        view = {}
    if response.status == 200:
        return True, "serving: leader %s, applied %s, lag %s (http %s:%d/v1/health)" % (
            view.get("leader"), view.get("applied_index"), view.get("lag"), host, port)
    return False, "not serving: %s (http %s:%d/v1/health answered %d)" % (
        view.get("reason") or body[:200].decode("utf-8", "replace"), host, port, response.status)


def info_raft(host, port):
    """INFO raft over the client port, as a dict."""
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as s:
        s.settimeout(TIMEOUT_S)
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$4\r\nraft\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            raise ValueError(head.decode("utf-8", "replace"))
        size = int(head[1:])
        while len(rest) < size:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed mid-reply")
            rest += chunk
    fields = {}
    for line in rest[:size].decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def judge_info(fields):
    """(healthy, why) from INFO raft's fields: the same rule as /v1/health, on the node's own view."""
    leader = fields.get("raft_leader_id", "")
    try:
        lag = max(0, int(fields.get("raft_commit_index", 0)) - int(fields.get("raft_applied_index", 0)))
    except ValueError:
        lag = 0
    if not leader:
        return False, "not serving: no leader (role %s; election in progress, no quorum, or not bootstrapped)" % fields.get("raft_role", "?")
    if lag > MAX_LAG:
        return False, "not serving: behind, applied %s of commit %s" % (fields.get("raft_applied_index"), fields.get("raft_commit_index"))
    return True, "serving: leader %s, role %s, lag %d" % (leader, fields.get("raft_role", "?"), lag)


def check(host, client_port, http_port):
    """(healthy, why) of the node at ``host``."""
    note = ""
    if http_port:
        try:
            return ask_http(host, http_port)
        except ConnectionRefusedError:
            note = " (nothing on http %s:%d)" % (host, http_port)
        except (OSError, ValueError) as e:
            return False, "http %s:%d/v1/health: %s" % (host, http_port, e)
    try:
        fields = info_raft(host, client_port)
    except (OSError, ValueError) as e:
        return False, "INFO raft on %s:%d: %s%s" % (host, client_port, e, note)
    healthy, why = judge_info(fields)
    return healthy, "%s (INFO raft on %s:%d)%s" % (why, host, client_port, note)


def main():
    try:
        with open("/proc/1/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace").split("\0")
    except OSError:
        cmdline = []
    try:
        host, client_port, http_port = plan(node_argv(cmdline))
    except ValueError as e:
        print("cannot tell the node's ports from its command line: %s" % e)
        return 1
    healthy, why = check(host, client_port, http_port)
    print(why)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
