"""vpnctl's documentation kept true: --help examples, the man page, the README's JSON
fields and exit codes, the completion scripts (against the parser, and run in bash and
zsh) and the completion helper against the scripted daemon of test_vpnctl."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jeepney import HeaderFields, Message
from jeepney.low_level import MessageFlag

from tests.lab.require import require_tool
from tests.lab.terminal import Terminal
from tests.unit.test_vpnctl import SERVER, FakeConnection, FakeDaemon, profile, run
from vpnctl import bus as vbus
from vpnctl import cli, complete, contract, errors, helptext, manpage, render

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BASH_SCRIPT = REPO / "data" / "completion" / "vpnctl.bash"
ZSH_SCRIPT = REPO / "data" / "completion" / "_vpnctl"


def commands() -> dict[str, argparse.ArgumentParser]:
    return manpage.subcommands(cli.build_parser())


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }


def valued_options() -> set[str]:
    """Every option of any command that takes a value."""
    return {
        option
        for sub in commands().values()
        for action in sub._actions
        if action.nargs != 0 and action.option_strings
        for option in action.option_strings
    }


def server_commands() -> set[str]:
    """Commands whose first argument is a server."""
    found = set()
    for name, sub in commands().items():
        positional = [a for a in sub._actions if not a.option_strings]
        if positional and positional[0].metavar == "SERVER":
            found.add(name)
    return found


# --- --help ---------------------------------------------------------------------


def test_every_command_has_examples_and_every_example_parses() -> None:
    assert set(helptext.EXAMPLES) == set(commands()), "examples: client/vpnctl/helptext.py"
    for name, examples in helptext.EXAMPLES.items():
        assert examples, name
        for _what, line in examples:
            words = shlex.split(line.split(" | ")[0])
            assert words[0] == "vpnctl"
            args = cli.build_parser().parse_args(words[1:])
            assert args.command == name, line


def test_examples_keep_their_lines_in_a_narrow_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["autoconnect", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "\nexamples:\n" in out
    assert "\n  vpnctl --system autoconnect vpn.example.org --profile employees\n" in out
    # The description is still filled to the width.
    description = out.split("\n\n")[1]
    assert max(len(line) for line in description.splitlines()) <= 50
    assert "before anyone logs in" in " ".join(description.split())


def test_the_hidden_completion_command_is_not_offered() -> None:
    parser = cli.build_parser()
    assert cli.COMPLETE_COMMAND not in commands()
    assert cli.COMPLETE_COMMAND not in parser.format_help()
    assert cli.COMPLETE_COMMAND not in manpage.manpage(parser, date="2024-01-01", version="1")


# --- the man page ---------------------------------------------------------------


@pytest.fixture(scope="module")
def page() -> str:
    return manpage.manpage(date="2024-05-01", version="1.2.3")


def sections(page: str) -> dict[str, str]:
    """The man page's .SH sections and the .SS subsections of COMMANDS, by name."""
    found: dict[str, str] = {}
    for part in re.split(r"(?m)^(?=\.S[HS] )", page):
        if part.startswith((".SH ", ".SS ")):
            head, _, body = part.partition("\n")
            found[head[4:].strip().strip('"')] = body
    return found


def test_man_page_has_the_sections_of_a_man_page(page: str) -> None:
    found = sections(page)
    for name in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ):
        assert name in found, name
    assert '.TH VPNCTL 1 "2024-05-01" "vpnd 1.2.3"' in page
    assert found["NAME"].startswith("vpnctl \\- ")
    for variable in ("NO_COLOR", "DBUS_SYSTEM_BUS_ADDRESS", "BROWSER"):
        assert f"\\fB{variable}\\fR" in found["ENVIRONMENT"]


