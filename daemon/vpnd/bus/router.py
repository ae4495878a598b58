"""Serving vpnd's objects: every method call, property read and introspection, and every signal.

dbus-fast could serve exported objects itself, but it answers
Properties.Get/GetAll, Introspect and ObjectManager on its own, before any
code of ours knows who asks, and it broadcasts InterfacesAdded (with every
property) when an object appears. So vpnd exports nothing through it: the
router takes each incoming method call from dbus-fast's message handler
hook, learns the caller's UID (asking the bus on a first call, which is why
the message is taken and answered later, from a task), decides access, and
answers. Only Peer (Ping, GetMachineId) is left to dbus-fast: it says nothing
about vpnd's objects.

Signals are never broadcast: each one goes, addressed, to the bus
connections allowed to read the object it is about (`Callers.recipients`).

Nobody can crowd the others out. A bus connection has at most
`MAX_CALLS_IN_FLIGHT` calls being served at once; a call past that is
answered at once with org.freedesktop.DBus.Error.LimitsExceeded, so a caller
that floods costs vpnd a short error each time, never a growing queue of
tasks. Signals leave at the end of the loop iteration that caused them, and
PropertiesChanged for one object and one recipient is merged there, so a
burst of changes reaches each reader as the latest values, not as a backlog.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.signature import get_signature_tree

from vpnd.bus import spec
from vpnd.bus.access import Gate, may_see, needed_actions
from vpnd.bus.caller import Call, Callers
from vpnd.errors import VpndError

log = logging.getLogger("vpnd.bus")

_UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
_UNKNOWN_INTERFACE = "org.freedesktop.DBus.Error.UnknownInterface"
_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
_UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"
_FAILED = "org.vpnd.Error.Failed"
_INTERNAL = "internal error in vpnd; see `journalctl -u vpnd`"

_LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"

_PROPERTY_METHODS = {"Get": "ss", "GetAll": "s", "Set": "ssv"}

# Calls one bus connection may have served at once. vpnctl has one in flight
# and an applet a few; a connection that has more is flooding.
MAX_CALLS_IN_FLIGHT = 16
_TOO_MANY = (
    f"this connection already has {MAX_CALLS_IN_FLIGHT} calls waiting for vpnd;"
    " wait for their answers before sending more"
)


class BusFault(Exception):
    """A standard D-Bus error (unknown object, method, signature) for the caller."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def _call_fault(obj: BusObject, interface: str | None, member: str, signature: str) -> BusFault:
    if interface is not None and obj.serving(interface) is None:
        return BusFault(_UNKNOWN_INTERFACE, f"{obj.path} has no interface {interface}")
    found = obj.find_method(interface, member)
    if found is None:
        name = interface or obj.interface.name
        return BusFault(_UNKNOWN_METHOD, f"{name} has no method {member}")
    method = found[1]
    return BusFault(_INVALID_ARGS, f"{member} takes ({method.in_signature}), not ({signature})")


class BusObject:
    """An object vpnd serves. Subclasses name their interface and implement its methods
    as `async def Name(self, call, *args)`, each deciding access with the Gate."""

    interface: ClassVar[spec.Interface]
    # Further interfaces the object serves: methods and signals, no properties.
    also: ClassVar[tuple[spec.Interface, ...]] = ()

    def __init__(self, path: str) -> None:
        self.path = path

    def serving(self, name: str) -> spec.Interface | None:
        """The interface called `name` if the object serves it."""
        return next((i for i in (self.interface, *self.also) if i.name == name), None)

    def find_method(
        self, interface: str | None, member: str
    ) -> tuple[spec.Interface, spec.Method] | None:
        """The method `member` of `interface` (None: of any interface the object serves)."""
        for candidate in (self.interface, *self.also):
            if interface in (None, candidate.name):
                method = candidate.method(member)
                if method is not None:
                    return candidate, method
        return None

    @property
    def owner(self) -> int | None:
        """The UID that owns the object; None when anyone may read it."""
        return None

    async def properties(self, call: Call) -> dict[str, Any]:
        """Every property's value for `call` (access is already decided)."""
        raise NotImplementedError


@dataclass
class _Outgoing:
    """A signal waiting for the end of the loop iteration, addressed to one bus name."""

    destination: str
    path: str
    interface: str
    member: str
    signature: str
    body: list[Any]


