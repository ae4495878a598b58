"""The life cycle of one connection. Pure: no I/O.

Everything that moves a connection from one state to another lives in this
table. The manager feeds it events (its own steps and openvpn's states) and
publishes the result; an event the table does not allow raises
InvalidTransition instead of silently leaving the connection somewhere odd.
"""

from __future__ import annotations

from enum import StrEnum

from vpnd.errors import VpndError


class State(StrEnum):
    """Connection states as published on D-Bus (Connection1.State)."""

    PREPARING = "preparing"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    # openvpn waits for a person: a password, a challenge, a login in the browser.
    NEEDS_INPUT = "needs-input"
    RECONNECTING = "reconnecting"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"
    FAILED = "failed"


class Event(StrEnum):
    """What can happen to a connection."""

    CONFIG_READY = "config-ready"  # the server issued a config, openvpn is started
    PROGRESS = "progress"  # openvpn reports a step (WAIT, AUTH, GET_CONFIG, ...)
    UP = "up"  # openvpn reports CONNECTED
    LOST = "lost"  # openvpn reports RECONNECTING
    STOP = "stop"  # the user asked to disconnect
    STOPPED = "stopped"  # everything is torn down after STOP
    FAIL = "fail"  # an error ended the connection
    ASK = "ask"  # openvpn asks a person something
    ANSWERED = "answered"  # the question was answered, or no longer needs one
    RETRY = "retry"  # the tunnel ended; vpnd starts another after a pause


class InvalidTransition(VpndError):
    """An event arrived that the connection's current state does not allow."""


TERMINAL = frozenset({State.DISCONNECTED, State.FAILED})

_ACTIVE = (
    State.PREPARING,
    State.CONNECTING,
    State.CONNECTED,
    State.RECONNECTING,
    State.NEEDS_INPUT,
)

TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.PREPARING, Event.CONFIG_READY): State.CONNECTING,
    (State.CONNECTING, Event.PROGRESS): State.CONNECTING,
    (State.CONNECTING, Event.LOST): State.CONNECTING,
    (State.CONNECTING, Event.UP): State.CONNECTED,
    (State.CONNECTED, Event.LOST): State.RECONNECTING,
    # openvpn may restart its handshake without announcing RECONNECTING first.
    (State.CONNECTED, Event.PROGRESS): State.RECONNECTING,
    (State.RECONNECTING, Event.PROGRESS): State.RECONNECTING,
    (State.RECONNECTING, Event.LOST): State.RECONNECTING,
    (State.RECONNECTING, Event.UP): State.CONNECTED,
    # A question can come while connecting, on a reconnect (a new login after
    # a session token ran out) and in place of an earlier one.
    (State.CONNECTING, Event.ASK): State.NEEDS_INPUT,
    (State.RECONNECTING, Event.ASK): State.NEEDS_INPUT,
    (State.CONNECTED, Event.ASK): State.NEEDS_INPUT,
    (State.NEEDS_INPUT, Event.ASK): State.NEEDS_INPUT,
    (State.NEEDS_INPUT, Event.ANSWERED): State.CONNECTING,
    # A login in the browser runs while openvpn reports AUTH_PENDING.
    (State.NEEDS_INPUT, Event.PROGRESS): State.NEEDS_INPUT,
    (State.NEEDS_INPUT, Event.LOST): State.NEEDS_INPUT,
    (State.NEEDS_INPUT, Event.UP): State.CONNECTED,
    # While tearing down, openvpn's last words change nothing.
    (State.DISCONNECTING, Event.PROGRESS): State.DISCONNECTING,
    (State.DISCONNECTING, Event.LOST): State.DISCONNECTING,
    (State.DISCONNECTING, Event.UP): State.DISCONNECTING,
    (State.DISCONNECTING, Event.STOP): State.DISCONNECTING,
    (State.DISCONNECTING, Event.ASK): State.DISCONNECTING,
    (State.DISCONNECTING, Event.ANSWERED): State.DISCONNECTING,
    (State.DISCONNECTING, Event.STOPPED): State.DISCONNECTED,
    # A failure while tearing down still ends as a disconnect the user asked for.
    (State.DISCONNECTING, Event.FAIL): State.DISCONNECTED,
    **{(state, Event.RETRY): State.RECONNECTING for state in _ACTIVE[1:]},
    (State.DISCONNECTING, Event.RETRY): State.DISCONNECTING,
    **{(state, Event.STOP): State.DISCONNECTING for state in _ACTIVE},
    **{(state, Event.FAIL): State.FAILED for state in _ACTIVE},
}


class ConnectionMachine:
    """The state of one connection, moved only through TRANSITIONS."""

    def __init__(self) -> None:
        self.state = State.PREPARING

    @property
    def finished(self) -> bool:
        """True once the connection reached a terminal state."""
        return self.state in TERMINAL

    def handle(self, event: Event) -> State:
        """Apply an event; return the new state or raise InvalidTransition."""
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidTransition(
                f"a connection that is {self.state} cannot take the event {event}"
            ) from None
        return self.state
