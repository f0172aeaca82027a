"""The CLI finds the checkout it runs from (its .venv, .kvd, docker/ scripts) wherever its modules live."""

import os

from kvd.cli import docker_ops, home

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_cli_knows_the_checkout():
    assert home.REPO_ROOT == REPO and home.IN_CHECKOUT
    assert docker_ops.REPO_ROOT == REPO
    assert os.path.exists(docker_ops.BUILD_SCRIPT) and os.path.exists(docker_ops.COMPOSE_FILE)
