"""Processes: listeners, the node service, the supervisor, systemd, logs, TLS."""
