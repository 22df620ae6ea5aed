"""The `hmac-file-server` command: run, dev, check-config, sign.

The only module that touches the global reactor.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote, urlencode

from hmacfs import __version__, admin
from hmacfs.core import config
from hmacfs.core.config import ConfigError
from hmacfs.core.settings import HEADER_SCHEMES, QUERY_SCHEMES, Config
from hmacfs.process.lines import say_ready
from hmacfs.process.systemd import stream_is_journal
from hmacfs.process.worker import start_failed
from hmacfs.storage.s3.errors import StoreError

if TYPE_CHECKING:  # (see `worker_config`: a worker never loads it)
    import argparse

DEFAULT_CONFIG = Path("/etc/hmac-file-server/config.toml")
#: Exit statuses (documented in hmac-file-server(8)).
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEV_SAMPLE = b"hello from hmac-file-server\n"


def base_url(cfg: Config) -> str:
    """Where clients reach the server: `public_url`, else the first TCP listener.

    Raises ValueError when neither says (only Unix or socket-activated listeners)."""
    if cfg.server.public_url:
        return cfg.server.public_url.rstrip("/")
    for listener in cfg.server.listeners:
        if listener.host is None:
            continue  # a Unix socket or one systemd passes: no address a client could use
        address = listener.text.split("://", 1)[-1]
        return f"{'https' if listener.tls else 'http'}://{address}"
    raise ValueError("set [server] public_url: no listener says where clients reach the server")


def upload_url(cfg: Config, rel: str) -> str:
    """The URL of the signed path `rel` (each segment percent-encoded)."""
    encoded = "/".join(quote(segment, safe="") for segment in rel.split("/"))
    return base_url(cfg) + cfg.server.upload_prefix + encoded


def signed_example(  # noqa: PLR0917 (a slot's values, in the order they are printed)
    cfg: Config, rel: str, size: int, content_type: str, scheme: str, lifetime: float
) -> tuple[str, dict[str, str]]:
    """A signed PUT URL for `rel` and the headers the client must send with it."""
    from hmacfs.core import auth  # (what only `sign` and `dev` need, not the supervisor)

    signed = auth.sign(
        scheme,
        rel,
        size,
        content_type,
        cfg.hmac.secrets[0],
        algorithm=cfg.hmac.algorithm,
        now=time.time(),
        lifetime=lifetime,
    )
    url = upload_url(cfg, rel)
    if signed.query:
        url += "?" + urlencode(signed.query)
    return url, signed.headers


def curl_line(url: str, headers: dict[str, str], content_type: str, file: str) -> str:
    words = ["curl", "-sS", "-T", file, "-H", f"Content-Type: {content_type}"]
    for name, value in headers.items():
        words += ["-H", f"{name}: {value}"]
    words.append(url)
    return " ".join(shlex.quote(w) for w in words)


def _load(path: Path) -> Config:
    return config.load(path)


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _load(args.config)
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out.write(config.describe(cfg))
    print(f"{args.config}: OK", file=sys.stderr)
    return EXIT_OK


def cmd_sign(args: argparse.Namespace, out: TextIO) -> int:
    cfg = _load(args.config)
    if args.file is not None:
        try:
            size = os.path.getsize(args.file)
        except OSError as e:
            print(f"sign: {args.file}: {e.strerror}", file=sys.stderr)
            return EXIT_CONFIG
    elif args.size is not None:
        size = args.size
    else:
        print("sign: give --size or --file", file=sys.stderr)
        return EXIT_CONFIG
    rel = args.path.strip("/")
    try:
        url, headers = signed_example(cfg, rel, size, args.type, args.scheme, args.lifetime)
    except ValueError as e:
        print(f"sign: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(url, file=out)
    for name, value in headers.items():
        print(f"{name}: {value}", file=out)
    print("# upload:", curl_line(url, headers, args.type, args.file or "FILE"), file=out)
    print("# download:", shlex.join(["curl", "-sS", upload_url(cfg, rel)]), file=out)
    return EXIT_OK


@contextlib.contextmanager
def imports_without(names: Sequence[str]) -> Iterator[None]:
    """Within, importing any of `names` fails as if it were not installed, so that what can do
    without one does without it for good (Twisted's TLS support, asyncio's and urllib's,
    hashlib's OpenSSL hashes); afterwards each imports as ever. A name already imported is
    left as it is."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            del sys.modules[name]  # (what failed to import without it is not kept)


def load_reactor(hidden: Sequence[str] = ()) -> None:
    """Install this server's reactor (`hmacfs.process.reactor`) as the global one, with the
    modules `hidden` left out of what it imports; nothing if a reactor is installed already."""
    if "twisted.internet.reactor" in sys.modules:
        return
    with imports_without(hidden):
        from hmacfs.process.reactor import install

        install()


def load_reactor_without_openssl() -> None:
    """Install the reactor without pyOpenSSL, for a server with no TLS listener.

    twisted.internet's TCP support and its reactor load pyOpenSSL (and with it cryptography,
    about 8 MiB per process) for startTLS and listenSSL whenever it is installed; this server
    uses neither. Hiding it for that one import leaves TCP as it is. TLS listeners, should a
    reload add some, wrap their connections in twisted.protocols.tls, which then imports
    pyOpenSSL itself.
    """
    load_reactor(("OpenSSL",))


def process_class(cfg: Config) -> Any:
    """Import what a process that serves runs on: Twisted's reactor and `Node` (without TLS
    for a server with no https listener). (A supervisor is another process, which the
    command execs: `hmacfs.process.planner.start_supervisor`.)"""
    if any(listener.tls for listener in (*cfg.server.listeners, *cfg.metrics.listeners)):
        load_reactor()
    else:
        load_reactor_without_openssl()
    from hmacfs.process.node import Node

    return Node


def serve(  # noqa: PLR0912, PLR0915 (the start-up sequence, read top to bottom)
    cfg: Config,
    on_ready: Callable[[list[str]], None] | None = None,
    *,
    worker: bool = False,
) -> int:
    """Run the server until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit status.

    With `[server] workers` other than 1 (and a configuration file for the workers to read),
    this process becomes the supervisor of worker processes: it execs the supervisor's own
    command line, which imports no configuration code and nothing that only serving needs
    (`hmacfs.process.planner.start_supervisor`); `worker` is the mode of such a worker.

    A process that serves checks its https listeners' certificate first (`cfg` may come
    without that check): raises ConfigError if it does not load. A supervisor, which serves
    nothing, leaves that to its workers.
    """
    import signal

    from hmacfs.process.limits import raise_open_files_limit, release_free_memory, worker_count
    from hmacfs.process.shared_metrics import MULTIPROC_ENV, multiprocess_dir, remove_directory
    from hmacfs.process.systemd import Notifier, activated_sockets

    raise_open_files_limit()
    # Before Twisted is imported: twisted.internet.endpoints takes (and clears) the socket
    # activation variables for itself when it is first imported.
    activated = activated_sockets()
    plan = None
    if worker:
        from hmacfs.process.worker import worker_plan

        plan = worker_plan()
    if worker and plan is None:
        print("hmac-file-server: the worker command is for the supervisor only", file=sys.stderr)
        return EXIT_CONFIG
    if plan is not None and plan.kept:
        from hmacfs.process.restart import keep_running

        cfg = keep_running(cfg, plan.kept)
    count = 1 if plan is not None or cfg.source is None else worker_count(cfg.server.workers)
    if count == 1:
        config.check_certificate(cfg)
    if count > 1:
        from hmacfs.process.planner import start_supervisor

        # Before prometheus_client is imported (by the workers, which inherit it): it chooses
        # multi-process mode at import.
        metrics_dir = multiprocess_dir()
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
        try:
            start_supervisor(cfg, count=count, activated=activated, metrics_dir=metrics_dir)
        except OSError as e:  # (it returns only when the exec fails)
            remove_directory(metrics_dir)
            print(f"hmac-file-server: cannot start the supervisor: {e}", file=sys.stderr)
            return EXIT_FAILURE
    kind = process_class(cfg)
    from twisted.internet import reactor as global_reactor
    from twisted.logger import Logger

    from hmacfs.process.clock import use_monotonic_clock
    from hmacfs.process.logs import start_logging

    reactor: Any = global_reactor
    use_monotonic_clock(reactor)
    log = Logger(namespace="hmacfs")
    observer = start_logging(cfg.server.log_level)
    if plan is None:
        for warning in cfg.warnings:
            log.warn("config: {warning}", warning=warning)
    notifier = Notifier() if plan is None else Notifier({})
    service: Any
    try:
        service = kind(
            cfg, reactor, notifier=notifier, observer=observer, activated=activated, worker=plan
        )
    except (OSError, StoreError) as e:
        refused = storage_refused(cfg, e)
        if plan is not None:
            from hmacfs.process.worker import StatusPipe

            # (its supervisor says it, once, and fails the start or the reload with it)
            StatusPipe(plan.status_fd).send("refused " + " ".join(refused.split()))
        else:
            print(f"hmac-file-server: {refused}", file=sys.stderr)
        return EXIT_FAILURE
    status = [EXIT_OK]

    def start() -> None:
        service.startService()

        def listening(addresses: list[str]) -> None:
            if plan is not None:
                release_free_memory()
            else:
                announce_ready(log, cfg, addresses, on_ready)

        def failed(failure: Any) -> None:
            status[0] = start_failed(failure.value, notifier)
            stop_once()

        service.started.addCallbacks(listening, failed)

    if plan is not None:
        from hmacfs.process.worker import ignore_hangup

        ignore_hangup()
    else:

        def hangup(signum: int, frame: object) -> None:
            reactor.callFromThread(service.reload)

        signal.signal(signal.SIGHUP, hangup)
    stopping = [False]

    def stop_once() -> None:
        # SIGTERM can come twice (from systemd and from the supervisor, or SIGINT to a whole
        # terminal's process group): the first starts the graceful stop, the others wait.
        if not stopping[0]:
            stopping[0] = True
            log.info("stopping")
            reactor.stop()

    def terminate(signum: int, frame: object) -> None:
        reactor.callFromThread(stop_once)

    def take_signals() -> None:
        # After Twisted has installed its own handlers (reactor.run), replace them.
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGINT, terminate)

    reactor.callWhenRunning(take_signals)
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return status[0]


