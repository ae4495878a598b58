"""The polkit client without polkitd: the request, the reading of answers, the refusals,
timeouts and failures (a fake bus stands in; tests/bus/test_users.py asks the real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.signature import get_signature_tree

from vpnd.bus import polkit
from vpnd.bus.polkit import Decision, PolkitUnavailable
from vpnd.errors import NotAuthorized


def reply(body: list[Any], signature: str = "(bba{ss})") -> Message:
    return Message(
        message_type=MessageType.METHOD_RETURN, reply_serial=1, signature=signature, body=body
    )


def error(name: str, text: str = "") -> Message:
    return Message(
        message_type=MessageType.ERROR,
        reply_serial=1,
        error_name=name,
        signature="s" if text else "",
        body=[text] if text else [],
    )


# -- the request ---------------------------------------------------------------


@pytest.mark.parametrize(("interactive", "flags"), [(False, 0), (True, 1)])
def test_the_request_names_the_calling_bus_connection_and_the_action(
    interactive: bool, flags: int
) -> None:
    message = polkit.check_request(
        ":1.42", polkit.CONNECT, interactive=interactive, cancellation_id="c1"
    )
    assert message.destination == "org.freedesktop.PolicyKit1"
    assert message.path == "/org/freedesktop/PolicyKit1/Authority"
    assert message.interface == "org.freedesktop.PolicyKit1.Authority"
    assert message.member == "CheckAuthorization"
    assert message.signature == "(sa{sv})sa{ss}us"
    assert get_signature_tree(message.signature).verify(message.body)
    subject, action, details, sent_flags, cancellation = message.body
    assert subject == ["system-bus-name", {"name": Variant("s", ":1.42")}]
    assert action == "org.vpnd.connect"
    assert details == {}
    assert sent_flags == flags
    assert cancellation == "c1"


def test_the_cancel_request_expects_no_reply() -> None:
    message = polkit.cancel_request("c1")
    assert message.member == "CancelCheckAuthorization"
    assert message.body == ["c1"]
    assert message.flags & MessageFlag.NO_REPLY_EXPECTED


def test_the_action_ids_are_those_of_the_policy_file() -> None:
    from pathlib import Path

    policy = (Path(__file__).parents[2] / "data" / "polkit-1" / "org.vpnd.policy").read_text()
    for action in (polkit.CONNECT, polkit.MANAGE_OWN_SERVERS, polkit.MANAGE_SYSTEM_SERVERS):
        assert f'<action id="{action}">' in policy


# -- the answer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([True, False, {}], Decision(authorized=True)),
        ([False, False, {}], Decision(authorized=False)),
        ([False, True, {}], Decision(authorized=False, challenge=True)),
        # A yes is a yes, whatever else polkit says.
        ([True, True, {}], Decision(authorized=True)),
        (
            [False, False, {"polkit.dismissed": "true"}],
            Decision(authorized=False, dismissed=True),
        ),
        (
            [False, True, {"polkit.retains_authorization_after_challenge": "1"}],
            Decision(False, True),
        ),
    ],
)
def test_answers_are_read(body: list[Any], expected: Decision) -> None:
    assert polkit.parse_reply(reply([body])) == expected


@pytest.mark.parametrize(
    "answer",
    [
        None,
        error("org.freedesktop.DBus.Error.ServiceUnknown", "no polkit here"),
        error("org.freedesktop.PolicyKit1.Error.Failed"),
        reply(["yes"], signature="s"),
        Message(message_type=MessageType.SIGNAL, path="/", interface="a.b", member="C"),
    ],
)
def test_anything_but_an_answer_is_unavailable(answer: Message | None) -> None:
    with pytest.raises(PolkitUnavailable):
        polkit.parse_reply(answer)


def test_an_error_answer_is_named() -> None:
    with pytest.raises(PolkitUnavailable, match="ServiceUnknown: no polkit here"):
        polkit.parse_reply(error("org.freedesktop.DBus.Error.ServiceUnknown", "no polkit here"))


# -- refusals, worded for people -----------------------------------------------


def test_refusals_say_why_and_name_the_action() -> None:
    denied = polkit.refusal(polkit.CONNECT, Decision(False), interactive=True)
    assert isinstance(denied, NotAuthorized)
    assert "polkit does not allow you to connect" in denied.message
    assert "org.vpnd.connect" in denied.message

    ask = polkit.refusal(polkit.MANAGE_SYSTEM_SERVERS, Decision(False, True), interactive=False)
    assert "administrator's password" in ask.message and "terminal" in ask.message
    assert "org.vpnd.manage-system-servers" in ask.message

    no_agent = polkit.refusal(polkit.CONNECT, Decision(False, True), interactive=True)
    assert "no authentication agent" in no_agent.message

    dismissed = polkit.refusal(polkit.CONNECT, Decision(False, False, True), interactive=True)
    assert "dismissed" in dismissed.message

    down = polkit.unavailable(polkit.MANAGE_OWN_SERVERS, "no answer within 5 seconds")
    assert isinstance(down, NotAuthorized)
    assert "cannot ask polkit" in down.message and "no answer within 5 seconds" in down.message
    assert "polkitd" in down.message


# -- Authority against a fake bus ------------------------------------------------


class FakeBus:
    """Answers CheckAuthorization with `answer` (or never, or by raising)."""

    def __init__(self, answer: Message | None = None, *, hang: bool = False) -> None:
        self.answer = answer
        self.hang = hang
        self.raises: Exception | None = None
        self.calls: list[Message] = []
        self.sent: list[Message] = []

    async def call(self, message: Message) -> Message | None:
        self.calls.append(message)
        if self.raises is not None:
            raise self.raises
        if self.hang:
            await asyncio.Event().wait()
        return self.answer

    def send(self, message: Message) -> None:
        self.sent.append(message)


async def test_authority_asks_once_and_returns_the_decision() -> None:
    bus = FakeBus(reply([[True, False, {}]]))
    authority = polkit.Authority(bus)  # type: ignore[arg-type]
    decision = await authority.check(":1.5", polkit.CONNECT, interactive=False)
    assert decision.authorized
    [request] = bus.calls
    assert request.body[0] == ["system-bus-name", {"name": Variant("s", ":1.5")}]
    assert request.body[3] == 0 and request.body[4] == ""


async def test_a_silent_polkit_times_out_and_an_interactive_check_is_withdrawn() -> None:
    bus = FakeBus(hang=True)
    authority = polkit.Authority(bus, timeout=0.01, interactive_timeout=0.02)  # type: ignore[arg-type]
    with pytest.raises(PolkitUnavailable, match="no answer within"):
        await authority.check(":1.5", polkit.CONNECT, interactive=False)
    assert bus.sent == []
    with pytest.raises(PolkitUnavailable):
        await authority.check(":1.5", polkit.CONNECT, interactive=True)
    [cancel] = bus.sent
    assert cancel.member == "CancelCheckAuthorization"
    assert cancel.body == [bus.calls[-1].body[4]] and cancel.body[0]


async def test_a_broken_bus_is_unavailable() -> None:
    bus = FakeBus()
    bus.raises = EOFError("gone")
    authority = polkit.Authority(bus)  # type: ignore[arg-type]
    with pytest.raises(PolkitUnavailable, match="gone"):
        await authority.check(":1.5", polkit.CONNECT, interactive=False)
