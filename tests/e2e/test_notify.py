"""`vpnctl monitor --notify` with a real tunnel and a real notification server.

vpnd runs on its private system bus with the lab's portal and openvpn
servers; dunst runs under Xvfb on a private session bus. The tests drive a
connection through a session's end, a lost tunnel and questions, read what
dunst was given (dunstctl), and invoke the notifications' actions the way
dunst does when a person clicks (`dunstctl action`: dunst sends
ActionInvoked). The programs an action starts (xdg-open, x-terminal-emulator)
are stand-ins on PATH that record their arguments; the browser stand-in
then logs in as the lab's scripted browser does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import test_prompts as prompts
from tests.lab.browser import write_browser_script
from tests.lab.daemon import VpndProcess, ok, status, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.desktop import DesktopSession, MonitorProcess, fake_program, wait_recorded
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import DEFAULT_SESSION_SECONDS, TestPortal
from tests.lab.portal_as import TestAccessServer

pytestmark = pytest.mark.e2e

# The Access Server lab whose openvpn asks questions (tests/e2e/test_prompts.py).
auth_state = prompts.auth_state
auth_lab = prompts.auth_lab
access_server_session = prompts.access_server_session
access_server = prompts.access_server


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[DesktopSession]:
    with DesktopSession(tmp_path / "desktop") as session:
        yield session


@pytest.fixture
def programs(tmp_path: Path, lab_pki: LabPKI) -> Path:
    """Stand-ins for xdg-open (which goes on to log in as the lab's browser) and
    x-terminal-emulator; each records its arguments in DIR/NAME.log."""
    directory = tmp_path / "bin"
    browser = write_browser_script(tmp_path, ca_file=str(lab_pki.ca_path))
    fake_program(directory, "xdg-open", directory / "xdg-open.log", then=[str(browser)])
    fake_program(directory, "x-terminal-emulator", directory / "x-terminal-emulator.log")
    return directory


@pytest.fixture
def session_env(
    client_env: dict[str, str], desktop: DesktopSession, programs: Path
) -> dict[str, str]:
    """The person's desktop session: the system bus, the session bus, the stand-ins on PATH."""
    env = desktop.env(client_env)
    env["PATH"] = f"{programs}{os.pathsep}{os.environ['PATH']}"
    return env


def wait_for(env: dict[str, str], state: str, timeout: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while (now := status(env))["state"] != state:
        assert time.monotonic() < deadline, f"not {state}: {now}"
        time.sleep(0.1)
    return now


def wait_none_shown(desktop: DesktopSession, failure: str, timeout: float = 10.0) -> None:
    """Wait until dunst shows no notification; `failure` says what is still shown if it does."""
    deadline = time.monotonic() + timeout
    while desktop.displayed():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def test_the_session_ends_with_one_notification_whose_renew_logs_in_and_reconnects(
    vpnd: VpndProcess,
    portal: TestPortal,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
    session_env: dict[str, str],
    desktop: DesktopSession,
    programs: Path,
) -> None:
    ok(vpnctl(["add", portal.base_url], client_env))
    ok(vpnctl(["login", portal.host], client_env))
    portal.session_seconds = 4
    with MonitorProcess(session_env) as monitor:
        assert monitor.line() == "following vpnd: no connection"
        ok(vpnctl(["connect", portal.host, "--profile", "employees"], client_env))
        soon = monitor.line_starting("expiring: ")
        assert soon == (
            "expiring: VPN session ends in less than a minute — Your VPN session at"
            f" {portal.host} ends in less than a minute. It can be renewed once it is 30"
            " minutes old."
        )
        ended = monitor.line_starting("expired: ")
        assert ended == (
            f"expired: VPN session ended — Your VPN session at {portal.host} has ended and the"
            " VPN is disconnected. Renew to log in again and reconnect. [Renew]"
        )
        assert wait_for(client_env, "disconnected")["error"] == "org.vpnd.Error.SessionExpired"
        # The end replaced the warning: one notification, not two.
        assert desktop.displayed() == 1
        assert desktop.history() == []

        # The person clicks Renew: vpnd logs in again (the browser stand-in
        # does) and the monitor connects the profile again.
        portal.session_seconds = DEFAULT_SESSION_SECONDS
        calls = len(portal.connect_calls)
        desktop.dunstctl("action", "0")
        assert monitor.line_starting("action renew: log in at ").startswith(
            f"action renew: log in at {portal.base_url}"
        )
        assert monitor.line_starting("renewed; ") == (
            "renewed; connecting again with profile employees"
        )
        now = wait_for(client_env, "connected")
        assert now["profile"] == "employees"
        assert len(portal.connect_calls) == calls + 1
        [opened] = wait_recorded(programs / "xdg-open.log")
        assert len(opened) == 1 and opened[0].startswith(portal.base_url)

        [shown] = desktop.close_all()
        assert (shown["summary"], shown["appname"], shown["category"]) == (
            "VPN session ended",
            "vpnd",
            "network",
        )
        assert shown["body"] == ended.split(" — ", 1)[1].removesuffix(" [Renew]")
        assert monitor.interrupt() == (130, "")
    ok(vpnctl(["disconnect"], client_env))


def test_a_lost_tunnel_and_its_return_replace_each_other(
    vpnd: VpndProcess,
    portal: TestPortal,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
    session_env: dict[str, str],
    desktop: DesktopSession,
) -> None:
    ok(vpnctl(["add", portal.base_url], client_env))
    ok(vpnctl(["login", portal.host], client_env))
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], client_env))
    with MonitorProcess(session_env) as monitor:
        line = monitor.line()
        assert line.startswith("following vpnd: /org/vpnd/Daemon/connections/")
        assert line.endswith(" is connected")
        os.kill(vpnd.openvpn_pid(), signal.SIGKILL)
        assert monitor.line() == (
            f"lost: VPN connection lost — The tunnel to {portal.host} went down; reconnecting."
        )
        assert monitor.line() == (
            f"restored: VPN connection restored — The tunnel to {portal.host} is up again."
        )
        assert desktop.displayed() == 1
        [shown] = desktop.close_all()
        assert shown["summary"] == "VPN connection restored"
        # Disconnecting on request tells nothing.
        ok(vpnctl(["disconnect"], client_env))
        assert monitor.interrupt() == (130, "")
    assert desktop.displayed() == 0
    assert len(monitor.lines) == 3