class Router:
    """Dispatches method calls to the objects it holds and sends their signals."""

    def __init__(
        self,
        bus: MessageBus,
        callers: Callers,
        gate: Gate,
        *,
        max_in_flight: int = MAX_CALLS_IN_FLIGHT,
    ) -> None:
        self._bus = bus
        self._callers = callers
        self._gate = gate
        self._max_in_flight = max_in_flight
        self._objects: dict[str, BusObject] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Calls being served, per sender; a sender is absent when it has none.
        self._in_flight: dict[str, int] = {}
        # Signals to send at the end of this loop iteration, in order, and the
        # PropertiesChanged among them that a later change may still merge into.
        self._outgoing: list[_Outgoing] = []
        self._mergeable: dict[tuple[str, str], _Outgoing] = {}
        self._flush_handle: asyncio.Handle | None = None

    def install(self) -> None:
        """Take incoming method calls from dbus-fast from now on."""
        self._bus.add_message_handler(self._on_message)

    def rebind(self, bus: MessageBus) -> None:
        """Take calls from, and send on, `bus` from now on (the old connection is gone).

        Calls still being served answer on the connection they came from.
        """
        self._bus = bus
        self.install()

    def add(self, obj: BusObject) -> None:
        """Serve `obj` at its path."""
        self._objects[obj.path] = obj

    def remove(self, path: str) -> None:
        """Stop serving the object at `path`."""
        self._objects.pop(path, None)

    def get(self, path: str) -> BusObject | None:
        """The object at `path`."""
        return self._objects.get(path)

    def below(self, path: str) -> list[BusObject]:
        """Every object served under `path` (not `path` itself), in path order."""
        prefix = path.rstrip("/") + "/"
        return [self._objects[p] for p in sorted(self._objects) if p.startswith(prefix)]

    async def settle(self) -> None:
        """Return once every call taken so far has been answered and every signal sent."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.flush()

    def in_flight(self, sender: str) -> int:
        """How many calls of `sender` are being served."""
        return self._in_flight.get(sender, 0)

    # -- incoming calls ---------------------------------------------------

    def _on_message(self, message: Message) -> bool:
        if message.message_type is not MessageType.METHOD_CALL:
            return False
        if message.interface == spec.PEER:
            return False  # Ping and GetMachineId: dbus-fast answers, about no object
        sender = message.sender or ""
        busy = self._in_flight.get(sender, 0)
        if busy >= self._max_in_flight:
            # Refused before any work or task: flooding costs the flooder a short error.
            if not message.flags & MessageFlag.NO_REPLY_EXPECTED:
                self._send(Message.new_error(message, _LIMITS_EXCEEDED, _TOO_MANY))
            return True
        self._in_flight[sender] = busy + 1
        task = asyncio.get_running_loop().create_task(self._serve(message, self._bus))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._call_done(sender))
        return True  # taken: _serve answers

    def _call_done(self, sender: str) -> None:
        left = self._in_flight[sender] - 1
        if left:
            self._in_flight[sender] = left
        else:
            del self._in_flight[sender]

    async def _serve(self, message: Message, bus: MessageBus) -> None:
        try:
            call = await self._callers.identify(message)
            signature, body = await self._dispatch(call, message)
            # A reply that does not fit its signature would fail to be sent, unseen.
            get_signature_tree(signature).verify(body)
            reply = Message.new_method_return(message, signature, body)
        except VpndError as exc:
            reply = Message.new_error(message, exc.dbus_name, exc.message)
        except BusFault as exc:
            reply = Message.new_error(message, exc.name, exc.message)
        except Exception:
            log.exception("%s.%s on %s failed", message.interface, message.member, message.path)
            reply = Message.new_error(message, _FAILED, _INTERNAL)
        if not message.flags & MessageFlag.NO_REPLY_EXPECTED:
            # On the connection the call came from: after a reconnect the same
            # unique name may be someone else's.
            self._send(reply, bus)

    async def _dispatch(self, call: Call, message: Message) -> tuple[str, list[Any]]:
        path = message.path or "/"
        interface = message.interface
        member = message.member or ""
        if interface == spec.INTROSPECTABLE:
            if member != "Introspect" or message.signature != "":
                raise BusFault(_UNKNOWN_METHOD, f"{interface}.{member} is not a method here")
            return "s", [await self._introspect(call, path)]
        obj = self._objects.get(path)
        if obj is None:
            raise BusFault(_UNKNOWN_OBJECT, f"there is no object at {path}")
        if obj.owner is not None:
            # Before anything else, another user's object says only that it is not theirs.
            needed_actions(call.uid, obj.owner, None)
        if interface == spec.PROPERTIES:
            return await self._properties(call, obj, member, message)
        found = obj.find_method(interface, member)
        if found is None or message.signature != found[1].in_signature:
            # What is wrong with a call is said only to those who may read the object.
            await self._read_access(call, obj)
            raise _call_fault(obj, interface, member, message.signature)
        method = found[1]
        result = await getattr(obj, method.name)(call, *message.body)
        if not call.checked:
            # Every method decides access through the Gate; one that did not is a bug.
            log.error("%s.%s returned without an access check", obj.interface.name, member)
            raise VpndError(_INTERNAL)
        return method.out_signature, [] if not method.outs else [result]

    async def _read_access(self, call: Call, obj: BusObject) -> None:
        if obj.owner is None:
            call.checked = True
        else:
            await self._gate.require(call, obj.owner)

    async def _properties(
        self, call: Call, obj: BusObject, member: str, message: Message
    ) -> tuple[str, list[Any]]:
        await self._read_access(call, obj)
        expected = _PROPERTY_METHODS.get(member)
        if expected is None:
            raise BusFault(_UNKNOWN_METHOD, f"{spec.PROPERTIES} has no method {member}")
        if message.signature != expected:
            raise BusFault(_INVALID_ARGS, f"{member} takes ({expected})")
        interface_name = message.body[0]
        declared = obj.interface.properties
        if member == "GetAll":
            if interface_name not in ("", obj.interface.name):
                if interface_name in (spec.PROPERTIES, spec.INTROSPECTABLE, spec.PEER) or (
                    obj.serving(interface_name) is not None
                ):
                    return "a{sv}", [{}]
                raise BusFault(_UNKNOWN_INTERFACE, f"{obj.path} has no interface {interface_name}")
            values = await obj.properties(call)
            return "a{sv}", [{name: Variant(declared[name], values[name]) for name in declared}]
        if interface_name not in ("", obj.interface.name):
            raise BusFault(_UNKNOWN_INTERFACE, f"{obj.path} has no interface {interface_name}")
        name = message.body[1]
        if name not in declared:
            raise BusFault(_UNKNOWN_PROPERTY, f"{obj.interface.name} has no property {name}")
        if member == "Set":
            raise BusFault(_READ_ONLY, f"{name} is read-only")
        values = await obj.properties(call)
        return "v", [Variant(declared[name], values[name])]

    async def _introspect(self, call: Call, path: str) -> str:
        node = intr.Node(path)
        obj = self._objects.get(path)
        if obj is not None:
            await self._read_access(call, obj)
            node.interfaces = [
                *spec.standard_interfaces(),
                obj.interface.introspection(),
                *(extra.introspection() for extra in obj.also),
            ]
        else:
            call.checked = True
        prefix = path.rstrip("/") + "/"
        children: set[str] = set()
        for other in self._objects.values():
            if other.path.startswith(prefix) and self._listed(call, other):
                children.add(other.path[len(prefix) :].split("/", 1)[0])
        node.nodes = [intr.Node(name, is_root=False) for name in sorted(children)]
        return str(node.tostring())

    @staticmethod
    def _listed(call: Call, obj: BusObject) -> bool:
        # Introspection lists what the caller may see without asking polkit;
        # administrators find system servers with ListSystemServers.
        return obj.owner is None or may_see(call.uid, obj.owner)

    # -- signals ----------------------------------------------------------

    def emit(self, obj: BusObject, member: str, body: list[Any], *, owner: int) -> None:
        """Send one of `obj`'s signals to those who may read objects of `owner`."""
        declared = obj.interface.signal(member)
        self.emit_to(
            self._callers.recipients(owner),
            obj.path,
            obj.interface.name,
            member,
            declared.signature,
            body,
        )

    def emit_properties_changed(
        self, obj: BusObject, changed: dict[str, Any], *, owner: int, to: list[str] | None = None
    ) -> None:
        """PropertiesChanged for `obj`, to those who may read objects of `owner` (or to `to`)."""
        declared = obj.interface.properties
        body = [
            obj.interface.name,
            {name: Variant(declared[name], value) for name, value in changed.items()},
            [],
        ]
        recipients = self._callers.recipients(owner) if to is None else to
        self.emit_to(recipients, obj.path, spec.PROPERTIES, "PropertiesChanged", "sa{sv}as", body)

    def emit_to(
        self,
        recipients: list[str],
        path: str,
        interface: str,
        member: str,
        signature: str,
        body: list[Any],
    ) -> None:
        """Send a signal addressed to each of `recipients`, at the end of this loop iteration.

        A PropertiesChanged merges into the one still waiting for the same
        object and recipient, unless another signal about the object went to
        that recipient in between (their order is kept).
        """
        changes = member == "PropertiesChanged" and interface == spec.PROPERTIES
        for name in recipients:
            key = (path, name)
            if changes:
                waiting = self._mergeable.get(key)
                if waiting is not None and waiting.body[0] == body[0]:
                    waiting.body[1].update(body[1])
                    continue
                outgoing = _Outgoing(
                    name, path, interface, member, signature, [body[0], dict(body[1]), body[2]]
                )
                self._mergeable[key] = outgoing
            else:
                outgoing = _Outgoing(name, path, interface, member, signature, body)
                self._mergeable.pop(key, None)
            self._outgoing.append(outgoing)
        if self._outgoing and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send every waiting signal now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        outgoing, self._outgoing = self._outgoing, []
        self._mergeable.clear()
        for signal in outgoing:
            self._send(
                Message(
                    message_type=MessageType.SIGNAL,
                    destination=signal.destination,
                    path=signal.path,
                    interface=signal.interface,
                    member=signal.member,
                    signature=signal.signature,
                    body=signal.body,
                    # Nobody answers a signal; a name that just left gets no error back to us.
                    flags=MessageFlag.NO_REPLY_EXPECTED,
                )
            )

    def _send(self, message: Message, bus: MessageBus | None = None) -> None:
        bus = self._bus if bus is None else bus
        if not bus.connected:
            # Off the bus (it went away; the service reconnects): nobody to tell.
            log.debug("not sending %s: not connected to the bus", message.member or "a reply")
            return
        try:
            bus.send(message)
        except Exception as exc:
            log.debug("cannot send %s: %s", message.member or "a reply", exc)
