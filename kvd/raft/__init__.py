"""The Raft protocol as a pure, deterministic state machine (stdlib only)."""
