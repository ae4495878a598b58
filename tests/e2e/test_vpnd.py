"""The whole product with a real tunnel: vpnd, vpnctl, the portal and an openvpn server.

add → login (scripted browser) → connect → ping through the tunnel → status →
disconnect, and what must be left behind: nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from jeepney import DBusAddress, HeaderFields, message_bus, new_signal
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from tests.lab.browser import final_address
from tests.lab.daemon import VpndProcess, failed, ok, ping, state_files, status, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.terminal import Terminal

pytestmark = pytest.mark.e2e


def tun_devices() -> set[str]:
    """tun devices as "index:name", so a device recreated under the same name counts as new."""
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "tun"], capture_output=True, text=True, check=True
    )
    return {
        ":".join(part.strip() for part in line.split(":")[:2]) for line in out.stdout.splitlines()
    }


@pytest.fixture
def logged_in(vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]) -> dict[str, str]:
    ok(vpnctl(["add", portal.base_url], client_env))
    ok(vpnctl(["login", portal.host], client_env))
    return client_env


def test_connect_ping_status_disconnect(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, logged_in: dict[str, str]
) -> None:
    env = logged_in
    tuns_before = tun_devices()
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
    assert portal.connect_calls[-1]["profile_id"] == "employees"
    assert portal.connect_calls[-1]["prefer_tcp"] == "no"

    assert ping(openvpn_lab.tunnel_gateway_udp)
    now = status(env)
    assert now["state"] == "connected"
    assert now["profile"] == "employees"
    assert now["server_url"] == portal.base_url
    assert ipaddress.ip_address(now["tunnel_ip"]) in ipaddress.ip_network(
        openvpn_lab.tunnel_subnet("udp")
    )
    # The portal's Expires header is the session expiry.
    assert abs(now["session_expiry"] - (time.time() + portal.session_seconds)) < 120
    [child] = vpnd.openvpn_children()
    # openvpn gets none of the daemon's environment: with NOTIFY_SOCKET it
    # reported to the service manager in vpnd's name and blocked once its
    # queue was full.
    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"DBUS_", b"SSL_"))]
    ours = tun_devices() - tuns_before
    assert len(ours) == 1
    # Neither the config (with its key) nor a listening management socket stays on disk:
    # openvpn connects back to vpnd once, and the socket is unlinked right after.
    assert list(vpnd.runtime_dir.iterdir()) == []

    human = ok(vpnctl(["status"], env))
    assert now["tunnel_ip"] in human

    ok(vpnctl(["disconnect"], env))
    assert status(env)["state"] == "disconnected"
    assert vpnd.openvpn_children() == []
    assert not ours & tun_devices()
    assert list(vpnd.runtime_dir.iterdir()) == []
    assert portal.disconnect_calls == 1


def test_connect_over_tcp(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, logged_in: dict[str, str]
) -> None:
    ok(vpnctl(["connect", portal.host, "--profile", "guests", "--tcp"], logged_in))
    assert portal.connect_calls[-1]["prefer_tcp"] == "yes"
    now = status(logged_in)
    assert now["state"] == "connected"
    assert now["remote"].endswith(str(openvpn_lab.tcp_port))
    assert ping(openvpn_lab.tunnel_gateway_tcp)
    ok(vpnctl(["disconnect"], logged_in))


def test_a_second_connect_is_refused_while_connected(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    line = failed(vpnctl(["connect", portal.host, "--profile", "guests"], logged_in))
    assert "vpnctl disconnect" in line
    assert status(logged_in)["profile"] == "employees"
    ok(vpnctl(["disconnect"], logged_in))


def test_an_unknown_profile_is_named(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    before = state_files(vpnd)
    line = failed(vpnctl(["connect", portal.host, "--profile", "nope"], logged_in))
    assert "profile" in line
    assert status(logged_in)["error"] == "org.vpnd.Error.NotFound"
    assert vpnd.openvpn_children() == []
    assert state_files(vpnd) == before


def test_a_config_without_ca_is_refused_before_openvpn_runs(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    portal.fault = "connect_bad_config"
    line = failed(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    assert "ca" in line
    assert status(logged_in)["error"] == "org.vpnd.Error.ConfigRejected"
    assert vpnd.openvpn_children() == []
    assert list(vpnd.runtime_dir.iterdir()) == []


def test_openvpn_exiting_early_is_named_and_cleaned_up(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    before = state_files(vpnd)
    tuns_before = tun_devices()
    # Allowed by the allow-list, refused by openvpn itself at start-up.
    portal.config_filter = lambda text: text.replace(
        "data-ciphers AES-256-GCM", "data-ciphers NO-SUCH-CIPHER"
    )
    line = failed(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    assert "openvpn" in line
    now = status(logged_in)
    assert now["state"] == "failed"
    assert now["error"] == "org.vpnd.Error.TunnelFailed"
    assert vpnd.openvpn_children() == []
    assert list(vpnd.runtime_dir.iterdir()) == []
    assert tun_devices() <= tuns_before
    # Session expiry aside, what was stored is untouched.
    assert {k for k in state_files(vpnd)} == set(before)


def test_a_killed_openvpn_is_replaced_and_the_tunnel_comes_back(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, logged_in: dict[str, str]
) -> None:
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    [child] = vpnd.openvpn_children()
    calls = len(portal.connect_calls)
    os.kill(child, signal.SIGKILL)
    seen = set()
    deadline = time.monotonic() + 30
    while True:
        now = status(logged_in)
        seen.add(now["state"])
        if now["state"] == "connected" and "reconnecting" in seen:
            break
        assert now["state"] in {"connected", "reconnecting"}, now
        assert time.monotonic() < deadline, f"still {now}"
        time.sleep(0.05)
    assert ping(openvpn_lab.tunnel_gateway_udp)
    # A fresh configuration for the new openvpn, the old session released.
    assert len(portal.connect_calls) == calls + 1 and portal.disconnect_calls >= 1
    [again] = vpnd.openvpn_children()
    assert again != child
    ok(vpnctl(["disconnect"], logged_in))
    assert vpnd.openvpn_children() == []


def test_a_session_that_ends_disconnects_with_that_reason(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    portal.session_seconds = 3
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    assert status(logged_in)["session_expiry"] - time.time() < 5
    deadline = time.monotonic() + 20
    while (now := status(logged_in))["state"] != "disconnected":
        # Connected until the session ends, then briefly disconnecting while
        # openvpn is stopped; never reconnecting or failed.
        assert now["state"] in ("connected", "disconnecting"), now
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert now["error"] == "org.vpnd.Error.SessionExpired"
    assert vpnd.openvpn_children() == []
    assert portal.disconnect_calls == 1


def test_no_answer_over_udp_falls_back_to_tcp(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, logged_in: dict[str, str]
) -> None:
    served: list[str] = []

    def udp_goes_nowhere(text: str) -> str:
        served.append(text)
        if len(served) > 1:
            return text
        # The first configuration: a UDP remote that never answers, and no other.
        text = re.sub(r"(?m)^remote .* tcp\n", "", text)
        return re.sub(r"(?m)^remote (\S+) \d+ udp$", r"remote \1 9 udp", text)

    portal.config_filter = udp_goes_nowhere
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    assert [call["prefer_tcp"] for call in portal.connect_calls] == ["no", "yes"]
    now = status(logged_in)
    assert now["state"] == "connected"
    assert now["remote"].endswith(f":{openvpn_lab.tcp_port}")
    assert ping(openvpn_lab.tunnel_gateway_tcp)
    ok(vpnctl(["disconnect"], logged_in))


def test_disconnect_while_connecting(
    vpnd: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, logged_in: dict[str, str]
) -> None:
    # A remote that never answers keeps openvpn connecting.
    portal.config_filter = lambda text: re.sub(r"(?m)^remote .*$", "remote 127.0.0.1 9 udp", text)
    ok(vpnctl(["connect", portal.host, "--profile", "employees", "--no-wait"], logged_in))
    assert status(logged_in)["state"] in {"preparing", "connecting"}
    ok(vpnctl(["disconnect"], logged_in))
    assert status(logged_in)["state"] == "disconnected"
    assert vpnd.openvpn_children() == []
    assert list(vpnd.runtime_dir.iterdir()) == []


def test_stopping_the_daemon_tears_the_tunnel_down(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    tuns_before = tun_devices()
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    ours = tun_devices() - tuns_before
    assert len(ours) == 1
    assert vpnd.stop() == 0
    assert not ours & tun_devices()
    assert portal.disconnect_calls == 1
    vpnd.start()  # for the fixture's own clean stop


def test_a_frozen_openvpn_does_not_hold_up_the_daemon(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    pid = vpnd.openvpn_pid()
    os.kill(pid, signal.SIGSTOP)  # it can no longer answer on its management socket
    try:
        assert vpnd.stop() == 0  # raises if vpnd is still there after 20 s
        assert not Path(f"/proc/{pid}").exists()
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    vpnd.start()  # for the fixture's own clean stop


def test_a_crashed_daemon_leaves_no_tunnel_and_restarts_with_its_servers(
    vpnd: VpndProcess, portal: TestPortal, logged_in: dict[str, str]
) -> None:
    tuns_before = tun_devices()
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    ours = tun_devices() - tuns_before
    pid = vpnd.openvpn_pid()
    listed = ok(vpnctl(["list", "--json"], logged_in))
    vpnd.kill()  # SIGKILL: no shutdown code runs
    # openvpn notices its management connection is gone and exits by itself.
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
    assert not ours & tun_devices()
    vpnd.start()
    assert status(logged_in)["state"] == "disconnected"
    assert ok(vpnctl(["list", "--json"], logged_in)) == listed
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], logged_in))
    ok(vpnctl(["disconnect"], logged_in))


def test_a_headless_login_takes_the_address_the_browser_ended_at(
    vpnd: VpndProcess, portal: TestPortal, lab_pki: LabPKI, client_env: dict[str, str]
) -> None:
    ok(vpnctl(["add", portal.base_url], client_env))
    env = {**client_env, "BROWSER": "/bin/false"}  # no browser on this machine
    with Terminal.vpnctl(["login", "--no-browser", portal.host], env) as terminal:
        url = terminal.expect("/oauth/authorize?").rpartition("\n")[2]
        url += terminal.expect("\n").strip()
        terminal.expect("Paste that address here")
        # On another device: log in; its browser is sent to this machine's loopback.
        address = final_address(url, ca_file=str(lab_pki.ca_path))
        assert address.startswith("http://127.0.0.1:")
        # A forged state is refused as a real callback's would be.
        forged = re.sub(r"state=[^&]*", "state=forged", address)
        terminal.send(forged)
        assert terminal.wait() != 0
        # What vpnctl said after the echo of the pasted line (which holds "state").
        assert "state mismatch" in terminal.output.rpartition(forged)[2]
    assert json.loads(ok(vpnctl(["list", "--json"], client_env)))[0]["authorized"] is False
    with Terminal.vpnctl(["login", "--no-browser", portal.host], env) as terminal:
        url = terminal.expect("/oauth/authorize?").rpartition("\n")[2]
        url += terminal.expect("\n").strip()
        terminal.expect("Paste that address here")
        terminal.send(final_address(url, ca_file=str(lab_pki.ca_path)))
        terminal.expect("Logged in to")
        assert terminal.wait() == 0
    assert portal.token_grants == ["authorization_code"]
    assert json.loads(ok(vpnctl(["list", "--json"], client_env)))[0]["authorized"] is True


LOGIND_POLICY = '<policy user="root"><allow own="org.freedesktop.login1"/></policy>'


def wake_up(connection: DBusConnection, to: str | None = None) -> None:
    """logind's PrepareForSleep(false), sent from `connection` (only `to`, if given)."""
    where = DBusAddress("/org/freedesktop/login1", interface="org.freedesktop.login1.Manager")
    signal = new_signal(where, "PrepareForSleep", "b", (False,))
    if to is not None:
        signal.header.fields[HeaderFields.destination] = to
    connection.send(signal)


