"""A throwaway one-node Ceph cluster with an S3 gateway (radosgw), for the object store tests.

`CephCluster(directory).start()` runs one monitor, one BlueStore OSD on a sparse file and one
radosgw (beast frontend), all as foreground children of this process bound to 127.0.0.1, and
returns a `CephGateway` (endpoint, keys, region) once a bucket can be created and an object
written through it. `stop()` stops the gateway, then the OSD, then the monitor (in another
order the gateway hangs on SIGTERM).

Everything the cluster has lives in `directory`: the configuration (passed with `-c` to every
program), the monitor's and the OSD's data, the run directory with the admin sockets and pid
files, the logs, the crash directory. Nothing reads /etc/ceph or writes /var/lib/ceph or
/var/log/ceph, and two clusters in two directories can run at once. There is no cephx (`auth
... = none`), hence no keyrings, and no manager: the tests need none of what it adds.

Nothing here imports pytest; boto3 is imported when a client is made.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MON_ID = "a"
OSD_ID = 0
RGW_NAME = "client.rgw.gw"
#: The region clients sign for. radosgw 16 checks neither the region of a SigV4 credential
#: scope nor (with the zonegroup it makes on first start, "default") a CreateBucket's
#: LocationConstraint: any region works. us-east-1 is the one for which boto3 sends no
#: LocationConstraint at all, as with AWS.
REGION = "us-east-1"
#: The programs `start` runs, and the Debian packages they come with.
PROGRAMS = {
    "monmaptool": "ceph-base",
    "ceph-mon": "ceph-mon",
    "ceph-osd": "ceph-osd",
    "ceph": "ceph-common",
    "radosgw": "radosgw",
    "radosgw-admin": "ceph-common",
}
#: How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 15.0
#: A command of the start sequence (mkfs, `ceph osd new`, `radosgw-admin user create`).
COMMAND_TIMEOUT = 60.0
LOG_LINES = 40
#: How often radosgw is started on a new port when the one picked for it has been taken.
PORT_ATTEMPTS = 3
#: How much of a successful command's output commands.log keeps (all of a failed one's).
NOTE_LIMIT = 200
OSD_SIZE = 4 << 30


class _StartFailed(Exception):
    """A step of `start` failed (turned into RuntimeError with the logs)."""


@dataclass
class CephGateway:
    """A radosgw of a `CephCluster`, and the user the tests act as."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this gateway: path-style addressing, SigV4.

        botocore 1.36 and later add a CRC32 checksum to every upload by default. Over plain
        HTTP it goes in an x-amz-checksum-crc32 header, which radosgw 16 ignores; over HTTPS
        botocore sends unsigned aws-chunked bodies with the checksum as a trailer, which
        radosgw only learned in Ceph 18. `when_required` keeps checksums to the operations
        that demand one, whatever the scheme. `config` overrides or adds botocore Config
        options (`retries`, `read_timeout`, ...).
        """
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "region_name": self.region,
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 60,
            "proxies": {},  # never those of the environment (http_proxy, ...)
        }
        import botocore  # type: ignore[import-untyped]

        if tuple(int(n) for n in botocore.__version__.split(".")[:2]) >= (1, 36):
            # (Debian's botocore 1.29 neither adds checksums nor knows these options)
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        options.update(config)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = LOG_LINES) -> str:
    """The end of a log file, for failure messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * lines))
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:])


class CephCluster:
    """One monitor, one OSD and one radosgw, with all their state in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.conf = self.directory / "ceph.conf"
        self.run_dir = self.directory / "run"
        self.log_dir = self.directory / "log"
        self.mon_data = self.directory / "mon" / f"ceph-{MON_ID}"
        self.osd_data = self.directory / "osd" / f"ceph-{OSD_ID}"
        self.rgw_data = self.directory / "rgw" / "ceph-gw"
        self.crash_dir = self.directory / "crash"
        self.commands_log = self.log_dir / "commands.log"
        self.mon_port = 0
        self.rgw_port = 0
        self.gateway: CephGateway | None = None
        #: The running daemons by name ("mon", "osd", "rgw").
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}
        #: Commands that run while the start goes on (the OSD's mkfs), by name.
        self._jobs: dict[str, subprocess.Popen[bytes]] = {}
        self._fsid = ""
        self._outputs: list[IO[bytes]] = []
        self._started_at = time.monotonic()

    # -- configuration --------------------------------------------------------------------

    def _config_text(self) -> str:
        d = self.directory
        return f"""\
