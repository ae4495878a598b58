"""A private desktop session for tests: Xvfb, a session bus of its own and dunst on it.

`DesktopSession` starts an X server (Xvfb, which picks a free display
itself), a session `dbus-daemon` that listens on a socket in the test's
directory and activates nothing, and the real notification server dunst on
both. Readiness is not guessed: Xvfb writes its display number when it
accepts clients, dbus-daemon its address, and dunst is ready when it owns
org.freedesktop.Notifications (NameOwnerChanged). `dunstctl` runs against
it, and `history()` reads what dunst was given.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from jeepney import DBus, MatchRule
from jeepney.io.blocking import open_dbus_connection

from tests.lab.process import VpnctlProcess, terminate
from tests.lab.require import require_tool

NOTIFICATIONS_NAME = "org.freedesktop.Notifications"

_START_TIMEOUT = 20.0

_BUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def _read_line(fd: int, deadline: float, what: str) -> str:
    """A line a child writes to `fd` when it is ready (Xvfb -displayfd, dbus-daemon --print-address)."""
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"{what} did not start within {_START_TIMEOUT} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 256)
            if not chunk:
                raise RuntimeError(f"{what} exited before it was ready")
            data += chunk
    return data.decode().strip()


class DesktopSession:
    """Xvfb + a private session bus + dunst, for the duration of a `with` block."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.display = ""
        self.address = ""
        self._processes: list[subprocess.Popen[bytes]] = []

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment that reaches this session: DISPLAY and DBUS_SESSION_BUS_ADDRESS."""
        env = dict(os.environ if base is None else base)
        env.update({"DISPLAY": self.display, "DBUS_SESSION_BUS_ADDRESS": self.address})
        return env

    def start(self) -> None:
        for tool, package in (("Xvfb", "xvfb"), ("dunst", "dunst"), ("dunstctl", "dunst")):
            require_tool(tool, package)
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _START_TIMEOUT
        log = (self.workdir / "desktop.log").open("ab")

        read_end, write_end = os.pipe()
        try:
            self._processes.append(
                subprocess.Popen(
                    [
                        "Xvfb",
                        "-displayfd",
                        str(write_end),
                        "-nolisten",
                        "tcp",
                        "-screen",
                        "0",
                        "1024x768x24",
                    ],
                    pass_fds=(write_end,),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            )
            os.close(write_end)
            self.display = ":" + _read_line(read_end, deadline, "Xvfb")
        finally:
            os.close(read_end)

        config = self.workdir / "session.conf"
        config.write_text(_BUS_CONFIG.format(socket=self.workdir / "session_bus"))
        read_end, write_end = os.pipe()
        try:
            self._processes.append(
                subprocess.Popen(
                    [
                        "dbus-daemon",
                        "--nofork",
                        f"--config-file={config}",
                        f"--print-address={write_end}",
                    ],
                    pass_fds=(write_end,),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            )
            os.close(write_end)
            self.address = _read_line(read_end, deadline, "the session dbus-daemon")
        finally:
            os.close(read_end)

        home = self.workdir / "home"
        home.mkdir(exist_ok=True)
        env = self.env()
        env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")})
        with open_dbus_connection(self.address) as bus:
            dbus = DBus()
            rule = MatchRule(
                type="signal", interface="org.freedesktop.DBus", member="NameOwnerChanged"
            )
            rule.add_arg_condition(0, NOTIFICATIONS_NAME)
            bus.send_and_get_reply(dbus.AddMatch(rule))
            self._processes.append(
                subprocess.Popen(
                    ["dunst"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            )
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError("dunst did not take org.freedesktop.Notifications")
                message = bus.receive(timeout=remaining)
                if message.body[:1] == (NOTIFICATIONS_NAME,) and message.body[2]:
                    break

    def dunstctl(self, *args: str) -> str:
        """Run dunstctl against this session's dunst; its output."""
        result = subprocess.run(
            ["dunstctl", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout

    def history(self) -> list[dict[str, Any]]:
        """dunst's history (closed notifications), newest first, as plain values."""
        data = json.loads(self.dunstctl("history"))
        return [{key: value["data"] for key, value in entry.items()} for entry in data["data"][0]]

    def displayed(self) -> int:
        """How many notifications dunst shows now."""
        return int(self.dunstctl("count", "displayed").strip())

    def close_all(self) -> list[dict[str, Any]]:
        """Close what dunst shows (into its history); the history then."""
        self.dunstctl("close-all")
        return self.history()

    def stop(self) -> None:
        for process in reversed(self._processes):
            terminate(process)
        self._processes = []

    def log(self) -> str:
        try:
            return (self.workdir / "desktop.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DesktopSession:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def fake_program(directory: Path, name: str, record: Path, then: Sequence[str] = ()) -> Path:
    """An executable `name` in `directory` that appends its arguments (one line, NUL
    between them) to `record`, then runs `then` with those arguments, if given."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    lines = [
        "#!/bin/sh",
        f"printf '%s\\0' \"$@\" >> '{record}'",
        f"printf '\\n' >> '{record}'",
    ]
    if then:
        lines.append("exec " + " ".join(f"'{word}'" for word in then) + ' "$@"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def wait_recorded(record: Path, count: int = 1, timeout: float = 10.0) -> list[list[str]]:
    """What `fake_program` recorded, once it has recorded `count` runs (it runs
    detached: the monitor does not wait for it)."""
    deadline = time.monotonic() + timeout
    while len(runs := recorded(record)) < count:
        assert time.monotonic() < deadline, f"{record.name}: {runs}"
        time.sleep(0.05)
    return runs


def recorded(record: Path) -> list[list[str]]:
    """The argument lists `fake_program` recorded, oldest first."""
    if not record.exists():
        return []
    return [line.rstrip("\0").split("\0") for line in record.read_text().splitlines() if line]


class MonitorProcess(VpnctlProcess):
    """`vpnctl monitor [ARGS]` as a child process; `line()` waits for its next line."""

    what = "monitor"

    def __init__(self, env: Mapping[str, str], args: Sequence[str] = ("--notify",)) -> None:
        super().__init__(env, ["monitor", *args])

    def line(self, timeout: float = 30.0) -> str:
        """The next line without its time; fails when the monitor ends or is silent `timeout` s."""
        line = self._next_line(timeout)
        text = line.split("  ", 1)[1] if "  " in line else line
        self.lines.append(text)
        return text

    def line_starting(self, prefix: str, timeout: float = 30.0) -> str:
        """The next line that starts with `prefix` (lines before it are kept in `lines`)."""
        while True:
            line = self.line(timeout)
            if line.startswith(prefix):
                return line