def test_a_code_asked_opens_a_terminal_and_the_answer_takes_the_notice_away(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    auth_lab: OpenVPNLab,
    client_env: dict[str, str],
    session_env: dict[str, str],
    desktop: DesktopSession,
    programs: Path,
    private_bus: PrivateSystemBus,
) -> None:
    prompts.sign_in(access_server, client_env, "dora", "--remember")
    with MonitorProcess(session_env) as monitor:
        assert monitor.line() == "following vpnd: no connection"
        ok(vpnctl(["connect", "127.0.0.1", "--no-wait"], client_env))
        assert monitor.line_starting("input: ") == (
            "input: The VPN needs an answer — Enter the code we sent you. The connection waits"
            " for you. [Answer]"
        )
        assert desktop.displayed() == 1
        desktop.dunstctl("action", "0")
        assert monitor.line() == "started x-terminal-emulator -e vpnctl answer"
        assert wait_recorded(programs / "x-terminal-emulator.log") == [["-e", "vpnctl", "answer"]]

        # What the person types in that terminal reaches vpnd; the question is over.
        now = status(client_env)
        prompt = now["prompt"]
        assert isinstance(prompt, dict)
        subprocess.run(
            ["busctl", f"--address={private_bus.address}", "call", "org.vpnd.Daemon",
             str(now["connection"]), "org.vpnd.Connection1", "Answer", "ua{ss}",
             str(prompt["id"]), "1", "response", "777"],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip
        wait_for(client_env, "connected")
        wait_none_shown(desktop, "the answered question is still shown")
        [closed] = desktop.history()
        assert closed["summary"] == "The VPN needs an answer"
        ok(vpnctl(["disconnect"], client_env))
        assert monitor.interrupt() == (130, "")


def test_a_web_login_asked_opens_the_page(
    vpnd: VpndProcess,
    access_server: TestAccessServer,
    auth_lab: OpenVPNLab,
    auth_state: Path,
    client_env: dict[str, str],
    session_env: dict[str, str],
    desktop: DesktopSession,
    programs: Path,
) -> None:
    prompts.sign_in(access_server, client_env, "wendy", "--remember")
    control = auth_state / "wendy.control"
    control.unlink(missing_ok=True)
    with MonitorProcess(session_env) as monitor:
        assert monitor.line() == "following vpnd: no connection"
        ok(vpnctl(["connect", "127.0.0.1", "--no-wait"], client_env))
        line = monitor.line_starting("input: ")
        assert line.startswith("input: VPN login needed — ") and line.endswith("[Log in]")
        desktop.dunstctl("action", "0")
        assert monitor.line() == "started xdg-open https://login.lab.test/sso?n=1"
        assert wait_recorded(programs / "xdg-open.log") == [["https://login.lab.test/sso?n=1"]]
        # The person logs in on that page; the server lets the client in.
        Path(control.read_text()).write_text("1")
        wait_for(client_env, "connected")
        wait_none_shown(desktop, "the finished login is still shown")
        ok(vpnctl(["disconnect"], client_env))
        assert monitor.interrupt() == (130, "")
