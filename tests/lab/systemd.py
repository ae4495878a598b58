"""A real systemd as PID 1 of a throw-away world, for testing vpnd under the init it ships for.

The machines the tests run on need not boot with systemd (a container's PID 1
is often something else), yet `vpnd.service`, D-Bus activation and transient
units only mean something under the real thing. `SystemdWorld` boots the
machine's own `/lib/systemd/systemd` as PID 1 of fresh pid, mount, cgroup,
UTS and IPC namespaces and tears it all down afterwards.

What keeps the host safe. Booting systemd on the host's root once wiped the
host's /tmp (systemd-tmpfiles cleans it at boot), so the world never sees a
writable host file system:

* its root is an overlay whose lower layer is the host's root file system
  and whose upper layer is a tmpfs in a private mount namespace: whatever
  the world writes is gone with the namespace, and the host's own mounts
  (and the mount points below its root) never see it;
* /run, /tmp and /dev are fresh tmpfs; /dev holds only the usual character
  devices and /dev/net/tun, never the host's disks; /sys and /proc/sys are
  read-only;
* kernel-global capabilities (loading modules, setting the clock, rebooting,
  raw I/O, the kernel log, LSM policy) are dropped from the bounding set of
  PID 1 and of every command `run` starts, so nothing in the world has them;
* host paths the tests need (the checkout, its virtualenv, the Python the
  virtualenv points at, a temporary directory) are bind-mounted at the same
  path, read-only unless asked otherwise. systemd-tmpfiles stops at mount
  points, so even a writable bind under the world's /tmp survives its
  clean-up (tests/e2e/test_systemd_world.py checks that);
* /etc/fstab is empty inside, so the world never tries to mount the host's
  file systems.

What is shared on purpose: the network namespace. vpnd in the world must
reach the test portal on the host's 127.0.0.1 and create its tun device on
the host's network, where the tests can see it. A world can therefore change
the host's links and routes, as vpnd on a real machine would.

Every world gets a unique name (`vpnd-world-<pid>-<random>`) for its cgroup,
so two test sessions may each run worlds at once. Teardown kills the whole
pid namespace, waits for it to drain and removes the cgroup tree; a world
whose test process died without tearing down is killed with it (a
parent-death signal) and its cgroup is removed by the next world's start.
The world's processes depend on the thread that started the world: start it
from the main thread (as pytest fixtures are).

Needs root (`available()` says why it cannot run here).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = Path("/lib/systemd/systemd")
LAB_TARGET = "lab.target"
CONTAINER_NAME = "vpnd-lab"
WORLD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"

_TOOLS = ("bash", "unshare", "nsenter", "setpriv", "mount", "umount", "pivot_root", "mknod")
_CGROUP2_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
_NAME_PREFIX = "vpnd-world-"
# Powers over the whole machine that nothing in the world needs. CAP_SYS_RAWIO
# also keeps systemd from mounting configfs and tracefs, CAP_SYS_MODULE and
# CAP_SYS_TIME keep systemd-modules-load and systemd-timesyncd from starting.
_DROPPED_CAPABILITIES = (
    "sys_module",
    "sys_time",
    "sys_boot",
    "sys_rawio",
    "wake_alarm",
    "syslog",
    "mac_admin",
    "mac_override",
)
_BOUNDING_SET = ",".join(f"-{cap}" for cap in _DROPPED_CAPABILITIES)
_LAB_TARGET_UNIT = "[Unit]\nDescription=vpnd test world\nDefaultDependencies=no\n"
_EMPTY_FSTAB = "# The vpnd test world mounts nothing from the host's fstab.\n"
_BOOTED_STATES = ("running", "degraded")
_FAILED_STATES = ("maintenance", "stopping")
_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02

# The host side: runs in the Python process's child. Joins the world's cgroup
# (so the cgroup namespace is rooted there), then makes the namespaces; the
# forked child of unshare is the world's PID 1 and runs the inner script.
# Both die if the Python thread that started them dies (parent-death signals).
_OUTER = """\
set -eu
echo $$ > "$1/cgroup.procs"
# Never make the namespaces anywhere else: systemd would own that cgroup.
grep -qx "0::/.*$(basename "$1")" /proc/self/cgroup
exec setpriv --pdeathsig KILL -- \\
    unshare --pid --fork --kill-child=SIGKILL --mount --propagation private \\
        --cgroup --uts --ipc -- \\
    env -i container={container} PATH={path} bash -c "$2" world-init