def test_waking_from_sleep_makes_the_tunnel_again_at_once(
    tmp_path: Path,
    lab_pki: LabPKI,
    portal: TestPortal,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    # A bus of its own, where this test may play logind.
    with PrivateSystemBus(tmp_path / "bus", extra_policy=LOGIND_POLICY) as bus:
        env = {**client_env, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        daemon = VpndProcess(tmp_path / "vpnd", bus.env({}), ca_file=lab_pki.ca_path)
        daemon.start()
        try:
            ok(vpnctl(["add", portal.base_url], env))
            ok(vpnctl(["login", portal.host], env))
            ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
            [before] = daemon.openvpn_children()
            with (
                open_dbus_connection(bus=bus.address) as someone,
                open_dbus_connection(bus=bus.address) as logind,
            ):
                # Only logind's signal counts: one from anyone else, broadcast or
                # sent to vpnd (which root may), changes nothing.
                wake_up(someone)
                wake_up(someone, to="org.vpnd.Daemon")
                logind.send_and_get_reply(message_bus.RequestName("org.freedesktop.login1"))
                time.sleep(1)
                assert daemon.openvpn_children() == [before]
                assert "does not come from logind" in daemon.log()
                wake_up(logind)
                deadline = time.monotonic() + 30
                while not ((now := daemon.openvpn_children()) and now != [before]):
                    assert time.monotonic() < deadline, daemon.log()[-3000:]
                    time.sleep(0.1)
            deadline = time.monotonic() + 30
            while status(env)["state"] != "connected":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert "woke from sleep" in daemon.log()
            assert ping(openvpn_lab.tunnel_gateway_udp)
            ok(vpnctl(["disconnect"], env))
        finally:
            assert daemon.stop() == 0, daemon.log()
