"""The router without a bus daemon: calls in, replies and signals out, through a fake bus."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from dbus_fast import Message, MessageFlag, MessageType

from vpnd.bus import polkit, spec
from vpnd.bus.access import Gate
from vpnd.bus.caller import Call, Callers
from vpnd.bus.polkit import Decision
from vpnd.bus.router import MAX_CALLS_IN_FLIGHT, BusObject, Router
from vpnd.errors import NotAuthorized

ALICE, BOB = 1000, 1001
PATH = spec.SERVERS_PATH + "/0123456789abcdef"


class FakeBus:
    """Knows each sender's UID, collects what the router sends, hands it messages."""

    connected = True

    def __init__(self, uids: dict[str, int]) -> None:
        self.uids = uids
        self.sent: list[Message] = []
        self.handlers: list[Any] = []

    async def call(self, message: Message) -> Message:
        if message.member == "AddMatch":
            return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1)
        return Message(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=1,
            signature="u",
            body=[self.uids[message.body[0]]],
        )

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def add_message_handler(self, handler: Any) -> None:
        self.handlers.append(handler)


class Authority:
    async def check(self, sender: str, action: str, *, interactive: bool) -> Decision:
        return Decision(True)


class Thing(BusObject):
    """A server-like object: Authorize checks access, GetProfiles (wrongly) does not."""

    interface: ClassVar[spec.Interface] = spec.SERVER

    def __init__(self, gate: Gate, owner: int) -> None:
        super().__init__(PATH)
        self._gate = gate
        self._owner = owner
        self.authorized = 0

    @property
    def owner(self) -> int:
        return self._owner

    async def Authorize(self, call: Call) -> str:
        await self._gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        self.authorized += 1
        return "https://portal.example.org/authorize"

    async def GetProfiles(self, call: Call, locale: str) -> list[dict[str, Any]]:
        return []

    async def properties(self, call: Call) -> dict[str, Any]:
        return {
            "Url": "https://vpn.example.org/",
            "Host": "vpn.example.org",
            "Owner": self.owner,
            "Authorized": True,
            "AuthorizationPending": False,
            "SessionExpiry": 0,
        }


@pytest.fixture
def setup() -> tuple[FakeBus, Router, Thing]:
    bus = FakeBus({":1.1": ALICE, ":1.2": BOB, ":1.3": 0})
    callers = Callers(bus)  # type: ignore[arg-type]
    gate = Gate(callers, Authority())
    router = Router(bus, callers, gate)  # type: ignore[arg-type]
    router.install()
    thing = Thing(gate, ALICE)
    router.add(thing)
    return bus, router, thing


async def ask(
    bus: FakeBus,
    router: Router,
    sender: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    *,
    path: str = PATH,
    flags: MessageFlag = MessageFlag.NONE,
) -> Message | None:
    """Hand one call to the router and return its reply (None if it sent none)."""
    message = Message(
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
        sender=sender,
        serial=7,
        flags=flags,
    )
    before = len(bus.sent)
    [handler] = bus.handlers
    assert handler(message) is True  # taken; answered from a task
    await router.settle()
    replies = [m for m in bus.sent[before:] if m.reply_serial == 7]
    assert len(replies) <= 1
    return replies[0] if replies else None


async def test_the_owner_reads_and_calls_another_user_gets_not_authorized_for_everything(
    setup: tuple[FakeBus, Router, Thing],
) -> None:
    bus, router, thing = setup
    get = ("Get", "ss", [spec.SERVER1, "Url"])
    for sender in (":1.1", ":1.3"):
        reply = await ask(bus, router, sender, spec.PROPERTIES, *get)
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        assert reply.body[0].value == "https://vpn.example.org/"
    attempts = [
        (spec.PROPERTIES, *get),
        (spec.PROPERTIES, "GetAll", "s", [spec.SERVER1]),
        (spec.PROPERTIES, "Set", "ssv", [spec.SERVER1, "Url", reply.body[0]]),
        (spec.INTROSPECTABLE, "Introspect", "", []),
        (spec.SERVER1, "Authorize", "", []),
        (spec.SERVER1, "NoSuchMethod", "", []),
        (spec.SERVER1, "Authorize", "s", ["extra"]),
        ("org.example.Other", "Authorize", "", []),
    ]
    for attempt in attempts:
        reply = await ask(bus, router, ":1.2", *attempt)
        assert reply is not None and reply.error_name == "org.vpnd.Error.NotAuthorized", attempt
    assert thing.authorized == 0
    # The owner gets the plain D-Bus answers for a bad call.
    reply = await ask(bus, router, ":1.1", spec.SERVER1, "NoSuchMethod")
    assert reply is not None and reply.error_name == "org.freedesktop.DBus.Error.UnknownMethod"
    reply = await ask(bus, router, ":1.1", spec.SERVER1, "Authorize", "s", ["extra"])
    assert reply is not None and reply.error_name == "org.freedesktop.DBus.Error.InvalidArgs"
    reply = await ask(bus, router, ":1.1", spec.SERVER1, "Authorize")
    assert reply is not None and reply.body == ["https://portal.example.org/authorize"]


