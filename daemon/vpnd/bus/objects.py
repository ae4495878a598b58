"""The D-Bus objects: the daemon's only public surface.

Each method validates its arguments, decides access through the Gate
(ownership, then polkit), delegates to the manager and returns what the
interface declares (`vpnd.bus.spec`). Flow logic lives in the manager; the
router (`vpnd.bus.router`) does the D-Bus plumbing; this module translates.

What other users learn: nothing of a user's servers or connections. They
cannot read, list, introspect or use them, and signals about them go only to
the owner's bus connections (and root's, and for system-wide servers to
administrators polkit let in). ActiveConnection is "/" for a caller who may
not read the connection; Connect while another user's connection is up is
refused as Busy without naming it.
"""

from __future__ import annotations

import logging
from typing import Any

from dbus_fast import Variant
from dbus_fast.aio import MessageBus

from vpnd import __version__
from vpnd.bus import objectmanager, polkit, spec, validate
from vpnd.bus.access import NOT_YOURS, Gate
from vpnd.bus.caller import SYSTEM_OWNER, Call, Callers
from vpnd.bus.objectmanager import ObjectManager
from vpnd.bus.router import BusObject, Router
from vpnd.bus.sleep import SleepWatch
from vpnd.discovery import DISCOVERY_FIELDS, Discovery, DiscoveryDisabled, discovery_records
from vpnd.errors import NotAuthorized, NotFound, VpndError
from vpnd.manager import Connection, Manager, Server
from vpnd.protocols import lang
from vpnd.protocols.discovery import DiscoveredServer

log = logging.getLogger("vpnd.bus")

ROOT_PATH = spec.ROOT_PATH
SERVERS_PATH = spec.SERVERS_PATH
CONNECTIONS_PATH = spec.CONNECTIONS_PATH


def server_path(server: Server) -> str:
    """The object path of a server."""
    return f"{SERVERS_PATH}/{server.server_id}"


def connection_path(connection: Connection) -> str:
    """The object path of a connection."""
    return f"{CONNECTIONS_PATH}/{connection.conn_id}"


def server_properties(server: Server) -> dict[str, Any]:
    """A server's Server1 property values."""
    return {
        "Url": server.url,
        "Host": server.host,
        "Owner": server.owner,
        "Kind": server.kind,
        "Authorized": server.authorized,
        "AuthorizationPending": server.authorization_pending,
        "SessionExpiry": int(server.record.session_expiry),
        "Autoconnect": server.record.autoconnect,
        "OrgId": server.record.org_id,
        "Location": server.record.location,
    }


def connection_properties(connection: Connection) -> dict[str, Any]:
    """A connection's Connection1 property values."""
    return {
        "State": str(connection.state),
        "Detail": connection.detail,
        "Server": server_path(connection.server),
        "ServerUrl": connection.server.url,
        "Profile": connection.profile_id,
        "Owner": connection.owner,
        "TunnelIP": connection.tunnel_ip,
        "TunnelIPv6": connection.tunnel_ipv6,
        "Remote": connection.remote,
        "BytesIn": connection.bytes_in,
        "BytesOut": connection.bytes_out,
        "ConnectedSince": int(connection.connected_since),
        "SessionExpiry": int(connection.session_expiry),
        "Error": connection.error,
        "ErrorMessage": connection.error_message,
        "Prompt": prompt_properties(connection),
        "DnsServers": [str(s) for s in connection.dns.servers] if connection.dns else [],
        "DnsDomains": dns_domains(connection),
    }


def dns_domains(connection: Connection) -> list[str]:
    """Connection1.DnsDomains: search domains, then routing-only ones as `~name`
    (`~.` when every name goes to the tunnel), as resolvectl shows them."""
    dns = connection.dns
    if dns is None:
        return []
    domains = list(dns.search_domains) + [f"~{d}" for d in dns.routing_domains]
    return domains + (["~."] if dns.default_route else [])


def prompt_properties(connection: Connection) -> dict[str, Variant]:
    """Connection1.Prompt: what openvpn asks a person now; empty when nothing.

    `id` names the question in Answer; `kind` is credentials, challenge, text
    or web; `fields` are (name, label, echo, required); `url` is where a web
    login happens (kind web, which takes no answer over the bus).
    """
    question = connection.question
    if question is None:
        return {}
    return {
        "id": Variant("u", connection.prompt_id),
        "kind": Variant("s", question.kind),
        "message": Variant("s", question.message),
        "url": Variant("s", question.url),
        "fields": Variant(
            "a(ssbb)", [[f.name, f.label, f.echo, f.required] for f in question.fields]
        ),
    }


