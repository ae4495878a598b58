"""The flows of the product and the one source of truth for their state.

Add a server, authorize, list profiles, connect, disconnect, remove. The
manager knows nothing of D-Bus: it reports every change to a `Listener`
(the bus layer publishes them). Who may call what is decided before a call
reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from vpnd.config import Settings
from vpnd.errors import (
    AccountDisabled,
    AlreadyExists,
    AuthorizationFailed,
    Busy,
    CredentialsRejected,
    InvalidArgument,
    NotFound,
    ServerError,
    ServerUnreachable,
    SessionExpired,
    StorageFailed,
    TunnelFailed,
    TwoFactorRequired,
    VpndError,
)
from vpnd.protocols import lang
from vpnd.protocols.connstate import ConnectionMachine, Event, State
from vpnd.protocols.documents import normalize_base_url
from vpnd.providers import Families
from vpnd.providers.base import Connectable, Family, PendingAuthorization, Provider, Session
from vpnd.steps import Steps
from vpnd.store.store import ServerRecord, ServerSecrets, Store, host_of, new_server_id
from vpnd.tunnel.events import (
    Lost,
    Progress,
    PromptEvent,
    Traffic,
    TunnelEvent,
    TunnelExited,
    Up,
)

if TYPE_CHECKING:
    # Server documents, tunnel configs, DNS and prompts are loaded with their
    # first use, not at start.
    from vpnd.protocols.credentials import Question
    from vpnd.protocols.dns import DnsSettings
    from vpnd.protocols.eduvpn import Endpoints

log = logging.getLogger("vpnd.manager")

T = TypeVar("T")

_PROFILE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_SERVERS_PER_OWNER = 64
#: The owner of system-wide servers (root), the only ones that connect at start.
SYSTEM_OWNER = 0
# /disconnect is a courtesy to the server; it must not hold up a disconnect for long.
_RELEASE_TIMEOUT = 5.0


class TunnelLike(Protocol):
    """What the manager needs of a tunnel: start it ahead of its config when
    one is on its way, then with its config (the text without the key, the
    client's private key (PEM) or None, and the user name and password
    openvpn may ask for)."""

    def prepare(self) -> None: ...

    async def start(
        self,
        config: str,
        *,
        private_key: bytes | None = None,
        user_pass: tuple[str, str] | None = None,
    ) -> None: ...

    async def stop(self, timeout: float = 5.0) -> None: ...

    def answer(self, values: Mapping[str, str]) -> None: ...


class DnsLike(Protocol):
    """Sets the DNS of the tunnel's link, and takes it back (tunnel/dns.py)."""

    async def apply(self, settings: DnsSettings) -> bool: ...

    async def revert(self) -> None: ...


class TunnelFactory(Protocol):
    """Makes a tunnel: its name and the sink of its events."""

    def __call__(self, name: str, on_event: Callable[[TunnelEvent], None]) -> TunnelLike: ...


@dataclass(frozen=True)
class Backoff:
    """How long to wait before the next try to bring a lost tunnel up: `first`
    seconds, doubling with each failed try up to `most`, each spread by
    `jitter` (a fraction) so that many clients of one server do not come
    back at the same instant."""

    first: float = 1.0
    most: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int) -> float:
        """The wait before the try after `failures` failed ones (1 or more)."""
        base: float = min(self.most, self.first * 2.0 ** min(failures - 1, 32))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 (not a secret)


@dataclass(eq=False)
class Server:
    """An added server at run time."""

    record: ServerRecord
    authorized: bool = False
    authorization_pending: bool = False
    # What the server's discovery document named at the last connect (not stored).
    endpoints: Endpoints | None = None
    _authorization: asyncio.Task[None] | None = field(default=None, repr=False)
    _pending: PendingAuthorization | None = field(default=None, repr=False)
    # The connection to make again once a renewal's login succeeds: (profile, prefer_tcp).
    _after_renewal: tuple[str, bool] | None = field(default=None, repr=False)
    # Per profile, from the last profile list: (full tunnel, DNS search domains).
    profile_dns: dict[str, tuple[bool, tuple[str, ...]]] = field(default_factory=dict, repr=False)

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
    def kind(self) -> str:
        """The server family (`eduvpn-v3`, …)."""
        return self.record.kind

    @property
    def host(self) -> str:
        """The host name, which is how people name the server."""
        return host_of(self.record)


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
    task: asyncio.Task[None] | None = None
    # The DNS set on the tunnel's link, while it is.
    dns: DnsSettings | None = None
    # What openvpn asks a person now, and its number (answers name it).
    question: Question | None = None
    prompt_id: int = 0
    # Kept up from the first try on, not only once it was up (connect at start).
    persistent: bool = False
    # Tunnels started so far, and the error the current one ended with.
    tries: int = 0
    exit_error: VpndError | None = None
    # Tells the owner as the session's end comes near, and ends the connection then.
    expiry_watch: asyncio.Task[None] | None = field(default=None, repr=False)
    # Set once the tunnel is up or the attempt has ended.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when `settled` or `question` changes: the connect timeout's clock
    # stands still while a person is asked.
    waking: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    steps: Steps = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.steps = Steps(log, f"connection {self.conn_id}")

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

    def session_expiring(self, connection: Connection, seconds_left: int) -> None: ...


