"""Who is calling: the UID behind each bus connection that talks to vpnd.

The bus tells the UID of a unique name (GetConnectionUnixUser); unique
names are never reused, so the answer is kept until the bus says the name
left. The same table says where signals may go: vpnd sends its signals only
to bus connections that have called it and whose UID may read the object
(see `recipients`), never to everyone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from vpnd.errors import NotAuthorized

log = logging.getLogger("vpnd.bus")

ROOT_UID = 0
# The UID that owns system-wide servers (the ones used at boot).
SYSTEM_OWNER = ROOT_UID

_BUS_DAEMON = "org.freedesktop.DBus"
# Every name that leaves the bus (its new owner is empty): the daemon forgets it.
NAME_LOST_RULE = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    "member='NameOwnerChanged',path='/org/freedesktop/DBus',arg2=''"
)
# More than any machine has callers at once; beyond it the least recent is
# forgotten (it is asked again on its next call, and misses signals till then).
_CAPACITY = 4096
RENEWED = "vpnd reconnected to the bus while this call waited; make the call again"
_GONE_CAPACITY = 256


@dataclass(eq=False)
class Call:
    """One method call being served: the message and the UID that sent it."""

    message: Message
    uid: int
    # Set once an access check for this call passed (see access.Gate).
    checked: bool = field(default=False)
    # Callers.generation when the call came in: which bus connection it came on.
    generation: int = field(default=0)

    @property
    def sender(self) -> str:
        """The caller's unique bus name."""
        return self.message.sender or ""

    @property
    def interactive(self) -> bool:
        """Whether the caller lets polkit ask its user for a password."""
        return bool(self.message.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)


class Callers:
    """UIDs of the bus connections that called vpnd, and which of them are administrators."""

    def __init__(self, bus: MessageBus, capacity: int = _CAPACITY) -> None:
        self._bus = bus
        self._capacity = capacity
        self._uids: OrderedDict[str, int] = OrderedDict()
        self._by_uid: dict[int, set[str]] = {}
        self._admins: set[str] = set()
        # Names that left lately: a UID answer that arrives after its name left
        # must not bring the name back.
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._watch: asyncio.Task[None] | None = None
        # Bumped by each rebind: a unique name means something only on the
        # connection (and bus daemon) it came from.
        self.generation = 0

    def rebind(self, bus: MessageBus, *, same_daemon: bool) -> None:
        """Follow a new bus connection, made after the old one was lost.

        A restarted bus daemon hands out the same unique names again, to
        other processes, so then everything known is forgotten; the same
        daemon never reuses a name, so what is known stays (callers keep their
        signals without calling again).
        """
        self._bus = bus
        self.generation += 1
        if not same_daemon:
            self._uids.clear()
            self._by_uid.clear()
            self._admins.clear()
            self._gone.clear()
        self.watch()

    def current(self, call: Call) -> bool:
        """Whether `call` came on the bus connection vpnd has now."""
        return call.generation == self.generation

    def watch(self) -> None:
        """Start forgetting names as they leave the bus."""
        self._bus.add_message_handler(self._on_message)
        self._watch = asyncio.get_running_loop().create_task(self._add_match())

    async def _add_match(self) -> None:
        try:
            reply = await self._ask_bus("AddMatch", NAME_LOST_RULE)
        except Exception as exc:
            log.error("cannot watch callers leave the bus: %s", exc)
            return
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            # Callers are then forgotten only when the table is full: signals
            # may go to a name that left, which the bus drops.
            log.error("cannot watch callers leave the bus: %s", reply and reply.body)

    def _on_message(self, message: Message) -> bool:
        if (
            message.message_type is MessageType.SIGNAL
            and message.sender == _BUS_DAEMON
            and message.member == "NameOwnerChanged"
            and message.signature == "sss"
            and not message.body[2]
        ):
            name = message.body[0]
            if name.startswith(":"):
                self._gone[name] = None
                if len(self._gone) > _GONE_CAPACITY:
                    self._gone.popitem(last=False)
            self.forget(name)
        return False  # never handled here

    async def identify(self, message: Message) -> Call:
        """The Call for an incoming message, its sender's UID asked of the bus if unknown."""
        sender = message.sender
        if not sender:
            raise NotAuthorized("cannot tell who is calling")
        generation = self.generation
        uid = self._uids.get(sender)
        if uid is None:
            uid = await self._ask_uid(sender)
            if generation != self.generation:
                # Asked on a newer connection, where the name may be someone else's.
                raise NotAuthorized(RENEWED)
            self._remember(sender, uid)
        else:
            self._uids.move_to_end(sender)
        return Call(message, uid, generation=generation)

    async def _ask_uid(self, sender: str) -> int:
        reply = await self._ask_bus("GetConnectionUnixUser", sender)
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            # Typically the caller has left already.
            raise NotAuthorized("the bus could not tell who is calling")
        return int(reply.body[0])

    async def _ask_bus(self, member: str, argument: str) -> Message | None:
        """Call a method of the bus daemon that takes one string."""
        return await self._bus.call(
            Message(
                destination=_BUS_DAEMON,
                path="/org/freedesktop/DBus",
                interface=_BUS_DAEMON,
                member=member,
                signature="s",
                body=[argument],
            )
        )

    def _remember(self, sender: str, uid: int) -> None:
        if sender in self._gone:
            return
        self._uids[sender] = uid
        self._by_uid.setdefault(uid, set()).add(sender)
        while len(self._uids) > self._capacity:
            oldest = next(iter(self._uids))
            self.forget(oldest)

    def forget(self, sender: str) -> None:
        """Drop what is known of a name (it left the bus)."""
        uid = self._uids.pop(sender, None)
        self._admins.discard(sender)
        if uid is not None:
            log.debug("caller %s (uid %d) left", sender, uid)
            names = self._by_uid.get(uid)
            if names is not None:
                names.discard(sender)
                if not names:
                    del self._by_uid[uid]

    def mark_admin(self, sender: str) -> None:
        """Record that polkit let `sender` manage system-wide servers (it gets their signals)."""
        if sender in self._uids:
            self._admins.add(sender)

    def known(self, sender: str) -> bool:
        """Whether `sender` has called and not left since."""
        return sender in self._uids

    def recipients(self, owner: int) -> list[str]:
        """The bus names that may learn of changes to an object `owner` owns.

        The owner's connections and root's; for a system-wide object also the
        connections polkit let manage system servers. Only names that called
        vpnd are known, so a client calls (anything) before it relies on signals.
        """
        names = set(self._by_uid.get(owner, ())) | self._by_uid.get(ROOT_UID, set())
        if owner == SYSTEM_OWNER:
            names |= self._admins
        return sorted(names)
