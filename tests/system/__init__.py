"""System tests: the package under a real systemd, booted with systemd-nspawn."""