def test_man_page_documents_every_command_and_option_of_the_parser(page: str) -> None:
    found = sections(page)
    for name, sub in commands().items():
        assert name in found, name
        body = found[name]
        for option in long_options(sub) - {"--help"}:
            assert "\\fB" + option.replace("-", "\\-") + "\\fR" in body, (name, option)
        for action in sub._actions:
            if not action.option_strings and action.metavar:
                assert f"\\fI{action.metavar}\\fR" in body
        for _what, line in helptext.EXAMPLES[name]:
            assert manpage.text(line) in body
    for option in long_options(cli.build_parser()):
        assert option.replace("-", "\\-") in found["OPTIONS"]


def test_man_page_exit_status_is_the_help_one(page: str) -> None:
    codes = manpage.exit_codes()
    assert [code for code, _ in codes] == [0, 1, 2, 3, 4, 5, 6, 130]
    body = sections(page)["EXIT STATUS"]
    for code, meaning in codes:
        assert f".TP\n\\fB{code}\\fR\n{manpage.text(meaning)}\n" in body


def test_man_page_is_ascii_roff_with_known_requests_only(page: str) -> None:
    assert page.isascii()
    known = {".TH", ".SH", ".SS", ".TP", ".PP", ".RS", ".RE", ".nf", ".fi", ".br", ".nh", '.\\"'}
    for line in page.splitlines():
        assert not line.startswith("'"), line
        if line.startswith("."):
            assert line.split(" ")[0] in known, line


def test_roff_text_is_escaped() -> None:
    assert manpage.text(".starts with a dot") == "\\&.starts with a dot"
    assert manpage.text("'quoted") == "\\&'quoted"
    assert manpage.text("a\\b --opt") == "a\\eb \\-\\-opt"
    assert manpage.text("run `vpnctl list`…") == "run \\fBvpnctl list\\fR\\[u2026]"


def test_man_page_date_follows_source_date_epoch() -> None:
    assert manpage._date({"SOURCE_DATE_EPOCH": "0"}) == "1970-01-01"
    assert manpage._date({"SOURCE_DATE_EPOCH": "1714521600"}) == "2024-05-01"


def test_python_m_vpnctl_manpage_writes_the_page() -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1714521600"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client"), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "vpnctl.manpage"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == manpage.manpage(date="2024-05-01")


def test_groff_renders_the_man_page_without_a_warning(page: str, tmp_path: Path) -> None:
    groff = require_tool("groff", "groff-base")
    source = tmp_path / "vpnctl.1"
    source.write_text(page)
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", str(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    shown = re.sub(".\b", "", result.stdout)  # overstrike (bold, underline) off
    for name in commands():
        assert f"vpnctl {name}" in shown
    assert "vpnctl status [--json] [--watch]" in shown
    man = shutil.which("man")
    if man is not None:
        result = subprocess.run(
            [man, "--warnings", "-l", str(source)],
            env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stderr) == (0, "")
        assert "EXIT STATUS" in result.stdout


# --- the README -----------------------------------------------------------------


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    following = re.search(r"(?m)^#{2,3} ", text[start + len(title) :])
    assert following is not None
    return text[start : start + len(title) + following.start()]


def test_readme_lists_the_exit_codes_of_the_help() -> None:
    section = readme_section("### vpnctl's exit status\n")
    listed = [int(code) for code in re.findall(r"(?m)^\| (\d+) \|", section)]
    assert listed == [code for code, _ in manpage.exit_codes()]


def readme_json_fields() -> dict[str, list[str]]:
    """Field names per `#### \\`vpnctl …\\`` heading of the JSON section, in order."""
    section = readme_section("### vpnctl's JSON\n")
    fields: dict[str, list[str]] = {}
    current: list[str] = []
    for line in section.splitlines():
        heading = re.match(r"#### `vpnctl (\w+)", line)
        if heading:
            current = fields.setdefault(heading.group(1), [])
        elif line.startswith("`prompt`, when"):
            current = fields.setdefault("prompt", [])
        else:
            cell = re.match(r"\| `(\w+)` \|", line)
            if cell:
                current.append(cell.group(1))
    return fields