def announce_ready(
    log: Any, cfg: Config, addresses: list[str], on_ready: Callable[[list[str]], None] | None
) -> None:
    """The server (node or supervisor) is ready: give back the memory start-up used, say so,
    and tell `on_ready` where it listens."""
    from hmacfs.process.limits import release_free_memory

    release_free_memory()
    say_ready(log, cfg.server.storage_dir)
    if on_ready is not None:
        on_ready(addresses)


def storage_refused(cfg: Config, error: OSError | StoreError) -> str:
    """What to say when the storage of `cfg` cannot be opened."""
    if isinstance(error, StoreError):
        return (
            f"{cfg.source or 'configuration'}: [storage] bucket {cfg.storage.bucket} at "
            f"{cfg.storage.endpoint}: {error.message}"
        )
    return f"cannot use storage_dir {cfg.server.storage_dir}: {error.strerror}"


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    # (the certificate is checked by `serve`, in the processes that serve)
    return serve(config.load(args.config, check_certificate=False))


def cmd_worker(args: argparse.Namespace, out: TextIO) -> int:
    return run_worker(args.config)


def run_worker(path: Path) -> int:
    """The `worker` command: serve `path`'s configuration as one of a supervisor's workers."""
    return serve(config.load(path, check_certificate=False), worker=True)


