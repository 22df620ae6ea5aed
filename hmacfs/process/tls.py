"""TLS for https:// listeners: a pyOpenSSL context built from PEM files, swappable on reload.

New connections take whatever context is current when they arrive; connections already open
keep the context they started with, so a certificate renewal (SIGHUP) never drops a transfer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from hmacfs.core.files import FileTooLarge, NotRegularFile, read_regular
from hmacfs.core.settings import TlsSettings

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_ALPN = b"http/1.1"
#: Larger than any certificate chain or key file (a chain of ten 4096-bit certificates is
#: about 20 KB).
MAX_PEM_FILE = 1 << 20


class TlsError(Exception):
    """The certificate, key or TLS settings cannot be used; `key` names the `[tls]` key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"[tls] {key}: {message}")
        self.key = key
        self.message = message


def _read(path: Path | None, key: str) -> bytes:
    """A PEM file's bytes. A path that is not a regular file (a FIFO, /dev/zero) or is larger
    than any PEM file is refused: it would hang or exhaust the process at start or reload."""
    if path is None:
        raise TlsError(key, "not set")
    try:
        content, _ = read_regular(path, MAX_PEM_FILE)
    except OSError as e:
        raise TlsError(key, f"cannot read {path}: {e.strerror}") from None
    except FileTooLarge as e:
        raise TlsError(key, f"{e}; is it a PEM file?") from None
    except NotRegularFile as e:
        raise TlsError(key, str(e)) from None
    return content


def _ssl_reason(error: Exception) -> str:
    """OpenSSL's own words, shortest form (its error queue can be long)."""
    if isinstance(error, SSL.Error | crypto.Error) and error.args and error.args[0]:
        last = error.args[0][-1]
        if isinstance(last, tuple) and len(last) == 3:
            return str(last[2])
    return str(error) or type(error).__name__


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    # Only HTTP/1.1 is served. A client that does not offer it gets no ALPN answer at all
    # (never a protocol it did not ask for), as from a server that does not know ALPN.
    if _ALPN in offered:
        return _ALPN
    return getattr(SSL, "NO_OVERLAPPING_PROTOCOLS", b"")


def build_context(settings: TlsSettings) -> SSL.Context:
    """A server context for `settings`, with the key checked against the certificate.

    Raises TlsError naming the `[tls]` key at fault (missing or unreadable file, not PEM, key
    not matching the certificate, invalid cipher list).
    """
    cert_pem = _read(settings.certificate, "certificate")
    key_pem = _read(settings.key, "key")
    chain_pem = _read(settings.chain, "chain") if settings.chain is not None else b""
    try:
        certificates = _pem_certificates(cert_pem + b"\n" + chain_pem)
    except crypto.Error as e:
        raise TlsError("certificate", f"not a PEM certificate: {_ssl_reason(e)}") from None
    if not certificates:
        raise TlsError("certificate", f"no PEM certificate in {settings.certificate}")
    try:
        private_key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as e:
        raise TlsError("key", f"not a PEM private key: {_ssl_reason(e)}") from None

    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(_VERSIONS[settings.min_version])
    context.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET
    )
    try:
        context.set_cipher_list(settings.ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise TlsError("ciphers", f"OpenSSL accepts none of them: {_ssl_reason(e)}") from None
    context.use_certificate(certificates[0])
    for extra in certificates[1:]:
        context.add_extra_chain_cert(extra)
    try:
        # (newer pyOpenSSL releases already refuse a mismatched key in use_privatekey)
        context.use_privatekey(private_key)
        context.check_privatekey()
    except SSL.Error:
        raise TlsError("key", f"{settings.key} does not belong to the certificate") from None
    context.set_alpn_select_callback(_select_alpn)
    context.set_session_id(b"hmac-file-server")
    return context


def _pem_certificates(pem: bytes) -> list[crypto.X509]:
    marker = b"-----BEGIN CERTIFICATE-----"
    certificates = []
    for block in pem.split(marker)[1:]:
        certificates.append(crypto.load_certificate(crypto.FILETYPE_PEM, marker + block))
    return certificates


def certificate_summary(settings: TlsSettings) -> str:
    """Subject and expiry of the leaf certificate, for the log. Raises TlsError."""
    certs = _pem_certificates(_read(settings.certificate, "certificate"))
    if not certs:
        raise TlsError("certificate", "no PEM certificate")
    leaf = certs[0].to_cryptography()
    names = []
    try:
        from cryptography import x509

        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except Exception:
        names = [leaf.subject.rfc4514_string()]
    expiry = getattr(leaf, "not_valid_after_utc", None) or leaf.not_valid_after
    return f"{', '.join(names)} (valid until {expiry:%Y-%m-%d %H:%M} UTC)"


def hostname_mismatch(settings: TlsSettings, hostname: str) -> str | None:
    """Why the certificate does not cover `hostname` (service-identity's verdict), or None."""
    from service_identity import VerificationError
    from service_identity.cryptography import verify_certificate_hostname

    certs = _pem_certificates(_read(settings.certificate, "certificate"))
    if not certs:
        return "no certificate"
    try:
        verify_certificate_hostname(certs[0].to_cryptography(), hostname)
    except VerificationError as e:
        return str(e)
    return None


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTls:
    """Creates server TLS connections from the current context; `replace` swaps it."""

    def __init__(self, settings: TlsSettings) -> None:
        self.context = build_context(settings)
        self.settings = settings

    def replace(self, settings: TlsSettings) -> None:
        """Use `settings` for new connections. Raises TlsError and keeps the old context."""
        self.context = build_context(settings)
        self.settings = settings

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N803
        return SSL.Connection(self.context, None)
