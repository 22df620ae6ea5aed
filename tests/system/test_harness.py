"""Tests of the systemd-nspawn harness, and of the unit files under a real systemd."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system.nspawn import CommandFailed, Container, ContainerTimeout

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = "hmac-file-server.service"
SOCKET = "hmac-file-server.socket"
STUB = "#!/bin/sh\nexit 0\n"

# The service's sandbox (the real unit, only ExecStart replaced) running what the server
# needs: Twisted, TLS through pyOpenSSL with its callbacks (verification, ALPN, SNI), a
# privileged port, sd_notify; it reports what it may write in its status.
SANDBOX_PROBE = """\
import os
import sdnotify
from OpenSSL import crypto
from twisted.internet import endpoints, reactor, ssl
from twisted.web import resource, server

def writable(path):
    try:
        with open(path, "w") as f:
            f.write("probe")
    except OSError:
        return "ro"
    os.unlink(path)
    return "rw"

key = crypto.PKey()
key.generate_key(crypto.TYPE_RSA, 2048)
cert = crypto.X509()
cert.get_subject().CN = "localhost"
cert.set_serial_number(1)
cert.gmtime_adj_notBefore(0)
cert.gmtime_adj_notAfter(3600)
cert.set_issuer(cert.get_subject())
cert.set_pubkey(key)
cert.sign(key, "sha256")
options = ssl.CertificateOptions(
    privateKey=key, certificate=cert, acceptableProtocols=[b"http/1.1"]
)
options.getContext().set_tlsext_servername_callback(lambda connection: None)

class Hello(resource.Resource):
    isLeaf = True
    def render_GET(self, request):
        return b"sandboxed"

def ready(port):
    status = "etc=%s state=%s" % (
        writable("/etc/hmacfs-probe"), writable("/var/lib/hmac-file-server/probe")
    )
    sdnotify.SystemdNotifier().notify("STATUS=%s\\nREADY=1" % status)

def failed(reason):
    print(reason.getTraceback(), flush=True)
    reactor.stop()