def listed_properties(frontend: BusFrontend, server: Server) -> dict[str, Any]:
    """DisplayName and SupportContact: what the kept discovery lists say of the
    server (of its organization, for secure internet); "" and [] when nothing."""
    discovery = frontend.discovery
    if discovery is None:
        return {"DisplayName": "", "SupportContact": []}
    listed = discovery.listed(server.url)
    organization = (
        discovery.listed(server.url, server.record.org_id) if server.record.org_id else None
    )
    named = organization or listed
    name = lang.choose(named.display_name, ()) if named is not None else ""
    contacts = list(listed.support_contact) if isinstance(listed, DiscoveredServer) else []
    return {"DisplayName": name, "SupportContact": contacts}


def _server_map(frontend: BusFrontend, servers: list[Server]) -> dict[str, dict[str, Variant]]:
    signatures = spec.SERVER.properties
    return {
        server_path(s): {
            name: Variant(signatures[name], value)
            for name, value in {**server_properties(s), **listed_properties(frontend, s)}.items()
        }
        for s in servers
    }


class ManagerObject(BusObject):
    """org.vpnd.Manager1 on /org/vpnd/Daemon: anyone may call it; it shows each caller their own."""

    interface = spec.MANAGER
    also = (objectmanager.INTERFACE,)

    def __init__(self, frontend: BusFrontend) -> None:
        super().__init__(ROOT_PATH)
        self._frontend = frontend

    @property
    def _manager(self) -> Manager:
        return self._frontend.manager

    @property
    def _gate(self) -> Gate:
        return self._frontend.gate

    async def AddServer(self, call: Call, url: str) -> str:
        url = validate.url(url)
        await self._gate.require(call, call.uid, polkit.MANAGE_OWN_SERVERS)
        return server_path(await self._manager.add_server(call.uid, url))

    async def AddSystemServer(self, call: Call, url: str) -> str:
        url = validate.url(url)
        await self._gate.require(call, SYSTEM_OWNER, polkit.MANAGE_OWN_SERVERS)
        return server_path(await self._manager.add_server(SYSTEM_OWNER, url))

    async def AddServerWithOptions(self, call: Call, url: str, options: dict[str, Any]) -> str:
        kind, system = validate.add_options(options)
        org_id = validate.add_org_id(options)
        url = validate.url(url) if url or not org_id else ""
        owner = SYSTEM_OWNER if system else call.uid
        await self._gate.require(call, owner, polkit.MANAGE_OWN_SERVERS)
        if org_id:
            # Secure internet: the organization's home server, from the signed list.
            organization = await self._frontend.lists().organization(org_id)
            url, kind = organization.secure_internet_home, "secure-internet"
        return server_path(await self._manager.add_server(owner, url, kind, org_id=org_id))

    async def RemoveServer(self, call: Call, path: str) -> None:
        server = self._frontend.server_at(validate.server_path(path))
        await self._gate.require(call, server.owner, polkit.MANAGE_OWN_SERVERS)
        await self._manager.remove_server(server)

    async def FindServer(self, call: Call, query: str) -> str:
        query = validate.query(query)
        await self._gate.require(call, call.uid)
        return server_path(self._manager.find_server(call.uid, query))

    async def FindSystemServer(self, call: Call, query: str) -> str:
        query = validate.query(query)
        await self._gate.require(call, SYSTEM_OWNER)
        try:
            return server_path(self._manager.find_server(SYSTEM_OWNER, query))
        except NotFound:
            raise NotFound(f"no system-wide server matches {query!r}") from None

    async def ListServers(self, call: Call) -> dict[str, dict[str, Variant]]:
        await self._gate.require(call, call.uid)
        return _server_map(self._frontend, self._manager.servers_of(call.uid))

    async def ListSystemServers(self, call: Call) -> dict[str, dict[str, Variant]]:
        await self._gate.require(call, SYSTEM_OWNER)
        return _server_map(self._frontend, self._manager.servers_of(SYSTEM_OWNER))

    async def Disconnect(self, call: Call) -> None:
        connection = self._manager.connection
        if connection is None or connection.machine.finished:
            await self._gate.require(call, call.uid)
            return
        try:
            await self._gate.require(call, connection.owner, polkit.CONNECT)
        except NotAuthorized as exc:
            if exc.message != NOT_YOURS:
                raise
            raise NotAuthorized(
                "the VPN connection was made by another user; only they or root can end it"
            ) from None
        await self._manager.disconnect(connection)

    async def Discover(
        self, call: Call, query: str, options: dict[str, Any]
    ) -> list[dict[str, Variant]]:
        query = validate.search_text(query)
        kinds, language, limit = validate.discover_options(options)
        # The lists are public: every caller may search them.
        await self._gate.require(call, call.uid)
        result = await self._frontend.lists().search(query, kinds=kinds, limit=limit)
        return [
            {name: Variant(DISCOVERY_FIELDS[name], value) for name, value in record.items()}
            for record in discovery_records(result, language)
        ]

    async def GetManagedObjects(self, call: Call) -> dict[str, dict[str, dict[str, Variant]]]:
        return await self._frontend.objects.managed_objects(call)

    async def properties(self, call: Call) -> dict[str, Any]:
        connection = self._manager.connection
        visible = connection is not None and await self._gate.may_read(call, connection.owner)
        return {
            "Version": __version__,
            "ActiveConnection": connection_path(connection)
            if connection is not None and visible
            else "/",
        }