def worker_config(words: Sequence[str]) -> Path | None:
    """The configuration file of the `worker` command, written the one way the supervisor
    writes it (`--config FILE worker`), else None.

    A worker's command line is read here rather than by argparse, which a worker would
    otherwise load (building the whole command line) for that alone."""
    if len(words) == 3 and words[0] == "--config" and words[2] == "worker":
        return Path(words[1])
    return None


def cmd_dev(args: argparse.Namespace, out: TextIO) -> int:
    import secrets
    import uuid

    base = Path(args.dir).resolve()
    secret = secrets.token_urlsafe(24).encode()
    cfg = config.development_config(base, secret)
    cfg = replace(cfg, server=replace(cfg.server, listen=(f"127.0.0.1:{args.port}",)))

    def announce(addresses: list[str]) -> None:
        port = addresses[0].rsplit(":", 1)[1]
        shown = replace(cfg, server=replace(cfg.server, public_url=f"http://127.0.0.1:{port}"))
        rel = f"{uuid.uuid4()}/hello.txt"
        url, headers = signed_example(shown, rel, len(DEV_SAMPLE), "text/plain", "v2", 300)
        sample = base / "var" / "hello.txt"
        sample.write_bytes(DEV_SAMPLE)
        lines = [
            "",
            "Development server (not for production: the secret changes on every start).",
            f"  storage: {cfg.server.storage_dir}",
            f"  secret:  {secret.decode()}",
            f"  a signed upload URL ({len(DEV_SAMPLE)} bytes, text/plain):",
            f"    {url}",
            "  try it:",
            f"    {curl_line(url, headers, 'text/plain', str(sample))}",
            f"    curl -sS {shlex.quote(upload_url(shown, rel))}",
            "",
        ]
        print("\n".join(lines), file=out, flush=True)

    return serve(cfg, on_ready=announce)