[global]
fsid = {self._fsid}
mon host = [v2:127.0.0.1:{self.mon_port}]
mon initial members = {MON_ID}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.1/32
ms bind msgr1 = false
ms bind msgr2 = true
# Without cephx the default (secure-preferring) modes leave radosgw unable to connect.
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
# (cephx's global_id reclaim is moot without cephx: no health warning about it)
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
# No keyring is made (nothing reads one without cephx); the path keeps clients out of /etc/ceph.
keyring = {d}/keyring

run dir = {self.run_dir}
pid file = {self.run_dir}/$name.pid
log file = {self.log_dir}/$cluster-$name.log
mon cluster log file = {self.log_dir}/$cluster.$channel.log
crash dir = {self.crash_dir}
log to stderr = false
err to stderr = false
# The entries a daemon keeps in memory to dump when it crashes (10000 by default).
log max recent = 500
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
rgw data = {d}/rgw/$cluster-gw

# One OSD: pools of one replica, small PG counts, no autoscaler (there is no manager).
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0

[mon]
admin socket = {self.run_dir}/$cluster-$name.asok
# Every change of a map (a pool, the OSD's boot) waits for the next proposal: 1 s by default.
paxos propose interval = 0.05
# A test machine's disk may be fuller than a cluster's should be: never a reason to stop.
mon data avail warn = 1
mon data avail crit = 0

[osd]
admin socket = {self.run_dir}/$cluster-$name.asok
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {OSD_SIZE}
# Memory: a fixed small cache instead of one sized to the memory target, and the smallest
# target the OSD accepts (896 MiB: a smaller value is ignored, leaving the default of 4 GiB).
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 67108864
osd op num shards = 2
osd op num threads per shard = 1
osd max pg log entries = 500
osd min pg log entries = 100

