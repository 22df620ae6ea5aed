"""Upload one file the way Gajim does, with Debian's python3-nbxmpp (run with /usr/bin/python3).

Gajim (gajim/common/modules/httpupload.py) discovers the upload component through disco,
refuses files larger than its advertised max-file-size, requests a slot with nbxmpp's
HTTPUpload module (which itself refuses slot headers other than Authorization, Cookie and
Expires), and PUTs the file with nbxmpp's libsoup 3 HTTPRequest: the slot headers appended,
the body from the file with the MIME type `mimetypes` guesses (application/octet-stream when
it guesses none). This script does the same with the same library calls.

Deliberate differences from Gajim, so that the matrix exercises the upload server:
- Gajim refuses empty files before asking for a slot; this script asks, so the XMPP server's
  and the upload server's handling of empty uploads is tested through nbxmpp and libsoup too.
- Recent Gajim refuses slots whose URLs are not https; this script also PUTs to http URLs, so
  that the matrix's http cells run through libsoup as well.
- HTTPS trust (--http-ca-file): libsoup verifies the server's certificate, hostname included,
  against the Soup.Session's `tls-database`, by default glib-networking's GnuTLS database of
  the system trust store (GnuTLS ignores SSL_CERT_FILE). This script sets that property on
  the one session nbxmpp's HTTPRequest sends with (`HTTPSession.get_soup_session()`) to a
  `Gio.TlsFileDatabase` of the given CA file: that session, in this process only, trusts
  exactly that CA. Nothing connects to Soup.Message's `accept-certificate`, so an
  untrusted certificate fails the request (G_TLS_ERROR_BAD_CERTIFICATE).
  Gajim trusts the system store only; a user with a private CA installs it there.

    python3 nbxmpp_upload.py --jid u@d --password p --host 127.0.0.1 --port N --ca-file F \
        --http-ca-file CA FILE

Prints one JSON object on stdout; see slixmpp_upload.py for the fields. `http_ca` is the
anchor file of the session's TLS database; `certificate_error` names the
GTlsCertificateFlags libsoup saw when it refused the certificate.
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import sys
from pathlib import Path
from typing import Any

import nbxmpp
from gi.repository import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
    Gio,
    GLib,
    Soup,
)
from nbxmpp.client import Client
from nbxmpp.const import ConnectionProtocol, ConnectionType, StreamState
from nbxmpp.errors import HTTPUploadStanzaError, MalformedStanzaError, StanzaError
from nbxmpp.http import HTTPRequest, HTTPSession
from nbxmpp.protocol import JID
from nbxmpp.task import Task


class Uploader:
    """One login, one upload; every callback keeps to Gajim's order of steps."""

    def __init__(self, args: argparse.Namespace, loop: GLib.MainLoop) -> None:
        self.args = args
        self.loop = loop
        self.path = Path(args.file)
        self.outcome: dict[str, Any] = {
            "client": f"nbxmpp {nbxmpp.__version__}",
            "step": "login",
            "ok": False,
            "service": None,
            "max_file_size": None,
            "put_url": None,
            "get_url": None,
            "put_header_names": [],
            "content_type": None,
            "status": None,
            "condition": None,
            "error": None,
            "http_ca": None,
            "certificate_error": None,
        }
        self._candidates: list[JID] = []
        self._request: HTTPRequest | None = None
        self.content_type = "application/octet-stream"
        # As Gajim does: one libsoup session per account, its own user agent.
        self._http = HTTPSession(user_agent="Gajim (hmacfs interop test)")
        self._trust_http_ca(Path(args.http_ca_file).resolve())
        # nbxmpp logs the GLib.Error of a failed request and keeps only HTTPRequestError.UNKNOWN.
        self._http_errors = _ErrorRecorder()
        logging.getLogger("nbxmpp.http").addHandler(self._http_errors)

        jid = JID.from_string(args.jid)
        client = Client(log_context="interop")
        client.set_domain(jid.domain)
        client.set_username(jid.localpart)
        client.set_resource("interop")
        client.set_password(args.password)
        client.set_custom_host(
            f"{args.host}:{args.port}", ConnectionProtocol.TCP, ConnectionType.START_TLS
        )
        # The self-signed certificate is accepted as a Gajim user accepts one ("trust this
        # certificate"): pinned, not by ignoring TLS errors.
        client.set_accepted_certificates([Gio.TlsCertificate.new_from_file(args.ca_file)])
        client.subscribe("connected", self._on_login)
        client.subscribe("connection-failed", self._on_connection_failed)
        client.subscribe("disconnected", self._on_disconnected)
        self.client = client

    def _trust_http_ca(self, ca_file: Path) -> None:
        """Make the session nbxmpp PUTs with trust `ca_file` (an absolute path: glib-networking
        refuses relative anchor file names)."""
        soup: Soup.Session = self._http.get_soup_session()
        soup.set_tls_database(Gio.TlsFileDatabase.new(str(ca_file)))
        self.outcome["http_ca"] = soup.get_tls_database().props.anchors

    # -- XMPP ----------------------------------------------------------------------------

    def start(self) -> None:
        self.client.connect()

    def _on_connection_failed(self, client: Client, _signal: str) -> None:
        domain, error, text = client.get_error()
        self._finish(f"connection failed: {domain} {error} {text or ''}".strip())

    def _on_disconnected(self, _client: Client, _signal: str) -> None:
        self.loop.quit()

    def _on_login(self, _client: Client, _signal: str) -> None:
        self.outcome["step"] = "discover"
        self.client.get_module("Discovery").disco_items(
            self.client.domain, callback=self._on_disco_items
        )

    def _on_disco_items(self, task: Task) -> None:
        try:
            items = task.finish()
        except StanzaError as e:
            self._finish(f"disco#items: {e}")
            return
        self._candidates = [item.jid for item in items.items]
        self._next_disco_info()

    def _next_disco_info(self) -> None:
        if not self._candidates:
            self._finish("no upload service found")
            return
        jid = self._candidates.pop(0)
        self.client.get_module("Discovery").disco_info(jid, callback=self._on_disco_info)

    def _on_disco_info(self, task: Task) -> None:
        try:
            info = task.finish()
        except StanzaError:
            self._next_disco_info()
            return
        if not info.has_httpupload:
            self._next_disco_info()
            return
        self.outcome["service"] = str(info.jid)
        max_size = info.httpupload_max_file_size
        self.outcome["max_file_size"] = int(max_size) if max_size is not None else None
        self._request_slot(info.jid, max_size)

    def _request_slot(self, service: JID, max_size: float | None) -> None:
        self.outcome["step"] = "preflight"
        size = self.path.stat().st_size
        if max_size is not None and size > max_size:
            # Gajim: "File is too large, maximum allowed file size is: …"
            self._finish(f"file too large for the service: {size} > {int(max_size)}")
            return
        self.content_type = (
            mimetypes.MimeTypes().guess_type(str(self.path))[0] or "application/octet-stream"
        )
        self.outcome["step"] = "slot"
        self.outcome["content_type"] = self.content_type
        self.client.get_module("HTTPUpload").request_slot(
            jid=service,
            filename=self.path.name,
            size=size,
            content_type=self.content_type,
            callback=self._on_slot,
        )

    def _on_slot(self, task: Task) -> None:
        try:
            slot = task.finish()
        except (HTTPUploadStanzaError, StanzaError) as e:
            self.outcome["condition"] = e.condition
            self._finish(f"{e.type}/{e.condition}: {e.get_text() or ''}".strip())
            return
        except MalformedStanzaError as e:
            self._finish(f"malformed slot: {e.text}")
            return
        self.outcome["put_url"] = slot.put_uri
        self.outcome["get_url"] = slot.get_uri
        self.outcome["put_header_names"] = sorted(slot.headers)
        self._put(slot.put_uri, slot.headers)

    # -- HTTP ----------------------------------------------------------------------------

    def _put(self, put_uri: str, headers: dict[str, str]) -> None:
        self.outcome["step"] = "put"
        request = self._http.create_request()
        request.set_request_body_from_path(self.content_type, self.path)
        for name, value in headers.items():
            request.get_request_headers().append(name, value)
        request.send("PUT", put_uri, timeout=int(self.args.timeout), callback=self._on_put_done)
        self._request = request  # libsoup needs it alive until it finishes

    def _on_put_done(self, request: HTTPRequest) -> None:
        status = int(request.get_status())
        self.outcome["status"] = status or None
        if not request.is_complete():
            error = f"HTTP {status}: {request.get_error_string()}"
            if self._http_errors.messages:
                error += f" ({'; '.join(self._http_errors.messages)})"
            flags = request.get_soup_message().get_tls_peer_certificate_errors()
            if not status and flags:
                tls_errors = [m for m in self._http_errors.messages if "g-tls-error" in m]
                self.outcome["certificate_error"] = "; ".join([*tls_errors, _flag_names(flags)])
                error += f", certificate: {_flag_names(flags)}"
            self._finish(error)
            return
        self.outcome["step"] = "done"
        self.outcome["ok"] = True
        self._finish(None)

    def _finish(self, error: str | None) -> None:
        self.outcome["error"] = error
        if self.client.state in (StreamState.DISCONNECTED, StreamState.DISCONNECTING):
            self.loop.quit()
        else:
            self.client.disconnect()


