"""
The kvd image's HEALTHCHECK: PING the node's client port; exit 0 on +PONG, 1 otherwise.

The address comes from $KVD_HEALTHCHECK_ADDR (host:port) if set, else from the
node's own command line (/proc/1/cmdline: --listen, --bind, or the --config
file's [kvd] listen and bind), so it follows
whatever options the container was started with.  A wildcard --bind is asked
on 127.0.0.1.  Standard library only; it must start fast.
"""

import os
import socket
import sys


def option(argv, name):
    """The last value of ``--name VALUE`` or ``--name=VALUE`` in argv, or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def target():
    explicit = os.environ.get("KVD_HEALTHCHECK_ADDR")
    if explicit:
        host, _, port = explicit.rpartition(":")
        return host or "127.0.0.1", int(port)
    try:
        with open("/proc/1/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        argv = []
    config = {}
    path = option(argv, "--config") or option(argv, "-c")
    if path:
        import configparser

        parser = configparser.ConfigParser()
        if parser.read(path) and parser.has_section("kvd"):
            config = dict(parser.items("kvd"))
    listen = option(argv, "--listen") or option(argv, "-l") or config.get("listen") or "127.0.0.1:7001"
    host, _, port = listen.rpartition(":")
    bind = option(argv, "--bind") or config.get("bind") or host
    if bind.strip("[]") in ("", "0.0.0.0", "::"):
        bind = "127.0.0.1"
    return bind.strip("[]"), int(port)


def main():
    host, port = target()
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = s.recv(64)
    except OSError as e:
        print("kvd at %s:%d: %s" % (host, port, e))
        return 1
    if reply.startswith(b"+PONG"):
        return 0
    print("kvd at %s:%d answered %r" % (host, port, reply))
    return 1


if __name__ == "__main__":
    sys.exit(main())
