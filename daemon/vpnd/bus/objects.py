"""The D-Bus objects: the daemon's only public surface.

Each method identifies the caller, checks ownership, validates arguments,
delegates to the manager and maps errors to named D-Bus errors. Flow logic
lives in the manager; this module only translates.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

from dbus_fast import DBusError, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt32,
    DBusUInt64,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import (
    ServiceInterface,
    dbus_method,
    dbus_property,
    dbus_signal,
)

from vpnd import __version__
from vpnd.bus.caller import Callers, check_owner
from vpnd.errors import InvalidArgument, NotFound, VpndError
from vpnd.manager import Connection, Manager, Server

log = logging.getLogger("vpnd.bus")

ROOT_PATH = "/org/vpnd/Daemon"
SERVERS_PATH = ROOT_PATH + "/servers"
CONNECTIONS_PATH = ROOT_PATH + "/connections"

ServerMap = Annotated[dict[str, dict[str, Variant]], DBusSignature("a{oa{sv}}")]
ProfileList = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
SignalBody = Annotated[list[Any], DBusSignature("bss")]
StateBody = Annotated[list[Any], DBusSignature("sss")]
# A method with no reply arguments (a bare `None` would be read as a missing signature).
NoReply = Annotated[None, DBusSignature("")]

_MAX_ARG = 2048

P = ParamSpec("P")
R = TypeVar("R")


def bus_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn the daemon's errors into named D-Bus errors; hide everything else."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except VpndError as exc:
            raise DBusError(exc.dbus_name, exc.message) from None
        except DBusError:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise DBusError(
                "org.vpnd.Error.Failed", "internal error in vpnd; see `journalctl -u vpnd`"
            ) from None

    return wrapper


def server_path(server: Server) -> str:
    """The object path of a server."""
    return f"{SERVERS_PATH}/{server.server_id}"


def connection_path(connection: Connection) -> str:
    """The object path of a connection."""
    return f"{CONNECTIONS_PATH}/{connection.conn_id}"


def _text_arg(value: str, what: str) -> str:
    if len(value) > _MAX_ARG or any(ord(c) < 32 for c in value):
        raise InvalidArgument(f"the {what} is too long or contains control characters")
    return value


def server_properties(server: Server) -> dict[str, Variant]:
    """A server's Server1 properties, as ListServers returns them."""
    return {
        "Url": Variant("s", server.url),
        "Host": Variant("s", server.host),
        "Owner": Variant("u", server.owner),
        "Authorized": Variant("b", server.authorized),
        "AuthorizationPending": Variant("b", server.authorization_pending),
        "SessionExpiry": Variant("t", int(server.record.session_expiry)),
    }


class ManagerInterface(ServiceInterface):
    """org.vpnd.Manager1 on /org/vpnd/Daemon."""

    def __init__(self, frontend: BusFrontend) -> None:
        super().__init__("org.vpnd.Manager1")
        self._frontend = frontend

    @property
    def _manager(self) -> Manager:
        return self._frontend.manager

    @dbus_method()
    @bus_errors
    async def AddServer(self, url: DBusStr) -> DBusObjectPath:
        uid = await self._frontend.callers.uid()
        server = await self._manager.add_server(uid, _text_arg(url, "URL"))
        return server_path(server)

    @dbus_method()
    @bus_errors
    async def RemoveServer(self, server: DBusObjectPath) -> NoReply:
        uid = await self._frontend.callers.uid()
        target = self._frontend.server_at(server)
        check_owner(uid, target.owner)
        await self._manager.remove_server(target)

    @dbus_method()
    @bus_errors
    async def FindServer(self, query: DBusStr) -> DBusObjectPath:
        uid = await self._frontend.callers.uid()
        return server_path(self._manager.find_server(uid, _text_arg(query, "server name")))

    @dbus_method()
    @bus_errors
    async def ListServers(self) -> ServerMap:
        uid = await self._frontend.callers.uid()
        return {server_path(s): server_properties(s) for s in self._manager.servers_of(uid)}

    @dbus_method()
    @bus_errors
    async def Disconnect(self) -> NoReply:
        uid = await self._frontend.callers.uid()
        connection = self._manager.connection
        if connection is None or connection.machine.finished:
            return
        check_owner(uid, connection.owner)
        await self._manager.disconnect(connection)

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def ActiveConnection(self) -> DBusObjectPath:
        connection = self._manager.connection
        return connection_path(connection) if connection is not None else "/"

    @dbus_signal()
    def ServerAdded(self, server: str) -> DBusObjectPath:
        return server

    @dbus_signal()
    def ServerRemoved(self, server: str) -> DBusObjectPath:
        return server