"""

# The inner side, PID 1 of the new namespaces until it execs systemd. Built
# up by `_inner_script`; every step must succeed (set -e) or nothing boots.
_INNER_HEAD = """\
set -euo pipefail
trap 'echo "vpnd world: setup failed at line $LINENO" >&2' ERR
B={base}
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs "$B"
mkdir "$B/upper" "$B/work" "$B/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$B/root"
R=$B/root
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
if [ -e "$R/proc/sysrq-trigger" ]; then
    mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
    mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"

# A private /dev: the usual nodes and the tun device, never the host's disks.
# /dev/net/tun is 0666 as udev's default rule makes it on Debian; the host's
# node may be 0600 where no udev runs (containers, this project's CI).
D=$R/dev
mount -t tmpfs -o mode=0755,nosuid tmpfs "$D"
mknod -m 0666 "$D/null" c 1 3
mknod -m 0666 "$D/zero" c 1 5
mknod -m 0666 "$D/full" c 1 7
mknod -m 0666 "$D/random" c 1 8
mknod -m 0666 "$D/urandom" c 1 9
mknod -m 0666 "$D/tty" c 5 0
mkdir -m 0755 "$D/pts" "$D/net"
mkdir -m 1777 "$D/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$D/pts"
ln -s pts/ptmx "$D/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$D/shm"
mknod -m 0666 "$D/net/tun" c 10 200
ln -s /proc/self/fd "$D/fd"
ln -s /proc/self/fd/0 "$D/stdin"
ln -s /proc/self/fd/1 "$D/stdout"
ln -s /proc/self/fd/2 "$D/stderr"
# PID 1 logs to /dev/console: the host's pty that feeds console.log.
touch "$D/console"
mount --bind {console} "$D/console"

mkdir -p "$R/oldroot"
cd "$R"
pivot_root . oldroot
cd /
# From here on every path is the world's: host paths are under /oldroot.
"""

_INNER_TAIL = """\
umount -l /oldroot
rmdir /oldroot
# Shared propagation inside the world, as systemd sets up itself when the
# kernel starts it (it leaves it to container managers otherwise): mounts
# that systemd makes in a child namespace (the credentials of units) must
# reach PID 1. The peer groups are new, so nothing reaches the host.
mount --make-rshared /
# The last guard before systemd: the root must be the overlay, /tmp a tmpfs.
[ "$(stat -f -c %T /)" = overlayfs ]
[ "$(stat -f -c %T /tmp)" = tmpfs ]
# Wait until the host has moved unshare out of the cgroup that is now our
# root, so systemd may enable controllers there (no processes in inner
# nodes). mapfile is a builtin: no child of ours shows up in the list.
for _ in {{1..100}}; do
    mapfile -t procs < /sys/fs/cgroup/cgroup.procs
    [ "${{procs[*]}}" = 1 ] && break
    sleep 0.05
done
exec setpriv --bounding-set {bounding} -- {systemd} --system --unit={target} \\
    --log-target=console
"""


class WorldError(RuntimeError):
    """The world could not be booted, or is not running."""


class WorldCommandError(subprocess.CalledProcessError):
    """A command run inside the world failed; its message carries the output."""

    def __str__(self) -> str:
        text = super().__str__()
        for name, value in (("stdout", self.stdout), ("stderr", self.stderr)):
            if value:
                text += f"\n{name}:\n{value.strip()}"
        return text


@dataclass(frozen=True)
class WorldFile:
    """A file to put into the world before it boots, with its mode."""

    content: str | bytes
    mode: int = 0o644

    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (hybrid hosts: .../unified), if anywhere."""
    mounts: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            separator = fields.index("-")
            mounts[fields[4]] = fields[separator + 1]
    for candidate in _CGROUP2_MOUNTS:
        if mounts.get(str(candidate)) == "cgroup2":
            return candidate
    return None


