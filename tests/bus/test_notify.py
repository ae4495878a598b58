"""`vpnctl monitor --notify` against the real vpnd on the private system bus and a real
notification server (dunst under Xvfb) on a private session bus.

No tunnel here: a connection with a profile the portal does not have fails,
which is a notice. tests/e2e/test_notify.py drives a real tunnel through a
session's end, a lost tunnel and questions, and invokes the actions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.daemon import VpndProcess, ok, vpnctl
from tests.lab.desktop import DesktopSession, MonitorProcess
from tests.lab.portal import TestPortal

pytestmark = pytest.mark.bus


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[DesktopSession]:
    with DesktopSession(tmp_path / "desktop") as session:
        yield session


def failed_connect(portal: TestPortal, env: dict[str, str]) -> None:
    result = vpnctl(["connect", portal.host, "--profile", "nope"], env)
    assert result.returncode == 1, result.stderr


def test_a_failed_connection_reaches_the_notification_server_once_per_connection(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str], desktop: DesktopSession
) -> None:
    env = desktop.env(client_env)
    ok(vpnctl(["add", portal.base_url], client_env))
    ok(vpnctl(["login", portal.host], client_env))
    with MonitorProcess(env) as monitor:
        assert monitor.line() == "following vpnd: no connection"
        failed_connect(portal, client_env)
        line = monitor.line_starting("failed: ")
        assert line.startswith("failed: VPN connection failed — ")
        assert line.endswith(f"({portal.host})")
        assert desktop.displayed() == 1
        [shown] = desktop.close_all()
        assert shown["summary"] == "VPN connection failed"
        assert shown["body"] == line.split(" — ", 1)[1]
        assert (shown["appname"], shown["category"]) == ("vpnd", "network")

        # Another connection, another notice; the monitor itself sends each once.
        failed_connect(portal, client_env)
        monitor.line_starting("failed: ")
        assert desktop.displayed() == 1
        history = desktop.close_all()
        assert [entry["summary"] for entry in history] == ["VPN connection failed"] * 2
        assert history[0]["id"] != history[1]["id"]

        # One notifying monitor per session: a second one leaves at once.
        with MonitorProcess(env) as second:
            assert second.wait() == (0, "")
            assert "another monitor notifies this session" in second.line(timeout=5)

        assert monitor.interrupt() == (130, "")
    assert len(monitor.lines) == 3


def test_the_monitor_waits_for_vpnd_and_follows_it_across_restarts(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str], desktop: DesktopSession
) -> None:
    ok(vpnctl(["add", portal.base_url], client_env))
    ok(vpnctl(["login", portal.host], client_env))
    assert vpnd.stop() == 0
    # Without --notify: lines only, no session bus needed.
    with MonitorProcess(client_env, args=()) as monitor:
        assert monitor.line() == "vpnd is not running; waiting for it"
        vpnd.start()
        assert monitor.line() == "following vpnd: no connection"
        failed_connect(portal, client_env)
        assert monitor.line().startswith("failed: VPN connection failed — ")
        # vpnd stops and comes back: the monitor stays and follows the new one.
        assert vpnd.stop() == 0
        vpnd.start()
        assert monitor.line() == "following vpnd: no connection"
        failed_connect(portal, client_env)
        assert monitor.line().startswith("failed: VPN connection failed — ")
        assert monitor.interrupt() == (130, "")
    assert desktop.displayed() == 0  # never told: it was not asked to notify


def test_notify_without_a_session_bus_is_a_named_failure(
    vpnd: VpndProcess, client_env: dict[str, str]
) -> None:
    env = {**client_env, "DBUS_SESSION_BUS_ADDRESS": "", "XDG_RUNTIME_DIR": "/nonexistent"}
    result = vpnctl(["monitor", "--notify"], env)
    assert result.returncode == 4
    assert result.stderr.startswith("vpnctl: no desktop session bus")
    assert "Traceback" not in result.stderr
