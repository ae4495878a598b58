"""vpnd under a real systemd: the shipped unit, D-Bus activation, openvpn in units of its own.

The world (tests/lab/systemd.py) boots the machine's systemd as PID 1 of
private namespaces; vpnd.service, the bus policy, the activation file and
the polkit actions are installed there as a package would install them
(tests/lab/vpnd_unit.py). The test portal and the openvpn servers run on the
host, whose network the world shares, so the tunnels are real.

What this shows: bus activation starts the daemon under the unit's sandbox
with no capability at all; each tunnel runs as the transient unit
vpnd-openvpn-<name>.service, as the vpnd-openvpn user with CAP_NET_ADMIN
alone; the unit scores at most 2.0 in `systemd-analyze security` on a
running system; and the daemon still stops, kills and outlives its openvpn
units as it does its children.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.test_vpnd import tun_devices
from tests.lab.daemon import REPO, ok, ping, proc_status, status, vpnctl
from tests.lab.netns import OpenVPNLab
from tests.lab.portal import TestPortal
from tests.lab.vpnd_unit import UNIT, UnitDaemon

NET_ADMIN = 1 << 12
MAX_EXPOSURE = 2.0
_EXPOSURE = re.compile(r"Overall exposure level for \S+: ([0-9.]+)")


def exposure(daemon: UnitDaemon, unit: str) -> float:
    """`systemd-analyze security` of a loaded unit, on the running world."""
    out = daemon.world.run("systemd-analyze", "security", "--no-pager", unit).stdout
    match = _EXPOSURE.search(out)
    assert match is not None, out[-2000:]
    return float(match[1])


def connected(daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]) -> dict[str, str]:
    """Add the portal, log in and connect; return vpnctl's environment."""
    env = daemon.env(client_env)
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
    return env


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_bus_activation_starts_the_daemon_without_capabilities(
    unit_daemon: UnitDaemon, client_env: dict[str, str]
) -> None:
    assert not unit_daemon.active()
    ok(vpnctl(["list"], unit_daemon.env(client_env)))
    assert unit_daemon.active()
    process = proc_status(unit_daemon.pid)
    assert process["Uid"].split() == ["0"] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(process[capabilities], 16) == 0, (capabilities, process[capabilities])
    assert process["NoNewPrivs"] == "1"
    assert process["Seccomp"] == "2"
    assert "openvpn runs as transient systemd units" in unit_daemon.log()


def test_the_running_unit_scores_at_most_2(
    unit_daemon: UnitDaemon, client_env: dict[str, str]
) -> None:
    ok(vpnctl(["list"], unit_daemon.env(client_env)))
    assert exposure(unit_daemon, UNIT) <= MAX_EXPOSURE


def test_a_tunnel_runs_in_a_unit_of_its_own(
    unit_daemon: UnitDaemon,
    portal: TestPortal,
    openvpn_lab: OpenVPNLab,
    client_env: dict[str, str],
) -> None:
    tuns_before = tun_devices()
    env = connected(unit_daemon, portal, client_env)
    assert status(env)["state"] == "connected"
    assert ping(openvpn_lab.tunnel_gateway_udp)
    [unit] = unit_daemon.openvpn_units()
    assert re.fullmatch(r"vpnd-openvpn-[A-Za-z0-9_.-]+\.service", unit)
    # Stopped with the daemon, so that it never outlives it.
    assert UNIT in unit_daemon.show(unit, "StopPropagatedFrom").split()

    pid = unit_daemon.openvpn_pid()
    process = proc_status(pid)
    uid = pwd.getpwnam("vpnd-openvpn").pw_uid
    assert process["Uid"].split() == [str(uid)] * 4
    for capabilities in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(process[capabilities], 16) == NET_ADMIN, (capabilities, process)
    assert process["NoNewPrivs"] == "1"
    assert process["Seccomp"] == "2"
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--user" not in argv  # never root, so nothing to switch from
    # The key stayed with vpnd: openvpn asked it for a signature.
    assert "signed for openvpn" in unit_daemon.log()
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"LC_ALL=C" in environment
    assert not [v for v in environment if v.startswith((b"NOTIFY_SOCKET=", b"DBUS_", b"CREDENT"))]
    # The management socket is gone once openvpn is connected to it.
    assert list(unit_daemon.runtime_dir.iterdir()) == []
    assert exposure(unit_daemon, unit) <= MAX_EXPOSURE

    ok(vpnctl(["disconnect"], env))
    assert gone(pid)
    assert unit_daemon.openvpn_units() == []
    assert not tun_devices() - tuns_before
    assert status(env)["state"] == "disconnected"


