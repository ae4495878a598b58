"""`vpnctl status --watch` against the scripted daemon of test_vpnctl: a line per change,
no line for traffic alone, a replaced connection followed, Ctrl-C and vpnd leaving."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from jeepney import DBusAddress, Message
from jeepney.wrappers import new_signal

from tests.unit.test_vpnctl import (
    BUS_DAEMON,
    CONNECTION,
    DAEMON,
    FakeConnection,
    FakeDaemon,
    Terminal,
    connection_properties,
)
from vpnctl import bus as vbus
from vpnctl import cli, contract, errors, render, watch

SECOND = "/org/vpnd/Daemon/connections/2"


class StrictConnection(FakeConnection):
    """A connection on which a wait with nothing left to happen is a test error, not a
    timeout: the watcher would wait for ever."""

    def receive(self, *, timeout: float) -> Message:
        if not self.daemon.inbox and not self.daemon.later:
            raise AssertionError("the watcher waits, and the script has nothing more")
        return super().receive(timeout=timeout)


def watch_run(daemon: FakeDaemon, *argv: str, out: io.StringIO | None = None) -> tuple[int, str]:
    out = out if out is not None else io.StringIO()
    args = cli.build_parser().parse_args(["status", "--watch", *argv])
    bus = vbus.DaemonBus(StrictConnection(daemon))
    try:
        return cli.run(bus, args, out), out.getvalue()
    except (errors.VpnctlError, errors.BusError) as error:
        code, line = cli.failure(error, args)
        return code, out.getvalue() + line


def activate(daemon: FakeDaemon, path: str, **properties: tuple[str, Any]) -> None:
    """A new connection, and ActiveConnection moving to it, as vpnd announces them."""
    daemon.properties[(path, contract.CONNECTION_INTERFACE)] = connection_properties(**properties)
    daemon.properties[(contract.MANAGER_PATH, contract.MANAGER_INTERFACE)]["ActiveConnection"] = (
        "o",
        path,
    )
    daemon.emit(
        contract.MANAGER_PATH,
        contract.PROPERTIES_INTERFACE,
        "PropertiesChanged",
        "sa{sv}as",
        (contract.MANAGER_INTERFACE, {"ActiveConnection": ("o", path)}, []),
    )


def leave(daemon: FakeDaemon) -> None:
    gone = new_signal(
        DBusAddress("/org/freedesktop/DBus", interface=BUS_DAEMON),
        "NameOwnerChanged",
        "sss",
        ("org.vpnd.Daemon", DAEMON, ""),
    )
    daemon.deliver(gone, sender=BUS_DAEMON)


def interrupt() -> None:
    raise KeyboardInterrupt


@pytest.fixture
def daemon() -> FakeDaemon:
    fake = FakeDaemon()
    fake.properties[(contract.MANAGER_PATH, contract.MANAGER_INTERFACE)] = {
        "ActiveConnection": ("o", "/")
    }
    return fake


def session(daemon: FakeDaemon, end: Callable[[], None]) -> None:
    """No connection; one comes, connects (traffic flows), fails over to a second one
    that is disconnected; then `end`."""
    daemon.later.extend(
        [
            lambda: activate(daemon, CONNECTION),
            lambda: daemon.change(
                CONNECTION, {"State": ("s", "connecting"), "Detail": ("s", "WAIT")}
            ),
            # StateChanged repeats what PropertiesChanged said: no second line.
            lambda: daemon.emit(
                CONNECTION,
                contract.CONNECTION_INTERFACE,
                "StateChanged",
                "sss",
                ("connecting", "", ""),
            ),
            lambda: daemon.change(
                CONNECTION,
                {
                    "State": ("s", "connected"),
                    "Detail": ("s", ""),
                    "TunnelIP": ("s", "10.10.0.2"),
                    "ConnectedSince": ("t", 1_700_000_000),
                },
            ),
            lambda: daemon.change(CONNECTION, {"BytesIn": ("t", 4096), "BytesOut": ("t", 512)}),
            lambda: daemon.change(CONNECTION, {"BytesIn": ("t", 8192)}),
            # A server's change is not the connection's.
            lambda: daemon.emit(
                "/org/vpnd/Daemon/servers/1",
                contract.PROPERTIES_INTERFACE,
                "PropertiesChanged",
                "sa{sv}as",
                (contract.SERVER_INTERFACE, {"Authorized": ("b", False)}, []),
            ),
            lambda: daemon.change(
                CONNECTION,
                {
                    "State": ("s", "failed"),
                    "Error": ("s", "org.vpnd.Error.TunnelFailed"),
                    "ErrorMessage": ("s", "openvpn exited:\nTLS handshake failed"),
                },
            ),
            lambda: activate(daemon, SECOND, State=("s", "preparing"), Profile=("s", "guests")),
            # The old connection's last words come late; it is no longer followed.
            lambda: daemon.change(CONNECTION, {"State": ("s", "disconnected")}),
            lambda: daemon.change(SECOND, {"State": ("s", "disconnected")}),
            end,
        ]
    )


def test_watch_json_prints_a_status_record_per_change(daemon: FakeDaemon) -> None:
    session(daemon, lambda: leave(daemon))
    code, out = watch_run(daemon, "--json")
    *lines, last = out.splitlines()
    assert code == errors.EXIT_UNREACHABLE
    assert "vpnd left the system bus" in last
    records = [json.loads(line) for line in lines]
    keys = set(render.status_record(None, None))
    assert all(set(record) == keys for record in records)
    assert [(r["connection"], r["state"], r["detail"]) for r in records] == [
        (None, "disconnected", None),
        (CONNECTION, "preparing", None),
        (CONNECTION, "connecting", "WAIT"),
        (CONNECTION, "connected", None),
        (CONNECTION, "failed", None),
        (SECOND, "preparing", None),
        (SECOND, "disconnected", None),
    ]
    connected = records[3]
    assert (connected["tunnel_ip"], connected["connected_since_iso"]) == (
        "10.10.0.2",
        "2023-11-14T22:13:20Z",
    )
    # The counters are current in the next line printed.
    assert records[4]["bytes_in"] == 8192
    assert records[4]["error_message"] == "openvpn exited:\nTLS handshake failed"
    assert records[5]["profile"] == "guests"


def test_watch_for_people_is_a_line_per_change_and_ctrl_c_ends_it_quietly(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    session(daemon, interrupt)
    code, out = watch_run(daemon, out=Terminal())
    assert code == errors.EXIT_INTERRUPTED
    lines = out.splitlines()
    # Local time first; what follows is all that changed.
    assert all(line[2] == ":" and line[5] == ":" and line[8:10] == "  " for line in lines)
    shown = [line[10:] for line in lines]
    assert shown == [
        "disconnected",
        "preparing  https://vpn.example.org/ profile employees",
        "connecting (WAIT)  https://vpn.example.org/ profile employees",
        "connected  tunnel IP 10.10.0.2  https://vpn.example.org/ profile employees",
        "failed  error: openvpn exited: TLS handshake failed"
        "  https://vpn.example.org/ profile employees",
        "preparing  https://vpn.example.org/ profile guests",
        "disconnected  https://vpn.example.org/ profile guests",
    ]
    assert "\033[" not in out


def test_watch_colours_the_state_on_a_terminal_only(
    daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    record = render.status_record(
        CONNECTION, {"State": "connected", "ServerUrl": "https://vpn.example.org/"}
    )
    assert "\033[32mconnected\033[0m" in watch.watch_line(record, 0, colour=True)
    assert "\033[" not in watch.watch_line(record, 0, colour=False)
    assert watch.use_colour(Terminal(), {"TERM": "xterm"})
    assert not watch.use_colour(io.StringIO(), {"TERM": "xterm"})
    assert not watch.use_colour(Terminal(), {"TERM": "xterm", "NO_COLOR": "1"})
    assert watch.use_colour(Terminal(), {"TERM": "xterm", "NO_COLOR": ""})
    assert not watch.use_colour(Terminal(), {"TERM": "dumb"})
    daemon.later.append(interrupt)
    code, out = watch_run(daemon, out=Terminal())
    assert code == errors.EXIT_INTERRUPTED
    assert "\033[" not in out  # "disconnected" has no colour of its own
    monkeypatch.setenv("NO_COLOR", "yes")
    activate(daemon, CONNECTION, State=("s", "connected"))
    daemon.later.append(interrupt)
    code, out = watch_run(daemon, out=Terminal())
    assert (code, "\033[" in out) == (errors.EXIT_INTERRUPTED, False)


def test_watch_starts_with_the_connection_there_is_and_rereads_invalidated_properties(
    daemon: FakeDaemon,
) -> None:
    activate(daemon, CONNECTION, State=("s", "connected"), TunnelIP=("s", "10.10.0.2"))
    # What was queued before the first read is older than it.
    daemon.inbox.clear()

    def invalidate() -> None:
        daemon.properties[(CONNECTION, contract.CONNECTION_INTERFACE)]["State"] = (
            "s",
            "reconnecting",
        )
        daemon.emit(
            CONNECTION,
            contract.PROPERTIES_INTERFACE,
            "PropertiesChanged",
            "sa{sv}as",
            (contract.CONNECTION_INTERFACE, {}, ["State"]),
        )

    def invalidate_active() -> None:
        daemon.properties[(contract.MANAGER_PATH, contract.MANAGER_INTERFACE)][
            "ActiveConnection"
        ] = ("o", "/")
        daemon.emit(
            contract.MANAGER_PATH,
            contract.PROPERTIES_INTERFACE,
            "PropertiesChanged",
            "sa{sv}as",
            (contract.MANAGER_INTERFACE, {}, ["ActiveConnection"]),
        )

    daemon.later.extend([invalidate, invalidate_active, lambda: leave(daemon)])
    code, out = watch_run(daemon, "--json")
    records = [json.loads(line) for line in out.splitlines()[:-1]]
    assert code == errors.EXIT_UNREACHABLE
    assert [(r["connection"], r["state"]) for r in records] == [
        (CONNECTION, "connected"),
        (CONNECTION, "reconnecting"),
        (None, "disconnected"),
    ]


def test_a_connection_gone_before_it_was_read_counts_as_none(daemon: FakeDaemon) -> None:
    def vanished() -> None:
        activate(daemon, SECOND)
        del daemon.properties[(SECOND, contract.CONNECTION_INTERFACE)]

    daemon.later.extend([vanished, interrupt])
    code, out = watch_run(daemon, "--json")
    assert code == errors.EXIT_INTERRUPTED
    # Nothing new to say: no connection before, none readable now.
    assert [json.loads(line)["state"] for line in out.splitlines()] == ["disconnected"]


def test_drop_keeps_the_signals_of_other_objects() -> None:
    subscription = vbus.Subscription(
        path=None, path_namespace=contract.MANAGER_PATH, interface=None, member=None
    )
    for path in (CONNECTION, contract.MANAGER_PATH, CONNECTION, SECOND):
        subscription.queue.append(vbus.Signal(path, "i", "m", ()))
    subscription.drop(CONNECTION)
    assert [signal.path for signal in subscription.queue] == [contract.MANAGER_PATH, SECOND]


def test_watch_is_an_option_of_status_only() -> None:
    assert cli.build_parser().parse_args(["status", "--watch", "--json"]).watch is True
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["list", "--watch"])


def test_changes_older_than_a_fresh_read_are_not_replayed(daemon: FakeDaemon) -> None:
    def burst() -> None:
        # All of it reaches vpnctl before it reads the new connection.
        activate(daemon, CONNECTION)
        daemon.change(CONNECTION, {"State": ("s", "connecting")})
        daemon.change(CONNECTION, {"State": ("s", "connected"), "TunnelIP": ("s", "10.10.0.2")})

    daemon.later.extend([burst, interrupt])
    code, out = watch_run(daemon, "--json")
    assert code == errors.EXIT_INTERRUPTED
    assert [json.loads(line)["state"] for line in out.splitlines()] == [
        "disconnected",
        "connected",
    ]
