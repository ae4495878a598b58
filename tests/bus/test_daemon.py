"""vpnd on a private system bus with our policy, driven by vpnctl and by busctl/gdbus.

Real pieces only: dbus-daemon, the daemon process, the test portal over TLS
on loopback, the scripted browser. No tunnel here (tests/e2e brings one up).
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from jeepney import DBusAddress, MatchRule, message_bus, new_method_call

from tests.lab.browser import approve
from tests.lab.daemon import REPO, VpndProcess, failed, ok, state_files, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.pki import LabPKI
from tests.lab.portal import Hostile, TestPortal

pytestmark = pytest.mark.bus

DEST = "org.vpnd.Daemon"
ROOT = "/org/vpnd/Daemon"


def busctl(bus: PrivateSystemBus, *args: str) -> Any:
    """busctl --json output of a call on the private bus."""
    out = subprocess.run(
        ["busctl", f"--address={bus.address}", "--json=short", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"busctl {args} failed: {out.stderr}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def busctl_error(bus: PrivateSystemBus, *args: str) -> str:
    out = subprocess.run(
        ["busctl", f"--address={bus.address}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0, out.stdout
    return out.stderr


def gdbus(bus: PrivateSystemBus, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gdbus", *args],
        env=bus.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def servers(env: dict[str, str]) -> list[dict[str, Any]]:
    data = json.loads(ok(vpnctl(["list", "--json"], env)))
    return data["servers"] if isinstance(data, dict) else data


def add_and_login(portal: TestPortal, env: dict[str, str]) -> None:
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))


# -- the API as written down ------------------------------------------------


def _interfaces(xml: str) -> dict[str, dict[str, set[tuple[str, str]]]]:
    result: dict[str, dict[str, set[tuple[str, str]]]] = {}
    for iface in ET.fromstring(xml).iter("interface"):
        name = iface.get("name", "")
        if name.startswith("org.freedesktop.DBus."):
            continue
        members: dict[str, set[tuple[str, str]]] = {
            "method": set(),
            "property": set(),
            "signal": set(),
        }
        for method in iface.iter("method"):
            sig = "".join(
                a.get("type", "") + a.get("direction", "in")[0] for a in method.iter("arg")
            )
            members["method"].add((method.get("name", ""), sig))
        for prop in iface.iter("property"):
            members["property"].add(
                (prop.get("name", ""), prop.get("type", "") + prop.get("access", ""))
            )
        for signal in iface.iter("signal"):
            members["signal"].add(
                (signal.get("name", ""), "".join(a.get("type", "") for a in signal.iter("arg")))
            )
        result[name] = members
    return result


def introspect(bus: PrivateSystemBus, path: str) -> str:
    out = gdbus(bus, "introspect", "--system", "--dest", DEST, "--object-path", path, "--xml")
    return ok(out)


def test_the_running_daemon_matches_the_written_api(
    vpnd: VpndProcess, private_bus: PrivateSystemBus, portal: TestPortal, client_env: dict[str, str]
) -> None:
    written = _interfaces((REPO / "data" / "dbus" / "org.vpnd.Daemon.xml").read_text())
    ok(vpnctl(["add", portal.base_url], client_env))
    server_path = busctl(
        private_bus, "call", DEST, ROOT, "org.vpnd.Manager1", "FindServer", "s", portal.host
    )["data"][0]
    running = _interfaces(introspect(private_bus, ROOT))
    running |= _interfaces(introspect(private_bus, server_path))
    assert set(written) == {"org.vpnd.Manager1", "org.vpnd.Server1", "org.vpnd.Connection1"}
    assert running["org.vpnd.Manager1"] == written["org.vpnd.Manager1"]
    assert running["org.vpnd.Server1"] == written["org.vpnd.Server1"]
    # A connection object exists once Connect was called (against a server with no tunnel
    # behind it here, it fails, which is fine: the object stays for its error).
    ok(vpnctl(["login", portal.host], client_env))
    connection = busctl(
        private_bus,
        "call",
        DEST,
        server_path,
        "org.vpnd.Server1",
        "Connect",
        "sa{sv}",
        "guests",
        "0",
    )["data"][0]
    running = _interfaces(introspect(private_bus, connection))
    assert running["org.vpnd.Connection1"] == written["org.vpnd.Connection1"]


def test_ready_is_sent_once_the_name_is_owned(
    vpnd: VpndProcess, private_bus: PrivateSystemBus
) -> None:
    assert private_bus.name_has_owner(DEST)
    version = busctl(private_bus, "get-property", DEST, ROOT, "org.vpnd.Manager1", "Version")
    assert version["data"] == "0.1.0"
    assert (
        busctl(private_bus, "get-property", DEST, ROOT, "org.vpnd.Manager1", "ActiveConnection")[
            "data"
        ]
        == "/"
    )


# -- servers and authorization ----------------------------------------------


def test_add_list_login_profiles_remove(
    vpnd: VpndProcess, private_bus: PrivateSystemBus, portal: TestPortal, client_env: dict[str, str]
) -> None:
    assert servers(client_env) == []
    ok(vpnctl(["add", portal.base_url], client_env))
    [entry] = servers(client_env)
    assert entry["url"] == portal.base_url
    assert entry["authorized"] is False
    assert entry["kind"] == "eduvpn-v3"

    out = ok(vpnctl(["login", portal.host], client_env))
    assert "oauth/authorize" in out  # the URL is printed too
    [entry] = servers(client_env)
    assert entry["authorized"] is True
    assert portal.token_grants[-1] == "authorization_code"

    profiles = json.loads(ok(vpnctl(["profiles", portal.host, "--json"], client_env)))
    profiles = profiles["profiles"] if isinstance(profiles, dict) else profiles
    assert {(p["profile_id"], p["display_name"]) for p in profiles} == {
        ("employees", "Employees"),
        ("guests", "Guests"),
    }
    dutch = ok(vpnctl(["profiles", portal.host], {**client_env, "LANG": "nl_NL.UTF-8"}))
    assert "Medewerkers" in dutch
    # API v3 has no messages.
    assert ok(vpnctl(["messages", portal.host], client_env)) == "No messages.\n"

    # A client nobody here wrote sees the same thing.
    listed = busctl(private_bus, "call", DEST, ROOT, "org.vpnd.Manager1", "ListServers")
    [(path, props)] = listed["data"][0].items()
    assert props["Url"]["data"] == portal.base_url
    assert props["Authorized"]["data"] is True
    assert (
        busctl(private_bus, "get-property", DEST, path, "org.vpnd.Server1", "Host")["data"]
        == "127.0.0.1"
    )

    secrets = list((vpnd.state_dir / "users" / "0" / "secrets").iterdir())
    assert len(secrets) == 1
    ok(vpnctl(["remove", portal.host], client_env))
    assert servers(client_env) == []
    assert not secrets[0].exists()
    assert "no server of yours matches" in failed(vpnctl(["profiles", portal.host], client_env))


def test_servers_and_authorizations_survive_a_restart(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    before = servers(client_env)
    assert vpnd.stop() == 0
    vpnd.start()
    assert servers(client_env) == before
    ok(vpnctl(["profiles", portal.host], client_env))


def test_an_http_url_is_refused_and_nothing_changes(
    vpnd: VpndProcess, private_bus: PrivateSystemBus, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    before = state_files(vpnd)
    line = failed(vpnctl(["add", "http://vpn.example.org/"], client_env))
    assert "https" in line
    error = busctl_error(
        private_bus,
        "call",
        DEST,
        ROOT,
        "org.vpnd.Manager1",
        "AddServer",
        "s",
        "http://vpn.example.org/",
    )
    assert "https" in error
    assert state_files(vpnd) == before


def test_discovery_follows_redirects_to_https_only(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    moved = f"https://localhost:{portal.port}/moved/"
    ok(vpnctl(["add", moved], client_env))
    ok(vpnctl(["login", "moved"], client_env))
    before = state_files(vpnd)
    line = failed(vpnctl(["add", f"https://localhost:{portal.port}/insecure/"], client_env))
    assert "only https" in line
    assert state_files(vpnd) == before


def test_a_ca_given_by_ssl_cert_file_is_trusted(
    tmp_path: Path,
    private_bus: PrivateSystemBus,
    portal: TestPortal,
    client_env: dict[str, str],
    lab_pki: Any,
) -> None:
    env = {**private_bus.env({}), "SSL_CERT_FILE": str(lab_pki.ca_path)}
    with VpndProcess(tmp_path / "vpnd", env) as daemon:
        ok(vpnctl(["add", portal.base_url], client_env))
        assert "Traceback" not in daemon.log()


def test_an_untrusted_certificate_is_named(
    tmp_path: Path, private_bus: PrivateSystemBus, portal: TestPortal, client_env: dict[str, str]
) -> None:
    with VpndProcess(tmp_path / "vpnd", private_bus.env({})):
        line = failed(vpnctl(["add", portal.base_url], client_env))
        assert "certificate" in line and "not trusted" in line


def test_errors_are_named_on_the_bus(vpnd: VpndProcess, private_bus: PrivateSystemBus) -> None:
    out = gdbus(
        private_bus,
        "call",
        "--system",
        "--dest",
        DEST,
        "--object-path",
        ROOT,
        "--method",
        "org.vpnd.Manager1.AddServer",
        "ftp://vpn.example.org/",
    )
    assert out.returncode != 0
    assert "org.vpnd.Error.InvalidArgument" in out.stderr
    out = gdbus(
        private_bus,
        "call",
        "--system",
        "--dest",
        DEST,
        "--object-path",
        ROOT,
        "--method",
        "org.vpnd.Manager1.FindServer",
        "nothing",
    )
    assert "org.vpnd.Error.NotFound" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_unreachable_server_is_named(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    before = state_files(vpnd)
    # A port bound but not listening refuses connections for as long as the
    # test holds it; a fixed port (such as 9) may be taken on some machine.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        line = failed(vpnctl(["add", f"https://127.0.0.1:{port}/"], client_env))
    assert "cannot connect to 127.0.0.1" in line
    assert state_files(vpnd) == before


@pytest.mark.parametrize(
    ("fault", "command", "expected"),
    [
        ("well_known_invalid_json", "add", "invalid JSON"),
        ("well_known_missing_keys", "add", ""),
        ("well_known_invalid_json", "profiles", "invalid JSON"),
        ("info_invalid_json", "profiles", "invalid JSON"),
        ("info_missing_keys", "profiles", ""),
        ("token_500", "login", ""),
    ],
)
def test_invalid_server_documents_are_named_and_change_nothing(
    vpnd: VpndProcess,
    portal: TestPortal,
    client_env: dict[str, str],
    fault: str,
    command: str,
    expected: str,
) -> None:
    if command != "login":
        add_and_login(portal, client_env)
    else:
        ok(vpnctl(["add", portal.base_url], client_env))
    before = state_files(vpnd)
    portal.fault = fault
    target = f"https://localhost:{portal.port}/" if command == "add" else portal.host
    line = failed(vpnctl([command, target], client_env))
    assert expected in line
    assert "Traceback" not in vpnd.log()
    assert state_files(vpnd) == before


def test_a_wrong_state_on_the_callback_fails_and_keeps_the_tokens(
    vpnd: VpndProcess, private_bus: PrivateSystemBus, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    before = state_files(vpnd)
    path = busctl(
        private_bus, "call", DEST, ROOT, "org.vpnd.Manager1", "FindServer", "s", portal.host
    )["data"][0]
    url = busctl(private_bus, "call", DEST, path, "org.vpnd.Server1", "Authorize")["data"][0]
    redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
    rule = MatchRule(
        type="signal", interface="org.vpnd.Server1", member="AuthorizationFinished", path=path
    )
    with private_bus.connect() as conn:
        # vpnd sends its signals only to connections that have called it.
        manager = DBusAddress(ROOT, bus_name=DEST, interface="org.vpnd.Manager1")
        conn.send_and_get_reply(new_method_call(manager, "ListServers"), timeout=10)
        conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=10)
        with conn.filter(rule) as queue:
            # A forged callback, as a hostile page could trigger in the user's browser.
            with pytest.raises(urllib.error.HTTPError) as page:
                urllib.request.urlopen(
                    f"{redirect_uri}?code=forged&state=not-the-state", timeout=10
                )
            assert page.value.code == 400
            signal = conn.recv_until_filtered(queue, timeout=30)
    success, error, message = signal.body
    assert success is False
    assert error == "org.vpnd.Error.AuthorizationFailed"
    assert "state" in message
    assert state_files(vpnd) == before
    assert servers(client_env)[0]["authorized"] is True


def test_denied_login_is_reported(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str], tmp_path: Path, lab_pki: Any
) -> None:
    from tests.lab.browser import write_browser_script

    ok(vpnctl(["add", portal.base_url], client_env))
    (tmp_path / "deny").mkdir()
    deny = write_browser_script(tmp_path / "deny", ca_file=str(lab_pki.ca_path), deny=True)
    line = failed(vpnctl(["login", portal.host], {**client_env, "BROWSER": str(deny)}))
    assert "denied" in line or "access_denied" in line
    assert servers(client_env)[0]["authorized"] is False


def test_a_revoked_authorization_asks_for_login_and_keeps_the_server(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    portal.revoke_all()
    result = vpnctl(["profiles", portal.host], client_env)
    line = failed(result)
    assert "vpnctl login" in line
    [entry] = servers(client_env)
    assert entry["url"] == portal.base_url
    assert entry["authorized"] is False
    assert entry["kind"] == "eduvpn-v3"
    # Logging in again repairs it.
    ok(vpnctl(["login", portal.host], client_env))
    ok(vpnctl(["profiles", portal.host], client_env))


def test_an_expired_access_token_is_refreshed_once(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    portal.expire_access_tokens()
    ok(vpnctl(["profiles", portal.host], client_env))
    assert portal.token_grants[-1] == "refresh_token"
    grants = len(portal.token_grants)
    ok(vpnctl(["profiles", portal.host], client_env))
    assert len(portal.token_grants) == grants  # the fresh token is kept and used


def test_server_names_resolve_by_any_unambiguous_part(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    ok(vpnctl(["add", portal.base_url], client_env))
    second = f"https://localhost:{portal.port}/"
    ok(vpnctl(["add", second], client_env))
    assert "already added" in failed(vpnctl(["add", second], client_env))
    ok(vpnctl(["login", "localhost"], client_env))
    by_host = {s["host"]: s["authorized"] for s in servers(client_env)}
    assert by_host == {"127.0.0.1": False, "localhost": True}
    assert "several servers" in failed(vpnctl(["login", str(portal.port)], client_env))


def test_the_daemon_stops_cleanly_on_sigterm(
    vpnd: VpndProcess, private_bus: PrivateSystemBus
) -> None:
    assert vpnd.stop() == 0
    assert not private_bus.name_has_owner(DEST)
    assert list(vpnd.runtime_dir.iterdir()) == []
    assert "STOPPING=1" in vpnd.notifications
    vpnd.start()  # for the fixture's own check of a clean stop


def test_an_unsafe_store_key_stops_the_daemon_with_a_clear_message(
    tmp_path: Path, private_bus: PrivateSystemBus
) -> None:
    daemon = VpndProcess(tmp_path / "vpnd", private_bus.env({}))
    daemon.state_dir.mkdir(parents=True)
    key = daemon.state_dir / "store.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)  # readable by every local user
    with pytest.raises(RuntimeError, match="exited early"):
        daemon.start()
    log = daemon.log()
    assert "store.key" in log
    assert "Traceback" not in log
    assert key.read_bytes() == b"k" * 32  # refused, not replaced


def test_another_user_cannot_end_someones_login_with_a_forged_callback(
    vpnd: VpndProcess,
    private_bus: PrivateSystemBus,
    portal: TestPortal,
    client_env: dict[str, str],
    lab_pki: Any,
) -> None:
    ok(vpnctl(["add", portal.base_url], client_env))
    path = busctl(
        private_bus, "call", DEST, ROOT, "org.vpnd.Manager1", "FindServer", "s", portal.host
    )["data"][0]
    url = busctl(private_bus, "call", DEST, path, "org.vpnd.Server1", "Authorize")["data"][0]
    port = urlsplit(parse_qs(urlsplit(url).query)["redirect_uri"][0]).port
    # bash's /dev/tcp, as nobody: the forged callback comes from another local user.
    forged = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-c",
            f"exec 3<>/dev/tcp/127.0.0.1/{port}; "
            "printf 'GET /callback?code=x&state=y HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert forged.stdout.startswith("HTTP/1.1 403"), forged
    # The user's own browser still completes the same login.
    approve(url, ca_file=str(lab_pki.ca_path))
    assert servers(client_env)[0]["authorized"] is True


def test_an_api_that_keeps_refusing_gets_one_refresh_then_asks_for_login(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    grants = len(portal.token_grants)
    portal.hostile["/api/v3/info"] = Hostile(
        "raw",
        head=b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
        b"Content-Length: 25\r\nConnection: close\r\n\r\n",
        body=b'{"error":"invalid_token"}',
    )
    line = failed(vpnctl(["profiles", portal.host], client_env))
    assert "vpnctl login" in line
    assert portal.token_grants[grants:] == ["refresh_token"]  # once, not in a loop
    assert servers(client_env)[0]["authorized"] is False


def test_an_idle_daemon_has_not_loaded_what_only_work_needs(
    tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI
) -> None:
    # cryptography (about 7 MiB), keyring (10 MiB) and httpx are loaded on
    # first use; an idle daemon must stay within its memory budget. Python
    # reports every import it makes when PYTHONPROFILEIMPORTTIME is set.
    env = private_bus.env({"PYTHONPROFILEIMPORTTIME": "1"})
    daemon = VpndProcess(tmp_path / "vpnd", env, ca_file=lab_pki.ca_path)
    daemon.start()
    try:
        imported = {
            line.rsplit("|", 1)[-1].strip()
            for line in daemon.log().splitlines()
            if line.startswith("import time:")
        }
    finally:
        assert daemon.stop() == 0
    assert "vpnd.manager" in imported  # the report is there at all
    top = {name.split(".")[0] for name in imported}
    assert not top & {"cryptography", "keyring", "httpx", "nacl"}, sorted(top)
