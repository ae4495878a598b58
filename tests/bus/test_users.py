"""Other local users attack: each tries everything on the other's servers and connections.

Real pieces: a private system bus with vpnd's policy, the real polkitd with
rules for the test users (started once for the module), the real daemon,
vpnctl and a raw D-Bus client run as those users (setpriv). The test users
are created for this module if the machine lacks them, and removed
afterwards only if created here. Logins run `vpnctl login --no-browser` as
the user; the test plays the browser with the address vpnctl prints.

Who is who (see RULES):
- vpndtest1: may connect, and is an administrator for system-wide servers;
- vpndtest2: polkit denies it org.vpnd.connect; no administrator;
- nobody: may connect (a third user, for the Busy message);
- root: needs no polkit.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.accounts import temporary_accounts
from tests.lab.browser import approve
from tests.lab.daemon import REPO, VpndProcess, ok, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.pki import LabPKI
from tests.lab.portal import Hostile, TestPortal
from tests.lab.require import require_root

pytestmark = pytest.mark.bus


@pytest.fixture(scope="module", autouse=True)
def _needs_root() -> None:
    require_root("making other users and a system-type bus")

DEST = "org.vpnd.Daemon"
ROOT = "/org/vpnd/Daemon"
MANAGER = "org.vpnd.Manager1"
SERVER = "org.vpnd.Server1"
CONNECTION = "org.vpnd.Connection1"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
NOT_AUTHORIZED = "org.vpnd.Error.NotAuthorized"
NOBODY = 65534
TEST_USERS = ("vpndtest1", "vpndtest2")

RULES = """
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.vpnd.") !== 0) {
        return polkit.Result.NOT_HANDLED;
    }
    if (subject.user === "vpndtest1" && (action.id === "org.vpnd.connect"
            || action.id === "org.vpnd.manage-system-servers")) {
        return polkit.Result.YES;
    }
    if (subject.user === "vpndtest2" && action.id === "org.vpnd.connect") {
        return polkit.Result.NO;
    }
    if (subject.user === "nobody" && action.id === "org.vpnd.connect") {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
"""

# A raw D-Bus client, run as a test user: makes the calls given as JSON
# ([path, interface, member, [[signature, value], ...]], a{sv} values as
# {key: [signature, value]}) on one connection and prints one result per call.
CALLER = r"""
import json, sys
from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call
from jeepney.io.blocking import open_dbus_connection

def value(sig, value):
    if sig == "a{sv}":
        return {k: tuple(v) for k, v in value.items()}
    return tuple(value) if sig == "v" else value

results = []
with open_dbus_connection(bus="SYSTEM") as conn:
    for path, interface, member, args in json.loads(sys.argv[1]):
        signature = "".join(sig for sig, _ in args)
        values = tuple(value(sig, v) for sig, v in args)
        address = DBusAddress(path, bus_name="org.vpnd.Daemon", interface=interface)
        reply = conn.send_and_get_reply(
            new_method_call(address, member, signature or None, values), timeout=30
        )
        if reply.header.message_type is MessageType.error:
            name = reply.header.fields[HeaderFields.error_name]
            text = reply.body[0] if reply.body else ""
            results.append({"error": name, "message": text})
        else:
            results.append({"ok": list(reply.body)})
print(json.dumps(results))
"""

# Listens, as a test user, to every signal vpnd sends it, from "ready" until
# stdin closes; then makes one more call (every signal sent before its reply
# has arrived by then) and prints what it got. It calls vpnd first: vpnd only
# sends signals to connections that called it.
LISTENER = r"""
import json, sys
from jeepney import DBusAddress, HeaderFields, MatchRule, message_bus, new_method_call
from jeepney.io.blocking import open_dbus_connection

manager = DBusAddress("/org/vpnd/Daemon", bus_name="org.vpnd.Daemon", interface="org.vpnd.Manager1")
version = new_method_call(
    DBusAddress("/org/vpnd/Daemon", bus_name="org.vpnd.Daemon",
                interface="org.freedesktop.DBus.Properties"),
    "Get", "ss", ("org.vpnd.Manager1", "Version"),
)
with open_dbus_connection(bus="SYSTEM") as conn:
    with conn.filter(MatchRule(type="signal"), bufsize=100000) as queue:
        conn.send_and_get_reply(new_method_call(manager, "ListServers"), timeout=30)
        rules = [MatchRule(type="signal", sender="org.vpnd.Daemon")]
        if sys.argv[1] == "eavesdrop":
            rules.append(MatchRule(type="signal", sender="org.vpnd.Daemon", eavesdrop=True))
        for rule in rules:
            conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=30)
        print("ready", flush=True)
        sys.stdin.read()
        conn.send_and_get_reply(version, timeout=30)
        got = []
        while queue:
            msg = queue.popleft()
            fields = msg.header.fields
            if fields.get(HeaderFields.sender) == "org.freedesktop.DBus":
                continue
            got.append([fields.get(HeaderFields.path), fields.get(HeaderFields.interface),
                        fields.get(HeaderFields.member), repr(msg.body)])