endpoint = endpoints.SSL4ServerEndpoint(reactor, 443, options)
endpoint.listen(server.Site(Hello())).addCallbacks(ready, failed)
reactor.run()
"""

NOTIFY_UNIT = """\
[Unit]
Description=Type=notify probe

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/python3 -c "import sdnotify, time; n = sdnotify.SystemdNotifier(); \
time.sleep(2); n.notify('STATUS=hello'); n.notify('READY=1'); time.sleep(600)"
"""


def install_units(box: Container) -> None:
    """The unit files into /etc/systemd/system, a stub server binary and its user."""
    for name in (SERVICE, SOCKET):
        box.write_file(f"/etc/systemd/system/{name}", (UNITS / name).read_text())
    box.write_file("/usr/bin/hmac-file-server", STUB, mode=0o755)
    box.run("adduser", "--system", "--group", "--no-create-home", "hmac-file-server")
    box.systemctl("daemon-reload")


# --------------------------------------------------------------------------- booting


def test_container_boots_systemd(container: Container, rootfs: Path) -> None:
    state = container.systemctl("is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert container.read_file("/proc/1/comm").strip() == "systemd"
    assert container.run("readlink", "/proc/1/exe").stdout.strip().endswith("/systemd")
    assert container.run("hostname").stdout.strip() == container.name
    # A private network: loopback only, so ports never clash with the host's.
    assert container.run("ls", "/sys/class/net").stdout.split() == ["lo"]
    # Writes land in the throwaway overlay, never in the shared root.
    container.write_file("/etc/harness-probe", "overlay\n", mode=0o600)
    assert container.read_file("/etc/harness-probe") == "overlay\n"
    assert container.run("stat", "-c", "%a", "/etc/harness-probe").stdout.strip() == "600"
    assert not (rootfs / "etc/harness-probe").exists()


def test_root_holds_the_runtime_dependencies(container: Container) -> None:
    wanted = [*nspawn.BASE_PACKAGES, *nspawn.read_packages()]
    out = container.run("dpkg-query", "-W", "-f=${Package} ${Status}\\n", *wanted).stdout
    installed = {line.split()[0] for line in out.splitlines() if "install ok installed" in line}
    assert installed == set(wanted)
    version = container.run("python3", "-c", "import sys; print(sys.version_info[:2])").stdout
    assert version.strip() == "(3, 11)"


def test_run_passes_input_and_reports_failures(container: Container) -> None:
    assert container.run("cat", input="über\n").stdout == "über\n"
    assert container.run("sh", "-c", "exit 3", check=False).returncode == 3
    with pytest.raises(CommandFailed) as failure:
        container.run("sh", "-c", "echo to-stderr >&2; exit 4")
    assert failure.value.returncode == 4
    assert "to-stderr" in str(failure.value)
    # A clean environment: nothing of pytest's leaks in.
    env = container.run("env").stdout.splitlines()
    assert sorted(line.partition("=")[0] for line in env) == ["LANG", "PATH"]


def test_waits_are_bounded_and_explain_themselves(container: Container) -> None:
    started = time.monotonic()
    with pytest.raises(ContainerTimeout) as timeout:
        container.run("sleep", "300", timeout=1)
    assert time.monotonic() - started < 10
    assert "sleep 300" in str(timeout.value)
    assert "--- journal" in str(timeout.value)
    # The command was killed inside the container too.
    assert container.run("pgrep", "-x", "sleep", check=False).returncode == 1
    with pytest.raises(ContainerTimeout, match="waiting for Godot"):
        container.wait_until(lambda: False, timeout=0.5, what="Godot")


def test_journal_and_status_helpers(container: Container) -> None:
    container.run(
        "systemd-run", "--unit=harness-echo", "--wait", "--quiet",
        "-p", "Type=oneshot", "sh", "-c", "echo one; echo two >&2",
    )
    entries = container.journal("harness-echo")
    messages = [entry["MESSAGE"] for entry in entries]
    assert "one" in messages and "two" in messages
    assert all("PRIORITY" in entry for entry in entries)
    assert container.status_text("harness-echo") == ""
    assert container.show("harness-echo", "Result")["Result"] == "success"


# --------------------------------------------------------------------------- unit files


def test_unit_files_verify_silently(container: Container) -> None:
    install_units(container)
    result = container.run(
        "systemd-analyze", "verify", "--man=no",
        f"/etc/systemd/system/{SERVICE}", f"/etc/systemd/system/{SOCKET}",
        check=False,
    )
    # verify exits 0 even on errors: any output at all is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_service_exposure_is_at_most_2_0(container: Container) -> None:
    install_units(container)
    unit = f"/etc/systemd/system/{SERVICE}"

    def security(threshold: int) -> tuple[int, str]:
        result = container.run(
            "systemd-analyze", "security", "--offline=yes", f"--threshold={threshold}", unit,
            check=False,
        )
        return result.returncode, result.stdout + result.stderr

    # --threshold counts tenths of the 0.0-10.0 score (its default, 100, is the maximum).
    returncode, output = security(20)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", output)
    assert score is not None, output
    assert float(score.group(1)) <= 2.0, output
    assert returncode == 0, output
    assert security(0)[0] != 0  # the threshold really bites


def test_notify_readiness_through_the_harness(container: Container) -> None:
    container.write_file("/etc/systemd/system/notify-probe.service", NOTIFY_UNIT)
    container.systemctl("daemon-reload")
    started = time.monotonic()
    container.systemctl("start", "notify-probe")
    assert time.monotonic() - started >= 2.0  # start returned only after READY=1
    props = container.show(
        "notify-probe", "ActiveState", "SubState",
        "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
    )
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    activating_us = int(props["ActiveEnterTimestampMonotonic"]) - int(
        props["ExecMainStartTimestampMonotonic"]
    )
    assert activating_us >= 2_000_000
    assert container.status_text("notify-probe") == "hello"
    assert any(e["MESSAGE"].startswith("Started") for e in container.journal("notify-probe"))


def test_service_sandbox_runs_twisted_with_tls(container: Container) -> None:
    install_units(container)
    container.write_file("/usr/local/lib/sandbox-probe.py", SANDBOX_PROBE)
    container.write_file(
        f"/etc/systemd/system/{SERVICE}.d/probe.conf",
        "[Service]\nExecStart=\nExecStart=/usr/bin/python3 /usr/local/lib/sandbox-probe.py\n",
    )
    container.systemctl("daemon-reload")
    result = container.systemctl("start", SERVICE, check=False)
    journal = "\n".join(str(e.get("MESSAGE")) for e in container.journal(SERVICE))
    assert result.returncode == 0, journal
    assert container.status_text(SERVICE) == "etc=ro state=rw"
    body = container.run("curl", "-sSfk", "https://localhost/").stdout
    assert body == "sandboxed"
    pid = container.show(SERVICE, "MainPID")["MainPID"]
    status = dict(
        line.split(":\t", 1) for line in container.read_file(f"/proc/{pid}/status").splitlines()
    )
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert int(status["CapEff"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE only
    assert status["Uid"].split()[0] != "0"


# --------------------------------------------------------------------------- lifecycle


def test_stop_leaves_nothing_behind(rootfs: Path) -> None:
    box = Container(rootfs).start()
    nspawn_pid, pid1, cgroups = box.nspawn_pid, box.pid1, list(box.cgroups)
    assert nspawn_pid is not None and pid1 is not None and cgroups
    assert all(cgroup.is_dir() for cgroup in cgroups)
    box.stop()
    assert not box.running
    assert not Path(f"/proc/{nspawn_pid}").exists()
    assert not Path(f"/proc/{pid1}").exists()
    assert not any(cgroup.exists() for cgroup in cgroups)
    assert box.cgroups == []
    assert not (Path("/run/systemd/nspawn/propagate") / box.name).exists()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            assert box.name.encode() not in cmdline
    box.stop()  # idempotent


def test_parallel_containers_do_not_collide(rootfs: Path) -> None:
    with Container(rootfs) as one, Container(rootfs) as two:
        assert one.name != two.name
        assert set(one.cgroups).isdisjoint(two.cgroups)
        one.write_file("/srv/mine", "one")
        assert two.run("test", "-e", "/srv/mine", check=False).returncode == 1
        assert two.run("hostname").stdout.strip() == two.name


# --------------------------------------------------------------------------- host side


def test_missing_host_tools_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(nspawn, "SYSTEM_PATH", str(tmp_path))
    with pytest.raises(nspawn.MissingHostTools) as missing:
        nspawn.require_host_tools()
    for package in nspawn.HOST_PACKAGES:
        assert package in str(missing.value)


def test_mirror_comes_from_the_apt_configuration(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (tmp_path / "sources.list.d/other.list").write_text(
        "deb [arch=amd64 signed-by=/k.gpg] http://vendor.invalid/apt stable main\n"
    )
    mirror, release = nspawn.debian_sources("bookworm", tmp_path)
    assert mirror.uri == "http://mirror.invalid/debian"
    assert [s.suites for s in release] == [("bookworm", "bookworm-updates"),
                                           ("bookworm-security",)]
    with pytest.raises(nspawn.HarnessError, match="no APT source"):
        nspawn.debian_sources("trixie", tmp_path)


def test_cache_key_is_a_hash_of_the_package_list() -> None:
    key = nspawn.rootfs_key(["curl", "python3"])
    assert key == nspawn.rootfs_key(["python3", "curl"])
    assert key != nspawn.rootfs_key(["curl", "python3", "python3-twisted"])
    assert "python3-sdnotify" in nspawn.read_packages()
