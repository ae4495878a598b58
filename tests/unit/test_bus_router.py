"""The router without a bus daemon: calls in, replies and signals out, through a fake bus."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, ClassVar

import pytest
from dbus_fast import Message, MessageFlag, MessageType

from vpnd.bus import polkit, spec
from vpnd.bus.access import Gate
from vpnd.bus.caller import Call, Callers
from vpnd.bus.polkit import Decision
from vpnd.bus.router import BusObject, Router

ALICE, BOB = 1000, 1001
PATH = spec.SERVERS_PATH + "/0123456789abcdef"


class FakeBus:
    """Knows each sender's UID, collects what the router sends, hands it messages."""

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
    assert {(m.destination, m.member) for m in bus.sent} == {
        (":1.1", "AuthorizationFinished"),
        (":1.3", "AuthorizationFinished"),
        (":1.1", "PropertiesChanged"),
        (":1.3", "PropertiesChanged"),
    }
    assert all(m.message_type is MessageType.SIGNAL for m in bus.sent)
    assert all(m.flags & MessageFlag.NO_REPLY_EXPECTED for m in bus.sent)