def available() -> str | None:
    """Why a world cannot be booted on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "booting systemd in a namespace needs root"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing (Debian package systemd)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (Debian package util-linux)"
    if cgroup2_root() is None:
        return "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if not re.search(r"\boverlay$", filesystems, re.MULTILINE):
        return "the kernel has no overlay file system"
    return None


def python_binds() -> list[Path]:
    """What the world needs to run this checkout's code with this interpreter.

    The checkout, the virtualenv (when it lives elsewhere) and the Python
    installation the virtualenv was made from: pass them as `binds`.
    """
    paths = [REPO]
    for prefix in (Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()):
        if not any(prefix.is_relative_to(path) for path in paths):
            paths.append(prefix)
    return paths


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (this kernel may lack /proc/PID/task/*/children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _own_cgroup(root: Path) -> Path:
    """The cgroup v2 directory this process is in."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    return root


def _kill_cgroup(path: Path) -> None:
    """Kill every process in a cgroup tree (cgroup.kill, Linux 5.14 and later)."""
    with contextlib.suppress(OSError):
        (path / "cgroup.kill").write_text("1")


def _remove_cgroup(path: Path, timeout: float) -> None:
    """Remove a cgroup tree, deepest first, retrying while its processes drain."""
    deadline = time.monotonic() + timeout
    while path.exists():
        try:
            for directory, _, _ in os.walk(path, topdown=False):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(directory)
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise WorldError(f"cannot remove cgroup {path}: {exc}") from exc
            _kill_cgroup(path)
            time.sleep(_POLL_INTERVAL)


def reap_stale_worlds(root: Path | None = None) -> list[str]:
    """Remove the cgroups of worlds whose test process is gone; return their names."""
    root = root or cgroup2_root()
    if root is None:
        return []
    reaped = []
    for path in root.glob(f"{_NAME_PREFIX}*"):
        owner = path.name.removeprefix(_NAME_PREFIX).split("-")[0]
        if not owner.isdigit() or int(owner) == os.getpid() or _pid_alive(int(owner)):
            continue
        _kill_cgroup(path)
        with contextlib.suppress(WorldError):
            _remove_cgroup(path, _STOP_TIMEOUT)
            reaped.append(path.name)
    return reaped


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no console output)"


class _Console:
    """A pseudo-terminal standing in for the world's /dev/console, copied to a log file.

    systemd as PID 1 writes its messages to /dev/console, not to the stdout
    it was started with. A pty (what systemd-nspawn gives its containers) is
    the kind of file it can open there without blocking, and without
    overwriting what others wrote, as it would a regular file. Python keeps
    the terminal side open for the world's whole life, so reading never
    fails while the world is between openings of its console, and a thread
    drains it so that a chatty PID 1 never blocks on a full terminal.
    """

    def __init__(self, log_path: Path) -> None:
        self._master, self.terminal = os.openpty()
        attributes = termios.tcgetattr(self.terminal)
        attributes[1] &= ~termios.OPOST  # keep "\n" as it is
        termios.tcsetattr(self.terminal, termios.TCSANOW, attributes)
        self.path = os.ttyname(self.terminal)
        self._log = log_path.open("wb")
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._copy, name="world-console", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                if self._closing.is_set():
                    return
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return
            self._log.write(data.replace(b"\r\n", b"\n"))
            self._log.flush()

    def close(self) -> None:
        """Copy what is left, then close both sides and the log."""
        self._closing.set()
        self._thread.join(5)
        os.close(self.terminal)
        os.close(self._master)
        self._log.close()


