"""The flows of the product and the one source of truth for their state.

Add a server, authorize, list profiles, connect, disconnect, remove. The
manager knows nothing of D-Bus: it reports every change to a `Listener`
(the bus layer publishes them). Who may call what is decided before a call
reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from vpnd.auth.loopback import LoopbackRedirect
from vpnd.auth.tokens import TokenKeeper
from vpnd.config import Settings
from vpnd.errors import (
    AlreadyExists,
    AuthorizationFailed,
    Busy,
    InvalidArgument,
    NotFound,
    ServerError,
    TunnelFailed,
    VpndError,
)
from vpnd.protocols import eduvpn, lang, oauth, ovpnconfig, pkce
from vpnd.protocols.connstate import ConnectionMachine, Event, State, openvpn_event
from vpnd.protocols.eduvpn import Endpoints
from vpnd.protocols.management import ByteCountEvent, FatalEvent, StateEvent
from vpnd.providers.base import Provider
from vpnd.store.store import ServerRecord, Store, new_server_id
from vpnd.tunnel.openvpn import TunnelEvent, TunnelExited

log = logging.getLogger("vpnd.manager")

_PROFILE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_SERVERS_PER_OWNER = 64
# /disconnect is a courtesy to the server; it must not hold up a disconnect for long.
_RELEASE_TIMEOUT = 5.0


class TunnelLike(Protocol):
    """What the manager needs of a running openvpn."""

    async def start(self) -> None: ...

    async def stop(self, timeout: float = 5.0) -> None: ...


# (name, config text without the key, the client's private key PEM or None, event sink)
TunnelFactory = Callable[[str, str, bytes | None, Callable[[TunnelEvent], None]], TunnelLike]


@dataclass(eq=False)
class Server:
    """An added server at run time."""

    record: ServerRecord
    authorized: bool = False
    authorization_pending: bool = False
    _authorization: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def server_id(self) -> str:
        """The id, also the last part of the D-Bus object path."""
        return self.record.server_id

    @property
    def owner(self) -> int:
        """The UID that added the server."""
        return self.record.owner

    @property
    def url(self) -> str:
        """The base URL."""
        return self.record.url

    @property
    def host(self) -> str:
        """The host name, which is how people name the server."""
        return urlsplit(self.record.url).hostname or self.record.url


@dataclass(eq=False)
class Connection:
    """One attempt to bring a tunnel up, from Connect to its end."""

    conn_id: int
    server: Server
    profile_id: str
    prefer_tcp: bool
    machine: ConnectionMachine = field(default_factory=ConnectionMachine)
    detail: str = ""
    tunnel_ip: str = ""
    tunnel_ipv6: str = ""
    remote: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    connected_since: float = 0.0
    session_expiry: float = 0.0
    error: str = ""
    error_message: str = ""
    endpoints: Endpoints | None = None
    tunnel: TunnelLike | None = None
    last_fatal: str = ""
    task: asyncio.Task[None] | None = None
    # Set once the tunnel is up or the attempt has ended.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def owner(self) -> int:
        """The UID that started the connection."""
        return self.server.owner

    @property
    def state(self) -> State:
        """The published state."""
        return self.machine.state


class Listener(Protocol):
    """Receives every change the manager makes, to publish it."""

    def server_added(self, server: Server) -> None: ...

    def server_removed(self, server: Server) -> None: ...

    def server_changed(self, server: Server, fields: set[str]) -> None: ...

    def authorization_finished(self, server: Server, error: VpndError | None) -> None: ...

    def connection_added(self, connection: Connection) -> None: ...

    def connection_removed(self, connection: Connection) -> None: ...

    def connection_changed(self, connection: Connection, fields: set[str]) -> None: ...


class Manager:
    """Servers, authorizations and the connection, for every owner."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        provider: Provider,
        tunnel_factory: TunnelFactory,
        listener: Listener,
    ) -> None:
        self._settings = settings
        self._store = store
        self._provider = provider
        self._tunnel_factory = tunnel_factory
        self._listener = listener
        self._tokens = TokenKeeper(store.secrets, settings.client_id)
        self._servers: dict[str, Server] = {}
        self.connection: Connection | None = None
        self._next_conn_id = 1

    # -- servers ---------------------------------------------------------

    def load(self) -> None:
        """Load saved servers (at start-up)."""
        for record in self._store.load_servers():
            server = Server(record)
            server.authorized = self._has_tokens(server)
            self._servers[record.server_id] = server
            self._listener.server_added(server)

    def _has_tokens(self, server: Server) -> bool:
        try:
            return self._tokens.exist(server.owner, server.server_id)
        except VpndError as exc:
            log.error("cannot read the authorization of %s: %s", server.url, exc.message)
            return False

    def servers_of(self, owner: int) -> list[Server]:
        """One owner's servers, oldest first."""
        return sorted(
            (s for s in self._servers.values() if s.owner == owner),
            key=lambda s: s.record.added_at,
        )

    def server(self, server_id: str) -> Server:
        """A server by id."""
        try:
            return self._servers[server_id]
        except KeyError:
            raise NotFound("no such server") from None

    def find_server(self, owner: int, query: str) -> Server:
        """The owner's server named by URL, host name or an unambiguous part of its URL."""
        query = query.strip()
        if not query or len(query) > 2048:
            raise InvalidArgument("name a server by its URL or host name")
        servers = self.servers_of(owner)
        try:
            url = eduvpn.normalize_base_url(query)
        except InvalidArgument:
            url = ""
        for matches in (
            [s for s in servers if s.url == url],
            [s for s in servers if s.host == query.lower()],
            [s for s in servers if query.lower() in s.url],
        ):
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = ", ".join(s.url for s in matches)
                raise InvalidArgument(
                    f"{query!r} matches several servers ({names}); be more precise"
                )
        raise NotFound(f"no server matches {query!r}; `vpnctl list` shows your servers")

    async def add_server(self, owner: int, url: str) -> Server:
        """Add a server after checking that it speaks a supported API."""
        base_url = eduvpn.normalize_base_url(url)
        self._check_can_add(owner, base_url)
        await self._provider.discover(base_url)
        # The discovery above awaited: another call may have added one meanwhile.
        self._check_can_add(owner, base_url)
        record = ServerRecord(
            server_id=new_server_id(), owner=owner, url=base_url, added_at=time.time()
        )
        self._save_servers(owner, [*self._records_of(owner), record])
        server = Server(record)
        self._servers[record.server_id] = server
        log.info("uid %d added %s", owner, base_url)
        self._listener.server_added(server)
        return server

    def _check_can_add(self, owner: int, base_url: str) -> None:
        servers = self.servers_of(owner)
        if any(s.url == base_url for s in servers):
            raise AlreadyExists(f"{base_url} is already added")
        if len(servers) >= MAX_SERVERS_PER_OWNER:
            # Each server costs the daemon memory and disk; a user must not be able to fill them.
            raise InvalidArgument(
                f"there are {len(servers)} servers already, the most vpnd keeps for one owner;"
                " remove one first"
            )

    async def remove_server(self, server: Server) -> None:
        """Forget a server, its tokens and keys; disconnect it first."""
        connection = self.connection
        if (
            connection is not None
            and connection.server is server
            and not connection.machine.finished
        ):
            await self.disconnect(connection)
        self._cancel_authorization(server)
        remaining = [r for r in self._records_of(server.owner) if r.server_id != server.server_id]
        self._store.secrets.delete_server(server.owner, server.server_id)
        self._save_servers(server.owner, remaining)
        del self._servers[server.server_id]
        log.info("uid %d removed %s", server.owner, server.url)
        self._listener.server_removed(server)

    def _records_of(self, owner: int) -> list[ServerRecord]:
        return [s.record for s in self.servers_of(owner)]

    def _save_servers(self, owner: int, records: list[ServerRecord]) -> None:
        self._store.save_servers(owner, records)

    # -- authorization ---------------------------------------------------

    async def authorize(self, server: Server, caller: int) -> str:
        """Start an authorization; returns the URL for the user's browser.

        The result is reported through Listener.authorization_finished. A new
        call supersedes one still waiting for the browser."""
        endpoints = await self._provider.discover(server.url)
        self._cancel_authorization(server)
        # The callback must come from the browser of the caller or the owner
        # (or root's, which could read the daemon's memory anyway).
        redirect = LoopbackRedirect(frozenset({caller, server.owner, 0}))
        await redirect.open()
        verifier = pkce.new_verifier()
        state = pkce.new_state()
        url = oauth.authorization_url(
            endpoints.authorization_endpoint,
            client_id=self._settings.client_id,
            redirect_uri=redirect.redirect_uri,
            state=state,
            code_challenge=pkce.challenge_s256(verifier),
        )
        server._authorization = asyncio.create_task(
            self._finish_authorization(server, endpoints, redirect, state, verifier)
        )
        server.authorization_pending = True
        self._listener.server_changed(server, {"authorization_pending"})
        return url

    async def _finish_authorization(
        self,
        server: Server,
        endpoints: Endpoints,
        redirect: LoopbackRedirect,
        state: str,
        verifier: str,
    ) -> None:
        error: VpndError | None = None
        try:
            try:
                async with asyncio.timeout(self._settings.authorization_timeout):
                    query = await redirect.callback()
            except TimeoutError:
                raise AuthorizationFailed(
                    "the browser did not come back within"
                    f" {self._settings.authorization_timeout:g} seconds;"
                    f" run `vpnctl login {server.host}` again"
                ) from None
            code = oauth.parse_callback(query, state)
            tokens = await self._provider.token(
                endpoints,
                oauth.code_grant(
                    code,
                    verifier=verifier,
                    redirect_uri=redirect.redirect_uri,
                    client_id=self._settings.client_id,
                ),
                None,
            )
            self._tokens.save(server.owner, server.server_id, tokens)
            redirect.finish(
                True, f"vpnd is now authorized for {server.host}. You can close this window."
            )
            log.info("uid %d authorized %s", server.owner, server.url)
        except asyncio.CancelledError:
            error = AuthorizationFailed("the authorization was cancelled by a newer one")
            raise
        except VpndError as exc:
            error = exc
            redirect.finish(False, exc.message)
            log.warning("authorization for %s failed: %s", server.url, exc.message)
        except Exception:
            log.exception("authorization for %s failed", server.url)
            error = AuthorizationFailed("the authorization failed because of an internal error")
            redirect.finish(False, error.message)
        finally:
            redirect.close()
            if server._authorization is asyncio.current_task():
                server._authorization = None
            server.authorization_pending = False
            server.authorized = self._has_tokens(server)
            self._listener.server_changed(server, {"authorization_pending", "authorized"})
            self._listener.authorization_finished(server, error)

    def _cancel_authorization(self, server: Server) -> None:
        task = server._authorization
        server._authorization = None
        if task is not None and not task.done():
            task.cancel()

    def _auth_error(self, server: Server) -> None:
        """Publish that the saved tokens were thrown away, if they were."""
        authorized = self._has_tokens(server)
        if authorized != server.authorized:
            server.authorized = authorized
            self._listener.server_changed(server, {"authorized"})

    # -- profiles ----------------------------------------------------------

    async def profiles(self, server: Server, locale: str) -> list[dict[str, Any]]:
        """The server's profiles with display names in the caller's language."""
        tags = lang.locale_to_tags(locale)
        endpoints = await self._provider.discover(server.url)
        try:
            profiles = await self._tokens.call(
                self._provider,
                server.owner,
                server.server_id,
                server.host,
                endpoints,
                lambda token: self._provider.profiles(endpoints, token),
            )
        finally:
            self._auth_error(server)
        return [
            {
                "profile_id": p.profile_id,
                "display_name": lang.choose(p.display_name, tags),
                "default_gateway": p.default_gateway,
                "vpn_proto_list": list(p.vpn_proto_list),
            }
            for p in profiles
        ]

    # -- connections -------------------------------------------------------

    def connect(self, server: Server, profile_id: str, *, prefer_tcp: bool) -> Connection:
        """Start connecting; progress is reported on the returned connection."""
        if not _PROFILE_ID.match(profile_id):
            raise InvalidArgument("a profile id is 1 to 64 letters, digits, '.', '_' or '-'")
        current = self.connection
        if current is not None and not current.machine.finished:
            if current.owner != server.owner:
                # Another user's connection: that there is one shows anyway (the
                # machine's routes); where it goes is theirs.
                raise Busy(
                    "this machine is already connected by another user;"
                    " only they or root can end that connection"
                )
            raise Busy(
                f"a connection to {current.server.host} is {current.state};"
                " run `vpnctl disconnect` first"
            )
        connection = Connection(self._next_conn_id, server, profile_id, prefer_tcp)
        self._next_conn_id += 1
        self.connection = connection
        if current is not None:
            self._listener.connection_removed(current)
        self._listener.connection_added(connection)
        connection.task = asyncio.create_task(self._run(connection))
        log.info("uid %d connects to %s profile %s", server.owner, server.url, profile_id)
        return connection

    async def _run(self, connection: Connection) -> None:
        server = connection.server
        try:
            endpoints = await self._provider.discover(server.url)
            try:
                issued = await self._tokens.call(
                    self._provider,
                    server.owner,
                    server.server_id,
                    server.host,
                    endpoints,
                    lambda token: self._provider.connect(
                        endpoints, token, connection.profile_id, prefer_tcp=connection.prefer_tcp
                    ),
                )
            finally:
                self._auth_error(server)
            connection.endpoints = endpoints
            self._record_session_expiry(connection, issued.expires_at)
            if issued.protocol != "openvpn":
                raise ServerError(
                    f"{server.host} issued a {issued.protocol} configuration;"
                    " vpnd speaks OpenVPN only"
                )
            config = ovpnconfig.sanitize(issued.text)
            if config.dropped:
                log.warning(
                    "dropped directives from %s's configuration: %s",
                    server.host,
                    ", ".join(config.dropped),
                )
            # openvpn gets the certificate but never the key: it asks vpnd to sign.
            key = ovpnconfig.inline_block(config, "key")
            tunnel = self._tunnel_factory(
                f"conn{connection.conn_id}",
                ovpnconfig.without(config, "key").render(),
                key.encode() if key is not None else None,
                lambda event: self._on_tunnel_event(connection, event),
            )
            connection.tunnel = tunnel
            self._move(connection, Event.CONFIG_READY)
            await tunnel.start()
            try:
                async with asyncio.timeout(self._settings.connect_timeout):
                    await connection.settled.wait()
            except TimeoutError:
                raise TunnelFailed(
                    f"the tunnel did not come up within {self._settings.connect_timeout:g} seconds"
                    f" (openvpn's last step: {connection.detail or 'none'})"
                ) from None
        except VpndError as exc:
            await self._fail(connection, exc)
        except asyncio.CancelledError:
            # disconnect() cancels a connection that is still being prepared.
            return
        except Exception:
            log.exception("connecting to %s failed", server.url)
            await self._fail(
                connection, VpndError("connecting failed because of an internal error")
            )

    def _record_session_expiry(self, connection: Connection, expires_at: float) -> None:
        connection.session_expiry = expires_at
        self._listener.connection_changed(connection, {"session_expiry"})
        server = connection.server
        if expires_at and server.record.session_expiry != expires_at:
            server.record.session_expiry = expires_at
            self._listener.server_changed(server, {"session_expiry"})
            try:
                self._save_servers(server.owner, self._records_of(server.owner))
            except VpndError as exc:
                log.error("cannot save the session expiry of %s: %s", server.url, exc.message)

    def _move(self, connection: Connection, event: Event) -> None:
        before = connection.state
        after = connection.machine.handle(event)
        if after is State.CONNECTED or connection.machine.finished:
            connection.settled.set()
        if after is not before:
            log.info("connection %d: %s -> %s", connection.conn_id, before, after)
            changed = {"state"}
            if connection.machine.finished and connection.detail:
                # Detail is openvpn's step while connecting; it means nothing once it ended.
                connection.detail = ""
                changed.add("detail")
            self._listener.connection_changed(connection, changed)

    def _on_tunnel_event(self, connection: Connection, event: TunnelEvent) -> None:
        if connection.machine.finished:
            return
        if isinstance(event, ByteCountEvent):
            connection.bytes_in, connection.bytes_out = event.bytes_in, event.bytes_out
            self._listener.connection_changed(connection, {"bytes_in", "bytes_out"})
        elif isinstance(event, StateEvent):
            self._on_openvpn_state(connection, event)
        elif isinstance(event, FatalEvent):
            connection.last_fatal = event.text
        elif isinstance(event, TunnelExited):
            if connection.state is State.DISCONNECTING:
                return  # disconnect() finishes the story
            reason = connection.last_fatal or event.reason or f"exit status {event.returncode}"
            asyncio.get_running_loop().create_task(
                self._fail(connection, TunnelFailed(f"openvpn stopped: {reason}"))
            )

    def _on_openvpn_state(self, connection: Connection, event: StateEvent) -> None:
        changed = {"detail"}
        connection.detail = "" if event.name == "CONNECTED" else event.name
        if event.name == "EXITING":
            # The exit itself (TunnelExited) decides what this means.
            self._listener.connection_changed(connection, changed)
            return
        if event.name == "CONNECTED":
            connection.tunnel_ip = event.local_ip
            connection.tunnel_ipv6 = event.local_ipv6
            connection.remote = (
                f"{event.remote_ip}:{event.remote_port}" if event.remote_port else event.remote_ip
            )
            connection.connected_since = time.time()
            changed |= {"tunnel_ip", "tunnel_ipv6", "remote", "connected_since"}
        self._listener.connection_changed(connection, changed)
        if connection.state in (State.CONNECTING, State.CONNECTED, State.RECONNECTING):
            self._move(connection, openvpn_event(event.name))

    async def _fail(self, connection: Connection, error: VpndError) -> None:
        if connection.machine.finished or connection.state is State.DISCONNECTING:
            return
        log.warning("connection %d failed: %s", connection.conn_id, error.message)
        connection.error = error.dbus_name
        connection.error_message = error.message
        self._listener.connection_changed(connection, {"error", "error_message"})
        self._move(connection, Event.FAIL)
        await self._teardown(connection)

    async def disconnect(self, connection: Connection) -> None:
        """Tear a connection down and release it at the server."""
        if connection.machine.finished:
            return
        if connection.state is State.DISCONNECTING:
            await connection.settled.wait()
            return
        connection.settled.clear()
        self._move(connection, Event.STOP)
        task = connection.task
        if task is not None and not task.done() and connection.tunnel is None:
            task.cancel()
        await self._teardown(connection)
        self._move(connection, Event.STOPPED)
        log.info("connection %d to %s disconnected", connection.conn_id, connection.server.url)

    async def _teardown(self, connection: Connection) -> None:
        tunnel, connection.tunnel = connection.tunnel, None
        if tunnel is not None:
            try:
                await tunnel.stop()
            except Exception:
                log.exception("stopping openvpn failed")
        endpoints, connection.endpoints = connection.endpoints, None
        if endpoints is not None:
            await self._release(connection.server, endpoints)

    async def _release(self, server: Server, endpoints: Endpoints) -> None:
        """Best effort /disconnect: the server frees what /connect allocated."""
        try:
            async with asyncio.timeout(_RELEASE_TIMEOUT):
                await self._tokens.call(
                    self._provider,
                    server.owner,
                    server.server_id,
                    server.host,
                    endpoints,
                    lambda token: self._provider.disconnect(endpoints, token),
                )
        except (TimeoutError, VpndError) as exc:
            message = exc.message if isinstance(exc, VpndError) else "timed out"
            log.info("releasing the session at %s failed: %s", server.host, message)

    async def shutdown(self) -> None:
        """Disconnect and cancel everything (daemon stop)."""
        for server in self._servers.values():
            self._cancel_authorization(server)
        connection = self.connection
        if connection is not None and not connection.machine.finished:
            await self.disconnect(connection)
