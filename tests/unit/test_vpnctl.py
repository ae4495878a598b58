"""vpnctl without a bus: parsing, locale and profile choice, rendering, error mapping,
and the commands against a scripted daemon that speaks real D-Bus messages."""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from itertools import count
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jeepney import DBusAddress, HeaderFields, Message, Parser
from jeepney.wrappers import new_error, new_method_return, new_signal

from vpnctl import bus as vbus
from vpnctl import cli, contract, errors, helptext, render

DAEMON = ":1.7"
BUS_DAEMON = "org.freedesktop.DBus"
SERVER = "/org/vpnd/Daemon/servers/1"
CONNECTION = "/org/vpnd/Daemon/connections/1"
NOW = 1_700_000_000

# --- a scripted daemon at the message level --------------------------------


def on_the_wire(message: Message, serial: int, sender: str | None = None) -> Message:
    """The message as the other side parses it: serials set, variants as (signature, value)."""
    if sender is not None:
        message.header.fields[HeaderFields.sender] = sender
    parser = Parser()
    parser.add_data(message.serialise(serial=serial))
    parsed = parser.get_next_message()
    assert parsed is not None
    return parsed


class FakeDaemon:
    """Answers calls the way vpnd and the bus daemon would, from a script.

    `later` holds what happens while the client waits: each time the client
    finds nothing to read, the next event is released; when none is left, the
    wait times out.
    """

    def __init__(self) -> None:
        self.properties: dict[tuple[str, str], dict[str, tuple[str, Any]]] = {}
        self.handlers: dict[str, Callable[..., tuple[str, tuple[Any, ...]]]] = {}
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.match_rules: list[str] = []
        self.inbox: deque[Message] = deque()
        self.later: deque[Callable[[], None]] = deque()
        self.after_reply: list[Callable[[], None]] = []
        self._serials = count(1000)

    def deliver(self, message: Message, sender: str = DAEMON) -> None:
        self.inbox.append(on_the_wire(message, next(self._serials), sender))

    def emit(self, path: str, interface: str, member: str, signature: str, body: Any) -> None:
        address = DBusAddress(path, interface=interface)
        self.deliver(new_signal(address, member, signature, body))

    def change(self, path: str, changes: dict[str, tuple[str, Any]]) -> None:
        """Set a connection's properties and emit PropertiesChanged, as vpnd does."""
        self.properties[(path, contract.CONNECTION_INTERFACE)].update(changes)
        self.emit(
            path,
            contract.PROPERTIES_INTERFACE,
            "PropertiesChanged",
            "sa{sv}as",
            (contract.CONNECTION_INTERFACE, changes, []),
        )

    def answer(self, call: Message) -> None:
        fields = call.header.fields
        member = fields[HeaderFields.member]
        if fields[HeaderFields.destination] == BUS_DAEMON:
            if member == "AddMatch":
                self.match_rules.append(call.body[0])
            body = (DAEMON,) if member == "GetNameOwner" else ()
            self.deliver(new_method_return(call, "s" if body else None, body), BUS_DAEMON)
            return
        path = fields[HeaderFields.path]
        self.calls.append((path, member, call.body))
        try:
            if fields.get(HeaderFields.interface) == contract.PROPERTIES_INTERFACE:
                signature, body = self._property_call(path, member, call.body)
            else:
                signature, body = self.handlers[member](path, *call.body)
        except errors.BusError as error:
            self.deliver(new_error(call, error.name, "s", (error.message,)))
            return
        self.deliver(new_method_return(call, signature or None, body))
        after, self.after_reply = self.after_reply, []
        for event in after:
            event()

    def _property_call(self, path: str, member: str, body: Any) -> tuple[str, tuple[Any, ...]]:
        properties = self.properties.get((path, body[0]))
        if properties is None:
            raise errors.BusError("org.freedesktop.DBus.Error.UnknownObject", f"no {path}")
        if member == "GetAll":
            return "a{sv}", (properties,)
        return "v", (properties[body[1]],)


class FakeConnection:
    """The part of a jeepney blocking connection that DaemonBus uses."""

    def __init__(self, daemon: FakeDaemon) -> None:
        self.daemon = daemon
        self.outgoing_serial = count(1)
        self.closed = False

    def send(self, message: Message, serial: int) -> None:
        self.daemon.answer(on_the_wire(message, serial))

    def receive(self, *, timeout: float) -> Message:
        while not self.daemon.inbox and self.daemon.later:
            self.daemon.later.popleft()()
        if not self.daemon.inbox:
            raise TimeoutError
        return self.daemon.inbox.popleft()

    def close(self) -> None:
        self.closed = True


def connection_properties(**overrides: tuple[str, Any]) -> dict[str, tuple[str, Any]]:
    properties: dict[str, tuple[str, Any]] = {
        "State": ("s", "preparing"),
        "Detail": ("s", ""),
        "Server": ("o", SERVER),
        "ServerUrl": ("s", "https://vpn.example.org/"),
        "Profile": ("s", "employees"),
        "Owner": ("u", 1000),
        "TunnelIP": ("s", ""),
        "TunnelIPv6": ("s", ""),
        "Remote": ("s", ""),
        "BytesIn": ("t", 0),
        "BytesOut": ("t", 0),
        "ConnectedSince": ("t", 0),
        "SessionExpiry": ("t", 0),
        "Error": ("s", ""),
        "ErrorMessage": ("s", ""),
    }
    properties.update(overrides)
    return properties


def profile(profile_id: str) -> dict[str, tuple[str, Any]]:
    return {
        "profile_id": ("s", profile_id),
        "display_name": ("s", profile_id.title()),
        "default_gateway": ("b", True),
        "vpn_proto_list": ("as", ["openvpn"]),
    }


@pytest.fixture
def daemon() -> FakeDaemon:
    fake = FakeDaemon()
    fake.handlers["FindServer"] = lambda path, query: ("o", (SERVER,))
    fake.properties[(SERVER, contract.SERVER_INTERFACE)] = {
        "Url": ("s", "https://vpn.example.org/"),
        "Host": ("s", "vpn.example.org"),
        "Kind": ("s", "eduvpn-v3"),
    }
    return fake


