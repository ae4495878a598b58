"""Access rules, the gate, argument checks, the caller table and the declared API, without a bus."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageFlag, MessageType, Variant
from hypothesis import given
from hypothesis import strategies as st

from vpnd.bus import polkit, spec, validate
from vpnd.bus.access import READ_MEMORY, Gate, needed_actions
from vpnd.bus.caller import Call, Callers
from vpnd.bus.polkit import Decision, PolkitUnavailable
from vpnd.errors import InvalidArgument, NotAuthorized

ALICE, BOB = 1000, 1001
SYSTEM = 0
CONNECT, OWN, ADMIN = polkit.CONNECT, polkit.MANAGE_OWN_SERVERS, polkit.MANAGE_SYSTEM_SERVERS


# -- the rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "owner", "action", "needed"),
    [
        (0, ALICE, CONNECT, ()),  # root: everything, no polkit
        (0, SYSTEM, OWN, ()),
        (ALICE, ALICE, None, ()),  # reading one's own
        (ALICE, ALICE, OWN, (OWN,)),
        (ALICE, ALICE, CONNECT, (CONNECT,)),
        (ALICE, SYSTEM, None, (ADMIN,)),  # system-wide servers: administrators only
        (ALICE, SYSTEM, OWN, (ADMIN,)),
        (ALICE, SYSTEM, CONNECT, (ADMIN, CONNECT)),
    ],
)
def test_needed_actions(uid: int, owner: int, action: str | None, needed: tuple[str, ...]) -> None:
    assert needed_actions(uid, owner, action) == needed


@pytest.mark.parametrize("action", [None, OWN, CONNECT, ADMIN])
def test_another_users_objects_are_out_of_reach_whatever_polkit_says(action: str | None) -> None:
    with pytest.raises(NotAuthorized):
        needed_actions(BOB, ALICE, action)


# -- the gate ------------------------------------------------------------------


class FakeAuthority:
    def __init__(self, decisions: dict[str, Decision] | None = None) -> None:
        self.decisions = decisions or {}
        self.down = False
        self.asked: list[tuple[str, str, bool]] = []

    async def check(self, sender: str, action: str, *, interactive: bool) -> Decision:
        self.asked.append((sender, action, interactive))
        if self.down:
            raise PolkitUnavailable("no polkit")
        return self.decisions.get(action, Decision(False))


class FakeBus:
    """Answers GetConnectionUnixUser from a table; records match rules and handlers."""

    def __init__(self, uids: dict[str, int]) -> None:
        self.uids = uids
        self.asked: list[str] = []
        self.handlers: list[Any] = []

    async def call(self, message: Message) -> Message:
        if message.member == "AddMatch":
            return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1)
        name = message.body[0]
        self.asked.append(name)
        if name not in self.uids:
            return Message(
                message_type=MessageType.ERROR,
                reply_serial=1,
                error_name="org.freedesktop.DBus.Error.NameHasNoOwner",
            )
        return Message(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=1,
            signature="u",
            body=[self.uids[name]],
        )

    def add_message_handler(self, handler: Any) -> None:
        self.handlers.append(handler)


def incoming(sender: str, *, interactive: bool = False) -> Message:
    flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE
    return Message(
        path="/org/vpnd/Daemon",
        interface=spec.MANAGER1,
        member="ListServers",
        sender=sender,
        flags=flags,
    )


def name_left(name: str) -> Message:
    return Message(
        message_type=MessageType.SIGNAL,
        sender="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="NameOwnerChanged",
        signature="sss",
        body=[name, name, ""],
    )


async def test_the_gate_asks_polkit_only_what_the_rules_need_and_passes_interaction_on() -> None:
    authority = FakeAuthority({CONNECT: Decision(True)})
    gate = Gate(Callers(FakeBus({})), authority)  # type: ignore[arg-type]
    call = Call(incoming(":1.1", interactive=True), ALICE)
    await gate.require(call, ALICE)
    assert authority.asked == [] and call.checked
    await gate.require(call, ALICE, CONNECT)
    assert authority.asked == [(":1.1", CONNECT, True)]


async def test_the_gate_refuses_what_polkit_refuses_and_what_it_cannot_ask() -> None:
    authority = FakeAuthority({OWN: Decision(False, challenge=True)})
    gate = Gate(Callers(FakeBus({})), authority)  # type: ignore[arg-type]
    call = Call(incoming(":1.1"), ALICE)
    with pytest.raises(NotAuthorized, match="administrator's password"):
        await gate.require(call, ALICE, OWN)
    assert not call.checked
    authority.down = True
    with pytest.raises(NotAuthorized, match="cannot ask polkit"):
        await gate.require(call, ALICE, CONNECT)
    with pytest.raises(NotAuthorized, match="another user"):
        await gate.require(call, BOB)
    # Root is not asked about, and so not refused, even with polkit down.
    await gate.require(Call(incoming(":1.2"), 0), ALICE, CONNECT)


async def test_may_read_never_prompts_and_marks_administrators() -> None:
    callers = Callers(FakeBus({":1.1": ALICE, ":1.2": BOB}))  # type: ignore[arg-type]
    authority = FakeAuthority({ADMIN: Decision(True)})
    gate = Gate(callers, authority)
    alice = await callers.identify(incoming(":1.1", interactive=True))
    assert await gate.may_read(alice, SYSTEM)
    assert authority.asked == [(":1.1", ADMIN, False)]
    assert not await gate.may_read(alice, BOB)
    assert ":1.1" in callers.recipients(SYSTEM)
    assert ":1.1" not in callers.recipients(BOB)


async def test_a_read_decision_is_kept_a_second_per_connection() -> None:
    # A reader polling the system-wide connection must not cost polkit a
    # question per call: a flood of reads would flood polkitd too.
    callers = Callers(FakeBus({":1.1": ALICE, ":1.2": BOB}))  # type: ignore[arg-type]
    authority = FakeAuthority({ADMIN: Decision(True)})
    now = [100.0]
    gate = Gate(callers, authority, clock=lambda: now[0])
    alice = await callers.identify(incoming(":1.1"))
    bob = await callers.identify(incoming(":1.2"))
    for _ in range(5):
        assert await gate.may_read(alice, SYSTEM)
    assert authority.asked == [(":1.1", ADMIN, False)]
    # Refusals are kept too, and each connection has its own answer.
    authority.decisions = {}
    for _ in range(3):
        assert not await gate.may_read(bob, SYSTEM)
    assert authority.asked == [(":1.1", ADMIN, False), (":1.2", ADMIN, False)]
    # A second later polkit is asked again, and a changed answer shows.
    now[0] += READ_MEMORY
    assert not await gate.may_read(alice, SYSTEM)
    assert len(authority.asked) == 3
    # Own objects and root need no question at all.
    assert await gate.may_read(alice, ALICE)
    assert await gate.may_read(Call(incoming(":1.9"), 0), SYSTEM)
    assert len(authority.asked) == 3


# -- the caller table ----------------------------------------------------------------


async def test_callers_are_asked_once_and_signals_go_to_owner_and_root_only() -> None:
    bus = FakeBus({":1.1": ALICE, ":1.2": ALICE, ":1.3": BOB, ":1.4": 0})
    callers = Callers(bus)  # type: ignore[arg-type]
    for name in (":1.1", ":1.2", ":1.3", ":1.4", ":1.1"):
        call = await callers.identify(incoming(name))
    assert bus.asked == [":1.1", ":1.2", ":1.3", ":1.4"]
    assert call.uid == ALICE and call.sender == ":1.1" and not call.interactive
    assert callers.recipients(ALICE) == [":1.1", ":1.2", ":1.4"]
    assert callers.recipients(BOB) == [":1.3", ":1.4"]
    # Administrators get system-wide news only once polkit let them in.
    assert callers.recipients(SYSTEM) == [":1.4"]
    callers.mark_admin(":1.3")
    assert callers.recipients(SYSTEM) == [":1.3", ":1.4"]

    callers.forget(":1.3")
    assert callers.recipients(BOB) == [":1.4"]
    assert callers.recipients(SYSTEM) == [":1.4"]


async def test_names_that_leave_the_bus_are_forgotten_and_stay_forgotten() -> None:
    bus = FakeBus({":1.1": ALICE, ":1.2": ALICE})
    callers = Callers(bus)  # type: ignore[arg-type]
    await callers.identify(incoming(":1.1"))
    callers._on_message(name_left(":1.1"))
    assert not callers.known(":1.1")
    # The bus said :1.2 left while its UID was being asked: it is not brought back.
    callers._on_message(name_left(":1.2"))
    await callers.identify(incoming(":1.2"))
    assert not callers.known(":1.2")
    assert callers.recipients(ALICE) == []


async def test_an_unknown_sender_is_refused_and_the_table_is_bounded() -> None:
    bus = FakeBus({f":1.{n}": ALICE for n in range(10)})
    callers = Callers(bus, capacity=3)  # type: ignore[arg-type]
    with pytest.raises(NotAuthorized):
        await callers.identify(incoming(":9.9"))
    for n in range(10):
        await callers.identify(incoming(f":1.{n}"))
    assert callers.recipients(ALICE) == [":1.7", ":1.8", ":1.9"]


# -- arguments ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["guests", "a", "x" * 64, "Employees-2.0_b"])
def test_profile_ids_accepted(value: str) -> None:
    assert validate.profile_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * 65, "../x", "a b", "a/b", "é", "a\n"])
def test_profile_ids_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        validate.profile_id(value)


@given(st.text(max_size=3000))
def test_text_arguments_are_bounded_and_free_of_control_characters(value: str) -> None:
    try:
        accepted = validate.text(value, "thing")
    except InvalidArgument:
        assert len(value) > validate.MAX_TEXT or any(ord(c) < 32 or ord(c) == 127 for c in value)
    else:
        assert accepted == value and len(value) <= validate.MAX_TEXT


@pytest.mark.parametrize("value", ["", "C", "nl_NL.UTF-8", "sr_RS@latin", "de_DE:fr"])
def test_locales_accepted(value: str) -> None:
    assert validate.locale(value) == value


@pytest.mark.parametrize("value", ["../etc", "nl NL", "x" * 129, "nl\x00"])
def test_locales_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        validate.locale(value)


def test_connect_options() -> None:
    assert validate.connect_options({}) is False
    assert validate.connect_options({"prefer_tcp": Variant("b", True)}) is True
    for bad in (
        {"prefer_tcp": Variant("s", "yes")},
        {"up": Variant("s", "/bin/sh")},
        {f"k{n}": Variant("b", True) for n in range(validate.MAX_OPTIONS + 1)},
    ):
        with pytest.raises(InvalidArgument):
            validate.connect_options(bad)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/org/vpnd/Daemon/servers/0123456789abcdef", True),
        ("/org/vpnd/Daemon/servers/0123456789ABCDEF", False),
        ("/org/vpnd/Daemon/servers/0123", False),
        ("/org/vpnd/Daemon", False),
        ("/org/vpnd/Daemon/connections/1", False),
        ("/org/vpnd/Daemon/servers/0123456789abcdef/x", False),
    ],
)
def test_server_paths(path: str, ok: bool) -> None:
    if ok:
        assert validate.server_path(path) == path
    else:
        with pytest.raises(InvalidArgument):
            validate.server_path(path)


# -- the declared API is the written one -------------------------------------------


def _members(element: ET.Element) -> set[tuple[str, str, str]]:
    found = set()
    for kind in ("method", "signal", "property"):
        for member in element.iter(kind):
            if kind == "property":
                signature = member.get("type", "") + member.get("access", "")
            else:
                signature = "".join(
                    a.get("type", "") + a.get("direction", "-")[0] for a in member.iter("arg")
                )
            found.add((kind, member.get("name", ""), signature))
    return found


def test_the_declared_interfaces_are_the_written_ones() -> None:
    written = ET.parse(Path(__file__).parents[2] / "data" / "dbus" / "org.vpnd.Daemon.xml")
    documented = {i.get("name"): _members(i) for i in written.getroot().iter("interface")}
    for interface in (spec.MANAGER, spec.SERVER, spec.CONNECTION):
        declared = ET.fromstring(ET.tostring(interface.introspection().to_xml()))
        assert _members(declared) == documented[interface.name], interface.name
