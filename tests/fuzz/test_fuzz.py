"""Coverage-guided fuzzing of the parsers, bounded in time (tests/fuzz/README.md).

Each target in tests/fuzz/targets runs as its own process under libFuzzer (atheris) for a
few seconds with a fixed seed; a crash, a broken contract, a slow input or too much memory
makes it exit non-zero, and the test shows the input that did it. The committed corpus (and
every crash input found so far) also replays in-process, quickly, without the slow mark.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import atheris  # noqa: F401 (without atheris these tests fail rather than skip)
import pytest

HERE = Path(__file__).parent
TARGETS_DIR = HERE / "targets"
CORPUS_DIR = HERE / "corpus"
TARGETS = sorted(path.stem for path in TARGETS_DIR.glob("fuzz_*.py"))

#: Seconds of fuzzing per target; HMACFS_FUZZ_SECONDS=600 for a longer run.
SECONDS = int(os.environ.get("HMACFS_FUZZ_SECONDS", "9"))
SEED = 363
#: The longest a single input may take (catches a parser gone quadratic).
INPUT_TIMEOUT = 1
RSS_LIMIT_MB = 1536
#: Long enough for the inputs that used to be slow (an 8 KB If-Match of spaces took 2 s).
MAX_LEN = 8192
#: The committed corpus stays small and readable.
MAX_CORPUS_FILES = 50
MAX_CORPUS_BYTES = 16 * 1024

pytestmark = pytest.mark.fuzz


@dataclass(frozen=True)
class Run:
    """One libFuzzer run of a target: its exit status, output and the inputs it failed on."""

    returncode: int
    output: str
    artifacts: tuple[Path, ...]

    def report(self, lines: int = 60) -> str:
        """What a failure message shows: each failing input and the end of the output."""
        parts = [f"exit status {self.returncode}"]
        for artifact in self.artifacts:
            data = artifact.read_bytes()
            parts.append(
                f"input {artifact.name} ({len(data)} bytes): {data[:2000]!r}\n"
                f"  base64: {base64.b64encode(data[:2000]).decode()}\n"
                f"  reproduce: python {TARGETS_DIR.relative_to(HERE.parents[1])}/<target>.py "
                f"{artifact}"
            )
        tail = "\n".join(self.output.splitlines()[-lines:])
        parts.append(f"last {lines} lines of output:\n{tail}")
        return "\n".join(parts)


def run_target(
    script: Path,
    corpora: list[Path],
    work: Path,
    *,
    seconds: int = SECONDS,
    input_timeout: int = INPUT_TIMEOUT,
) -> Run:
    """Fuzz `script` for `seconds`, starting from `corpora`, which it never writes to: new
    inputs go to a fresh directory under `work`, listed first as libFuzzer expects."""
    found = work / "corpus"
    artifacts = work / "artifacts"
    found.mkdir()
    artifacts.mkdir()
    command = [
        sys.executable,
        str(script),
        f"-seed={SEED}",
        f"-max_total_time={seconds}",
        f"-timeout={input_timeout}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={artifacts}/",
        str(found),
        *map(str, corpora),
    ]
    result = subprocess.run(
        command,
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=seconds + 120,
        check=False,
    )
    output = result.stdout.decode("utf-8", "replace")
    return Run(result.returncode, output, tuple(sorted(artifacts.iterdir())))


def _fingerprint(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_every_target_has_a_small_corpus() -> None:
    assert TARGETS
    assert sorted(p.name for p in CORPUS_DIR.iterdir()) == TARGETS
    for name in TARGETS:
        files = list((CORPUS_DIR / name).iterdir())
        assert 0 < len(files) <= MAX_CORPUS_FILES, name
        assert all(f.stat().st_size <= MAX_CORPUS_BYTES for f in files), name


@pytest.mark.parametrize("name", TARGETS)
def test_corpus_replays(name: str) -> None:
    """Every committed input (crash inputs found earlier included) keeps its contract."""
    target = importlib.import_module(f"tests.fuzz.targets.{name}")
    for path in sorted((CORPUS_DIR / name).iterdir()):
        target.TestOneInput(path.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGETS)
def test_fuzz(name: str, tmp_path: Path) -> None:
    corpus = CORPUS_DIR / name
    before = _fingerprint(corpus)
    run = run_target(TARGETS_DIR / f"{name}.py", [corpus], tmp_path)
    assert run.returncode == 0 and not run.artifacts, run.report()
    assert _fingerprint(corpus) == before, "the committed corpus was modified"
    assert "DONE" in run.output, run.report()


# The harness itself: a broken contract and a slow input must fail a run, showing the input.

_BROKEN = """
    import sys
    import time

    import atheris

    from hmacfs.core.download import parse_ranges


    def TestOneInput(data: bytes) -> None:
        text = data.decode("latin-1")
        if text == "slow":
            time.sleep(3)
        ranges = parse_ranges(text, 1000) or []
        # Deliberately wrong: disjoint ranges come back in the order asked, not sorted.
        assert ranges == sorted(ranges), ranges


    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
"""


@pytest.mark.parametrize(
    ("seed", "failure"), [(b"bytes=500-599,0-99", "AssertionError"), (b"slow", "timeout")]
)
def test_a_failing_run_shows_its_input(tmp_path: Path, seed: bytes, failure: str) -> None:
    script = tmp_path / "fuzz_broken.py"
    script.write_text(textwrap.dedent(_BROKEN))
    corpus = tmp_path / "seeds"
    corpus.mkdir()
    (corpus / "seed").write_bytes(seed)
    work = tmp_path / "work"
    work.mkdir()
    run = run_target(script, [corpus], work, seconds=30)
    assert run.returncode != 0, run.report()
    assert [a.read_bytes() for a in run.artifacts] == [seed], run.report()
    assert failure in run.output and repr(seed) in run.report(), run.report()