def location_record_fields() -> list[str]:
    daemon = FakeDaemon()
    daemon.handlers["ListServers"] = lambda path: (
        "a{oa{sv}}",
        ({SERVER: {"Kind": ("s", "secure-internet")}},),
    )
    daemon.properties[(SERVER, contract.SERVER_INTERFACE)] = {"Url": ("s", "https://a/")}
    daemon.handlers["Discover"] = lambda path, query, options: (
        "aa{sv}",
        ([{"base_url": ("s", "https://a/"), "country_code": ("s", "NL")}],),
    )
    code, out = run(daemon, "location", "--json")
    assert code == 0, out
    return list(json.loads(out)[0])


def test_readme_documents_every_json_field_of_every_command() -> None:
    documented = readme_json_fields()
    empty_record = {"host": "", "url": ""}
    actual = {
        "list": list(render.server_records({SERVER: empty_record})[0]),
        "status": list(render.status_record(None, None)),
        "prompt": list(
            render.prompt_record({"id": 1, "fields": [("password", "Password", False, True)]}) or {}
        ),
        "profiles": list(render.profile_records([{}])[0]),
        "messages": list(render.message_records("https://a/", [{}])[0]),
        "discover": list(render.discovery_records([{}])[0]),
        "location": location_record_fields(),
    }
    assert documented == actual
    # Every command with --json has its records documented.
    with_json = {name for name, sub in commands().items() if "--json" in long_options(sub)}
    assert with_json <= set(documented)


# --- the completion scripts against the parser ------------------------------------


def bash_script() -> str:
    return BASH_SCRIPT.read_text()


def test_bash_script_lists_the_parsers_commands_and_options() -> None:
    script = bash_script()
    listed = re.search(r"(?m)^_vpnctl_commands='([^']*)'", script)
    assert listed is not None
    assert listed.group(1).split() == list(commands()), f"update {BASH_SCRIPT}"
    arms = dict(re.findall(r"(?m)^\s+(\w+|'')\) echo '([^']*)' ;;$", script))
    assert set(arms) == {"''", *commands()}
    assert set(arms["''"].split()) == long_options(cli.build_parser())
    for name, sub in commands().items():
        assert set(arms[name].split()) == long_options(sub), name
    takes_value = re.search(r"(?m)^_vpnctl_takes_value=' ([^']*) '", script)
    assert takes_value is not None and set(takes_value.group(1).split()) == valued_options()
    servers = re.search(r"(?m)^_vpnctl_server_commands=' ([^']*) '", script)
    assert servers is not None and set(servers.group(1).split()) == server_commands()


def zsh_options(body: str, arrays: dict[str, set[str]]) -> set[str]:
    found = set(re.findall(r"(--[a-z][a-z-]*)[=\[]", body))
    for name, options in arrays.items():
        if f"${name}" in body:
            found |= options
    return found


def test_zsh_script_lists_the_parsers_commands_and_options() -> None:
    script = ZSH_SCRIPT.read_text()
    assert script.startswith("#compdef vpnctl\n")
    described = re.search(r"(?ms)^_vpnctl_commands\(\) \{\n(.*?)^\}", script)
    assert described is not None
    listed = re.findall(r"(?m)^\s+['\"](\w+):", described.group(1))
    assert listed == list(commands()), f"update {ZSH_SCRIPT}"
    arrays = {
        "_vpnctl_help": {"--help"},
        "_vpnctl_system_option": {"--system"},
    }
    sign_in = re.search(r"(?ms)^\s+_vpnctl_sign_in=\((.*?)^\s+\)", script)
    assert sign_in is not None
    arrays["_vpnctl_sign_in"] = zsh_options(sign_in.group(1), {})
    functions = dict(re.findall(r"(?ms)^_vpnctl_command_(\w+)\(\) \{\n(.*?)^\}", script))
    assert set(functions) == set(commands())
    for name, sub in commands().items():
        assert zsh_options(functions[name], arrays) == long_options(sub), name
    # Before the command: what the main function's _arguments call offers.
    main = re.search(r"(?ms)^  _arguments -C \\\n(.*?)&& ret=0$", script)
    assert main is not None
    assert zsh_options(main.group(1), arrays) == long_options(cli.build_parser())
    # Which options need a value is said by a trailing "=" in _arguments.
    for option in valued_options():
        assert option + "=[" in script, option
    profile_scan = re.search(r"(?m)^\s+(--[a-z-|]+)\) \(\( i\+\+ \)\) ;;$", script)
    assert profile_scan is not None and set(profile_scan.group(1).split("|")) == valued_options()


