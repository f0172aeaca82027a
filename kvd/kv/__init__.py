"""The key/value state machine and its command codec (stdlib only)."""
