"""Run the real vpnd (and vpnctl) against a private bus, for tests, benchmarks and the demo.

`VpndProcess` starts `python -m vpnd` with its own state and runtime
directories and a settings file that trusts the lab CA. Readiness is not
guessed: the process gets a NOTIFY_SOCKET, exactly as systemd would give it,
and the harness waits for its READY=1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class VpndProcess:
    """One vpnd on a private bus."""

    def __init__(
        self,
        workdir: Path,
        bus_env: Mapping[str, str],
        *,
        ca_file: Path | None = None,
        settings: Mapping[str, object] | None = None,
        log_level: str = "debug",
    ) -> None:
        """`log_level`: debug for tests (their failures show every step); benchmarks
        measure the daemon as it runs in production, at info."""
        self.workdir = workdir
        self.log_level = log_level
        self.state_dir = workdir / "state"
        self.runtime_dir = workdir / "run"
        self.config_file = workdir / "vpnd.toml"
        self.log_file = workdir / "vpnd.log"
        self._bus_env = dict(bus_env)
        self._ca_file = ca_file
        self._settings = dict(settings or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after: float = 0.0
        self._notify: socket.socket | None = None
        self._notifications: list[str] = []

    def write_config(self) -> None:
        """The settings file the daemon reads."""
        values: dict[str, object] = {
            "http_timeout": 5,
            "authorization_timeout": 60,
            "connect_timeout": 30,
            # The lab never reaches out to eduVPN's real discovery lists; a
            # test that wants discovery points discovery_url at its own.
            "discovery_url": "",
            **self._settings,
        }
        if self._ca_file is not None:
            values["ca_file"] = str(self._ca_file)
        lines = []
        for key, value in values.items():
            lines.append(
                f"{key} = {value!r}" if isinstance(value, int | float) else f'{key} = "{value}"'
            )
        self.config_file.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> None:
        """Start vpnd and wait for READY=1 on the notify socket."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        # Kept open for the daemon's lifetime, as systemd keeps its notify socket.
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notifications = []
        env = {**os.environ, **self._bus_env, "NOTIFY_SOCKET": str(notify_path)}
        env.pop("JOURNAL_STREAM", None)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "daemon"), env.get("PYTHONPATH", "")])
        started = time.monotonic()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vpnd",
                    "--config",
                    str(self.config_file),
                    "--state-dir",
                    str(self.state_dir),
                    "--runtime-dir",
                    str(self.runtime_dir),
                    "--log-level",
                    self.log_level,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = started + timeout
        while "READY=1" not in self._notifications:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(f"vpnd did not become ready:\n{self.log()}")
            self._notify.settimeout(min(remaining, 0.5))
            try:
                self._notifications += self._notify.recv(4096).decode().splitlines()
            except TimeoutError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"vpnd exited early:\n{self.log()}") from None
        self.ready_after = time.monotonic() - started

    @property
    def notifications(self) -> list[str]:
        """Every sd_notify line the daemon sent so far (READY=1, STATUS=…, STOPPING=1)."""
        if self._notify is not None:
            self._notify.setblocking(False)
            try:
                while True:
                    self._notifications += self._notify.recv(4096).decode().splitlines()
            except BlockingIOError:
                pass
        return list(self._notifications)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise RuntimeError(f"vpnd did not stop on SIGTERM:\n{self.log()}") from None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    def openvpn_children(self) -> list[int]:
        """The process ids of the daemon's openvpn children."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.pid), "-x", "openvpn"],
            capture_output=True,
            text=True,
            check=False,
        )
        return [int(pid) for pid in out.stdout.split()]

    def openvpn_pid(self) -> int:
        """The process id of the daemon's one openvpn child."""
        pids = self.openvpn_children()
        assert len(pids) == 1, f"openvpn children of vpnd: {pids}"
        return pids[0]

    def log(self) -> str:
        """Everything the daemon logged so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> VpndProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def vpnctl(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float = 60,
    user: int | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run vpnctl as a person would; optionally as another UID, or with `stdin` as its input."""
    command = [sys.executable, "-m", "vpnctl", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client"), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        command,
        env=full_env,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The output of a vpnctl run that must succeed."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The one printable line a failing vpnctl must print, and nothing else."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].isprintable(), lines[0]
    return lines[0]


def status(env: Mapping[str, str]) -> dict[str, Any]:
    """`vpnctl status --json`."""
    data: dict[str, Any] = json.loads(ok(vpnctl(["status", "--json"], env)))
    return data


def state_files(daemon: VpndProcess) -> dict[str, bytes]:
    """Every file under the daemon's state directory with its bytes, to compare before and after."""
    return {
        str(p.relative_to(daemon.state_dir)): p.read_bytes()
        for p in sorted(daemon.state_dir.rglob("*"))
        if p.is_file()
    }


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of its fields."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def ping(address: str) -> bool:
    """One ping to `address` (through a tunnel, say) answered within 3 s."""
    result = subprocess.run(
        ["ping", "-c", "1", "-W", "3", address], capture_output=True, check=False
    )
    return result.returncode == 0
