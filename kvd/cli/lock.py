# -*- test-case-name: tests.node.test_lock -*-
"""
Locks and leader election for users' processes (issue 16), built on leases
and a fencing token: ``mgmt.py -r client -c lock -k NAME -- CMD ARGS...``.

The recipe (what any client can do with redis-cli; README "Locks and leader
election"):

1. **Grant a lease**: ``KVD.LEASE GRANT ttl`` -> lease id.
2. **Try to take the lock** in one MULTI/EXEC (one log entry)::

       SET lock:NAME <holder> NX LEASE <lease>
       KVD.GET lock:NAME WITHREV        -> [holder, create_revision, mod_revision, version]

   If the key holds our ``<holder>`` (unique per attempt), we hold the lock,
   and its **fencing token** is the key's ``create_revision``: the store's
   revision when this holder created the key.  Revisions only grow, so every
   later holder's token is larger, and no two holders ever share one.  The
   read in the same entry also settles a lost reply: a retry that finds our
   own holder there knows the earlier attempt won (and with which token).
3. **Wait** (poll with backoff, to ``--timeout``) while another holder has it;
   our lease is kept alive meanwhile, and granted anew if it lapsed.
4. **While held**, ``KVD.LEASE KEEPALIVE`` every ttl/3 together with a read of
   the key: a lease that is not found, or a key that is gone or was created at
   another revision, means the lock is **lost**; so does no keepalive answered
   for a whole ttl since the last one was *sent* (the lease may have expired
   by the cluster's clock).  The command is then terminated (SIGTERM, then
   SIGKILL after a grace period) and the exit code is 10.  When the command
   exits, one more keepalive checks the lock was still ours: if not (the
   holder was paused past the ttl, say), the exit code is 10 as well, never
   the command's success.
5. **Release**: ``KVD.TXN IF CREATE lock:NAME = <token> THEN DEL lock:NAME``
   (deletes the key only if it is still ours), then ``KVD.LEASE REVOKE``.

**Fencing.** Timing alone cannot make a lock safe: a holder paused longer
than the ttl (GC, SIGSTOP, a swapped-out VM) wakes believing it still holds
the lock while another holds it.  So what the lock protects must check the
token: a write to it in kvd is ``KVD.TXN IF CREATE lock:NAME = <token> THEN
SET ...`` (``fenced_write``), which applies only while the key is still the
one this holder created; a paused holder's write after it lost the lock is
refused (answer ``[0, ...]``).  A resource outside kvd keeps the highest token
it has seen and refuses smaller ones.

The command runs with ``KVD_LOCK_KEY``, ``KVD_LOCK_TOKEN``,
``KVD_LOCK_HOLDER`` and ``KVD_LOCK_LEASE`` in its environment.

The recipe (``Lock``) talks to a ``client`` with ``call`` and ``pipeline``
(``Nodes`` here, or a fake in the tests) and is given its clock and sleep,
so its logic is tested without a cluster; ``run_locked`` adds the child
process and signals.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from kvd.cli import client as cli_client
from kvd.cli.errors import LOCK_LOST, TIMEOUT, CliError
from kvd.errors import Code
from kvd.resp.client import Connection, Indeterminate, NotSent, ReplyError

PREFIX = "lock:"
DEFAULT_TTL_S = 10
#: Longest pause between two tries while another holder has the lock.
MAX_POLL_S = 0.5
FIRST_POLL_S = 0.02
#: Seconds a command has to exit after SIGTERM, once its lock is lost, before SIGKILL.
GRACE_S = 5.0
LEASE_NOT_FOUND = "lease not found"


class Unavailable(Exception):
    """The request was certainly not applied: no node reachable, or no leader (NOLEADER, TRYAGAIN)."""


class Unknown(Exception):
    """The request may or may not have been applied: no answer in time, a lost connection, -TIMEOUT."""


class LockLost(Exception):
    """The lock is no longer ours: the lease is gone, the key is gone or another's, or no keepalive for a ttl."""


class LockTimeout(Exception):
    """Not acquired within the time allowed."""


def key_of(name: str) -> str:
    return PREFIX + name


def new_holder(name: Optional[str] = None) -> str:
    """A holder id unique to one process's attempt: ``<name or hostname>/<pid>/<random>``."""
    return "%s/%d/%s" % (name or socket.gethostname(), os.getpid(), "%08x" % random.SystemRandom().getrandbits(32))


def fenced_write(name: str, token: int, key, value) -> tuple:
    """The KVD.TXN that writes ``key`` only while the lock ``name`` is still held at ``token``."""
    return ("KVD.TXN", "IF", "CREATE", key_of(name), "=", str(token), "THEN", "SET", key, value)


def _text(value) -> str:
    return cli_client.to_text(value)


