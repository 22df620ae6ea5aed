"""Upload one file the way a slixmpp application does: its XEP-0363 plugin, end to end.

Run with the project's venv python (slixmpp from PyPI: Debian's 1.8.3 cannot discover the
upload service on Python 3.11, "TypeError: Passing coroutines is forbidden").

    SSL_CERT_FILE=CA python slixmpp_upload.py --jid u@d --password p --host 127.0.0.1 \
        --port N --ca-file F FILE

HTTPS trust: `xep_0363.upload_file` PUTs through a `ClientSession(headers=...)` of its own,
with no way to pass an `ssl.SSLContext`, a connector or a session, so the request uses
aiohttp's default verified context (`aiohttp.connector._SSL_CONTEXT_VERIFIED`), which aiohttp
builds once, when it is imported, with `ssl.create_default_context()`. That loads OpenSSL's
default verify paths, and OpenSSL reads them from the environment: `SSL_CERT_FILE` (a CA
file) and `SSL_CERT_DIR`. So the CA is trusted by starting this process with SSL_CERT_FILE
naming it (setting it later, after aiohttp is imported, has no effect). `--ca-file` is the
XMPP server's certificate only (slixmpp's own STARTTLS context).

Prints one JSON object on stdout (the contract shared with nbxmpp_upload.py):
    client, step ("login", "discover", "preflight", "slot", "put" or "done": where it ended),
    ok, service, max_file_size, put_url, get_url, put_header_names, content_type (of the slot
    request and the PUT), status (HTTP status of the PUT), condition (XMPP error condition of a
    refused slot), error (text), http_ca (the CA file the HTTP client trusts: here
    SSL_CERT_FILE), certificate_error (why the client refused the HTTPS server's certificate).
Exit status 0 whenever that object was printed, whatever the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0363.http_upload import FileTooBig, HTTPError, UploadServiceNotFound


class Uploader:
    """Logs in, lets `xep_0363.upload_file` do discovery, slot request and PUT, and records
    at which step it stopped."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.outcome: dict[str, Any] = {
            "client": f"slixmpp {slixmpp.__version__}",
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
            "http_ca": os.environ.get("SSL_CERT_FILE"),
            "certificate_error": None,
        }
        self.xmpp = slixmpp.ClientXMPP(args.jid, args.password)
        self.xmpp.ca_certs = args.ca_file
        # The server is given as host:port of a STARTTLS c2s listener (as a user would
        # configure a server without SRV records); slixmpp would otherwise try direct TLS
        # first on that port and report the failed attempt before falling back.
        self.xmpp.enable_direct_tls = False
        self.xmpp.register_plugin("xep_0030")
        self.xmpp.register_plugin("xep_0363")
        self._wrap_plugin()

    def _wrap_plugin(self) -> None:
        """Observe the plugin's steps without changing what it does.

        `upload_file` only returns the GET URL; wrapping its two sub-steps tells a refused
        slot from a refused PUT and keeps the slot for the report.
        """
        plugin = self.xmpp.plugin["xep_0363"]
        find_service = plugin.find_upload_service
        request_slot = plugin.request_slot

        async def observed_find_upload_service(*args: Any, **kwargs: Any) -> Any:
            self.outcome["step"] = "discover"
            info = await find_service(*args, **kwargs)
            if info is not None:
                self.outcome["service"] = str(info["from"])
            # Whatever comes next and fails before a slot request is the client's own check.
            self.outcome["step"] = "preflight"
            return info

        async def observed_request_slot(*args: Any, **kwargs: Any) -> Any:
            self.outcome["step"] = "slot"
            # request_slot(jid, filename, size, content_type): the type also sent with the PUT
            self.outcome["content_type"] = args[3] if len(args) > 3 else None
            self.outcome["max_file_size"] = _number(plugin.max_file_size)
            iq = await request_slot(*args, **kwargs)
            slot = iq["http_upload_slot"]
            self.outcome["put_url"] = slot["put"]["url"]
            self.outcome["get_url"] = slot["get"]["url"]
            self.outcome["put_header_names"] = [h["name"] for h in slot["put"]["headers"]]
            self.outcome["step"] = "put"
            return iq

        plugin.find_upload_service = observed_find_upload_service  # type: ignore[method-assign]
        plugin.request_slot = observed_request_slot  # type: ignore[method-assign,assignment]

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        session: asyncio.Future[None] = loop.create_future()

        def failed(reason: str) -> Any:
            def handler(event: Any) -> None:
                if not session.done():
                    session.set_exception(RuntimeError(f"{reason}: {event}"))

            return handler

        def started(_event: Any) -> None:
            if not session.done():
                session.set_result(None)

        self.xmpp.add_event_handler("session_start", started)
        self.xmpp.add_event_handler("failed_all_auth", failed("authentication failed"))
        self.xmpp.add_event_handler("connection_failed", failed("connection failed"))
        self.xmpp.connect(host=self.args.host, port=self.args.port)
        try:
            await asyncio.wait_for(session, self.args.timeout)
            await self._upload()
        except Exception as e:  # any failure is reported, never raised: the caller reads JSON
            self.outcome["error"] = f"{type(e).__name__}: {e}"
        finally:
            self.xmpp.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.xmpp.disconnected, 5)
        return self.outcome

    async def _upload(self) -> None:
        path = Path(self.args.file)
        self.outcome["step"] = "discover"
        try:
            get_url = await self.xmpp.plugin["xep_0363"].upload_file(
                path, timeout=self.args.timeout
            )
        except FileTooBig as e:
            self.outcome["max_file_size"] = _number(e.args[1])
            self.outcome["error"] = str(e)
        except UploadServiceNotFound:
            self.outcome["error"] = "no upload service found"
        except HTTPError as e:
            self.outcome["status"] = e.args[0]
            self.outcome["error"] = f"HTTP {e.args[0]}: {str(e.args[1])[:300]}"
        except IqError as e:
            self.outcome["condition"] = e.iq["error"]["condition"]
            self.outcome["error"] = f"{e.iq['error']['type']}/{e.iq['error']['condition']}: " + (
                e.iq["error"]["text"] or ""
            )
        except IqTimeout:
            self.outcome["error"] = "IQ timeout"
        except aiohttp.ClientConnectorCertificateError as e:
            self.outcome["certificate_error"] = str(e.certificate_error)
            self.outcome["error"] = f"{type(e).__name__}: {e}"
        except aiohttp.ClientError as e:
            self.outcome["error"] = f"{type(e).__name__}: {e}"
        else:
            self.outcome["get_url"] = get_url
            self.outcome["step"] = "done"
            self.outcome["ok"] = True


def _number(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and value != float("inf") else None


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    # The client is built inside the running loop: slixmpp binds to the loop current at
    # construction time.
    return await Uploader(args).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("file")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    outcome = asyncio.run(_run(args))
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