class _ErrorRecorder(logging.Handler):
    """Keeps the text of nbxmpp.http's error messages (such as the GLib.Error of a failed
    TLS handshake, "g-tls-error-quark: Unacceptable TLS certificate (2)")."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Without the adapter's "Request(<id>): " prefix.
        self.messages.append(record.getMessage().split(": ", 1)[-1])


def _flag_names(flags: Gio.TlsCertificateFlags) -> str:
    """The flags' names, such as "G_TLS_CERTIFICATE_UNKNOWN_CA", joined with "|"."""
    names = [name for name in flags.value_names if name != "G_TLS_CERTIFICATE_NO_FLAGS"]
    return "|".join(names) or str(int(flags))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca-file", required=True, help="the XMPP server's certificate")
    parser.add_argument("--http-ca-file", required=True, help="CA trusted for HTTPS uploads")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("file")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    loop = GLib.MainLoop()
    uploader = Uploader(args, loop)

    def give_up() -> bool:
        uploader.outcome["error"] = f"no result within {args.timeout:.0f} s"
        loop.quit()
        return False

    GLib.timeout_add_seconds(int(args.timeout), give_up)

    def start() -> bool:
        uploader.start()
        return False  # run once

    GLib.idle_add(start)
    loop.run()
    print(json.dumps(uploader.outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