class ServerObject(BusObject):
    """org.vpnd.Server1: one added server, its owner's alone."""

    interface = spec.SERVER

    def __init__(self, frontend: BusFrontend, server: Server) -> None:
        super().__init__(server_path(server))
        self._frontend = frontend
        self.server = server
        # DisplayName and SupportContact as last published: the lists they come from change.
        self.listed = listed_properties(frontend, server)

    @property
    def owner(self) -> int:
        return self.server.owner

    async def Authorize(self, call: Call) -> str:
        await self._frontend.gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        return await self._frontend.manager.authorize(self.server, call.uid)

    async def CompleteAuthorization(self, call: Call, address: str) -> None:
        address = validate.text(address, "address", limit=8192)
        await self._frontend.gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        self._frontend.manager.complete_authorization(self.server, address)

    async def Renew(self, call: Call) -> str:
        await self._frontend.gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        return await self._frontend.manager.renew(self.server, call.uid)

    async def GetProfiles(self, call: Call, locale: str) -> list[dict[str, Variant]]:
        locale = validate.locale(locale)
        await self._frontend.gate.require(call, self.owner)
        profiles = await self._frontend.manager.profiles(self.server, locale)
        return [
            {
                "profile_id": Variant("s", p["profile_id"]),
                "display_name": Variant("s", p["display_name"]),
                "default_gateway": Variant("b", p["default_gateway"]),
                "vpn_proto_list": Variant("as", p["vpn_proto_list"]),
            }
            for p in profiles
        ]

    async def GetMessages(self, call: Call, locale: str) -> list[dict[str, Variant]]:
        locale = validate.locale(locale)
        await self._frontend.gate.require(call, self.owner)
        messages = await self._frontend.manager.messages(self.server, locale)
        return [
            {
                "type": Variant("s", m["type"]),
                "text": Variant("s", m["text"]),
                "date_time": Variant("t", int(m["date_time"])),
                "begin": Variant("t", int(m["begin"])),
                "end": Variant("t", int(m["end"])),
            }
            for m in messages
        ]

    async def SignIn(self, call: Call, fields: dict[str, str]) -> dict[str, Variant]:
        fields = validate.sign_in_fields(fields)
        await self._frontend.gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        asked = await self._frontend.manager.sign_in(self.server, fields)
        signatures = {"challenge": "s", "echo": "b", "response_required": "b"}
        return {key: Variant(signatures[key], value) for key, value in asked.items()}

    async def Connect(self, call: Call, profile_id: str, options: dict[str, Any]) -> str:
        profile_id = validate.profile_id(profile_id)
        prefer_tcp = validate.connect_options(options)
        await self._frontend.gate.require(call, self.owner, polkit.CONNECT)
        connection = self._frontend.manager.connect(self.server, profile_id, prefer_tcp=prefer_tcp)
        return connection_path(connection)

    async def SetLocation(self, call: Call, where: str) -> None:
        where = validate.location(where)
        await self._frontend.gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        location = ""
        if where:
            wanted = where.lower().rstrip("/")
            matches = [
                server
                for server in await self._frontend.lists().locations()
                if server.country_code.lower() == wanted
                or server.base_url.lower().rstrip("/") == wanted
            ]
            if not matches:
                raise NotFound(f"the server list has no secure-internet location {where!r}")
            location = matches[0].base_url
        self._frontend.manager.set_location(self.server, location)

    async def SetAutoconnect(self, call: Call, profile_id: str) -> None:
        profile_id = validate.profile_id(profile_id) if profile_id else ""
        await self._frontend.gate.require(call, self.owner, polkit.MANAGE_OWN_SERVERS)
        self._frontend.manager.set_autoconnect(self.server, profile_id)

    def values(self) -> dict[str, Any]:
        """Every Server1 property's value (the same for every caller who may read it)."""
        return {**server_properties(self.server), **listed_properties(self._frontend, self.server)}

    async def properties(self, call: Call) -> dict[str, Any]:
        return self.values()