class ServerInterface(ServiceInterface):
    """org.vpnd.Server1: one added server."""

    def __init__(self, frontend: BusFrontend, server: Server) -> None:
        super().__init__("org.vpnd.Server1")
        self._frontend = frontend
        self.server = server

    async def _check_caller(self) -> None:
        check_owner(await self._frontend.callers.uid(), self.server.owner)

    @dbus_method()
    @bus_errors
    async def Authorize(self) -> DBusStr:
        await self._check_caller()
        return await self._frontend.manager.authorize(self.server)

    @dbus_method()
    @bus_errors
    async def GetProfiles(self, locale: DBusStr) -> ProfileList:
        await self._check_caller()
        profiles = await self._frontend.manager.profiles(self.server, _text_arg(locale, "locale"))
        return [
            {
                "profile_id": Variant("s", p["profile_id"]),
                "display_name": Variant("s", p["display_name"]),
                "default_gateway": Variant("b", p["default_gateway"]),
                "vpn_proto_list": Variant("as", p["vpn_proto_list"]),
            }
            for p in profiles
        ]

    @dbus_method()
    @bus_errors
    async def Connect(self, profile_id: DBusStr, options: DBusDict) -> DBusObjectPath:
        await self._check_caller()
        prefer_tcp = False
        for key, value in options.items():
            if key != "prefer_tcp" or value.signature != "b":
                raise InvalidArgument(
                    f"unknown connect option {key!r} (known: prefer_tcp as boolean)"
                )
            prefer_tcp = bool(value.value)
        connection = self._frontend.manager.connect(
            self.server, _text_arg(profile_id, "profile id"), prefer_tcp=prefer_tcp
        )
        return connection_path(connection)

    @dbus_property(access=PropertyAccess.READ)
    def Url(self) -> DBusStr:
        return self.server.url

    @dbus_property(access=PropertyAccess.READ)
    def Host(self) -> DBusStr:
        return self.server.host

    @dbus_property(access=PropertyAccess.READ)
    def Owner(self) -> DBusUInt32:
        return self.server.owner

    @dbus_property(access=PropertyAccess.READ)
    def Authorized(self) -> DBusBool:
        return self.server.authorized

    @dbus_property(access=PropertyAccess.READ)
    def AuthorizationPending(self) -> DBusBool:
        return self.server.authorization_pending

    @dbus_property(access=PropertyAccess.READ)
    def SessionExpiry(self) -> DBusUInt64:
        return int(self.server.record.session_expiry)

    @dbus_signal()
    def AuthorizationFinished(self, success: bool, error: str, message: str) -> SignalBody:
        return [success, error, message]


class ConnectionInterface(ServiceInterface):
    """org.vpnd.Connection1: one connection attempt."""

    def __init__(self, frontend: BusFrontend, connection: Connection) -> None:
        super().__init__("org.vpnd.Connection1")
        self._frontend = frontend
        self.connection = connection

    @dbus_method()
    @bus_errors
    async def Disconnect(self) -> NoReply:
        check_owner(await self._frontend.callers.uid(), self.connection.owner)
        await self._frontend.manager.disconnect(self.connection)

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return str(self.connection.state)

    @dbus_property(access=PropertyAccess.READ)
    def Detail(self) -> DBusStr:
        return self.connection.detail

    @dbus_property(access=PropertyAccess.READ)
    def Server(self) -> DBusObjectPath:
        return server_path(self.connection.server)

    @dbus_property(access=PropertyAccess.READ)
    def ServerUrl(self) -> DBusStr:
        return self.connection.server.url

    @dbus_property(access=PropertyAccess.READ)
    def Profile(self) -> DBusStr:
        return self.connection.profile_id

    @dbus_property(access=PropertyAccess.READ)
    def Owner(self) -> DBusUInt32:
        return self.connection.owner

    @dbus_property(access=PropertyAccess.READ)
    def TunnelIP(self) -> DBusStr:
        return self.connection.tunnel_ip

    @dbus_property(access=PropertyAccess.READ)
    def TunnelIPv6(self) -> DBusStr:
        return self.connection.tunnel_ipv6

    @dbus_property(access=PropertyAccess.READ)
    def Remote(self) -> DBusStr:
        return self.connection.remote

    @dbus_property(access=PropertyAccess.READ)
    def BytesIn(self) -> DBusUInt64:
        return self.connection.bytes_in

    @dbus_property(access=PropertyAccess.READ)
    def BytesOut(self) -> DBusUInt64:
        return self.connection.bytes_out

    @dbus_property(access=PropertyAccess.READ)
    def ConnectedSince(self) -> DBusUInt64:
        return int(self.connection.connected_since)

    @dbus_property(access=PropertyAccess.READ)
    def SessionExpiry(self) -> DBusUInt64:
        return int(self.connection.session_expiry)

    @dbus_property(access=PropertyAccess.READ)
    def Error(self) -> DBusStr:
        return self.connection.error

    @dbus_property(access=PropertyAccess.READ)
    def ErrorMessage(self) -> DBusStr:
        return self.connection.error_message

    @dbus_signal()
    def StateChanged(self, state: str, error: str, message: str) -> StateBody:
        return [state, error, message]


