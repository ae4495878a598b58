"""The systemd test world boots a real systemd as PID 1 and leaves the host as it found it.

Booting systemd on the host's own root once wiped the host's /tmp. These
tests hold the world to what its module promises: systemd runs and works
(units, D-Bus, transient units with capabilities, the tun device), and
nothing it does reaches the host's files, mounts, processes or cgroups, even
when its boot fails or the test process dies under it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jeepney import DBus
from jeepney.io.blocking import open_dbus_connection

from tests.lab.accounts import declared_home
from tests.lab.require import missing, require_account
from tests.lab.systemd import (
    REPO,
    SystemdWorld,
    WorldCommandError,
    WorldError,
    available,
    cgroup2_root,
    python_binds,
    reap_stale_worlds,
)

pytestmark = pytest.mark.e2e

OPENVPN_USER = "vpnd-openvpn"
CAP_NET_ADMIN = 1 << 12
CAP_SYS_ADMIN = 1 << 21
# Capability numbers of the powers over the whole machine the world must not have.
KERNEL_GLOBAL_CAPS = {
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_TIME": 25,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
}


def require_world() -> None:
    """Skip (fail under CI) unless a systemd world can boot here."""
    reason = available()
    if reason is not None:
        missing(reason)


def status_field(text: str, name: str) -> str:
    """One field of a /proc/PID/status text."""
    match = re.search(rf"^{name}:\s*(\S+)", text, re.MULTILINE)
    assert match, f"no {name} in {text!r}"
    return match.group(1)


def world_mounts(workdir: Path) -> list[str]:
    """Host mounts a world could have leaked: overlays, and anything under its workdir.

    Other test sessions may mount and unmount their own things meanwhile (the
    openvpn lab's network namespaces), so the whole table is not compared.
    """
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype == "overlay" or str(workdir) in line:
            found.append(line)
    return found


def processes_in_pidns(inode: int) -> list[int]:
    """Host pids of the processes living in the pid namespace with that inode."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "ns" / "pid").stat().st_ino == inode:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def our_cgroups() -> set[str]:
    """Names of the world cgroups this test process owns."""
    root = cgroup2_root()
    assert root is not None
    return {path.name for path in root.glob(f"vpnd-world-{os.getpid()}-*")}


def parent_of(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children_of_this_process() -> set[int]:
    """Host pids of this process's children (the module's world holds one)."""
    return {
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and parent_of(entry.name) == os.getpid()
    }


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def host_marker() -> Iterator[Path]:
    """A file in the host's /tmp, made before any world boots: it must outlive them all."""
    path = Path("/tmp") / f"vpnd-world-marker-{os.getpid()}-{secrets.token_hex(4)}"
    path.write_text("the host's /tmp\n")
    month_ago = time.time() - 30 * 86400
    os.utime(path, (month_ago, month_ago))
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory under /tmp, bound writable into the world (as tests' temp dirs are)."""
    path = tmp_path_factory.mktemp("shared")
    (path / "canary").write_text("from the host\n")
    (path / "deeper").mkdir()
    (path / "deeper" / "canary").write_text("from the host, deeper\n")
    return path


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, host_marker: Path, shared_dir: Path
) -> Iterator[SystemdWorld]:
    """One world for the module, with the checkout, its Python and `shared_dir` bound in."""
    require_world()
    assert host_marker.exists()
    with SystemdWorld(
        tmp_path_factory.mktemp("world"),
        files={"/etc/vpnd-world-test": "seeded before boot\n"},
        symlinks={"/etc/systemd/system/pcscd.socket": "/dev/null"},
        binds=python_binds(),
        writable_binds=[shared_dir],
    ) as world:
        yield world


@pytest.fixture(scope="module")
def system_bus(world: SystemdWorld) -> str:
    """The world's system bus, started once (this also brings up sysinit.target)."""
    return world.start_system_bus()


# --- it is systemd, and it boots ---


def test_boots_systemd_as_pid_1(world: SystemdWorld) -> None:
    state = world.systemctl("is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded"), world.systemctl("--failed").stdout
    assert world.read_file("/proc/1/comm").strip() == "systemd"
    assert "--unit=lab.target" in world.read_file("/proc/1/cmdline").replace("\0", " ")
    assert world.run("systemd-detect-virt", "--container").stdout.strip() == "container-other"
    assert world.systemctl("is-active", "lab.target").stdout.strip() == "active"
    # The world's pid namespace holds its own processes only, not ours: this
    # test process is not among them. (How many the world runs depends on
    # the units this machine's systemd brings, so it is not counted.)
    processes = world.run("ps", "-e", "-o", "pid=,args=").stdout.splitlines()
    assert processes, "ps in the world saw nothing"
    assert not [line for line in processes if "pytest" in line], processes
    assert Path(f"/proc/{world.pid}/exe").readlink().name == "systemd"
    assert "Startup finished" in world.console_log.read_text()
    # systemd has its cgroup to itself: unshare, waiting outside, was moved out.
    assert (world.cgroup / "cgroup.procs").read_text() == ""
    assert (world.cgroup / "init.scope" / "cgroup.procs").read_text().split() == [str(world.pid)]


def test_files_and_symlinks_are_in_place_before_boot(world: SystemdWorld) -> None:
    assert world.read_file("/etc/vpnd-world-test") == "seeded before boot\n"
    assert world.systemctl("is-enabled", "pcscd.socket", check=False).stdout.strip() == "masked"
    assert world.read_file("/etc/machine-id").strip() == world.machine_id
    assert not Path("/etc/vpnd-world-test").exists()


def test_kernel_global_capabilities_are_gone(world: SystemdWorld) -> None:
    for pid in ("1", "self"):
        bounding = int(status_field(world.read_file(f"/proc/{pid}/status"), "CapBnd"), 16)
        for name, bit in KERNEL_GLOBAL_CAPS.items():
            assert not bounding & (1 << bit), f"{name} is in the bounding set of {pid}"
        assert bounding & CAP_NET_ADMIN
        assert bounding & CAP_SYS_ADMIN, "systemd needs it to sandbox units"


# --- nothing it writes reaches the host ---


def test_writes_stay_in_the_world(world: SystemdWorld) -> None:
    name = f"vpnd-world-{secrets.token_hex(4)}"
    paths = [f"/tmp/{name}", f"/etc/{name}", f"/var/lib/{name}/state", f"/root/{name}"]
    for path in paths:
        world.write_file(path, "written in the world\n")
    world.run("sh", "-c", f"echo more > /var/tmp/{name}")
    for path in [*paths, f"/var/tmp/{name}"]:
        assert world.read_file(path).startswith(("written", "more"))
        assert not Path(path).exists(), f"{path} leaked to the host"
    assert not Path(f"/var/lib/{name}").exists()


def test_the_hosts_tmp_is_not_the_worlds(world: SystemdWorld, host_marker: Path) -> None:
    assert host_marker.exists()
    assert world.run("test", "-e", str(host_marker), check=False).returncode == 1
    assert world.run("stat", "-f", "-c", "%T", "/tmp").stdout.strip() == "tmpfs"
    assert world.run("stat", "-f", "-c", "%T", "/").stdout.strip() == "overlayfs"


def test_boot_time_tmpfiles_cleaned_only_the_worlds_tmp(
    world: SystemdWorld, system_bus: str, host_marker: Path, shared_dir: Path
) -> None:
    # What wiped the host's /tmp once: systemd-tmpfiles-setup at boot (here
    # pulled in by dbus.service through sysinit.target). It ran, in the world.
    show = world.systemctl(
        "show", "-p", "ActiveState", "-p", "Result", "systemd-tmpfiles-setup.service"
    ).stdout
    assert "ActiveState=active" in show and "Result=success" in show, show
    # It tried to empty /tmp and stopped at the bind of `shared_dir`.
    log = world.journal("systemd-tmpfiles-setup.service")
    assert "rm_rf(/tmp): Directory not empty" in log, log
    assert host_marker.read_text() == "the host's /tmp\n"
    assert (shared_dir / "canary").read_text() == "from the host\n"
    assert (shared_dir / "deeper" / "canary").read_text() == "from the host, deeper\n"


def test_tmpfiles_again_cleans_only_the_worlds_tmp(
    world: SystemdWorld, host_marker: Path, shared_dir: Path
) -> None:
    world.write_file("/tmp/world-junk", "cleaned at boot\n")
    # The boot-time clean-up once more, and the age-based one (the marker
    # is a month old).
    tmpfiles = world.run("systemd-tmpfiles", "--create", "--remove", "--clean", "--boot",
                         check=False)  # fmt: skip
    assert "rm_rf(/tmp): Directory not empty" in tmpfiles.stderr
    assert world.run("test", "-e", "/tmp/world-junk", check=False).returncode == 1
    assert host_marker.read_text() == "the host's /tmp\n"
    assert (shared_dir / "canary").read_text() == "from the host\n"
    assert (shared_dir / "deeper" / "canary").read_text() == "from the host, deeper\n"
    assert world.read_file(str(shared_dir / "canary")) == "from the host\n"


# --- what the tests need from the host is there ---


def test_bound_paths_are_visible_and_readonly_unless_asked(
    world: SystemdWorld, shared_dir: Path
) -> None:
    assert world.read_file(str(REPO / "README.md")) == (REPO / "README.md").read_text()
    python = REPO / ".venv" / "bin" / "python"
    out = world.run(str(python), "-c", "import vpnd, sys; print(vpnd.__file__, sys.prefix)")
    module, prefix = out.stdout.split()
    assert module.startswith(f"{REPO}/") and prefix == str(REPO / ".venv")
    with pytest.raises(WorldCommandError, match="Read-only file system"):
        world.run("touch", str(REPO / "written-by-the-world"))
    assert not (REPO / "written-by-the-world").exists()

    world.write_file(str(shared_dir / "from-world"), "hello host\n")
    try:
        assert (shared_dir / "from-world").read_text() == "hello host\n"
    finally:
        (shared_dir / "from-world").unlink()


# --- systemd works: units, D-Bus, transient units ---


def test_system_bus_answers_inside_and_from_the_host(world: SystemdWorld, system_bus: str) -> None:
    names = world.run("busctl", "--system", "list", "--no-legend").stdout
    assert "org.freedesktop.systemd1" in names
    with open_dbus_connection(bus=system_bus) as conn:
        reply = conn.send_and_get_reply(DBus().NameHasOwner("org.freedesktop.systemd1"))
        assert reply.body == (True,)


def require_openvpn_user(world: SystemdWorld) -> None:
    # The world's /etc is the host's, seen through an overlay.
    require_account(OPENVPN_USER)
    assert world.run("id", OPENVPN_USER, check=False).returncode == 0


def test_run_as_a_user(world: SystemdWorld) -> None:
    require_openvpn_user(world)
    out = world.run("sh", "-c", 'id -un; echo "$HOME $GREETING"; grep CapEff /proc/self/status',
                    user=OPENVPN_USER, env={"GREETING": "hi"})  # fmt: skip
    lines = out.stdout.splitlines()
    # The home the sysusers file declares, which is the only way the account is made.
    assert lines[:2] == [OPENVPN_USER, f"{declared_home(OPENVPN_USER)} hi"]
    assert int(status_field(lines[2], "CapEff"), 16) == 0


def test_transient_unit_with_net_admin_makes_a_tun_device(
    world: SystemdWorld, system_bus: str
) -> None:
    require_openvpn_user(world)
    device = f"vw{os.getpid() % 100000}{secrets.token_hex(2)}"[:15]
    script = (
        "id -un; grep CapEff /proc/self/status; exec 3<>/dev/net/tun && echo tun-opened; "
        f"ip tuntap add dev {device} mode tun"
    )
    try:
        out = world.run(
            "systemd-run", "--wait", "--pipe", "--quiet", "--collect",
            "-p", f"User={OPENVPN_USER}",
            "-p", "AmbientCapabilities=CAP_NET_ADMIN",
            "-p", "CapabilityBoundingSet=CAP_NET_ADMIN",
            "sh", "-c", script,
        )  # fmt: skip
        lines = out.stdout.splitlines()
        assert lines[0] == OPENVPN_USER
        assert int(status_field(lines[1], "CapEff"), 16) == CAP_NET_ADMIN
        assert "tun-opened" in lines
        # The world shares the host's network: the device is the host's too.
        assert Path("/sys/class/net", device).exists()
        world.run(
            "systemd-run", "--wait", "--pipe", "--quiet", "--collect",
            "-p", f"User={OPENVPN_USER}",
            "-p", "AmbientCapabilities=CAP_NET_ADMIN",
            "-p", "CapabilityBoundingSet=CAP_NET_ADMIN",
            "ip", "tuntap", "del", "dev", device, "mode", "tun",
        )  # fmt: skip
        assert not Path("/sys/class/net", device).exists()
    finally:
        if Path("/sys/class/net", device).exists():
            subprocess.run(["ip", "link", "del", device], check=False)


def test_journal_holds_the_worlds_units(world: SystemdWorld, system_bus: str) -> None:
    token = f"hello-from-the-world-{secrets.token_hex(4)}"
    world.run("systemd-run", "--wait", "--quiet", "--unit", "lab-echo", "echo", token)
    assert wait_until(lambda: token in world.journal("lab-echo.service"))
    assert token not in world.journal("dbus.service")


# --- teardown and failures leave nothing behind ---


def test_teardown_leaves_nothing(
    tmp_path: Path, host_marker: Path, shared_dir: Path, world: SystemdWorld
) -> None:
    mounts, before = world_mounts(tmp_path), our_cgroups()
    second = SystemdWorld(tmp_path / "second", writable_binds=[shared_dir])
    second.start()
    try:
        pid, cgroup = second.pid, second.cgroup
        pidns = Path(f"/proc/{pid}/ns/pid").stat().st_ino
        # A second world at once: its own PID 1, cgroup and files.
        assert pid != world.pid and cgroup != world.cgroup
        second.write_file("/etc/only-in-second", "2\n")
        assert world.run("test", "-e", "/etc/only-in-second", check=False).returncode == 1
        # Long-lived things inside, as a daemon under test would be.
        second.start_system_bus()
        second.run("systemd-run", "--unit", "lab-sleeper", "sleep", "1000")
        # Exits 73: it could not empty /tmp, whose bind it left alone.
        second.run("systemd-run", "--wait", "--quiet", "systemd-tmpfiles", "--remove", "--boot",
                   check=False)  # fmt: skip
        assert len(processes_in_pidns(pidns)) >= 4  # systemd, journald, dbus, sleep
        assert cgroup.is_dir() and any(cgroup.rglob("lab-sleeper.service"))
        # Its mounts live in its own namespace only, even while it runs.
        assert world_mounts(tmp_path) == mounts
    finally:
        second.stop()
    assert not second.running
    assert processes_in_pidns(pidns) == []
    assert not cgroup.exists()
    assert our_cgroups() == before
    assert world_mounts(tmp_path) == mounts
    assert host_marker.read_text() == "the host's /tmp\n"
    assert (shared_dir / "canary").exists()
    second.stop()  # twice is fine


def test_failed_setup_raises_with_the_console_and_cleans_up(
    tmp_path: Path, world: SystemdWorld
) -> None:
    mounts, before = world_mounts(tmp_path), our_cgroups()
    children = children_of_this_process()
    broken = SystemdWorld(tmp_path / "broken", symlinks={"/proc/cannot-link-here": "/x"})
    with pytest.raises(WorldError, match="setup failed at line"):
        broken.start()
    assert our_cgroups() == before
    assert world_mounts(tmp_path) == mounts
    assert children_of_this_process() == children
    assert "cannot-link-here" in broken.console_log.read_text()


def test_boot_timeout_cleans_up(tmp_path: Path, world: SystemdWorld) -> None:
    before, children = our_cgroups(), children_of_this_process()
    slow = SystemdWorld(tmp_path / "slow", boot_timeout=0.05)
    with pytest.raises(WorldError, match="did not finish booting"):
        slow.start()
    assert our_cgroups() == before
    assert children_of_this_process() == children


def test_world_dies_with_its_test_process(tmp_path: Path) -> None:
    require_world()
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.lab.systemd import SystemdWorld\n"
        f"world = SystemdWorld(Path({str(tmp_path / 'orphan')!r})).start()\n"
        "print(world.pid, world.cgroup, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pid_text, cgroup_text = owner.stdout.readline().split()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    pid, cgroup = int(pid_text), Path(cgroup_text)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists()), "PID 1 outlived its owner"
    # Nobody tore its cgroup down: the next world's start (here, or in another
    # session running at the same time) reaps it.
    reaped = reap_stale_worlds()
    assert cgroup.name in reaped or not cgroup.exists()
    assert not cgroup.exists()
