"""Waking from sleep: only logind's own signal counts (vpnd.bus.sleep)."""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import Message, MessageType

from vpnd.bus.sleep import LOGIN1, SleepWatch


class Bus:
    """What SleepWatch uses of a MessageBus; logind's name is owned by `owner`."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.handlers: list[Any] = []
        self.calls: list[str] = []

    def add_message_handler(self, handler: Any) -> None:
        self.handlers.append(handler)

    async def call(self, message: Message) -> Message:
        self.calls.append(message.member)
        body = [self.owner] if message.member == "GetNameOwner" else []
        return Message(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=len(self.calls),
            signature="s" if body else "",
            body=body,
        )


def signal(sender: str, awake: bool) -> Message:
    message = Message.new_signal(
        "/org/freedesktop/login1", f"{LOGIN1}.Manager", "PrepareForSleep", "b", [not awake]
    )
    message.sender = sender
    return message


async def test_only_loginds_wake_up_counts() -> None:
    bus = Bus(owner=":1.7")
    woken: list[bool] = []
    watch = SleepWatch(bus, lambda: woken.append(True))  # type: ignore[arg-type]
    watch.watch()
    (handler,) = bus.handlers
    assert handler(signal(":1.66", awake=True)) is False  # never swallowed
    handler(signal(":1.7", awake=False))  # going to sleep: nothing to do
    await asyncio.sleep(0.01)
    assert woken == []
    handler(signal(":1.7", awake=True))
    await asyncio.sleep(0.01)
    assert woken == [True]
    assert "AddMatch" in bus.calls and bus.calls.count("GetNameOwner") == 2
    assert handler(Message.new_signal("/", "x.y", "Z")) is False
    assert MessageType.SIGNAL  # the module's types are the real ones
