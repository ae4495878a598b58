"""ObjectManager on the real daemon: one GetManagedObjects, then signals, stay true.

Each test user runs a mirror (a raw D-Bus client, as that user): it calls
GetManagedObjects and Manager1's GetAll once, then applies every signal vpnd
sends it (InterfacesAdded, InterfacesRemoved, PropertiesChanged). At each
check it reads everything afresh and reports both: they must be equal, so a
property that changes without PropertiesChanged fails here. Another user's
mirror must stay empty and receive nothing, eavesdropping included.

Real pieces: a private system bus with vpnd's policy, polkitd with the rules
of tests/bus/test_users.py (vpndtest1 administers system-wide servers,
vpndtest2 may not connect), the daemon, vpnctl and the lab portal and
discovery server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bus.test_users import (
    CONNECTION,
    MANAGER,
    PROPERTIES,
    ROOT,
    SERVER,
    as_user,
    call,
    connect_and_hold,
    find,
    login,
    value,
)
from tests.bus.test_users import (
    private_bus as private_bus,
)
from tests.bus.test_users import (
    users as users,
)
from tests.lab.daemon import REPO, VpndProcess, ok, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.discovery import DiscoveryDaemon, DiscoveryServer, LabSigner, server_list
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.require import require_root

pytestmark = pytest.mark.bus

OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    require_root("other users and a system-type bus")


# Follows vpnd as an applet would, as the user it runs as. Commands on stdin:
# "check" prints {"mirror", "fresh", "signals", "strays"} as one JSON line;
# EOF ends it. `strays` are signals about objects the mirror does not know.
MIRROR = r"""
import json, sys
from jeepney import DBusAddress, HeaderFields, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import open_dbus_connection

DEST, ROOT = "org.vpnd.Daemon", "/org/vpnd/Daemon"
OM = DBusAddress(ROOT, bus_name=DEST, interface="org.freedesktop.DBus.ObjectManager")
PROPS = DBusAddress(ROOT, bus_name=DEST, interface="org.freedesktop.DBus.Properties")

def everything(conn):
    objects = conn.send_and_get_reply(new_method_call(OM, "GetManagedObjects"), timeout=30)
    root = conn.send_and_get_reply(
        new_method_call(PROPS, "GetAll", "s", ("org.vpnd.Manager1",)), timeout=30)
    assert objects.header.message_type.name == "method_return", objects.body
    state = {path: {i: dict(p) for i, p in ifaces.items()} for path, ifaces in objects.body[0].items()}
    state[ROOT] = {"org.vpnd.Manager1": dict(root.body[0])}
    return state

with open_dbus_connection(bus="SYSTEM") as conn:
    with conn.filter(MatchRule(type="signal"), bufsize=100000) as queue:
        rules = [MatchRule(type="signal", sender=DEST)]
        if sys.argv[1] == "eavesdrop":
            rules.append(MatchRule(type="signal", sender=DEST, eavesdrop=True))
        for rule in rules:
            conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=30)
        mirror = everything(conn)
        print("ready", flush=True)
        for line in sys.stdin:
            # Every signal sent before this reply has arrived once it is here.
            fresh = everything(conn)
            signals, strays = [], []
            while queue:
                msg = queue.popleft()
                fields = msg.header.fields
                if fields.get(HeaderFields.sender) == "org.freedesktop.DBus":
                    continue
                path, member = fields.get(HeaderFields.path), fields.get(HeaderFields.member)
                signals.append([path, fields.get(HeaderFields.interface), member, msg.body])
                if member == "InterfacesAdded":
                    mirror[msg.body[0]] = {i: dict(p) for i, p in msg.body[1].items()}
                elif member == "InterfacesRemoved":
                    if msg.body[0] not in mirror:
                        strays.append(signals[-1])
                    for name in msg.body[1]:
                        mirror.get(msg.body[0], {}).pop(name, None)
                    if not mirror.get(msg.body[0], True):
                        del mirror[msg.body[0]]
                elif member == "PropertiesChanged":
                    known = mirror.get(path, {}).get(msg.body[0])
                    if known is None:
                        strays.append(signals[-1])
                    else:
                        known.update(msg.body[1])
            print(json.dumps({"mirror": mirror, "fresh": fresh, "signals": signals,
                              "strays": strays}), flush=True)
