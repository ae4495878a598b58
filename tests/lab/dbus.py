"""A private system-like D-Bus for tests and the demo, with the project's own bus policy.

`PrivateSystemBus` runs its own `dbus-daemon` with `<type>system</type>`,
EXTERNAL authentication and the same default stance as a stock system bus
(nobody owns a name or receives a method call unless a policy file opens
it), and includes `data/dbus/org.vpnd.Daemon.conf`, so what the tests see is
what the policy allows on a real machine. Processes are pointed at it with
`DBUS_SYSTEM_BUS_ADDRESS` (see `env()`).

It can also:

* activate a command when `org.vpnd.Daemon` is called while nobody owns it,
  from a copy of `data/dbus/org.vpnd.Daemon.service` whose Exec is replaced
  (`with_activation=`). The bus runs as root and has no `<servicehelper>`,
  so it starts the command itself, as root, with its own environment plus
  `DBUS_SYSTEM_BUS_ADDRESS` and `DBUS_STARTER_*`; the setuid helper of the
  real system bus would read the machine's bus configuration instead of
  this one, so it is not used.
* run `polkitd` against this bus (`start_polkitd()`), in a private mount
  namespace where the polkit action directory holds the machine's actions
  plus `data/polkit-1/org.vpnd.policy` and the rules directory holds the
  rules a test passes. Nothing is installed on the machine itself.

Everything needs root: dbus-daemon must see real credentials, and polkitd
changes to its own user.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from jeepney import DBus, MatchRule
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from tests.lab.process import terminate

REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "data" / "dbus" / "org.vpnd.Daemon.conf"
ACTIVATION_FILE = REPO / "data" / "dbus" / "org.vpnd.Daemon.service"
POLKIT_ACTIONS_FILE = REPO / "data" / "polkit-1" / "org.vpnd.policy"

DAEMON_BUS_NAME = "org.vpnd.Daemon"
POLKIT_BUS_NAME = "org.freedesktop.PolicyKit1"

_SYSTEM_POLKIT_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
_SYSTEM_POLKIT_ACTIONS = Path("/usr/share/polkit-1/actions")
_SYSTEM_POLKIT_RULES = Path("/etc/polkit-1/rules.d")
_POLKITD_CANDIDATES = (
    Path("/usr/lib/polkit-1/polkitd"),
    Path("/usr/libexec/polkitd"),
    Path("/usr/libexec/polkit-1/polkitd"),
)
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
# How often a wait looks at whether the process it depends on has died.
_LIVENESS_INTERVAL = 0.1

# The default policy of a stock system bus (Debian's system.conf): every
# user may connect; owning names and sending method calls are closed until
# a service's policy file opens them; replies and signals flow.
_DEFAULT_POLICY = """\
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
"""


def find_polkitd() -> Path | None:
    """polkitd's path on this machine (it is not on PATH), or None when it is not installed."""
    return next((path for path in _POLKITD_CANDIDATES if path.exists()), None)


