"""Every property change reaches a reader as a signal: the manager's flows, published by the
real bus frontend, mirrored by signals alone.

A reader calls GetManagedObjects once and then applies only the signals the
frontend sends it (InterfacesAdded, InterfacesRemoved, PropertiesChanged).
After each step of the flows (a login, every tunnel event of a connection's
life, a reconnect, a second connection, connect at start, the discovery
lists, removal) its copy must equal what GetManagedObjects and GetAll say
now: a property that changes without PropertiesChanged fails here. The
tunnel, families and login are the fakes of test_manager (tests/bus and
tests/e2e run the real ones); the frontend, router, gate and ObjectManager
are the daemon's own, on a bus that records what they send.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant

from tests.unit.test_bus_router import Authority, FakeBus
from tests.unit.test_manager import OWNER, URL, World, finished, login_ended, settled_tunnel
from vpnd.bus import spec
from vpnd.bus.objects import BusFrontend
from vpnd.errors import ServerError
from vpnd.manager import SYSTEM_OWNER
from vpnd.protocols.connstate import State
from vpnd.protocols.discovery import DiscoveredServer
from vpnd.tunnel.events import Lost, Progress, Traffic, TunnelExited, Up

READER = ":1.1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
Objects = dict[str, dict[str, dict[str, Variant]]]


class Lists:
    """What the kept discovery lists say of servers, as the test sets it."""

    def __init__(self) -> None:
        self.entries: dict[str, DiscoveredServer] = {}

    def listed(self, base_url: str, org_id: str = "") -> DiscoveredServer | None:
        return self.entries.get(base_url)


class Reader:
    """One bus connection that called GetManagedObjects once and follows signals since."""

    def __init__(self, bus: FakeBus, frontend: BusFrontend) -> None:
        self.bus, self.frontend = bus, frontend
        self.serial = 100
        self.seen = 0
        self.mirror: Objects = {}
        # The properties named by PropertiesChanged, per object.
        self.changed: dict[str, set[str]] = {}

    async def ask(self, interface: str, member: str, signature: str = "", *body: Any) -> Any:
        self.serial += 1
        message = Message(
            path=spec.ROOT_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
            sender=READER,
            serial=self.serial,
        )
        assert any(handler(message) for handler in list(self.bus.handlers))
        await self.frontend.router.settle()
        [reply] = [m for m in self.bus.sent if m.reply_serial == self.serial]
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body[0]

    async def everything(self) -> Objects:
        objects: Objects = await self.ask(OBJECT_MANAGER, "GetManagedObjects")
        root = await self.ask(spec.PROPERTIES, "GetAll", "s", spec.MANAGER1)
        return {**objects, spec.ROOT_PATH: {spec.MANAGER1: root}}

    async def start(self) -> None:
        self.mirror = await self.everything()
        self.seen = len(self.bus.sent)

    def follow(self) -> None:
        """Apply the signals sent to this reader since the last time."""
        self.frontend.router.flush()
        for message in self.bus.sent[self.seen :]:
            if message.message_type is not MessageType.SIGNAL or message.destination != READER:
                continue
            path, body = message.path or "", message.body
            if message.member == "InterfacesAdded":
                self.mirror[body[0]] = {name: dict(props) for name, props in body[1].items()}
            elif message.member == "InterfacesRemoved":
                del self.mirror[body[0]]
            elif message.member == "PropertiesChanged":
                # An object the reader was never told of would be a stray signal: KeyError.
                self.mirror[path][body[0]].update(body[1])
                self.changed.setdefault(path, set()).update(body[1])
        self.seen = len(self.bus.sent)

    async def check(self) -> None:
        """The mirror is what vpnd says now."""
        await asyncio.sleep(0)
        self.follow()
        now = await self.everything()
        self.seen = len(self.bus.sent)
        wrong = [
            f"{path} {name}: signalled {self.mirror.get(path, {}).get(iface, {}).get(name)},"
            f" is {value}"
            for path, interfaces in now.items()
            for iface, props in interfaces.items()
            for name, value in props.items()
            if self.mirror.get(path, {}).get(iface, {}).get(name) != value
        ]
        assert not wrong and set(now) == set(self.mirror), (wrong, set(now) ^ set(self.mirror))


async def published(tmp_path: Path) -> tuple[World, Reader, Lists]:
    world = World(tmp_path)
    bus = FakeBus({READER: OWNER})
    frontend = BusFrontend(bus, Authority())  # type: ignore[arg-type]
    lists = Lists()
    frontend.discovery = lists  # type: ignore[assignment]
    world.listener = frontend  # type: ignore[assignment]
    world.manager = world.new_manager()
    frontend.attach(world.manager)
    reader = Reader(bus, frontend)
    await reader.start()
    return world, reader, lists


async def test_a_connections_whole_life_reaches_a_reader_by_signals_alone(tmp_path: Path) -> None:
    world, reader, _lists = await published(tmp_path)
    server = await world.add()
    await reader.check()

    await world.manager.authorize(server, OWNER)
    await reader.check()
    world.login.pending[-1].browser.set_result(None)
    await login_ended(server)
    await reader.check()

    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    await reader.check()
    tunnel = world.tunnels[-1]
    tunnel.emit(Progress("WAIT"))
    await reader.check()
    tunnel.ask("Need 'Auth' username/password")
    assert connection.state is State.NEEDS_INPUT
    await reader.check()
    world.manager.answer(connection, connection.prompt_id, {"username": "u", "password": "p"})
    await reader.check()
    tunnel.emit(Up("10.8.0.2", "fd00::2", "198.51.100.1", "1194"))
    assert connection.state is State.CONNECTED
    await reader.check()
    tunnel.emit(Traffic(1234, 5678))
    await reader.check()
    tunnel.emit(Lost("ping-restart"))
    await reader.check()
    # openvpn gives up: vpnd makes another tunnel with a fresh configuration.
    tunnel.emit(TunnelExited(1, "killed", requested=False))
    await settled_tunnel(world, connection)
    while world.tunnels[-1] is tunnel or not world.tunnels[-1].started:
        await asyncio.sleep(0)
    await reader.check()
    world.tunnels[-1].emit(Up("10.8.0.3", "", "198.51.100.1", "443"))
    await reader.check()
    await world.manager.disconnect(connection)
    await finished(connection)
    await reader.check()

    # A second connection replaces the first as the active one.
    second = world.manager.connect(server, "employees", prefer_tcp=True)
    await settled_tunnel(world, second)
    await reader.check()
    await world.manager.disconnect(second)
    await reader.check()
    await world.manager.remove_server(server)
    await reader.check()

    first, later = f"{spec.CONNECTIONS_PATH}/1", f"{spec.CONNECTIONS_PATH}/2"
    assert {"Authorized", "AuthorizationPending", "SessionExpiry"} <= reader.changed[
        f"{spec.SERVERS_PATH}/{server.server_id}"
    ]
    assert {
        "State",
        "Detail",
        "Prompt",
        "TunnelIP",
        "TunnelIPv6",
        "Remote",
        "ConnectedSince",
        "BytesIn",
        "BytesOut",
        "SessionExpiry",
    } <= reader.changed[first]
    assert "State" in reader.changed[later]
    assert "ActiveConnection" in reader.changed[spec.ROOT_PATH]


async def test_a_failure_and_the_servers_own_settings_reach_a_reader(tmp_path: Path) -> None:
    world, reader, lists = await published(tmp_path)
    world.v3.speaks.add(URL)
    # A system-wide server (polkit, here, lets the reader manage those) and one of its own.
    system = await world.manager.add_server(SYSTEM_OWNER, URL)
    mine = await world.add()
    await world.manager.authorize(mine, OWNER)
    world.login.pending[-1].browser.set_result(None)
    await login_ended(mine)
    await reader.check()
    assert f"{spec.SERVERS_PATH}/{system.server_id}" in reader.mirror

    world.v3.obtain_error = ServerError("the server has no configuration for this profile")
    connection = world.manager.connect(mine, "employees", prefer_tcp=False)
    await finished(connection)
    assert connection.state is State.FAILED
    await reader.check()

    world.manager.set_autoconnect(system, "employees")
    await reader.check()
    home_url = "https://home.example.org/"
    world.v3.speaks.add(home_url)
    home = await world.manager.add_server(
        OWNER, home_url, "eduvpn-v3", org_id="https://idp.example"
    )
    world.manager.set_location(home, "https://nl.example.org/")
    await reader.check()
    lists.entries[URL] = DiscoveredServer(
        server_type="institute_access",
        base_url=URL,
        display_name={"en": "Example VPN"},
        support_contact=("mailto:help@example.org",),
    )
    reader.frontend.listed_changed()
    await reader.check()
    path = f"{spec.SERVERS_PATH}/{mine.server_id}"
    assert reader.mirror[path][spec.SERVER1]["DisplayName"] == Variant("s", "Example VPN")
    assert {"DisplayName", "SupportContact"} <= reader.changed[path]
    assert {"Error", "ErrorMessage", "State"} <= reader.changed[f"{spec.CONNECTIONS_PATH}/1"]
    assert "Autoconnect" in reader.changed[f"{spec.SERVERS_PATH}/{system.server_id}"]
    assert "Location" in reader.changed[f"{spec.SERVERS_PATH}/{home.server_id}"]
