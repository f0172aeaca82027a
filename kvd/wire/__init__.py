"""The peer transport: Raft messages over Twisted AMP."""