# --- the completion scripts run by the shells -------------------------------------

# Stands in for vpnctl: logs how it is asked, answers as vpnd would.
FAKE_VPNCTL = r"""
vpnctl() {
    printf '%s\n' "$*" >> "$CALLS"
    case $2 in
        servers) printf '%s\n' vpn.example.org other.example.org https://x.org:8443/a ;;
        profiles) printf '%s\n' employees guests ;;
    esac
}
"""


def bash_complete(line: str, tmp_path: Path, *, words: bool = False) -> tuple[list[str], list[str]]:
    """COMPREPLY for the line as typed (the cursor at its end), and how vpnctl was asked.

    With `words`, only COMP_WORDS and COMP_CWORD are set, split at blanks."""
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    if words:
        parts = line.split(" ")
        setup = (
            f"COMP_WORDS=({' '.join(shlex.quote(p) for p in parts)}); COMP_CWORD={len(parts) - 1}"
        )
    else:
        setup = f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}"
    script = (
        f"source {shlex.quote(str(BASH_SCRIPT))}\n{FAKE_VPNCTL}\n{setup}\n"
        '_vpnctl; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env={"PATH": os.environ["PATH"], "CALLS": str(calls)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    asked = calls.read_text().splitlines() if calls.exists() else []
    return [word for word in result.stdout.split("\n") if word], asked


@pytest.mark.parametrize(
    ("line", "expected", "asked"),
    [
        ("vpnctl con", ["connect"], []),
        ("vpnctl ", list(commands()), []),
        ("vpnctl --s", ["--system"], []),
        ("vpnctl status --w", ["--watch"], []),
        ("vpnctl --system connect --t", ["--tcp", "--timeout"], []),
        ("vpnctl connect o", ["other.example.org"], ["__complete servers"]),
        (
            "vpnctl --system login ",
            ["vpn.example.org", "other.example.org", "https://x.org:8443/a"],
            ["__complete servers --system"],
        ),
        ("vpnctl connect vpn --profile ", ["employees", "guests"], ["__complete profiles vpn"]),
        (
            "vpnctl autoconnect --system vpn --profile g",
            ["guests"],
            ["__complete profiles vpn --system"],
        ),
        ("vpnctl connect --timeout 5 vpn --profile e", ["employees"], ["__complete profiles vpn"]),
        ("vpnctl location --server v", ["vpn.example.org"], ["__complete servers"]),
        ("vpnctl discover --kind s", ["secure-internet"], []),
        # bash replaces what follows the last ':' of a word.
        ("vpnctl remove https://x.org:84", ["8443/a"], ["__complete servers"]),
        # Nothing to offer: a URL to add, a second argument, a number.
        ("vpnctl add ", [], []),
        ("vpnctl connect vpn ", [], []),
        ("vpnctl connect vpn --timeout ", [], []),
        ("vpnctl connect --profile ", [], []),
    ],
)
def test_bash_completes(line: str, expected: list[str], asked: list[str], tmp_path: Path) -> None:
    assert bash_complete(line, tmp_path) == (expected, asked)


def test_bash_completes_from_comp_words_alone(tmp_path: Path) -> None:
    assert bash_complete("vpnctl con", tmp_path, words=True) == (["connect"], [])
    assert bash_complete("vpnctl profiles ", tmp_path, words=True)[1] == ["__complete servers"]


def test_zsh_completes(tmp_path: Path) -> None:
    zsh = require_tool("zsh", "zsh")
    calls = tmp_path / "calls"
    env = {"HOME": str(tmp_path), "CALLS": str(calls), "PS1": "> "}
    # A terminal zsh draws on: TERM=dumb would leave the line editor out.
    fake = tmp_path / "fake-vpnctl.sh"
    fake.write_text(FAKE_VPNCTL)
    with Terminal(["env", "TERM=xterm", zsh, "-f", "-i"], env) as terminal:
        terminal.send(f"fpath=({BASH_SCRIPT.parent} $fpath); autoload -Uz compinit; compinit -u -D")
        terminal.send(f"source {fake}")
        terminal.send("print READY")
        terminal.expect("READY\n")

        def tab(typed: str, completed: str) -> None:
            os.write(terminal.fd, b"\x15" + typed.encode() + b"\t")  # Ctrl-U: a fresh line
            terminal.expect(completed)

        tab("vpnctl con", "vpnctl connect")
        tab("vpnctl status --w", "vpnctl status --watch")
        tab("vpnctl --system connect ot", "vpnctl --system connect other.example.org")
        tab("vpnctl connect vpn --profile g", "vpnctl connect vpn --profile guests")
        tab("vpnctl discover --kind o", "vpnctl discover --kind organization")
        os.write(terminal.fd, b"\x15exit\r")
        terminal.wait()
    assert calls.read_text().splitlines() == [
        "__complete servers --system",
        "__complete profiles vpn",
    ]


# --- the completion helper --------------------------------------------------------


def test_server_names_are_hosts_unless_a_host_is_shared() -> None:
    records = [
        {"host": "vpn.example.org", "url": "https://vpn.example.org/"},
        {"host": "multi.example.org", "url": "https://multi.example.org/a/"},
        {"host": "multi.example.org", "url": "https://multi.example.org/b/"},
        {"host": "", "url": "https://odd/"},
        {"host": "", "url": ""},
    ]
    assert complete.server_names(records) == [
        "vpn.example.org",
        "https://multi.example.org/a/",
        "https://multi.example.org/b/",
        "https://odd/",
    ]


class RecordingConnection(FakeConnection):
    """Keeps each call's flags and the longest wait it was allowed."""

    def __init__(self, daemon: FakeDaemon) -> None:
        super().__init__(daemon)
        self.flags: list[tuple[str, int]] = []
        self.longest_wait = 0.0

    def send(self, message: Message, serial: int) -> None:
        fields = message.header.fields
        if fields.get(HeaderFields.destination) == contract.BUS_NAME:
            self.flags.append((fields[HeaderFields.member], int(message.header.flags)))
        super().send(message, serial)

    def receive(self, *, timeout: float) -> Message:
        self.longest_wait = max(self.longest_wait, timeout)
        return super().receive(timeout=timeout)


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeDaemon, list[RecordingConnection]]:
    daemon = FakeDaemon()
    opened: list[RecordingConnection] = []

    def fake_open(*, interactive: bool = False) -> vbus.DaemonBus:
        assert not interactive
        connection = RecordingConnection(daemon)
        opened.append(connection)
        return vbus.DaemonBus(connection)

    monkeypatch.setattr(vbus.DaemonBus, "open", staticmethod(fake_open))
    return daemon, opened