[{RGW_NAME}]
admin socket = {self.run_dir}/$cluster-$name.asok
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port} tcp_nodelay=1
# Fewer request threads than the 512 of the default (each has its stack and buffers).
rgw thread pool size = 32
# No bucket index resharding behind a test's back (it blocks writes while it runs).
rgw dynamic resharding = false
"""

    # -- start ----------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> CephGateway:
        """Make and start the cluster; wait until the gateway stores objects."""
        if self._daemons or self._jobs:
            raise RuntimeError("the cluster is running already")
        self._started_at = time.monotonic()
        deadline = self._started_at + timeout
        try:
            gateway = self._start(deadline)
        except Exception as e:
            self.stop()
            raise RuntimeError(
                f"the Ceph cluster in {self.directory} did not start: {e}\n{self.logs()}"
            ) from e
        except BaseException:
            self.stop()
            raise
        self.gateway = gateway
        return gateway

    def _start(self, deadline: float) -> CephGateway:
        for path in (
            self.run_dir,
            self.log_dir,
            self.mon_data,
            self.osd_data,
            self.rgw_data,
            self.crash_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
        if any(self.mon_data.iterdir()):
            raise _StartFailed(f"{self.mon_data} is not empty (a cluster was made here before)")
        missing = {p: package for p, package in PROGRAMS.items() if shutil.which(p) is None}
        if missing:
            raise _StartFailed(
                f"programs not found: {' '.join(missing)}; install them as root: "
                f"apt-get install --no-install-recommends {' '.join(sorted(set(missing.values())))}"
            )
        atexit.register(self.stop)
        self._fsid = fsid = str(uuid.uuid4())
        osd_uuid = str(uuid.uuid4())
        self.mon_port = free_port()
        self.rgw_port = free_port()
        self.conf.write_text(self._config_text())

        # The monitor.
        monmap = self.directory / "monmap"
        self._run(
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                fsid,
                "--addv",
                MON_ID,
                f"[v2:127.0.0.1:{self.mon_port}]",
                str(monmap),
            ],
            deadline,
        )
        self._run(
            ["ceph-mon", "-c", str(self.conf), "--mkfs", "-i", MON_ID, "--monmap", str(monmap)],
            deadline,
        )
        self._spawn("mon", ["ceph-mon", "-c", str(self.conf), "-f", "-i", MON_ID])
        # The OSD's store is made while the monitor starts (it needs no monitor).
        self._background(
            [
                "ceph-osd",
                "-c",
                str(self.conf),
                "--no-mon-config",
                "--mkfs",
                "-i",
                str(OSD_ID),
                "--osd-uuid",
                osd_uuid,
            ],
            "osd-mkfs",
        )
        self._wait_port(self.mon_port, "mon", deadline)
        created = self._ceph(["osd", "new", osd_uuid, str(OSD_ID)], deadline).strip()
        if created != str(OSD_ID):
            raise _StartFailed(f"`ceph osd new` made osd.{created}, not osd.{OSD_ID}")
        self._finish("osd-mkfs", deadline)

        # The OSD.
        self._spawn("osd", ["ceph-osd", "-c", str(self.conf), "-f", "-i", str(OSD_ID)])
        self._poll(lambda: self._osd_up(deadline), "osd.0 to be up and in", deadline)

        # The gateway, then the user (after the gateway made its zone, so that the two never
        # race to make it).
        endpoint = self._start_gateway(deadline)
        access_key = "CEPH" + secrets.token_hex(8).upper()
        secret_key = secrets.token_urlsafe(30)
        self._run(
            [
                "radosgw-admin",
                "-c",
                str(self.conf),
                "user",
                "create",
                "--uid",
                "tests",
                "--display-name",
                "object store tests",
                "--access-key",
                access_key,
                "--secret",
                secret_key,
            ],
            deadline,
        )
        gateway = CephGateway(endpoint, access_key, secret_key, REGION)
        self._poll(lambda: self._stores(gateway), "a bucket and an object on radosgw", deadline)
        return gateway

    def _start_gateway(self, deadline: float) -> str:
        """Start radosgw; its endpoint once it answers HTTP. Its port was free when it was
        picked, seconds ago: if it has been taken since, radosgw exits with EADDRINUSE and
        is started again on another port."""
        for _ in range(PORT_ATTEMPTS):
            self._spawn("rgw", ["radosgw", "-c", str(self.conf), "-f", "-n", RGW_NAME])
            endpoint = f"http://127.0.0.1:{self.rgw_port}"
            try:
                answers = functools.partial(self._answers, endpoint)
                self._poll(answers, "radosgw to answer HTTP", deadline)
            except _StartFailed:
                rgw = self._daemons["rgw"]
                if rgw.poll() != errno.EADDRINUSE:
                    raise
                del self._daemons["rgw"]
                self._note(f"port {self.rgw_port} of radosgw was taken; trying another")
                self.rgw_port = free_port()
                self.conf.write_text(self._config_text())
                continue
            return endpoint
        raise _StartFailed(f"radosgw found its port taken {PORT_ATTEMPTS} times")

    def _stores(self, gateway: CephGateway) -> bool:
        """Whether a bucket can be made and an object written (both removed again)."""
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        client = gateway.client(retries={"max_attempts": 1}, read_timeout=20)
        bucket = f"ceph-probe-{secrets.token_hex(4)}"
        try:
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"probe")
            body = client.get_object(Bucket=bucket, Key="probe")["Body"].read()
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError) as e:
            self._note(f"probe of the gateway: {e}")
            return False
        if body != b"probe":
            raise _StartFailed(f"radosgw returned {body!r} for the probe object")
        return True

    @staticmethod
    def _answers(endpoint: str) -> bool:
        """Whether radosgw answers an anonymous ListBuckets (an S3 error is an answer)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(endpoint + "/", timeout=5) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        except (OSError, ValueError):
            return False
        return b"ListAllMyBucketsResult" in body or b"<Error>" in body

    def _osd_up(self, deadline: float) -> bool:
        out = self._ceph(["osd", "dump", "--format", "json"], deadline)
        osds = json.loads(out).get("osds", [])
        return any(o.get("osd") == OSD_ID and o.get("up") and o.get("in") for o in osds)

    # -- processes ------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        args: Sequence[str],
        into: dict[str, subprocess.Popen[bytes]] | None = None,
    ) -> None:
        """Start a daemon in the foreground, in a session of its own (so that a signal to
        the test's terminal or process group does not reach it; `stop` ends it, in order)."""
        if into is None:
            self._note("$ " + " ".join(args))
        out = (self.log_dir / f"{name}.out").open("ab")
        self._outputs.append(out)
        (self._daemons if into is None else into)[name] = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,
        )

    def _background(self, args: Sequence[str], name: str) -> None:
        """Start a command that runs while the start goes on (its output in `name`.out);
        `_finish(name)` waits for it. `stop` ends it if it is still running then."""
        self._note("$ " + " ".join(args))
        self._spawn(name, args, into=self._jobs)

    def _finish(self, name: str, deadline: float) -> None:
        process = self._jobs[name]
        try:
            rc = process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise _StartFailed(f"{name} did not finish in time") from None
        del self._jobs[name]
        self._note(f"{name} exited with status {rc}")
        if rc != 0:
            raise _StartFailed(f"{name} exited with status {rc}")

    def _run(self, args: Sequence[str], deadline: float) -> str:
        """Run a command to its end; its output goes to commands.log (and into the error)."""
        self._note("$ " + " ".join(args))
        timeout = max(0.1, min(COMMAND_TIMEOUT, deadline - time.monotonic()))
        try:
            done = subprocess.run(
                list(args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                cwd=self.directory,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as e:
            raise _StartFailed(f"`{_brief(args)}` did not end within {timeout:.1f} s") from e
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode == 0 and len(output) > NOTE_LIMIT:
            output = output[:NOTE_LIMIT] + f" [... {len(output) - NOTE_LIMIT} more characters]"
        self._note(output)
        if done.returncode != 0:
            raise _StartFailed(f"`{_brief(args)}` exited with status {done.returncode}:\n{output}")
        return done.stdout.decode(errors="replace")

    def _ceph(self, args: Sequence[str], deadline: float) -> str:
        return self._run(["ceph", "-c", str(self.conf), "--connect-timeout", "20", *args], deadline)

    def _note(self, text: str) -> None:
        if text:
            with self.commands_log.open("a") as f:
                f.write(f"[{time.monotonic() - self._started_at:6.2f}] {text}\n")

    def _check_daemons(self) -> None:
        for name, process in self._daemons.items():
            rc = process.poll()
            if rc is not None:
                raise _StartFailed(f"{name} exited with status {rc}")

    def _poll(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        delay = 0.05
        while True:
            self._check_daemons()
            if ready():
                return
            if time.monotonic() >= deadline:
                raise _StartFailed(f"timed out waiting for {what}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _wait_port(self, port: int, name: str, deadline: float) -> None:
        def listening() -> bool:
            with socket.socket() as s:
                s.settimeout(1)
                return s.connect_ex(("127.0.0.1", port)) == 0

        self._poll(listening, f"{name} to listen on port {port}", deadline)

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the gateway, then the OSD, then the monitor (and any command still running):
        SIGTERM, then SIGKILL to its process group after `STOP_TIMEOUT`. Idempotent."""
        for name in list(self._jobs):
            _terminate(self._jobs.pop(name))
        for name in ("rgw", "osd", "mon"):
            if name in self._daemons:
                _terminate(self._daemons.pop(name))
        assert not self._daemons, self._daemons
        for out in self._outputs:
            out.close()
        self._outputs.clear()
        self.gateway = None
        atexit.unregister(self.stop)

    def leftovers(self) -> list[str]:
        """Every process whose command line names this cluster's directory (none once
        `stop` has returned), as "PID command line"."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone meanwhile
            line = b" ".join(words).decode(errors="replace").strip()
            if str(self.directory) in line:
                found.append(f"{entry.name} {line}")
        return found

    def pids(self) -> dict[str, int]:
        """The process ids of the running daemons (mon, osd, rgw)."""
        return {name: p.pid for name, p in self._daemons.items() if p.poll() is None}

    def logs(self) -> str:
        """The tail of every daemon's log and output, and of the commands' output."""
        parts = []
        files = [
            self.commands_log,
            self.log_dir / f"ceph-mon.{MON_ID}.log",
            self.log_dir / "mon.out",
            self.log_dir / "osd-mkfs.out",
            self.log_dir / f"ceph-osd.{OSD_ID}.log",
            self.log_dir / "osd.out",
            self.log_dir / f"ceph-{RGW_NAME}.log",
            self.log_dir / "rgw.out",
        ]
        for path in files:
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {path} (last {LOG_LINES} lines)\n{tail(path)}")
        return "\n".join(parts) or f"(nothing logged in {self.log_dir})"


def _brief(args: Sequence[str]) -> str:
    """A command line without its `-c FILE`, shortened, for messages."""
    words = list(args)
    if "-c" in words:
        at = words.index("-c")
        del words[at : at + 2]
    line = " ".join(words)
    return line if len(line) <= 80 else line[:77] + "..."


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # It leads its own session and process group (not reaped yet, so the group id is
            # still its own): the whole group goes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
    process.wait()