"""


class Mirror:
    """One user's applet-like view of vpnd, kept by signals alone."""

    def __init__(self, uid: int | None, env: dict[str, str], *, eavesdrop: bool = False) -> None:
        self._proc = subprocess.Popen(
            as_user(uid, [sys.executable, "-c", MIRROR, "eavesdrop" if eavesdrop else "plain"]),
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            raise AssertionError(f"the mirror did not start: {self._proc.communicate()[1]}")
        # Every signal received so far, as [path, interface, member, body].
        self.signals: list[list[Any]] = []

    def check(self) -> dict[str, Any]:
        """The mirror and a fresh read, which must agree; the signals since the last check."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write("check\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        assert line, self._proc.communicate()[1]
        seen: dict[str, Any] = json.loads(line)
        self.signals += seen["signals"]
        assert seen["strays"] == [], seen["strays"]
        assert seen["mirror"] == seen["fresh"], _difference(seen["mirror"], seen["fresh"])
        return seen

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.communicate(timeout=30)

    def changed(self, path: str) -> set[str]:
        """The properties PropertiesChanged named for `path` so far."""
        return {
            name
            for p, interface, member, body in self.signals
            if p == path and interface == PROPERTIES and member == "PropertiesChanged"
            for name in body[1]
        }

    def members(self, interface: str) -> list[tuple[str, str]]:
        """(member, object) of every signal of `interface` (ObjectManager: the object named)."""
        return [
            (member, body[0] if interface == OBJECT_MANAGER else path)
            for path, iface, member, body in self.signals
            if iface == interface
        ]


def _difference(mirror: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """What the mirror got wrong, property by property."""
    lines = [f"{p}: mirror has it, vpnd not" for p in mirror.keys() - fresh.keys()]
    lines += [f"{p}: vpnd has it, the mirror not" for p in fresh.keys() - mirror.keys()]
    for path in mirror.keys() & fresh.keys():
        for interface, props in fresh[path].items():
            for name, now in props.items():
                was = mirror[path].get(interface, {}).get(name)
                if was != now:
                    lines.append(f"{path} {name}: signalled {was}, is {now}")
    return lines


@pytest.fixture
def env(private_bus: PrivateSystemBus) -> dict[str, str]:
    return {
        "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address,
        "LANG": "C.UTF-8",
        "LANGUAGE": "",
        "LC_ALL": "",
        "LC_MESSAGES": "",
    }


@pytest.fixture
def vpnd(tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI) -> Iterator[VpndProcess]:
    """A fresh vpnd; HTTP may wait long, so a silent /connect holds a connection in
    preparing, and a tunnel that cannot come up fails soon."""
    daemon = VpndProcess(
        tmp_path / "vpnd",
        private_bus.env({}),
        ca_file=lab_pki.ca_path,
        # No openvpn server answers on the bus lab: a connect fails when this runs out.
        settings={"http_timeout": 120, "connect_timeout": 3},
    )
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()


def members(node: ET.Element) -> set[tuple[str, str, str]]:
    """(kind, name, signature) of every method and signal of ObjectManager in `node`."""
    return {
        (member.tag, member.get("name", ""), "".join(a.get("type", "") for a in member.iter("arg")))
        for interface in node.iter("interface")
        if interface.get("name") == OBJECT_MANAGER
        for member in interface
        if member.tag in ("method", "signal")
    }


def managed(uid: int | None, env: dict[str, str]) -> dict[str, Any]:
    objects: dict[str, Any] = value(call(uid, env, ROOT, OBJECT_MANAGER, "GetManagedObjects"))
    return objects


def get_all(uid: int | None, env: dict[str, str], path: str, interface: str) -> dict[str, Any]:
    values: dict[str, Any] = value(call(uid, env, path, PROPERTIES, "GetAll", ("s", interface)))
    return values


# -- GetManagedObjects -----------------------------------------------------------


def test_get_managed_objects_gives_each_user_what_they_may_read(
    vpnd: VpndProcess,
    portal: TestPortal,
    env: dict[str, str],
    lab_pki: LabPKI,
    users: tuple[int, int],
) -> None:
    admin, user2 = users
    ok(vpnctl(["add", portal.base_url], env, user=admin))
    login(admin, env, lab_pki.ca_path, portal.host)
    mine = find(admin, env, portal.host)
    connection = connect_and_hold(admin, env, portal, mine, "guests")
    ok(vpnctl(["add", portal.base_url], env, user=user2))
    theirs = find(user2, env, portal.host)
    ok(vpnctl(["add", portal.base_url], env))
    system = find(None, env, portal.host)

    # The administrator: its own server and connection, and the system-wide server
    # (polkit lets it manage those); never user 2's.
    seen = managed(admin, env)
    assert set(seen) == {mine, connection, system}
    assert seen[mine] == {SERVER: get_all(admin, env, mine, SERVER)}
    assert seen[connection] == {CONNECTION: get_all(admin, env, connection, CONNECTION)}
    assert seen[mine][SERVER]["Owner"] == ["u", admin]
    assert seen[connection][CONNECTION]["State"] == ["s", "preparing"]
    # User 2, whom polkit does not let manage system-wide servers: its own server only.
    assert managed(user2, env) == {theirs: {SERVER: get_all(user2, env, theirs, SERVER)}}
    # Root reads everything.
    assert set(managed(None, env)) == {mine, connection, theirs, system}

    # The interface is there to be found, as written down, on the root object only.
    root = call(None, env, ROOT, "org.freedesktop.DBus.Introspectable", "Introspect")
    written = ET.parse(REPO / "data" / "dbus" / "org.vpnd.Daemon.xml").getroot()
    assert members(ET.fromstring(value(root))) == members(written) != set()
    elsewhere = call(admin, env, mine, OBJECT_MANAGER, "GetManagedObjects")
    assert elsewhere.get("error") == "org.freedesktop.DBus.Error.UnknownInterface", elsewhere
    ok(vpnctl(["disconnect"], env, user=admin))


# -- signals -------------------------------------------------------------------------


def test_one_call_and_then_signals_follow_every_change_and_only_to_who_may_read(
    vpnd: VpndProcess,
    portal: TestPortal,
    env: dict[str, str],
    lab_pki: LabPKI,
    users: tuple[int, int],
) -> None:
    admin, user2 = users
    owner, other, root = Mirror(admin, env), Mirror(user2, env, eavesdrop=True), Mirror(None, env)
    mirrors = (owner, other, root)

    def check() -> None:
        for mirror in mirrors:
            mirror.check()

    ok(vpnctl(["add", portal.base_url], env, user=admin))
    check()
    server = find(admin, env, portal.host)
    login(admin, env, lab_pki.ca_path, portal.host)
    check()
    first = connect_and_hold(admin, env, portal, server, "guests")
    check()
    ok(vpnctl(["disconnect"], env, user=admin))
    check()
    portal.reset()
    # The portal issues a configuration and no tunnel comes up here: the
    # connection goes through its states to failed, with its error.
    vpnctl(["connect", portal.host, "--profile", "guests"], env, user=admin)
    second = str(
        value(call(admin, env, ROOT, PROPERTIES, "Get", ("s", MANAGER), ("s", "ActiveConnection")))[
            1
        ]
    )
    check()
    ok(vpnctl(["remove", portal.host], env, user=admin))
    check()
    # A system-wide server: root's, and the administrator's through polkit.
    ok(vpnctl(["add", portal.base_url], env))
    system = find(None, env, portal.host)
    call(None, env, system, SERVER, "SetAutoconnect", ("s", "guests"))
    check()
    for mirror in mirrors:
        mirror.close()

    assert other.signals == []
    for mirror in (owner, root):
        assert mirror.members(OBJECT_MANAGER) == [
            ("InterfacesAdded", server),
            ("InterfacesAdded", first),
            ("InterfacesRemoved", first),
            ("InterfacesAdded", second),
            ("InterfacesRemoved", server),
            ("InterfacesAdded", system),
        ]
        assert {"Authorized", "AuthorizationPending"} <= mirror.changed(server)
        assert {"State"} <= mirror.changed(first)
        assert {"State", "SessionExpiry", "Error", "ErrorMessage"} <= mirror.changed(second)
        assert "ActiveConnection" in mirror.changed(ROOT)
    # The administrator was let in by polkit at its GetManagedObjects, so it follows
    # the system-wide server as root does.
    assert "Autoconnect" in owner.changed(system)
    assert "Autoconnect" in root.changed(system)


# -- what the discovery lists say --------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> LabSigner:
    return LabSigner()


def test_display_name_follows_the_discovery_list_with_a_signal(
    tmp_path: Path,
    private_bus: PrivateSystemBus,
    portal: TestPortal,
    env: dict[str, str],
    lab_pki: LabPKI,
    signer: LabSigner,
    users: tuple[int, int],
) -> None:
    admin, _user2 = users
    with DiscoveryServer(lab_pki) as lists:
        # No list at first: the server has no display name.
        daemon = DiscoveryDaemon(
            tmp_path / "vpnd",
            private_bus.env({}),
            ca_file=lab_pki.ca_path,
            settings={"discovery_url": lists.base_url},
            keys=[signer.public_key],
        )
        daemon.start()
        try:
            ok(vpnctl(["add", portal.base_url], env, user=admin))
            server = find(admin, env, portal.host)
            owner = Mirror(admin, env)
            assert owner.check()["fresh"][server][SERVER]["DisplayName"] == ["s", ""]
            listed = {
                "server_type": "institute_access",
                "base_url": portal.base_url,
                "display_name": "Lab Portal",
                "support_contact": ["mailto:help@lab.example"],
            }
            lists.publish("server_list.json", server_list(1, [listed]), signer)
            # A search when no list could be fetched fetches it again.
            ok(vpnctl(["discover", "--json"], env, user=admin))
            seen = owner.check()
            assert seen["fresh"][server][SERVER]["DisplayName"] == ["s", "Lab Portal"]
            assert seen["fresh"][server][SERVER]["SupportContact"] == [
                "as",
                ["mailto:help@lab.example"],
            ]
            assert {"DisplayName", "SupportContact"} <= owner.changed(server)
            owner.close()
        finally:
            assert daemon.stop() == 0, daemon.log()
        assert "Traceback" not in daemon.log(), daemon.log()