def terminal_columns() -> int:
    """The terminal's width, as shutil.get_terminal_size tells it ($COLUMNS, else standard
    output's terminal, else 80), without importing shutil, which argparse's help formatter
    does for it and which brings the compression modules into every process that parses its
    command line, the supervisor's too (about 0.6 MiB)."""
    with contextlib.suppress(KeyError, ValueError):
        columns = int(os.environ["COLUMNS"])
        if columns > 0:
            return columns
    with contextlib.suppress(AttributeError, ValueError, OSError):
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        if columns > 0:
            return columns
    return 80


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class HelpFormatter(argparse.HelpFormatter):
        def __init__(
            self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
            width: int | None = None,
        ) -> None:
            width = terminal_columns() - 2 if width is None else width  # (argparse's margin)
            super().__init__(prog, indent_increment, max_help_position, width)

    class ArgumentParser(argparse.ArgumentParser):
        # (the class each subcommand's parser is made of, with the formatter above)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", HelpFormatter)
            super().__init__(*args, **kwargs)

    parser: argparse.ArgumentParser = ArgumentParser(
        prog="hmac-file-server",
        description="XEP-0363 HTTP File Upload server for Prosody, ejabberd and Metronome.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the server (the default)")
    sub.add_parser(
        "check-config", help="validate the configuration and print the effective settings"
    )
    sign = sub.add_parser("sign", help="print a signed PUT URL and a curl command to test with")
    sign.add_argument("path", help="path below the upload prefix, e.g. abc123/photo.jpg")
    sign.add_argument("--size", type=int, help="upload size in bytes")
    sign.add_argument("--file", help="take the size from this file")
    sign.add_argument("--type", default="application/octet-stream", help="Content-Type")
    sign.add_argument(
        "--scheme",
        default="v2",
        choices=[*QUERY_SCHEMES, *HEADER_SCHEMES],
        help="signing scheme (default: v2)",
    )
    sign.add_argument(
        "--lifetime",
        type=float,
        default=300.0,
        help="seconds the URL stays valid (v3, jwt, basic, cookie, x-hmac)",
    )
    # Started by the supervisor for each worker process; not for people (hence no help).
    sub.add_parser("worker")
    dev = sub.add_parser("dev", help="run a development server with a generated secret")
    dev.add_argument("--port", type=int, default=5050)
    dev.add_argument("--dir", default=".", help="base directory; files go to DIR/var/files")
    admin.add_parsers(sub)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "sign": cmd_sign,
    "dev": cmd_dev,
    "worker": cmd_worker,
    **admin.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    worker = worker_config(words)
    try:
        if worker is not None:
            return run_worker(worker)
        args = build_parser().parse_args(words)
        return COMMANDS[args.command or "run"](args, sys.stdout)
    except ConfigError as e:
        # Under systemd, "<3>" makes it an error in the journal (sd-daemon(3)).
        priority = "<3>" if stream_is_journal(sys.stderr) else ""
        print(f"{priority}hmac-file-server: {e}", file=sys.stderr)
        return EXIT_CONFIG