def test_stopping_the_daemon_stops_its_tunnel(
    unit_daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]
) -> None:
    tuns_before = tun_devices()
    connected(unit_daemon, portal, client_env)
    pid = unit_daemon.openvpn_pid()
    calls = portal.disconnect_calls
    unit_daemon.stop()
    assert gone(pid)
    assert unit_daemon.openvpn_units() == []
    assert not tun_devices() - tuns_before
    # The daemon went down first and said goodbye to the portal itself.
    assert portal.disconnect_calls == calls + 1
    assert "Traceback" not in unit_daemon.log()


def test_a_frozen_openvpn_is_killed_through_systemd(
    unit_daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]
) -> None:
    # openvpn answers nothing, runs as another user, and the daemon may not
    # signal it: systemd does, on the daemon's request.
    env = connected(unit_daemon, portal, client_env)
    pid = unit_daemon.openvpn_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        ok(vpnctl(["disconnect"], env))
        assert gone(pid)
        assert unit_daemon.openvpn_units() == []
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_daemon_takes_its_tunnel_along_and_comes_back(
    unit_daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]
) -> None:
    tuns_before = tun_devices()
    env = connected(unit_daemon, portal, client_env)
    listed = ok(vpnctl(["list", "--json"], env))
    pid = unit_daemon.openvpn_pid()
    daemon_pid = unit_daemon.pid
    unit_daemon.world.systemctl("kill", "--signal=KILL", UNIT)
    unit_daemon.wait_for(lambda: gone(pid) and gone(daemon_pid), timeout=15)
    assert unit_daemon.openvpn_units() == []
    assert not tun_devices() - tuns_before
    # Restart=on-failure brings it back, with its servers and authorizations;
    # active means it answers (Type=notify, READY=1 once the name is owned).
    unit_daemon.wait_for(unit_daemon.active, timeout=15)
    assert ok(vpnctl(["list", "--json"], env)) == listed
    ok(vpnctl(["connect", portal.host, "--profile", "employees"], env))
    ok(vpnctl(["disconnect"], env))


@contextlib.contextmanager
def extra_settings(daemon: UnitDaemon, text: str) -> Iterator[None]:
    """Lines added to the world's /etc/vpnd/vpnd.toml for the length of a test."""
    path = "/etc/vpnd/vpnd.toml"
    before = daemon.world.read_file(path)
    daemon.world.write_file(path, before + text)
    try:
        yield
    finally:
        daemon.world.write_file(path, before)


def test_openvpn_that_cannot_start_is_a_named_error(
    unit_daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]
) -> None:
    # The binary is missing: systemd is never asked, and the error says why.
    with extra_settings(unit_daemon, 'openvpn = "/nonexistent/openvpn"\n'):
        env = unit_daemon.env(client_env)
        ok(vpnctl(["add", portal.base_url], env))
        ok(vpnctl(["login", portal.host], env))
        result = vpnctl(["connect", portal.host, "--profile", "employees"], env)
        assert result.returncode != 0
        assert "/nonexistent/openvpn" in result.stderr
        assert unit_daemon.openvpn_units() == []


def test_a_child_openvpn_under_the_unit_is_warned_about_at_start(
    unit_daemon: UnitDaemon, client_env: dict[str, str]
) -> None:
    # The unit grants nothing a child openvpn would need: the administrator
    # who chose "child" hears it when the daemon starts, with the way out.
    with extra_settings(unit_daemon, 'openvpn_launcher = "child"\n'):
        ok(vpnctl(["list"], unit_daemon.env(client_env)))
        log = unit_daemon.log()
    assert "lacks CAP_SETGID, CAP_SETUID, CAP_NET_ADMIN: tunnels will fail" in log
    assert 'set openvpn_launcher = "systemd"' in log


