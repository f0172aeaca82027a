"""A deterministic simulator that runs real Raft cores over a faulty simulated network and disk."""
