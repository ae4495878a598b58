"""vpnd installed as the real vpnd.service in a `SystemdWorld`, started by D-Bus activation.

The world gets the project's own files where a package would put them: the
unit, the D-Bus policy and activation file, the polkit actions. One drop-in
is the lab's: it starts the checkout's virtualenv instead of /usr/bin/vpnd,
and because that interpreter lives under /root here (ProtectHome=yes would
hide it) it turns /root into an empty tmpfs with only the interpreter bound
in. Everything else is the unit as shipped.

Tests talk to the world's system bus from the host (through
/proc/PID/root), as root: a host process has no pid inside the world's pid
namespace, so polkit could not check a non-root caller from here.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.lab.daemon import REPO
from tests.lab.pki import LabPKI
from tests.lab.systemd import SystemdWorld, WorldFile

DATA = REPO / "data"
UNIT = "vpnd.service"
OPENVPN_UNITS = "vpnd-openvpn-*.service"
STATE_DIR = "/var/lib/vpnd"
RUNTIME_DIR = "/run/vpnd"
CA_FILE = "/etc/vpnd/lab-ca.pem"


def _drop_in() -> str:
    venv = Path(sys.prefix)
    python = Path(sys.base_prefix)
    lines = [
        "# The lab's only change: the checkout's daemon instead of /usr/bin/vpnd.",
        "[Service]",
        "ExecStart=",
        f"ExecStart={venv}/bin/vpnd",
        # A checkout under /tmp would be hidden by PrivateTmp=yes.
        f"BindReadOnlyPaths={REPO}",
    ]
    if python.is_relative_to("/root") or python.is_relative_to("/home"):
        lines += ["ProtectHome=tmpfs", f"BindReadOnlyPaths={python}"]
    return "\n".join(lines) + "\n"


def world_files(lab_pki: LabPKI) -> dict[str, str | bytes | WorldFile]:
    """The files a package of vpnd installs, plus the lab's drop-in and settings."""
    return {
        f"/etc/systemd/system/{UNIT}": (DATA / "systemd" / UNIT).read_text(),
        f"/etc/systemd/system/{UNIT}.d/lab.conf": _drop_in(),
        "/etc/dbus-1/system.d/org.vpnd.Daemon.conf": (
            DATA / "dbus" / "org.vpnd.Daemon.conf"
        ).read_text(),
        "/usr/share/dbus-1/system-services/org.vpnd.Daemon.service": (
            DATA / "dbus" / "org.vpnd.Daemon.service"
        ).read_text(),
        "/usr/share/polkit-1/actions/org.vpnd.policy": (
            DATA / "polkit-1" / "org.vpnd.policy"
        ).read_text(),
        CA_FILE: lab_pki.ca_path.read_bytes(),
        # The lab never reaches out to eduVPN's real discovery lists.
        "/etc/vpnd/vpnd.toml": f'ca_file = "{CA_FILE}"\nlog_level = "debug"\ndiscovery_url = ""\n',
    }


class UnitDaemon:
    """vpnd.service in a world, looked at from the host."""

    def __init__(self, world: SystemdWorld, bus_address: str) -> None:
        """`bus_address`: the world's system bus as the host reaches it."""
        self.world = world
        self.bus_address = bus_address
        self.state_dir = world.host_path(STATE_DIR)
        self.runtime_dir = world.host_path(RUNTIME_DIR)
        self._cursor: str | None = None  # the journal's end at the last reset

    def env(self, client_env: dict[str, str]) -> dict[str, str]:
        """vpnctl's environment, pointed at the world's bus."""
        return {**client_env, "DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, as `systemctl show` prints it."""
        return self.world.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def active(self, unit: str = UNIT) -> bool:
        """Whether `unit` is active."""
        return self.world.systemctl("is-active", unit, check=False).stdout.strip() == "active"

    @property
    def pid(self) -> int:
        """The daemon's pid on the host."""
        return self.host_pid(int(self.show(UNIT, "MainPID")))

    def openvpn_units(self) -> list[str]:
        """The loaded openvpn units."""
        out = self.world.systemctl(
            "list-units", "--all", "--plain", "--no-legend", OPENVPN_UNITS
        ).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def openvpn_pid(self) -> int:
        """The host pid of the one running openvpn unit's process."""
        units = [unit for unit in self.openvpn_units() if self.active(unit)]
        assert len(units) == 1, units
        return self.host_pid(int(self.show(units[0], "MainPID")))

    def host_pid(self, world_pid: int) -> int:
        """The host's pid of the world's process `world_pid`."""
        assert world_pid > 0
        namespace = os.readlink(f"/proc/{self.world.pid}/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                status = (entry / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) == world_pid:
                    return int(entry.name)
        raise AssertionError(f"no process {world_pid} in the world")

    def log(self, unit: str = UNIT) -> str:
        """The journal of `unit` since the last reset."""
        argv = ["journalctl", "-o", "cat", "--no-pager", "-u", unit]
        if self._cursor:
            argv.append(f"--after-cursor={self._cursor}")
        return self.world.run(*argv, check=False).stdout

    def stop(self) -> None:
        """Stop the daemon (and with it its tunnels)."""
        self.world.systemctl("stop", UNIT)

    def reset(self) -> None:
        """Stopped, with no state left, for the next test."""
        self.world.systemctl("stop", UNIT, check=False)
        self.world.systemctl("reset-failed", check=False)
        self.world.run("rm", "-rf", STATE_DIR, RUNTIME_DIR, check=False)
        out = self.world.run("journalctl", "-n", "0", "--show-cursor", check=False).stdout
        self._cursor = out.rpartition("-- cursor: ")[2].strip() or None

    def fresh(self) -> Iterator[UnitDaemon]:
        """A test fixture's body (`yield from`): reset, the test, reset again; a
        traceback in the daemon's log of the test fails it."""
        self.reset()
        yield self
        log = self.log()
        self.reset()
        assert "Traceback" not in log, log

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` is true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
            time.sleep(0.05)
