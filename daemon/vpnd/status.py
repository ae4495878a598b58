"""What vpnd is doing, in one line for systemd (`STATUS=`, shown by `systemctl status`).

`StatusLine` sits between the manager and the bus frontend: it passes every
change on unchanged and, when the connection's state changes, tells the
service manager in words a person reads.
"""

from __future__ import annotations

from collections.abc import Callable

from vpnd.errors import VpndError
from vpnd.manager import Connection, Listener, Server
from vpnd.protocols.connstate import State

#: The line while no connection is active.
IDLE = "Serving on the system bus"


def describe(connection: Connection) -> str:
    """The STATUS= line for a connection's current state."""
    host = connection.server.host
    state = connection.state
    if state is State.CONNECTED:
        return f"Connected to {host} (profile {connection.profile_id})"
    if state is State.NEEDS_INPUT:
        return f"Connecting to {host}: waiting for a person to answer a question"
    if state is State.RECONNECTING:
        why = f": {connection.detail}" if connection.detail else ""
        return f"Reconnecting to {host}{why}"
    if state in (State.PREPARING, State.CONNECTING):
        return f"Connecting to {host}"
    if state is State.DISCONNECTING:
        return f"Disconnecting from {host}"
    if state is State.FAILED:
        return f"Connection to {host} failed: {connection.error_message}"
    return IDLE


class StatusLine:
    """A Listener that reports connection states to `notify` and passes
    everything on to `inner`."""

    def __init__(self, inner: Listener, notify: Callable[[str], None]) -> None:
        self._inner = inner
        self._notify = notify
        self._last = ""

    def _say(self, line: str) -> None:
        if line != self._last:
            self._last = line
            self._notify(f"STATUS={line}")

    def server_added(self, server: Server) -> None:
        self._inner.server_added(server)

    def server_removed(self, server: Server) -> None:
        self._inner.server_removed(server)

    def server_changed(self, server: Server, fields: set[str]) -> None:
        self._inner.server_changed(server, fields)

    def authorization_finished(self, server: Server, error: VpndError | None) -> None:
        self._inner.authorization_finished(server, error)

    def connection_added(self, connection: Connection) -> None:
        self._inner.connection_added(connection)

    def connection_removed(self, connection: Connection) -> None:
        self._inner.connection_removed(connection)

    def session_expiring(self, connection: Connection, seconds_left: int) -> None:
        self._inner.session_expiring(connection, seconds_left)
        if seconds_left:
            hours = seconds_left / 3600
            when = f"{hours:.0f} h" if hours >= 1 else f"{seconds_left // 60} min"
            self._say(f"Connected to {connection.server.host}; the VPN session ends in {when}")

    def connection_changed(self, connection: Connection, fields: set[str]) -> None:
        self._inner.connection_changed(connection, fields)
        if fields & {"state", "detail"}:
            self._say(describe(connection))
