"""A real systemd for tests: a cached Debian 12 root booted with systemd-nspawn.

`ensure_rootfs()` gives a directory holding a Debian bookworm (minbase) root with systemd and
the package's runtime dependencies. It is built once with debootstrap from the Debian mirror
the host's APT is configured with, kept as a zstd tarball keyed by a hash of the package list
under `$HMACFS_CACHE` (default /var/cache/hmacfs-test), and restored from there afterwards.

`Container` boots such a root with `systemd-nspawn --boot --volatile=overlay` (every container
gets a throwaway layer over the shared read-only root), with only a loopback network, in a
cgroup of its own, and runs commands inside it through `nsenter`. It needs root and works
without systemd or D-Bus on the host (see shared/notes/TESTING-WITH-REAL-SYSTEMS.md).

    root = ensure_rootfs(workdir=tmp / "root")
    with Container(root, bind_ro={debs: "/srv/debs"}) as box:
        box.run("apt-get", "install", "-y", "/srv/debs/hmac-file-server_1.0_all.deb")
        assert box.status_text("hmac-file-server") == "..."
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

_log = logging.getLogger(__name__)

SUITE = "bookworm"
#: Always in the root: what it takes to boot systemd and run `kill` (ExecReload) and adduser.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps", "adduser")
#: Debian packages the host needs for this harness (`apt-get install` them as root).
HOST_PACKAGES = ("systemd-container", "debootstrap", "zstd")
#: The package list read by default: the runtime dependencies of the Debian package.
PACKAGES_FILE = Path(__file__).with_name("rootfs-packages.txt")
DEFAULT_CACHE = Path("/var/cache/hmacfs-test")
#: Bump when the way the root is built changes, so that old cached roots are not reused.
RECIPE_VERSION = "2"

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HOST_COMMANDS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "zstd": "zstd",
    "tar": "tar",
    "nsenter": "util-linux",
    "chroot": "coreutils",
    "mount": "mount",
}
_CGROUP_BASE = Path("/sys/fs/cgroup")
_PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TMPFS_SOURCE = "hmacfs-rootfs-"
_TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls")

_T = TypeVar("_T")


class HarnessError(RuntimeError):
    """The harness could not do what it was asked (missing tools, a failed build or boot)."""


class MissingHostTools(HarnessError):
    """Host commands the harness needs are not installed; the message names the packages."""


class ContainerTimeout(HarnessError, TimeoutError):
    """A bounded wait ran out; the message carries the tails of the console and journal."""


class CommandFailed(HarnessError, subprocess.CalledProcessError):
    """A command (in the container or on the host) exited non-zero; shows its output."""

    def __init__(self, cmd: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        subprocess.CalledProcessError.__init__(self, returncode, list(cmd), stdout, stderr)

    def __str__(self) -> str:
        return (
            f"command {shlex.join(self.cmd)} exited with status {self.returncode}"
            f"{_section('stdout', self.stdout)}{_section('stderr', self.stderr)}"
        )


def _section(title: str, text: str | None, lines: int = 40) -> str:
    if not text:
        return ""
    tail = text.rstrip("\n").splitlines()[-lines:]
    return f"\n--- {title} (last {len(tail)} lines) ---\n" + "\n".join(tail)


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _host_env() -> dict[str, str]:
    # A predictable PATH: a venv's or pyenv's python3 first on PATH must not leak into
    # debootstrap, chroot or the container.
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


# --------------------------------------------------------------------------- host checks


def require_root() -> None:
    """Raise HarnessError unless running as root (nspawn, debootstrap and cgroups need it)."""
    if os.geteuid() != 0:
        raise HarnessError("the systemd-nspawn harness must run as root")


def missing_host_packages(commands: Sequence[str] = tuple(_HOST_COMMANDS)) -> list[str]:
    """The Debian packages providing those of `commands` that are not on the system PATH."""
    missing = {_HOST_COMMANDS[c] for c in commands if shutil.which(c, path=SYSTEM_PATH) is None}
    return sorted(missing)


def require_host_tools(commands: Sequence[str] = tuple(_HOST_COMMANDS)) -> None:
    """Raise MissingHostTools naming the packages to install if any command is missing."""
    missing = missing_host_packages(commands)
    if missing:
        raise MissingHostTools(
            f"the systemd-nspawn harness needs the host packages {', '.join(missing)}: "
            f"apt-get install {' '.join(HOST_PACKAGES)}"
        )


def _run_host(argv: Sequence[str | Path], *, timeout: float, log: Path | None = None) -> str:
    """Run a host command with the system PATH; its combined output, or CommandFailed."""
    cmd = [str(a) for a in argv]
    _log.debug("host: %s", shlex.join(cmd))
    try:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_host_env(),
            timeout=timeout,
            check=False,
            text=True,
            errors="replace",
        )
    except subprocess.TimeoutExpired as exc:
        raise ContainerTimeout(
            f"host command {shlex.join(cmd)} did not finish within {timeout:.0f} s"
            f"{_section('output', _text(exc.output))}"
        ) from exc
    if log is not None:
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {shlex.join(cmd)}\n{result.stdout}\n")
    if result.returncode != 0:
        raise CommandFailed(cmd, result.returncode, result.stdout, "")
    return result.stdout


# --------------------------------------------------------------------------- APT sources


@dataclass(frozen=True)
class AptSource:
    """One `deb` source of the host's APT configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None

    def deb822(self) -> str:
        lines = [
            "Types: deb",
            f"URIs: {self.uri}",
            f"Suites: {' '.join(self.suites)}",
            f"Components: {' '.join(self.components)}",
        ]
        if self.signed_by:
            lines.append(f"Signed-By: {self.signed_by}")
        return "\n".join(lines) + "\n"


