"""Credentials for an object store: an access key pair, read from an AWS credentials file or
the environment. No Twisted and no HTTP: check-config reads them too."""

from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    """An access key pair, and the session token that comes with temporary credentials."""

    access_key: str
    secret_key: str = field(repr=False)
    #: Sent (and signed) as x-amz-security-token; None or "" for long-term credentials.
    session_token: str | None = field(default=None, repr=False)


class CredentialsError(Exception):
    """No usable credentials (`key` names the setting at fault)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


def load_credentials(path: Path | None, profile: str = "default") -> Credentials:
    """Credentials from `path` (an AWS shared credentials file: `aws_access_key_id`,
    `aws_secret_access_key`, optionally `aws_session_token`, in section `profile`), else from
    the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN). Raises
    CredentialsError naming what is wrong; a file others may read is refused."""
    if path is None:
        access = os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not access or not secret:
            raise CredentialsError(
                "no credentials: set credentials_file, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the service's environment",
                "credentials_file",
            )
        return Credentials(access, secret, os.environ.get("AWS_SESSION_TOKEN") or None)
    try:
        with path.open(encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise CredentialsError(f"cannot read {path}: {reason}", "credentials_file") from None
    if mode & stat.S_IROTH:
        raise CredentialsError(
            f"{path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
            f"run chmod 0640 {path}",
            "credentials_file",
        )
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as e:
        raise CredentialsError(
            f"{path} is not a credentials file: {e}", "credentials_file"
        ) from None
    if not parser.has_section(profile):
        raise CredentialsError(f"{path} has no [{profile}] section", "credentials_profile")
    section = parser[profile]
    access = section.get("aws_access_key_id", "").strip()
    secret = section.get("aws_secret_access_key", "").strip()
    if not access or not secret:
        raise CredentialsError(
            f"[{profile}] in {path} needs aws_access_key_id and aws_secret_access_key",
            "credentials_file",
        )
    token = section.get("aws_session_token", "").strip() or None
    return Credentials(access, secret, token)
