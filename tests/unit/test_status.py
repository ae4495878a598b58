"""The STATUS= line systemd shows for vpnd (vpnd.status)."""

from __future__ import annotations

from typing import Any

from vpnd.manager import Connection, Server
from vpnd.protocols.connstate import Event
from vpnd.status import IDLE, StatusLine, describe
from vpnd.store.store import ServerRecord


class Inner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def connection() -> Connection:
    record = ServerRecord("abc", 0, "https://vpn.example.org/", 0.0, "eduvpn-v3")
    return Connection(1, Server(record), "employees", prefer_tcp=False)


async def test_each_state_has_a_line_and_repeats_are_not_sent() -> None:
    sent: list[str] = []
    inner = Inner()
    line = StatusLine(inner, sent.append)  # type: ignore[arg-type]
    conn = connection()
    line.connection_changed(conn, {"state"})
    conn.machine.handle(Event.CONFIG_READY)
    line.connection_changed(conn, {"state"})
    line.connection_changed(conn, {"detail"})  # openvpn's steps: same line, not repeated
    conn.machine.handle(Event.UP)
    line.connection_changed(conn, {"state"})
    line.connection_changed(conn, {"bytes_in", "bytes_out"})
    conn.machine.handle(Event.RETRY)
    conn.detail = "openvpn stopped: killed by signal 9"
    line.connection_changed(conn, {"state", "detail"})
    assert sent == [
        "STATUS=Connecting to vpn.example.org",
        "STATUS=Connected to vpn.example.org (profile employees)",
        "STATUS=Reconnecting to vpn.example.org: openvpn stopped: killed by signal 9",
    ]
    # Everything reaches the bus frontend as it came.
    assert [name for name, _ in inner.calls].count("connection_changed") == 6


async def test_waiting_for_a_person_and_the_end_are_said() -> None:
    conn = connection()
    conn.machine.handle(Event.CONFIG_READY)
    conn.machine.handle(Event.ASK)
    assert "waiting for a person" in describe(conn)
    conn.machine.handle(Event.FAIL)
    conn.error_message = "the server refused the user name or password"
    assert describe(conn).endswith("failed: the server refused the user name or password")
    other = connection()
    other.machine.handle(Event.STOP)
    other.machine.handle(Event.STOPPED)
    assert describe(other) == IDLE
