"""Administration subcommands of hmac-file-server: list, stats, delete, prune and verify the
stored files while the service runs (`hmacfs.admin.commands`), and migrate-config, which
writes this server's configuration from a Go HMAC File Server's (`hmacfs.admin.migrate`).

`add_parsers` adds them to the command line, `COMMANDS` maps each name to its function.
"""

from __future__ import annotations

import argparse

from hmacfs.admin import commands, migrate


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin commands to the `hmac-file-server` command line."""
    commands.add_parsers(subparsers)
    migrate.add_parser(subparsers)


COMMANDS: dict[str, commands.Command] = {**commands.COMMANDS, "migrate-config": migrate.run}
