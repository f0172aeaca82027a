"""
The Raft protocol as a pure, deterministic state machine (stdlib only).

- ``core``: ``RaftCore``, the protocol (Step/Ready, as etcd-io/raft), and ``Ready``;
- ``log``: the in-memory log and its unstable tail;
- ``progress``: a leader's view of each follower, and flow control;
- ``quorum``: majorities, the index a quorum holds, the vote tally;
- ``read_only``: the leader's bookkeeping of ReadIndex rounds;
- ``messages``: entries, hard state, configurations, snapshots, messages;
- ``storage``: what the embedder's durable storage provides.
"""
