"""Durable storage of the Raft log, hard state and snapshots in LMDB."""
