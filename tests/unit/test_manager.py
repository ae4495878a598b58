"""The manager's flows with fake server families, tunnels and listeners.

The families, the login and the tunnel here are test doubles: the manager's
decisions (what it stores, which state a connection is in, what it tells
its listener, what it releases) are what is tested, for every branch,
without a network or openvpn. The real pieces are tested end to end in
tests/bus and tests/e2e.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vpnd.config import Settings
from vpnd.errors import (
    AlreadyExists,
    AuthorizationFailed,
    AuthorizationRequired,
    Busy,
    InvalidArgument,
    NotFound,
    ServerError,
    SessionExpired,
    TunnelFailed,
    VpndError,
)
from vpnd.manager import (
    MAX_SERVERS_PER_OWNER,
    SYSTEM_OWNER,
    Backoff,
    Connection,
    Manager,
    Server,
)
from vpnd.protocols.connstate import State
from vpnd.protocols.credentials import Dialog, LoginRefused, Question
from vpnd.protocols.eduvpn import Endpoints, Profile
from vpnd.protocols.eduvpn_v2 import Message
from vpnd.protocols.ovpnconfig import sanitize, split_key
from vpnd.providers import Families
from vpnd.providers.base import Connectable, Family, NotThisFamily, Session
from vpnd.store.store import ServerRecord, Store
from vpnd.tunnel.events import Progress, PromptEvent, Traffic, TunnelEvent, TunnelExited, Up

T = TypeVar("T")

OWNER, OTHER = 1000, 1001
URL = "https://vpn.example.org/"
KEY = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
CONFIG = f"""client
dev tun
remote vpn.example.org 1194 udp
<ca>
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
</ca>
<cert>
-----BEGIN CERTIFICATE-----
MIIC
-----END CERTIFICATE-----
</cert>
<key>
{KEY}</key>
script-security 2
"""


def endpoints_for(base_url: str) -> Endpoints:
    return Endpoints(f"{base_url}api", f"{base_url}authorize", f"{base_url}token")


@dataclass
class FakeProvider:
    """A server family whose servers answer as the test sets them up."""

    kind: str
    speaks: set[str] = field(default_factory=set)  # base URLs that speak this family
    profile_list: list[Profile] = field(default_factory=list)
    obtain_error: VpndError | None = None
    expires_at: float = 2_000_000_000.0
    message_list: list[Message] = field(default_factory=list)
    discover_error: VpndError | None = None
    user_pass: tuple[str, str] | None = None
    discoveries: int = 0
    moved: dict[str, Endpoints] = field(default_factory=dict)  # base URL -> its new endpoints
    calls: list[tuple[str, str]] = field(default_factory=list)  # (what, access token)
    sessions: list[Session] = field(default_factory=list)

    async def discover(self, base_url: str, record: ServerRecord | None = None) -> Endpoints:
        self.discoveries += 1
        if self.discover_error is not None:
            raise self.discover_error
        if base_url not in self.speaks:
            raise NotThisFamily(f"{base_url} does not speak {self.kind}")
        return self.moved.get(base_url) or endpoints_for(base_url)

    async def profiles(self, session: Session) -> list[Profile]:
        self.calls.append(("profiles", session.access_token))
        return self.profile_list

    async def obtain(self, session: Session, profile_id: str, *, prefer_tcp: bool) -> Connectable:
        self.calls.append((f"obtain {profile_id} tcp={prefer_tcp}", session.access_token))
        self.sessions.append(session)
        if self.obtain_error is not None:
            raise self.obtain_error
        config, key = split_key(sanitize(CONFIG))
        return Connectable("openvpn", config, key, self.expires_at, self.user_pass)

    async def messages(self, session: Session, languages: Sequence[str]) -> list[Message]:
        self.calls.append((f"messages {','.join(languages)}", session.access_token))
        return self.message_list

    async def release(self, session: Session) -> None:
        self.calls.append(("release", session.access_token))


class FakePending:
    """A login waiting for the browser; the test ends it with `browser`."""

    def __init__(self, login: FakeLogin, record: ServerRecord, caller: int) -> None:
        self.url = f"{record.url}authorize?caller={caller}"
        self.record = record
        self.login = login
        self.browser: asyncio.Future[VpndError | None] = asyncio.get_running_loop().create_future()
        self.closed = False

    async def complete(self) -> None:
        error = await self.browser
        if error is not None:
            raise error
        self.login.credentials[self.record.server_id] = "token-1"

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeLogin:
    """Credentials per server id; a refused credential is forgotten, as OAuth's refresh does."""

    credentials: dict[str, str] = field(default_factory=dict)
    pending: list[FakePending] = field(default_factory=list)
    refuse: bool = False

    def authorized(self, record: ServerRecord) -> bool:
        return record.server_id in self.credentials

    def forget(self, record: ServerRecord) -> None:
        self.credentials.pop(record.server_id, None)

    async def begin(self, record: ServerRecord, endpoints: Endpoints, caller: int) -> FakePending:
        assert endpoints == endpoints_for(record.url)
        self.pending.append(FakePending(self, record, caller))
        return self.pending[-1]

    async def sign_in(
        self, record: ServerRecord, endpoints: Endpoints, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        if fields.get("password") == "ask me":
            return {"challenge": "PIN", "echo": False, "response_required": True}
        if fields.get("password") != "right" and fields.get("response") != "1234":
            raise AuthorizationFailed("the server refused the user name and password")
        self.credentials[record.server_id] = "profile"
        return {}

    async def call(
        self, record: ServerRecord, endpoints: Endpoints, api_call: Callable[[str], Awaitable[T]]
    ) -> T:
        credential = self.credentials.get(record.server_id)
        if credential is None:
            raise AuthorizationRequired(f"vpnd has no authorization for {record.url}")
        if self.refuse:
            del self.credentials[record.server_id]
            raise AuthorizationRequired("the server refused the saved authorization")
        return await api_call(credential)


class FakeTunnel:
    def __init__(self, name: str, sink: Callable[..., None]) -> None:
        self.name, self.sink = name, sink
        self.text = ""
        self.key: bytes | None = None
        self.user_pass: tuple[str, str] | None = None
        self.prepared = self.started = self.stopped = False
        # The real dialog: what the fake sends to openvpn is what the tunnel would.
        self.dialog = Dialog(None)
        self.sent: list[tuple[str, ...]] = []

    def prepare(self) -> None:
        self.prepared = True

    async def start(
        self,
        config: str,
        *,
        private_key: bytes | None = None,
        user_pass: tuple[str, str] | None = None,
    ) -> None:
        assert not self.stopped, "a stopped tunnel was started"
        self.text, self.key, self.user_pass = config, private_key, user_pass
        self.dialog = Dialog(user_pass)
        self.started = True

    async def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True

    def answer(self, values: Mapping[str, str]) -> None:
        self.sent.extend(self.dialog.answer(values).commands)

    def emit(self, event: TunnelEvent) -> None:
        self.sink(event)

    def ask(self, password_text: str) -> None:
        """openvpn's >PASSWORD: notification, through the real dialog."""
        outcome = self.dialog.on_password(password_text)
        assert isinstance(outcome, Question), outcome
        self.emit(PromptEvent(outcome))


@dataclass
class Recorder:
    """The manager's listener: every report, in order."""

    events: list[tuple[str, Any, Any]] = field(default_factory=list)

    def server_added(self, server: Server) -> None:
        self.events.append(("server_added", server, None))

    def server_removed(self, server: Server) -> None:
        self.events.append(("server_removed", server, None))

    def server_changed(self, server: Server, fields: set[str]) -> None:
        self.events.append(("server_changed", server, frozenset(fields)))

    def authorization_finished(self, server: Server, error: VpndError | None) -> None:
        self.events.append(("authorization_finished", server, error))

    def connection_added(self, connection: Connection) -> None:
        self.events.append(("connection_added", connection, None))

    def connection_removed(self, connection: Connection) -> None:
        self.events.append(("connection_removed", connection, None))

    def connection_changed(self, connection: Connection, fields: set[str]) -> None:
        self.events.append(("connection_changed", connection, frozenset(fields)))

    def session_expiring(self, connection: Connection, seconds_left: int) -> None:
        self.events.append(("session_expiring", connection, seconds_left))

    def names(self) -> list[str]:
        return [name for name, _obj, _extra in self.events]

    def changed_fields(self, obj: object) -> set[str]:
        fields: set[str] = set()
        for name, what, extra in self.events:
            if what is obj and name.endswith("_changed"):
                fields |= extra
        return fields


class World:
    """A manager over a real store in a temporary directory, with fake families."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        connect_timeout: float = 60.0,
        backoff: Backoff = Backoff(first=0.01, most=0.04),  # noqa: B008 (frozen)
        udp_grace: float = 10.0,
    ) -> None:
        self.backoff = backoff
        self.udp_grace = udp_grace
        self.settings = Settings(
            state_dir=tmp_path / "state",
            runtime_dir=tmp_path / "run",
            connect_timeout=connect_timeout,
        )
        self.store = Store(self.settings.state_dir)
        self.v3 = FakeProvider("eduvpn-v3")
        self.v2 = FakeProvider("eduvpn-v2")
        self.named = FakeProvider("access-server")  # added by name, never detected
        self.login = FakeLogin()
        self.tunnels: list[FakeTunnel] = []
        self.listener = Recorder()
        self.manager = self.new_manager()

    def new_manager(self) -> Manager:
        families = Families(
            [
                Family(self.v3, self.login),
                Family(self.v2, self.login),
                Family(self.named, self.login, detected=False),
            ]
        )
        return Manager(
            self.settings,
            self.store,
            families,
            self.tunnel,
            self.listener,
            self.backoff,
            self.udp_grace,
        )

    def tunnel(self, name: str, sink: Callable[[TunnelEvent], None]) -> FakeTunnel:
        self.tunnels.append(FakeTunnel(name, sink))
        return self.tunnels[-1]

    def started_tunnels(self) -> list[FakeTunnel]:
        """The tunnels that were given a config; each other one was stopped
        (an openvpn started ahead of a config that never came is ended)."""
        assert all(tunnel.stopped for tunnel in self.tunnels if not tunnel.started)
        return [tunnel for tunnel in self.tunnels if tunnel.started]

    async def add(self, url: str = URL, owner: int = OWNER, *, family: str = "v3") -> Server:
        getattr(self, family).speaks.add(url)
        return await self.manager.add_server(owner, url)

    async def authorized_server(self, url: str = URL, owner: int = OWNER) -> Server:
        server = await self.add(url, owner)
        self.login.credentials[server.server_id] = "token-1"
        server.authorized = True
        return server

    async def connected(self, server: Server) -> Connection:
        connection = self.manager.connect(server, "employees", prefer_tcp=False)
        await settled_tunnel(self, connection)
        self.tunnels[-1].emit(Up("10.8.0.2", "", "198.51.100.1"))
        assert connection.state is State.CONNECTED
        return connection


async def settled_tunnel(world: World, connection: Connection) -> None:
    """Wait until the connection has started its tunnel (or ended)."""
    for _ in range(100):
        tunnel = connection.tunnel
        if (isinstance(tunnel, FakeTunnel) and tunnel.started) or connection.machine.finished:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the connection never started a tunnel: {connection.state}")


async def login_ended(server: Server) -> None:
    """Wait for the server's login attempt and for its outcome to be reported."""
    task = server._authorization
    assert task is not None
    await asyncio.wait({task})
    await asyncio.sleep(0)  # the outcome is reported from the task's done callback


async def finished(connection: Connection) -> None:
    assert connection.task is not None
    await asyncio.wait_for(asyncio.shield(connection.task), 5)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


# --- adding and removing servers ------------------------------------------------


async def test_add_detects_the_family_and_stores_its_kind(world: World) -> None:
    v3 = await world.add("https://new.example.org/", family="v3")
    v2 = await world.add("https://old.example.org/", family="v2")
    assert (v3.kind, v2.kind) == ("eduvpn-v3", "eduvpn-v2")
    assert world.listener.names() == ["server_added", "server_added"]
    stored = {r.url: r.kind for r in Store(world.settings.state_dir).load_servers()}
    assert stored == {
        "https://new.example.org/": "eduvpn-v3",
        "https://old.example.org/": "eduvpn-v2",
    }


async def test_a_family_added_by_name_is_never_detected(world: World) -> None:
    world.named.speaks.add(URL)
    with pytest.raises(NotThisFamily):
        await world.manager.add_server(OWNER, URL)
    server = await world.manager.add_server(OWNER, URL, "access-server")
    assert server.kind == "access-server"
    with pytest.raises(ServerError, match="does not speak"):
        await world.manager.add_server(OWNER, "https://other.example.org/", "wireguard-v9")


async def test_sign_in_with_a_question_in_between(world: World) -> None:
    world.named.speaks.add(URL)
    server = await world.manager.add_server(OWNER, URL, "access-server")
    with pytest.raises(AuthorizationFailed):
        await world.manager.sign_in(server, {"username": "alice", "password": "wrong"})
    assert not server.authorized
    asked = await world.manager.sign_in(server, {"username": "alice", "password": "ask me"})
    assert asked == {"challenge": "PIN", "echo": False, "response_required": True}
    assert await world.manager.sign_in(server, {"response": "1234"}) == {}
    assert server.authorized
    assert ("server_changed", server, frozenset({"authorized"})) in world.listener.events


async def test_a_server_that_speaks_no_family_is_not_added(world: World) -> None:
    with pytest.raises(NotThisFamily, match="does not speak eduvpn-v3"):
        await world.manager.add_server(OWNER, "https://nothing.example.org")
    assert world.manager.servers_of(OWNER) == []
    assert world.store.load_servers() == []
    assert world.listener.events == []


async def test_adding_twice_and_past_the_limit_is_refused(world: World) -> None:
    await world.add()
    with pytest.raises(AlreadyExists):
        await world.add()
    for n in range(MAX_SERVERS_PER_OWNER - 1):
        await world.add(f"https://vpn{n}.example.org/")
    with pytest.raises(InvalidArgument, match="the most vpnd keeps for one owner"):
        await world.add("https://one-too-many.example.org/")
    # Another owner has limits of its own.
    await world.add(owner=OTHER)
    assert len(world.store.load_servers()) == MAX_SERVERS_PER_OWNER + 1


async def test_find_server_by_url_host_or_part(world: World) -> None:
    a = await world.add("https://a.example.org/")
    b = await world.add("https://b.example.org/")
    assert world.manager.find_server(OWNER, "https://a.example.org") is a
    assert world.manager.find_server(OWNER, "b.example.org") is b
    assert world.manager.find_server(OWNER, "b.exa") is b
    with pytest.raises(InvalidArgument, match="matches several servers"):
        world.manager.find_server(OWNER, "example")
    with pytest.raises(NotFound) as caught:
        world.manager.find_server(OTHER, "a.example.org")
    assert "vpnctl" not in caught.value.message


async def test_servers_and_their_kinds_survive_a_restart(world: World) -> None:
    server = await world.authorized_server()
    world.listener.events.clear()
    manager = world.new_manager()
    manager.load()
    [loaded] = manager.servers_of(OWNER)
    assert (loaded.server_id, loaded.kind, loaded.authorized) == (
        server.server_id,
        "eduvpn-v3",
        True,
    )


async def test_a_stored_kind_this_version_does_not_speak(world: World) -> None:
    record = ServerRecord("00112233445566aa", OWNER, URL, 1.0, "eduvpn-v9")
    world.store.save_servers(OWNER, [record])
    manager = world.new_manager()
    manager.load()
    [server] = manager.servers_of(OWNER)
    assert not server.authorized
    with pytest.raises(ServerError, match="does not speak"):
        await manager.profiles(server, "en")
    # Still listed and removable; the record is untouched until then.
    assert world.store.load_servers() == [record]
    await manager.remove_server(server)
    assert world.store.load_servers() == []


async def test_remove_forgets_the_server_and_its_secrets(world: World) -> None:
    server = await world.authorized_server()
    world.store.secrets.set(OWNER, server.server_id, "keypair", {"key": "k"})
    await world.manager.remove_server(server)
    assert world.store.secrets.get(OWNER, server.server_id, "keypair") is None
    assert world.store.load_servers() == []
    assert world.listener.names()[-1] == "server_removed"
    with pytest.raises(NotFound):
        world.manager.server(server.server_id)


# --- authorization ------------------------------------------------------------------


async def test_authorize_hands_out_the_url_and_reports_the_outcome(world: World) -> None:
    server = await world.add()
    url = await world.manager.authorize(server, OWNER)
    assert url == f"{URL}authorize?caller={OWNER}"
    assert server.authorization_pending
    world.login.pending[-1].browser.set_result(None)
    await login_ended(server)
    assert server.authorized and not server.authorization_pending
    assert world.login.pending[-1].closed
    assert world.listener.events[-1] == ("authorization_finished", server, None)


async def test_a_failed_authorization_is_reported_and_changes_nothing(world: World) -> None:
    server = await world.add()
    await world.manager.authorize(server, OWNER)
    world.login.pending[-1].browser.set_result(AuthorizationFailed("the server said: denied"))
    await login_ended(server)
    name, what, error = world.listener.events[-1]
    assert (name, what) == ("authorization_finished", server)
    assert isinstance(error, AuthorizationFailed) and error.message == "the server said: denied"
    assert not server.authorized and world.login.pending[-1].closed


async def test_a_new_authorization_supersedes_the_waiting_one(world: World) -> None:
    server = await world.add()
    await world.manager.authorize(server, OWNER)
    first_task = server._authorization
    await world.manager.authorize(server, OWNER)
    assert first_task is not None
    with pytest.raises(asyncio.CancelledError):
        await first_task
    await asyncio.sleep(0)  # the first attempt's outcome is reported from its done callback
    first = world.login.pending[0]
    assert first.closed
    reports = [e for e in world.listener.events if e[0] == "authorization_finished"]
    assert len(reports) == 1 and "a newer login started" in reports[0][2].message
    # The newer attempt still waits, and says so.
    assert server.authorization_pending and not world.login.pending[1].closed
    world.login.pending[1].browser.set_result(None)
    await login_ended(server)
    assert server.authorized


# --- profiles -------------------------------------------------------------------------


async def test_profiles_in_the_callers_language(world: World) -> None:
    server = await world.authorized_server()
    world.v3.profile_list = [
        Profile("employees", {"en-US": "Employees", "nl-NL": "Medewerkers"}, default_gateway=True)
    ]
    [profile] = await world.manager.profiles(server, "nl_NL.UTF-8")
    assert profile["display_name"] == "Medewerkers" and profile["default_gateway"] is True
    assert world.v3.calls == [("profiles", "token-1")]


async def test_a_refused_credential_is_published(world: World) -> None:
    server = await world.authorized_server()
    world.login.refuse = True
    with pytest.raises(AuthorizationRequired):
        await world.manager.profiles(server, "en")
    assert not server.authorized
    assert "authorized" in world.listener.changed_fields(server)


async def test_messages_in_the_callers_language(world: World) -> None:
    server = await world.authorized_server()
    world.v3.message_list = [
        Message("maintenance", "Down for an upgrade", 100.0, begin=200.0, end=300.0),
        Message("motd", "Welcome", 50.0),
    ]
    got = await world.manager.messages(server, "de_DE.UTF-8")
    assert got == [
        {"type": "maintenance", "text": "Down for an upgrade", "date_time": 100.0,
         "begin": 200.0, "end": 300.0},
        {"type": "motd", "text": "Welcome", "date_time": 50.0, "begin": 0.0, "end": 0.0},
    ]  # fmt: skip
    assert world.v3.calls == [("messages de-DE,de", "token-1")]


# --- connections ------------------------------------------------------------------------


async def test_connect_gives_openvpn_the_config_and_keeps_the_key(world: World) -> None:
    server = await world.authorized_server()
    connection = await world.connected(server)
    [tunnel] = world.tunnels
    assert tunnel.key == KEY.encode()
    assert "PRIVATE KEY" not in tunnel.text and "<key>" not in tunnel.text
    assert "script-security" not in tunnel.text  # the allow-list ran
    assert "<cert>" in tunnel.text and "remote vpn.example.org 1194 udp" in tunnel.text
    assert world.v3.calls == [("obtain employees tcp=False", "token-1")]
    assert world.v3.sessions[0].label == "vpn.example.org"
    assert connection.tunnel_ip == "10.8.0.2"
    assert connection.session_expiry == world.v3.expires_at
    # The session expiry is kept with the server.
    [record] = Store(world.settings.state_dir).load_servers()
    assert record.session_expiry == world.v3.expires_at


async def test_later_connects_ask_for_a_config_while_the_endpoints_are_fetched(
    world: World,
) -> None:
    server = await world.authorized_server()
    first = await world.connected(server)
    await world.manager.disconnect(first)
    world.v3.calls.clear()
    gate = asyncio.Event()
    original = world.v3.discover

    async def slow_discover(base_url: str, record: ServerRecord | None = None) -> Endpoints:
        await gate.wait()
        return await original(base_url, record)

    world.v3.discover = slow_discover  # type: ignore[method-assign]
    discoveries = world.v3.discoveries
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    for _ in range(10):
        await asyncio.sleep(0)
    # The discovery document is still on its way; the configuration is asked for already.
    assert world.v3.calls == [("obtain employees tcp=False", "token-1")]
    assert world.v3.discoveries == discoveries
    # openvpn is started ahead of its config, which waits for the document.
    assert len(world.tunnels) == 2 and world.tunnels[-1].prepared
    assert not world.tunnels[-1].started
    gate.set()
    await settled_tunnel(world, connection)
    assert world.tunnels[-1].started and len(world.tunnels) == 2
    assert world.v3.discoveries == discoveries + 1


async def test_endpoints_that_moved_are_asked_again(world: World) -> None:
    server = await world.authorized_server()
    await world.manager.disconnect(await world.connected(server))
    moved = Endpoints("https://api2.example.org/", "https://a/", "https://t/")
    world.v3.moved[URL] = moved
    world.v3.sessions.clear()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    assert [session.endpoints for session in world.v3.sessions] == [endpoints_for(URL), moved]
    assert connection.endpoints == moved and server.endpoints == moved


async def test_a_failed_discovery_fails_the_connect_even_with_a_config(world: World) -> None:
    server = await world.authorized_server()
    await world.manager.disconnect(await world.connected(server))
    world.v3.discover_error = ServerError("the server answered with HTTP status 503")
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await finished(connection)
    assert connection.state is State.FAILED
    assert "503" in connection.error_message
    assert len(world.started_tunnels()) == 1  # only the first connect's


async def test_a_providers_keys_stay_with_its_server(world: World) -> None:
    server = await world.authorized_server()
    other = await world.authorized_server("https://other.example.org/")
    world.manager.connect(server, "employees", prefer_tcp=True)
    await settled_tunnel(world, world.manager.connection)  # type: ignore[arg-type]
    vault = world.v3.sessions[0].vault
    vault.set("keypair", {"certificate": "c"})
    assert world.store.secrets.get(OWNER, server.server_id, "keypair") == {"certificate": "c"}
    assert world.store.secrets.get(OWNER, other.server_id, "keypair") is None


async def test_the_tunnel_gets_the_user_name_and_password_the_provider_keeps(
    world: World,
) -> None:
    server = await world.authorized_server()
    world.v3.user_pass = ("alice", "secret")
    await world.connected(server)
    assert world.tunnels[-1].user_pass == ("alice", "secret")


async def test_connect_refuses_a_bad_profile_id(world: World) -> None:
    server = await world.authorized_server()
    with pytest.raises(InvalidArgument):
        world.manager.connect(server, "../etc", prefer_tcp=False)
    assert world.manager.connection is None


async def test_one_connection_at_a_time(world: World) -> None:
    server = await world.authorized_server()
    await world.connected(server)
    with pytest.raises(Busy) as mine:
        world.manager.connect(server, "employees", prefer_tcp=False)
    assert "disconnect it first" in mine.value.message and "vpnctl" not in mine.value.message
    other = await world.authorized_server(owner=OTHER)
    with pytest.raises(Busy, match="another user"):
        world.manager.connect(other, "employees", prefer_tcp=False)


async def test_connect_without_authorization_fails_without_a_tunnel(world: World) -> None:
    server = await world.add()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await finished(connection)
    assert connection.state is State.FAILED
    assert connection.error == AuthorizationRequired.dbus_name
    assert world.started_tunnels() == []
    assert not any(tunnel.prepared for tunnel in world.tunnels)  # nothing was spawned


async def test_a_provider_error_fails_the_connection(world: World) -> None:
    server = await world.authorized_server()
    world.v3.obtain_error = ServerError("the server has no such profile")
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await finished(connection)
    assert connection.state is State.FAILED
    assert connection.error_message == "the server has no such profile"
    assert world.started_tunnels() == []
    assert world.tunnels[-1].prepared  # openvpn was started ahead, and ended
    # Nothing was obtained, so nothing is released.
    assert ("release", "token-1") not in world.v3.calls


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.001)


