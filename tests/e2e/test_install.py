"""vpnd installed, upgraded and removed as a system service: `make install` and the Debian package.

Everything happens in one throw-away systemd world (tests/lab/systemd.py)
whose root is an overlay of this machine's, so the install's files land in
the world and nowhere else. `make install` runs inside it, from the checkout
bound read-only, exactly as an administrator runs it: it builds the
virtualenv from the hashed lock file, installs the unit, bus policy,
activation file and polkit actions, creates the account and reloads
systemd and the bus. The Debian package is built once on the host with
`make deb` (while the world's installs run) and installed and purged with
apt inside the world.

What is shown, each time with the installed vpnctl talking to the
installed daemon: a client's first call starts vpnd by bus activation, and
`systemctl start` starts it too; an upgrade over a running vpnd with a
tunnel up keeps the servers and their authorization and ends with the new
daemon running, while the tunnel goes down with the old daemon (openvpn's
unit is bound to the daemon's); removing leaves the state directory, purging
removes it, and a list of the world's files before and after shows nothing
else left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import vpnd
from tests.e2e.test_vpnd import tun_devices
from tests.lab.daemon import ping
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.require import missing, require_account, require_tool
from tests.lab.systemd import REPO, SystemdWorld, available, python_binds

pytestmark = pytest.mark.e2e

OPENVPN_USER = "vpnd-openvpn"
UNIT = "vpnd.service"
STATE_DIR = "/var/lib/vpnd"
CA_FILE = "/etc/vpnd/lab-ca.pem"
# What `make install` puts on the PATH is in /usr/local/bin, which the
# world's minimal PATH lacks and a login shell has.
LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OLD_VERSION = "0.0.9"
INSTALL_TIMEOUT = 600.0
# Written by the world's own services while the tests run, whatever is
# installed: the journal, systemd's records, the private /tmp of units.
VOLATILE = ("/var/log/journal", "/var/lib/systemd", "/var/tmp/systemd-private-*")
# The bookkeeping of dpkg, apt and PackageKit (which apt's hook wakes); what
# dpkg says about vpnd is checked apart.
PACKAGE_RECORDS = ("/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt", "/var/cache/debconf",
                   "/var/log/apt", "/var/log/dpkg.log", "/var/lib/PackageKit")  # fmt: skip
LOCAL_FILES = {
    "/etc/dbus-1/system.d/org.vpnd.Daemon.conf",
    "/etc/xdg/autostart/vpnd-notify.desktop",
    "/usr/local/bin/vpnctl",
    "/usr/local/bin/vpnd",
    "/usr/local/lib/systemd/system/vpnd.service",
    "/usr/local/lib/systemd/user/vpnd-notify.service",
    "/usr/local/lib/sysusers.d/vpnd.conf",
    "/usr/local/lib/vpnd/installed-files",
    "/usr/local/share/dbus-1/interfaces/org.vpnd.Daemon.xml",
    "/usr/local/share/dbus-1/system-services/org.vpnd.Daemon.service",
    "/usr/local/share/doc/vpnd/credential.conf",
    "/usr/local/share/bash-completion/completions/vpnctl",
    "/usr/local/share/zsh/vendor-completions/_vpnctl",
    "/usr/local/share/man/man1/vpnctl.1.gz",
    "/usr/share/polkit-1/actions/org.vpnd.policy",
}


# --- the world and what runs in it ---


def snapshot(world: SystemdWorld, ignore: tuple[str, ...] = VOLATILE) -> set[str]:
    """Every path on the world's root file system with its type and mode, less `ignore`.

    /proc, /sys, /dev, /run, /tmp and the host paths bound in are other file
    systems, which -xdev leaves out.
    """
    pruned: list[str] = []
    for pattern in ignore:
        pruned += ["-o", "-path", pattern]
    out = world.run(
        "find", "/", "-xdev", "(", *pruned[1:], ")", "-prune", "-o", "-printf", r"%y %m %p\n",
        timeout=120,
    ).stdout  # fmt: skip
    return set(out.splitlines())


def paths(entries: set[str]) -> set[str]:
    """The paths of `snapshot` entries."""
    return {entry.split(" ", 2)[2] for entry in entries}


@dataclass
class Installed:
    """The world with what a test installed, seen from inside."""

    world: SystemdWorld
    env: dict[str, str]

    def vpnctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The installed vpnctl, run in the world as root with the lab's browser."""
        return self.world.run("vpnctl", *args, env=self.env, check=check, timeout=120)

    def status(self) -> dict[str, object]:
        """`vpnctl status --json`."""
        data: dict[str, object] = json.loads(self.vpnctl("status", "--json").stdout)
        return data

    def servers(self) -> list[dict[str, object]]:
        """`vpnctl list --json`."""
        data: list[dict[str, object]] = json.loads(self.vpnctl("list", "--json").stdout)
        return data

    def show(self, prop: str, unit: str = UNIT) -> str:
        """One property of a unit, as `systemctl show` prints it."""
        return self.world.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def active(self) -> bool:
        """Whether vpnd.service is active."""
        return self.world.systemctl("is-active", UNIT, check=False).stdout.strip() == "active"

    def enabled(self) -> str:
        """`systemctl is-enabled vpnd.service`."""
        return self.world.systemctl("is-enabled", UNIT, check=False).stdout.strip()

    def main_pid(self) -> int:
        """The daemon's pid in the world."""
        return int(self.show("MainPID"))

    def version(self) -> str:
        """The running daemon's Version property (this call starts it if it is not running)."""
        out = self.world.run(
            "busctl", "--system", "get-property", "org.vpnd.Daemon", "/org/vpnd/Daemon",
            "org.vpnd.Manager1", "Version",
        ).stdout  # fmt: skip
        match = re.fullmatch(r's "(.*)"\n', out)
        assert match, out
        return match[1]

    def openvpn_units(self) -> list[str]:
        """The active openvpn units of the daemon."""
        out = self.world.systemctl(
            "list-units", "--plain", "--no-legend", "vpnd-openvpn-*.service"
        ).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def exists(self, path: str) -> bool:
        """Whether `path` exists in the world."""
        return self.world.run("test", "-e", path, check=False).returncode == 0

    def make(self, source: Path, *args: str) -> str:
        """`make -C source ARGS` in the world, as an administrator runs it; its output."""
        started = time.monotonic()
        result = self.world.run(
            "make", "-C", str(source), *args, env=self.env, timeout=INSTALL_TIMEOUT
        )
        print(f"make {' '.join(args)}: {time.monotonic() - started:.1f} s")
        return result.stdout


