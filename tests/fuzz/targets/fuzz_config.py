"""Fuzz target: the configuration loader (`hmacfs.core.config.parse` and `load`).

Contract: `parse(tomllib.loads(text))` and `load(path)` either return a Config, which
`describe` writes back as TOML that `parse` reads as the same settings once the secrets are put
back, or raise ConfigError: one line, naming a known section and one of its keys (or the
unknown name at fault in its message), and never showing the secret. Any other exception is
a crash.

Inputs whose first byte is "#" or "[" are TOML text (the seed corpus: etc/config.toml and
variants); every eighth such input is written to a file and read with `load`, to reach its
UTF-8 and TOML errors. Other inputs take etc/config.toml's settings and replace one key's
value (or add an unknown key) with a value the fuzzer builds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import tempfile
import tomllib
from pathlib import Path

import atheris

# Coverage guidance needs the code under test instrumented as it is imported; the corpus
# replay in pytest imports this module without that.
with atheris.instrument_imports(include=["hmacfs"]) if __name__ == "__main__" else (
    contextlib.nullcontext()
):
    from hmacfs.core.config import KEYS, MASK, SCHEMA, ConfigError, describe, load, parse
    from hmacfs.core.settings import Config
    from hmacfs.core.units import toml_string

BASE = {
    "server": {"listen": ["127.0.0.1:5050"], "storage_dir": "/srv/files"},
    "hmac": {"secret": "0123456789abcdef0123456789abcdef"},
}
SECTION_NAMES = sorted(SCHEMA)


def _disguised(data: dict[str, object]) -> dict[str, object]:
    """`data` with every secret string replaced by another of the same length (equal ones by
    equal ones), which no message about anything else can contain."""
    hmac_table = data.get("hmac")
    if not isinstance(hmac_table, dict):
        return data
    tokens: dict[str, str] = {}

    def token(value: object) -> object:
        if not isinstance(value, str):
            return value
        return tokens.setdefault(value, chr(0x2460 + len(tokens) % 20) * len(value))

    table = dict(hmac_table)
    if "secret" in table:
        table["secret"] = token(table["secret"])
    if isinstance(table.get("previous_secrets"), list):
        table["previous_secrets"] = [token(v) for v in table["previous_secrets"]]
    return {**data, "hmac": table}


def check_error(error: ConfigError, data: dict[str, object]) -> None:
    line = str(error)
    assert "\n" not in line and "\r" not in line, line
    if error.section is not None:
        assert error.section in SCHEMA, line
        assert error.key is None or error.key in SCHEMA[error.section], line
    else:
        assert any(name in error.message for name in data), line
    # The message is the same whatever the secrets are (but for their lengths).
    try:
        parse(_disguised(data))
    except ConfigError as other:
        assert str(other) == line, (line, str(other))
    else:
        raise AssertionError(f"refused only for its secret's value: {line}")


def check_config(config: Config) -> None:
    shown = describe(config)
    assert isinstance(shown, str)
    # What describe writes does not depend on the secrets (masked, all of them).
    other = tuple(bytes([0x41 + i % 26]) * len(s) for i, s in enumerate(config.hmac.secrets))
    hidden = dataclasses.replace(config.hmac, secrets=other)
    assert describe(dataclasses.replace(config, hmac=hidden)) == shown, shown
    # With the secrets put back, what describe writes reads back as the same settings (unless
    # another value looks like a mask, and it is not clear which one is a secret).
    if shown.count(toml_string(MASK)) != len(config.hmac.secrets) + (not config.hmac.secrets):
        return
    restored = shown
    for secret in config.hmac.secrets:
        restored = restored.replace(toml_string(MASK), toml_string(secret.decode()), 1)
    again = parse(tomllib.loads(restored))
    for section in KEYS:
        assert getattr(again, section) == getattr(config, section), (section, shown)


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 2 else 4)
    if kind == 0:
        return fdp.ConsumeBool()
    if kind == 1:
        return fdp.ConsumeInt(9)
    if kind == 2:
        return fdp.ConsumeFloat()
    if kind in (3, 4):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 48))
    if kind in (5, 6):
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {"k": _value(fdp, depth + 1)}


def _mutated(fdp: atheris.FuzzedDataProvider) -> dict[str, object]:
    data: dict[str, object] = {name: dict(table) for name, table in BASE.items()}
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        section = fdp.PickValueInList(SECTION_NAMES)
        names = list(SCHEMA[section])
        key = fdp.PickValueInList(names) if fdp.ConsumeProbability() < 0.95 else "listne"
        table = data.setdefault(section, {})
        assert isinstance(table, dict)
        table[key] = _value(fdp)
    return data


def _run(data: dict[str, object]) -> None:
    try:
        config = parse(data)
    except ConfigError as e:
        check_error(e, data)
        return
    check_config(config)


def _load(content: bytes) -> None:
    fd, name = tempfile.mkstemp(suffix=".toml")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        try:
            config = load(path)
        except ConfigError as e:
            assert e.path == path and "\n" not in str(e), str(e)
            return
        check_config(dataclasses.replace(config, source=None))
    finally:
        path.unlink()


def TestOneInput(data: bytes) -> None:
    if data[:1] in (b"#", b"["):
        if hashlib.blake2b(data, digest_size=1).digest()[0] % 8 == 0:
            _load(data)
            return
        try:
            parsed = tomllib.loads(data.decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError:
            return
        _run(parsed)
        return
    fdp = atheris.FuzzedDataProvider(data)
    _run(_mutated(fdp))


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