#: When, before a session ends, its owner is told (seconds): eduVPN's clients'
#: rule, for a system VPN also when no client runs (a notifier follows the signal).
EXPIRY_NOTICES = (4 * 3600, 2 * 3600, 3600)
#: A renewal is refused for a session younger than this (seconds), as eduVPN's clients do.
RENEW_AFTER = 30 * 60
#: Seconds a tunnel over UDP may take to come up before vpnd asks for TCP
#: instead: the eduVPN clients' rule for networks that block UDP.
UDP_GRACE = 10.0


class _NoAnswerOverUdp(TunnelFailed):
    """Nothing came back over UDP in time: the network may block it."""


class _StartOver(TunnelFailed):
    """The tunnel is to be made again at once (the machine woke, the network changed)."""


class Manager:
    """Servers, authorizations and the connection, for every owner."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        families: Families,
        tunnel_factory: TunnelFactory,
        listener: Listener,
        backoff: Backoff | None = None,
        udp_grace: float = UDP_GRACE,
        dns: DnsLike | None = None,
    ) -> None:
        self._settings = settings
        self._backoff = backoff or Backoff()
        self._udp_grace = udp_grace
        self._store = store
        self._families = families
        self._tunnel_factory = tunnel_factory
        self._listener = listener
        self._servers: dict[str, Server] = {}
        self.connection: Connection | None = None
        self._next_conn_id = 1
        self._dns = dns
        self._dns_task: asyncio.Task[None] | None = None

    # -- servers ---------------------------------------------------------

    def load(self) -> None:
        """Load saved servers (at start-up)."""
        for record in self._store.load_servers():
            server = Server(record)
            server.authorized = self._is_authorized(server)
            self._servers[record.server_id] = server
            self._listener.server_added(server)

    def _is_authorized(self, server: Server) -> bool:
        try:
            return self._families.of(server.kind).login.authorized(server.record)
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
            url = normalize_base_url(query)
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
        raise NotFound(f"no server of yours matches {query!r}")

    async def add_server(
        self, owner: int, url: str, kind: str | None = None, *, org_id: str = ""
    ) -> Server:
        """Add a server after finding out which API it speaks (or checking `kind`'s).

        `org_id` names the organization a secure-internet home server is added for."""
        base_url = normalize_base_url(url)
        self._check_can_add(owner, base_url)
        if kind is None:
            family, _endpoints = await self._families.detect(base_url)
        else:
            family = self._families.of(kind)
            await family.provider.discover(base_url)
        # The discovery above awaited: another call may have added one meanwhile.
        self._check_can_add(owner, base_url)
        record = ServerRecord(
            server_id=new_server_id(),
            owner=owner,
            url=base_url,
            added_at=time.time(),
            kind=family.kind,
            org_id=org_id,
        )
        self._save_servers(owner, [*self._records_of(owner), record])
        server = Server(record)
        self._servers[record.server_id] = server
        log.info("uid %d added %s (%s)", owner, base_url, family.kind)
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
        self._cancel_authorization(server, "the server was removed")
        remaining = [r for r in self._records_of(server.owner) if r.server_id != server.server_id]
        # The list first: cut short in between, what is left is secrets of a
        # server no longer listed (removed at the next start), never a listed
        # server without them.
        self._save_servers(server.owner, remaining)
        try:
            self._store.secrets.delete_server(server.owner, server.server_id)
        except StorageFailed as exc:
            log.error("removed %s but not yet its secrets: %s", server.url, exc.message)
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
        family = self._family(server)
        endpoints = await family.provider.discover(server.url, server.record)
        self._cancel_authorization(server, "a newer login started")
        pending = await family.login.begin(server.record, endpoints, caller)
        task = asyncio.create_task(pending.complete())
        server._authorization, server._pending = task, pending
        # A callback, not a `finally` in the task: a task cancelled before it
        # first ran never reaches its own code, and its outcome must still be told.
        task.add_done_callback(lambda done: self._authorization_done(server, pending, done))
        server.authorization_pending = True
        self._listener.server_changed(server, {"authorization_pending"})
        return pending.url

    def complete_authorization(self, server: Server, address: str) -> None:
        """Finish the waiting login with the address its browser ended at
        (headless login: the browser ran on another device). The outcome is
        reported as for any login (Listener.authorization_finished)."""
        pending = server._pending
        if pending is None:
            raise NotFound(f"no login to {server.host} is waiting for its browser; log in first")
        pending.deliver(address)

    async def renew(self, server: Server, caller: int) -> str:
        """Start a new VPN session: disconnect, release the session, drop the
        credential and log in again (the URL for the browser); the same
        profile connects again once the login succeeds.

        Refused for a connection less than RENEW_AFTER seconds old."""
        current = self.connection
        mine = (
            current
            if current is not None and current.server is server and not current.machine.finished
            else None
        )
        if mine is not None and time.time() - (mine.connected_since or time.time()) < RENEW_AFTER:
            raise InvalidArgument(
                f"the VPN session is less than {RENEW_AFTER // 60} minutes old; renew it later"
            )
        # The login first: a server that cannot log in again (one that takes
        # a password, not a browser) is refused before anything changes.
        url = await self.authorize(server, caller)
        if mine is not None:
            server._after_renewal = (mine.profile_id, mine.prefer_tcp)
            await self.disconnect(mine)
        self._family(server).login.forget(server.record)
        self._auth_error(server)
        log.info("uid %d renews the session at %s", caller, server.url)
        return url

    def _authorization_done(
        self, server: Server, pending: PendingAuthorization, task: asyncio.Task[None]
    ) -> None:
        pending.close()
        error: VpndError | None = None
        try:
            task.result()
            log.info("uid %d authorized %s", server.owner, server.url)
        except asyncio.CancelledError as cancelled:
            reason = cancelled.args[0] if cancelled.args else "vpnd stopped"
            error = AuthorizationFailed(f"the login was cancelled: {reason}")
        except VpndError as exc:
            error = exc
            log.warning("authorization for %s failed: %s", server.url, exc.message)
        except Exception:
            log.exception("authorization for %s failed", server.url)
            error = AuthorizationFailed("the authorization failed because of an internal error")
        if self._servers.get(server.server_id) is not server:
            return  # removed meanwhile: there is nobody left to tell
        changed = {"authorized"}
        if server._authorization is task:
            # Only the newest attempt speaks for the server's pending flag.
            server._authorization = server._pending = None
            server.authorization_pending = False
            changed.add("authorization_pending")
        server.authorized = self._is_authorized(server)
        self._listener.server_changed(server, changed)
        self._listener.authorization_finished(server, error)
        again, server._after_renewal = server._after_renewal, None
        current = self.connection
        idle = current is None or current.machine.finished
        if again is not None and error is None and server.authorized and idle:
            self.connect(server, again[0], prefer_tcp=again[1])
            return
        self._connect_at_start_if_due(server)

    async def sign_in(self, server: Server, fields: Mapping[str, str]) -> dict[str, Any]:
        """Log in with what the user typed; {} when done, else what the server asks next."""
        family = self._family(server)
        endpoints = await family.provider.discover(server.url, server.record)
        try:
            return await family.login.sign_in(server.record, endpoints, fields)
        finally:
            self._auth_error(server)
            self._connect_at_start_if_due(server)

    def _cancel_authorization(self, server: Server, reason: str) -> None:
        task, pending = server._authorization, server._pending
        server._authorization = server._pending = None
        if pending is not None:
            pending.close()
        if task is not None and not task.done():
            task.cancel(reason)

    def _auth_error(self, server: Server) -> None:
        """Publish that the saved authorization was thrown away, if it was."""
        authorized = self._is_authorized(server)
        if authorized != server.authorized:
            server.authorized = authorized
            self._listener.server_changed(server, {"authorized"})

    def _family(self, server: Server) -> Family:
        return self._families.of(server.kind)

    async def _call(
        self,
        server: Server,
        endpoints: Endpoints,
        action: Callable[[Session], Awaitable[T]],
    ) -> T:
        """Run a provider call with a credential the server's login supplies."""
        vault = ServerSecrets(self._store.secrets, server.owner, server.server_id)
        try:
            return await self._family(server).login.call(
                server.record,
                endpoints,
                lambda credential: action(
                    Session(endpoints, credential, vault, server.host, server.url)
                ),
            )
        finally:
            self._auth_error(server)

    async def _ask(self, server: Server, action: Callable[[Provider, Session], Awaitable[T]]) -> T:
        """Find the server's endpoints, then run a provider call there with a credential."""
        provider = self._family(server).provider
        endpoints = await provider.discover(server.url, server.record)
        server.endpoints = endpoints
        return await self._call(server, endpoints, lambda session: action(provider, session))

    # -- profiles ----------------------------------------------------------

    async def profiles(self, server: Server, locale: str) -> list[dict[str, Any]]:
        """The server's profiles with display names in the caller's language."""
        tags = lang.locale_to_tags(locale)
        profiles = await self._ask(server, lambda provider, session: provider.profiles(session))
        server.profile_dns = {
            p.profile_id: (p.default_gateway, p.dns_search_domain_list) for p in profiles
        }
        return [
            {
                "profile_id": p.profile_id,
                "display_name": lang.choose(p.display_name, tags),
                "default_gateway": p.default_gateway,
                "vpn_proto_list": list(p.vpn_proto_list),
            }
            for p in profiles
        ]

    async def messages(self, server: Server, locale: str) -> list[dict[str, Any]]:
        """The server's notices (notification, motd, maintenance) in the caller's language."""
        languages = lang.locale_to_tags(locale)
        messages = await self._ask(
            server, lambda provider, session: provider.messages(session, languages)
        )
        return [
            {
                "type": m.type,
                "text": m.text,
                "date_time": m.date_time,
                "begin": m.begin or 0.0,
                "end": m.end or 0.0,
            }
            for m in messages
        ]

    # -- connections -------------------------------------------------------

    def set_location(self, server: Server, location: str) -> None:
        """Use the API of the server at `location` (a base URL; "" the server
        itself) with this server's login: a secure-internet location. The
        caller has checked that the location belongs to the server's federation."""
        if not server.record.org_id:
            raise InvalidArgument(
                f"{server.host} is not a secure-internet server; it has no other locations"
            )
        location = normalize_base_url(location) if location else ""
        if location == server.url:
            location = ""
        if server.record.location == location:
            return
        server.record.location = location
        server.endpoints = None  # the next call finds the location's endpoints
        self._save_servers(server.owner, self._records_of(server.owner))
        log.info("%s now connects at %s", server.url, location or "its home server")
        self._listener.server_changed(server, {"location"})

    # -- connect at start -----------------------------------------------------

    def set_autoconnect(self, server: Server, profile_id: str) -> None:
        """Connect `server` with `profile_id` whenever vpnd starts ("" stops that).

        Only a system-wide server can, and only one: naming another moves
        the mark there."""
        if profile_id and not _PROFILE_ID.match(profile_id):
            raise InvalidArgument("a profile id is 1 to 64 letters, digits, '.', '_' or '-'")
        if server.owner != SYSTEM_OWNER:
            raise InvalidArgument(
                "only system-wide servers connect when vpnd starts, before anyone logs in;"
                " add the server as a system-wide one"
            )
        changed = []
        for other in self.servers_of(SYSTEM_OWNER):
            wanted = profile_id if other is server else ""
            if other.record.autoconnect != wanted:
                other.record.autoconnect = wanted
                changed.append(other)
        if not changed:
            return
        self._save_servers(SYSTEM_OWNER, self._records_of(SYSTEM_OWNER))
        for other in changed:
            self._listener.server_changed(other, {"autoconnect"})
        log.info(
            "%s connects when vpnd starts%s",
            server.url,
            f", with profile {profile_id}" if profile_id else ": no longer",
        )

    def connect_at_start(self) -> Server | None:
        """Connect the system-wide server marked for it, if any; the server.

        Without its authorization nothing starts (no browser can open at
        boot): the connection follows the next successful login instead."""
        server = self._marked_for_start()
        if server is None:
            return None
        if not server.authorized:
            log.warning(
                "%s should connect at start but its authorization is missing; it connects"
                " after the next login",
                server.url,
            )
            return server
        self._connect_at_start_if_due(server)
        return server

    def _marked_for_start(self) -> Server | None:
        """The server to connect at start: the configuration's, else the one marked."""
        named = self._settings.autoconnect_server
        if named:
            try:
                return self.find_server(SYSTEM_OWNER, named)
            except VpndError as exc:
                log.error("autoconnect_server in the configuration: %s", exc.message)
                return None
        marked = [s for s in self.servers_of(SYSTEM_OWNER) if s.record.autoconnect]
        return marked[0] if marked else None

    def _start_profile(self, server: Server) -> str:
        """The profile `server` connects with at start ("": it does not)."""
        if server.owner != SYSTEM_OWNER:
            return ""
        if self._settings.autoconnect_server:
            if self._marked_for_start() is not server:
                return ""
            return self._settings.autoconnect_profile
        return server.record.autoconnect

    def _connect_at_start_if_due(self, server: Server) -> None:
        profile = self._start_profile(server)
        if not profile or not server.authorized:
            return
        if self._servers.get(server.server_id) is not server:
            return
        current = self.connection
        if current is not None and not current.machine.finished:
            return
        log.info("connecting %s as it is marked to connect at start", server.url)
        self.connect(server, profile, prefer_tcp=False, persistent=True)

    def connect(
        self, server: Server, profile_id: str, *, prefer_tcp: bool, persistent: bool = False
    ) -> Connection:
        """Start connecting; progress is reported on the returned connection.

        A `persistent` connection is tried again also before it was ever up."""
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
                f"a connection to {current.server.host} is {current.state}; disconnect it first"
            )
        connection = Connection(
            self._next_conn_id, server, profile_id, prefer_tcp, persistent=persistent
        )
        self._next_conn_id += 1
        self.connection = connection
        if current is not None:
            self._listener.connection_removed(current)
        self._listener.connection_added(connection)
        connection.task = asyncio.create_task(self._run(connection))
        log.info("uid %d connects to %s profile %s", server.owner, server.url, profile_id)
        return connection

    async def _run(self, connection: Connection) -> None:
        """Bring the tunnel up, and up again after it is lost, until the user
        disconnects or an error that another try cannot mend ends it."""
        failures = 0
        while True:
            try:
                await self._attempt(connection, failures)
                failures = 0
                error = await self._until_lost(connection)
                if isinstance(error, _StartOver):
                    log.warning("connection %d: %s", connection.conn_id, error.message)
                    await self._start_over(connection, error)
                    continue
            except _StartOver as exc:
                # Told while a new tunnel was on its way: start that one over too.
                log.warning("connection %d: %s", connection.conn_id, exc.message)
                await self._start_over(connection, exc)
                continue
            except _NoAnswerOverUdp as exc:
                log.warning("connection %d: %s", connection.conn_id, exc.message)
                connection.prefer_tcp = True
                await self._start_over(connection, exc)
                continue
            except VpndError as exc:
                error = exc
            except asyncio.CancelledError:
                # disconnect() cancels the attempt or the wait between attempts.
                return
            except Exception:
                log.exception("connecting to %s failed", connection.server.url)
                error = VpndError("connecting failed because of an internal error")
            if not self._worth_another_try(connection, error):
                await self._fail(connection, error)
                return
            failures += 1
            try:
                await self._wait_to_reconnect(connection, error, failures)
            except asyncio.CancelledError:
                return

    async def _attempt(self, connection: Connection, failures: int) -> None:
        """One try: a fresh configuration, a tunnel, and the wait until it is up."""
        server = connection.server
        # Each try's tunnel has a name of its own: a systemd unit of the last
        # one may still be on its way out.
        name = f"conn{connection.conn_id}" + (f".{connection.tries}" if connection.tries else "")
        connection.tries += 1
        tunnel = self._tunnel_factory(
            name, lambda event: self._on_tunnel_event(connection, tunnel, event)
        )
        if server.authorized:
            # openvpn's own start-up runs while the server is asked for a config.
            tunnel.prepare()
        try:
            endpoints, connectable = await self._obtain(connection)
            connection.steps.step("obtained the configuration")
            connection.endpoints = endpoints
            self._record_session_expiry(connection, connectable.expires_at)
            if connectable.protocol != "openvpn":
                raise ServerError(
                    f"{server.host} issued a {connectable.protocol} configuration;"
                    " vpnd speaks OpenVPN only"
                )
        except BaseException:
            await asyncio.shield(tunnel.stop())
            raise
        config = connectable.config
        if config.dropped:
            log.warning(
                "dropped directives from %s's configuration: %s",
                server.host,
                ", ".join(config.dropped),
            )
        connection.exit_error = None
        connection.tunnel = tunnel
        if connection.state is State.PREPARING:
            self._move(connection, Event.CONFIG_READY)
        from vpnd.protocols import ovpnconfig

        # openvpn gets the certificate but never the key: it asks vpnd to sign.
        # Providers hand the key apart; a key left in the text still stays here.
        await tunnel.start(
            ovpnconfig.without(config, "key").render(),
            private_key=connectable.private_key,
            user_pass=connectable.user_pass,
        )
        connection.steps.step("openvpn started and released from its hold")
        await self._until_settled(connection, None if connection.prefer_tcp else self._udp_grace)

    def woke(self) -> None:
        """The machine woke from sleep: a tunnel that was up is made again at
        once instead of waiting for openvpn's ping timeout to notice."""
        connection = self.connection
        if connection is None or connection.state not in (State.CONNECTED, State.RECONNECTING):
            return
        connection.exit_error = _StartOver("the machine woke from sleep; connecting again")
        connection.waking.set()

    def network_changed(self, what: str) -> None:
        """The way to the server changed (`what`): a tunnel that is up, or on its
        way back, is made again at once over the new way."""
        connection = self.connection
        if connection is None or connection.state not in (State.CONNECTED, State.RECONNECTING):
            return
        connection.exit_error = _StartOver(f"{what}; connecting again")
        connection.waking.set()

    async def _start_over(self, connection: Connection, error: VpndError) -> None:
        """Tear down what is left of the tunnel and make the state say that
        another is coming and why (`error`); the caller starts it."""
        await self._teardown(connection)
        if connection.question is not None:
            self._on_prompt(connection, None)  # the tunnel that asked is gone
        connection.detail = error.message
        self._listener.connection_changed(connection, {"detail"})
        self._move(connection, Event.RETRY)
        connection.settled.clear()

    async def _until_lost(self, connection: Connection) -> VpndError:
        """Wait while the tunnel is up; the error it ended with."""
        while connection.exit_error is None:
            connection.waking.clear()
            await connection.waking.wait()
        return connection.exit_error

    def _worth_another_try(self, connection: Connection, error: VpndError) -> bool:
        """Whether to reconnect: the tunnel was up once and the user still wants
        it, and the error is one that time may mend (not a login or a profile
        that is gone)."""
        if connection.machine.finished or connection.state is State.DISCONNECTING:
            return False
        if not connection.connected_since and not connection.persistent:
            return False  # never up: say why at once instead of trying forever
        return isinstance(error, TunnelFailed | ServerUnreachable | ServerError) and not isinstance(
            error, CredentialsRejected | AccountDisabled | TwoFactorRequired
        )

    async def _wait_to_reconnect(
        self, connection: Connection, error: VpndError, failures: int
    ) -> None:
        """Start over as _start_over does, after a pause that grows with `failures`
        (ended early by `woke` or `network_changed`)."""
        await self._start_over(connection, error)
        delay = self._backoff.delay(failures)
        log.warning(
            "connection %d lost (%s); trying again in %.1f s (try %d)",
            connection.conn_id,
            error.message,
            delay,
            failures,
        )
        # Cut short by a wake from sleep or a network change: what failed may work now.
        connection.waking.clear()
        try:
            async with asyncio.timeout(delay):
                await connection.waking.wait()
        except TimeoutError:
            return
        log.info("connection %d: trying again at once", connection.conn_id)

    async def _until_settled(self, connection: Connection, udp_grace: float | None = None) -> None:
        """Wait until the tunnel is up or the attempt ended, within the connect
        timeout; time spent waiting for a person's answer does not count.

        With `udp_grace`, _NoAnswerOverUdp when the tunnel is not up after
        that many seconds (and the connect timeout has not run out first)."""
        loop = asyncio.get_running_loop()
        remaining = self._settings.connect_timeout
        spent = 0.0
        while not connection.settled.is_set():
            if connection.exit_error is not None:
                raise connection.exit_error
            connection.waking.clear()
            if connection.question is not None:
                await connection.waking.wait()
                continue
            started = loop.time()
            grace_left = udp_grace - spent if udp_grace is not None else remaining
            try:
                async with asyncio.timeout(min(remaining, grace_left)):
                    await connection.waking.wait()
            except TimeoutError:
                if grace_left < remaining:
                    raise _NoAnswerOverUdp(
                        f"no answer over UDP within {udp_grace:g} seconds; trying TCP"
                    ) from None
                raise TunnelFailed(
                    f"the tunnel did not come up within {self._settings.connect_timeout:g} seconds"
                    f" (openvpn's last step: {connection.detail or 'none'})"
                ) from None
            remaining -= loop.time() - started
            spent += loop.time() - started

    async def _obtain(self, connection: Connection) -> tuple[Endpoints, Connectable]:
        """The server's endpoints and a configuration from them.

        The discovery document is fetched before every connect, as the
        protocol asks. When the server named endpoints before, the
        configuration is asked for there at the same time; only if the
        document now names others is it asked for again, there."""
        server = connection.server
        provider = self._family(server).provider

        def obtain(endpoints: Endpoints) -> Awaitable[Connectable]:
            return self._call(
                server,
                endpoints,
                lambda session: provider.obtain(
                    session, connection.profile_id, prefer_tcp=connection.prefer_tcp
                ),
            )

        known = server.endpoints
        if known is None:
            endpoints = await provider.discover(server.url, server.record)
            connection.steps.step("found the server's endpoints")
            server.endpoints = endpoints
            return endpoints, await obtain(endpoints)
        discovered, early = await asyncio.gather(
            provider.discover(server.url, server.record), obtain(known), return_exceptions=True
        )
        connection.steps.step("found the server's endpoints and asked them for a configuration")
        # A configuration asked for in vain is not handed back: the next one
        # the server issues for this authorization supersedes it.
        if isinstance(discovered, BaseException):
            raise discovered
        server.endpoints = discovered
        if discovered == known:
            if isinstance(early, BaseException):
                raise early
            return known, early
        log.info("%s names other endpoints now; asking there", server.host)
        return discovered, await obtain(discovered)

    def _watch_session(self, connection: Connection) -> None:
        """(Re)start the watch over the connection's session expiry."""
        if connection.expiry_watch is not None:
            connection.expiry_watch.cancel()
        connection.expiry_watch = None
        if connection.session_expiry:
            connection.expiry_watch = asyncio.create_task(self._expiry_watch(connection))

    async def _expiry_watch(self, connection: Connection) -> None:
        expiry = connection.session_expiry
        left = expiry - time.time()
        # Already within a notice's reach when it starts: say so at once.
        if 0 < left <= EXPIRY_NOTICES[0]:
            self._listener.session_expiring(connection, int(left))
        for notice in (*EXPIRY_NOTICES, 0):
            if expiry - time.time() <= notice:
                continue
            # Wall-clock time: checked again after every wake (a suspended
            # machine wakes late).
            while (left := expiry - time.time() - notice) > 0:  # noqa: ASYNC110 (a clock, not an event)
                await asyncio.sleep(min(left, 3600))
            if connection.machine.finished:
                return
            if notice:
                self._listener.session_expiring(connection, notice)
        if connection.machine.finished or connection.state is State.DISCONNECTING:
            return
        self._listener.session_expiring(connection, 0)
        log.info("connection %d: the VPN session ended", connection.conn_id)
        error = SessionExpired(
            f"the VPN session at {connection.server.host} ended; log in again to start a new one"
        )
        connection.error, connection.error_message = error.dbus_name, error.message
        self._listener.connection_changed(connection, {"error", "error_message"})
        await self.disconnect(connection)

    def _record_session_expiry(self, connection: Connection, expires_at: float) -> None:
        connection.session_expiry = expires_at
        self._watch_session(connection)
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
            connection.waking.set()
        watch = connection.expiry_watch
        if connection.machine.finished and watch not in (None, asyncio.current_task()):
            assert watch is not None
            watch.cancel()
        if after is not before:
            log.info("connection %d: %s -> %s", connection.conn_id, before, after)
            changed = {"state"}
            if connection.machine.finished and connection.detail:
                # Detail is openvpn's step while connecting; it means nothing once it ended.
                connection.detail = ""
                changed.add("detail")
            if connection.machine.finished and connection.question is not None:
                connection.question = None
                changed.add("prompt")
            self._listener.connection_changed(connection, changed)

    def _on_tunnel_event(
        self, connection: Connection, tunnel: TunnelLike, event: TunnelEvent
    ) -> None:
        if connection.machine.finished or tunnel is not connection.tunnel:
            return  # the last words of a tunnel this connection has left behind
        if isinstance(event, Traffic):
            connection.bytes_in, connection.bytes_out = event.bytes_in, event.bytes_out
            self._listener.connection_changed(connection, {"bytes_in", "bytes_out"})
        elif isinstance(event, Progress | Up | Lost):
            self._on_progress(connection, event)
        elif isinstance(event, PromptEvent):
            self._on_prompt(connection, event.question)
        elif isinstance(event, TunnelExited):
            if connection.state is State.DISCONNECTING:
                return  # disconnect() finishes the story
            reason = event.reason or f"exit status {event.returncode}"
            # The connection's task decides: try again, or fail with this.
            connection.exit_error = event.error or TunnelFailed(f"openvpn stopped: {reason}")
            connection.waking.set()

    def _on_prompt(self, connection: Connection, question: Question | None) -> None:
        """openvpn asks a person (`question`), or no longer does (None)."""
        if question is None and connection.question is None:
            return
        connection.question = question
        connection.waking.set()
        if question is not None:
            connection.prompt_id += 1
            log.info("connection %d waits for a person: %s", connection.conn_id, question.kind)
        self._listener.connection_changed(connection, {"prompt"})
        if connection.state is not State.DISCONNECTING:
            self._move(connection, Event.ASK if question is not None else Event.ANSWERED)

    def answer(self, connection: Connection, prompt_id: int, values: Mapping[str, str]) -> None:
        """Answer the connection's question number `prompt_id`; the first valid answer wins.

        NotFound when that question is not asked (any more); InvalidArgument,
        with the question still open, when the values do not fit it.
        """
        question, tunnel = connection.question, connection.tunnel
        if question is None or prompt_id != connection.prompt_id or tunnel is None:
            raise NotFound(
                "that question is no longer asked: it was answered, or the connection moved on"
            )
        if not question.answerable:
            raise InvalidArgument(
                "this question is answered by logging in in a browser, at the address it gives"
            )
        tunnel.answer(values)
        log.info("connection %d: the question was answered", connection.conn_id)
        self._on_prompt(connection, None)

    def _on_progress(self, connection: Connection, event: Progress | Up | Lost) -> None:
        changed = {"detail"}
        if isinstance(event, Up):
            connection.detail = ""
            connection.steps.step("the tunnel is up")
            connection.tunnel_ip = event.local_ip
            connection.tunnel_ipv6 = event.local_ipv6
            connection.remote = (
                f"{event.remote_ip}:{event.remote_port}" if event.remote_port else event.remote_ip
            )
            connection.connected_since = time.time()
            changed |= {"tunnel_ip", "tunnel_ipv6", "remote", "connected_since"}
            move = Event.UP
            self._set_dns(connection, event)
        elif isinstance(event, Lost):
            connection.detail = event.reason
            connection.steps.step(f"the tunnel was lost ({event.reason})")
            move = Event.LOST
        else:
            connection.detail = event.step
            connection.steps.step(f"openvpn state {event.step}")
            move = Event.PROGRESS
        self._listener.connection_changed(connection, changed)
        if connection.state in (
            State.CONNECTING,
            State.CONNECTED,
            State.RECONNECTING,
            State.NEEDS_INPUT,
        ):
            self._move(connection, move)

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
            if task is not asyncio.current_task():
                # It ends an openvpn it started ahead of the config on its way out.
                await asyncio.wait([task])
        await self._teardown(connection)
        if task is not None and not task.done():
            # Waiting while the tunnel was up, or between tries: nothing left to wait for.
            task.cancel()
        self._move(connection, Event.STOPPED)
        log.info("connection %d to %s disconnected", connection.conn_id, connection.server.url)

    def _set_dns(self, connection: Connection, event: Up) -> None:
        """Put the tunnel's DNS on its link (in the background: the tunnel is up already)."""
        if self._dns is None or not event.link:
            return
        from vpnd.protocols.dns import DnsSettings, PushedDnsRejected

        full, search = connection.server.profile_dns.get(connection.profile_id, (False, ()))
        try:
            settings = DnsSettings.for_link(
                event.link, event.dns, full_tunnel=full, extra_search=search
            )
        except PushedDnsRejected as exc:
            log.warning("connection %d: %s; DNS left as it is", connection.conn_id, exc.message)
            return
        if self._dns_task is not None:
            self._dns_task.cancel()
        self._dns_task = asyncio.create_task(self._apply_dns(connection, settings))

    async def _apply_dns(self, connection: Connection, settings: DnsSettings) -> None:
        assert self._dns is not None
        if not settings.servers and not settings.search_domains:
            await self._dns.revert()  # a reconnect that brought none takes the last one back
            applied = None
        else:
            applied = settings if await self._dns.apply(settings) else None
        if applied != connection.dns:
            connection.dns = applied
            self._listener.connection_changed(connection, {"dns_servers", "dns_domains"})

    async def _drop_dns(self, connection: Connection) -> None:
        """Take the tunnel's DNS back, before the tunnel goes."""
        task, self._dns_task = self._dns_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        if self._dns is None:
            return
        await self._dns.revert()
        if connection.dns is not None:
            connection.dns = None
            self._listener.connection_changed(connection, {"dns_servers", "dns_domains"})

    async def _teardown(self, connection: Connection) -> None:
        tunnel, connection.tunnel = connection.tunnel, None
        # First, while the tunnel still runs: no name goes to a tunnel that is gone.
        await self._drop_dns(connection)
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
                await self._call(server, endpoints, self._family(server).provider.release)
        except (TimeoutError, VpndError) as exc:
            message = exc.message if isinstance(exc, VpndError) else "timed out"
            log.info("releasing the session at %s failed: %s", server.host, message)

    async def shutdown(self) -> None:
        """Disconnect and cancel everything (daemon stop)."""
        for server in self._servers.values():
            self._cancel_authorization(server, "vpnd is stopping")
        connection = self.connection
        if connection is not None and not connection.machine.finished:
            await self.disconnect(connection)
