"""
The twistd dropin for kvd: ``twistd -n kvd --listen 127.0.0.1:7001 ...``.

Only a name and a module path live here; twistd imports kvd.tap when the
plugin is used, so ``twistd --help`` stays fast and this file never breaks
plugin discovery for other dropins.
"""

from twisted.application.service import ServiceMaker

kvd = ServiceMaker(
    "kvd",
    "kvd.tap",
    "A replicated key/value node (Raft over AMP, LMDB log, Redis protocol port).",
    "kvd",
)