class ConnectionObject(BusObject):
    """org.vpnd.Connection1: one connection attempt, its owner's alone."""

    interface = spec.CONNECTION

    def __init__(self, frontend: BusFrontend, connection: Connection) -> None:
        super().__init__(connection_path(connection))
        self._frontend = frontend
        self.connection = connection

    @property
    def owner(self) -> int:
        return self.connection.owner

    async def Disconnect(self, call: Call) -> None:
        await self._frontend.gate.require(call, self.owner, polkit.CONNECT)
        await self._frontend.manager.disconnect(self.connection)

    async def Answer(self, call: Call, prompt_id: int, values: dict[str, str]) -> None:
        values = validate.answer_values(values)
        await self._frontend.gate.require(call, self.owner, polkit.CONNECT)
        self._frontend.manager.answer(self.connection, prompt_id, values)

    def values(self) -> dict[str, Any]:
        """Every Connection1 property's value (the same for every caller who may read it)."""
        return connection_properties(self.connection)

    async def properties(self, call: Call) -> dict[str, Any]:
        return self.values()


_SERVER_FIELDS = {
    "authorized": "Authorized",
    "authorization_pending": "AuthorizationPending",
    "session_expiry": "SessionExpiry",
    "autoconnect": "Autoconnect",
    "location": "Location",
}
_CONNECTION_FIELDS = {
    "state": "State",
    "detail": "Detail",
    "tunnel_ip": "TunnelIP",
    "tunnel_ipv6": "TunnelIPv6",
    "remote": "Remote",
    "bytes_in": "BytesIn",
    "bytes_out": "BytesOut",
    "connected_since": "ConnectedSince",
    "session_expiry": "SessionExpiry",
    "error": "Error",
    "error_message": "ErrorMessage",
    "prompt": "Prompt",
    "dns_servers": "DnsServers",
    "dns_domains": "DnsDomains",
}