# ---------------------------------------------------------------- the nodes
class Nodes:
    """
    Requests to a cluster through one node at a time: the first address that
    takes a connection, moving on to the next after a failure, so a holder
    keeps its lease alive through whichever node is up.  Every outcome is a
    reply, a ReplyError (an error reply of another kind), ``Unavailable`` or
    ``Unknown``.
    """

    def __init__(self, addresses: Sequence[str], timeout: float,
                 connect: Optional[Callable[[str, float], Connection]] = None):
        if not addresses:
            raise ValueError("no node address")
        self.addresses = list(dict.fromkeys(addresses))
        self.timeout = timeout
        self._connect = connect or _dial
        self._at = 0
        self._conn: Optional[Connection] = None

    @property
    def address(self) -> str:
        return self.addresses[self._at]

    def add(self, addresses: Sequence[str]) -> None:
        for a in addresses:
            if a and a not in self.addresses:
                self.addresses.append(a)

    def _next(self) -> None:
        self.close()
        self._at = (self._at + 1) % len(self.addresses)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def pipeline(self, commands: Sequence[Sequence]) -> List[object]:
        """Replies in order (error replies in place, as ReplyError); Unavailable or Unknown for the batch."""
        last: Optional[Exception] = None
        for _ in range(len(self.addresses)):  # nothing was sent on a NotSent: the next node is safe to try
            if self._conn is None:
                self._conn = self._connect(self.address, self.timeout)
            try:
                replies = self._conn.pipeline(commands)
            except NotSent as e:
                last = e
                self._next()
                continue
            except Indeterminate as e:
                self._next()
                raise Unknown("%s: %s" % (self.address, e)) from None
            for reply in replies:  # a node without a leader may be cut off from it: the next try goes elsewhere
                if isinstance(reply, ReplyError) and reply.code in (Code.NOLEADER, Code.TRYAGAIN):
                    where = self.address
                    self._next()
                    raise Unavailable("%s: %s" % (where, reply.text))
                if isinstance(reply, ReplyError) and reply.code == Code.TIMEOUT:
                    where = self.address
                    self._next()
                    raise Unknown("%s: %s" % (where, reply.text))
            return replies
        raise Unavailable("no node answers (%s): %s" % (", ".join(self.addresses), last))

    def call(self, *args):
        reply = self.pipeline([args])[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply


def _dial(address: str, timeout: float) -> Connection:
    host, port = cli_client.dial_address(address)
    return Connection(host, port, timeout=timeout, connect_timeout=min(cli_client.CONNECT_TIMEOUT_S, timeout))


# ---------------------------------------------------------------- the recipe
@dataclass
class Holding:
    name: str
    holder: str
    lease: int
    token: int
    reads: tuple = ()  # the values of ``Lock.reads`` in the entry that took the lock


class Lock:
    """One process's lock on ``name``: acquire, keep alive, release (the recipe in the module docstring)."""

    def __init__(self, client, name: str, ttl: int = DEFAULT_TTL_S, holder: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 reads: Sequence[str] = ()):
        self.client = client
        # Keys read in the entry that takes the lock: what the protected state was at the token's revision.
        self.reads = tuple(reads)
        self.unknown = False  # some attempt's outcome was unknown (it may have taken the lock)
        self.name = name
        self.key = key_of(name)
        self.ttl = int(ttl)
        self.holder = holder or new_holder()
        self.clock = clock
        self.sleep = sleep
        self.lease: Optional[int] = None
        self.renewed = 0.0  # when the last keepalive (or the grant) that was answered was sent
        self.held: Optional[Holding] = None
        self.seen: Optional[tuple] = None  # (holder, token) of the other holder last seen

    # ------------------------------------------------------------ the lease
    def _ensure_lease(self) -> None:
        """A live lease to attach the key to: granted, or kept alive when a third of its ttl has passed."""
        if self.lease is not None and self.clock() - self.renewed < self.ttl / 3.0:
            return
        if self.lease is not None:
            sent = self.clock()
            reply = self.client.pipeline([("KVD.LEASE", "KEEPALIVE", self.lease)])[0]
            if not isinstance(reply, ReplyError):
                self.renewed = sent
                return
            if LEASE_NOT_FOUND not in reply.text:
                raise reply
            self.lease = None  # it lapsed while we waited: a new one
        sent = self.clock()
        self.lease = int(self.client.call("KVD.LEASE", "GRANT", self.ttl))
        self.renewed = sent

    # ------------------------------------------------------------ acquire
    def try_once(self) -> Optional[int]:
        """One attempt: the token if we hold the lock now (also after an earlier attempt's lost reply), else None."""
        self._ensure_lease()
        try:
            replies = self.client.pipeline([("MULTI",), self.take_command(), ("KVD.GET", self.key, "WITHREV")]
                                           + [("GET", k) for k in self.reads] + [("EXEC",)])
        except Unknown:
            self.unknown = True
            raise
        executed = replies[-1]
        if isinstance(executed, ReplyError):
            raise executed
        if not isinstance(executed, list) or len(executed) != 2 + len(self.reads):
            raise ReplyError("ERR unexpected EXEC reply %r" % (executed,))
        set_reply, got = executed[:2]
        if isinstance(set_reply, ReplyError):
            if LEASE_NOT_FOUND in set_reply.text:
                self.lease = None  # expired between the keepalive and the SET: the next try grants one
                return None
            raise set_reply
        if isinstance(got, ReplyError):
            raise got
        if got is None:
            return None  # taken and gone again between the SET and the read: cannot happen in one entry
        holder, token = _text(got[0]), int(got[1])
        if holder == self.holder:
            self.held = Holding(self.name, self.holder, self.lease, token, tuple(executed[2:]))
            return token
        self.seen = (holder, token)
        return None

    def take_command(self) -> tuple:
        """SET NX: the key is created by one holder only, so its create revision is that holder's alone."""
        return ("SET", self.key, self.holder, "NX", "LEASE", self.lease)

    def acquire(self, timeout: Optional[float] = None) -> Holding:
        """Hold the lock, waiting up to ``timeout`` seconds (None: for ever); LockTimeout past it."""
        deadline = None if timeout is None else self.clock() + timeout
        delay = FIRST_POLL_S
        last_error = ""
        while True:
            try:
                if self.try_once() is not None:
                    return self.held
                last_error = ""
            except (Unavailable, Unknown) as e:
                last_error = str(e)  # an Unknown attempt is settled by the next one's read
            now = self.clock()
            if deadline is not None and now >= deadline:
                self.give_up()
                if last_error:
                    raise LockTimeout("lock %s not acquired within %gs: the cluster did not answer (%s)"
                                      % (self.name, timeout, last_error))
                who = " (held by %s at token %d)" % self.seen if self.seen else ""
                raise LockTimeout("lock %s not acquired within %gs%s" % (self.name, timeout, who))
            pause = delay * random.uniform(0.8, 1.0)  # jitter: waiters do not try in step
            self.sleep(pause if deadline is None else min(pause, deadline - now))
            delay = min(delay * 2, MAX_POLL_S)

    # ------------------------------------------------------------ while held
    def keepalive(self) -> None:
        """Renew the lease and check the key is still ours; LockLost if not (Unavailable/Unknown: try again)."""
        held = self.held
        sent = self.clock()
        replies = self.client.pipeline([("KVD.LEASE", "KEEPALIVE", held.lease), ("KVD.GET", self.key, "WITHREV")])
        renewed, got = replies
        if isinstance(renewed, ReplyError):
            if LEASE_NOT_FOUND in renewed.text:
                raise LockLost("the lease %d has expired or was revoked" % held.lease)
            raise renewed
        if isinstance(got, ReplyError):
            raise got
        if got is None:
            raise LockLost("the key %s was deleted" % self.key)
        if _text(got[0]) != held.holder or int(got[1]) != held.token:
            raise LockLost("the key %s is now %s at token %s" % (self.key, _text(got[0]), got[1]))
        self.renewed = sent

    def expires_by(self) -> float:
        """The local time after which the lease may have expired by the cluster's clock."""
        return self.renewed + self.ttl

    # ------------------------------------------------------------ release
    def release(self) -> bool:
        """Delete the key if it is still ours, and revoke the lease; True when both were answered."""
        ok = True
        if self.held is not None:
            try:
                self.client.call("KVD.TXN", "IF", "CREATE", self.key, "=", str(self.held.token), "THEN", "DEL", self.key)
            except (Unavailable, Unknown, ReplyError):
                ok = False
            self.held = None
        return self.give_up() and ok

    def give_up(self) -> bool:
        """Revoke our lease (deleting the key if it is attached): True if answered or already gone."""
        if self.lease is None:
            return True
        lease, self.lease = self.lease, None
        try:
            self.client.call("KVD.LEASE", "REVOKE", lease)
        except ReplyError as e:
            return LEASE_NOT_FOUND in e.text
        except (Unavailable, Unknown):
            return False
        return True


def status(client, name: str) -> Optional[dict]:
    """The lock's holder, token and seconds left on its lease; None when it is free."""
    key = key_of(name)
    got, ttl = client.pipeline([("KVD.GET", key, "WITHREV"), ("TTL", key)])
    for reply in (got, ttl):
        if isinstance(reply, ReplyError):
            raise reply
    if got is None:
        return None
    return {"lock": name, "key": key, "holder": _text(got[0]), "token": int(got[1]), "ttl": ttl}


# ---------------------------------------------------------------- the runner
def child_env(held: Holding, base: Optional[dict] = None) -> dict:
    env = dict(os.environ if base is None else base)
    env.update(KVD_LOCK_KEY=key_of(held.name), KVD_LOCK_TOKEN=str(held.token), KVD_LOCK_HOLDER=held.holder,
               KVD_LOCK_LEASE=str(held.lease))
    return env


def exit_code_of(returncode: int) -> int:
    """A child's status as a shell reports it: its code, or 128 + the signal that ended it."""
    return returncode if returncode >= 0 else 128 - returncode


def run_locked(lock: Lock, argv: Sequence[str], timeout: Optional[float], say: Callable[[str], None],
               grace_s: float = GRACE_S, spawn: Callable[..., subprocess.Popen] = subprocess.Popen,
               taken: str = "acquired") -> int:
    """
    Acquire, run ``argv`` while keeping the lock, release: the command's exit
    code; LOCK_LOST (10) if the lock was lost meanwhile (the command was then
    terminated); CliError TIMEOUT (5) if not acquired within ``timeout``.
    """
    stopping = _stop_on_signals()
    try:
        held = lock.acquire(timeout)
    except LockTimeout as e:
        raise CliError(TIMEOUT, str(e)) from None
    except Signalled as e:  # SIGTERM/SIGHUP while waiting (a supervisor stopping us): as Ctrl-C, then exit 128+N
        lock.give_up()
        return 128 + e.signum
    except KeyboardInterrupt:  # Ctrl-C while waiting: give the lease back (and the lock, had an attempt won it)
        lock.give_up()
        raise
    finally:
        for sig, previous in stopping.items():
            signal.signal(sig, previous)
    say("%s %s, token %d (holder %s, lease %d, ttl %ds)" % (taken, lock.key, held.token, held.holder, held.lease, lock.ttl))
    try:
        child = spawn(list(argv), env=child_env(held))
    except OSError as e:
        lock.release()
        say("cannot run %s: %s; lock released" % (argv[0], e.strerror or e))
        return 127
    forwarded = _forward_signals(child)
    try:
        lost = _hold(lock, child)
        if lost is None:
            code = exit_code_of(child.returncode)
            lost = _still_held(lock)
            if lost is not None:
                # It may have done its work after the lock was gone (say, all of it paused past the ttl):
                # only its fenced writes were safe.  Never report that as a success.
                say("the command exited %d, but the lock was lost before it did: %s" % (code, lost))
                lock.give_up()
                return LOCK_LOST
            if not lock.release():
                say("release of %s not confirmed: it ends with the lease, within %ds" % (lock.key, lock.ttl))
            return code
        say("lock lost: %s; stopping the command (pid %d)" % (lost, child.pid))
        _terminate(child, grace_s)
        lock.give_up()
        return LOCK_LOST
    finally:
        for sig, previous in forwarded.items():
            signal.signal(sig, previous)


def _hold(lock: Lock, child) -> Optional[str]:
    """Keep the lock alive until the child exits (None) or the lock is lost (why)."""
    interval = lock.ttl / 3.0
    due = lock.renewed + interval
    while True:
        try:
            child.wait(timeout=max(0.0, min(due, lock.expires_by()) - lock.clock()))
            return None
        except subprocess.TimeoutExpired:
            pass
        try:
            lock.keepalive()
            due = lock.renewed + interval
        except LockLost as e:
            return str(e)
        except (Unavailable, Unknown, ReplyError):
            due = lock.clock() + min(interval, 0.5)  # try again soon, through the next node
        if lock.clock() >= lock.expires_by():
            return "no keepalive answered for %ds (the lease's ttl): it may have expired" % lock.ttl


def _still_held(lock: Lock) -> Optional[str]:
    """After the command exited: None if the lock is still ours (one keepalive says so), else why not."""
    while True:
        try:
            lock.keepalive()
            return None
        except LockLost as e:
            return str(e)
        except (Unavailable, Unknown, ReplyError) as e:
            if lock.clock() >= lock.expires_by():
                return "no keepalive answered for %ds (the lease's ttl): %s" % (lock.ttl, e)
            lock.sleep(0.2)


def _terminate(child, grace_s: float) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while the lock was being waited for."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals() -> dict:
    """While waiting for the lock, SIGTERM and SIGHUP stop the wait (``Signalled``) so the lease is given back."""
    previous = {}

    def stop(signum, _frame):
        raise Signalled(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread (tests)
            pass
    return previous


def _forward_signals(child) -> dict:
    """SIGINT, SIGTERM, SIGHUP to us go to the command; we release once it exits."""
    previous = {}

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread (tests)
            pass
    return previous
