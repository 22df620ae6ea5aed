"""The manual pages hmac-file-server(8) and hmac-file-server.toml(5) (man/).

They must render without a single groff or man warning, give lexgrog (and so lintian) a
proper whatis entry, use minus signs where a reader types a dash, and agree with the code:
every subcommand and option of `hmacfs.cli.build_parser()`, the exit statuses of
`hmacfs.cli`, every key declared in `hmacfs.core.settings` (`hmacfs.core.config.KEYS`) with its
type and default, in both the manual and etc/config.toml, and the error messages quoted.

Needs the Debian packages groff-base (groff) and man-db (man, lexgrog); the spelling test
uses lintian's word list when lintian is installed and is skipped otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from hmacfs import __version__, cli
from hmacfs.core import config as config_module
from hmacfs.core.config import KEYS, SCHEMA, ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMMAND_PAGE = ROOT / "man" / "hmac-file-server.8"
CONFIG_PAGE = ROOT / "man" / "hmac-file-server.toml.5"
PAGES = (COMMAND_PAGE, CONFIG_PAGE)
ETC_CONFIG = ROOT / "etc" / "config.toml"
SERVICE_UNIT = ROOT / "systemd" / "hmac-file-server.service"
SOCKET_UNIT = ROOT / "systemd" / "hmac-file-server.socket"
SPELLING = Path("/usr/share/lintian/data/spelling")

#: The sections each page must have, in this order.
REQUIRED_SECTIONS = {
    COMMAND_PAGE: [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "SIGNALS",
        "SYSTEMD",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
        "PACKAGE REMOVAL",
        "SEE ALSO",
    ],
    CONFIG_PAGE: [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "VALUE SYNTAX",
        "SECTIONS",
        "SIGNING SCHEMES",
        "DIAGNOSTICS",
        "EXAMPLES",
        "FILES",
        "SEE ALSO",
    ],
}
#: How `man` shows the NAME line of each page (what `lexgrog` and `whatis` report).
WHATIS = {
    COMMAND_PAGE: "hmac-file-server - XEP-0363 HTTP File Upload server for Prosody, "
    "ejabberd and Metronome",
    CONFIG_PAGE: "hmac-file-server.toml - configuration file of the hmac-file-server "
    "XEP-0363 upload server",
}
SEE_ALSO = {
    COMMAND_PAGE: ("hmac-file-server.toml(5)", "systemctl(1)", "journalctl(1)"),
    CONFIG_PAGE: ("hmac-file-server(8)",),
}
#: Line lengths the pages are rendered at without warnings: narrow, man's default, lintian's.
WIDTHS = ("65n", "78n", "120n")
#: Wide enough that no paragraph of interest wraps, for reading the rendered text.
WIDE = "400n"
HYPHEN = "\u2010"
SECRET = "0123456789abcdef0123456789abcdef"
INSTALLED_CONFIG = "/etc/hmac-file-server/config.toml"
PAGE_IDS = {COMMAND_PAGE: "8", CONFIG_PAGE: "5"}


def page_id(page: Path) -> str:
    return page.name


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; apt-get install {package}")
    return path


def run(argv: list[str], stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", **env}
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=environment,
        timeout=60,
        check=False,
    )


def after_title(source: str, request: str) -> str:
    """`source` with a roff request inserted after the .TH line (the man macros reset some
    character definitions there)."""
    lines = source.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(".TH "))
    return "\n".join([*lines[: index + 1], request, *lines[index + 1 :]]) + "\n"


@cache
def rendered(page: Path, width: str = WIDE, request: str | None = None) -> tuple[str, ...]:
    """The page as plain text lines (no bold or underlining), `width` wide."""
    groff = tool("groff", "groff-base")
    source = page.read_text(encoding="utf-8")
    if request is not None:
        source = after_title(source, request)
    result = run([groff, "-man", "-Tutf8", f"-rLL={width}", "-P-cbu"], stdin=source)
    assert result.returncode == 0, result.stderr
    return tuple(line.rstrip() for line in result.stdout.splitlines())


def section(lines: tuple[str, ...] | list[str], name: str) -> list[str]:
    """The rendered lines of the section (.SH) `name`, without its heading."""
    start = lines.index(name) + 1
    end = next(
        (i for i in range(start, len(lines)) if lines[i] and not lines[i][0].isspace()),
        len(lines),
    )
    return list(lines[start:end])


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def subsection(lines: list[str], name: str) -> list[str]:
    """The rendered lines of the subsection (.SS) `name` of a section."""
    start = lines.index("   " + name) + 1
    end = next(
        (i for i in range(start, len(lines)) if lines[i].strip() and indent(lines[i]) <= 3),
        len(lines),
    )
    return lines[start:end]


def entry(lines: list[str], tag: str) -> list[str]:
    """The body lines of the list entry (.TP) whose tag line is `tag`."""
    for i, line in enumerate(lines):
        if line.strip() == tag:
            body = []
            for following in lines[i + 1 :]:
                if following.strip() and indent(following) <= indent(line):
                    break
                if following.strip():
                    body.append(following.strip())
            return body
    raise AssertionError(f"no entry {tag!r}")


def paragraph(lines: list[str], tag: str) -> str:
    """The body of the list entry whose tag line is `tag`, joined into one line."""
    return " ".join(entry(lines, tag))


def sources(page: Path) -> Iterator[tuple[int, str]]:
    """Numbered source lines, comments left out."""
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.startswith(('.\\"', "'\\\"")):
            yield number, line


def example_blocks(page: Path) -> list[list[str]]:
    """The source lines of every .EX/.EE block."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for _, line in sources(page):
        if line.startswith(".EX"):
            current = []
        elif line.startswith(".EE"):
            assert current is not None, f"{page.name}: .EE without .EX"
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{page.name}: .EX without .EE"
    return blocks


