#!/usr/bin/env python3
"""Follow vpnd as a desktop applet would: one GetManagedObjects call, then signals only.

Prints every server and connection the user may see, then one line per
change, until interrupted. Needs only jeepney (Debian: python3-jeepney).
vpnd addresses each signal to the bus connections that may read the object
and have called vpnd, so the GetManagedObjects call below is also what
subscribes this connection; no match rule is needed.
"""

import contextlib
from typing import Any

from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, new_method_call
from jeepney.io.blocking import open_dbus_connection

DEST, ROOT = "org.vpnd.Daemon", "/org/vpnd/Daemon"


def plain(value: Any) -> Any:
    """A D-Bus value without jeepney's (signature, value) variant pairs."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return plain(value[1])
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def describe(path: str, interfaces: dict[str, dict[str, Any]]) -> str:
    """One line for an object: what it is and the property a person looks at first."""
    if "org.vpnd.Server1" in interfaces:
        server = plain(interfaces["org.vpnd.Server1"])
        return f"{path} server {server['Host']} authorized={server['Authorized']}"
    connection = plain(interfaces.get("org.vpnd.Connection1", {}))
    return f"{path} connection {connection.get('ServerUrl')} {connection.get('State')}"


def main() -> None:
    with open_dbus_connection(bus="SYSTEM") as bus, bus.filter(MatchRule(type="signal")) as signals:
        manager = DBusAddress(ROOT, DEST, "org.freedesktop.DBus.ObjectManager")
        reply = bus.send_and_get_reply(new_method_call(manager, "GetManagedObjects"))
        if reply.header.message_type is MessageType.error:
            raise SystemExit(f"cannot read vpnd's state: {reply.body[0] if reply.body else ''}")
        objects = reply.body[0]
        for path in sorted(objects):
            print("have", describe(path, objects[path]), flush=True)
        print(f"following vpnd: {len(objects)} objects", flush=True)
        while True:
            message = bus.recv_until_filtered(signals)
            path = message.header.fields.get(HeaderFields.path, "")
            member = message.header.fields.get(HeaderFields.member)
            if not path.startswith(ROOT):
                continue  # the bus daemon's own signals
            if member == "InterfacesAdded":
                print("added", describe(*message.body), flush=True)
            elif member == "InterfacesRemoved":
                print("removed", message.body[0], flush=True)
            elif member == "PropertiesChanged":
                changes = " ".join(f"{k}={v!r}" for k, v in plain(message.body[1]).items())
                print("changed", path, changes, flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
