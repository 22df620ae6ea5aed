"""Every use of pyOpenSSL's private attributes, in one place: TLS bytes read into our buffers.

pyOpenSSL's `Connection.recv` and `bio_read` allocate a buffer per call and copy what OpenSSL
gave into a new bytes object; `recv` gives one TLS record (16 KiB at most) per call and signals
"nothing more for now" with an exception. To read a large body's plaintext, or a large
answer's ciphertext, a buffer at a time, `RawTls` calls `SSL_read` and `BIO_read` through
pyOpenSSL's own cffi bindings (`OpenSSL._util.ffi`/`lib`) on the connection's `SSL` object and
memory BIO (`Connection._ssl`, `Connection._from_ssl`), and has failures raised by pyOpenSSL
itself (`Connection._raise_ssl_error`), so they are the exceptions `recv` raises.

`RawTls.of` returns None when any of that is missing (another pyOpenSSL release); the callers
then use the public methods, a copy more. `tests/protocol/test_tls_body.py` checks the shape
against the installed pyOpenSSL.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover (a pyOpenSSL without them: the public methods)
    _ffi = _lib = None

_NEEDED = ("SSL_read", "BIO_read", "SSL_get_error", "SSL_ERROR_WANT_READ")
_USABLE = _lib is not None and all(hasattr(_lib, name) for name in _NEEDED)


class Buffer:
    """A buffer OpenSSL and the kernel read into, reused for every read."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        #: What cffi passes to OpenSSL (None without the bindings).
        self.pointer: Any = _ffi.from_buffer(self.data) if _USABLE else None

    def __len__(self) -> int:
        return len(self.data)


class RawTls:
    """Reads of one connection's plaintext and ciphertext into `Buffer`s, past pyOpenSSL."""

    def __init__(self, connection: SSL.Connection, ssl: Any, bio: Any, raise_error: Any) -> None:
        self.connection = connection  # (keeps `ssl` and `bio` alive)
        self._ssl = ssl
        self._bio = bio
        self._raise_error = raise_error

    @classmethod
    def of(cls, connection: SSL.Connection) -> RawTls | None:
        """The raw reads of `connection`; None if this pyOpenSSL does not have what they need
        (or the connection has no memory BIO)."""
        if not _USABLE:
            return None
        ssl = getattr(connection, "_ssl", None)
        bio = getattr(connection, "_from_ssl", None)
        raise_error = getattr(connection, "_raise_ssl_error", None)
        if (
            not isinstance(ssl, _ffi.CData)
            or not isinstance(bio, _ffi.CData)
            or not callable(raise_error)
        ):
            return None
        return cls(connection, ssl, bio, raise_error)

    def plain_into(self, buffer: Buffer) -> tuple[int, SSL.Error | None]:
        """Decrypt into `buffer` as many TLS records as it holds: how many bytes, and the
        error OpenSSL stopped at (`ZeroReturnError`: the peer's TLS close), if it was not for
        want of more ciphertext. What was decrypted before the error comes with it."""
        ssl, pointer, size = self._ssl, buffer.pointer, len(buffer)
        read, get_error, want_read = _lib.SSL_read, _lib.SSL_get_error, _lib.SSL_ERROR_WANT_READ
        count = 0
        while count < size:
            got = read(ssl, pointer + count, size - count)
            if got <= 0:
                if get_error(ssl, got) == want_read:
                    return count, None
                try:
                    self._raise_error(ssl, got)  # (reads OpenSSL's error queue now)
                except SSL.Error as e:
                    return count, e
                return count, None
            count += got
        return count, None

    def cipher_into(self, buffer: Buffer) -> int:
        """Move ciphertext waiting in the memory BIO into `buffer`: how many bytes (0: none)."""
        got: int = _lib.BIO_read(self._bio, buffer.pointer, len(buffer))
        return got if got > 0 else 0
