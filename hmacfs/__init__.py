"""hmac-file-server: an XEP-0363 HTTP File Upload server."""

__version__ = "0.1.0"
