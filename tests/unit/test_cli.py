"""Command-line helpers that need no running server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hmacfs import cli
from hmacfs.core.settings import Config, HmacSettings, ServerSettings


def config(*listen: str, public_url: str | None = None) -> Config:
    return Config(
        server=ServerSettings(listen=listen, public_url=public_url),
        hmac=HmacSettings(secrets=(b"a-secret-of-sixteen",)),
    )


def test_base_url_follows_the_listeners() -> None:
    assert cli.base_url(config("127.0.0.1:5050")) == "http://127.0.0.1:5050"
    assert cli.base_url(config("https://[::]:443")) == "https://[::]:443"
    assert cli.base_url(config("unix:/run/x.sock", "http://0.0.0.0:80")) == "http://0.0.0.0:80"
    assert cli.base_url(config("systemd:http", public_url="https://up.example")) == (
        "https://up.example"
    )
    with pytest.raises(ValueError, match="public_url"):
        cli.base_url(config("systemd:http", "unix:/run/x.sock"))


def test_upload_url_encodes_each_segment() -> None:
    cfg = config("127.0.0.1:5050")
    assert cli.upload_url(cfg, "a b/très+1.txt") == (
        "http://127.0.0.1:5050/upload/a%20b/tr%C3%A8s%2B1.txt"
    )
    cfg = replace(cfg, server=replace(cfg.server, upload_prefix="/"))
    assert cli.upload_url(cfg, "x/y") == "http://127.0.0.1:5050/x/y"


def test_sign_with_a_missing_file_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[hmac]\nsecret = "a-secret-of-sixteen"\n')
    status = cli.main(["--config", str(path), "sign", "a/b", "--file", str(tmp_path / "nope")])
    assert status == cli.EXIT_CONFIG
    assert "No such file" in capsys.readouterr().err


def test_sign_without_a_reachable_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[server]\nlisten = ["systemd:http"]\n[hmac]\nsecret = "a-secret-of-sixteen"\n'
    )
    status = cli.main(["--config", str(path), "sign", "a/b", "--size", "3"])
    assert status == cli.EXIT_CONFIG
    assert "public_url" in capsys.readouterr().err


def test_help_is_wrapped_to_the_terminal_as_argparse_wraps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The help formatter takes the width without shutil, as shutil would tell it."""
    import argparse
    import shutil

    shown = {}
    for columns in ("50", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        assert cli.terminal_columns() == shutil.get_terminal_size().columns == int(columns)
        parser = cli.build_parser()
        shown[columns] = parser.format_help()
        parser.formatter_class = argparse.HelpFormatter
        assert shown[columns] == parser.format_help()
    assert shown["50"] != shown["200"]
    assert max(len(line) for line in shown["50"].splitlines()) <= 48
    monkeypatch.delenv("COLUMNS")
    assert cli.terminal_columns() == shutil.get_terminal_size().columns
