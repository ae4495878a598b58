"""A restart after a crash finds the previous run's tunnel and removes it.

vpnd is killed with SIGKILL while connected, as a crash would end it, and
started again (as `Restart=on-failure` does). Whatever openvpn the previous
run left is stopped before the new run serves anyone, no tun device of it is
left, the new run says what it found, and its state on the bus is the truth:
no connection, or, for a server marked to connect at start, a new one.
Under systemd, an openvpn unit an earlier run left is stopped, so that the
new run's first tunnel can take its name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_systemd import connected
from tests.lab.daemon import VpndProcess, ok, ping, status, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.vpnd_unit import UnitDaemon

pytestmark = pytest.mark.e2e


def tun_devices() -> set[str]:
    """tun devices as "index:name", so a device made again under the same name counts as new."""
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "tun"], capture_output=True, text=True, check=True
    )
    return {
        ":".join(part.strip() for part in line.split(":")[:2]) for line in out.stdout.splitlines()
    }


def openvpn_of(runtime_dir: Path) -> list[int]:
    """Processes running openvpn for the vpnd whose runtime directory is `runtime_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"openvpn") and str(runtime_dir).encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


def wait_for(what: str, check: object, timeout: float, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}\n{log[-3000:]}"
        time.sleep(0.1)


@pytest.fixture
def daemon(tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI) -> VpndProcess:
    return VpndProcess(tmp_path / "vpnd", private_bus.env({}), ca_file=lab_pki.ca_path)


def test_a_stuck_openvpn_of_a_crashed_run_is_removed(
    daemon: VpndProcess, portal: TestPortal, openvpn_lab: OpenVPNLab, client_env: dict[str, str]
) -> None:
    env = client_env
    tuns_before = tun_devices()
    daemon.start()
    old = 0
    try:
        ok(vpnctl(["add", portal.base_url], env))
        ok(vpnctl(["login", portal.host], env))
        ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
        tun = tun_devices() - tuns_before
        assert len(tun) == 1
        [old] = openvpn_of(daemon.runtime_dir)
        # Held still, as a stuck one would be: it cannot notice that its
        # daemon is gone, and only the new run can make it go.
        os.kill(old, signal.SIGSTOP)
        daemon.kill()
        assert openvpn_of(daemon.runtime_dir) == [old] and tun <= tun_devices()
        daemon.start()
        log = daemon.log()
        assert f"openvpn (pid {old}, tunnel conn1) of an earlier run" in log, log[-3000:]
        assert not openvpn_of(daemon.runtime_dir)
        wait_for("its tun device is gone", lambda: not (tun & tun_devices()), 10, log)
        assert any("an earlier run left" in line for line in daemon.notifications)
        assert status(env)["state"] in ("", "disconnected")
        # The new run connects as any run does.
        ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
        assert ping(openvpn_lab.tunnel_gateway_udp)
        ok(vpnctl(["disconnect"], env))
    finally:
        if old and old in openvpn_of(daemon.runtime_dir):
            os.kill(old, signal.SIGKILL)
        assert daemon.stop() == 0, daemon.log()


def test_a_crashed_runs_autoconnect_tunnel_is_made_again(
    tmp_path: Path,
    private_bus: PrivateSystemBus,
    lab_pki: LabPKI,
    portal: TestPortal,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    env = client_env
    daemon = VpndProcess(
        tmp_path / "vpnd",
        private_bus.env({}),
        ca_file=lab_pki.ca_path,
        settings={"autoconnect_server": portal.host, "autoconnect_profile": "employees"},
    )
    tuns_before = tun_devices()
    daemon.start()
    try:
        ok(vpnctl(["add", portal.base_url], env))
        # Logging in connects the server marked to connect at start.
        ok(vpnctl(["login", portal.host], env))
        wait_for("connected", lambda: status(env)["state"] == "connected", 30, daemon.log())
        [old] = openvpn_of(daemon.runtime_dir)
        old_tun = tun_devices() - tuns_before
        daemon.kill()
        daemon.start()
        # Whatever the old openvpn did on its own, none of it is left, and
        # the state on the bus is the new run's own tunnel.
        wait_for("connected again", lambda: status(env)["state"] == "connected", 30, daemon.log())
        assert old not in openvpn_of(daemon.runtime_dir)
        [new] = openvpn_of(daemon.runtime_dir)
        assert new != old
        assert not (old_tun & tun_devices())
        assert len(tun_devices() - tuns_before) == 1
        assert ping(openvpn_lab.tunnel_gateway_udp)
        ok(vpnctl(["disconnect"], env))
        wait_for("no openvpn", lambda: not openvpn_of(daemon.runtime_dir), 10, daemon.log())
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_an_openvpn_unit_an_earlier_run_left_is_stopped(
    unit_daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]
) -> None:
    # Under the name the first tunnel takes, as an earlier run leaves one that
    # was not bound to its unit: the new run's tunnel could not start.
    leftover = "vpnd-openvpn-conn1.service"
    unit_daemon.world.run("systemd-run", f"--unit={leftover}", "sleep", "1000")
    assert unit_daemon.openvpn_units() == [leftover]
    env = connected(unit_daemon, portal, client_env)
    log = unit_daemon.log()
    assert f"openvpn unit {leftover} (active) of an earlier run: stopped" in log, log[-3000:]
    assert status(env)["state"] == "connected"
    # The name is the new tunnel's now.
    assert unit_daemon.openvpn_units() == [leftover]
    assert Path(f"/proc/{unit_daemon.openvpn_pid()}/comm").read_text().strip() == "openvpn"
    ok(vpnctl(["disconnect"], env))
    assert unit_daemon.openvpn_units() == []