_SERVER_PROPERTIES = {
    "authorized": "Authorized",
    "authorization_pending": "AuthorizationPending",
    "session_expiry": "SessionExpiry",
}
_CONNECTION_PROPERTIES = {
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
}


class BusFrontend:
    """Publishes the manager's objects on the bus and implements its Listener."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.callers = Callers(bus)
        self._manager: Manager | None = None
        self._root = ManagerInterface(self)
        self._servers: dict[str, ServerInterface] = {}
        self._connections: dict[str, ConnectionInterface] = {}

    @property
    def manager(self) -> Manager:
        """The manager this frontend serves."""
        assert self._manager is not None, "attach() first"
        return self._manager

    def attach(self, manager: Manager) -> None:
        """Serve `manager` and export the root object."""
        self._manager = manager
        self.callers.install()
        self.bus.export(ROOT_PATH, self._root)

    def server_at(self, path: str) -> Server:
        """The server exported at `path`."""
        interface = self._servers.get(path)
        if interface is None:
            raise NotFound(f"no server at {path}")
        return interface.server

    # -- Listener ---------------------------------------------------------

    def server_added(self, server: Server) -> None:
        path = server_path(server)
        interface = ServerInterface(self, server)
        self._servers[path] = interface
        self.bus.export(path, interface)
        self._root.ServerAdded(path)

    def server_removed(self, server: Server) -> None:
        path = server_path(server)
        interface = self._servers.pop(path, None)
        if interface is not None:
            self.bus.unexport(path, interface)
        self._root.ServerRemoved(path)

    def server_changed(self, server: Server, fields: set[str]) -> None:
        interface = self._servers.get(server_path(server))
        if interface is None:
            return
        properties = server_properties(server)
        interface.emit_properties_changed(
            {_SERVER_PROPERTIES[f]: properties[_SERVER_PROPERTIES[f]].value for f in fields}
        )

    def authorization_finished(self, server: Server, error: VpndError | None) -> None:
        interface = self._servers.get(server_path(server))
        if interface is None:
            return
        if error is None:
            interface.AuthorizationFinished(True, "", "")
        else:
            interface.AuthorizationFinished(False, error.dbus_name, error.message)

    def connection_added(self, connection: Connection) -> None:
        path = connection_path(connection)
        interface = ConnectionInterface(self, connection)
        self._connections[path] = interface
        self.bus.export(path, interface)
        self._root.emit_properties_changed({"ActiveConnection": path})

    def connection_removed(self, connection: Connection) -> None:
        path = connection_path(connection)
        interface = self._connections.pop(path, None)
        if interface is not None:
            self.bus.unexport(path, interface)

    def connection_changed(self, connection: Connection, fields: set[str]) -> None:
        interface = self._connections.get(connection_path(connection))
        if interface is None:
            return
        changed: dict[str, Any] = {}
        for name in fields:
            prop = _CONNECTION_PROPERTIES[name]
            changed[prop] = getattr(interface, prop)
        interface.emit_properties_changed(changed)
        if "state" in fields:
            interface.StateChanged(
                str(connection.state), connection.error, connection.error_message
            )
