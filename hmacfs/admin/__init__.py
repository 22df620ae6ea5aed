"""Administration subcommands of hmac-file-server: list, stats, delete, prune and verify the
stored files while the service runs (`hmacfs.admin.commands`), and migrate-config, which
writes this server's configuration from a Go HMAC File Server's (`hmacfs.admin.migrate`).

`add_parsers` adds them to the command line, `COMMANDS` maps each name to its function.
Neither loads a command's module: that happens when the command runs, so that the server,
whose command line has them too, never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from hmacfs.admin.parsers import add_migrate_parser, add_storage_parsers

if TYPE_CHECKING:  # (a worker, whose command line is read without it, never loads it)
    import argparse

Command = Callable[["argparse.Namespace", TextIO], int]


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the admin commands to the `hmac-file-server` command line."""
    add_storage_parsers(subparsers)
    add_migrate_parser(subparsers)


def _loaded_when_run(name: str) -> Command:
    """The command `name` of `hmacfs.admin.commands`, or `migrate-config`, whose module is
    imported when it runs."""

    def command(args: argparse.Namespace, out: TextIO) -> int:
        if name == "migrate-config":
            from hmacfs.admin import migrate

            return migrate.run(args, out)
        from hmacfs.admin import commands

        return commands.COMMANDS[name](args, out)

    command.__name__ = command.__qualname__ = f"cmd_{name.replace('-', '_')}"
    return command


COMMANDS: dict[str, Command] = {
    name: _loaded_when_run(name)
    for name in ("list", "stats", "delete", "prune", "verify", "migrate-config")
}