def release(directory: Path) -> Path:
    """What `make install` reads of this checkout, copied as it is now.

    Other work in the checkout while the tests run then changes nothing
    between the installs.
    """
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy2(REPO / name, directory / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("daemon", "client", "data"):
        shutil.copytree(REPO / name, directory / name, ignore=ignore)
    return directory


def old_release(directory: Path) -> Path:
    """This checkout as an older release, OLD_VERSION, for the upgrade."""
    release(directory)
    for path, name in (
        (directory / "pyproject.toml", "version"),
        (directory / "daemon" / "vpnd" / "__init__.py", "__version__"),
    ):
        text, count = re.subn(
            rf'(?m)^{name} = "[^"]+"$', f'{name} = "{OLD_VERSION}"', path.read_text()
        )
        assert count == 1, path
        path.write_text(text)
    return directory


class DebBuild:
    """`make deb`, started at once in the background; `path()` waits for its package."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.log = out / "build.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["make", "-C", str(REPO), "deb", f"DEB_OUT={out}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def path(self) -> Path:
        """The package, once built (the build's log on failure)."""
        status = self.process.wait(INSTALL_TIMEOUT)
        log = self.log.read_text(errors="replace")
        assert status == 0, log[-6000:]
        [deb] = self.out.glob("vpnd_*.deb")
        return deb

    def stop(self) -> None:
        """End the build if it still runs, with everything it started."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def deb_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where `make deb` puts the package (bound into the world)."""
    return tmp_path_factory.mktemp("deb")


@pytest.fixture(scope="module")
def deb_build(deb_out: Path, world: Installed) -> Iterator[DebBuild]:
    """The Debian package of this checkout, building in the background.

    Started once the world has booted, so that the two do not compete.
    """
    require_tool("dpkg-buildpackage", "dpkg-dev")
    require_tool("dh", "debhelper")
    build = DebBuild(deb_out)
    yield build
    build.stop()


@pytest.fixture(scope="module")
def old_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An older release of this checkout, to upgrade from."""
    return old_release(tmp_path_factory.mktemp("old-release"))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's release, to upgrade to."""
    return release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def world(
    lab_pki: LabPKI, lab_browser: Path, old_source: Path, source: Path, deb_out: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installed]:  # fmt: skip
    """A systemd world with its system bus up and nothing of vpnd installed.

    It trusts the lab CA (/etc/vpnd, written before anything is installed,
    is the administrator's) and sees the lab's browser, this checkout's
    release and an older one, and where the package will be.
    """
    reason = available()
    if reason is not None:
        missing(reason)
    require_tool("make", "make")
    # The world's /etc/passwd is this machine's; make deps creates the account.
    require_account(OPENVPN_USER)
    binds = [*python_binds(), lab_browser.parent, lab_pki.ca_path.parent, old_source, source,
             deb_out]  # fmt: skip
    files: dict[str, str | bytes] = {
        CA_FILE: lab_pki.ca_path.read_bytes(),
        "/etc/vpnd/vpnd.toml": f'ca_file = "{CA_FILE}"\nlog_level = "debug"\n',
    }
    with SystemdWorld(tmp_path_factory.mktemp("world"), files=files, binds=binds) as world:
        # A container image's policy-rc.d keeps maintainer scripts from
        # starting or stopping services; a machine has none.
        world.run("rm", "-f", "/usr/sbin/policy-rc.d")
        world.start_system_bus()
        env = {"PATH": LOGIN_PATH, "BROWSER": str(lab_browser), "LANG": "C.UTF-8"}
        yield Installed(world, env)


@pytest.fixture(scope="module")
def before(world: Installed) -> set[str]:
    """The world's files before anything of vpnd is installed."""
    return snapshot(world.world)


@pytest.fixture(scope="module")
def local_install(world: Installed, before: set[str], old_source: Path, deb_build: DebBuild) -> str:
    """The older release installed with `make install`; its output.

    `deb_build` is asked for here so that the package builds meanwhile.
    """
    return world.make(old_source, "install")


def tunnel_devices(address: str) -> set[str]:
    """The tun devices (as `tun_devices` names them) that carry `address`."""
    out = subprocess.run(
        ["ip", "-o", "-4", "address", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {
        f"{line.split()[0].rstrip(':')}:{line.split()[1]}"
        for line in out.splitlines()
        if f" inet {address}/" in line
    } & tun_devices()


def connect(installed: Installed, portal: TestPortal) -> None:
    """The lab portal added (once), logged in to and connected with the installed vpnctl."""
    if not installed.servers():
        installed.vpnctl("add", portal.base_url)
        installed.vpnctl("login", portal.host)
    installed.vpnctl("connect", portal.host, "--profile", "employees")
    assert installed.status()["state"] == "connected"


# --- make install, upgrade, uninstall ---


def test_install_puts_each_file_where_its_reader_looks(
    world: Installed, local_install: str
) -> None:
    manifest = world.world.read_file("/usr/local/lib/vpnd/installed-files").splitlines()
    assert {line[2:] for line in manifest if line.startswith("f ")} == LOCAL_FILES
    assert "t /usr/local/lib/vpnd" in manifest
    # systemd, the bus and polkit find what they read, naming the installed daemon.
    unit = world.world.systemctl("cat", UNIT).stdout
    assert unit.startswith("# /usr/local/lib/systemd/system/vpnd.service\n"), unit[:200]
    assert "\nExecStart=/usr/local/bin/vpnd\n" in unit
    activation = world.world.read_file(
        "/usr/local/share/dbus-1/system-services/org.vpnd.Daemon.service"
    )
    assert "\nExec=/usr/local/bin/vpnd\n" in activation
    action = world.world.run("pkaction", "--action-id", "org.vpnd.connect", "--verbose").stdout
    assert "Connect this machine to a VPN" in action
    # The commands are on the PATH, from a virtualenv of their own on the
    # system's Python, which holds what the daemon needs and no test tool.
    assert world.world.run("vpnd", "--version", env=world.env).stdout == f"vpnd {OLD_VERSION}\n"
    assert world.vpnctl("--version").stdout == f"vpnctl {OLD_VERSION}\n"
    python = "/usr/local/lib/vpnd/bin/python"
    prefixes = world.world.run(python, "-c", "import sys; print(sys.prefix, sys.base_prefix)")
    assert prefixes.stdout.split() == ["/usr/local/lib/vpnd", "/usr"]
    for module in ("pytest", "mypy", "hypothesis"):
        assert world.world.run(python, "-c", f"import {module}", check=False).returncode == 1
    assert world.world.run("getent", "passwd", OPENVPN_USER).returncode == 0
    # Nothing enabled or started: the next step is printed instead.
    assert world.enabled() == "disabled"
    assert not world.active()
    assert "systemctl enable --now vpnd" in local_install


def test_a_clients_first_call_starts_it_by_bus_activation(
    world: Installed, local_install: str
) -> None:
    world.world.systemctl("stop", UNIT)
    assert not world.active()
    world.vpnctl("list")
    assert world.active()
    cmdline = world.world.read_file(f"/proc/{world.main_pid()}/cmdline").split("\0")
    assert cmdline[:2] == ["/usr/local/lib/vpnd/bin/python", "/usr/local/bin/vpnd"]
    assert world.version() == OLD_VERSION


def test_systemctl_start_starts_it(world: Installed, local_install: str) -> None:
    world.world.systemctl("stop", UNIT)
    assert not world.active()
    world.world.systemctl("start", UNIT)
    assert world.active()
    pid = world.main_pid()
    world.vpnctl("list")
    assert world.main_pid() == pid


def test_an_upgrade_keeps_servers_and_authorization_and_runs_the_new_daemon(
    world: Installed, local_install: str, source: Path, portal: TestPortal,
    openvpn_lab: OpenVPNLab,
) -> None:  # fmt: skip
    tuns_before = tun_devices()
    connect(world, portal)
    assert ping(openvpn_lab.tunnel_gateway_udp)
    # Other test sessions may bring tun devices up and down meanwhile: ours
    # is the new one that carries the tunnel's address.
    ours = tunnel_devices(str(world.status()["tunnel_ip"])) - tuns_before
    assert len(ours) == 1, ours
    servers, pid = world.servers(), world.main_pid()
    assert servers[0]["authorized"] is True, servers

    out = world.make(source, "install")

    assert "stopping the running vpnd for the upgrade" in out
    assert f"vpnd {vpnd.__version__} runs" in out
    assert world.active() and world.main_pid() != pid
    assert world.version() == vpnd.__version__ != OLD_VERSION
    # The tunnel went down with the old daemon (openvpn's unit is bound to
    # it); the new one reports that truly, and knows every server and login.
    assert world.openvpn_units() == []
    assert not ours & tun_devices()
    assert world.status()["state"] != "connected"
    assert world.servers() == servers
    world.vpnctl("connect", portal.host, "--profile", "employees")
    assert world.status()["state"] == "connected"
    assert ping(openvpn_lab.tunnel_gateway_udp)
    assert portal.token_grants.count("authorization_code") <= 1  # the login before the upgrade
    world.vpnctl("disconnect")


def test_the_same_install_again_enables_it_and_leaves_a_tunnel_alone(
    world: Installed, local_install: str, source: Path, portal: TestPortal
) -> None:
    connect(world, portal)
    pid, openvpn = world.main_pid(), world.openvpn_units()

    out = world.make(source, "install", "ENABLE=1")

    assert "/usr/local/lib/vpnd is up to date" in out
    assert world.enabled() == "enabled"
    assert world.main_pid() == pid
    assert world.openvpn_units() == openvpn
    assert world.status()["state"] == "connected"
    world.vpnctl("disconnect")


def test_uninstall_removes_what_install_added_and_purge_the_state(
    world: Installed, local_install: str, source: Path, before: set[str]
) -> None:
    assert world.exists(STATE_DIR)

    out = world.make(source, "uninstall")

    assert "kept /var/lib/vpnd" in out
    assert not world.active()
    assert world.world.systemctl("cat", UNIT, check=False).returncode != 0
    assert not world.exists(f"/etc/systemd/system/multi-user.target.wants/{UNIT}")
    assert world.world.run("sh", "-c", "command -v vpnctl", env=world.env,
                           check=False).returncode != 0  # fmt: skip
    after = snapshot(world.world)
    assert before - after == set(), "removed what was there before"
    left = paths(after - before)
    assert STATE_DIR in left
    assert {path for path in left if not path.startswith(f"{STATE_DIR}/")} == {STATE_DIR}

    out = world.make(source, "uninstall", "PURGE=1")

    assert "removed /var/lib/vpnd" in out
    after = snapshot(world.world)
    assert (sorted(after - before), sorted(before - after)) == ([], [])


# --- the Debian package ---


def apt(world: Installed, *args: str) -> str:
    """apt in the world, as an administrator runs it; its output."""
    env = {**world.env, "DEBIAN_FRONTEND": "noninteractive"}
    return world.world.run("apt", "-y", *args, env=env, timeout=INSTALL_TIMEOUT).stdout


@pytest.fixture(scope="module")
def before_package(world: Installed) -> set[str]:
    """The world's files before the package is installed, dpkg's records aside."""
    return snapshot(world.world, VOLATILE + PACKAGE_RECORDS)


@pytest.fixture(scope="module")
def package(world: Installed, deb_build: DebBuild, before_package: set[str]) -> Path:
    """The package, installed with `apt install ./vpnd_*.deb`."""
    deb = deb_build.path()
    apt(world, "install", str(deb))
    return deb


def test_the_package_installs_where_debian_puts_things(world: Installed, package: Path) -> None:
    unit = world.world.systemctl("cat", UNIT).stdout
    assert unit.startswith("# /lib/systemd/system/vpnd.service\n"), unit[:200]
    assert "\nExecStart=/usr/bin/vpnd\n" in unit
    for path in (
        "/usr/lib/sysusers.d/vpnd.conf",
        "/usr/share/dbus-1/system.d/org.vpnd.Daemon.conf",
        "/usr/share/dbus-1/system-services/org.vpnd.Daemon.service",
        "/usr/share/polkit-1/actions/org.vpnd.policy",
        "/usr/share/bash-completion/completions/vpnctl",
        "/usr/share/zsh/vendor-completions/_vpnctl",
        "/usr/share/man/man1/vpnctl.1.gz",
        "/usr/lib/systemd/user/vpnd-notify.service",
        "/etc/xdg/autostart/vpnd-notify.desktop",
    ):
        assert world.exists(path), path
    assert world.world.run("readlink", "-f", "/usr/bin/vpnctl").stdout == (
        "/usr/lib/vpnd/bin/vpnctl\n"
    )
    assert world.enabled() == "disabled"
    assert not world.active()
    # make install and uninstall keep their hands off the package's files.
    refused = world.world.run("make", "-C", str(REPO), "install", env=world.env, check=False)
    assert refused.returncode != 0
    assert "the Debian package vpnd is installed" in refused.stderr
    refused = world.world.run("make", "-C", str(REPO), "uninstall", "PREFIX=/usr",
                              env=world.env, check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "belongs to the Debian package vpnd" in refused.stderr
    refused = world.world.run("make", "-C", str(REPO), "uninstall", "PURGE=1",
                              env=world.env, check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "apt purge vpnd removes it" in refused.stderr
    assert world.exists("/usr/lib/vpnd/bin/vpnd")


def test_the_packaged_vpnctl_starts_the_packaged_daemon_and_upgrades_keep_state(
    world: Installed, package: Path, portal: TestPortal
) -> None:
    world.vpnctl("add", portal.base_url)
    world.vpnctl("login", portal.host)
    assert world.active()
    cmdline = world.world.read_file(f"/proc/{world.main_pid()}/cmdline").split("\0")
    assert cmdline[:2] == ["/usr/lib/vpnd/bin/python", "/usr/bin/vpnd"]
    servers, pid = world.servers(), world.main_pid()
    assert servers[0]["authorized"] is True, servers

    # The upgrade path of the maintainer scripts: stopped before the files
    # are replaced, started again because it was running.
    apt(world, "install", "--reinstall", str(package))

    assert world.active() and world.main_pid() != pid
    assert world.servers() == servers
    assert world.version() == vpnd.__version__


def test_remove_keeps_the_state_and_purge_leaves_nothing(
    world: Installed, package: Path, before_package: set[str]
) -> None:
    apt(world, "remove", "vpnd")

    assert not world.active()
    assert not world.exists("/usr/lib/vpnd")
    assert world.exists(f"{STATE_DIR}/store.key")
    status = world.world.run("dpkg-query", "-W", "-f", "${Status}", "vpnd").stdout
    assert status == "deinstall ok config-files"

    apt(world, "purge", "vpnd")

    assert world.world.run("dpkg-query", "-W", "vpnd", check=False).returncode != 0
    leftovers = world.world.run("sh", "-c", "ls /var/lib/dpkg/info/vpnd.* 2>/dev/null",
                                check=False).stdout  # fmt: skip
    assert leftovers == ""
    after = snapshot(world.world, VOLATILE + PACKAGE_RECORDS)
    assert (sorted(after - before_package), sorted(before_package - after)) == ([], [])


def test_the_package_version_is_the_projects() -> None:
    changelog = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"vpnd \(([^)]+)\) \S+; urgency=\S+", changelog)
    assert match, changelog
    with (REPO / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    assert match[1] == project["version"] == vpnd.__version__
