"""Who is calling: the UID behind the unique bus name that sent the current method call.

dbus-fast hands a method only its arguments. A message handler, which the
library runs before dispatching each message, records the message in a
context variable; the method's task is created right after, in a copy of
that context, so every call sees its own message.
"""

from __future__ import annotations

from collections import OrderedDict
from contextvars import ContextVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from vpnd.errors import NotAuthorized, VpndError

_current: ContextVar[Message | None] = ContextVar("vpnd_current_message", default=None)

_CACHE_SIZE = 512


class Callers:
    """Maps the sender of the current call to its UID (cached: unique names are never reused)."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._uids: OrderedDict[str, int] = OrderedDict()

    def install(self) -> None:
        """Start recording the message of each incoming method call."""
        self._bus.add_message_handler(self._remember)

    @staticmethod
    def _remember(message: Message) -> bool:
        if message.message_type is MessageType.METHOD_CALL:
            _current.set(message)
        return False  # never handled here: dispatch goes on

    async def uid(self) -> int:
        """The UID of the process that sent the method call being served."""
        message = _current.get()
        if message is None or not message.sender:
            raise NotAuthorized("cannot tell who is calling")
        sender = message.sender
        uid = self._uids.get(sender)
        if uid is not None:
            self._uids.move_to_end(sender)
            return uid
        reply = await self._bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetConnectionUnixUser",
                signature="s",
                body=[sender],
            )
        )
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            raise VpndError("the bus could not tell who is calling")
        uid = int(reply.body[0])
        self._uids[sender] = uid
        if len(self._uids) > _CACHE_SIZE:
            self._uids.popitem(last=False)
        return uid


def check_owner(caller: int, owner: int) -> None:
    """Root may act on everything; anyone else only on what they own."""
    if caller != 0 and caller != owner:
        raise NotAuthorized("that belongs to another user")
