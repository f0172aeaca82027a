# -*- test-case-name: tests.node.test_cli -*-
"""
The CLI's failure kinds and their exit codes.

Every failure of ``mgmt.py`` is one ``CliError``: a kind (which fixes the
exit code, so scripts can tell "the key is missing" from "the cluster has no
quorum") and one line of text that says what happened and what to try.
kvd.cli turns it into that one line on stderr; nothing else may reach the
user as a traceback.

Imports: as the layer table in tests/test_layers.py allows.
"""

from __future__ import annotations

# Exit codes: one per kind of failure.  The numbers are part of the CLI's
# interface (listed in --help), so never renumber them.
OK = 0
KEY_NOT_FOUND = 1
USAGE = 2  # also click's own code for usage errors
UNREACHABLE = 3
NO_QUORUM = 4
TIMEOUT = 5
PROCESS = 6
SERVER_ERROR = 7
LOCAL_STATE = 8
NOT_INSTALLED = 9  # used by mgmt.py itself, before kvd can be imported
LOCK_LOST = 10  # lock: the lock was lost while the command ran (the command was stopped)

EXIT_CODES = [
    (OK, "success"),
    (KEY_NOT_FOUND, "key not found (read -k, update, delete); lock-status: the lock is free"),
    (USAGE, "bad arguments or usage"),
    (UNREACHABLE, "node unreachable (not running, wrong -h, or the network)"),
    (NO_QUORUM, "no leader / no quorum: the command was certainly not applied"),
    (TIMEOUT, "timeout: no answer in time, the outcome of a write is unknown; lock: not acquired within --timeout"),
    (PROCESS, "a node process failed to start or to stop"),
    (SERVER_ERROR, "another error: the node refused the command, or an unexpected failure"),
    (LOCAL_STATE, "local state under KVD_HOME: unknown node, already running, other cluster"),
    (NOT_INSTALLED, "kvd's Python packages are not installed (run `make install`)"),
    (LOCK_LOST, "lock, leader: the lock was lost while the command ran; the command was stopped"),
]


class CliError(Exception):
    """A failure to report as one line, with the exit code of its kind."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def key_not_found(key: str) -> CliError:
    return CliError(KEY_NOT_FOUND, "key not found: %s" % key)