async def test_a_method_that_skips_the_access_check_fails_closed(
    setup: tuple[FakeBus, Router, Thing], caplog: pytest.LogCaptureFixture
) -> None:
    bus, router, _thing = setup
    reply = await ask(bus, router, ":1.1", spec.SERVER1, "GetProfiles", "s", [""])
    assert reply is not None and reply.error_name == "org.vpnd.Error.Failed"
    assert "without an access check" in caplog.text


async def test_introspection_lists_only_what_the_caller_may_see(
    setup: tuple[FakeBus, Router, Thing],
) -> None:
    bus, router, _thing = setup

    def children(reply: Message | None) -> list[str]:
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        return [n.get("name", "") for n in ET.fromstring(reply.body[0]).findall("node")]

    listing = (spec.INTROSPECTABLE, "Introspect")
    assert children(await ask(bus, router, ":1.1", *listing, path=spec.SERVERS_PATH)) == [
        "0123456789abcdef"
    ]
    assert children(await ask(bus, router, ":1.3", *listing, path=spec.SERVERS_PATH)) == [
        "0123456789abcdef"
    ]
    assert children(await ask(bus, router, ":1.2", *listing, path=spec.SERVERS_PATH)) == []
    missing = await ask(bus, router, ":1.1", spec.PROPERTIES, "GetAll", "s", [""], path=PATH + "0")
    assert missing is not None
    assert missing.error_name == "org.freedesktop.DBus.Error.UnknownObject"


async def test_no_reply_when_none_is_expected(setup: tuple[FakeBus, Router, Thing]) -> None:
    bus, router, thing = setup
    reply = await ask(
        bus, router, ":1.1", spec.SERVER1, "Authorize", flags=MessageFlag.NO_REPLY_EXPECTED
    )
    assert reply is None and thing.authorized == 1


async def test_signals_are_addressed_to_those_who_may_read_never_broadcast(
    setup: tuple[FakeBus, Router, Thing],
) -> None:
    bus, router, thing = setup
    for sender in (":1.1", ":1.2", ":1.3"):
        await ask(bus, router, sender, spec.PROPERTIES, "Get", "ss", [spec.SERVER1, "Host"])
    bus.sent.clear()
    router.emit(thing, "AuthorizationFinished", [True, "", ""], owner=ALICE)
    router.emit_properties_changed(thing, {"Authorized": True}, owner=ALICE)
    assert bus.sent == []  # at the end of this loop iteration
    router.flush()
    assert {(m.destination, m.member) for m in bus.sent} == {
        (":1.1", "AuthorizationFinished"),
        (":1.3", "AuthorizationFinished"),
        (":1.1", "PropertiesChanged"),
        (":1.3", "PropertiesChanged"),
    }
    assert all(m.message_type is MessageType.SIGNAL for m in bus.sent)
    assert all(m.flags & MessageFlag.NO_REPLY_EXPECTED for m in bus.sent)


class Slow(BusObject):
    """A server-like object whose Authorize waits until the test lets it answer."""

    interface: ClassVar[spec.Interface] = spec.SERVER

    def __init__(self, gate: Gate) -> None:
        super().__init__(PATH + "0")
        self._gate = gate
        self.release = asyncio.Event()
        self.started = 0

    @property
    def owner(self) -> int:
        return ALICE

    async def Authorize(self, call: Call) -> str:
        await self._gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        self.started += 1
        await self.release.wait()
        return "https://portal.example.org/authorize"

    async def properties(self, call: Call) -> dict[str, Any]:
        raise NotImplementedError


