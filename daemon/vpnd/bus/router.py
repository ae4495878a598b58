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
"""

from __future__ import annotations

import asyncio
import logging
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

_PROPERTY_METHODS = {"Get": "ss", "GetAll": "s", "Set": "ssv"}


class BusFault(Exception):
    """A standard D-Bus error (unknown object, method, signature) for the caller."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def _call_fault(obj: BusObject, interface: str | None, member: str, signature: str) -> BusFault:
    if interface not in (None, obj.interface.name):
        return BusFault(_UNKNOWN_INTERFACE, f"{obj.path} has no interface {interface}")
    method = obj.interface.method(member)
    if method is None:
        return BusFault(_UNKNOWN_METHOD, f"{obj.interface.name} has no method {member}")
    return BusFault(_INVALID_ARGS, f"{member} takes ({method.in_signature}), not ({signature})")


class BusObject:
    """An object vpnd serves. Subclasses name their interface and implement its methods
    as `async def Name(self, call, *args)`, each deciding access with the Gate."""

    interface: ClassVar[spec.Interface]

    def __init__(self, path: str) -> None:
        self.path = path

    @property
    def owner(self) -> int | None:
        """The UID that owns the object; None when anyone may read it."""
        return None

    async def properties(self, call: Call) -> dict[str, Any]:
        """Every property's value for `call` (access is already decided)."""
        raise NotImplementedError


class Router:
    """Dispatches method calls to the objects it holds and sends their signals."""

    def __init__(self, bus: MessageBus, callers: Callers, gate: Gate) -> None:
        self._bus = bus
        self._callers = callers
        self._gate = gate
        self._objects: dict[str, BusObject] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def install(self) -> None:
        """Take incoming method calls from dbus-fast from now on."""
        self._bus.add_message_handler(self._on_message)

    def add(self, obj: BusObject) -> None:
        """Serve `obj` at its path."""
        self._objects[obj.path] = obj

    def remove(self, path: str) -> None:
        """Stop serving the object at `path`."""
        self._objects.pop(path, None)

    def get(self, path: str) -> BusObject | None:
        """The object at `path`."""
        return self._objects.get(path)

    async def settle(self) -> None:
        """Return once every call taken so far has been answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- incoming calls ---------------------------------------------------

    def _on_message(self, message: Message) -> bool:
        if message.message_type is not MessageType.METHOD_CALL:
            return False
        if message.interface == spec.PEER:
            return False  # Ping and GetMachineId: dbus-fast answers, about no object
        task = asyncio.get_running_loop().create_task(self._serve(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True  # taken: _serve answers

    async def _serve(self, message: Message) -> None:
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
            self._send(reply)

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
        method = obj.interface.method(member)
        if (
            method is None
            or interface not in (None, obj.interface.name)
            or message.signature != method.in_signature
        ):
            # What is wrong with a call is said only to those who may read the object.
            await self._read_access(call, obj)
            raise _call_fault(obj, interface, member, message.signature)
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
                if interface_name in (spec.PROPERTIES, spec.INTROSPECTABLE, spec.PEER):
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
            node.interfaces = [*spec.standard_interfaces(), obj.interface.introspection()]
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
        """Send a signal addressed to each of `recipients`."""
        for name in recipients:
            self._send(
                Message(
                    message_type=MessageType.SIGNAL,
                    destination=name,
                    path=path,
                    interface=interface,
                    member=member,
                    signature=signature,
                    body=body,
                    # Nobody answers a signal; a name that just left gets no error back to us.
                    flags=MessageFlag.NO_REPLY_EXPECTED,
                )
            )

    def _send(self, message: Message) -> None:
        try:
            self._bus.send(message)
        except Exception as exc:
            # A bus that went away ends the daemon elsewhere; nothing to add here.
            log.debug("cannot send %s: %s", message.member or "a reply", exc)