def servers_reply(*hosts: str) -> dict[str, Any]:
    return {
        f"/org/vpnd/Daemon/servers/{n}": {
            "Url": ("s", f"https://{host}/"),
            "Host": ("s", host),
        }
        for n, host in enumerate(hosts)
    }


def test_complete_servers_prints_one_per_line_without_starting_vpnd(
    helper: tuple[FakeDaemon, list[RecordingConnection]],
) -> None:
    daemon, opened = helper
    daemon.handlers["ListServers"] = lambda path: ("a{oa{sv}}", (servers_reply("b.org", "a.org"),))
    daemon.handlers["ListSystemServers"] = lambda path: ("a{oa{sv}}", (servers_reply("s.org"),))
    out = io.StringIO()
    assert complete.complete(["servers"], out) == 0
    assert out.getvalue() == "a.org\nb.org\n"
    out = io.StringIO()
    assert complete.complete(["servers", "--system"], out) == 0
    assert out.getvalue() == "s.org\n"
    for connection in opened:
        for member, flags in connection.flags:
            assert flags & MessageFlag.no_auto_start, member
            assert not flags & MessageFlag.allow_interactive_authorization, member
        assert 0 < connection.longest_wait <= complete.SERVERS_TIMEOUT


def test_complete_profiles_of_a_server(
    helper: tuple[FakeDaemon, list[RecordingConnection]],
) -> None:
    daemon, opened = helper
    found: list[tuple[str, str]] = []

    def find(method: str) -> Any:
        def handler(path: str, query: str) -> tuple[str, tuple[Any, ...]]:
            found.append((method, query))
            return "o", (SERVER,)

        return handler

    daemon.handlers["FindServer"] = find("FindServer")
    daemon.handlers["FindSystemServer"] = find("FindSystemServer")
    daemon.handlers["GetProfiles"] = lambda path, locale: (
        "aa{sv}",
        ([profile("employees"), profile("guests")],),
    )
    out = io.StringIO()
    assert complete.complete(["profiles", "vpn"], out) == 0
    assert out.getvalue() == "employees\nguests\n"
    assert complete.complete(["profiles", "vpn", "--system"], io.StringIO()) == 0
    assert found == [("FindServer", "vpn"), ("FindSystemServer", "vpn")]
    assert all(0 < connection.longest_wait <= complete.PROFILES_TIMEOUT for connection in opened)


