"""Waking from sleep, as logind announces it (PrepareForSleep(false)).

After a suspend the tunnel's peer has long forgotten it, and openvpn would
notice only at its next ping timeout (a minute or more). The manager is
told at once instead (`on_wake`), and makes the tunnel again.

Only logind's own signal counts: the sender must be the current owner of
org.freedesktop.login1, asked of the bus when the signal comes, so that no
other local program can make vpnd tear tunnels down by sending one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger("vpnd.bus")

LOGIN1 = "org.freedesktop.login1"
_RULE = (
    f"type='signal',sender='{LOGIN1}',path='/org/freedesktop/login1',"
    f"interface='{LOGIN1}.Manager',member='PrepareForSleep'"
)
_BUS = "org.freedesktop.DBus"


class SleepWatch:
    """Calls `on_wake` when logind says the machine woke up."""

    def __init__(self, bus: MessageBus, on_wake: Callable[[], None]) -> None:
        self._bus = bus
        self._on_wake = on_wake
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(self) -> None:
        """Start listening (again, on a new bus connection: `rebind`)."""
        self._bus.add_message_handler(self._on_message)
        self._spawn(self._add_match())

    def rebind(self, bus: MessageBus) -> None:
        """Listen on `bus`, a connection made after the old one was lost."""
        self._bus = bus
        self.watch()

    async def _add_match(self) -> None:
        try:
            reply = await self._ask("AddMatch", _RULE)
        except Exception as exc:  # a bus that went away: the rebind asks again
            log.warning("cannot follow logind's sleep and wake-up: %s", exc)
            return
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            log.warning("cannot follow logind's sleep and wake-up: %s", reply and reply.body)

    async def _ask(self, member: str, argument: str) -> Message | None:
        return await self._bus.call(
            Message(
                destination=_BUS,
                path="/org/freedesktop/DBus",
                interface=_BUS,
                member=member,
                signature="s",
                body=[argument],
            )
        )

    def _on_message(self, message: Message) -> bool:
        if (
            message.message_type is MessageType.SIGNAL
            and message.interface == f"{LOGIN1}.Manager"
            and message.member == "PrepareForSleep"
            and message.signature == "b"
            and message.body == [False]
        ):
            self._spawn(self._check_and_wake(message.sender or ""))
        return False  # never handled here: others may want it too

    async def _check_and_wake(self, sender: str) -> None:
        try:
            reply = await self._ask("GetNameOwner", LOGIN1)
        except Exception as exc:
            log.warning("cannot tell whether a wake-up signal comes from logind: %s", exc)
            return
        owner = reply.body[0] if reply and reply.message_type is MessageType.METHOD_RETURN else ""
        if not sender or sender != owner:
            log.warning("ignored a wake-up signal that does not come from logind")
            return
        log.info("the machine woke from sleep")
        self._on_wake()

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
