"""The Redis protocol (RESP2 and inline) client port."""
