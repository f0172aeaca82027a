# -*- test-case-name: tests.node.test_cli -*-
"""
mgmt.py's command line: ``python3 mgmt.py -r <role> -c <command> [-h <host>]
[-k <key>] [-v <value>]``, exactly as the seed document's table has it.

This module parses and checks the arguments (click), prints the help (the
seed's usage block and table, verbatim, then what the table does not say:
extra options, KVD_HOME, exit codes) and turns every failure into ONE line
on stderr with the exit code of its kind (kvd.cli.errors).  The work is done
by kvd.cli.server (the server role) and kvd.cli.client (the client role).

``-h`` is the host, as in the seed's table, so help is ``--help`` only.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from typing import FrozenSet, List, Optional

import click

from kvd.cli.errors import EXIT_CODES, SERVER_ERROR, USAGE, CliError

PROG = "python3 mgmt.py"
USAGE_LINE = "Usage: python3 mgmt.py -r <role> -c <command> [-h <host>] [-k <key>] [-v <value>]"

# The seed document's table, word for word: it is the user's interface.
SEED_TABLE = [
    ("-r server -c start -h <host>", "Start a seed node"),
    ("-r server -c join -h <host>", "Join a node"),
    ("-r server -c list", "List all available nodes"),
    ("-r server -c kill -h <host>", "Kill a node"),
    ("-r server -c stop -h <host>", "Stop a node"),
    ("-r server -c restart -h <host>", "Restart a node"),
    ("-r client -c read -h <host>", "Get all the keys and values"),
    ("-r client -c read -h <host> -k <key>", "Read a value for a given key"),
    ("-r client -c write -h <host> -k <key> -v <value>", "Write a value to a key"),
    ("-r client -c update -h <host> -k <key> -v <value>", "Update a value for a key"),
    ("-r client -c delete -h <host> -k <key>", "Delete a key"),
]

EXTRA_TABLE = [
    ("-r server -c remove -h <host>", "Remove a node from the cluster, then stop it"),
    ("-r server -c rebuild -h <host>", "Rebuild a node from the others: stop, remove, wipe its data, rejoin"),
    ("-r server -c backup -h <host> -f <file>", "Write a checked backup of a node's applied state to a file"),
    ("-r server -c restore -f <file> -h <host>", "Check a backup and start a new one-node cluster from it at <host>"),
    ("-r server -c recover -h <host> --force-new-cluster", "Majority lost for good: a stopped survivor becomes a one-node cluster"),
    ("-r client -c lock -k <name> -- <command...>", "Run a command while holding the lock <name> (a lease and a fencing token)"),
    ("-r client -c leader -k <name> -v <me> -- <command...>", "Leader election: campaign for <name> as <me>, run the command once elected"),
    ("-r client -c lock-status -k <name>", "Who holds the lock <name>, at which token, and the seconds its lease has left"),
]

OPTIONS_TEXT = """\
More options:
      --expect N        start: form the cluster once N nodes have joined (default 3;
                        1 makes a one-node cluster at once).
      --seed HOST:PORT  join, rebuild: a node of the cluster to join, or to rebuild from (default:
                        the seed `start` recorded, and the other nodes started from this KVD_HOME).
      --token-file FILE join: the join token `start` wrote (KVD_HOME/tls/join-token), for a node
                        on another machine (or $KVD_JOIN_TOKEN); a local join needs none.
      --json            read, list: print JSON, for scripts.
      --timeout SECS    client commands: how long to wait for an answer (default 10);
                        lock, leader: how long to wait for the lock (default: for ever; exit 5).
      --ttl SECS        lock, leader: the lease's time to live (default 10): a holder that stops
                        renewing it (crashed, paused, cut off) loses the lock that long after.
      -- COMMAND...     lock, leader: the command to run while holding the lock, with
                        KVD_LOCK_TOKEN (the fencing token), KVD_LOCK_KEY, KVD_LOCK_HOLDER and
                        KVD_LOCK_LEASE in its environment; its exit code is mgmt.py's.  If the
                        lock is lost meanwhile, the command gets SIGTERM (SIGKILL 5 s later) and
                        mgmt.py exits 10.  Guard what the lock protects with the token: write it
                        with KVD.TXN IF CREATE lock:<name> = $KVD_LOCK_TOKEN THEN SET ... (README).
      --tick-ms MS, --election-ticks N
                        start, join, restore: Raft timing (default 50 ms and 8 ticks; joiners copy the seed's).
      --cluster-id ID   start, restore: name the cluster (default: a random kvd-xxxxxxxx).
      -f FILE           backup: the file to write (never overwritten; FILE.part until it is
                        complete and checked); restore: the backup to read.
      --force-new-cluster
                        recover: yes, rewrite the survivor's membership to itself alone; writes
                        the lost majority had and it had not received are lost for good.
      --dns HOST:PORT   client commands and list without -h: find a node through this DNS
                        server (a node's DNS port, client port + 20000; or set $KVD_DNS).
      --docker [PROJECT]
                        server commands act on containers of a compose project (default
                        project kvd; or set $KVD_DOCKER=PROJECT): start and join create node
                        containers on its network, kill/stop/restart are docker kill/stop/
                        restart, remove takes the node out of the cluster and then deletes
                        its container and data volume, list asks a member through its
                        published port.  -h is name:port (e.g. node1:7001; published on
                        127.0.0.1:port) or the published host:port.  Needs the image: make
                        docker-image.  Tear a project down (containers, data volumes, network):
                          docker rm -f $(docker ps -aq -f label=com.docker.compose.project=PROJECT)
                          docker volume rm $(docker volume ls -q -f label=com.docker.compose.project=PROJECT)
                          docker network rm PROJECT_kvd
      --help            this text.

<host> is a node's client address, host:port (e.g. 127.0.0.1:7001; a bare port means 127.0.0.1).
That address is the node's id; its Raft peer port is the client port + 10000.
Any node answers client commands: followers forward writes to the leader.
Client commands may leave out -h: they then use the leader that DNS names (--dns or $KVD_DNS),
else the first node started from this KVD_HOME that answers.

Node state (pid files, logs, data) lives under $KVD_HOME, default <repo>/.kvd;
use a different KVD_HOME per cluster to run several side by side."""


def help_text() -> str:
    width = max(len(a) for a, _ in SEED_TABLE + EXTRA_TABLE)
    lines = [
        USAGE_LINE,
        "Help:  Run the management system to control and execute tasks.",
        "Options:",
        "      -r                Role to be defined.",
        "      -c                Command to be executed.",
        "      -h                Host name, including address and port.",
        "      -k                Key to be stored.",
        "      -v                Value corresponding to the key.",
        "",
        "%s   %s" % ("Arguments".ljust(width), "Description"),
        "%s   %s" % ("-" * width, "-" * len("Description")),
    ]
    lines += ["%s   %s" % (a.ljust(width), d) for a, d in SEED_TABLE]
    lines += ["", "Beyond the table:"]
    lines += ["%s   %s" % (a.ljust(width), d) for a, d in EXTRA_TABLE]
    lines += ["", OPTIONS_TEXT, "", "Exit codes:"]
    lines += ["  %d  %s" % (code, text) for code, text in EXIT_CODES]
    return "\n".join(lines)


@dataclass(frozen=True)
class Spec:
    required: FrozenSet[str]
    allowed: FrozenSet[str]


def _spec(required: str, optional: str = "") -> Spec:
    req = frozenset(required.split())
    return Spec(req, req | frozenset(optional.split()))


TIMING = " tick_ms election_ticks"

# Which options each command needs and accepts: anything else is a usage
# error, so a typo like `read -v x` is reported instead of silently ignored.
COMMANDS = {
    "server": {
        "start": _spec("host", "expect cluster_id" + TIMING),
        "join": _spec("host", "seed token_file" + TIMING),
        "list": _spec("", "host as_json dns"),
        "kill": _spec("host"),
        "stop": _spec("host"),
        "restart": _spec("host"),
        "remove": _spec("host"),
        "rebuild": _spec("host", "seed"),
        "backup": _spec("host file"),
        "restore": _spec("host file", "cluster_id" + TIMING),
        "recover": _spec("host", "force_new_cluster"),
    },
    "client": {
        "read": _spec("", "host key as_json timeout dns"),
        "write": _spec("key value", "host timeout dns"),
        "update": _spec("key value", "host timeout dns"),
        "delete": _spec("key", "host timeout dns"),
        "lock": _spec("key argv", "host value ttl timeout dns"),
        "leader": _spec("key value argv", "host ttl timeout dns"),
        "lock-status": _spec("key", "host as_json timeout dns"),
    },
}

OPTION_NAMES = {
    "host": "-h",
    "key": "-k",
    "value": "-v",
    "expect": "--expect",
    "seed": "--seed",
    "as_json": "--json",
    "timeout": "--timeout",
    "tick_ms": "--tick-ms",
    "election_ticks": "--election-ticks",
    "cluster_id": "--cluster-id",
    "dns": "--dns",
    "token_file": "--token-file",
    "file": "-f",
    "force_new_cluster": "--force-new-cluster",
    "ttl": "--ttl",
    "argv": "-- <command>",
}


def check_arguments(role: Optional[str], command: Optional[str], given: dict) -> None:
    """Raise a USAGE CliError unless role, command and the given options fit together."""
    if not role:
        raise CliError(USAGE, "missing -r <role> (server or client); see: %s --help" % PROG)
    if role not in COMMANDS:
        raise CliError(USAGE, "unknown role %r: use -r server or -r client; see: %s --help" % (role, PROG))
    if not command:
        raise CliError(USAGE, "missing -c <command>; for -r %s it is one of: %s" % (role, ", ".join(COMMANDS[role])))
    if command not in COMMANDS[role]:
        other = [r for r in COMMANDS if command in COMMANDS[r]]
        hint = (" (it belongs to -r %s)" % other[0]) if other else ""
        raise CliError(USAGE, "unknown command %r for -r %s%s: use one of %s" % (command, role, hint, ", ".join(COMMANDS[role])))
    spec = COMMANDS[role][command]
    present = {name for name, value in given.items() if value not in (None, False)}
    missing = sorted(spec.required - present, key=list(OPTION_NAMES).index)
    if missing:
        raise CliError(USAGE, "-r %s -c %s needs %s; see: %s --help" % (role, command, " and ".join(_placeholder(m) for m in missing), PROG))
    extra = sorted(present - spec.allowed, key=list(OPTION_NAMES).index)
    if extra:
        raise CliError(USAGE, "-r %s -c %s does not take %s; see: %s --help" % (role, command, ", ".join(OPTION_NAMES[e] for e in extra), PROG))


def _placeholder(name: str) -> str:
    return {"host": "-h <host>", "key": "-k <key>", "value": "-v <value>", "file": "-f <file>",
            "argv": "a command to run (after --)"}.get(name, OPTION_NAMES[name])


def _print_help(ctx: click.Context, _param, value) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(help_text())
        ctx.exit(0)


@click.command(add_help_option=False, context_settings={"help_option_names": []})
@click.option("-r", "--role", "role", metavar="<role>")
@click.option("-c", "--command", "command_name", metavar="<command>")
@click.option("-h", "--host", "host", metavar="<host>")
@click.option("-k", "--key", "key", metavar="<key>")
@click.option("-v", "--value", "value", metavar="<value>")
@click.option("--expect", type=click.IntRange(min=1, max=99))
@click.option("--seed")
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", type=click.FloatRange(min=0.1, max=3600))
@click.option("--tick-ms", type=click.IntRange(min=1, max=60000))
@click.option("--election-ticks", type=click.IntRange(min=2, max=10000))
@click.option("--cluster-id")
@click.option("--dns", metavar="HOST:PORT")
@click.option("--token-file", metavar="FILE")
@click.option("-f", "--file", "file", metavar="<file>")
@click.option("--force-new-cluster", is_flag=True)
@click.option("--ttl", type=click.IntRange(min=1, max=86400))
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.option("--docker", "docker", metavar="[PROJECT]", is_flag=False, flag_value="", default=None)
@click.option("--help", is_flag=True, is_eager=True, expose_value=False, callback=_print_help)
def command(role, command_name, docker=None, **given) -> int:
    given["argv"] = tuple(given.get("argv") or ()) or None
    check_arguments(role, command_name, given)
    project = docker_project(docker)
    if project is not None:
        check_docker_arguments(role, command_name, given)
        return run_docker(project, role, command_name, **given)
    return run(role, command_name, **given)


def docker_project(option: Optional[str]) -> Optional[str]:
    """The compose project of ``--docker [PROJECT]`` or $KVD_DOCKER; None outside docker mode."""
    import os

    if option is None:
        return os.environ.get("KVD_DOCKER") or None
    return option or os.environ.get("KVD_DOCKER") or "kvd"


def check_docker_arguments(role: str, command_name: str, given: dict) -> None:
    """Raise a USAGE CliError for what --docker does not do."""
    if given.get("dns"):
        raise CliError(USAGE, "--dns does not go with --docker: nodes are found through the project's containers")
    if role == "server" and command_name == "rebuild":
        raise CliError(USAGE, "rebuild does not go with --docker yet: remove the node (its container and data volume go too), then join it again")
    if role == "server" and command_name in ("backup", "restore", "recover"):
        raise CliError(USAGE, "%s does not go with --docker yet: it works on nodes started from this KVD_HOME" % command_name)


def run_docker(project: str, role: str, command_name: str, host=None, as_json=False, **given) -> int:
    """Do one checked command against the containers of a compose project."""
    from kvd.cli import docker as cli_docker

    echo = click.echo
    if role == "server":
        if command_name == "start":
            cli_docker.start(project, host, echo, expect=given.get("expect") or 3, cluster_id=given.get("cluster_id"), tick_ms=given.get("tick_ms"), election_ticks=given.get("election_ticks"))
        elif command_name == "join":
            cli_docker.join(project, host, echo, seed=given.get("seed"), tick_ms=given.get("tick_ms"), election_ticks=given.get("election_ticks"))
        elif command_name == "list":
            cli_docker.list_nodes(project, host, echo, as_json=as_json)
        else:
            getattr(cli_docker, command_name)(project, host, echo)
        return 0
    # Client commands: the node's id, dialled through its published port.
    host = cli_docker.route(project, host) if host else cli_docker.any_member(project)
    return run(role, command_name, host=host, as_json=as_json, **given)


def run(role: str, command_name: str, host=None, key=None, value=None, expect=None, seed=None, as_json=False, timeout=None, tick_ms=None, election_ticks=None, cluster_id=None, dns=None, token_file=None, file=None, force_new_cluster=False, ttl=None, argv=None) -> int:
    """Do one checked command; return 0 or raise CliError."""
    # Imported here so that --help and usage errors never pay for redis.
    from kvd.cli import client as cli_client
    from kvd.cli import server as cli_server
    from kvd.cli.home import Home

    echo = click.echo
    if role == "server":
        home = Home()
        if command_name == "start":
            cli_server.start(home, host, echo, expect=expect or 3, cluster_id=cluster_id, tick_ms=tick_ms, election_ticks=election_ticks)
        elif command_name == "join":
            cli_server.join(home, host, echo, seed=seed, tick_ms=tick_ms, election_ticks=election_ticks, token=join_token(token_file))
        elif command_name == "rebuild":
            cli_server.rebuild(home, host, echo, seed=seed)
        elif command_name in ("backup", "restore", "recover"):
            from kvd.cli import backup as cli_backup

            if command_name == "backup":
                cli_backup.backup(home, host, file, echo)
            elif command_name == "restore":
                cli_backup.restore(home, host, file, echo, cluster_id=cluster_id, tick_ms=tick_ms, election_ticks=election_ticks)
            else:
                cli_backup.recover(home, host, echo, force_new_cluster=force_new_cluster)
        elif command_name == "list":
            if host is None and not home.records():
                from kvd.cli import route as cli_route

                # Nothing started here: any member DNS names can tell the whole cluster.
                host = next(iter(cli_route.candidates_for_list(home, dns)), None)
            cli_server.list_nodes(home, host, echo, as_json=as_json)
        else:
            getattr(cli_server, command_name)(home, host, echo)
        return 0
    if host is None:
        from kvd.cli import route as cli_route
        from kvd.cli.home import Home

        host = cli_route.find_member(Home(), dns)
    if command_name in ("lock", "leader", "lock-status"):
        return run_lock(command_name, host, key, value, ttl, timeout, argv, as_json)
    with cli_client.NodeClient(host, timeout=timeout or cli_client.DEFAULT_TIMEOUT_S) as client:
        if command_name == "read" and key is None:
            _echo_text(cli_client.format_pairs(cli_client.read_all(client), as_json))
        elif command_name == "read":
            found = cli_client.read_key(client, key)
            if as_json:
                import json

                _echo_text(json.dumps({key: cli_client.to_text(found)}, ensure_ascii=False))
            else:
                _echo_text(cli_client.to_text(found))
        elif command_name == "write":
            cli_client.write_key(client, key, value)
            echo("OK")
        elif command_name == "update":
            cli_client.update_key(client, key, value)
            echo("OK")
        elif command_name == "delete":
            cli_client.delete_key(client, key)
            echo("OK")
    return 0


def run_lock(command_name: str, host: str, name: str, value=None, ttl=None, timeout=None, argv=None, as_json=False) -> int:
    """lock, leader, lock-status (kvd.cli.lock)."""
    from kvd.cli import client as cli_client
    from kvd.cli import lock as cli_lock
    from kvd.cli.errors import KEY_NOT_FOUND, NO_QUORUM
    from kvd.resp.client import ReplyError

    ttl = ttl or cli_lock.DEFAULT_TTL_S
    members = _member_addresses(host)  # and a wrong -h fails at once (exit 3), not after --timeout
    if command_name == "lock-status":
        nodes = cli_lock.Nodes([host], timeout or cli_client.DEFAULT_TIMEOUT_S)
    else:
        # Each request must end well within a third of the ttl, so the holder can try another node in time.
        nodes = cli_lock.Nodes([host], max(1.0, min(cli_client.DEFAULT_TIMEOUT_S, ttl / 3.0)))
        nodes.add(members)
    try:
        if command_name == "lock-status":
            try:
                held = cli_lock.status(nodes, name)
            except (cli_lock.Unavailable, cli_lock.Unknown) as e:
                raise CliError(NO_QUORUM, "lock-status of %s: %s" % (name, e)) from None
            if held is None:
                if as_json:
                    click.echo(json.dumps({"lock": name, "key": cli_lock.key_of(name), "holder": None}))
                raise CliError(KEY_NOT_FOUND, "lock %s is free (no key %s)" % (name, cli_lock.key_of(name)))
            if as_json:
                click.echo(json.dumps(held))
            else:
                _echo_text("holder: %s\ntoken: %d\nttl: %s" % (held["holder"], held["token"], held["ttl"]))
            return 0
        lock = cli_lock.Lock(nodes, name, ttl, cli_lock.new_holder(value))
        say = lambda text: click.echo("%s: %s" % (command_name, text), err=True)
        return cli_lock.run_locked(lock, argv, timeout, say, taken="elected for" if command_name == "leader" else "acquired")
    except ReplyError as e:  # the node refused a request (a password, a key of the wrong type...)
        raise cli_client.node_error(nodes.address, e.text) from None
    finally:
        nodes.close()


def _member_addresses(host: str) -> List[str]:
    """Every member's client address; CliError UNREACHABLE when ``host`` takes no connection, else best effort."""
    from kvd.cli import client as cli_client
    from kvd.cli.errors import UNREACHABLE

    try:
        with cli_client.NodeClient(host, timeout=3.0) as client:
            return [row["id"] for row in client.members() if isinstance(row, dict) and row.get("id")]
    except CliError as e:
        if e.code == UNREACHABLE:
            raise
        return []
    except (KeyError, TypeError):
        return []


def join_token(path: Optional[str]) -> Optional[str]:
    """The join token from --token-file, else $KVD_JOIN_TOKEN (never from argv, which ps shows)."""
    import os

    if path:
        try:
            with open(path, encoding="ascii") as f:
                return f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(USAGE, "cannot read --token-file %s: %s" % (path, getattr(e, "strerror", None) or e)) from None
    return os.environ.get("KVD_JOIN_TOKEN") or None


def _echo_text(text: str) -> None:
    # Values are arbitrary: never let a terminal's narrow encoding crash us.
    stream = sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    click.echo(text.encode(encoding, errors="backslashreplace").decode(encoding, errors="replace"))


def _fail(code: int, message: str) -> int:
    click.echo("error: %s" % message, err=True)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; return the exit code (never raise, never print a traceback)."""
    # Library deprecation chatter would break the one-line-per-failure rule.
    warnings.simplefilter("ignore")
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        return _fail(USAGE, "no arguments; %s; see: %s --help" % (USAGE_LINE[len("Usage: ") :], PROG))
    try:
        result = command.main(args=args, prog_name=PROG, standalone_mode=False)
    except CliError as e:
        return _fail(e.code, e.message)
    except click.UsageError as e:
        return _fail(USAGE, "%s; see: %s --help" % (e.format_message().rstrip("."), PROG))
    except click.ClickException as e:
        return _fail(USAGE, e.format_message())
    except (click.Abort, KeyboardInterrupt):
        return _fail(130, "interrupted")
    except BrokenPipeError:
        return 0  # `mgmt.py ... | head`: the reader had enough
    except Exception as e:  # a bug: still one line, and say where to look
        return _fail(SERVER_ERROR, "unexpected %s: %s; please report it" % (e.__class__.__name__, e))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
