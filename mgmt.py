#!/usr/bin/env python3
"""
kvd's management CLI, as the seed document has it:

    python3 mgmt.py -r <role> -c <command> [-h <host>] [-k <key>] [-v <value>]

Run ``python3 mgmt.py --help`` for the commands and exit codes.  This file
only finds a Python that has kvd's packages and hands over to kvd.cli: run
with the system's python3, it re-executes itself with the repo's virtual
environment (.venv, made by ``make install``) when that is where they are.

Imports: as the layer table in tests/test_layers.py allows.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_PYTHON = os.path.join(HERE, ".venv", "bin", "python")
NOT_INSTALLED = 9  # kvd.cli.errors.NOT_INSTALLED; it cannot be imported in that case


def _reexec_in_venv(reason):
    # Guard against an exec loop: a venv that lacks the packages too ends here.
    in_venv = os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(HERE, ".venv"))
    if os.path.exists(VENV_PYTHON) and not in_venv and not os.environ.get("KVD_MGMT_REEXEC"):
        os.environ["KVD_MGMT_REEXEC"] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
    sys.stderr.write(
        "error: kvd's Python packages are not installed for %s (%s); run `make install` (or `make run`) in %s first\n"
        % (sys.executable, reason, HERE)
    )
    sys.exit(NOT_INSTALLED)


def main():
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    try:
        import click  # noqa: F401
        import redis  # noqa: F401

        from kvd.cli import mgmt as cli
    except ImportError as e:
        _reexec_in_venv("cannot import %s" % (e.name or e))
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
