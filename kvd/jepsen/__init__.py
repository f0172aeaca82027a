"""
A Jepsen-style test of a real kvd cluster: twistd processes on their own
127.x.y.z addresses, concurrent clients recording every operation's
invocation, completion and outcome, nemeses that kill, pause, partition,
reconfigure and crash the cluster, then a linearizability check
(kvd.check.linear) and a durability check (kvd.check.durability) of what the
clients saw.

    python -m kvd.jepsen --duration 600 --nemesis all      # make torture DURATION=600 NEMESIS=all
    python -m kvd.jepsen check path/to/history.jsonl        # re-check a kept history

Modules: ``netfilter`` (partitions with nftables on the nodes' addresses),
``cluster`` (the node processes), ``workload`` (clients and the history),
``multikey`` (MULTI/EXEC, WATCH and Lua script clients on groups of keys,
checked by kvd.check.txn), ``expiry`` (keys that expire, kvd.check.expiry),
``locks`` (mgmt.py's lock recipe and fenced writes, kvd.check.locks),
``nemesis`` (the faults), ``run`` (one run from start to verdict),
``__main__`` (the torture loop).  The clients speak to the nodes through
kvd.resp.client, the package's one Redis client, whose failures say exactly
how far a request got (not sent / unknown / an error reply with its code).

This package is test tooling: it runs on the machine that runs the nodes,
as root for partitions, and ends only the processes it started, by PID.
"""
