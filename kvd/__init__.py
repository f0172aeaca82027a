"""kvd: a replicated key/value store kept consistent by Raft, built on Twisted."""
