"""The Debian package, as an admin uses it: build, lint, apt install on a clean Debian 12 under
a real systemd, upload and download, edit and reload, a broken edit, upgrade, remove, purge."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.nspawn import Container

REPO = Path(__file__).resolve().parents[2]
UNIT = "hmac-file-server.service"
CONFIG = "/etc/hmac-file-server/config.toml"
NEWER = "0.1.0+upgrade1"


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built twice from this tree: the current version and a newer one."""
    dist = tmp_path_factory.mktemp("debs")
    for version in ("", NEWER):
        env = dict(os.environ, HMACFS_DEB_VERSION=version)
        result = subprocess.run(
            [str(REPO / "packaging" / "build-deb"), str(dist)],
            capture_output=True, text=True, timeout=600, env=env, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    os.chmod(dist, 0o755)
    for path in dist.iterdir():
        path.chmod(0o644)
    return dist


def deb(dist: Path, newer: bool = False) -> str:
    [path] = [p for p in dist.glob("*.deb") if (NEWER in p.name) == newer]
    return path.name


def test_lintian_pedantic_is_clean(debs: Path) -> None:
    # lintian runs unprivileged, so it gets a copy it can read.
    with tempfile.TemporaryDirectory() as shared:
        os.chmod(shared, 0o755)
        for path in debs.iterdir():
            if NEWER not in path.name:
                shutil.copy(path, shared)
                os.chmod(Path(shared) / path.name, 0o644)
        [changes] = Path(shared).glob("*.changes")
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env",
             "HOME=/tmp", "lintian", "--pedantic", "--fail-on=warning", str(changes)],
            capture_output=True, text=True, timeout=600, check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert problems == []


def test_depends_on_debians_patched_twisted_not_on_the_pypi_floor(debs: Path) -> None:
    # PyPI's floor (24.7: the first upstream release with the CVE fixes) is no Debian version;
    # bookworm's 22.4 has them backported from 22.4.0-4+deb12u1 on.
    depends = subprocess.run(
        ["dpkg-deb", "--field", str(debs / deb(debs)), "Depends"],
        capture_output=True, text=True, check=True,
    ).stdout
    twisted = [d.strip() for d in depends.replace("\n", " ").split(",") if "python3-twisted" in d]
    assert twisted == ["python3-twisted (>= 22.4.0-4+deb12u1)"], depends


@pytest.fixture
def box(rootfs: Path, debs: Path) -> Iterator[Container]:
    with Container(rootfs, bind_ro={debs: "/srv/debs"}) as container:
        yield container


def apt(box: Container, *args: str) -> None:
    box.run("apt-get", "-y", "-q", *args, timeout=300,
            env={"DEBIAN_FRONTEND": "noninteractive"})


def put(box: Container, secret: str, body: str, rel: str | None = None) -> tuple[str, str]:
    rel = rel or f"{uuid.uuid4()}/file.txt"
    size = len(body.encode())
    mac = hmac.new(secret.encode(), f"{rel} {size}".encode(), hashlib.sha256).hexdigest()
    box.write_file("/tmp/body", body)
    status = box.run(
        "curl", "-sS", "-T", "/tmp/body", "-H", "Expect:", "-o", "/dev/null", "-w",
        "%{http_code}", f"http://127.0.0.1:5050/upload/{rel}?v={mac}",
    ).stdout
    return status, rel


def get(box: Container, rel: str) -> str:
    return box.run("curl", "-sS", f"http://127.0.0.1:5050/upload/{rel}").stdout


