# -*- test-case-name: tests.resp.test_auth -*-
"""
Who may use the client port: passwords, users and their roles.

Three roles, each allowing what the one before it does:

* ``readonly``: reads (GET, MGET, EXISTS, KEYS, SCAN, DBSIZE, STRLEN ...), INFO, ROLE and
  the connection's own commands (PING, CLIENT, HELLO, SELECT 0 ...);
* ``readwrite``: writes too (SET, DEL, MSET, INCR ...);
* ``admin``: everything, including the cluster's own ``KVD.*`` commands
  (KVD.JOIN and KVD.REMOVE change the membership), CONFIG, and FLUSHDB and
  FLUSHALL (which delete every key).

Where users come from (``Users.load``):

* a password for Redis's ``default`` user, with the admin role, from the
  file ``--requirepass-file`` names (its first line) or the environment
  variable ``KVD_REQUIREPASS``: then ``AUTH <password>`` (redis-cli ``-a``,
  redis-py ``password=``) authenticates;
* a users file (``--users FILE``): one user a line, ``name role password``,
  where the password is ``#`` and the hex SHA-256 of the password (Redis's
  ACL notation; ``python -m kvd.resp.auth`` prints it) or ``>`` and the
  password itself; blank lines and lines starting with ``#`` are ignored.
  ``AUTH <name> <password>`` (redis-cli ``--user``, redis-py ``username=``)
  authenticates as that user.

Passwords are never taken from the command line, which ``ps`` shows to every
local user.  Only their SHA-256 digests are kept in memory, and a password
is checked against a digest in constant time (``hmac.compare_digest``), also
for an unknown user.  With neither a password nor a users file, the port
is open: every connection is the ``default`` admin, as in Redis.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

READONLY, READWRITE, ADMIN = "readonly", "readwrite", "admin"
ROLES = (READONLY, READWRITE, ADMIN)
DEFAULT_USER = "default"
ENV_REQUIREPASS = "KVD_REQUIREPASS"

#: Redis's own replies.
NOAUTH_MESSAGE = "Authentication required."
WRONGPASS_MESSAGE = "invalid username-password pair or user is disabled."
HELLO_NOAUTH_MESSAGE = ("HELLO must be called with the client already authenticated, otherwise the "
                        "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
                        "select the RESP protocol version at the same time")
NO_PASSWORD_MESSAGE = ("AUTH <password> called without any password configured for the default user. "
                       "Are you sure your configuration is correct?")


class UsersError(ValueError):
    """A users file or password that cannot be used, with the reason."""


def digest(password: bytes) -> bytes:
    return hashlib.sha256(password).digest()


def hash_password(password: str) -> str:
    """A users file's password field for ``password``: ``#`` and its hex SHA-256."""
    return "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_digest: bytes = field(repr=False)

    def may(self, role: str) -> bool:
        """Whether this user's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


_DUMMY_DIGEST = digest(b"no such user")


class Users:
    """The client port's users by name; empty means no authentication at all."""

    def __init__(self, users: Mapping[str, User] = (), internal_credentials: Optional[Tuple[Optional[str], str]] = None):
        self._users: Dict[str, User] = dict(users)
        # (None, the default user's password) when this node was given it: the node's own requests to the
        # other members' client ports (the cluster page's INFO raft) authenticate with it.
        self.internal_credentials = internal_credentials

    def __repr__(self) -> str:
        return "Users(%r)" % (self.names,)

    @property
    def required(self) -> bool:
        return bool(self._users)

    @property
    def names(self):
        return sorted(self._users)

    def authenticate(self, name: Optional[bytes], password: bytes) -> Optional[User]:
        """The user ``name`` (None: Redis's ``default``) if ``password`` is theirs, else None; constant time."""
        user_name = DEFAULT_USER if name is None else name.decode("utf-8", "surrogateescape")
        user = self._users.get(user_name)
        expected = user.password_digest if user is not None else _DUMMY_DIGEST
        ok = hmac.compare_digest(digest(password), expected)
        return user if ok and user is not None else None

    @classmethod
    def load(cls, requirepass_file: Optional[str] = None, users_file: Optional[str] = None,
             environ: Mapping[str, str] = os.environ) -> "Users":
        """The users of ``--requirepass-file`` (or ``$KVD_REQUIREPASS``) and ``--users``; UsersError if unusable."""
        users: Dict[str, User] = {}
        password = None
        if requirepass_file:
            password = read_secret_file(requirepass_file)
        elif environ.get(ENV_REQUIREPASS):
            password = environ[ENV_REQUIREPASS]
        if users_file:
            try:
                with open(users_file, encoding="utf-8") as f:
                    users.update(parse_users(f.read(), users_file))
            except OSError as e:
                raise UsersError("cannot read the users file %s: %s" % (users_file, e.strerror or e))
        if password is not None:
            if not password:
                raise UsersError("the password for the default user is empty")
            if DEFAULT_USER in users:
                raise UsersError("the default user is both in the users file and given a password by "
                                 "--requirepass-file or $%s" % ENV_REQUIREPASS)
            users[DEFAULT_USER] = User(DEFAULT_USER, ADMIN, digest(password.encode("utf-8")))
        return cls(users, (None, password) if password is not None else None)


def read_secret_file(path: str) -> str:
    """The first line of a password file, without its line end."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except OSError as e:
        raise UsersError("cannot read the password file %s: %s" % (path, e.strerror or e))
    return line.rstrip("\r\n")


def parse_users(text: str, source: str = "users file") -> Dict[str, User]:
    """``name role #sha256hex`` or ``name role >password`` lines -> {name: User}."""
    users: Dict[str, User] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        where = "%s line %d" % (source, number)
        if len(parts) != 3:
            raise UsersError("%s: expected 'name role password', got %d fields" % (where, len(parts)))
        name, role, secret = parts
        if role not in ROLES:
            raise UsersError("%s: unknown role %r (roles: %s)" % (where, role, ", ".join(ROLES)))
        if name in users:
            raise UsersError("%s: user %r is listed twice" % (where, name))
        if secret.startswith("#"):
            try:
                value = bytes.fromhex(secret[1:])
            except ValueError:
                value = b""
            if len(value) != 32:
                raise UsersError("%s: a '#' password must be 64 hex digits (SHA-256)" % where)
        elif secret.startswith(">") and len(secret) > 1:
            value = digest(secret[1:].encode("utf-8"))
        else:
            raise UsersError("%s: the password must be '#<sha256 hex>' or '>password'" % where)
        users[name] = User(name, role, value)
    return users


def main(argv=None) -> int:
    """``python -m kvd.resp.auth``: read a password (not echoed) and print its users-file field."""
    import getpass
    import sys

    password = sys.stdin.readline().rstrip("\r\n") if not sys.stdin.isatty() else getpass.getpass("password: ")
    print(hash_password(password))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