def test_the_store_key_comes_from_an_encrypted_credential(
    unit_daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]
) -> None:
    # The README's "The store key as an encrypted credential", step by step;
    # the world has no TPM, so the credential is sealed with the host key.
    world = unit_daemon.world
    credential = "/etc/credstore.encrypted/vpnd-store.key"
    drop_in = f"/etc/systemd/system/{UNIT}.d/credential.conf"
    world.run("mkdir", "-p", "/etc/credstore.encrypted")
    world.run(
        "systemd-creds", "encrypt", "--with-key=host", "--name=vpnd-store.key", "-", credential,
        input=os.urandom(32),
    )  # fmt: skip
    world.write_file(drop_in, (REPO / "data/systemd/vpnd.service.d/credential.conf").read_text())
    world.systemctl("daemon-reload")
    try:
        env = unit_daemon.env(client_env)
        ok(vpnctl(["add", portal.base_url], env))
        ok(vpnctl(["login", portal.host], env))
        assert "store key: systemd credential vpnd-store.key" in unit_daemon.log()
        assert not (unit_daemon.state_dir / "store.key").exists()
        # A restarted daemon opens the stored tokens with the same credential.
        unit_daemon.stop()
        ok(vpnctl(["profiles", portal.host], env))
        assert portal.token_grants == ["authorization_code"]
        # Without it the tokens stay sealed: a named error that says why, the
        # record kept aside (not deleted), the server kept, and a new login
        # asked for from then on.
        world.run("rm", "-f", drop_in)
        world.systemctl("daemon-reload")
        unit_daemon.stop()
        result = vpnctl(["profiles", portal.host], env)
        assert result.returncode != 0
        assert "written with another store key" in result.stderr, result.stderr
        kept = list(unit_daemon.state_dir.glob("users/0/secrets/*/oauth.secret.damaged-*"))
        assert len(kept) == 1
        assert vpnctl(["profiles", portal.host], env).returncode == 3  # 3: log in again
        assert ok(vpnctl(["list"], env)).count(portal.base_url) == 1
    finally:
        world.run("rm", "-f", drop_in, credential)
        world.systemctl("daemon-reload")


def test_a_wedged_event_loop_is_restarted_by_the_watchdog(unit_daemon: UnitDaemon) -> None:
    # The unit's WatchdogSec= is 30 s; 2 s here keeps the test short.
    world = unit_daemon.world
    drop_in = f"/etc/systemd/system/{UNIT}.d/watchdog.conf"
    world.write_file(drop_in, "[Service]\nWatchdogSec=2s\n")
    world.systemctl("daemon-reload")
    try:
        world.systemctl("start", UNIT)
        first = unit_daemon.pid
        # Fed from the event loop: three periods pass and nothing happens.
        time.sleep(6)
        assert unit_daemon.active() and unit_daemon.pid == first
        assert unit_daemon.show(UNIT, "NRestarts") == "0"
        # A stopped process stands for a loop that no longer turns; only the
        # watchdog can tell, so only it can make systemd restart the daemon.
        os.kill(first, signal.SIGSTOP)
        unit_daemon.wait_for(lambda: unit_daemon.show(UNIT, "NRestarts") == "1", timeout=15)
        unit_daemon.wait_for(unit_daemon.active, timeout=15)
        assert unit_daemon.pid != first
    finally:
        world.run("rm", "-f", drop_in)
        world.systemctl("daemon-reload")


def test_a_server_marked_for_start_connects_when_the_unit_starts(
    unit_daemon: UnitDaemon, portal: TestPortal, client_env: dict[str, str]
) -> None:
    env = unit_daemon.env(client_env)
    ok(vpnctl(["add", portal.base_url], env))  # root's servers are the system-wide ones
    ok(vpnctl(["login", portal.host], env))
    ok(vpnctl(["--system", "autoconnect", portal.host, "--profile", "employees"], env))
    unit_daemon.world.systemctl("restart", UNIT)
    # Nobody asks for it: the unit's start connects, and systemd's status says so.
    unit_daemon.wait_for(lambda: status(env)["state"] == "connected", timeout=30)
    assert status(env)["profile"] == "employees"
    unit_daemon.wait_for(
        lambda: unit_daemon.show(UNIT, "StatusText").startswith("Connected to"), timeout=10
    )
    ok(vpnctl(["--system", "autoconnect", portal.host, "--off"], env))
    unit_daemon.world.systemctl("restart", UNIT)
    unit_daemon.wait_for(unit_daemon.active, timeout=15)
    assert status(env)["state"] == "disconnected"
    # The restart stopped the old tunnel's unit; it did not start it again.
    assert unit_daemon.openvpn_units() == []
    assert unit_daemon.world.systemctl("list-jobs").stdout.startswith("No jobs")
    assert "shutting down took too long" not in unit_daemon.log()