def test_install_use_reload_upgrade_remove_purge(box: Container, debs: Path) -> None:
    apt(box, "install", f"/srv/debs/{deb(debs)}")
    # Installed, enabled and running as its own user.
    assert box.systemctl("is-active", UNIT).stdout.strip() == "active"
    assert box.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    state = box.show(UNIT, "MainPID", "User")
    assert box.run("ps", "-o", "user=", "-p", state["MainPID"]).stdout.strip() == (
        "hmac-file-server"
    )
    # The configuration and a secret of this installation's own, readable by the service only.
    listing = box.run("stat", "-c", "%U:%G %a %n", CONFIG, "/etc/hmac-file-server/secret").stdout
    assert listing.splitlines() == [
        f"root:hmac-file-server 640 {CONFIG}",
        "root:hmac-file-server 640 /etc/hmac-file-server/secret",
    ]
    secret = box.read_file("/etc/hmac-file-server/secret").strip()
    assert len(secret) >= 32
    conffiles = box.run("dpkg-query", "-W", "-f=${Conffiles}", "hmac-file-server").stdout
    assert CONFIG in conffiles
    for page in ("man8/hmac-file-server.8.gz", "man5/hmac-file-server.toml.5.gz"):
        assert box.run("test", "-s", f"/usr/share/man/{page}", check=False).returncode == 0
    # The security exposure of the installed unit.
    box.run("systemd-analyze", "security", "--offline=yes", "--threshold=20",
            "/lib/systemd/system/hmac-file-server.service")
    verify = box.run("systemd-analyze", "verify", "--man=no",
                     "/lib/systemd/system/hmac-file-server.service", check=False)
    assert verify.stdout + verify.stderr == ""

    # A signed upload and its download.
    status, rel = put(box, secret, "installed and working")
    assert status == "201"
    assert get(box, rel) == "installed and working"

    # Edit the configuration (a new size limit, and a note of the admin's) and reload.
    config = box.read_file(CONFIG)
    edited = config.replace('max_upload_size = "100M"', 'max_upload_size = "10"')
    assert edited != config
    edited = "# edited by the admin\n" + edited
    box.write_file(CONFIG, edited, 0o640)
    pid = box.show(UNIT, "MainPID")["MainPID"]
    box.systemctl("reload", UNIT)
    box.wait_until(lambda: put(box, secret, "more than ten bytes")[0] == "413", timeout=20,
                   what="the new size limit")
    assert box.show(UNIT, "MainPID")["MainPID"] == pid

    # A broken edit: the restart fails with the configuration error, not a traceback.
    broken = edited.replace("\n[server]\n", "\n[server]\nlisten_typo = 1\n", 1)
    assert broken != edited
    box.write_file(CONFIG, broken, 0o640)
    assert box.systemctl("restart", UNIT, check=False).returncode != 0
    box.wait_until(
        lambda: any(
            "listen_typo" in e.get("MESSAGE", "") and CONFIG in e.get("MESSAGE", "")
            for e in box.journal(UNIT)
        ),
        timeout=20,
        what="the configuration error in the journal",
    )
    tracebacks = [e["MESSAGE"] for e in box.journal(UNIT) if "Traceback" in e.get("MESSAGE", "")]
    assert not tracebacks, "\n".join(
        e.get("MESSAGE", "") for e in box.journal(UNIT)[-60:]
    )
    box.write_file(CONFIG, edited, 0o640)
    box.run("chown", "root:hmac-file-server", CONFIG)
    box.systemctl("restart", UNIT)
    status, kept = put(box, secret, "tiny")
    assert status == "201"

    # Upgrade: the admin's configuration, the secret and the files stay; the service restarts.
    pid = box.show(UNIT, "MainPID")["MainPID"]
    apt(box, "install", f"/srv/debs/{deb(debs, newer=True)}")
    version = box.run("dpkg-query", "-W", "-f=${Version}", "hmac-file-server").stdout
    assert version == NEWER
    assert box.read_file(CONFIG).startswith("# edited by the admin\n")
    assert box.read_file("/etc/hmac-file-server/secret").strip() == secret
    assert box.systemctl("is-active", UNIT).stdout.strip() == "active"
    assert box.show(UNIT, "MainPID")["MainPID"] != pid
    assert get(box, kept) == "tiny"
    assert get(box, rel) == "installed and working"

    # Remove: stopped, configuration and files kept.
    apt(box, "remove", "hmac-file-server")
    assert box.systemctl("is-active", UNIT, check=False).stdout.strip() in ("inactive", "unknown")
    assert box.run("test", "-e", CONFIG, check=False).returncode == 0
    assert box.run("test", "-e", f"/var/lib/hmac-file-server/files/{kept}",
                   check=False).returncode == 0

    # Purge: nothing left.
    apt(box, "purge", "hmac-file-server")
    for path in ("/etc/hmac-file-server", "/var/lib/hmac-file-server"):
        assert box.run("test", "-e", path, check=False).returncode != 0, path
    assert box.run("getent", "passwd", "hmac-file-server", check=False).returncode != 0
    assert box.run("dpkg-query", "-W", "hmac-file-server", check=False).returncode != 0
