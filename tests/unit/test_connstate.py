"""The connection state machine: its table, not a socket in sight."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnd.protocols.connstate import (
    TERMINAL,
    TRANSITIONS,
    ConnectionMachine,
    Event,
    InvalidTransition,
    State,
)


def run(*events: Event) -> State:
    machine = ConnectionMachine()
    for event in events:
        machine.handle(event)
    return machine.state


def test_a_connection_starts_preparing() -> None:
    assert ConnectionMachine().state is State.PREPARING


def test_the_happy_path() -> None:
    assert run(Event.CONFIG_READY, Event.PROGRESS, Event.PROGRESS, Event.UP) is State.CONNECTED


def test_losing_the_peer_and_coming_back() -> None:
    assert run(Event.CONFIG_READY, Event.UP, Event.LOST) is State.RECONNECTING
    assert (
        run(Event.CONFIG_READY, Event.UP, Event.LOST, Event.PROGRESS, Event.UP) is State.CONNECTED
    )


def test_disconnect_from_every_active_state_ends_disconnected() -> None:
    for prefix in ([], [Event.CONFIG_READY], [Event.CONFIG_READY, Event.UP]):
        assert run(*prefix, Event.STOP) is State.DISCONNECTING
        assert run(*prefix, Event.STOP, Event.STOPPED) is State.DISCONNECTED


def test_a_failure_while_disconnecting_is_still_a_disconnect() -> None:
    assert run(Event.CONFIG_READY, Event.STOP, Event.FAIL) is State.DISCONNECTED


def test_failure_is_terminal() -> None:
    machine = ConnectionMachine()
    machine.handle(Event.FAIL)
    assert machine.finished
    for event in Event:
        with pytest.raises(InvalidTransition):
            machine.handle(event)
    assert machine.state is State.FAILED


def test_openvpn_up_before_a_config_is_impossible() -> None:
    with pytest.raises(InvalidTransition, match="preparing"):
        run(Event.UP)


@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_any_event_sequence_stays_in_the_table(events: list[Event]) -> None:
    machine = ConnectionMachine()
    for event in events:
        before = machine.state
        try:
            after = machine.handle(event)
        except InvalidTransition:
            assert (before, event) not in TRANSITIONS
            assert machine.state is before
            continue
        assert TRANSITIONS[(before, event)] is after
        assert machine.finished == (after in TERMINAL)


def test_terminal_states_have_no_way_out() -> None:
    assert not [key for key in TRANSITIONS if key[0] in TERMINAL]