class BusFrontend:
    """Publishes the manager's objects on the bus and implements its Listener."""

    def __init__(self, bus: MessageBus, authority: polkit.Authority | None = None) -> None:
        self.bus = bus
        self.callers = Callers(bus)
        self._authority = authority or polkit.Authority(bus)
        self.gate = Gate(self.callers, self._authority)
        self.router = Router(bus, self.callers, self.gate)
        self.objects = ObjectManager(ROOT_PATH, self.router, self.callers, self.gate)
        self._manager: Manager | None = None
        self._root = ManagerObject(self)
        # Who owned the connection ActiveConnection last pointed at.
        self._active_owner: int | None = None
        self._sleep: SleepWatch | None = None
        # The discovery lists Manager1.Discover searches (the service sets them).
        self.discovery: Discovery | None = None

    def lists(self) -> Discovery:
        """The discovery lists; DiscoveryDisabled when this daemon reads none."""
        if self.discovery is None:
            raise DiscoveryDisabled("this daemon does not read discovery lists")
        return self.discovery

    @property
    def manager(self) -> Manager:
        """The manager this frontend serves."""
        assert self._manager is not None, "attach() first"
        return self._manager

    def attach(self, manager: Manager) -> None:
        """Serve `manager`: take method calls and publish the root object."""
        self._manager = manager
        self._sleep = SleepWatch(self.bus, manager.woke)
        self._sleep.watch()
        self.callers.watch()
        self.router.install()
        self.router.add(self._root)

    def rebind(self, bus: MessageBus, *, same_daemon: bool) -> None:
        """Serve the same objects on `bus`, a connection made after the old one was lost.

        `same_daemon`: the bus daemon is the one of the lost connection (same
        bus id), so the callers it named are still who they were.
        """
        self.bus = bus
        self.callers.rebind(bus, same_daemon=same_daemon)
        if self._sleep is not None:
            self._sleep.rebind(bus)
        self._authority.rebind(bus)
        self.router.rebind(bus)

    def server_at(self, path: str) -> Server:
        """The server served at `path`."""
        obj = self.router.get(path)
        if not isinstance(obj, ServerObject):
            raise NotFound(f"no server at {path}")
        return obj.server

    def _server_object(self, server: Server) -> ServerObject | None:
        obj = self.router.get(server_path(server))
        return obj if isinstance(obj, ServerObject) else None

    def _connection_object(self, connection: Connection) -> ConnectionObject | None:
        obj = self.router.get(connection_path(connection))
        return obj if isinstance(obj, ConnectionObject) else None

    # -- Listener ---------------------------------------------------------

    def server_added(self, server: Server) -> None:
        obj = ServerObject(self, server)
        self.router.add(obj)
        self.objects.added(obj, obj.values(), owner=server.owner)
        self.router.emit(self._root, "ServerAdded", [obj.path], owner=server.owner)

    def server_removed(self, server: Server) -> None:
        path = server_path(server)
        obj = self._server_object(server)
        self.router.remove(path)
        if obj is not None:
            self.objects.removed(obj, owner=server.owner)
        self.router.emit(self._root, "ServerRemoved", [path], owner=server.owner)

    def listed_changed(self) -> None:
        """The discovery lists in use changed: publish the servers' DisplayName and
        SupportContact where they now read differently."""
        for obj in self.router.below(SERVERS_PATH):
            if not isinstance(obj, ServerObject):
                continue
            now = listed_properties(self, obj.server)
            changed = {name: value for name, value in now.items() if obj.listed[name] != value}
            obj.listed = now
            if changed:
                self.router.emit_properties_changed(obj, changed, owner=obj.owner)

    def server_changed(self, server: Server, fields: set[str]) -> None:
        obj = self._server_object(server)
        if obj is None:
            return
        values = server_properties(server)
        changed = {_SERVER_FIELDS[f]: values[_SERVER_FIELDS[f]] for f in fields}
        self.router.emit_properties_changed(obj, changed, owner=server.owner)

    def authorization_finished(self, server: Server, error: VpndError | None) -> None:
        obj = self._server_object(server)
        if obj is None:
            return
        body: list[Any] = [True, "", ""]
        if error is not None:
            body = [False, error.dbus_name, error.message]
        self.router.emit(obj, "AuthorizationFinished", body, owner=server.owner)

    def connection_added(self, connection: Connection) -> None:
        obj = ConnectionObject(self, connection)
        self.router.add(obj)
        self.objects.added(obj, obj.values(), owner=connection.owner)
        readers = self.callers.recipients(connection.owner)
        self.router.emit_properties_changed(
            self._root, {"ActiveConnection": obj.path}, owner=connection.owner, to=readers
        )
        if self._active_owner is not None and self._active_owner != connection.owner:
            # Those who saw the last connection and may not see this one see none.
            others = sorted(set(self.callers.recipients(self._active_owner)) - set(readers))
            self.router.emit_properties_changed(
                self._root, {"ActiveConnection": "/"}, owner=self._active_owner, to=others
            )
        self._active_owner = connection.owner

    def connection_removed(self, connection: Connection) -> None:
        obj = self._connection_object(connection)
        self.router.remove(connection_path(connection))
        if obj is not None:
            self.objects.removed(obj, owner=connection.owner)

    def session_expiring(self, connection: Connection, seconds_left: int) -> None:
        obj = self._connection_object(connection)
        if obj is None:
            return
        body = [seconds_left, int(connection.session_expiry)]
        self.router.emit(obj, "SessionExpiring", body, owner=connection.owner)

    def connection_changed(self, connection: Connection, fields: set[str]) -> None:
        obj = self._connection_object(connection)
        if obj is None:
            return
        values = connection_properties(connection)
        changed = {_CONNECTION_FIELDS[f]: values[_CONNECTION_FIELDS[f]] for f in fields}
        self.router.emit_properties_changed(obj, changed, owner=connection.owner)
        if "state" in fields:
            self.router.emit(
                obj,
                "StateChanged",
                [str(connection.state), connection.error, connection.error_message],
                owner=connection.owner,
            )
