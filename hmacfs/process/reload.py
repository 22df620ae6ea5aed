"""SIGHUP in the single-process node (the supervisor, which runs without Twisted, reloads
the same way on its own loop: `hmacfs.process.supervisor`).

`reload_config` reads the configuration file again and, if it is valid: re-reads the TLS
certificate, logs every configuration warning once, keeps what only a restart can change
(`hmacfs.process.restart`, with a warning for each one changed), sets the log level, and
hands the rest to the process to apply (the node reconfigures its site). systemd hears
RELOADING=1 first and READY=1 at the end, whatever happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from hmacfs.core.settings import Config
from hmacfs.process.listeners import wants_tls
from hmacfs.process.logs import LEVELS, LineObserver
from hmacfs.process.restart import ReloadStopped, read_again
from hmacfs.process.systemd import Notifier


class Reloadable(Protocol):
    """What `reload_config` needs of a process."""

    #: The configuration in use (replaced by `apply`).
    config: Config
    stopping: bool
    #: The https listeners' certificate (a `hmacfs.process.tls.ReloadableTls`), or None.
    tls: Any
    notifier: Notifier
    observer: LineObserver | None
    log: Logger

    def status_text(self) -> str:
        """The STATUS= line."""

    def apply(self, config: Config) -> defer.Deferred[str | None] | str | None:
        """Use `config` from now on. The result (or what the Deferred fires with) says what
        was done, for the log (None: nothing worth saying); ReloadStopped when it could not
        be done to the end."""


def reload_config(process: Reloadable, path: Path | None = None) -> defer.Deferred[bool]:
    """Re-read `path` (by default the file `process` was configured from) and apply it.

    Fires with whether the new configuration is in use; never fails (what goes wrong is
    logged, and the running configuration stays)."""
    source = path or process.config.source
    if source is None or process.stopping:
        return defer.succeed(False)
    log = process.log
    tls = process.tls

    def reread_certificate(new: Config) -> None:
        # Always re-read: a renewed certificate usually keeps its file name.
        tls_for(new, log, tls)

    # Only a process with https listeners reads the certificate here.
    applied = read_again(
        process, source, check_certificate=tls is not None,
        loaded=reread_certificate if tls is not None else None,
    )
    if applied is None:
        return defer.succeed(False)
    if process.observer is not None:
        process.observer.level = LEVELS[applied.server.log_level]
    d: defer.Deferred[Any] = defer.maybeDeferred(process.apply, applied)

    def done(summary: str | None) -> bool:
        if process.stopping:
            return False
        if process.tls is not None:
            log_certificate(process.tls, applied, log)
        if summary is None:
            log.info("configuration reloaded from {source}", source=source)
        else:
            log.info("configuration reloaded; {summary}", summary=summary)
        return True

    def stopped(failure: Any) -> bool:
        if process.stopping:
            return False
        if failure.check(ReloadStopped):
            log.error("reload stopped: {error}", error=failure.getErrorMessage())
        else:
            log.failure("applying the new configuration failed", failure)
        return False

    def ready(in_use: bool) -> bool:
        if not process.stopping:
            process.notifier.ready(process.status_text())
        return in_use

    return d.addCallbacks(done, stopped).addCallback(ready)


def tls_for(config: Config, log: Logger, current: Any = None) -> Any:
    """The TLS context for `config`'s https listeners: a new one, or `current` updated (None
    when there are no https listeners).

    Raises TlsError when a new one cannot be made; a certificate that fails to load on
    reload keeps the old one (and logs why)."""
    if not wants_tls((*config.server.listeners, *config.metrics.listeners)):
        return current
    # Loaded only here: a server without TLS listeners never loads OpenSSL.
    from hmacfs.process.tls import ReloadableTls, TlsError

    try:
        if current is None:
            return ReloadableTls(config.tls)
        current.replace(config.tls)
        return current
    except TlsError as e:
        if current is None:
            raise
        log.error("new TLS certificate not usable, keeping the old one: {error}", error=str(e))
        return current


def log_certificate(tls: Any, config: Config, log: Logger) -> None:
    """Log whom the certificate in use is for, and whether it covers `public_url`'s host."""
    from hmacfs.process.tls import TlsError, certificate_summary, hostname_mismatch

    try:
        summary = certificate_summary(tls.settings)
    except TlsError as e:
        log.warn("{error}", error=str(e))
        return
    log.info("TLS certificate for {summary}", summary=summary)
    public = config.server.public_url
    if public and public.startswith("https://"):
        host = public.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        mismatch = hostname_mismatch(tls.settings, host)
        if mismatch:
            log.warn(
                "the TLS certificate does not cover public_url's host {host}: {why}",
                host=host,
                why=mismatch,
            )