async def test_a_lost_tunnel_is_brought_up_again_with_a_fresh_configuration(
    world: World,
) -> None:
    server = await world.authorized_server()
    connection = await world.connected(server)
    tunnel = world.tunnels[-1]
    tunnel.emit(Traffic(100, 200))
    assert (connection.bytes_in, connection.bytes_out) == (100, 200)
    obtained = len([c for c in world.v3.calls if c[0].startswith("obtain")])
    tunnel.emit(TunnelExited(-9, "openvpn was killed by signal 9", requested=False))
    await until(lambda: connection.state is State.RECONNECTING)
    assert "killed by signal 9" in connection.detail  # the state says why
    await until(lambda: len(world.tunnels) == 2 and world.tunnels[-1].started)
    assert tunnel.stopped and ("release", "token-1") in world.v3.calls
    assert len([c for c in world.v3.calls if c[0].startswith("obtain")]) == obtained + 1
    assert world.tunnels[-1].name == "conn1.1"  # a name of its own
    tunnel.emit(Up("10.8.0.9"))  # the old tunnel's last words change nothing
    assert connection.state is State.RECONNECTING
    world.tunnels[-1].emit(Up("10.8.0.3", "", "198.51.100.1"))
    assert connection.state is State.CONNECTED and connection.tunnel_ip == "10.8.0.3"
    assert connection.detail == ""