async def _yield_until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (a bounded number of turns, no clock)."""
    for _turn in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def _call(sender: str, serial: int, *, path: str, flags: MessageFlag = MessageFlag.NONE) -> Message:
    return Message(
        path=path,
        interface=spec.SERVER1,
        member="Authorize",
        sender=sender,
        serial=serial,
        flags=flags,
    )


async def test_a_caller_past_its_limit_gets_limits_exceeded_and_others_are_still_served(
    setup: tuple[FakeBus, Router, Thing],
) -> None:
    bus, router, thing = setup
    slow = Slow(router._gate)
    router.add(slow)
    [handler] = bus.handlers
    over = 3
    for serial in range(1, MAX_CALLS_IN_FLIGHT + over + 1):
        assert handler(_call(":1.1", serial, path=slow.path)) is True
    # One more that wants no reply: refused without a word.
    assert handler(_call(":1.1", 999, path=slow.path, flags=MessageFlag.NO_REPLY_EXPECTED))
    # The calls past the limit are answered at once, before any task ran.
    refused = [m for m in bus.sent if m.message_type is MessageType.ERROR]
    assert [m.reply_serial for m in refused] == list(
        range(MAX_CALLS_IN_FLIGHT + 1, MAX_CALLS_IN_FLIGHT + over + 1)
    )
    assert {m.error_name for m in refused} == {"org.freedesktop.DBus.Error.LimitsExceeded"}
    assert "wait for their answers" in refused[0].body[0]
    assert router.in_flight(":1.1") == MAX_CALLS_IN_FLIGHT

    # Another connection (root's) is not held back by Alice's flood.
    assert handler(_call(":1.3", 500, path=PATH))
    await _yield_until(lambda: any(m.reply_serial == 500 for m in bus.sent))
    [reply] = [m for m in bus.sent if m.reply_serial == 500]
    assert reply.body == ["https://portal.example.org/authorize"]
    assert thing.authorized == 1

    slow.release.set()
    await router.settle()
    answered = [m for m in bus.sent if m.message_type is MessageType.METHOD_RETURN]
    assert {m.reply_serial for m in answered} >= set(range(1, MAX_CALLS_IN_FLIGHT + 1))
    assert slow.started == MAX_CALLS_IN_FLIGHT
    assert router.in_flight(":1.1") == 0
    # Once answered, the caller may call again.
    reply = await ask(bus, router, ":1.1", spec.SERVER1, "Authorize")
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN


async def test_property_changes_in_one_loop_iteration_reach_each_reader_merged_and_in_order(
    setup: tuple[FakeBus, Router, Thing],
) -> None:
    bus, router, thing = setup
    for sender in (":1.1", ":1.2"):
        await ask(bus, router, sender, spec.PROPERTIES, "Get", "ss", [spec.SERVER1, "Host"])
    bus.sent.clear()
    for value in range(100):
        router.emit_properties_changed(thing, {"SessionExpiry": value}, owner=ALICE)
    router.emit_properties_changed(thing, {"Authorized": False}, owner=ALICE)
    router.emit(thing, "AuthorizationFinished", [False, "org.vpnd.Error.Failed", "x"], owner=ALICE)
    router.emit_properties_changed(thing, {"Authorized": True}, owner=ALICE)
    assert bus.sent == []
    await asyncio.sleep(0)  # the end of the iteration: sent without anyone asking
    # Bob may not read Alice's server: nothing for him.
    assert {m.destination for m in bus.sent} == {":1.1"}
    assert [m.member for m in bus.sent] == [
        "PropertiesChanged",
        "AuthorizationFinished",
        "PropertiesChanged",
    ]
    first, _finished, last = bus.sent
    assert {k: v.value for k, v in first.body[1].items()} == {
        "SessionExpiry": 99,
        "Authorized": False,
    }
    # A change after another signal is not moved before it.
    assert {k: v.value for k, v in last.body[1].items()} == {"Authorized": True}
    bus.sent.clear()
    router.flush()
    assert bus.sent == []


async def test_after_a_new_bus_daemon_names_are_forgotten_and_calls_in_flight_are_not_trusted(
    setup: tuple[FakeBus, Router, Thing],
) -> None:
    bus, router, _thing = setup
    callers: Callers = router._callers
    old = await callers.identify(Message(path="/", member="X", sender=":1.1", serial=1))
    assert callers.known(":1.1") and callers.current(old)

    # The same daemon again: the names still mean who they meant.
    callers.rebind(bus, same_daemon=True)  # type: ignore[arg-type]
    assert callers.known(":1.1") and not callers.current(old)
    with pytest.raises(NotAuthorized, match="reconnected"):
        # polkit would be asked about ":1.1" on the new connection.
        await router._gate.require(old, ALICE, polkit.CONNECT)

    new_bus = FakeBus({":1.1": BOB})
    callers.rebind(new_bus, same_daemon=False)  # type: ignore[arg-type]
    assert not callers.known(":1.1")
    assert callers.recipients(ALICE) == []
    assert (await callers.identify(Message(path="/", member="X", sender=":1.1"))).uid == BOB


async def test_a_call_answers_on_the_connection_it_came_from(
    setup: tuple[FakeBus, Router, Thing],
) -> None:
    bus, router, _thing = setup
    slow = Slow(router._gate)
    router.add(slow)
    [handler] = bus.handlers
    handler(_call(":1.1", 5, path=slow.path))
    await _yield_until(lambda: slow.started == 1)
    new_bus = FakeBus({":1.1": BOB})
    router._callers.rebind(new_bus, same_daemon=False)  # type: ignore[arg-type]
    router.rebind(new_bus)  # type: ignore[arg-type]
    assert len(new_bus.handlers) == 2  # the callers' and the router's
    bus.connected = False  # type: ignore[misc]
    slow.release.set()
    await router.settle()
    # The old connection is gone and the new one's ":1.1" is someone else: no reply anywhere.
    assert [m for m in bus.sent if m.reply_serial == 5] == []
    assert [m for m in new_bus.sent if m.reply_serial == 5] == []