def _parse_deb822(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = None
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t" and key is not None:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def _parse_one_line(text: str) -> Iterator[AptSource]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        options: dict[str, str] = {}
        match = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
        if match:
            for option in match.group(1).split():
                name, _, value = option.partition("=")
                options[name.lower()] = value
            rest = match.group(2).split()
        else:
            rest = line.split()[1:]
        if len(rest) >= 2:
            yield AptSource(rest[0], (rest[1],), tuple(rest[2:]), options.get("signed-by"))


def apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every enabled `deb` source in sources.list and sources.list.d (both formats)."""
    files = [etc_apt / "sources.list"]
    if (etc_apt / "sources.list.d").is_dir():
        files += sorted((etc_apt / "sources.list.d").iterdir())
    sources: list[AptSource] = []
    for path in files:
        if path.name.endswith(".list") and path.is_file():
            sources += _parse_one_line(path.read_text(errors="replace"))
        elif path.name.endswith(".sources") and path.is_file():
            for stanza in _parse_deb822(path.read_text(errors="replace")):
                if "deb" not in stanza.get("types", "").split():
                    continue
                if stanza.get("enabled", "yes").lower() in ("no", "false", "0"):
                    continue
                for uri in stanza.get("uris", "").split():
                    sources.append(
                        AptSource(
                            uri,
                            tuple(stanza.get("suites", "").split()),
                            tuple(stanza.get("components", "").split()),
                            stanza.get("signed-by"),
                        )
                    )
    return sources


def debian_sources(
    suite: str = SUITE, etc_apt: Path = Path("/etc/apt")
) -> tuple[AptSource, list[AptSource]]:
    """The configured mirror for `suite` and every source of that release (updates, security).

    `$HMACFS_DEBIAN_MIRROR` overrides the mirror. Raises HarnessError if none is configured.
    """
    family = [
        AptSource(s.uri, tuple(x for x in s.suites if _same_release(x, suite)), s.components,
                  s.signed_by)
        for s in apt_sources(etc_apt)
        if any(_same_release(x, suite) for x in s.suites)
    ]
    override = os.environ.get("HMACFS_DEBIAN_MIRROR")
    if override:
        main = AptSource(override, (suite,), ("main",))
        others = [
            AptSource(s.uri, rest, s.components, s.signed_by)
            for s in family
            if (rest := tuple(x for x in s.suites if x != suite))
        ]
        return main, [main, *others]
    for source in family:
        if suite in source.suites:
            return source, family
    raise HarnessError(
        f"no APT source for Debian {suite!r} in {etc_apt}/sources.list or "
        f"{etc_apt}/sources.list.d/; configure one or set HMACFS_DEBIAN_MIRROR"
    )


def _same_release(name: str, suite: str) -> bool:
    return name == suite or name.startswith((f"{suite}-", f"{suite}/"))


# --------------------------------------------------------------------------- the root


def read_packages(path: Path = PACKAGES_FILE) -> list[str]:
    """The package names in `path`: one a line, `#` starts a comment."""
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [name for name in names if name]


def rootfs_key(packages: Sequence[str]) -> str:
    """The cache key of a root holding `packages`: a hash of the whole package list."""
    recipe = {
        "suite": SUITE,
        "base": sorted(BASE_PACKAGES),
        "packages": sorted(set(packages)),
        "recipe": RECIPE_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where root tarballs are kept: `$HMACFS_CACHE`, default /var/cache/hmacfs-test."""
    return Path(os.environ.get("HMACFS_CACHE") or DEFAULT_CACHE)


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    # flock() locks belong to the open file description, so this excludes other threads of
    # this process as well as other processes (pytest-xdist workers, parallel runs).
    with path.open("a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ContainerTimeout(
                        f"waited {timeout:.0f} s for the lock {path} (another build running?)"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_rootfs(
    packages: Sequence[str] | None = None,
    *,
    workdir: Path | None = None,
    cache: Path | None = None,
    tmpfs: bool = False,
    timeout: float = 1800.0,
) -> Path:
    """A bookworm root with systemd and `packages`, restored into `workdir`; returns it.

    `packages` defaults to rootfs-packages.txt. The root is built once (debootstrap, then
    apt-get in a chroot) and cached as a tarball under `cache` (default `cache_dir()`);
    later calls only unpack it. `workdir` must be empty or absent; by default a new
    directory under the cache. With `tmpfs` a tmpfs is mounted there first (unpacking
    ~12,000 files into memory takes about a second, onto disk 5-20 s here). Remove the
    root with `remove_rootfs()`. Raises MissingHostTools, CommandFailed (with the build's
    output) or ContainerTimeout.
    """
    require_root()
    require_host_tools(("tar", "zstd"))
    packages = read_packages() if packages is None else list(packages)
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = rootfs_key(packages)
    stem = f"rootfs-{SUITE}-{key}"
    tarball = cache / f"{stem}.tar.zst"
    if workdir is None:
        (cache / "work").mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=cache / "work"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        raise HarnessError(f"{workdir} is not empty")
    with _file_lock(cache / f"{stem}.lock", timeout):
        if not tarball.exists():
            _build_tarball(packages, tarball, timeout=timeout)
    started = time.monotonic()
    if tmpfs:
        _unmount_stale_tmpfs()
        _run_host(
            ["mount", "-t", "tmpfs", "-o", "mode=0755", f"{_TMPFS_SOURCE}{os.getpid()}",
             workdir],
            timeout=60,
        )
    try:
        _run_host(
            ["tar", *_TAR_FLAGS, "-I", "zstd", "-xpf", tarball, "-C", workdir],
            timeout=timeout,
        )
    except BaseException:
        remove_rootfs(workdir)
        raise
    _log.info("restored %s in %.1f s", tarball.name, time.monotonic() - started)
    return workdir


def remove_rootfs(workdir: Path) -> None:
    """Remove a root made by ensure_rootfs (unmounting its tmpfs, if it has one)."""
    if os.path.ismount(workdir):
        _run_host(["umount", workdir], timeout=60)
    shutil.rmtree(workdir, ignore_errors=True)


def _unmount_stale_tmpfs() -> None:
    # A run that was killed leaves its tmpfs mounted (and its memory used): the mount's
    # name carries the owning process's PID.
    for target, source in _mounts():
        match = re.fullmatch(re.escape(_TMPFS_SOURCE) + r"(\d+)", source)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _log.info("unmounting the stale root %s", target)
            subprocess.run(["umount", "-l", target], env=_host_env(), check=False)


def _build_tarball(packages: Sequence[str], tarball: Path, *, timeout: float) -> None:
    require_host_tools(("debootstrap", "chroot", "tar", "zstd"))
    started = time.monotonic()
    build = Path(tempfile.mkdtemp(prefix="build-", dir=tarball.parent))
    partial = tarball.with_name(f"{tarball.name}.{os.getpid()}.partial")
    log = tarball.with_name(tarball.name.removesuffix(".tar.zst") + ".build.log")
    log.write_text("")
    root = build / "root"
    try:
        mirror, release = debian_sources()
        keyring = [f"--keyring={k}" for k in _keyring_files(mirror, Path("/"))[:1]]
        _log.info("debootstrap %s from %s into %s", SUITE, mirror.uri, root)
        _run_host(
            [
                "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                "--components=main", *keyring, SUITE, root, mirror.uri,
            ],
            timeout=timeout,
            log=log,
        )
        # The root's APT sees the same release as the host (point releases and security).
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        (root / "etc/apt/sources.list.d/debian.sources").write_text(
            "\n".join(
                AptSource(
                    s.uri, s.suites, s.components or ("main",),
                    next(iter(_keyring_files(s, root)), None),
                ).deb822()
                for s in release
            )
        )
        # Nothing may start a daemon in the chroot, on the host's process tree.
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        chroot: list[str | Path] = [
            "chroot", root, "env", "-i", f"PATH={SYSTEM_PATH}", "LANG=C.UTF-8",
            "DEBIAN_FRONTEND=noninteractive",
        ]
        _run_host([*chroot, "apt-get", "-q", "update"], timeout=timeout, log=log)
        if packages:
            _run_host(
                [*chroot, "apt-get", "-q", "-y", "--no-install-recommends", "install",
                 *packages],
                timeout=timeout,
                log=log,
            )
        _run_host([*chroot, "apt-get", "clean"], timeout=timeout, log=log)
        policy.unlink()
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        # An empty machine-id: each container then takes the random UUID nspawn gives it.
        (root / "etc/machine-id").write_text("")
        (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
        # debootstrap copies the host's name; without it the container keeps its machine name.
        (root / "etc/hostname").unlink(missing_ok=True)
        _run_host(
            ["tar", *_TAR_FLAGS, "-I", "zstd -T0", "-C", root, "-cf", partial, "."],
            timeout=timeout,
        )
        os.replace(partial, tarball)
        _log.info("built %s in %.1f s", tarball.name, time.monotonic() - started)
    finally:
        _unmount_under(build)
        shutil.rmtree(build, ignore_errors=True)
        partial.unlink(missing_ok=True)


def _keyring_files(source: AptSource, root: Path) -> list[str]:
    """The source's Signed-By keyring if it is a file that exists under `root`."""
    key = source.signed_by
    if key and key.startswith("/") and (root / key.lstrip("/")).is_file():
        return [key]
    return []


def _mounts() -> list[tuple[str, str]]:
    """(mount point, source) of every mount in this mount namespace."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            source = fields[fields.index("-") + 2]
            found.append((_unescape(fields[4]), _unescape(source)))
    return found


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _unmount_under(path: Path) -> None:
    # debootstrap mounts /proc and /sys in the target; a failed run may leave them there,
    # and rmtree must never walk into them.
    prefix = str(path.resolve()) + "/"
    inside = [target for target, _ in _mounts() if target.startswith(prefix)]
    for target in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], env=_host_env(), check=False)


# --------------------------------------------------------------------------- containers


def _cgroup_roots() -> list[Path]:
    if (_CGROUP_BASE / "cgroup.controllers").exists():  # the unified hierarchy only
        return [_CGROUP_BASE]
    roots = [p for p in (_CGROUP_BASE / "unified", _CGROUP_BASE / "systemd")
             if (p / "cgroup.procs").exists()]
    if not roots:
        raise HarnessError(f"no cgroup2 or name=systemd hierarchy under {_CGROUP_BASE}")
    return roots


def _processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process on the host."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        yield int(entry.name), int(fields[1]), int(fields[2])


def _children(parent: int) -> Iterator[int]:
    return (pid for pid, ppid, _ in _processes() if ppid == parent)


def _process_group(pgid: int) -> list[int]:
    return [pid for pid, _, group in _processes() if group == pgid]


def _is_namespace_init(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == "1"
    except OSError:
        pass
    return False


class Container:
    """A booted Debian root under systemd-nspawn: start(), run(...), stop(), or `with`.

    `bind` and `bind_ro` map host paths to paths in the container (read-write and
    read-only). Each container has a unique machine name, its own cgroup, an overlay over
    the (unchanged) root and a private loopback-only network.
    """

    def __init__(
        self,
        root: Path,
        *,
        bind: Mapping[Path | str, str] | None = None,
        bind_ro: Mapping[Path | str, str] | None = None,
        name: str | None = None,
        boot_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
        init_args: Sequence[str] = (),
        console_lines: int = 400,
    ) -> None:
        self.root = Path(root)
        self.name = name or f"hmacfs-{os.getpid()}-{secrets.token_hex(4)}"
        self.bind = dict(bind or {})
        self.bind_ro = dict(bind_ro or {})
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self.init_args = tuple(init_args)
        self.cgroups: list[Path] = []
        self.pid1: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._console: collections.deque[str] = collections.deque(maxlen=console_lines)
        self._console_lock = threading.Lock()

    # -- lifecycle

    @property
    def nspawn_pid(self) -> int | None:
        """The systemd-nspawn process's PID (on the host), once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether systemd-nspawn (and so the container) is still running."""
        return self._proc is not None and self._proc.poll() is None

    def nspawn_argv(self) -> list[str]:
        """The systemd-nspawn command line this container boots with."""
        argv = [
            "systemd-nspawn", "--directory", str(self.root), "--machine", self.name,
            "--boot", "--console=pipe", "--link-journal=no", "--register=no",
            "--keep-unit", "--volatile=overlay", "--private-network",
        ]
        argv += [f"--bind-ro={_bind_spec(src, dst)}" for src, dst in self.bind_ro.items()]
        argv += [f"--bind={_bind_spec(src, dst)}" for src, dst in self.bind.items()]
        # Everything after the options is systemd's command line.
        return [*argv, *self.extra_args, *self.init_args]

    def start(self) -> Self:
        """Boot the container and wait until systemd reports running (or degraded).

        Raises ContainerTimeout if it does not within `boot_timeout` seconds, HarnessError
        if nspawn exits or systemd reports another state; the container is cleaned up then.
        """
        require_root()
        require_host_tools(("systemd-nspawn", "nsenter"))
        if self._proc is not None:
            raise HarnessError(f"container {self.name} was already started")
        if not (self.root / "usr/lib/systemd/systemd").exists():
            raise HarnessError(f"{self.root} holds no systemd root (see ensure_rootfs)")
        try:
            # nspawn puts the container in a `payload` cgroup below its own: a cgroup per
            # container keeps parallel containers apart. The shell enters it, then execs.
            for base in _cgroup_roots():
                cgroup = base / self.name
                cgroup.mkdir()
                self.cgroups.append(cgroup)
            enter = "".join(
                f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))}\n" for c in self.cgroups
            )
            self._proc = subprocess.Popen(
                ["sh", "-ec", enter + 'exec "$@"', "sh", *self.nspawn_argv()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_host_env(),
                start_new_session=True,  # no terminal signals (Ctrl-C) straight to nspawn
            )
            self._reader = threading.Thread(
                target=self._read_console, name=f"console-{self.name}", daemon=True
            )
            self._reader.start()
            self._wait_booted(time.monotonic() + self.boot_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise
        return self

    def _read_console(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip("\r\n")
            with self._console_lock:
                self._console.append(line)
            _log.debug("[%s] %s", self.name, line)

    def _remaining(self, deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.1)

    def _wait_booted(self, deadline: float) -> None:
        assert self._proc is not None
        nspawn = self._proc.pid

        def pid1() -> int | None:
            return next((p for p in _children(nspawn) if _is_namespace_init(p)), None)

        self.pid1 = self.wait_until(
            pid1, timeout=self._remaining(deadline), what="the container's PID 1"
        )
        private = Path(f"/proc/{self.pid1}/root/run/systemd/private")
        self.wait_until(
            private.exists, timeout=self._remaining(deadline), what="/run/systemd/private"
        )
        result = self.run(
            "systemctl", "is-system-running", "--wait",
            check=False, timeout=self._remaining(deadline),
        )
        state = result.stdout.strip()
        if state == "degraded":
            failed = self.systemctl(
                "list-units", "--failed", "--no-legend", "--plain", check=False
            ).stdout
            _log.warning("container %s booted degraded; failed units:\n%s", self.name, failed)
        elif state != "running":
            raise HarnessError(
                f"container {self.name}: systemd is {state!r}, not running"
                f"{_section('stderr', result.stderr)}{self.diagnostics()}"
            )

    def stop(self) -> None:
        """Power off (SIGTERM to nspawn), wait, and remove the cgroups and nspawn's state.

        Idempotent. If the container does not stop within `stop_timeout` seconds it is
        killed, cleaned up all the same, and ContainerTimeout is raised.
        """
        error: ContainerTimeout | None = None
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                error = ContainerTimeout(
                    f"container {self.name} did not power off within {self.stop_timeout:.0f} s;"
                    f" killed{self.diagnostics()}"
                )
                self._kill_cgroups()
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        self.pid1 = None
        self._remove_cgroups(time.monotonic() + 10)
        shutil.rmtree(_PROPAGATE_DIR / self.name, ignore_errors=True)
        if error is not None:
            raise error

    def _kill_cgroups(self) -> None:
        for cgroup in self.cgroups:
            for procs in cgroup.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)

    def _remove_cgroups(self, deadline: float) -> None:
        for cgroup in list(self.cgroups):
            while cgroup.exists():
                try:
                    for dirpath, _, _ in os.walk(cgroup, topdown=False):
                        os.rmdir(dirpath)
                except FileNotFoundError:
                    continue
                except OSError as exc:  # EBUSY: processes still leaving
                    if time.monotonic() > deadline:
                        raise HarnessError(f"cannot remove cgroup {cgroup}: {exc}") from exc
                    self._kill_cgroups()
                    time.sleep(0.1)
            self.cgroups.remove(cgroup)

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- waiting and output

    def console_tail(self, lines: int = 60) -> str:
        """The last `lines` lines nspawn and the container's console printed."""
        with self._console_lock:
            return "\n".join(list(self._console)[-lines:])

    def wait_until(
        self,
        condition: Callable[[], _T],
        *,
        timeout: float,
        what: str,
        interval: float = 0.1,
    ) -> _T:
        """Poll `condition` until it returns something truthy, and return that.

        Raises ContainerTimeout (naming `what`, with the console and journal tails) after
        `timeout` seconds, HarnessError at once if the container has stopped.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self._proc is not None and self._proc.poll() is not None:
                raise HarnessError(
                    f"container {self.name}: systemd-nspawn exited with status "
                    f"{self._proc.returncode} while waiting for {what}"
                    f"{self.diagnostics()}"
                )
            if time.monotonic() > deadline:
                raise ContainerTimeout(
                    f"container {self.name}: timed out after {timeout:.1f} s waiting for {what}"
                    f"{self.diagnostics()}"
                )
            time.sleep(interval)

    # -- inside the container

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container (all its namespaces, root, `/`, a clean env).

        Raises CommandFailed on a non-zero exit when `check`, ContainerTimeout (with the
        console and journal tails) when it runs longer than `timeout` seconds; it is killed
        then.
        """
        try:
            returncode, stdout, stderr = self._exec(argv, timeout=timeout, input=input, env=env)
        except subprocess.TimeoutExpired as exc:
            raise ContainerTimeout(
                f"container {self.name}: {shlex.join(argv)} did not finish within "
                f"{timeout:.1f} s{_section('stdout', _text(exc.stdout))}"
                f"{_section('stderr', _text(exc.stderr))}{self.diagnostics()}"
            ) from None
        if check and returncode != 0:
            raise CommandFailed(argv, returncode, stdout, stderr)
        return subprocess.CompletedProcess(list(argv), returncode, stdout, stderr)

    def _exec(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[int, str, str]:
        if self.pid1 is None:
            raise HarnessError(f"container {self.name} is not running")
        variables = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", **(env or {})}
        cmd = [
            "nsenter", "-t", str(self.pid1), "-a", "--wdns=/",
            "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv,
        ]
        # A session of its own: on a timeout the whole group (nsenter and the process it
        # forked inside the container) is killed.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_host_env(),
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            # The command first, so that nsenter reaps it: killed together, the command
            # would be left a zombie whose parent is outside the container.
            for pid in _process_group(proc.pid):
                if pid != proc.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr) from None
        return proc.returncode, stdout, stderr

    def diagnostics(self, lines: int = 40) -> str:
        """The last lines of nspawn's output and of the container's journal, for errors.

        (With --console=pipe the container has no /dev/console: systemd's own messages go to
        the journal, so the console only carries nspawn's.)
        """
        text = _section("console", self.console_tail(lines), lines)
        if self.running and self.pid1 is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError, HarnessError):
                _, journal, _ = self._exec(
                    ["journalctl", "--no-pager", "-b", "-n", str(lines), "-o", "short-monotonic"],
                    timeout=10,
                )
                text += _section("journal", journal, lines)
        return text

    def systemctl(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS` inside the container."""
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show` of `properties` of `unit`, as a dict."""
        args = [f"--property={p}" for p in properties]
        out = self.systemctl("show", *args, unit).stdout
        return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)

    def status_text(self, unit: str) -> str:
        """The unit's StatusText (what the service last sent as STATUS=)."""
        out = self.systemctl("show", "--property=StatusText", "--value", unit).stdout
        return out.rstrip("\n")

    def journal(self, unit: str, *args: str) -> list[dict[str, Any]]:
        """The unit's journal entries (`journalctl -u UNIT -o json ARGS`), parsed."""
        out = self.run("journalctl", "--no-pager", "-o", "json", "-u", unit, *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write `text` to `path` inside the container (parent directories created)."""
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" -- "$1"'
        self.run("sh", "-c", script, "sh", path, format(mode, "o"), input=text)

    def read_file(self, path: str) -> str:
        """The text of `path` inside the container."""
        return self.run("cat", "--", path).stdout


def _bind_spec(source: Path | str, target: str) -> str:
    source = str(Path(source).resolve())
    if ":" in source or ":" in target:
        raise HarnessError(f"bind mount paths may not contain ':': {source} -> {target}")
    return f"{source}:{target}"