async def test_a_tunnel_that_keeps_failing_is_tried_again_and_again(world: World) -> None:
    server = await world.authorized_server()
    connection = await world.connected(server)
    for attempt in range(1, 4):
        world.tunnels[-1].emit(TunnelExited(1, f"failure {attempt}", requested=False))
        await until(lambda n=attempt: len(world.tunnels) == n + 1 and world.tunnels[-1].started)
        assert connection.state is State.RECONNECTING
        assert f"failure {attempt}" in connection.detail
    await world.manager.disconnect(connection)
    assert connection.state is State.DISCONNECTED
    await finished(connection)  # the task that kept trying ends with it


async def test_a_lost_authorization_ends_the_reconnecting(world: World) -> None:
    server = await world.authorized_server()
    connection = await world.connected(server)
    world.login.refuse = True
    world.tunnels[-1].emit(TunnelExited(1, "exited", requested=False))
    await finished(connection)
    assert connection.state is State.FAILED
    assert connection.error == AuthorizationRequired.dbus_name
    assert len(world.started_tunnels()) == 1


async def test_disconnect_while_waiting_to_reconnect(tmp_path: Path) -> None:
    world = World(tmp_path, backoff=Backoff(first=30, most=30))
    server = await world.authorized_server()
    connection = await world.connected(server)
    world.tunnels[-1].emit(TunnelExited(1, "exited", requested=False))
    await until(lambda: connection.state is State.RECONNECTING)
    async with asyncio.timeout(5):
        await world.manager.disconnect(connection)
    assert connection.state is State.DISCONNECTED and len(world.tunnels) == 1
    await finished(connection)


