"""
Benchmarks anyone can run (``make bench``, ``make bench-failover``, ``make
bench-data``): they start
a cluster of their own on loopback, run bounded loads against it and print
what they measured.  They assert nothing about speed; CI runs their short
forms only to show that they work.

- ``loads``: redis-benchmark runs (SET at 1, 16 and 64 clients, to the leader
  and to a follower, linearizable GET, pipelined SET), one line each: ops/s,
  p50/p99/p999 latency and CPU seconds per node;
- ``failover``: kill -9 the leader N times under a light write load and time
  each kill to the next acknowledged write through a survivor;
- ``data``: issue 13's figures at scale: load N keys of S bytes, restart a
  follower, join a fourth node by snapshot, memory and reactor stalls
  (``pipeline``: its pipelined writers; ``watch``: what it samples meanwhile);
- ``procs``: CPU time of a process, from /proc.

``python -m kvd.bench --help`` lists the options (``--short``, ``--json``).
"""