class Terminal(io.StringIO):
    """Captured output that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


def run(daemon: FakeDaemon, *argv: str, out: io.StringIO | None = None) -> tuple[int, str]:
    """Run a command; return (exit code, stdout) or (exit code, stderr line) on failure."""
    out = out if out is not None else io.StringIO()
    args = cli.build_parser().parse_args(argv)
    bus = vbus.DaemonBus(FakeConnection(daemon))
    try:
        return cli.run(bus, args, out), out.getvalue()
    except (errors.VpnctlError, errors.BusError) as error:
        return cli.failure(error, args)


# --- argument parsing -------------------------------------------------------


def test_connect_arguments_and_defaults() -> None:
    args = cli.build_parser().parse_args(["connect", "vpn.example.org"])
    assert (args.server, args.profile, args.tcp, args.no_wait) == (
        "vpn.example.org",
        None,
        False,
        False,
    )
    assert args.timeout == cli.CONNECT_TIMEOUT
    args = cli.build_parser().parse_args(
        ["connect", "x", "--profile", "p", "--tcp", "--no-wait", "--timeout", "2.5"]
    )
    assert (args.profile, args.tcp, args.no_wait, args.timeout) == ("p", True, True, 2.5)


@pytest.mark.parametrize(
    "argv",
    [["list", "--json"], ["status", "--json"], ["profiles", "x", "--json"]],
)
def test_json_flag(argv: list[str]) -> None:
    assert cli.build_parser().parse_args(argv).json is True


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "required: COMMAND"),
        (["conect", "x"], "invalid choice: 'conect'"),
        (["connect"], "required: SERVER"),
        (["connect", "x", "--timeout", "0"], "more than 0 seconds"),
        (["connect", "x", "--timeout", "soon"], "not a number of seconds"),
        (["status", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(argv)
    assert exit_info.value.code == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("vpnctl: ")
    assert fragment in err
    assert "--help`" in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("vpnctl ")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    for command in ("add", "list", "login", "profiles", "connect", "status", "disconnect"):
        assert command in help_text
    assert "4    vpnd cannot be reached" in help_text


def parsed(parser: Any, argv: list[str]) -> dict[str, Any]:
    return vars(parser.parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        shlex.split(line.split(" | ")[0])[1:]
        for examples in helptext.EXAMPLES.values()
        for _what, line in examples
    ]
    + [["--system", "list"], ["status", "--json"], ["connect", "vpn", "--system", "--tcp"]],
)
def test_the_parser_of_one_command_parses_it_as_the_full_one(argv: list[str]) -> None:
    command = cli.chosen_command(argv)
    assert command is not None
    assert parsed(cli.build_parser(command), argv) == parsed(cli.build_parser(), argv)


def test_the_parser_of_one_command_helps_and_refuses_as_the_full_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    full = cli.build_parser()
    (commands,) = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == cli.COMMAND_NAMES
    for name, sub in commands.choices.items():
        (alone,) = [
            a for a in cli.build_parser(name)._actions if isinstance(a, argparse._SubParsersAction)
        ]
        assert list(alone.choices) == [name]
        assert alone.choices[name].format_help() == sub.format_help()
        for argv in ([name, "--bogus"], [name, "--timeout"]):
            outcomes = []
            for parser in (cli.build_parser(name), cli.build_parser()):
                with pytest.raises(SystemExit) as exit_info:
                    parser.parse_args(argv)
                outcomes.append((exit_info.value.code, capsys.readouterr()))
            assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["status"], "status"),
        (["--system", "list", "--json"], "list"),
        (["connect", "status"], "connect"),
        ([], None),
        (["--system"], None),
        (["--help", "status"], None),
        (["--version"], None),
        (["--sys", "list"], None),
        (["conect", "x"], None),
        (["--", "status"], None),
    ],
)
def test_chosen_command(argv: list[str], command: str | None) -> None:
    assert cli.chosen_command(argv) == command


@pytest.mark.parametrize("columns", [None, "55", "0", "wide"])
def test_help_is_as_wide_as_argparse_makes_it(
    columns: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli.build_parser()._get_formatter()._width == shutil.get_terminal_size().columns - 2


def test_main_without_a_bus_says_so_in_one_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-socket")
    assert cli.main(["status"]) == errors.EXIT_UNREACHABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "vpnctl: " + errors.UNREACHABLE_MESSAGE + "\n"


# --- locale and profile choice ---------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ""),
        ({"LANG": "nl_NL.UTF-8"}, "nl_NL.UTF-8"),
        ({"LANG": "nl_NL.UTF-8", "LC_MESSAGES": "de_DE.UTF-8"}, "de_DE.UTF-8"),
        ({"LC_MESSAGES": "de_DE.UTF-8", "LC_ALL": "fr_FR.UTF-8"}, "fr_FR.UTF-8"),
        ({"LC_ALL": "fr_FR.UTF-8", "LANGUAGE": "nl_BE:nl:en"}, "nl_BE"),
        ({"LANGUAGE": "", "LC_ALL": "", "LANG": "en_GB.UTF-8"}, "en_GB.UTF-8"),
        ({"LANGUAGE": "::", "LANG": "en_GB.UTF-8"}, "en_GB.UTF-8"),
        ({"LANGUAGE": ":da"}, "da"),
        ({"LANG": "C.UTF-8"}, ""),
        ({"LC_ALL": "POSIX", "LANG": "nl_NL.UTF-8"}, ""),
    ],
)
def test_choose_locale(environ: dict[str, str], expected: str) -> None:
    assert cli.choose_locale(environ) == expected


def test_choose_profile_rule() -> None:
    assert cli.choose_profile([{"profile_id": "employees"}]) == "employees"
    with pytest.raises(errors.UsageError, match="--profile: employees, internet") as several:
        cli.choose_profile([{"profile_id": "employees"}, {"profile_id": "internet"}])
    assert several.value.exit_code == errors.EXIT_USAGE
    with pytest.raises(errors.VpnctlError, match="no profiles") as none:
        cli.choose_profile([])
    assert none.value.exit_code == errors.EXIT_FAILURE


# --- rendering --------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**6, "3072.0 PiB"),
    ],
)
def test_format_bytes(count: int, expected: str) -> None:
    assert render.format_bytes(count) == expected


@given(st.integers(min_value=1024, max_value=2**64 - 1))
@example(1_099_457_940_685)  # just under 1 TiB: once printed as "1024.0 GiB"
@example(1280)  # 1.25 KiB, printed 1.2: on the bound
def test_format_bytes_stays_close_to_the_count(count: int) -> None:
    number, unit = render.format_bytes(count).split()
    factor = 1024 ** (("KiB", "MiB", "GiB", "TiB", "PiB").index(unit) + 1)
    assert 1 <= float(number) < 1024 or unit == "PiB"
    # One decimal is at most half a tenth off; 1280 B is 1.25 KiB, printed
    # "1.2", exactly that far, which float arithmetic may overshoot by a hair.
    assert abs(float(number) * factor - count) <= 0.05 * factor * (1 + 1e-9)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (30, "less than a minute"),
        (60, "1 minute"),
        (3 * 3600 + 5 * 60, "3 hours, 5 minutes"),
        (3600, "1 hour"),
        (86400 + 4 * 3600, "1 day, 4 hours"),
        (89 * 86400 + 3600, "89 days"),
    ],
)
def test_format_duration(seconds: int, expected: str) -> None:
    assert render.format_duration(seconds) == expected


def test_format_relative() -> None:
    assert render.format_relative(NOW + 89 * 86400, NOW) == "in 89 days"
    assert render.format_relative(NOW - 7200, NOW) == "2 hours ago"


def connected_properties() -> dict[str, Any]:
    return {
        "State": "connected",
        "Detail": "",
        "Server": SERVER,
        "ServerUrl": "https://vpn.example.org/",
        "Profile": "employees",
        "TunnelIP": "10.10.0.2",
        "TunnelIPv6": "fd00::2",
        "Remote": "192.0.2.1",
        "BytesIn": 3 * 1024 * 1024,
        "BytesOut": 2048,
        "ConnectedSince": NOW - 3600,
        "SessionExpiry": NOW + 89 * 86400 + 60,
        "Error": "",
        "ErrorMessage": "",
        "DnsServers": ["10.10.0.1", "fd00::1"],
        "DnsDomains": ["corp.example", "~."],
    }


def test_status_record_is_stable_and_machine_readable() -> None:
    record = render.status_record(CONNECTION, connected_properties())
    assert record == {
        "state": "connected",
        "detail": None,
        "connection": CONNECTION,
        "server": SERVER,
        "server_url": "https://vpn.example.org/",
        "profile": "employees",
        "tunnel_ip": "10.10.0.2",
        "tunnel_ipv6": "fd00::2",
        "remote": "192.0.2.1",
        "bytes_in": 3145728,
        "bytes_out": 2048,
        "connected_since": NOW - 3600,
        "connected_since_iso": "2023-11-14T21:13:20Z",
        "session_expiry": NOW + 89 * 86400 + 60,
        "session_expiry_iso": "2024-02-11T22:14:20Z",
        "error": None,
        "error_message": None,
        "prompt": None,
        "dns_servers": ["10.10.0.1", "fd00::1"],
        "dns_domains": ["corp.example", "~."],
    }
    assert json.loads(render.to_json(record)) == record
    dns_lines = [x for x in render.render_status(record, NOW).splitlines() if x.startswith("DNS:")]
    assert [x.split(None, 1)[1] for x in dns_lines] == ["10.10.0.1 fd00::1 corp.example ~."]


def test_a_question_shows_in_the_status_record_without_answers() -> None:
    properties = connected_properties() | {
        "State": "needs-input",
        "Prompt": {
            "id": 3,
            "kind": "challenge",
            "message": "Enter your PIN",
            "url": "",
            "fields": [("response", "Enter your PIN", True, True)],
        },
    }
    record = render.status_record(CONNECTION, properties)
    assert record["prompt"] == {
        "id": 3,
        "kind": "challenge",
        "message": "Enter your PIN",
        "url": None,
        "fields": [{"name": "response", "label": "Enter your PIN", "echo": True, "required": True}],
    }
    assert "Asks:" in render.render_status(record, NOW)
    assert (
        render.status_record(CONNECTION, connected_properties() | {"Prompt": {}})["prompt"] is None
    )


def test_status_record_without_a_connection_has_the_same_keys() -> None:
    connected = render.status_record(CONNECTION, connected_properties())
    for path in ("/", None):
        record = render.status_record(path, None)
        assert record.keys() == connected.keys()
        assert record["state"] == "disconnected"
        assert record["connection"] is None
        assert record["bytes_in"] == 0


def test_render_status_connected() -> None:
    text = render.render_status(render.status_record(CONNECTION, connected_properties()), NOW)
    lines = dict(line.split(":", 1) for line in text.splitlines())
    assert lines["State"].strip() == "connected"
    assert lines["Server"].strip() == "https://vpn.example.org/"
    assert lines["Tunnel IP"].strip() == "10.10.0.2, fd00::2"
    assert lines["Traffic"].strip() == "3.0 MiB received, 2.0 KiB sent"
    assert lines["Connected"].strip().endswith("(1 hour)")
    assert lines["Session ends"].strip().endswith("(in 89 days)")
    assert "Error" not in lines
    # The values line up in one column.
    assert (
        len(
            {
                line.index(value.strip())
                for line, value in zip(text.splitlines(), lines.values(), strict=True)
            }
        )
        == 1
    )


def test_render_status_failed_shows_the_error_not_the_tunnel() -> None:
    properties = connected_properties() | {
        "State": "failed",
        "Error": "org.vpnd.Error.TunnelFailed",
        "ErrorMessage": "openvpn exited: TLS handshake failed",
    }
    text = render.render_status(render.status_record(CONNECTION, properties), NOW)
    assert "Error:" in text
    assert "openvpn exited: TLS handshake failed" in text
    assert "Tunnel IP" not in text
    assert "Connected:" not in text


def test_render_status_connecting_shows_the_detail() -> None:
    properties = {"State": "connecting", "Detail": "AUTH", "ServerUrl": "https://x/"}
    text = render.render_status(render.status_record(CONNECTION, properties), NOW)
    assert text.splitlines()[0] == "State:  connecting (AUTH)"


def test_render_status_disconnected() -> None:
    assert render.render_status(render.status_record("/", None), NOW) == "State: disconnected"


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "State": st.sampled_from(["preparing", "connected", "failed", "disconnected"]),
            "Detail": st.text(),
            "TunnelIP": st.text(),
            "BytesIn": st.integers(0, 2**64 - 1),
            "BytesOut": st.integers(0, 2**64 - 1),
            "ConnectedSince": st.integers(0, 2**40),
            "SessionExpiry": st.integers(0, 2**40),
            "Error": st.text(),
            "ErrorMessage": st.text(),
        },
    )
)
def test_any_status_renders_and_serialises(properties: dict[str, Any]) -> None:
    record = render.status_record(CONNECTION, properties)
    assert json.loads(render.to_json(record)) == record
    assert render.render_status(record, NOW).startswith("State:")


def servers() -> dict[str, dict[str, Any]]:
    return {
        "/org/vpnd/Daemon/servers/2": {
            "Url": "https://b.example.org/",
            "Host": "b.example.org",
            "Authorized": False,
            "AuthorizationPending": True,
            "SessionExpiry": 0,
        },
        SERVER: {
            "Url": "https://a.example.org/",
            "Host": "a.example.org",
            "Kind": "eduvpn-v2",
            "Authorized": True,
            "AuthorizationPending": False,
            "SessionExpiry": NOW + 2 * 86400,
        },
    }


def test_server_records_sorted_with_unix_and_iso_times() -> None:
    records = render.server_records(servers())
    assert [record["url"] for record in records] == [
        "https://a.example.org/",
        "https://b.example.org/",
    ]
    assert records[0] == {
        "url": "https://a.example.org/",
        "host": "a.example.org",
        "kind": "eduvpn-v2",
        "object_path": SERVER,
        "authorized": True,
        "authorization_pending": False,
        "session_expiry": NOW + 2 * 86400,
        "session_expiry_iso": "2023-11-16T22:13:20Z",
        "autoconnect": None,
        "display_name": None,
        "support_contact": [],
    }
    assert records[1]["session_expiry"] is None
    assert records[1]["session_expiry_iso"] is None
    assert json.loads(render.to_json(records)) == records
    marked = {SERVER: {**servers()[SERVER], "Autoconnect": "employees"}}
    (record,) = render.server_records(marked)
    assert record["autoconnect"] == "employees"
    assert "connects at start: employees" in render.render_servers([record], NOW)


def test_render_servers_table() -> None:
    lines = render.render_servers(render.server_records(servers()), NOW).splitlines()
    assert lines[0].split() == ["URL", "AUTHORIZED", "SESSION", "ENDS"]
    assert lines[1].split()[:2] == ["https://a.example.org/", "yes"]
    assert lines[1].endswith("(in 2 days)")
    assert lines[2].split() == ["https://b.example.org/", "pending", "-"]
    assert lines[0].index("AUTHORIZED") == lines[1].index("yes") == lines[2].index("pending")


def test_render_servers_empty_says_what_to_do() -> None:
    assert "vpnctl add URL" in render.render_servers([], NOW)


def test_profiles_records_and_table() -> None:
    profiles = [
        {
            "profile_id": "employees",
            "display_name": "Werknemers",
            "default_gateway": True,
            "vpn_proto_list": ["openvpn", "wireguard"],
        },
        {"profile_id": "internet", "display_name": "Internet"},
    ]
    records = render.profile_records(profiles)
    assert records[1] == {
        "profile_id": "internet",
        "display_name": "Internet",
        "default_gateway": False,
        "vpn_proto_list": [],
    }
    assert json.loads(render.to_json(records)) == records
    lines = render.render_profiles(records).splitlines()
    assert lines[0].split() == ["PROFILE", "NAME", "DEFAULT", "GATEWAY", "PROTOCOLS"]
    assert lines[1].split() == ["employees", "Werknemers", "yes", "openvpn,", "wireguard"]
    assert lines[2].split() == ["internet", "Internet", "no"]


# --- error mapping ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (
            errors.BusError(
                "org.vpnd.Error.AuthorizationRequired",
                "the server refused the saved authorization; log in to it again",
            ),
            3,
            "vpnctl: the server refused the saved authorization; log in to it again"
            " (run `vpnctl login SERVER`)",
        ),
        (
            errors.BusError("org.vpnd.Error.NotFound", "no server of yours\nmatches 'x'"),
            1,
            "vpnctl: no server of yours matches 'x' (`vpnctl list` shows the servers)",
        ),
        (errors.BusError("org.vpnd.Error.InvalidArgument", "not https"), 2, "vpnctl: not https"),
        (errors.BusError("org.vpnd.Error.NotAuthorized", "not yours"), 5, "vpnctl: not yours"),
        (errors.BusError("org.vpnd.Error.ServerError", ""), 1, "vpnctl: server error"),
        (
            errors.BusError("org.freedesktop.DBus.Error.ServiceUnknown", "The name is not..."),
            4,
            "vpnctl: " + errors.UNREACHABLE_MESSAGE,
        ),
        (
            errors.BusError("org.freedesktop.DBus.Error.Spawn.ChildExited", "exit 1"),
            4,
            "vpnctl: " + errors.UNREACHABLE_MESSAGE,
        ),
        (
            errors.BusError("org.freedesktop.DBus.Error.NoReply", "Did not receive a reply"),
            4,
            "vpnctl: " + errors.NO_ANSWER_MESSAGE,
        ),
        (
            errors.BusUnreachable(errors.UNREACHABLE_MESSAGE),
            4,
            "vpnctl: " + errors.UNREACHABLE_MESSAGE,
        ),
        (errors.UsageError("choose one with --profile"), 2, "vpnctl: choose one with --profile"),
        (errors.WaitTimeout("gave up"), 1, "vpnctl: gave up"),
        (KeyboardInterrupt(), 130, "vpnctl: interrupted"),
    ],
)
def test_describe(error: BaseException, code: int, line: str) -> None:
    assert errors.describe(error) == (code, line)


def test_describe_access_denied_hides_the_bus_jargon() -> None:
    code, line = errors.describe(
        errors.BusError(
            "org.freedesktop.DBus.Error.AccessDenied",
            'Rejected send message, 2 matched rules; type="method_call", sender=":1.9"',
        )
    )
    assert code == errors.EXIT_DENIED
    assert "permission denied" in line
    assert "matched rules" not in line


def test_describe_version_mismatch_and_unknown_errors() -> None:
    code, line = errors.describe(
        errors.BusError("org.freedesktop.DBus.Error.UnknownMethod", "No such method 'Foo'")
    )
    assert code == 1
    assert "same version" in line
    assert errors.describe(errors.BusError("com.example.Weird", "odd")) == (
        1,
        "vpnctl: odd (com.example.Weird)",
    )


@given(st.text(), st.text())
def test_describe_is_always_one_prefixed_line(name: str, message: str) -> None:
    code, line = errors.describe(errors.BusError(name, message))
    assert code in (1, 2, 3, 4, 5)
    assert line.startswith("vpnctl: ")
    assert "\n" not in line and "\r" not in line


def test_a_call_past_vpnds_limit_says_to_try_again() -> None:
    code, line = errors.describe(
        errors.BusError("org.freedesktop.DBus.Error.LimitsExceeded", "16 calls waiting")
    )
    assert (code, line) == (1, "vpnctl: " + errors.LIMITS_MESSAGE)


def test_named_error_accepts_short_and_empty_names() -> None:
    assert errors.named_error("TunnelFailed", "x").name == "org.vpnd.Error.TunnelFailed"
    assert errors.named_error("org.vpnd.Error.Busy", "x").name == "org.vpnd.Error.Busy"
    assert errors.named_error("", "x").name == "org.vpnd.Error.Failed"


# --- D-Bus plumbing -----------------------------------------------------------


def test_plain_values_unwrap_variants_at_any_depth() -> None:
    servers_reply = {SERVER: {"Url": ("s", "https://a/"), "SessionExpiry": ("t", 5)}}
    assert vbus.plain_values("a{oa{sv}}", (servers_reply,)) == (
        {SERVER: {"Url": "https://a/", "SessionExpiry": 5}},
    )
    assert vbus.plain_values("aa{sv}", ([profile("p")],)) == (
        [
            {
                "profile_id": "p",
                "display_name": "P",
                "default_gateway": True,
                "vpn_proto_list": ["openvpn"],
            }
        ],
    )
    nested = ("v", ("a{sv}", {"inner": ("(si)", ("x", 1))}))
    assert vbus.plain_values("vay", (nested, b"\x00\x01")) == ({"inner": ("x", 1)}, b"\x00\x01")
    assert vbus.plain_values("", ()) == ()


def test_subscription_rule_and_matching() -> None:
    subscription = vbus.Subscription(
        path=None, path_namespace=contract.CONNECTIONS_PATH, interface=None, member=None
    )
    rule = subscription.rule()
    assert "sender='org.vpnd.Daemon'" in rule
    assert "path_namespace='/org/vpnd/Daemon/connections'" in rule
    assert "type='signal'" in rule

    def signal(path: str) -> vbus.Signal:
        return vbus.Signal(path, contract.PROPERTIES_INTERFACE, "PropertiesChanged", ())

    assert subscription.matches(signal(CONNECTION))
    assert not subscription.matches(signal("/org/vpnd/Daemon/connectionsX/1"))
    assert not subscription.matches(signal(SERVER))
    finished = vbus.Subscription(
        path=SERVER,
        path_namespace=None,
        interface=contract.SERVER_INTERFACE,
        member="AuthorizationFinished",
    )
    assert not finished.matches(signal(SERVER))
    assert finished.matches(
        vbus.Signal(SERVER, contract.SERVER_INTERFACE, "AuthorizationFinished", (True, "", ""))
    )


def test_call_returns_plain_values_and_raises_named_errors(daemon: FakeDaemon) -> None:
    bus = vbus.DaemonBus(FakeConnection(daemon))
    assert bus.call(
        contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "FindServer", "s", "vpn"
    ) == (SERVER,)
    assert bus.get(SERVER, contract.SERVER_INTERFACE, "Host") == "vpn.example.org"
    assert bus.get_all(SERVER, contract.SERVER_INTERFACE)["Url"] == "https://vpn.example.org/"
    with pytest.raises(errors.BusError) as raised:
        bus.get_all("/nowhere", contract.SERVER_INTERFACE)
    assert raised.value.name == "org.freedesktop.DBus.Error.UnknownObject"
    assert raised.value.message == "no /nowhere"


def test_a_call_that_gets_no_answer_is_reported(daemon: FakeDaemon) -> None:
    connection = FakeConnection(daemon)
    connection.send = lambda message, serial: None  # type: ignore[method-assign]
    with pytest.raises(errors.BusUnreachable, match="did not answer"):
        vbus.DaemonBus(connection).call(
            contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "Disconnect"
        )


def test_signals_before_a_reply_are_kept_and_strangers_ignored(daemon: FakeDaemon) -> None:
    bus = vbus.DaemonBus(FakeConnection(daemon))

    def find_with_noise(path: str, query: str) -> tuple[str, tuple[Any, ...]]:
        address = DBusAddress(CONNECTION, interface=contract.CONNECTION_INTERFACE)
        stranger = new_signal(address, "StateChanged", "sss", ("connected", "", ""))
        daemon.deliver(stranger, sender=":1.99")
        daemon.emit(
            CONNECTION, contract.CONNECTION_INTERFACE, "StateChanged", "sss", ("failed", "", "")
        )
        return "o", (SERVER,)

    daemon.handlers["FindServer"] = find_with_noise
    daemon.handlers["Ping"] = lambda path: ("", ())
    bus.call(contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "Ping")
    subscription = bus.subscribe(path_namespace=contract.CONNECTIONS_PATH)
    assert any(
        "NameOwnerChanged" in rule and "arg0='org.vpnd.Daemon'" in rule
        for rule in daemon.match_rules
    )
    assert subscription.rule() in daemon.match_rules
    bus.call(contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "FindServer", "s", "vpn")
    signal = bus.next_signal(subscription, time.monotonic() + 5)
    assert (signal.path, signal.member, signal.body) == (
        CONNECTION,
        "StateChanged",
        ("failed", "", ""),
    )
    with pytest.raises(TimeoutError):
        bus.next_signal(subscription, time.monotonic() + 5)


def test_subscribe_asks_the_bus_for_the_daemon_when_it_has_not_answered_yet(
    daemon: FakeDaemon,
) -> None:
    bus = vbus.DaemonBus(FakeConnection(daemon))
    subscription = bus.subscribe(path=SERVER)
    daemon.later.append(
        lambda: daemon.emit(
            SERVER, contract.SERVER_INTERFACE, "AuthorizationFinished", "bss", (True, "", "")
        )
    )
    assert bus.next_signal(subscription, time.monotonic() + 5).body == (True, "", "")


def test_started_calls_are_answered_in_any_order_with_signals_kept(
    daemon: FakeDaemon,
) -> None:
    bus = vbus.DaemonBus(FakeConnection(daemon))
    daemon.handlers["Ping"] = lambda path: ("", ())
    bus.call(contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "Ping")
    subscription = bus.subscribe(path=SERVER)
    daemon.emit(SERVER, contract.SERVER_INTERFACE, "AuthorizationFinished", "bss", (True, "", ""))
    host = bus.start(
        SERVER, contract.PROPERTIES_INTERFACE, "Get", "ss", contract.SERVER_INTERFACE, "Host"
    )
    missing = bus.start(
        "/nowhere", contract.PROPERTIES_INTERFACE, "GetAll", "s", contract.SERVER_INTERFACE
    )
    found = bus.start(contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "FindServer", "s", "vpn")
    assert bus.result(found) == (SERVER,)
    with pytest.raises(errors.BusError, match="no /nowhere"):
        bus.result(missing)
    assert bus.result(host) == ("vpn.example.org",)
    assert bus.next_signal(subscription, time.monotonic() + 5).member == "AuthorizationFinished"
    with pytest.raises(TimeoutError):
        bus.next_signal(subscription, time.monotonic() + 5)


def test_a_subscription_the_bus_refuses_fails_the_next_wait(daemon: FakeDaemon) -> None:
    bus = vbus.DaemonBus(FakeConnection(daemon))
    answer = daemon.answer

    def refuse_matches(call: Message) -> None:
        if call.header.fields[HeaderFields.member] != "AddMatch":
            answer(call)
            return
        refusal = new_error(call, "org.freedesktop.DBus.Error.LimitsExceeded", "s", ("full",))
        daemon.deliver(refusal, BUS_DAEMON)

    daemon.answer = refuse_matches  # type: ignore[method-assign]
    bus.subscribe(path=SERVER)
    with pytest.raises(errors.BusError) as raised:
        bus.get(SERVER, contract.SERVER_INTERFACE, "Host")
    assert raised.value.name == "org.freedesktop.DBus.Error.LimitsExceeded"


def test_the_daemon_leaving_the_bus_ends_a_wait(daemon: FakeDaemon) -> None:
    daemon.handlers["Ping"] = lambda path: ("", ())
    bus = vbus.DaemonBus(FakeConnection(daemon))
    bus.call(contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "Ping")
    subscription = bus.subscribe(path_namespace=contract.CONNECTIONS_PATH)
    gone = new_signal(
        DBusAddress("/org/freedesktop/DBus", interface=BUS_DAEMON),
        "NameOwnerChanged",
        "sss",
        ("org.vpnd.Daemon", DAEMON, ""),
    )
    daemon.later.append(lambda: daemon.deliver(gone, sender=BUS_DAEMON))
    with pytest.raises(errors.BusUnreachable, match="left the system bus"):
        bus.next_signal(subscription, time.monotonic() + 5)


# --- commands against the scripted daemon -------------------------------------


def test_status_without_a_connection(daemon: FakeDaemon) -> None:
    daemon.properties[(contract.MANAGER_PATH, contract.MANAGER_INTERFACE)] = {
        "ActiveConnection": ("o", "/")
    }
    assert run(daemon, "status") == (0, "State: disconnected\n")
    code, out = run(daemon, "status", "--json")
    assert code == 0
    assert json.loads(out)["state"] == "disconnected"


def test_status_of_a_connection_that_vanished_is_disconnected(daemon: FakeDaemon) -> None:
    daemon.properties[(contract.MANAGER_PATH, contract.MANAGER_INTERFACE)] = {
        "ActiveConnection": ("o", CONNECTION)
    }
    assert run(daemon, "status") == (0, "State: disconnected\n")


def test_status_json_of_a_connection(daemon: FakeDaemon) -> None:
    daemon.properties[(contract.MANAGER_PATH, contract.MANAGER_INTERFACE)] = {
        "ActiveConnection": ("o", CONNECTION)
    }
    daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)] = connection_properties(
        State=("s", "connected"), BytesIn=("t", 2**40), ConnectedSince=("t", NOW)
    )
    code, out = run(daemon, "status", "--json")
    record = json.loads(out)
    assert (code, record["state"], record["bytes_in"]) == (0, "connected", 2**40)
    assert record["connected_since_iso"] == "2023-11-14T22:13:20Z"


def test_list_and_profiles_pass_plain_values_to_the_renderers(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon.handlers["ListServers"] = lambda path: (
        "a{oa{sv}}",
        ({SERVER: {"Url": ("s", "https://vpn.example.org/"), "Authorized": ("b", True)}},),
    )
    code, out = run(daemon, "list", "--json")
    assert code == 0
    assert json.loads(out)[0]["authorized"] is True

    locales: list[str] = []

    def get_profiles(path: str, locale: str) -> tuple[str, tuple[Any, ...]]:
        locales.append(locale)
        return "aa{sv}", ([profile("employees")],)

    daemon.handlers["GetProfiles"] = get_profiles
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LANG", "nl_NL.UTF-8")
    code, out = run(daemon, "profiles", "vpn")
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["employees", "Employees"]
    assert locales == ["nl_NL.UTF-8"]


def test_add_prints_the_url_and_the_next_step(daemon: FakeDaemon) -> None:
    added: list[str] = []

    def add_server(path: str, url: str) -> tuple[str, tuple[Any, ...]]:
        added.append(url)
        return "o", (SERVER,)

    daemon.handlers["AddServer"] = add_server
    code, out = run(daemon, "add", "https://vpn.example.org")
    assert (code, added) == (0, ["https://vpn.example.org"])
    assert out == "Added https://vpn.example.org/\nLog in with: vpnctl login vpn.example.org\n"


def test_remove_and_daemon_errors(daemon: FakeDaemon) -> None:
    removed: list[str] = []
    daemon.handlers["RemoveServer"] = lambda path, server: (removed.append(server), ("", ()))[1]
    assert run(daemon, "remove", "vpn") == (0, "Removed https://vpn.example.org/\n")
    assert removed == [SERVER]

    def not_found(path: str, query: str) -> tuple[str, tuple[Any, ...]]:
        raise errors.BusError("org.vpnd.Error.NotFound", "no server of yours matches 'nope'")

    daemon.handlers["FindServer"] = daemon.handlers["FindSystemServer"] = not_found
    assert run(daemon, "remove", "nope") == (
        1,
        "vpnctl: no server of yours matches 'nope' (`vpnctl list` shows the servers)",
    )
    # The hint names the command's own flavour.
    assert run(daemon, "--system", "remove", "nope")[1].endswith(
        "(`vpnctl --system list` shows the servers)"
    )


def test_system_flag_uses_the_system_wide_servers(daemon: FakeDaemon) -> None:
    daemon.handlers["AddSystemServer"] = lambda path, url: ("o", (SERVER,))
    daemon.handlers["ListSystemServers"] = lambda path: ("a{oa{sv}}", ({},))
    daemon.handlers["FindSystemServer"] = lambda path, query: ("o", (SERVER,))
    daemon.handlers["RemoveServer"] = lambda path, server: ("", ())
    code, out = run(daemon, "--system", "add", "https://vpn.example.org")
    assert code == 0
    assert out.endswith("Log in with: vpnctl --system login vpn.example.org\n")
    # Before or after the command, the same.
    assert run(daemon, "list", "--system", "--json")[0] == 0
    assert run(daemon, "--system", "remove", "vpn")[0] == 0
    assert run(daemon, "remove", "--system", "vpn")[0] == 0
    called = [member for _path, member, _body in daemon.calls if member not in ("Get", "GetAll")]
    assert called == [
        "AddSystemServer",
        "ListSystemServers",
        "FindSystemServer",
        "RemoveServer",
        "FindSystemServer",
        "RemoveServer",
    ]
    # Without it, the caller's own servers.
    daemon.calls.clear()
    assert run(daemon, "remove", "vpn")[0] == 0
    assert [m for _p, m, _b in daemon.calls if m not in ("Get", "GetAll")] == [
        "FindServer",
        "RemoveServer",
    ]
    assert cli.build_parser().parse_args(["status"]).system is False


def test_calls_allow_interactive_authorization_only_when_asked(daemon: FakeDaemon) -> None:
    flags: list[int] = []
    connection = FakeConnection(daemon)
    deliver = connection.send

    def send(message: Message, serial: int) -> None:
        flags.append(int(message.header.flags))
        deliver(message, serial)

    connection.send = send  # type: ignore[method-assign]
    for interactive in (False, True):
        vbus.DaemonBus(connection, interactive=interactive).call(
            contract.MANAGER_PATH, contract.MANAGER_INTERFACE, "FindServer", "s", "vpn"
        )
    # 4: ALLOW_INTERACTIVE_AUTHORIZATION, so polkit may ask for a password.
    assert [bool(f & 4) for f in flags] == [False, True]


@pytest.mark.parametrize("tty", [False, True])
def test_main_lets_polkit_ask_only_a_person_at_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tty: bool
) -> None:
    asked: list[bool] = []

    def fake_open(*, interactive: bool = False) -> vbus.DaemonBus:
        asked.append(interactive)
        raise errors.BusUnreachable(errors.UNREACHABLE_MESSAGE)

    monkeypatch.setattr(vbus.DaemonBus, "open", staticmethod(fake_open))
    monkeypatch.setattr("sys.stdin", Terminal() if tty else io.StringIO())
    assert cli.main(["status"]) == errors.EXIT_UNREACHABLE
    assert asked == [tty]


def connect_script(daemon: FakeDaemon, final: dict[str, tuple[str, Any]]) -> list[tuple[Any, ...]]:
    """Connect creates the connection and emits before and right after it answers
    (so before vpnctl reads the state); later the connection moves on to `final`."""
    connects: list[tuple[Any, ...]] = []

    def connect(path: str, profile_id: str, options: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        # The signals must be subscribed to before Connect is called.
        assert any(contract.CONNECTIONS_PATH in rule for rule in daemon.match_rules)
        connects.append((path, profile_id, options))
        daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)] = connection_properties()
        daemon.change(CONNECTION, {"State": ("s", "preparing")})
        daemon.after_reply.append(
            lambda: daemon.change(
                CONNECTION, {"State": ("s", "connecting"), "Detail": ("s", "WAIT")}
            )
        )
        daemon.later.extend(
            [
                lambda: daemon.emit(
                    "/org/vpnd/Daemon/connections/0",
                    contract.CONNECTION_INTERFACE,
                    "StateChanged",
                    "sss",
                    ("connected", "", ""),
                ),
                lambda: daemon.change(CONNECTION, {"Detail": ("s", "AUTH")}),
                lambda: daemon.change(CONNECTION, final),
            ]
        )
        return "o", (CONNECTION,)

    daemon.handlers["Connect"] = connect
    return connects


def test_connect_with_the_only_profile_follows_the_state(daemon: FakeDaemon) -> None:
    daemon.handlers["GetProfiles"] = lambda path, locale: ("aa{sv}", ([profile("employees")],))
    connects = connect_script(
        daemon,
        {"State": ("s", "connected"), "Detail": ("s", ""), "TunnelIP": ("s", "10.10.0.2")},
    )
    terminal = Terminal()
    code, out = run(daemon, "connect", "vpn", "--tcp", out=terminal)
    assert code == 0
    assert connects == [(SERVER, "employees", {"prefer_tcp": ("b", True)})]
    assert out.splitlines() == [
        "Connecting with profile employees…",
        # What came before vpnctl read the state is not replayed after it.
        "  connecting (WAIT)",
        "  connecting (AUTH)",
        "  connected",
        "Connected to https://vpn.example.org/ (profile employees), tunnel IP 10.10.0.2",
    ]


def test_connect_not_on_a_terminal_prints_one_line(daemon: FakeDaemon) -> None:
    connect_script(daemon, {"State": ("s", "connected")})
    code, out = run(daemon, "connect", "vpn", "--profile", "employees")
    assert code == 0
    assert out == "Connected to https://vpn.example.org/ (profile employees)\n"
    assert "GetProfiles" not in [call[1] for call in daemon.calls]


def test_connect_sees_a_state_reached_before_it_listened(daemon: FakeDaemon) -> None:
    def connect(path: str, profile_id: str, options: Any) -> tuple[str, tuple[Any, ...]]:
        daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)] = connection_properties(
            State=("s", "failed"),
            Error=("s", "org.vpnd.Error.AuthorizationRequired"),
            ErrorMessage=("s", "vpn refused the saved authorization; log in to it again"),
        )
        return "o", (CONNECTION,)

    daemon.handlers["Connect"] = connect
    assert run(daemon, "connect", "vpn", "--profile", "p") == (
        3,
        "vpnctl: vpn refused the saved authorization; log in to it again (run `vpnctl login vpn`)",
    )


def test_connect_failure_reports_the_error_message(daemon: FakeDaemon) -> None:
    connect_script(
        daemon,
        {
            "State": ("s", "failed"),
            "Error": ("s", "org.vpnd.Error.TunnelFailed"),
            "ErrorMessage": ("s", "openvpn exited: TLS handshake failed"),
        },
    )
    assert run(daemon, "connect", "vpn", "--profile", "p") == (
        1,
        "vpnctl: openvpn exited: TLS handshake failed",
    )


def test_connect_that_ends_disconnected_fails(daemon: FakeDaemon) -> None:
    connect_script(daemon, {"State": ("s", "disconnected")})
    code, line = run(daemon, "connect", "vpn", "--profile", "p")
    assert code == 1
    assert "closed before the tunnel came up" in line


def test_connect_times_out_with_the_state_it_is_in(daemon: FakeDaemon) -> None:
    connect_script(daemon, {"Detail": ("s", "GET_CONFIG")})
    code, line = run(daemon, "connect", "vpn", "--profile", "p", "--timeout", "7")
    assert code == 1
    assert "within 7 s (it is still connecting)" in line


def test_connect_with_several_profiles_asks_for_one(daemon: FakeDaemon) -> None:
    daemon.handlers["GetProfiles"] = lambda path, locale: (
        "aa{sv}",
        ([profile("employees"), profile("internet")],),
    )
    assert run(daemon, "connect", "vpn") == (
        2,
        "vpnctl: the server has several profiles; choose one with --profile: employees, internet",
    )


def test_connect_no_wait_returns_after_connect(daemon: FakeDaemon) -> None:
    connect_script(daemon, {"State": ("s", "connected")})
    code, out = run(daemon, "connect", "vpn", "--profile", "p", "--no-wait")
    assert code == 0
    assert "vpnctl status" in out
    assert "GetAll" not in [call[1] for call in daemon.calls]


def test_connect_rereads_invalidated_properties(daemon: FakeDaemon) -> None:
    def connect(path: str, profile_id: str, options: Any) -> tuple[str, tuple[Any, ...]]:
        properties = connection_properties()
        daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)] = properties

        def invalidate() -> None:
            properties["State"] = ("s", "connected")
            daemon.emit(
                CONNECTION,
                contract.PROPERTIES_INTERFACE,
                "PropertiesChanged",
                "sa{sv}as",
                (contract.CONNECTION_INTERFACE, {}, ["State"]),
            )

        daemon.later.append(invalidate)
        return "o", (CONNECTION,)

    daemon.handlers["Connect"] = connect
    assert run(daemon, "connect", "vpn", "--profile", "p")[0] == 0


def test_login_subscribes_first_and_reports_success(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    url = "https://vpn.example.org/oauth/authorize?state=abc"

    def authorize(path: str) -> tuple[str, tuple[Any, ...]]:
        assert any("member='AuthorizationFinished'" in rule for rule in daemon.match_rules)
        daemon.later.append(
            lambda: daemon.emit(
                SERVER, contract.SERVER_INTERFACE, "AuthorizationFinished", "bss", (True, "", "")
            )
        )
        return "s", (url,)

    daemon.handlers["Authorize"] = authorize
    code, out = run(daemon, "login", "vpn")
    assert code == 0
    assert opened == [url]
    assert out.splitlines() == [
        "Opening the login page in your browser. If nothing opens, visit:",
        url,
        "Logged in to https://vpn.example.org/",
    ]


def test_login_failure_and_timeout(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("webbrowser.open", lambda url: pytest.fail("--no-browser opened one"))

    def authorize(path: str) -> tuple[str, tuple[Any, ...]]:
        daemon.later.append(
            lambda: daemon.emit(
                SERVER,
                contract.SERVER_INTERFACE,
                "AuthorizationFinished",
                "bss",
                (False, "org.vpnd.Error.AuthorizationFailed", "the server said: access_denied"),
            )
        )
        return "s", ("https://vpn.example.org/authorize",)

    daemon.handlers["Authorize"] = authorize
    assert run(daemon, "login", "vpn", "--no-browser") == (
        1,
        "vpnctl: the server said: access_denied (run `vpnctl login vpn` to try again)",
    )
    daemon.handlers["Authorize"] = lambda path: ("s", ("https://vpn.example.org/authorize",))
    code, line = run(daemon, "login", "vpn", "--no-browser", "--timeout", "3")
    assert code == 1
    assert "did not finish within 3 s" in line
    assert "vpnctl login vpn" in line


def test_disconnect_waits_for_disconnected(daemon: FakeDaemon) -> None:
    daemon.properties[(contract.MANAGER_PATH, contract.MANAGER_INTERFACE)] = {
        "ActiveConnection": ("o", CONNECTION)
    }
    daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)] = connection_properties(
        State=("s", "connected")
    )

    def disconnect(path: str) -> tuple[str, tuple[Any, ...]]:
        daemon.later.extend(
            [
                lambda: daemon.change(CONNECTION, {"State": ("s", "disconnecting")}),
                lambda: daemon.change(CONNECTION, {"State": ("s", "disconnected")}),
            ]
        )
        return "", ()

    daemon.handlers["Disconnect"] = disconnect
    assert run(daemon, "disconnect") == (0, "Disconnected.\n")
    assert daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)]["State"] == (
        "s",
        "disconnected",
    )
    assert run(daemon, "disconnect") == (0, "Not connected.\n")
    assert [call[1] for call in daemon.calls].count("Disconnect") == 1


# --- messages -------------------------------------------------------------


def message(kind: str, text: str, when: int, begin: int = 0, end: int = 0) -> dict[str, Any]:
    return {
        "type": ("s", kind),
        "text": ("s", text),
        "date_time": ("t", when),
        "begin": ("t", begin),
        "end": ("t", end),
    }


def test_messages_of_one_server_and_of_all(daemon: FakeDaemon) -> None:
    daemon.properties[(SERVER, contract.SERVER_INTERFACE)]["Kind"] = ("s", "eduvpn-v2")
    daemon.handlers["GetMessages"] = lambda path, locale: (
        "aa{sv}",
        ([message("motd", "Welcome", NOW), message("maintenance", "Upgrade", NOW + 60,
                                                   NOW + 3600, NOW + 7200)],),
    )  # fmt: skip
    code, out = run(daemon, "messages", "vpn", "--json")
    assert code == 0
    records = json.loads(out)
    assert [r["type"] for r in records] == ["maintenance", "motd"]  # newest first
    assert records[0]["server_url"] == "https://vpn.example.org/"
    assert records[0]["begin_iso"] == "2023-11-14T23:13:20Z"
    assert records[1]["begin"] is None
    daemon.handlers["ListServers"] = lambda path: (
        "a{oa{sv}}",
        ({SERVER: {"Url": ("s", "https://vpn.example.org/")}},),
    )
    code, human = run(daemon, "messages")
    assert code == 0
    assert "Welcome" in human and "maintenance from" in human
    daemon.handlers["GetMessages"] = lambda path, locale: ("aa{sv}", ([],))
    assert run(daemon, "messages", "vpn") == (0, "No messages.\n")


def test_connect_shows_the_message_of_the_day(daemon: FakeDaemon) -> None:
    daemon.properties[(SERVER, contract.SERVER_INTERFACE)]["Kind"] = ("s", "eduvpn-v2")
    daemon.handlers["GetMessages"] = lambda path, locale: (
        "aa{sv}",
        ([message("motd", "Be nice to the network", NOW), message("notification", "x", NOW)],),
    )

    def connect(path: str, profile_id: str, options: Any) -> tuple[str, tuple[Any, ...]]:
        daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)] = connection_properties(
            State=("s", "connected"), TunnelIP=("s", "10.0.0.2")
        )
        return "o", (CONNECTION,)

    daemon.handlers["Connect"] = connect
    code, out = run(daemon, "connect", "vpn", "--profile", "p")
    assert code == 0
    assert out.splitlines()[-1] == "Be nice to the network"
    assert "x" not in out.splitlines()


# --- the program around main() ----------------------------------------------


def run_program(
    prelude: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m vpnctl ARGV` in a child, after `prelude` (Python) ran in it; its
    output buffered as a person's would be."""
    code = f"import sys\n{prelude}\nsys.argv[1:] = {list(argv)!r}\nimport vpnctl.__main__\n"
    environ = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_program_writes_all_its_output_and_exits_with_mains_status() -> None:
    fake_main = (
        "import vpnctl.cli\n"
        "def main():\n"
        "    sys.stdout.write('x' * 1000)\n"
        "    sys.stderr.write('vpnctl: half\\n')\n"
        "    return 3\n"
        "vpnctl.cli.main = main"
    )
    result = run_program(fake_main)
    assert (result.returncode, len(result.stdout), result.stderr) == (3, 1000, "vpnctl: half\n")


AT_EXIT = "import atexit\natexit.register(print, 'at exit')"
THREAD = (
    "import threading, time\n"
    "threading.Thread(target=lambda: (time.sleep(0.2), print('at exit'))).start()"
)


@pytest.mark.parametrize("waiting", [AT_EXIT, THREAD])
def test_the_program_ends_the_usual_way_when_something_waits_for_the_end(waiting: str) -> None:
    fake_main = f"import vpnctl.cli\n{waiting}\nvpnctl.cli.main = lambda: 5"
    result = run_program(fake_main)
    assert (result.returncode, result.stdout) == (5, "at exit\n")


def test_the_program_without_a_bus(tmp_path: Any) -> None:
    address = f"unix:path={tmp_path}/no-such-socket"
    result = run_program("", "status", env={"DBUS_SYSTEM_BUS_ADDRESS": address})
    assert (result.returncode, result.stdout, result.stderr) == (
        errors.EXIT_UNREACHABLE,
        "",
        "vpnctl: " + errors.UNREACHABLE_MESSAGE + "\n",
    )