print(json.dumps(got))
"""


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[int, int]]:
    """The UIDs of vpndtest1 and vpndtest2, this module's own accounts, removed afterwards."""
    with temporary_accounts(TEST_USERS) as (first, second):
        yield first, second


@pytest.fixture(scope="module")
def private_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSystemBus]:
    """This module's own bus, with polkitd and the rules above (started once)."""
    with PrivateSystemBus(tmp_path_factory.mktemp("users-bus")) as bus:
        bus.start_polkitd(rules=RULES)
        yield bus


@pytest.fixture
def ca(lab_pki: LabPKI) -> Path:
    """The CA the browser (played by the test) trusts."""
    return lab_pki.ca_path


@pytest.fixture
def env(private_bus: PrivateSystemBus) -> dict[str, str]:
    """What any user's vpnctl needs: the bus and a plain locale (logins use --no-browser)."""
    return {
        "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address,
        "LANG": "C.UTF-8",
        "LANGUAGE": "",
        "LC_ALL": "",
        "LC_MESSAGES": "",
    }


@pytest.fixture
def vpnd(tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI) -> Iterator[VpndProcess]:
    """A fresh vpnd whose HTTP requests may wait long: a silent /connect then keeps a
    connection in `preparing` until the portal is reset."""
    daemon = VpndProcess(
        tmp_path / "vpnd",
        private_bus.env({}),
        ca_file=lab_pki.ca_path,
        settings={"http_timeout": 120},
    )
    daemon.start()
    yield daemon
    status = daemon.stop()
    assert status == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()


# -- helpers --------------------------------------------------------------------


def as_user(uid: int | None, command: list[str]) -> list[str]:
    """`command` run as `uid` (None: as root)."""
    if uid is None:
        return command
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]


