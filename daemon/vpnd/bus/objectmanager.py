"""org.freedesktop.DBus.ObjectManager on the root object: the whole state in one call.

An applet calls GetManagedObjects once and then follows signals:
InterfacesAdded and InterfacesRemoved as servers and connections come and
go, PropertiesChanged for every change of their properties. Nothing else is
needed to stay in step with vpnd.

What a caller may read decides what it gets, as everywhere on vpnd's bus
(`vpnd.bus.access`): its own objects, every object for root, and the
system-wide servers (with their connections) for a user polkit lets manage
them, asked without a password dialog at every GetManagedObjects (so that
such a user also receives the signals of system-wide objects that appear
later). InterfacesAdded and InterfacesRemoved
go, addressed, to the same bus connections as the object's PropertiesChanged
(`Callers.recipients`). The root object itself is not among the managed
objects (the standard counts only the objects below the manager); read its
properties with Properties.GetAll.
"""

from __future__ import annotations

from typing import Any

from dbus_fast import Variant

from vpnd.bus import spec
from vpnd.bus.access import Gate, may_see
from vpnd.bus.caller import SYSTEM_OWNER, Call, Callers
from vpnd.bus.router import BusObject, Router

OBJECT_MANAGER1 = "org.freedesktop.DBus.ObjectManager"

#: One object's interfaces with their properties (GetManagedObjects, InterfacesAdded).
INTERFACES_SIGNATURE = "a{sa{sv}}"

INTERFACE = spec.Interface(
    OBJECT_MANAGER1,
    methods=(
        spec.Method("GetManagedObjects", (), (("objects", "a{o" + INTERFACES_SIGNATURE + "}"),)),
    ),
    properties={},
    signals=(
        spec.Signal("InterfacesAdded", (("object", "o"), ("interfaces", INTERFACES_SIGNATURE))),
        spec.Signal("InterfacesRemoved", (("object", "o"), ("interfaces", "as"))),
    ),
)


def interfaces(obj: BusObject, values: dict[str, Any]) -> dict[str, dict[str, Variant]]:
    """`obj`'s interface with every property, as the values in `values` (name → value)."""
    declared = obj.interface.properties
    return {obj.interface.name: {name: Variant(declared[name], values[name]) for name in declared}}


class ObjectManager:
    """Answers GetManagedObjects and sends InterfacesAdded/Removed for the objects under `root`."""

    def __init__(self, root: str, router: Router, callers: Callers, gate: Gate) -> None:
        self._root = root
        self._router = router
        self._callers = callers
        self._gate = gate

    async def managed_objects(self, call: Call) -> dict[str, dict[str, dict[str, Variant]]]:
        """Every object under the root that `call` may read, with all its properties."""
        # Anyone may ask; the answer holds only what the caller may read.
        await self._gate.require(call, call.uid)
        # Asked even while there is no system-wide object: polkit's yes also
        # makes the caller a recipient of the signals of those to come.
        administrator = await self._gate.may_read(call, SYSTEM_OWNER)
        found: dict[str, dict[str, dict[str, Variant]]] = {}
        for obj in self._router.below(self._root):
            owner = obj.owner
            if (
                owner is None
                or may_see(call.uid, owner)
                or (owner == SYSTEM_OWNER and administrator)
            ):
                found[obj.path] = interfaces(obj, await obj.properties(call))
        return found

    def added(self, obj: BusObject, values: dict[str, Any], *, owner: int) -> None:
        """InterfacesAdded for `obj` (its properties are `values`) to those who may read it."""
        self._router.emit_to(
            self._callers.recipients(owner),
            self._root,
            OBJECT_MANAGER1,
            "InterfacesAdded",
            INTERFACE.signal("InterfacesAdded").signature,
            [obj.path, interfaces(obj, values)],
        )

    def removed(self, obj: BusObject, *, owner: int) -> None:
        """InterfacesRemoved for `obj` to those who may read it."""
        self._router.emit_to(
            self._callers.recipients(owner),
            self._root,
            OBJECT_MANAGER1,
            "InterfacesRemoved",
            INTERFACE.signal("InterfacesRemoved").signature,
            [obj.path, [obj.interface.name]],
        )