class SystemdWorld:
    """systemd as PID 1 of private namespaces on an overlay of the host's root.

    `files` maps absolute paths in the world to their content (str, bytes or
    a `WorldFile` with a mode) and `symlinks` maps absolute paths to link
    targets (for example a unit to /dev/null to mask it); both are put in
    place before systemd starts. `binds` and `writable_binds` are host
    directories or files that appear at the same path inside.

    systemd starts `lab.target`, which wants nothing: the world is idle until
    a test starts units (`systemctl start`, `systemd-run`, D-Bus activation
    after `start_system_bus`). Starting any unit with default dependencies
    brings up sysinit.target first (journald, tmpfiles, ...), as on a real
    boot. `systemd-run --wait` and `--pipe` need the system bus: call
    `start_system_bus` first. PID 1 logs to `console_log` in `workdir`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        files: Mapping[str, str | bytes | WorldFile] | None = None,
        symlinks: Mapping[str, str] | None = None,
        binds: Sequence[Path] = (),
        writable_binds: Sequence[Path] = (),
        boot_timeout: float = 30.0,
    ) -> None:
        """Prepare a world; nothing runs until `start`."""
        self.workdir = Path(workdir).resolve()
        if re.search(r"[,:\\\s]", str(self.workdir)):
            # The overlay's mount options name directories below it.
            raise ValueError(f"workdir must not hold commas, colons or spaces: {self.workdir}")
        self.console_log = self.workdir / "console.log"
        self.boot_timeout = boot_timeout
        self.name = f"{_NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.machine_id = secrets.token_hex(16)
        self.files: dict[str, WorldFile] = {
            # Its own machine id: journalctl then shows the world's journal,
            # not the host's files the overlay shows under /var/log/journal.
            "/etc/machine-id": WorldFile(self.machine_id + "\n", 0o444),
            "/etc/fstab": WorldFile(_EMPTY_FSTAB),
            f"/etc/systemd/system/{LAB_TARGET}": WorldFile(_LAB_TARGET_UNIT),
        }
        for path, content in (files or {}).items():
            self.files[_world_path(path)] = (
                content if isinstance(content, WorldFile) else WorldFile(content)
            )
        self.symlinks = {_world_path(path): target for path, target in (symlinks or {}).items()}
        self.binds = [(Path(path), False) for path in binds]
        self.binds += [(Path(path), True) for path in writable_binds]
        self._cgroup: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._console: _Console | None = None
        self._pid: int | None = None

    # --- life cycle ---

    @property
    def pid(self) -> int:
        """The host's process id of the world's systemd (PID 1 inside)."""
        if self._pid is None:
            raise WorldError("the world is not running")
        return self._pid

    @property
    def cgroup(self) -> Path:
        """The host's cgroup v2 directory the world's systemd owns."""
        if self._cgroup is None:
            raise WorldError("the world is not running")
        return self._cgroup

    def start(self) -> SystemdWorld:
        """Boot the world and return once systemd reports running (or degraded)."""
        if self._process is not None:
            raise WorldError("the world is already running")
        reason = available()
        if reason is not None:
            raise WorldError(reason)
        root = cgroup2_root()
        assert root is not None
        reap_stale_worlds(root)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "ns").mkdir(exist_ok=True)
        atexit.register(self.stop)
        try:
            self._cgroup = root / self.name
            self._cgroup.mkdir()
            self._console = _Console(self.console_log)
            script = self._inner_script(self._stage_files(), self._console.path)
            self._process = subprocess.Popen(
                [
                    "bash",
                    "-c",
                    _OUTER.format(container=CONTAINER_NAME, path=WORLD_PATH),
                    "world",
                    str(self._cgroup),
                    script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._console.terminal,
                stderr=subprocess.STDOUT,
                env={"PATH": WORLD_PATH},
            )
            self._wait_booted(root)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill everything in the world and remove its cgroup; safe to call twice."""
        atexit.unregister(self.stop)
        if self._cgroup is not None:
            _kill_cgroup(self._cgroup)
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        if self._process is not None:
            try:
                self._process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()  # its child, PID 1, dies with it
                self._process.wait()
        if self._pid is not None:
            deadline = time.monotonic() + _STOP_TIMEOUT
            while _pid_alive(self._pid) and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL)
        if self._cgroup is not None:
            _remove_cgroup(self._cgroup, _STOP_TIMEOUT)
        if self._console is not None:
            self._console.close()
        self._process = None
        self._pid = None
        self._cgroup = None
        self._console = None

    def __enter__(self) -> SystemdWorld:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the world's PID 1 is alive."""
        return self._pid is not None and _pid_alive(self._pid)

    # --- what tests use ---

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float = 30.0,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the world's mount, pid, UTS and IPC namespaces.

        It runs as root (or as `user`, with that user's groups and a fresh
        login environment) with the world's capability bounding set and
        PATH, plus `env`; it stays in the host's cgroup, where systemd does
        not manage it. Raises `WorldCommandError` on a non-zero exit when
        `check`.
        """
        extra = dict(env or {})
        command = [
            "nsenter", f"--target={self.pid}", "--mount", "--pid", "--uts", "--ipc", "--root",
            "--wd", "setpriv", f"--bounding-set={_BOUNDING_SET}", "--pdeathsig=KILL", "--",
        ]  # fmt: skip
        if user is None:
            environment = {"PATH": WORLD_PATH, "HOME": "/root", "LANG": "C.UTF-8", **extra}
        else:
            # The user is looked up in the world's /etc/passwd, not the host's.
            switch = (
                'u=$1; shift; exec setpriv --reuid="$u" --regid="$(id -g "$u")" '
                '--init-groups --reset-env -- "$@"'
            )
            command += ["sh", "-c", switch, "sh", user, "env", "LANG=C.UTF-8"]
            command += [f"{key}={value}" for key, value in extra.items()]
            environment = {"PATH": WORLD_PATH}
        data = input.encode() if isinstance(input, str) else input
        result = subprocess.run(
            [*command, *argv],
            input=data,
            stdin=subprocess.DEVNULL if data is None else None,
            capture_output=True,
            timeout=timeout,
            env=environment,
            check=False,
        )
        completed = subprocess.CompletedProcess(
            list(argv),
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and completed.returncode != 0:
            raise WorldCommandError(
                completed.returncode, list(argv), completed.stdout, completed.stderr
            )
        return completed

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS` inside the world."""
        return self.run("systemctl", "--no-pager", *args, check=check)

    def journal(self, unit: str | None = None) -> str:
        """The world's journal (messages only), for one unit when given."""
        argv = ["journalctl", "-o", "cat", "--no-pager"]
        if unit is not None:
            argv += ["-u", unit]
        return self.run(*argv, check=False).stdout

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside the running world, creating its directories.

        Written by a shell inside, so symbolic links on the way resolve in the
        world, never on the host. An existing link at `path` is replaced, not
        followed. Run `systemctl daemon-reload` after writing units.
        """
        script = (
            'mkdir -p -- "$(dirname -- "$1")" && rm -f -- "$1" && cat > "$1" && chmod "$2" -- "$1"'
        )
        self.run("sh", "-c", script, "sh", _world_path(path), f"{mode:o}", input=content)

    def read_file(self, path: str) -> str:
        """A file's text as the world sees it."""
        return self.run("cat", "--", _world_path(path)).stdout

    def host_path(self, path: str) -> Path:
        """`path` in the world as the host can reach it (through /proc/PID/root).

        Good for reading files and connecting to sockets; an absolute
        symbolic link on the way would resolve on the host, so write with
        `write_file`.
        """
        return Path(f"/proc/{self.pid}/root") / _world_path(path).lstrip("/")

    def start_system_bus(self, timeout: float = 10.0) -> str:
        """Start the world's system D-Bus; return its address as seen from the host.

        Inside the world the bus is at the usual place; from the host,
        connect to the returned address (through /proc/PID/root).
        """
        self.systemctl("start", "dbus.service")
        socket_path = self.host_path(SYSTEM_BUS_SOCKET)
        deadline = time.monotonic() + timeout
        while not socket_path.is_socket():
            if time.monotonic() > deadline:
                raise WorldError(f"no {SYSTEM_BUS_SOCKET} after {timeout} s:\n{self.journal()}")
            time.sleep(_POLL_INTERVAL)
        return f"unix:path={socket_path}"

    # --- internals ---

    def _stage_files(self) -> Path:
        """Write `files` to the host's workdir, from where PID 1 copies them in."""
        stage = self.workdir / "files"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        for index, item in enumerate(self.files.values()):
            (stage / str(index)).write_bytes(item.data())
        return stage

    def _inner_script(self, stage: Path, console: str) -> str:
        """The script PID 1 runs to build its root, before it becomes systemd."""
        q = shlex.quote
        lines = [_INNER_HEAD.format(base=q(str(self.workdir / "ns")), console=q(console))]
        for index, (path, item) in enumerate(self.files.items()):
            source, target = q(f"/oldroot{stage}/{index}"), q(path)
            lines.append(f"mkdir -p -- {q(os.path.dirname(path))}")
            lines.append(f"rm -f -- {target}; cp -- {source} {target}")
            lines.append(f"chmod {item.mode:o} -- {target}")
        for path, link in self.symlinks.items():
            lines.append(f"mkdir -p -- {q(os.path.dirname(path))}")
            lines.append(f"rm -f -- {q(path)}; ln -s -- {q(link)} {q(path)}")
        # Binds come last so that nothing above writes through them.
        for host, writable in self.binds:
            source = host.resolve(strict=True)
            target = os.path.abspath(host)
            if source.is_dir():
                lines.append(f"mkdir -p -- {q(target)}")
            else:
                lines.append(f"mkdir -p -- {q(os.path.dirname(target))}")
                lines.append(f"[ -e {q(target)} ] || touch -- {q(target)}")
            lines.append(f"mount --bind -- {q(f'/oldroot{source}')} {q(target)}")
            if not writable:
                lines.append(f"mount -o remount,bind,ro -- {q(target)}")
        lines.append(
            _INNER_TAIL.format(bounding=_BOUNDING_SET, systemd=q(str(SYSTEMD)), target=LAB_TARGET)
        )
        return "\n".join(lines)

    def _wait_booted(self, root: Path) -> None:
        """Find PID 1, let it have its cgroup alone, and wait for systemd to finish booting."""
        assert self._process is not None
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while True:
            if self._process.poll() is not None:
                raise WorldError(
                    f"the world exited ({self._process.returncode}) while booting:\n"
                    f"{_tail(self.console_log)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorldError(
                    f"systemd did not finish booting in {self.boot_timeout:.0f} s "
                    f"(state {state or 'unknown'}):\n{_tail(self.console_log)}"
                )
            if self._pid is None:
                self._pid = self._find_init(root)
            elif self._is_systemd():
                state = self._system_state(remaining)
                if state in _BOOTED_STATES:
                    return
                if state in _FAILED_STATES:
                    raise WorldError(f"systemd is {state}:\n{_tail(self.console_log)}")
            time.sleep(_POLL_INTERVAL)

    def _find_init(self, root: Path) -> int | None:
        """PID 1's host pid, once unshare has forked it; move unshare out of its cgroup."""
        assert self._process is not None
        children = _children(self._process.pid)
        if not children:
            return None
        # unshare only waits for PID 1: out of the world's cgroup it leaves
        # the world's root cgroup to systemd alone.
        with contextlib.suppress(OSError):
            (_own_cgroup(root) / "cgroup.procs").write_text(str(self._process.pid))
        return children[0]

    def _is_systemd(self) -> bool:
        assert self._pid is not None
        try:
            return os.readlink(f"/proc/{self._pid}/exe").endswith("/systemd/systemd")
        except OSError:
            return False

    def _system_state(self, timeout: float) -> str:
        """systemctl is-system-running --wait; empty while systemd does not answer yet."""
        try:
            result = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return ""
        state = result.stdout.strip()
        return state if state in (*_BOOTED_STATES, *_FAILED_STATES, "starting") else ""


def _world_path(path: str) -> str:
    """Check that a path in the world is absolute and normal."""
    if not path.startswith("/") or os.path.normpath(path) != path.rstrip("/") or "\n" in path:
        raise ValueError(f"not an absolute, normalised path: {path!r}")
    return path