@pytest.mark.parametrize(
    "failure",
    [
        errors.BusError("org.vpnd.Error.NotFound", "no server matches"),
        errors.BusError("org.freedesktop.DBus.Error.ServiceUnknown", "not running"),
        errors.BusUnreachable(errors.NO_ANSWER_MESSAGE),
        ValueError("anything at all"),
        KeyboardInterrupt(),
    ],
)
def test_complete_prints_nothing_on_any_failure(
    failure: BaseException, helper: tuple[FakeDaemon, list[RecordingConnection]]
) -> None:
    daemon, _ = helper

    def fail(*args: Any) -> Any:
        raise failure

    daemon.handlers["ListServers"] = fail
    daemon.handlers["FindServer"] = fail
    for words in (["servers"], ["profiles", "vpn"]):
        out = io.StringIO()
        assert complete.complete(words, out) == errors.EXIT_FAILURE
        assert out.getvalue() == ""


def test_complete_without_a_bus_prints_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    assert cli.main([cli.COMPLETE_COMMAND, "servers"]) == errors.EXIT_FAILURE
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "words", [[], ["nonsense"], ["profiles"], ["servers", "extra"], ["profiles", "a", "b"]]
)
def test_complete_ignores_what_it_does_not_know(
    words: list[str], helper: tuple[FakeDaemon, list[RecordingConnection]]
) -> None:
    out = io.StringIO()
    assert complete.complete(words, out) == errors.EXIT_USAGE
    assert out.getvalue() == ""
    assert helper[1] == []


def test_candidates_that_would_break_the_shell_line_are_left_out(
    helper: tuple[FakeDaemon, list[RecordingConnection]],
) -> None:
    daemon, _ = helper
    daemon.handlers["ListServers"] = lambda path: (
        "a{oa{sv}}",
        (servers_reply("ok.org", "two words", "bell\a"),),
    )
    out = io.StringIO()
    assert complete.complete(["servers"], out) == 0
    assert out.getvalue() == "ok.org\n"


def test_main_hands_complete_its_words(
    helper: tuple[FakeDaemon, list[RecordingConnection]], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, _ = helper
    daemon.handlers["ListServers"] = lambda path: ("a{oa{sv}}", (servers_reply("a.org"),))
    assert cli.main([cli.COMPLETE_COMMAND, "servers"]) == 0
    assert capsys.readouterr() == ("a.org\n", "")