def unescape(line: str) -> str:
    """The text of a source line inside .EX, as a reader sees it."""
    for escape, text in (("\\-", "-"), ("\\(aq", "'"), ("\\(dq", '"'), ("\\e", "\\"), ("\\&", "")):
        line = line.replace(escape, text)
    return line


# -- rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_groff_renders_without_warnings(page: Path, width: str) -> None:
    groff = tool("groff", "groff-base")
    result = run([groff, "-man", "-Tutf8", "-ww", "-z", f"-rLL={width}", str(page)])
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.parametrize("manwidth", ["80", "120"])
@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_man_renders_without_warnings(page: Path, manwidth: str) -> None:
    """As lintian runs it (its groff-message check), at a terminal's width and at lintian's."""
    man = tool("man", "man-db")
    result = run(
        [man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
        MANWIDTH=manwidth,
        MANROFFSEQ="",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_whatis_entry(page: Path) -> None:
    """lexgrog parses the NAME section (lintian: bad-whatis-entry)."""
    lexgrog = tool("lexgrog", "man-db")
    result = run([lexgrog, str(page)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f'{page}: "{WHATIS[page]}"'


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_title_line(page: Path) -> None:
    line = next(text for _, text in sources(page) if text.startswith(".TH "))
    title, number, date, source, _manual = shlex.split(line.replace("\\(aq", "'"))[1:]
    name, _, suffix = page.name.rpartition(".")
    assert title == name.upper()
    assert number == suffix == PAGE_IDS[page]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
    assert source == f"hmac-file-server {__version__}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_sections(page: Path) -> None:
    headings = [line for line in rendered(page) if line and not line[0].isspace()][1:-1]
    present = [heading for heading in headings if heading in REQUIRED_SECTIONS[page]]
    assert present == REQUIRED_SECTIONS[page]
    see_also = " ".join(section(rendered(page), "SEE ALSO"))
    for reference in SEE_ALSO[page]:
        assert reference in see_also


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_lines_fit_a_terminal(page: Path) -> None:
    """Examples (no-fill text) do not run past man's default 78 columns."""
    for line in rendered(page, "78n"):
        assert len(line) <= 78, line


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_dashes_a_reader_types_are_minus_signs(page: Path) -> None:
    """Options and negative numbers are written \\- (lintian: hyphen-used-as-minus-sign):
    rendered with "-" as a typographic hyphen, no word starts with one."""
    for line in rendered(page, request=f".char - \\[u{ord(HYPHEN):04X}]"):
        assert not re.search(rf"(?<![\w{HYPHEN}]){HYPHEN}", line), line


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_examples_can_be_copied(page: Path) -> None:
    """Every dash in an example is \\- (an ASCII hyphen-minus whatever the output device),
    and every quote \\(aq or a plain double quote."""
    for block in example_blocks(page):
        for line in block:
            assert not re.search(r"(?<!\\)-", line), line
            assert not re.search(r"(?<!\\)[`']", line), line


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_lintian_source_checks(page: Path) -> None:
    """The source-level checks of lintian's documentation/manual: no acute accents written
    \\', no pre-FHS directories; and no text line that roff would take for a request."""
    for number, line in sources(page):
        assert "\\'" not in line, f"{page.name}:{number}: acute accent"
        fsstnd = r"/usr/(dict|doc|etc|info|man|adm|preserve)/|/var/(adm|catman|named|nis|preserve)/"
        assert not re.search(fsstnd, line), f"{page.name}:{number}: FSSTND directory"
        assert not line.startswith("'"), f"{page.name}:{number}: starts with '"
        if line.startswith("."):
            assert re.match(r"\.[A-Za-z]", line), f"{page.name}:{number}: not a request"


@cache
def lintian_corrections() -> tuple[dict[str, str], list[tuple[re.Pattern[str], str]]]:
    words: dict[str, str] = {}
    for line in (SPELLING / "corrections").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and "||" in line:
            wrong, right = line.split("||", 1)
            words[wrong] = right
    phrases = []
    for line in (SPELLING / "corrections-multiword").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and "||" in line:
            wrong, right = line.split("||", 1)
            pattern = wrong.removeprefix("(?i)")
            phrases.append((re.compile(rf"\b({pattern})\b", re.IGNORECASE), right))
    return words, phrases


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_spelling_as_lintian_checks_it(page: Path) -> None:
    """lintian's typo-in-manual-page, line by line over the source as lintian does."""
    # ./dev.sh test installs lintian; without its word list this check cannot run.
    assert (SPELLING / "corrections").exists(), "install lintian (apt-get install lintian)"
    words, phrases = lintian_corrections()
    typos = []
    for number, line in sources(page):
        text = line.replace("[", "").replace("]", "")
        text = re.sub(r"\((?!s\))|(?<!\(s)\)", "", text)
        for raw in text.split():
            word = re.sub(r"[.,;:?!]+$", "", raw)
            if re.fullmatch(r"[A-Z]{1,5}", word):
                continue
            if word.lower() in words:
                typos.append(f"{page.name}:{number}: {word} -> {words[word.lower()]}")
        for pattern, right in phrases:
            if match := pattern.search(text):
                typos.append(f"{page.name}:{number}: {match.group(1)} -> {right}")
    assert typos == []


# -- hmac-file-server(8) and the command line ---------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return dict(actions[0].choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def test_every_subcommand_is_documented() -> None:
    commands = section(rendered(COMMAND_PAGE), "COMMANDS")
    tags = {line.split()[0] for line in commands if line.strip() and indent(line) == 7}
    assert set(subcommands()) <= tags
    assert set(cli.COMMANDS) <= tags
    synopsis = " ".join(section(rendered(COMMAND_PAGE), "SYNOPSIS"))
    for name in subcommands():
        assert re.search(rf"(^|[ \[]){re.escape(name)}($|[ \]])", synopsis), name


def test_every_option_is_documented() -> None:
    commands = section(rendered(COMMAND_PAGE), "COMMANDS")
    text = " ".join(line.strip() for line in commands)
    synopsis = " ".join(section(rendered(COMMAND_PAGE), "SYNOPSIS"))
    for action in options(cli.build_parser()):
        if not isinstance(action, argparse._VersionAction):
            assert ", ".join(action.option_strings) + " file" in text
        else:
            assert paragraph(commands, "--version").startswith(
                f"Print the version (hmac-file-server {__version__})"
            )
        assert action.option_strings[0] in synopsis
    for name, parser in subcommands().items():
        for action in options(parser):
            for option in action.option_strings:
                assert option in text, f"{name} {option}"
                assert option in synopsis, f"{name} {option}"


def test_sign_options_and_defaults() -> None:
    commands = section(rendered(COMMAND_PAGE), "COMMANDS")
    sign = subcommands()["sign"]
    for action in options(sign):
        option = action.option_strings[0]
        metavar = {"--size": "bytes", "--lifetime": "seconds"}.get(
            option, option.removeprefix("--")
        )
        body = paragraph(commands, f"{option} {metavar}")
        if action.default is not None:
            default = action.default
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert f"Default: {shown}." in body, action.option_strings
        for choice in action.choices or ():
            assert re.search(rf"(^|[ (]){re.escape(choice)}[ ,(]", body), choice
    dev = subcommands()["dev"]
    body = paragraph(commands, "dev [--port port] [--dir directory]")
    defaults = {action.dest: action.default for action in options(dev)}
    assert f"127.0.0.1:port (default {defaults['port']};" in body
    assert defaults["dir"] == "."
    assert "(default: the current directory)" in body


def test_default_configuration_file() -> None:
    commands = section(rendered(COMMAND_PAGE), "COMMANDS")
    assert f"Default: {cli.DEFAULT_CONFIG}." in paragraph(commands, "-c, --config file")


def test_exit_statuses_match_the_code() -> None:
    entries = []
    for line in section(rendered(COMMAND_PAGE), "EXIT STATUS"):
        if match := re.fullmatch(r" {7}(\d+) +(.*)", line):
            entries.append((int(match.group(1)), match.group(2)))
    assert [status for status, _ in entries] == [
        cli.EXIT_OK,
        cli.EXIT_FAILURE,
        cli.EXIT_CONFIG,
    ]
    meaning = dict(entries)
    assert meaning[cli.EXIT_OK].startswith("Success")
    assert meaning[cli.EXIT_FAILURE].startswith("Runtime failure")
    assert "cannot listen" in meaning[cli.EXIT_FAILURE]
    assert "storage directory is unusable" in meaning[cli.EXIT_FAILURE]
    assert meaning[cli.EXIT_CONFIG].startswith("Configuration or usage error")
    # Everywhere else the page names an exit status, it is one of these.
    text = " ".join(rendered(COMMAND_PAGE))
    named = {int(n) for n in re.findall(r"exits?(?: with)? status (?:is )?(\d+)", text)}
    assert named == {cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_CONFIG}


def test_check_config_error_example_is_real(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nmax_upload_size = "100Q"\n[hmac]\nsecret = "{SECRET}"\n')
    assert cli.main(["--config", str(path), "check-config"]) == cli.EXIT_CONFIG
    message = capsys.readouterr().err.strip().replace(str(path), INSTALLED_CONFIG)
    commands = section(rendered(COMMAND_PAGE), "COMMANDS")
    assert message in [line.strip() for line in commands]


def unit_settings(path: Path) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith(("#", ";")):
            settings.setdefault(key.strip(), value.strip())
    return settings


def test_systemd_facts_match_the_units() -> None:
    service = unit_settings(SERVICE_UNIT)
    socket = unit_settings(SOCKET_UNIT)
    text = " ".join(line.strip() for line in rendered(COMMAND_PAGE))
    assert service["Documentation"] == socket["Documentation"] == "man:hmac-file-server(8)"
    assert f"Type={service['Type']}" in text
    assert f"WatchdogSec={service['WatchdogSec']}" in text
    assert f"TimeoutStopSec= ({service['TimeoutStopSec']} seconds)" in text
    assert f"Restart={service['Restart']}" in text
    assert f"after {service['RestartSec']} seconds" in text
    assert service["RestartPreventExitStatus"] == str(cli.EXIT_CONFIG)
    assert f"(RestartPreventExitStatus={cli.EXIT_CONFIG})" in text
    assert "-HUP" in service["ExecReload"]
    assert f"--config {cli.DEFAULT_CONFIG}" in service["ExecStart"]
    host, port = socket["ListenStream"].rsplit(":", 1)
    assert f"({host} port {port}," in text
    assert f"named {socket['FileDescriptorName']}" in text
    assert f'listen = ["systemd:{socket["FileDescriptorName"]}"]' in text
    assert f"{service['User']} system user" in text
    assert f"/var/lib/{service['StateDirectory']}" in text
    assert f"/run/{service['RuntimeDirectory']}" in text


# -- hmac-file-server.toml(5) and the configuration ---------------------------------------


def documented_keys() -> dict[str, dict[str, list[str]]]:
    """{section: {key: body lines}} from SECTIONS, in the order of the page."""
    lines = section(rendered(CONFIG_PAGE), "SECTIONS")
    keys: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for i, line in enumerate(lines):
        if match := re.fullmatch(r" {3}\[(\w+)\]", line):
            current = keys.setdefault(match.group(1), {})
        elif match := re.fullmatch(r" {7}(\w+) = [a-z ]+", line):
            assert current is not None, line
            current[match.group(1)] = entry(lines[i:], line.strip())
    return keys


@cache
def effective_defaults() -> dict[str, dict[str, str | None]]:
    """What check-config prints for a configuration that sets nothing but a secret:
    {section: {key: TOML value, or None where the key is not set}}."""
    cfg = config_module.parse({"hmac": {"secret": SECRET}})
    described: dict[str, dict[str, str | None]] = {}
    current: dict[str, str | None] = {}
    for line in config_module.describe(cfg).splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line):
            current = described.setdefault(match.group(1), {})
        elif match := re.fullmatch(r"# (\w+) is not set", line):
            current[match.group(1)] = None
        elif " = " in line and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            current[key] = value.partition("  #")[0]
    described["hmac"]["secret"] = None  # masked: there is no default secret
    described["hmac"]["secret_file"] = None
    return described


def documented_types() -> dict[str, dict[str, str]]:
    """{section: {key: type}} from the tag lines ("listen = array of strings") of SECTIONS."""
    types: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in section(rendered(CONFIG_PAGE), "SECTIONS"):
        if match := re.fullmatch(r" {3}\[(\w+)\]", line):
            current = types.setdefault(match.group(1), {})
        elif match := re.fullmatch(r" {7}(\w+) = ([a-z ]+)", line):
            current[match.group(1)] = match.group(2)
    return types


def annotated_file_keys() -> dict[str, dict[str, str | None]]:
    """{section: {key: default}} from etc/config.toml: every key it sets or shows commented
    out, with the "Default:" of the comment block just above it (None where it shows none)."""
    keys: dict[str, dict[str, str | None]] = {}
    current: dict[str, str | None] = {}
    block: list[str] = []
    for line in ETC_CONFIG.read_text(encoding="utf-8").splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            current = keys.setdefault(header[1], {})
            block = []
        elif assignment := re.match(r"(?:# )?(\w+) = ", line):
            defaults = [text for text in block if text.startswith("# Default: ")]
            current[assignment[1]] = defaults[-1].removeprefix("# Default: ") if defaults else None
            block = []
        elif line.startswith("#"):
            block.append(line)
        else:
            block = []
    return keys


def _notes(default: str) -> list[str]:
    """The notes a "Default:" line of etc/config.toml may end with ("(no metrics listener)",
    "for each")."""
    return re.findall(r"(\(.*\)|for each)$", default)


def test_keys_agree_with_the_table() -> None:
    """The keys declared in hmacfs.core.settings (as hmacfs.core.config.KEYS lists them) are
    the one source: the manual documents each, in their order, with its type and the default
    check-config prints; etc/config.toml sets or shows each, with the same default where it
    shows one; neither has a key or section the table lacks."""
    page_defaults = {
        name: {
            key: next(line for line in body if line.startswith("Default:"))
            for key, body in keys.items()
        }
        for name, keys in documented_keys().items()
    }
    page_types = documented_types()
    annotated = annotated_file_keys()
    problems = [
        f"{where} has sections {list(sections)}, the table {list(KEYS)}"
        for where, sections in (("the manual", page_defaults), ("etc/config.toml", annotated))
        if set(sections) != set(KEYS)
    ]
    for name, keys in KEYS.items():
        table = [key.name for key in keys]
        page, in_file = page_defaults.get(name, {}), annotated.get(name, {})
        if list(page) != table:
            problems.append(f"[{name}]: the manual documents {list(page)}, the table has {table}")
        if set(in_file) != set(table):
            problems.append(f"[{name}]: etc/config.toml has {list(in_file)}, the table {table}")
        for key in keys:
            default = key.kind.show(key.default)
            where = f"[{name}] {key.name}"
            if not key.doc or "\n" in key.doc:
                problems.append(f"{where}: the table gives no one-line doc")
            if effective_defaults()[name].get(key.name, "nothing") != default:
                problems.append(f"{where}: check-config prints another default than {default}")
            if key.name in page:
                # "not set" may be followed by a note: "(one of secret and secret_file ...)"
                shown = "Default: not set" if default is None else f"Default: {default}"
                said = page[key.name] if default is not None else page[key.name][: len(shown)]
                if said != shown:
                    problems.append(f"{where}: the manual says {page[key.name]!r}, not {shown!r}")
                if page_types[name][key.name] != key.kind.type_name:
                    problems.append(
                        f"{where}: the manual says {page_types[name][key.name]}, "
                        f"the table {key.kind.type_name}"
                    )
            # The file may add a note after the value: "[] (no metrics listener)".
            written = in_file.get(key.name)
            shown = "not set" if default is None else default
            if written is not None and written not in (
                shown,
                *(f"{shown} {n}" for n in _notes(written)),
            ):
                problems.append(f"{where}: etc/config.toml says {written!r}, not {shown!r}")
    assert problems == []


@pytest.mark.parametrize(
    ("name", "key"), [(name, key) for name, keys in SCHEMA.items() for key in keys]
)
def test_documented_example_is_valid(name: str, key: str, tmp_path: Path) -> None:
    body = documented_keys()[name][key]
    (line,) = [line for line in body if line.startswith("Example:")]
    match = re.fullmatch(r"Example: (\w+) = (.*)", line)
    assert match is not None, line
    assert match.group(1) == key
    value = tomllib.loads(f"value = {match.group(2)}")["value"]
    if key == "secret_file":
        assert value == "/etc/hmac-file-server/secret"
        return
    data: dict[str, Any] = {"hmac": {"secret": SECRET}}
    if name == "hmac" and key == "secret":
        data = {"hmac": {}}
    data.setdefault(name, {})[key] = value
    if name == "storage":
        from tests.unit.test_config import with_s3_storage

        with_s3_storage(data, key, tmp_path)
    config_module.parse(data)


def config_examples(page: Path) -> list[str]:
    return [
        "\n".join(unescape(line) for line in block) + "\n"
        for block in example_blocks(page)
        if block and re.fullmatch(r"\[\w+\]", block[0])
    ]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_configuration_examples_are_valid(page: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o640)
    examples = config_examples(page)
    assert examples
    for text in examples:
        data = tomllib.loads(text)
        for name, table in data.items():
            assert name in SCHEMA, name
            assert set(table) <= set(SCHEMA[name]), table
        hmac = data.setdefault("hmac", {})
        if "secret_file" in hmac:
            assert hmac["secret_file"] == "/etc/hmac-file-server/secret"
            hmac["secret_file"] = str(secret)
        else:
            hmac["secret"] = SECRET
        server, metrics = data.get("server", {}), data.get("metrics", {})
        listen = [*server.get("listen", []), *metrics.get("listen", [])]
        if any(address.startswith("https") for address in listen):
            # The certificate files of the example do not exist here.
            data["server"]["listen"] = ["127.0.0.1:5050"]
        config_module.parse(data)


def error_for(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config_module.load(path)
    return str(caught.value).replace(str(path), INSTALLED_CONFIG)


def test_quoted_error_messages_are_real(tmp_path: Path) -> None:
    secret = f'[hmac]\nsecret = "{SECRET}"\n'
    messages = [
        error_for(tmp_path, '[server]\nmax_upload_size = "100Q"\n' + secret),
        error_for(tmp_path, '[server]\nmax_upload = "1G"\n' + secret),
        error_for(tmp_path, secret + "[serverr]\n"),
        error_for(tmp_path, "[server]\nmax_upload_size = 100M\n" + secret),
    ]
    quoted = [line.strip() for line in section(rendered(CONFIG_PAGE), "DIAGNOSTICS")]
    quoted = [line for line in quoted if line.startswith(INSTALLED_CONFIG)]
    assert quoted == messages


def test_sizes_and_durations_quoted_are_valid() -> None:
    from hmacfs.core.units import parse_duration, parse_size

    lines = section(rendered(CONFIG_PAGE), "VALUE SYNTAX")
    sizes = " ".join(subsection(lines, "Sizes"))
    for value in re.findall(r'"([^"]+)"', sizes):
        parse_size(value)
    assert parse_size("1M") == parse_size("1MB") == parse_size("1MiB") == 1048576
    durations = " ".join(subsection(lines, "Durations"))
    for value in re.findall(r'"([^"]+)"', durations):
        parse_duration(value, allow_never=True)


def test_listen_forms_are_accepted() -> None:
    lines = subsection(section(rendered(CONFIG_PAGE), "VALUE SYNTAX"), "Listen addresses")
    examples = set(re.findall(r'"([^"]+)"', " ".join(lines)))
    assert examples
    for entry in examples:
        config_module.parse_listen(entry)
    forms = [line.strip() for line in lines if indent(line) == 7]
    for form, sample in (
        ("host:port", "localhost:5050"),
        ("[ipv6-address]:port", "[::1]:5050"),
        ("http://host:port", "http://127.0.0.1:5050"),
        ("https://host:port", "https://127.0.0.1:5050"),
        ("unix:path", "unix:/run/hmac-file-server/http.sock"),
        ("systemd:name", "systemd:http"),
        ("https+systemd:name", "https+systemd:https"),
    ):
        assert form in forms
        config_module.parse_listen(sample)


def test_signing_schemes_are_all_listed() -> None:
    from hmacfs.core.settings import HEADER_SCHEMES, QUERY_SCHEMES

    lines = section(rendered(CONFIG_PAGE), "SIGNING SCHEMES")
    tags = {m.group(1) for line in lines if (m := re.fullmatch(r" {7}([\w-]+) \(.*\)", line))}
    assert tags == {*QUERY_SCHEMES, *HEADER_SCHEMES}
    switches = set(re.findall(r"Switch: (\w+)\.", " ".join(lines)))
    assert switches == set(config_module.SCHEME_KEYS)


def test_description_names_every_section() -> None:
    text = " ".join(section(rendered(CONFIG_PAGE), "DESCRIPTION"))
    number = ["no", "one", "two", "three", "four", "five", "six", "seven"][len(SCHEMA)]
    assert f"The file has {number} sections" in text
    for name in SCHEMA:
        assert f"[{name}]" in text


def test_reload_restrictions_agree() -> None:
    """Both pages name the settings a reload does not apply."""
    for page in PAGES:
        text = " ".join(line.strip() for line in rendered(page))
        for words in ("[server] listen", "storage_dir", "[metrics] listen", "sweep_interval"):
            assert words in text, (page.name, words)