def calls(
    uid: int | None, env: dict[str, str], *wanted: tuple[str, str, str, list[Any]]
) -> list[dict[str, Any]]:
    """Make raw D-Bus calls as `uid` (None: root) on one connection; one result each."""
    out = subprocess.run(
        as_user(uid, [sys.executable, "-c", CALLER, json.dumps(wanted)]),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def call(
    uid: int | None, env: dict[str, str], path: str, interface: str, member: str, *args: Any
) -> dict[str, Any]:
    """One raw call; args as (signature, value) pairs."""
    return calls(uid, env, (path, interface, member, [list(a) for a in args]))[0]


def value(result: dict[str, Any]) -> Any:
    assert "ok" in result, result
    body = result["ok"]
    return body[0] if body else None


class Listener:
    """Signals vpnd sends to one user's bus connection while the block runs."""

    def __init__(self, uid: int | None, env: dict[str, str], *, eavesdrop: bool = False) -> None:
        mode = "eavesdrop" if eavesdrop else "plain"
        self._proc = subprocess.Popen(
            as_user(uid, [sys.executable, "-c", LISTENER, mode]),
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != "ready":
            self._proc.kill()
            _out, err = self._proc.communicate()
            raise AssertionError(f"the listener did not start: {err}")
        self.signals: list[list[Any]] = []

    def stop(self) -> list[list[Any]]:
        out, err = self._proc.communicate(timeout=60)
        assert self._proc.returncode == 0, err
        self.signals = json.loads(out)
        return self.signals


def refused(result: subprocess.CompletedProcess[str], exit_code: int = 5) -> str:
    """The one line vpnctl prints when vpnd said NotAuthorized."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def user_files(vpnd: VpndProcess, uid: int) -> dict[str, bytes]:
    return files(vpnd.state_dir / "users" / str(uid))


def vpnctl_list(env: dict[str, str], uid: int | None, *options: str) -> list[dict[str, Any]]:
    """`vpnctl list --json` as `uid`: the servers."""
    data = json.loads(ok(vpnctl([*options, "list", "--json"], env, user=uid)))
    servers: list[dict[str, Any]] = data["servers"] if isinstance(data, dict) else data
    return servers


def find(uid: int | None, env: dict[str, str], query: str, *, system: bool = False) -> str:
    member = "FindSystemServer" if system else "FindServer"
    return str(value(call(uid, env, ROOT, MANAGER, member, ("s", query))))


def listed(uid: int | None, env: dict[str, str], *, system: bool = False) -> dict[str, Any]:
    member = "ListSystemServers" if system else "ListServers"
    servers: dict[str, Any] = value(call(uid, env, ROOT, MANAGER, member))
    return servers


def written_api() -> dict[str, ET.Element]:
    tree = ET.parse(REPO / "data" / "dbus" / "org.vpnd.Daemon.xml")
    return {iface.get("name", ""): iface for iface in tree.getroot().iter("interface")}


def dummy_args(method: ET.Element, path: str) -> list[list[Any]]:
    """Plausible arguments for every in-argument of a method from the written API."""
    samples = {"s": "guests", "o": path, "a{sv}": {}, "a{ss}": {"username": "x"}, "u": 0, "b": False}
    return [
        [arg.get("type"), samples[arg.get("type", "")]]
        for arg in method.iter("arg")
        if arg.get("direction", "in") == "in"
    ]


def every_call_on(path: str, interface: str) -> list[tuple[str, str, str, list[Any]]]:
    """Every method and property of `interface` (from the written API) on `path`,
    plus Properties.GetAll/Set, Introspect and a method that does not exist."""
    element = written_api()[interface]
    wanted: list[tuple[str, str, str, list[Any]]] = [
        (path, interface, m.get("name", ""), dummy_args(m, path)) for m in element.iter("method")
    ]
    for prop in element.iter("property"):
        wanted.append((path, PROPERTIES, "Get", [["s", interface], ["s", prop.get("name")]]))
    wanted += [
        (path, PROPERTIES, "GetAll", [["s", interface]]),
        (path, PROPERTIES, "GetAll", [["s", ""]]),
        (path, PROPERTIES, "Set", [["s", interface], ["s", "Owner"], ["v", ["u", 0]]]),
        (path, INTROSPECTABLE, "Introspect", []),
        (path, interface, "NoSuchMethod", []),
    ]
    return wanted


def login(
    uid: int | None, env: dict[str, str], ca_file: Path, server: str, *, system: bool = False
) -> None:
    """`vpnctl login --no-browser` as `uid`, the browser played here with the address it prints.

    The browser is not started by vpnctl as the user: it would have to run
    this test's Python, which another user may not be able to execute.
    """
    options = ["--system"] if system else []
    command = [
        *[sys.executable, "-m", "vpnctl", *options],
        *["login", "--no-browser", "--timeout", "20", server],
    ]
    process = subprocess.Popen(
        as_user(uid, command),
        env={**os.environ, **env, "PYTHONPATH": str(REPO / "client")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    printed = b""
    deadline = time.monotonic() + 30
    try:
        while (url := _login_address(printed)) is None:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
            chunk = os.read(process.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise AssertionError(f"vpnctl printed no address: {printed!r}")
            printed += chunk
        approve(url, ca_file=str(ca_file))
        out, err = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, (out, err)
    assert b"Logged in" in out


def _login_address(printed: bytes) -> str | None:
    for line in printed.decode(errors="replace").splitlines(keepends=True):
        if line.startswith("https://") and line.endswith("\n"):
            return line.strip()
    return None


def connect_and_hold(
    uid: int, env: dict[str, str], portal: TestPortal, server_path: str, profile: str
) -> str:
    """Start a connection as `uid` that stays `preparing` (the portal's /connect never answers)."""
    portal.hostile["/api/v3/connect"] = Hostile("silent")
    path = str(value(call(uid, env, server_path, SERVER, "Connect", ("s", profile), ("a{sv}", {}))))
    state = value(call(uid, env, path, PROPERTIES, "Get", ("s", CONNECTION), ("s", "State")))
    assert state == ["s", "preparing"]
    return path


def child_nodes(xml: str) -> list[str]:
    return [node.get("name", "") for node in ET.fromstring(xml).findall("node")]


# -- another user's server and connection ------------------------------------


def test_another_user_can_neither_see_nor_use_a_server_or_connection(
    vpnd: VpndProcess, portal: TestPortal, env: dict[str, str], ca: Path, users: tuple[int, int]
) -> None:
    user1, user2 = users
    ok(vpnctl(["add", portal.base_url], env, user=user1))
    login(user1, env, ca, portal.host)
    server = find(user1, env, portal.host)
    connection = connect_and_hold(user1, env, portal, server, "guests")
    before = user_files(vpnd, user1)

    attacks = [
        *every_call_on(server, SERVER),
        *every_call_on(connection, CONNECTION),
        (ROOT, MANAGER, "RemoveServer", [["o", server]]),
        (ROOT, MANAGER, "Disconnect", []),
    ]
    results = calls(user2, env, *attacks)
    for attack, result in zip(attacks, results, strict=True):
        assert result.get("error") == NOT_AUTHORIZED, (attack, result)
        assert portal.base_url not in result["message"] and "guests" not in result["message"]

    # Nor can user 2 find it, list it, or see it in the object tree.
    assert listed(user2, env) == {}
    for query in (portal.host, portal.base_url, server.rsplit("/", 1)[1]):
        result = call(user2, env, ROOT, MANAGER, "FindServer", ("s", query))
        assert result.get("error") == "org.vpnd.Error.NotFound", result
    trees = calls(
        user2,
        env,
        *[(p, INTROSPECTABLE, "Introspect", []) for p in ("/", ROOT, ROOT + "/servers")],
        (ROOT + "/connections", INTROSPECTABLE, "Introspect", []),
        (ROOT, PROPERTIES, "Get", [["s", MANAGER], ["s", "ActiveConnection"]]),
    )
    assert child_nodes(value(trees[0])) == ["org"]
    assert child_nodes(value(trees[1])) == []
    assert child_nodes(value(trees[2])) == []
    assert child_nodes(value(trees[3])) == []
    assert value(trees[4]) == ["o", "/"]
    # The owner sees all of it.
    assert child_nodes(value(call(user1, env, ROOT, INTROSPECTABLE, "Introspect"))) == [
        "connections",
        "servers",
    ]
    active = call(user1, env, ROOT, PROPERTIES, "Get", ("s", MANAGER), ("s", "ActiveConnection"))
    assert value(active) == ["o", connection]

    # Adding the same URL gives user 2 a copy of their own.
    ok(vpnctl(["add", portal.base_url], env, user=user2))
    [(own, properties)] = listed(user2, env).items()
    assert own != server
    assert properties["Owner"] == ["u", user2]
    assert properties["Authorized"] == ["b", False]

    # User 1 lost nothing: same files, same connection, still logged in.
    assert user_files(vpnd, user1) == before
    state = call(user1, env, connection, PROPERTIES, "Get", ("s", CONNECTION), ("s", "State"))
    assert value(state) == ["s", "preparing"]
    assert list(listed(user1, env)) == [server]
    assert listed(user1, env)[server]["Authorized"] == ["b", True]
    ok(vpnctl(["disconnect"], env, user=user1))


def test_vpnctl_as_another_user_sees_nothing_of_it(
    vpnd: VpndProcess, portal: TestPortal, env: dict[str, str], ca: Path, users: tuple[int, int]
) -> None:
    user1, user2 = users
    ok(vpnctl(["add", portal.base_url], env, user=user1))
    login(user1, env, ca, portal.host)
    connect_and_hold(user1, env, portal, find(user1, env, portal.host), "guests")
    before = files(vpnd.state_dir)

    assert vpnctl_list(env, user2) == []
    for command in (["login"], ["profiles"], ["connect"], ["remove"]):
        result = vpnctl([*command, portal.host], env, user=user2)
        assert result.returncode != 0
        assert "no server of yours matches" in result.stderr, result.stderr
    status = json.loads(ok(vpnctl(["status", "--json"], env, user=user2)))
    assert portal.base_url not in json.dumps(status) and "guests" not in json.dumps(status)
    assert "Not connected" in ok(vpnctl(["disconnect"], env, user=user2))
    assert files(vpnd.state_dir) == before

    status = json.loads(ok(vpnctl(["status", "--json"], env, user=user1)))
    assert "preparing" in json.dumps(status)
    ok(vpnctl(["disconnect"], env, user=user1))


def test_busy_does_not_say_whose_connection_or_where(
    vpnd: VpndProcess, portal: TestPortal, env: dict[str, str], ca: Path, users: tuple[int, int]
) -> None:
    user1, _user2 = users
    elsewhere = f"https://localhost:{portal.port}/"
    ok(vpnctl(["add", elsewhere], env, user=user1))
    login(user1, env, ca, "localhost")
    connect_and_hold(user1, env, portal, find(user1, env, "localhost"), "employees")
    ok(vpnctl(["add", portal.base_url], env, user=NOBODY))
    theirs = find(NOBODY, env, portal.host)

    result = call(NOBODY, env, theirs, SERVER, "Connect", ("s", "guests"), ("a{sv}", {}))
    assert result.get("error") == "org.vpnd.Error.Busy", result
    assert "another user" in result["message"]
    assert "localhost" not in result["message"] and "employees" not in result["message"]
    ok(vpnctl(["disconnect"], env, user=user1))


# -- signals ------------------------------------------------------------------


def test_signals_reach_the_owner_and_root_and_nobody_else(
    vpnd: VpndProcess, portal: TestPortal, env: dict[str, str], ca: Path, users: tuple[int, int]
) -> None:
    user1, user2 = users
    owner = Listener(user1, env)
    other = Listener(user2, env, eavesdrop=True)
    root = Listener(None, env)

    # vpnctl waits for AuthorizationFinished and for the connection's states:
    # that works as another user only because those signals reach the owner.
    ok(vpnctl(["add", portal.base_url], env, user=user1))
    login(user1, env, ca, portal.host)
    ok(vpnctl(["profiles", portal.host], env, user=user1))
    connect_and_hold(user1, env, portal, find(user1, env, portal.host), "guests")
    ok(vpnctl(["disconnect"], env, user=user1))
    ok(vpnctl(["remove", portal.host], env, user=user1))

    got = {"owner": owner.stop(), "other": other.stop(), "root": root.stop()}
    assert got["other"] == []
    for who in ("owner", "root"):
        members = {signal[2] for signal in got[who]}
        assert {
            "ServerAdded",
            "ServerRemoved",
            "AuthorizationFinished",
            "PropertiesChanged",
            "StateChanged",
        } <= members, (who, got[who])
    # Nothing in any of them is a secret the portal handed out.
    secrets = set(portal._access_tokens) | set(portal._refresh_tokens)
    assert secrets
    text = json.dumps(got)
    assert not any(secret in text for secret in secrets)


# -- polkit -------------------------------------------------------------------


def test_polkit_decides_connect_for_each_user(
    vpnd: VpndProcess, portal: TestPortal, env: dict[str, str], ca: Path, users: tuple[int, int]
) -> None:
    user1, user2 = users
    for uid in users:
        ok(vpnctl(["add", portal.base_url], env, user=uid))
        login(uid, env, ca, portal.host)
    before = files(vpnd.state_dir)

    line = refused(
        vpnctl(["connect", portal.host, "--profile", "guests", "--no-wait"], env, user=user2)
    )
    assert "polkit does not allow you" in line and "org.vpnd.connect" in line
    denied = call(
        user2, env, find(user2, env, portal.host), SERVER, "Connect", ("s", "guests"), ("a{sv}", {})
    )
    assert denied.get("error") == NOT_AUTHORIZED
    assert call(user2, env, ROOT, PROPERTIES, "Get", ("s", MANAGER), ("s", "ActiveConnection"))[
        "ok"
    ] == [["o", "/"]]
    assert files(vpnd.state_dir) == before

    # The same call from user 1, whom the rules allow, gets through.
    connect_and_hold(user1, env, portal, find(user1, env, portal.host), "guests")
    ok(vpnctl(["disconnect"], env, user=user1))


def test_without_polkit_users_are_refused_and_root_is_not(
    vpnd: VpndProcess,
    portal: TestPortal,
    env: dict[str, str],
    ca: Path,
    users: tuple[int, int],
    private_bus: PrivateSystemBus,
) -> None:
    user1, _user2 = users
    ok(vpnctl(["add", portal.base_url], env, user=user1))
    login(user1, env, ca, portal.host)
    private_bus.stop_polkitd()
    try:
        before = files(vpnd.state_dir)
        for command in (
            ["add", f"https://localhost:{portal.port}/"],
            ["login", portal.host],
            ["connect", portal.host, "--profile", "guests"],
            ["remove", portal.host],
        ):
            line = refused(vpnctl(command, env, user=user1))
            assert "cannot ask polkit" in line, line
        assert files(vpnd.state_dir) == before
        # Reading one's own needs no polkit.
        ok(vpnctl(["profiles", portal.host], env, user=user1))
        # Root needs none at all.
        ok(vpnctl(["add", portal.base_url], env))
        login(None, env, ca, portal.host)
        ok(vpnctl(["remove", portal.host], env))
    finally:
        private_bus.start_polkitd(rules=RULES)


def test_administrators_manage_system_servers_and_others_do_not(
    vpnd: VpndProcess, portal: TestPortal, env: dict[str, str], ca: Path, users: tuple[int, int]
) -> None:
    admin, user2 = users
    # Root's servers are the system-wide ones.
    ok(vpnctl(["add", portal.base_url], env))
    system = find(None, env, portal.host)
    assert list(listed(None, env, system=True)) == [system]

    # An administrator lists, logs in to and reads them.
    [entry] = vpnctl_list(env, admin, "--system")
    assert entry["url"] == portal.base_url
    assert vpnctl_list(env, admin) == []
    login(admin, env, ca, portal.host, system=True)
    assert "guests" in ok(vpnctl(["profiles", "--system", portal.host], env, user=admin))
    owner = call(admin, env, system, PROPERTIES, "Get", ("s", SERVER), ("s", "Owner"))
    assert value(owner) == ["u", 0]
    connection = connect_and_hold(admin, env, portal, system, "guests")
    assert call(admin, env, ROOT, PROPERTIES, "Get", ("s", MANAGER), ("s", "ActiveConnection"))[
        "ok"
    ] == [["o", connection]]
    portal.reset()

    # Anyone else: nothing, whatever they try.
    before = files(vpnd.state_dir)
    line = refused(vpnctl(["--system", "list"], env, user=user2))
    assert "administrator" in line and "org.vpnd.manage-system-servers" in line
    attacks = [
        *every_call_on(system, SERVER),
        (ROOT, MANAGER, "RemoveServer", [["o", system]]),
        (ROOT, MANAGER, "AddSystemServer", [["s", f"https://localhost:{portal.port}/"]]),
        (ROOT, MANAGER, "ListSystemServers", []),
        (ROOT, MANAGER, "FindSystemServer", [["s", portal.host]]),
    ]
    for attack, result in zip(attacks, calls(user2, env, *attacks), strict=True):
        assert result.get("error") == NOT_AUTHORIZED, (attack, result)
    assert listed(user2, env) == {}
    assert files(vpnd.state_dir) == before

    # The administrator adds and removes system-wide servers; root owns them.
    ok(vpnctl(["add", "--system", f"https://localhost:{portal.port}/"], env, user=admin))
    assert len(listed(None, env)) == 2
    ok(vpnctl(["--system", "remove", "localhost"], env, user=admin))
    ok(vpnctl(["--system", "remove", portal.host], env, user=admin))
    assert listed(None, env) == {}
    assert listed(None, env, system=True) == {}


# -- arguments ------------------------------------------------------------------


@pytest.mark.parametrize("uid", ["user", "root"])
def test_bad_arguments_are_named_and_change_nothing(
    vpnd: VpndProcess,
    portal: TestPortal,
    env: dict[str, str],
    ca: Path,
    users: tuple[int, int],
    uid: str,
) -> None:
    caller = users[0] if uid == "user" else None
    ok(vpnctl(["add", portal.base_url], env, user=caller))
    login(caller, env, ca, portal.host)
    server = find(caller, env, portal.host)
    before = files(vpnd.state_dir)
    invalid = [
        (ROOT, MANAGER, "AddServer", [["s", "http://vpn.example.org/"]]),
        (ROOT, MANAGER, "AddServer", [["s", "ftp://vpn.example.org/"]]),
        (ROOT, MANAGER, "AddServer", [["s", "https://" + "a" * 5000 + ".org/"]]),
        (ROOT, MANAGER, "AddServer", [["s", "https://vpn.example.org/\x01"]]),
        (ROOT, MANAGER, "AddServer", [["s", ""]]),
        (ROOT, MANAGER, "RemoveServer", [["o", ROOT]]),
        (ROOT, MANAGER, "RemoveServer", [["o", ROOT + "/servers/ffff"]]),
        (ROOT, MANAGER, "RemoveServer", [["o", ROOT + "/connections/1"]]),
        (ROOT, MANAGER, "FindServer", [["s", ""]]),
        (ROOT, MANAGER, "FindServer", [["s", "x" * 5000]]),
        (ROOT, MANAGER, "FindServer", [["s", "vpn\nexample"]]),
        (server, SERVER, "GetProfiles", [["s", "../../etc/passwd"]]),
        (server, SERVER, "GetProfiles", [["s", "nl_NL" * 100]]),
        (server, SERVER, "Connect", [["s", "../guests"], ["a{sv}", {}]]),
        (server, SERVER, "Connect", [["s", "g" * 65], ["a{sv}", {}]]),
        (server, SERVER, "Connect", [["s", ""], ["a{sv}", {}]]),
        (server, SERVER, "Connect", [["s", "guests"], ["a{sv}", {"prefer_tcp": ["s", "yes"]}]]),
        (server, SERVER, "Connect", [["s", "guests"], ["a{sv}", {"script": ["s", "/bin/sh"]}]]),
        (
            server,
            SERVER,
            "Connect",
            [["s", "guests"], ["a{sv}", {f"o{i}": ["b", True] for i in range(100)}]],
        ),
    ]
    for attack, result in zip(invalid, calls(caller, env, *invalid), strict=True):
        assert result.get("error") == "org.vpnd.Error.InvalidArgument", (attack, result)
        assert result["message"] and "Traceback" not in result["message"]
    wrong_types = [
        (ROOT, MANAGER, "AddServer", [["u", 1]]),
        (ROOT, MANAGER, "RemoveServer", [["s", server]]),
        (server, SERVER, "Connect", [["s", "guests"]]),
        (server, PROPERTIES, "Get", [["s", SERVER]]),
    ]
    for attack, result in zip(wrong_types, calls(caller, env, *wrong_types), strict=True):
        assert result.get("error") == "org.freedesktop.DBus.Error.InvalidArgs", (attack, result)
    missing = call(caller, env, ROOT, MANAGER, "RemoveServer", ("o", ROOT + "/servers/" + "0" * 16))
    assert missing.get("error") == "org.vpnd.Error.NotFound"
    assert files(vpnd.state_dir) == before
    assert call(caller, env, ROOT, PROPERTIES, "Get", ("s", MANAGER), ("s", "ActiveConnection"))[
        "ok"
    ] == [["o", "/"]]