class BusError(RuntimeError):
    """The private bus or a process attached to it could not be started."""


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _without_guid(address: str | None) -> str:
    return ",".join(p for p in (address or "").split(",") if not p.startswith("guid="))


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class PrivateSystemBus:
    """A `dbus-daemon` configured like the system bus, with vpnd's bus policy.

    `tmpdir` receives the generated configuration and the logs
    (`dbus-daemon.log`, `polkitd.log`). The socket itself lives in a fresh
    directory that every user can traverse (pytest's temporary directories
    are private to root, and tests connect as unprivileged users too); it is
    removed by `stop()`.

    `extra_policy` is XML placed in `<busconfig>` after the project's policy,
    so it can add to or override it (a later rule wins).

    `with_activation` is the command (argv) the bus runs when
    `org.vpnd.Daemon` is called while nobody owns it; `None` turns
    activation off.
    """

    def __init__(
        self,
        tmpdir: Path,
        *,
        extra_policy: str = "",
        with_activation: Sequence[str] | None = None,
    ) -> None:
        self.tmpdir = Path(tmpdir)
        self.extra_policy = extra_policy
        self.with_activation = list(with_activation) if with_activation is not None else None
        self.config_path = self.tmpdir / "system-bus.conf"
        self.log_path = self.tmpdir / "dbus-daemon.log"
        self.polkitd_log_path = self.tmpdir / "polkitd.log"
        self._socket_dir: Path | None = None
        self._address: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._polkitd: subprocess.Popen[bytes] | None = None
        self._polkit_rules: str | None = None
        self._logs: list[IO[bytes]] = []

    # -- life cycle -------------------------------------------------------

    @property
    def address(self) -> str:
        """The bus address, for `DBUS_SYSTEM_BUS_ADDRESS` or `--address=`."""
        if self._address is None:
            raise BusError("the private bus is not running")
        return self._address

    @property
    def pid(self) -> int:
        """The dbus-daemon's process id."""
        if self._proc is None:
            raise BusError("the private bus is not running")
        return self._proc.pid

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """A copy of `base` (default: `os.environ`) pointing the system bus here."""
        env = dict(os.environ if base is None else base)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        return env

    def start(self) -> PrivateSystemBus:
        """Start dbus-daemon and return once it accepts connections."""
        if self._proc is not None:
            raise BusError("the private bus is already running")
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="vpnd-bus-"))
        self._socket_dir.chmod(0o755)
        service_dir = self._write_activation() if self.with_activation is not None else None
        self.config_path.write_text(
            self._config(self._socket_dir / "system_bus_socket", service_dir)
        )
        self._launch()
        return self

    def restart(self) -> None:
        """Stop dbus-daemon and start a new one at the same address, as a bus restart does.

        Every connection is dropped; the new daemon hands out unique names
        from the start again. polkitd, if it ran, is started again with the
        same rules (it does not survive its bus).
        """
        if self._proc is None or self._socket_dir is None:
            raise BusError("the private bus is not running")
        rules = self._polkit_rules
        terminate(self._polkitd, _STOP_TIMEOUT)
        self._polkitd = None
        terminate(self._proc, _STOP_TIMEOUT)
        self._proc = None
        # dbus-daemon does not take over a socket path that still exists.
        (self._socket_dir / "system_bus_socket").unlink(missing_ok=True)
        before = self._address
        self._launch()
        # The same socket; only the guid (one per daemon instance) differs.
        if _without_guid(self._address) != _without_guid(before):
            raise BusError(f"the restarted bus listens at {self._address}, not {before}")
        if rules is not None:
            self.start_polkitd(rules=rules)

    def _launch(self) -> None:
        read_fd, write_fd = os.pipe()
        log = self.log_path.open("ab")
        self._logs.append(log)
        try:
            self._proc = subprocess.Popen(
                [
                    "dbus-daemon",
                    f"--config-file={self.config_path}",
                    "--nofork",
                    "--nopidfile",
                    f"--print-address={write_fd}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            self.stop()
            raise
        os.close(write_fd)
        try:
            # dbus-daemon prints its address only once it listens, so reading
            # it is the readiness signal.
            self._address = self._read_address(read_fd)
        except BaseException:
            self.stop()
            raise
        finally:
            os.close(read_fd)

    def _read_address(self, fd: int) -> str:
        deadline = time.monotonic() + _START_TIMEOUT
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BusError(f"dbus-daemon printed no address in time:\n{_tail(self.log_path)}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise BusError(f"dbus-daemon exited during start-up:\n{_tail(self.log_path)}")
            data += chunk
        return data.decode().strip()

    def stop(self) -> None:
        """Stop polkitd (if started) and the bus, and remove the socket directory."""
        terminate(self._polkitd, _STOP_TIMEOUT)
        self._polkitd = None
        self._polkit_rules = None
        terminate(self._proc, _STOP_TIMEOUT)
        self._proc = None
        self._address = None
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def __enter__(self) -> PrivateSystemBus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration ----------------------------------------------------

    def _config(self, socket_path: Path, service_dir: Path | None) -> str:
        parts = [
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"',
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">',
            "<busconfig>",
            "  <type>system</type>",
            f"  <listen>unix:path={_xml_text(str(socket_path))}</listen>",
            "  <auth>EXTERNAL</auth>",
        ]
        if service_dir is not None:
            parts.append(f"  <servicedir>{_xml_text(str(service_dir))}</servicedir>")
        parts.append(_DEFAULT_POLICY)
        parts.append(f"  <include>{_xml_text(str(POLICY_FILE))}</include>")
        if _SYSTEM_POLKIT_POLICY.exists():
            parts.append(f"  <include>{_xml_text(str(_SYSTEM_POLKIT_POLICY))}</include>")
        if self.extra_policy:
            parts.append(self.extra_policy)
        parts.append("</busconfig>")
        return "\n".join(parts) + "\n"

    def _write_activation(self) -> Path:
        assert self.with_activation is not None
        if any("\n" in arg for arg in self.with_activation):
            # dbus-daemon silently skips a service file it cannot parse.
            raise BusError("an activation command must fit on one line; put scripts in a file")
        service_dir = self.tmpdir / "system-services"
        service_dir.mkdir(exist_ok=True)
        lines = []
        for line in ACTIVATION_FILE.read_text().splitlines():
            if line.startswith("Exec="):
                line = "Exec=" + shlex.join(self.with_activation)
            lines.append(line)
        (service_dir / ACTIVATION_FILE.name).write_text("\n".join(lines) + "\n")
        return service_dir

    # -- waiting for names ------------------------------------------------

    def connect(self) -> DBusConnection:
        """A blocking jeepney connection to this bus, as the calling process's user."""
        return open_dbus_connection(bus=self.address)

    def name_has_owner(self, name: str) -> bool:
        """Whether someone owns `name` on this bus right now."""
        with self.connect() as conn:
            reply = conn.send_and_get_reply(DBus().NameHasOwner(name))
            return bool(reply.body[0])

    def wait_for_name(
        self,
        name: str,
        *,
        timeout: float = _START_TIMEOUT,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """Return once `name` has an owner on this bus.

        Watches NameOwnerChanged rather than polling the bus. If `process`
        (the one expected to take the name) exits first, fail at once
        instead of waiting out the timeout.
        """
        dbus = DBus()
        rule = MatchRule(
            type="signal",
            sender=dbus.bus_name,
            interface=dbus.interface,
            member="NameOwnerChanged",
            path=dbus.object_path,
        )
        rule.add_arg_condition(0, name)
        deadline = time.monotonic() + timeout
        with self.connect() as conn, conn.filter(rule) as queue:
            conn.send_and_get_reply(dbus.AddMatch(rule))
            # Subscribed first, then asked: an owner that arrived in between
            # is seen by one or the other.
            if conn.send_and_get_reply(dbus.NameHasOwner(name)).body[0]:
                return
            while True:
                if process is not None and process.poll() is not None:
                    raise BusError(
                        f"{process.args!r} exited ({process.returncode}) before owning {name}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusError(f"nobody took {name} on the private bus within {timeout}s")
                with contextlib.suppress(TimeoutError):
                    signal_msg = conn.recv_until_filtered(
                        queue, timeout=min(remaining, _LIVENESS_INTERVAL)
                    )
                    if signal_msg.body[2]:
                        return

    # -- polkit -----------------------------------------------------------

    def start_polkitd(self, *, rules: str = "") -> None:
        """Run polkitd on this bus with vpnd's actions and, if given, `rules`.

        `rules` is the text of a polkit JavaScript rules file (for example one
        that answers `polkit.Result.YES` for a test user); it replaces the
        machine's local rules in polkitd's private view of the file system.
        Returns once polkitd owns org.freedesktop.PolicyKit1.
        """
        if self._polkitd is not None:
            raise BusError("polkitd is already running on this bus")
        polkitd = find_polkitd()
        if polkitd is None:
            raise BusError("polkitd is not installed (Debian package polkitd)")
        if not _SYSTEM_POLKIT_POLICY.exists():
            raise BusError(f"{_SYSTEM_POLKIT_POLICY} is missing, polkitd may not own its name")

        # polkitd drops to its own user after start-up, so what it reads must
        # be readable by everyone.
        actions = self.tmpdir / "polkit-actions"
        rules_dir = self.tmpdir / "polkit-rules"
        for directory in (actions, rules_dir):
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir(mode=0o755)
            directory.chmod(0o755)
        if _SYSTEM_POLKIT_ACTIONS.is_dir():
            for action in _SYSTEM_POLKIT_ACTIONS.glob("*.policy"):
                shutil.copyfile(action, actions / action.name)
        shutil.copyfile(POLKIT_ACTIONS_FILE, actions / POLKIT_ACTIONS_FILE.name)
        if rules:
            (rules_dir / "50-vpnd-test.rules").write_text(rules)
        for path in [*actions.iterdir(), *rules_dir.iterdir()]:
            path.chmod(0o644)

        # The bind mounts live only in the new mount namespace, which ends
        # with polkitd; sh execs polkitd, so the pid we hold is polkitd's.
        script = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && exec "$5" --no-debug'
        log = self.polkitd_log_path.open("ab")
        self._logs.append(log)
        self._polkitd = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(actions),
                str(_SYSTEM_POLKIT_ACTIONS),
                str(rules_dir),
                str(_SYSTEM_POLKIT_RULES),
                str(polkitd),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self.env(),
        )
        self._polkit_rules = rules
        try:
            self.wait_for_name(POLKIT_BUS_NAME, process=self._polkitd)
        except BusError as exc:
            terminate(self._polkitd, _STOP_TIMEOUT)
            self._polkitd = None
            raise BusError(f"{exc}\n{_tail(self.polkitd_log_path)}") from exc

    def stop_polkitd(self) -> None:
        """Stop polkitd if `start_polkitd()` started it."""
        terminate(self._polkitd, _STOP_TIMEOUT)
        self._polkitd = None
        self._polkit_rules = None
