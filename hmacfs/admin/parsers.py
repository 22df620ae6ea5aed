"""The admin commands' arguments, apart from the commands.

`hmacfs.cli` builds its whole command line on every start, the server's and each worker's
too; the commands themselves (`hmacfs.admin.commands`, `hmacfs.admin.migrate`) and what they
import are loaded only when one of them runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (a worker, whose command line is read without it, never loads it)
    import argparse

#: How many uploaders and content types `stats` shows by default.
TOP = 10


def add_storage_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add list, stats, delete, prune and verify to the `hmac-file-server` command line."""
    listing = subparsers.add_parser("list", help="list the stored files")
    listing.add_argument("--uploader", metavar="U", help="only files uploaded by U")
    listing.add_argument(
        "--older-than", metavar="DURATION", help='only files uploaded longer ago ("30d")'
    )
    listing.add_argument("--larger-than", metavar="SIZE", help='only larger files ("10M")')
    listing.add_argument(
        "--type", metavar="PREFIX", help='only content types that start so ("image/")'
    )
    listing.add_argument("--expired", action="store_true", help="only expired files")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    stats = subparsers.add_parser("stats", help="count the stored files and partial uploads")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.add_argument(
        "--top", type=int, default=TOP, metavar="N",
        help=f"uploaders and content types shown (default: {TOP}; 0: all)",
    )
    delete = subparsers.add_parser("delete", help="remove stored files")
    delete.add_argument("paths", nargs="+", metavar="PATH", help="signed path, or its URL")
    prune = subparsers.add_parser("prune", help="remove the stored files that match")
    prune.add_argument("--older-than", metavar="DURATION", help="files uploaded longer ago")
    prune.add_argument("--uploader", metavar="U", help="files uploaded by U")
    prune.add_argument("--expired", action="store_true", help="expired files")
    prune.add_argument("--dry-run", action="store_true", help="only print what would go")
    verify = subparsers.add_parser("verify", help="check the stored files and their metadata")
    verify.add_argument("--repair", action="store_true", help="fix what is safe to fix")
    verify.add_argument("--json", action="store_true", help="one JSON object per finding")


def add_migrate_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `migrate-config` and its arguments to `subparsers`."""
    parser = subparsers.add_parser(
        "migrate-config",
        help="turn a Go HMAC File Server configuration into one for this server",
        description=(
            "Read the config.toml of the Go HMAC File Server (3.2.1 to 3.4) and write the "
            "equivalent configuration of this server. Standard error names every key that is "
            "not carried over and why, and the keys the Go server itself ignores."
        ),
    )
    parser.add_argument("go_config", type=Path, metavar="GO_CONFIG", help="the Go config.toml")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="write the configuration to OUT (mode 0640) instead of standard output",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