async def test_a_tunnel_that_never_came_up_fails_at_once(world: World) -> None:
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    world.tunnels[-1].emit(TunnelExited(1, "tls-crypt unwrapping failed", requested=False))
    await finished(connection)
    assert connection.state is State.FAILED
    assert connection.error == TunnelFailed.dbus_name
    assert "tls-crypt unwrapping failed" in connection.error_message
    assert len(world.tunnels) == 1 and world.tunnels[0].stopped
    assert world.v3.calls[-1] == ("release", "token-1")


def test_the_pause_between_tries_doubles_up_to_a_bound_and_is_spread() -> None:
    backoff = Backoff(first=1.0, most=60.0, jitter=0.2)
    for failures, base in ((1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (500, 60.0)):
        delays = {backoff.delay(failures) for _ in range(50)}
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(delays) > 1


async def test_a_tunnel_that_never_comes_up_times_out(tmp_path: Path) -> None:
    world = World(tmp_path, connect_timeout=0.05)
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    world.tunnels[-1].emit(Progress("WAIT"))
    await finished(connection)
    assert connection.state is State.FAILED
    assert "did not come up within" in connection.error_message
    assert "WAIT" in connection.error_message
    assert world.tunnels[-1].stopped


async def test_disconnect_stops_openvpn_and_releases_the_session(world: World) -> None:
    server = await world.authorized_server()
    connection = await world.connected(server)
    await world.manager.disconnect(connection)
    assert connection.state is State.DISCONNECTED
    assert world.tunnels[-1].stopped
    assert world.v3.calls[-1] == ("release", "token-1")
    # A second disconnect is a no-op, and a new connection replaces the old object.
    await world.manager.disconnect(connection)
    again = world.manager.connect(server, "employees", prefer_tcp=False)
    assert ("connection_removed", connection, None) in world.listener.events
    assert world.manager.connection is again


async def test_disconnect_while_the_config_is_being_obtained(world: World) -> None:
    server = await world.authorized_server()
    gate = asyncio.Event()
    original = world.v3.obtain

    async def slow_obtain(session: Session, profile_id: str, *, prefer_tcp: bool) -> Connectable:
        await gate.wait()
        return await original(session, profile_id, prefer_tcp=prefer_tcp)

    world.v3.obtain = slow_obtain  # type: ignore[method-assign]
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await asyncio.sleep(0)
    await world.manager.disconnect(connection)
    assert connection.state is State.DISCONNECTED
    assert world.started_tunnels() == []


async def test_remove_disconnects_first(world: World) -> None:
    server = await world.authorized_server()
    connection = await world.connected(server)
    await world.manager.remove_server(server)
    assert connection.state is State.DISCONNECTED
    assert world.tunnels[-1].stopped
    assert world.store.load_servers() == []


async def test_removing_a_server_ends_its_login(world: World) -> None:
    server = await world.add()
    await world.manager.authorize(server, OWNER)
    task = server._authorization
    await world.manager.remove_server(server)
    assert world.login.pending[-1].closed
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    # Nothing is told about a server that is gone.
    assert world.listener.names()[-1] == "server_removed"


async def test_shutdown_disconnects_and_cancels_logins(world: World) -> None:
    server = await world.authorized_server()
    other = await world.add("https://other.example.org/")
    await world.manager.authorize(other, OWNER)
    connection = await world.connected(server)
    await world.manager.shutdown()
    assert connection.state is State.DISCONNECTED
    assert world.login.pending[-1].closed


# --- questions openvpn asks a person ---------------------------------------------


async def test_a_question_pauses_the_connect_timeout_until_it_is_answered(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, connect_timeout=0.2)
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    tunnel = world.tunnels[-1]
    tunnel.ask("Need 'Auth' username/password")
    assert connection.state is State.NEEDS_INPUT
    assert connection.question is not None and connection.prompt_id == 1
    assert {"prompt", "state"} <= world.listener.changed_fields(connection)
    await asyncio.sleep(0.4)  # twice the timeout: a person takes their time
    assert connection.state is State.NEEDS_INPUT
    world.manager.answer(connection, 1, {"username": "bob", "password": "s3cret"})
    assert tunnel.sent == [("username", "Auth", "bob"), ("password", "Auth", "s3cret")]
    assert connection.state is State.CONNECTING and connection.question is None
    tunnel.emit(Up("10.8.0.2", "", "198.51.100.1"))
    await asyncio.sleep(0)
    assert connection.state is State.CONNECTED


async def test_the_first_valid_answer_wins(world: World) -> None:
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    tunnel = world.tunnels[-1]
    tunnel.ask("Need 'Auth' username/password SC:1,PIN")
    with pytest.raises(InvalidArgument):
        world.manager.answer(connection, 1, {"username": "bob"})  # misses fields: still open
    with pytest.raises(NotFound):
        world.manager.answer(connection, 7, {"username": "b", "password": "p", "response": "1"})
    assert connection.state is State.NEEDS_INPUT
    world.manager.answer(connection, 1, {"username": "bob", "password": "p", "response": "1"})
    with pytest.raises(NotFound, match="no longer asked"):
        world.manager.answer(connection, 1, {"username": "eve", "password": "x", "response": "2"})
    assert len(tunnel.sent) == 2
    assert connection.state is State.CONNECTING


async def test_a_web_login_waits_and_closes_when_openvpn_moves_on(tmp_path: Path) -> None:
    world = World(tmp_path, connect_timeout=0.1)
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    tunnel = world.tunnels[-1]
    tunnel.emit(Progress("AUTH_PENDING"))
    question = tunnel.dialog.on_info("WEB_AUTH::https://vpn.example.org/sso")
    assert isinstance(question, Question)
    tunnel.emit(PromptEvent(question))
    assert connection.state is State.NEEDS_INPUT
    with pytest.raises(InvalidArgument, match="browser"):
        world.manager.answer(connection, connection.prompt_id, {})
    await asyncio.sleep(0.2)
    assert connection.state is State.NEEDS_INPUT
    assert tunnel.dialog.on_state("CONNECTED")
    tunnel.emit(PromptEvent(None))
    tunnel.emit(Up("10.8.0.2", "", "198.51.100.1"))
    await asyncio.sleep(0)
    assert connection.state is State.CONNECTED and connection.question is None


async def test_a_refused_login_fails_with_its_own_error_and_closes_the_question(
    world: World,
) -> None:
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    tunnel = world.tunnels[-1]
    tunnel.ask("Need 'Auth' username/password")
    refused = LoginRefused("the server refused the user name or password: blocked")
    tunnel.emit(TunnelExited(0, "authentication failed", requested=False, error=refused))
    await finished(connection)
    assert connection.state is State.FAILED
    assert connection.error == "org.vpnd.Error.AuthorizationFailed"
    assert connection.error_message.endswith("blocked")
    assert connection.question is None


async def test_disconnect_while_a_question_waits(world: World) -> None:
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    world.tunnels[-1].ask("Need 'Auth' username/password")
    await world.manager.disconnect(connection)
    assert connection.state is State.DISCONNECTED and connection.question is None
    with pytest.raises(NotFound):
        world.manager.answer(connection, 1, {"username": "u", "password": "p"})


# --- connect at start ------------------------------------------------------------


async def test_only_one_system_wide_server_is_marked_to_connect_at_start(world: World) -> None:
    mine = await world.authorized_server()
    with pytest.raises(InvalidArgument, match="system-wide"):
        world.manager.set_autoconnect(mine, "employees")
    first = await world.authorized_server("https://one.example.org/", SYSTEM_OWNER)
    second = await world.authorized_server("https://two.example.org/", SYSTEM_OWNER)
    world.manager.set_autoconnect(first, "employees")
    world.manager.set_autoconnect(second, "staff")
    assert (first.record.autoconnect, second.record.autoconnect) == ("", "staff")
    assert "autoconnect" in world.listener.changed_fields(first)
    with pytest.raises(InvalidArgument):
        world.manager.set_autoconnect(second, "no spaces")
    # Kept across a restart.
    again = world.new_manager()
    again.load()
    kept = {s.url: s.record.autoconnect for s in again.servers_of(SYSTEM_OWNER)}
    assert kept == {"https://one.example.org/": "", "https://two.example.org/": "staff"}
    world.manager.set_autoconnect(second, "")
    assert second.record.autoconnect == ""


async def test_the_marked_server_connects_at_start_and_is_kept_up(world: World) -> None:
    server = await world.authorized_server(owner=SYSTEM_OWNER)
    world.manager.set_autoconnect(server, "employees")
    restarted = world.new_manager()
    restarted.load()
    assert restarted.connect_at_start() is not None
    connection = restarted.connection
    assert connection is not None and connection.persistent
    assert connection.profile_id == "employees"
    # At boot the network may not be there yet: a first failure is tried again.
    await until(lambda: bool(world.tunnels) and world.tunnels[-1].started)
    world.tunnels[-1].emit(TunnelExited(1, "no route to host", requested=False))
    await until(lambda: len(world.tunnels) == 2 and world.tunnels[-1].started)
    assert connection.state is State.RECONNECTING
    world.tunnels[-1].emit(Up("10.8.0.2"))
    assert connection.state is State.CONNECTED
    await restarted.disconnect(connection)


async def test_without_its_authorization_it_connects_after_the_next_login(world: World) -> None:
    server = await world.add(owner=SYSTEM_OWNER)
    world.manager.set_autoconnect(server, "employees")
    assert world.manager.connect_at_start() is server
    assert world.manager.connection is None  # no browser at boot: it waits
    await world.manager.authorize(server, SYSTEM_OWNER)
    world.login.pending[-1].browser.set_result(None)
    await login_ended(server)
    connection = world.manager.connection
    assert connection is not None and connection.server is server and connection.persistent
    await world.manager.disconnect(connection)


# --- the session's end, and renewing it --------------------------------------------


async def test_the_owner_is_told_before_the_session_ends_and_it_ends_cleanly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vpnd.manager

    monkeypatch.setattr(vpnd.manager, "EXPIRY_NOTICES", (3, 2))
    world.v3.expires_at = time.time() + 2.5
    server = await world.authorized_server()
    connection = await world.connected(server)
    await until(lambda: connection.machine.finished)
    notices = [extra for name, what, extra in world.listener.events if name == "session_expiring"]
    assert notices[0] in (1, 2) and notices[-1] == 0  # at once (under 3 s left), at 2 s, at the end
    assert connection.state is State.DISCONNECTED
    assert connection.error == SessionExpired.dbus_name
    assert "log in again" in connection.error_message
    assert world.tunnels[-1].stopped and ("release", "token-1") in world.v3.calls


async def test_renew_logs_in_again_and_reconnects_the_same_profile(world: World) -> None:
    server = await world.authorized_server()
    connection = await world.connected(server)
    with pytest.raises(InvalidArgument, match="less than 30 minutes"):
        await world.manager.renew(server, OWNER)
    assert connection.state is State.CONNECTED and server.authorized  # nothing changed
    connection.connected_since = time.time() - 3600
    url = await world.manager.renew(server, OWNER)
    assert url == f"{URL}authorize?caller={OWNER}"
    assert connection.state is State.DISCONNECTED
    assert not server.authorized  # the old credential is gone
    world.login.pending[-1].browser.set_result(None)
    await login_ended(server)
    again = world.manager.connection
    assert again is not None and again is not connection
    assert (again.profile_id, again.server) == ("employees", server)
    await world.manager.disconnect(again)


async def test_the_configuration_names_the_server_to_connect_at_start(tmp_path: Path) -> None:
    world = World(tmp_path)
    marked = await world.authorized_server("https://one.example.org/", SYSTEM_OWNER)
    named = await world.authorized_server("https://two.example.org/", SYSTEM_OWNER)
    world.manager.set_autoconnect(marked, "employees")
    world.settings = replace(
        world.settings, autoconnect_server="two.example.org", autoconnect_profile="staff"
    )
    restarted = world.new_manager()
    restarted.load()
    server = restarted.connect_at_start()
    assert server is not None and server.url == named.url
    connection = restarted.connection
    assert connection is not None and connection.profile_id == "staff" and connection.persistent
    await restarted.disconnect(connection)
    # Stored marks stay as they were: the file decides only while it says so.
    assert [s.record.autoconnect for s in restarted.servers_of(SYSTEM_OWNER)] == ["employees", ""]
    world.settings = replace(world.settings, autoconnect_server="nowhere.example.org")
    again = world.new_manager()
    again.load()
    assert again.connect_at_start() is None and again.connection is None


async def test_no_answer_over_udp_asks_for_tcp_and_says_so(tmp_path: Path) -> None:
    world = World(tmp_path, udp_grace=0.05)
    server = await world.authorized_server()
    connection = world.manager.connect(server, "employees", prefer_tcp=False)
    await settled_tunnel(world, connection)
    first = world.tunnels[-1]
    world.tunnels[-1].emit(Progress("WAIT"))
    await until(lambda: len(world.tunnels) == 2 and world.tunnels[-1].started)
    assert first.stopped
    assert connection.state is State.RECONNECTING and "UDP" in connection.detail
    obtains = [call for call, _token in world.v3.calls if call.startswith("obtain")]
    assert obtains == ["obtain employees tcp=False", "obtain employees tcp=True"]
    world.tunnels[-1].emit(Up("10.8.0.2", "", "198.51.100.1", "443"))
    assert connection.state is State.CONNECTED and connection.remote.endswith(":443")
    await world.manager.disconnect(connection)
    # Asked for TCP from the start, there is nothing to fall back to.
    again = world.manager.connect(server, "employees", prefer_tcp=True)
    await settled_tunnel(world, again)
    await asyncio.sleep(0.15)
    assert again.state is State.CONNECTING and len(world.tunnels) == 3
    await world.manager.disconnect(again)


async def test_a_network_change_makes_the_tunnel_again_without_a_pause(tmp_path: Path) -> None:
    # A pause after a failure would be a minute here: none is taken.
    world = World(tmp_path, backoff=Backoff(first=60.0, most=60.0))
    server = await world.authorized_server()
    world.manager.network_changed("the way to the server changed")  # nothing is up: ignored
    connection = await world.connected(server)
    assert len(world.tunnels) == 1
    world.manager.network_changed("the way to 198.51.100.1 changed")
    await until(lambda: len(world.tunnels) == 2 and world.tunnels[-1].started)
    assert world.tunnels[0].stopped
    assert connection.state is State.RECONNECTING
    assert connection.detail == "the way to 198.51.100.1 changed; connecting again"
    # Changed again while the new tunnel is on its way: that one starts over too.
    world.manager.network_changed("the way changed again")
    await until(lambda: len(world.tunnels) == 3 and world.tunnels[-1].started)
    assert world.tunnels[1].stopped
    world.tunnels[-1].emit(Up("10.8.0.3", "", "198.51.100.1"))
    assert connection.state is State.CONNECTED
    await world.manager.disconnect(connection)
    world.manager.network_changed("the way changed once more")
    assert len(world.tunnels) == 3


async def test_a_network_change_ends_the_pause_before_the_next_try(tmp_path: Path) -> None:
    world = World(tmp_path, backoff=Backoff(first=60.0, most=60.0))
    server = await world.authorized_server()
    connection = await world.connected(server)
    world.tunnels[-1].emit(TunnelExited(1, "the network is unreachable", requested=False))
    await until(lambda: connection.state is State.RECONNECTING)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(world.tunnels) == 1  # pausing for a minute
    world.manager.network_changed("the way to 198.51.100.1 changed")
    await until(lambda: len(world.tunnels) == 2 and world.tunnels[-1].started)
    world.tunnels[-1].emit(Up("10.8.0.3", "", "198.51.100.1"))
    assert connection.state is State.CONNECTED
    await world.manager.disconnect(connection)
