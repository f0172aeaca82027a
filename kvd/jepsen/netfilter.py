"""
Network partitions between nodes on distinct loopback addresses, made with
nftables.

A node binds its client port, its peer port and its outgoing peer
connections to its own --listen address, so dropping packets by (source,
destination) address cuts exactly the links between chosen nodes; clients
(from 127.0.0.1) still reach every node, as in Jepsen.

Every rule lives in one table of our own, ``inet kvdj_<pid>``: creating it
touches nothing else on the machine (Docker's tables included), healing
flushes its chain, and ``close()`` deletes the table.  Tables (kvdj_<pid>[_suffix]) left by a
harness that died are deleted at the next start when their pid is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Iterable, List, Set, Tuple

TABLE_PREFIX = "kvdj_"


class NetfilterUnavailable(Exception):
    pass


def _nft(script: str, timeout: float = 10.0) -> str:
    done = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise NetfilterUnavailable("nft failed: %s" % (done.stderr.strip() or done.stdout.strip()))
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def remove_stale_tables() -> List[str]:
    """Delete kvdj_<pid> tables whose harness process is gone."""
    if shutil.which("nft") is None:
        return []
    done = subprocess.run(["nft", "list", "tables"], text=True, capture_output=True, timeout=10)
    removed = []
    for match in re.finditer(r"table inet (%s(\d+)(?:_\w+)?)\b" % TABLE_PREFIX, done.stdout):
        name, pid = match.group(1), int(match.group(2))
        if pid != os.getpid() and not _pid_alive(pid):
            subprocess.run(["nft", "delete", "table", "inet", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


class Netfilter:
    """Drop rules between addresses, in a table of our own."""

    def __init__(self, suffix: str = ""):
        self.table = "%s%d%s" % (TABLE_PREFIX, os.getpid(), ("_" + suffix) if suffix else "")
        self.rules: Set[Tuple[str, str]] = set()
        self.open = False

    @staticmethod
    def available() -> Tuple[bool, str]:
        if shutil.which("nft") is None:
            return False, "nft (nftables) is not installed"
        if os.geteuid() != 0:
            return False, "partitions need root (packet filters)"
        probe = Netfilter("probe")
        try:
            probe.setup()
        except (NetfilterUnavailable, OSError, subprocess.SubprocessError) as e:
            return False, str(e)
        finally:
            probe.close()
        return True, ""

    def setup(self) -> None:
        remove_stale_tables()
        _nft(
            "add table inet {t}\n"
            "add chain inet {t} input {{ type filter hook input priority -10; policy accept; }}\n".format(t=self.table)
        )
        self.open = True

    def drop(self, pairs: Iterable[Tuple[str, str]]) -> None:
        """Drop every packet from a to b for each (a, b)."""
        new = [(a, b) for a, b in pairs if (a, b) not in self.rules and a != b]
        if not new:
            return
        _nft("".join("add rule inet %s input ip saddr %s ip daddr %s drop\n" % (self.table, a, b) for a, b in new))
        self.rules.update(new)

    def heal(self) -> None:
        if self.open and self.rules:
            _nft("flush chain inet %s input\n" % self.table)
        self.rules.clear()

    def close(self) -> None:
        """Remove the table (safe to call twice, and when setup failed)."""
        self.rules.clear()
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True, timeout=10)
        self.open = False


def cut(groups: List[List[str]]) -> List[Tuple[str, str]]:
    """Pairs that separate every group from every other, both ways."""
    pairs = []
    for i, g in enumerate(groups):
        for j, h in enumerate(groups):
            if i != j:
                pairs.extend((a, b) for a in g for b in h)
    return pairs
